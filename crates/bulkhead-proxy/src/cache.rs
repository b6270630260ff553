//! The shared HTTP cache of a route's `cache` policy (DESIGN §2 step 7,
//! §3 `cache`): RFC 9111 rules from `http-cache-semantics`, storage in
//! `moka` bounded by `max_bytes`.
//!
//! * **Stores.** One store per (tenant, cache settings), kept in
//!   [`Shared`](crate::Shared) so a reload that leaves a route's `cache`
//!   unchanged keeps its warm entries. A store holds one tenant's objects
//!   only, so a tenant can neither be served another's object nor evict it;
//!   keys carry the tenant too. Stores no route uses any more are dropped
//!   when the first request of a new config generation asks for a store.
//! * **Keys.** Tenant, method (GET or HEAD, never shared), normalized host,
//!   normalized path, raw query, and the values of the request headers the
//!   stored response's `Vary` names (kept per primary key). The request
//!   headers are those that go upstream (after the route's header edits).
//! * **What is stored.** A response that `http-cache-semantics` calls
//!   storable for a *shared* cache (no `no-store`, no `private`, an understood
//!   status, no `Vary: *`…) with a freshness lifetime above zero, a body of at
//!   most `min(max_bytes / 8, 8 MiB)`, and no trailers. Never: responses to a
//!   request with `Authorization` or from a caller the proxy identified (mTLS
//!   identity), unless `cache_authenticated`; responses with `Set-Cookie`,
//!   unless `cache_set_cookie` (and then stored *without* the `Set-Cookie`
//!   fields: a cookie is only ever given to the client whose request fetched
//!   it); requests with `Range` or a body.
//! * **Freshness.** The response's own (`s-maxage`, `max-age`, `Expires`).
//!   When it gives none and its status is heuristically cacheable
//!   (RFC 9110 §15.1: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414,
//!   501), the config's `ttl` is its freshness lifetime, in place of the
//!   `Last-Modified` heuristic (`ttl: 0s` turns defaults off). `no-cache`,
//!   `proxy-revalidate` and `Set-Cookie` (without `public`) still make it
//!   zero, and zero is not stored.
//! * **Invalidation.** A successful (2xx/3xx) request with an unsafe method
//!   invalidates its target for GET and HEAD, every variant (RFC 9111 §4.4):
//!   at once through a short-lived mark checked by lookups and fills, for
//!   good by a new version of the resource's index.
//! * **Coalescing.** Concurrent misses for one primary key wait (at most the
//!   request timeout, else the first-byte timeout, capped at 30 s) for the
//!   first one's fetch, then look again; if the leader failed or its response
//!   was not stored, they go upstream themselves.
//! * **Stale.** A stale entry is served (`X-Cache: STALE`) within
//!   `stale_while_revalidate` after it went stale, unless the response said
//!   `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`, or the
//!   request has `Cache-Control` or `Pragma`; one background request
//!   refreshes it. Past that, a stale entry with a validator is revalidated
//!   with a conditional request (`X-Cache: REVALIDATED` on a 304).
//! * **Headers.** Every response of a route with a cache policy gets
//!   `X-Cache`: `HIT`, `STALE`, `REVALIDATED`, `MISS` (went upstream), or
//!   `BYPASS` (a request the cache does not consider). Hits carry `Age`.

use crate::access_log::LogLine;
use crate::body::{LogGuard, Logged};
use crate::policy::BudgetSlots;
use crate::raw_head::ResponseHeads;
use crate::timers::Busy;
use crate::upstream::{GroupRuntime, HashKey, ProxyBody, UpstreamError};
use crate::{Generation, Shared};
use bulkhead_config::{Cache as CacheConfig, HeaderEdits, Timeouts};
use bulkhead_core::{RouteAction, Snapshot};
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, ETAG, EXPIRES,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    PRAGMA, RANGE, SET_COOKIE, VARY,
};
use http::{request, response, HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use hyper::body::{Body, Frame, SizeHint};
use moka::ops::compute::Op;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves when a stored response can be found by lookups, or will not be
/// stored (the sender is dropped).
type Landing = oneshot::Receiver<()>;

/// Largest single object, whatever `max_bytes` says.
const MAX_OBJECT: u64 = 8 << 20;
/// Longest a coalesced miss waits for the fetch it joined.
const MAX_COALESCE_WAIT: Duration = Duration::from_secs(30);
/// How long past its freshness an entry with a validator is kept for a
/// conditional revalidation (never longer than its freshness lifetime).
const MAX_REVALIDATE_KEEP: Duration = Duration::from_secs(3600);
/// Resources a store indexes, at least (else one per 512 bytes of `max_bytes`).
const MIN_INDEX_ENTRIES: u64 = 4096;
/// How long an invalidation by an unsafe method is remembered (for fills
/// under way; the resource's index entry is gone by then).
const INVALIDATION_MARK: Duration = Duration::from_secs(600);
/// Invalidations remembered per store.
const MAX_INVALIDATION_MARKS: usize = 65_536;
/// Statuses cacheable by default (RFC 9110 §15.1), to which `ttl` applies.
const HEURISTIC: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// Request fields that make a request conditional.
const CONDITIONALS: &[HeaderName] = &[
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

fn x_cache() -> HeaderName {
    HeaderName::from_static("x-cache")
}

/// The settings that make two stores different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StoreKey {
    tenant: String,
    ttl: Duration,
    max_bytes: u64,
    cache_authenticated: bool,
    cache_set_cookie: bool,
    coalesce: bool,
    stale_while_revalidate: Duration,
}

impl StoreKey {
    fn new(tenant: &str, c: &CacheConfig) -> StoreKey {
        StoreKey {
            tenant: tenant.to_string(),
            ttl: c.ttl,
            max_bytes: c.max_bytes,
            cache_authenticated: c.cache_authenticated,
            cache_set_cookie: c.cache_set_cookie,
            coalesce: c.coalesce,
            stale_while_revalidate: c.stale_while_revalidate,
        }
    }
}

/// A resource: everything but the `Vary`'d header values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PrimaryKey {
    tenant: Arc<str>,
    head: bool,
    host: Box<str>,
    path: Box<str>,
    query: Option<Box<str>>,
}

