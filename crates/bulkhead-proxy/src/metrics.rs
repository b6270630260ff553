//! Prometheus metrics (`GET /metrics` on the admin API), with
//! `prometheus-client`. Every label comes from the config (listener, zone,
//! tenant, route, group, decision, status class): no paths, no client
//! addresses, so cardinality is bounded by the config's size.
//!
//! Request metrics are taken from the finished access-log line, so the log
//! and the counters can never disagree. Target health and pool state are
//! read from the live upstreams at scrape time.

use crate::access_log::{LogLine, LogName, Name, Names};
use crate::histogram::Latency;
use crate::Generation;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

/// A label from a log line's shared name (`""` when absent): building a
/// label set costs reference counts, not copies.
type Label = Option<Name>;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: Label,
    zone: Label,
    tenant: Label,
    route: Label,
    group: Label,
    decision: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    listener: Label,
    tenant: Label,
    route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    listener: Label,
    zone: Label,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// A per-target gauge rendered at scrape time: name, help, value.
type TargetGauge = (
    &'static str,
    &'static str,
    fn(&crate::balance::TargetState) -> u64,
);

/// The series a request's label set counts into, looked up once per label
/// set: a request then costs one map lookup (foldhash, one lock) instead of
/// a SipHash lookup in each family.
struct Handles {
    requests: Counter,
    denied: Option<Counter>,
    duration: Latency,
    /// The group's time-to-headers histogram, once an upstream answered.
    upstream: Option<Latency>,
    /// The label set and the table its indexed names point into: holding
    /// them keeps the addresses in its [`LabelIdentity`] alive while the
    /// entry exists. Boxed: a lookup reads the key and the handles only.
    _keep: Box<(RequestLabels, Option<Arc<Names>>)>,
}

/// Which label set a log line counts into, by the addresses of its shared
/// names and the indexes of its indexed ones rather than their text:
/// hashing and comparing it reads no name (with 1,000 tenants, the names
/// are rarely in cache). An address names its text while the [`Handles`]
/// entry holds it (the name, or the [`Names`] an index points into); a
/// reload's new names are new addresses, hence new entries into the same
/// series, and [`Metrics::reload`] drops the old entries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LabelIdentity([u64; 9]);

impl LabelIdentity {
    fn of(line: &LogLine) -> Self {
        let address = |p: *const u8| p as usize as u64;
        let name = |n: &Option<Name>| n.as_ref().map_or(0, |n| address(n.as_ptr()));
        // Which name, and what kind of name (one byte each of the packed
        // word after the three).
        let indexed = |n: &Option<LogName>| match n {
            None => (0, 0),
            Some(LogName::Text(t)) => (address(t.as_ptr()), 1),
            Some(LogName::Tenant(t)) => (u64::from(*t), 2),
            Some(LogName::Route(t, r)) => (u64::from(*t) << 32 | u64::from(*r), 3),
            Some(LogName::Group(g)) => (u64::from(*g), 4),
        };
        let (tenant, tenant_kind) = indexed(&line.tenant);
        let (route, route_kind) = indexed(&line.route);
        let (group, group_kind) = indexed(&line.group);
        // The status class follows from the status: its hundreds, plus one.
        let class = line.status.map_or(0, |s| u64::from(s / 100) + 1);
        LabelIdentity([
            name(&line.listener),
            name(&line.zone),
            line.names
                .as_ref()
                .map_or(0, |n| address(Arc::as_ptr(n).cast())),
            tenant,
            route,
            group,
            tenant_kind | route_kind << 8 | group_kind << 16 | class << 24,
            // Static text: address and length, since one literal may be
            // stored inside another.
            address(line.decision.as_ptr()),
            line.decision.len() as u64,
        ])
    }
}

/// Label sets cached before the cache starts over. Every shared name keeps
/// one address, so a config's label sets fit many times over; the bound is
/// for lines whose names are copies (each would add an entry of its own).
const MAX_CACHED: usize = 65_536;

