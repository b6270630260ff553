//! The typed config model (DESIGN §3). Names and references keep the position
//! they were written at, so later checks (references, invariants) can point
//! at the offending line.

use crate::yaml::Pos;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value and where it was written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Its position in the config file.
    pub pos: Pos,
}

impl<T> Spanned<T> {
    /// Wrap `value` written at `pos`.
    pub fn new(value: T, pos: Pos) -> Self {
        Spanned { value, pos }
    }
}

impl Spanned<String> {
    /// The string value.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// A whole config file, parsed and checked for local mistakes and broken
/// references. Checks that need the reachability graph (invariants, split
/// consistency) run when `bulkhead-core` compiles it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file as named by the operator (used in messages).
    pub file: String,
    /// The folder relative paths are resolved against.
    pub base_dir: PathBuf,
    /// `version`, always 1.
    pub version: u32,
    /// `workers`: runtime threads; `None` means one per core.
    pub workers: Option<usize>,
    /// `drain_timeout`, default 30s.
    pub drain_timeout: Duration,
    /// `admin`, if the admin API is enabled.
    pub admin: Option<Admin>,
    /// `log`.
    pub log: Log,
    /// `zones`, in file order.
    pub zones: Vec<Zone>,
    /// `flows`, in file order.
    pub flows: Vec<Flow>,
    /// `listeners`, in file order.
    pub listeners: Vec<Listener>,
    /// `tenants`, in file order.
    pub tenants: Vec<Tenant>,
    /// `services`, in file order.
    pub services: Vec<Service>,
    /// `access` rules.
    pub access: Vec<AccessRule>,
    /// Profiles: the built-ins, overridden or extended by `profiles`.
    pub profiles: Vec<Profile>,
    /// `invariants`.
    pub invariants: Vec<Invariant>,
}

/// `admin`: the admin API socket.
#[derive(Clone, Debug)]
pub struct Admin {
    /// `bind`.
    pub bind: Spanned<SocketAddr>,
    /// `token_env`: the environment variable holding the bearer token.
    pub token_env: Option<String>,
}

/// `log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// `access`: where access log lines go.
    pub access: AccessLog,
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// `stdout` (the default).
    Stdout,
    /// `stderr`.
    Stderr,
    /// A file path (relative to the config file).
    File(PathBuf),
    /// `off` / `false`.
    Off,
}

/// A trust level.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Its name.
    pub name: Spanned<String>,
    /// `trusted`: client forwarding headers are kept and appended to.
    pub trusted: bool,
    /// `strip_headers`: request headers dropped when entering this zone (lowercase).
    pub strip_headers: Vec<String>,
}

/// An allowed direction from a listener zone to target-group zones.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Where the flow entry starts.
    pub pos: Pos,
    /// `from`.
    pub from: Spanned<String>,
    /// `to`.
    pub to: Vec<Spanned<String>>,
}

/// A listener's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Plain HTTP/1.1 (and h2c prior knowledge).
    Http,
    /// TLS-terminated HTTP/1.1 and HTTP/2.
    Https,
    /// Raw TCP spliced to one group.
    Tcp,
    /// TLS spliced by SNI without terminating.
    TlsPassthrough,
}

impl Protocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::TlsPassthrough => "tls-passthrough",
        }
    }

    /// True for the protocols that route HTTP requests.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

/// A bound socket.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Its name.
    pub name: Spanned<String>,
    /// `bind`.
    pub bind: Spanned<SocketAddr>,
    /// `zone`.
    pub zone: Spanned<String>,
    /// `protocol`.
    pub protocol: Protocol,
    /// `allow_sources`: peers outside are closed at accept. Empty = everyone.
    pub allow_sources: Vec<IpNet>,
    /// `tls` (https only).
    pub tls: Option<ListenerTls>,
    /// `default_certificate` for clients whose SNI matches no certificate.
    pub default_certificate: Option<CertPair>,
    /// `limits`.
    pub limits: ListenerLimits,
    /// `forward` (tcp): the `tenant/group` to splice to.
    pub forward: Option<Spanned<String>>,
    /// `forward_by_sni` (tls-passthrough): SNI pattern → `tenant/group`.
    pub forward_by_sni: Vec<(Spanned<String>, Spanned<String>)>,
    /// `profile`: default profile for routes served here.
    pub profile: Option<Spanned<String>>,
    /// `proxy_protocol`.
    pub proxy_protocol: bool,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
}

