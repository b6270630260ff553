//! End-to-end tests of operating bulkhead (DESIGN §6 `run` and reload, §7
//! the admin API): every admin endpoint and its bearer token, Prometheus
//! counters after known traffic, reloads that are rejected (and change
//! nothing), zero dropped requests across 60 reloads under load, draining a
//! target, fault injection from the config and at run time, and the real
//! binary reloading on SIGHUP and `--watch`, refusing to start without its
//! token and exiting 0 on SIGTERM.
//!
//! In process wherever possible: a `Proxy` started from a config file
//! (`start_full(…, Some(path))`, so `POST /reload` re-reads it) with the
//! admin API served next to it on 127.0.0.1, and real loopback backends.

#[allow(dead_code)]
mod common;

use bulkhead::backend;
use bulkhead_proxy::Proxy;
use bytes::Bytes;
use common::routing::*;
use common::sec_free_port;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

// ---------------------------------------------------------------------------
// helpers: a proxy run from a config file, with its admin API

/// A proxy started from `dir/bulkhead.yaml`, its access log in
/// `dir/access.log`, and its admin API on 127.0.0.1 (any port).
struct Ops {
    proxy: Arc<Proxy>,
    admin: SocketAddr,
    token: Option<String>,
    path: PathBuf,
    log: PathBuf,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Ops {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Ops {
    /// Write `yaml` to a fresh folder, start a proxy from that file and the
    /// admin API (requiring `token` when given).
    async fn start(yaml: &str, token: Option<&str>) -> Ops {
        let dir = tempdir();
        let path = dir.path().join("bulkhead.yaml");
        std::fs::write(&path, yaml).expect("write the config");
        let snapshot = bulkhead_core::Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("config rejected: {e}\n{yaml}"));
        let log = dir.path().join("access.log");
        let logger = bulkhead_proxy::access_log::AccessLogger::start(
            &bulkhead_config::AccessLog::File(log.clone()),
        )
        .expect("open the access log");
        let proxy = Proxy::start_full(Arc::new(snapshot), logger, Some(path.clone()))
            .await
            .expect("start the proxy");
        let proxy = Arc::new(proxy);
        let stop = CancellationToken::new();
        let admin = bulkhead_proxy::admin::serve(
            proxy.clone(),
            any_port(),
            token.map(str::to_string),
            stop.clone(),
        )
        .await
        .expect("serve the admin API");
        Ops {
            proxy,
            admin,
            token: token.map(str::to_string),
            path,
            log,
            stop,
            _dir: dir,
        }
    }

    /// Replace the config file (the running proxy does not notice).
    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("write the config");
    }

    /// Listener `name`'s bound address.
    fn addr(&self, name: &str) -> SocketAddr {
        self.proxy
            .addr(name)
            .unwrap_or_else(|| panic!("no listener `{name}`"))
    }

    /// An admin request with the right token.
    async fn call(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        admin_call(self.admin, method, path, auth.as_deref(), body).await
    }

    /// `GET path` on the admin API: must answer 200 JSON.
    async fn json(&self, path: &str) -> Value {
        let r = self.call("GET", path, "").await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
    }

    /// `POST path` with `body`: the status and the JSON answer.
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self.call("POST", path, body).await;
        let v = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}: {}", r.body));
        (r.status, v)
    }

    /// `GET /metrics`.
    async fn metrics(&self) -> String {
        let r = self.call("GET", "/metrics", "").await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    /// Every access-log line so far.
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }
}

/// One admin request on a new connection; `auth` is the whole
/// `Authorization` value.
async fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Resp {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin.local");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect to the admin API in time")
        .expect("connect to the admin API");
    send_on(stream, false, req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin API: {e}"))
}

/// Parse `name="value",…` (the inside of a sample's braces).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// The values of every sample of metric `name` whose labels include `labels`.
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, inner) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let got = parse_labels(inner);
            labels
                .iter()
                .all(|(k, v)| got.get(*k).map(String::as_str) == Some(*v))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .collect()
}

/// The one sample of `name` with `labels` (0 when there is none; panics on several).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(text, name, labels);
    assert!(
        found.len() <= 1,
        "several {name} series match {labels:?}:\n{text}"
    );
    found.first().copied().unwrap_or(0.0)
}

/// Poll `/metrics` (up to 5 s) until `ok` holds; the last text either way.
async fn metrics_until(ops: &Ops, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let text = ops.metrics().await;
        if ok(&text) || Instant::now() >= deadline {
            return text;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// True when `e` reads `FILE:LINE:COL: …` for the config file `path`.
fn located(e: &str, path: &Path) -> bool {
    e.strip_prefix(&format!("{}:", path.display()))
        .is_some_and(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().and_then(|p| p.parse::<u32>().ok());
            let col = parts.next().and_then(|p| p.parse::<u32>().ok());
            line.is_some_and(|l| l > 0) && col.is_some_and(|c| c > 0) && parts.next().is_some()
        })
}

/// Connecting to `addr` is refused within 2 s; how long it took.
async fn refused_within(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        match timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Err(_)) => return Ok(started.elapsed()),
            _ => sleep(Duration::from_millis(5)).await,
        }
    }
    Err(format!("{addr} still accepts connections 2 s later"))
}

const EDGE: &str = r#"version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
"#;

