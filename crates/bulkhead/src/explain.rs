//! `bulkhead explain`: the decision of DESIGN §2 for one request, step by step.

use crate::output;
use anyhow::{bail, Context, Result};
use bulkhead_config::cases::CaseRequest;
use bulkhead_config::Spanned;
use bulkhead_core::{Decision, HostHeader, HttpVersion, Request, Snapshot};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// `explain` flags (DESIGN §6).
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The config file.
    #[arg(short, long)]
    config: PathBuf,
    /// The listener the request arrives on.
    #[arg(long)]
    listener: String,
    /// The Host header (omit to send none).
    #[arg(long)]
    host: Option<String>,
    /// The request-target: a path (`/a/b?q`) or an absolute URL.
    #[arg(long)]
    path: String,
    /// The method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The client IP.
    #[arg(long)]
    source: Option<String>,
    /// The TLS SNI (https listeners; default: the host, as a client sends; "" for none).
    #[arg(long)]
    sni: Option<String>,
    /// A service name, or a raw verified id (`spiffe://…`, a SAN, a JWT subject).
    #[arg(long)]
    identity: Option<String>,
    /// A request header `name:value` (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// A verified JWT claim `name=value` (repeatable).
    #[arg(long = "claim", value_name = "K=V")]
    claims: Vec<String>,
    /// The query string (without `?`).
    #[arg(long)]
    query: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct StepJson<'a> {
    step: &'a str,
    outcome: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct ExplainJson<'a> {
    decision: &'a str,
    status: Option<u16>,
    listener: Option<&'a str>,
    zone: Option<&'a str>,
    tenant: Option<&'a str>,
    route: Option<&'a str>,
    group: Option<&'a str>,
    group_zone: Option<&'a str>,
    normalized_path: Option<&'a str>,
    reason: &'a str,
    steps: Vec<StepJson<'a>>,
}

fn pair(s: &str, sep: char, what: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once(sep)
        .with_context(|| format!("{what} `{s}` must be written `name{sep}value`"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Run `explain`.
pub fn run(args: &ExplainArgs) -> Result<ExitCode> {
    let Some(snapshot) = output::load_or_report(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let Some(lid) = snapshot.listener_id(&args.listener) else {
        let names: Vec<&str> = snapshot.listeners.iter().map(|l| l.name.as_str()).collect();
        bail!(
            "no listener named `{}` (listeners: {})",
            args.listener,
            names.join(", ")
        );
    };
    if let Some(s) = &args.source {
        s.parse::<std::net::IpAddr>()
            .with_context(|| format!("--source `{s}` is not an IP address"))?;
    }
    let case = CaseRequest {
        listener: Spanned::new(args.listener.clone(), Default::default()),
        host: args.host.clone(),
        path: args.path.clone(),
        method: args.method.clone(),
        source: args
            .source
            .clone()
            .map(|s| Spanned::new(s, Default::default())),
        sni: args.sni.clone(),
        headers: args
            .headers
            .iter()
            .map(|h| pair(h, ':', "--header"))
            .collect::<Result<_>>()?,
        claims: args
            .claims
            .iter()
            .map(|c| pair(c, '=', "--claim"))
            .collect::<Result<_>>()?,
        query: args.query.clone(),
        identity: args
            .identity
            .clone()
            .map(|s| Spanned::new(s, Default::default())),
    };
    let (creds, source) = snapshot.case_credentials(&case);
    let https = snapshot.listeners[lid as usize].protocol == bulkhead_config::Protocol::Https;
    let sni = if https {
        Snapshot::case_sni(&case)
    } else {
        None
    };
    let target = Snapshot::case_target(&case);
    let req = Request {
        listener: &args.listener,
        source,
        sni: sni.as_deref(),
        version: HttpVersion::Http11,
        method: &args.method,
        target: &target,
        host: args
            .host
            .as_deref()
            .map_or(HostHeader::Missing, HostHeader::One),
        headers: &case.headers,
        credentials: &creds,
        pick: 0,
        trace: true,
    };
    let d = snapshot.decide(&req);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&snapshot, &d))?);
    } else {
        print_text(&snapshot, &d, &req);
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json<'a>(s: &'a Snapshot, d: &'a Decision<'_>) -> ExplainJson<'a> {
    let listener = d.listener.map(|l| &s.listeners[l as usize]);
    let tenant = d.tenant.map(|t| &s.tenants[t as usize]);
    let group = d.group.map(|g| &s.groups[g as usize]);
    ExplainJson {
        decision: d.kind.as_str(),
        status: d.status,
        listener: listener.map(|l| l.name.as_str()),
        zone: listener.map(|l| s.zones[l.zone as usize].name.as_str()),
        tenant: tenant.map(|t| t.name.as_str()),
        route: tenant.and_then(|t| d.route.map(|r| t.routes[r as usize].name.as_str())),
        group: group.map(|g| g.full_name.as_str()),
        group_zone: group.map(|g| s.zones[g.zone as usize].name.as_str()),
        normalized_path: d.path.as_deref(),
        reason: &d.reason,
        steps: d
            .steps
            .iter()
            .map(|st| StepJson {
                step: st.step,
                outcome: st.outcome,
                detail: &st.detail,
            })
            .collect(),
    }
}

fn print_text(s: &Snapshot, d: &Decision<'_>, req: &Request<'_>) {
    let j = to_json(s, d);
    println!(
        "request: {} {} on listener `{}`{}{}{}",
        req.method,
        req.target,
        req.listener,
        match req.host {
            HostHeader::One(h) => format!(", Host {h}"),
            _ => ", no Host".to_string(),
        },
        req.sni.map_or(String::new(), |x| format!(", SNI {x}")),
        req.source.map_or(String::new(), |x| format!(", from {x}")),
    );
    for (i, st) in d.steps.iter().enumerate() {
        println!(
            "  {}. {:<8} {:<5} {}",
            i + 1,
            st.step,
            st.outcome,
            st.detail
        );
    }
    let status = d
        .status
        .map_or_else(|| "(upstream's status)".to_string(), |x| x.to_string());
    let status = if d.status.is_none() && !d.is_forward() {
        "(no response: connection closed)".to_string()
    } else {
        status
    };
    println!("decision: {} {status}", j.decision);
    let facts: Vec<String> = [
        ("tenant", j.tenant),
        ("route", j.route),
        ("group", j.group),
        ("group zone", j.group_zone),
        ("path", j.normalized_path),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
    .collect();
    if !facts.is_empty() {
        println!("  {}", facts.join(", "));
    }
    println!("reason: {}", j.reason);
}
