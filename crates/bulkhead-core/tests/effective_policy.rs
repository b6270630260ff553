//! `Snapshot::policy` is a view over the route's, the listener's and the
//! group's policies (DESIGN §2 step 7). Every key it answers must be the one
//! `Policy::or` gives when the three are merged in that order.

use bulkhead_core::{RouteAction, Snapshot};
use std::path::Path;

const YAML: &str = r#"
version: 1
zones: { edge: {} }
flows: [{ from: edge, to: [edge] }]
listeners:
  web: { bind: "127.0.0.1:0", zone: edge, protocol: http, profile: p-listener }
  plain: { bind: "127.0.0.1:0", zone: edge, protocol: http }
profiles:
  p-route:    { headers: { request: { set: { x-from: route-profile } } }, retries: 2 }
  p-tenant:   { timeouts: { first_byte: 300ms }, cache: { ttl: 60s, max_bytes: 1MiB } }
  p-listener: { headers: { request: { set: { x-from: listener } } }, rate_limit: { per_second: 10, burst: 20, key: client_ip }, buffering: false, retries: 3 }
tenants:
  a:
    hosts: [a.test]
    profile: p-tenant
    target_groups:
      app: { zone: edge, targets: ["127.0.0.1:9"], timeouts: { first_byte: 5s } }
      other: { zone: edge, targets: ["127.0.0.1:9"], retries: 1 }
    routes:
      - { name: inline, match: { path_prefix: /inline }, forward: app, profile: p-route, faults: { abort: { status: 503, percent: 1 } } }
      - { name: split, match: { path_prefix: /split }, forward: [{ group: app, weight: 1 }, { group: other, weight: 1 }] }
      - { name: timed, match: { path_prefix: /timed }, forward: other, timeouts: { first_byte: 100ms } }
  b:
    hosts: [b.test]
    target_groups:
      app: { zone: edge, targets: ["127.0.0.1:9"] }
    routes:
      - { name: plain, match: { path_prefix: / }, forward: app, buffering: true }
"#;

#[test]
fn every_key_of_the_view_is_the_merged_policys() {
    let cfg = bulkhead_config::from_str(YAML, "policy.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("config does not load: {e:?}"));
    let snap = Snapshot::compile(cfg).unwrap_or_else(|e| panic!("does not compile: {e:?}"));
    let mut checked = 0;
    for lid in 0..snap.listeners.len() as u32 {
        for (tid, t) in snap.tenants.iter().enumerate() {
            for (rid, r) in t.routes.iter().enumerate() {
                let RouteAction::Forward { legs, .. } = &r.action else {
                    continue;
                };
                let groups = legs.iter().map(|(g, _)| Some(*g)).chain([None]);
                for gid in groups {
                    let view = snap.policy(lid, tid as u32, rid as u32, gid);
                    let merged = r.policy.or(&snap.listeners[lid as usize].policy);
                    let merged = match gid {
                        Some(g) => merged.or(&snap.group_config(g).policy),
                        None => merged,
                    };
                    let at = format!("listener {lid}, {}/{}, group {gid:?}", t.name, r.name);
                    assert_eq!(view.cache(), merged.cache.as_ref(), "cache: {at}");
                    assert_eq!(view.auth(), merged.auth.as_ref(), "auth: {at}");
                    assert_eq!(
                        view.rate_limit(),
                        merged.rate_limit.as_ref(),
                        "rate_limit: {at}"
                    );
                    assert_eq!(view.timeouts(), merged.timeouts.as_ref(), "timeouts: {at}");
                    assert_eq!(view.retries(), merged.retries.as_ref(), "retries: {at}");
                    assert_eq!(view.buffering(), merged.buffering, "buffering: {at}");
                    assert_eq!(view.headers(), merged.headers.as_ref(), "headers: {at}");
                    assert_eq!(view.faults(), merged.faults.as_ref(), "faults: {at}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        2 * (2 + 3 + 2 + 2),
        "every listener × route × group (and none)"
    );
}

/// The index of the item called `name`.
fn index<T>(items: &[T], name: &str, name_of: impl Fn(&T) -> &String) -> u32 {
    let i = items.iter().position(|x| name_of(x) == name);
    i.unwrap_or_else(|| panic!("no {name}")) as u32
}

#[test]
fn precedence_route_then_listener_then_group() {
    let cfg = bulkhead_config::from_str(YAML, "policy.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("config does not load: {e:?}"));
    let snap = Snapshot::compile(cfg).unwrap_or_else(|e| panic!("does not compile: {e:?}"));
    let web = index(&snap.listeners, "web", |l| &l.name);
    let plain = index(&snap.listeners, "plain", |l| &l.name);
    let a = index(&snap.tenants, "a", |t| &t.name) as usize;
    let route = |name: &str| index(&snap.tenants[a].routes, name, |r| &r.name);
    let group = |name: &str| index(&snap.groups, name, |g| &g.full_name);
    let (app, other) = (group("a/app"), group("a/other"));
    let ms = |p: bulkhead_core::EffectivePolicy<'_>| p.timeouts().map(|t| t.first_byte.as_millis());

    // The route's inline key beats its tenant's profile.
    assert_eq!(
        ms(snap.policy(web, a as u32, route("timed"), Some(other))),
        Some(100)
    );
    // The tenant's profile (merged into the route) beats the group.
    assert_eq!(
        ms(snap.policy(web, a as u32, route("inline"), Some(app))),
        Some(300)
    );
    // The route's profile beats the listener's profile.
    let inline = snap.policy(web, a as u32, route("inline"), Some(app));
    let from = inline.headers().map(|h| h.request_set.clone());
    assert_eq!(
        from,
        Some(vec![("x-from".to_string(), "route-profile".to_string())])
    );
    // The listener's profile applies where the route sets nothing…
    assert_eq!(
        snap.policy(web, a as u32, route("split"), Some(app))
            .buffering(),
        Some(false)
    );
    assert!(snap
        .policy(web, a as u32, route("split"), Some(app))
        .rate_limit()
        .is_some());
    // …and not on a listener without one.
    assert_eq!(
        snap.policy(plain, a as u32, route("split"), Some(app))
            .buffering(),
        None
    );
    // The listener's key beats the group's.
    assert_eq!(
        snap.policy(web, a as u32, route("split"), Some(other))
            .retries()
            .map(|r| r.attempts),
        Some(3)
    );
    // The group's own key applies last: `a/other` sets retries, the route does not.
    assert_eq!(
        snap.policy(plain, a as u32, route("split"), Some(other))
            .retries()
            .map(|r| r.attempts),
        Some(1)
    );
    assert_eq!(
        snap.policy(plain, a as u32, route("split"), Some(app))
            .retries(),
        None
    );
    // …but never over the route's profile.
    assert_eq!(
        snap.policy(plain, a as u32, route("inline"), Some(other))
            .retries()
            .map(|r| r.attempts),
        Some(2)
    );
}
