//! End-to-end tests of `bulkhead audit` and `bulkhead diff` (DESIGN §6) with
//! the real binary: audit replays access logs written in the proxy's own
//! line format (`bulkhead_proxy::access_log::LogLine`); diff asks a small
//! stand-in admin API that answers `GET /config` like the real one.

use bulkhead_core::{Credentials, HostHeader, HttpVersion, NoHeaders, Request, Snapshot};
use bulkhead_proxy::access_log::{LogLine, TlsInfo};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn bulkhead(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the bulkhead binary");
    Run {
        code: out.status.code().expect("bulkhead exited by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// A segmented config: the admin panel sits in zone `admin`, which the
/// public listener may reach only when `open_admin` adds that flow.
fn config(open_admin: bool) -> String {
    let public_to = if open_admin {
        "[public, admin]"
    } else {
        "[public]"
    };
    format!(
        r#"
version: 1
zones: {{ public: {{}}, admin: {{}}, internal: {{}} }}
flows:
  - {{ from: public, to: {public_to} }}
  - {{ from: internal, to: [internal] }}
listeners:
  web: {{ bind: "127.0.0.1:18080", zone: public, protocol: http }}
  pg: {{ bind: "127.0.0.1:15432", zone: internal, protocol: tcp, forward: acme/db }}
tenants:
  acme:
    hosts: [acme.test]
    listeners: [web]
    target_groups:
      app: {{ zone: public, targets: ["127.0.0.1:9001"] }}
      canary: {{ zone: public, targets: ["127.0.0.1:9002"] }}
      panel: {{ zone: admin, targets: ["127.0.0.1:9003"] }}
      db: {{ zone: internal, targets: ["127.0.0.1:5432"] }}
    routes:
      - {{ name: admin, match: {{ path_prefix: /admin/ }}, forward: panel }}
      - {{ name: api, match: {{ path_prefix: /api/, headers: {{ x-api-version: "2" }} }}, forward: app }}
      - {{ name: beta, match: {{ path_prefix: /beta/ }}, forward: [{{ group: app, weight: 50 }}, {{ group: canary, weight: 50 }}] }}
      - {{ name: old, match: {{ path_exact: /old }}, redirect: {{ location: /new }} }}
      - {{ name: no-debug, match: {{ path_prefix: /debug/ }}, deny: {{ status: 403 }} }}
      - {{ name: site, match: {{ path_prefix: / }}, forward: app }}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p
}

fn load(text: &str) -> Snapshot {
    let cfg = bulkhead_config::from_str(text, "test.yaml", Path::new(".")).expect("valid config");
    Snapshot::compile(cfg).expect("compiles")
}

/// The log line the proxy writes for one HTTP request, decided by `snap`.
fn http_line(snap: &Snapshot, host: &str, path: &str, pick: u64) -> String {
    let creds = Credentials::default();
    let d = snap.decide(&Request {
        listener: "web",
        source: Some("203.0.113.9".parse().expect("ip")),
        sni: None,
        version: HttpVersion::Http11,
        method: "GET",
        target: path,
        host: HostHeader::One(host),
        headers: &NoHeaders,
        credentials: &creds,
        pick,
        trace: false,
    });
    let tenant = d.tenant.map(|t| &snap.tenants[t as usize]);
    let group = d.group.map(|g| &snap.groups[g as usize]);
    let line = LogLine {
        ts: "2025-01-01T00:00:00.000Z".into(),
        listener: Some("web".into()),
        zone: Some("public".into()),
        client: Some("203.0.113.9:40000".into()),
        tenant: tenant.map(|t| t.name.as_str().into()),
        route: tenant.and_then(|t| d.route.map(|r| t.routes[r as usize].name.as_str().into())),
        group: group.map(|g| g.full_name.as_str().into()),
        group_zone: group.map(|g| snap.zones[g.zone as usize].name.as_str().into()),
        target: None,
        decision: d.kind.as_str(),
        status: d.status.or(d.is_forward().then_some(200)),
        method: Some("GET".into()),
        host: d.host.as_deref().map(Into::into),
        path: d.path.as_deref().map(Into::into),
        query: d.query.map(Into::into),
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 1.0,
        upstream_ms: None,
        tls: None,
        request_id: Some("r".into()),
        names: None,
    };
    serde_json::to_string(&line).expect("serializes")
}

/// The log line of one TCP connection on `pg`.
fn tcp_line(snap: &Snapshot) -> String {
    let d = snap.decide_stream(
        "pg",
        Some("10.0.0.7".parse().expect("ip")),
        None,
        &Credentials::default(),
    );
    let group = d.group.map(|g| &snap.groups[g as usize]);
    let line = LogLine {
        ts: "2025-01-01T00:00:00.000Z".into(),
        listener: Some("pg".into()),
        zone: Some("internal".into()),
        client: Some("10.0.0.7:5000".into()),
        tenant: group.map(|g| snap.tenants[g.tenant as usize].name.as_str().into()),
        group: group.map(|g| g.full_name.as_str().into()),
        decision: d.kind.as_str(),
        ..LogLine::default()
    };
    serde_json::to_string(&line).expect("serializes")
}

/// Lines that cannot be replayed from a log: a failed handshake and a
/// request hyper refused while parsing.
fn unreplayable_lines() -> Vec<String> {
    let tls = LogLine {
        listener: Some("web".into()),
        client: Some("203.0.113.9:40001".into()),
        decision: "tls_rejected",
        tls: Some(TlsInfo::default()),
        ..LogLine::default()
    };
    let parse = LogLine {
        listener: Some("web".into()),
        client: Some("203.0.113.9:40002".into()),
        decision: "bad_request",
        status: Some(431),
        ..LogLine::default()
    };
    vec![
        serde_json::to_string(&tls).expect("serializes"),
        serde_json::to_string(&parse).expect("serializes"),
    ]
}

/// The row of `route` in audit's per-route table: replayed, matching, drifting, not replayable.
fn row(stdout: &str, route: &str) -> Option<[usize; 4]> {
    stdout.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        if cols.next()? != route {
            return None;
        }
        let n: Vec<usize> = cols.filter_map(|c| c.parse().ok()).collect();
        n.try_into().ok()
    })
}

// ---------------------------------------------------------------------------
// audit

#[test]
fn audit_passes_on_a_log_of_the_configs_own_decisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(false);
    let cfg = write(dir.path(), "bulkhead.yaml", &text);
    let snap = load(&text);
    let mut lines = vec![
        http_line(&snap, "acme.test", "/shop/cart", 0),
        http_line(&snap, "acme.test", "/shop/%2e%2e/items?page=2", 0),
        http_line(&snap, "ACME.test.", "/", 0),
        http_line(&snap, "acme.test", "/admin/users", 0),
        http_line(&snap, "acme.test", "/old", 0),
        http_line(&snap, "acme.test", "/debug/vars", 0),
        http_line(&snap, "nobody.test", "/x", 0),
        // Both legs of the split.
        http_line(&snap, "acme.test", "/beta/a", 0),
        http_line(&snap, "acme.test", "/beta/b", 99),
        tcp_line(&snap),
        String::new(),
    ];
    lines.extend(unreplayable_lines());
    assert!(lines[8].contains("acme/canary"), "{}", lines[8]);
    let log = write(dir.path(), "access.log", &lines.join("\n"));
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "10 lines replayed: 10 matching, 0 drifting, 0 not replayable (route still reachable); 2 skipped"
        ),
        "{run:?}"
    );
    assert!(run.stdout.contains("1 tls_rejected"), "{run:?}");
    assert_eq!(row(&run.stdout, "acme/site"), Some([3, 3, 0, 0]), "{run:?}");
    assert_eq!(row(&run.stdout, "acme/beta"), Some([2, 2, 0, 0]), "{run:?}");
}

