//! End-to-end tests of the data plane's routing (DESIGN §2–§5), in process:
//! a real `Proxy` on 127.0.0.1 sockets, real backends, real TLS with rcgen
//! certificates. Covered: per-tenant / per-route routing and local answers,
//! each balancing algorithm's distribution, health checks taking a killed
//! target out and a revived one back, 502 / 503 / 504, h2 and HTTP/1.1 over
//! TLS with ALPN, SNI certificate selection and 421, mTLS, WebSocket, TCP
//! splice with an access list, and TLS passthrough by SNI.

#[allow(dead_code)]
mod common;

use bulkhead::backend;
use bulkhead::pki::Ca;
use common::routing::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Zones and flows most tests share: one zone that may reach itself.
const EDGE: &str = r#"version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
"#;

/// `n` sequential GETs; how many each backend answered (all must be 200).
async fn spread(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = get(addr, host, path, headers).await;
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.backend().to_string()).or_insert(0) += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_tenant_host_and_path_and_answers_locally() {
    let web = backend::start("alpha-web", any_port())
        .await
        .expect("backend");
    let api = backend::start("alpha-api", any_port())
        .await
        .expect("backend");
    let beta = backend::start("beta-web", any_port())
        .await
        .expect("backend");
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  alpha:
    hosts: [alpha.test, "*.alpha.test"]
    target_groups:
      web: { zone: edge, targets: ["${web}"] }
      api: { zone: edge, targets: ["${api}"] }
    routes:
      - { name: old, match: { path_exact: /old }, redirect: { location: /new, status: 308 } }
      - { name: robots, match: { path_exact: /robots.txt }, respond: { status: 200, body: "User-agent: *\n", content_type: text/plain } }
      - { name: only, match: { path_exact: /only }, forward: api }
      - { name: api, match: { path_prefix: /api/ }, forward: api }
      - { name: site, match: { path_prefix: / }, forward: web }
  beta:
    hosts: [beta.test]
    target_groups:
      web: { zone: edge, targets: ["${beta}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: web }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("web", web.addr.to_string()),
            ("api", api.addr.to_string()),
            ("beta", beta.addr.to_string()),
        ],
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");

    // (Host, path) → backend, route.
    let cases = [
        ("alpha.test", "/", "alpha-web", "site"),
        ("alpha.test", "/api/items?x=1", "alpha-api", "api"),
        ("alpha.test", "/api", "alpha-api", "api"), // a prefix ignores the trailing slash
        ("alpha.test", "/apix", "alpha-web", "site"), // ...and matches whole segments
        ("alpha.test", "/only", "alpha-api", "only"),
        ("alpha.test", "/only/more", "alpha-web", "site"), // exact is exact
        ("shop.alpha.test", "/api/v1", "alpha-api", "api"), // one-label wildcard
        ("Alpha.TEST:8080", "/", "alpha-web", "site"),     // case and port dropped
        ("beta.test", "/api/items", "beta-web", "site"),   // beta's own table
    ];
    for (host, path, want, route) in cases {
        let r = get(addr, host, path, &[]).await;
        assert_eq!(r.status, 200, "{host}{path}: {r:?}");
        assert_eq!(r.backend(), want, "{host}{path}: {r:?}");
        assert_eq!(
            r.echoed("request"),
            Some(format!("GET {path}").as_str()),
            "the path and query reach the backend as sent: {r:?}"
        );
        assert_eq!(r.echoed("host"), Some(host), "{r:?}");
        assert_eq!(r.echoed("x-forwarded-proto"), Some("http"), "{r:?}");
        // The log holds the normalized host and the path without its query.
        let logged_host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
        let logged_path = path.split('?').next().unwrap_or("");
        let line = h
            .wait_log(&format!("for {host}{path}"), |l| {
                field(l, "route") == route
                    && field(l, "host") == logged_host
                    && field(l, "path") == logged_path
            })
            .await;
        assert_eq!(field(&line, "decision"), "forward", "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
    let api_line = h
        .wait_log("for /api/items", |l| {
            field(l, "path") == "/api/items" && field(l, "tenant") == "alpha"
        })
        .await;
    assert_eq!(field(&api_line, "group"), "alpha/api", "{api_line}");
    assert_eq!(field(&api_line, "group_zone"), "edge", "{api_line}");
    assert_eq!(
        field(&api_line, "target"),
        api.addr.to_string(),
        "{api_line}"
    );
    assert_eq!(field(&api_line, "query"), "x=1", "{api_line}");
    assert_eq!(field(&api_line, "listener"), "web", "{api_line}");
    assert_eq!(field(&api_line, "zone"), "edge", "{api_line}");
    assert!(api_line["request_id"].is_string(), "{api_line}");
    let forwarded = web.hits() + api.hits() + beta.hits();
    assert_eq!(forwarded, cases.len() as u64);

    // No tenant owns the host (a wildcard covers one label only): 404.
    for host in ["nobody.test", "a.b.alpha.test"] {
        let r = get(addr, host, "/", &[]).await;
        assert_eq!(r.status, 404, "{host}: {r:?}");
        assert_eq!(r.body, r#"{"error":"no_route"}"#);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    h.wait_log("no_route for nobody.test", |l| {
        field(l, "decision") == "no_route"
            && l["status"] == 404
            && field(l, "client").starts_with("127.0.0.1:")
    })
    .await;

    // Redirect and respond routes answer locally.
    let r = get(addr, "alpha.test", "/old", &[]).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.header("location"), Some("/new"));
    let r = get(addr, "alpha.test", "/robots.txt", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "User-agent: *\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        web.hits() + api.hits() + beta.hits(),
        forwarded,
        "local answers reach no backend"
    );
    let line = h.wait_log("for /old", |l| field(l, "route") == "old").await;
    assert_eq!(field(&line, "decision"), "redirect", "{line}");
    assert_eq!(line["status"], 308, "{line}");
    assert!(line["target"].is_null(), "{line}");
    let line = h
        .wait_log("for /robots.txt", |l| field(l, "route") == "robots")
        .await;
    assert_eq!(field(&line, "decision"), "respond", "{line}");
}

// ---------------------------------------------------------------------------
// balancing

fn balance_yaml(balance: &str, targets: &[(SocketAddr, u32)], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(a, w)| format!(r#"{{ address: "{a}", weight: {w} }}"#))
        .collect();
    fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  lb:
    hosts: [lb.test]
    target_groups:
      app: { zone: edge, balance: ${balance}, targets: [${targets}]${extra} }
    routes:
      - { name: site, match: { path_prefix: / }, forward: app }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("balance", balance.to_string()),
            ("targets", targets.join(", ")),
            ("extra", extra.to_string()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_3_to_1() {
    let a = backend::start("a", any_port()).await.expect("backend");
    let b = backend::start("b", any_port()).await.expect("backend");
    let yaml = balance_yaml("round_robin", &[(a.addr, 3), (b.addr, 1)], "");
    let h = Harness::start(tempdir(), &yaml).await;
    let counts = spread(h.addr("web"), "lb.test", "/", 40, &[]).await;
    eprintln!("round_robin 3:1 over 40 requests: {counts:?}");
    // Smooth WRR is exact (30/10); allow a little for anything else in flight.
    assert!((27..=33).contains(&count(&counts, "a")), "{counts:?}");
    assert!((7..=13).contains(&count(&counts, "b")), "{counts:?}");
    assert_eq!(
        (a.hits(), b.hits()),
        (count(&counts, "a") as u64, count(&counts, "b") as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights() {
    let a = backend::start("a", any_port()).await.expect("backend");
    let b = backend::start("b", any_port()).await.expect("backend");
    let yaml = balance_yaml("random", &[(a.addr, 3), (b.addr, 1)], "");
    let h = Harness::start(tempdir(), &yaml).await;
    let counts = spread(h.addr("web"), "lb.test", "/", 200, &[]).await;
    eprintln!("random 3:1 over 200 requests: {counts:?}");
    // Expected 150/50, σ ≈ 6: five σ either way.
    assert!((120..=180).contains(&count(&counts, "a")), "{counts:?}");
    assert!(count(&counts, "b") >= 20, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_target() {
    let slow = slow_backend("slow", Duration::from_millis(400)).await;
    // Same backend kind, no delay.
    let fast = slow_backend("fast", Duration::ZERO).await;
    let yaml = balance_yaml("least_request", &[(slow.addr(), 1), (fast.addr(), 1)], "");
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let mut tasks = tokio::task::JoinSet::new();
    const N: usize = 100;
    for _ in 0..N {
        tasks.spawn(async move { try_get(addr, "lb.test", "/slow/work", &[]).await });
        sleep(Duration::from_millis(10)).await;
    }
    let mut counts = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let r = done.expect("task").expect("request");
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.backend().to_string()).or_insert(0usize) += 1;
    }
    eprintln!("least_request over {N} requests, `slow` holds each for 400ms: {counts:?}");
    // Two random choices both land on the busy target a quarter of the time
    // (≈25 expected); round robin or random would give ≈50.
    assert!(count(&counts, "slow") <= 40, "{counts:?}");
    assert!(count(&counts, "fast") >= 60, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky_per_key() {
    let a = backend::start("a", any_port()).await.expect("backend");
    let b = backend::start("b", any_port()).await.expect("backend");
    let c = backend::start("c", any_port()).await.expect("backend");
    let yaml = balance_yaml(
        "consistent_hash",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        ", hash_on: \"header:x-user\"",
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let r = get(addr, "lb.test", "/", &[("x-user", user.as_str())]).await;
            assert_eq!(r.status, 200, "{r:?}");
            let got = r.backend().to_string();
            let first = owner.entry(user.clone()).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "{user} moved in round {round}");
        }
    }
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for b in owner.values() {
        *per_backend.entry(b.as_str()).or_insert(0) += 1;
    }
    eprintln!("consistent_hash: 20 keys × 3 rounds, keys per backend: {per_backend:?}");
    assert!(
        per_backend.len() >= 2,
        "keys spread over the ring: {per_backend:?}"
    );
}

// ---------------------------------------------------------------------------
// health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_leaves_rotation_and_returns_when_revived() {
    let b1 = backend::start("b1", any_port()).await.expect("backend");
    let b2 = backend::start("b2", any_port()).await.expect("backend");
    let b2_addr = b2.addr;
    let yaml = balance_yaml(
        "round_robin",
        &[(b1.addr, 1), (b2.addr, 1)],
        ", health: { path: /healthz, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 2 }",
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let counts = spread(addr, "lb.test", "/", 10, &[]).await;
    assert_eq!(
        (count(&counts, "b1"), count(&counts, "b2")),
        (5, 5),
        "{counts:?}"
    );

    drop(b2);
    let killed = Instant::now();
    let (mut streak, mut failed, mut sent) = (0, 0, 0);
    let mut statuses = BTreeMap::new();
    while streak < 20 {
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "b2 still in rotation {:?} after it died ({sent} requests, {failed} failed: {statuses:?})",
            killed.elapsed()
        );
        sent += 1;
        match try_get(addr, "lb.test", "/", &[]).await {
            Ok(r) if r.status == 200 && r.backend() == "b1" => streak += 1,
            Ok(r) => {
                assert_eq!(r.status, 502, "only b2's failures may show: {r:?}");
                *statuses.entry(r.status).or_insert(0) += 1;
                failed += 1;
                streak = 0;
            }
            Err(e) => panic!("the proxy itself failed: {e}"),
        }
        sleep(Duration::from_millis(10)).await;
    }
    let out_after = killed.elapsed();
    eprintln!(
        "killed target out of rotation within {out_after:?} ({sent} requests, {failed} failed)"
    );
    // Two failed checks 200ms apart, plus the 20 good requests counted.
    assert!(out_after < Duration::from_secs(4), "{out_after:?}");
    assert!(failed <= 150, "{failed} failures before the target left");

    // Revive it on the same port.
    let mut revived = None;
    for _ in 0..50 {
        match backend::start("b2", b2_addr).await {
            Ok(b) => {
                revived = Some(b);
                break;
            }
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
    let b2 = revived.expect("rebind b2 on its old port");
    let back = Instant::now();
    loop {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "b2 not back in rotation after {:?}",
            back.elapsed()
        );
        let r = get(addr, "lb.test", "/", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.backend() == "b2" {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "revived target back in rotation within {:?}",
        back.elapsed()
    );
    let counts = spread(addr, "lb.test", "/", 10, &[]).await;
    assert!(count(&counts, "b2") >= 3, "{counts:?}");
    assert!(b2.hits() >= 3);
}

// ---------------------------------------------------------------------------
// upstream failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_port_is_502() {
    let closed = closed_port();
    let yaml = balance_yaml("round_robin", &[(closed, 1)], "");
    let h = Harness::start(tempdir(), &yaml).await;
    let r = get(h.addr("web"), "lb.test", "/x", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.body, r#"{"error":"upstream_error"}"#);
    let line = h
        .wait_log("for the 502", |l| field(l, "path") == "/x")
        .await;
    assert_eq!(field(&line, "decision"), "upstream_error", "{line}");
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(field(&line, "target"), closed.to_string(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_targets_unhealthy_is_503() {
    let yaml = balance_yaml(
        "round_robin",
        &[(closed_port(), 1), (closed_port(), 1)],
        ", health: { interval: 200ms, timeout: 1s, unhealthy: 2 }",
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let start = Instant::now();
    let r = loop {
        let r = get(addr, "lb.test", "/y", &[]).await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 502, "before the checks fail: {r:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "never 503");
        sleep(Duration::from_millis(25)).await;
    };
    eprintln!("503 after {:?}", start.elapsed());
    assert_eq!(r.body, r#"{"error":"unavailable"}"#);
    let line = h
        .wait_log("for the 503", |l| field(l, "decision") == "unavailable")
        .await;
    assert_eq!(line["status"], 503, "{line}");
    assert!(line["target"].is_null(), "no target was picked: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_max_requests_sheds_with_503() {
    let slow = slow_backend("slow", Duration::from_millis(1500)).await;
    let yaml = balance_yaml(
        "round_robin",
        &[(slow.addr(), 1)],
        ", limits: { max_requests: 1 }",
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let holder = tokio::spawn(async move { try_get(addr, "lb.test", "/slow", &[]).await });
    let wait = Instant::now();
    while slow.started() == 0 {
        assert!(
            wait.elapsed() < Duration::from_secs(5),
            "the slow request never arrived"
        );
        sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let r = get(addr, "lb.test", "/fast", &[]).await;
    let shed_in = asked.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, r#"{"error":"unavailable"}"#);
    assert!(
        shed_in < Duration::from_millis(1000),
        "shed quickly, not queued: {shed_in:?}"
    );
    let held = holder.await.expect("task").expect("slow request");
    assert_eq!(held.status, 200, "{held:?}");
    // The slot is free again.
    let r = get(addr, "lb.test", "/fast", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(slow.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeouts_from_group_route_and_profile_are_504() {
    let slow = slow_backend("slow", Duration::from_millis(2000)).await;
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
profiles:
  quick: { timeouts: { first_byte: 300ms } }
tenants:
  t:
    hosts: [t.test]
    target_groups:
      grouped: { zone: edge, targets: ["${slow}"], timeouts: { first_byte: 300ms } }
      plain: { zone: edge, targets: ["${slow}"] }
    routes:
      - { name: by-group, match: { path_prefix: /g/ }, forward: grouped }
      - { name: by-route, match: { path_prefix: /r/ }, forward: plain, timeouts: { first_byte: 300ms } }
      - { name: by-profile, match: { path_prefix: /p/ }, forward: plain, profile: quick }
      - { name: patient, match: { path_prefix: / }, forward: plain }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("slow", slow.addr().to_string()),
        ],
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("web");
    let timed = |path: &'static str| async move {
        let start = Instant::now();
        let r = get(addr, "t.test", path, &[]).await;
        (r, start.elapsed())
    };
    let (g, r, p, patient, fast) = tokio::join!(
        timed("/g/slow"),
        timed("/r/slow"),
        timed("/p/slow"),
        timed("/slow"),
        timed("/g/fast"),
    );
    for (what, (resp, took)) in [("group", g), ("route", r), ("profile", p)] {
        assert_eq!(resp.status, 504, "{what} timeout: {resp:?}");
        assert_eq!(resp.body, r#"{"error":"timeout"}"#);
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{what} timeout after {took:?}"
        );
    }
    assert_eq!(
        patient.0.status, 200,
        "the default first_byte is 60s: {:?}",
        patient.0
    );
    assert!(patient.1 >= Duration::from_millis(1900), "{:?}", patient.1);
    assert_eq!(fast.0.status, 200, "{:?}", fast.0);
    let line = h
        .wait_log("for /r/slow", |l| field(l, "route") == "by-route")
        .await;
    assert_eq!(field(&line, "decision"), "timeout", "{line}");
    assert_eq!(line["status"], 504, "{line}");
}

// ---------------------------------------------------------------------------
// h2 towards the targets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_protocol_h2_speaks_h2_to_its_targets() {
    let a = backend::start("a", any_port()).await.expect("backend");
    let yaml = balance_yaml("round_robin", &[(a.addr, 1)], ", protocol: h2");
    let h = Harness::start(tempdir(), &yaml).await;
    let r = get(h.addr("web"), "lb.test", "/p?q=1", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "a");
    // An h2 request reaches the backend in absolute form (h1 would be origin form).
    let line = r.echoed("request").unwrap_or("");
    assert!(
        line.starts_with("GET http://") && line.ends_with("/p?q=1"),
        "{r:?}"
    );
    assert_eq!(r.echoed("host"), Some("lb.test"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_towards_targets_carries_the_clients_host_as_authority() {
    let a = backend::start("a", any_port()).await.expect("backend");
    let yaml = balance_yaml("round_robin", &[(a.addr, 1)], ", protocol: h2");
    let h = Harness::start(tempdir(), &yaml).await;
    let r = get(h.addr("web"), "lb.test", "/p?q=1", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed("request"),
        Some("GET http://lb.test/p?q=1"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------
// TLS

struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

/// A CA (written as `ca.pem`) and server certificates for `servers`
/// (`(file stem, names)`), in a fresh folder.
fn pki(servers: &[(&str, &[&str])]) -> Pki {
    let ca = Ca::new("routing test CA").expect("CA");
    let dir = tempdir();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write CA");
    for (stem, names) in servers {
        write_pem(dir.path(), stem, &ca.server(names).expect("server cert"));
    }
    Pki { ca, dir }
}

fn read_cert(dir: &std::path::Path, stem: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{stem}.pem"))).expect("read cert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http11_over_tls_by_alpn() {
    let web = backend::start("alpha-web", any_port())
        .await
        .expect("backend");
    let Pki { ca, dir } = pki(&[("alpha", &["alpha.test"])]);
    let yaml = fill(
        r#"${edge}
listeners:
  tls:
    bind: "127.0.0.1:0"
    zone: edge
    protocol: https
    tls: { certificates: [{ cert: alpha.pem, key: alpha.key }] }
tenants:
  alpha:
    hosts: [alpha.test]
    target_groups:
      web: { zone: edge, targets: ["${web}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: web }
"#,
        &[("edge", EDGE.to_string()), ("web", web.addr.to_string())],
    );
    let h = Harness::start(dir, &yaml).await;
    let addr = h.addr("tls");

    // h2 offered first: negotiated.
    let config = tls_client(&ca.cert_pem(), None, &["h2", "http/1.1"]);
    let tls = tls_connect(addr, "alpha.test", config.clone())
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);
    let r = tls_get(addr, "alpha.test", "alpha.test", "/h2?q=1", &[], config)
        .await
        .expect("h2 request");
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "alpha-web");
    assert_eq!(r.echoed("request"), Some("GET /h2?q=1"), "{r:?}");
    assert_eq!(r.echoed("host"), Some("alpha.test"), "{r:?}");
    assert_eq!(r.echoed("x-forwarded-proto"), Some("https"), "{r:?}");

    // HTTP/1.1 by ALPN, and with no ALPN at all.
    for alpn in [&["http/1.1"][..], &[][..]] {
        let config = tls_client(&ca.cert_pem(), None, alpn);
        let r = tls_get(addr, "alpha.test", "alpha.test", "/h1", &[], config)
            .await
            .expect("h1 request");
        assert_eq!(r.version, http::Version::HTTP_11, "ALPN {alpn:?}");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), "alpha-web");
        assert_eq!(r.echoed("x-forwarded-proto"), Some("https"), "{r:?}");
    }
    let line = h.wait_log("for /h2", |l| field(l, "path") == "/h2").await;
    assert_eq!(field(&line, "decision"), "forward", "{line}");
    assert_eq!(line["tls"]["sni"], "alpha.test", "{line}");
    assert!(line["tls"]["version"].is_string(), "{line}");
    assert_eq!(web.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_a_host_of_another_tenant_is_421() {
    let alpha = backend::start("alpha-web", any_port())
        .await
        .expect("backend");
    let beta = backend::start("beta-web", any_port())
        .await
        .expect("backend");
    let Pki { ca, dir } = pki(&[
        ("alpha", &["alpha.test", "*.alpha.test"]),
        ("beta", &["beta.test"]),
        ("fallback", &["fallback.test"]),
    ]);
    let fallback_der = der_of(&read_cert(dir.path(), "fallback"));
    let (alpha_der, beta_der) = (
        der_of(&read_cert(dir.path(), "alpha")),
        der_of(&read_cert(dir.path(), "beta")),
    );
    let yaml = fill(
        r#"${edge}
listeners:
  tls:
    bind: "127.0.0.1:0"
    zone: edge
    protocol: https
    tls:
      certificates:
        - { cert: alpha.pem, key: alpha.key }
        - { cert: beta.pem, key: beta.key }
  tls-default:
    bind: "127.0.0.1:0"
    zone: edge
    protocol: https
    tls: { certificates: [{ cert: alpha.pem, key: alpha.key }] }
    default_certificate: { cert: fallback.pem, key: fallback.key }
tenants:
  alpha:
    hosts: [alpha.test, "*.alpha.test"]
    target_groups:
      web: { zone: edge, targets: ["${alpha}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: web }
  beta:
    hosts: [beta.test]
    target_groups:
      web: { zone: edge, targets: ["${beta}"] }
    routes:
      - { name: site, match: { path_prefix: / }, forward: web }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("alpha", alpha.addr.to_string()),
            ("beta", beta.addr.to_string()),
        ],
    );
    let h = Harness::start(dir, &yaml).await;
    let addr = h.addr("tls");
    let config = tls_client(&ca.cert_pem(), None, &["http/1.1"]);

    // The client verifies the certificate for the name it sent; the DER
    // shows which of the two it got.
    for (sni, der, want) in [
        ("alpha.test", &alpha_der, "alpha-web"),
        ("www.alpha.test", &alpha_der, "alpha-web"),
        ("beta.test", &beta_der, "beta-web"),
    ] {
        let tls = tls_connect(addr, sni, config.clone())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let served = tls.get_ref().1.peer_certificates().expect("a certificate");
        assert_eq!(served[0].as_ref(), der.as_slice(), "certificate for {sni}");
        drop(tls);
        let r = tls_get(addr, sni, sni, "/", &[], config.clone())
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), want, "{sni}");
    }

    // SNI names alpha, Host names beta: 421, never beta's backend.
    let beta_hits = beta.hits();
    let r = tls_get(addr, "alpha.test", "beta.test", "/", &[], config.clone())
        .await
        .expect("request");
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(r.body, r#"{"error":"misdirected"}"#);
    assert_eq!(beta.hits(), beta_hits);
    let line = h
        .wait_log("misdirected", |l| field(l, "decision") == "misdirected")
        .await;
    assert_eq!(line["status"], 421, "{line}");
    assert_eq!(line["tls"]["sni"], "alpha.test", "{line}");

    // An SNI no certificate covers, and no default_certificate: the handshake fails.
    let err = tls_connect(addr, "nobody.test", config.clone())
        .await
        .expect_err("no certificate for nobody.test");
    eprintln!("unknown SNI: {err}");
    let line = h
        .wait_log("tls_rejected", |l| field(l, "decision") == "tls_rejected")
        .await;
    assert_eq!(line["tls"]["sni"], "nobody.test", "{line}");
    assert!(line["status"].is_null(), "{line}");
    assert_eq!(field(&line, "listener"), "tls", "{line}");

    // With a default_certificate, an SNI no certificate covers gets it, and
    // an SNI that names no tenant leaves the choice to Host.
    let addr = h.addr("tls-default");
    let tls = tls_connect(addr, "fallback.test", config.clone())
        .await
        .expect("the default certificate");
    let served = tls.get_ref().1.peer_certificates().expect("a certificate");
    assert_eq!(served[0].as_ref(), fallback_der.as_slice());
    drop(tls);
    let r = tls_get(addr, "fallback.test", "beta.test", "/", &[], config)
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "beta-web");
}

fn mtls_yaml(required: bool, svc: SocketAddr, admin: SocketAddr) -> String {
    fill(
        r#"${edge}
listeners:
  mtls:
    bind: "127.0.0.1:0"
    zone: edge
    protocol: https
    tls:
      certificates: [{ cert: svc.pem, key: svc.key }]
      client_auth: { ca: ca.pem, required: ${required} }
tenants:
  svc:
    hosts: [svc.test]
    target_groups:
      api: { zone: edge, targets: ["${svc}"], identity_header: X-Client-Identity }
      panel: { zone: edge, targets: ["${admin}"] }
    routes:
      - { name: admin, match: { path_prefix: /admin/ }, forward: panel, profile: admin-strict }
      - { name: api, match: { path_prefix: / }, forward: api }
"#,
        &[
            ("edge", EDGE.to_string()),
            ("required", required.to_string()),
            ("svc", svc.to_string()),
            ("admin", admin.to_string()),
        ],
    )
}

const BILLING: &str = "spiffe://corp.test/billing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_verifies_the_client_and_passes_its_identity() {
    let svc = backend::start("svc", any_port()).await.expect("backend");
    let admin = backend::start("panel", any_port()).await.expect("backend");
    let Pki { ca, dir } = pki(&[("svc", &["svc.test"])]);
    let good = ca
        .client("billing", Some(BILLING), &[])
        .expect("client cert");
    let other_ca = Ca::new("someone else").expect("CA");
    let stranger = other_ca
        .client("billing", Some(BILLING), &[])
        .expect("client cert");
    let h = Harness::start(dir, &mtls_yaml(true, svc.addr, admin.addr)).await;
    let addr = h.addr("mtls");
    let trust = ca.cert_pem();

    // A valid client certificate: forwarded with the SPIFFE id, whatever
    // the client claimed in the header itself.
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let config = tls_client(&trust, Some(&good), alpn);
        let r = tls_get(
            addr,
            "svc.test",
            "svc.test",
            "/who",
            &[("x-client-identity", "spiffe://corp.test/admin")],
            config,
        )
        .await
        .expect("request with a client certificate");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), "svc");
        assert_eq!(r.echoed("x-client-identity"), Some(BILLING), "{r:?}");
    }
    let line = h.wait_log("for /who", |l| field(l, "path") == "/who").await;
    assert_eq!(line["tls"]["identity"], BILLING, "{line}");
    assert_eq!(svc.hits(), 2);

    // No certificate, or one from another CA: no request gets through.
    for (what, client) in [("no certificate", None), ("another CA", Some(&stranger))] {
        let config = tls_client(&trust, client, &["http/1.1"]);
        let got = tls_get(addr, "svc.test", "svc.test", "/who", &[], config).await;
        // TLS 1.3 clients finish their side before the server checks their
        // certificate, so the failure may surface on the request.
        assert!(got.is_err(), "{what}: {got:?}");
        eprintln!("mTLS required, {what}: {}", got.err().unwrap_or_default());
    }
    assert_eq!(svc.hits(), 2, "nothing reached the backend");
    let deadline = Instant::now() + STEP;
    loop {
        let rejected = h
            .log_lines()
            .into_iter()
            .filter(|l| field(l, "decision") == "tls_rejected")
            .count();
        if rejected >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two tls_rejected lines expected: {:?}",
            h.log_lines()
        );
        sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_lets_anonymous_clients_in_but_admin_strict_wants_a_certificate() {
    let svc = backend::start("svc", any_port()).await.expect("backend");
    let admin = backend::start("panel", any_port()).await.expect("backend");
    let Pki { ca, dir } = pki(&[("svc", &["svc.test"])]);
    let good = ca
        .client("billing", Some(BILLING), &[])
        .expect("client cert");
    let h = Harness::start(dir, &mtls_yaml(false, svc.addr, admin.addr)).await;
    let addr = h.addr("mtls");
    let trust = ca.cert_pem();

    let anonymous = tls_client(&trust, None, &["http/1.1"]);
    let r = tls_get(
        addr,
        "svc.test",
        "svc.test",
        "/open",
        &[],
        anonymous.clone(),
    )
    .await
    .expect("anonymous request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "svc");
    assert_eq!(
        r.echoed("x-client-identity"),
        None,
        "no identity to pass: {r:?}"
    );

    let r = tls_get(addr, "svc.test", "svc.test", "/admin/users", &[], anonymous)
        .await
        .expect("anonymous admin request");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, r#"{"error":"unauthorized"}"#);
    assert_eq!(admin.hits(), 0);
    let line = h
        .wait_log("unauthorized", |l| field(l, "decision") == "unauthorized")
        .await;
    assert_eq!(field(&line, "route"), "admin", "{line}");
    assert_eq!(line["status"], 401, "{line}");

    let with_cert = tls_client(&trust, Some(&good), &["http/1.1"]);
    let r = tls_get(addr, "svc.test", "svc.test", "/admin/users", &[], with_cert)
        .await
        .expect("admin request with a certificate");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "panel");
    assert_eq!(admin.hits(), 1);
}

// ---------------------------------------------------------------------------
// WebSocket, TCP, TLS passthrough

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let ws = ws_echo_backend().await;
    let yaml = fill(
        r#"${edge}
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http }
tenants:
  chat:
    hosts: [ws.test]
    target_groups:
      echo: { zone: edge, targets: ["${ws}"] }
    routes:
      - { name: socket, match: { path_prefix: /chat }, forward: echo }
"#,
        &[("edge", EDGE.to_string()), ("ws", ws.addr.to_string())],
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let stream = tokio::net::TcpStream::connect(h.addr("web"))
        .await
        .expect("connect");
    let (mut client, resp) = timeout(
        STEP,
        tokio_tungstenite::client_async("ws://ws.test/chat", stream),
    )
    .await
    .expect("upgrade in time")
    .expect("WebSocket upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    let exchange = async {
        for i in 0..5 {
            let text = format!("hello {i}");
            client
                .send(Message::text(text.clone()))
                .await
                .expect("send");
            let back = client.next().await.expect("a message").expect("ok");
            assert_eq!(back, Message::text(text));
        }
        let bytes = vec![7u8; 100_000];
        client
            .send(Message::binary(bytes.clone()))
            .await
            .expect("send binary");
        let back = client.next().await.expect("a message").expect("ok");
        assert_eq!(back, Message::binary(bytes));
        client.close(None).await.expect("close");
    };
    timeout(STEP, exchange).await.expect("echo in time");
    let line = h
        .wait_log("for the upgrade", |l| field(l, "route") == "socket")
        .await;
    assert_eq!(field(&line, "decision"), "forward", "{line}");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(ws.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_splice_round_trips_and_an_access_list_refuses_other_sources() {
    let echo = tcp_echo_backend().await;
    let secret = tcp_echo_backend().await;
    let yaml = fill(
        r#"version: 1
zones: { internal: {} }
flows: [{ from: internal, to: [internal] }]
listeners:
  raw: { bind: "127.0.0.1:0", zone: internal, protocol: tcp, forward: data/echo }
  locked: { bind: "127.0.0.1:0", zone: internal, protocol: tcp, forward: data/secret }
tenants:
  data:
    hosts: [data.test]
    target_groups:
      echo: { zone: internal, targets: ["${echo}"] }
      secret: { zone: internal, targets: ["${secret}"] }
services:
  reporting: { sources: ["127.0.0.2/32"] }
access:
  - { group: data/secret, allow: [reporting] }
"#,
        &[
            ("echo", echo.addr.to_string()),
            ("secret", secret.addr.to_string()),
        ],
    );
    let h = Harness::start(tempdir(), &yaml).await;

    // Bytes round-trip, small and large.
    let mut s = tokio::net::TcpStream::connect(h.addr("raw"))
        .await
        .expect("connect");
    assert_eq!(
        round_trip(&mut s, b"ping\n").await.expect("echo"),
        b"ping\n"
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut s, &big).await.expect("echo"), big);
    drop(s);
    let line = h
        .wait_log("for the raw splice", |l| field(l, "listener") == "raw")
        .await;
    assert_eq!(field(&line, "decision"), "forward", "{line}");
    assert_eq!(field(&line, "group"), "data/echo", "{line}");
    assert_eq!(line["bytes_in"], 200_005, "{line}");
    assert_eq!(line["bytes_out"], 200_005, "{line}");

    // 127.0.0.1 is not `reporting`: closed, no data, the backend never dialled.
    let mut s = tokio::net::TcpStream::connect(h.addr("locked"))
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(b"let me in\n").await;
    let got = read_until_closed(&mut s).await;
    assert!(got.is_empty(), "no data for a refused source: {got:?}");
    assert_eq!(secret.accepted(), 0);
    let line = h
        .wait_log("for the refused connection", |l| {
            field(l, "listener") == "locked"
        })
        .await;
    assert_eq!(field(&line, "decision"), "deny", "{line}");
    assert!(line["status"].is_null(), "{line}");

    // From 127.0.0.2 the caller is `reporting`: allowed.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut s = timeout(STEP, socket.connect(h.addr("locked")))
        .await
        .expect("connect in time")
        .expect("connect from 127.0.0.2");
    assert_eq!(
        round_trip(&mut s, b"report\n").await.expect("echo"),
        b"report\n"
    );
    assert_eq!(secret.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni_without_terminating() {
    let ca = Ca::new("backend CA").expect("CA");
    let db_cert = ca.server(&["db.internal"]).expect("cert");
    let db_der = der_of(&db_cert.cert);
    let db = tls_echo_backend(&db_cert).await;
    let yaml = fill(
        r#"version: 1
zones: { internal: {} }
flows: [{ from: internal, to: [internal] }]
listeners:
  pt:
    bind: "127.0.0.1:0"
    zone: internal
    protocol: tls-passthrough
    forward_by_sni: { "db.internal": data/db }
tenants:
  data:
    hosts: [data.test]
    target_groups:
      db: { zone: internal, targets: ["${db}"] }
"#,
        &[("db", db.addr.to_string())],
    );
    let h = Harness::start(tempdir(), &yaml).await;
    let addr = h.addr("pt");
    let config = tls_client(&ca.cert_pem(), None, &[]);

    // The handshake is with the backend itself: its certificate, verified
    // against its CA for db.internal (the proxy holds no certificate at all).
    let mut tls = tls_connect(addr, "db.internal", config.clone())
        .await
        .expect("TLS through the passthrough listener");
    let served = tls.get_ref().1.peer_certificates().expect("a certificate");
    assert_eq!(served[0].as_ref(), db_der.as_slice());
    assert_eq!(
        round_trip(&mut tls, b"SELECT 1;\n").await.expect("echo"),
        b"SELECT 1;\n"
    );
    drop(tls);
    let line = h
        .wait_log("for db.internal", |l| field(l, "decision") == "forward")
        .await;
    assert_eq!(field(&line, "group"), "data/db", "{line}");
    assert_eq!(line["tls"]["sni"], "db.internal", "{line}");

    // An SNI that maps to no group: closed.
    let accepted = db.accepted();
    let err = tls_connect(addr, "other.internal", config)
        .await
        .expect_err("unknown SNI");
    eprintln!("passthrough, unknown SNI: {err}");
    assert_eq!(db.accepted(), accepted, "the backend never saw it");
    let line = h
        .wait_log("for other.internal", |l| {
            l["tls"]["sni"] == "other.internal"
        })
        .await;
    assert_eq!(field(&line, "decision"), "no_route", "{line}");
    assert!(line["target"].is_null(), "{line}");
}
