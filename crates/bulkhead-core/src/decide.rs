//! `decide()`: the decision for one HTTP request, in the order of DESIGN §2.
//! The data plane calls it per request; `explain`, `test`, `audit` call it
//! offline. There is no other copy of these rules.

use crate::decision::{Answer, Decision, DecisionKind, GroupId, Step};
use crate::host::normalize_host;
use crate::normalize::normalize_path;
use crate::request::{Credentials, HostHeader, HttpVersion, MatchFacts, Request};
use crate::router::Candidates;
use crate::snapshot::{normalize_sni, RouteAction, Snapshot};
use bulkhead_config::{Auth, Protocol};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::net::IpAddr;

/// Collects steps when tracing; free otherwise.
struct Trace {
    on: bool,
    steps: Vec<Step>,
}

impl Trace {
    fn step(&mut self, step: &'static str, outcome: &'static str, detail: impl FnOnce() -> String) {
        if self.on {
            self.steps.push(Step {
                step,
                outcome,
                detail: detail(),
            });
        }
    }
}

/// Service ids a caller is; a handful at most.
pub type Services = SmallVec<[u32; 4]>;

impl Snapshot {
    /// The decision for one request (DESIGN §2 steps 1–6).
    pub fn decide<'a>(&self, req: &Request<'a>) -> Decision<'a> {
        let mut trace = Trace {
            on: req.trace,
            steps: Vec::new(),
        };
        let mut d = self.decide_inner(req, &mut trace);
        d.steps = trace.steps;
        d
    }

    fn decide_inner<'a>(&self, req: &Request<'a>, trace: &mut Trace) -> Decision<'a> {
        let fail = |kind: DecisionKind, reason: Cow<'static, str>| {
            let mut d = Decision::new(kind);
            d.reason = reason;
            d
        };

        // 1. Listener: sources, then TLS.
        let Some(lid) = self.listener_id(req.listener) else {
            trace.step("listener", "fail", || {
                format!("no listener named `{}`", req.listener)
            });
            return fail(DecisionKind::NoRoute, "unknown listener".into());
        };
        let l = &self.listeners[lid as usize];
        let fail = |kind: DecisionKind, reason: Cow<'static, str>| {
            let mut d = fail(kind, reason);
            d.listener = Some(lid);
            d
        };
        if !l.allow_sources.is_empty()
            && !req
                .source
                .is_some_and(|ip| l.allow_sources.iter().any(|n| n.contains(&ip)))
        {
            trace.step("listener", "fail", || {
                format!(
                    "source {} is outside allow_sources; the connection is closed at accept",
                    fmt_ip(req.source)
                )
            });
            let mut d = fail(DecisionKind::Deny, "source outside allow_sources".into());
            d.status = None;
            d.answer = Answer::Error(None);
            return d;
        }
        trace.step("listener", "pass", || {
            format!(
                "`{}` ({}, zone {})",
                l.name,
                l.protocol.as_str(),
                self.zones[l.zone as usize].name
            )
        });
        if !l.protocol.is_http() {
            // TCP and TLS-passthrough listeners route connections, not requests.
            let d = self.decide_stream(req.listener, req.source, req.sni, req.credentials);
            let outcome = if d.is_forward() { "pass" } else { "fail" };
            trace.step("stream", outcome, || match d.group {
                Some(g) => format!(
                    "connection to `{}`: {}",
                    self.groups[g as usize].full_name, d.reason
                ),
                None => d.reason.to_string(),
            });
            return d;
        }
        let sni = req.sni.and_then(normalize_sni);
        if l.protocol == Protocol::Https {
            let cert = match &sni {
                Some(name) if self.sni_has_certificate(lid, name) => {
                    Some(format!("certificate for SNI `{name}`"))
                }
                _ if l.default_certificate => Some("default certificate".to_string()),
                _ => None,
            };
            let Some(cert) = cert else {
                let why = match &sni {
                    Some(name) => {
                        format!("no certificate for SNI `{name}` and no default_certificate")
                    }
                    None => "no SNI and no default_certificate".to_string(),
                };
                trace.step("tls", "fail", || why.clone());
                return fail(DecisionKind::TlsRejected, why.into());
            };
            if l.client_cert_required && !req.credentials.mtls {
                trace.step("tls", "fail", || "a client certificate is required".into());
                return fail(
                    DecisionKind::TlsRejected,
                    "client certificate required".into(),
                );
            }
            trace.step("tls", "pass", || cert);
        }

        // 2. Request line.
        if req.method.eq_ignore_ascii_case("CONNECT") {
            trace.step("request", "fail", || "CONNECT is not proxied".into());
            let mut d = fail(DecisionKind::BadRequest, "CONNECT".into());
            d.status = Some(405);
            d.answer = Answer::Error(Some(405));
            return d;
        }
        let max_uri = self.config.listeners[lid as usize].limits.max_uri_bytes;
        if req.target.len() as u64 > max_uri {
            trace.step("request", "fail", || {
                format!("request-target over max_uri_bytes ({max_uri})")
            });
            let mut d = fail(DecisionKind::BadRequest, "request-target too long".into());
            d.status = Some(414);
            d.answer = Answer::Error(Some(414));
            return d;
        }
        let Some((authority, path_and_query)) = split_target(req.target) else {
            trace.step("request", "fail", || {
                format!("invalid request-target `{}`", req.target)
            });
            return fail(DecisionKind::BadRequest, "invalid request-target".into());
        };
        trace.step("request", "pass", || {
            format!("{} {}", req.method, req.target)
        });

        // 3. Host.
        let header_host = match req.host {
            HostHeader::Many => {
                trace.step("host", "fail", || "more than one Host header".into());
                return fail(DecisionKind::BadRequest, "duplicate Host".into());
            }
            HostHeader::One(h) => Some(h),
            HostHeader::Missing => None,
        };
        let mut header_norm = None;
        if let Some(h) = header_host {
            match normalize_host(h) {
                Ok(n) => header_norm = Some(n),
                Err(e) => {
                    trace.step("host", "fail", || {
                        format!("Host `{}`: {}", h.escape_debug(), e.as_str())
                    });
                    return fail(DecisionKind::BadRequest, e.as_str().into());
                }
            }
        }
        let raw_host = match (authority, header_host) {
            (Some(a), _) => a,
            (None, Some(h)) => h,
            (None, None) if req.version == HttpVersion::Http10 => {
                trace.step("host", "fail", || {
                    "HTTP/1.0 request without Host names no tenant".into()
                });
                return fail(DecisionKind::NoRoute, "no Host".into());
            }
            (None, None) => {
                trace.step("host", "fail", || "missing Host".into());
                return fail(DecisionKind::BadRequest, "missing Host".into());
            }
        };
        let host = match (authority, header_norm) {
            // Origin-form: the Host header, normalized above.
            (None, Some(h)) => h,
            _ => match normalize_host(raw_host) {
                Ok(h) => h,
                Err(e) => {
                    trace.step("host", "fail", || {
                        format!("`{}`: {}", raw_host.escape_debug(), e.as_str())
                    });
                    return fail(DecisionKind::BadRequest, e.as_str().into());
                }
            },
        };
        let host_tenant = self.hosts.get(&host);
        let sni_tenant = sni.as_deref().and_then(|s| self.hosts.get(s));
        let fail = |kind: DecisionKind, reason: Cow<'static, str>, tenant: Option<u32>| {
            let mut d = fail(kind, reason);
            d.tenant = tenant;
            d.host = Some(host.clone());
            d
        };
        if let Some(st) = sni_tenant {
            if host_tenant != Some(st) {
                trace.step("host", "fail", || {
                    format!(
                        "SNI `{}` names tenant `{}` but Host `{host}` names {}",
                        sni.as_deref().unwrap_or(""),
                        self.tenants[st as usize].name,
                        host_tenant.map_or("no tenant".to_string(), |t| format!(
                            "tenant `{}`",
                            self.tenants[t as usize].name
                        ))
                    )
                });
                return fail(
                    DecisionKind::Misdirected,
                    "SNI and Host name different tenants".into(),
                    host_tenant,
                );
            }
        }
        let Some(tid) = host_tenant else {
            trace.step("host", "fail", || format!("no tenant owns host `{host}`"));
            return fail(
                DecisionKind::NoRoute,
                "no tenant owns the host".into(),
                None,
            );
        };
        let t = &self.tenants[tid as usize];
        if !t.served_on.contains(lid as usize) {
            trace.step("host", "fail", || {
                format!("tenant `{}` is not served on listener `{}`", t.name, l.name)
            });
            return fail(
                DecisionKind::NoRoute,
                "tenant not served on this listener".into(),
                Some(tid),
            );
        }
        trace.step("host", "pass", || {
            format!("`{host}` belongs to tenant `{}`", t.name)
        });

        // 4. Path.
        let (raw_path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = match normalize_path(raw_path, &t.normalize) {
            Ok(p) => p,
            Err(e) => {
                trace.step("path", "fail", || {
                    format!("`{}`: {}", raw_path.escape_debug(), e.as_str())
                });
                return fail(DecisionKind::BadRequest, e.as_str().into(), Some(tid));
            }
        };
        trace.step("path", "pass", || format!("normalized to `{path}`"));

        // 5. Route.
        let services = self.caller_services(req.source, req.credentials);
        let facts = MatchFacts {
            method: req.method,
            source: req.source,
            services: &services,
            headers: req.headers,
            query: query.unwrap_or(""),
            claims: req.credentials.jwt_claims.as_deref(),
        };
        let folded;
        let match_path: &str = if t.router.case_insensitive() {
            folded = path.to_ascii_lowercase();
            &folded
        } else {
            &path
        };
        let mut candidates = Candidates::new();
        t.router.candidates(match_path, &mut candidates);
        let matched = candidates.iter().copied().find(|&ri| {
            let r = &t.routes[ri as usize];
            r.listeners.contains(lid as usize)
                && (r.plain || r.matcher.matches_rest(match_path, &facts))
        });
        let mut d = fail(DecisionKind::NoRoute, "no route matches".into(), Some(tid));
        d.path = Some(path.clone());
        d.query = query;
        let Some(ri) = matched else {
            trace.step("route", "fail", || {
                format!(
                    "no route of tenant `{}` on listener `{}` matches",
                    t.name, l.name
                )
            });
            return d;
        };
        let r = &t.routes[ri as usize];
        d.route = Some(ri);
        trace.step("route", "pass", || {
            format!("route `{}` (line {})", r.name, r.pos.line)
        });

        // 6. Action and segmentation.
        let (legs, total) = match &r.action {
            RouteAction::Forward { legs, total } => (legs, *total),
            RouteAction::Redirect { location, status } => {
                trace.step("action", "pass", || {
                    format!("redirect {status} to `{location}`")
                });
                return answered(
                    d,
                    DecisionKind::Redirect,
                    *status,
                    Answer::Redirect {
                        location: location.clone(),
                        status: *status,
                    },
                );
            }
            RouteAction::Respond {
                status,
                body,
                content_type,
            } => {
                trace.step("action", "pass", || format!("respond {status}"));
                let answer = Answer::Respond {
                    status: *status,
                    body: body.clone(),
                    content_type: content_type.clone(),
                };
                return answered(d, DecisionKind::Respond, *status, answer);
            }
            RouteAction::Deny { status } => {
                trace.step("action", "fail", || format!("deny route answers {status}"));
                d.reason = "deny route".into();
                return answered(d, DecisionKind::Deny, *status, Answer::Error(Some(*status)));
            }
        };
        let gid = pick_leg(legs, total, req.pick);
        let g = &self.groups[gid as usize];
        d.group = Some(gid);
        if legs.len() > 1 {
            trace.step("split", "pass", || {
                format!("weighted split picked `{}`", g.full_name)
            });
        }
        // (a) flow.
        let (from, to) = (
            &self.zones[l.zone as usize].name,
            &self.zones[g.zone as usize].name,
        );
        if !self.flow_allows(l.zone, g.zone) {
            trace.step("flow", "fail", || {
                format!(
                    "no flow from zone {from} to zone {to} (group `{}`)",
                    g.full_name
                )
            });
            d.reason = format!("no flow from {from} to {to}").into();
            return answered(d, DecisionKind::Deny, 403, Answer::Error(Some(403)));
        }
        trace.step("flow", "pass", || {
            format!("flow {from} -> {to} allows `{}`", g.full_name)
        });
        // (b) auth.
        let auth = r.policy.auth.as_ref().or(l.policy.auth.as_ref());
        if let Some(auth) = auth {
            if let Err((kind, why)) = check_auth(auth, req.source, req.credentials) {
                trace.step("auth", "fail", || why.to_string());
                d.reason = why.into();
                let status = kind.default_status().unwrap_or(401);
                return answered(d, kind, status, Answer::Error(Some(status)));
            }
            trace.step("auth", "pass", || format!("{} auth passed", auth.kind()));
        }
        // (c) access list.
        if let Some(allowed) = &g.access {
            let hit = services.iter().find(|s| allowed.contains(s));
            match hit {
                None => {
                    trace.step("access", "fail", || {
                        format!(
                            "caller is not among the services allowed to use `{}` ({})",
                            g.full_name,
                            self.service_names(allowed)
                        )
                    });
                    d.reason = "access list denies the caller".into();
                    return answered(d, DecisionKind::Deny, 403, Answer::Error(Some(403)));
                }
                Some(s) => {
                    let name = &self.services[*s as usize].name;
                    trace.step("access", "pass", || {
                        format!("service `{name}` may use `{}`", g.full_name)
                    });
                    d.identity = Some(Cow::Owned(name.clone()));
                }
            }
        }
        if d.identity.is_none() {
            d.identity = services
                .first()
                .map(|s| Cow::Owned(self.services[*s as usize].name.clone()))
                .or_else(|| raw_identity(req.credentials).map(|s| Cow::Owned(s.to_string())));
        }
        d.kind = DecisionKind::Forward;
        d.status = None;
        d.answer = Answer::Forward;
        d.reason = "forwarded".into();
        d
    }

    /// The decision for one TCP or TLS-passthrough connection (DESIGN §2,
    /// last paragraph): `allow_sources`, then the group (`forward`, or the
    /// ClientHello's SNI against `forward_by_sni`: exact names first, then
    /// wildcards), then the flow and the group's access list.
    pub fn decide_stream<'a>(
        &self,
        listener: &str,
        source: Option<IpAddr>,
        sni: Option<&str>,
        credentials: &Credentials,
    ) -> Decision<'a> {
        let closed = |kind: DecisionKind, reason: &'static str| {
            let mut d = Decision::new(kind);
            d.status = None;
            d.answer = Answer::Error(None);
            d.reason = reason.into();
            d
        };
        let Some(lid) = self.listener_id(listener) else {
            return closed(DecisionKind::NoRoute, "unknown listener");
        };
        let l = &self.listeners[lid as usize];
        let mut d = closed(DecisionKind::Deny, "source outside allow_sources");
        d.listener = Some(lid);
        if !l.allow_sources.is_empty()
            && !source.is_some_and(|ip| l.allow_sources.iter().any(|n| n.contains(&ip)))
        {
            return d;
        }
        let sni = sni.and_then(normalize_sni);
        let group = match l.protocol {
            Protocol::Tcp => l.forward,
            Protocol::TlsPassthrough => sni.as_deref().and_then(|name| {
                let exact = l.forward_by_sni.iter().find(|(p, _)| p == name);
                let wild = || {
                    l.forward_by_sni
                        .iter()
                        .find(|(p, _)| p.starts_with("*.") && crate::host::pattern_matches(p, name))
                };
                exact.or_else(wild).map(|(_, g)| *g)
            }),
            Protocol::Http | Protocol::Https => None,
        };
        let Some(gid) = group else {
            d.kind = DecisionKind::NoRoute;
            d.reason = if sni.is_some() {
                "no group for this SNI".into()
            } else {
                "no SNI in the ClientHello".into()
            };
            return d;
        };
        let g = &self.groups[gid as usize];
        d.group = Some(gid);
        d.tenant = Some(g.tenant);
        d.host = sni.map(Cow::Owned);
        if !self.flow_allows(l.zone, g.zone) {
            d.reason = format!(
                "no flow from {} to {}",
                self.zones[l.zone as usize].name, self.zones[g.zone as usize].name
            )
            .into();
            return d;
        }
        let services = self.caller_services(source, credentials);
        if let Some(allowed) = &g.access {
            match services.iter().find(|s| allowed.contains(s)) {
                None => {
                    d.reason = "access list denies the caller".into();
                    return d;
                }
                Some(s) => d.identity = Some(Cow::Owned(self.services[*s as usize].name.clone())),
            }
        }
        d.kind = DecisionKind::Forward;
        d.answer = Answer::Forward;
        d.reason = "forwarded".into();
        d
    }

    /// The services a caller is: every service whose criteria it meets, plus
    /// an assumed one (test cases).
    pub fn caller_services(&self, source: Option<IpAddr>, c: &Credentials) -> Services {
        let mut out = Services::new();
        for (i, s) in self.services.iter().enumerate() {
            let assumed = c.assumed_service.as_deref() == Some(s.name.as_str());
            let meets = s
                .spiffe
                .as_ref()
                .is_none_or(|id| c.cert_uris.iter().any(|u| u == id))
                && s.cert_san
                    .as_ref()
                    .is_none_or(|san| c.cert_dns.iter().any(|d| d == san))
                && s.jwt_subject
                    .as_ref()
                    .is_none_or(|sub| c.jwt_subject.as_ref() == Some(sub))
                && (s.sources.is_empty()
                    || source.is_some_and(|ip| s.sources.iter().any(|n| n.contains(&ip))));
            if assumed || meets {
                out.push(i as u32);
            }
        }
        out
    }

    fn service_names(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|s| self.services[*s as usize].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn answered<'a>(
    mut d: Decision<'a>,
    kind: DecisionKind,
    status: u16,
    answer: Answer,
) -> Decision<'a> {
    d.kind = kind;
    d.status = Some(status);
    d.answer = answer;
    if d.reason == "no route matches" {
        d.reason = kind.as_str().into();
    }
    d
}

