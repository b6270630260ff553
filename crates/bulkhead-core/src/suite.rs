//! Running route test cases (`bulkhead test`) against a snapshot, with the
//! `--variants` attack spellings. Pure: the CLI only loads files and prints.

use crate::decision::{Decision, DecisionKind};
use crate::request::{Credentials, HostHeader, HttpVersion, Request};
use crate::snapshot::{RouteAction, Snapshot};
use crate::variants::{variants, Trick, Variant};
use bulkhead_config::cases::{CaseRequest, TestCase};
use std::net::IpAddr;

/// The result of one case.
#[derive(Clone, Debug, Default)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// Line of the case.
    pub line: u32,
    /// Why it failed (empty = passed).
    pub failures: Vec<String>,
    /// Warnings (do not fail the case).
    pub warnings: Vec<String>,
    /// Variants tried.
    pub variants_run: usize,
}

impl CaseResult {
    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A decision reduced to what cases compare, with names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Decision.
    pub decision: DecisionKind,
    /// Status.
    pub status: Option<u16>,
    /// Tenant name.
    pub tenant: Option<String>,
    /// Route name.
    pub route: Option<String>,
    /// `tenant/group`.
    pub group: Option<String>,
    /// Reason.
    pub reason: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "decision={} status={} tenant={} route={} group={} reason=\"{}\"",
            self.decision.as_str(),
            self.status.map_or("-".into(), |s| s.to_string()),
            opt(&self.tenant),
            opt(&self.route),
            opt(&self.group),
            self.reason
        )
    }
}

impl Snapshot {
    /// Name the parts of a decision.
    pub fn outcome(&self, d: &Decision<'_>) -> Outcome {
        let tenant = d.tenant.map(|t| &self.tenants[t as usize]);
        Outcome {
            decision: d.kind,
            status: d.status,
            tenant: tenant.map(|t| t.name.clone()),
            route: tenant.and_then(|t| d.route.map(|r| t.routes[r as usize].name.clone())),
            group: d.group.map(|g| self.groups[g as usize].full_name.clone()),
            reason: d.reason.to_string(),
        }
    }

    /// The credentials and source a case's `identity` stands for: a service
    /// name means the caller meets all that service's criteria; a raw
    /// `spiffe://…` id is a verified client certificate; any other raw id is
    /// a verified certificate DNS SAN and JWT subject.
    pub fn case_credentials(&self, req: &CaseRequest) -> (Credentials, Option<IpAddr>) {
        let mut source = req
            .source
            .as_ref()
            .and_then(|s| s.value.parse::<IpAddr>().ok());
        let mut c = Credentials::default();
        if let Some(id) = &req.identity {
            let id = id.value.as_str();
            if let Some(s) = self.services.iter().find(|s| s.name == id) {
                c.assumed_service = Some(s.name.clone());
                c.cert_uris.extend(s.spiffe.clone());
                c.cert_dns.extend(s.cert_san.clone());
                c.jwt_subject = s.jwt_subject.clone();
                c.mtls = s.spiffe.is_some() || s.cert_san.is_some();
                if source.is_none() {
                    source = s.sources.first().map(|n| n.network());
                }
            } else if id.starts_with("spiffe://") {
                c.cert_uris.push(id.to_string());
                c.mtls = true;
            } else {
                c.cert_dns.push(id.to_ascii_lowercase());
                c.jwt_subject = Some(id.to_string());
                c.mtls = true;
            }
        }
        if !req.claims.is_empty() {
            c.jwt_claims = Some(req.claims.clone());
        }
        (c, source)
    }

    /// Decide a case's request with an explicit target, hosts and SNI.
    fn decide_case(
        &self,
        req: &CaseRequest,
        target: &str,
        hosts: &[String],
        sni: Option<&str>,
        creds: &Credentials,
        source: Option<IpAddr>,
    ) -> Outcome {
        let host = match hosts {
            [] => HostHeader::Missing,
            [one] => HostHeader::One(one),
            _ => HostHeader::Many,
        };
        let r = Request {
            listener: &req.listener.value,
            source,
            sni,
            version: HttpVersion::Http11,
            method: &req.method,
            target,
            host,
            headers: &req.headers,
            credentials: creds,
            pick: 0,
            trace: false,
        };
        self.outcome(&self.decide(&r))
    }

    /// The SNI a case sends: `sni` if given (empty = none), else the host
    /// without its port, as a client would.
    pub fn case_sni(req: &CaseRequest) -> Option<String> {
        match &req.sni {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
            None => req.host.as_ref().map(|h| {
                crate::host::normalize_host(h).map_or_else(|_| h.clone(), |n| n.into_owned())
            }),
        }
    }

