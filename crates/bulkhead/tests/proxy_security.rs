//! End-to-end security tests of the data plane (DESIGN §2 steps 2, 4 and 9,
//! §4, §5, §6 `run`): in-process proxies on 127.0.0.1, raw HTTP/1.1 written
//! byte for byte on TCP sockets, real backends counting what reaches them.
//!
//! - the admin route stays unreachable from the public listener under every
//!   path and Host trick of the core's adversarial table and the attack
//!   variants, and the admin backend never sees a request;
//! - request smuggling (CL+TE both orders, differing Content-Length,
//!   obfuscated Transfer-Encoding, TE on HTTP/1.0, bad chunks, obs-fold):
//!   refused or read as chunked and closed, never a second request;
//! - forwarding headers replaced on untrusted zones, appended on trusted
//!   ones, `strip_headers` and hop-by-hop headers dropped;
//! - slowloris, size limits, CONNECT;
//! - one access-log line per request, with the right facts;
//! - graceful shutdown in process and SIGTERM on the real binary.

#[allow(dead_code)]
mod common;

use bulkhead_core::variants::{variants, Trick};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A public listener `web` (zone public, untrusted, strips X-Internal-User)
/// and an admin listener `ops` (zone admin, trusted). Tenant `acme`
/// (case-sensitive paths) and `loose` (case-insensitive) both route
/// `/admin/` to a group in zone admin and everything else to a public group.
/// Flows: public → public only; admin → admin and public.
fn segmented(site: SocketAddr, admin: SocketAddr, web_limits: &str) -> String {
    format!(
        r#"version: 1
log: {{ access: off }}
zones:
  public: {{ strip_headers: [X-Internal-User] }}
  admin: {{ trusted: true }}
flows:
  - {{ from: public, to: [public] }}
  - {{ from: admin, to: [admin, public] }}
listeners:
  web: {{ bind: "127.0.0.1:0", zone: public, protocol: http{web_limits} }}
  ops: {{ bind: "127.0.0.1:0", zone: admin, protocol: http }}
tenants:
  acme:
    hosts: [acme.test]
    target_groups:
      app: {{ zone: public, targets: ["{site}"] }}
      admin-panel: {{ zone: admin, targets: ["{admin}"] }}
    routes:
      - name: admin
        match: {{ path_prefix: /admin/ }}
        forward: admin-panel
      - name: site
        match: {{ path_prefix: / }}
        forward: app
  loose:
    hosts: [loose.test]
    normalize: {{ case: insensitive }}
    target_groups:
      app: {{ zone: public, targets: ["{site}"] }}
      admin-panel: {{ zone: admin, targets: ["{admin}"] }}
    routes:
      - name: admin
        match: {{ path_prefix: /admin/ }}
        forward: admin-panel
      - name: site
        match: {{ path_prefix: / }}
        forward: app
"#
    )
}

fn web(proxy: &bulkhead_proxy::Proxy) -> SocketAddr {
    proxy.addr("web").expect("listener web")
}

// ---------------------------------------------------------------------------
// Admin route vs. path and Host tricks

/// What a trick must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// 400 / 403 / 404 — any refusal, the exact code given.
    Refused(u16),
    /// Reaches the *site* backend (a different path, not the admin route).
    Site,
}

