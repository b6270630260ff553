//! A small HTTP backend that says who it is: `bulkhead demo` runs a few, and
//! the end-to-end tests use them to see exactly what reached a backend.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A running backend.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it has received.
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    /// Stops listening and closes every open connection.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a backend named `name` on `addr` (port 0 picks one). It answers
/// every request with `200` and a text body: its name, the method, path,
/// Host and the forwarding and identity headers it saw; `/healthz` answers
/// `ok`.
pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicU64::new(0));
    let (name, counter): (Arc<str>, _) = (name.into(), hits.clone());
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the accept task (dropping
        // the Backend) closes them too, like a killed process would.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (name, counter) = (name.clone(), counter.clone());
            connections.spawn(async move {
                let service = service_fn(move |req| answer(req, name.clone(), counter.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Backend { addr, hits, task })
}

async fn answer(
    req: hyper::Request<Incoming>,
    name: Arc<str>,
    hits: Arc<AtomicU64>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let h = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let mut text = format!(
        "backend: {name}\nrequest: {} {}\nhost: {}\nx-forwarded-for: {}\nx-forwarded-proto: {}\nx-request-id: {}\n",
        req.method(),
        req.uri(),
        h("host"),
        h("x-forwarded-for"),
        h("x-forwarded-proto"),
        h("x-request-id"),
    );
    for extra in ["x-client-identity", "x-internal-user"] {
        if req.headers().contains_key(extra) {
            text.push_str(&format!("{extra}: {}\n", h(extra)));
        }
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    if body > 0 {
        text.push_str(&format!("body-bytes: {body}\n"));
    }
    Ok(hyper::Response::new(Full::new(Bytes::from(text))))
}
