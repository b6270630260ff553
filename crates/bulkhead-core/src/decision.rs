//! The outcome of `decide()`: what happens to a request and why, with the ids
//! the data plane needs and the strings the log and `explain` print.

use std::borrow::Cow;

/// The `decision` field of the access log (DESIGN §4/§5). One cause, one wire answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Forwarded to a group.
    Forward,
    /// A `redirect` route.
    Redirect,
    /// A `respond` route.
    Respond,
    /// A `deny` route, a flow or access list, or a source outside `allow_sources`.
    Deny,
    /// No tenant owns the host, or no route matches.
    NoRoute,
    /// SNI tenant differs from Host tenant.
    Misdirected,
    /// Auth missing or wrong.
    Unauthorized,
    /// Rate limited.
    RateLimited,
    /// Malformed or ambiguous request.
    BadRequest,
    /// Headers not received in time.
    ClientTimeout,
    /// TLS handshake failed.
    TlsRejected,
    /// No healthy target or group at its limit.
    Unavailable,
    /// Upstream connect or protocol error.
    UpstreamError,
    /// Upstream timeout.
    Timeout,
}

impl DecisionKind {
    /// The log / JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Forward => "forward",
            DecisionKind::Redirect => "redirect",
            DecisionKind::Respond => "respond",
            DecisionKind::Deny => "deny",
            DecisionKind::NoRoute => "no_route",
            DecisionKind::Misdirected => "misdirected",
            DecisionKind::Unauthorized => "unauthorized",
            DecisionKind::RateLimited => "rate_limited",
            DecisionKind::BadRequest => "bad_request",
            DecisionKind::ClientTimeout => "client_timeout",
            DecisionKind::TlsRejected => "tls_rejected",
            DecisionKind::Unavailable => "unavailable",
            DecisionKind::UpstreamError => "upstream_error",
            DecisionKind::Timeout => "timeout",
        }
    }

    /// Parse the log spelling.
    pub fn parse(s: &str) -> Option<DecisionKind> {
        ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The status a decision of this kind answers with when the route does
    /// not choose one (DESIGN §4); `None` when no response is sent.
    pub fn default_status(self) -> Option<u16> {
        match self {
            DecisionKind::Forward | DecisionKind::Redirect | DecisionKind::Respond => None,
            DecisionKind::Deny => Some(403),
            DecisionKind::NoRoute => Some(404),
            DecisionKind::Misdirected => Some(421),
            DecisionKind::Unauthorized => Some(401),
            DecisionKind::RateLimited => Some(429),
            DecisionKind::BadRequest => Some(400),
            DecisionKind::ClientTimeout | DecisionKind::TlsRejected => None,
            DecisionKind::Unavailable => Some(503),
            DecisionKind::UpstreamError => Some(502),
            DecisionKind::Timeout => Some(504),
        }
    }
}

/// Every decision kind, for parsing and tests.
pub const ALL: [DecisionKind; 14] = [
    DecisionKind::Forward,
    DecisionKind::Redirect,
    DecisionKind::Respond,
    DecisionKind::Deny,
    DecisionKind::NoRoute,
    DecisionKind::Misdirected,
    DecisionKind::Unauthorized,
    DecisionKind::RateLimited,
    DecisionKind::BadRequest,
    DecisionKind::ClientTimeout,
    DecisionKind::TlsRejected,
    DecisionKind::Unavailable,
    DecisionKind::UpstreamError,
    DecisionKind::Timeout,
];

/// Ids into a `Snapshot`.
pub type ListenerId = u32;
/// A tenant id.
pub type TenantId = u32;
/// A group id (global across tenants).
pub type GroupId = u32;
/// A zone id.
pub type ZoneId = u32;

/// What the request is answered with when it is not forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Forward to the chosen group.
    Forward,
    /// Redirect to `location` with `status`.
    Redirect {
        /// Location header.
        location: String,
        /// 301/302/303/307/308.
        status: u16,
    },
    /// A fixed response.
    Respond {
        /// Status.
        status: u16,
        /// Body.
        body: String,
        /// Content-Type.
        content_type: Option<String>,
    },
    /// An error status with a JSON body `{"error": decision}`; `None` closes
    /// the connection without a response.
    Error(Option<u16>),
}

/// One step of the decision, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `listener`, `tls`, `request`, `host`, `path`, `route`, `flow`, `auth`, `access`, `target`.
    pub step: &'static str,
    /// `pass`, `fail`, `skip`.
    pub outcome: &'static str,
    /// What was found.
    pub detail: String,
}

/// The full decision for one request.
#[derive(Clone, Debug)]
pub struct Decision<'a> {
    /// The kind (the log's `decision`).
    pub kind: DecisionKind,
    /// The status sent (for forwards: `None`, the upstream decides).
    pub status: Option<u16>,
    /// The response to send.
    pub answer: Answer,
    /// The listener, when it exists.
    pub listener: Option<ListenerId>,
    /// The tenant, once known.
    pub tenant: Option<TenantId>,
    /// The matched route (index within the tenant).
    pub route: Option<u32>,
    /// The chosen group.
    pub group: Option<GroupId>,
    /// The normalized host.
    pub host: Option<Cow<'a, str>>,
    /// The normalized path (what is forwarded).
    pub path: Option<Cow<'a, str>>,
    /// The raw query (forwarded untouched).
    pub query: Option<&'a str>,
    /// The caller's identity for `identity_header`: a service name, else the raw verified id.
    pub identity: Option<Cow<'a, str>>,
    /// Why, in a few words.
    pub reason: Cow<'static, str>,
    /// Each step taken (only when the request asked for a trace).
    pub steps: Vec<Step>,
}

impl<'a> Decision<'a> {
    pub(crate) fn new(kind: DecisionKind) -> Self {
        Decision {
            kind,
            status: kind.default_status(),
            answer: Answer::Error(kind.default_status()),
            listener: None,
            tenant: None,
            route: None,
            group: None,
            host: None,
            path: None,
            query: None,
            identity: None,
            reason: Cow::Borrowed(""),
            steps: Vec::new(),
        }
    }

    /// True when the request goes upstream.
    pub fn is_forward(&self) -> bool {
        self.kind == DecisionKind::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DESIGN §4 table, row by row.
    #[test]
    fn statuses_follow_the_design_table() {
        let table = [
            ("deny", Some(403)),
            ("no_route", Some(404)),
            ("misdirected", Some(421)),
            ("unauthorized", Some(401)),
            ("rate_limited", Some(429)),
            ("bad_request", Some(400)),
            ("client_timeout", None),
            ("tls_rejected", None),
            ("unavailable", Some(503)),
            ("upstream_error", Some(502)),
            ("timeout", Some(504)),
        ];
        for (name, status) in table {
            let kind = DecisionKind::parse(name).expect("known decision");
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.default_status(), status, "{name}");
        }
        for kind in ALL {
            assert_eq!(DecisionKind::parse(kind.as_str()), Some(kind));
        }
    }
}
