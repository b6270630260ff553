//! The sample config of DESIGN §3, copied verbatim into
//! `tests/data/design-sample.yaml`, loads — with real certificates beside it —
//! and without them fails at exactly the lines naming the missing files.

use bulkhead_config::{load, AccessLog, Action, Config, Invariant, Protocol};
use std::path::{Path, PathBuf};

const SAMPLE: &str = include_str!("data/design-sample.yaml");

/// Write `pem` files for a self-signed certificate of `name`.
fn write_cert(dir: &Path, stem: &str, name: &str) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate cert");
    std::fs::write(dir.join(format!("{stem}.pem")), ck.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .expect("write key");
}

/// A temp dir holding the sample as `bulkhead.yaml`, with or without `certs/`.
fn sample_dir(with_certs: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    if with_certs {
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir certs");
        write_cert(&certs, "acme", "acme.test");
        write_cert(&certs, "ops", "ops.test");
        write_cert(&certs, "ops-ca", "Ops test CA");
        std::fs::remove_file(certs.join("ops-ca.key")).expect("the CA key is not needed");
    }
    let file = dir.path().join("bulkhead.yaml");
    std::fs::write(&file, SAMPLE).expect("write config");
    (dir, file)
}

fn load_ok(file: &Path) -> Config {
    match load(file) {
        Ok(cfg) => cfg,
        Err(e) => panic!("the DESIGN sample must load:\n{e}"),
    }
}

fn names<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    items.into_iter().collect()
}

#[test]
fn sample_is_the_design_text_verbatim() {
    // Guard against the copy drifting from the contract when both are checked out side by side.
    let design = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/DESIGN.md");
    let Ok(text) = std::fs::read_to_string(&design) else {
        return; // shared/ is not beside every checkout
    };
    let start = text.find("## 3.").expect("DESIGN has §3");
    let body = &text[start..];
    let open = body.find("```yaml\n").expect("§3 has a yaml block") + "```yaml\n".len();
    let len = body[open..].find("```").expect("the yaml block ends");
    assert_eq!(
        &body[open..open + len],
        SAMPLE,
        "tests/data/design-sample.yaml differs from DESIGN.md §3"
    );
}

