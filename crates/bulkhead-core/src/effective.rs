//! The effective config: what a [`Snapshot`] serves, as plain data with
//! names. `GET /config` answers it (under `"config"`) and `bulkhead diff`
//! compares a file's view with a running instance's.
//!
//! Effective means resolved: built-in profiles are listed, group references
//! are `tenant/group`, a tenant's and a route's listeners are the ones they
//! are actually served on, defaults are filled in. Secrets are never part of
//! it: no key material and no key paths, and for the admin token only the name
//! of the environment variable holding it.
//!
//! Shape rules: collections addressed by name are maps (`BTreeMap`, so the
//! JSON is deterministic); what is ordered stays a list (routes, flows,
//! invariants, targets). Every field is always present (`null` when unset),
//! so two views differ only where the configs do. Durations are strings
//! (`250ms`, `2s`, `1m`); sizes are byte counts. File paths are relative to
//! the config file's folder when they lie under it, so the same config read
//! from two places gives the same view.

use crate::listener_set::ListenerSet;
use crate::snapshot::{RouteAction, Snapshot};
use bulkhead_config::{
    AccessLog, Action, Auth, Balance, CertPair, Config, Faults, HashOn, HeaderEdits, Invariant,
    PathMatch, Policy, RateKey, RequiredAuth, TlsVersion, UpstreamProtocol, ValueMatch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The effective config of a snapshot (DESIGN §7 `GET /config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EffectiveConfig {
    /// `version`.
    pub version: u32,
    /// `workers` (`null`: one per core).
    pub workers: Option<usize>,
    /// `drain_timeout`.
    pub drain_timeout: String,
    /// `admin` (`null`: no admin API).
    pub admin: Option<AdminView>,
    /// `log`.
    pub log: LogView,
    /// Zones by name.
    pub zones: BTreeMap<String, ZoneView>,
    /// Flows, file order.
    pub flows: Vec<FlowView>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerView>,
    /// Tenants by name.
    pub tenants: BTreeMap<String, TenantView>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceView>,
    /// Access lists: `tenant/group` → allowed services (sorted).
    pub access: BTreeMap<String, Vec<String>>,
    /// Profiles by name, built-ins included.
    pub profiles: BTreeMap<String, ProfileView>,
    /// Invariants, file order.
    pub invariants: Vec<InvariantView>,
}

/// `admin`, without the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminView {
    /// `bind`.
    pub bind: String,
    /// The name of the environment variable holding the token (never its value).
    pub token_env: Option<String>,
}

/// `log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    /// `stdout`, `stderr`, `off` or a file path.
    pub access: String,
}

/// A zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneView {
    /// `trusted`.
    pub trusted: bool,
    /// `strip_headers` (lowercase).
    pub strip_headers: Vec<String>,
}

/// A flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// Listener zone.
    pub from: String,
    /// Group zones.
    pub to: Vec<String>,
}

/// A listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    /// `bind` (`ip:port`).
    pub bind: String,
    /// Its zone.
    pub zone: String,
    /// `http`, `https`, `tcp`, `tls-passthrough`.
    pub protocol: String,
    /// `allow_sources` (CIDRs; empty = everyone).
    pub allow_sources: Vec<String>,
    /// `limits`, defaults filled in.
    pub limits: ListenerLimitsView,
    /// `tls` (https).
    pub tls: Option<ListenerTlsView>,
    /// `default_certificate`.
    pub default_certificate: Option<CertView>,
    /// `forward` (tcp): `tenant/group`.
    pub forward: Option<String>,
    /// `forward_by_sni` (tls-passthrough): SNI pattern → `tenant/group`.
    pub forward_by_sni: BTreeMap<String, String>,
    /// `profile`.
    pub profile: Option<String>,
    /// `proxy_protocol`.
    pub proxy_protocol: bool,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<String>,
}

/// Listener limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerLimitsView {
    /// `max_connections`.
    pub max_connections: u32,
    /// `header_timeout`.
    pub header_timeout: String,
    /// `idle_timeout`.
    pub idle_timeout: String,
    /// `max_header_bytes`.
    pub max_header_bytes: u64,
    /// `max_uri_bytes`.
    pub max_uri_bytes: u64,
    /// `max_body_bytes` (`null`: none).
    pub max_body_bytes: Option<u64>,
    /// `h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: u32,
    /// `max_requests` (`null`: none).
    pub max_requests: Option<u32>,
}

