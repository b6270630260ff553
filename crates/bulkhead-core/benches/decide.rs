//! The core decision path (DESIGN §2 steps 1–6) and config compilation.
//!
//! Targets (docs/benchmarks.md): `decide()` under 200 ns median with 10,000
//! routes; parse + compile of that config under 200 ms.
//!
//! `cargo bench -p bulkhead-core --bench decide`

use bulkhead_core::{Credentials, HeaderSource, HostHeader, HttpVersion, Request, Snapshot};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// The routes of one tenant: every kind of criterion and action.
fn tenant_yaml(name: &str, host: &str) -> String {
    format!(
        r#"  {name}:
    hosts: [{host}]
    target_groups:
      app: {{ zone: public, targets: ["127.0.0.1:9001", {{ address: "127.0.0.1:9002", weight: 2 }}] }}
      canary: {{ zone: public, targets: ["127.0.0.1:9004"] }}
      panel: {{ zone: admin, targets: ["127.0.0.1:9003"] }}
    routes:
      - {{ name: admin, match: {{ path_prefix: /admin/ }}, forward: panel }}
      - name: api
        match: {{ path_prefix: /api/, methods: [GET, POST], headers: {{ x-api-version: "2" }} }}
        forward: [{{ group: app, weight: 90 }}, {{ group: canary, weight: 10 }}]
      - {{ name: api-v1, match: {{ path_prefix: /api/v1/ }}, forward: app }}
      - {{ name: health, match: {{ path_exact: /healthz }}, respond: {{ status: 200, body: ok }} }}
      - {{ name: old, match: {{ path_exact: /old }}, redirect: {{ location: /new, status: 308 }} }}
      - {{ name: static, match: {{ path_prefix: /static/ }}, forward: app }}
      - {{ name: search, match: {{ path_regex: "/search/[a-z]+" }}, forward: app }}
      - {{ name: users, match: {{ path_prefix: /users/, methods: [GET] }}, forward: app }}
      - {{ name: no-debug, match: {{ path_prefix: /debug/ }}, deny: {{ status: 403 }} }}
      - {{ name: site, match: {{ path_prefix: /app/ }}, forward: app }}
"#
    )
}

fn config_yaml(tenants: usize) -> String {
    let mut y = String::from(
        r#"version: 1
zones: { public: {}, admin: {} }
flows: [{ from: public, to: [public] }]
listeners: { web: { bind: "127.0.0.1:8080", zone: public, protocol: http } }
tenants:
"#,
    );
    for i in 0..tenants {
        y.push_str(&tenant_yaml(
            &format!("t{i}"),
            &format!("t{i}.example.test"),
        ));
    }
    y
}

fn compile(yaml: &str) -> Snapshot {
    let config = bulkhead_config::from_str(yaml, "bench.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("bench config does not load: {e}"));
    Snapshot::compile(config).unwrap_or_else(|e| panic!("bench config does not compile: {e}"))
}

struct Headers;

impl HeaderSource for Headers {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        name.eq_ignore_ascii_case("x-api-version") && f("2")
    }
}

/// (method, target, expected decision): forwards through each kind of route,
/// a non-matching path, denied ones and one that needs normalizing.
const PATHS: &[(&str, &str, &str)] = &[
    ("GET", "/app/products/42", "forward"),
    ("GET", "/static/css/site.css", "forward"),
    ("GET", "/api/v1/items?page=2", "forward"),
    ("POST", "/api/items", "forward"),
    ("GET", "/healthz", "respond"),
    ("GET", "/search/shoes", "forward"),
    ("GET", "/users/7/profile", "forward"),
    ("GET", "/old", "redirect"),
    ("GET", "/admin/users", "deny"),
    ("GET", "/nope/at/all", "no_route"),
    ("GET", "/debug/pprof", "deny"),
    ("GET", "/app/%2e%2e/admin/x", "deny"),
];

struct Probe {
    host: String,
    method: &'static str,
    target: &'static str,
    expect: &'static str,
}

/// 1,024 requests spread over the tenants and the routes.
fn probes(tenants: usize) -> Vec<Probe> {
    (0..1024usize)
        .map(|k| {
            let (method, target, expect) = PATHS[k % PATHS.len()];
            Probe {
                host: format!("t{}.example.test", (k * 7919) % tenants),
                method,
                target,
                expect,
            }
        })
        .collect()
}

fn request<'a>(p: &'a Probe, creds: &'a Credentials) -> Request<'a> {
    Request {
        listener: "web",
        source: None,
        sni: None,
        version: HttpVersion::Http11,
        method: p.method,
        target: p.target,
        host: HostHeader::One(&p.host),
        headers: &Headers,
        credentials: creds,
        pick: 17,
        trace: false,
    }
}

fn bench_decide(c: &mut Criterion, label: &str, tenants: usize) {
    let snapshot = compile(&config_yaml(tenants));
    let creds = Credentials::default();
    let probes = probes(tenants);
    for p in &probes {
        let d = snapshot.decide(&request(p, &creds));
        assert_eq!(d.kind.as_str(), p.expect, "{} {}", p.host, p.target);
    }
    let mut group = c.benchmark_group(format!("decide/{label}"));
    group.bench_function("mix", |b| {
        let mut i = 0;
        b.iter(|| {
            let p = &probes[i % probes.len()];
            i += 1;
            black_box(snapshot.decide(black_box(&request(p, &creds))).kind)
        })
    });
    for (name, index) in [("forward", 0), ("no_route", 9), ("deny_flow", 8)] {
        let p = &probes[index];
        group.bench_function(name, |b| {
            b.iter(|| black_box(snapshot.decide(black_box(&request(p, &creds))).kind))
        });
    }
    group.finish();
}

fn decide_10_routes(c: &mut Criterion) {
    bench_decide(c, "10 routes", 1);
}

fn decide_10k_routes(c: &mut Criterion) {
    bench_decide(c, "1000 tenants x 10 routes", 1000);
}

fn compile_10k_routes(c: &mut Criterion) {
    let yaml = config_yaml(1000);
    let config = bulkhead_config::from_str(&yaml, "bench.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("bench config does not load: {e}"));
    let mut group = c.benchmark_group("compile/1000 tenants x 10 routes");
    group.sample_size(10);
    group.bench_function("from_str + compile", |b| {
        b.iter(|| compile(black_box(&yaml)))
    });
    group.bench_function("compile", |b| {
        b.iter_batched(
            || config.clone(),
            |config| Snapshot::compile(config).map(|s| s.edges.len()),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("from_str", |b| {
        b.iter(|| {
            bulkhead_config::from_str(black_box(&yaml), "bench.yaml", Path::new("."))
                .map(|c| c.tenants.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decide_10_routes, decide_10k_routes, compile_10k_routes
}
criterion_main!(benches);