// ---------------------------------------------------------------------------
// 1. the admin API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_documented_content_and_require_the_token() {
    let app = backend::start("app", any_port()).await.expect("backend");
    let token = "s3cret-admin-token";
    let yaml = fill(
        r#"${edge}admin: { bind: "127.0.0.1:0", token_env: OPS_TEST_ADMIN_TOKEN }
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
    routes:
      - { name: private, match: { path_prefix: /private/ }, deny: { status: 403 } }
      - { name: site, match: { path_prefix: / }, forward: app }
"#,
        &[("edge", EDGE.into()), ("app", app.addr.to_string())],
    );
    let ops = Ops::start(&yaml, Some(token)).await;
    let web = ops.addr("web");
    let app_target = app.addr.to_string();

    // Without the token (or with a wrong one, or another scheme), every
    // endpoint — /metrics and unknown paths included — answers 401.
    let endpoints: Vec<(&str, String, &str)> = vec![
        ("GET", "/status".into(), ""),
        ("GET", "/config".into(), ""),
        ("GET", "/routes".into(), ""),
        ("GET", "/graph".into(), ""),
        ("GET", "/targets".into(), ""),
        ("GET", "/metrics".into(), ""),
        ("POST", "/reload".into(), ""),
        ("POST", format!("/targets/acme/app/{app_target}/drain"), ""),
        (
            "POST",
            format!("/targets/acme/app/{app_target}/undrain"),
            "",
        ),
        (
            "POST",
            "/faults/acme/site".into(),
            r#"{"abort":{"status":503,"percent":100}}"#,
        ),
        ("GET", "/no-such-endpoint".into(), ""),
    ];
    let wrong = [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer s3cret-admin-toke"),
        Some("Basic czNjcmV0LWFkbWluLXRva2Vu"),
        Some(token),
        Some("Bearer"),
    ];
    for (method, path, body) in &endpoints {
        for auth in wrong {
            let r = admin_call(ops.admin, method, path, auth, body).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
            assert_eq!(r.body, r#"{"error":"unauthorized"}"#);
        }
    }
    // None of those unauthorized POSTs did anything.
    assert_eq!(get(web, "acme.test", "/x", &[]).await.status, 200);
    assert_eq!(ops.proxy.last_reload().map(|r| r.ok), None);
    let targets = ops.json("/targets").await;
    assert_eq!(targets["groups"][0]["targets"][0]["drained"], json!(false));

    // The auth scheme is case-insensitive (RFC 9110 §11.1).
    let r = admin_call(
        ops.admin,
        "GET",
        "/status",
        Some(&format!("bearer {token}")),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Some traffic, so the views have something to show.
    assert_eq!(get(web, "acme.test", "/x", &[]).await.status, 200);
    assert_eq!(get(web, "acme.test", "/private/x", &[]).await.status, 403);

    // GET /status
    let status = ops.json("/status").await;
    assert_eq!(status["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(status["uptime_s"].is_u64(), "{status}");
    assert_eq!(status["config_file"], json!(ops.path.display().to_string()));
    let hash = status["config_hash"]
        .as_str()
        .expect("config_hash")
        .to_string();
    assert_eq!(hash.len(), 16, "{status}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{status}");
    assert_eq!(
        status["listeners"],
        json!([{ "name": "web", "address": web.to_string() }])
    );
    assert_eq!(
        status["last_reload"],
        Value::Null,
        "no reload yet: {status}"
    );
    assert_eq!(status["access_log_dropped"], json!(0));

    // GET /config: the effective config, the token's variable named, its value nowhere.
    let r = ops.call("GET", "/config", "").await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(token), "the token leaked: {}", r.body);
    let config: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(config["config_hash"], json!(hash));
    let c = &config["config"];
    assert_eq!(
        c["admin"],
        json!({ "bind": "127.0.0.1:0", "token_env": "OPS_TEST_ADMIN_TOKEN" })
    );
    assert!(c["listeners"]["web"].is_object(), "{c}");
    assert!(c["tenants"]["acme"].is_object(), "{c}");
    assert!(c["zones"]["edge"].is_object(), "{c}");
    assert!(
        c["profiles"]["public-cache"].is_object(),
        "built-ins listed: {c}"
    );

    // GET /routes
    let routes = ops.json("/routes").await;
    assert_eq!(
        routes,
        json!({ "routes": [
            { "tenant": "acme", "route": "private", "line": 13, "listeners": ["web"],
              "action": "deny", "groups": [], "runtime_faults": false },
            { "tenant": "acme", "route": "site", "line": 14, "listeners": ["web"],
              "action": "forward", "groups": [{ "group": "acme/app", "weight": 1 }],
              "runtime_faults": false },
        ]}),
    );

    // GET /graph: the same JSON as `bulkhead graph --format json`.
    let graph = ops.json("/graph").await;
    let path = ops.path.clone();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["graph", "--format", "json", "-c"])
            .arg(&path)
            .output()
            .expect("run bulkhead graph")
    })
    .await
    .expect("join");
    assert_eq!(cli.status.code(), Some(0), "{cli:?}");
    let cli: Value = serde_json::from_slice(&cli.stdout).expect("graph JSON");
    assert_eq!(graph, cli);
    let edges = graph["edges"].as_array().expect("edges");
    assert!(
        edges.iter().any(|e| e["route"] == json!("site")
            && e["group"] == json!("acme/app")
            && e["allowed"] == json!(true)),
        "{graph}"
    );

    // GET /targets
    let targets = ops.json("/targets").await;
    assert_eq!(
        targets,
        json!({ "groups": [{ "group": "acme/app", "in_flight": 0, "targets": [
            { "target": app_target, "weight": 1, "healthy": true, "drained": false, "in_flight": 0,
              "ejected": false, "consecutive_errors": 0 }
        ]}]})
    );

    // GET /metrics: Prometheus (OpenMetrics) text.
    let r = ops.call("GET", "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r:?}"
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert_eq!(r.body.matches("# EOF").count(), 1, "{}", r.body);
    assert!(
        r.body.contains("# TYPE bulkhead_requests counter"),
        "{}",
        r.body
    );
    assert_eq!(
        metric(
            &r.body,
            "bulkhead_target_healthy",
            &[("group", "acme/app"), ("target", &app_target)]
        ),
        1.0
    );

    // POST /reload (the file did not change): ok, the same hash.
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({ "ok": true, "config_hash": hash }));
    let status = ops.json("/status").await;
    assert_eq!(status["last_reload"]["ok"], json!(true), "{status}");
    assert_eq!(status["last_reload"]["errors"], json!([]));
    assert!(
        status["last_reload"]["at"]
            .as_str()
            .is_some_and(|t| t.len() >= 20 && t.ends_with('Z')),
        "RFC 3339: {status}"
    );

    // POST drain / undrain
    let (code, body) = ops
        .post(&format!("/targets/acme/app/{app_target}/drain"), "")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "group": "acme/app", "target": app_target, "drained": true })
    );
    let (code, body) = ops
        .post(&format!("/targets/acme/app/{app_target}/undrain"), "")
        .await;
    assert_eq!((code, &body["drained"]), (200, &json!(false)), "{body}");

    // POST faults
    let (code, body) = ops.post("/faults/acme/site", "{}").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "tenant": "acme", "route": "site", "cleared": true })
    );

    // Unknown paths: 404; a known path with the wrong method: 405 with Allow.
    for path in ["/nope", "/status/x", "/targets/acme", "/faults/acme", "/"] {
        let r = ops.call("GET", path, "").await;
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
        assert_eq!(r.body, r#"{"error":"not found"}"#);
    }
    let wrong_method: Vec<(&str, String, &str)> = vec![
        ("POST", "/status".into(), "GET"),
        ("PUT", "/config".into(), "GET"),
        ("DELETE", "/routes".into(), "GET"),
        ("POST", "/graph".into(), "GET"),
        ("POST", "/targets".into(), "GET"),
        ("POST", "/metrics".into(), "GET"),
        ("GET", "/reload".into(), "POST"),
        (
            "GET",
            format!("/targets/acme/app/{app_target}/drain"),
            "POST",
        ),
        ("DELETE", "/faults/acme/site".into(), "POST"),
    ];
    for (method, path, allow) in &wrong_method {
        let r = ops.call(method, path, "").await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert_eq!(r.header("allow"), Some(*allow), "{method} {path}: {r:?}");
        assert_eq!(r.body, r#"{"error":"method not allowed"}"#);
    }
}

// ---------------------------------------------------------------------------
// 2. metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_reloads() {
    let app = backend::start("app", any_port()).await.expect("backend");
    let yaml = fill(
        r#"${edge}listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
    routes:
      - { name: private, match: { path_prefix: /private/ }, deny: { status: 403 } }
      - { name: robots, match: { path_exact: /robots.txt }, respond: { status: 200, body: "ok" } }
      - { name: api, match: { path_prefix: /api/ }, forward: app }
"#,
        &[("edge", EDGE.into()), ("app", app.addr.to_string())],
    );
    let ops = Ops::start(&yaml, None).await;
    let web = ops.addr("web");
    let (n, m, k) = (7, 3, 2);
    for i in 0..n {
        let r = get(web, "acme.test", &format!("/api/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    for i in 0..m {
        let r = get(web, "acme.test", &format!("/private/{i}"), &[]).await;
        assert_eq!(r.status, 403, "{r:?}");
    }
    for _ in 0..k {
        let r = get(web, "nobody.test", "/", &[]).await;
        assert_eq!(r.status, 404, "{r:?}");
    }
    assert_eq!(get(web, "acme.test", "/robots.txt", &[]).await.status, 200);
    assert_eq!(app.hits(), n);

    let forward = [
        ("listener", "web"),
        ("zone", "edge"),
        ("tenant", "acme"),
        ("route", "api"),
        ("group", "acme/app"),
        ("decision", "forward"),
        ("status_class", "2xx"),
    ];
    let text = metrics_until(&ops, |t| {
        metric(t, "bulkhead_requests_total", &forward) == n as f64
            && metric(t, "bulkhead_denied_total", &[("decision", "no_route")]) == k as f64
    })
    .await;
    // The exact line the docs promise.
    let line = format!(
        "bulkhead_requests_total{{listener=\"web\",zone=\"edge\",tenant=\"acme\",route=\"api\",group=\"acme/app\",decision=\"forward\",status_class=\"2xx\"}} {n}"
    );
    assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    let deny = [("route", "private"), ("decision", "deny")];
    assert_eq!(
        metric(&text, "bulkhead_requests_total", &deny),
        m as f64,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_requests_total",
            &[("route", "private"), ("status_class", "4xx")]
        ),
        m as f64
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_denied_total",
            &[("listener", "web"), ("zone", "edge"), ("decision", "deny")]
        ),
        m as f64,
        "{text}"
    );
    assert_eq!(
        metric(&text, "bulkhead_denied_total", &[("decision", "no_route")]),
        k as f64
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_requests_total",
            &[("route", "robots"), ("decision", "respond")]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "bulkhead_denied_total", &[("decision", "respond")]),
        0.0,
        "local answers are not denials"
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_request_duration_seconds_count",
            &[("listener", "web"), ("tenant", "acme"), ("route", "api")]
        ),
        n as f64
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_upstream_duration_seconds_count",
            &[("group", "acme/app")]
        ),
        n as f64
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_target_healthy",
            &[("group", "acme/app"), ("target", &app.addr.to_string())]
        ),
        1.0
    );
    assert_eq!(
        samples(&text, "bulkhead_active_connections", &[("listener", "web")]).len(),
        1,
        "{text}"
    );
    assert_eq!(samples(&text, "bulkhead_reloads_total", &[]).len(), 0);

    // Reloads: ok ones and failed ones are counted; request counters survive them.
    let (code, _) = ops.post("/reload", "").await;
    assert_eq!(code, 200);
    ops.proxy.reload_from_file().await.expect("reload");
    ops.write("version: 1\nzones: { edge: {} \n");
    let (code, _) = ops.post("/reload", "").await;
    assert_eq!(code, 400);
    assert!(ops.proxy.reload_from_file().await.is_err());
    ops.write(&yaml.replace("deny: { status: 403 }", "deny: { status: 451 }"));
    let (code, _) = ops.post("/reload", "").await;
    assert_eq!(code, 200);
    let text = ops.metrics().await;
    assert_eq!(
        metric(&text, "bulkhead_reloads_total", &[("result", "ok")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "bulkhead_reloads_total", &[("result", "failed")]),
        2.0
    );
    assert_eq!(
        metric(&text, "bulkhead_requests_total", &forward),
        n as f64,
        "counters survive reloads"
    );
    // The reloaded rule counts under its own status class.
    assert_eq!(get(web, "acme.test", "/private/x", &[]).await.status, 451);
    let text = metrics_until(&ops, |t| {
        metric(
            t,
            "bulkhead_requests_total",
            &[("route", "private"), ("status_class", "4xx")],
        ) == (m + 1) as f64
    })
    .await;
    assert_eq!(
        metric(&text, "bulkhead_denied_total", &[("decision", "deny")]),
        (m + 1) as f64
    );
    // The reloaded config's names are new values: its forwards still add to
    // the one series of their labels, never to a second one.
    for i in 0..n {
        assert_eq!(
            get(web, "acme.test", &format!("/api/{i}"), &[])
                .await
                .status,
            200
        );
    }
    let text = metrics_until(&ops, |t| {
        metric(t, "bulkhead_requests_total", &forward) == (2 * n) as f64
    })
    .await;
    assert_eq!(
        samples(&text, "bulkhead_requests_total", &forward).len(),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_request_duration_seconds_count",
            &[("listener", "web"), ("tenant", "acme"), ("route", "api")]
        ),
        (2 * n) as f64
    );
}