    /// The request-target of a case: `path` plus `?query`.
    pub fn case_target(req: &CaseRequest) -> String {
        match &req.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", req.path),
            _ => req.path.clone(),
        }
    }

    /// Run one case (and its variants when asked).
    pub fn run_case(&self, case: &TestCase, with_variants: bool) -> CaseResult {
        let mut result = CaseResult {
            name: case.name.clone(),
            line: case.pos.line,
            ..CaseResult::default()
        };
        let req = &case.request;
        let (creds, source) = self.case_credentials(req);
        let https = self.listener_id(&req.listener.value).is_some_and(|l| {
            self.listeners[l as usize].protocol == bulkhead_config::Protocol::Https
        });
        let sni = if https { Self::case_sni(req) } else { None };
        let target = Self::case_target(req);
        let hosts: Vec<String> = req.host.iter().cloned().collect();
        let got = self.decide_case(req, &target, &hosts, sni.as_deref(), &creds, source);
        let mismatches = self.mismatches(case, &got);
        if !mismatches.is_empty() {
            result.failures.push(format!(
                "expected {}\n      got      {got}",
                mismatches.join(" ")
            ));
        }
        if !with_variants {
            return result;
        }
        let other_host = self.other_tenant_host(got.tenant.as_deref());
        for v in variants(
            &target,
            req.host.as_deref(),
            sni.as_deref(),
            https,
            other_host.as_deref(),
        ) {
            result.variants_run += 1;
            let vgot = self.decide_case(req, &v.target, &v.hosts, v.sni.as_deref(), &creds, source);
            if same_outcome(&got, &vgot) || is_rejection(&vgot) {
                continue;
            }
            let line = describe_variant(&v, &vgot, &got);
            let case_insensitive = got
                .tenant
                .as_deref()
                .and_then(|t| self.tenant_id(t))
                .is_some_and(|t| self.tenants[t as usize].normalize.case_insensitive);
            if v.trick == Trick::UpperCase && !case_insensitive {
                result.warnings.push(format!(
                    "{line}\n      (if your backends ignore case, set `normalize.case: insensitive` on the tenant)"
                ));
            } else {
                result.failures.push(line);
            }
        }
        result
    }

    fn mismatches(&self, case: &TestCase, got: &Outcome) -> Vec<String> {
        let e = &case.expect;
        let mut out = Vec::new();
        if let Some(d) = &e.decision {
            if d.value != got.decision.as_str() {
                out.push(format!("decision={}", d.value));
            }
        }
        if let Some(s) = e.status {
            if got.status != Some(s) {
                out.push(format!("status={s}"));
            }
        }
        if let Some(t) = &e.tenant {
            if got.tenant.as_ref() != Some(t) {
                out.push(format!("tenant={t}"));
            }
        }
        if let Some(r) = &e.route {
            if got.route.as_ref() != Some(r) {
                out.push(format!("route={r}"));
            }
        }
        if let Some(g) = &e.group {
            if !self.split_contains(got, g) {
                out.push(format!("group={g}"));
            }
        }
        if let Some(r) = &e.reason {
            if !got.reason.contains(r.as_str()) {
                out.push(format!("reason~\"{r}\""));
            }
        }
        out
    }

    /// True when `group` is the chosen group or any leg of the matched route's split.
    pub fn split_contains(&self, got: &Outcome, group: &str) -> bool {
        if got.group.as_deref() == Some(group) {
            return true;
        }
        let Some(t) = got.tenant.as_deref().and_then(|t| self.tenant_id(t)) else {
            return false;
        };
        let t = &self.tenants[t as usize];
        let Some(r) = got
            .route
            .as_deref()
            .and_then(|r| t.routes.iter().find(|x| x.name == r))
        else {
            return false;
        };
        match &r.action {
            RouteAction::Forward { legs, .. } => legs
                .iter()
                .any(|(g, _)| self.groups[*g as usize].full_name == group),
            _ => false,
        }
    }

    /// An exact host of a tenant other than `tenant` (for SNI ≠ Host variants).
    fn other_tenant_host(&self, tenant: Option<&str>) -> Option<String> {
        self.config
            .tenants
            .iter()
            .filter(|t| Some(t.name.value.as_str()) != tenant)
            .flat_map(|t| t.hosts.iter())
            .find(|h| !h.value.starts_with("*."))
            .map(|h| h.value.clone())
    }
}

/// Same decision, route and group.
fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    a.decision == b.decision && a.tenant == b.tenant && a.route == b.route && a.group == b.group
}

/// A variant that is refused outright is fine: 400, 404, 421 or a failed handshake.
fn is_rejection(o: &Outcome) -> bool {
    o.decision == DecisionKind::TlsRejected || matches!(o.status, Some(400 | 404 | 421))
}

fn describe_variant(v: &Variant, got: &Outcome, original: &Outcome) -> String {
    format!(
        "variant {} (target `{}`, Host {:?}, SNI {:?}) got {got}\n      but the case got decision={} route={} group={}: a different outcome that is not a rejection",
        v.label,
        v.target,
        v.hosts,
        v.sni,
        original.decision.as_str(),
        original.route.as_deref().unwrap_or("-"),
        original.group.as_deref().unwrap_or("-"),
    )
}