/// TLS settings of an https listener.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    /// `certificates`; SNI picks by the certificate's names.
    pub certificates: Vec<CertPair>,
    /// `min_version`.
    pub min_version: TlsVersion,
    /// `client_auth` (mTLS).
    pub client_auth: Option<ClientAuth>,
}

/// A minimum TLS version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (the default).
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// A certificate chain and its key, read from PEM files.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// `cert` (PEM chain), resolved against the config folder.
    pub cert: Spanned<PathBuf>,
    /// `key` (PEM private key).
    pub key: Spanned<PathBuf>,
    /// What the files held (absent when they could not be read).
    pub loaded: Option<crate::tls::LoadedCert>,
}

/// `client_auth`: verify client certificates against a CA.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// `ca`: PEM bundle of trusted client CAs.
    pub ca: Spanned<PathBuf>,
    /// `required`: reject clients without a valid certificate (default true).
    pub required: bool,
    /// The CA certificates (DER), when readable.
    pub ca_der: Vec<Vec<u8>>,
}

/// Per-listener limits (DESIGN §3 "More keys").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections before the listener pauses accepting. Default 10000.
    pub max_connections: u32,
    /// Time to receive a request's headers. Default 10s.
    pub header_timeout: Duration,
    /// Keep-alive idle time. Default 60s.
    pub idle_timeout: Duration,
    /// Header block size limit (431 above). Default 64KiB, minimum 8KiB.
    pub max_header_bytes: u64,
    /// Request-target size limit (414 above). Default 8KiB.
    pub max_uri_bytes: u64,
    /// Body size limit (413 above). Default none.
    pub max_body_bytes: Option<u64>,
    /// HTTP/2 concurrent streams per connection. Default 100.
    pub h2_max_concurrent_streams: u32,
    /// Concurrency budget across the listener. Default none.
    pub max_requests: Option<u32>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_uri_bytes: 8 << 10,
            max_body_bytes: None,
            h2_max_concurrent_streams: 100,
            max_requests: None,
        }
    }
}

/// An isolated routing table.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Its name.
    pub name: Spanned<String>,
    /// `hosts`: exact (`acme.test`) or one-label wildcard (`*.acme.test`), lowercase.
    pub hosts: Vec<Spanned<String>>,
    /// `listeners` it is served on; `None` = every http/https listener.
    pub listeners: Option<Vec<Spanned<String>>>,
    /// `normalize`.
    pub normalize: Normalize,
    /// `target_groups`, in file order.
    pub target_groups: Vec<TargetGroup>,
    /// `routes`, in file order (first match wins).
    pub routes: Vec<Route>,
    /// `grants`: this tenant's groups lent to other tenants.
    pub grants: Vec<Grant>,
    /// `profile`: default profile for its routes.
    pub profile: Option<Spanned<String>>,
    /// `limits.max_requests`: concurrency budget across its groups.
    pub max_requests: Option<u32>,
}

/// Path normalization options (DESIGN §2 step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalize {
    /// Merge `//` into `/` (default true).
    pub merge_slashes: bool,
    /// Keep `%2F`/`%5C` encoded instead of rejecting (default false = reject).
    pub keep_encoded_slash: bool,
    /// Keep `;` in paths instead of rejecting (default false = reject).
    pub keep_semicolon: bool,
    /// Match paths case-insensitively (default false).
    pub case_insensitive: bool,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize {
            merge_slashes: true,
            keep_encoded_slash: false,
            keep_semicolon: false,
            case_insensitive: false,
        }
    }
}

