//! proxy_routing.rs helpers (module `common::routing`): a proxy started from
//! YAML with its access log in a temporary folder, an HTTP client for h1 and
//! h2 (plain or over rustls), TLS client configs, and small backends — a
//! slow HTTP one, WebSocket echo, TCP echo and TLS echo — that all close
//! their connections when dropped, like a killed process.
#![allow(dead_code)]

use bulkhead::pki::Pem;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The bound on any one network step of a test (connect, handshake, request).
pub const STEP: Duration = Duration::from_secs(5);

/// `127.0.0.1:0`.
pub fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// `template` with every `${key}` replaced by its value.
pub fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind(any_port())
        .and_then(|l| l.local_addr())
        .expect("bind :0")
}

/// Write `pem` as `DIR/NAME.pem` and `DIR/NAME.key`.
pub fn write_pem(dir: &Path, name: &str, pem: &Pem) {
    std::fs::write(dir.join(format!("{name}.pem")), &pem.cert).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), &pem.key).expect("write key");
}

// ---------------------------------------------------------------------------
// the proxy

/// A running proxy whose config and access log live in a temporary folder.
pub struct Harness {
    /// The proxy.
    pub proxy: bulkhead_proxy::Proxy,
    /// The access log file.
    pub log: PathBuf,
    /// The folder (certificates go here before `start`).
    pub dir: tempfile::TempDir,
}

/// A fresh temporary folder for a harness.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bulkhead-routing-")
        .tempdir()
        .expect("temp dir")
}

impl Harness {
    /// Compile `yaml` (relative paths resolve in `dir`) and start it with
    /// an access log in `dir/access.log`.
    pub async fn start(dir: tempfile::TempDir, yaml: &str) -> Harness {
        let config = bulkhead_config::from_str(yaml, "t.yaml", dir.path())
            .unwrap_or_else(|e| panic!("config rejected: {e:?}\n{yaml}"));
        let snap = bulkhead_core::Snapshot::compile(config)
            .unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{yaml}"));
        let log = dir.path().join("access.log");
        let logger = bulkhead_proxy::access_log::AccessLogger::start(
            &bulkhead_config::AccessLog::File(log.clone()),
        )
        .expect("open the access log");
        let proxy = bulkhead_proxy::Proxy::start_with_logger(Arc::new(snap), logger)
            .await
            .expect("start the proxy");
        Harness { proxy, log, dir }
    }

    /// Listener `name`'s bound address.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.proxy
            .addr(name)
            .unwrap_or_else(|| panic!("no listener `{name}`"))
    }

    /// Every access-log line written so far.
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// The first log line matching `pred`, waiting up to 5 s for it.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no access-log line {what} within {STEP:?}; the log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `line[key]` as text (`""` when null or absent).
pub fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line.get(key).and_then(Value::as_str).unwrap_or("")
}

// ---------------------------------------------------------------------------
// clients

/// A response, body read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
    /// HTTP version of the response.
    pub version: http::Version,
}

impl Resp {
    /// The `backend:` name an echo backend put in the body.
    pub fn backend(&self) -> &str {
        self.echoed("backend").unwrap_or("")
    }

    /// The value of `name:` in an echo body.
    pub fn echoed(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Send `req` on `io` as HTTP/1.1 (`h2 = false`) or HTTP/2, read the whole
/// response. One request per connection.
pub async fn send_on<I>(io: I, h2: bool, req: http::Request<Full<Bytes>>) -> Result<Resp, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async move {
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("h2 request: {e}"))?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("h1 request: {e}"))?
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version: parts.version,
        })
    };
    timeout(STEP, exchange)
        .await
        .map_err(|_| format!("no response within {STEP:?}"))?
}

/// An HTTP/1.1 request `METHOD path` with `Host: host` and extra headers.
pub fn h1_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// `GET path` with `Host: host` (and `headers`) on a new plain connection.
pub async fn try_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    send_on(stream, false, h1_request("GET", host, path, headers)).await
}

/// [`try_get`], panicking on a transport error.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_get(addr, host, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path} via {addr}: {e}"))
}

