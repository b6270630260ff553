//! Adversarial tests of the hand-written HTTP/1.1 upstream client
//! (`bulkhead_proxy::h1_upstream`), through its public API only.
//!
//! Every backend here is a raw `TcpListener` on 127.0.0.1 that reads the
//! request bytes and writes canned response bytes, so the exact framing on
//! the wire is under the test's control. Every test is bounded by a timeout.

use bulkhead_proxy::h1_upstream::{Pool, ResponseBody, UpgradeSlot};
use bulkhead_proxy::raw_head::ResponseHeads;
use bulkhead_proxy::upstream::{ProxyBody, UpstreamError};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sent = Result<http::Response<ResponseBody>, UpstreamError>;

/// Upper bound of every test.
const TEST_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound of one `Pool::send`.
const SEND_LIMIT: Duration = Duration::from_secs(5);
const CONNECT: Duration = Duration::from_secs(2);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test did not finish in time")
}

// ---------------------------------------------------------------------------
// Fake backends
// ---------------------------------------------------------------------------

/// A request as the backend saw it on the wire.
#[derive(Clone, Debug)]
struct Seen {
    /// Which accepted connection (0-based).
    conn: usize,
    /// Which request on that connection (0-based).
    index: usize,
    /// `GET /x HTTP/1.1`.
    request_line: String,
    /// Header fields in wire order, names lower-cased, values trimmed.
    headers: Vec<(String, String)>,
    /// The decoded body.
    body: Vec<u8>,
    /// The body bytes exactly as sent (chunk framing included).
    raw_body: Vec<u8>,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// What a connection handler is told.
#[derive(Clone)]
struct Ctx {
    conn: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Backend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn pool(&self) -> Arc<Pool> {
        Arc::new(Pool::new(
            &self.addr.to_string(),
            Duration::from_secs(30),
            16,
        ))
    }
}

/// A listener whose every accepted connection runs `handler`.
async fn backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(Ctx, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback listener");
    let addr = listener.local_addr().expect("listener address");
    let accepts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let accepts = accepts.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let conn = accepts.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handler(
                    Ctx {
                        conn,
                        seen: seen.clone(),
                    },
                    stream,
                ));
            }
        })
    };
    Backend {
        addr,
        accepts,
        seen,
        task,
    }
}

/// What the backend does after writing a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Read the next request on this connection.
    Serve,
    /// Send FIN and drop the socket.
    Close,
    /// Abort the connection (RST).
    Reset,
    /// Keep the connection open, discarding whatever arrives, until the
    /// client closes it.
    Hold,
}

struct Reply {
    bytes: Vec<u8>,
    after: After,
}

fn reply(bytes: impl AsRef<[u8]>, after: After) -> Reply {
    Reply {
        bytes: bytes.as_ref().to_vec(),
        after,
    }
}

type Respond = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A backend that reads whole requests and answers each with `respond`.
async fn serve(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
    let respond: Respond = Arc::new(respond);
    backend(move |ctx, stream| serve_conn(ctx, stream, respond.clone())).await
}

/// A keep-alive backend answering every request with the same bytes.
async fn always(bytes: &'static [u8]) -> Backend {
    serve(move |_| reply(bytes, After::Serve)).await
}

async fn serve_conn(ctx: Ctx, mut s: TcpStream, respond: Respond) {
    let mut buf = Vec::new();
    let mut index = 0;
    while let Some(seen) = read_request(&mut s, &mut buf, ctx.conn, index).await {
        ctx.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen.clone());
        let r = respond(&seen);
        if s.write_all(&r.bytes).await.is_err() {
            return;
        }
        if !finish(&mut s, r.after).await {
            return;
        }
        index += 1;
    }
}

/// Carry out `after`; `true` to keep serving.
async fn finish(s: &mut TcpStream, after: After) -> bool {
    match after {
        After::Serve => true,
        After::Close => {
            let _ = s.shutdown().await;
            false
        }
        After::Reset => {
            let _ = s.set_zero_linger();
            false
        }
        After::Hold => {
            drain(s).await;
            false
        }
    }
}

