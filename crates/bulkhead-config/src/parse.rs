//! Pass two of loading: walk the [`Node`] tree into the typed [`Config`],
//! recording every local mistake (unknown keys, bad scalars, missing keys).
//! References between sections are checked afterwards by `validate`.

use crate::error::Collector;
use crate::model::*;
use crate::read::*;
use crate::tls;
use crate::yaml::{Node, NodeKind, Pos};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOP: &[&str] = &[
    "version",
    "workers",
    "drain_timeout",
    "admin",
    "log",
    "zones",
    "flows",
    "listeners",
    "tenants",
    "services",
    "access",
    "profiles",
    "invariants",
];

/// Walk the document root into a config. `base_dir` resolves relative paths.
pub fn config(cx: &Collector, root: &Node, file: &str, base_dir: &Path) -> Config {
    let mut cfg = Config {
        file: file.to_string(),
        base_dir: base_dir.to_path_buf(),
        version: 1,
        workers: None,
        drain_timeout: Duration::from_secs(30),
        admin: None,
        log: Log {
            access: AccessLog::Stdout,
        },
        zones: Vec::new(),
        flows: Vec::new(),
        listeners: Vec::new(),
        tenants: Vec::new(),
        services: Vec::new(),
        access: Vec::new(),
        profiles: Vec::new(),
        invariants: Vec::new(),
    };
    let Some(f) = fields(cx, root, "the config", TOP) else {
        return cfg;
    };
    match f.get("version") {
        Some(v) if v.as_str() == Some("1") => {}
        Some(v) => cx.error(
            v.pos,
            format!(
                "unsupported config version `{}`",
                v.as_str().unwrap_or(v.kind_name())
            ),
            "this bulkhead reads `version: 1`",
        ),
        None => cx.error(f.pos, "the config is missing `version`", "add `version: 1`"),
    }
    if let Some(n) = f.get("workers") {
        cfg.workers = int(cx, n, "workers", 1, 1024).map(|w| w as usize);
    }
    if let Some(n) = f.get("drain_timeout") {
        cfg.drain_timeout = duration(cx, n, "drain_timeout").unwrap_or(cfg.drain_timeout);
    }
    if let Some(n) = f.get("admin") {
        cfg.admin = admin(cx, n);
    }
    if let Some(n) = f.get("log") {
        cfg.log = log(cx, n, base_dir);
    }
    if let Some(n) = f.get("zones") {
        cfg.zones = named(cx, n, "zone")
            .into_iter()
            .map(|(name, n)| zone(cx, name, n))
            .collect();
    }
    if let Some(n) = f.get("flows") {
        cfg.flows = list(cx, n, "flows")
            .into_iter()
            .filter_map(|n| flow(cx, n))
            .collect();
    }
    if let Some(n) = f.get("listeners") {
        cfg.listeners = named(cx, n, "listener")
            .into_iter()
            .filter_map(|(name, n)| listener(cx, name, n, base_dir))
            .collect();
    }
    if let Some(n) = f.get("tenants") {
        cfg.tenants = named(cx, n, "tenant")
            .into_iter()
            .map(|(name, n)| tenant(cx, name, n, base_dir))
            .collect();
    }
    if let Some(n) = f.get("services") {
        cfg.services = named(cx, n, "service")
            .into_iter()
            .map(|(name, n)| service(cx, name, n))
            .collect();
    }
    if let Some(n) = f.get("access") {
        cfg.access = list(cx, n, "access")
            .into_iter()
            .filter_map(|n| access_rule(cx, n))
            .collect();
    }
    cfg.profiles = builtin_profiles();
    if let Some(n) = f.get("profiles") {
        for (name, n) in named(cx, n, "profile") {
            let what = format!("profile `{}`", name.value);
            let policy = fields(cx, n, &what, POLICY_KEYS)
                .map(|f| policy(cx, &f, base_dir))
                .unwrap_or_default();
            let profile = Profile {
                name,
                policy,
                builtin: false,
            };
            match cfg
                .profiles
                .iter_mut()
                .find(|p| p.builtin && p.name.value == profile.name.value)
            {
                Some(existing) => *existing = profile,
                None => cfg.profiles.push(profile),
            }
        }
    }
    if let Some(n) = f.get("invariants") {
        cfg.invariants = list(cx, n, "invariants")
            .into_iter()
            .filter_map(|n| invariant(cx, n))
            .collect();
    }
    cfg
}

/// The built-in profiles of DESIGN §3 (`public-cache`, `admin-strict`, `realtime`).
pub fn builtin_profiles() -> Vec<Profile> {
    let builtin = |name: &str, policy: Policy| Profile {
        name: Spanned::new(name.to_string(), Pos::default()),
        policy,
        builtin: true,
    };
    vec![
        builtin(
            "public-cache",
            Policy {
                cache: Some(Cache {
                    ttl: Duration::from_secs(60),
                    max_bytes: 64 << 20,
                    cache_authenticated: false,
                    cache_set_cookie: false,
                    coalesce: true,
                    stale_while_revalidate: Duration::ZERO,
                }),
                ..Policy::default()
            },
        ),
        builtin(
            "admin-strict",
            Policy {
                auth: Some(Auth::Mtls { required: true }),
                rate_limit: Some(RateLimit {
                    per_second: 10,
                    burst: 20,
                    key: RateKey::ClientIp,
                }),
                ..Policy::default()
            },
        ),
        builtin(
            "realtime",
            Policy {
                timeouts: Some(Timeouts {
                    connect: Duration::from_millis(200),
                    request: Some(Duration::from_secs(2)),
                    ..Timeouts::default()
                }),
                retries: Some(Retries {
                    attempts: 0,
                    on: Vec::new(),
                    budget_percent: 0,
                }),
                buffering: Some(false),
                ..Policy::default()
            },
        ),
    ]
}

fn admin(cx: &Collector, n: &Node) -> Option<Admin> {
    let f = fields(cx, n, "admin", &["bind", "token_env"])?;
    let bind = socket_addr(cx, f.req(cx, "bind", "admin")?, "admin.bind")?;
    let token_env = f
        .get("token_env")
        .and_then(|n| string(cx, n, "admin.token_env"))
        .map(|s| s.value);
    if token_env.is_none() && !bind.value.ip().is_loopback() {
        cx.error(
            bind.pos,
            format!("admin.bind `{}` is not a loopback address but no token is set", bind.value),
            "set `token_env` to the name of an environment variable holding a bearer token, or bind to 127.0.0.1",
        );
    }
    Some(Admin { bind, token_env })
}

fn log(cx: &Collector, n: &Node, base_dir: &Path) -> Log {
    let mut log = Log {
        access: AccessLog::Stdout,
    };
    let Some(f) = fields(cx, n, "log", &["access", "format"]) else {
        return log;
    };
    if let Some(n) = f.get("access") {
        log.access = match n.as_str() {
            Some("stdout") => AccessLog::Stdout,
            Some("stderr") => AccessLog::Stderr,
            Some("off" | "false") => AccessLog::Off,
            Some(path) if !path.is_empty() => AccessLog::File(base_dir.join(path)),
            _ => {
                cx.error(
                    n.pos,
                    "log.access must be stdout, stderr, off or a file path",
                    "",
                );
                AccessLog::Stdout
            }
        };
    }
    if let Some(n) = f.get("format") {
        one_of(cx, n, "log.format", &[("json", ())]);
    }
    log
}