// ---------------------------------------------------------------------------
// 3. rejected reloads change nothing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_keeps_the_old_behaviour() {
    let app = backend::start("app", any_port()).await.expect("backend");
    let panel = backend::start("panel", any_port()).await.expect("backend");
    let base = r#"version: 1
zones: { edge: {}, admin: {} }
flows: [{ from: edge, to: [edge] }]
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
      panel: { zone: admin, targets: ["${panel}"] }
    routes:
      - { name: private, match: { path_prefix: /private/ }, deny: { status: 403 } }
      - { name: site, match: { path_prefix: / }, forward: app }
invariants:
  - never: { from: edge, to: admin }
"#;
    let vars = [
        ("app", app.addr.to_string()),
        ("panel", panel.addr.to_string()),
    ];
    let yaml = fill(base, &vars);
    let ops = Ops::start(&yaml, None).await;
    let web = ops.addr("web");
    let hash = ops.json("/status").await["config_hash"].clone();

    let behaves_as_before = |why: &'static str| async move {
        let r = get(web, "acme.test", "/private/users", &[]).await;
        assert_eq!(r.status, 403, "{why}: {r:?}");
        assert_eq!(r.body, r#"{"error":"deny"}"#, "{why}");
        let r = get(web, "acme.test", "/shop", &[]).await;
        assert_eq!(r.status, 200, "{why}: {r:?}");
        assert_eq!(r.backend(), "app", "{why}");
    };
    behaves_as_before("before any reload").await;

    // (a) A YAML syntax error.
    ops.write(&yaml.replace(
        "flows: [{ from: edge, to: [edge] }]",
        "flows: [{ from: edge, to: [edge] }",
    ));
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["ok"], json!(false));
    let errors: Vec<String> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().expect("text").to_string())
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| located(e, &ops.path)),
        "FILE:LINE:COL: {errors:?}"
    );
    let status = ops.json("/status").await;
    assert_eq!(status["last_reload"]["ok"], json!(false), "{status}");
    assert_eq!(status["last_reload"]["errors"], body["errors"]);
    assert_eq!(status["config_hash"], hash, "still the old config");
    behaves_as_before("after a syntax error").await;

    // (b) A config that parses but breaks an invariant: the private path
    // would forward into the admin zone.
    let breaking = fill(
        &base
            .replace(
                "flows: [{ from: edge, to: [edge] }]",
                "flows: [{ from: edge, to: [edge, admin] }]",
            )
            .replace(
                "match: { path_prefix: /private/ }, deny: { status: 403 } }",
                "match: { path_prefix: /private/ }, forward: panel }",
            ),
        &vars,
    );
    ops.write(&breaking);
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["ok"], json!(false));
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| located(e, &ops.path) && e.contains("never")),
        "the broken invariant is named at FILE:LINE:COL: {errors:?}"
    );
    // The same through the in-process call.
    let direct = ops.proxy.reload_from_file().await.expect_err("rejected");
    assert_eq!(json!(direct), body["errors"]);
    let status = ops.json("/status").await;
    assert_eq!(status["last_reload"]["ok"], json!(false));
    assert_eq!(status["last_reload"]["errors"], body["errors"]);
    behaves_as_before("after a broken invariant").await;
    assert_eq!(panel.hits(), 0, "nothing ever reached the admin zone");

    // (c) A valid config that cannot be applied: a new listener on a port
    // already taken. Nothing of it applies — not even its route change.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let unbindable = yaml
        .replace(
            "  web: { bind: \"127.0.0.1:0\", zone: edge, protocol: http }",
            &format!(
                "  web: {{ bind: \"127.0.0.1:0\", zone: edge, protocol: http }}\n  more: {{ bind: \"{busy}\", zone: edge, protocol: http }}"
            ),
        )
        .replace(
            "deny: { status: 403 }",
            "respond: { status: 200, body: opened }",
        );
    ops.write(&unbindable);
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("more") && e.contains("cannot bind")),
        "{body}"
    );
    assert_eq!(ops.proxy.addr("more"), None);
    behaves_as_before("after a listener that cannot bind").await;
    drop(taken);

    // A good config applies, and /status says so.
    ops.write(&yaml.replace(
        "deny: { status: 403 }",
        "respond: { status: 200, body: opened }",
    ));
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 200, "{body}");
    assert_ne!(body["config_hash"], hash);
    let r = get(web, "acme.test", "/private/users", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "opened"));
    let status = ops.json("/status").await;
    assert_eq!(status["last_reload"]["ok"], json!(true));
    assert_eq!(status["last_reload"]["errors"], json!([]));
}

