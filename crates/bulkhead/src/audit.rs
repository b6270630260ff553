//! `bulkhead audit -c FILE ACCESS_LOG` (DESIGN §6): replay an access log
//! (DESIGN §5) against a config with the same `decide()` the proxy runs, and
//! report every line whose decision, route or group the config would not
//! reproduce.
//!
//! What a log line holds is not the whole request: request headers, JWT
//! claims and tokens, basic credentials are not logged. A line whose route
//! needs such facts cannot be replayed; for it audit checks instead that the
//! route still exists, is attached to the logged listener and may reach the
//! logged group (flow and access list), and says so.

use crate::output;
use anyhow::{Context, Result};
use bulkhead_config::Auth;
use bulkhead_core::suite::Outcome;
use bulkhead_core::{
    Credentials, DecisionKind, HostHeader, HttpVersion, NoHeaders, RouteAction, Snapshot,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `audit` flags.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The config file.
    #[arg(short, long)]
    config: PathBuf,
    /// The access log (one JSON object per line, as `bulkhead run` writes it).
    access_log: PathBuf,
}

/// Run `audit`: exit 0 when every replayable line is reproduced, 1 on any
/// drift or malformed line (or an invalid config), 2 when the log cannot be read.
pub fn run(args: &AuditArgs) -> Result<ExitCode> {
    let Some(snapshot) = output::load_or_report(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let file = std::fs::File::open(&args.access_log)
        .with_context(|| format!("cannot read the access log {}", args.access_log.display()))?;
    let report = audit(&snapshot, std::io::BufReader::new(file))
        .with_context(|| format!("cannot read the access log {}", args.access_log.display()))?;
    print!("{}", report.render(&args.access_log));
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The fields of a log line audit reads (others are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogRecord {
    listener: Option<String>,
    client: Option<String>,
    tenant: Option<String>,
    route: Option<String>,
    group: Option<String>,
    decision: Option<String>,
    status: Option<u16>,
    method: Option<String>,
    host: Option<String>,
    path: Option<String>,
    query: Option<String>,
    tls: Option<TlsRecord>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TlsRecord {
    sni: Option<String>,
    identity: Option<String>,
}

/// What became of one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The config reproduces the logged decision, route and group.
    Matching,
    /// It does not.
    Drift {
        /// What the config gives now, and why.
        now: String,
    },
    /// The line's route needs facts the log does not hold; the route is still reachable.
    NotReplayable {
        /// Which facts, and what was checked.
        why: String,
    },
}

/// One replayed line.
#[derive(Clone, Debug)]
pub struct LineResult {
    /// Line number (1-based).
    pub line: usize,
    /// `tenant/route`, `(connection) LISTENER` or `(no route)`.
    pub key: String,
    /// The logged decision, route and group, for people.
    pub logged: String,
    /// The request, for people.
    pub request: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// Counts of one row of the per-route table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Lines replayed (matching + drifting + not replayable).
    pub replayed: usize,
    /// Reproduced.
    pub matching: usize,
    /// Not reproduced.
    pub drifting: usize,
    /// Route needs facts the log does not hold; still reachable.
    pub not_replayable: usize,
}

/// The audit of a whole log.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every replayed line.
    pub lines: Vec<LineResult>,
    /// Lines that are not JSON log lines: (line, why).
    pub malformed: Vec<(usize, String)>,
    /// Lines a log cannot replay, by decision (`tls_rejected`, …).
    pub skipped: BTreeMap<String, usize>,
}

impl Report {
    /// True when some line drifted or was malformed.
    pub fn failed(&self) -> bool {
        !self.malformed.is_empty() || self.drifting() > 0
    }

    /// Lines that drifted.
    pub fn drifting(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l.verdict, Verdict::Drift { .. }))
            .count()
    }

    /// Counts per route key, sorted by key.
    pub fn per_route(&self) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for l in &self.lines {
            let c = out.entry(l.key.clone()).or_default();
            c.replayed += 1;
            match l.verdict {
                Verdict::Matching => c.matching += 1,
                Verdict::Drift { .. } => c.drifting += 1,
                Verdict::NotReplayable { .. } => c.not_replayable += 1,
            }
        }
        out
    }

    /// The report as printed.
    pub fn render(&self, log: &Path) -> String {
        let log = log.display();
        let mut out = String::new();
        for (line, why) in &self.malformed {
            let _ = writeln!(out, "{log}:{line}: malformed: {why}");
        }
        for l in &self.lines {
            if let Verdict::Drift { now } = &l.verdict {
                let _ = writeln!(
                    out,
                    "{log}:{}: logged {}, config now gives {now} — {}",
                    l.line, l.logged, l.request
                );
            }
        }
        // Not-replayable lines, once per route and reason.
        let mut notes: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
        for l in &self.lines {
            if let Verdict::NotReplayable { why } = &l.verdict {
                let e = notes.entry((&l.key, why)).or_insert((l.line, 0));
                e.1 += 1;
            }
        }
        for ((key, why), (first, n)) in &notes {
            let _ = writeln!(
                out,
                "{log}:{first}: route {key}: {why} ({n} line{})",
                if *n == 1 { "" } else { "s" }
            );
        }
        let rows = self.per_route();
        if !rows.is_empty() {
            let width = rows
                .keys()
                .map(|k| k.chars().count())
                .max()
                .unwrap_or(5)
                .max(5);
            let _ = writeln!(
                out,
                "\n{:<width$}  {:>8}  {:>8}  {:>8}  {:>14}",
                "route", "replayed", "matching", "drifting", "not replayable"
            );
            for (key, c) in &rows {
                let _ = writeln!(
                    out,
                    "{key:<width$}  {:>8}  {:>8}  {:>8}  {:>14}",
                    c.replayed, c.matching, c.drifting, c.not_replayable
                );
            }
            out.push('\n');
        }
        let total: Counts = rows.values().fold(Counts::default(), |mut a, c| {
            a.replayed += c.replayed;
            a.matching += c.matching;
            a.drifting += c.drifting;
            a.not_replayable += c.not_replayable;
            a
        });
        let skipped: usize = self.skipped.values().sum();
        let skipped_detail = if skipped == 0 {
            String::new()
        } else {
            format!(
                " ({})",
                self.skipped
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            out,
            "{} line{} replayed: {} matching, {} drifting, {} not replayable (route still reachable); {skipped} skipped{skipped_detail}; {} malformed — {}",
            total.replayed,
            if total.replayed == 1 { "" } else { "s" },
            total.matching,
            total.drifting,
            total.not_replayable,
            self.malformed.len(),
            if self.failed() { "DRIFT" } else { "ok" }
        );
        out
    }
}

