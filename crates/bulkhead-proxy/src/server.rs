//! Listeners: bind, accept (with `allow_sources` checked before a byte is
//! read and `max_connections` pausing the accept loop), TLS, then hyper's
//! HTTP/1.1 + HTTP/2 connection with the listener's limits — or the TCP
//! splice for tcp / tls-passthrough listeners. Connections drain on shutdown.

use crate::access_log::{timestamp, LogLine, TlsInfo};
use crate::http::{handle, Conn, TlsFacts};
use crate::timers::{ConnTimers, TimedIo, Verdict};
use crate::{stream, Shared};
use bulkhead_config::{Listener, ListenerLimits, Protocol};
use bulkhead_core::{Credentials, DecisionKind};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tokens and trackers every accept loop and connection shares.
#[derive(Clone)]
pub struct Lifecycle {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when open connections must finish their current requests and close.
    pub drain: CancellationToken,
    /// Every connection task.
    pub connections: TaskTracker,
}

/// A bound listener, ready to accept.
pub struct BoundListener {
    /// Its name.
    pub name: Arc<str>,
    /// The socket.
    pub socket: TcpListener,
    /// The rustls config of an https listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Its protocol.
    pub protocol: Protocol,
}

/// Bind `l`'s socket and prepare its TLS config.
pub async fn bind(l: &Listener) -> Result<BoundListener, String> {
    let socket = TcpListener::bind(l.bind.value).await.map_err(|e| {
        format!(
            "listener `{}`: cannot bind {}: {e}",
            l.name.value, l.bind.value
        )
    })?;
    let tls = match l.protocol {
        Protocol::Https => Some(
            crate::tls::server_config(l)
                .map_err(|e| format!("listener `{}`: {e}", l.name.value))?,
        ),
        _ => None,
    };
    Ok(BoundListener {
        name: l.name.value.as_str().into(),
        socket,
        tls,
        protocol: l.protocol,
    })
}

/// Accept connections on `bound` until `life.stop_accepting`.
pub async fn accept_loop(bound: BoundListener, shared: Arc<Shared>, life: Lifecycle) {
    let limits = current_limits(&shared, &bound.name).unwrap_or_default();
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    loop {
        // At max_connections the loop waits here: the kernel backlog holds the rest.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = life.stop_accepting.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = bound.socket.accept() => r,
            _ = life.stop_accepting.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %bound.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if !source_allowed(&shared, &bound.name, peer) {
            drop(stream);
            log_refused(&shared, &bound.name, peer, DecisionKind::Deny, None);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (shared, life2, name, tls) = (
            shared.clone(),
            life.clone(),
            bound.name.clone(),
            bound.tls.clone(),
        );
        let limits = current_limits(&shared, &name).unwrap_or_default();
        match bound.protocol {
            Protocol::Http | Protocol::Https => {
                life.connections.spawn(serve_http(
                    stream, peer, name, shared, tls, limits, life2, permit,
                ));
            }
            Protocol::Tcp | Protocol::TlsPassthrough => {
                let passthrough = bound.protocol == Protocol::TlsPassthrough;
                life.connections.spawn(async move {
                    let _permit = permit;
                    stream::serve(
                        stream,
                        peer,
                        name,
                        shared,
                        passthrough,
                        limits.header_timeout,
                    )
                    .await;
                });
            }
        }
    }
}

fn current_limits(shared: &Shared, listener: &str) -> Option<ListenerLimits> {
    let g = shared.generation.load();
    let id = g.snapshot.listener_id(listener)?;
    Some(g.snapshot.config.listeners[id as usize].limits.clone())
}

fn source_allowed(shared: &Shared, listener: &str, peer: SocketAddr) -> bool {
    let g = shared.generation.load();
    let Some(id) = g.snapshot.listener_id(listener) else {
        return false;
    };
    let allow = &g.snapshot.listeners[id as usize].allow_sources;
    allow.is_empty() || allow.iter().any(|n| n.contains(&peer.ip()))
}

/// One log line for a connection refused before any request.
fn log_refused(
    shared: &Shared,
    listener: &str,
    peer: SocketAddr,
    kind: DecisionKind,
    tls: Option<TlsInfo>,
) {
    shared.logger.log(LogLine {
        decision: kind.as_str(),
        tls,
        ..connection_line(shared, listener, peer)
    });
}

#[allow(clippy::too_many_arguments)]
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ListenerLimits,
    life: Lifecycle,
    _permit: OwnedSemaphorePermit,
) {
    match tls {
        None => serve_hyper(stream, peer, listener, shared, None, limits, life).await,
        Some(config) => {
            let handshake = async {
                let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                    .await
                    .map_err(|_| None)?;
                let sni = start
                    .client_hello()
                    .server_name()
                    .map(|s| s.to_ascii_lowercase());
                start
                    .into_stream(config)
                    .await
                    .map_err(|_| sni.clone())
                    .map(|s| (s, sni))
            };
            match tokio::time::timeout(limits.header_timeout, handshake).await {
                Ok(Ok((tls_stream, sni))) => {
                    let (_, session) = tls_stream.get_ref();
                    let version = match session.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "TLS",
                    };
                    let mut credentials = Credentials::default();
                    if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
                        let (uris, dns) = bulkhead_config::tls::peer_identities(cert.as_ref());
                        credentials.cert_uris = uris;
                        credentials.cert_dns = dns;
                        credentials.mtls = true;
                    }
                    let facts = TlsFacts {
                        sni,
                        version,
                        credentials,
                    };
                    serve_hyper(
                        tls_stream,
                        peer,
                        listener,
                        shared,
                        Some(facts),
                        limits,
                        life,
                    )
                    .await;
                }
                Ok(Err(sni)) => {
                    tracing::debug!(client = %peer, "TLS handshake failed");
                    log_refused(
                        &shared,
                        &listener,
                        peer,
                        DecisionKind::TlsRejected,
                        Some(TlsInfo {
                            sni,
                            ..TlsInfo::default()
                        }),
                    );
                }
                Err(_) => log_refused(&shared, &listener, peer, DecisionKind::ClientTimeout, None),
            }
        }
    }
}