/// Raw request-target, Host header lines, expectation. The targets are the
/// core's adversarial normalization table (crates/bulkhead-core/src/normalize.rs).
fn adversarial_table() -> Vec<(Vec<u8>, Vec<&'static str>, Want)> {
    use Want::*;
    let acme = vec!["acme.test"];
    let mut t: Vec<(Vec<u8>, Vec<&str>, Want)> = [
        ("/public/../admin/", Refused(403)),
        ("/public/%2e%2e/admin/", Refused(403)),
        ("/public/%2E%2E/admin/", Refused(403)),
        ("/public/.%2e/admin/", Refused(403)),
        ("/public/%2e./admin", Refused(403)),
        ("/./admin/", Refused(403)),
        ("/%2e/admin/", Refused(403)),
        ("/../admin", Refused(403)),
        ("/../../../../admin", Refused(403)),
        ("/%2e%2e/%2e%2e/admin", Refused(403)),
        ("//admin//users", Refused(403)),
        ("///admin", Refused(403)),
        ("/public//..//admin", Refused(403)),
        ("/%61dmin/", Refused(403)),
        ("/adm%69n/", Refused(403)),
        ("/admin/users/../../admin/x", Refused(403)),
        ("/admin%2Fusers", Refused(400)),
        ("/admin%2fusers", Refused(400)),
        ("/public%2F..%2Fadmin", Refused(400)),
        ("/public/..%2Fadmin", Refused(400)),
        ("/public/..%5Cadmin", Refused(400)),
        ("/public\\..\\admin", Refused(400)),
        ("/admin\\users", Refused(400)),
        ("/admin%00/", Refused(400)),
        ("/admin%0d%0aX-Evil:1", Refused(400)),
        ("/admin%", Refused(400)),
        ("/admin%2", Refused(400)),
        ("/admin%zz", Refused(400)),
        ("/admin%%32%65", Refused(400)),
        ("/public/%c0%ae%c0%ae/admin", Refused(400)),
        ("/public/%e0%80%ae/admin", Refused(400)),
        ("/public/%ff/admin", Refused(400)),
        ("/public/..;/admin", Refused(400)),
        ("/admin;jsessionid=1/", Refused(400)),
        ("/admin;/users", Refused(400)),
        // The fragment never reaches the server's path (http's URI parser drops it).
        ("/admin#frag", Refused(403)),
        ("/admin/users#/../../public", Refused(403)),
        ("admin", Refused(400)),
        ("*", Refused(400)),
        // Double encoding is decoded once: a different path, for the site.
        ("/%252e%252e/admin", Site),
        ("/%2561dmin/", Site),
        // Case-sensitive tenant: /ADMIN/ is another path (the site's), never the admin's.
        ("/%41DMIN/", Site),
        ("/ADMIN/users", Site),
    ]
    .into_iter()
    .map(|(p, w)| (p.as_bytes().to_vec(), acme.clone(), w))
    .collect();
    // Bytes no path may hold: raw control bytes, space, tab, non-ASCII.
    for raw in [
        &b"/admin\t/users"[..],
        b"/adm\xc3\xa9n/",
        b"/admin\x00/",
        b"/admin\x7f/",
    ] {
        t.push((raw.to_vec(), acme.clone(), Refused(400)));
    }
    // The case-insensitive tenant maps every case to the admin route.
    for p in ["/ADMIN/users", "/Admin/", "/%41DMIN/", "/public/../ADMIN/x"] {
        t.push((p.as_bytes().to_vec(), vec!["loose.test"], Refused(403)));
    }
    // Host tricks.
    let host_tricks: &[(&str, &[&str], Want)] = &[
        ("/admin/users", &["ACME.TEST"], Refused(403)),
        ("/admin/users", &["acme.test."], Refused(403)),
        ("/admin/users", &["acme.test:80"], Refused(403)),
        ("/admin/users", &["acme.test", "acme.test"], Refused(400)),
        (
            "/admin/users",
            &["acme.test", "decoy.invalid"],
            Refused(400),
        ),
        (
            "/admin/users",
            &["decoy.invalid", "acme.test"],
            Refused(400),
        ),
        ("/admin/users", &[], Refused(400)),
        ("/admin/users", &["acme.test/admin"], Refused(400)),
        ("/admin/users", &["acme test"], Refused(400)),
        ("/admin/users", &["acme.test:x"], Refused(400)),
        // Absolute form overrides Host (RFC 9112 §3.2.2).
        (
            "http://acme.test/admin/users",
            &["decoy.invalid"],
            Refused(403),
        ),
        (
            "http://acme.test/admin/users",
            &["loose.test"],
            Refused(403),
        ),
        (
            "http://decoy.invalid/admin/users",
            &["acme.test"],
            Refused(404),
        ),
        (
            "http://acme.test/public/../admin/",
            &["acme.test"],
            Refused(403),
        ),
        ("http://acme.test//admin", &["acme.test"], Refused(403)),
    ];
    for (target, hosts, want) in host_tricks {
        t.push((target.as_bytes().to_vec(), hosts.to_vec(), *want));
    }
    t
}

