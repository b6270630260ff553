//! Listeners: bind, accept (with `allow_sources` checked before a byte is
//! read and `max_connections` pausing the accept loop), TLS, then HTTP: the
//! HTTP/1.x fast path (`h1_server`) and hyper's HTTP/1.1 + HTTP/2 connection
//! for what it hands over, with the listener's limits — or the TCP splice
//! for tcp / tls-passthrough listeners. Connections drain on shutdown.

use crate::access_log::{LogLine, TlsInfo};
use crate::body::RequestBody;
use crate::h1_server::{self, Rewind, Served};
use crate::http::{handle, Conn, TlsFacts};
use crate::raw_head::ResponseHeads;
use crate::timers::{ConnTimers, TimedIo, Verdict};
use crate::{stream, Shared};
use bulkhead_config::{Listener, ListenerLimits, Protocol};
use bulkhead_core::{Credentials, DecisionKind};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// Bind a listener's socket.
pub async fn bind(l: &Listener) -> Result<Arc<TcpListener>, String> {
    TcpListener::bind(l.bind.value)
        .await
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "listener `{}`: cannot bind {}: {e}",
                l.name.value, l.bind.value
            )
        })
}

/// What one accepted connection needs from the generation serving now.
struct ListenerNow {
    protocol: Protocol,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ListenerLimits,
    allowed: bool,
}

fn listener_now(shared: &Shared, name: &str, peer: SocketAddr) -> Option<ListenerNow> {
    let g = shared.generation.load();
    let id = g.snapshot.listener_id(name)?;
    let l = &g.snapshot.listeners[id as usize];
    Some(ListenerNow {
        protocol: l.protocol,
        tls: g.tls.get(name).cloned(),
        limits: g.snapshot.config.listeners[id as usize].limits.clone(),
        allowed: l.allow_sources.is_empty()
            || l.allow_sources.iter().any(|n| n.contains(&peer.ip())),
    })
}

/// Accept connections for listener `name` on `socket` until `stop` or
/// `life.stop_accepting`. Protocol, TLS config, limits and `allow_sources`
/// are read from the generation serving at each accept, so a reload applies
/// to the next connection without touching the socket.
pub async fn accept_loop(
    name: Arc<str>,
    socket: Arc<TcpListener>,
    shared: Arc<Shared>,
    life: Lifecycle,
    stop: CancellationToken,
) {
    let max = listener_now(&shared, &name, SocketAddr::from(([0, 0, 0, 0], 0)))
        .map_or(10_000, |l| l.limits.max_connections);
    let slots = Arc::new(Semaphore::new(max as usize));
    loop {
        // At max_connections the loop waits here: the kernel backlog holds the rest.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = life.stop_accepting.cancelled() => return,
            _ = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = life.stop_accepting.cancelled() => return,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(now) = listener_now(&shared, &name, peer) else {
            // The listener left the config; its loop is being stopped.
            continue;
        };
        if !now.allowed {
            drop(stream);
            log_refused(&shared, &name, peer, DecisionKind::Deny, None);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (shared, life2, name) = (shared.clone(), life.clone(), name.clone());
        let gauge = shared.metrics.connection_opened(&name);
        match now.protocol {
            Protocol::Http | Protocol::Https => {
                life.connections.spawn(async move {
                    let _gauge = gauge;
                    serve_http(
                        stream, peer, name, shared, now.tls, now.limits, life2, permit,
                    )
                    .await;
                });
            }
            Protocol::Tcp | Protocol::TlsPassthrough => {
                let passthrough = now.protocol == Protocol::TlsPassthrough;
                life.connections.spawn(async move {
                    let (_permit, _gauge) = (permit, gauge);
                    stream::serve(
                        stream,
                        peer,
                        name,
                        shared,
                        passthrough,
                        now.limits.header_timeout,
                    )
                    .await;
                });
            }
        }
    }
}

/// One log line for a connection refused before any request.
fn log_refused(
    shared: &Shared,
    listener: &Arc<str>,
    peer: SocketAddr,
    kind: DecisionKind,
    tls: Option<TlsInfo>,
) {
    shared.record(LogLine {
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
        None => serve_http_conn(stream, false, peer, listener, shared, None, limits, life).await,
        // Boxed: a TLS connection's state (handshake, rustls session, hyper
        // over TLS) is much larger than a plain one's, and every plain
        // connection's task would otherwise be sized for it.
        Some(config) => {
            Box::pin(serve_tls(
                stream, peer, listener, shared, config, limits, life,
            ))
            .await;
        }
    }
}

/// TLS handshake (certificate by SNI), then HTTP over it.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    config: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    life: Lifecycle,
) {
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
            let h2 = session.alpn_protocol() == Some(b"h2");
            let facts = TlsFacts {
                sni,
                version,
                credentials,
            };
            serve_http_conn(
                tls_stream,
                h2,
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

/// One HTTP connection: HTTP/1.x requests on the fast path (`h1_server`)
/// while they fit it, then hyper (HTTP/2 — ALPN `h2` or the prior-knowledge
/// preface — and every HTTP/1.x request the fast path hands over) for the
/// rest of the connection. `alpn_h2`: TLS chose HTTP/2, so hyper from the start.
#[allow(clippy::too_many_arguments)]
async fn serve_http_conn<I>(
    io: I,
    alpn_h2: bool,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    tls: Option<TlsFacts>,
    limits: ListenerLimits,
    life: Lifecycle,
) where
    I: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + h1_server::WaitReadable
        + Unpin
        + Send
        + 'static,
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
        client: crate::headers::ClientAddr::of(peer),
        tls,
        timers: timers.clone(),
    });
    let max_head = max_head(&limits);
    let io = TimedIo::new(io, timers.clone());
    let io = if alpn_h2 {
        Rewind::new(bytes::Bytes::new(), io)
    } else {
        let fast = h1_server::serve(io, conn.clone(), life.drain.clone(), max_head);
        tokio::pin!(fast);
        let mut check_at = first_check(&limits);
        loop {
            tokio::select! {
                served = fast.as_mut() => match served {
                    Served::Closed => return,
                    Served::Fallback(io) => break io,
                },
                _ = tokio::time::sleep_until(check_at) => {
                    match watchdog(&timers, &limits, &log_ctx) {
                        Some(next) => check_at = next,
                        None => return,
                    }
                }
            }
        }
    };
    // Boxed: every connection's task is sized for its largest state, and
    // hyper's connection (several KiB) is the rare one.
    Box::pin(serve_hyper(io, conn, timers, limits, log_ctx, life)).await;
}

