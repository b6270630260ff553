//! Cross-references: every name a config uses must be defined, hosts and
//! binds must not collide, and tenants may only use each other's groups
//! through a grant. Each broken reference is reported at the referencing value.

use crate::error::Collector;
use crate::model::*;
use std::collections::{HashMap, HashSet};

/// Where a group reference points: (tenant index, group index).
pub type GroupIdx = (usize, usize);

/// Why a group reference does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRefError {
    /// `tenant/…` names no tenant.
    UnknownTenant(String),
    /// The tenant has no such group.
    UnknownGroup(String),
    /// A bare name used where `tenant/group` is required.
    NeedsTenant,
}

impl Config {
    /// Resolve a group reference written inside tenant `owner` (`None` outside
    /// any tenant, where `tenant/group` is required).
    pub fn resolve_group(
        &self,
        owner: Option<usize>,
        reference: &str,
    ) -> Result<GroupIdx, GroupRefError> {
        let (tenant_idx, group) = match reference.split_once('/') {
            Some((tenant, group)) => {
                let idx = self
                    .tenants
                    .iter()
                    .position(|t| t.name.value == tenant)
                    .ok_or_else(|| GroupRefError::UnknownTenant(tenant.to_string()))?;
                (idx, group)
            }
            None => (owner.ok_or(GroupRefError::NeedsTenant)?, reference),
        };
        let group_idx = self.tenants[tenant_idx]
            .target_groups
            .iter()
            .position(|g| g.name.value == group)
            .ok_or_else(|| {
                GroupRefError::UnknownGroup(format!(
                    "{}/{group}",
                    self.tenants[tenant_idx].name.value
                ))
            })?;
        Ok((tenant_idx, group_idx))
    }

    /// True when tenant `from` may use group `to` (its own, or granted to it).
    pub fn may_use(&self, from: usize, to: GroupIdx) -> bool {
        if from == to.0 {
            return true;
        }
        let owner = &self.tenants[to.0];
        let group = &owner.target_groups[to.1].name.value;
        owner.grants.iter().any(|g| {
            g.tenant.value == self.tenants[from].name.value
                && g.groups.iter().any(|n| &n.value == group)
        })
    }

    /// The listeners a tenant is served on (indices): its `listeners`, or every http/https listener.
    pub fn tenant_listeners(&self, tenant: usize) -> Vec<usize> {
        match &self.tenants[tenant].listeners {
            Some(names) => names
                .iter()
                .filter_map(|n| self.listeners.iter().position(|l| l.name.value == n.value))
                .collect(),
            None => (0..self.listeners.len())
                .filter(|&i| self.listeners[i].protocol.is_http())
                .collect(),
        }
    }
}

