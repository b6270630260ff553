//! # bulkhead-core
//!
//! The pure segmentation core of bulkhead: a validated config compiles into
//! an immutable [`Snapshot`], and [`Snapshot::decide`] returns the
//! [`Decision`] for one request — in the order of DESIGN §2: listener and
//! TLS, request line, Host (SNI vs Host), path normalization, first matching
//! route, then flow, auth and access list.
//!
//! **Compile, then serve.** All heavy work (host index, per-tenant route
//! tries, flow matrix, access lists, the reachability graph, invariant
//! proofs) happens once in [`Snapshot::compile`]. A request only reads.
//!
//! **No I/O.** This crate opens no socket, reads no clock and draws no random
//! number: the caller passes the facts (including a random `pick` for
//! weighted splits). So the data plane, `explain`, `test`, `graph`, `audit`
//! and the fuzzers all run the very same code and get the same answer.
//!
//! ```
//! use bulkhead_core::{Snapshot, Request, HostHeader, HttpVersion, Credentials, NoHeaders};
//! let yaml = r#"
//! version: 1
//! zones: { public: {}, admin: {} }
//! flows: [{ from: public, to: [public] }]
//! listeners: { web: { bind: "127.0.0.1:8080", zone: public, protocol: http } }
//! tenants:
//!   acme:
//!     hosts: [acme.test]
//!     target_groups:
//!       app: { zone: public, targets: ["127.0.0.1:9001"] }
//!       panel: { zone: admin, targets: ["127.0.0.1:9003"] }
//!     routes:
//!       - { name: admin, match: { path_prefix: /admin/ }, forward: panel }
//!       - { name: site, match: { path_prefix: / }, forward: app }
//! "#;
//! let config = bulkhead_config::from_str(yaml, "inline.yaml", std::path::Path::new(".")).unwrap();
//! let snapshot = Snapshot::compile(config).unwrap();
//! let creds = Credentials::default();
//! let req = |target| Request {
//!     listener: "web", source: None, sni: None, version: HttpVersion::Http11,
//!     method: "GET", target, host: HostHeader::One("acme.test"),
//!     headers: &NoHeaders, credentials: &creds, pick: 0, trace: false,
//! };
//! assert_eq!(snapshot.decide(&req("/shop")).kind.as_str(), "forward");
//! // The admin route matches, the flow public -> admin does not exist: 403,
//! // and the request does not fall through to `site`.
//! let d = snapshot.decide(&req("/public/%2e%2e/admin/users"));
//! assert_eq!((d.kind.as_str(), d.status), ("deny", Some(403)));
//! ```
#![deny(missing_docs)]

mod decide;
mod decision;
pub mod effective;
mod graph;
pub mod host;
mod invariant;
pub mod lint;
mod listener_set;
pub mod normalize;
mod request;
pub mod router;
mod snapshot;
pub mod suite;
pub mod variants;

pub use decide::{split_target, Services};
pub use decision::{
    Answer, Decision, DecisionKind, GroupId, ListenerId, Step, TenantId, ZoneId,
    ALL as ALL_DECISIONS,
};
pub use effective::EffectiveConfig;
pub use graph::{Edge, EdgeView, GraphView};
pub use listener_set::ListenerSet;
pub use request::{
    auth_key, Credentials, HeaderSource, HostHeader, HttpVersion, MatchFacts, NoHeaders, Request,
};
pub use snapshot::{
    EffectivePolicy, GroupInfo, ListenerInfo, RouteAction, RouteInfo, ServiceInfo, Snapshot,
    TenantInfo, ZoneInfo,
};