/// TLS of an https listener, without key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTlsView {
    /// Certificates, file order.
    pub certificates: Vec<CertView>,
    /// `1.2` or `1.3`.
    pub min_version: String,
    /// `client_auth` (mTLS).
    pub client_auth: Option<ClientAuthView>,
}

/// A certificate: its file and the names it serves (never the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    /// The PEM chain's path.
    pub cert: String,
    /// DNS names of the leaf (what SNI picks it by).
    pub names: Vec<String>,
}

/// `client_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuthView {
    /// The CA bundle's path.
    pub ca: String,
    /// `required`.
    pub required: bool,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    /// `hosts` (sorted).
    pub hosts: Vec<String>,
    /// The listeners it is served on (listener file order).
    pub listeners: Vec<String>,
    /// `normalize`, defaults filled in.
    pub normalize: NormalizeView,
    /// `profile`.
    pub profile: Option<String>,
    /// `limits.max_requests`.
    pub max_requests: Option<u32>,
    /// Target groups by name.
    pub target_groups: BTreeMap<String, GroupView>,
    /// Routes, file order (first match wins).
    pub routes: Vec<RouteView>,
    /// Grants: receiving tenant → granted groups (sorted).
    pub grants: BTreeMap<String, Vec<String>>,
}

/// `normalize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizeView {
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `reject` or `keep`.
    pub encoded_slash: String,
    /// `reject` or `keep`.
    pub semicolon: String,
    /// `sensitive` or `insensitive`.
    pub case: String,
}

/// A target group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// Its zone.
    pub zone: String,
    /// Targets, file order.
    pub targets: Vec<TargetView>,
    /// `round_robin`, `least_request`, `random`, `consistent_hash`.
    pub balance: String,
    /// `client_ip`, `header:NAME` or `cookie:NAME`.
    pub hash_on: String,
    /// `health`.
    pub health: Option<HealthView>,
    /// `limits`.
    pub limits: GroupLimitsView,
    /// `outlier`.
    pub outlier: Option<OutlierView>,
    /// `h1` or `h2`.
    pub protocol: String,
    /// `identity_header`.
    pub identity_header: Option<String>,
    /// `tls` towards the targets (paths only).
    pub tls: Option<UpstreamTlsView>,
    /// `dns_refresh`.
    pub dns_refresh: String,
    /// `timeouts` set on the group.
    pub timeouts: Option<TimeoutsView>,
    /// `retries` set on the group.
    pub retries: Option<RetriesView>,
    /// `faults` set on the group.
    pub faults: Option<FaultsView>,
}

/// A target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    /// `host:port` as written.
    pub address: String,
    /// Weight.
    pub weight: u32,
}

/// `health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// HTTP path (`null`: TCP connect check).
    pub path: Option<String>,
    /// `interval`.
    pub interval: String,
    /// `timeout`.
    pub timeout: String,
    /// `healthy`.
    pub healthy: u32,
    /// `unhealthy`.
    pub unhealthy: u32,
}

/// Group `limits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLimitsView {
    /// `max_connections`.
    pub max_connections: Option<u32>,
    /// `max_pending`.
    pub max_pending: Option<u32>,
    /// `max_requests`.
    pub max_requests: Option<u32>,
}

/// `outlier`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierView {
    /// `consecutive_errors`.
    pub consecutive_errors: u32,
    /// `base_ejection`.
    pub base_ejection: String,
    /// `max_ejection_percent`.
    pub max_ejection_percent: u32,
}

/// Group `tls`, paths only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTlsView {
    /// SNI sent.
    pub sni: Option<String>,
    /// CA bundle path.
    pub ca: Option<String>,
    /// Client certificate path.
    pub client_cert: Option<String>,
}

/// A route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// `match`.
    #[serde(rename = "match")]
    pub matcher: MatchView,
    /// What it does.
    pub action: ActionView,
    /// The listeners it is attached to (listener file order).
    pub listeners: Vec<String>,
    /// `profile`.
    pub profile: Option<String>,
    /// Inline policy keys.
    pub policy: PolicyView,
}

/// A route's `match`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchView {
    /// `path_prefix`.
    pub path_prefix: Option<String>,
    /// `path_exact`.
    pub path_exact: Option<String>,
    /// `path_regex`.
    pub path_regex: Option<String>,
    /// `methods` (empty = every method).
    pub methods: Vec<String>,
    /// `headers` (lowercase names).
    pub headers: BTreeMap<String, ValueMatchView>,
    /// `query`.
    pub query: BTreeMap<String, ValueMatchView>,
    /// `sources`.
    pub sources: Vec<String>,
    /// `identities` (service names).
    pub identities: Vec<String>,
    /// `claims`.
    pub claims: BTreeMap<String, ValueMatchView>,
}

