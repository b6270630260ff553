//! Guardrails proven on the reachability graph at every load (DESIGN §3
//! "Invariants" and "Weighted forwards"). A broken one rejects the config,
//! naming the flow, route, grant or host that breaks it.

use crate::graph::Edge;
use crate::host::pattern_matches;
use crate::snapshot::{RouteAction, Snapshot};
use bulkhead_config::{Collector, Config, Invariant, Pos, RequiredAuth, Spanned};
use std::collections::HashSet;

/// Where an edge was configured: the route's name, or the listener's forward.
fn edge_origin(s: &Snapshot, e: &Edge) -> (Pos, String) {
    let l = &s.config.listeners[e.listener as usize];
    match e.route {
        Some(r) => {
            let t = &s.tenants[e.tenant as usize];
            let route = &t.routes[r as usize];
            (
                route.pos,
                format!(
                    "route `{}` of tenant `{}` on listener `{}`",
                    route.name, t.name, l.name.value
                ),
            )
        }
        None => {
            let pos = l.forward.as_ref().map_or(l.name.pos, |f| f.pos);
            (
                pos,
                format!("{} listener `{}`", l.protocol.as_str(), l.name.value),
            )
        }
    }
}

/// The line of the first flow allowing `from` → `to`.
fn flow_line(s: &Snapshot, from: u32, to: u32) -> Option<u32> {
    let (from, to) = (&s.zones[from as usize].name, &s.zones[to as usize].name);
    s.config
        .flows
        .iter()
        .find(|f| &f.from.value == from && f.to.iter().any(|z| &z.value == to))
        .map(|f| f.pos.line)
}

/// Every leg of a split must be allowed (or denied) alike from each listener,
/// and share one access list.
pub(crate) fn check_splits(cx: &Collector, s: &Snapshot) {
    for t in &s.tenants {
        for r in &t.routes {
            let RouteAction::Forward { legs, .. } = &r.action else {
                continue;
            };
            if legs.len() < 2 {
                continue;
            }
            for (li, l) in s.listeners.iter().enumerate() {
                if !r.listeners.contains(li) {
                    continue;
                }
                let allowed: HashSet<bool> = legs
                    .iter()
                    .map(|(g, _)| s.flow_allows(l.zone, s.groups[*g as usize].zone))
                    .collect();
                if allowed.len() > 1 {
                    cx.error(
                        r.pos,
                        format!("route `{}` of tenant `{}` splits between groups that listener `{}` may not all reach", r.name, t.name, l.name),
                        "every leg of a weighted forward must be allowed, or denied, alike from each listener",
                    );
                }
            }
            let access: HashSet<Option<Vec<u32>>> = legs
                .iter()
                .map(|(g, _)| {
                    let mut a = s.groups[*g as usize].access.clone();
                    if let Some(a) = &mut a {
                        a.sort_unstable();
                        a.dedup();
                    }
                    a
                })
                .collect();
            if access.len() > 1 {
                cx.error(
                    r.pos,
                    format!("route `{}` of tenant `{}` splits between groups with different access lists", r.name, t.name),
                    "give every leg of a weighted forward the same `access` list",
                );
            }
        }
    }
}

