//! "Compile, then serve": a validated [`Config`] becomes an immutable
//! [`Snapshot`] — host index, per-tenant routers, flow matrix, access lists,
//! the effective reachability graph — and the invariants are proven on that
//! graph before the snapshot can exist.

use crate::decision::{GroupId, ListenerId, TenantId, ZoneId};
use crate::graph::{self, Edge};
use crate::host::{normalize_host, pattern_matches, HostIndex};
use crate::invariant;
use crate::listener_set::ListenerSet;
use crate::router::{compile_path, compile_value, Matcher, PathMatcher, Router};
use bulkhead_config::{
    Action, Auth, Cache, Collector, Config, ConfigErrors, Faults, HeaderEdits, Normalize, Policy,
    Pos, Protocol, RateLimit, Retries, Spanned, Timeouts,
};
use ipnet::IpNet;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

/// A listener, compiled.
#[derive(Clone, Debug)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// Its zone.
    pub zone: ZoneId,
    /// Its protocol.
    pub protocol: Protocol,
    /// `allow_sources` (empty = everyone).
    pub allow_sources: Vec<IpNet>,
    /// Names its certificates serve (exact or `*.x`).
    pub cert_names: Vec<String>,
    /// True when a default certificate answers unknown SNI.
    pub default_certificate: bool,
    /// True when a verified client certificate is required.
    pub client_cert_required: bool,
    /// Its default profile's keys.
    pub policy: Policy,
    /// `forward` (tcp listeners).
    pub forward: Option<GroupId>,
    /// `forward_by_sni` (tls-passthrough listeners): pattern → group.
    pub forward_by_sni: Vec<(String, GroupId)>,
}

/// A tenant, compiled.
#[derive(Clone, Debug)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// Path normalization options.
    pub normalize: Normalize,
    /// The candidate index of its routes.
    pub router: Router,
    /// Its routes, file order.
    pub routes: Vec<RouteInfo>,
    /// The listeners it is served on.
    pub served_on: ListenerSet,
}

/// What a route does, compiled.
#[derive(Clone, Debug)]
pub enum RouteAction {
    /// Weighted legs (group, weight) and the weight total.
    Forward {
        /// (group, weight), file order. Up to two are kept in the route's
        /// record, read with it, rather than on the heap.
        legs: SmallVec<[(GroupId, u32); 2]>,
        /// Sum of weights.
        total: u64,
    },
    /// Redirect.
    Redirect {
        /// Location.
        location: String,
        /// Status.
        status: u16,
    },
    /// Fixed response.
    Respond {
        /// Status.
        status: u16,
        /// Body.
        body: String,
        /// Content-Type.
        content_type: Option<String>,
    },
    /// Deny with a status.
    Deny {
        /// Status.
        status: u16,
    },
}

/// A route, compiled.
///
/// Laid out in the order a request reads it (`repr(C)`): the listener
/// mask, the action, the policy and whether the path lookup settles the
/// match come first (~90 bytes), the criteria next, the name last. With
/// thousands of tenants the record is rarely in cache, and a plain route's
/// request then reads only those first bytes' cache lines.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct RouteInfo {
    /// The listeners it is attached to (route `listeners`, else the tenant's).
    pub listeners: ListenerSet,
    /// Its action.
    pub action: RouteAction,
    /// Its policy: inline keys, then its profile, then the tenant's profile.
    /// Every route without one shares a single empty policy, so a request
    /// reads the same few cache lines whichever tenant it is for.
    pub policy: Arc<Policy>,
    /// True when the router's path lookup is the whole match: no criterion
    /// besides a path that is not a regex ([`Matcher::matches_rest`] would
    /// pass). Set from `matcher` when the route is compiled.
    pub plain: bool,
    /// Its criteria.
    pub matcher: Matcher,
    /// Its name.
    pub name: String,
    /// Where its name was written.
    pub pos: Pos,
}