/// A header / query / claim criterion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatchView {
    /// Equal to.
    Exact(String),
    /// Matches the (anchored) regex.
    Regex(String),
    /// Present with any value.
    Present,
}

/// A route's action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionView {
    /// Weighted legs (one leg: a plain forward).
    Forward(Vec<LegView>),
    /// Redirect.
    Redirect {
        /// `location`.
        location: String,
        /// `status`.
        status: u16,
    },
    /// Fixed response.
    Respond {
        /// `status`.
        status: u16,
        /// `body`.
        body: String,
        /// `content_type`.
        content_type: Option<String>,
    },
    /// Deny.
    Deny {
        /// `status`.
        status: u16,
    },
}

/// One leg of a forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegView {
    /// `tenant/group`.
    pub group: String,
    /// Weight.
    pub weight: u32,
}

/// Policy keys (each `null` when not set at this level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// `cache`.
    pub cache: Option<CacheView>,
    /// `auth`.
    pub auth: Option<AuthView>,
    /// `rate_limit`.
    pub rate_limit: Option<RateLimitView>,
    /// `timeouts`.
    pub timeouts: Option<TimeoutsView>,
    /// `retries`.
    pub retries: Option<RetriesView>,
    /// `buffering`.
    pub buffering: Option<bool>,
    /// `headers`.
    pub headers: Option<HeadersView>,
    /// `faults`.
    pub faults: Option<FaultsView>,
}

/// `cache`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheView {
    /// `ttl`.
    pub ttl: String,
    /// `max_bytes`.
    pub max_bytes: u64,
    /// `cache_authenticated`.
    pub cache_authenticated: bool,
    /// `cache_set_cookie`.
    pub cache_set_cookie: bool,
    /// `coalesce`.
    pub coalesce: bool,
    /// `stale_while_revalidate`.
    pub stale_while_revalidate: String,
}

/// `auth` (file paths only, never their contents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthView {
    /// `mtls: required | optional`.
    Mtls {
        /// True for `required`.
        required: bool,
    },
    /// `jwt`.
    Jwt {
        /// JWKS file path.
        jwks: String,
        /// `issuer`.
        issuer: Option<String>,
        /// `audience`.
        audience: Option<String>,
        /// `algorithms`.
        algorithms: Vec<String>,
        /// `leeway`.
        leeway: String,
    },
    /// `basic`.
    Basic {
        /// Users file path.
        users_file: String,
    },
    /// `ip_allow`.
    IpAllow(Vec<String>),
}

/// `rate_limit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitView {
    /// `per_second`.
    pub per_second: u32,
    /// `burst`.
    pub burst: u32,
    /// `client_ip`, `identity` or `header:NAME`.
    pub key: String,
}

/// `timeouts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsView {
    /// `connect`.
    pub connect: String,
    /// `first_byte`.
    pub first_byte: String,
    /// `request` (`null`: none).
    pub request: Option<String>,
    /// `idle`.
    pub idle: String,
}

/// `retries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetriesView {
    /// `attempts`.
    pub attempts: u32,
    /// `on`.
    pub on: Vec<String>,
    /// `budget_percent`.
    pub budget_percent: u32,
}

/// `headers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadersView {
    /// Edits to requests.
    pub request: HeaderEditsView,
    /// Edits to responses.
    pub response: HeaderEditsView,
}

/// One direction of `headers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEditsView {
    /// `set`.
    pub set: BTreeMap<String, String>,
    /// `remove`.
    pub remove: Vec<String>,
}

/// `faults`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultsView {
    /// `abort`.
    pub abort: Option<AbortView>,
    /// `delay`.
    pub delay: Option<DelayView>,
}

/// `faults.abort`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbortView {
    /// `status`.
    pub status: u16,
    /// `percent`.
    pub percent: f64,
}

/// `faults.delay`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelayView {
    /// `duration`.
    pub duration: String,
    /// `percent`.
    pub percent: f64,
}

/// A caller identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// `spiffe`.
    pub spiffe: Option<String>,
    /// `cert_san`.
    pub cert_san: Option<String>,
    /// `jwt_subject`.
    pub jwt_subject: Option<String>,
    /// `sources`.
    pub sources: Vec<String>,
}

