//! Target groups at run time: the targets' live state, the picker, the
//! connection pools (HTTP/1.1: [`crate::h1_upstream`], on the request's own
//! task; HTTP/2: hyper's pooled client), the group's bulkheads, and sending
//! one request upstream with its timeouts.

use crate::balance::{hash_bytes, Balancer, TargetState};
use crate::raw_head::ResponseHeads;
use crate::BoxError;
use bulkhead_config::{HashOn, TargetGroup, Timeouts, UpstreamProtocol};
use bulkhead_core::{GroupId, Snapshot};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections kept per target.
const MAX_IDLE: usize = 1024;

/// Most retries the budget can hold at once (in thousandths).
const RETRY_BURST: i64 = 10_000;

/// The body type sent upstream and back.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// One group at run time.
///
/// Laid out in the order a request reads it (`repr(C)`): with thousands of
/// groups, each request's group is cold, and what it reads fits in the
/// first cache lines instead of being spread over the struct.
#[repr(C)]
pub struct GroupRuntime {
    in_flight: Arc<AtomicUsize>,
    max_requests: Option<usize>,
    /// Connection slots (`limits.max_connections`), with a bounded wait.
    slots: Option<Arc<Semaphore>>,
    /// Retry budget in thousandths of a retry: each request adds
    /// `budget_percent * 10`, each retry spends 1000 (capped for bursts).
    retry_tokens: std::sync::atomic::AtomicI64,
    retry_earn: i64,
    /// Targets speak HTTP/2 (prior knowledge).
    pub h2: bool,
    /// The balancer hashes a key (read here, next to the rest).
    hashes: bool,
    /// The hash key is a request header.
    hashes_on_header: bool,
    /// Targets in config order.
    pub targets: Vec<TargetState>,
    /// One pool per target (same order as `targets`). For HTTP/2 the
    /// request's URI carries the client's Host as authority (`:authority`
    /// must match `Host`), so the connection target comes from the pool,
    /// not the URI.
    pools: Vec<TargetPool>,
    /// Effective timeouts (group setting or defaults; routes may override).
    pub timeouts: Timeouts,
    /// The group's `identity_header`, read here rather than from its config.
    pub identity_header: Option<String>,
    hash_on: HashOn,
    balancer: Balancer,
    outlier: Option<bulkhead_config::Outlier>,
    /// `tenant/group`.
    pub full_name: String,
    /// What the pools were built with; pools are reused across reloads only when it is unchanged.
    pool_key: (UpstreamProtocol, Duration, Duration),
    slots_size: Option<u32>,
    max_pending: usize,
    pending: AtomicUsize,
}

/// The connections to one target.
#[derive(Clone)]
enum TargetPool {
    /// HTTP/1.1, sent on the request's own task.
    H1(Arc<crate::h1_upstream::Pool>),
    /// HTTP/2 (prior knowledge), through hyper's pooled client.
    H2(Box<Client<TargetConnector, ProxyBody>>),
}