/// Choose the leg of a weighted split from a random number.
fn pick_leg(legs: &[(GroupId, u32)], total: u64, pick: u64) -> GroupId {
    if legs.len() == 1 || total == 0 {
        return legs.first().map_or(0, |l| l.0);
    }
    let mut n = pick % total;
    for (g, w) in legs {
        if n < u64::from(*w) {
            return *g;
        }
        n -= u64::from(*w);
    }
    legs[legs.len() - 1].0
}

/// Step 6b: does the caller pass the route's auth?
fn check_auth(
    auth: &Auth,
    source: Option<IpAddr>,
    c: &Credentials,
) -> Result<(), (DecisionKind, &'static str)> {
    match auth {
        Auth::Mtls { required: true } if !c.mtls => Err((
            DecisionKind::Unauthorized,
            "a verified client certificate is required",
        )),
        Auth::Mtls { .. } => Ok(()),
        Auth::Jwt(_) if c.jwt_subject.is_none() && c.jwt_claims.is_none() => {
            Err((DecisionKind::Unauthorized, "a valid JWT is required"))
        }
        Auth::Jwt(_) if !c.verified_by(auth) => Err((
            DecisionKind::Unauthorized,
            "the JWT was not accepted by this route's jwt config",
        )),
        Auth::Jwt(_) => Ok(()),
        Auth::Basic { .. } if c.basic_user.is_none() => {
            Err((DecisionKind::Unauthorized, "basic credentials are required"))
        }
        Auth::Basic { .. } if !c.verified_by(auth) => Err((
            DecisionKind::Unauthorized,
            "the basic credentials are not in this route's users file",
        )),
        Auth::Basic { .. } => Ok(()),
        Auth::IpAllow(nets) if source.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) => {
            Ok(())
        }
        Auth::IpAllow(_) => Err((DecisionKind::Deny, "source is not in ip_allow")),
    }
}

