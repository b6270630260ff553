//! The facts of one request that `decide()` needs. The data plane fills them
//! from the connection and the parsed request; the offline tools fill them
//! from a test case or the command line. No I/O, no clocks.

use bulkhead_config::Auth;
use std::net::IpAddr;

/// Read access to request headers, whatever holds them.
pub trait HeaderSource {
    /// True when some value of header `name` (case-insensitive) satisfies `f`.
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool;
}

/// The Host header(s) as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostHeader<'a> {
    /// No Host header.
    Missing,
    /// Exactly one.
    One(&'a str),
    /// More than one (always a 400).
    Many,
}

/// HTTP version of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/1.0: Host may be missing.
    Http10,
    /// HTTP/1.1: Host is required.
    #[default]
    Http11,
    /// HTTP/2: the authority comes from `:authority`.
    Http2,
}

/// An identity verified by the connection (mTLS) or by a token (JWT).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// URI SANs of a verified client certificate (SPIFFE ids).
    pub cert_uris: Vec<String>,
    /// DNS SANs of a verified client certificate (lowercase).
    pub cert_dns: Vec<String>,
    /// True when a client certificate was verified.
    pub mtls: bool,
    /// Subject of a verified JWT.
    pub jwt_subject: Option<String>,
    /// Claims of a verified JWT (string values).
    pub jwt_claims: Option<Vec<(String, String)>>,
    /// User authenticated by HTTP basic auth.
    pub basic_user: Option<String>,
    /// A service the caller is taken to be (test cases: `identity: billing`).
    pub assumed_service: Option<String>,
    /// The `jwt` / `basic` auth configs that accepted this request's
    /// credentials, by [`auth_key`]. `None` (the offline tools: `explain`,
    /// `test`, `audit`) takes the JWT and basic facts above as verified by
    /// whatever config a route asks for. The data plane gives `Some`, so a
    /// token that one route's config accepts does not pass a route with a
    /// different config (issuer, audience, JWKS), nor a user of one users
    /// file a route using another.
    pub verified: Option<Vec<String>>,
}

impl Credentials {
    /// Did `auth` (a `jwt` or `basic` config) accept these credentials?
    /// Always true when [`Credentials::verified`] is `None`.
    pub fn verified_by(&self, auth: &Auth) -> bool {
        match (&self.verified, auth_key(auth)) {
            (None, _) => true,
            (Some(keys), Some(key)) => keys.contains(&key),
            (Some(_), None) => false,
        }
    }
}

/// A stable key naming one `jwt` or `basic` auth config within a process:
/// two routes get the same key exactly when their configs are identical
/// (same JWKS file, issuer, audience, algorithms and leeway; same users
/// file). `None` for `mtls` and `ip_allow`, which need no verifier.
pub fn auth_key(auth: &Auth) -> Option<String> {
    match auth {
        Auth::Jwt(j) => Some(format!(
            "jwt:{:?}|{:?}|{:?}|{:?}|{}",
            j.jwks,
            j.issuer,
            j.audience,
            j.algorithms,
            j.leeway.as_millis()
        )),
        Auth::Basic { users_file } => Some(format!("basic:{users_file:?}")),
        Auth::Mtls { .. } | Auth::IpAllow(_) => None,
    }
}

/// Everything `decide()` looks at for one request.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The listener (by name) the request arrived on.
    pub listener: &'a str,
    /// The peer address.
    pub source: Option<IpAddr>,
    /// SNI of the TLS connection (https listeners).
    pub sni: Option<&'a str>,
    /// HTTP version.
    pub version: HttpVersion,
    /// Method.
    pub method: &'a str,
    /// Request-target as sent: origin-form `/p?q` or absolute-form `http://h/p?q`.
    pub target: &'a str,
    /// Host header(s) (h1) or `:authority` (h2).
    pub host: HostHeader<'a>,
    /// Headers, for route criteria.
    pub headers: &'a dyn HeaderSource,
    /// Verified identities.
    pub credentials: &'a Credentials,
    /// A random number choosing the leg of a weighted split.
    pub pick: u64,
    /// Record each step of the decision (for `explain` and tests).
    pub trace: bool,
}

/// What route criteria look at.
pub struct MatchFacts<'a> {
    /// Method.
    pub method: &'a str,
    /// Source address.
    pub source: Option<IpAddr>,
    /// Service ids the caller is.
    pub services: &'a [u32],
    /// Headers.
    pub headers: &'a dyn HeaderSource,
    /// Raw query string.
    pub query: &'a str,
    /// Verified JWT claims.
    pub claims: Option<&'a [(String, String)]>,
}

/// No headers.
pub struct NoHeaders;

impl HeaderSource for NoHeaders {
    fn any_value(&self, _: &str, _: &mut dyn FnMut(&str) -> bool) -> bool {
        false
    }
}