/// What a store knows of a resource: the `Vary` names of its last stored
/// response, and a version that changes when the resource is invalidated,
/// so that no variant stored before can be found again.
struct Index {
    names: Box<[HeaderName]>,
    version: u64,
}

/// One stored response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    primary: PrimaryKey,
    version: u64,
    /// The request's values of the fields the response's `Vary` names, in order.
    vary: Box<[Option<Box<[u8]>>]>,
}

impl ObjectKey {
    fn new(primary: PrimaryKey, index: &Index, request: &HeaderMap) -> ObjectKey {
        let vary = index
            .names
            .iter()
            .map(|name| {
                let mut values = request.get_all(name).iter().peekable();
                values.peek()?;
                let mut joined = Vec::new();
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                Some(joined.into_boxed_slice())
            })
            .collect();
        ObjectKey {
            primary,
            version: index.version,
            vary,
        }
    }
}

struct Entry {
    status: StatusCode,
    /// As served: hop-by-hop fields and `Set-Cookie` removed, no `X-Cache`.
    headers: HeaderMap,
    body: Bytes,
    /// Freshness rules (built with the `ttl` default applied).
    policy: CachePolicy,
    /// How long the store keeps it.
    keep: Duration,
    /// Until when it may be served stale while a refresh runs.
    stale_until: SystemTime,
    weight: u32,
    /// When it was stored (or revalidated).
    stored: Instant,
    /// A background refresh is running.
    refreshing: AtomicBool,
}

impl Entry {
    fn has_validator(&self) -> bool {
        self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }
}

/// Entries live until their freshness (plus the stale and revalidation
/// windows) runs out.
struct Keep;

impl moka::Expiry<ObjectKey, Arc<Entry>> for Keep {
    fn expire_after_create(
        &self,
        _: &ObjectKey,
        value: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _: &ObjectKey,
        value: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

/// One invalidation of a resource.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    /// Index versions below this were made before it.
    cut: u64,
}

struct Store {
    config: CacheConfig,
    objects: moka::future::Cache<ObjectKey, Arc<Entry>>,
    /// Each resource's [`Index`]; no index, no hit.
    index: moka::future::Cache<PrimaryKey, Arc<Index>>,
    versions: AtomicU64,
    /// When each recently invalidated resource (`head: false`) was: an
    /// entry stored, or a fill begun, before that is not used, nor an index
    /// made before it.
    invalidated: Mutex<HashMap<PrimaryKey, Mark>>,
    /// Fetches in flight that concurrent misses may wait for.
    inflight: Mutex<HashMap<PrimaryKey, watch::Receiver<()>>>,
    /// Bumped by a purge: fills begun before it do not store.
    epoch: AtomicU64,
    object_limit: u64,
}

impl Store {
    fn new(config: &CacheConfig) -> Store {
        let objects = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_: &ObjectKey, e: &Arc<Entry>| e.weight)
            .expire_after(Keep)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        let index = moka::future::Cache::builder()
            .max_capacity((config.max_bytes / 512).max(MIN_INDEX_ENTRIES))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Store {
            config: config.clone(),
            objects,
            index,
            versions: AtomicU64::new(0),
            invalidated: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            object_limit: (config.max_bytes / 8).min(MAX_OBJECT),
        }
    }

    async fn find(&self, primary: &PrimaryKey, request: &HeaderMap) -> Option<Arc<Entry>> {
        let index = self.index.get(primary).await?;
        let key = ObjectKey::new(primary.clone(), &index, request);
        let entry = self.objects.get(&key).await?;
        (!self.invalidated_since(primary, entry.stored)).then_some(entry)
    }

    /// Was `primary`'s resource invalidated at or after `t`?
    fn invalidated_since(&self, primary: &PrimaryKey, t: Instant) -> bool {
        self.last_mark(primary).is_some_and(|m| m.at >= t)
    }

    /// Was `index` made before the last invalidation of `primary`'s resource?
    fn outdated(&self, primary: &PrimaryKey, index: &Index) -> bool {
        self.last_mark(primary)
            .is_some_and(|m| index.version < m.cut)
    }

    fn last_mark(&self, primary: &PrimaryKey) -> Option<Mark> {
        let invalidated = self
            .invalidated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if invalidated.is_empty() {
            return None;
        }
        let resource = PrimaryKey {
            head: false,
            ..primary.clone()
        };
        invalidated.get(&resource).copied()
    }