/// A profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileView {
    /// True for a built-in the file did not override.
    pub builtin: bool,
    /// Its keys.
    #[serde(flatten)]
    pub policy: PolicyView,
}

/// An invariant, spelled as in the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvariantView {
    /// `never: {from, to}`.
    Never {
        /// Listener zone.
        from: String,
        /// Group zone.
        to: String,
    },
    /// `tenants_isolated: true | strict`.
    TenantsIsolated {
        /// True for `strict` (grants forbidden too).
        strict: bool,
    },
    /// `require: {zone, auth}`.
    Require {
        /// The protected zone.
        zone: String,
        /// `mtls`, `jwt` or `any`.
        auth: String,
    },
}

/// A duration as the config writes it: `0s`, `250ms`, `2s`, `1m`, `1h`, `1d`
/// (the largest unit that divides it; sub-millisecond parts as `µs`/`ns`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    const MS: u128 = 1_000_000;
    const UNITS: [(u128, &str); 5] = [
        (86_400_000 * MS, "d"),
        (3_600_000 * MS, "h"),
        (60_000 * MS, "m"),
        (1_000 * MS, "s"),
        (MS, "ms"),
    ];
    for (size, unit) in UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

impl Snapshot {
    /// The effective config this snapshot serves (see the module docs).
    pub fn effective(&self) -> EffectiveConfig {
        let cfg: &Config = &self.config;
        let path = |p: &Path| display_path(&cfg.base_dir, p);
        let listener_names = |set: &ListenerSet| -> Vec<String> {
            set.iter()
                .filter_map(|i| self.listeners.get(i))
                .map(|l| l.name.clone())
                .collect()
        };
        let group_name = |r: &str, owner: Option<usize>| -> String {
            cfg.resolve_group(owner, r)
                .ok()
                .and_then(|idx| self.group_ids.get(&idx))
                .map_or_else(
                    || r.to_string(),
                    |g| self.groups[*g as usize].full_name.clone(),
                )
        };

        let zones = cfg
            .zones
            .iter()
            .map(|z| {
                (
                    z.name.value.clone(),
                    ZoneView {
                        trusted: z.trusted,
                        strip_headers: z.strip_headers.clone(),
                    },
                )
            })
            .collect();
        let flows = cfg
            .flows
            .iter()
            .map(|f| FlowView {
                from: f.from.value.clone(),
                to: f.to.iter().map(|z| z.value.clone()).collect(),
            })
            .collect();

        let cert = |c: &CertPair| CertView {
            cert: path(&c.cert.value),
            names: c
                .loaded
                .as_ref()
                .map(|l| l.names.clone())
                .unwrap_or_default(),
        };
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| {
                let limits = &l.limits;
                let view = ListenerView {
                    bind: l.bind.value.to_string(),
                    zone: l.zone.value.clone(),
                    protocol: l.protocol.as_str().into(),
                    allow_sources: cidrs(&l.allow_sources),
                    limits: ListenerLimitsView {
                        max_connections: limits.max_connections,
                        header_timeout: format_duration(limits.header_timeout),
                        idle_timeout: format_duration(limits.idle_timeout),
                        max_header_bytes: limits.max_header_bytes,
                        max_uri_bytes: limits.max_uri_bytes,
                        max_body_bytes: limits.max_body_bytes,
                        h2_max_concurrent_streams: limits.h2_max_concurrent_streams,
                        max_requests: limits.max_requests,
                    },
                    tls: l.tls.as_ref().map(|t| ListenerTlsView {
                        certificates: t.certificates.iter().map(cert).collect(),
                        min_version: match t.min_version {
                            TlsVersion::V1_2 => "1.2".into(),
                            TlsVersion::V1_3 => "1.3".into(),
                        },
                        client_auth: t.client_auth.as_ref().map(|c| ClientAuthView {
                            ca: path(&c.ca.value),
                            required: c.required,
                        }),
                    }),
                    default_certificate: l.default_certificate.as_ref().map(cert),
                    forward: l.forward.as_ref().map(|g| group_name(&g.value, None)),
                    forward_by_sni: l
                        .forward_by_sni
                        .iter()
                        .map(|(sni, g)| (sni.value.clone(), group_name(&g.value, None)))
                        .collect(),
                    profile: l.profile.as_ref().map(|p| p.value.clone()),
                    proxy_protocol: l.proxy_protocol,
                    trusted_proxies: cidrs(&l.trusted_proxies),
                };
                (l.name.value.clone(), view)
            })
            .collect();