/// Replay every line of `log` against `snapshot`.
pub fn audit(snapshot: &Snapshot, log: impl BufRead) -> std::io::Result<Report> {
    let mut report = Report::default();
    for (i, line) in log.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: LogRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                report
                    .malformed
                    .push((n, format!("not a JSON log line: {e}")));
                continue;
            }
        };
        match replay_line(snapshot, &record, n) {
            Replay::Malformed(why) => report.malformed.push((n, why)),
            Replay::Skipped(why) => *report.skipped.entry(why).or_default() += 1,
            Replay::Done(r) => report.lines.push(r),
        }
    }
    Ok(report)
}

enum Replay {
    Malformed(String),
    Skipped(String),
    Done(LineResult),
}

/// What a line says happened, reduced to what audit compares.
struct Logged<'a> {
    /// As compared: a logged `unavailable`, `upstream_error`, `timeout`,
    /// `rate_limited` (or a `bad_request` after routing) was a forward.
    kind: DecisionKind,
    tenant: Option<&'a str>,
    route: Option<&'a str>,
    group: Option<&'a str>,
}

fn replay_line(snap: &Snapshot, rec: &LogRecord, n: usize) -> Replay {
    let Some(decision) = rec.decision.as_deref() else {
        return Replay::Malformed("no `decision` field".into());
    };
    let Some(logged_kind) = DecisionKind::parse(decision) else {
        return Replay::Malformed(format!("unknown decision `{decision}`"));
    };
    let Some(listener) = rec.listener.as_deref() else {
        return Replay::Malformed("no `listener` field".into());
    };
    let http = rec.method.is_some();
    let after_forward = matches!(
        logged_kind,
        DecisionKind::Unavailable
            | DecisionKind::UpstreamError
            | DecisionKind::Timeout
            | DecisionKind::RateLimited
    ) || (logged_kind == DecisionKind::BadRequest && http);
    match logged_kind {
        DecisionKind::TlsRejected | DecisionKind::ClientTimeout => {
            return Replay::Skipped(decision.into())
        }
        DecisionKind::BadRequest if !http => {
            return Replay::Skipped("parser-level bad_request".into())
        }
        // Refused for framing or bytes the log does not hold, before routing.
        DecisionKind::BadRequest if rec.group.is_none() => {
            return Replay::Skipped("bad_request before routing".into())
        }
        // The proxy's own trouble with no group chosen (a listener removed by
        // a reload while its connection lived): no decision of the config.
        _ if after_forward && rec.group.is_none() => {
            return Replay::Skipped(format!("{decision} without a group"))
        }
        _ => {}
    }
    let logged = Logged {
        kind: if after_forward {
            DecisionKind::Forward
        } else {
            logged_kind
        },
        tenant: rec.tenant.as_deref(),
        route: rec.route.as_deref(),
        group: rec.group.as_deref(),
    };
    let source = rec.client.as_deref().and_then(parse_ip);
    let tls = rec.tls.as_ref();
    let sni = tls.and_then(|t| t.sni.as_deref());
    let creds = credentials(tls.and_then(|t| t.identity.as_deref()));
    let logged_text = format!(
        "{}{} route={} group={}",
        decision,
        match rec.status {
            Some(s) if logged.kind != DecisionKind::Forward => format!(" {s}"),
            _ => String::new(),
        },
        rec.route.as_deref().unwrap_or("-"),
        rec.group.as_deref().unwrap_or("-"),
    );
    let from = format!(
        "on {listener} from {}",
        source.map_or("(unknown)".into(), |ip| ip.to_string())
    );

    let (got, key, request) = if let Some(method) = rec.method.as_deref() {
        let path = rec.path.as_deref().unwrap_or("/");
        let target = match rec.query.as_deref() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let d = snap.decide(&bulkhead_core::Request {
            listener,
            source,
            sni,
            version: HttpVersion::Http11,
            method,
            target: &target,
            host: rec
                .host
                .as_deref()
                .map_or(HostHeader::Missing, HostHeader::One),
            headers: &NoHeaders,
            credentials: &creds,
            pick: 0,
            trace: false,
        });
        let key = match (rec.tenant.as_deref(), rec.route.as_deref()) {
            (Some(t), Some(r)) => format!("{t}/{r}"),
            (None, Some(r)) => r.to_string(),
            _ => "(no route)".to_string(),
        };
        let request = format!(
            "{method} {}{target} {from}",
            rec.host.as_deref().unwrap_or("(no host)")
        );
        (snap.outcome(&d), key, request)
    } else {
        let key = format!("(connection) {listener}");
        let request = format!(
            "connection{} {from}",
            sni.map_or(String::new(), |s| format!(" (SNI {s})"))
        );
        let http_listener = snap
            .listener_id(listener)
            .map(|l| &snap.listeners[l as usize])
            .filter(|l| l.protocol.is_http());
        let got = match http_listener {
            // An http(s) listener decides connections only by allow_sources.
            Some(l) => {
                if l.allow_sources.is_empty()
                    || source.is_some_and(|ip| l.allow_sources.iter().any(|n| n.contains(&ip)))
                {
                    Outcome {
                        decision: DecisionKind::Forward,
                        status: None,
                        tenant: None,
                        route: None,
                        group: None,
                        reason: "its source is inside allow_sources".into(),
                    }
                } else {
                    let d = snap.decide_stream(listener, source, sni, &creds);
                    snap.outcome(&d)
                }
            }
            None => snap.outcome(&snap.decide_stream(listener, source, sni, &creds)),
        };
        (got, key, request)
    };

    let verdict = if reproduces(snap, &logged, &got) {
        Verdict::Matching
    } else {
        unreplayable(snap, &logged, &got, listener, source, &creds).unwrap_or_else(|| {
            Verdict::Drift {
                now: describe(&got),
            }
        })
    };
    Replay::Done(LineResult {
        line: n,
        key,
        logged: logged_text,
        request,
        verdict,
    })
}