    /// RFC 9111 §4.4: a successful unsafe request invalidates its target URI
    /// (GET and HEAD, every variant). Takes effect at once for lookups and
    /// fills under way; the index entries made before it go in the
    /// background (one a store makes meanwhile stays).
    fn invalidate(self: &Arc<Self>, resource: PrimaryKey) -> JoinHandle<()> {
        let now = Instant::now();
        let cut = self.versions.load(Ordering::SeqCst);
        {
            let mut invalidated = self
                .invalidated
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if invalidated.len() >= MAX_INVALIDATION_MARKS {
                invalidated.retain(|_, m| now.duration_since(m.at) < INVALIDATION_MARK);
            }
            if invalidated.len() >= MAX_INVALIDATION_MARKS {
                // Too many to remember: fail safe, no fill under way may store.
                invalidated.clear();
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            invalidated.insert(resource.clone(), Mark { at: now, cut });
        }
        let store = self.clone();
        tokio::spawn(async move {
            for head in [false, true] {
                let key = PrimaryKey {
                    head,
                    ..resource.clone()
                };
                store
                    .index
                    .entry(key)
                    .and_compute_with(|index| async move {
                        match index {
                            Some(i) if i.value().version < cut => Op::Remove,
                            _ => Op::Nop,
                        }
                    })
                    .await;
            }
        })
    }

    /// Lead the fetch of `primary`, or join the one in flight.
    fn lead_or_follow(self: &Arc<Self>, primary: &PrimaryKey) -> Result<Lead, watch::Receiver<()>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = inflight.get(primary) {
            if rx.has_changed().is_ok() {
                return Err(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(primary.clone(), rx.clone());
        Ok(Lead {
            store: self.clone(),
            primary: primary.clone(),
            rx,
            _tx: tx,
        })
    }
}

/// The leading fetch of a resource: followers wake when it is dropped
/// (stored, not storable, or failed).
struct Lead {
    store: Arc<Store>,
    primary: PrimaryKey,
    rx: watch::Receiver<()>,
    _tx: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut inflight = self
            .store
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(&self.primary)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            inflight.remove(&self.primary);
        }
    }
}

/// Every cache store of the proxy (see the module docs).
#[derive(Default)]
pub struct Caches {
    stores: Mutex<HashMap<StoreKey, Arc<Store>>>,
    /// The config hash the stores were last pruned for.
    pruned_for: Mutex<String>,
}

impl Caches {
    fn store(&self, generation: &Generation, tenant: &str, config: &CacheConfig) -> Arc<Store> {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut pruned_for = self
                .pruned_for
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *pruned_for != generation.config_hash {
                let live = live_stores(&generation.snapshot);
                stores.retain(|k, _| live.contains(k));
                pruned_for.clone_from(&generation.config_hash);
            }
        }
        stores
            .entry(StoreKey::new(tenant, config))
            .or_insert_with(|| Arc::new(Store::new(config)))
            .clone()
    }

    /// Remove `tenant`'s stored responses whose normalized path starts with
    /// `path_prefix` (every one for `""`), and keep fetches already under
    /// way from storing theirs. Returns how many were removed.
    pub async fn purge(&self, tenant: &str, path_prefix: &str) -> u64 {
        let stores: Vec<Arc<Store>> = self
            .stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(k, _)| k.tenant == tenant)
            .map(|(_, s)| s.clone())
            .collect();
        let mut purged = 0;
        for store in stores {
            store.epoch.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Arc<ObjectKey>> = store
                .objects
                .iter()
                .filter(|(k, _)| {
                    &*k.primary.tenant == tenant && k.primary.path.starts_with(path_prefix)
                })
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                if store.objects.remove(&*key).await.is_some() {
                    purged += 1;
                }
            }
            let primaries: Vec<Arc<PrimaryKey>> = store
                .index
                .iter()
                .filter(|(k, _)| k.path.starts_with(path_prefix))
                .map(|(k, _)| k)
                .collect();
            for key in primaries {
                store.index.invalidate(&*key).await;
            }
            store.objects.run_pending_tasks().await;
        }
        purged
    }
}

/// The stores a snapshot's routes use.
fn live_stores(snap: &Snapshot) -> HashSet<StoreKey> {
    let mut live = HashSet::new();
    for lid in 0..snap.listeners.len() {
        for (tid, t) in snap.tenants.iter().enumerate() {
            if !t.served_on.contains(lid) {
                continue;
            }
            for (rid, r) in t.routes.iter().enumerate() {
                let RouteAction::Forward { legs, .. } = &r.action else {
                    continue;
                };
                for (gid, _) in legs {
                    let policy = snap.policy(lid as u32, tid as u32, rid as u32, Some(*gid));
                    if let Some(c) = policy.cache() {
                        live.insert(StoreKey::new(&t.name, c));
                    }
                }
            }
        }
    }
    live
}

/// What the cache needs to know of a request being forwarded.
pub struct Ask<'a> {
    /// Tenant name.
    pub tenant: &'a str,
    /// Normalized host.
    pub host: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// The proxy identified the caller (a verified identity).
    pub authenticated: bool,
    /// Idempotent, without a body, not an upgrade.
    pub replayable: bool,
    /// The group it goes to (for background refreshes).
    pub group: &'a Arc<GroupRuntime>,
    /// Its timeouts.
    pub timeouts: &'a Timeouts,
    /// The client (for the group's hash balancing on a refresh).
    pub client_ip: IpAddr,
}

/// The outcome of [`lookup`].
pub enum Lookup {
    /// Answer with a stored response.
    Hit(Hit),
    /// Go upstream; hand the fill (if any) to [`tee`] with the response.
    Go(Option<Fill>),
}

/// A request with the cache in mind, between [`lookup`] and [`tee`].
pub struct Fill {
    miss: Option<Box<Miss>>,
    /// An unsafe request: its target is invalidated on success.
    invalidate: Option<(Arc<Store>, PrimaryKey)>,
}

/// A request that may store its response.
struct Miss {
    store: Arc<Store>,
    primary: PrimaryKey,
    /// The request as the policy sees it (origin-form URI, no `Host`).
    request: request::Parts,
    /// The stale entry a conditional request was sent to revalidate.
    revalidate: Option<Arc<Entry>>,
    epoch: u64,
    /// When the lookup was made (an invalidation after it wins).
    looked_up: Instant,
    lead: Option<Lead>,
}

/// A stored response to answer with.
pub struct Hit {
    entry: Arc<Entry>,
    label: &'static str,
    head: bool,
    not_modified: bool,
}

/// The request as the cache's rules see it, or `None` when the URI has no
/// path (never for a forwarded request).
fn view(parts: &request::Parts) -> Option<request::Parts> {
    let pq = parts.uri.path_and_query()?.clone();
    let uri = Uri::builder().path_and_query(pq).build().ok()?;
    let (mut view, ()) = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(())
        .ok()?
        .into_parts();
    view.headers = parts.headers.clone();
    view.headers.remove(http::header::HOST);
    Some(view)
}

