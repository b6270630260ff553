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
pub mod balance;
mod body;
pub mod client_hello;
pub mod headers;
pub mod health;
mod http;
pub mod server;
mod stream;
mod timers;
mod tls;
pub mod upstream;

use access_log::AccessLogger;
use arc_swap::ArcSwap;
use bulkhead_core::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use upstream::Upstreams;

/// Errors crossing body and client boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A snapshot and the upstream runtime built for it, swapped together.
pub struct Generation {
    /// The compiled config.
    pub snapshot: Arc<Snapshot>,
    /// Its groups at run time.
    pub upstreams: Arc<Upstreams>,
}

/// State shared by every connection.
pub struct Shared {
    /// The generation serving new requests.
    pub generation: ArcSwap<Generation>,
    /// The access log.
    pub logger: AccessLogger,
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    bound: Vec<(String, SocketAddr)>,
    life: server::Lifecycle,
    accept_loops: TaskTracker,
    health: CancellationToken,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound or its TLS set up.
    #[error("{0}")]
    Listener(String),
    /// The access log could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// The config asks for something this data plane does not do yet.
    #[error("{0}")]
    Unsupported(String),
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
        for t in &snapshot.config.tenants {
            if let Some(g) = t.target_groups.iter().find(|g| g.tls.is_some()) {
                return Err(StartError::Unsupported(format!(
                    "target group `{}/{}` sets `tls`: TLS towards targets is not supported by this version; remove it rather than send plaintext",
                    t.name.value, g.name.value
                )));
            }
        }
        let mut listeners = Vec::new();
        for l in &snapshot.config.listeners {
            listeners.push(server::bind(l).await.map_err(StartError::Listener)?);
        }
        let upstreams = Arc::new(Upstreams::new(&snapshot));
        let health = CancellationToken::new();
        for (id, group) in upstreams.all().iter().enumerate() {
            if let Some(check) = &snapshot.group_config(id as u32).health {
                health::spawn(group.clone(), check.clone(), health.clone());
            }
        }
        let shared = Arc::new(Shared {
            generation: ArcSwap::from_pointee(Generation {
                snapshot,
                upstreams,
            }),
            logger,
        });
        let life = server::Lifecycle {
            stop_accepting: CancellationToken::new(),
            drain: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        let accept_loops = TaskTracker::new();
        let mut bound = Vec::new();
        for l in listeners {
            if let Ok(addr) = l.socket.local_addr() {
                bound.push((l.name.to_string(), addr));
            }
            accept_loops.spawn(server::accept_loop(l, shared.clone(), life.clone()));
        }
        accept_loops.close();
        Ok(Proxy {
            shared,
            bound,
            life,
            accept_loops,
            health,
        })
    }

    /// The address each listener is bound to (useful with port 0).
    pub fn bound(&self) -> &[(String, SocketAddr)] {
        &self.bound
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The access logger.
    pub fn logger(&self) -> &AccessLogger {
        &self.shared.logger
    }

    /// Stop accepting at once, let in-flight requests finish for up to
    /// `drain`, then close what is left. Returns true when everything
    /// finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.life.stop_accepting.cancel();
        self.accept_loops.wait().await;
        self.life.drain.cancel();
        self.life.connections.close();
        self.health.cancel();
        tokio::time::timeout(drain, self.life.connections.wait())
            .await
            .is_ok()
    }
}