/// A grant of some of this tenant's groups to another tenant.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The tenant receiving the grant.
    pub tenant: Spanned<String>,
    /// The granted groups (names in the granting tenant).
    pub groups: Vec<Spanned<String>>,
}

/// A set of targets in one zone.
#[derive(Clone, Debug)]
pub struct TargetGroup {
    /// Its name (unique within the tenant).
    pub name: Spanned<String>,
    /// `zone`.
    pub zone: Spanned<String>,
    /// `targets`.
    pub targets: Vec<Target>,
    /// `balance`.
    pub balance: Balance,
    /// `hash_on` for `consistent_hash`.
    pub hash_on: HashOn,
    /// `health`: active health check.
    pub health: Option<HealthCheck>,
    /// `limits`.
    pub limits: GroupLimits,
    /// `outlier`: passive ejection.
    pub outlier: Option<Outlier>,
    /// `protocol` towards the targets.
    pub protocol: UpstreamProtocol,
    /// `identity_header`.
    pub identity_header: Option<String>,
    /// `tls` towards the targets.
    pub tls: Option<UpstreamTls>,
    /// `dns_refresh`, default 30s.
    pub dns_refresh: Duration,
    /// Policies set on the group (`timeouts`, `retries`, `faults`).
    pub policy: Policy,
}

/// One backend address.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` as written.
    pub address: Spanned<String>,
    /// Weight 1–1000, default 1.
    pub weight: u32,
}

/// Balancing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (default).
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on `hash_on`.
    ConsistentHash,
}

/// The consistent-hash key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// The client IP (default).
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// Active health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP path; `None` = TCP connect check.
    pub path: Option<String>,
    /// Interval, default 5s.
    pub interval: Duration,
    /// Timeout, default 1s.
    pub timeout: Duration,
    /// Successes to become healthy, default 2.
    pub healthy: u32,
    /// Failures to become unhealthy, default 3.
    pub unhealthy: u32,
}

/// Group bulkheads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupLimits {
    /// Connections to the targets.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection slot before 503.
    pub max_pending: Option<u32>,
    /// Requests in flight.
    pub max_requests: Option<u32>,
}

/// Passive outlier detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive errors before ejection, default 5.
    pub consecutive_errors: u32,
    /// First ejection time, default 30s (grows with each ejection).
    pub base_ejection: Duration,
    /// Most of the group that may be ejected at once, default 50.
    pub max_ejection_percent: u32,
}

/// Protocol towards targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (default).
    H1,
    /// HTTP/2.
    H2,
}

/// TLS towards targets.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// SNI to send.
    pub sni: Option<String>,
    /// CA bundle to verify targets with.
    pub ca: Option<Spanned<PathBuf>>,
    /// Client certificate for mTLS to the targets.
    pub client_cert: Option<Spanned<PathBuf>>,
    /// Its key.
    pub client_key: Option<Spanned<PathBuf>>,
}

/// A route: match → action.
#[derive(Clone, Debug)]
pub struct Route {
    /// Its name (unique within the tenant).
    pub name: Spanned<String>,
    /// `match`.
    pub matcher: RouteMatch,
    /// The action (`forward`, `redirect`, `respond` or `deny`).
    pub action: Action,
    /// `listeners`: restrict the route to some of the tenant's listeners.
    pub listeners: Option<Vec<Spanned<String>>>,
    /// `profile`.
    pub profile: Option<Spanned<String>>,
    /// Inline policy keys (override the profile's).
    pub policy: Policy,
}

/// What a route matches on. Every given criterion must match.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    /// Path criterion on the normalized path.
    pub path: Option<PathMatch>,
    /// Methods (upper case); empty = every method.
    pub methods: Vec<String>,
    /// Header criteria (lowercase names).
    pub headers: Vec<(String, ValueMatch)>,
    /// Query parameter criteria.
    pub query: Vec<(String, ValueMatch)>,
    /// Source CIDRs.
    pub sources: Vec<IpNet>,
    /// Service names the caller must be one of.
    pub identities: Vec<Spanned<String>>,
    /// JWT claim criteria.
    pub claims: Vec<(String, ValueMatch)>,
}