fn comma_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    comma_values(headers, &CACHE_CONTROL).any(|d| {
        let name = d.split('=').next().unwrap_or(d).trim();
        name.eq_ignore_ascii_case(directive)
    })
}

/// The `Vary` names of a response, lowercase; `None` for `Vary: *`.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in comma_values(headers, &VARY) {
        if v == "*" {
            return None;
        }
        let name = HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes()).ok()?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// The freshness rules of a response: the library's, with the config's
/// `ttl` as the lifetime of a heuristically cacheable response that gives
/// none. `request` is the [`view`] of the request.
fn make_policy(
    config: &CacheConfig,
    request: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    vary: &[HeaderName],
    now: SystemTime,
) -> CachePolicy {
    let mut res_headers = headers.clone();
    let explicit = headers.contains_key(EXPIRES)
        || has_directive(headers, "max-age")
        || has_directive(headers, "s-maxage");
    let ttl = config.ttl.as_secs();
    if !explicit && ttl > 0 && HEURISTIC.contains(&status.as_u16()) {
        if let Ok(v) = HeaderValue::from_str(&format!("s-maxage={ttl}")) {
            res_headers.append(CACHE_CONTROL, v);
        }
    }
    let (mut res, ()) = Response::new(()).into_parts();
    res.status = status;
    res.headers = res_headers;
    let mut req = request.clone();
    // `cache_authenticated`: the operator vouches that responses do not
    // depend on the credentials, unless the response says it varies on them.
    if config.cache_authenticated && !vary.contains(&AUTHORIZATION) {
        req.headers.remove(AUTHORIZATION);
    }
    let opts = CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    };
    CachePolicy::new_options(&req, &res, now, opts)
}