/// A target group, compiled. What a request reads comes first
/// (`repr(C)`, as [`RouteInfo`]): tenant, zone, access list and policy in
/// the first 40 bytes, the names after them.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct GroupInfo {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Its zone.
    pub zone: ZoneId,
    /// Services allowed by `access` (None = no access list).
    pub access: Option<Vec<u32>>,
    /// Its own policy keys (`timeouts`, `retries`, …); shared like a
    /// route's when empty.
    pub policy: Arc<Policy>,
    /// Its name within the tenant.
    pub name: String,
    /// `tenant/group`.
    pub full_name: String,
    /// Index into `config.tenants[t].target_groups`.
    pub config_index: (usize, usize),
}

/// A caller identity, compiled.
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// SPIFFE id criterion.
    pub spiffe: Option<String>,
    /// Cert DNS SAN criterion.
    pub cert_san: Option<String>,
    /// JWT subject criterion.
    pub jwt_subject: Option<String>,
    /// Source criterion.
    pub sources: Vec<IpNet>,
}

/// A zone, compiled.
#[derive(Clone, Debug)]
pub struct ZoneInfo {
    /// Its name.
    pub name: String,
    /// Client forwarding headers are kept.
    pub trusted: bool,
    /// Request headers dropped on entry (lowercase).
    pub strip_headers: Vec<String>,
}

/// The immutable, compiled form of a config. Cheap to share (`Arc`), never
/// mutated: a reload builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was compiled from.
    pub config: Arc<Config>,
    /// Zones by id.
    pub zones: Vec<ZoneInfo>,
    /// Listeners by id.
    pub listeners: Vec<ListenerInfo>,
    /// Tenants by id.
    pub tenants: Vec<TenantInfo>,
    /// Groups by id.
    pub groups: Vec<GroupInfo>,
    /// Services by id.
    pub services: Vec<ServiceInfo>,
    /// The effective reachability graph.
    pub edges: Vec<Edge>,
    pub(crate) listener_ids: crate::router::FastMap<String, ListenerId>,
    pub(crate) hosts: HostIndex<TenantId>,
    /// `flows[from * zones + to]`.
    pub(crate) flows: Vec<bool>,
    pub(crate) group_ids: HashMap<(usize, usize), GroupId>,
}

impl Snapshot {
    /// Compile a validated config. Errors name the flow, route, grant or host
    /// that breaks an invariant or a split rule.
    pub fn compile(config: Config) -> Result<Snapshot, ConfigErrors> {
        let cx = Collector::new(config.file.clone());
        let snapshot = build(&cx, config);
        cx.finish()?;
        Ok(snapshot)
    }

    /// Load, validate and compile a config file.
    pub fn load(path: &std::path::Path) -> Result<Snapshot, ConfigErrors> {
        Snapshot::compile(bulkhead_config::load(path)?)
    }

    /// The id of a listener.
    pub fn listener_id(&self, name: &str) -> Option<ListenerId> {
        self.listener_ids.get(name).copied()
    }

    /// The id of a zone by name.
    pub fn zone_id(&self, name: &str) -> Option<ZoneId> {
        self.zones
            .iter()
            .position(|z| z.name == name)
            .map(|i| i as ZoneId)
    }

    /// True when a flow allows listener zone `from` to reach group zone `to`.
    pub fn flow_allows(&self, from: ZoneId, to: ZoneId) -> bool {
        self.flows[from as usize * self.zones.len() + to as usize]
    }

    /// The tenant owning a normalized host.
    pub fn tenant_of_host(&self, host: &str) -> Option<TenantId> {
        self.hosts.get(host)
    }