#[test]
fn design_sample_loads_with_its_certificates() {
    let (_dir, file) = sample_dir(true);
    let cfg = load_ok(&file);

    assert_eq!(cfg.version, 1);
    assert_eq!(cfg.workers, Some(2));
    let admin = cfg.admin.as_ref().expect("admin");
    assert_eq!(admin.bind.value.to_string(), "127.0.0.1:9901");
    assert_eq!(admin.token_env.as_deref(), Some("BULKHEAD_ADMIN_TOKEN"));
    assert!(matches!(cfg.log.access, AccessLog::Stdout));

    assert_eq!(
        names(cfg.zones.iter().map(|z| z.name.value.as_str())),
        ["public", "internal", "admin"]
    );
    assert_eq!(cfg.zones[0].strip_headers, ["x-internal-user"]);
    assert!(cfg.zones[2].trusted);
    assert_eq!(cfg.flows.len(), 3);

    assert_eq!(
        names(cfg.listeners.iter().map(|l| l.name.value.as_str())),
        ["web", "web-tls", "ops", "pg"]
    );
    let protocols: Vec<Protocol> = cfg.listeners.iter().map(|l| l.protocol).collect();
    assert_eq!(
        protocols,
        [
            Protocol::Http,
            Protocol::Https,
            Protocol::Https,
            Protocol::Tcp
        ]
    );
    let web_tls = &cfg.listeners[1];
    let tls = web_tls.tls.as_ref().expect("web-tls has tls");
    assert_eq!(tls.certificates.len(), 1);
    let loaded = tls.certificates[0].loaded.as_ref().expect("cert loaded");
    assert_eq!(loaded.names, ["acme.test"]);
    assert!(!loaded.chain.is_empty() && !loaded.key.is_empty());
    let ops = &cfg.listeners[2];
    assert_eq!(ops.allow_sources.len(), 1);
    let client_auth = ops
        .tls
        .as_ref()
        .and_then(|t| t.client_auth.as_ref())
        .expect("ops has client_auth");
    assert!(client_auth.required);
    assert_eq!(client_auth.ca_der.len(), 1);
    assert_eq!(
        cfg.listeners[3].forward.as_ref().map(|f| f.value.as_str()),
        Some("shared/postgres")
    );

    assert_eq!(
        names(cfg.tenants.iter().map(|t| t.name.value.as_str())),
        ["acme", "shared"]
    );
    let acme = &cfg.tenants[0];
    assert_eq!(
        names(acme.hosts.iter().map(|h| h.value.as_str())),
        ["acme.test", "*.acme.test"]
    );
    assert_eq!(
        names(acme.target_groups.iter().map(|g| g.name.value.as_str())),
        ["app", "canary", "admin-panel"]
    );
    assert_eq!(acme.target_groups[0].targets.len(), 2);
    assert_eq!(acme.target_groups[0].targets[1].weight, 2);
    assert_eq!(
        names(acme.routes.iter().map(|r| r.name.value.as_str())),
        ["admin", "api", "old", "robots", "no-debug", "site"]
    );
    match &acme.routes[1].action {
        Action::Forward(legs) => {
            let split: Vec<(&str, u32)> = legs
                .iter()
                .map(|l| (l.group.value.as_str(), l.weight))
                .collect();
            assert_eq!(split, [("app", 90), ("canary", 10)]);
        }
        other => panic!("api forwards, got {other:?}"),
    }
    assert!(matches!(
        acme.routes[2].action,
        Action::Redirect { status: 308, .. }
    ));
    assert!(matches!(
        acme.routes[3].action,
        Action::Respond { status: 200, .. }
    ));
    assert!(matches!(
        acme.routes[4].action,
        Action::Deny { status: 403 }
    ));
    let shared = &cfg.tenants[1];
    assert_eq!(shared.grants.len(), 1);
    let pg = cfg
        .resolve_group(None, "shared/postgres")
        .expect("shared/postgres resolves");
    assert!(
        cfg.may_use(0, pg),
        "the grant lets acme use shared/postgres"
    );

    assert_eq!(
        names(cfg.services.iter().map(|s| s.name.value.as_str())),
        ["billing", "reporting"]
    );
    assert_eq!(cfg.access.len(), 1);

    let mut profiles = names(cfg.profiles.iter().map(|p| p.name.value.as_str()));
    profiles.sort_unstable();
    assert_eq!(profiles, ["admin-strict", "public-cache", "realtime"]);

    assert_eq!(cfg.invariants.len(), 2);
    assert!(matches!(cfg.invariants[0], Invariant::Never { .. }));
    assert!(matches!(
        cfg.invariants[1],
        Invariant::TenantsIsolated { strict: false, .. }
    ));
}

#[test]
fn design_sample_without_certificates_points_at_the_cert_lines() {
    let (_dir, file) = sample_dir(false);
    let errors = match load(&file) {
        Ok(_) => panic!("the sample must not load without its cert files"),
        Err(e) => e.0,
    };
    let at: Vec<(u32, u32)> = errors.iter().map(|e| (e.pos.line, e.pos.col)).collect();
    // Line 28: `- { cert: certs/acme.pem, …`, line 36: `certificates: [{ cert: certs/ops.pem, …`,
    // line 37: `client_auth: { ca: certs/ops-ca.pem, …` — each at the path's value.
    assert_eq!(
        at,
        [(28, 19), (36, 30), (37, 26)],
        "{}",
        ConfigErrorsDisplay(&errors)
    );
    let lines: Vec<&str> = SAMPLE.lines().collect();
    for (e, needle) in errors
        .iter()
        .zip(["certs/acme.pem", "certs/ops.pem", "certs/ops-ca.pem"])
    {
        assert!(
            lines[e.pos.line as usize - 1].contains(needle),
            "line {} should name {needle}",
            e.pos.line
        );
        assert!(e.message.contains(needle), "{e}");
        assert!(e.file.ends_with("bulkhead.yaml"), "{e}");
    }
}

struct ConfigErrorsDisplay<'a>(&'a [bulkhead_config::ConfigError]);

impl std::fmt::Display for ConfigErrorsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
