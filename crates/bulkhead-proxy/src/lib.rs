//! # bulkhead-proxy
//!
//! The data plane. It owns the sockets — accept loops, TLS, HTTP parsing
//! strictness — because segmentation starts at the socket, and it asks
//! `bulkhead-core`'s `decide()` about every request and every TCP
//! connection: there is no second copy of the rules here.
//!
//! The modules follow a request's path (DESIGN §2): [`server`] (bind,
//! accept, `allow_sources`, `max_connections`, TLS) → `http` (strict framing
//! checks, the decision, the local answer or the upstream exchange) →
//! [`headers`] (trust-boundary headers) → [`upstream`] and [`balance`]
//! (pools, bulkheads, picking a target; [`health`] keeps targets honest) →
//! [`access_log`] (one JSON line per request). `stream` splices tcp and
//! tls-passthrough connections.
#![deny(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod balance;
mod body;
pub mod cache;
pub mod client_hello;
mod h1_server;
#[doc(hidden)]
pub use h1_server::parse_head as fast_path_parse_head;
pub mod h1_upstream;
pub mod headers;
pub mod health;
mod histogram;
mod http;
pub mod metrics;
pub mod policy;
pub mod raw_head;
pub mod server;
mod stream;
mod timers;
mod tls;
pub mod upstream;

use access_log::{AccessLogger, LogLine};
use arc_swap::ArcSwap;
use bulkhead_config::{Faults, Protocol};
use bulkhead_core::Snapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use upstream::Upstreams;

/// Errors crossing body and client boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A snapshot and what was built for it at run time, swapped together:
/// in-flight requests finish on the generation they started with.
pub struct Generation {
    /// The compiled config.
    pub snapshot: Arc<Snapshot>,
    /// Its groups at run time.
    pub upstreams: Arc<Upstreams>,
    /// rustls configs of its https listeners, by listener name.
    pub tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// A short hash of the config file's effective content.
    pub config_hash: String,
    /// Rate limiters and concurrency budgets.
    pub policies: Arc<policy::Policies>,
    /// JWT and basic-auth verifiers of its routes (auth.rs).
    pub auth: Arc<auth::Verifiers>,
    /// The snapshot's names, shared, for log lines and metric labels.
    pub names: Arc<access_log::Names>,
}

impl Generation {
    /// Assemble a generation; with `previous`, targets keep their pools and
    /// live state and budgets keep their counters (DESIGN §7 reload).
    fn build(
        snapshot: Arc<Snapshot>,
        tls: HashMap<String, Arc<rustls::ServerConfig>>,
        auth: Arc<auth::Verifiers>,
        previous: Option<&Generation>,
    ) -> Generation {
        let upstreams = Arc::new(Upstreams::new(&snapshot, previous.map(|p| &*p.upstreams)));
        let policies = Arc::new(policy::Policies::new(
            &snapshot,
            previous.map(|p| (&*p.snapshot, &*p.policies)),
        ));
        Generation {
            config_hash: config_hash(&snapshot),
            names: Arc::new(access_log::Names::of(&snapshot)),
            snapshot,
            upstreams,
            tls,
            policies,
            auth,
        }
    }
}

/// State shared by every connection.
pub struct Shared {
    /// The generation serving new requests.
    pub generation: ArcSwap<Generation>,
    /// The access log.
    pub logger: AccessLogger,
    /// The metrics.
    pub metrics: metrics::Metrics,
    /// Faults set at run time through the admin API, by (tenant, route);
    /// they override the config's `faults` for that route.
    pub faults: Mutex<HashMap<(String, String), Faults>>,
    /// Response caches (`cache` policies), kept across reloads.
    pub caches: cache::Caches,
}

impl Shared {
    /// Account for a finished request or connection: metrics, then the access log.
    pub fn record(&self, line: LogLine) {
        self.metrics.observe(&line);
        self.logger.log(line);
    }