/// The raw verified identity: SPIFFE id, else DNS SAN, else JWT subject, else basic user.
fn raw_identity(c: &Credentials) -> Option<&str> {
    c.cert_uris
        .first()
        .or(c.cert_dns.first())
        .or(c.jwt_subject.as_ref())
        .or(c.basic_user.as_ref())
        .map(String::as_str)
}

fn fmt_ip(ip: Option<IpAddr>) -> String {
    ip.map_or("(unknown)".into(), |ip| ip.to_string())
}

/// Split a request-target into (absolute-form authority, path-and-query).
/// Origin-form `/p?q` has no authority; absolute-form `http://h/p?q` does
/// (RFC 9112 §3.2.2: it overrides Host). Anything else is invalid.
pub fn split_target(target: &str) -> Option<(Option<&str>, &str)> {
    if target.starts_with('/') {
        return Some((None, target));
    }
    let lower_scheme = target.get(..8).map(str::to_ascii_lowercase);
    let rest = match lower_scheme.as_deref() {
        Some(s) if s.starts_with("http://") => &target[7..],
        Some("https://") => &target[8..],
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    if path.starts_with('?') {
        // `http://h?q`: the path is empty, which means `/`.
        return None;
    }
    Some((Some(authority), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a?b"), Some((None, "/a?b")));
        assert_eq!(
            split_target("http://acme.test/a"),
            Some((Some("acme.test"), "/a"))
        );
        assert_eq!(
            split_target("HTTP://acme.test"),
            Some((Some("acme.test"), "/"))
        );
        assert_eq!(
            split_target("https://acme.test:8443/x?y"),
            Some((Some("acme.test:8443"), "/x?y"))
        );
        assert_eq!(split_target("http://user@acme.test/"), None);
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("acme.test:443"), None);
        assert_eq!(split_target("ftp://acme.test/"), None);
    }

    fn jwt(issuer: &str) -> Auth {
        Auth::Jwt(bulkhead_config::JwtAuth {
            jwks: "keys.json".into(),
            issuer: Some(issuer.into()),
            audience: None,
            algorithms: vec!["RS256".into()],
            leeway: std::time::Duration::from_secs(30),
        })
    }

    #[test]
    fn auth_offline_takes_facts_as_verified() {
        let c = Credentials {
            jwt_subject: Some("alice".into()),
            basic_user: Some("bob".into()),
            ..Credentials::default()
        };
        assert!(check_auth(&jwt("a"), None, &c).is_ok());
        let basic = Auth::Basic {
            users_file: "users".into(),
        };
        assert!(check_auth(&basic, None, &c).is_ok());
        let none = Credentials::default();
        assert!(check_auth(&jwt("a"), None, &none).is_err());
        assert!(check_auth(&basic, None, &none).is_err());
    }

    #[test]
    fn auth_on_the_data_plane_needs_the_routes_own_config() {
        let (a, b) = (jwt("https://a.test"), jwt("https://b.test"));
        let (ka, kb) = (
            crate::auth_key(&a).expect("jwt key"),
            crate::auth_key(&b).expect("jwt key"),
        );
        assert_ne!(ka, kb);
        assert_eq!(crate::auth_key(&jwt("https://a.test")), Some(ka.clone()));
        let c = Credentials {
            jwt_subject: Some("alice".into()),
            verified: Some(vec![ka]),
            ..Credentials::default()
        };
        assert!(check_auth(&a, None, &c).is_ok());
        let (kind, _) = check_auth(&b, None, &c).expect_err("another config");
        assert_eq!(kind, DecisionKind::Unauthorized);

        let (ua, ub) = (
            Auth::Basic {
                users_file: "a.users".into(),
            },
            Auth::Basic {
                users_file: "b.users".into(),
            },
        );
        let c = Credentials {
            basic_user: Some("bob".into()),
            verified: Some(vec![crate::auth_key(&ua).expect("basic key")]),
            ..Credentials::default()
        };
        assert!(check_auth(&ua, None, &c).is_ok());
        assert!(check_auth(&ub, None, &c).is_err());
        // An empty list verifies nothing, whatever facts are set.
        let c = Credentials {
            jwt_subject: Some("alice".into()),
            basic_user: Some("bob".into()),
            verified: Some(Vec::new()),
            ..Credentials::default()
        };
        assert!(check_auth(&a, None, &c).is_err());
        assert!(check_auth(&ua, None, &c).is_err());
        assert_eq!(crate::auth_key(&Auth::Mtls { required: true }), None);
    }

    #[test]
    fn legs_follow_weights() {
        let legs = [(7, 90), (8, 10)];
        let picks: Vec<u32> = (0..100).map(|p| pick_leg(&legs, 100, p)).collect();
        assert_eq!(picks.iter().filter(|g| **g == 7).count(), 90);
        assert_eq!(picks.iter().filter(|g| **g == 8).count(), 10);
    }
}