#[test]
fn audit_flags_a_forward_the_config_now_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The log was written while the public listener could reach the panel.
    let before = load(&config(true));
    let lines = [
        http_line(&before, "acme.test", "/shop", 0),
        http_line(&before, "acme.test", "/admin/users", 0),
        http_line(&before, "acme.test", "/admin/settings", 0),
    ];
    assert!(
        lines[1].contains("\"decision\":\"forward\""),
        "{}",
        lines[1]
    );
    let log = write(dir.path(), "access.log", &lines.join("\n"));
    let cfg = write(dir.path(), "bulkhead.yaml", &config(false));
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let want = format!(
        "{}:2: logged forward route=admin group=acme/panel, config now gives deny 403 route=admin group=acme/panel (no flow from public to admin)",
        log.display()
    );
    assert!(run.stdout.contains(&want), "{run:?}");
    assert!(
        run.stdout.contains(&format!("{}:3: ", log.display())),
        "{run:?}"
    );
    assert!(
        !run.stdout.contains(&format!("{}:1: ", log.display())),
        "{run:?}"
    );
    assert_eq!(
        row(&run.stdout, "acme/admin"),
        Some([2, 0, 2, 0]),
        "{run:?}"
    );
    assert_eq!(row(&run.stdout, "acme/site"), Some([1, 1, 0, 0]), "{run:?}");
    assert!(run.stdout.contains("2 drifting"), "{run:?}");
}