    /// The tenant id by name.
    pub fn tenant_id(&self, name: &str) -> Option<TenantId> {
        self.tenants
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as TenantId)
    }

    /// The group id by `tenant/group`.
    pub fn group_id(&self, full_name: &str) -> Option<GroupId> {
        self.groups
            .iter()
            .position(|g| g.full_name == full_name)
            .map(|i| i as GroupId)
    }

    /// The config of a group.
    pub fn group_config(&self, id: GroupId) -> &bulkhead_config::TargetGroup {
        let (t, g) = self.groups[id as usize].config_index;
        &self.config.tenants[t].target_groups[g]
    }

    /// The effective policy of a forwarded request (DESIGN §2 step 7): the
    /// route's inline keys, its profile, the tenant's profile, the listener's
    /// profile, then the group's own settings.
    ///
    /// A view, not a merged copy: each key is looked up when asked for, so a
    /// request reads only the keys it uses and copies nothing.
    pub fn policy(
        &self,
        listener: ListenerId,
        tenant: TenantId,
        route: u32,
        group: Option<GroupId>,
    ) -> EffectivePolicy<'_> {
        EffectivePolicy {
            route: &self.tenants[tenant as usize].routes[route as usize].policy,
            listener: &self.listeners[listener as usize].policy,
            group: group.map(|g| &*self.groups[g as usize].policy),
        }
    }

    /// Is listener `l`'s SNI `sni` served by one of its certificates?
    pub fn sni_has_certificate(&self, l: ListenerId, sni: &str) -> bool {
        self.listeners[l as usize]
            .cert_names
            .iter()
            .any(|p| pattern_matches(p, sni))
    }
}

