//! Helpers shared by the end-to-end tests (each test file adds its own,
//! prefixed; a test file that uses only some of them allows dead code).

// ---------------------------------------------------------------------------
// proxy_security.rs helpers (prefix `sec_`)

/// Compile `yaml` (relative paths resolve against `dir`) into a snapshot, or
/// panic with every config error.
pub fn sec_snapshot(yaml: &str, dir: &std::path::Path) -> std::sync::Arc<bulkhead_core::Snapshot> {
    let config = bulkhead_config::from_str(yaml, "t.yaml", dir)
        .unwrap_or_else(|e| panic!("config rejected: {e:?}\n{yaml}"));
    let snap = bulkhead_core::Snapshot::compile(config)
        .unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{yaml}"));
    std::sync::Arc::new(snap)
}

/// Start a proxy for `yaml`; with `log`, its access log goes to that file.
pub async fn sec_start(yaml: &str, log: Option<&std::path::Path>) -> bulkhead_proxy::Proxy {
    let dir = std::env::temp_dir();
    let snap = sec_snapshot(yaml, &dir);
    let logger = match log {
        Some(path) => bulkhead_proxy::access_log::AccessLogger::start(
            &bulkhead_config::AccessLog::File(path.to_path_buf()),
        )
        .expect("open the access log"),
        None => bulkhead_proxy::access_log::AccessLogger::off(),
    };
    bulkhead_proxy::Proxy::start_with_logger(snap, logger)
        .await
        .expect("start the proxy")
}