/// A path criterion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// `path_exact`.
    Exact(String),
    /// `path_prefix` (whole segments, trailing slash ignored).
    Prefix(String),
    /// `path_regex` (anchored).
    Regex(String),
}

/// A header / query / claim value criterion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to this value.
    Exact(String),
    /// Matches this (anchored) regex.
    Regex(String),
    /// Present with any value.
    Present,
}

/// What a route does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward to one group or a weighted split.
    Forward(Vec<WeightedGroup>),
    /// Redirect.
    Redirect {
        /// `location`.
        location: String,
        /// `status`, default 302.
        status: u16,
    },
    /// Answer with a fixed response.
    Respond {
        /// `status`.
        status: u16,
        /// `body`.
        body: String,
        /// `content_type`.
        content_type: Option<String>,
    },
    /// Refuse.
    Deny {
        /// `status`, default 403.
        status: u16,
    },
}

/// One leg of a forward.
#[derive(Clone, Debug)]
pub struct WeightedGroup {
    /// The group: `name` (own tenant) or `tenant/name`.
    pub group: Spanned<String>,
    /// Weight 1–1000.
    pub weight: u32,
}

/// Policy keys shared by profiles, routes and (some) groups. Every key is
/// optional so that precedence can fall through (DESIGN §2 step 7).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `cache`.
    pub cache: Option<Cache>,
    /// `auth`.
    pub auth: Option<Auth>,
    /// `rate_limit`.
    pub rate_limit: Option<RateLimit>,
    /// `timeouts`.
    pub timeouts: Option<Timeouts>,
    /// `retries`.
    pub retries: Option<Retries>,
    /// `buffering`.
    pub buffering: Option<bool>,
    /// `headers`.
    pub headers: Option<HeaderEdits>,
    /// `faults`.
    pub faults: Option<Faults>,
}

impl Policy {
    /// Each key of `self`, else the one of `fallback`.
    pub fn or(&self, fallback: &Policy) -> Policy {
        Policy {
            cache: self.cache.clone().or_else(|| fallback.cache.clone()),
            auth: self.auth.clone().or_else(|| fallback.auth.clone()),
            rate_limit: self
                .rate_limit
                .clone()
                .or_else(|| fallback.rate_limit.clone()),
            timeouts: self.timeouts.clone().or_else(|| fallback.timeouts.clone()),
            retries: self.retries.clone().or_else(|| fallback.retries.clone()),
            buffering: self.buffering.or(fallback.buffering),
            headers: self.headers.clone().or_else(|| fallback.headers.clone()),
            faults: self.faults.clone().or_else(|| fallback.faults.clone()),
        }
    }
}

/// `cache`: RFC 9111 shared cache settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    /// Default freshness when the response gives none.
    pub ttl: Duration,
    /// Storage bound.
    pub max_bytes: u64,
    /// Cache responses to requests with credentials.
    pub cache_authenticated: bool,
    /// Cache responses that set cookies.
    pub cache_set_cookie: bool,
    /// Coalesce concurrent misses.
    pub coalesce: bool,
    /// Serve stale while revalidating, for this long.
    pub stale_while_revalidate: Duration,
}

/// `auth`: what a route requires of the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `mtls: required | optional`.
    Mtls {
        /// True for `required`.
        required: bool,
    },
    /// `jwt: { … }`.
    Jwt(JwtAuth),
    /// `basic: { users_file }`.
    Basic {
        /// Path of the hashed-password file.
        users_file: PathBuf,
    },
    /// `ip_allow: [CIDR]`.
    IpAllow(Vec<IpNet>),
}

impl Auth {
    /// The kind as a word: `mtls`, `jwt`, `basic`, `ip_allow`.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Mtls { .. } => "mtls",
            Auth::Jwt(_) => "jwt",
            Auth::Basic { .. } => "basic",
            Auth::IpAllow(_) => "ip_allow",
        }
    }
}