/// All metrics of one proxy.
pub struct Metrics {
    handles: Mutex<HashMap<LabelIdentity, Handles, foldhash::fast::FixedState>>,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    duration: Family<LatencyLabels, Latency>,
    upstream: Family<GroupLabels, Latency>,
    connections: Family<ListenerLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let requests = Family::<RequestLabels, Counter>::default();
        let denied = Family::<DeniedLabels, Counter>::default();
        let duration = Family::<LatencyLabels, Latency>::default();
        let upstream = Family::<GroupLabels, Latency>::default();
        let connections = Family::<ListenerLabels, Gauge>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests (and TCP connections) by decision",
            requests.clone(),
        );
        registry.register(
            "denied",
            "Requests refused before the upstream, by decision",
            denied.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time to the upstream's response headers",
            upstream.clone(),
        );
        registry.register(
            "active_connections",
            "Open downstream connections",
            connections.clone(),
        );
        registry.register("reloads", "Config reloads by result", reloads.clone());
        Metrics {
            handles: Mutex::default(),
            registry,
            requests,
            denied,
            duration,
            upstream,
            connections,
            reloads,
        }
    }
}

/// Decrements the listener's connection gauge when the connection ends.
pub struct ConnectionGauge(Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `2xx`, `4xx`, …; `none` when nothing was sent.
fn status_class(status: Option<u16>) -> &'static str {
    match status.map(|s| s / 100) {
        None => "none",
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        Some(_) => "other",
    }
}

impl Metrics {
    /// Count one finished request or connection.
    pub fn observe(&self, line: &LogLine) {
        let id = LabelIdentity::of(line);
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        if handles.len() >= MAX_CACHED && !handles.contains_key(&id) {
            // Only the cache: the counts live in the families.
            handles.clear();
        }
        let h = handles.entry(id).or_insert_with(|| {
            self.handles_for(
                RequestLabels {
                    listener: line.listener.clone(),
                    zone: line.zone.clone(),
                    tenant: line.name(&line.tenant).cloned(),
                    route: line.name(&line.route).cloned(),
                    group: line.name(&line.group).cloned(),
                    decision: line.decision,
                    status_class: status_class(line.status),
                },
                line.names.clone(),
            )
        });
        h.requests.inc();
        if let Some(denied) = &h.denied {
            denied.inc();
        }
        h.duration.observe(line.duration_ms / 1000.0);
        if let (Some(ms), Some(_)) = (line.upstream_ms, &line.group) {
            if h.upstream.is_none() {
                // The group's name is looked up once per label set, not
                // per request.
                h.upstream = line.name(&line.group).map(|group| {
                    self.upstream
                        .get_or_create(&GroupLabels {
                            group: group.clone(),
                        })
                        .clone()
                });
            }
            if let Some(upstream) = &h.upstream {
                upstream.observe(ms / 1000.0);
            }
        }
    }

    /// The series one label set counts into, from the families.
    fn handles_for(&self, key: RequestLabels, names: Option<Arc<Names>>) -> Handles {
        let denied = !matches!(key.decision, "forward" | "redirect" | "respond");
        Handles {
            requests: self.requests.get_or_create(&key).clone(),
            denied: denied.then(|| {
                self.denied
                    .get_or_create(&DeniedLabels {
                        listener: key.listener.clone(),
                        zone: key.zone.clone(),
                        decision: key.decision,
                    })
                    .clone()
            }),
            duration: self
                .duration
                .get_or_create(&LatencyLabels {
                    listener: key.listener.clone(),
                    tenant: key.tenant.clone(),
                    route: key.route.clone(),
                })
                .clone(),
            // Made on the first upstream response.
            upstream: None,
            _keep: Box::new((key, names)),
        }
    }

    /// A connection was accepted on `listener`.
    pub fn connection_opened(&self, listener: &str) -> ConnectionGauge {
        let g = self
            .connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .clone();
        g.inc();
        ConnectionGauge(g)
    }