fn zone(cx: &Collector, name: Spanned<String>, n: &Node) -> Zone {
    let mut zone = Zone {
        name,
        trusted: false,
        strip_headers: Vec::new(),
    };
    let what = format!("zone `{}`", zone.name.value);
    if let Some(f) = fields(cx, n, &what, &["trusted", "strip_headers"]) {
        if let Some(n) = f.get("trusted") {
            zone.trusted = boolean(cx, n, "trusted").unwrap_or(false);
        }
        if let Some(n) = f.get("strip_headers") {
            zone.strip_headers = header_names(cx, n, "strip_headers");
        }
    }
    zone
}

fn header_names(cx: &Collector, n: &Node, what: &str) -> Vec<String> {
    strings(cx, n, what)
        .into_iter()
        .filter_map(|s| header_name(cx, &s, what))
        .collect()
}

fn header_name(cx: &Collector, s: &Spanned<String>, what: &str) -> Option<String> {
    let ok = s
        .value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        cx.error(
            s.pos,
            format!("{what}: `{}` is not a valid header name", s.value),
            "header names are tokens: letters, digits and `-`",
        );
        return None;
    }
    Some(s.value.to_ascii_lowercase())
}

fn flow(cx: &Collector, n: &Node) -> Option<Flow> {
    let f = fields(cx, n, "flow", &["from", "to"])?;
    let from = string(cx, f.req(cx, "from", "flow")?, "flow.from")?;
    let to = strings(cx, f.req(cx, "to", "flow")?, "flow.to");
    Some(Flow {
        pos: n.pos,
        from,
        to,
    })
}

const LISTENER_KEYS: &[&str] = &[
    "bind",
    "zone",
    "protocol",
    "allow_sources",
    "tls",
    "default_certificate",
    "limits",
    "forward",
    "forward_by_sni",
    "profile",
    "proxy_protocol",
    "trusted_proxies",
];

fn listener(cx: &Collector, name: Spanned<String>, n: &Node, base: &Path) -> Option<Listener> {
    let what = format!("listener `{}`", name.value);
    let f = fields(cx, n, &what, LISTENER_KEYS)?;
    let bind = f
        .req(cx, "bind", &what)
        .and_then(|n| socket_addr(cx, n, "bind"));
    let zone = f.req(cx, "zone", &what).and_then(|n| string(cx, n, "zone"));
    let protocol = f.req(cx, "protocol", &what).and_then(|n| {
        one_of(
            cx,
            n,
            "protocol",
            &[
                ("http", Protocol::Http),
                ("https", Protocol::Https),
                ("tcp", Protocol::Tcp),
                ("tls-passthrough", Protocol::TlsPassthrough),
            ],
        )
    });
    let allow_sources = f
        .get("allow_sources")
        .map(|n| cidrs(cx, n, "allow_sources"))
        .unwrap_or_default();
    let tls = f.get("tls").and_then(|n| listener_tls(cx, n, base));
    let default_certificate = f
        .get("default_certificate")
        .and_then(|n| cert_pair(cx, n, base));
    let limits = f
        .get("limits")
        .map(|n| listener_limits(cx, n))
        .unwrap_or_default();
    let forward = f.get("forward").and_then(|n| string(cx, n, "forward"));
    let mut forward_by_sni = Vec::new();
    if let Some(n) = f.get("forward_by_sni") {
        match &n.kind {
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    if let (Some(sni), Some(group)) = (
                        string(cx, k, "forward_by_sni key"),
                        string(cx, v, "forward_by_sni group"),
                    ) {
                        let sni = Spanned::new(sni.value.to_ascii_lowercase(), sni.pos);
                        forward_by_sni.push((sni, group));
                    }
                }
            }
            _ => cx.error(
                n.pos,
                "forward_by_sni must map SNI names to groups",
                "write `{ \"db.internal\": tenant/group }`",
            ),
        }
    }
    let profile = f.get("profile").and_then(|n| string(cx, n, "profile"));
    let proxy_protocol = f
        .get("proxy_protocol")
        .and_then(|n| boolean(cx, n, "proxy_protocol"))
        .unwrap_or(false);
    let trusted_proxies = f
        .get("trusted_proxies")
        .map(|n| cidrs(cx, n, "trusted_proxies"))
        .unwrap_or_default();
    let (bind, zone, protocol) = (bind?, zone?, protocol?);

    // Protocol-specific keys.
    match protocol {
        Protocol::Https => {
            if tls.as_ref().is_none_or(|t| t.certificates.is_empty())
                && default_certificate.is_none()
            {
                cx.error(
                    name.pos,
                    format!("{what} is https but has no certificates"),
                    "add `tls: { certificates: [{ cert: FILE, key: FILE }] }`",
                );
            }
        }
        _ => {
            for key in ["tls", "default_certificate"] {
                if let Some(pos) = f.key_pos(key) {
                    cx.error(
                        pos,
                        format!(
                            "`{key}` is only for https listeners, {what} is {}",
                            protocol.as_str()
                        ),
                        "remove it or set `protocol: https`",
                    );
                }
            }
        }
    }
    match protocol {
        Protocol::Tcp if forward.is_none() => cx.error(
            name.pos,
            format!("{what} is tcp but has no `forward`"),
            "add `forward: tenant/group`",
        ),
        Protocol::TlsPassthrough if forward_by_sni.is_empty() => cx.error(
            name.pos,
            format!("{what} is tls-passthrough but has no `forward_by_sni`"),
            "add `forward_by_sni: { \"name.example\": tenant/group }`",
        ),
        _ => {}
    }
    if protocol != Protocol::Tcp {
        if let Some(pos) = f.key_pos("forward") {
            cx.error(
                pos,
                "`forward` is only for tcp listeners",
                "route HTTP with tenant routes",
            );
        }
    }
    if protocol != Protocol::TlsPassthrough {
        if let Some(pos) = f.key_pos("forward_by_sni") {
            cx.error(
                pos,
                "`forward_by_sni` is only for tls-passthrough listeners",
                "",
            );
        }
    }
    if proxy_protocol && trusted_proxies.is_empty() {
        cx.error(
            name.pos,
            format!("{what} accepts PROXY protocol from anyone"),
            "add `trusted_proxies: [CIDR]` naming the balancers in front",
        );
    }
    Some(Listener {
        name,
        bind,
        zone,
        protocol,
        allow_sources,
        tls,
        default_certificate,
        limits,
        forward,
        forward_by_sni,
        profile,
        proxy_protocol,
        trusted_proxies,
    })
}

