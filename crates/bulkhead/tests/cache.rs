//! End-to-end tests of the `cache` policy (DESIGN §3, bulkhead-proxy's
//! cache.rs), in process: a real `Proxy` and admin API on 127.0.0.1, and a
//! backend that counts the requests it gets and answers as each request's
//! query says (`cc` → Cache-Control, `vary`, `cookie`, `etag`, `delay`
//! in ms, `size` in bytes of padding; the `x-status` request header sets
//! the status). Its body says which backend answered
//! and how many requests that URL had received (`n=`), so a test can tell a
//! stored response from a fresh one.

#[allow(dead_code)]
mod common;

use common::routing::*;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const EDGE: &str = r#"version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
"#;

// ---------------------------------------------------------------------------
// the backend

struct Origin {
    server: Server,
    /// Requests per URL (path and query).
    counts: Arc<Mutex<HashMap<String, u64>>>,
    /// Requests in all.
    total: Arc<AtomicU64>,
    /// 304s answered.
    not_modified: Arc<AtomicU64>,
}

impl Origin {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }
    fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
    fn count(&self, url: &str) -> u64 {
        self.counts
            .lock()
            .expect("counts")
            .get(url)
            .copied()
            .unwrap_or(0)
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn origin(name: &str) -> Origin {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let total = Arc::new(AtomicU64::new(0));
    let not_modified = Arc::new(AtomicU64::new(0));
    let (c, t, nm) = (counts.clone(), total.clone(), not_modified.clone());
    let name: Arc<str> = name.into();
    let server = serve(any_port(), move |stream| {
        let (c, t, nm, name) = (c.clone(), t.clone(), nm.clone(), name.clone());
        async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (c, t, nm, name) = (c.clone(), t.clone(), nm.clone(), name.clone());
                    async move {
                        let url = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string();
                        let n = {
                            let mut counts = c.lock().expect("counts");
                            let n = counts.entry(url).or_insert(0);
                            *n += 1;
                            *n
                        };
                        t.fetch_add(1, Ordering::SeqCst);
                        let p = params(req.uri().query());
                        if let Some(ms) = p.get("delay").and_then(|d| d.parse().ok()) {
                            sleep(Duration::from_millis(ms)).await;
                        }
                        let mut b = hyper::Response::builder();
                        // A request header (not the query: that is the URL) sets the status.
                        if let Some(status) = req
                            .headers()
                            .get("x-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u16>().ok())
                        {
                            b = b.status(status);
                        }
                        if let Some(cc) = p.get("cc") {
                            b = b.header("cache-control", cc.as_str());
                        }
                        if let Some(v) = p.get("vary") {
                            b = b.header("vary", v.as_str());
                        }
                        if p.contains_key("cookie") {
                            b = b.header("set-cookie", format!("session={n}"));
                        }
                        if let Some(etag) = p.get("etag") {
                            let tag = format!("\"{etag}\"");
                            let matches = req
                                .headers()
                                .get("if-none-match")
                                .and_then(|v| v.to_str().ok())
                                == Some(tag.as_str());
                            b = b.header("etag", tag);
                            if matches {
                                nm.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, std::convert::Infallible>(
                                    b.status(304)
                                        .header("x-revalidated", n.to_string())
                                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                                        .expect("response"),
                                );
                            }
                        }
                        let lang = req
                            .headers()
                            .get("accept-language")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        let mut body = format!("backend={name} n={n} lang={lang}\n");
                        if let Some(size) = p.get("size").and_then(|s| s.parse::<usize>().ok()) {
                            body.push_str(&"x".repeat(size));
                        }
                        Ok(b.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .expect("response"))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    Origin {
        server,
        counts,
        total,
        not_modified,
    }
}

// ---------------------------------------------------------------------------
// the proxy, with its admin API

struct Running {
    proxy: Arc<bulkhead_proxy::Proxy>,
    admin: SocketAddr,
    stop: CancellationToken,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    fn web(&self) -> SocketAddr {
        self.proxy.addr("web").expect("listener web")
    }

    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }

    async fn purge(&self, body: &str) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("connect to the admin API");
        let req = http::Request::builder()
            .method("POST")
            .uri("/cache/purge")
            .header("host", "admin")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("request");
        send_on(stream, false, req).await.expect("admin answer")
    }
}

async fn start(yaml: &str) -> Running {
    let dir = tempdir();
    let config = bulkhead_config::from_str(yaml, "t.yaml", dir.path())
        .unwrap_or_else(|e| panic!("config rejected: {e:?}\n{yaml}"));
    let snap = bulkhead_core::Snapshot::compile(config)
        .unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{yaml}"));
    let log = dir.path().join("access.log");
    let logger = bulkhead_proxy::access_log::AccessLogger::start(
        &bulkhead_config::AccessLog::File(log.clone()),
    )
    .expect("open the access log");
    let proxy = Arc::new(
        bulkhead_proxy::Proxy::start_with_logger(Arc::new(snap), logger)
            .await
            .expect("start the proxy"),
    );
    let stop = CancellationToken::new();
    let admin = bulkhead_proxy::admin::serve(proxy.clone(), any_port(), None, stop.clone())
        .await
        .expect("admin API");
    Running {
        proxy,
        admin,
        stop,
        log,
        _dir: dir,
    }
}

/// One tenant `a` on `a.test` with a `public-cache` route and routes with
/// their own `cache` settings: `/short` (ttl 1s), `/swr` (stale for 5s),
/// `/cookies` (cache_set_cookie), `/authed` (cache_authenticated), `/small`
/// (max_bytes 64 KiB), `/nocoalesce`.
async fn one_tenant(o: &Origin) -> Running {
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  a:
    hosts: [a.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
    routes:
      - { name: short, match: { path_prefix: /short }, forward: app, cache: { ttl: 1s, max_bytes: 1MiB } }
      - { name: swr, match: { path_prefix: /swr }, forward: app, cache: { ttl: 1s, max_bytes: 1MiB, stale_while_revalidate: 5s } }
      - { name: cookies, match: { path_prefix: /cookies }, forward: app, cache: { ttl: 60s, max_bytes: 1MiB, cache_set_cookie: true } }
      - { name: authed, match: { path_prefix: /authed }, forward: app, cache: { ttl: 60s, max_bytes: 1MiB, cache_authenticated: true } }
      - { name: small, match: { path_prefix: /small }, forward: app, cache: { ttl: 60s, max_bytes: 64KiB } }
      - { name: nocoalesce, match: { path_prefix: /nocoalesce }, forward: app, cache: { ttl: 60s, max_bytes: 1MiB, coalesce: false } }
      - { name: plain, match: { path_prefix: /plain }, forward: app }
      - { name: site, match: { path_prefix: / }, forward: app, profile: public-cache }
"#,
        &[("edge", EDGE.to_string()), ("app", o.addr().to_string())],
    );
    start(&yaml).await
}

async fn get_a(r: &Running, path: &str, headers: &[(&str, &str)]) -> Resp {
    let resp = get(r.web(), "a.test", path, headers).await;
    assert!(
        resp.status == 200 || resp.status == 304,
        "GET {path}: {resp:?}"
    );
    resp
}

fn x_cache(r: &Resp) -> &str {
    r.header("x-cache").unwrap_or("")
}

/// The `n=` of a body: which request of its URL the origin answered.
fn nth(r: &Resp) -> u64 {
    r.body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no n= in {:?}", r.body))
}

// ---------------------------------------------------------------------------
// tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_is_a_hit_not_sent_upstream_and_logged_without_target() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/page?cc=max-age%3D60";
    let first = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&first), "MISS", "{first:?}");
    assert_eq!(nth(&first), 1);
    let second = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&second), "HIT", "{second:?}");
    assert_eq!(second.body, first.body);
    assert!(second.header("age").is_some(), "a hit has Age: {second:?}");
    assert_eq!(o.count(url), 1, "the hit never went upstream");

    // Without Cache-Control, public-cache's ttl (60s) makes a 200 fresh.
    let bare = "/bare";
    assert_eq!(x_cache(&get_a(&r, bare, &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, bare, &[]).await), "HIT");
    assert_eq!(o.count(bare), 1);

    // HEAD is its own entry, never served a GET's body.
    let head = {
        let stream = tokio::net::TcpStream::connect(r.web())
            .await
            .expect("connect");
        send_on(stream, false, h1_request("HEAD", "a.test", url, &[]))
            .await
            .expect("HEAD")
    };
    assert_eq!(head.status, 200);
    assert_eq!(x_cache(&head), "MISS", "{head:?}");
    assert!(head.body.is_empty());

    // A POST is not looked up; a route without a cache policy has no X-Cache.
    let post = {
        let stream = tokio::net::TcpStream::connect(r.web())
            .await
            .expect("connect");
        send_on(stream, false, h1_request("POST", "a.test", url, &[]))
            .await
            .expect("POST")
    };
    assert_eq!(x_cache(&post), "BYPASS", "{post:?}");
    let plain = get_a(&r, "/plain?cc=max-age%3D60", &[]).await;
    assert_eq!(plain.header("x-cache"), None, "{plain:?}");

    // The hit's access-log line: forward, no target, no upstream time.
    let deadline = Instant::now() + STEP;
    let line = loop {
        let lines = r.log_lines();
        let hits: Vec<&Value> = lines
            .iter()
            .filter(|l| field(l, "path") == "/page" && l["target"].is_null())
            .collect();
        if let Some(l) = hits.first() {
            break (*l).clone();
        }
        assert!(Instant::now() < deadline, "no hit line in {lines:?}");
        sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(field(&line, "decision"), "forward", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["upstream_ms"].is_null(), "{line}");
    assert!(line["bytes_out"].as_u64().unwrap_or(0) > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_makes_one_entry_per_header_value() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/v?cc=max-age%3D60&vary=Accept-Language";
    let en = get_a(&r, url, &[("accept-language", "en")]).await;
    let de = get_a(&r, url, &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en), x_cache(&de)), ("MISS", "MISS"));
    assert!(en.body.contains("lang=en") && de.body.contains("lang=de"));
    let en2 = get_a(&r, url, &[("accept-language", "en")]).await;
    let de2 = get_a(&r, url, &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en2), x_cache(&de2)), ("HIT", "HIT"));
    assert_eq!(en2.body, en.body);
    assert_eq!(de2.body, de.body);
    let none = get_a(&r, url, &[]).await;
    assert_eq!(
        x_cache(&none),
        "MISS",
        "no Accept-Language is a third variant"
    );
    assert_eq!(o.count(url), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_no_cache_and_set_cookie_are_not_served_from_the_cache() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    for url in [
        "/ns?cc=no-store",
        "/pv?cc=private%2C%20max-age%3D60",
        "/nc?cc=no-cache",
        "/sc?cc=max-age%3D60&cookie=1",
        "/sc-public?cc=public%2C%20max-age%3D60&cookie=1",
    ] {
        for _ in 0..2 {
            let resp = get_a(&r, url, &[]).await;
            assert_eq!(x_cache(&resp), "MISS", "{url}: {resp:?}");
        }
        assert_eq!(o.count(url), 2, "{url} went upstream both times");
    }
    // A request's own no-store keeps its response out too.
    let url = "/req-ns?cc=max-age%3D60";
    get_a(&r, url, &[("cache-control", "no-store")]).await;
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
    assert_eq!(o.count(url), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_set_cookie_stores_the_response_without_its_cookie() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/cookies?cc=max-age%3D60&cookie=1";
    let first = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.header("set-cookie"), Some("session=1"), "{first:?}");
    let second = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&second), "HIT", "{second:?}");
    assert_eq!(
        second.header("set-cookie"),
        None,
        "a cookie is never handed to another client"
    );
    assert_eq!(o.count(url), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_requests_bypass_the_cache_unless_told() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/auth?cc=public%2C%20max-age%3D60";
    let bearer = [("authorization", "Bearer secret")];
    for _ in 0..2 {
        let resp = get_a(&r, url, &bearer).await;
        assert_eq!(x_cache(&resp), "BYPASS", "{resp:?}");
    }
    assert_eq!(
        o.count(url),
        2,
        "responses to authenticated requests are not stored"
    );
    // Nor is an anonymous entry served to an authenticated request.
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "HIT");
    assert_eq!(x_cache(&get_a(&r, url, &bearer).await), "BYPASS");
    assert_eq!(o.count(url), 4);

    // cache_authenticated: true stores them (the operator vouches the
    // response does not depend on who asks)…
    let url = "/authed?cc=max-age%3D60";
    assert_eq!(x_cache(&get_a(&r, url, &bearer).await), "MISS");
    assert_eq!(
        x_cache(&get_a(&r, url, &[("authorization", "Bearer other")]).await),
        "HIT"
    );
    assert_eq!(o.count(url), 1);
    // …unless the response varies on the credentials: one entry per token.
    let url = "/authed/v?cc=public%2C%20max-age%3D60&vary=Authorization";
    let a = get_a(&r, url, &bearer).await;
    let b = get_a(&r, url, &[("authorization", "Bearer other")]).await;
    let a2 = get_a(&r, url, &bearer).await;
    assert_eq!(
        (x_cache(&a), x_cache(&b), x_cache(&a2)),
        ("MISS", "MISS", "HIT")
    );
    assert_eq!(o.count(url), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_an_entry_and_purge_is_per_tenant() {
    let oa = origin("tenant-a").await;
    let ob = origin("tenant-b").await;
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  a:
    hosts: [a.test]
    target_groups:
      app: { zone: edge, targets: ["${a}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app, profile: public-cache }
  b:
    hosts: [b.test]
    target_groups:
      app: { zone: edge, targets: ["${b}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app, profile: public-cache }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("a", oa.addr().to_string()),
            ("b", ob.addr().to_string()),
        ],
    );
    let r = start(&yaml).await;
    let url = "/same?cc=public%2C%20max-age%3D60";
    let a1 = get(r.web(), "a.test", url, &[]).await;
    let b1 = get(r.web(), "b.test", url, &[]).await;
    assert_eq!(
        (x_cache(&a1), x_cache(&b1)),
        ("MISS", "MISS"),
        "{a1:?} {b1:?}"
    );
    assert!(a1.body.starts_with("backend=tenant-a"), "{a1:?}");
    assert!(b1.body.starts_with("backend=tenant-b"), "{b1:?}");
    for _ in 0..3 {
        let a = get(r.web(), "a.test", url, &[]).await;
        let b = get(r.web(), "b.test", url, &[]).await;
        assert_eq!((x_cache(&a), x_cache(&b)), ("HIT", "HIT"));
        assert_eq!(a.body, a1.body);
        assert_eq!(b.body, b1.body);
    }
    assert_eq!((oa.count(url), ob.count(url)), (1, 1));

    // Purging a's entries leaves b's.
    let p = r.purge(r#"{"tenant": "a"}"#).await;
    assert_eq!(p.status, 200, "{p:?}");
    let v: Value = serde_json::from_str(&p.body).expect("JSON");
    assert_eq!(v, serde_json::json!({ "ok": true, "purged": 1 }));
    assert_eq!(x_cache(&get(r.web(), "a.test", url, &[]).await), "MISS");
    assert_eq!(x_cache(&get(r.web(), "b.test", url, &[]).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_misses_make_one_upstream_request() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/slow?cc=max-age%3D60&delay=300";
    let web = r.web();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(
            async move { get(web, "a.test", url, &[]).await },
        ));
    }
    let mut labels = HashMap::new();
    for t in tasks {
        let resp = t.await.expect("task");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(nth(&resp), 1, "every client got the one response: {resp:?}");
        *labels.entry(x_cache(&resp).to_string()).or_insert(0) += 1;
    }
    assert_eq!(o.count(url), 1, "one upstream request: {labels:?}");
    assert_eq!(o.total(), 1);
    assert_eq!(labels.get("MISS"), Some(&1), "{labels:?}");
    assert_eq!(labels.get("HIT"), Some(&19), "{labels:?}");

    // coalesce: false lets each miss go upstream.
    let url = "/nocoalesce?cc=max-age%3D60&delay=300";
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(
            async move { get(web, "a.test", url, &[]).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert_eq!(o.count(url), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_unstorable_leader_sends_followers_upstream() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    // no-store: the leader's response is not stored, so the waiting misses
    // go upstream themselves (and all of them get an answer).
    let url = "/slow-ns?cc=no-store&delay=200";
    let web = r.web();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(
            async move { get(web, "a.test", url, &[]).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert_eq!(o.count(url), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_the_ttl() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    // No freshness from the origin: the route's ttl (1s) applies.
    let url = "/short/x";
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "HIT");
    sleep(Duration::from_millis(1300)).await;
    let after = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&after), "MISS", "{after:?}");
    assert_eq!(nth(&after), 2);
    // The origin's own max-age beats the ttl.
    let url = "/short/y?cc=max-age%3D30";
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
    sleep(Duration::from_millis(1300)).await;
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "HIT");
    assert_eq!(o.count(url), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    // max-age 2 s, not 1: `Date` has a one-second grain, so a 1 s entry can
    // arrive already stale on a loaded machine and be refreshed twice.
    let url = "/swr/x?cc=max-age%3D2";
    assert_eq!(nth(&get_a(&r, url, &[]).await), 1);
    sleep(Duration::from_millis(2300)).await;
    let stale = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&stale), "STALE", "{stale:?}");
    assert_eq!(nth(&stale), 1, "the stale copy answers at once");
    // The background refresh lands; the next request is a hit on it.
    let deadline = Instant::now() + STEP;
    loop {
        let resp = get_a(&r, url, &[]).await;
        if x_cache(&resp) == "HIT" {
            assert_eq!(nth(&resp), 2, "{resp:?}");
            break;
        }
        assert_eq!(x_cache(&resp), "STALE", "{resp:?}");
        assert!(Instant::now() < deadline, "the refresh never landed");
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.count(url), 2, "one refresh");
    // must-revalidate forbids serving it stale.
    let url = "/swr/y?cc=max-age%3D1%2C%20must-revalidate";
    get_a(&r, url, &[]).await;
    sleep(Duration::from_millis(1300)).await;
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_with_an_etag_is_revalidated_with_a_conditional_request() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/etag?cc=max-age%3D1&etag=v1";
    let first = get_a(&r, url, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    sleep(Duration::from_millis(1300)).await;
    let again = get_a(&r, url, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(x_cache(&again), "REVALIDATED", "{again:?}");
    assert_eq!(again.body, first.body, "the stored body");
    assert_eq!(
        again.header("x-revalidated"),
        Some("2"),
        "304's fields merged"
    );
    assert_eq!(o.not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "HIT", "fresh again");
    assert_eq!(o.count(url), 2);

    // A client's own If-None-Match on a hit gets a 304 from the cache.
    let nm = get(r.web(), "a.test", url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304, "{nm:?}");
    assert_eq!(x_cache(&nm), "HIT");
    assert!(nm.body.is_empty());
    assert_eq!(o.count(url), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_path_prefix() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    for url in ["/static/a.css", "/static/b.js", "/other"] {
        assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
        assert_eq!(x_cache(&get_a(&r, url, &[]).await), "HIT");
    }
    let p = r
        .purge(r#"{"tenant": "a", "path_prefix": "/static/"}"#)
        .await;
    assert_eq!(p.status, 200, "{p:?}");
    let v: Value = serde_json::from_str(&p.body).expect("JSON");
    assert_eq!(v, serde_json::json!({ "ok": true, "purged": 2 }));
    assert_eq!(x_cache(&get_a(&r, "/static/a.css", &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, "/static/b.js", &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, "/other", &[]).await), "HIT");

    // Bad requests.
    assert_eq!(r.purge(r#"{"tenant": "nobody"}"#).await.status, 404);
    assert_eq!(r.purge(r#"{"path_prefix": "/"}"#).await.status, 400);
    assert_eq!(r.purge(r#"{"tenant": "a", "path": "/"}"#).await.status, 400);
    assert_eq!(r.purge("not json").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_bounded_by_max_bytes() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    // 20 objects of ~6 KB in a 64 KiB store (objects up to 8 KiB).
    let url = |i: usize| format!("/small/{i}?size=6000");
    for i in 0..20 {
        assert_eq!(x_cache(&get_a(&r, &url(i), &[]).await), "MISS");
    }
    // The latest is still there; the first was evicted.
    assert_eq!(x_cache(&get_a(&r, &url(19), &[]).await), "HIT");
    assert_eq!(x_cache(&get_a(&r, &url(0), &[]).await), "MISS");
    let mut hits = 0;
    for i in 0..20 {
        if x_cache(&get_a(&r, &url(i), &[]).await) == "HIT" {
            hits += 1;
        }
    }
    assert!(hits <= 10, "at most ~64 KiB stored: {hits} hits");
    // An object over max_bytes / 8 is never stored.
    let big = "/small/big?size=9000";
    assert_eq!(x_cache(&get_a(&r, big, &[]).await), "MISS");
    assert_eq!(x_cache(&get_a(&r, big, &[]).await), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_warm_entries() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/warm?cc=max-age%3D60";
    assert_eq!(x_cache(&get_a(&r, url, &[]).await), "MISS");
    // Same config again (a new generation): same store.
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  a:
    hosts: [a.test]
    target_groups:
      app: { zone: edge, targets: ["${app}"] }
    routes:
      - { name: renamed, match: { path_prefix: /plain }, forward: app }
      - { name: site, match: { path_prefix: / }, forward: app, profile: public-cache }
"#,
        &[("edge", EDGE.to_string()), ("app", o.addr().to_string())],
    );
    let config =
        bulkhead_config::from_str(&yaml, "t.yaml", std::path::Path::new(".")).expect("config");
    let snap = bulkhead_core::Snapshot::compile(config).expect("compile");
    r.proxy.reload(Arc::new(snap)).await.expect("reload");
    let web = r.proxy.addr("web").expect("web");
    let resp = get(web, "a.test", url, &[]).await;
    assert_eq!(x_cache(&resp), "HIT", "{resp:?}");
    assert_eq!(o.count(url), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_unsafe_request_invalidates_every_variant_of_its_target() {
    let o = origin("app").await;
    let r = one_tenant(&o).await;
    let url = "/inv?cc=max-age%3D60&vary=Accept-Language";
    for lang in ["en", "de"] {
        let h = [("accept-language", lang)];
        assert_eq!(x_cache(&get_a(&r, url, &h).await), "MISS");
        assert_eq!(x_cache(&get_a(&r, url, &h).await), "HIT");
    }
    let send = |method: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let web = r.web();
        async move {
            let stream = tokio::net::TcpStream::connect(web).await.expect("connect");
            send_on(stream, false, h1_request(method, "a.test", url, headers))
                .await
                .expect("answer")
        }
    };
    // A failed one changes nothing.
    let failed = send("POST", &[("x-status", "500")]).await;
    assert_eq!((failed.status, x_cache(&failed)), (500, "BYPASS"));
    let en = [("accept-language", "en")];
    assert_eq!(x_cache(&get_a(&r, url, &en).await), "HIT");
    // A successful one drops both variants at once.
    let ok = send("POST", &[]).await;
    assert_eq!((ok.status, x_cache(&ok)), (200, "BYPASS"));
    let en1 = get_a(&r, url, &en).await;
    let de1 = get_a(&r, url, &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en1), x_cache(&de1)), ("MISS", "MISS"));
    assert_eq!(x_cache(&get_a(&r, url, &en).await), "HIT", "cached anew");
    // So do PUT and DELETE; OPTIONS does not.
    assert_eq!(x_cache(&send("OPTIONS", &[]).await), "BYPASS");
    assert_eq!(x_cache(&get_a(&r, url, &en).await), "HIT");
    send("DELETE", &[]).await;
    assert_eq!(x_cache(&get_a(&r, url, &en).await), "MISS");
}