/// A backend that answers `200` with its name, the request line and every
/// request header it received (`name: value` per line, in order), then
/// `body: <bytes>` with the body it read. `/slow…` paths sleep `delay`
/// first. It counts request heads (`heads`) and requests whose body was read
/// completely (`complete`), and keeps every complete body.
pub struct SecBackend {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Request heads received.
    pub heads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests whose body was read to the end without error.
    pub complete: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The bodies of the complete requests.
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// `METHOD target` of every request head received.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SecBackend {
    /// Request heads received so far.
    pub fn heads(&self) -> u64 {
        self.heads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests received completely so far.
    pub fn complete(&self) -> u64 {
        self.complete.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `METHOD target` of every request head received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Every complete body, lossily as text.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies
            .lock()
            .expect("bodies lock")
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

impl Drop for SecBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a [`SecBackend`] named `name` on 127.0.0.1 (any port).
pub async fn sec_backend(name: &str, delay: std::time::Duration) -> SecBackend {
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("backend address");
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let complete = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let name: std::sync::Arc<str> = name.into();
    let (h, c, b, r) = (
        heads.clone(),
        complete.clone(),
        bodies.clone(),
        requests.clone(),
    );
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (name, h, c, b, r) = (name.clone(), h.clone(), c.clone(), b.clone(), r.clone());
            conns.spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (name, h, c, b, r) =
                            (name.clone(), h.clone(), c.clone(), b.clone(), r.clone());
                        async move {
                            r.lock().expect("requests lock").push(format!(
                                "{} {}",
                                req.method(),
                                req.uri()
                            ));
                            h.fetch_add(1, Ordering::SeqCst);
                            if req.uri().path().starts_with("/slow") {
                                tokio::time::sleep(delay).await;
                            }
                            let mut text = format!(
                                "backend: {name}\nrequest: {} {} {:?}\n",
                                req.method(),
                                req.uri(),
                                req.version()
                            );
                            for (k, v) in req.headers() {
                                text.push_str(&format!(
                                    "{k}: {}\n",
                                    String::from_utf8_lossy(v.as_bytes())
                                ));
                            }
                            match req.into_body().collect().await {
                                Ok(body) => {
                                    let body = body.to_bytes().to_vec();
                                    text.push_str(&format!(
                                        "body: {}\n",
                                        String::from_utf8_lossy(&body)
                                    ));
                                    b.lock().expect("bodies lock").push(body);
                                    c.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => text.push_str(&format!("body error: {e}\n")),
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(text)),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    SecBackend {
        addr,
        heads,
        complete,
        bodies,
        requests,
        task,
    }
}

/// One HTTP/1.1 response read off a raw socket.
#[derive(Clone, Debug)]
pub struct SecResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body.
    pub body: String,
}

impl SecResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name:` in a [`SecBackend`] / demo backend echo body.
    pub fn echoed(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// Every value of `name:` in an echo body.
    pub fn echoed_all(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }
}

/// What a raw exchange got back.
#[derive(Clone, Debug)]
pub struct SecExchange {
    /// Every byte received.
    pub raw: Vec<u8>,
    /// The responses parsed from them, in order.
    pub responses: Vec<SecResponse>,
    /// The server closed (EOF or reset) before we stopped waiting.
    pub closed: bool,
}

/// Parse as many complete HTTP/1.1 responses as `raw` holds.
pub fn sec_parse_responses(raw: &[u8]) -> Vec<SecResponse> {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body_rest = &rest[end + 4..];
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body: Vec<u8>;
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut b = Vec::new();
            loop {
                let Some(le) = find(body_rest, b"\r\n") else {
                    return out;
                };
                let size_text = String::from_utf8_lossy(&body_rest[..le]).into_owned();
                let Ok(size) =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                else {
                    return out;
                };
                body_rest = &body_rest[le + 2..];
                if size == 0 {
                    // Trailers end with an empty line.
                    let Some(te) = find(body_rest, b"\r\n") else {
                        return out;
                    };
                    body_rest = &body_rest[te + 2..];
                    break;
                }
                if body_rest.len() < size + 2 {
                    return out;
                }
                b.extend_from_slice(&body_rest[..size]);
                body_rest = &body_rest[size + 2..];
            }
            body = b;
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if body_rest.len() < len {
                return out;
            }
            body = body_rest[..len].to_vec();
            body_rest = &body_rest[len..];
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            body = Vec::new();
        } else {
            // Close-delimited.
            body = body_rest.to_vec();
            body_rest = &[];
        }
        out.push(SecResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        rest = body_rest;
    }
    out
}

/// Write `request` raw on a new connection to `addr`, then read until the
/// server closes, or nothing came for `idle`, or 5 s passed.
pub async fn sec_raw_idle(
    addr: std::net::SocketAddr,
    request: &[u8],
    idle: std::time::Duration,
) -> SecExchange {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    // A write may fail when the proxy already answered and closed; reading tells the rest.
    let _ = s.write_all(request).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let mut closed = false;
    loop {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    SecExchange {
        responses: sec_parse_responses(&raw),
        raw,
        closed,
    }
}

/// [`sec_raw_idle`] with a 1 s idle wait.
pub async fn sec_raw(addr: std::net::SocketAddr, request: &[u8]) -> SecExchange {
    sec_raw_idle(addr, request, std::time::Duration::from_secs(1)).await
}

/// `GET target` with `Host: host`, extra header lines (`"Name: value"`) and
/// `Connection: close`; the one response (status 0 if none came).
pub async fn sec_get(
    addr: std::net::SocketAddr,
    host: &str,
    target: &str,
    extra: &[&str],
) -> SecResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    let ex = sec_raw(addr, req.as_bytes()).await;
    ex.responses.into_iter().next().unwrap_or(SecResponse {
        status: 0,
        headers: Vec::new(),
        body: String::from_utf8_lossy(&ex.raw).into_owned(),
    })
}

/// Wait (up to `within`) until the access log at `path` holds at least `n`
/// lines, wait a little more for stragglers, and return every line parsed.
pub async fn sec_log_lines(
    path: &std::path::Path,
    n: usize,
    within: std::time::Duration,
) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + within;
    while read().len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // Lines that should not be there would come now.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    read()
}

/// A port free on 127.0.0.1 right now.
pub fn sec_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind :0")
        .port()
}

// ---------------------------------------------------------------------------
// proxy_routing.rs helpers (module `routing`, in common/routing.rs)

pub mod routing;