fn listener_tls(cx: &Collector, n: &Node, base: &Path) -> Option<ListenerTls> {
    let f = fields(
        cx,
        n,
        "tls",
        &["certificates", "min_version", "client_auth"],
    )?;
    let certificates = f
        .get("certificates")
        .map(|n| {
            list(cx, n, "certificates")
                .into_iter()
                .filter_map(|n| cert_pair(cx, n, base))
                .collect()
        })
        .unwrap_or_default();
    let min_version = f
        .get("min_version")
        .and_then(|n| {
            one_of(
                cx,
                n,
                "min_version",
                &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
            )
        })
        .unwrap_or(TlsVersion::V1_2);
    let client_auth = f.get("client_auth").and_then(|n| {
        let f = fields(cx, n, "client_auth", &["ca", "required"])?;
        let ca = path(cx, f.req(cx, "ca", "client_auth")?, "client_auth.ca", base)?;
        let required = f
            .get("required")
            .and_then(|n| boolean(cx, n, "required"))
            .unwrap_or(true);
        let ca_der = match tls::load_certs(&ca.value) {
            Ok(c) => c,
            Err(e) => {
                cx.error(ca.pos, e, "point `ca` at a PEM file of CA certificates");
                Vec::new()
            }
        };
        Some(ClientAuth {
            ca,
            required,
            ca_der,
        })
    });
    Some(ListenerTls {
        certificates,
        min_version,
        client_auth,
    })
}

fn path(cx: &Collector, n: &Node, what: &str, base: &Path) -> Option<Spanned<PathBuf>> {
    let s = string(cx, n, what)?;
    Some(Spanned::new(base.join(&s.value), s.pos))
}

fn cert_pair(cx: &Collector, n: &Node, base: &Path) -> Option<CertPair> {
    let f = fields(cx, n, "certificate", &["cert", "key"])?;
    let cert = f
        .req(cx, "cert", "certificate")
        .and_then(|n| path(cx, n, "cert", base));
    let key = f
        .req(cx, "key", "certificate")
        .and_then(|n| path(cx, n, "key", base));
    let (cert, key) = (cert?, key?);
    let loaded = match tls::load_pair(&cert.value, &key.value) {
        Ok(l) => Some(l),
        Err(e) => {
            cx.error(cert.pos, e, "point `cert` and `key` at readable PEM files");
            None
        }
    };
    Some(CertPair { cert, key, loaded })
}

fn listener_limits(cx: &Collector, n: &Node) -> ListenerLimits {
    let mut l = ListenerLimits::default();
    let Some(f) = fields(
        cx,
        n,
        "limits",
        &[
            "max_connections",
            "header_timeout",
            "idle_timeout",
            "max_header_bytes",
            "max_uri_bytes",
            "max_body_bytes",
            "h2_max_concurrent_streams",
            "max_requests",
        ],
    ) else {
        return l;
    };
    if let Some(n) = f.get("max_connections") {
        l.max_connections =
            int(cx, n, "max_connections", 1, 10_000_000).map_or(l.max_connections, |v| v as u32);
    }
    if let Some(n) = f.get("header_timeout") {
        l.header_timeout = duration(cx, n, "header_timeout").unwrap_or(l.header_timeout);
    }
    if let Some(n) = f.get("idle_timeout") {
        l.idle_timeout = duration(cx, n, "idle_timeout").unwrap_or(l.idle_timeout);
    }
    if let Some(n) = f.get("max_header_bytes") {
        if let Some(v) = size(cx, n, "max_header_bytes") {
            if v < 8 << 10 {
                cx.error(
                    n.pos,
                    "max_header_bytes is below its minimum of 8KiB",
                    "set at least `8KiB`",
                );
            } else {
                l.max_header_bytes = v;
            }
        }
    }
    if let Some(n) = f.get("max_uri_bytes") {
        if let Some(v) = size(cx, n, "max_uri_bytes") {
            if v < 256 {
                cx.error(
                    n.pos,
                    "max_uri_bytes is below its minimum of 256",
                    "set at least `256`",
                );
            } else {
                l.max_uri_bytes = v;
            }
        }
    }
    if let Some(n) = f.get("max_body_bytes") {
        l.max_body_bytes = size(cx, n, "max_body_bytes");
    }
    if let Some(n) = f.get("h2_max_concurrent_streams") {
        l.h2_max_concurrent_streams = int(cx, n, "h2_max_concurrent_streams", 1, 10_000)
            .map_or(l.h2_max_concurrent_streams, |v| v as u32);
    }
    if let Some(n) = f.get("max_requests") {
        l.max_requests = int(cx, n, "max_requests", 1, 10_000_000).map(|v| v as u32);
    }
    l
}

const TENANT_KEYS: &[&str] = &[
    "hosts",
    "listeners",
    "normalize",
    "target_groups",
    "routes",
    "grants",
    "profile",
    "limits",
];

fn tenant(cx: &Collector, name: Spanned<String>, n: &Node, base: &Path) -> Tenant {
    let what = format!("tenant `{}`", name.value);
    let mut t = Tenant {
        name,
        hosts: Vec::new(),
        listeners: None,
        normalize: Normalize::default(),
        target_groups: Vec::new(),
        routes: Vec::new(),
        grants: Vec::new(),
        profile: None,
        max_requests: None,
    };
    let Some(f) = fields(cx, n, &what, TENANT_KEYS) else {
        return t;
    };
    if let Some(n) = f.get("hosts") {
        t.hosts = strings(cx, n, "hosts")
            .into_iter()
            .filter_map(|h| host_pattern(cx, h))
            .collect();
    }
    if let Some(n) = f.get("listeners") {
        t.listeners = Some(strings(cx, n, "listeners"));
    }
    if let Some(n) = f.get("normalize") {
        t.normalize = normalize(cx, n);
    }
    if let Some(n) = f.get("target_groups") {
        t.target_groups = named(cx, n, "target group")
            .into_iter()
            .filter_map(|(name, n)| target_group(cx, name, n, base))
            .collect();
    }
    if let Some(n) = f.get("routes") {
        t.routes = list(cx, n, "routes")
            .into_iter()
            .filter_map(|n| route(cx, n, base))
            .collect();
    }
    if let Some(n) = f.get("grants") {
        t.grants = list(cx, n, "grants")
            .into_iter()
            .filter_map(|n| {
                let f = fields(cx, n, "grant", &["tenant", "groups"])?;
                let tenant = string(cx, f.req(cx, "tenant", "grant")?, "grant.tenant")?;
                let groups = strings(cx, f.req(cx, "groups", "grant")?, "grant.groups");
                Some(Grant { tenant, groups })
            })
            .collect();
    }
    if let Some(n) = f.get("profile") {
        t.profile = string(cx, n, "profile");
    }
    if let Some(n) = f.get("limits") {
        if let Some(f) = fields(cx, n, "tenant limits", &["max_requests"]) {
            if let Some(n) = f.get("max_requests") {
                t.max_requests = int(cx, n, "max_requests", 1, 10_000_000).map(|v| v as u32);
            }
        }
    }
    t
}