/// Read and discard until EOF or an error.
async fn drain(s: &mut TcpStream) {
    let mut sink = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Read more into `buf`: `false` at EOF or on an error.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = vec![0u8; 64 * 1024];
    match s.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

/// Index of the CRLF ending the line that starts at `from`.
async fn line_end(s: &mut TcpStream, buf: &mut Vec<u8>, from: usize) -> Option<usize> {
    loop {
        if let Some(i) = find(&buf[from..], b"\r\n") {
            return Some(from + i);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

/// Read the request head only (up to and including the blank line).
async fn read_head_only(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}

/// Read one whole request (head and body, per its framing).
async fn read_request(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    conn: usize,
    index: usize,
) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut pos = head_end;
    let mut body = Vec::new();
    if chunked {
        loop {
            let end = line_end(s, buf, pos).await?;
            let line = String::from_utf8_lossy(&buf[pos..end]).into_owned();
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).ok()?;
            pos = end + 2;
            if size == 0 {
                loop {
                    let end = line_end(s, buf, pos).await?;
                    let blank = end == pos;
                    pos = end + 2;
                    if blank {
                        break;
                    }
                }
                break;
            }
            while buf.len() < pos + size + 2 {
                if !fill(s, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            if &buf[pos + size..pos + size + 2] != b"\r\n" {
                return None;
            }
            pos += size + 2;
        }
    } else if let Some(n) = length {
        while buf.len() < pos + n {
            if !fill(s, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[pos..pos + n]);
        pos += n;
    }
    let raw_body = buf[head_end..pos].to_vec();
    buf.drain(..pos);
    Some(Seen {
        conn,
        index,
        request_line,
        headers,
        body,
        raw_body,
    })
}

// ---------------------------------------------------------------------------
// Client-side helpers
// ---------------------------------------------------------------------------

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A streaming request body fed through a channel; `exact` is its size hint.
struct ChanBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    exact: Option<u64>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

fn streaming(
    exact: Option<u64>,
    buffer: usize,
) -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, ProxyBody) {
    let (tx, rx) = mpsc::channel(buffer);
    (tx, ChanBody { rx, exact }.boxed())
}

fn request(method: &str, uri: &str, body: ProxyBody) -> http::Request<ProxyBody> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("a valid request")
}

fn get(uri: &str) -> http::Request<ProxyBody> {
    request("GET", uri, empty())
}

async fn send(pool: &Arc<Pool>, req: http::Request<ProxyBody>) -> Sent {
    tokio::time::timeout(SEND_LIMIT, pool.send(req, b"", CONNECT, ResponseHeads::Map))
        .await
        .expect("Pool::send did not finish in time")
}

fn ok(sent: Sent) -> http::Response<ResponseBody> {
    match sent {
        Ok(resp) => resp,
        Err(e) => panic!("expected a response, got {e:?}"),
    }
}

/// The error message of an `UpstreamError::Failed { connect: false }`.
fn refused(sent: Sent) -> String {
    match sent {
        Ok(resp) => panic!("expected the response to be refused, got {}", resp.status()),
        Err(UpstreamError::Failed {
            msg,
            connect: false,
        }) => msg,
        Err(e) => panic!("expected UpstreamError::Failed {{ connect: false }}, got {e:?}"),
    }
}

async fn body_of(resp: http::Response<ResponseBody>) -> Result<Bytes, BoxError> {
    tokio::time::timeout(SEND_LIMIT, resp.into_body().collect())
        .await
        .expect("the response body did not end in time")
        .map(|c| c.to_bytes())
}

async fn body_ok(resp: http::Response<ResponseBody>) -> Bytes {
    match body_of(resp).await {
        Ok(b) => b,
        Err(e) => panic!("expected the body to read cleanly, got {e}"),
    }
}

/// Send a GET and read its whole body.
async fn fetch(pool: &Arc<Pool>, uri: &str) -> (StatusCode, Bytes) {
    let resp = ok(send(pool, get(uri)).await);
    let status = resp.status();
    (status, body_ok(resp).await)
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const FRESH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!";

// ---------------------------------------------------------------------------
// 1. Content-Length bodies and connection reuse
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_body_is_read_exactly_and_connection_reused() {
    bounded(async {
        let b = always(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello world").await;
        let pool = b.pool();

        let resp = ok(send(&pool, get("/one")).await);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.body().size_hint().exact(), Some(11));
        // Checked out while the body is unread.
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(body_ok(resp).await, "hello world");
        assert_eq!(
            pool.idle_count(),
            1,
            "a cleanly ended body pools its connection"
        );

        let (status, body) = fetch(&pool, "/two").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello world");
        assert_eq!(b.accepts(), 1, "two requests, one connection");
        assert_eq!(pool.idle_count(), 1);

        let seen = b.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].request_line, "GET /one HTTP/1.1");
        assert_eq!(seen[1].request_line, "GET /two HTTP/1.1");
        assert_eq!((seen[1].conn, seen[1].index), (0, 1));
    })
    .await;
}

#[tokio::test]
async fn content_length_body_dribbled_in_pieces() {
    bounded(async {
        // Head and body arrive a few bytes at a time.
        let b = backend(|ctx, mut s| async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf, ctx.conn, 0).await.is_some() {
                let mut body = Vec::new();
                for i in 0..300u32 {
                    body.push(b'a' + (i % 26) as u8);
                }
                let mut all = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                all.extend_from_slice(&body);
                for piece in all.chunks(7) {
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await;
        let pool = b.pool();
        for _ in 0..2 {
            let (status, body) = fetch(&pool, "/").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.len(), 300);
            assert!(body
                .iter()
                .enumerate()
                .all(|(i, c)| *c == b'a' + (i % 26) as u8));
        }
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn large_content_length_body() {
    bounded(async {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut canned =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        canned.extend_from_slice(&body);
        let canned: &'static [u8] = Box::leak(canned.into_boxed_slice());
        let b = always(canned).await;
        let pool = b.pool();
        for _ in 0..2 {
            let (_, got) = fetch(&pool, "/big").await;
            assert_eq!(got.len(), body.len());
            assert!(got == body, "the large body differs");
        }
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn zero_and_repeated_identical_content_length() {
    bounded(async {
        let b = serve(|seen| match seen.index {
            0 => reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                After::Serve,
            ),
            1 => reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                After::Serve,
            ),
            2 => reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
                After::Serve,
            ),
            _ => reply(OK_HELLO, After::Serve),
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert!(resp.body().is_end_stream());
        // A body-less response gives its connection back at once.
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(body_ok(resp).await, "");
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn many_sequential_exchanges_share_one_connection() {
    bounded(async {
        let b = serve(|seen| {
            let bytes: &[u8] = match seen.index % 4 {
                0 => OK_HELLO,
                1 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
                2 => b"HTTP/1.1 204 No Content\r\n\r\n",
                _ => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            };
            reply(bytes, After::Serve)
        })
        .await;
        let pool = b.pool();
        for i in 0..40 {
            let (status, body) = fetch(&pool, &format!("/{i}")).await;
            if i % 4 == 2 {
                assert_eq!(status, StatusCode::NO_CONTENT);
                assert_eq!(body, "");
            } else {
                assert_eq!(status, StatusCode::OK, "request {i}");
                assert_eq!(body, "hello", "request {i}");
            }
        }
        assert_eq!(b.accepts(), 1);
        let seen = b.seen();
        assert_eq!(seen.len(), 40);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.request_line, format!("GET /{i} HTTP/1.1"));
        }
    })
    .await;
}

#[tokio::test]
async fn response_headers_and_status_are_preserved() {
    bounded(async {
        let b = always(
            b"HTTP/1.1 418 I'm a teapot\r\nSet-Cookie: a=1\r\nX-Empty:\r\nSet-Cookie: b=2\r\nX-Latin: caf\xe9\r\nContent-Length: 3\r\n\r\ntea",
        )
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
        let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, vec!["a=1", "b=2"]);
        assert_eq!(resp.headers()["x-empty"], "");
        assert_eq!(resp.headers()["x-latin"].as_bytes(), b"caf\xe9");
        assert_eq!(body_ok(resp).await, "tea");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Chunked bodies
// ---------------------------------------------------------------------------

const CHUNKED_FANCY: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n\
7;a;b=\"c d\"\r\n, world\r\n\
A\r\n0123456789\r\n\
1   ;  spaced\r\n!\r\n\
0;last=yes\r\nX-Trailer: yes\r\nAnother-Trailer: t\r\n\r\n";
const CHUNKED_FANCY_BODY: &str = "hello, world0123456789!";

#[tokio::test]
async fn chunked_with_extensions_and_trailers_decodes_and_reuses() {
    bounded(async {
        let b = always(CHUNKED_FANCY).await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert!(resp.body().size_hint().exact().is_none());
        assert_eq!(body_ok(resp).await, CHUNKED_FANCY_BODY);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(fetch(&pool, "/again").await.1, CHUNKED_FANCY_BODY);
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn chunked_dribbled_byte_by_byte() {
    bounded(async {
        let b = backend(|ctx, mut s| async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf, ctx.conn, 0).await.is_some() {
                for byte in CHUNKED_FANCY {
                    if s.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
            }
        })
        .await;
        let pool = b.pool();
        assert_eq!(fetch(&pool, "/").await.1, CHUNKED_FANCY_BODY);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(fetch(&pool, "/").await.1, CHUNKED_FANCY_BODY);
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn large_chunked_body() {
    bounded(async {
        let mut canned = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 97 % 20_000 + 1))
                .map(|j| (j % 253) as u8)
                .collect();
            canned.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            canned.extend_from_slice(&chunk);
            canned.extend_from_slice(b"\r\n");
            expected.extend_from_slice(&chunk);
        }
        canned.extend_from_slice(b"0\r\n\r\n");
        let canned: &'static [u8] = Box::leak(canned.into_boxed_slice());
        let b = always(canned).await;
        let pool = b.pool();
        for _ in 0..2 {
            let got = fetch(&pool, "/").await.1;
            assert!(got == expected, "the chunked body differs");
        }
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Close-delimited bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn close_delimited_body_read_to_eof_and_not_reused() {
    bounded(async {
        let b = serve(|_| {
            reply(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
                After::Close,
            )
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert!(resp.body().size_hint().exact().is_none());
        assert_eq!(body_ok(resp).await, "until the end");
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, "/").await.1, "until the end");
        assert_eq!(b.accepts(), 2, "a close-delimited exchange is never reused");
    })
    .await;
}

#[tokio::test]
async fn non_chunked_final_coding_is_close_delimited() {
    bounded(async {
        // RFC 9112 §6.3: chunked not final → read until close.
        let b = serve(|_| {
            reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                After::Close,
            )
        })
        .await;
        let pool = b.pool();
        assert_eq!(fetch(&pool, "/").await.1, "5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(pool.idle_count(), 0);
        fetch(&pool, "/").await;
        assert_eq!(b.accepts(), 2);
    })
    .await;
}

#[tokio::test]
async fn http10_response_is_not_reused() {
    bounded(async {
        let b = always(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert_eq!(resp.version(), http::Version::HTTP_10);
        assert_eq!(body_ok(resp).await, "ok");
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, "/").await.1, "ok");
        assert_eq!(b.accepts(), 2);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Refused responses
// ---------------------------------------------------------------------------

/// Each head is written, then the backend keeps the connection open, so a
/// refusal cannot come from an EOF.
const REFUSED_HEADS: &[(&str, &[u8])] = &[
    (
        "CL and TE",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "TE and CL",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "CL and non-chunked TE",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "differing CL fields",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "differing CL list",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ),
    ("non-numeric CL", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello"),
    ("negative CL", b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello"),
    ("plus-signed CL", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
    ("hex CL", b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello"),
    ("empty CL", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nhello"),
    ("CL with inner space", b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello"),
    ("CL with empty list item", b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello"),
    ("CL decimal", b"HTTP/1.1 200 OK\r\nContent-Length: 5.0\r\n\r\nhello"),
    (
        "CL over u64",
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nhello",
    ),
    (
        "space before colon",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    ),
    (
        "obs-fold",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 5\r\n\r\nhello",
    ),
    ("garbage status line", b"garbage\r\n\r\n"),
    ("garbage binary", b"\x00\x01\x02\x03\r\n\r\n"),
    ("HTTP/2 status line", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status 2000", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status 099", b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n"),
    ("request instead of response", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    (
        "101 without an upgrade request",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ),
    (
        "101 after 100 without an upgrade request",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    ),
];

#[tokio::test]
async fn refused_response_heads() {
    bounded(async {
        for (name, head) in REFUSED_HEADS {
            let head: &'static [u8] = head;
            let b = serve(move |_| reply(head, After::Hold)).await;
            let pool = b.pool();
            let msg = refused(send(&pool, get("/")).await);
            assert!(!msg.is_empty(), "{name}");
            assert_eq!(pool.idle_count(), 0, "{name}: nothing pooled");
        }
    })
    .await;
}

#[tokio::test]
async fn too_many_response_headers_refused() {
    bounded(async {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..200 {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let head: &'static [u8] = Box::leak(head.into_boxed_slice());
        let b = serve(move |_| reply(head, After::Hold)).await;
        refused(send(&b.pool(), get("/")).await);
    })
    .await;
}

fn big_head(total: usize) -> Vec<u8> {
    let prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Big: ";
    let suffix = b"\r\n\r\n";
    let mut head = prefix.to_vec();
    head.resize(total - suffix.len(), b'a');
    head.extend_from_slice(suffix);
    assert_eq!(head.len(), total);
    head
}

#[tokio::test]
async fn response_head_over_64k_refused() {
    bounded(async {
        let mut accepted = Vec::new();
        for size in [
            64 * 1024 + 1,
            65 * 1024,
            70_000,
            100_000,
            130_000,
            200_000,
            1_000_000,
        ] {
            let head: &'static [u8] = Box::leak(big_head(size).into_boxed_slice());
            let b = serve(move |_| reply(head, After::Hold)).await;
            let pool = b.pool();
            match send(&pool, get("/")).await {
                Err(UpstreamError::Failed { connect: false, .. }) => {
                    assert_eq!(pool.idle_count(), 0, "head of {size} bytes");
                }
                Err(e) => accepted.push(format!("{size}: {e:?}")),
                Ok(resp) => accepted.push(format!("{size}: {}", resp.status())),
            }
        }
        assert!(
            accepted.is_empty(),
            "heads over 64 KiB not refused: {accepted:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn response_head_just_under_64k_accepted() {
    bounded(async {
        let head: &'static [u8] = Box::leak(big_head(60_000).into_boxed_slice());
        let b = always(head).await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert!(resp.headers()["x-big"].len() > 59_000);
    })
    .await;
}

#[tokio::test]
async fn response_head_over_64k_refused_on_a_reused_connection() {
    bounded(async {
        // The first exchange grows the connection's read buffer with a large
        // body; the second head (over the limit) must still be refused even
        // when it fits into that buffer in one read.
        let mut first = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n".to_vec();
        first.resize(first.len() + 4_000_000, b'b');
        let first: &'static [u8] = Box::leak(first.into_boxed_slice());
        let second: &'static [u8] = Box::leak(big_head(150_000).into_boxed_slice());
        let b = serve(move |seen| match seen.index {
            0 => reply(first, After::Serve),
            _ => reply(second, After::Hold),
        })
        .await;
        let pool = b.pool();
        assert_eq!(fetch(&pool, "/").await.1.len(), 4_000_000);
        assert_eq!(pool.idle_count(), 1);
        // Let the head arrive whole in the socket before it is read.
        let resp = send(&pool, get("/")).await;
        refused(resp);
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn response_head_dribbled_past_64k_refused() {
    bounded(async {
        let b = backend(|_ctx, mut s| async move {
            let mut buf = Vec::new();
            if read_head_only(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Big: ").await;
            // An endless header value, a little at a time.
            let piece = vec![b'v'; 1000];
            for i in 0..100_000u32 {
                if s.write_all(&piece).await.is_err() {
                    return;
                }
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await;
        refused(send(&b.pool(), get("/")).await);
    })
    .await;
}

/// Body framing errors: the head is fine, the body must fail to collect.
const BAD_CHUNKED: &[(&str, &[u8])] = &[
    ("non-hex chunk size", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("0x chunk size", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("chunk size with inner space", b"5 5\r\nhello\r\n0\r\n\r\n"),
    (
        "chunk size over u64",
        b"10000000000000000\r\nhello\r\n0\r\n\r\n",
    ),
    ("chunk size line ended by bare LF", b"5\nhello\r\n0\r\n\r\n"),
    ("empty chunk size line", b"5\r\nhello\r\n\r\n\r\n"),
    (
        "chunk size missing before extension",
        b";ext=1\r\nhello\r\n0\r\n\r\n",
    ),
    ("chunk size of whitespace", b" \r\nhello\r\n0\r\n\r\n"),
    ("chunk data not followed by CRLF", b"5\r\nhelloXY0\r\n\r\n"),
    ("chunk data followed by bare LF", b"5\r\nhello\n0\r\n\r\n"),
    (
        "chunk data longer than its size",
        b"3\r\nhello\r\n0\r\n\r\n",
    ),
];

#[tokio::test]
async fn invalid_chunked_bodies_fail_when_collected() {
    bounded(async {
        for (name, body) in BAD_CHUNKED {
            let mut all = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            all.extend_from_slice(body);
            let all: &'static [u8] = Box::leak(all.into_boxed_slice());
            let b = serve(move |_| reply(all, After::Hold)).await;
            let pool = b.pool();
            let resp = ok(send(&pool, get("/")).await);
            let got = body_of(resp).await;
            assert!(got.is_err(), "{name}: body read as {got:?}");
            assert_eq!(pool.idle_count(), 0, "{name}: nothing pooled");
        }
    })
    .await;
}

#[tokio::test]
async fn overlong_chunk_size_and_trailer_lines_fail() {
    bounded(async {
        let long = "a".repeat(10_000);
        let cases = [
            // A chunk-size line that never ends.
            format!("5;{long}"),
            // A trailer line that never ends.
            format!("0\r\nX-T: {long}"),
        ];
        for case in cases {
            let mut all = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            all.extend_from_slice(case.as_bytes());
            let all: &'static [u8] = Box::leak(all.into_boxed_slice());
            let b = serve(move |_| reply(all, After::Hold)).await;
            let pool = b.pool();
            let resp = ok(send(&pool, get("/")).await);
            assert!(body_of(resp).await.is_err());
            assert_eq!(pool.idle_count(), 0);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Interim responses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn interim_responses_are_skipped() {
    bounded(async {
        let b = always(
            b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
HTTP/1.1 102 Processing\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok",
        )
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-final"], "yes");
        assert!(
            resp.headers().get("link").is_none(),
            "interim headers do not leak into the final response"
        );
        assert_eq!(body_ok(resp).await, "ok");
        assert_eq!(fetch(&pool, "/").await.1, "ok");
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn interim_responses_in_separate_segments() {
    bounded(async {
        let b = backend(|ctx, mut s| async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf, ctx.conn, 0).await.is_some() {
                for part in [
                    &b"HTTP/1.1 100 Cont"[..],
                    b"inue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                    b"ok",
                ] {
                    if s.write_all(part).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await;
        let pool = b.pool();
        let (status, body) = fetch(&pool, "/").await;
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("ok")));
        assert_eq!(fetch(&pool, "/").await.1, "ok");
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn continue_before_the_final_response_to_a_post() {
    bounded(async {
        let b = always(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        )
        .await;
        let pool = b.pool();
        let mut req = request("POST", "/upload", full("payload"));
        req.headers_mut()
            .insert("expect", HeaderValue::from_static("100-continue"));
        let resp = ok(send(&pool, req).await);
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(body_ok(resp).await, "done");
        assert_eq!(b.seen()[0].body, b"payload");
        assert_eq!(pool.idle_count(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6, 7. Responses without a body
// ---------------------------------------------------------------------------

#[tokio::test]
async fn head_response_has_no_body_and_connection_reusable() {
    bounded(async {
        let b = serve(|seen| {
            if seen.request_line.starts_with("HEAD") {
                reply(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                    After::Serve,
                )
            } else {
                reply(OK_HELLO, After::Serve)
            }
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, request("HEAD", "/", empty())).await);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-length"], "100");
        assert!(resp.body().is_end_stream());
        assert_eq!(body_ok(resp).await, "");
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn head_response_with_chunked_header_has_no_body() {
    bounded(async {
        let b = serve(|seen| {
            if seen.request_line.starts_with("HEAD") {
                reply(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    After::Serve,
                )
            } else {
                reply(OK_HELLO, After::Serve)
            }
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, request("HEAD", "/", empty())).await);
        assert_eq!(body_ok(resp).await, "");
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    bounded(async {
        for head in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let b = serve(move |seen| match seen.index {
                0 => reply(head, After::Serve),
                _ => reply(OK_HELLO, After::Serve),
            })
            .await;
            let pool = b.pool();
            let resp = ok(send(&pool, get("/")).await);
            assert!(resp.status() == 204 || resp.status() == 304);
            assert!(resp.body().is_end_stream());
            assert_eq!(body_ok(resp).await, "");
            assert_eq!(pool.idle_count(), 1);
            assert_eq!(fetch(&pool, "/").await.1, "hello");
            assert_eq!(b.accepts(), 1);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 8. Bodies cut short
// ---------------------------------------------------------------------------

#[tokio::test]
async fn truncated_bodies_fail_and_are_not_pooled() {
    bounded(async {
        for (name, bytes) in [
            (
                "CL 100, 10 bytes",
                &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..],
            ),
            (
                "CL, no body at all",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            ),
            (
                "chunk cut mid-data",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01234",
            ),
            (
                "chunk cut before its CRLF",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
            ),
            (
                "chunk cut mid size line",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1",
            ),
            (
                "chunked cut before the last chunk",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            ),
            (
                "chunked cut in the trailers",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n",
            ),
            (
                "chunked cut before the final CRLF",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
            ),
        ] {
            for after in [After::Close, After::Reset] {
                let b = serve(move |_| reply(bytes, after)).await;
                let pool = b.pool();
                let resp = ok(send(&pool, get("/")).await);
                let got = body_of(resp).await;
                assert!(got.is_err(), "{name} ({after:?}): read as {got:?}");
                assert_eq!(pool.idle_count(), 0, "{name} ({after:?})");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn head_cut_short_is_an_error() {
    bounded(async {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"",
        ] {
            let b = serve(move |_| reply(bytes, After::Close)).await;
            let pool = b.pool();
            refused(send(&pool, get("/")).await);
            assert_eq!(pool.idle_count(), 0);
        }
    })
    .await;
}

#[tokio::test]
async fn body_dropped_unread_closes_the_connection() {
    bounded(async {
        let mut canned = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        canned.resize(canned.len() + 100_000, b'0');
        let canned: &'static [u8] = Box::leak(canned.into_boxed_slice());
        let b = always(canned).await;
        let pool = b.pool();
        let resp = ok(send(&pool, get("/")).await);
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        // Partly read, then dropped.
        let resp = ok(send(&pool, get("/")).await);
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(fetch(&pool, "/").await.1.len(), 100_000);
        assert_eq!(b.accepts(), 3);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 9, 10. Extra bytes after a response; response smuggling
// ---------------------------------------------------------------------------

#[tokio::test]
async fn junk_after_the_response_prevents_reuse() {
    bounded(async {
        for first in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhellojunk"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\njunk",
            b"HTTP/1.1 204 No Content\r\n\r\njunk",
        ] {
            let b = serve(move |seen| match seen.conn {
                0 => reply(first, After::Hold),
                _ => reply(FRESH, After::Serve),
            })
            .await;
            let pool = b.pool();
            let resp = ok(send(&pool, get("/")).await);
            let body = body_ok(resp).await;
            assert!(body == "hello" || body.is_empty(), "{body:?}");
            assert_eq!(pool.idle_count(), 0);
            assert_eq!(fetch(&pool, "/").await.1, "fresh");
            assert_eq!(b.accepts(), 2);
        }
    })
    .await;
}

#[tokio::test]
async fn two_responses_for_one_request_are_not_smuggled() {
    bounded(two_responses_for_one_request_are_not_smuggled_case()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_responses_for_one_request_are_not_smuggled_multi_thread() {
    bounded(two_responses_for_one_request_are_not_smuggled_case()).await;
}

async fn two_responses_for_one_request_are_not_smuggled_case() {
    // Both responses in one write.
    let mut both = OK_HELLO.to_vec();
    both.extend_from_slice(EVIL);
    let both: &'static [u8] = Box::leak(both.into_boxed_slice());
    let b = serve(move |seen| match seen.conn {
        0 => reply(both, After::Serve),
        _ => reply(FRESH, After::Serve),
    })
    .await;
    let pool = b.pool();
    assert_eq!(fetch(&pool, "/first").await.1, "hello");
    for _ in 0..3 {
        let (_, body) = fetch(&pool, "/later").await;
        assert_ne!(body, "EVIL!", "a smuggled response was delivered");
        assert_eq!(body, "fresh");
    }
}

/// The second response arrives after the first one's body was consumed and
/// the connection pooled: it must not become a later request's response.
#[tokio::test]
async fn late_second_response_is_not_smuggled() {
    bounded(late_second_response_is_not_smuggled_case()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_second_response_is_not_smuggled_multi_thread() {
    bounded(late_second_response_is_not_smuggled_case()).await;
}

async fn late_second_response_is_not_smuggled_case() {
    for first in [
        OK_HELLO,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ] {
        let b = backend(move |ctx, mut s| async move {
            let mut buf = Vec::new();
            if ctx.conn == 0 {
                if read_request(&mut s, &mut buf, ctx.conn, 0).await.is_none() {
                    return;
                }
                let _ = s.write_all(first).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s.write_all(EVIL).await;
                // Answer whatever comes next with the smuggled one too.
                let mut index = 1;
                while read_request(&mut s, &mut buf, ctx.conn, index)
                    .await
                    .is_some()
                {
                    let _ = s.write_all(EVIL).await;
                    index += 1;
                }
            } else {
                let mut index = 0;
                while read_request(&mut s, &mut buf, ctx.conn, index)
                    .await
                    .is_some()
                {
                    let _ = s.write_all(FRESH).await;
                    index += 1;
                }
            }
        })
        .await;
        let pool = b.pool();
        let (_, body) = fetch(&pool, "/first").await;
        assert!(body == "hello" || body.is_empty());
        // The smuggled bytes are in the socket well before the next request.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, body) = fetch(&pool, "/later").await;
        assert_ne!(body, "EVIL!", "a smuggled response was delivered");
        assert_eq!(body, "fresh");
        assert_eq!(b.accepts(), 2);
    }
}

#[tokio::test]
async fn body_sent_to_a_head_request_is_not_read_as_the_next_response() {
    bounded(async {
        // A target that (wrongly) sends a body to HEAD, shaped as a response.
        let b = serve(
            |seen| match (seen.conn, seen.request_line.starts_with("HEAD")) {
                (0, true) => {
                    let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n".to_vec();
                    bytes.extend_from_slice(EVIL);
                    reply(bytes, After::Serve)
                }
                _ => reply(FRESH, After::Serve),
            },
        )
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, request("HEAD", "/", empty())).await);
        assert_eq!(body_ok(resp).await, "");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = fetch(&pool, "/").await;
        assert_ne!(body, "EVIL!", "a smuggled response was delivered");
        assert_eq!(body, "fresh");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 11. Stale pooled connections
// ---------------------------------------------------------------------------

/// Connection 0 answers once and then `after`; the others serve normally.
async fn closes_after_first(after: After) -> Backend {
    serve(move |seen| match seen.conn {
        0 => reply(OK_HELLO, after),
        _ => reply(FRESH, After::Serve),
    })
    .await
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced_for_a_bodiless_get() {
    bounded(stale_pooled_connection_is_replaced_for_a_bodiless_get_case()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_for_a_bodiless_get_multi_thread() {
    bounded(stale_pooled_connection_is_replaced_for_a_bodiless_get_case()).await;
}

async fn stale_pooled_connection_is_replaced_for_a_bodiless_get_case() {
    for (after, pause) in [
        (After::Close, 0),
        (After::Close, 100),
        (After::Reset, 0),
        (After::Reset, 100),
        (After::Close, 1_200),
    ] {
        let b = closes_after_first(after).await;
        let pool = b.pool();
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        // No `Connection: close`: the connection was pooled.
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (status, body) = fetch(&pool, "/").await;
        assert_eq!(status, StatusCode::OK, "{after:?} {pause}ms");
        assert_eq!(body, "fresh", "{after:?} {pause}ms");
        assert_eq!(b.accepts(), 2);
        assert_eq!(pool.idle_count(), 1);
    }
}

#[tokio::test]
async fn stale_pooled_connection_noticed_before_a_request_with_a_body() {
    bounded(async {
        // The target closed the idle connection a while ago: a POST (not
        // retried) must not be sent on it.
        for after in [After::Close, After::Reset] {
            let b = closes_after_first(after).await;
            let pool = b.pool();
            assert_eq!(fetch(&pool, "/").await.1, "hello");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let resp = ok(send(&pool, request("POST", "/", full("data"))).await);
            assert_eq!(body_ok(resp).await, "fresh", "{after:?}");
            assert_eq!(b.accepts(), 2);
        }
    })
    .await;
}

#[tokio::test]
async fn stale_retry_happens_only_once() {
    bounded(async {
        // Connection 0 answers and closes; every later connection is closed
        // at once, without a response.
        let b = backend(|ctx, mut s| async move {
            let mut buf = Vec::new();
            if ctx.conn == 0 {
                if read_request(&mut s, &mut buf, 0, 0).await.is_some() {
                    let _ = s.write_all(OK_HELLO).await;
                }
            } else {
                let _ = read_head_only(&mut s, &mut buf).await;
            }
        })
        .await;
        let pool = b.pool();
        assert_eq!(fetch(&pool, "/").await.1, "hello");
        refused(send(&pool, get("/")).await);
        assert_eq!(b.accepts(), 2, "one fresh connection, no retry loop");
    })
    .await;
}

#[tokio::test]
async fn connection_close_header_prevents_pooling() {
    bounded(async {
        for head in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nConnection: x-foo\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        ] {
            // The target keeps the connection open anyway.
            let b = serve(move |_| reply(head, After::Serve)).await;
            let pool = b.pool();
            let resp = ok(send(&pool, get("/")).await);
            body_ok(resp).await;
            assert_eq!(pool.idle_count(), 0);
            let resp = ok(send(&pool, get("/")).await);
            body_ok(resp).await;
            assert_eq!(b.accepts(), 2);
        }
    })
    .await;
}

#[tokio::test]
async fn idle_timeout_and_max_idle() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = Arc::new(Pool::new(
            &b.addr.to_string(),
            Duration::from_millis(100),
            1,
        ));
        // Two at once: two connections, only one kept.
        let (a, c) = tokio::join!(send(&pool, get("/a")), send(&pool, get("/b")));
        let (a, c) = (ok(a), ok(c));
        assert_eq!(b.accepts(), 2);
        body_ok(a).await;
        body_ok(c).await;
        assert_eq!(pool.idle_count(), 1, "max_idle is 1");
        fetch(&pool, "/").await;
        assert_eq!(b.accepts(), 2);
        // Past the idle timeout the pooled connection is not used.
        tokio::time::sleep(Duration::from_millis(250)).await;
        fetch(&pool, "/").await;
        assert_eq!(b.accepts(), 3);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 12. Request encoding
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_framing_headers_are_the_proxys_own() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();
        let mut req = request("POST", "/submit?x=1", full("hello"));
        req.headers_mut()
            .insert("content-length", HeaderValue::from_static("999"));
        req.headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        req.headers_mut()
            .append("transfer-encoding", HeaderValue::from_static("gzip"));
        req.headers_mut()
            .insert("x-custom", HeaderValue::from_static("kept"));
        assert_eq!(fetch_req(&pool, req).await, "hello");

        let seen = &b.seen()[0];
        assert_eq!(seen.request_line, "POST /submit?x=1 HTTP/1.1");
        assert_eq!(seen.values("content-length"), vec!["5"]);
        assert!(seen.values("transfer-encoding").is_empty());
        assert_eq!(seen.values("x-custom"), vec!["kept"]);
        assert_eq!(seen.raw_body, b"hello");
        assert_eq!(pool.idle_count(), 1);
    })
    .await;
}

async fn fetch_req(pool: &Arc<Pool>, req: http::Request<ProxyBody>) -> Bytes {
    body_ok(ok(send(pool, req).await)).await
}

#[tokio::test]
async fn streaming_body_is_sent_chunked() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();
        let (tx, body) = streaming(None, 8);
        let mut req = request("PUT", "/stream", body);
        req.headers_mut()
            .insert("content-length", HeaderValue::from_static("3"));
        let feeder = tokio::spawn(async move {
            for piece in [&b"abc"[..], b"", b"defgh", b"", &[b'z'; 300][..]] {
                tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                    .await
                    .expect("the body is being read");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("t"));
            tx.send(Ok(Frame::trailers(trailers)))
                .await
                .expect("the body is being read");
        });
        assert_eq!(fetch_req(&pool, req).await, "hello");
        feeder.await.expect("feeder");

        let seen = &b.seen()[0];
        assert_eq!(seen.values("transfer-encoding"), vec!["chunked"]);
        assert!(seen.values("content-length").is_empty());
        let mut expected = b"3\r\nabc\r\n5\r\ndefgh\r\n12c\r\n".to_vec();
        expected.extend_from_slice(&[b'z'; 300]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&seen.raw_body),
            String::from_utf8_lossy(&expected)
        );
        // A whole exchange: the connection is reused.
        assert_eq!(pool.idle_count(), 1);
        fetch(&pool, "/").await;
        assert_eq!(b.accepts(), 1);
        assert_eq!(b.seen()[1].request_line, "GET / HTTP/1.1");
    })
    .await;
}

#[tokio::test]
async fn empty_bodies_by_method() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let mut req = request(method, "/", empty());
            req.headers_mut()
                .insert("content-length", HeaderValue::from_static("12"));
            req.headers_mut()
                .insert("transfer-encoding", HeaderValue::from_static("chunked"));
            fetch_req(&pool, req).await;
        }
        let seen = b.seen();
        assert_eq!(seen.len(), 6);
        for s in &seen {
            let method = s.request_line.split(' ').next().unwrap_or_default();
            assert!(s.values("transfer-encoding").is_empty(), "{method}");
            if matches!(method, "POST" | "PUT" | "PATCH") {
                assert_eq!(s.values("content-length"), vec!["0"], "{method}");
            } else {
                assert!(s.values("content-length").is_empty(), "{method}");
            }
            assert!(s.raw_body.is_empty());
        }
        assert_eq!(b.accepts(), 1);
    })
    .await;
}

#[tokio::test]
async fn get_with_a_body_carries_its_length() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();
        fetch_req(&pool, request("GET", "/", full("q=1"))).await;
        let seen = &b.seen()[0];
        assert_eq!(seen.values("content-length"), vec!["3"]);
        assert_eq!(seen.body, b"q=1");
    })
    .await;
}

#[tokio::test]
async fn host_header() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();
        // Missing: from the pool's address.
        fetch(&pool, "/a").await;
        // Present: kept, not doubled.
        let mut req = get("/b");
        req.headers_mut()
            .insert("host", HeaderValue::from_static("example.org"));
        fetch_req(&pool, req).await;
        // Absolute URI: origin-form on the wire, Host from the authority.
        fetch(&pool, "http://example.com:8080/c?d=e").await;
        // No path at all.
        fetch(&pool, "http://example.net").await;

        let seen = b.seen();
        assert_eq!(seen[0].values("host"), vec![b.addr.to_string()]);
        assert_eq!(seen[1].values("host"), vec!["example.org"]);
        assert_eq!(seen[2].request_line, "GET /c?d=e HTTP/1.1");
        assert_eq!(seen[2].values("host"), vec!["example.com:8080"]);
        assert_eq!(seen[3].request_line, "GET / HTTP/1.1");
        assert_eq!(seen[3].values("host"), vec!["example.net"]);
    })
    .await;
}

#[tokio::test]
async fn failing_request_body_is_an_error() {
    bounded(async {
        let b = always(OK_HELLO).await;
        let pool = b.pool();

        // The client's body breaks mid-stream.
        let (tx, body) = streaming(None, 8);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .expect("queued");
        tx.send(Err("client went away".into()))
            .await
            .expect("queued");
        refused(send(&pool, request("POST", "/", body)).await);
        assert_eq!(pool.idle_count(), 0);

        // Shorter than its declared exact length.
        let (tx, body) = streaming(Some(10), 8);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abcde"))))
            .await
            .expect("queued");
        drop(tx);
        refused(send(&pool, request("POST", "/", body)).await);
        assert_eq!(pool.idle_count(), 0);

        // Longer than its declared exact length.
        let (tx, body) = streaming(Some(3), 8);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abcde"))))
            .await
            .expect("queued");
        drop(tx);
        refused(send(&pool, request("POST", "/", body)).await);
        assert_eq!(pool.idle_count(), 0);

        // The backend never saw a complete request it could answer.
        assert!(b
            .seen()
            .iter()
            .all(|s| s.body.is_empty() || s.body == b"abc"));
        // And the pool still works.
        assert_eq!(fetch(&pool, "/").await.1, "hello");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 13. Connect failure
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connect_failure_is_a_connect_error() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = Arc::new(Pool::new(&addr.to_string(), Duration::from_secs(30), 4));
        match send(&pool, get("/")).await {
            Err(UpstreamError::Failed { connect: true, msg }) => {
                assert!(msg.contains(&addr.to_string()), "{msg}");
            }
            Err(e) => panic!("expected a connect failure, got {e:?}"),
            Ok(resp) => panic!("expected a connect failure, got {}", resp.status()),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 14. Early responses
// ---------------------------------------------------------------------------

/// Reads the request head only, answers `bytes`, then neither reads nor
/// closes until `release` (or a deadline); then half-closes and drains
/// (a lingering close, as real servers do).
async fn early_answer(bytes: &'static [u8], release: Arc<Notify>) -> Backend {
    backend(move |_ctx, mut s| {
        let release = release.clone();
        async move {
            let mut buf = Vec::new();
            if read_head_only(&mut s, &mut buf).await.is_none() {
                return;
            }
            if s.write_all(bytes).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
            let _ = s.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), drain(&mut s)).await;
        }
    })
    .await
}

#[tokio::test]
async fn early_413_while_a_streaming_body_is_blocked() {
    bounded(early_413_while_a_streaming_body_is_blocked_case()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_while_a_streaming_body_is_blocked_multi_thread() {
    bounded(early_413_while_a_streaming_body_is_blocked_case()).await;
}

async fn early_413_while_a_streaming_body_is_blocked_case() {
    for head in [
        &b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!"[..],
        // Without `Connection: close`: still not reusable (the request
        // was not fully sent).
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!",
    ] {
        let release = Arc::new(Notify::new());
        let b = early_answer(head, release.clone()).await;
        let pool = b.pool();
        let (tx, body) = streaming(None, 4);
        // Far more than the socket buffers hold: the write blocks.
        let feeder = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            for _ in 0..2048 {
                if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                    return;
                }
            }
        });
        let resp = ok(send(&pool, request("POST", "/upload", body)).await);
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_ok(resp).await, "too big!");
        assert_eq!(pool.idle_count(), 0, "a half-sent request's connection is not reused");
        release.notify_one();
        tokio::time::timeout(Duration::from_secs(5), feeder)
            .await
            .expect("the feeder stops once the body is dropped")
            .expect("feeder");
    }
}

#[tokio::test]
async fn early_413_with_a_large_full_body() {
    bounded(async {
        let release = Arc::new(Notify::new());
        let b = early_answer(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
            release.clone(),
        )
        .await;
        let pool = b.pool();
        let body = full(vec![b'x'; 32 * 1024 * 1024]);
        let resp = ok(send(&pool, request("POST", "/", body)).await);
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_ok(resp).await, "");
        assert_eq!(pool.idle_count(), 0);
        release.notify_one();
    })
    .await;
}

#[tokio::test]
async fn early_response_then_close() {
    bounded(async {
        // Answers, half-closes at once, drains briefly and closes.
        let b = backend(|_ctx, mut s| async move {
            let mut buf = Vec::new();
            if read_head_only(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
                .await;
            let _ = s.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), drain(&mut s)).await;
        })
        .await;
        let pool = b.pool();
        let (tx, body) = streaming(None, 4);
        let feeder = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            for _ in 0..2048 {
                if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                    return;
                }
            }
        });
        let resp = ok(send(&pool, request("POST", "/", body)).await);
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_ok(resp).await, "big");
        assert_eq!(pool.idle_count(), 0);
        let _ = tokio::time::timeout(Duration::from_secs(5), feeder).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 15. Upgrades
// ---------------------------------------------------------------------------

fn upgrade_request() -> http::Request<ProxyBody> {
    let mut req = get("/ws");
    req.headers_mut()
        .insert("upgrade", HeaderValue::from_static("websocket"));
    req.headers_mut()
        .insert("connection", HeaderValue::from_static("upgrade"));
    req
}

#[tokio::test]
async fn upgrade_hands_over_the_connection_and_leftover_bytes() {
    bounded(async {
        let b = backend(|ctx, mut s| async move {
            let mut buf = Vec::new();
            let Some(seen) = read_request(&mut s, &mut buf, ctx.conn, 0).await else {
                return;
            };
            ctx.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(seen);
            // The 101 head and the first upgraded bytes in one write.
            if s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO",
                )
                .await
                .is_err()
            {
                return;
            }
            // Echo.
            let mut tmp = [0u8; 1024];
            while let Ok(n) = s.read(&mut tmp).await {
                if n == 0 || s.write_all(&tmp[..n]).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, upgrade_request()).await);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        let slot = resp
            .extensions()
            .get::<UpgradeSlot>()
            .expect("an UpgradeSlot extension")
            .clone();
        let upgraded = slot.take().expect("the upgraded connection");
        assert!(slot.take().is_none(), "taken once");
        assert!(resp.body().is_end_stream());
        assert_eq!(pool.idle_count(), 0);

        let mut io = upgraded.io;
        // The bytes after the head: in `leftover`, or still in the socket if
        // they arrived in a later segment; never lost, never duplicated.
        let mut got = upgraded.leftover.to_vec();
        while got.len() < 5 {
            let mut tmp = [0u8; 64];
            let n = io.read(&mut tmp).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&tmp[..n]);
        }
        assert_eq!(got, b"HELLO");
        io.write_all(b"ping").await.expect("write");
        let mut echo = [0u8; 4];
        io.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");

        let seen = &b.seen()[0];
        assert_eq!(seen.values("upgrade"), vec!["websocket"]);
        assert_eq!(seen.values("connection"), vec!["upgrade"]);
        assert!(seen.values("content-length").is_empty());
        assert!(seen.values("transfer-encoding").is_empty());
    })
    .await;
}

#[tokio::test]
async fn upgrade_after_interim_response() {
    bounded(async {
        let b = serve(|_| {
            reply(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nXY",
                After::Hold,
            )
        })
        .await;
        let pool = b.pool();
        let resp = ok(send(&pool, upgrade_request()).await);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = resp
            .extensions()
            .get::<UpgradeSlot>()
            .expect("an UpgradeSlot extension")
            .take()
            .expect("the upgraded connection");
        let mut got = upgraded.leftover.to_vec();
        let mut io = upgraded.io;
        while got.len() < 2 {
            let mut tmp = [0u8; 64];
            let n = io.read(&mut tmp).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(&tmp[..n]);
        }
        assert_eq!(got, b"XY");
    })
    .await;
}

#[tokio::test]
async fn upgrade_declined_is_an_ordinary_response() {
    bounded(async {
        let b = always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno").await;
        let pool = b.pool();
        let resp = ok(send(&pool, upgrade_request()).await);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.extensions().get::<UpgradeSlot>().is_none());
        assert_eq!(body_ok(resp).await, "no");
    })
    .await;
}
