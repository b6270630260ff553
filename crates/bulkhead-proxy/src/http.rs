//! One HTTP request, end to end: strict checks (DESIGN §2 step 2), the
//! core's `decide()`, then either a local answer or the upstream exchange —
//! and exactly one access-log line either way.

use crate::access_log::{LogLine, LogName, Name, Names};
use crate::body::{Counted, LogGuard, Logged, RequestBody, Tally};
use crate::headers::{self, Hop};
use crate::raw_head::ResponseHeads;
use crate::timers::{Busy, ConnTimers};
use crate::upstream::{elapsed_ms, HashKey, ProxyBody, UpstreamError};
use crate::{BoxError, Generation, Shared};
use bulkhead_core::{
    Answer, Credentials, Decision, DecisionKind, HeaderSource, HostHeader, HttpVersion, Request,
    Snapshot,
};
use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Facts of a TLS connection.
#[derive(Clone, Debug, Default)]
pub struct TlsFacts {
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Negotiated version.
    pub version: &'static str,
    /// Verified client-certificate identities.
    pub credentials: Credentials,
}

/// One accepted connection.
pub struct Conn {
    /// Shared proxy state.
    pub shared: Arc<Shared>,
    /// Listener name.
    pub listener: Arc<str>,
    /// The client.
    pub peer: SocketAddr,
    /// The client's address as the log and the forwarding headers write it.
    pub client: headers::ClientAddr,
    /// TLS facts (https listeners).
    pub tls: Option<TlsFacts>,
    /// The connection's header / idle clocks.
    pub timers: Arc<ConnTimers>,
}

struct HeaderMapSource<'a>(&'a http::HeaderMap);

impl HeaderSource for HeaderMapSource<'_> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(f)
    }
}

