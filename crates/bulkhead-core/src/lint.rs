//! Warnings for configs that are valid but probably not what was meant
//! (`bulkhead check`): shadowed routes, unused groups and flows, routes that
//! no listener may use, overlapping hosts, idle listeners. Lints never change
//! the exit code.

use crate::router::{path_matches, PathMatcher};
use crate::snapshot::{RouteAction, RouteInfo, Snapshot};
use bulkhead_config::Pos;
use std::collections::HashSet;

/// One warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lint {
    /// Where to look.
    pub pos: Pos,
    /// What looks wrong.
    pub message: String,
}

/// Every lint of a snapshot, sorted by position.
pub fn lints(s: &Snapshot) -> Vec<Lint> {
    let mut out = Vec::new();
    shadowed_routes(s, &mut out);
    unused_groups(s, &mut out);
    unused_flows(s, &mut out);
    never_allowed_routes(s, &mut out);
    denied_stream_forwards(s, &mut out);
    overlapping_hosts(s, &mut out);
    idle_listeners(s, &mut out);
    out.sort_by_key(|l| l.pos);
    out
}

/// Does every path matching `later` also match `earlier`?
fn covers(earlier: &PathMatcher, later: &PathMatcher) -> bool {
    match (earlier, later) {
        (PathMatcher::Any, _) => true,
        (PathMatcher::Prefix(p), _) if p.is_empty() => true,
        (PathMatcher::Prefix(p), PathMatcher::Prefix(q)) => {
            **q == **p || (q.starts_with(&**p) && q.as_bytes().get(p.len()) == Some(&b'/'))
        }
        (PathMatcher::Prefix(_), PathMatcher::Exact(e)) => path_matches(earlier, e),
        (PathMatcher::Exact(a), PathMatcher::Exact(b)) => a == b,
        _ => false,
    }
}

fn shadowed_routes(s: &Snapshot, out: &mut Vec<Lint>) {
    for t in &s.tenants {
        for (j, later) in t.routes.iter().enumerate() {
            let by = t.routes[..j].iter().find(|earlier: &&RouteInfo| {
                earlier.matcher.path_only()
                    && covers(&earlier.matcher.path, &later.matcher.path)
                    && later.listeners.is_subset(&earlier.listeners)
            });
            if let Some(earlier) = by {
                out.push(Lint {
                    pos: later.pos,
                    message: format!(
                        "route `{}` of tenant `{}` is shadowed by route `{}` (line {}) and can never match; move it above",
                        later.name, t.name, earlier.name, earlier.pos.line
                    ),
                });
            }
        }
    }
}

fn unused_groups(s: &Snapshot, out: &mut Vec<Lint>) {
    let used: HashSet<u32> = s.edges.iter().map(|e| e.group).collect();
    for (id, g) in s.groups.iter().enumerate() {
        if !used.contains(&(id as u32)) {
            let (t, gi) = g.config_index;
            out.push(Lint {
                pos: s.config.tenants[t].target_groups[gi].name.pos,
                message: format!(
                    "target group `{}` is not reached by any route or listener",
                    g.full_name
                ),
            });
        }
    }
}

fn unused_flows(s: &Snapshot, out: &mut Vec<Lint>) {
    let used: HashSet<(u32, u32)> = s
        .edges
        .iter()
        .filter(|e| e.allowed)
        .map(|e| {
            (
                s.listeners[e.listener as usize].zone,
                s.groups[e.group as usize].zone,
            )
        })
        .collect();
    for f in &s.config.flows {
        let Some(from) = s.zone_id(&f.from.value) else {
            continue;
        };
        for to in &f.to {
            if s.zone_id(&to.value)
                .is_some_and(|to_id| !used.contains(&(from, to_id)))
            {
                out.push(Lint {
                    pos: to.pos,
                    message: format!(
                        "flow from {} to {} is not used by any route or listener",
                        f.from.value, to.value
                    ),
                });
            }
        }
    }
}

fn never_allowed_routes(s: &Snapshot, out: &mut Vec<Lint>) {
    for (ti, t) in s.tenants.iter().enumerate() {
        for (ri, r) in t.routes.iter().enumerate() {
            if r.listeners.is_empty() {
                out.push(Lint {
                    pos: r.pos,
                    message: format!(
                        "route `{}` of tenant `{}` is attached to no listener",
                        r.name, t.name
                    ),
                });
                continue;
            }
            if !matches!(r.action, RouteAction::Forward { .. }) {
                continue;
            }
            let mine = s
                .edges
                .iter()
                .filter(|e| e.tenant == ti as u32 && e.route == Some(ri as u32));
            let mut any = false;
            let mut allowed = false;
            for e in mine {
                any = true;
                allowed |= e.allowed;
            }
            if any && !allowed {
                out.push(Lint {
                    pos: r.pos,
                    message: format!(
                        "route `{}` of tenant `{}` can never be allowed: no flow lets any of its listeners reach its groups (it answers 403)",
                        r.name, t.name
                    ),
                });
            }
        }
    }
}

fn denied_stream_forwards(s: &Snapshot, out: &mut Vec<Lint>) {
    for e in s.edges.iter().filter(|e| e.route.is_none() && !e.allowed) {
        let l = &s.config.listeners[e.listener as usize];
        let pos = l.forward.as_ref().map_or(l.name.pos, |f| f.pos);
        out.push(Lint {
            pos,
            message: format!(
                "{} listener `{}` forwards to `{}`, but {}: every connection is closed",
                l.protocol.as_str(),
                l.name.value,
                s.groups[e.group as usize].full_name,
                e.reason
            ),
        });
    }
}

fn overlapping_hosts(s: &Snapshot, out: &mut Vec<Lint>) {
    for t in crate::invariant::host_takeovers(&s.config) {
        out.push(Lint {
            pos: t.host.pos,
            message: format!(
                "host `{}` of tenant `{}` overlaps wildcard `{}` of tenant `{}` (exact wins; add `tenants_isolated: true` to forbid this)",
                t.host.value, t.tenant, t.wildcard, t.wildcard_tenant
            ),
        });
    }
}

fn idle_listeners(s: &Snapshot, out: &mut Vec<Lint>) {
    for (li, l) in s.listeners.iter().enumerate() {
        if l.protocol.is_http() && !s.tenants.iter().any(|t| t.served_on.contains(li)) {
            out.push(Lint {
                pos: s.config.listeners[li].name.pos,
                message: format!(
                    "listener `{}` serves no tenant: every request gets 404",
                    l.name
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_covers() {
        let p = |s: &str| PathMatcher::Prefix(s.into());
        let e = |s: &str| PathMatcher::Exact(s.into());
        assert!(covers(&p(""), &p("/x")));
        assert!(covers(&p("/a"), &p("/a/b")));
        assert!(!covers(&p("/a"), &p("/ab")));
        assert!(covers(&p("/a"), &e("/a/x")));
        assert!(!covers(&p("/a/b"), &p("/a")));
        assert!(covers(&e("/x"), &e("/x")));
    }
}