/// A host pattern: lowercase, one trailing dot dropped, no port; `*.` only as
/// the whole first label.
fn host_pattern(cx: &Collector, h: Spanned<String>) -> Option<Spanned<String>> {
    let lower = h.value.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    let (wild, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let labels_ok = !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        cx.error(
            h.pos,
            format!("host `{}` is not a valid host name", h.value),
            "write `example.test` or `*.example.test` (no port, no scheme, no path)",
        );
        return None;
    }
    let value = if wild {
        format!("*.{rest}")
    } else {
        rest.to_string()
    };
    Some(Spanned::new(value, h.pos))
}

fn normalize(cx: &Collector, n: &Node) -> Normalize {
    let mut norm = Normalize::default();
    let Some(f) = fields(
        cx,
        n,
        "normalize",
        &["merge_slashes", "encoded_slash", "semicolon", "case"],
    ) else {
        return norm;
    };
    if let Some(n) = f.get("merge_slashes") {
        norm.merge_slashes = boolean(cx, n, "merge_slashes").unwrap_or(true);
    }
    if let Some(n) = f.get("encoded_slash") {
        norm.keep_encoded_slash =
            one_of(cx, n, "encoded_slash", &[("reject", false), ("keep", true)]).unwrap_or(false);
    }
    if let Some(n) = f.get("semicolon") {
        norm.keep_semicolon =
            one_of(cx, n, "semicolon", &[("reject", false), ("keep", true)]).unwrap_or(false);
    }
    if let Some(n) = f.get("case") {
        norm.case_insensitive = one_of(
            cx,
            n,
            "case",
            &[("sensitive", false), ("insensitive", true)],
        )
        .unwrap_or(false);
    }
    norm
}

const GROUP_KEYS: &[&str] = &[
    "zone",
    "targets",
    "balance",
    "hash_on",
    "health",
    "limits",
    "outlier",
    "timeouts",
    "retries",
    "faults",
    "protocol",
    "identity_header",
    "tls",
    "dns_refresh",
];

fn target_group(
    cx: &Collector,
    name: Spanned<String>,
    n: &Node,
    base: &Path,
) -> Option<TargetGroup> {
    let what = format!("target group `{}`", name.value);
    let f = fields(cx, n, &what, GROUP_KEYS)?;
    let zone = f.req(cx, "zone", &what).and_then(|n| string(cx, n, "zone"));
    let targets: Vec<Target> = match f.req(cx, "targets", &what) {
        Some(n) => list(cx, n, "targets")
            .into_iter()
            .filter_map(|n| target(cx, n))
            .collect(),
        None => Vec::new(),
    };
    if let Some(n) = f.get("targets") {
        if targets.is_empty() && matches!(&n.kind, NodeKind::Seq(items) if items.is_empty()) {
            cx.error(
                n.pos,
                format!("{what} has no targets"),
                "list at least one `host:port`",
            );
        }
    }
    let balance = f
        .get("balance")
        .and_then(|n| {
            one_of(
                cx,
                n,
                "balance",
                &[
                    ("round_robin", Balance::RoundRobin),
                    ("least_request", Balance::LeastRequest),
                    ("random", Balance::Random),
                    ("consistent_hash", Balance::ConsistentHash),
                ],
            )
        })
        .unwrap_or(Balance::RoundRobin);
    let hash_on = match f.get("hash_on") {
        None => HashOn::ClientIp,
        Some(n) => {
            let text = n.as_str().unwrap_or("");
            if text == "client_ip" {
                HashOn::ClientIp
            } else if let Some(h) = text.strip_prefix("header:").filter(|h| !h.is_empty()) {
                HashOn::Header(h.to_ascii_lowercase())
            } else if let Some(c) = text.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                HashOn::Cookie(c.to_string())
            } else {
                cx.error(
                    n.pos,
                    format!("hash_on `{text}` is not supported"),
                    "use client_ip, header:NAME or cookie:NAME",
                );
                HashOn::ClientIp
            }
        }
    };
    if let Some(pos) = f.key_pos("hash_on") {
        if balance != Balance::ConsistentHash {
            cx.error(
                pos,
                "`hash_on` only applies to `balance: consistent_hash`",
                "set the balance or remove hash_on",
            );
        }
    }
    let health = f.get("health").and_then(|n| health(cx, n));
    let limits = f
        .get("limits")
        .map(|n| group_limits(cx, n))
        .unwrap_or_default();
    let outlier = f.get("outlier").and_then(|n| outlier(cx, n));
    let protocol = f
        .get("protocol")
        .and_then(|n| {
            one_of(
                cx,
                n,
                "protocol",
                &[("h1", UpstreamProtocol::H1), ("h2", UpstreamProtocol::H2)],
            )
        })
        .unwrap_or(UpstreamProtocol::H1);
    let identity_header = f.get("identity_header").and_then(|n| {
        let s = string(cx, n, "identity_header")?;
        header_name(cx, &s, "identity_header")
    });
    let tls = f.get("tls").and_then(|n| upstream_tls(cx, n, base));
    let dns_refresh = f
        .get("dns_refresh")
        .and_then(|n| duration(cx, n, "dns_refresh"))
        .unwrap_or(Duration::from_secs(30));
    let policy = policy(cx, &f, base);
    Some(TargetGroup {
        name,
        zone: zone?,
        targets,
        balance,
        hash_on,
        health,
        limits,
        outlier,
        protocol,
        identity_header,
        tls,
        dns_refresh,
        policy,
    })
}

fn target(cx: &Collector, n: &Node) -> Option<Target> {
    let (address, weight) = match &n.kind {
        NodeKind::Scalar(..) => (string(cx, n, "target")?, 1),
        NodeKind::Map(_) => {
            let f = fields(cx, n, "target", &["address", "weight"])?;
            let address = string(cx, f.req(cx, "address", "target")?, "target address")?;
            let weight = f.get("weight").map_or(Some(1), |n| weight(cx, n))?;
            (address, weight)
        }
        NodeKind::Seq(_) => {
            cx.error(
                n.pos,
                "a target must be `host:port` or `{ address, weight }`",
                "",
            );
            return None;
        }
    };
    if !valid_target(&address.value) {
        cx.error(
            address.pos,
            format!("target `{}` is not host:port", address.value),
            "write `127.0.0.1:9001`, `[::1]:9001` or `app.internal:80`",
        );
        return None;
    }
    Some(Target { address, weight })
}