/// The headers of a stored response updated by a 304 (RFC 9111 §4.3.4).
fn merge_not_modified(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    let keep = [
        CONTENT_LENGTH,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_RANGE,
        http::header::TRANSFER_ENCODING,
        x_cache(),
    ];
    let names: HashSet<&HeaderName> = fresh.keys().filter(|n| !keep.contains(n)).collect();
    for name in names {
        out.remove(name);
        for v in fresh.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

fn weight(key: &PrimaryKey, headers: &HeaderMap, body: &Bytes) -> u32 {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    // The policy keeps copies of the request and response fields.
    let estimate = body.len() + 3 * fields + key.path.len() + key.host.len() + 512;
    u32::try_from(estimate).unwrap_or(u32::MAX)
}

impl Miss {
    fn config(&self) -> &CacheConfig {
        &self.store.config
    }

    /// The stored form of a response, if it may be stored: its headers, its
    /// `Vary` names, and the policy.
    fn admit(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<(HeaderMap, Vec<HeaderName>, CachePolicy)> {
        let mut stored = headers.clone();
        stored.remove(x_cache());
        if stored.contains_key(SET_COOKIE) {
            if !self.config().cache_set_cookie {
                return None;
            }
            stored.remove(SET_COOKIE);
        }
        let vary = vary_names(&stored)?;
        let length = stored
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !self.primary.head && length.is_some_and(|n| n > self.store.object_limit) {
            return None;
        }
        let policy = make_policy(self.config(), &self.request, status, &stored, &vary, now);
        if !policy.is_storable() || policy.time_to_live(now).is_zero() {
            return None;
        }
        Some((stored, vary, policy))
    }

    fn entry(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        policy: CachePolicy,
        now: SystemTime,
    ) -> Entry {
        let ttl = policy.time_to_live(now);
        let may_serve_stale = ![
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "s-maxage",
        ]
        .iter()
        .any(|d| has_directive(&headers, d));
        let swr = if may_serve_stale {
            self.config().stale_while_revalidate
        } else {
            Duration::ZERO
        };
        let revalidate = if headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED) {
            ttl.min(MAX_REVALIDATE_KEEP)
        } else {
            Duration::ZERO
        };
        Entry {
            status,
            weight: weight(&self.primary, &headers, &body),
            headers,
            body,
            policy,
            keep: ttl + swr.max(revalidate),
            stale_until: now + ttl + swr,
            stored: Instant::now(),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Store `entry` in the background; followers wake once it is in, and
    /// the returned [`Landing`] resolves as soon as lookups can find it (or
    /// it will not be stored), before the cache's own upkeep.
    fn store(mut self, vary: Vec<HeaderName>, entry: Entry) -> Landing {
        let lead = self.lead.take();
        let (landed, landing) = oneshot::channel();
        tokio::spawn(async move {
            let store = &self.store;
            let current = store.epoch.load(Ordering::SeqCst) == self.epoch
                && !store.invalidated_since(&self.primary, self.looked_up);
            if current && u64::from(entry.weight) <= store.config.max_bytes {
                let new_index = |names: Vec<HeaderName>| {
                    Arc::new(Index {
                        names: names.into(),
                        version: store.versions.fetch_add(1, Ordering::SeqCst),
                    })
                };
                // `get_with` makes the index once even when two variants of
                // one resource are stored at the same time: each made its
                // own before, and the later one orphaned the other's object.
                let vary_names = vary.clone();
                let index = store
                    .index
                    .get_with(self.primary.clone(), async { new_index(vary_names) })
                    .await;
                let index = if *index.names == *vary && !store.outdated(&self.primary, &index) {
                    index
                } else {
                    // The resource's Vary changed, or it was invalidated
                    // and the index is not gone yet: its old variants go.
                    let index = new_index(vary);
                    store
                        .index
                        .insert(self.primary.clone(), index.clone())
                        .await;
                    index
                };
                let key = ObjectKey::new(self.primary.clone(), &index, &self.request.headers);
                store.objects.insert(key, Arc::new(entry)).await;
                // Found by lookups from here on; the upkeep may take longer.
                let _ = landed.send(());
                store.objects.run_pending_tasks().await;
            }
            drop(lead);
        });
        landing
    }

    /// The stored entry, refreshed by a 304 that matches it.
    fn not_modified(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<(Vec<HeaderName>, Entry)> {
        let old = self.revalidate.as_ref()?;
        let (mut res, ()) = Response::new(()).into_parts();
        res.status = StatusCode::NOT_MODIFIED;
        res.headers = headers.clone();
        let AfterResponse::NotModified(..) = old.policy.after_response(&self.request, &res, now)
        else {
            return None;
        };
        let merged = merge_not_modified(&old.headers, headers);
        let vary = vary_names(&merged)?;
        let policy = make_policy(
            self.config(),
            &self.request,
            old.status,
            &merged,
            &vary,
            now,
        );
        let entry = self.entry(old.status, merged, old.body.clone(), policy, now);
        Some((vary, entry))
    }
}

fn set_x_cache(headers: &mut HeaderMap, label: &'static str) {
    headers.insert(x_cache(), HeaderValue::from_static(label));
}

/// Look the request up. Call it with the upstream request ready (header
/// edits done): a hit answers; a miss may add validators to `parts` (to
/// revalidate a stale entry) and returns what [`tee`] needs.
pub async fn lookup(
    shared: &Shared,
    generation: &Generation,
    config: Option<&CacheConfig>,
    ask: Ask<'_>,
    parts: &mut request::Parts,
) -> Lookup {
    let Some(config) = config else {
        return Lookup::Go(None);
    };
    let store = shared.caches.store(generation, ask.tenant, config);
    let resource = PrimaryKey {
        tenant: ask.tenant.into(),
        head: false,
        host: ask.host.into(),
        path: ask.path.into(),
        query: ask.query.map(Into::into),
    };
    let bypass = Lookup::Go(Some(Fill {
        miss: None,
        invalidate: None,
    }));
    let head = match parts.method {
        Method::GET => false,
        Method::HEAD => true,
        Method::OPTIONS | Method::TRACE => return bypass,
        _ => {
            return Lookup::Go(Some(Fill {
                miss: None,
                invalidate: Some((store, resource)),
            }))
        }
    };
    let authenticated = ask.authenticated || parts.headers.contains_key(AUTHORIZATION);
    if !ask.replayable
        || parts.headers.contains_key(RANGE)
        || (authenticated && !config.cache_authenticated)
    {
        return bypass;
    }
    let Some(request) = view(parts) else {
        return bypass;
    };
    let primary = PrimaryKey { head, ..resource };
    let asks_fresh =
        parts.headers.contains_key(CACHE_CONTROL) || parts.headers.contains_key(PRAGMA);
    let wait = ask
        .timeouts
        .request
        .unwrap_or(ask.timeouts.first_byte)
        .min(MAX_COALESCE_WAIT);
    let mut waited = false;
    loop {
        let now = SystemTime::now();
        let mut stale = None;
        if let Some(entry) = store.find(&primary, &request.headers).await {
            match entry.policy.before_request(&request, now) {
                BeforeRequest::Fresh(_) => {
                    return Lookup::Hit(Hit::new(entry, "HIT", head, &parts.headers));
                }
                BeforeRequest::Stale { matches: true, .. } => {
                    if !asks_fresh && now < entry.stale_until {
                        if !entry.refreshing.swap(true, Ordering::SeqCst) {
                            let miss = Miss {
                                store: store.clone(),
                                primary: primary.clone(),
                                request: request.clone(),
                                revalidate: Some(entry.clone()),
                                epoch: store.epoch.load(Ordering::SeqCst),
                                looked_up: Instant::now(),
                                lead: None,
                            };
                            tokio::spawn(refresh(
                                miss,
                                parts.clone(),
                                ask.group.clone(),
                                ask.timeouts.clone(),
                                ask.client_ip,
                            ));
                        }
                        return Lookup::Hit(Hit::new(entry, "STALE", head, &parts.headers));
                    }
                    stale = Some(entry);
                }
                BeforeRequest::Stale { .. } => {}
            }
        }
        let lead = if config.coalesce && !waited {
            match store.lead_or_follow(&primary) {
                Ok(lead) => Some(lead),
                Err(mut follow) => {
                    let _ = tokio::time::timeout(wait, follow.changed()).await;
                    waited = true;
                    continue;
                }
            }
        } else {
            None
        };
        // Revalidate a stale entry, unless the client asks its own question.
        let client_conditional = CONDITIONALS.iter().any(|h| parts.headers.contains_key(h));
        let revalidate = stale.filter(|e| e.has_validator() && !client_conditional);
        if let Some(e) = &revalidate {
            add_validators(&mut parts.headers, e);
        }
        return Lookup::Go(Some(Fill {
            miss: Some(Box::new(Miss {
                epoch: store.epoch.load(Ordering::SeqCst),
                looked_up: Instant::now(),
                store,
                primary,
                request,
                revalidate,
                lead,
            })),
            invalidate: None,
        }));
    }
}

fn add_validators(headers: &mut HeaderMap, entry: &Entry) {
    if let Some(etag) = entry.headers.get(ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = entry.headers.get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Does a client's `If-None-Match` / `If-Modified-Since` match the entry
/// (RFC 9110 §13.1.2, §13.1.3; weak comparison)?
fn client_not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    if entry.status != StatusCode::OK {
        return false;
    }
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let etag = weak(etag);
        return comma_values(request, &IF_NONE_MATCH).any(|t| t == "*" || weak(t) == etag);
    }
    let since = request
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = entry
        .headers
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

impl Hit {
    fn new(entry: Arc<Entry>, label: &'static str, head: bool, request: &HeaderMap) -> Hit {
        let not_modified = client_not_modified(&entry, request);
        Hit {
            entry,
            label,
            head,
            not_modified,
        }
    }

    /// The response, logged (decision `forward`, no target, no upstream
    /// time) when its body ends. `edits` are the route's response header edits.
    pub fn respond(
        self,
        mut line: LogLine,
        shared: &Arc<Shared>,
        started: Instant,
        request_body: Arc<crate::body::Tally>,
        busy: (Busy, BudgetSlots),
        edits: Option<&HeaderEdits>,
    ) -> Response<ProxyBody> {
        let e = &self.entry;
        let mut headers = e.headers.clone();
        let age = e.policy.age(SystemTime::now()).as_secs();
        headers.insert(AGE, HeaderValue::from(age));
        set_x_cache(&mut headers, self.label);
        let (status, body) = if self.not_modified {
            headers.remove(CONTENT_LENGTH);
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else if self.head {
            (e.status, Bytes::new())
        } else {
            (e.status, e.body.clone())
        };
        if let Some(edits) = edits {
            for name in &edits.response_remove {
                headers.remove(name.as_str());
            }
            for (name, value) in &edits.response_set {
                crate::headers::set(&mut headers, name, value);
            }
        }
        line.status = Some(status.as_u16());
        line.target = None;
        line.upstream_ms = None;
        let guard = LogGuard::new(
            line,
            shared.clone(),
            started,
            request_body,
            None,
            Some(busy),
        );
        let body = Logged::new(Full::new(body), guard)
            .map_err(|never: Infallible| match never {})
            .boxed();
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// Hand the upstream response (hop-by-hop fields already stripped) to the
/// cache: sets `X-Cache`, answers a matching 304 of a revalidation from the
/// stored entry, and copies a storable body into the cache as it streams.
pub fn tee<B: Body<Data = Bytes>>(
    fill: Option<Fill>,
    line: &mut LogLine,
    mut parts: response::Parts,
    body: B,
) -> (response::Parts, Tee<B>) {
    let Some(fill) = fill else {
        return (parts, Tee::pass(body));
    };
    let Some(miss) = fill.miss else {
        if let Some((store, resource)) = fill.invalidate {
            if (200..400).contains(&parts.status.as_u16()) {
                // Lookups see it at once; the index cleanup may trail.
                drop(store.invalidate(resource));
            }
        }
        set_x_cache(&mut parts.headers, "BYPASS");
        return (parts, Tee::pass(body));
    };
    let now = SystemTime::now();
    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some((vary, entry)) = miss.not_modified(&parts.headers, now) {
            let (mut out, ()) = Response::new(()).into_parts();
            out.status = entry.status;
            out.headers = entry.headers.clone();
            out.version = parts.version;
            set_x_cache(&mut out.headers, "REVALIDATED");
            line.status = Some(entry.status.as_u16());
            let stored = if miss.primary.head {
                Bytes::new()
            } else {
                entry.body.clone()
            };
            let landing = miss.store(vary, entry);
            let mut tee = Tee::stored(stored, body);
            tee.landing = Some(landing);
            return (out, tee);
        }
    }
    let admitted = miss.admit(parts.status, &parts.headers, now);
    set_x_cache(&mut parts.headers, "MISS");
    let Some((headers, vary, policy)) = admitted else {
        return (parts, Tee::pass(body));
    };
    let filling = Filling {
        status: parts.status,
        headers,
        vary,
        policy,
        buf: Vec::new(),
        len: 0,
        miss,
    };
    if body.is_end_stream() {
        let mut tee = Tee::pass(body);
        tee.landing = filling.finish();
        // The end of the (empty) body waits for the store, if any.
        tee.held = tee.landing.is_some().then_some(None);
        return (parts, tee);
    }
    let mut tee = Tee::pass(body);
    tee.filling = Some(filling);
    (parts, tee)
}

/// A body on its way into the cache.
struct Filling {
    status: StatusCode,
    headers: HeaderMap,
    vary: Vec<HeaderName>,
    policy: CachePolicy,
    buf: Vec<Bytes>,
    len: u64,
    miss: Box<Miss>,
}

impl Filling {
    /// Add a data frame; false when the object grew too large.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len += data.len() as u64;
        if self.len > self.miss.store.object_limit {
            return false;
        }
        self.buf.push(data.clone());
        true
    }

    /// The body is complete: store it (unless it is shorter than announced);
    /// the landing says when it is in.
    fn finish(self) -> Option<Landing> {
        let announced = self
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !self.miss.primary.head && announced.is_some_and(|n| n != self.len) {
            return None;
        }
        let body = match self.buf.len() {
            0 => Bytes::new(),
            1 => self.buf[0].clone(),
            _ => {
                let mut all = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
                for b in &self.buf {
                    all.extend_from_slice(b);
                }
                Bytes::from(all)
            }
        };
        let now = SystemTime::now();
        let entry = self
            .miss
            .entry(self.status, self.headers, body, self.policy, now);
        Some(self.miss.store(self.vary, entry))
    }
}

pin_project_lite::pin_project! {
    /// A response body on its way to the client: passed through, copied into
    /// the cache, or replaced by a stored body (a revalidated entry).
    ///
    /// When the response is stored, its last frame (or its end) waits until
    /// the entry is in, so a client that has the whole response and asks
    /// again is answered from the cache.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        stored: Option<Bytes>,
        replaced: bool,
        filling: Option<Filling>,
        landing: Option<Landing>,
        // What goes out once `landing` is done: a frame, or (`Some(None)`)
        // the end of the body.
        held: Option<Option<Frame<Bytes>>>,
    }
}

impl<B> Tee<B> {
    fn pass(inner: B) -> Tee<B> {
        Tee {
            inner,
            stored: None,
            replaced: false,
            filling: None,
            landing: None,
            held: None,
        }
    }

    fn stored(body: Bytes, inner: B) -> Tee<B> {
        Tee {
            stored: (!body.is_empty()).then_some(body),
            replaced: true,
            ..Tee::pass(inner)
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(landing) = this.landing.as_mut() {
                // Stored, or not to be: either way the response goes on.
                let _ = ready!(Pin::new(landing).poll(cx));
                *this.landing = None;
                if let Some(held) = this.held.take() {
                    return Poll::Ready(held.map(Ok));
                }
            }
            if *this.replaced {
                return Poll::Ready(this.stored.take().map(|b| Ok(Frame::data(b))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let keep = match (this.filling.as_mut(), frame.data_ref()) {
                        (Some(f), Some(data)) => f.push(data),
                        // Trailers are not stored: neither is the response.
                        _ => false,
                    };
                    if !keep {
                        *this.filling = None;
                    } else if this.inner.is_end_stream() {
                        *this.landing = this.filling.take().and_then(Filling::finish);
                    }
                    if this.landing.is_none() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    *this.held = Some(Some(frame));
                }
                None => {
                    *this.landing = this.filling.take().and_then(Filling::finish);
                    if this.landing.is_none() {
                        return Poll::Ready(None);
                    }
                    *this.held = Some(None);
                }
                Some(Err(e)) => {
                    *this.filling = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.landing.is_some() {
            false
        } else if self.replaced {
            self.stored.is_none()
        } else {
            self.inner.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.replaced {
            SizeHint::with_exact(self.stored.as_ref().map_or(0, |b| b.len() as u64))
        } else {
            self.inner.size_hint()
        }
    }
}

/// Refresh a stale entry served within `stale_while_revalidate`: one
/// request upstream (conditional when the entry has a validator).
async fn refresh(
    miss: Miss,
    mut upstream: request::Parts,
    group: Arc<GroupRuntime>,
    timeouts: Timeouts,
    client_ip: IpAddr,
) {
    let entry = miss.revalidate.clone();
    for h in CONDITIONALS {
        upstream.headers.remove(h);
    }
    if let Some(e) = &entry {
        add_validators(&mut upstream.headers, e);
    }
    if let Err(why) = refresh_once(miss, upstream, &group, &timeouts, client_ip).await {
        tracing::debug!(why, group = %group.full_name, "cache refresh failed");
        // A later request may try again.
        if let Some(e) = entry {
            e.refreshing.store(false, Ordering::SeqCst);
        }
    }
    // After a refresh that stored its response, the replaced entry keeps its
    // flag: a request that found it just before the store must not start a
    // second refresh (a flaky double refresh the cache tests caught).
}

async fn refresh_once(
    miss: Miss,
    upstream: request::Parts,
    group: &Arc<GroupRuntime>,
    timeouts: &Timeouts,
    client_ip: IpAddr,
) -> Result<(), String> {
    let lease = group
        .lease(
            HashKey {
                client_ip: Some(client_ip),
                headers: &upstream.headers,
            },
            timeouts.connect,
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    let target = lease.target;
    let req = http::Request::from_parts(upstream, crate::http::full(Bytes::new()));
    let total = timeouts
        .request
        .unwrap_or(timeouts.first_byte + timeouts.idle);
    let sent = match tokio::time::timeout(
        total,
        group.send(
            target,
            req,
            b"",
            timeouts.first_byte,
            timeouts.connect,
            ResponseHeads::Map,
        ),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout("request timeout")),
    };
    group.report(
        target,
        sent.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
    );
    let (mut parts, body) = sent.map_err(|e| format!("{e:?}"))?.into_parts();
    crate::headers::strip_hop_by_hop(&mut parts.headers, false);
    let now = SystemTime::now();
    if parts.status == StatusCode::NOT_MODIFIED {
        let (vary, entry) = miss
            .not_modified(&parts.headers, now)
            .ok_or("a 304 that does not match the stored response")?;
        // Awaited, so that `refreshing` is cleared once the entry is in.
        let _landed = miss.store(vary, entry).await;
        return Ok(());
    }
    let (headers, vary, policy) = miss
        .admit(parts.status, &parts.headers, now)
        .ok_or("the new response may not be stored")?;
    let limit = usize::try_from(miss.store.object_limit).unwrap_or(usize::MAX);
    let body = tokio::time::timeout(total, Limited::new(body, limit).collect())
        .await
        .map_err(|_| "body timeout")?
        .map_err(|e| e.to_string())?
        .to_bytes();
    drop(lease);
    let entry = miss.entry(parts.status, headers, body, policy, SystemTime::now());
    let _landed = miss.store(vary, entry).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            cache_authenticated: false,
            cache_set_cookie: false,
            coalesce: true,
            stale_while_revalidate: Duration::ZERO,
        }
    }

    fn request(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method("GET").uri("/a?b=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn response(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ttl(status: u16, headers: &[(&'static str, &'static str)]) -> Option<Duration> {
        let h = response(headers);
        let vary = vary_names(&h)?;
        let now = SystemTime::now();
        let status = StatusCode::from_u16(status).expect("status");
        let p = make_policy(&config(), &request(&[]), status, &h, &vary, now);
        p.is_storable().then(|| p.time_to_live(now))
    }

    #[test]
    fn config_ttl_only_when_the_response_gives_no_freshness() {
        assert_eq!(ttl(200, &[]), Some(Duration::from_secs(60)));
        assert_eq!(
            ttl(200, &[("cache-control", "max-age=5")]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            ttl(200, &[("cache-control", "max-age=5, s-maxage=7")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(ttl(404, &[]), Some(Duration::from_secs(60)));
        // Not heuristically cacheable: only with explicit freshness.
        assert_eq!(ttl(302, &[]), None);
        assert_eq!(
            ttl(302, &[("cache-control", "max-age=9")]),
            Some(Duration::from_secs(9))
        );
        assert_eq!(ttl(500, &[("cache-control", "max-age=9")]), None);
        assert_eq!(ttl(200, &[("cache-control", "no-store")]), None);
        assert_eq!(ttl(200, &[("cache-control", "private, max-age=9")]), None);
        assert_eq!(
            ttl(200, &[("cache-control", "no-cache")]),
            Some(Duration::ZERO)
        );
        assert_eq!(ttl(200, &[("vary", "*")]), None);
    }

    #[test]
    fn authorization_needs_the_flag_and_no_vary_on_it() {
        let now = SystemTime::now();
        let req = request(&[("authorization", "Bearer x")]);
        let h = HeaderMap::new();
        let p = make_policy(&config(), &req, StatusCode::OK, &h, &[], now);
        // s-maxage (the ttl stand-in) allows it by RFC 9111 §3.5 — which is
        // why `lookup` refuses authenticated requests before any policy.
        assert!(p.is_storable());
        let mut c = config();
        c.cache_authenticated = true;
        let p = make_policy(&c, &req, StatusCode::OK, &h, &[AUTHORIZATION], now);
        assert!(p.is_storable());
        let h = response(&[("cache-control", "max-age=5")]);
        let p = make_policy(&c, &req, StatusCode::OK, &h, &[AUTHORIZATION], now);
        assert!(!p.is_storable(), "varies on credentials, no public");
        let p = make_policy(&c, &req, StatusCode::OK, &h, &[], now);
        assert!(p.is_storable());
    }

    /// Tenant `a`'s `GET h/`.
    fn primary() -> PrimaryKey {
        PrimaryKey {
            tenant: "a".into(),
            head: false,
            host: "h".into(),
            path: "/".into(),
            query: None,
        }
    }

    #[tokio::test]
    async fn an_index_made_after_an_invalidation_outlives_its_cleanup() {
        let store = Arc::new(Store::new(&config()));
        let pk = primary();
        let index = |store: &Store| {
            Arc::new(Index {
                names: Box::new([]),
                version: store.versions.fetch_add(1, Ordering::SeqCst),
            })
        };
        let old = index(&store);
        store.index.insert(pk.clone(), old.clone()).await;
        // The cleanup is spawned; on this one-thread runtime it has not run.
        let cleanup = store.invalidate(pk.clone());
        assert!(store.outdated(&pk, &old), "not reused by a store");
        let new = index(&store);
        assert!(!store.outdated(&pk, &new));
        store.index.insert(pk.clone(), new.clone()).await;
        cleanup.await.expect("cleanup");
        store.index.run_pending_tasks().await;
        assert_eq!(
            store.index.get(&pk).await.map(|i| i.version),
            Some(new.version),
            "the cleanup removes only what was made before the invalidation"
        );
        store.invalidate(pk.clone()).await.expect("cleanup");
        store.index.run_pending_tasks().await;
        assert!(store.index.get(&pk).await.is_none());
    }

    #[test]
    fn vary_values_make_the_key() {
        let pk = primary();
        let names =
            vary_names(&response(&[("vary", "Accept-Language, accept-encoding")])).expect("names");
        assert_eq!(names.len(), 2);
        let names = Index {
            names: names.into(),
            version: 0,
        };
        let en = ObjectKey::new(
            pk.clone(),
            &names,
            &request(&[("accept-language", "en")]).headers,
        );
        let de = ObjectKey::new(
            pk.clone(),
            &names,
            &request(&[("accept-language", "de")]).headers,
        );
        let none = ObjectKey::new(pk.clone(), &names, &request(&[]).headers);
        let en2 = ObjectKey::new(
            pk.clone(),
            &names,
            &request(&[("accept-language", "en"), ("x-other", "1")]).headers,
        );
        assert_ne!(en, de);
        let newer = Index {
            names: names.names.clone(),
            version: 1,
        };
        assert_ne!(
            ObjectKey::new(
                pk.clone(),
                &newer,
                &request(&[("accept-language", "en")]).headers
            ),
            en,
            "an invalidated resource's variants are never found again"
        );
        assert_ne!(en, none);
        assert_eq!(en, en2);
        let other_tenant = PrimaryKey {
            tenant: "b".into(),
            ..pk
        };
        assert_ne!(
            ObjectKey::new(
                other_tenant,
                &names,
                &request(&[("accept-language", "en")]).headers
            ),
            en
        );
    }

    #[test]
    fn not_modified_merges_but_keeps_the_body_fields() {
        let stored = response(&[
            ("content-length", "5"),
            ("etag", "\"1\""),
            ("cache-control", "max-age=1"),
        ]);
        let fresh = response(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("x-new", "y"),
        ]);
        let merged = merge_not_modified(&stored, &fresh);
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["cache-control"], "max-age=60");
        assert_eq!(merged["x-new"], "y");
        assert_eq!(merged["etag"], "\"1\"");
    }

    #[test]
    fn client_conditionals_on_hits() {
        let (policy, now) = (
            make_policy(
                &config(),
                &request(&[]),
                StatusCode::OK,
                &HeaderMap::new(),
                &[],
                SystemTime::now(),
            ),
            SystemTime::now(),
        );
        let entry = Entry {
            status: StatusCode::OK,
            headers: response(&[
                ("etag", "W/\"v1\""),
                ("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ]),
            body: Bytes::from_static(b"x"),
            policy,
            keep: Duration::from_secs(1),
            stale_until: now,
            weight: 1,
            stored: Instant::now(),
            refreshing: AtomicBool::new(false),
        };
        let h = |k, v| request(&[(k, v)]).headers;
        assert!(client_not_modified(&entry, &h("if-none-match", "\"v1\"")));
        assert!(client_not_modified(
            &entry,
            &h("if-none-match", "\"v0\", W/\"v1\"")
        ));
        assert!(!client_not_modified(&entry, &h("if-none-match", "\"v2\"")));
        assert!(client_not_modified(
            &entry,
            &h("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")
        ));
        assert!(!client_not_modified(
            &entry,
            &h("if-modified-since", "Mon, 31 Dec 2029 00:00:00 GMT")
        ));
        assert!(!client_not_modified(
            &entry,
            &h("if-modified-since", "garbage")
        ));
    }
}