/// Check every reference of `cfg`, recording errors in `cx`.
pub fn references(cx: &Collector, cfg: &Config) {
    let zones: HashSet<&str> = cfg.zones.iter().map(|z| z.name.value.as_str()).collect();
    let profiles: HashSet<&str> = cfg.profiles.iter().map(|p| p.name.value.as_str()).collect();
    let services: HashSet<&str> = cfg.services.iter().map(|s| s.name.value.as_str()).collect();
    let zone = |cx: &Collector, z: &Spanned<String>| {
        if !zones.contains(z.value.as_str()) {
            cx.error(
                z.pos,
                format!("zone `{}` is not defined", z.value),
                format!("define it under `zones:` (defined: {})", sorted(&zones)),
            );
        }
    };
    let profile = |cx: &Collector, p: &Option<Spanned<String>>| {
        if let Some(p) = p {
            if !profiles.contains(p.value.as_str()) {
                cx.error(
                    p.pos,
                    format!("profile `{}` is not defined", p.value),
                    format!(
                        "define it under `profiles:` (defined: {})",
                        sorted(&profiles)
                    ),
                );
            }
        }
    };
    let service = |cx: &Collector, s: &Spanned<String>| {
        if !services.contains(s.value.as_str()) {
            cx.error(
                s.pos,
                format!("service `{}` is not defined", s.value),
                "define it under `services:`",
            );
        }
    };

    for flow in &cfg.flows {
        zone(cx, &flow.from);
        flow.to.iter().for_each(|z| zone(cx, z));
    }

    let mut binds: HashMap<std::net::SocketAddr, &str> = HashMap::new();
    if let Some(admin) = &cfg.admin {
        binds.insert(admin.bind.value, "admin");
    }
    for l in &cfg.listeners {
        zone(cx, &l.zone);
        profile(cx, &l.profile);
        // Port 0 asks the kernel for a free port: never a collision.
        let other = if l.bind.value.port() == 0 {
            None
        } else {
            binds.insert(l.bind.value, &l.name.value)
        };
        if let Some(other) = other {
            cx.error(
                l.bind.pos,
                format!(
                    "listener `{}` binds {} like `{other}`",
                    l.name.value, l.bind.value
                ),
                "every listener (and the admin API) needs its own address",
            );
        }
        let targets = l
            .forward
            .iter()
            .chain(l.forward_by_sni.iter().map(|(_, g)| g));
        for g in targets {
            group_ref(cx, cfg, None, g);
        }
    }

    let mut exact_hosts: HashMap<&str, &str> = HashMap::new();
    for (ti, t) in cfg.tenants.iter().enumerate() {
        for h in &t.hosts {
            if let Some(owner) = exact_hosts.insert(&h.value, &t.name.value) {
                let what = if h.value.starts_with("*.") {
                    "wildcard"
                } else {
                    "host"
                };
                if owner == t.name.value {
                    cx.error(
                        h.pos,
                        format!("{what} `{}` is listed twice in tenant `{owner}`", h.value),
                        "remove the duplicate",
                    );
                    continue;
                }
                cx.error(
                    h.pos,
                    format!(
                        "{what} `{}` is claimed by tenants `{owner}` and `{}`",
                        h.value, t.name.value
                    ),
                    "a host belongs to one tenant only; remove one of them",
                );
            }
        }
        if let Some(names) = &t.listeners {
            for n in names {
                match cfg.listeners.iter().find(|l| l.name.value == n.value) {
                    None => cx.error(n.pos, format!("listener `{}` is not defined", n.value), "define it under `listeners:`"),
                    Some(l) if !l.protocol.is_http() => cx.error(
                        n.pos,
                        format!("listener `{}` is {}, tenants route only on http/https listeners", n.value, l.protocol.as_str()),
                        "tcp and tls-passthrough listeners forward with `forward` / `forward_by_sni`",
                    ),
                    Some(_) => {}
                }
            }
        }
        profile(cx, &t.profile);
        for g in &t.target_groups {
            zone(cx, &g.zone);
        }
        let tenant_listeners: HashSet<usize> = cfg.tenant_listeners(ti).into_iter().collect();
        let mut route_names: HashMap<&str, u32> = HashMap::new();
        for r in &t.routes {
            if let Some(first) = route_names.insert(&r.name.value, r.name.pos.line) {
                cx.error(
                    r.name.pos,
                    format!(
                        "route name `{}` is used twice in tenant `{}` (first at line {first})",
                        r.name.value, t.name.value
                    ),
                    "route names are unique within a tenant",
                );
            }
            profile(cx, &r.profile);
            r.matcher.identities.iter().for_each(|s| service(cx, s));
            if let Some(names) = &r.listeners {
                for n in names {
                    let idx = cfg.listeners.iter().position(|l| l.name.value == n.value);
                    match idx {
                        None => cx.error(n.pos, format!("listener `{}` is not defined", n.value), "define it under `listeners:`"),
                        Some(i) if !tenant_listeners.contains(&i) => cx.error(
                            n.pos,
                            format!("route `{}` names listener `{}`, which tenant `{}` is not served on", r.name.value, n.value, t.name.value),
                            "add the listener to the tenant's `listeners`",
                        ),
                        Some(_) => {}
                    }
                }
            }
            if let Action::Forward(legs) = &r.action {
                for leg in legs {
                    if let Some(target) = group_ref(cx, cfg, Some(ti), &leg.group) {
                        if !cfg.may_use(ti, target) {
                            let owner = &cfg.tenants[target.0].name.value;
                            cx.error(
                                leg.group.pos,
                                format!(
                                    "route `{}` of tenant `{}` forwards to `{}`, another tenant's group, without a grant",
                                    r.name.value, t.name.value, leg.group.value
                                ),
                                format!("add `grants: [{{ tenant: {}, groups: [{}] }}]` to tenant `{owner}` if this is intended", t.name.value, cfg.tenants[target.0].target_groups[target.1].name.value),
                            );
                        }
                    }
                }
            }
        }
        for grant in &t.grants {
            if !cfg
                .tenants
                .iter()
                .any(|o| o.name.value == grant.tenant.value)
            {
                cx.error(
                    grant.tenant.pos,
                    format!("grant to unknown tenant `{}`", grant.tenant.value),
                    "name a tenant defined under `tenants:`",
                );
            }
            for g in &grant.groups {
                if !t.target_groups.iter().any(|tg| tg.name.value == g.value) {
                    cx.error(
                        g.pos,
                        format!(
                            "grant names group `{}`, which tenant `{}` does not have",
                            g.value, t.name.value
                        ),
                        "grant only this tenant's own target groups",
                    );
                }
            }
        }
    }

    for rule in &cfg.access {
        group_ref(cx, cfg, None, &rule.group);
        rule.allow.iter().for_each(|s| service(cx, s));
    }
    for inv in &cfg.invariants {
        match inv {
            Invariant::Never { from, to, .. } => {
                zone(cx, from);
                zone(cx, to);
            }
            Invariant::Require { zone: z, .. } => zone(cx, z),
            Invariant::TenantsIsolated { .. } => {}
        }
    }
}

fn group_ref(
    cx: &Collector,
    cfg: &Config,
    owner: Option<usize>,
    r: &Spanned<String>,
) -> Option<GroupIdx> {
    match cfg.resolve_group(owner, &r.value) {
        Ok(idx) => Some(idx),
        Err(GroupRefError::NeedsTenant) => {
            cx.error(
                r.pos,
                format!("group `{}` needs its tenant", r.value),
                "write `tenant/group`",
            );
            None
        }
        Err(GroupRefError::UnknownTenant(t)) => {
            cx.error(
                r.pos,
                format!("group `{}` names unknown tenant `{t}`", r.value),
                "define the tenant under `tenants:`",
            );
            None
        }
        Err(GroupRefError::UnknownGroup(g)) => {
            cx.error(
                r.pos,
                format!("target group `{g}` is not defined"),
                "define it under the tenant's `target_groups:`",
            );
            None
        }
    }
}

fn sorted(set: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = set.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}