/// Check every invariant of the config on the graph.
pub(crate) fn check(cx: &Collector, s: &Snapshot) {
    for inv in &s.config.invariants {
        match inv {
            Invariant::Never { pos, from, to } => {
                let (Some(from_id), Some(to_id)) = (s.zone_id(&from.value), s.zone_id(&to.value))
                else {
                    continue;
                };
                for e in s.edges.iter().filter(|e| e.allowed) {
                    if s.listeners[e.listener as usize].zone != from_id
                        || s.groups[e.group as usize].zone != to_id
                    {
                        continue;
                    }
                    let (at, what) = edge_origin(s, e);
                    let flow = flow_line(s, from_id, to_id).map_or(String::new(), |l| {
                        format!(", allowed by the flow at line {l}")
                    });
                    cx.error(
                        at,
                        format!(
                            "invariant `never: {{from: {}, to: {}}}` (line {}) is broken: {what} reaches `{}` in zone {}{flow}",
                            from.value,
                            to.value,
                            pos.line,
                            s.groups[e.group as usize].full_name,
                            to.value
                        ),
                        if e.route.is_some() {
                            "remove the flow, or keep the route off listeners of that zone"
                        } else {
                            "remove the flow, or forward the listener to a group of another zone"
                        },
                    );
                }
            }
            Invariant::TenantsIsolated { pos, strict } => {
                tenants_isolated(cx, s, *pos, *strict);
            }
            Invariant::Require { pos, zone: z, auth } => {
                let Some(zid) = s.zone_id(&z.value) else {
                    continue;
                };
                for e in s
                    .edges
                    .iter()
                    .filter(|e| e.allowed && s.groups[e.group as usize].zone == zid)
                {
                    let ok = match auth {
                        RequiredAuth::Mtls => e.mtls_required,
                        RequiredAuth::Jwt => e.auth == Some("jwt"),
                        RequiredAuth::Any => e.auth.is_some() || e.mtls_required,
                    };
                    if !ok {
                        let word = match auth {
                            RequiredAuth::Mtls => "mtls",
                            RequiredAuth::Jwt => "jwt",
                            RequiredAuth::Any => "any",
                        };
                        let (at, what) = edge_origin(s, e);
                        cx.error(
                            at,
                            format!(
                                "invariant `require: {{zone: {}, auth: {word}}}` (line {}) is broken: {what} reaches `{}` without {word} auth",
                                z.value,
                                pos.line,
                                s.groups[e.group as usize].full_name
                            ),
                            "give the route an auth profile (e.g. `profile: admin-strict`) or require client certificates on the listener",
                        );
                    }
                }
            }
        }
    }
}

fn tenants_isolated(cx: &Collector, s: &Snapshot, pos: Pos, strict: bool) {
    let word = if strict { "strict" } else { "true" };
    let cfg = &s.config;
    if strict {
        for t in &cfg.tenants {
            for g in &t.grants {
                cx.error(
                    g.tenant.pos,
                    format!("invariant `tenants_isolated: strict` (line {}) is broken: tenant `{}` grants groups to tenant `{}`", pos.line, t.name.value, g.tenant.value),
                    "remove the grant, or relax the invariant to `tenants_isolated: true`",
                );
            }
        }
    }
    for e in s.edges.iter().filter(|e| e.route.is_some()) {
        let owner = s.groups[e.group as usize].tenant;
        if owner == e.tenant {
            continue;
        }
        let granted = cfg.may_use(e.tenant as usize, s.groups[e.group as usize].config_index);
        if !granted {
            let (at, what) = edge_origin(s, e);
            cx.error(
                at,
                format!("invariant `tenants_isolated: {word}` (line {}) is broken: {what} reaches another tenant's group `{}`", pos.line, s.groups[e.group as usize].full_name),
                "add a grant in the owning tenant, or forward to the tenant's own group",
            );
        }
    }
    for t in host_takeovers(cfg) {
        cx.error(
            t.host.pos,
            format!(
                "invariant `tenants_isolated: {word}` (line {}) is broken: host `{}` of tenant `{}` falls under wildcard `{}` of tenant `{}` (host takeover)",
                pos.line, t.host.value, t.tenant, t.wildcard, t.wildcard_tenant
            ),
            "give the host to the wildcard's tenant, or narrow the wildcard",
        );
    }
}

/// An exact host of one tenant that another tenant's wildcard also covers.
pub(crate) struct HostTakeover<'a> {
    /// The exact host.
    pub host: &'a Spanned<String>,
    /// Its tenant.
    pub tenant: &'a str,
    /// The covering wildcard.
    pub wildcard: &'a str,
    /// The wildcard's tenant.
    pub wildcard_tenant: &'a str,
}

/// Every exact host that falls under another tenant's wildcard.
pub(crate) fn host_takeovers(cfg: &Config) -> Vec<HostTakeover<'_>> {
    let mut out = Vec::new();
    for (ai, a) in cfg.tenants.iter().enumerate() {
        for h in a.hosts.iter().filter(|h| !h.value.starts_with("*.")) {
            for (bi, b) in cfg.tenants.iter().enumerate() {
                if ai == bi {
                    continue;
                }
                let wildcard = b
                    .hosts
                    .iter()
                    .find(|w| w.value.starts_with("*.") && pattern_matches(&w.value, &h.value));
                if let Some(w) = wildcard {
                    out.push(HostTakeover {
                        host: h,
                        tenant: &a.name.value,
                        wildcard: &w.value,
                        wildcard_tenant: &b.name.value,
                    });
                }
            }
        }
    }
    out
}