/// `ip:port`, `[v6]:port` or a bare address.
fn parse_ip(client: &str) -> Option<IpAddr> {
    client
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| client.parse::<IpAddr>())
        .ok()
}

/// The verified client-certificate identity a line logs: a `spiffe://` id is
/// a URI SAN, anything else a DNS SAN.
fn credentials(identity: Option<&str>) -> Credentials {
    let mut c = Credentials::default();
    if let Some(id) = identity.filter(|s| !s.is_empty()) {
        if id.starts_with("spiffe://") {
            c.cert_uris.push(id.to_string());
        } else {
            c.cert_dns.push(id.to_ascii_lowercase());
        }
        c.mtls = true;
    }
    c
}

/// Same decision, route (and tenant) and group; for a split, any leg of the
/// matched route passes.
fn reproduces(snap: &Snapshot, logged: &Logged<'_>, got: &Outcome) -> bool {
    if got.decision != logged.kind {
        return false;
    }
    let same_route = match logged.route {
        None => got.route.is_none(),
        Some(r) => {
            got.route.as_deref() == Some(r)
                && (logged.tenant.is_none() || got.tenant.as_deref() == logged.tenant)
        }
    };
    let same_group = match logged.group {
        None => got.group.is_none(),
        Some(g) => snap.split_contains(got, g),
    };
    same_route && same_group
}