fn valid_target(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn weight(cx: &Collector, n: &Node) -> Option<u32> {
    match n.as_str().and_then(|s| s.parse::<i64>().ok()) {
        Some(w) if (1..=1000).contains(&w) => Some(w as u32),
        Some(w) if w <= 0 => {
            cx.error(
                n.pos,
                format!("weight {w} must be at least 1"),
                "weights are 1–1000; take a target out with drain, not weight 0",
            );
            None
        }
        _ => {
            cx.error(n.pos, "weight must be an integer from 1 to 1000", "");
            None
        }
    }
}

fn health(cx: &Collector, n: &Node) -> Option<HealthCheck> {
    let f = fields(
        cx,
        n,
        "health",
        &["path", "interval", "timeout", "healthy", "unhealthy"],
    )?;
    let path = f.get("path").and_then(|n| string(cx, n, "health.path"));
    if let Some(p) = &path {
        if !p.value.starts_with('/') {
            cx.error(
                p.pos,
                format!("health.path `{}` must start with `/`", p.value),
                "",
            );
        }
    }
    let path = path.map(|p| p.value);
    Some(HealthCheck {
        path,
        interval: f
            .get("interval")
            .and_then(|n| duration(cx, n, "health.interval"))
            .unwrap_or(Duration::from_secs(5)),
        timeout: f
            .get("timeout")
            .and_then(|n| duration(cx, n, "health.timeout"))
            .unwrap_or(Duration::from_secs(1)),
        healthy: f
            .get("healthy")
            .and_then(|n| int(cx, n, "health.healthy", 1, 100))
            .map_or(2, |v| v as u32),
        unhealthy: f
            .get("unhealthy")
            .and_then(|n| int(cx, n, "health.unhealthy", 1, 100))
            .map_or(3, |v| v as u32),
    })
}

fn group_limits(cx: &Collector, n: &Node) -> GroupLimits {
    let mut l = GroupLimits::default();
    if let Some(f) = fields(
        cx,
        n,
        "limits",
        &["max_connections", "max_pending", "max_requests"],
    ) {
        let get = |key: &str, min: u64| {
            f.get(key)
                .and_then(|n| int(cx, n, key, min, 10_000_000))
                .map(|v| v as u32)
        };
        l.max_connections = get("max_connections", 1);
        l.max_pending = get("max_pending", 0);
        l.max_requests = get("max_requests", 1);
    }
    l
}

fn outlier(cx: &Collector, n: &Node) -> Option<Outlier> {
    let f = fields(
        cx,
        n,
        "outlier",
        &[
            "consecutive_errors",
            "base_ejection",
            "max_ejection_percent",
        ],
    )?;
    Some(Outlier {
        consecutive_errors: f
            .get("consecutive_errors")
            .and_then(|n| int(cx, n, "consecutive_errors", 1, 1000))
            .map_or(5, |v| v as u32),
        base_ejection: f
            .get("base_ejection")
            .and_then(|n| duration(cx, n, "base_ejection"))
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: f
            .get("max_ejection_percent")
            .and_then(|n| int(cx, n, "max_ejection_percent", 0, 100))
            .map_or(50, |v| v as u32),
    })
}

fn upstream_tls(cx: &Collector, n: &Node, base: &Path) -> Option<UpstreamTls> {
    let f = fields(cx, n, "tls", &["sni", "ca", "client_cert", "client_key"])?;
    let tls = UpstreamTls {
        sni: f
            .get("sni")
            .and_then(|n| string(cx, n, "tls.sni"))
            .map(|s| s.value),
        ca: f.get("ca").and_then(|n| path(cx, n, "tls.ca", base)),
        client_cert: f
            .get("client_cert")
            .and_then(|n| path(cx, n, "tls.client_cert", base)),
        client_key: f
            .get("client_key")
            .and_then(|n| path(cx, n, "tls.client_key", base)),
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        cx.error(
            f.pos,
            "tls needs both `client_cert` and `client_key`, or neither",
            "",
        );
    }
    Some(tls)
}

const POLICY_KEYS: &[&str] = &[
    "cache",
    "auth",
    "rate_limit",
    "timeouts",
    "retries",
    "buffering",
    "headers",
    "faults",
];

/// Read the policy keys of an already key-checked mapping (profile, route or group).
fn policy(cx: &Collector, f: &Fields, base: &Path) -> Policy {
    Policy {
        cache: f.get("cache").and_then(|n| cache(cx, n)),
        auth: f.get("auth").and_then(|n| auth(cx, n, base)),
        rate_limit: f.get("rate_limit").and_then(|n| rate_limit(cx, n)),
        timeouts: f.get("timeouts").and_then(|n| timeouts(cx, n)),
        retries: f.get("retries").and_then(|n| retries(cx, n)),
        buffering: f.get("buffering").and_then(|n| boolean(cx, n, "buffering")),
        headers: f.get("headers").and_then(|n| header_edits(cx, n)),
        faults: f.get("faults").and_then(|n| faults(cx, n)),
    }
}

fn cache(cx: &Collector, n: &Node) -> Option<Cache> {
    let f = fields(
        cx,
        n,
        "cache",
        &[
            "ttl",
            "max_bytes",
            "cache_authenticated",
            "cache_set_cookie",
            "coalesce",
            "stale_while_revalidate",
        ],
    )?;
    let flag = |cx: &Collector, key: &str, default: bool| {
        f.get(key)
            .and_then(|n| boolean(cx, n, key))
            .unwrap_or(default)
    };
    Some(Cache {
        ttl: f
            .get("ttl")
            .and_then(|n| duration(cx, n, "cache.ttl"))
            .unwrap_or(Duration::from_secs(60)),
        max_bytes: f
            .get("max_bytes")
            .and_then(|n| size(cx, n, "cache.max_bytes"))
            .unwrap_or(64 << 20),
        cache_authenticated: flag(cx, "cache_authenticated", false),
        cache_set_cookie: flag(cx, "cache_set_cookie", false),
        coalesce: flag(cx, "coalesce", true),
        stale_while_revalidate: f
            .get("stale_while_revalidate")
            .and_then(|n| duration(cx, n, "stale_while_revalidate"))
            .unwrap_or(Duration::ZERO),
    })
}

fn auth(cx: &Collector, n: &Node, base: &Path) -> Option<Auth> {
    let f = fields(cx, n, "auth", &["mtls", "jwt", "basic", "ip_allow"])?;
    let given: Vec<&str> = ["mtls", "jwt", "basic", "ip_allow"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if given.len() != 1 {
        cx.error(
            n.pos,
            format!(
                "auth must name exactly one method, found {}",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(" and ")
                }
            ),
            "use one of `mtls: required`, `jwt: {…}`, `basic: {…}`, `ip_allow: [CIDR]`",
        );
        return None;
    }
    if let Some(n) = f.get("mtls") {
        let required = one_of(
            cx,
            n,
            "auth.mtls",
            &[("required", true), ("optional", false)],
        )?;
        return Some(Auth::Mtls { required });
    }
    if let Some(n) = f.get("jwt") {
        let f = fields(
            cx,
            n,
            "jwt",
            &["jwks", "issuer", "audience", "algorithms", "leeway"],
        )?;
        let jwks = path(cx, f.req(cx, "jwks", "jwt")?, "jwt.jwks", base)?.value;
        let algorithms = f
            .get("algorithms")
            .map(|n| strings(cx, n, "jwt.algorithms"))
            .unwrap_or_default();
        for a in &algorithms {
            if !["HS256", "RS256", "ES256"].contains(&a.value.as_str()) {
                cx.error(
                    a.pos,
                    format!("jwt algorithm `{}` is not supported", a.value),
                    "use HS256, RS256 or ES256",
                );
            }
        }
        return Some(Auth::Jwt(JwtAuth {
            jwks,
            issuer: f
                .get("issuer")
                .and_then(|n| string(cx, n, "jwt.issuer"))
                .map(|s| s.value),
            audience: f
                .get("audience")
                .and_then(|n| string(cx, n, "jwt.audience"))
                .map(|s| s.value),
            algorithms: if algorithms.is_empty() {
                vec!["RS256".to_string()]
            } else {
                algorithms.into_iter().map(|a| a.value).collect()
            },
            leeway: f
                .get("leeway")
                .and_then(|n| duration(cx, n, "jwt.leeway"))
                .unwrap_or(Duration::from_secs(30)),
        }));
    }
    if let Some(n) = f.get("basic") {
        let f = fields(cx, n, "basic", &["users_file"])?;
        let users_file = path(
            cx,
            f.req(cx, "users_file", "basic")?,
            "basic.users_file",
            base,
        )?
        .value;
        return Some(Auth::Basic { users_file });
    }
    let n = f.get("ip_allow")?;
    Some(Auth::IpAllow(cidrs(cx, n, "ip_allow")))
}

fn rate_limit(cx: &Collector, n: &Node) -> Option<RateLimit> {
    let f = fields(cx, n, "rate_limit", &["per_second", "burst", "key"])?;
    let per_second = int(
        cx,
        f.req(cx, "per_second", "rate_limit")?,
        "per_second",
        1,
        10_000_000,
    )? as u32;
    let burst = f
        .get("burst")
        .and_then(|n| int(cx, n, "burst", 1, 10_000_000))
        .map_or(per_second, |v| v as u32);
    let key = match f.get("key") {
        None => RateKey::ClientIp,
        Some(n) => match n.as_str().unwrap_or("") {
            "client_ip" => RateKey::ClientIp,
            "identity" => RateKey::Identity,
            other => match other.strip_prefix("header:").filter(|h| !h.is_empty()) {
                Some(h) => RateKey::Header(h.to_ascii_lowercase()),
                None => {
                    cx.error(
                        n.pos,
                        format!("rate_limit.key `{other}` is not supported"),
                        "use client_ip, identity or header:NAME",
                    );
                    return None;
                }
            },
        },
    };
    Some(RateLimit {
        per_second,
        burst,
        key,
    })
}

fn timeouts(cx: &Collector, n: &Node) -> Option<Timeouts> {
    let f = fields(
        cx,
        n,
        "timeouts",
        &["connect", "first_byte", "request", "idle"],
    )?;
    let d = Timeouts::default();
    let request = match f.get("request") {
        Some(n) if n.as_str() == Some("none") => None,
        Some(n) => duration(cx, n, "timeouts.request"),
        None => d.request,
    };
    Some(Timeouts {
        connect: f
            .get("connect")
            .and_then(|n| duration(cx, n, "timeouts.connect"))
            .unwrap_or(d.connect),
        first_byte: f
            .get("first_byte")
            .and_then(|n| duration(cx, n, "timeouts.first_byte"))
            .unwrap_or(d.first_byte),
        request,
        idle: f
            .get("idle")
            .and_then(|n| duration(cx, n, "timeouts.idle"))
            .unwrap_or(d.idle),
    })
}

fn retries(cx: &Collector, n: &Node) -> Option<Retries> {
    if let NodeKind::Scalar(..) = n.kind {
        let attempts = int(cx, n, "retries", 0, 10)? as u32;
        return Some(Retries {
            attempts,
            on: default_retry_on(),
            budget_percent: 20,
        });
    }
    let f = fields(cx, n, "retries", &["attempts", "on", "budget_percent"])?;
    let on = match f.get("on") {
        None => default_retry_on(),
        Some(n) => strings(cx, n, "retries.on")
            .into_iter()
            .filter_map(|s| {
                let ok = matches!(s.value.as_str(), "connect_error" | "timeout")
                    || s.value
                        .parse::<u16>()
                        .is_ok_and(|c| (500..600).contains(&c));
                if !ok {
                    cx.error(
                        s.pos,
                        format!("retries.on `{}` is not supported", s.value),
                        "use connect_error, timeout or a 5xx status",
                    );
                }
                ok.then_some(s.value)
            })
            .collect(),
    };
    Some(Retries {
        attempts: f
            .get("attempts")
            .and_then(|n| int(cx, n, "retries.attempts", 0, 10))
            .map_or(2, |v| v as u32),
        on,
        budget_percent: f
            .get("budget_percent")
            .and_then(|n| int(cx, n, "budget_percent", 0, 100))
            .map_or(20, |v| v as u32),
    })
}

fn default_retry_on() -> Vec<String> {
    vec!["connect_error".into(), "502".into(), "503".into()]
}

fn header_edits(cx: &Collector, n: &Node) -> Option<HeaderEdits> {
    let f = fields(cx, n, "headers", &["request", "response"])?;
    let mut edits = HeaderEdits::default();
    let side = |cx: &Collector, key: &str| -> (Vec<(String, String)>, Vec<String>) {
        let Some(n) = f.get(key) else {
            return Default::default();
        };
        let Some(s) = fields(cx, n, key, &["set", "remove"]) else {
            return Default::default();
        };
        let mut set = Vec::new();
        if let Some(n) = s.get("set") {
            for (name, v) in named(cx, n, "header") {
                if let (Some(name), Some(value)) = (
                    header_name(cx, &name, "headers.set"),
                    string(cx, v, "header value"),
                ) {
                    set.push((name, value.value));
                }
            }
        }
        let remove = s
            .get("remove")
            .map(|n| header_names(cx, n, "headers.remove"))
            .unwrap_or_default();
        (set, remove)
    };
    (edits.request_set, edits.request_remove) = side(cx, "request");
    (edits.response_set, edits.response_remove) = side(cx, "response");
    Some(edits)
}

fn faults(cx: &Collector, n: &Node) -> Option<Faults> {
    let f = fields(cx, n, "faults", &["abort", "delay"])?;
    let percent = |cx: &Collector, f: &Fields, what: &str| -> Option<f64> {
        let n = f.req(cx, "percent", what)?;
        match n.as_str().and_then(|s| s.parse::<f64>().ok()) {
            Some(p) if (0.0..=100.0).contains(&p) => Some(p),
            _ => {
                cx.error(
                    n.pos,
                    format!("{what}.percent must be a number from 0 to 100"),
                    "",
                );
                None
            }
        }
    };
    let abort = f.get("abort").and_then(|n| {
        let a = fields(cx, n, "faults.abort", &["status", "percent"])?;
        let status = int(
            cx,
            a.req(cx, "status", "faults.abort")?,
            "faults.abort.status",
            100,
            599,
        )? as u16;
        Some((status, percent(cx, &a, "faults.abort")?))
    });
    let delay = f.get("delay").and_then(|n| {
        let d = fields(cx, n, "faults.delay", &["duration", "percent"])?;
        let dur = duration(
            cx,
            d.req(cx, "duration", "faults.delay")?,
            "faults.delay.duration",
        )?;
        Some((dur, percent(cx, &d, "faults.delay")?))
    });
    Some(Faults { abort, delay })
}

const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "forward",
    "redirect",
    "respond",
    "deny",
    "listeners",
    "profile",
    "cache",
    "auth",
    "rate_limit",
    "timeouts",
    "retries",
    "buffering",
    "headers",
    "faults",
];