        let mut tenants = BTreeMap::new();
        for (ti, t) in cfg.tenants.iter().enumerate() {
            let compiled = self.tenants.get(ti);
            let mut hosts: Vec<String> = t.hosts.iter().map(|h| h.value.clone()).collect();
            hosts.sort();
            let served_on = compiled.map(|c| c.served_on.clone()).unwrap_or_default();
            let target_groups = t
                .target_groups
                .iter()
                .map(|g| (g.name.value.clone(), group_view(g, &path)))
                .collect();
            let routes = t
                .routes
                .iter()
                .enumerate()
                .map(|(ri, r)| {
                    // The compiled route (same index: a snapshot only exists
                    // when every route compiled) gives the resolved legs and
                    // the listeners it is attached to.
                    let info = compiled
                        .and_then(|c| c.routes.get(ri))
                        .filter(|info| info.name == r.name.value);
                    let action = match (&r.action, info.map(|i| &i.action)) {
                        (_, Some(RouteAction::Forward { legs, .. })) => ActionView::Forward(
                            legs.iter()
                                .map(|(g, w)| LegView {
                                    group: self.groups[*g as usize].full_name.clone(),
                                    weight: *w,
                                })
                                .collect(),
                        ),
                        (Action::Forward(legs), _) => ActionView::Forward(
                            legs.iter()
                                .map(|l| LegView {
                                    group: group_name(&l.group.value, Some(ti)),
                                    weight: l.weight,
                                })
                                .collect(),
                        ),
                        (Action::Redirect { location, status }, _) => ActionView::Redirect {
                            location: location.clone(),
                            status: *status,
                        },
                        (
                            Action::Respond {
                                status,
                                body,
                                content_type,
                            },
                            _,
                        ) => ActionView::Respond {
                            status: *status,
                            body: body.clone(),
                            content_type: content_type.clone(),
                        },
                        (Action::Deny { status }, _) => ActionView::Deny { status: *status },
                    };
                    RouteView {
                        name: r.name.value.clone(),
                        matcher: match_view(&r.matcher),
                        action,
                        listeners: info
                            .map(|i| listener_names(&i.listeners))
                            .unwrap_or_default(),
                        profile: r.profile.as_ref().map(|p| p.value.clone()),
                        policy: policy_view(&r.policy, &path),
                    }
                })
                .collect();
            let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for g in &t.grants {
                grants
                    .entry(g.tenant.value.clone())
                    .or_default()
                    .extend(g.groups.iter().map(|x| x.value.clone()));
            }
            for groups in grants.values_mut() {
                groups.sort();
                groups.dedup();
            }
            tenants.insert(
                t.name.value.clone(),
                TenantView {
                    hosts,
                    listeners: listener_names(&served_on),
                    normalize: NormalizeView {
                        merge_slashes: t.normalize.merge_slashes,
                        encoded_slash: keep_or_reject(t.normalize.keep_encoded_slash),
                        semicolon: keep_or_reject(t.normalize.keep_semicolon),
                        case: if t.normalize.case_insensitive {
                            "insensitive".into()
                        } else {
                            "sensitive".into()
                        },
                    },
                    profile: t.profile.as_ref().map(|p| p.value.clone()),
                    max_requests: t.max_requests,
                    target_groups,
                    routes,
                    grants,
                },
            );
        }

        let services = cfg
            .services
            .iter()
            .map(|s| {
                (
                    s.name.value.clone(),
                    ServiceView {
                        spiffe: s.spiffe.clone(),
                        cert_san: s.cert_san.clone(),
                        jwt_subject: s.jwt_subject.clone(),
                        sources: cidrs(&s.sources),
                    },
                )
            })
            .collect();
        let mut access: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in &cfg.access {
            access
                .entry(group_name(&rule.group.value, None))
                .or_default()
                .extend(rule.allow.iter().map(|s| s.value.clone()));
        }
        for allowed in access.values_mut() {
            allowed.sort();
            allowed.dedup();
        }
        let profiles = cfg
            .profiles
            .iter()
            .map(|p| {
                (
                    p.name.value.clone(),
                    ProfileView {
                        builtin: p.builtin,
                        policy: policy_view(&p.policy, &path),
                    },
                )
            })
            .collect();
        let invariants = cfg
            .invariants
            .iter()
            .map(|i| match i {
                Invariant::Never { from, to, .. } => InvariantView::Never {
                    from: from.value.clone(),
                    to: to.value.clone(),
                },
                Invariant::TenantsIsolated { strict, .. } => {
                    InvariantView::TenantsIsolated { strict: *strict }
                }
                Invariant::Require { zone, auth, .. } => InvariantView::Require {
                    zone: zone.value.clone(),
                    auth: match auth {
                        RequiredAuth::Mtls => "mtls",
                        RequiredAuth::Jwt => "jwt",
                        RequiredAuth::Any => "any",
                    }
                    .into(),
                },
            })
            .collect();