fn describe(got: &Outcome) -> String {
    if got.decision == DecisionKind::Forward && got.group.is_none() {
        // An http(s) listener's connection, accepted: its requests are not in the line.
        return format!("accept ({})", got.reason);
    }
    let mut s = got.decision.as_str().to_string();
    if let Some(status) = got.status {
        let _ = write!(s, " {status}");
    }
    let _ = write!(
        s,
        " route={} group={}",
        got.route.as_deref().unwrap_or("-"),
        got.group.as_deref().unwrap_or("-")
    );
    if !got.reason.is_empty() && got.reason != "forwarded" {
        let _ = write!(s, " ({})", got.reason);
    }
    s
}

/// When the replay differs because the logged route needs facts the log
/// does not hold: `Some(NotReplayable)` if the route is still reachable,
/// `Some(Drift)` if not; `None` when the difference is a plain drift.
fn unreplayable(
    snap: &Snapshot,
    logged: &Logged<'_>,
    got: &Outcome,
    listener: &str,
    source: Option<IpAddr>,
    creds: &Credentials,
) -> Option<Verdict> {
    let route_name = logged.route?;
    let tenant_name = logged.tenant?;
    let tid = snap.tenant_id(tenant_name)?;
    let t = &snap.tenants[tid as usize];
    let ri = t.routes.iter().position(|r| r.name == route_name)?;
    // The replay matched an earlier route of the same tenant: that route
    // matches with fewer facts, so it would match with all of them too.
    if got.tenant.as_deref() != Some(tenant_name) {
        return None;
    }
    if let Some(gr) = got.route.as_deref() {
        if t.routes
            .iter()
            .position(|r| r.name == gr)
            .is_some_and(|g| g < ri)
        {
            return None;
        }
    }
    let lid = snap.listener_id(listener)?;
    let route = &t.routes[ri];
    let cfg_route = &snap.config.tenants[tid as usize].routes[ri];
    let l = &snap.listeners[lid as usize];
    let gid = logged.group.and_then(|g| snap.group_id(g));
    let mut facts: Vec<&str> = Vec::new();
    let m = &cfg_route.matcher;
    let mut matches_on: Vec<&str> = Vec::new();
    if !m.headers.is_empty() {
        matches_on.push("headers");
    }
    if !m.claims.is_empty() {
        matches_on.push("claims");
    }
    if !m.identities.is_empty() {
        matches_on.push("identities");
    }
    let matches_text = format!("route matches on {}", matches_on.join("/"));
    if !matches_on.is_empty() {
        facts.push(&matches_text);
    }
    match route.policy.auth.as_ref().or(l.policy.auth.as_ref()) {
        Some(Auth::Jwt(_)) => facts.push("route needs a JWT"),
        Some(Auth::Basic { .. }) => facts.push("route needs basic credentials"),
        _ => {}
    }
    let jwt_access = gid
        .and_then(|g| snap.groups[g as usize].access.as_ref())
        .is_some_and(|allowed| {
            allowed
                .iter()
                .any(|s| snap.services[*s as usize].jwt_subject.is_some())
        });
    if jwt_access {
        facts.push("the group's access list names JWT subjects");
    }
    if facts.is_empty() {
        return None;
    }
    let why = facts.join("; ");
    let reachable = reachable(snap, logged, lid, tid, ri, gid, source, creds);
    Some(match reachable {
        Ok(how) => Verdict::NotReplayable {
            why: format!("not replayable ({why}); {how}"),
        },
        Err(broken) => Verdict::Drift {
            now: format!("route {tenant_name}/{route_name} unreachable: {broken} (the line itself is not replayable: {why})"),
        },
    })
}