/// A rustls provider (aws-lc-rs, as the proxy uses).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn cert_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
}

fn key_der(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    cert_der(pem).as_ref().to_vec()
}

/// A TLS client that trusts `ca_pem`, presents `client` if given, and offers `alpn`.
pub fn tls_client(ca_pem: &str, client: Option<&Pem>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der(ca_pem)).expect("trust the CA");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pem) => builder
            .with_client_auth_cert(vec![cert_der(&pem.cert)], key_der(&pem.key))
            .expect("client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection through `addr`, sending SNI `sni` and verifying the
/// server's certificate for that name.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("SNI: {e}"))?;
    let attempt = async move {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    };
    timeout(STEP, attempt)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
}

/// TLS to `addr` with SNI `sni`, then one HTTP/1.1 (or h2 when ALPN says
/// so) `GET path` with Host `host` and `headers`. Errors name the step that
/// failed.
pub async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    config: Arc<rustls::ClientConfig>,
) -> Result<Resp, String> {
    let tls = tls_connect(addr, sni, config).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = if h2 {
        let mut b = http::Request::builder().uri(format!("https://{host}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::new())).expect("request")
    } else {
        h1_request("GET", host, path, headers)
    };
    send_on(tls, h2, req).await
}

// ---------------------------------------------------------------------------
// backends

/// A server on loopback; dropping it stops accepting and closes every
/// connection it holds.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve each connection accepted on `addr` with `handler`.
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("backend address");
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            connections.spawn(handler(stream));
        }
    });
    Server {
        addr,
        accepted,
        task,
    }
}

/// An HTTP backend that answers `backend: NAME` and the request line; paths
/// with a `/slow` segment prefix wait `delay` first. `/healthz` answers `ok` at once.
pub struct SlowBackend {
    /// The server.
    pub server: Server,
    /// Requests that reached the handler (healthz excluded).
    pub started: Arc<AtomicU64>,
    /// Requests answered (healthz excluded).
    pub hits: Arc<AtomicU64>,
}

impl SlowBackend {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
    /// Requests that reached the handler so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Start a [`SlowBackend`].
pub async fn slow_backend(name: &str, delay: Duration) -> SlowBackend {
    let started = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let name: Arc<str> = name.into();
    let (s, h) = (started.clone(), hits.clone());
    let server = serve(any_port(), move |stream| {
        let (name, s, h) = (name.clone(), s.clone(), h.clone());
        async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (name, s, h) = (name.clone(), s.clone(), h.clone());
                    async move {
                        if req.uri().path() == "/healthz" {
                            return Ok::<_, std::convert::Infallible>(http::Response::new(
                                Full::new(Bytes::from_static(b"ok\n")),
                            ));
                        }
                        s.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().contains("/slow") {
                            tokio::time::sleep(delay).await;
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        let text =
                            format!("backend: {name}\nrequest: {} {}\n", req.method(), req.uri());
                        Ok(http::Response::new(Full::new(Bytes::from(text))))
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    SlowBackend {
        server,
        started,
        hits,
    }
}

/// A WebSocket backend echoing every text and binary message.
pub async fn ws_echo_backend() -> Server {
    serve(any_port(), |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
    .await
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP backend echoing every byte.
pub async fn tcp_echo_backend() -> Server {
    serve(any_port(), echo).await
}

/// A TLS backend (certificate `pem`) echoing every byte inside TLS.
pub async fn tls_echo_backend(pem: &Pem) -> Server {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der(&pem.cert)], key_der(&pem.key))
        .expect("backend certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(any_port(), move |stream| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                echo(tls).await;
            }
        }
    })
    .await
}

/// Write `data` on `s` and read back exactly as many bytes.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let io = async {
        s.write_all(data).await.map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(back)
    };
    timeout(STEP, io)
        .await
        .map_err(|_| "no echo in time".to_string())?
}

/// Read from `s` until EOF or error; the bytes received (panics if the
/// peer keeps the connection open past [`STEP`]).
pub async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let io = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(STEP, io)
        .await
        .expect("the connection should have been closed");
    got
}
