//! Arbitrary bytes -> (flags, request-target, Host, method) -> `decide()`
//! against a fixed, realistic config compiled once. Besides "never panic",
//! it checks the segmentation promises on every input:
//!
//! * a forwarded request only reaches a group whose zone a flow allows from
//!   the listener's zone, and never the admin panel from a public listener;
//! * the forwarded path is normal: normalizing it again changes nothing;
//! * a normalized path under `/admin` (case-folded on a case-insensitive
//!   tenant) is never forwarded from the public listener.
#![no_main]

use bulkhead_config::Normalize;
use bulkhead_core::normalize::normalize_path;
use bulkhead_core::{
    Credentials, DecisionKind, HeaderSource, HostHeader, HttpVersion, Request, Snapshot,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONFIG: &str = r#"
version: 1
zones:
  public: { strip_headers: [X-Internal-User] }
  internal: {}
  admin: { trusted: true }
flows:
  - { from: public, to: [public] }
  - { from: internal, to: [internal, public] }
  - { from: admin, to: [admin, internal] }
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  inside: { bind: "127.0.0.1:8081", zone: internal, protocol: http }
  ops: { bind: "127.0.0.1:9443", zone: admin, protocol: http, allow_sources: ["127.0.0.0/8"] }
  pg: { bind: "127.0.0.1:15432", zone: internal, protocol: tcp, forward: shared/postgres }
tenants:
  acme:
    hosts: [acme.test, "*.acme.test"]
    listeners: [web, ops]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001", { address: "127.0.0.1:9002", weight: 2 }] }
      canary: { zone: public, targets: ["127.0.0.1:9004"] }
      admin-panel: { zone: admin, targets: ["127.0.0.1:9003"] }
    routes:
      - { name: admin, match: { path_prefix: /admin/ }, forward: admin-panel, profile: admin-strict }
      - name: api
        match: { path_prefix: /api/, methods: [GET, POST], headers: { x-api-version: "2" } }
        forward: [{ group: app, weight: 90 }, { group: canary, weight: 10 }]
        profile: realtime
      - { name: search, match: { path_regex: "/search/[a-z]+", query: { q: { present: true } } }, forward: app }
      - { name: old, match: { path_exact: /old }, redirect: { location: /new, status: 308 } }
      - { name: robots, match: { path_exact: /robots.txt }, respond: { status: 200, body: "User-agent: *\n" } }
      - { name: no-debug, match: { path_prefix: /debug/ }, deny: { status: 403 } }
      - { name: site, match: { path_prefix: / }, forward: app, profile: public-cache }
  legacy:
    hosts: [legacy.test, "*.legacy.test"]
    normalize: { merge_slashes: false, encoded_slash: keep, semicolon: keep, case: insensitive }
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9011"] }
      admin: { zone: admin, targets: ["127.0.0.1:9013"] }
      db: { zone: internal, targets: ["127.0.0.1:9014"] }
    routes:
      - { name: admin, match: { path_prefix: /Admin }, forward: admin }
      - { name: reports, match: { path_regex: "/reports/.*", methods: [GET] }, forward: db }
      - { name: db, match: { path_prefix: /db/, identities: [billing] }, forward: db }
      - { name: site, match: { path_prefix: / }, forward: app }
  shared:
    hosts: [shared.test]
    target_groups:
      postgres: { zone: internal, targets: ["127.0.0.1:5432"] }
    routes:
      - { name: pg-http, match: { path_prefix: /pg/ }, forward: postgres }
    grants:
      - { tenant: acme, groups: [postgres] }
services:
  billing: { spiffe: "spiffe://corp.test/billing" }
  reporting: { sources: ["127.0.0.2/32"] }
access:
  - { group: shared/postgres, allow: [billing, reporting] }
  - { group: legacy/db, allow: [billing] }
invariants:
  - never: { from: public, to: admin }
  - tenants_isolated: true
"#;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let config = bulkhead_config::from_str(CONFIG, "fuzz.yaml", std::path::Path::new("."))
            .expect("the fuzz config loads");
        Snapshot::compile(config).expect("the fuzz config compiles")
    })
}

/// Headers taken from the input: `name: value` lines after the method.
struct Headers<'a>(Vec<(&'a str, &'a str)>);

impl HeaderSource for Headers<'_> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && f(v))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\n');
    let target = parts.next().unwrap_or("");
    let host = parts.next().unwrap_or("");
    let method = parts.next().filter(|m| !m.is_empty()).unwrap_or("GET");
    let headers = Headers(parts.filter_map(|l| l.split_once(':')).collect());

    let listener = ["web", "inside", "ops", "pg"][usize::from(flags & 3)];
    let host = match (flags >> 2) & 3 {
        0 | 1 => HostHeader::One(host),
        2 => HostHeader::Missing,
        _ => HostHeader::Many,
    };
    let version = [HttpVersion::Http11, HttpVersion::Http10][usize::from((flags >> 4) & 1)];
    let mut creds = Credentials::default();
    if flags & 0x20 != 0 {
        creds.mtls = true;
        creds.cert_uris.push("spiffe://corp.test/billing".into());
    }
    let s = snapshot();
    let req = Request {
        listener,
        source: Some(std::net::IpAddr::from([127, 0, 0, 1 + (flags >> 7)])),
        sni: None,
        version,
        method,
        target,
        host,
        headers: &headers,
        credentials: &creds,
        pick: u64::from(flags),
        trace: flags & 0x40 != 0,
    };
    let d = s.decide(&req);
    let _ = (d.kind.as_str(), &d.reason, &d.steps);

    if let Some(path) = d.path.as_deref() {
        let tenant = &s.tenants[d.tenant.expect("a path implies a tenant") as usize];
        let opts: &Normalize = &tenant.normalize;
        let again = normalize_path(path, opts);
        assert_eq!(again.as_deref(), Ok(path), "normalized path is not normal");
        let folded = if opts.case_insensitive {
            path.to_ascii_lowercase()
        } else {
            path.to_string()
        };
        if listener == "web" && (folded == "/admin" || folded.starts_with("/admin/")) {
            assert_ne!(d.kind, DecisionKind::Forward, "{target:?} reached {path:?}");
        }
    }
    if d.kind == DecisionKind::Forward {
        let lid = d.listener.expect("forward implies a listener");
        let gid = d.group.expect("forward implies a group");
        let from = s.listeners[lid as usize].zone;
        let to = s.groups[gid as usize].zone;
        assert!(s.flow_allows(from, to), "forwarded across a denied flow");
        if listener != "pg" {
            // HTTP forwards go through a route; the tcp listener `pg` has none.
            assert!(d.route.is_some() && d.path.is_some());
        }
        if listener == "web" {
            assert_ne!(s.zones[to as usize].name, "admin", "public reached admin");
        }
    }
});