// ---------------------------------------------------------------------------
// 4. zero dropped requests across reloads under load

const LOAD_HOST: &str = "ops.test";

/// What the clients saw.
#[derive(Default)]
struct Load {
    requests: AtomicU64,
    keepalive: AtomicU64,
    fresh: AtomicU64,
    h2: AtomicU64,
    local: AtomicU64,
    forwarded: AtomicU64,
    connections: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    backends: Mutex<BTreeMap<String, u64>>,
    letters: Mutex<BTreeSet<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().expect("lock");
        if f.len() < 20 {
            f.push(what);
        }
    }

    /// Check one answer: `/local` must be a variant's local answer, anything
    /// else a 200 from a live backend that saw the same path.
    fn judge(&self, path: &str, result: Result<(u16, String), String>) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) => return self.fail(format!("GET {path}: {e}")),
        };
        if path == "/local" {
            if status == 200 && ["A", "B", "C"].contains(&body.as_str()) {
                self.local.fetch_add(1, Ordering::SeqCst);
                self.letters.lock().expect("lock").insert(body);
            } else {
                self.fail(format!("GET {path}: {status} {body:?}"));
            }
            return;
        }
        let backend = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("backend: "))
            .unwrap_or("");
        if status == 200
            && ["b1", "b2", "b3"].contains(&backend)
            && body.contains(&format!("request: GET {path}\n"))
        {
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            *self
                .backends
                .lock()
                .expect("lock")
                .entry(backend.to_string())
                .or_insert(0) += 1;
        } else {
            self.fail(format!("GET {path}: {status} {body:?}"));
        }
    }
}

fn load_path(client: usize, i: u64) -> String {
    if i.is_multiple_of(2) {
        format!("/app/c{client}/{i}")
    } else {
        "/local".to_string()
    }
}