fn raw_get(target: &[u8], hosts: &[&str]) -> Vec<u8> {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    for h in hosts {
        req.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_route_is_unreachable_from_the_public_listener_by_any_trick() {
    let site = bulkhead::backend::start("site", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("site backend");
    let admin = bulkhead::backend::start("admin", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("admin backend");
    let proxy = sec_start(&segmented(site.addr, admin.addr, ""), None).await;
    let addr = web(&proxy);

    // A normal request reaches the site.
    let ok = sec_get(addr, "acme.test", "/products/42?x=1", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.echoed("backend"), Some("site"));
    assert_eq!(ok.echoed("request"), Some("GET /products/42?x=1"));
    // The plain admin path is denied by the flow.
    let plain = sec_get(addr, "acme.test", "/admin/users", &[]).await;
    assert_eq!(plain.status, 403, "{plain:?}");
    assert_eq!(plain.body, r#"{"error":"deny"}"#);

    let mut failures = Vec::new();
    let mut check = |what: String, got: &SecResponse, want: Want| {
        let from_admin = got.echoed("backend") == Some("admin");
        let ok = !from_admin
            && match want {
                Want::Refused(code) => got.status == code,
                Want::Site => got.status == 200 && got.echoed("backend") == Some("site"),
            };
        if !ok {
            failures.push(format!(
                "{what}: want {want:?}, got {} {:?}",
                got.status, got.body
            ));
        }
    };

    for (target, hosts, want) in adversarial_table() {
        let got = sec_raw(addr, &raw_get(&target, &hosts)).await;
        let resp = got.responses.first().cloned().unwrap_or(SecResponse {
            status: 0,
            headers: Vec::new(),
            body: String::from_utf8_lossy(&got.raw).into_owned(),
        });
        check(
            format!("{:?} Host {hosts:?}", String::from_utf8_lossy(&target)),
            &resp,
            want,
        );
    }

    // Every attacker spelling `bulkhead test --variants` knows, on both tenants.
    for (host, other, insensitive) in [
        ("acme.test", "loose.test", false),
        ("loose.test", "acme.test", true),
    ] {
        for v in variants("/admin/users?x=1", Some(host), None, false, Some(other)) {
            let hosts: Vec<&str> = v.hosts.iter().map(String::as_str).collect();
            let got = sec_raw(addr, &raw_get(v.target.as_bytes(), &hosts)).await;
            let resp = got.responses.first().cloned().unwrap_or(SecResponse {
                status: 0,
                headers: Vec::new(),
                body: String::new(),
            });
            let what = format!("variant {} ({:?}, Host {hosts:?})", v.label, v.target);
            if v.trick == Trick::UpperCase && !insensitive {
                // Another path on a case-sensitive tenant: the site's, not the admin's.
                check(what, &resp, Want::Site);
            } else if [400, 403, 404].contains(&resp.status) {
                check(what, &resp, Want::Refused(resp.status));
            } else {
                check(what, &resp, Want::Refused(403));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "tricks not refused:\n{}",
        failures.join("\n")
    );
    assert_eq!(admin.hits(), 0, "the admin backend was reached");
    assert!(site.hits() >= 1);

    // The admin backend is real: the admin listener reaches it.
    let ops = proxy.addr("ops").expect("listener ops");
    let from_ops = sec_get(ops, "acme.test", "/admin/users", &[]).await;
    assert_eq!(from_ops.status, 200, "{from_ops:?}");
    assert_eq!(from_ops.echoed("backend"), Some("admin"));
    assert_eq!(admin.hits(), 1);
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Request smuggling

/// How a smuggling attempt must end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// 400 (or another refusal given), connection closed, nothing forwarded.
    Refused(u16),
    /// Read as chunked (Content-Length dropped), forwarded once with the
    /// chunked body, then the connection is closed: never a second request.
    ChunkedThenClose,
    /// The body is malformed mid-stream: the connection ends, and the
    /// backend never gets a complete request.
    Aborted,
}

const SMUGGLED: &str = "GET /admin/users HTTP/1.1\r\nHost: acme.test\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: acme.test\r\n\r\n";

/// `(name, raw request, expectation)`. Every request goes to
/// `/submit/<name>`; the bytes after its body (per one reading or the other)
/// are requests for `/admin/users` and `/smuggled`, which must never be served.
fn smuggling_cases() -> Vec<(&'static str, String, Framing)> {
    use Framing::*;
    let chunked_body = format!("0\r\n\r\n{SMUGGLED}");
    let hidden_len = SMUGGLED.len();
    // A chunk carrying the smuggled requests as data (the TE.CL shape).
    let data_chunk = format!("{hidden_len:x}\r\n{SMUGGLED}\r\n0\r\n\r\n");
    let head = |name: &str, version: &str, headers: &str| {
        format!("POST /submit/{name} HTTP/{version}\r\nHost: acme.test\r\n{headers}\r\n")
    };
    vec![
        (
            "cl-te",
            head(
                "cl-te",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            ) + &chunked_body,
            ChunkedThenClose,
        ),
        (
            "te-cl",
            head(
                "te-cl",
                "1.1",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            ) + &chunked_body,
            ChunkedThenClose,
        ),
        (
            "te-cl-data",
            head(
                "te-cl-data",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            ) + &data_chunk,
            ChunkedThenClose,
        ),
        (
            "cl-cl",
            head("cl-cl", "1.1", "Content-Length: 0\r\nContent-Length: 5\r\n") + "hello" + SMUGGLED,
            Refused(400),
        ),
        (
            "cl-list",
            head("cl-list", "1.1", "Content-Length: 0, 5\r\n") + "hello" + SMUGGLED,
            Refused(400),
        ),
        (
            "cl-plus",
            head("cl-plus", "1.1", "Content-Length: +5\r\n") + "hello" + SMUGGLED,
            Refused(400),
        ),
        (
            "te-xchunked",
            head(
                "te-xchunked",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-chunked-identity",
            head(
                "te-chunked-identity",
                "1.1",
                "Transfer-Encoding: chunked, identity\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-two-headers-last-identity",
            head(
                "te-two-headers-last-identity",
                "1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-gzip-only",
            head(
                "te-gzip-only",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding: gzip\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-leading-space",
            head(
                "te-leading-space",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding:    chunked  \r\n",
            ) + &chunked_body,
            ChunkedThenClose,
        ),
        (
            "te-tab-value",
            head(
                "te-tab-value",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n",
            ) + &chunked_body,
            ChunkedThenClose,
        ),
        (
            "te-vertical-tab",
            head(
                "te-vertical-tab",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding:\x0bchunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-space-before-colon",
            head(
                "te-space-before-colon",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding : chunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-tab-before-colon",
            head(
                "te-tab-before-colon",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding\t: chunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "te-obs-fold",
            head(
                "te-obs-fold",
                "1.1",
                "Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "obs-fold",
            head(
                "obs-fold",
                "1.1",
                "Content-Length: 0\r\nX-Folded: a\r\n b\r\n",
            ) + SMUGGLED,
            Refused(400),
        ),
        (
            "te-http10",
            head("te-http10", "1.0", "Transfer-Encoding: chunked\r\n") + &chunked_body,
            Refused(400),
        ),
        (
            "te-cl-http10",
            head(
                "te-cl-http10",
                "1.0",
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            ) + &chunked_body,
            Refused(400),
        ),
        (
            "bad-chunk-size",
            head("bad-chunk-size", "1.1", "Transfer-Encoding: chunked\r\n")
                + "zz\r\nhello\r\n0\r\n\r\n"
                + SMUGGLED,
            Aborted,
        ),
        (
            "chunk-size-overflow",
            head(
                "chunk-size-overflow",
                "1.1",
                "Transfer-Encoding: chunked\r\n",
            ) + "10000000000000000000005\r\nhello\r\n0\r\n\r\n"
                + SMUGGLED,
            Aborted,
        ),
        (
            "chunk-size-0x",
            head("chunk-size-0x", "1.1", "Transfer-Encoding: chunked\r\n")
                + "0x5\r\nhello\r\n0\r\n\r\n"
                + SMUGGLED,
            Aborted,
        ),
        (
            "chunk-too-long",
            head("chunk-too-long", "1.1", "Transfer-Encoding: chunked\r\n")
                + "3\r\nhello\r\n0\r\n\r\n"
                + SMUGGLED,
            Aborted,
        ),
        (
            "header-nul",
            head(
                "header-nul",
                "1.1",
                "Content-Length: 0\r\nX-Bad: a\x00b\r\n",
            ) + SMUGGLED,
            Refused(400),
        ),
        (
            "header-bare-cr",
            head(
                "header-bare-cr",
                "1.1",
                "Content-Length: 0\r\nX-Bad: a\rb\r\n",
            ) + SMUGGLED,
            Refused(400),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused_or_closed() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = bulkhead::backend::start("admin", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("admin backend");
    let proxy = sec_start(&segmented(site.addr, admin.addr, ""), None).await;
    let addr = web(&proxy);

    let cases = smuggling_cases();
    let mut tasks = tokio::task::JoinSet::new();
    for (name, raw, want) in cases.clone() {
        tasks.spawn(async move {
            let got = sec_raw_idle(addr, raw.as_bytes(), Duration::from_millis(1500)).await;
            (name, want, got)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r.expect("case task"));
    }
    outcomes.sort_by_key(|(name, _, _)| *name);

    let requests = site.requests();
    let mut failures = Vec::new();
    for (name, want, got) in &outcomes {
        let path = format!("/submit/{name}");
        let heads = requests.iter().filter(|r| r.ends_with(&path)).count();
        let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
        let ok = match want {
            Framing::Refused(code) => statuses == [*code] && got.closed && heads == 0,
            Framing::ChunkedThenClose => statuses == [200] && got.closed && heads == 1,
            Framing::Aborted => statuses == [400] && got.closed,
        };
        // `cargo test -- --nocapture` shows what the proxy did with each form.
        println!(
            "{name:32} statuses {statuses:?} closed {} backend heads {heads}",
            got.closed
        );
        if !ok {
            failures.push(format!(
                "{name}: want {want:?}; got statuses {statuses:?}, closed {}, backend heads {heads}\n{}",
                got.closed,
                String::from_utf8_lossy(&got.raw)
            ));
        }
    }
    // Nothing after a refused or chunked-and-closed request is ever served.
    let smuggled: Vec<&String> = requests
        .iter()
        .filter(|r| !r.contains("/submit/"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        smuggled.is_empty(),
        "smuggled requests reached the site: {smuggled:?}"
    );
    assert_eq!(
        admin.hits(),
        0,
        "a smuggled request reached the admin backend"
    );

    // Exactly the legitimate requests reached the site, each once, with
    // the chunked body (the Content-Length dropped) — or, for the TE.CL
    // shape, the hidden requests as plain body data.
    let forwarded: Vec<&str> = cases
        .iter()
        .filter(|c| c.2 == Framing::ChunkedThenClose)
        .map(|c| c.0)
        .collect();
    assert_eq!(site.heads() as usize, requests.len());
    let complete = site.complete() as usize;
    assert_eq!(
        complete,
        forwarded.len(),
        "complete requests at the site: {requests:?}"
    );
    let bodies = site.bodies();
    assert_eq!(
        bodies.iter().filter(|b| b.is_empty()).count(),
        forwarded.len() - 1
    );
    assert_eq!(bodies.iter().filter(|b| *b == SMUGGLED).count(), 1);
    proxy.shutdown(Duration::from_secs(2)).await;
}

/// A CL+TE request is never followed by another one on its connection, even
/// a perfectly well-formed pipelined request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_follows_a_cl_te_request_on_its_connection() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let proxy = sec_start(&segmented(site.addr, admin.addr, ""), None).await;
    let addr = web(&proxy);
    // Control: the same pipeline without Content-Length is served twice.
    let control = "POST /one HTTP/1.1\r\nHost: acme.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /two HTTP/1.1\r\nHost: acme.test\r\nConnection: close\r\n\r\n";
    let got = sec_raw(addr, control.as_bytes()).await;
    let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200],
        "{}",
        String::from_utf8_lossy(&got.raw)
    );
    assert_eq!(got.responses[0].echoed("body"), Some("hello"));
    assert!(got.responses[0].echoed("content-length").is_none());

    let attack = "POST /three HTTP/1.1\r\nHost: acme.test\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /four HTTP/1.1\r\nHost: acme.test\r\nConnection: close\r\n\r\n";
    let got = sec_raw(addr, attack.as_bytes()).await;
    let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
    assert!(got.closed);
    match statuses.as_slice() {
        [400] => {}
        [200] => {
            let r = &got.responses[0];
            assert_eq!(r.echoed("body"), Some("hello"), "read as chunked");
            assert!(
                r.echoed("content-length").is_none(),
                "Content-Length dropped: {r:?}"
            );
            assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        }
        other => panic!("CL+TE got {other:?}: {}", String::from_utf8_lossy(&got.raw)),
    }
    let requests = site.requests();
    assert!(
        !requests.iter().any(|r| r.contains("/four")),
        "{requests:?}"
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Headers at trust boundaries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_on_untrusted_zones_and_appended_on_trusted() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let proxy = sec_start(&segmented(site.addr, admin.addr, ""), None).await;
    let addr = web(&proxy);
    let spoof = [
        "X-Forwarded-For: 10.9.9.9",
        "X-Forwarded-For: 10.8.8.8",
        "X-Real-IP: 10.9.9.9",
        "Forwarded: for=10.9.9.9;proto=https",
        "X-Request-Id: forged-id",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: evil.test",
        "X-Forwarded-Port: 443",
        "X-Internal-User: root",
        "x-INTERNAL-user: root2",
    ];

    // Untrusted zone: every client copy is replaced by the proxy's.
    let r = sec_get(addr, "acme.test", "/page", &spoof).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed_all("x-forwarded-for"), ["127.0.0.1"], "{}", r.body);
    assert_eq!(r.echoed_all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        r.echoed_all("forwarded"),
        ["for=127.0.0.1;proto=http;host=\"acme.test\""]
    );
    assert_eq!(r.echoed_all("x-forwarded-proto"), ["http"]);
    assert_eq!(r.echoed_all("x-forwarded-host"), ["acme.test"]);
    assert!(r.echoed("x-forwarded-port").is_none(), "{}", r.body);
    let ids = r.echoed_all("x-request-id");
    assert_eq!(ids.len(), 1, "{}", r.body);
    assert_ne!(ids[0], "forged-id");
    assert!(
        ids[0].len() >= 16 && ids[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "fresh id {:?}",
        ids[0]
    );
    // The zone's strip_headers never reach the backend, whatever the case.
    assert!(r.echoed("x-internal-user").is_none(), "{}", r.body);
    // A second request gets another id.
    let r2 = sec_get(addr, "acme.test", "/page", &spoof).await;
    assert_ne!(r2.echoed("x-request-id"), r.echoed("x-request-id"));

    // `Connection` drops the hop-by-hop headers it names, but never one the proxy sets.
    let r = sec_get(
        addr,
        "acme.test",
        "/page",
        &[
            "Connection: x-forwarded-for, x-real-ip, forwarded, x-request-id, x-forwarded-proto, x-forwarded-host, host, x-hop",
            "Connection: keep-alive, X-Other-Hop",
            "X-Hop: secret",
            "X-Other-Hop: secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Upgrade: h2c",
            "X-Forwarded-For: 10.9.9.9",
            "X-Kept: yes",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    for gone in [
        "x-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(r.echoed(gone).is_none(), "{gone} forwarded:\n{}", r.body);
    }
    assert_eq!(r.echoed("x-kept"), Some("yes"));
    assert_eq!(r.echoed_all("x-forwarded-for"), ["127.0.0.1"], "{}", r.body);
    assert_eq!(r.echoed("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.echoed("x-forwarded-proto"), Some("http"));
    assert_eq!(r.echoed("x-forwarded-host"), Some("acme.test"));
    assert_eq!(r.echoed("host"), Some("acme.test"));
    assert!(r.echoed("forwarded").is_some());
    assert!(r.echoed("x-request-id").is_some());

    // Trusted zone: the client's chain is kept and this hop appended; the id is kept.
    let ops = proxy.addr("ops").expect("listener ops");
    let r = sec_get(
        ops,
        "acme.test",
        "/page",
        &[
            "X-Forwarded-For: 10.1.1.1, 10.2.2.2",
            "Forwarded: for=10.1.1.1",
            "X-Request-Id: upstream-id-1",
            "X-Forwarded-Proto: https",
            "X-Internal-User: ops-user",
            "Connection: x-forwarded-for, x-request-id",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("backend"), Some("site"));
    assert_eq!(
        r.echoed_all("x-forwarded-for"),
        ["10.1.1.1, 10.2.2.2, 127.0.0.1"],
        "{}",
        r.body
    );
    assert_eq!(
        r.echoed_all("forwarded"),
        ["for=10.1.1.1, for=127.0.0.1;proto=http;host=\"acme.test\""]
    );
    assert_eq!(r.echoed("x-request-id"), Some("upstream-id-1"));
    assert_eq!(r.echoed("x-forwarded-proto"), Some("https"));
    assert_eq!(r.echoed("x-real-ip"), Some("127.0.0.1"));
    // strip_headers belongs to the public zone only.
    assert_eq!(r.echoed("x-internal-user"), Some("ops-user"));
    // Without client headers, a trusted hop starts the chain.
    let r = sec_get(ops, "acme.test", "/page", &[]).await;
    assert_eq!(r.echoed_all("x-forwarded-for"), ["127.0.0.1"]);
    assert!(r.echoed("x-request-id").is_some_and(|id| !id.is_empty()));
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Slowloris

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_header_timeout_while_others_are_served() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = sec_start(
        &segmented(site.addr, admin.addr, ", limits: { header_timeout: 500ms }"),
        Some(&log),
    )
    .await;
    let addr = web(&proxy);

    /// Send `first`, then one byte of `trickle` every 200 ms; how long until
    /// the proxy ended the connection, and what it sent (None: not within 4 s).
    async fn slowloris(
        addr: SocketAddr,
        first: &'static [u8],
        trickle: &'static [u8],
    ) -> (Option<Duration>, Vec<u8>) {
        let started = Instant::now();
        let s = TcpStream::connect(addr).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return (started.elapsed(), got),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let _ = w.write_all(first).await;
        let mut bytes = trickle.iter().cycle();
        while !reader.is_finished() && started.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(b) = bytes.next() {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
        }
        match tokio::time::timeout(Duration::from_millis(500), reader).await {
            Ok(Ok((at, got))) => (Some(at), got),
            _ => (None, Vec::new()),
        }
    }

    let attacks = [
        tokio::spawn(slowloris(addr, b"GET /sl", b"owloris")),
        tokio::spawn(slowloris(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: acme.test\r\n",
            b"X-Pad: aaaaaaaa\r\n",
        )),
        tokio::spawn(slowloris(addr, b"", b"")),
    ];
    // Meanwhile other clients are served promptly.
    for i in 0..5 {
        let t = Instant::now();
        let r = sec_get(addr, "acme.test", &format!("/normal/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "slow: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for (i, a) in attacks.into_iter().enumerate() {
        let (at, got) = a.await.expect("slowloris task");
        let at = at.unwrap_or_else(|| panic!("slowloris {i} still connected after 4 s"));
        assert!(
            at >= Duration::from_millis(400) && at < Duration::from_secs(2),
            "slowloris {i} cut after {at:?}"
        );
        // Closed, perhaps after a 408, never after a served request.
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(
        !site.requests().iter().any(|r| r.contains("slow")),
        "{:?}",
        site.requests()
    );
    assert_eq!(site.heads(), 5);
    // One `client_timeout` line per cut connection (status null), one per served request.
    let lines = sec_log_lines(&log, 8, Duration::from_secs(2)).await;
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let timeouts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["decision"] == "client_timeout")
        .collect();
    assert_eq!(timeouts.len(), 3, "{lines:#?}");
    assert!(timeouts
        .iter()
        .all(|l| l["status"].is_null() && l["listener"] == "web"));
    assert_eq!(
        lines.iter().filter(|l| l["decision"] == "forward").count(),
        5
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Size limits and CONNECT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_and_connect() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let proxy = sec_start(
        &segmented(
            site.addr,
            admin.addr,
            ", limits: { max_header_bytes: 8KiB, max_uri_bytes: 1KiB, max_body_bytes: 1KiB }",
        ),
        None,
    )
    .await;
    let addr = web(&proxy);
    let status = |ex: &SecExchange| ex.responses.first().map_or(0, |r| r.status);

    // Header block over 8KiB: one big header, or many small ones.
    let big = format!("X-Big: {}", "a".repeat(9000));
    let r = sec_get(addr, "acme.test", "/h", &[&big]).await;
    assert_eq!(r.status, 431, "{r:?}");
    let many: Vec<String> = (0..200)
        .map(|i| format!("X-H{i}: {}", "b".repeat(40)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = sec_get(addr, "acme.test", "/h", &many).await;
    assert_eq!(r.status, 431, "{r:?}");
    // Under the limit is fine.
    let fits = format!("X-Big: {}", "a".repeat(6000));
    let r = sec_get(addr, "acme.test", "/h", &[&fits]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Request target over max_uri_bytes.
    let long = format!("/{}", "u".repeat(1100));
    let r = sec_get(addr, "acme.test", &long, &[]).await;
    assert_eq!(r.status, 414, "{r:?}");
    let long_query = format!("/q?{}", "k=v&".repeat(300));
    let r = sec_get(addr, "acme.test", &long_query, &[]).await;
    assert_eq!(r.status, 414, "{r:?}");
    let fits = format!("/{}", "u".repeat(900));
    let r = sec_get(addr, "acme.test", &fits, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Body over max_body_bytes, announced by Content-Length: 413 before a byte is forwarded.
    let body = "x".repeat(2000);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: acme.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let ex = sec_raw(addr, req.as_bytes()).await;
    assert_eq!(status(&ex), 413, "{}", String::from_utf8_lossy(&ex.raw));
    assert!(ex.closed);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: acme.test\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "y".repeat(1024)
    );
    let ex = sec_raw(addr, req.as_bytes()).await;
    assert_eq!(status(&ex), 200, "{}", String::from_utf8_lossy(&ex.raw));
    // A chunked body over the limit is cut: never delivered whole.
    let req = format!(
        "POST /upload-chunked HTTP/1.1\r\nHost: acme.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let ex = sec_raw(addr, req.as_bytes()).await;
    assert_eq!(status(&ex), 413, "{}", String::from_utf8_lossy(&ex.raw));
    assert!(
        !site.bodies().iter().any(|b| b.len() > 1024),
        "a body over max_body_bytes was delivered"
    );

    // CONNECT is never proxied.
    let ex = sec_raw(
        addr,
        b"CONNECT acme.test:443 HTTP/1.1\r\nHost: acme.test:443\r\n\r\n",
    )
    .await;
    assert_eq!(status(&ex), 405, "{}", String::from_utf8_lossy(&ex.raw));
    let ex = sec_raw(
        addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0-x\r\n",
    )
    .await;
    assert_eq!(status(&ex), 405, "{}", String::from_utf8_lossy(&ex.raw));
    assert!(!site.requests().iter().any(|r| r.starts_with("CONNECT")));
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Access log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_with_its_decision() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let mut yaml = segmented(site.addr, admin.addr, "");
    yaml = yaml.replace(
        "  ops: {",
        "  closed: { bind: \"127.0.0.1:0\", zone: public, protocol: http, allow_sources: [\"10.0.0.0/8\"] }\n  ops: {",
    );
    let proxy = sec_start(&yaml, Some(&log)).await;
    let addr = web(&proxy);

    let fwd = sec_get(addr, "acme.test", "/products/1?a=1&b=2", &[]).await;
    assert_eq!(fwd.status, 200);
    let deny = sec_get(addr, "acme.test", "/public/%2e%2e/admin/users", &[]).await;
    assert_eq!(deny.status, 403);
    let none = sec_get(addr, "nobody.test", "/x", &[]).await;
    assert_eq!(none.status, 404);
    let bad = sec_get(addr, "acme.test", "/admin%2Fusers", &[]).await;
    assert_eq!(bad.status, 400);
    // Refused at accept: closed without a byte.
    let closed = proxy.addr("closed").expect("listener closed");
    let ex = sec_raw(closed, b"GET / HTTP/1.1\r\nHost: acme.test\r\n\r\n").await;
    assert!(ex.raw.is_empty() && ex.closed, "{ex:?}");

    let lines = sec_log_lines(&log, 5, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let find = |decision: &str, listener: &str| -> &Value {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| l["decision"] == decision && l["listener"] == listener)
            .collect();
        assert_eq!(found.len(), 1, "{decision} on {listener}: {lines:#?}");
        found[0]
    };
    let keys = [
        "ts",
        "listener",
        "zone",
        "client",
        "tenant",
        "route",
        "group",
        "group_zone",
        "target",
        "decision",
        "status",
        "method",
        "host",
        "path",
        "query",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "tls",
        "request_id",
    ];
    for l in &lines {
        let obj = l.as_object().expect("a JSON object");
        for k in keys {
            assert!(obj.contains_key(k), "{k} missing from {l}");
        }
        assert!(l["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")));
        assert!(l["tls"].is_null());
    }

    let f = find("forward", "web");
    assert_eq!(f["status"], 200);
    assert_eq!(f["zone"], "public");
    assert_eq!(f["tenant"], "acme");
    assert_eq!(f["route"], "site");
    assert_eq!(f["group"], "acme/app");
    assert_eq!(f["group_zone"], "public");
    assert_eq!(f["target"], site.addr.to_string());
    assert_eq!(f["method"], "GET");
    assert_eq!(f["host"], "acme.test");
    assert_eq!(f["path"], "/products/1");
    assert_eq!(f["query"], "a=1&b=2");
    assert_eq!(f["request_id"], fwd.echoed("x-request-id").expect("id"));
    assert!(f["bytes_out"]
        .as_u64()
        .is_some_and(|n| n as usize == fwd.body.len()));
    assert!(f["upstream_ms"].is_number());

    let d = find("deny", "web");
    assert_eq!(d["status"], 403);
    assert_eq!(d["tenant"], "acme");
    assert_eq!(d["route"], "admin");
    assert_eq!(d["group"], "acme/admin-panel");
    assert_eq!(d["group_zone"], "admin");
    assert_eq!(d["path"], "/admin/users");
    assert!(d["target"].is_null());

    let n = find("no_route", "web");
    assert_eq!(n["status"], 404);
    assert_eq!(n["host"], "nobody.test");
    assert!(n["tenant"].is_null() && n["route"].is_null() && n["group"].is_null());
    assert!(n["target"].is_null());

    let b = find("bad_request", "web");
    assert_eq!(b["status"], 400);
    assert!(b["route"].is_null() && b["group"].is_null() && b["target"].is_null());

    let c = find("deny", "closed");
    assert!(c["status"].is_null(), "{c}");
    assert_eq!(c["zone"], "public");
    assert!(c["method"].is_null() && c["route"].is_null() && c["path"].is_null());

    assert_eq!(admin.heads(), 0);
    assert_eq!(site.heads(), 1);
    proxy.shutdown(Duration::from_secs(2)).await;
}

/// Requests the HTTP parser refuses before routing are logged too (DESIGN §2
/// step 2, §5): one `bad_request` line each, with the status sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_parser_are_logged() {
    let site = sec_backend("site", Duration::ZERO).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = sec_start(
        &segmented(
            site.addr,
            admin.addr,
            ", limits: { max_header_bytes: 8KiB }",
        ),
        Some(&log),
    )
    .await;
    let addr = web(&proxy);
    let sent: [(&[u8], u16); 4] = [
        (b"GET / HTTP/1.1\r\nHost: acme.test\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: acme.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST / HTTP/1.0\r\nHost: acme.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: acme.test\r\n\r\n", 400),
    ];
    for (raw, want) in sent {
        let ex = sec_raw(addr, raw).await;
        assert_eq!(ex.responses.first().map(|r| r.status), Some(want));
    }
    let big = format!("X-Big: {}", "a".repeat(9000));
    assert_eq!(sec_get(addr, "acme.test", "/", &[&big]).await.status, 431);
    let lines = sec_log_lines(&log, 5, Duration::from_secs(2)).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for l in &lines {
        assert_eq!(l["decision"], "bad_request", "{l}");
        assert_eq!(l["listener"], "web");
    }
    let mut statuses: Vec<u64> = lines.iter().filter_map(|l| l["status"].as_u64()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [400, 400, 400, 400, 431]);
    proxy.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let site = sec_backend("site", Duration::from_secs(1)).await;
    let admin = sec_backend("admin", Duration::ZERO).await;
    let proxy = sec_start(&segmented(site.addr, admin.addr, ""), None).await;
    let addr = web(&proxy);

    // An idle kept-alive connection must not hold the drain up.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /warm HTTP/1.1\r\nHost: acme.test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let slow = tokio::spawn(async move {
        let ex = sec_raw_idle(
            addr,
            b"GET /slow/report HTTP/1.1\r\nHost: acme.test\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        (ex, Instant::now())
    });
    // Wait until the backend holds the slow request.
    let deadline = Instant::now() + Duration::from_secs(2);
    while site.heads() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        site.heads(),
        2,
        "the slow request did not reach the backend"
    );

    let started = Instant::now();
    let proxy = std::sync::Arc::new(proxy);
    let stopping = proxy.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown(Duration::from_secs(5)).await });
    // New connections are refused while the slow request is still in flight.
    let mut refused_at = None;
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        match TcpStream::connect(addr).await {
            Err(_) => {
                refused_at = Some(Instant::now());
                break;
            }
            Ok(s) => drop(s),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = refused_at.expect("new connections still accepted during the drain");

    let (ex, done_at) = slow.await.expect("slow request task");
    assert_eq!(ex.responses.len(), 1, "{ex:?}");
    let resp = &ex.responses[0];
    assert_eq!(resp.status, 200, "{resp:?}");
    // Drained: the response says the connection closes, and it does.
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert!(ex.closed);
    assert_eq!(resp.echoed("request"), Some("GET /slow/report HTTP/1.1"));
    assert!(refused_at < done_at, "refusal came only after the drain");
    let drained = tokio::time::timeout(Duration::from_secs(6), shutdown)
        .await
        .expect("shutdown returned")
        .expect("shutdown task");
    assert!(drained, "shutdown reported unfinished connections");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        started.elapsed()
    );
    // The idle connection was closed by the drain.
    let n = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf))
        .await
        .expect("idle connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------------------
// The real binary

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

#[test]
fn binary_run_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = sec_free_port();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"version: 1
log: {{ access: access.log }}
drain_timeout: 3s
zones: {{ public: {{}} }}
flows: [{{ from: public, to: [public] }}]
listeners:
  web: {{ bind: "127.0.0.1:{port}", zone: public, protocol: http }}
tenants:
  acme:
    hosts: [acme.test]
    routes:
      - name: hello
        match: {{ path_prefix: / }}
        respond: {{ status: 200, body: "hello\n", content_type: text/plain }}
"#
        ),
    )
    .expect("write config");
    let mut child = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn bulkhead run");
    let kill = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    // Wait until it accepts.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut up = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("bulkhead run exited early: {status}");
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !up {
        kill(&mut child);
        panic!("bulkhead run did not accept on {addr} within 5 s");
    }
    // It serves.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: acme.test\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("hello\n"),
            "{got}"
        );
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() >= deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let Some(status) = status else {
        kill(&mut child);
        panic!("bulkhead run still running 5 s after SIGTERM");
    };
    assert_eq!(status.code(), Some(0), "{status}");
    // Stopped listening.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    // Its one request was logged.
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("\"decision\":\"respond\""), "{log}");
}

#[test]
fn binary_run_with_an_invalid_config_exits_1_with_file_line_col() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "version: 1\nzones: { public: {} }\nflows: [{ from: public, to: [public] }]\nlisteners:\n  web: { bind: \"127.0.0.1:0\", zone: public, protocol: http, bogus_key: 1 }\n",
    )
    .expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run bulkhead");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let located = text.lines().any(|l| {
        l.split_once("bad.yaml:").is_some_and(|(_, rest)| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().and_then(|p| p.parse::<u32>().ok());
            let col = parts.next().and_then(|p| p.parse::<u32>().ok());
            line == Some(5) && col.is_some()
        })
    });
    assert!(located, "no bad.yaml:5:COL in\n{text}");
    assert!(text.contains("bogus_key"), "{text}");
}