#[test]
fn audit_does_not_replay_header_routes_but_checks_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = load(&config(false));
    // Logged as the proxy would for a request that carried x-api-version: 2.
    let line = http_line(&snap, "acme.test", "/api/items", 0)
        .replace("\"route\":\"site\"", "\"route\":\"api\"");
    assert!(line.contains("\"route\":\"api\""), "{line}");
    let log = write(dir.path(), "access.log", &line);
    let cfg = write(dir.path(), "bulkhead.yaml", &config(false));
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "not replayable (route matches on headers); route still reachable from web to acme/app"
        ),
        "{run:?}"
    );
    assert_eq!(row(&run.stdout, "acme/api"), Some([1, 0, 0, 1]), "{run:?}");

    // Once the route is gone, the same line is drift.
    let without_api: String = config(false)
        .lines()
        .filter(|l| !l.contains("name: api"))
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = write(dir.path(), "bulkhead.yaml", &without_api);
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains(
            "logged forward route=api group=acme/app, config now gives forward route=site group=acme/app — GET acme.test/api/items on web from 203.0.113.9"
        ),
        "{run:?}"
    );
}

#[test]
fn audit_reports_malformed_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(false);
    let snap = load(&text);
    let lines = [
        http_line(&snap, "acme.test", "/shop", 0),
        "this is not json".to_string(),
        r#"{"listener":"web","decision":"teleported","method":"GET"}"#.to_string(),
        String::new(),
        http_line(&snap, "acme.test", "/shop", 0),
    ];
    let log = write(dir.path(), "access.log", &lines.join("\n"));
    let cfg = write(dir.path(), "bulkhead.yaml", &text);
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let log = log.display();
    assert!(
        run.stdout
            .contains(&format!("{log}:2: malformed: not a JSON log line")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "{log}:3: malformed: unknown decision `teleported`"
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("2 malformed"), "{run:?}");
    assert_eq!(row(&run.stdout, "acme/site"), Some([2, 2, 0, 0]), "{run:?}");
}

#[test]
fn audit_without_a_readable_log_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "bulkhead.yaml", &config(false));
    let missing = dir.path().join("nope.log");
    let run = bulkhead(
        &[
            "audit",
            "-c",
            cfg.to_str().expect("utf-8"),
            missing.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot read the access log"), "{run:?}");
}

// ---------------------------------------------------------------------------
// diff

/// A stand-in admin API: answers every `GET /config` with `body`, and 401
/// when `token` is set and the request does not carry it.
fn admin_stub(body: String, token: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let want = token.map(|t| format!("authorization: bearer {}", t.to_ascii_lowercase()));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
            let (status, text) = if !head.starts_with("get /config ") {
                ("404 Not Found", r#"{"error":"not found"}"#.to_string())
            } else if want.as_ref().is_some_and(|w| !head.contains(w.as_str())) {
                (
                    "401 Unauthorized",
                    r#"{"error":"unauthorized"}"#.to_string(),
                )
            } else {
                ("200 OK", body.clone())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    addr
}

/// What the admin API answers for a config file.
fn config_answer(path: &Path) -> String {
    let snap = Snapshot::load(path).expect("loads");
    serde_json::json!({"config_hash": "x", "config": snap.effective()}).to_string()
}

fn with_admin(text: &str, token_env: Option<&str>) -> String {
    let admin = match token_env {
        Some(var) => format!("admin: {{ bind: \"127.0.0.1:19901\", token_env: {var} }}\n"),
        None => "admin: { bind: \"127.0.0.1:19901\" }\n".to_string(),
    };
    text.replacen("version: 1\n", &format!("version: 1\n{admin}"), 1)
}

#[test]
fn diff_without_drift_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "bulkhead.yaml",
        &with_admin(&config(false), None),
    );
    let addr = admin_stub(config_answer(&cfg), None);
    let url = format!("http://{addr}");
    let run = bulkhead(
        &["diff", "-c", cfg.to_str().expect("utf-8"), "--admin", &url],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no drift"), "{run:?}");
    assert!(run.stdout.contains("config_hash x"), "{run:?}");
}

#[test]
fn diff_names_an_added_route_and_a_changed_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = write(
        dir.path(),
        "running.yaml",
        &with_admin(&config(false), None),
    );
    let addr = admin_stub(config_answer(&running), None);
    let edited = with_admin(&config(false), None)
        .replace(
            "app: { zone: public, targets: [\"127.0.0.1:9001\"] }",
            "app: { zone: public, targets: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"] }",
        )
        .replace(
            "      - { name: site,",
            "      - { name: shop, match: { path_prefix: /shop/ }, forward: app }\n      - { name: site,",
        );
    let cfg = write(dir.path(), "bulkhead.yaml", &edited);
    let url = format!("http://{addr}/");
    let run = bulkhead(
        &["diff", "-c", cfg.to_str().expect("utf-8"), "--admin", &url],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("tenants.acme.routes: added route \"shop\""),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(
            "tenants.acme.target_groups.app.targets: [\"127.0.0.1:9001\"] -> [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]"
        ),
        "{run:?}"
    );
    assert!(run.stdout.contains("2 differences"), "{run:?}");
}