/// A response body from either kind of pool.
pub enum UpstreamBody {
    /// Read from an HTTP/1.1 connection.
    H1(crate::h1_upstream::ResponseBody),
    /// An HTTP/2 stream.
    H2(hyper::body::Incoming),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// Why no request could be sent (each maps to a DESIGN §4 decision).
#[derive(Debug)]
pub enum UpstreamError {
    /// No healthy target, or the group is at its limit: 503.
    Unavailable(&'static str),
    /// Connect or protocol error: 502.
    Failed {
        /// What happened.
        msg: String,
        /// The connection could not be made (retriable as `connect_error`).
        connect: bool,
    },
    /// Timed out: 504.
    Timeout(&'static str),
}

/// Everything a request holds while it is in flight against a group.
pub struct Lease {
    group: Arc<GroupRuntime>,
    /// The chosen target's index.
    pub target: usize,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Lease {
    /// The chosen target's `host:port`.
    pub fn address(&self) -> &crate::access_log::Name {
        &self.group.targets[self.target].address
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.group.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.group.targets[self.target]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl GroupRuntime {
    /// Build a group; the live state (health, drain, in-flight, ejection) of
    /// targets that `previous` already had is carried over, and so are their
    /// pools when the pool settings did not change.
    fn new(cfg: &TargetGroup, previous: Option<&GroupRuntime>, pools: &mut Pools) -> Self {
        let timeouts = cfg.policy.timeouts.clone().unwrap_or_default();
        let pool_key = (cfg.protocol, timeouts.connect, timeouts.idle);
        let same_pools = previous.is_some_and(|p| p.pool_key == pool_key);
        let carried = |address: &str| {
            let p = previous?;
            let i = p.targets.iter().position(|t| &*t.address == address)?;
            Some((
                p.targets[i].live.clone(),
                same_pools.then(|| p.pools[i].clone()),
            ))
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // The connect timeout is applied by `TargetConnector`, per request.
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(timeouts.idle)
            .pool_max_idle_per_host(MAX_IDLE);
        if cfg.protocol == UpstreamProtocol::H2 {
            builder.http2_only(true);
        }
        let mut targets = Vec::with_capacity(cfg.targets.len());
        let mut target_pools = Vec::with_capacity(cfg.targets.len());
        for t in &cfg.targets {
            let address = t.address.value.clone();
            let (live, pool) = match carried(&address) {
                Some((live, pool)) => (live, pool),
                None => (Default::default(), None),
            };
            // One pool per target address and pool settings, shared by every
            // group that sends there: connections to one backend are reused
            // whichever tenant's request they carry.
            let pool = pools
                .entry((address.clone(), pool_key))
                .or_insert_with(|| {
                    pool.unwrap_or_else(|| match cfg.protocol {
                        UpstreamProtocol::H2 => {
                            let target = format!("http://{address}").parse().unwrap_or_default();
                            TargetPool::H2(Box::new(builder.build(TargetConnector {
                                inner: connector.clone(),
                                target,
                                default_connect: timeouts.connect,
                            })))
                        }
                        UpstreamProtocol::H1 => TargetPool::H1(Arc::new(
                            crate::h1_upstream::Pool::new(&address, timeouts.idle, MAX_IDLE),
                        )),
                    })
                })
                .clone();
            targets.push(TargetState::with_live(address.into(), t.weight, live));
            target_pools.push(pool);
        }
        let balancer = Balancer::new(cfg.balance, &targets);
        GroupRuntime {
            full_name: String::new(),
            hashes: balancer.hashes(),
            balancer,
            hashes_on_header: matches!(cfg.hash_on, HashOn::Header(_)),
            targets,
            hash_on: cfg.hash_on.clone(),
            timeouts,
            identity_header: cfg.identity_header.clone(),
            h2: cfg.protocol == UpstreamProtocol::H2,
            pools: target_pools,
            max_requests: cfg.limits.max_requests.map(|n| n as usize),
            in_flight: previous.map_or_else(Arc::default, |p| p.in_flight.clone()),
            outlier: cfg.outlier.clone(),
            retry_tokens: std::sync::atomic::AtomicI64::new(RETRY_BURST),
            retry_earn: cfg
                .policy
                .retries
                .as_ref()
                .map_or(200, |r| i64::from(r.budget_percent) * 10),
            pool_key,
            slots: match previous {
                Some(p) if p.slots_size == cfg.limits.max_connections => p.slots.clone(),
                _ => cfg
                    .limits
                    .max_connections
                    .map(|n| Arc::new(Semaphore::new(n as usize))),
            },
            slots_size: cfg.limits.max_connections,
            max_pending: cfg.limits.max_pending.unwrap_or(0) as usize,
            pending: AtomicUsize::new(0),
        }
    }

    /// A new request (not a retry: retries earning budget would let them
    /// pay for more retries) earns its share of the group's retry budget:
    /// `percent` is the request's effective `retries.budget_percent`, else
    /// the group's own.
    pub fn earn_retry_budget(&self, percent: Option<u32>) {
        let earn = percent.map_or(self.retry_earn, |p| i64::from(p) * 10);
        let _ = self
            .retry_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + earn).min(RETRY_BURST))
            });
    }

    /// Spend one retry from the group's budget, if there is one left.
    pub fn take_retry_token(&self) -> bool {
        self.retry_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }

    /// Passive outlier detection: note how a request to `target` went.
    /// `consecutive_errors` failures eject the target for `base_ejection`
    /// times the number of ejections in a row, unless that would eject more
    /// than `max_ejection_percent` of the group.
    pub fn report(&self, target: usize, ok: bool) {
        let Some(live) = self.targets.get(target).map(|t| &t.live) else {
            return;
        };
        if ok {
            live.consecutive_errors.store(0, Ordering::Relaxed);
            live.ejections.store(0, Ordering::Relaxed);
            return;
        }
        let Some(outlier) = &self.outlier else { return };
        let errors = live.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors < outlier.consecutive_errors {
            return;
        }
        let now = crate::balance::now_ms();
        let ejected = self.targets.iter().filter(|t| t.ejected(now)).count();
        let limit = self.targets.len() * outlier.max_ejection_percent as usize / 100;
        if ejected + 1 > limit {
            return;
        }
        let n = live.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = outlier.base_ejection.as_millis() as u64;
        let length = base
            .saturating_mul(u64::from(n))
            .min(base.saturating_mul(10).max(300_000));
        live.ejected_until.store(now + length, Ordering::Relaxed);
        live.consecutive_errors.store(0, Ordering::Relaxed);
        tracing::warn!(group = %self.full_name, target = %self.targets[target].address, ejection_ms = length, "target ejected after consecutive errors");
    }

    /// Requests in flight to the group.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Reserve a target for one request: bulkheads first (shed with 503,
    /// never queue without bound), then the balancer.
    pub async fn lease(
        self: &Arc<Self>,
        key: HashKey<'_>,
        wait: Duration,
    ) -> Result<Lease, UpstreamError> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let release = |g: &Self| {
            g.in_flight.fetch_sub(1, Ordering::Relaxed);
        };
        if self.max_requests.is_some_and(|max| in_flight >= max) {
            release(self);
            return Err(UpstreamError::Unavailable("group at max_requests"));
        }
        let slot = match &self.slots {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
                        self.pending.fetch_sub(1, Ordering::Relaxed);
                        release(self);
                        return Err(UpstreamError::Unavailable("group at max_connections"));
                    }
                    let got = tokio::time::timeout(wait, sem.clone().acquire_owned()).await;
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    match got {
                        Ok(Ok(p)) => Some(p),
                        _ => {
                            release(self);
                            return Err(UpstreamError::Unavailable("no connection slot in time"));
                        }
                    }
                }
            },
        };
        let random: u64 = rand::random();
        // Only the hash ring needs the key (a client IP is formatted for it).
        let hash = if self.hashes {
            self.hash_key(&key)
        } else {
            None
        };
        let Some(target) = self.balancer.pick(&self.targets, random, hash) else {
            release(self);
            return Err(UpstreamError::Unavailable("no healthy target"));
        };
        self.targets[target]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            group: self.clone(),
            target,
            _slot: slot,
        })
    }

    fn hash_key(&self, key: &HashKey<'_>) -> Option<u64> {
        match &self.hash_on {
            HashOn::ClientIp => key
                .client_ip
                .map(|ip| hash_bytes(ip.to_string().as_bytes())),
            HashOn::Header(name) => key
                .headers
                .get(name.as_str())
                .map(|v| hash_bytes(v.as_bytes())),
            HashOn::Cookie(name) => key
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_bytes(v.as_bytes())),
        }
    }

    /// Whether the consistent-hash key is a request header (read from the
    /// request's header map).
    pub fn hashes_on_header(&self) -> bool {
        self.hashes_on_header
    }

    /// Send `req` to the leased target, with `forwarding` header lines
    /// (`headers::untrusted_forwarding_lines`; empty when they are in its
    /// map); times out at `first_byte` for the response headers. `connect`
    /// bounds a new connection's TCP connect. `heads`: how an HTTP/1.1
    /// target's response head is taken (an HTTP/2 target's is always a
    /// header map).
    pub async fn send(
        &self,
        target: usize,
        req: http::Request<ProxyBody>,
        forwarding: &[u8],
        first_byte: Duration,
        connect: Duration,
        heads: ResponseHeads,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let pool = match &self.pools[target] {
            TargetPool::H1(pool) => {
                return match tokio::time::timeout(
                    first_byte,
                    pool.send(req, forwarding, connect, heads),
                )
                .await
                {
                    Err(_) => Err(UpstreamError::Timeout(
                        "no response before the first-byte timeout",
                    )),
                    Ok(sent) => sent.map(|r| r.map(UpstreamBody::H1)),
                };
            }
            TargetPool::H2(client) => client,
        };
        let mut req = req;
        // The lines are for an HTTP/1.1 head; an HTTP/2 target gets them as fields.
        crate::headers::append_lines(req.headers_mut(), forwarding);
        match tokio::time::timeout(first_byte, pool.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(
                "no response before the first-byte timeout",
            )),
            Ok(Err(e)) if e.is_connect() => {
                let msg = format!("connect: {}", source_chain(&e));
                // hyper-util's connect timeout is an io::Error of kind
                // TimedOut whose text is tokio's "deadline has elapsed".
                if timed_out(&e) || msg.contains("timed out") {
                    Err(UpstreamError::Timeout(CONNECT_TIMED_OUT))
                } else {
                    Err(UpstreamError::Failed { msg, connect: true })
                }
            }
            Ok(Err(e)) => Err(UpstreamError::Failed {
                msg: source_chain(&e),
                connect: false,
            }),
            Ok(Ok(resp)) => Ok(resp.map(UpstreamBody::H2)),
        }
    }
}