fn route(cx: &Collector, n: &Node, base: &Path) -> Option<Route> {
    let f = fields(cx, n, "route", ROUTE_KEYS)?;
    let name = string(cx, f.req(cx, "name", "route")?, "route name")?;
    let what = format!("route `{}`", name.value);
    let matcher = match f.get("match") {
        Some(m) => route_match(cx, m, &what),
        None => {
            cx.error(
                n.pos,
                format!("{what} has no `match`"),
                "add `match: { path_prefix: / }` to match everything",
            );
            RouteMatch::default()
        }
    };
    let actions: Vec<&str> = ["forward", "redirect", "respond", "deny"]
        .into_iter()
        .filter(|k| f.key_pos(k).is_some())
        .collect();
    if actions.len() != 1 {
        let found = if actions.is_empty() {
            "none".to_string()
        } else {
            actions.join(" and ")
        };
        cx.error(
            name.pos,
            format!("{what} must have exactly one action, found {found}"),
            "keep one of forward, redirect, respond, deny",
        );
        return None;
    }
    let action = match actions[0] {
        "forward" => forward(cx, n.kind_entry("forward")?),
        "redirect" => {
            let r = fields(
                cx,
                n.kind_entry("redirect")?,
                "redirect",
                &["location", "status"],
            )?;
            let location =
                string(cx, r.req(cx, "location", "redirect")?, "redirect.location")?.value;
            let status = match r.get("status") {
                None => 302,
                Some(n) => match n.as_str().and_then(|s| s.parse::<u16>().ok()) {
                    Some(s @ (301 | 302 | 303 | 307 | 308)) => s,
                    _ => {
                        cx.error(
                            n.pos,
                            "redirect.status must be 301, 302, 303, 307 or 308",
                            "",
                        );
                        302
                    }
                },
            };
            Some(Action::Redirect { location, status })
        }
        "respond" => {
            let r = fields(
                cx,
                n.kind_entry("respond")?,
                "respond",
                &["status", "body", "content_type"],
            )?;
            let status = int(
                cx,
                r.req(cx, "status", "respond")?,
                "respond.status",
                100,
                599,
            )? as u16;
            Some(Action::Respond {
                status,
                body: r
                    .get("body")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string(),
                content_type: r
                    .get("content_type")
                    .and_then(|n| string(cx, n, "content_type"))
                    .map(|s| s.value),
            })
        }
        _ => {
            let node = n.kind_entry("deny")?;
            let status = if node.is_null() || node.as_str() == Some("true") {
                403
            } else {
                let d = fields(cx, node, "deny", &["status"])?;
                d.get("status")
                    .and_then(|n| int(cx, n, "deny.status", 400, 599))
                    .map_or(403, |v| v as u16)
            };
            Some(Action::Deny { status })
        }
    }?;
    Some(Route {
        name,
        matcher,
        action,
        listeners: f.get("listeners").map(|n| strings(cx, n, "listeners")),
        profile: f.get("profile").and_then(|n| string(cx, n, "profile")),
        policy: policy(cx, &f, base),
    })
}