/// JWT verification settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuth {
    /// Local JWKS file.
    pub jwks: PathBuf,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud`.
    pub audience: Option<String>,
    /// Accepted algorithms (default RS256).
    pub algorithms: Vec<String>,
    /// Clock skew allowed, default 30s.
    pub leeway: Duration,
}

/// `rate_limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_second: u32,
    /// Burst size (default = per_second).
    pub burst: u32,
    /// What the bucket is keyed on.
    pub key: RateKey,
}

/// Rate-limit key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateKey {
    /// The client IP (default).
    ClientIp,
    /// The caller's identity.
    Identity,
    /// A request header.
    Header(String),
}

/// `timeouts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect, default 5s.
    pub connect: Duration,
    /// First byte of the response, default 60s.
    pub first_byte: Duration,
    /// Whole request; `None` = none.
    pub request: Option<Duration>,
    /// Idle stream, default 60s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            request: None,
            idle: Duration::from_secs(60),
        }
    }
}

/// `retries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retries {
    /// Extra attempts (0 = no retries).
    pub attempts: u32,
    /// Conditions: `connect_error`, `timeout`, or a status code.
    pub on: Vec<String>,
    /// Most retries as a percent of requests.
    pub budget_percent: u32,
}

/// `headers`: edits to requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Request headers to set (lowercase name, value).
    pub request_set: Vec<(String, String)>,
    /// Request headers to remove (lowercase).
    pub request_remove: Vec<String>,
    /// Response headers to set.
    pub response_set: Vec<(String, String)>,
    /// Response headers to remove.
    pub response_remove: Vec<String>,
}

/// `faults`: fault injection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Abort with a status for a percent of requests.
    pub abort: Option<(u16, f64)>,
    /// Delay a percent of requests.
    pub delay: Option<(Duration, f64)>,
}

/// A caller identity for east-west traffic: a caller is this service when
/// it meets every criterion given.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name.
    pub name: Spanned<String>,
    /// Verified SPIFFE id (URI SAN) of the client certificate.
    pub spiffe: Option<String>,
    /// Verified DNS SAN of the client certificate.
    pub cert_san: Option<String>,
    /// Verified JWT subject.
    pub jwt_subject: Option<String>,
    /// Source networks.
    pub sources: Vec<IpNet>,
}

/// Which services may use a group.
#[derive(Clone, Debug)]
pub struct AccessRule {
    /// `group`: `tenant/group`.
    pub group: Spanned<String>,
    /// `allow`: service names.
    pub allow: Vec<Spanned<String>>,
}

/// Named tuning.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Its name.
    pub name: Spanned<String>,
    /// Its keys.
    pub policy: Policy,
    /// True for a built-in that the file did not override.
    pub builtin: bool,
}

/// A guardrail checked on the reachability graph.
#[derive(Clone, Debug)]
pub enum Invariant {
    /// No allowed edge from a listener in `from` to a group in `to`.
    Never {
        /// Where it was written.
        pos: Pos,
        /// Listener zone.
        from: Spanned<String>,
        /// Group zone.
        to: Spanned<String>,
    },
    /// Tenants reach only their own groups (and granted ones unless `strict`).
    TenantsIsolated {
        /// Where it was written.
        pos: Pos,
        /// Grants are forbidden too.
        strict: bool,
    },
    /// Every allowed edge into `zone` passes an auth of `auth`.
    Require {
        /// Where it was written.
        pos: Pos,
        /// The protected zone.
        zone: Spanned<String>,
        /// `mtls`, `jwt` or `any`.
        auth: RequiredAuth,
    },
}

/// The auth an invariant requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequiredAuth {
    /// `mtls: required` on the route, or required client certs on the listener.
    Mtls,
    /// JWT auth on the route.
    Jwt,
    /// Any auth.
    Any,
}