    /// The runtime fault override of a route, if any.
    pub fn fault_override(&self, tenant: &str, route: &str) -> Option<Faults> {
        let faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if faults.is_empty() {
            return None;
        }
        faults
            .get(&(tenant.to_string(), route.to_string()))
            .cloned()
    }
}

/// One listener's socket and accept loop.
struct ListenerHandle {
    bind: SocketAddr,
    socket: Arc<TcpListener>,
    local: SocketAddr,
    stop: CancellationToken,
}

/// The outcome of the last reload, for `GET /status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadStatus {
    /// Did it apply?
    pub ok: bool,
    /// When (RFC 3339).
    pub at: String,
    /// Why not.
    pub errors: Vec<String>,
}

struct State {
    listeners: HashMap<String, ListenerHandle>,
    health: CancellationToken,
    last_reload: Option<ReloadStatus>,
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    life: server::Lifecycle,
    accept_loops: TaskTracker,
    state: Mutex<State>,
    reloading: tokio::sync::Mutex<()>,
    config_path: Option<PathBuf>,
    started: Instant,
}

/// Why the proxy could not start (or a reload could not apply).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listeners could not be bound or their TLS set up.
    #[error("{}", .0.join("\n"))]
    Listeners(Vec<String>),
    /// The access log could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// The config asks for something this data plane does not do yet.
    #[error("{0}")]
    Unsupported(String),
    /// A JWKS or users file of an `auth` could not be loaded.
    #[error("{}", .0.join("\n"))]
    Auth(Vec<String>),
}

/// The auth verifiers of a snapshot, or every load error as text.
fn auth_verifiers(snapshot: &Snapshot) -> Result<Arc<auth::Verifiers>, Vec<String>> {
    auth::Verifiers::build(snapshot)
        .map(Arc::new)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// A short, stable hash of a config's effective content (FNV-1a of the graph
/// and the config debug form), for `/status` and drift checks.
pub fn config_hash(snapshot: &Snapshot) -> String {
    format!(
        "{:016x}",
        balance::hash_bytes(format!("{:?}", snapshot.config).as_bytes())
    )
}

fn check_supported(snapshot: &Snapshot) -> Result<(), StartError> {
    for t in &snapshot.config.tenants {
        if let Some(g) = t.target_groups.iter().find(|g| g.tls.is_some()) {
            return Err(StartError::Unsupported(format!(
                "target group `{}/{}` sets `tls`: TLS towards targets is not supported by this version; remove it rather than send plaintext",
                t.name.value, g.name.value
            )));
        }
    }
    Ok(())
}

fn tls_configs(
    snapshot: &Snapshot,
) -> Result<HashMap<String, Arc<rustls::ServerConfig>>, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for l in snapshot
        .config
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Https)
    {
        match tls::server_config(l) {
            Ok(c) => {
                out.insert(l.name.value.clone(), c);
            }
            Err(e) => errors.push(format!("listener `{}`: {e}", l.name.value)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn spawn_health(generation: &Generation) -> CancellationToken {
    let stop = CancellationToken::new();
    // Rate-limit buckets of keys that went quiet are forgotten, to bound memory.
    let (policies, until) = (generation.policies.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = tick.tick() => policies.limiters().for_each(|l| l.shrink()),
            }
        }
    });
    for (id, group) in generation.upstreams.all().iter().enumerate() {
        if let Some(check) = &generation.snapshot.group_config(id as u32).health {
            health::spawn(group.clone(), check.clone(), stop.clone());
        }
    }
    stop
}

/// What a reload will do with one listener's socket.
enum SocketPlan {
    /// Same name, same bind: the running loop goes on.
    Keep,
    /// Another (old) listener's socket on the same address, taken over.
    Take(String),
    /// A freshly bound socket.
    New(Arc<TcpListener>),
}