/// A full body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A short JSON error answer (`{"error":"deny"}`), nothing else revealed.
fn error_response(status: u16, kind: DecisionKind, close: bool) -> Response<ProxyBody> {
    let body = format!("{{\"error\":\"{}\"}}", kind.as_str());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if close {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// RFC 9112 §6: the framing checks hyper leaves to us. Returns the status
/// to answer with when the request must be refused (and the connection closed).
fn strict_framing(
    req: &http::Request<RequestBody>,
    max_body: Option<u64>,
) -> Option<(u16, &'static str)> {
    let h = req.headers();
    let te: Vec<&HeaderValue> = h.get_all(TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if req.version() == Version::HTTP_10 {
            return Some((400, "Transfer-Encoding on HTTP/1.0"));
        }
        if h.contains_key(CONTENT_LENGTH) {
            return Some((400, "both Content-Length and Transfer-Encoding"));
        }
        if !headers::chunked_is_final(h) {
            return Some((400, "Transfer-Encoding whose final coding is not chunked"));
        }
    }
    let lengths: Vec<&HeaderValue> = h.get_all(CONTENT_LENGTH).iter().collect();
    if lengths.len() > 1 && lengths.iter().any(|v| *v != lengths[0]) {
        return Some((400, "differing Content-Length headers"));
    }
    if let Some(len) = lengths.first() {
        let Some(n) = len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return Some((400, "invalid Content-Length"));
        };
        if max_body.is_some_and(|max| n > max) {
            return Some((413, "body over max_body_bytes"));
        }
    }
    None
}

/// Serve one request. `heads`: how the caller takes an HTTP/1.1 target's
/// response head (`Raw` only where it writes a [`crate::raw_head::RawHead`]).
pub async fn handle(
    req: http::Request<RequestBody>,
    conn: Arc<Conn>,
    heads: ResponseHeads,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    // Until this is dropped (local answers: on return; forwards: when the
    // response body ends) the connection is busy, not idle.
    let busy = conn.timers.request_started();
    let generation = conn.shared.generation.load_full();
    let snap = &generation.snapshot;
    let mut line = LogLine {
        ts: crate::access_log::Timestamp::now(),
        listener: Some(conn.listener.clone()),
        client: Some(conn.client.text.clone()),
        method: Some(method_name(req.method())),
        tls: conn.tls.as_ref().map(crate::server::tls_info),
        ..LogLine::default()
    };
    let Some(lid) = snap.listener_id(&conn.listener) else {
        // The listener left the config on a reload while this connection lived.
        return Ok(local(
            &conn.shared,
            line,
            started,
            503,
            DecisionKind::Unavailable,
            true,
        ));
    };
    let l = &snap.listeners[lid as usize];
    line.zone = generation.names.zones.get(l.zone as usize).cloned();
    let limits = &snap.config.listeners[lid as usize].limits;
    if let Some((status, reason)) = strict_framing(&req, limits.max_body_bytes) {
        tracing::debug!(client = %conn.peer, reason, "request refused before routing");
        line.path = Some(req.uri().path().into());
        return Ok(local(
            &conn.shared,
            line,
            started,
            status,
            DecisionKind::BadRequest,
            true,
        ));
    }

    // Facts for the decision.
    let h2 = req.version() == Version::HTTP_2;
    let version = match req.version() {
        Version::HTTP_10 | Version::HTTP_09 => HttpVersion::Http10,
        Version::HTTP_2 => HttpVersion::Http2,
        _ => HttpVersion::Http11,
    };
    let uri = req.uri();
    let target: std::borrow::Cow<'_, str> = match (uri.scheme(), uri.path_and_query()) {
        (Some(_), _) if !h2 => uri.to_string().into(),
        (_, Some(p)) => p.as_str().into(),
        // Authority-form (`GET host:port`) is for CONNECT only: hand it to
        // the core as sent, which refuses it, rather than serve `/`.
        (None, None) if !h2 => uri.to_string().into(),
        _ => "/".into(),
    };
    let mut host_values = req.headers().get_all(HOST).iter();
    let (first_host, more_hosts) = (host_values.next(), host_values.next().is_some());
    let authority = if h2 {
        uri.authority().map(|a| a.as_str().to_string())
    } else {
        None
    };
    let host_text: Option<&str> = match (&authority, first_host, more_hosts) {
        (Some(a), _, _) => Some(a.as_str()),
        (None, Some(one), false) => match one.to_str() {
            Ok(s) => Some(s),
            Err(_) => {
                return Ok(local(
                    &conn.shared,
                    line,
                    started,
                    400,
                    DecisionKind::BadRequest,
                    true,
                ))
            }
        },
        _ => None,
    };
    let host = match (host_text, more_hosts) {
        (_, true) => HostHeader::Many,
        (Some(h), _) => HostHeader::One(h),
        (None, _) => HostHeader::Missing,
    };
    // The Host the upstream sees is the one the request was routed by: an
    // absolute-form target's authority wins over the Host header (RFC 9112 §3.2.2).
    let raw_host = match (uri.scheme(), uri.authority()) {
        (Some(_), Some(a)) if !h2 => Some(a.as_str().to_string()),
        _ => host_text.map(str::to_string),
    };
    let default_creds = Credentials::default();
    let creds = conn.tls.as_ref().map_or(&default_creds, |t| &t.credentials);
    // auth.rs: what a Bearer token proves, added to the connection's
    // credentials. The Authorization header itself is forwarded as is.
    let proven = generation.auth.credentials(req.headers(), creds);
    let creds = proven.as_ref().unwrap_or(creds);
    let header_source = HeaderMapSource(req.headers());
    let pick = rand::random();
    let decide = |credentials| {
        snap.decide(&Request {
            listener: &conn.listener,
            source: Some(conn.peer.ip()),
            sni: conn.tls.as_ref().and_then(|t| t.sni.as_deref()),
            version,
            method: req.method().as_str(),
            target: &target,
            host,
            headers: &header_source,
            credentials,
            pick,
            trace: false,
        })
    };
    let mut decision = decide(creds);
    // From the first await on, a client that leaves cancels this future:
    // the guard still writes the request's one log line (status null).
    let mut line = Unanswered::new(line, conn.shared.clone(), started);
    // auth.rs: a 401 of a `basic` route checks the password against that
    // route's users file (only then: hashes are slow), and decides again.
    let with_user = generation
        .auth
        .basic(snap, &decision, req.headers(), creds)
        .await;
    if let Some(c) = &with_user {
        decision = decide(c);
    }
    fill_line(&mut line, &generation.names, snap, &decision);
    let plan = Plan::of(&decision, &line, heads);
    let (answer, kind) = (decision.answer, decision.kind);
    match answer {
        Answer::Forward => {
            // Boxed: the large forwarding state lives on the heap only while a
            // request is being forwarded, not in every connection's task. Built
            // in a statement of its own: a temporary still alive at the await
            // would be kept in this future too, doubling its size. Written
            // into an allocated box rather than `Box::pin`ned, which built the
            // future on the stack and copied all 2.9 KiB of it (−600
            // instructions per request with the same change in `h1_server`).
            let forwarding = Box::into_pin(Box::write(
                Box::new_uninit(),
                forward(req, conn, &generation, plan, line, raw_host, busy),
            ));
            Ok(forwarding.await)
        }
        Answer::Redirect { location, status } => {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, v);
            }
            line.finish(status, 0);
            Ok(resp)
        }
        Answer::Respond {
            status,
            body,
            content_type,
        } => {
            let len = body.len() as u64;
            let mut resp = Response::new(full(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(CONTENT_TYPE, ct);
            }
            line.finish(status, len);
            Ok(resp)
        }
        Answer::Error(status) => {
            let status = status.unwrap_or(403);
            let close = kind == DecisionKind::BadRequest;
            Ok(line.local(status, kind, close))
        }
    }
}