impl Node {
    /// The raw value of `key` in a mapping, even when it is null.
    fn kind_entry(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(e) => e
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

fn forward(cx: &Collector, n: &Node) -> Option<Action> {
    let legs: Vec<WeightedGroup> = match &n.kind {
        NodeKind::Scalar(..) => vec![WeightedGroup {
            group: string(cx, n, "forward")?,
            weight: 1,
        }],
        NodeKind::Seq(items) => items
            .iter()
            .filter_map(|item| match &item.kind {
                NodeKind::Scalar(..) => Some(WeightedGroup {
                    group: string(cx, item, "forward group")?,
                    weight: 1,
                }),
                _ => {
                    let f = fields(cx, item, "forward", &["group", "weight"])?;
                    let group = string(cx, f.req(cx, "group", "forward")?, "forward group")?;
                    let weight = f.get("weight").map_or(Some(1), |n| weight(cx, n))?;
                    Some(WeightedGroup { group, weight })
                }
            })
            .collect(),
        NodeKind::Map(_) => {
            cx.error(
                n.pos,
                "forward must be a group name or a list of `{ group, weight }`",
                "",
            );
            return None;
        }
    };
    if legs.is_empty() {
        cx.error(n.pos, "forward names no group", "write `forward: GROUP`");
        return None;
    }
    Some(Action::Forward(legs))
}

const MATCH_KEYS: &[&str] = &[
    "path_prefix",
    "path_exact",
    "path_regex",
    "methods",
    "headers",
    "query",
    "sources",
    "identities",
    "claims",
];

fn route_match(cx: &Collector, n: &Node, what: &str) -> RouteMatch {
    let mut m = RouteMatch::default();
    let Some(f) = fields(cx, n, &format!("match of {what}"), MATCH_KEYS) else {
        return m;
    };
    let paths: Vec<&str> = ["path_prefix", "path_exact", "path_regex"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if paths.len() > 1 {
        cx.error(
            n.pos,
            format!(
                "{what} has more than one path criterion ({})",
                paths.join(", ")
            ),
            "keep one",
        );
    }
    if let Some(n) = f.get("path_prefix") {
        m.path = path_literal(cx, n, "path_prefix").map(PathMatch::Prefix);
    } else if let Some(n) = f.get("path_exact") {
        m.path = path_literal(cx, n, "path_exact").map(PathMatch::Exact);
    } else if let Some(n) = f.get("path_regex") {
        m.path = regex_value(cx, n, "path_regex").map(PathMatch::Regex);
    }
    if let Some(n) = f.get("methods") {
        m.methods = strings(cx, n, "methods")
            .into_iter()
            .filter_map(|s| {
                let ok = !s.value.is_empty()
                    && s.value
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'-');
                if !ok {
                    cx.error(
                        s.pos,
                        format!("method `{}` is not a method", s.value),
                        "write GET, POST, …",
                    );
                }
                ok.then(|| s.value.to_ascii_uppercase())
            })
            .collect();
    }
    if let Some(n) = f.get("headers") {
        m.headers = value_matches(cx, n, "headers")
            .into_iter()
            .filter_map(|(k, v)| Some((header_name(cx, &k, "match.headers")?, v)))
            .collect();
    }
    if let Some(n) = f.get("query") {
        m.query = value_matches(cx, n, "query")
            .into_iter()
            .map(|(k, v)| (k.value, v))
            .collect();
    }
    if let Some(n) = f.get("sources") {
        m.sources = cidrs(cx, n, "sources");
    }
    if let Some(n) = f.get("identities") {
        m.identities = strings(cx, n, "identities");
    }
    if let Some(n) = f.get("claims") {
        m.claims = value_matches(cx, n, "claims")
            .into_iter()
            .map(|(k, v)| (k.value, v))
            .collect();
    }
    m
}

/// A literal path: starts with `/`, holds only characters that survive
/// normalization (so a route can never be written unmatchable by accident).
fn path_literal(cx: &Collector, n: &Node, what: &str) -> Option<String> {
    let s = string(cx, n, what)?;
    let bad = s
        .value
        .bytes()
        .any(|b| b <= b' ' || b >= 0x7f || b"\\?#;%".contains(&b));
    let dots = s.value.split('/').any(|seg| seg == "." || seg == "..");
    if !s.value.starts_with('/') || bad || dots || s.value.contains("//") {
        cx.error(
            s.pos,
            format!("{what} `{}` is not a normalized path", s.value),
            "start with `/`; no `//`, `.`/`..` segments, `%`, `;`, `?`, `#`, `\\` or spaces",
        );
        return None;
    }
    Some(s.value)
}

fn regex_value(cx: &Collector, n: &Node, what: &str) -> Option<String> {
    let s = string(cx, n, what)?;
    match regex::Regex::new(&format!("^(?:{})$", s.value)) {
        Ok(_) => Some(s.value),
        Err(e) => {
            cx.error(
                s.pos,
                format!(
                    "{what} is not a valid regex: {}",
                    first_line(&e.to_string())
                ),
                "check the pattern (Rust regex syntax)",
            );
            None
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

fn value_matches(cx: &Collector, n: &Node, what: &str) -> Vec<(Spanned<String>, ValueMatch)> {
    named_any(cx, n, what)
        .into_iter()
        .filter_map(|(k, v)| {
            let m = match &v.kind {
                NodeKind::Scalar(s, _) => ValueMatch::Exact(s.clone()),
                NodeKind::Map(_) => {
                    let f = fields(cx, v, what, &["regex", "present"])?;
                    if let Some(r) = f.get("regex") {
                        ValueMatch::Regex(regex_value(cx, r, what)?)
                    } else if let Some(p) = f.get("present") {
                        if boolean(cx, p, "present") != Some(true) {
                            cx.error(
                                p.pos,
                                "`present` may only be true",
                                "to require absence, use a deny route before",
                            );
                            return None;
                        }
                        ValueMatch::Present
                    } else {
                        cx.error(
                            v.pos,
                            format!("{what} value needs `regex` or `present`"),
                            "",
                        );
                        return None;
                    }
                }
                NodeKind::Seq(_) => {
                    cx.error(
                        v.pos,
                        format!("{what} value must be a string, {{regex}} or {{present: true}}"),
                        "",
                    );
                    return None;
                }
            };
            Some((k, m))
        })
        .collect()
}

/// A mapping with free-form keys (header names, query names, claims).
fn named_any<'a>(cx: &Collector, n: &'a Node, what: &str) -> Vec<(Spanned<String>, &'a Node)> {
    match &n.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| Some((string(cx, k, what)?, v)))
            .collect(),
        _ => {
            cx.error(
                n.pos,
                format!("{what} must be a mapping"),
                "write `{ name: value }`",
            );
            Vec::new()
        }
    }
}

fn service(cx: &Collector, name: Spanned<String>, n: &Node) -> Service {
    let mut s = Service {
        name,
        spiffe: None,
        cert_san: None,
        jwt_subject: None,
        sources: Vec::new(),
    };
    let what = format!("service `{}`", s.name.value);
    if let Some(f) = fields(
        cx,
        n,
        &what,
        &["spiffe", "cert_san", "jwt_subject", "sources"],
    ) {
        let spiffe = f.get("spiffe").and_then(|n| string(cx, n, "spiffe"));
        if let Some(id) = &spiffe {
            if !id.value.starts_with("spiffe://") {
                cx.error(
                    id.pos,
                    format!("{what}: spiffe id `{}` must start with spiffe://", id.value),
                    "",
                );
            }
        }
        s.spiffe = spiffe.map(|v| v.value);
        s.cert_san = f
            .get("cert_san")
            .and_then(|n| string(cx, n, "cert_san"))
            .map(|v| v.value.to_ascii_lowercase());
        s.jwt_subject = f
            .get("jwt_subject")
            .and_then(|n| string(cx, n, "jwt_subject"))
            .map(|v| v.value);
        s.sources = f
            .get("sources")
            .map(|n| cidrs(cx, n, "sources"))
            .unwrap_or_default();
        if s.spiffe.is_none()
            && s.cert_san.is_none()
            && s.jwt_subject.is_none()
            && f.get("sources").is_none()
        {
            cx.error(
                s.name.pos,
                format!("{what} has no criteria"),
                "give spiffe, cert_san, jwt_subject or sources",
            );
        }
    }
    s
}

fn access_rule(cx: &Collector, n: &Node) -> Option<AccessRule> {
    let f = fields(cx, n, "access rule", &["group", "allow"])?;
    let group = string(cx, f.req(cx, "group", "access rule")?, "access.group")?;
    let allow = strings(cx, f.req(cx, "allow", "access rule")?, "access.allow");
    Some(AccessRule { group, allow })
}

fn invariant(cx: &Collector, n: &Node) -> Option<Invariant> {
    let f = fields(
        cx,
        n,
        "invariant",
        &["never", "tenants_isolated", "require"],
    )?;
    let given = ["never", "tenants_isolated", "require"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .count();
    if given != 1 {
        cx.error(
            n.pos,
            "each invariant is one of never, tenants_isolated, require",
            "write one per list item",
        );
        return None;
    }
    if let Some(v) = f.get("never") {
        let g = fields(cx, v, "never", &["from", "to"])?;
        let from = string(cx, g.req(cx, "from", "never")?, "never.from")?;
        let to = string(cx, g.req(cx, "to", "never")?, "never.to")?;
        return Some(Invariant::Never {
            pos: n.pos,
            from,
            to,
        });
    }
    if let Some(v) = f.get("tenants_isolated") {
        let strict = match v.as_str() {
            Some("strict") => true,
            _ => match boolean(cx, v, "tenants_isolated") {
                Some(true) => false,
                Some(false) => return None,
                None => return None,
            },
        };
        return Some(Invariant::TenantsIsolated { pos: n.pos, strict });
    }
    let v = f.get("require")?;
    let g = fields(cx, v, "require", &["zone", "auth"])?;
    let zone = string(cx, g.req(cx, "zone", "require")?, "require.zone")?;
    let auth = one_of(
        cx,
        g.req(cx, "auth", "require")?,
        "require.auth",
        &[
            ("mtls", RequiredAuth::Mtls),
            ("jwt", RequiredAuth::Jwt),
            ("any", RequiredAuth::Any),
        ],
    )?;
    Some(Invariant::Require {
        pos: n.pos,
        zone,
        auth,
    })
}