async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    tls: Option<TlsFacts>,
    limits: ListenerLimits,
    life: Lifecycle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timers = ConnTimers::new();
    let log_ctx = (
        shared.clone(),
        listener.clone(),
        peer,
        tls.as_ref().map(tls_info),
    );
    let conn = Arc::new(Conn {
        shared,
        listener,
        peer,
        tls,
        timers: timers.clone(),
    });
    let service = service_fn(move |req| handle(req, conn.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Header and idle timeouts are ours (see `timers`): hyper's would cut idle keep-alives early.
        .header_read_timeout(None)
        .max_buf_size(
            usize::try_from(limits.max_header_bytes)
                .unwrap_or(usize::MAX)
                .max(8192),
        )
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256));
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(TimedIo::new(io, timers.clone())), service);
    tokio::pin!(connection);
    let mut check_at = tokio::time::Instant::now() + limits.header_timeout;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                    log_parse_error(&log_ctx, e.as_ref());
                }
                return;
            }
            _ = life.drain.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
                return;
            }
            _ = tokio::time::sleep_until(check_at) => {
                match timers.verdict(limits.header_timeout, limits.idle_timeout) {
                    Verdict::Wait(next) => check_at = next.into(),
                    Verdict::HeaderTimeout => {
                        tracing::debug!(client = %peer, "headers not received within header_timeout; closing");
                        // DESIGN §4: closed, logged as `client_timeout` (status null).
                        let (shared, listener, peer, tls) = &log_ctx;
                        shared.logger.log(LogLine {
                            decision: DecisionKind::ClientTimeout.as_str(),
                            tls: tls.clone(),
                            ..connection_line(shared, listener, *peer)
                        });
                        return;
                    }
                    Verdict::IdleTimeout => return,
                }
            }
        }
    }
}

/// The `tls` log field of a connection.
pub fn tls_info(t: &TlsFacts) -> TlsInfo {
    TlsInfo {
        sni: t.sni.clone(),
        version: Some(t.version.to_string()),
        identity: t
            .credentials
            .cert_uris
            .first()
            .or(t.credentials.cert_dns.first())
            .cloned(),
    }
}

/// hyper answered a request it could not parse (400, 414 or 431) before our
/// service saw it: the request still gets its access-log line (DESIGN §2 step 2).
fn log_parse_error(
    ctx: &(Arc<Shared>, Arc<str>, SocketAddr, Option<TlsInfo>),
    e: &(dyn std::error::Error + 'static),
) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    if !h.is_parse() {
        return;
    }
    let status = if h.to_string().contains("URI too long") {
        414
    } else if h.is_parse_too_large() {
        431
    } else {
        400
    };
    let (shared, listener, peer, tls) = ctx;
    shared.logger.log(LogLine {
        decision: DecisionKind::BadRequest.as_str(),
        status: Some(status),
        tls: tls.clone(),
        ..connection_line(shared, listener, *peer)
    });
}

/// A log line with what is known of a connection before any request.
fn connection_line(shared: &Shared, listener: &str, peer: SocketAddr) -> LogLine {
    let g = shared.generation.load();
    let zone = g.snapshot.listener_id(listener).map(|id| {
        g.snapshot.zones[g.snapshot.listeners[id as usize].zone as usize]
            .name
            .clone()
    });
    LogLine {
        ts: timestamp(SystemTime::now()),
        listener: Some(listener.to_string()),
        zone,
        client: Some(peer.to_string()),
        ..LogLine::default()
    }
}