impl Proxy {
    /// Bind every listener of `snapshot` and start serving. Must be called
    /// inside a tokio runtime.
    pub async fn start(snapshot: Arc<Snapshot>) -> Result<Proxy, StartError> {
        let logger =
            AccessLogger::start(&snapshot.config.log.access).map_err(StartError::AccessLog)?;
        Self::start_with_logger(snapshot, logger).await
    }

    /// [`Proxy::start`] with a given access logger.
    pub async fn start_with_logger(
        snapshot: Arc<Snapshot>,
        logger: AccessLogger,
    ) -> Result<Proxy, StartError> {
        Self::start_full(snapshot, logger, None).await
    }

    /// Start, remembering the config file so that [`Proxy::reload_from_file`]
    /// (SIGHUP, `POST /reload`) can re-read it.
    pub async fn start_full(
        snapshot: Arc<Snapshot>,
        logger: AccessLogger,
        config_path: Option<PathBuf>,
    ) -> Result<Proxy, StartError> {
        check_supported(&snapshot)?;
        let tls = tls_configs(&snapshot).map_err(StartError::Listeners)?;
        let auth = auth_verifiers(&snapshot).map_err(StartError::Auth)?;
        let mut sockets = Vec::new();
        let mut errors = Vec::new();
        for l in &snapshot.config.listeners {
            match server::bind(l).await {
                Ok(s) => sockets.push((l.name.value.clone(), l.bind.value, s)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(StartError::Listeners(errors));
        }
        let generation = Generation::build(snapshot, tls, auth, None);
        let health = spawn_health(&generation);
        let shared = Arc::new(Shared {
            generation: ArcSwap::from_pointee(generation),
            logger,
            metrics: metrics::Metrics::default(),
            faults: Mutex::new(HashMap::new()),
            caches: cache::Caches::default(),
        });
        let proxy = Proxy {
            shared,
            life: server::Lifecycle {
                stop_accepting: CancellationToken::new(),
                drain: CancellationToken::new(),
                connections: TaskTracker::new(),
            },
            accept_loops: TaskTracker::new(),
            state: Mutex::new(State {
                listeners: HashMap::new(),
                health,
                last_reload: None,
            }),
            reloading: tokio::sync::Mutex::new(()),
            config_path,
            started: Instant::now(),
        };
        {
            let mut state = proxy.lock_state();
            for (name, bind, socket) in sockets {
                let handle = proxy.spawn_loop(&name, bind, socket);
                state.listeners.insert(name, handle);
            }
        }
        Ok(proxy)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_loop(&self, name: &str, bind: SocketAddr, socket: Arc<TcpListener>) -> ListenerHandle {
        let stop = CancellationToken::new();
        let local = socket.local_addr().unwrap_or(bind);
        self.accept_loops.spawn(server::accept_loop(
            name.into(),
            socket.clone(),
            self.shared.clone(),
            self.life.clone(),
            stop.clone(),
        ));
        ListenerHandle {
            bind,
            socket,
            local,
            stop,
        }
    }

    /// The address each listener is bound to (useful with port 0).
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<_> = self
            .lock_state()
            .listeners
            .iter()
            .map(|(n, h)| (n.clone(), h.local))
            .collect();
        out.sort();
        out
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock_state().listeners.get(name).map(|h| h.local)
    }

    /// The access logger.
    pub fn logger(&self) -> &AccessLogger {
        &self.shared.logger
    }

    /// State shared with connections (for the admin API).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The outcome of the last reload.
    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.lock_state().last_reload.clone()
    }

    /// The config file given at start, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Re-read the config file given at start and reload it.
    pub async fn reload_from_file(&self) -> Result<(), Vec<String>> {
        let Some(path) = &self.config_path else {
            return self.finish_reload(Err(vec![
                "this proxy was not started from a config file".into()
            ]));
        };
        match Snapshot::load(path) {
            Ok(s) => self.reload(Arc::new(s)).await,
            Err(errors) => {
                self.finish_reload(Err(errors.0.iter().map(ToString::to_string).collect()))
            }
        }
    }

    fn finish_reload(&self, result: Result<(), Vec<String>>) -> Result<(), Vec<String>> {
        self.shared.metrics.reload(result.is_ok());
        let status = ReloadStatus {
            ok: result.is_ok(),
            at: access_log::timestamp(SystemTime::now()),
            errors: result.as_ref().err().cloned().unwrap_or_default(),
        };
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(errors) => {
                tracing::warn!(errors = %errors.join("; "), "reload rejected; nothing changed")
            }
        }
        self.lock_state().last_reload = Some(status);
        result
    }