/// A request's log line until its answer takes it. If the request's future
/// is dropped first — the client left while the upstream was being asked —
/// the line is written here, with a null status: every request gets exactly
/// one line (DESIGN §5).
struct Unanswered {
    line: LogLine,
    answered: bool,
    shared: Arc<Shared>,
    started: Instant,
}

impl Unanswered {
    fn new(line: LogLine, shared: Arc<Shared>, started: Instant) -> Self {
        Unanswered {
            line,
            answered: false,
            shared,
            started,
        }
    }

    /// The line, for whatever answers the request (and logs it).
    fn take(&mut self) -> LogLine {
        self.answered = true;
        std::mem::take(&mut self.line)
    }

    /// Answer locally with a JSON error, logging the request.
    fn local(&mut self, status: u16, kind: DecisionKind, close: bool) -> Response<ProxyBody> {
        let line = self.take();
        local(&self.shared, line, self.started, status, kind, close)
    }

    /// Log a local answer (redirect, respond) with `bytes_out` body bytes.
    fn finish(&mut self, status: u16, bytes_out: u64) {
        let line = self.take();
        finish_local(&self.shared, line, self.started, status, bytes_out);
    }

    /// Answer an upstream failure (502, 503, 504), logging the request.
    fn upstream_failure(&mut self, e: UpstreamError) -> Response<ProxyBody> {
        let line = self.take();
        upstream_failure(&self.shared, line, self.started, e)
    }
}

impl std::ops::Deref for Unanswered {
    type Target = LogLine;
    fn deref(&self) -> &LogLine {
        &self.line
    }
}

impl std::ops::DerefMut for Unanswered {
    fn deref_mut(&mut self) -> &mut LogLine {
        &mut self.line
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.answered {
            tracing::debug!("request cancelled: the client went away");
            let mut line = std::mem::take(&mut self.line);
            line.status = None;
            line.duration_ms = elapsed_ms(self.started);
            self.shared.record(line);
        }
    }
}

/// What forwarding needs from a decision, owned, so the request can move.
/// (Host, path and query are the log line's: shared, not copied.)
struct Plan {
    listener: Option<u32>,
    tenant: Option<u32>,
    route: Option<u32>,
    group: Option<u32>,
    host: Option<Name>,
    path: Option<Name>,
    query: Option<Name>,
    identity: Option<String>,
    /// How the client's side takes the target's response head.
    heads: ResponseHeads,
}

impl Plan {
    fn of(d: &Decision<'_>, line: &LogLine, heads: ResponseHeads) -> Plan {
        Plan {
            listener: d.listener,
            tenant: d.tenant,
            route: d.route,
            group: d.group,
            host: line.host.clone(),
            path: line.path.clone(),
            query: line.query.clone(),
            identity: d.identity.as_deref().map(str::to_string),
            heads,
        }
    }
}

fn fill_line(line: &mut LogLine, names: &Arc<Names>, snap: &Snapshot, d: &Decision<'_>) {
    if let Some(t) = d.tenant {
        line.tenant = Some(LogName::Tenant(t));
        line.route = d.route.map(|r| LogName::Route(t, r));
    }
    if let Some(g) = d.group {
        line.group = Some(LogName::Group(g));
        let zone = snap.groups[g as usize].zone;
        line.group_zone = names.zones.get(zone as usize).cloned();
    }
    line.names = Some(names.clone());
    line.decision = d.kind.as_str();
    line.host = d.host.as_deref().map(Name::from);
    line.path = d.path.as_deref().map(Name::from);
    line.query = d.query.map(Name::from);
}