        EffectiveConfig {
            version: cfg.version,
            workers: cfg.workers,
            drain_timeout: format_duration(cfg.drain_timeout),
            admin: cfg.admin.as_ref().map(|a| AdminView {
                bind: a.bind.value.to_string(),
                token_env: a.token_env.clone(),
            }),
            log: LogView {
                access: match &cfg.log.access {
                    AccessLog::Stdout => "stdout".into(),
                    AccessLog::Stderr => "stderr".into(),
                    AccessLog::Off => "off".into(),
                    AccessLog::File(p) => path(p),
                },
            },
            zones,
            flows,
            listeners,
            tenants,
            services,
            access,
            profiles,
            invariants,
        }
    }
}

/// A path relative to the config folder when it lies under it.
fn display_path(base: &Path, p: &Path) -> String {
    p.strip_prefix(base)
        .ok()
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn cidrs(nets: &[ipnet::IpNet]) -> Vec<String> {
    nets.iter().map(|n| n.to_string()).collect()
}

fn keep_or_reject(keep: bool) -> String {
    if keep { "keep" } else { "reject" }.into()
}

fn group_view(g: &bulkhead_config::TargetGroup, path: &dyn Fn(&Path) -> String) -> GroupView {
    GroupView {
        zone: g.zone.value.clone(),
        targets: g
            .targets
            .iter()
            .map(|t| TargetView {
                address: t.address.value.clone(),
                weight: t.weight,
            })
            .collect(),
        balance: match g.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
        }
        .into(),
        hash_on: match &g.hash_on {
            HashOn::ClientIp => "client_ip".into(),
            HashOn::Header(h) => format!("header:{h}"),
            HashOn::Cookie(c) => format!("cookie:{c}"),
        },
        health: g.health.as_ref().map(|h| HealthView {
            path: h.path.clone(),
            interval: format_duration(h.interval),
            timeout: format_duration(h.timeout),
            healthy: h.healthy,
            unhealthy: h.unhealthy,
        }),
        limits: GroupLimitsView {
            max_connections: g.limits.max_connections,
            max_pending: g.limits.max_pending,
            max_requests: g.limits.max_requests,
        },
        outlier: g.outlier.as_ref().map(|o| OutlierView {
            consecutive_errors: o.consecutive_errors,
            base_ejection: format_duration(o.base_ejection),
            max_ejection_percent: o.max_ejection_percent,
        }),
        protocol: match g.protocol {
            UpstreamProtocol::H1 => "h1",
            UpstreamProtocol::H2 => "h2",
        }
        .into(),
        identity_header: g.identity_header.clone(),
        tls: g.tls.as_ref().map(|t| UpstreamTlsView {
            sni: t.sni.clone(),
            ca: t.ca.as_ref().map(|p| path(&p.value)),
            client_cert: t.client_cert.as_ref().map(|p| path(&p.value)),
        }),
        dns_refresh: format_duration(g.dns_refresh),
        timeouts: g.policy.timeouts.as_ref().map(timeouts_view),
        retries: g.policy.retries.as_ref().map(retries_view),
        faults: g.policy.faults.as_ref().map(faults_view),
    }
}

fn value_match(v: &ValueMatch) -> ValueMatchView {
    match v {
        ValueMatch::Exact(s) => ValueMatchView::Exact(s.clone()),
        ValueMatch::Regex(s) => ValueMatchView::Regex(s.clone()),
        ValueMatch::Present => ValueMatchView::Present,
    }
}

fn value_matches(list: &[(String, ValueMatch)]) -> BTreeMap<String, ValueMatchView> {
    list.iter()
        .map(|(k, v)| (k.clone(), value_match(v)))
        .collect()
}

