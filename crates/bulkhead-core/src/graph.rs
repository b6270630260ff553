//! The effective reachability graph (DESIGN §6 `graph`): one edge per
//! listener × route × group (and per tcp / tls-passthrough forward), with
//! whether traffic can flow and why not. Invariants are proven on it, and
//! `bulkhead graph` and the admin API print it.

use crate::decision::{GroupId, ListenerId, TenantId};
use crate::snapshot::{RouteAction, Snapshot};
use serde::Serialize;

/// One possible path through the load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The listener traffic enters on.
    pub listener: ListenerId,
    /// The route's tenant (for tcp / passthrough: the group's owner).
    pub tenant: TenantId,
    /// The route (index in the tenant); `None` for tcp / passthrough forwards.
    pub route: Option<u32>,
    /// The group reached.
    pub group: GroupId,
    /// True when a flow allows listener zone → group zone.
    pub allowed: bool,
    /// Why (the flow that allows it, or the missing flow).
    pub reason: String,
    /// The route's auth kind (`mtls`, `jwt`, `basic`, `ip_allow`), if any.
    pub auth: Option<&'static str>,
    /// `mtls: required` on the route, or required client certs on the listener.
    pub mtls_required: bool,
    /// The SNI pattern of a passthrough forward.
    pub sni: Option<String>,
}

/// An edge with names, as printed by `graph --format json` and `GET /graph`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EdgeView {
    /// Listener name.
    pub listener: String,
    /// Listener zone.
    pub zone: String,
    /// Tenant name.
    pub tenant: String,
    /// Route name (null for tcp / passthrough).
    pub route: Option<String>,
    /// `tenant/group`.
    pub group: String,
    /// Group zone.
    pub group_zone: String,
    /// Whether traffic can flow.
    pub allowed: bool,
    /// Why.
    pub reason: String,
    /// Services of the group's access list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<Vec<String>>,
    /// The route's auth kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// SNI pattern of a passthrough forward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// The JSON document of `graph --format json`.
#[derive(Clone, Debug, Serialize)]
pub struct GraphView {
    /// Every edge, denied ones included.
    pub edges: Vec<EdgeView>,
}

pub(crate) fn edges(s: &Snapshot) -> Vec<Edge> {
    let mut out = Vec::new();
    let cfg = &s.config;
    for (li, l) in s.listeners.iter().enumerate() {
        let lid = li as ListenerId;
        let mut push = |tenant: TenantId,
                        route: Option<u32>,
                        group: GroupId,
                        auth: Option<&'static str>,
                        mtls: bool,
                        sni: Option<String>| {
            let gz = s.groups[group as usize].zone;
            let allowed = s.flow_allows(l.zone, gz);
            let (from, to) = (&s.zones[l.zone as usize].name, &s.zones[gz as usize].name);
            let reason = if allowed {
                format!("flow {from} -> {to} allows it")
            } else {
                format!("no flow from {from} to {to}")
            };
            out.push(Edge {
                listener: lid,
                tenant,
                route,
                group,
                allowed,
                reason,
                auth,
                mtls_required: mtls || l.client_cert_required,
                sni,
            });
        };
        let cl = &cfg.listeners[li];
        if let Some(fwd) = &cl.forward {
            if let Ok(idx) = cfg.resolve_group(None, &fwd.value) {
                let g = s.group_ids[&idx];
                push(s.groups[g as usize].tenant, None, g, None, false, None);
            }
        }
        for (sni, fwd) in &cl.forward_by_sni {
            if let Ok(idx) = cfg.resolve_group(None, &fwd.value) {
                let g = s.group_ids[&idx];
                push(
                    s.groups[g as usize].tenant,
                    None,
                    g,
                    None,
                    false,
                    Some(sni.value.clone()),
                );
            }
        }
        for (ti, t) in s.tenants.iter().enumerate() {
            for (ri, r) in t.routes.iter().enumerate() {
                if !r.listeners.contains(li) {
                    continue;
                }
                let RouteAction::Forward { legs, .. } = &r.action else {
                    continue;
                };
                let auth = r.policy.auth.as_ref().or(l.policy.auth.as_ref());
                let mtls = matches!(auth, Some(bulkhead_config::Auth::Mtls { required: true }));
                for (g, _) in legs {
                    push(
                        ti as TenantId,
                        Some(ri as u32),
                        *g,
                        auth.map(|a| a.kind()),
                        mtls,
                        None,
                    );
                }
            }
        }
    }
    out
}

impl Snapshot {
    /// Name an edge for printing.
    pub fn edge_view(&self, e: &Edge) -> EdgeView {
        let l = &self.listeners[e.listener as usize];
        let g = &self.groups[e.group as usize];
        let t = &self.tenants[e.tenant as usize];
        EdgeView {
            listener: l.name.clone(),
            zone: self.zones[l.zone as usize].name.clone(),
            tenant: t.name.clone(),
            route: e.route.map(|r| t.routes[r as usize].name.clone()),
            group: g.full_name.clone(),
            group_zone: self.zones[g.zone as usize].name.clone(),
            allowed: e.allowed,
            reason: e.reason.clone(),
            requires: g.access.as_ref().map(|a| {
                a.iter()
                    .map(|s| self.services[*s as usize].name.clone())
                    .collect()
            }),
            auth: e.auth.map(str::to_string),
            sni: e.sni.clone(),
        }
    }

    /// The whole graph with names.
    pub fn graph_view(&self) -> GraphView {
        GraphView {
            edges: self.edges.iter().map(|e| self.edge_view(e)).collect(),
        }
    }
}