    /// Swap to a new snapshot without dropping a request: everything that
    /// can fail (TLS configs, binding new sockets) happens first, and if
    /// anything fails nothing changes. Then the generation is swapped
    /// atomically; unchanged listeners keep their sockets, removed ones stop
    /// accepting, new ones start; targets that did not change keep their
    /// pools and health state.
    pub async fn reload(&self, snapshot: Arc<Snapshot>) -> Result<(), Vec<String>> {
        let _one_at_a_time = self.reloading.lock().await;
        if let Err(e) = check_supported(&snapshot) {
            return self.finish_reload(Err(vec![e.to_string()]));
        }
        let tls = match tls_configs(&snapshot) {
            Ok(t) => t,
            Err(errors) => return self.finish_reload(Err(errors)),
        };
        let auth = match auth_verifiers(&snapshot) {
            Ok(a) => a,
            Err(errors) => return self.finish_reload(Err(errors)),
        };
        let current: HashMap<String, SocketAddr> = self
            .lock_state()
            .listeners
            .iter()
            .map(|(n, h)| (n.clone(), h.bind))
            .collect();
        let mut plan = Vec::new();
        let mut errors = Vec::new();
        for l in &snapshot.config.listeners {
            let (name, bind) = (&l.name.value, l.bind.value);
            let action = if current.get(name) == Some(&bind) {
                SocketPlan::Keep
            } else if let Some(old) = current
                .iter()
                .find(|(_, b)| **b == bind && bind.port() != 0)
                .map(|(n, _)| n.clone())
            {
                SocketPlan::Take(old)
            } else {
                match server::bind(l).await {
                    Ok(socket) => SocketPlan::New(socket),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            };
            plan.push((name.clone(), bind, action));
        }
        if !errors.is_empty() {
            return self.finish_reload(Err(errors));
        }
        let previous = self.shared.generation.load_full();
        let generation = Generation::build(snapshot, tls, auth, Some(&previous));
        let health = spawn_health(&generation);
        self.shared.generation.store(Arc::new(generation));

        let mut state = self.lock_state();
        let mut old = std::mem::take(&mut state.listeners);
        for (name, bind, action) in plan {
            let handle = match action {
                SocketPlan::Keep => old.remove(&name),
                SocketPlan::Take(from) => old
                    .get(&from)
                    .map(|h| h.socket.clone())
                    .map(|socket| self.spawn_loop(&name, bind, socket)),
                SocketPlan::New(socket) => Some(self.spawn_loop(&name, bind, socket)),
            };
            if let Some(h) = handle {
                state.listeners.insert(name, h);
            }
        }
        for (_, h) in old {
            h.stop.cancel();
        }
        std::mem::replace(&mut state.health, health).cancel();
        drop(state);
        // Runtime faults were set against the old rules; the file is the truth again.
        self.shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.finish_reload(Ok(()))
    }

    /// Stop accepting at once, let in-flight requests finish for up to
    /// `drain`, then close what is left. Returns true when everything
    /// finished in time.
    pub async fn shutdown(&self, drain: Duration) -> bool {
        self.life.stop_accepting.cancel();
        self.accept_loops.close();
        self.accept_loops.wait().await;
        self.lock_state().listeners.clear();
        self.life.drain.cancel();
        self.life.connections.close();
        self.lock_state().health.cancel();
        tokio::time::timeout(drain, self.life.connections.wait())
            .await
            .is_ok()
    }
}