async fn read_answer(
    resp: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<(u16, String), String> {
    let resp = resp.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Requests one after the other on one HTTP/1.1 keep-alive connection; a
/// broken connection is a failure (then it reconnects).
async fn keepalive_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, load: Arc<Load>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if sender.is_none() {
            let connected = async {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (snd, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                Ok::<_, String>(snd)
            };
            match timeout(STEP, connected).await {
                Ok(Ok(s)) => {
                    load.connections.fetch_add(1, Ordering::SeqCst);
                    sender = Some(s);
                }
                Ok(Err(e)) => {
                    load.requests.fetch_add(1, Ordering::SeqCst);
                    load.fail(format!("keep-alive client {id}: {e}"));
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    load.requests.fetch_add(1, Ordering::SeqCst);
                    load.fail(format!("keep-alive client {id}: connect timed out"));
                    continue;
                }
            }
        }
        let Some(snd) = sender.as_mut() else { continue };
        let path = load_path(id, i);
        i += 1;
        let req = h1_request("GET", LOAD_HOST, &path, &[]);
        let answer = timeout(STEP, async {
            snd.ready().await.map_err(|e| format!("ready: {e}"))?;
            read_answer(snd.send_request(req).await).await
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        if answer.is_err() {
            sender = None;
        }
        load.keepalive.fetch_add(1, Ordering::SeqCst);
        load.judge(&path, answer);
    }
}

/// Requests one after the other over one HTTP/2 (prior knowledge) connection.
async fn h2_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, load: Arc<Load>) {
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if sender.is_none() {
            let connected = async {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (snd, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                Ok::<_, String>(snd)
            };
            match timeout(STEP, connected).await {
                Ok(Ok(s)) => {
                    load.connections.fetch_add(1, Ordering::SeqCst);
                    sender = Some(s);
                }
                other => {
                    load.requests.fetch_add(1, Ordering::SeqCst);
                    load.fail(format!("h2 client {id}: {other:?}"));
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(snd) = sender.as_mut() else { continue };
        let path = load_path(id, i);
        i += 1;
        let req = http::Request::builder()
            .uri(format!("http://{LOAD_HOST}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answer = timeout(STEP, async {
            snd.ready().await.map_err(|e| format!("ready: {e}"))?;
            read_answer(snd.send_request(req).await).await
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        if answer.is_err() {
            sender = None;
        }
        load.h2.fetch_add(1, Ordering::SeqCst);
        load.judge(&path, answer);
    }
}

/// One request per new connection (`Connection: close`).
async fn fresh_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, load: Arc<Load>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let path = load_path(id, i);
        i += 1;
        let answer = try_get(addr, LOAD_HOST, &path, &[("connection", "close")])
            .await
            .map(|r| (r.status, r.body));
        load.connections.fetch_add(1, Ordering::SeqCst);
        load.fresh.fetch_add(1, Ordering::SeqCst);
        load.judge(&path, answer);
    }
}

/// The config of reload variant `v` (0, 1, 2): A has a second listener on
/// port `pa` and targets b1+b2; B moves it to `pb` and re-weights b1, adds
/// b3; C removes it and drops b1. `/local` answers the variant's letter.
fn variant(v: usize, b: &[SocketAddr; 3], pa: u16, pb: u16) -> String {
    let (letter, extra, targets) = match v % 3 {
        0 => (
            "A",
            format!("  extra: {{ bind: \"127.0.0.1:{pa}\", zone: edge, protocol: http }}\n"),
            format!("\"{}\", \"{}\"", b[0], b[1]),
        ),
        1 => (
            "B",
            format!("  extra: {{ bind: \"127.0.0.1:{pb}\", zone: edge, protocol: http }}\n"),
            format!(
                "{{ address: \"{}\", weight: 3 }}, \"{}\", {{ address: \"{}\", weight: 2 }}",
                b[0], b[1], b[2]
            ),
        ),
        _ => (
            "C",
            String::new(),
            format!("\"{}\", {{ address: \"{}\", weight: 5 }}", b[2], b[1]),
        ),
    };
    format!(
        r#"{EDGE}listeners:
  main: {{ bind: "127.0.0.1:0", zone: edge, protocol: http }}
{extra}tenants:
  ops:
    hosts: [{LOAD_HOST}]
    target_groups:
      app:
        zone: edge
        targets: [{targets}]
        health: {{ path: /healthz, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    routes:
      - {{ name: local, match: {{ path_exact: /local }}, respond: {{ status: 200, body: "{letter}", content_type: text/plain }} }}
      - {{ name: app, match: {{ path_prefix: /app/ }}, forward: app }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request() {
    const RELOADS: usize = 61;
    let backends = [
        backend::start("b1", any_port()).await.expect("backend"),
        backend::start("b2", any_port()).await.expect("backend"),
        backend::start("b3", any_port()).await.expect("backend"),
    ];
    let b = [backends[0].addr, backends[1].addr, backends[2].addr];
    let (pa, pb) = (sec_free_port(), sec_free_port());
    assert_ne!(pa, pb);
    let ops = Ops::start(&variant(0, &b, pa, pb), None).await;
    let main = ops.addr("main");
    let extra_a: SocketAddr = ([127, 0, 0, 1], pa).into();
    let extra_b: SocketAddr = ([127, 0, 0, 1], pb).into();
    assert_eq!(ops.proxy.addr("extra"), Some(extra_a));

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..4 {
        clients.spawn(keepalive_client(main, id, stop.clone(), load.clone()));
    }
    clients.spawn(h2_client(main, 4, stop.clone(), load.clone()));
    for id in 5..7 {
        clients.spawn(fresh_client(main, id, stop.clone(), load.clone()));
    }
    // Let the load start before the first reload.
    let deadline = Instant::now() + STEP;
    while load.requests.load(Ordering::SeqCst) < 50 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let mut slowest_reload = Duration::ZERO;
    let mut slowest_refusal = Duration::ZERO;
    for i in 1..=RELOADS {
        let v = i % 3;
        let letter = ["A", "B", "C"][v];
        ops.write(&variant(v, &b, pa, pb));
        let t = Instant::now();
        let (code, body) = ops.post("/reload", "").await;
        slowest_reload = slowest_reload.max(t.elapsed());
        assert_eq!(code, 200, "reload {i} (variant {letter}): {body}");
        // A reload answers once the new snapshot serves: a new request sees it.
        let r = get(main, LOAD_HOST, "/local", &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, letter),
            "right after reload {i}"
        );
        match v {
            0 | 1 => {
                let extra = if v == 0 { extra_a } else { extra_b };
                assert_eq!(ops.proxy.addr("extra"), Some(extra));
                let r = try_get(extra, LOAD_HOST, "/local", &[])
                    .await
                    .unwrap_or_else(|e| panic!("extra on {extra} after reload {i}: {e}"));
                assert_eq!((r.status, r.body.as_str()), (200, letter));
            }
            _ => {
                assert_eq!(ops.proxy.addr("extra"), None);
                // Its previous address (B's) stops accepting.
                let took = refused_within(extra_b)
                    .await
                    .unwrap_or_else(|e| panic!("after reload {i}: {e}"));
                slowest_refusal = slowest_refusal.max(took);
            }
        }
        sleep(Duration::from_millis(25)).await;
    }
    let reloading = started.elapsed();
    // A little more traffic on the last config, then stop the clients.
    sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let drained = timeout(Duration::from_secs(10), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    assert!(drained.is_ok(), "clients did not stop");

    let requests = load.requests.load(Ordering::SeqCst);
    let failed = load.failed.load(Ordering::SeqCst);
    let backends_seen = load.backends.lock().expect("lock").clone();
    println!(
        "zero-drop reload: {requests} requests ({} on 4 kept-alive HTTP/1.1 connections, {} over one h2 connection, {} on new connections; {} forwarded, {} local answers), {RELOADS} reloads in {reloading:?} (slowest POST /reload {slowest_reload:?}, a removed listener refused connections within {slowest_refusal:?}), {failed} failed; per backend {backends_seen:?}; {} client connections",
        load.keepalive.load(Ordering::SeqCst),
        load.h2.load(Ordering::SeqCst),
        load.fresh.load(Ordering::SeqCst),
        load.forwarded.load(Ordering::SeqCst),
        load.local.load(Ordering::SeqCst),
        load.connections.load(Ordering::SeqCst),
    );
    let failures = load.failures.lock().expect("lock").clone();
    assert_eq!(failed, 0, "failed requests: {failures:#?}");
    assert!(
        requests >= 10 * RELOADS as u64,
        "too little load to prove anything: {requests}"
    );
    assert_eq!(
        load.letters.lock().expect("lock").len(),
        3,
        "the clients saw every variant's answer"
    );
    assert_eq!(backends_seen.len(), 3, "{backends_seen:?}");

    // After the last reload (variant B): the listener moved to `pb`, the
    // old address refuses, the targets are B's.
    assert_eq!(RELOADS % 3, 1);
    let r = get(extra_b, LOAD_HOST, "/local", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "B"));
    refused_within(extra_a).await.expect("A's address closed");
    let targets = ops.json("/targets").await;
    let now: Vec<(String, u64)> = targets["groups"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap_or("").to_string(),
                t["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        now,
        vec![
            (b[0].to_string(), 3),
            (b[1].to_string(), 1),
            (b[2].to_string(), 2)
        ]
    );
    let status = ops.json("/status").await;
    assert_eq!(
        status["listeners"],
        json!([
            { "name": "extra", "address": extra_b.to_string() },
            { "name": "main", "address": main.to_string() },
        ])
    );
    let text = ops.metrics().await;
    assert_eq!(
        metric(&text, "bulkhead_reloads_total", &[("result", "ok")]),
        RELOADS as f64
    );
}

// ---------------------------------------------------------------------------
// 5. drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_target_takes_it_out_without_failing_in_flight_requests() {
    let a = slow_backend("a", Duration::from_millis(1500)).await;
    let b = slow_backend("b", Duration::from_millis(1500)).await;
    let base = r#"${edge}listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  t:
    hosts: [t.test]
    target_groups:
      g: { zone: edge, targets: ["${a}", "${b}"], balance: round_robin${timeouts} }
    routes:
      - { name: all, match: { path_prefix: / }, forward: g }
"#;
    let config = |timeouts: &str, respond: bool| {
        let mut y = fill(
            base,
            &[
                ("edge", EDGE.into()),
                ("a", a.addr().to_string()),
                ("b", b.addr().to_string()),
                ("timeouts", timeouts.into()),
            ],
        );
        if respond {
            y = y.replace(
                "    routes:\n",
                "    routes:\n      - { name: ping, match: { path_exact: /ping }, respond: { status: 200, body: pong } }\n",
            );
        }
        y
    };
    let ops = Ops::start(&config("", false), None).await;
    let web = ops.addr("web");

    // A slow request is in flight on one of the two targets.
    let slow = tokio::spawn(async move {
        let t = Instant::now();
        (get(web, "t.test", "/slow/1", &[]).await, t.elapsed())
    });
    let deadline = Instant::now() + STEP;
    while a.started() + b.started() == 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let (busy, busy_name, other_name) = if a.started() == 1 {
        (a.addr(), "a", "b")
    } else {
        assert_eq!(b.started(), 1, "the slow request reached a target");
        (b.addr(), "b", "a")
    };

    // Drain it.
    let (code, body) = ops.post(&format!("/targets/t/g/{busy}/drain"), "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "group": "t/g", "target": busy.to_string(), "drained": true })
    );
    let targets = ops.json("/targets").await;
    let state = |targets: &Value, addr: SocketAddr| -> Value {
        targets["groups"][0]["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["target"] == json!(addr.to_string()))
            .cloned()
            .expect("the target")
    };
    let busy_state = state(&targets, busy);
    assert_eq!(busy_state["drained"], json!(true), "{targets}");
    assert_eq!(busy_state["in_flight"], json!(1), "{targets}");
    assert_eq!(busy_state["healthy"], json!(true));
    let text = ops.metrics().await;
    let busy_text = busy.to_string();
    assert_eq!(
        metric(
            &text,
            "bulkhead_target_drained",
            &[("group", "t/g"), ("target", &busy_text)]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "bulkhead_target_in_flight",
            &[("group", "t/g"), ("target", &busy_text)]
        ),
        1.0
    );

    // New requests all go to the other target.
    for i in 0..10 {
        let r = get(web, "t.test", &format!("/fast/{i}"), &[]).await;
        assert_eq!((r.status, r.backend()), (200, other_name), "{r:?}");
    }
    // The in-flight one completes, with 200, from the drained target.
    let (r, took) = timeout(Duration::from_secs(5), slow)
        .await
        .expect("the slow request finished")
        .expect("join");
    assert_eq!((r.status, r.backend()), (200, busy_name), "{r:?}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    println!("a request in flight while its target was drained finished with 200 after {took:?}");

    // A drain is kept across reloads — also one that rebuilds the group's
    // pools (different connect timeout).
    ops.write(&config("", true));
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 200, "{body}");
    ops.write(&config(", timeouts: { connect: 2s }", true));
    let (code, body) = ops.post("/reload", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(web, "t.test", "/ping", &[]).await.body, "pong");
    let targets = ops.json("/targets").await;
    assert_eq!(
        state(&targets, busy)["drained"],
        json!(true),
        "drain survives reloads: {targets}"
    );
    for i in 0..6 {
        let r = get(web, "t.test", &format!("/after-reload/{i}"), &[]).await;
        assert_eq!((r.status, r.backend()), (200, other_name), "{r:?}");
    }

    // Undrain: back in rotation.
    let (code, body) = ops.post(&format!("/targets/t/g/{busy}/undrain"), "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["drained"], json!(false));
    let mut seen = BTreeMap::new();
    for i in 0..10 {
        let r = get(web, "t.test", &format!("/back/{i}"), &[]).await;
        assert_eq!(r.status, 200);
        *seen.entry(r.backend().to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.get(busy_name), Some(&5), "{seen:?}");
    assert_eq!(seen.get(other_name), Some(&5), "{seen:?}");

    // Every target drained: 503, nothing sent.
    let other = if busy == a.addr() { b.addr() } else { a.addr() };
    for t in [busy, other] {
        assert_eq!(
            ops.post(&format!("/targets/t/g/{t}/drain"), "").await.0,
            200
        );
    }
    let before = a.hits() + b.hits();
    let r = get(web, "t.test", "/x", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"error":"unavailable"}"#)
    );
    assert_eq!(a.hits() + b.hits(), before);
    for t in [busy, other] {
        assert_eq!(
            ops.post(&format!("/targets/t/g/{t}/undrain"), "").await.0,
            200
        );
    }
    assert_eq!(get(web, "t.test", "/x", &[]).await.status, 200);

    // Unknown tenant, group or target: 404, nothing changes.
    for (path, error) in [
        (format!("/targets/t/nope/{busy}/drain"), "no such group"),
        (format!("/targets/nobody/g/{busy}/drain"), "no such group"),
        (
            "/targets/t/g/127.0.0.1:1/drain".to_string(),
            "no such target in the group",
        ),
        (
            format!("/targets/t/g/localhost:{}/undrain", busy.port()),
            "no such target in the group",
        ),
    ] {
        let (code, body) = ops.post(&path, "").await;
        assert_eq!((code, body), (404, json!({ "error": error })), "{path}");
    }
    let targets = ops.json("/targets").await;
    assert!(
        targets["groups"][0]["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .all(|t| t["drained"] == json!(false)),
        "{targets}"
    );
}

// ---------------------------------------------------------------------------
// 6. faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_from_the_config_and_the_admin_api() {
    let acme_app = backend::start("acme-app", any_port())
        .await
        .expect("backend");
    let beta_app = backend::start("beta-app", any_port())
        .await
        .expect("backend");
    let yaml = fill(
        r#"${edge}listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: { zone: edge, targets: ["${acme}"] }
    routes:
      - name: broken
        match: { path_prefix: /broken/ }
        forward: app
        faults: { abort: { status: 503, percent: 100 } }
      - { name: site, match: { path_prefix: / }, forward: app }
  beta:
    hosts: [beta.test]
    target_groups:
      app: { zone: edge, targets: ["${beta}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
"#,
        &[
            ("edge", EDGE.into()),
            ("acme", acme_app.addr.to_string()),
            ("beta", beta_app.addr.to_string()),
        ],
    );
    let ops = Ops::start(&yaml, None).await;
    let web = ops.addr("web");
    let timed = |host: &'static str, path: &'static str| async move {
        let t = Instant::now();
        let r = get(web, host, path, &[]).await;
        (r, t.elapsed())
    };

    // The config's abort: 503, and the backend sees nothing.
    for _ in 0..3 {
        let r = get(web, "acme.test", "/broken/x", &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, r#"{"error":"unavailable"}"#)
        );
    }
    assert_eq!(acme_app.hits(), 0);
    assert_eq!(get(web, "acme.test", "/fine", &[]).await.status, 200);
    assert_eq!(acme_app.hits(), 1);

    // A runtime delay on acme/site slows only that route.
    let (code, body) = ops
        .post(
            "/faults/acme/site",
            r#"{"delay":{"duration":"300ms","percent":100}}"#,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "tenant": "acme", "route": "site", "cleared": false })
    );
    let routes = ops.json("/routes").await;
    let runtime = |routes: &Value, tenant: &str, route: &str| {
        routes["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["tenant"] == json!(tenant) && r["route"] == json!(route))
            .map(|r| r["runtime_faults"].clone())
            .expect("the route")
    };
    assert_eq!(runtime(&routes, "acme", "site"), json!(true));
    assert_eq!(runtime(&routes, "beta", "site"), json!(false));
    let (slowed, slow_took) = timed("acme.test", "/page").await;
    let (fast, fast_took) = timed("beta.test", "/page").await;
    println!("runtime delay 300ms on acme/site: acme/site took {slow_took:?}, beta/site took {fast_took:?}");
    assert_eq!((slowed.status, slowed.backend()), (200, "acme-app"));
    assert_eq!((fast.status, fast.backend()), (200, "beta-app"));
    assert!(slow_took >= Duration::from_millis(300), "{slow_took:?}");
    assert!(fast_took < Duration::from_millis(250), "{fast_took:?}");

    // `{}` turns it off.
    let (code, body) = ops.post("/faults/acme/site", "{}").await;
    assert_eq!((code, &body["cleared"]), (200, &json!(true)), "{body}");
    let (_, took) = timed("acme.test", "/page").await;
    assert!(took < Duration::from_millis(250), "{took:?}");
    // `{}` on a route whose faults come from the config turns those off too, until a reload.
    let (code, _) = ops.post("/faults/acme/broken", "{}").await;
    assert_eq!(code, 200);
    let r = get(web, "acme.test", "/broken/x", &[]).await;
    assert_eq!((r.status, r.backend()), (200, "acme-app"));

    // Bad requests change nothing.
    for (path, body, want) in [
        ("/faults/acme/nope", "{}", 404),
        ("/faults/nobody/site", "{}", 404),
        (
            "/faults/acme/site",
            r#"{"abort":{"status":999,"percent":100}}"#,
            400,
        ),
        (
            "/faults/acme/site",
            r#"{"abort":{"status":503,"percent":101}}"#,
            400,
        ),
        (
            "/faults/acme/site",
            r#"{"delay":{"duration":"soon","percent":50}}"#,
            400,
        ),
        ("/faults/acme/site", r#"{"bogus":{}}"#, 400),
        ("/faults/acme/site", "not json", 400),
        ("/faults/acme/site", "[1]", 400),
    ] {
        let (code, answer) = ops.post(path, body).await;
        assert_eq!(code, want, "POST {path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (_, took) = timed("acme.test", "/page").await;
    assert!(took < Duration::from_millis(250), "{took:?}");

    // Runtime faults on two routes; a failed reload keeps them, a good one
    // clears them all (the file is the truth again: the config's abort is back).
    let (code, _) = ops
        .post(
            "/faults/beta/site",
            r#"{"abort":{"status":503,"percent":100}}"#,
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = ops
        .post(
            "/faults/acme/site",
            r#"{"delay":{"duration":"300ms","percent":100}}"#,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(get(web, "beta.test", "/x", &[]).await.status, 503);
    ops.write("version: 1\nlisteners: [\n");
    let (code, _) = ops.post("/reload", "").await;
    assert_eq!(code, 400);
    assert_eq!(
        get(web, "beta.test", "/x", &[]).await.status,
        503,
        "a rejected reload keeps runtime faults"
    );
    ops.write(&yaml);
    let (code, _) = ops.post("/reload", "").await;
    assert_eq!(code, 200);
    let (r, took) = timed("beta.test", "/x").await;
    assert_eq!(r.status, 200, "a reload clears runtime faults");
    let (r2, took2) = timed("acme.test", "/page").await;
    assert_eq!(r2.status, 200);
    assert!(took < Duration::from_millis(250) && took2 < Duration::from_millis(250));
    let r = get(web, "acme.test", "/broken/x", &[]).await;
    assert_eq!(r.status, 503, "the config's abort is back after the reload");
    let routes = ops.json("/routes").await;
    assert_eq!(runtime(&routes, "acme", "site"), json!(false));
    assert_eq!(runtime(&routes, "beta", "site"), json!(false));

    // The access log says which route answered what.
    let deadline = Instant::now() + STEP;
    let lines = loop {
        let lines = ops.log_lines();
        let aborted = lines
            .iter()
            .filter(|l| l["route"] == json!("broken") && l["status"] == json!(503))
            .count();
        if aborted >= 4 || Instant::now() >= deadline {
            break lines;
        }
        sleep(Duration::from_millis(25)).await;
    };
    let aborted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["route"] == json!("broken") && l["status"] == json!(503))
        .collect();
    assert_eq!(aborted.len(), 4, "{lines:#?}");
    assert!(aborted.iter().all(|l| l["decision"] == json!("unavailable")
        && l["group"] == json!("acme/app")
        && l["target"].is_null()));
}

// ---------------------------------------------------------------------------
// 7. the real binary: SIGHUP, --watch, token_env, SIGTERM

const TOKEN_VAR: &str = "BULKHEAD_OPS_TEST_TOKEN";
const BIN_TOKEN: &str = "ops-binary-token";

fn binary_config(admin: u16, routes: &[(&str, &str)]) -> String {
    let mut y = format!(
        r#"version: 1
workers: 1
admin: {{ bind: "127.0.0.1:{admin}", token_env: {TOKEN_VAR} }}
log: {{ access: access.log }}
drain_timeout: 2s
zones: {{ edge: {{}} }}
flows: [{{ from: edge, to: [edge] }}]
listeners:
  web: {{ bind: "127.0.0.1:0", zone: edge, protocol: http }}
tenants:
  ops:
    hosts: [ops.test]
    routes:
"#
    );
    for (i, (path, body)) in routes.iter().enumerate() {
        y.push_str(&format!(
            "      - {{ name: r{i}, match: {{ path_exact: {path} }}, respond: {{ status: 200, body: \"{body}\", content_type: text/plain }} }}\n"
        ));
    }
    y
}

/// `bulkhead run` as a child process, killed when dropped.
struct Running {
    child: std::process::Child,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(yaml: &str, admin: u16, watch: bool) -> Running {
        let dir = tempdir();
        let cfg = dir.path().join("bulkhead.yaml");
        std::fs::write(&cfg, yaml).expect("write the config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["run", "-c"]).arg(&cfg);
        if watch {
            cmd.arg("--watch");
        }
        let child = cmd
            .env(TOKEN_VAR, BIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn bulkhead run");
        Running {
            child,
            dir,
            cfg,
            admin: ([127, 0, 0, 1], admin).into(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn admin_get(&self, path: &str) -> Result<Resp, String> {
        let auth = format!("Bearer {BIN_TOKEN}");
        let stream = timeout(STEP, TcpStream::connect(self.admin))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let req = http::Request::builder()
            .uri(path)
            .header("host", "admin.local")
            .header("authorization", auth)
            .body(Full::new(Bytes::new()))
            .expect("request");
        send_on(stream, false, req).await
    }

    /// Wait (up to 10 s) for the admin API; the data listener's address.
    async fn ready(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bulkhead run exited early ({status}):\n{}", self.stderr());
            }
            if let Ok(r) = self.admin_get("/status").await {
                assert_eq!(r.status, 200, "{r:?}");
                let status: Value = serde_json::from_str(&r.body).expect("JSON");
                let addr = status["listeners"][0]["address"]
                    .as_str()
                    .expect("a listener")
                    .parse()
                    .expect("an address");
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "the admin API did not answer within 10 s:\n{}",
                self.stderr()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait (up to `within`) for the process to exit.
    async fn exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll `GET path` on `web` (up to `within`) until it answers 200 with `body`.
    async fn until_answers(&self, web: SocketAddr, path: &str, body: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let last = try_get(web, "ops.test", path, &[]).await;
            if matches!(&last, Ok(r) if r.status == 200 && r.body == body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} did not answer {body:?} within {within:?}: {last:?}\n{}",
                self.stderr()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_exits_0_on_sigterm() {
    let admin = sec_free_port();
    let mut run = Running::spawn(&binary_config(admin, &[("/hello", "v1")]), admin, false);
    let web = run.ready().await;
    run.until_answers(web, "/hello", "v1", STEP).await;
    assert_eq!(
        try_get(web, "ops.test", "/new", &[])
            .await
            .map(|r| r.status),
        Ok(404)
    );
    // The token is required, /metrics included.
    for path in ["/status", "/metrics"] {
        let r = admin_call(run.admin, "GET", path, None, "").await;
        assert_eq!(r.status, 401, "{path}");
    }

    // Change the file, then SIGHUP.
    std::fs::write(
        &run.cfg,
        binary_config(admin, &[("/hello", "v2"), ("/new", "new")]),
    )
    .expect("write");
    run.signal("HUP");
    run.until_answers(web, "/new", "new", STEP).await;
    run.until_answers(web, "/hello", "v2", STEP).await;
    let status: Value =
        serde_json::from_str(&run.admin_get("/status").await.expect("status").body).expect("JSON");
    assert_eq!(status["last_reload"]["ok"], json!(true), "{status}");
    assert_eq!(
        status["listeners"][0]["address"],
        json!(web.to_string()),
        "the kept listener kept its socket"
    );

    // A bad file on SIGHUP: nothing changes, the process lives on, /status says why.
    std::fs::write(&run.cfg, "version: 1\nzones: {\n").expect("write");
    run.signal("HUP");
    let deadline = Instant::now() + STEP;
    let status = loop {
        let status: Value =
            serde_json::from_str(&run.admin_get("/status").await.expect("status").body)
                .expect("JSON");
        if status["last_reload"]["ok"] == json!(false) || Instant::now() >= deadline {
            break status;
        }
        sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(status["last_reload"]["ok"], json!(false), "{status}");
    let errors = status["last_reload"]["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .filter_map(Value::as_str)
            .any(|e| located(e, &run.cfg)),
        "{status}"
    );
    assert!(run.child.try_wait().expect("try_wait").is_none());
    run.until_answers(web, "/new", "new", STEP).await;

    // SIGTERM: exit 0, listeners closed.
    run.signal("TERM");
    let status = run.exit(STEP).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        run.stderr()
    );
    assert!(TcpStream::connect(web).await.is_err());
    assert!(TcpStream::connect(run.admin).await.is_err());
    let stderr = run.stderr();
    assert!(stderr.contains("SIGHUP: reloading the config"), "{stderr}");
    assert!(stderr.contains("reload rejected"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_watch_reloads_when_the_file_changes() {
    let admin = sec_free_port();
    let mut run = Running::spawn(&binary_config(admin, &[("/hello", "v1")]), admin, true);
    let web = run.ready().await;
    run.until_answers(web, "/hello", "v1", STEP).await;

    // An in-place rewrite.
    let t = Instant::now();
    std::fs::write(
        &run.cfg,
        binary_config(admin, &[("/hello", "v1"), ("/watched", "seen")]),
    )
    .expect("write");
    run.until_answers(web, "/watched", "seen", STEP).await;
    let in_place = t.elapsed();

    // An editor-style save: write a temporary file, rename it over the config.
    let t = Instant::now();
    let tmp = run.dir.path().join(".bulkhead.yaml.swp");
    std::fs::write(
        &tmp,
        binary_config(admin, &[("/hello", "v3"), ("/watched", "seen")]),
    )
    .expect("write");
    std::fs::rename(&tmp, &run.cfg).expect("rename");
    run.until_answers(web, "/hello", "v3", STEP).await;
    let renamed = t.elapsed();
    println!("--watch: reloaded {in_place:?} after an in-place write, {renamed:?} after a rename");

    let status: Value =
        serde_json::from_str(&run.admin_get("/status").await.expect("status").body).expect("JSON");
    assert_eq!(status["last_reload"]["ok"], json!(true), "{status}");
    run.signal("TERM");
    let status = run.exit(STEP).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        run.stderr()
    );
    assert!(run.stderr().contains("a watched file changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_to_run_without_its_admin_token() {
    let admin = sec_free_port();
    let dir = tempdir();
    let cfg = dir.path().join("bulkhead.yaml");
    std::fs::write(&cfg, binary_config(admin, &[("/hello", "v1")])).expect("write");
    for value in [None, Some("")] {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["run", "-c"]).arg(&cfg);
        match value {
            None => cmd.env_remove(TOKEN_VAR),
            Some(v) => cmd.env(TOKEN_VAR, v),
        };
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = timeout(
            STEP,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("bulkhead run exits at once")
        .expect("join")
        .expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value:?}: {stderr}");
        assert!(
            stderr.contains(TOKEN_VAR) && stderr.contains("not set"),
            "{stderr}"
        );
        assert!(
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], admin)))
                .await
                .is_err(),
            "nothing was served"
        );
    }
}