/// Answer locally with a JSON error, logging the request.
fn local(
    shared: &Shared,
    mut line: LogLine,
    started: Instant,
    status: u16,
    kind: DecisionKind,
    close: bool,
) -> Response<ProxyBody> {
    line.decision = kind.as_str();
    let resp = error_response(status, kind, close);
    let len = format!("{{\"error\":\"{}\"}}", kind.as_str()).len() as u64;
    finish_local(shared, line, started, status, len);
    resp
}

fn finish_local(shared: &Shared, mut line: LogLine, started: Instant, status: u16, bytes_out: u64) {
    line.status = Some(status);
    line.bytes_out = bytes_out;
    line.duration_ms = elapsed_ms(started);
    shared.record(line);
}

fn is_upgrade(req: &http::Request<RequestBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && headers::has_token(req.headers(), CONNECTION, "upgrade")
}

/// A method's name for the log line: borrowed for the standard methods.
fn method_name(method: &Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    match STANDARD.iter().find(|(m, _)| m == method) {
        Some((_, name)) => (*name).into(),
        None => method.as_str().to_string().into(),
    }
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id() -> Name {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((bits >> ((31 - i) * 4)) & 0xf) as usize];
    }
    Name::from(std::str::from_utf8(&id).unwrap_or_default())
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut req: http::Request<RequestBody>,
    conn: Arc<Conn>,
    generation: &Generation,
    d: Plan,
    mut line: Unanswered,
    raw_host: Option<String>,
    busy: Busy,
) -> Response<ProxyBody> {
    let snap = &generation.snapshot;
    let started = line.started;
    let (Some(lid), Some(tid), Some(rid), Some(gid)) = (d.listener, d.tenant, d.route, d.group)
    else {
        return line.local(503, DecisionKind::Unavailable, false);
    };
    let group = generation.upstreams.group(gid).clone();
    let policy = snap.policy(lid, tid, rid, Some(gid));
    let timeouts = policy
        .timeouts()
        .cloned()
        .unwrap_or_else(|| group.timeouts.clone());
    // Rate limit: a token bucket per route and key (client IP, identity or header).
    if let Some(limiter) = generation.policies.limiter(lid, tid, rid) {
        if let Err(wait) = limiter.check(conn.peer.ip(), d.identity.as_deref(), req.headers()) {
            let mut resp = line.local(429, DecisionKind::RateLimited, false);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers::set(resp.headers_mut(), "retry-after", &secs.max(1).to_string());
            return resp;
        }
    }
    // Tenant and listener concurrency budgets: shed at once, never queue.
    let budget = match generation.policies.enter(lid, tid) {
        Ok(slots) => slots,
        Err(why) => {
            tracing::debug!(why, "shed by a concurrency budget");
            return line.local(503, DecisionKind::Unavailable, false);
        }
    };
    // Fault injection (a runtime override from the admin API wins over the config).
    let faults = {
        let t = &snap.tenants[tid as usize];
        conn.shared
            .fault_override(&t.name, &t.routes[rid as usize].name)
            .or_else(|| policy.faults().cloned())
    };
    if let Some((status, percent)) = faults.as_ref().and_then(|f| f.abort) {
        if rand::random::<f64>() * 100.0 < percent {
            let kind = match status {
                502 => DecisionKind::UpstreamError,
                504 => DecisionKind::Timeout,
                _ => DecisionKind::Unavailable,
            };
            return line.local(status, kind, false);
        }
    }
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let l = &snap.listeners[lid as usize];
    let zone = &snap.zones[l.zone as usize];
    let trusted_id = if zone.trusted {
        headers::incoming_request_id(&parts.headers)
    } else {
        None
    };
    let request_id = trusted_id.map_or_else(new_request_id, Name::from);
    line.request_id = Some(request_id.clone());
    // Known before the body is wrapped: a request without one can be replayed.
    let replayable = idempotent(&parts.method) && hyper::body::Body::is_end_stream(&body);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    for name in &zone.strip_headers {
        parts.headers.remove(name.as_str());
    }
    // The route's header edits come before the headers the proxy owns, so
    // configuration can never forge forwarding or identity headers.
    if let Some(edits) = policy.headers() {
        for name in &edits.request_remove {
            parts.headers.remove(name.as_str());
        }
        for (name, value) in &edits.request_set {
            headers::set(&mut parts.headers, name, value);
        }
    }
    let host_value = raw_host.unwrap_or_else(|| d.host.as_deref().unwrap_or_default().to_string());
    if let Some(name) = &group.identity_header {
        parts.headers.remove(name.as_str());
        if let Some(id) = &d.identity {
            headers::set(&mut parts.headers, name, id);
        }
    }
    let hop = Hop {
        client: &conn.client,
        proto: if conn.tls.is_some() { "https" } else { "http" },
        host: &host_value,
        request_id: &request_id,
        trusted: zone.trusted,
    };
    let h2 = group.h2;
    // An untrusted hop's forwarding headers go into an HTTP/1.1 head as
    // lines, unless something reads the map after this (the cache, a hash
    // on a header).
    let as_lines = !h2 && !zone.trusted && policy.cache().is_none() && !group.hashes_on_header();
    let forwarding = if as_lines {
        headers::untrusted_forwarding_lines(&mut parts.headers, &hop)
    } else {
        headers::set_forwarding(&mut parts.headers, &hop);
        Vec::new()
    };
    let path = d.path.as_deref().unwrap_or("/");
    // HTTP/2 needs `:authority` to match Host, so h2 groups send the client's
    // Host in an absolute URI; HTTP/1.1 sends Host as a header and the
    // origin-form target only.
    let mut uri =
        String::with_capacity(path.len() + d.query.as_ref().map_or(0, |q| q.len() + 1) + 8);
    if h2 {
        uri.push_str("http://");
        match host_value.parse::<http::uri::Authority>() {
            Ok(a) => uri.push_str(a.as_str()),
            Err(_) => uri.push_str("upstream"),
        }
    }
    uri.push_str(path);
    if let Some(q) = &d.query {
        uri.push('?');
        uri.push_str(q);
    }
    parts.uri = match uri.parse() {
        Ok(u) => u,
        Err(_) => return line.local(400, DecisionKind::BadRequest, true),
    };
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let request_body = Arc::new(Tally::default());
    let limits = &snap.config.listeners[lid as usize].limits;
    let counted = Counted::new(body, request_body.clone());
    let body: ProxyBody = match limits.max_body_bytes {
        Some(max) => Limited::new(counted, usize::try_from(max).unwrap_or(usize::MAX)).boxed(),
        None => counted.map_err(|e| Box::new(e) as BoxError).boxed(),
    };
    // Cache (cache.rs): a stored response answers here; a miss may fill the cache.
    let cache_fill = match crate::cache::lookup(
        &conn.shared,
        generation,
        policy.cache(),
        crate::cache::Ask {
            tenant: &snap.tenants[tid as usize].name,
            host: d.host.as_deref().unwrap_or_default(),
            path,
            query: d.query.as_deref(),
            authenticated: d.identity.is_some(),
            replayable: replayable && !upgrade,
            group: &group,
            timeouts: &timeouts,
            client_ip: conn.peer.ip(),
        },
        &mut parts,
    )
    .await
    {
        crate::cache::Lookup::Hit(hit) => {
            let edits = policy.headers();
            return hit.respond(
                line.take(),
                &conn.shared,
                started,
                request_body,
                (busy, budget),
                edits,
            );
        }
        crate::cache::Lookup::Go(fill) => fill,
    };
    // The response's fields may stay bytes when nothing here reads or edits them.
    let edits_response = policy
        .headers()
        .is_some_and(|e| !e.response_remove.is_empty() || !e.response_set.is_empty());
    let heads = if edits_response || cache_fill.is_some() {
        ResponseHeads::Map
    } else {
        d.heads
    };
    // Retries: only idempotent requests without a body (nothing to replay),
    // within the group's retry budget so retries cannot amplify an outage.
    let retries = policy
        .retries()
        .cloned()
        .filter(|r| r.attempts > 0 && replayable && !upgrade);
    let mut body = Some(body);
    let mut attempt = 0u32;
    let (lease, sent, upstream_started) = loop {
        let lease = match group
            .lease(
                HashKey {
                    client_ip: Some(conn.peer.ip()),
                    headers: &parts.headers,
                },
                timeouts.connect,
            )
            .await
        {
            Ok(lease) => lease,
            Err(e) => return line.upstream_failure(e),
        };
        if attempt == 0 {
            // Only the request itself earns retry budget, never its retries.
            group.earn_retry_budget(policy.retries().map(|r| r.budget_percent));
        }
        if let Some((delay, percent)) = faults.as_ref().and_then(|f| f.delay) {
            if rand::random::<f64>() * 100.0 < percent {
                tokio::time::sleep(delay).await;
            }
        }
        let this_body = body.take().unwrap_or_default();
        // Only a request that may be retried keeps a copy of its head.
        let head = if retries.is_some() {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, http::Request::new(()).into_parts().0)
        };
        let upstream_req = http::Request::from_parts(head, this_body);
        let upstream_started = Instant::now();
        let target = lease.target;
        let exchange = group.send(
            target,
            upstream_req,
            &forwarding,
            timeouts.first_byte,
            timeouts.connect,
            heads,
        );
        let sent = match timeouts.request {
            Some(total) => tokio::time::timeout(total, exchange)
                .await
                .unwrap_or_else(|_| Err(UpstreamError::Timeout("request timeout"))),
            None => exchange.await,
        };
        let failed = match &sent {
            Ok(resp) => resp.status().as_u16() >= 500,
            Err(UpstreamError::Unavailable(_)) => false,
            Err(_) => true,
        };
        // A client body that broke the exchange (cut short, over
        // max_body_bytes) says nothing about the target: no outlier count.
        let client_fault =
            sent.is_err() && (request_body.failed() || request_body.over(limits.max_body_bytes));
        if !client_fault {
            group.report(target, !failed);
        }
        let retry_on = |what: &str| {
            retries
                .as_ref()
                .is_some_and(|r| r.on.iter().any(|o| o == what))
        };
        let retriable = match &sent {
            Ok(resp) => retry_on(resp.status().as_str()),
            Err(UpstreamError::Failed { connect: true, .. }) => retry_on("connect_error"),
            Err(UpstreamError::Timeout(why)) => {
                retry_on("timeout")
                    || (*why == crate::upstream::CONNECT_TIMED_OUT && retry_on("connect_error"))
            }
            Err(_) => false,
        };
        let more = retries.as_ref().is_some_and(|r| attempt < r.attempts);
        if retriable && more && group.take_retry_token() {
            attempt += 1;
            tracing::debug!(attempt, group = %group.full_name, "retrying");
            continue;
        }
        break (lease, sent, upstream_started);
    };
    line.target = Some(lease.address().clone());
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            drop(lease);
            // The client's body broke the exchange, not the upstream (DESIGN §2
            // step 2): the upstream request is aborted and the client told why.
            if request_body.over(limits.max_body_bytes) {
                return line.local(413, DecisionKind::BadRequest, true);
            }
            if request_body.failed() {
                return line.local(400, DecisionKind::BadRequest, true);
            }
            return line.upstream_failure(e);
        }
    };
    line.upstream_ms = Some(elapsed_ms(upstream_started));
    line.status = Some(resp.status().as_u16());
    if let Some(edits) = policy.headers() {
        for name in &edits.response_remove {
            resp.headers_mut().remove(name.as_str());
        }
        for (name, value) in &edits.response_set {
            headers::set(resp.headers_mut(), name, value);
        }
    }

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream = resp
                .extensions_mut()
                .remove::<crate::h1_upstream::UpgradeSlot>()
                .and_then(|slot| slot.take());
            tokio::spawn(async move {
                let (Ok(client), Some(mut upstream)) = (client_upgrade.await, upstream) else {
                    return;
                };
                let mut client = TokioIo::new(client);
                if !upstream.leftover.is_empty()
                    && client.write_all(&upstream.leftover).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream.io).await;
            });
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    let (parts, body) = resp.into_parts();
    // Cache (cache.rs): X-Cache, and a storable body copied into the cache as it streams.
    let (parts, body) = crate::cache::tee(cache_fill, &mut line, parts, body);
    let guard = LogGuard::new(
        line.take(),
        conn.shared.clone(),
        started,
        request_body,
        Some(lease),
        Some((busy, budget)),
    );
    let body: ProxyBody = Logged::new(body, guard).boxed();
    Response::from_parts(parts, body)
}

fn upstream_failure(
    shared: &Shared,
    line: LogLine,
    started: Instant,
    e: UpstreamError,
) -> Response<ProxyBody> {
    let (status, kind) = match &e {
        UpstreamError::Unavailable(why) => {
            tracing::debug!(why, "no upstream");
            (503, DecisionKind::Unavailable)
        }
        UpstreamError::Failed { msg: why, .. } => {
            tracing::debug!(why = %why, "upstream failed");
            (502, DecisionKind::UpstreamError)
        }
        UpstreamError::Timeout(why) => {
            tracing::debug!(why, "upstream timed out");
            (504, DecisionKind::Timeout)
        }
    };
    local(shared, line, started, status, kind, false)
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