#[test]
fn diff_names_reordered_routes_and_removed_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = write(dir.path(), "running.yaml", &config(true));
    let addr = admin_stub(config_answer(&running), None);
    let edited = config(false).replace(
        "      - { name: old, match: { path_exact: /old }, redirect: { location: /new } }\n      - { name: no-debug, match: { path_prefix: /debug/ }, deny: { status: 403 } }\n",
        "      - { name: no-debug, match: { path_prefix: /debug/ }, deny: { status: 403 } }\n      - { name: old, match: { path_exact: /old }, redirect: { location: /new } }\n",
    );
    assert_ne!(edited, config(false));
    let cfg = write(dir.path(), "bulkhead.yaml", &edited);
    let url = format!("http://{addr}");
    let run = bulkhead(
        &["diff", "-c", cfg.to_str().expect("utf-8"), "--admin", &url],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("flows: removed flow \"public -> admin\""),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(
            "tenants.acme.routes: reordered: admin, api, beta, old, no-debug, site -> admin, api, beta, no-debug, old, site"
        ),
        "{run:?}"
    );
}

#[test]
fn diff_with_a_wrong_or_missing_token_exits_2_with_the_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "bulkhead.yaml",
        &with_admin(&config(false), Some("BH_AUDIT_DIFF_TOKEN")),
    );
    let addr = admin_stub(config_answer(&cfg), Some("right-token"));
    let url = format!("http://{addr}");
    let c = cfg.to_str().expect("utf-8");

    // The file's token_env, set to the wrong value.
    let run = bulkhead(
        &["diff", "-c", c, "--admin", &url],
        &[("BH_AUDIT_DIFF_TOKEN", "wrong-token")],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("401"), "{run:?}");
    assert!(run.stderr.contains("--token-env"), "{run:?}");

    // No token at all.
    let run = bulkhead(&["diff", "-c", c, "--admin", &url], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("the admin API wants a token: --token-env BH_AUDIT_DIFF_TOKEN"),
        "{run:?}"
    );

    // The right token, from another variable named on the command line.
    let run = bulkhead(
        &[
            "diff",
            "-c",
            c,
            "--admin",
            &url,
            "--token-env",
            "BH_AUDIT_DIFF_OTHER",
        ],
        &[
            ("BH_AUDIT_DIFF_OTHER", "right-token"),
            ("BH_AUDIT_DIFF_TOKEN", "wrong-token"),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn diff_against_nothing_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "bulkhead.yaml", &config(false));
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let run = bulkhead(
        &["diff", "-c", cfg.to_str().expect("utf-8"), "--admin", &url],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot reach the admin API"), "{run:?}");

    // Something that is not the admin API.
    let addr = admin_stub("this is not json".into(), None);
    let url = format!("http://{addr}");
    let run = bulkhead(
        &["diff", "-c", cfg.to_str().expect("utf-8"), "--admin", &url],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("did not answer JSON"), "{run:?}");
}