fn build(cx: &Collector, config: Config) -> Snapshot {
    let zones: Vec<ZoneInfo> = config
        .zones
        .iter()
        .map(|z| ZoneInfo {
            name: z.name.value.clone(),
            trusted: z.trusted,
            strip_headers: z.strip_headers.clone(),
        })
        .collect();
    let zone_id = |name: &Spanned<String>| -> ZoneId {
        zones.iter().position(|z| z.name == name.value).unwrap_or(0) as ZoneId
    };
    let mut flows = vec![false; zones.len() * zones.len()];
    for f in &config.flows {
        for to in &f.to {
            flows[zone_id(&f.from) as usize * zones.len() + zone_id(to) as usize] = true;
        }
    }
    let profiles: HashMap<&str, &Policy> = config
        .profiles
        .iter()
        .map(|p| (p.name.value.as_str(), &p.policy))
        .collect();
    let profile_policy = |p: &Option<Spanned<String>>| -> Policy {
        p.as_ref()
            .and_then(|p| profiles.get(p.value.as_str()).map(|p| (*p).clone()))
            .unwrap_or_default()
    };

    let listeners: Vec<ListenerInfo> = config
        .listeners
        .iter()
        .map(|l| ListenerInfo {
            name: l.name.value.clone(),
            zone: zone_id(&l.zone),
            protocol: l.protocol,
            allow_sources: l.allow_sources.clone(),
            cert_names: l
                .tls
                .iter()
                .flat_map(|t| t.certificates.iter())
                .filter_map(|c| c.loaded.as_ref())
                .flat_map(|c| c.names.iter().cloned())
                .collect(),
            default_certificate: l.default_certificate.is_some(),
            client_cert_required: l
                .tls
                .as_ref()
                .and_then(|t| t.client_auth.as_ref())
                .is_some_and(|c| c.required),
            policy: profile_policy(&l.profile),
            forward: None,
            forward_by_sni: Vec::new(),
        })
        .collect();
    let listener_ids = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), i as ListenerId))
        .collect();

    let services: Vec<ServiceInfo> = config
        .services
        .iter()
        .map(|s| ServiceInfo {
            name: s.name.value.clone(),
            spiffe: s.spiffe.clone(),
            cert_san: s.cert_san.clone(),
            jwt_subject: s.jwt_subject.clone(),
            sources: s.sources.clone(),
        })
        .collect();
    let service_id = |name: &str| {
        services
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32)
    };

    let mut groups = Vec::new();
    let empty = SharedEmpty(Arc::default());
    let mut group_ids = HashMap::new();
    for (ti, t) in config.tenants.iter().enumerate() {
        for (gi, g) in t.target_groups.iter().enumerate() {
            group_ids.insert((ti, gi), groups.len() as GroupId);
            groups.push(GroupInfo {
                tenant: ti as TenantId,
                name: g.name.value.clone(),
                full_name: format!("{}/{}", t.name.value, g.name.value),
                zone: zone_id(&g.zone),
                access: None,
                config_index: (ti, gi),
                policy: empty.share(g.policy.clone()),
            });
        }
    }
    for rule in &config.access {
        if let Ok(idx) = config.resolve_group(None, &rule.group.value) {
            let id = group_ids[&idx] as usize;
            let allowed = groups[id].access.get_or_insert_with(Vec::new);
            allowed.extend(rule.allow.iter().filter_map(|s| service_id(&s.value)));
        }
    }

    let mut listeners = listeners;
    for (l, cl) in listeners.iter_mut().zip(&config.listeners) {
        let resolve = |r: &Spanned<String>| {
            config
                .resolve_group(None, &r.value)
                .ok()
                .map(|idx| group_ids[&idx])
        };
        l.forward = cl.forward.as_ref().and_then(resolve);
        l.forward_by_sni = cl
            .forward_by_sni
            .iter()
            .filter_map(|(sni, g)| Some((sni.value.clone(), resolve(g)?)))
            .collect();
    }

    let mut hosts = HostIndex::default();
    let mut tenants = Vec::new();
    for (ti, t) in config.tenants.iter().enumerate() {
        for h in &t.hosts {
            hosts.insert(&h.value, ti as TenantId);
        }
        let mut served_on = ListenerSet::empty(listeners.len());
        for l in config.tenant_listeners(ti) {
            served_on.insert(l);
        }
        let tenant_policy = profile_policy(&t.profile);
        let mut routes = Vec::new();
        for r in &t.routes {
            let Some(route) = compile_route(
                cx,
                &config,
                ti,
                r,
                &served_on,
                &group_ids,
                &service_id,
                t.normalize.case_insensitive,
            ) else {
                continue;
            };
            routes.push(RouteInfo {
                policy: empty.share(r.policy.or(&profile_policy(&r.profile)).or(&tenant_policy)),
                ..route
            });
        }
        let router = Router::new(
            routes.iter().map(|r: &RouteInfo| &r.matcher.path),
            t.normalize.case_insensitive,
        );
        tenants.push(TenantInfo {
            name: t.name.value.clone(),
            normalize: t.normalize,
            router,
            routes,
            served_on,
        });
    }

    let mut snapshot = Snapshot {
        zones,
        listeners,
        tenants,
        groups,
        services,
        edges: Vec::new(),
        listener_ids,
        hosts,
        flows,
        group_ids,
        config: Arc::new(config),
    };
    snapshot.edges = graph::edges(&snapshot);
    invariant::check_splits(cx, &snapshot);
    invariant::check(cx, &snapshot);
    snapshot
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    cx: &Collector,
    config: &Config,
    tenant: usize,
    r: &bulkhead_config::Route,
    served_on: &ListenerSet,
    group_ids: &HashMap<(usize, usize), GroupId>,
    service_id: &dyn Fn(&str) -> Option<u32>,
    case_insensitive: bool,
) -> Option<RouteInfo> {
    let m = &r.matcher;
    let regex_err =
        |e: regex::Error| cx.error(r.name.pos, format!("route `{}`: {e}", r.name.value), "");
    let path = compile_path(m.path.as_ref(), case_insensitive)
        .map_err(regex_err)
        .ok()?;
    let values = |list: &[(String, bulkhead_config::ValueMatch)]| -> Option<Vec<(Box<str>, crate::router::ValueMatcher)>> {
        list.iter()
            .map(|(k, v)| compile_value(v).map(|v| (Box::<str>::from(k.as_str()), v)))
            .collect::<Result<_, _>>()
            .map_err(regex_err)
            .ok()
    };
    let matcher = Matcher {
        path,
        methods: m.methods.iter().map(|s| s.as_str().into()).collect(),
        headers: values(&m.headers)?,
        query: values(&m.query)?,
        sources: m.sources.clone(),
        identities: m
            .identities
            .iter()
            .filter_map(|s| service_id(&s.value))
            .collect(),
        claims: values(&m.claims)?,
    };
    let action = match &r.action {
        Action::Forward(legs) => {
            let legs: SmallVec<[(GroupId, u32); 2]> = legs
                .iter()
                .filter_map(|leg| {
                    let idx = config.resolve_group(Some(tenant), &leg.group.value).ok()?;
                    Some((group_ids[&idx], leg.weight))
                })
                .collect();
            let total = legs.iter().map(|(_, w)| u64::from(*w)).sum();
            RouteAction::Forward { legs, total }
        }
        Action::Redirect { location, status } => RouteAction::Redirect {
            location: location.clone(),
            status: *status,
        },
        Action::Respond {
            status,
            body,
            content_type,
        } => RouteAction::Respond {
            status: *status,
            body: body.clone(),
            content_type: content_type.clone(),
        },
        Action::Deny { status } => RouteAction::Deny { status: *status },
    };
    let listeners = match &r.listeners {
        Some(names) => {
            let mut mask = ListenerSet::empty(config.listeners.len());
            for n in names {
                if let Some(i) = config
                    .listeners
                    .iter()
                    .position(|l| l.name.value == n.value)
                {
                    if served_on.contains(i) {
                        mask.insert(i);
                    }
                }
            }
            mask
        }
        None => served_on.clone(),
    };
    Some(RouteInfo {
        listeners,
        action,
        policy: Arc::default(),
        plain: matcher.path_only() && !matches!(matcher.path, PathMatcher::Regex(_)),
        matcher,
        name: r.name.value.clone(),
        pos: r.name.pos,
    })
}