    /// Count a reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok {
            // The new generation's names are new addresses: the entries of
            // the old ones would only keep them alive.
            self.handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition, with the live target state of `generation`.
    pub fn render(&self, generation: &Generation, dropped_log_lines: u64) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        let groups = generation.upstreams.all();
        let gauges: [TargetGauge; 3] = [
            (
                "target_healthy",
                "Target passes its health checks (1) or not (0).",
                |t| u64::from(t.healthy.load(Ordering::Relaxed)),
            ),
            (
                "target_drained",
                "Target drained by an operator (1) or not (0).",
                |t| u64::from(t.drained.load(Ordering::Relaxed)),
            ),
            (
                "target_in_flight",
                "Requests in flight to the target.",
                |t| t.in_flight.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP bulkhead_{name} {help}\n# TYPE bulkhead_{name} gauge"
            );
            for g in groups {
                for t in &g.targets {
                    let _ = writeln!(
                        out,
                        "bulkhead_{name}{{group=\"{}\",target=\"{}\"}} {}",
                        g.full_name,
                        t.address,
                        value(t)
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP bulkhead_group_in_flight Requests in flight to the group (its max_requests bulkhead).\n# TYPE bulkhead_group_in_flight gauge");
        for g in groups {
            let _ = writeln!(
                out,
                "bulkhead_group_in_flight{{group=\"{}\"}} {}",
                g.full_name,
                g.in_flight()
            );
        }
        let _ = writeln!(out, "# HELP bulkhead_access_log_dropped Access-log lines dropped because the writer fell behind.\n# TYPE bulkhead_access_log_dropped counter\nbulkhead_access_log_dropped_total {dropped_log_lines}");
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(tenant: &str) -> Arc<Names> {
        Arc::new(Names {
            zones: vec!["public".into()],
            tenants: vec![tenant.into()],
            routes: vec![vec!["site".into()]],
            groups: vec![format!("{tenant}/web").into()],
        })
    }

    fn forwarded(names: &Arc<Names>, listener: &Name) -> LogLine {
        LogLine {
            listener: Some(listener.clone()),
            tenant: Some(LogName::Tenant(0)),
            route: Some(LogName::Route(0, 0)),
            group: Some(LogName::Group(0)),
            decision: "forward",
            status: Some(200),
            upstream_ms: Some(1.0),
            names: Some(names.clone()),
            ..LogLine::default()
        }
    }

    #[test]
    fn the_same_indexes_in_two_generations_count_into_each_generations_names() {
        let metrics = Metrics::default();
        let listener = Name::from("web");
        let (before, after) = (table("acme"), table("globex"));
        for _ in 0..3 {
            metrics.observe(&forwarded(&before, &listener));
        }
        metrics.reload(true);
        metrics.observe(&forwarded(&after, &listener));
        // A request of the old generation that ends after the reload.
        metrics.observe(&forwarded(&before, &listener));
        let count = |tenant: &str| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    listener: Some(listener.clone()),
                    zone: None,
                    tenant: Some(tenant.into()),
                    route: Some("site".into()),
                    group: Some(format!("{tenant}/web").into()),
                    decision: "forward",
                    status_class: "2xx",
                })
                .get()
        };
        assert_eq!((count("acme"), count("globex")), (4, 1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &metrics.registry)
            .expect("encodes");
        assert!(
            text.contains(r#"bulkhead_upstream_duration_seconds_count{group="globex/web"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bulkhead_upstream_duration_seconds_count{group="acme/web"} 4"#),
            "{text}"
        );
    }

    #[test]
    fn names_copied_per_line_neither_grow_the_cache_without_bound_nor_lose_counts() {
        let metrics = Metrics::default();
        let lines = MAX_CACHED + 10;
        for _ in 0..lines {
            // A fresh copy of the name each time: a new address, a new entry.
            metrics.observe(&LogLine {
                listener: Some(Name::from("web")),
                decision: "deny",
                ..LogLine::default()
            });
        }
        let cached = metrics.handles.lock().map(|h| h.len()).unwrap_or(0);
        assert!(cached <= MAX_CACHED, "{cached} entries cached");
        let series = RequestLabels {
            listener: Some(Name::from("web")),
            zone: None,
            tenant: None,
            route: None,
            group: None,
            decision: "deny",
            status_class: status_class(None),
        };
        assert_eq!(metrics.requests.get_or_create(&series).get(), lines as u64);
    }
}