fn match_view(m: &bulkhead_config::RouteMatch) -> MatchView {
    let (mut prefix, mut exact, mut regex) = (None, None, None);
    match &m.path {
        Some(PathMatch::Prefix(p)) => prefix = Some(p.clone()),
        Some(PathMatch::Exact(p)) => exact = Some(p.clone()),
        Some(PathMatch::Regex(p)) => regex = Some(p.clone()),
        None => {}
    }
    MatchView {
        path_prefix: prefix,
        path_exact: exact,
        path_regex: regex,
        methods: m.methods.clone(),
        headers: value_matches(&m.headers),
        query: value_matches(&m.query),
        sources: cidrs(&m.sources),
        identities: m.identities.iter().map(|s| s.value.clone()).collect(),
        claims: value_matches(&m.claims),
    }
}

fn timeouts_view(t: &bulkhead_config::Timeouts) -> TimeoutsView {
    TimeoutsView {
        connect: format_duration(t.connect),
        first_byte: format_duration(t.first_byte),
        request: t.request.map(format_duration),
        idle: format_duration(t.idle),
    }
}

fn retries_view(r: &bulkhead_config::Retries) -> RetriesView {
    RetriesView {
        attempts: r.attempts,
        on: r.on.clone(),
        budget_percent: r.budget_percent,
    }
}

fn faults_view(f: &Faults) -> FaultsView {
    FaultsView {
        abort: f
            .abort
            .map(|(status, percent)| AbortView { status, percent }),
        delay: f.delay.map(|(d, percent)| DelayView {
            duration: format_duration(d),
            percent,
        }),
    }
}

fn header_edits(set: &[(String, String)], remove: &[String]) -> HeaderEditsView {
    HeaderEditsView {
        set: set.iter().cloned().collect(),
        remove: remove.to_vec(),
    }
}

fn headers_view(h: &HeaderEdits) -> HeadersView {
    HeadersView {
        request: header_edits(&h.request_set, &h.request_remove),
        response: header_edits(&h.response_set, &h.response_remove),
    }
}