/// Normalize an SNI value like a host (lowercase, trailing dot dropped).
pub(crate) fn normalize_sni(sni: &str) -> Option<String> {
    normalize_host(sni).ok().map(|h| h.into_owned())
}

/// The one empty policy that every route and group without keys shares.
struct SharedEmpty(Arc<Policy>);

impl SharedEmpty {
    fn share(&self, policy: Policy) -> Arc<Policy> {
        if policy == *self.0 {
            self.0.clone()
        } else {
            Arc::new(policy)
        }
    }
}

/// The effective policy of a request (DESIGN §2 step 7), from
/// [`Snapshot::policy`]: for each key, the route's value (already merged
/// with its profile and its tenant's profile), else the listener's, else
/// the group's. The same precedence as [`Policy::or`], without the copy.
#[derive(Clone, Copy, Debug)]
pub struct EffectivePolicy<'a> {
    route: &'a Policy,
    listener: &'a Policy,
    group: Option<&'a Policy>,
}

impl<'a> EffectivePolicy<'a> {
    /// The first layer's value of one key.
    fn first<T>(&self, key: impl Fn(&'a Policy) -> Option<T>) -> Option<T> {
        key(self.route)
            .or_else(|| key(self.listener))
            .or_else(|| self.group.and_then(&key))
    }

    /// `cache`.
    pub fn cache(&self) -> Option<&'a Cache> {
        self.first(|p| p.cache.as_ref())
    }

    /// `auth`.
    pub fn auth(&self) -> Option<&'a Auth> {
        self.first(|p| p.auth.as_ref())
    }

    /// `rate_limit`.
    pub fn rate_limit(&self) -> Option<&'a RateLimit> {
        self.first(|p| p.rate_limit.as_ref())
    }

    /// `timeouts`.
    pub fn timeouts(&self) -> Option<&'a Timeouts> {
        self.first(|p| p.timeouts.as_ref())
    }

    /// `retries`.
    pub fn retries(&self) -> Option<&'a Retries> {
        self.first(|p| p.retries.as_ref())
    }

    /// `buffering`.
    pub fn buffering(&self) -> Option<bool> {
        self.first(|p| p.buffering)
    }

    /// `headers`.
    pub fn headers(&self) -> Option<&'a HeaderEdits> {
        self.first(|p| p.headers.as_ref())
    }

    /// `faults`.
    pub fn faults(&self) -> Option<&'a Faults> {
        self.first(|p| p.faults.as_ref())
    }
}
