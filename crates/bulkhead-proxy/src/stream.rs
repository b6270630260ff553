//! TCP and TLS-passthrough listeners: decide the connection with the core's
//! `decide_stream` (allow_sources, group by `forward` or by the ClientHello's
//! SNI, flow, access list), then splice bytes both ways. One access-log
//! line per connection, written when it closes.

use crate::access_log::{LogLine, LogName, TlsInfo};
use crate::client_hello::{self, Hello};
use crate::upstream::{elapsed_ms, HashKey};
use crate::Shared;
use bulkhead_core::{Credentials, DecisionKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serve one TCP connection on a tcp or tls-passthrough listener.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    passthrough: bool,
    header_timeout: Duration,
) {
    let started = Instant::now();
    let generation = shared.generation.load_full();
    let snap = &generation.snapshot;
    let mut line = LogLine {
        ts: crate::access_log::Timestamp::now(),
        listener: Some(listener.clone()),
        client: Some(peer.to_string().into()),
        ..LogLine::default()
    };
    if let Some(l) = snap.listener_id(&listener) {
        let zone = snap.listeners[l as usize].zone;
        line.zone = generation.names.zones.get(zone as usize).cloned();
    }
    let mut first = Vec::new();
    let mut sni = None;
    if passthrough {
        match tokio::time::timeout(header_timeout, read_hello(&mut client, &mut first)).await {
            Ok(Ok(name)) => sni = name,
            Ok(Err(())) => return finish(&shared, line, started, DecisionKind::BadRequest),
            Err(_) => return finish(&shared, line, started, DecisionKind::ClientTimeout),
        }
        line.tls = Some(TlsInfo {
            sni: sni.clone(),
            ..TlsInfo::default()
        });
    }
    let d = snap.decide_stream(
        &listener,
        Some(peer.ip()),
        sni.as_deref(),
        &Credentials::default(),
    );
    if let Some(g) = d.group {
        let group = &snap.groups[g as usize];
        line.group = Some(LogName::Group(g));
        line.tenant = Some(LogName::Tenant(group.tenant));
        line.group_zone = generation.names.zones.get(group.zone as usize).cloned();
        line.names = Some(generation.names.clone());
    }
    line.host = d.host.as_deref().map(Into::into);
    let Some(gid) = d.group.filter(|_| d.is_forward()) else {
        tracing::debug!(client = %peer, reason = %d.reason, "connection refused");
        return finish(&shared, line, started, d.kind);
    };
    let group = generation.upstreams.group(gid).clone();
    let headers = http::HeaderMap::new();
    let lease = match group
        .lease(
            HashKey {
                client_ip: Some(peer.ip()),
                headers: &headers,
            },
            group.timeouts.connect,
        )
        .await
    {
        Ok(l) => l,
        Err(_) => return finish(&shared, line, started, DecisionKind::Unavailable),
    };
    line.target = Some(lease.address().clone());
    let upstream_started = Instant::now();
    let connect = tokio::time::timeout(
        group.timeouts.connect,
        TcpStream::connect(&**lease.address()),
    )
    .await;
    group.report(lease.target, matches!(connect, Ok(Ok(_))));
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return finish(&shared, line, started, DecisionKind::UpstreamError),
        Err(_) => return finish(&shared, line, started, DecisionKind::Timeout),
    };
    let _ = upstream.set_nodelay(true);
    line.upstream_ms = Some(elapsed_ms(upstream_started));
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        return finish(&shared, line, started, DecisionKind::UpstreamError);
    }
    let (to_upstream, to_client) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .unwrap_or((0, 0));
    drop(lease);
    line.bytes_in = to_upstream + first.len() as u64;
    line.bytes_out = to_client;
    finish(&shared, line, started, DecisionKind::Forward);
}

/// Read until a complete ClientHello; its SNI, or `Err` if it is not TLS.
async fn read_hello(client: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, ()> {
    let mut chunk = [0u8; 4096];
    loop {
        match client_hello::parse(buf) {
            Hello::Complete(sni) => return Ok(sni),
            Hello::Invalid => return Err(()),
            Hello::Incomplete if buf.len() >= client_hello::MAX_HELLO => return Err(()),
            Hello::Incomplete => {}
        }
        let n = client.read(&mut chunk).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn finish(shared: &Shared, mut line: LogLine, started: Instant, kind: DecisionKind) {
    line.decision = kind.as_str();
    line.status = None;
    line.duration_ms = elapsed_ms(started);
    shared.record(line);
}