fn policy_view(p: &Policy, path: &dyn Fn(&Path) -> String) -> PolicyView {
    PolicyView {
        cache: p.cache.as_ref().map(|c| CacheView {
            ttl: format_duration(c.ttl),
            max_bytes: c.max_bytes,
            cache_authenticated: c.cache_authenticated,
            cache_set_cookie: c.cache_set_cookie,
            coalesce: c.coalesce,
            stale_while_revalidate: format_duration(c.stale_while_revalidate),
        }),
        auth: p.auth.as_ref().map(|a| match a {
            Auth::Mtls { required } => AuthView::Mtls {
                required: *required,
            },
            Auth::Jwt(j) => AuthView::Jwt {
                jwks: path(&j.jwks),
                issuer: j.issuer.clone(),
                audience: j.audience.clone(),
                algorithms: j.algorithms.clone(),
                leeway: format_duration(j.leeway),
            },
            Auth::Basic { users_file } => AuthView::Basic {
                users_file: path(users_file),
            },
            Auth::IpAllow(nets) => AuthView::IpAllow(cidrs(nets)),
        }),
        rate_limit: p.rate_limit.as_ref().map(|r| RateLimitView {
            per_second: r.per_second,
            burst: r.burst,
            key: match &r.key {
                RateKey::ClientIp => "client_ip".into(),
                RateKey::Identity => "identity".into(),
                RateKey::Header(h) => format!("header:{h}"),
            },
        }),
        timeouts: p.timeouts.as_ref().map(timeouts_view),
        retries: p.retries.as_ref().map(retries_view),
        buffering: p.buffering,
        headers: p.headers.as_ref().map(headers_view),
        faults: p.faults.as_ref().map(faults_view),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
version: 1
admin: { bind: "127.0.0.1:9901", token_env: BULKHEAD_TEST_TOKEN }
zones: { public: { strip_headers: [X-Internal-User] }, admin: { trusted: true } }
flows: [{ from: public, to: [public] }, { from: admin, to: [admin, public] }]
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http, limits: { header_timeout: 250ms } }
  ops: { bind: "127.0.0.1:8081", zone: admin, protocol: http, allow_sources: ["127.0.0.0/8"] }
tenants:
  acme:
    hosts: [acme.test, "*.acme.test"]
    target_groups:
      app:
        zone: public
        targets: ["127.0.0.1:9001", { address: "127.0.0.1:9002", weight: 2 }]
        health: { path: /healthz, interval: 2s, timeout: 1s }
        timeouts: { connect: 1s, request: 30s }
      panel: { zone: admin, targets: ["127.0.0.1:9003"] }
    routes:
      - { name: admin, match: { path_prefix: /admin/ }, forward: panel, profile: admin-strict, listeners: [ops] }
      - name: api
        match: { path_prefix: /api/, methods: [GET], headers: { x-api-version: "2" } }
        forward: app
        rate_limit: { per_second: 5 }
      - { name: site, match: { path_prefix: / }, forward: app }
services:
  billing: { spiffe: "spiffe://corp.test/billing" }
access:
  - { group: acme/panel, allow: [billing] }
invariants:
  - never: { from: public, to: admin }
  - tenants_isolated: true
"#;

    fn effective(yaml: &str) -> EffectiveConfig {
        let cfg = bulkhead_config::from_str(yaml, "t.yaml", Path::new("/etc/bulkhead"))
            .expect("valid config");
        Snapshot::compile(cfg).expect("compiles").effective()
    }

    #[test]
    fn durations_are_written_as_in_the_config() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        for text in ["250ms", "2s", "1m", "1h", "1d", "30s"] {
            let d = bulkhead_config::parse_duration(text).expect("parses");
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn serializing_twice_gives_identical_json() {
        let a = serde_json::to_string(&effective(BASE)).expect("serializes");
        let b = serde_json::to_string(&effective(BASE)).expect("serializes");
        assert_eq!(a, b);
    }

    #[test]
    fn round_trips_through_serde_json() {
        let view = effective(BASE);
        let text = serde_json::to_string_pretty(&view).expect("serializes");
        let back: EffectiveConfig = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, view);
        let again = serde_json::to_string_pretty(&back).expect("serializes");
        assert_eq!(again, text);
    }

    #[test]
    fn a_new_route_changes_the_view() {
        let more = BASE.replace(
            "      - { name: site,",
            "      - { name: old, match: { path_exact: /old }, redirect: { location: /new } }\n      - { name: site,",
        );
        assert_ne!(more, BASE);
        let (a, b) = (effective(BASE), effective(&more));
        assert_ne!(
            serde_json::to_string(&a).expect("serializes"),
            serde_json::to_string(&b).expect("serializes")
        );
        let names: Vec<&str> = b.tenants["acme"]
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["admin", "api", "old", "site"]);
    }

    #[test]
    fn the_view_is_resolved_and_keeps_no_secrets() {
        let v = effective(BASE);
        let json = serde_json::to_value(&v).expect("serializes");
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
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
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(v.drain_timeout, "30s");
        let admin = v.admin.as_ref().expect("admin");
        assert_eq!(admin.token_env.as_deref(), Some("BULKHEAD_TEST_TOKEN"));
        assert_eq!(v.listeners["web"].limits.header_timeout, "250ms");
        assert_eq!(v.listeners["ops"].allow_sources, ["127.0.0.0/8"]);
        let acme = &v.tenants["acme"];
        assert_eq!(acme.hosts, ["*.acme.test", "acme.test"]);
        assert_eq!(acme.listeners, ["web", "ops"]);
        let app = &acme.target_groups["app"];
        assert_eq!(
            app.targets,
            [
                TargetView {
                    address: "127.0.0.1:9001".into(),
                    weight: 1
                },
                TargetView {
                    address: "127.0.0.1:9002".into(),
                    weight: 2
                }
            ]
        );
        assert_eq!(
            app.timeouts.as_ref().and_then(|t| t.request.as_deref()),
            Some("30s")
        );
        let admin_route = &acme.routes[0];
        assert_eq!(admin_route.listeners, ["ops"]);
        assert_eq!(
            admin_route.action,
            ActionView::Forward(vec![LegView {
                group: "acme/panel".into(),
                weight: 1
            }])
        );
        let api = &acme.routes[1];
        assert_eq!(
            api.matcher.headers["x-api-version"],
            ValueMatchView::Exact("2".into())
        );
        assert_eq!(
            api.policy.rate_limit.as_ref().map(|r| r.per_second),
            Some(5)
        );
        assert!(v.profiles["admin-strict"].builtin);
        assert!(matches!(
            v.profiles["admin-strict"].policy.auth,
            Some(AuthView::Mtls { required: true })
        ));
        assert_eq!(v.access["acme/panel"], ["billing"]);
        assert_eq!(v.invariants.len(), 2);
        // The token's value never appears, only the variable's name.
        std::env::set_var("BULKHEAD_TEST_TOKEN", "s3cr3t-value");
        let text = serde_json::to_string(&effective(BASE)).expect("serializes");
        assert!(!text.contains("s3cr3t-value"));
    }
}
