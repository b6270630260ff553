//! The admin API (DESIGN §7), served only on `admin.bind` — never on a data
//! listener. JSON everywhere (Prometheus text for `/metrics`); with a token
//! configured, every endpoint answers 401 without `Authorization: Bearer`.

use crate::Proxy;
use bulkhead_config::Faults;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest admin request body.
const MAX_BODY: usize = 64 << 10;

type AdminResponse = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, &json!({ "error": message }))
}

/// 405 with the `Allow` header RFC 9110 §15.5.6 requires.
fn method_not_allowed(allow: &'static str) -> AdminResponse {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// Bind the admin API on `bind` and serve it until `stop`. `token`, when
/// set, is required as a bearer token. Returns the bound address.
pub async fn serve(
    proxy: Arc<Proxy>,
    bind: SocketAddr,
    token: Option<String>,
    stop: CancellationToken,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| format!("admin API: cannot bind {bind}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let token: Option<Arc<str>> = token.map(Into::into);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.cancelled() => return,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (proxy, token) = (proxy.clone(), token.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (proxy, token) = (proxy.clone(), token.clone());
                    async move { Ok::<_, Infallible>(handle(req, &proxy, token.as_deref()).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn authorized(req: &http::Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    // Compare in constant time for equal lengths.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(req: http::Request<Incoming>, proxy: &Proxy, token: Option<&str>) -> AdminResponse {
    if !authorized(&req, token) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized");
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => status(proxy),
        (&Method::GET, ["config"]) => config(proxy),
        (&Method::GET, ["routes"]) => routes(proxy),
        (&Method::GET, ["graph"]) => {
            let g = proxy.shared().generation.load();
            json_response(
                StatusCode::OK,
                &serde_json::to_value(g.snapshot.graph_view()).unwrap_or(Value::Null),
            )
        }
        (&Method::GET, ["targets"]) => targets(proxy),
        (&Method::GET, ["metrics"]) => {
            let shared = proxy.shared();
            let text = shared
                .metrics
                .render(&shared.generation.load(), shared.logger.dropped());
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, ["reload"]) => match proxy.reload_from_file().await {
            Ok(()) => json_response(
                StatusCode::OK,
                &json!({ "ok": true, "config_hash": proxy.shared().generation.load().config_hash }),
            ),
            Err(errors) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "ok": false, "errors": errors }),
            ),
        },
        (&Method::POST, ["targets", tenant, group, target, action @ ("drain" | "undrain")]) => {
            drain(proxy, tenant, group, target, *action == "drain")
        }
        (&Method::POST, ["faults", tenant, route]) => {
            let (tenant, route) = (tenant.to_string(), route.to_string());
            match read_json(req).await {
                Ok(body) => set_faults(proxy, tenant, route, &body),
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["cache", "purge"]) => match read_json(req).await {
            Ok(body) => purge_cache(proxy, &body).await,
            Err(resp) => resp,
        },
        (_, ["cache", "purge"]) => method_not_allowed("POST"),
        (_, ["status" | "config" | "routes" | "graph" | "targets" | "metrics"]) => {
            method_not_allowed("GET")
        }
        (_, ["reload"])
        | (_, ["targets", _, _, _, "drain" | "undrain"])
        | (_, ["faults", _, _]) => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn read_json(req: http::Request<Incoming>) -> Result<Value, AdminResponse> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

fn status(proxy: &Proxy) -> AdminResponse {
    let g = proxy.shared().generation.load();
    let listeners: Vec<Value> = proxy
        .bound()
        .into_iter()
        .map(|(n, a)| json!({ "name": n, "address": a.to_string() }))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": proxy.uptime().as_secs(),
            "config_file": proxy.config_path().map(|p| p.display().to_string()),
            "config_hash": g.config_hash,
            "listeners": listeners,
            "last_reload": proxy.last_reload(),
            "access_log_dropped": proxy.shared().logger.dropped(),
        }),
    )
}

fn config(proxy: &Proxy) -> AdminResponse {
    let g = proxy.shared().generation.load();
    json_response(
        StatusCode::OK,
        &json!({ "config_hash": g.config_hash, "config": g.snapshot.effective() }),
    )
}

fn routes(proxy: &Proxy) -> AdminResponse {
    let g = proxy.shared().generation.load();
    let s = &g.snapshot;
    let mut out = Vec::new();
    for t in &s.tenants {
        for r in &t.routes {
            let listeners: Vec<&str> = r
                .listeners
                .iter()
                .filter_map(|i| s.listeners.get(i))
                .map(|l| l.name.as_str())
                .collect();
            let (action, groups) = match &r.action {
                bulkhead_core::RouteAction::Forward { legs, .. } => (
                    "forward",
                    legs.iter().map(|(gid, w)| json!({ "group": s.groups[*gid as usize].full_name, "weight": w })).collect(),
                ),
                bulkhead_core::RouteAction::Redirect { .. } => ("redirect", Vec::new()),
                bulkhead_core::RouteAction::Respond { .. } => ("respond", Vec::new()),
                bulkhead_core::RouteAction::Deny { .. } => ("deny", Vec::new()),
            };
            let faults = proxy.shared().fault_override(&t.name, &r.name).is_some();
            out.push(json!({
                "tenant": t.name, "route": r.name, "line": r.pos.line, "listeners": listeners,
                "action": action, "groups": groups, "runtime_faults": faults,
            }));
        }
    }
    json_response(StatusCode::OK, &json!({ "routes": out }))
}

fn targets(proxy: &Proxy) -> AdminResponse {
    let g = proxy.shared().generation.load();
    let now = crate::balance::now_ms();
    let groups: Vec<Value> = g
        .upstreams
        .all()
        .iter()
        .map(|grp| {
            let targets: Vec<Value> = grp
                .targets
                .iter()
                .map(|t| {
                    json!({
                        "target": t.address, "weight": t.weight,
                        "healthy": t.healthy.load(Ordering::Relaxed),
                        "drained": t.drained.load(Ordering::Relaxed),
                        "in_flight": t.in_flight.load(Ordering::Relaxed),
                        // Outlier detection (DESIGN §7: "health, outlier state").
                        "ejected": t.ejected(now),
                        "consecutive_errors": t.consecutive_errors.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({ "group": grp.full_name, "in_flight": grp.in_flight(), "targets": targets })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "groups": groups }))
}

fn drain(proxy: &Proxy, tenant: &str, group: &str, target: &str, drained: bool) -> AdminResponse {
    let g = proxy.shared().generation.load();
    let full = format!("{tenant}/{group}");
    let Some(grp) = g.upstreams.by_name(&full) else {
        return error(StatusCode::NOT_FOUND, "no such group");
    };
    let Some(t) = grp.targets.iter().find(|t| &*t.address == target) else {
        return error(StatusCode::NOT_FOUND, "no such target in the group");
    };
    t.drained.store(drained, Ordering::Relaxed);
    tracing::info!(group = %full, target, drained, "target drain changed by the admin API");
    json_response(
        StatusCode::OK,
        &json!({ "ok": true, "group": full, "target": target, "drained": drained }),
    )
}

/// Parse a `faults` JSON value (the config's shape; durations as strings).
fn parse_faults(v: &Value) -> Result<Faults, String> {
    let obj = v.as_object().ok_or("faults must be a JSON object")?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "abort" | "delay"))
    {
        return Err(format!(
            "unknown key `{k}`: faults take `abort` and `delay`"
        ));
    }
    let percent = |o: &Value, what: &str| -> Result<f64, String> {
        o.get("percent")
            .and_then(Value::as_f64)
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or(format!("{what}.percent must be a number from 0 to 100"))
    };
    let abort = match obj.get("abort") {
        None => None,
        Some(a) => {
            let status = a
                .get("status")
                .and_then(Value::as_u64)
                .filter(|s| (100..=599).contains(s))
                .ok_or("abort.status must be an HTTP status")?;
            Some((status as u16, percent(a, "abort")?))
        }
    };
    let delay = match obj.get("delay") {
        None => None,
        Some(d) => {
            let text = d
                .get("duration")
                .and_then(Value::as_str)
                .ok_or("delay.duration must be a duration like \"2s\"")?;
            let dur = bulkhead_config::parse_duration(text)
                .ok_or(format!("delay.duration `{text}` is not a duration"))?;
            Some((dur, percent(d, "delay")?))
        }
    };
    Ok(Faults { abort, delay })
}

fn set_faults(proxy: &Proxy, tenant: String, route: String, body: &Value) -> AdminResponse {
    let g = proxy.shared().generation.load();
    let exists = g
        .snapshot
        .tenants
        .iter()
        .any(|t| t.name == tenant && t.routes.iter().any(|r| r.name == route));
    if !exists {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    let faults = match parse_faults(body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut map = proxy
        .shared()
        .faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // `{}` turns the route's faults off (the config's too) until the next reload.
    let cleared = faults.abort.is_none() && faults.delay.is_none();
    map.insert((tenant.clone(), route.clone()), faults);
    tracing::info!(tenant = %tenant, route = %route, cleared, "runtime faults changed by the admin API");
    json_response(
        StatusCode::OK,
        &json!({ "ok": true, "tenant": tenant, "route": route, "cleared": cleared }),
    )
}

/// `POST /cache/purge` `{"tenant": NAME, "path_prefix": "/static/"}`: drop
/// the tenant's cached responses whose normalized path starts with the
/// prefix (no prefix: all of them).
async fn purge_cache(proxy: &Proxy, body: &Value) -> AdminResponse {
    let Some(obj) = body.as_object() else {
        return error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "tenant" | "path_prefix"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("unknown key `{k}`: purge takes `tenant` and `path_prefix`"),
        );
    }
    let Some(tenant) = obj.get("tenant").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "`tenant` (a string) is required");
    };
    let prefix = match obj.get("path_prefix") {
        None | Some(Value::Null) => "",
        Some(Value::String(p)) => p.as_str(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "`path_prefix` must be a string"),
    };
    let known = proxy
        .shared()
        .generation
        .load()
        .snapshot
        .tenants
        .iter()
        .any(|t| t.name == tenant);
    if !known {
        return error(StatusCode::NOT_FOUND, "no such tenant");
    }
    let purged = proxy.shared().caches.purge(tenant, prefix).await;
    tracing::info!(
        tenant,
        path_prefix = prefix,
        purged,
        "cache purged by the admin API"
    );
    json_response(StatusCode::OK, &json!({ "ok": true, "purged": purged }))
}