/// Why a connect that ran out of time failed ([`UpstreamError::Timeout`]):
/// a 504, retried on `timeout` as well as on `connect_error` (nothing was sent).
pub const CONNECT_TIMED_OUT: &str = "connect timed out";

/// Does an io::Error of kind `TimedOut` sit anywhere in `e`'s source chain?
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The facts a consistent-hash key is taken from.
pub struct HashKey<'a> {
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// Request headers (for `header:` and `cookie:` keys).
    pub headers: &'a http::HeaderMap,
}

/// Pools by (target address, pool settings).
type Pools =
    std::collections::HashMap<(String, (UpstreamProtocol, Duration, Duration)), TargetPool>;

/// Every group of a snapshot, indexed by [`GroupId`].
pub struct Upstreams {
    groups: Vec<Arc<GroupRuntime>>,
}

impl Upstreams {
    /// Build the runtime of every group of `snapshot`, carrying over the
    /// targets `previous` already had (health, drain, pools).
    pub fn new(snapshot: &Snapshot, previous: Option<&Upstreams>) -> Self {
        let mut pools = Pools::new();
        let groups = (0..snapshot.groups.len() as GroupId)
            .map(|id| {
                let name = &snapshot.groups[id as usize].full_name;
                let before = previous.and_then(|p| p.by_name(name));
                let mut g =
                    GroupRuntime::new(snapshot.group_config(id), before.map(|g| &**g), &mut pools);
                g.full_name = snapshot.groups[id as usize].full_name.clone();
                Arc::new(g)
            })
            .collect();
        Upstreams { groups }
    }

    /// The runtime of group `id`.
    pub fn group(&self, id: GroupId) -> &Arc<GroupRuntime> {
        &self.groups[id as usize]
    }

    /// A group by `tenant/group`.
    pub fn by_name(&self, full_name: &str) -> Option<&Arc<GroupRuntime>> {
        self.groups.iter().find(|g| g.full_name == full_name)
    }

    /// Every group.
    pub fn all(&self) -> &[Arc<GroupRuntime>] {
        &self.groups
    }
}

/// Milliseconds since `start`, for logs.
pub fn elapsed_ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// A connector that always dials one target, whatever the request's URI
/// says (HTTP/2 requests carry the client's Host as authority), within the
/// group's connect timeout.
#[derive(Clone)]
pub struct TargetConnector {
    inner: HttpConnector,
    target: http::Uri,
    default_connect: Duration,
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>, BoxError>,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for TargetConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _uri: http::Uri) -> Connecting {
        let limit = self.default_connect;
        let connecting = self.inner.call(self.target.clone());
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )) as BoxError),
            }
        })
    }
}