/// hyper serves the rest of the connection: HTTP/2, or what the fast path handed over.
async fn serve_hyper<I>(
    io: Rewind<TimedIo<I>>,
    conn: Arc<Conn>,
    timers: Arc<ConnTimers>,
    limits: ListenerLimits,
    log_ctx: (Arc<Shared>, Arc<str>, SocketAddr, Option<TlsInfo>),
    life: Lifecycle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let max_head = max_head(&limits);
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Boxed, and written into the box (see `http::handle`): hyper moves
        // the service's future around with its stream's state (for HTTP/2
        // into a task of its own, five copies per request); a box moves as
        // a pointer (-2.9k instructions per h2 request).
        Box::into_pin(Box::write(
            Box::new_uninit(),
            handle(
                req.map(RequestBody::Hyper),
                conn.clone(),
                ResponseHeads::Map,
            ),
        ))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Header and idle timeouts are ours (see `timers`): hyper's would cut idle keep-alives early.
        .header_read_timeout(None)
        .max_buf_size(max_head)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut check_at = first_check(&limits);
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
                match watchdog(&timers, &limits, &log_ctx) {
                    Some(next) => check_at = next,
                    None => return,
                }
            }
        }
    }
}

/// The longest request head read, as hyper's buffer limit (at least 8 KiB).
fn max_head(limits: &ListenerLimits) -> usize {
    usize::try_from(limits.max_header_bytes)
        .unwrap_or(usize::MAX)
        .max(8192)
}

/// When a new connection's clocks are first looked at: as soon as either could run out.
fn first_check(limits: &ListenerLimits) -> tokio::time::Instant {
    tokio::time::Instant::now() + limits.header_timeout.min(limits.idle_timeout)
}

/// The connection's clocks at a check: when to look again, or `None` when
/// it must close (an idle timeout; a header timeout, which is logged).
fn watchdog(
    timers: &ConnTimers,
    limits: &ListenerLimits,
    log_ctx: &(Arc<Shared>, Arc<str>, SocketAddr, Option<TlsInfo>),
) -> Option<tokio::time::Instant> {
    match timers.verdict(limits.header_timeout, limits.idle_timeout) {
        Verdict::Wait(next) => Some(next.into()),
        Verdict::HeaderTimeout => {
            let (shared, listener, peer, tls) = log_ctx;
            tracing::debug!(client = %peer, "headers not received within header_timeout; closing");
            // DESIGN §4: closed, logged as `client_timeout` (status null).
            shared.record(LogLine {
                decision: DecisionKind::ClientTimeout.as_str(),
                tls: tls.clone(),
                ..connection_line(shared, listener, *peer)
            });
            None
        }
        Verdict::IdleTimeout => None,
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
    shared.record(LogLine {
        decision: DecisionKind::BadRequest.as_str(),
        status: Some(status),
        tls: tls.clone(),
        ..connection_line(shared, listener, *peer)
    });
}

/// A log line with what is known of a connection before any request. The
/// listener's name is the accept loop's, shared: the metrics recognise a
/// label set by its names' addresses, so a fresh copy per line would miss.
fn connection_line(shared: &Shared, listener: &Arc<str>, peer: SocketAddr) -> LogLine {
    let g = shared.generation.load();
    let zone = g.snapshot.listener_id(listener).and_then(|id| {
        let zone = g.snapshot.listeners[id as usize].zone;
        g.names.zones.get(zone as usize).cloned()
    });
    LogLine {
        ts: crate::access_log::Timestamp::now(),
        listener: Some(listener.clone()),
        zone,
        client: Some(peer.to_string().into()),
        ..LogLine::default()
    }
}