/// Could the logged route still give the logged decision from this
/// listener? `Ok(what was checked)` or `Err(what breaks it)`.
#[allow(clippy::too_many_arguments)]
fn reachable(
    snap: &Snapshot,
    logged: &Logged<'_>,
    lid: u32,
    tid: u32,
    ri: usize,
    gid: Option<u32>,
    source: Option<IpAddr>,
    creds: &Credentials,
) -> Result<String, String> {
    let t = &snap.tenants[tid as usize];
    let route = &t.routes[ri];
    let l = &snap.listeners[lid as usize];
    if !l.protocol.is_http()
        || !t.served_on.contains(lid as usize)
        || !route.listeners.contains(lid as usize)
    {
        return Err(format!("not attached to listener {}", l.name));
    }
    let legs = match &route.action {
        RouteAction::Forward { legs, .. } => Some(legs),
        _ => None,
    };
    let action_word = match &route.action {
        RouteAction::Forward { .. } => "forward",
        RouteAction::Redirect { .. } => "redirect",
        RouteAction::Respond { .. } => "respond",
        RouteAction::Deny { .. } => "deny",
    };
    let Some(group_name) = logged.group else {
        return match logged.kind {
            DecisionKind::Redirect | DecisionKind::Respond | DecisionKind::Deny
                if action_word == logged.kind.as_str() =>
            {
                Ok(format!("route still answers {action_word} on {}", l.name))
            }
            _ => Err(format!("it now does {action_word}")),
        };
    };
    let Some(g) = gid else {
        return Err(format!("group {group_name} no longer exists"));
    };
    if !legs.is_some_and(|legs| legs.iter().any(|(x, _)| *x == g)) {
        return Err(format!("it no longer forwards to {group_name}"));
    }
    match logged.kind {
        DecisionKind::Forward => {}
        DecisionKind::Deny | DecisionKind::Unauthorized => {
            return Ok(format!("route still leads to {group_name} from {}", l.name))
        }
        other => return Err(format!("a route does not give {}", other.as_str())),
    }
    let edge = snap.edges.iter().find(|e| {
        e.listener == lid && e.tenant == tid && e.route == Some(ri as u32) && e.group == g
    });
    match edge {
        Some(e) if e.allowed => {}
        Some(e) => {
            return Err(format!(
                "the edge {} -> {group_name} is denied ({})",
                l.name, e.reason
            ))
        }
        None => return Err(format!("no edge {} -> {group_name}", l.name)),
    }
    if let Some(allowed) = &snap.groups[g as usize].access {
        let services = snap.caller_services(source, creds);
        let admitted = services.iter().any(|s| allowed.contains(s));
        let unknowable = allowed
            .iter()
            .any(|s| snap.services[*s as usize].jwt_subject.is_some());
        if !admitted && !unknowable {
            return Err(format!(
                "the access list of {group_name} does not admit the caller"
            ));
        }
    }
    Ok(format!(
        "route still reachable from {} to {group_name}",
        l.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
version: 1
zones: { public: {}, admin: {}, internal: {} }
flows: [{ from: public, to: [public] }, { from: internal, to: [internal] }]
listeners:
  web: { bind: "127.0.0.1:8080", zone: public, protocol: http }
  pg: { bind: "127.0.0.1:15432", zone: internal, protocol: tcp, forward: acme/db }
  ops: { bind: "127.0.0.1:8081", zone: public, protocol: http, allow_sources: ["127.0.0.0/8"] }
tenants:
  acme:
    hosts: [acme.test]
    listeners: [web]
    target_groups:
      app: { zone: public, targets: ["127.0.0.1:9001"] }
      canary: { zone: public, targets: ["127.0.0.1:9002"] }
      panel: { zone: admin, targets: ["127.0.0.1:9003"] }
      db: { zone: internal, targets: ["127.0.0.1:5432"] }
    routes:
      - { name: admin, match: { path_prefix: /admin/ }, forward: panel }
      - { name: api, match: { path_prefix: /api/, headers: { x-api-version: "2" } }, forward: app }
      - { name: split, match: { path_prefix: /split/ }, forward: [{ group: app, weight: 50 }, { group: canary, weight: 50 }] }
      - { name: old, match: { path_exact: /old }, redirect: { location: /new } }
      - { name: site, match: { path_prefix: / }, forward: app }
"#;

    fn snap() -> Snapshot {
        let cfg = bulkhead_config::from_str(CONFIG, "t.yaml", Path::new(".")).expect("valid");
        Snapshot::compile(cfg).expect("compiles")
    }

    fn http_line(decision: &str, route: &str, group: Option<&str>, path: &str) -> String {
        serde_json::json!({
            "ts": "2025-01-01T00:00:00.000Z", "listener": "web", "zone": "public",
            "client": "203.0.113.9:5555", "tenant": "acme", "route": route, "group": group,
            "decision": decision, "status": null, "method": "GET", "host": "acme.test",
            "path": path, "query": null, "tls": null
        })
        .to_string()
    }

    fn run_on(lines: &[String]) -> Report {
        audit(&snap(), lines.join("\n").as_bytes()).expect("reads")
    }

    #[test]
    fn reproduced_lines_match() {
        let r = run_on(&[
            http_line("forward", "site", Some("acme/app"), "/shop"),
            http_line("redirect", "old", None, "/old"),
            http_line("deny", "admin", Some("acme/panel"), "/admin/users"),
            // A split: the second leg passes too.
            http_line("forward", "split", Some("acme/canary"), "/split/x"),
            // Upstream trouble after a forward compares as a forward.
            http_line("upstream_error", "site", Some("acme/app"), "/x"),
        ]);
        assert!(!r.failed(), "{}", r.render(Path::new("log")));
        assert_eq!(r.lines.len(), 5);
    }

    #[test]
    fn a_forward_the_config_now_denies_drifts() {
        let r = run_on(&[http_line(
            "forward",
            "admin",
            Some("acme/panel"),
            "/admin/users",
        )]);
        assert!(r.failed());
        let text = r.render(Path::new("access.log"));
        assert!(
            text.contains("access.log:1: logged forward route=admin group=acme/panel, config now gives deny 403 route=admin group=acme/panel (no flow from public to admin)"),
            "{text}"
        );
    }

    #[test]
    fn header_routes_are_not_replayed_but_checked() {
        let r = run_on(&[http_line("forward", "api", Some("acme/app"), "/api/items")]);
        assert!(!r.failed(), "{}", r.render(Path::new("log")));
        assert!(matches!(
            &r.lines[0].verdict,
            Verdict::NotReplayable { why } if why.contains("headers") && why.contains("still reachable")
        ));
        // The same line logged against a group the route no longer uses drifts.
        let r = run_on(&[http_line(
            "forward",
            "api",
            Some("acme/canary"),
            "/api/items",
        )]);
        assert!(r.failed());
    }

    #[test]
    fn connections_and_skips() {
        let tcp = serde_json::json!({"listener": "pg", "client": "10.0.0.1:4000", "tenant": "acme",
            "route": null, "group": "acme/db", "decision": "forward", "method": null})
        .to_string();
        let refused = serde_json::json!({"listener": "web", "client": "10.0.0.1:4000",
            "decision": "tls_rejected", "method": null})
        .to_string();
        let parser = serde_json::json!({"listener": "web", "client": "10.0.0.1:4000",
            "decision": "bad_request", "status": 400, "method": null})
        .to_string();
        let r = run_on(&[tcp, String::new(), refused, parser, "not json".into()]);
        assert_eq!(r.lines.len(), 1);
        assert_eq!(r.lines[0].verdict, Verdict::Matching);
        assert_eq!(r.skipped.values().sum::<usize>(), 2);
        assert_eq!(r.malformed.len(), 1);
        assert_eq!(r.malformed[0].0, 5);
        assert!(r.failed());
    }

    #[test]
    fn connections_refused_at_accept() {
        let line = |client: &str| {
            serde_json::json!({"listener": "ops", "client": client, "decision": "deny",
                "status": null, "method": null})
            .to_string()
        };
        let r = run_on(&[line("203.0.113.9:1000")]);
        assert_eq!(r.lines[0].verdict, Verdict::Matching);
        // Logged as refused, but the config now accepts that source.
        let r = run_on(&[line("127.0.0.1:1000")]);
        assert!(r.failed());
        let text = r.render(Path::new("log"));
        assert!(
            text.contains("config now gives accept (its source is inside allow_sources)"),
            "{text}"
        );
    }

    #[test]
    fn identities_from_the_log() {
        let c = credentials(Some("spiffe://corp.test/billing"));
        assert_eq!(c.cert_uris, ["spiffe://corp.test/billing"]);
        assert!(c.mtls);
        let c = credentials(Some("Billing.Internal"));
        assert_eq!(c.cert_dns, ["billing.internal"]);
        assert!(!credentials(None).mtls);
        assert_eq!(parse_ip("[::1]:80"), Some("::1".parse().expect("ip")));
        assert_eq!(parse_ip("10.1.2.3"), Some("10.1.2.3".parse().expect("ip")));
    }
}
