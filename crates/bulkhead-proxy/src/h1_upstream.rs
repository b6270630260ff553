//! HTTP/1.1 to a target, on the request's own task.
//!
//! hyper-util's pooled client runs every upstream connection as a task of
//! its own and talks to it over a channel: each request crossed two tasks
//! and a channel each way. Here the request's task checks a connection out
//! of the target's [`Pool`], writes the request head (and streams the body),
//! reads the response head with `httparse`, and hands back a [`ResponseBody`]
//! that reads the body straight from the socket and returns the connection
//! to the pool when the body ends cleanly.
//!
//! The response framing follows RFC 9112 §6.3, strictly: a response with
//! both `Content-Length` and `Transfer-Encoding`, or with differing or
//! invalid lengths, is refused (502) rather than guessed at, and a
//! connection is only reused when the exchange ended exactly where its
//! framing said.

use crate::raw_head::{RawHead, ResponseHeads};
use crate::upstream::{ProxyBody, UpstreamError, CONNECT_TIMED_OUT};
use crate::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, CONNECTION, CONTENT_LENGTH, HOST};
use http::header::{TRANSFER_ENCODING, UPGRADE};
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;

/// The idle connections to one target address.
pub struct Pool {
    address: String,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection and the bytes read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// A target's side of a `101 Switching Protocols`: the connection, and
/// whatever the target sent after the response head.
pub struct Upgraded {
    /// The connection to the target.
    pub io: TcpStream,
    /// Bytes the target already sent past the 101 head.
    pub leftover: Bytes,
}

/// Response extension carrying [`Upgraded`] (taken once).
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Mutex<Option<Upgraded>>>);

impl UpgradeSlot {
    /// Take the upgraded connection (`None` if already taken).
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Pool {
    /// A pool for `address` (`host:port`) keeping at most `max_idle`
    /// connections, each for at most `idle_timeout`.
    pub fn new(address: &str, idle_timeout: Duration, max_idle: usize) -> Pool {
        Pool {
            address: address.to_string(),
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still usable.
    ///
    /// Every idle connection is probed before reuse, however young: bytes
    /// the target sent after a response ended (a second response to one
    /// request, a body to a HEAD) may land after the connection was pooled,
    /// and would otherwise be read as the next request's response. The
    /// probe also catches a close, so even a request with a body (never
    /// retried) is not sent on a connection the target already closed.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_back() {
            let age = now.saturating_duration_since(entry.since);
            if age >= self.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if still_open(&entry.conn.io) {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            // An idle connection holds no buffer: the next exchange takes a
            // fresh one (the old one is usually still shared with the last
            // response's bytes anyway).
            let conn = Conn {
                io: conn.io,
                buf: BytesMut::new(),
            };
            idle.push_back(Idle { conn, since: now });
        }
    }

    async fn connect(&self, limit: Duration) -> Result<Conn, UpstreamError> {
        match tokio::time::timeout(limit, TcpStream::connect(self.address.as_str())).await {
            Err(_) => Err(UpstreamError::Timeout(CONNECT_TIMED_OUT)),
            Ok(Err(e)) => Err(UpstreamError::Failed {
                msg: format!("connect to {}: {e}", self.address),
                connect: true,
            }),
            Ok(Ok(io)) => {
                let _ = io.set_nodelay(true);
                Ok(Conn {
                    io,
                    buf: BytesMut::new(),
                })
            }
        }
    }

    /// Send `req`, with `forwarding` (header lines, see
    /// `headers::untrusted_forwarding_lines`) after its fields, and read the
    /// response head, taken as `heads` says; `connect` bounds a new
    /// connection's TCP connect. A pooled connection the target closed while
    /// idle is replaced once, for requests without a body.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<ProxyBody>,
        forwarding: &[u8],
        connect: Duration,
        heads: ResponseHeads,
    ) -> Result<http::Response<ResponseBody>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let framing = RequestFraming::of(&parts.method, &body);
        let head = encode_head(&parts, forwarding, framing, &self.address);
        let ask = Ask {
            head_request: parts.method == Method::HEAD,
            upgrade: parts.headers.contains_key(UPGRADE),
            heads,
        };
        let mut body = (framing != RequestFraming::None).then_some(body);
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only { None } else { self.checkout() };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect(connect).await?,
            };
            match exchange(&mut conn, &head, body.take(), framing, ask).await {
                Ok(got) => return Ok(self.response(conn, got, ask)),
                Err(Failure::Stale(_)) if reused && framing == RequestFraming::None => {
                    tracing::debug!(target = %self.address, "pooled connection was closed; reconnecting");
                    fresh_only = true;
                }
                Err(Failure::Stale(msg) | Failure::Other(msg)) => {
                    return Err(UpstreamError::Failed {
                        msg,
                        connect: false,
                    })
                }
            }
        }
    }

    fn response(
        self: &Arc<Self>,
        mut conn: Conn,
        got: Exchanged,
        ask: Ask,
    ) -> http::Response<ResponseBody> {
        let Exchanged { head, request_done } = got;
        let mut body = ResponseBody {
            conn: None,
            pool: self.clone(),
            framing: head.framing,
            reusable: head.keep_alive && request_done,
        };
        let mut upgraded = None;
        if head.status == StatusCode::SWITCHING_PROTOCOLS && ask.upgrade {
            // The connection leaves the pool's world: the body is empty.
            let leftover = conn.buf.split().freeze();
            upgraded = Some(UpgradeSlot(Arc::new(Mutex::new(Some(Upgraded {
                io: conn.io,
                leftover,
            })))));
            body.framing = Framing::Empty;
        } else {
            body.conn = Some(conn);
            if body.framing == Framing::Empty {
                body.finish();
            }
        }
        let mut resp = http::Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        if let Some(raw) = head.raw {
            resp.extensions_mut().insert(raw);
        }
        if let Some(slot) = upgraded {
            resp.extensions_mut().insert(slot);
        }
        resp
    }
}

/// Is an idle connection still open (no EOF, no unexpected bytes)? Reads at
/// most one byte, only when the socket reports itself readable.
fn still_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
        }
    }
}

/// How the request body is framed upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    /// No body at all.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (length unknown).
    Chunked,
}

impl RequestFraming {
    fn of(method: &Method, body: &ProxyBody) -> RequestFraming {
        if body.is_end_stream() {
            // As hyper does: methods that carry a body say so, even when empty.
            return if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            };
        }
        match body.size_hint().exact() {
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }
    }
}

/// The request line and headers, then the `forwarding` lines. The framing
/// headers are the proxy's own: whatever `Content-Length`/`Transfer-Encoding`
/// the request carried is replaced by what the body actually is.
fn encode_head(
    parts: &http::request::Parts,
    forwarding: &[u8],
    framing: RequestFraming,
    address: &str,
) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(128 + parts.headers.len() * 48 + forwarding.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        let host = parts.uri.authority().map_or(address, |a| a.as_str());
        push_header(&mut out, HOST.as_str().as_bytes(), host.as_bytes());
    }
    for (name, value) in &parts.headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(forwarding);
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            push_header(&mut out, b"content-length", n.to_string().as_bytes());
        }
        RequestFraming::Chunked => push_header(&mut out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One line of an HTTP/1.x head whose name is known in advance: `prefix`
/// is the name and `": "` (copied as one constant-size move, not a call).
#[inline(always)]
pub(crate) fn push_line<const N: usize>(out: &mut Vec<u8>, prefix: &[u8; N], value: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One `name: value` line of an HTTP/1.x head.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[derive(Clone, Copy)]
struct Ask {
    head_request: bool,
    upgrade: bool,
    heads: ResponseHeads,
}

/// Why an exchange failed.
enum Failure {
    /// The connection was closed or reset before any response byte: on a
    /// pooled connection, the target most likely closed it while idle.
    Stale(String),
    /// Anything else.
    Other(String),
}

struct Exchanged {
    head: Head,
    /// The whole request (head and body) was written.
    request_done: bool,
}

/// Write the request, read the response head. A body is streamed while
/// the head is awaited, so a target answering early (a 413, say) is heard.
async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    body: Option<ProxyBody>,
    framing: RequestFraming,
    ask: Ask,
) -> Result<Exchanged, Failure> {
    let Some(body) = body else {
        if let Err(e) = conn.io.write_all(head).await {
            return Err(Failure::Stale(format!("write: {e}")));
        }
        let head = read_head(&mut conn.io, &mut conn.buf, ask).await?;
        return Ok(Exchanged {
            head,
            request_done: true,
        });
    };
    let (mut reader, mut writer) = conn.io.split();
    let write = async {
        writer
            .write_all(head)
            .await
            .map_err(|e| BodyFailure::Io(e.to_string()))?;
        send_body(&mut writer, body, framing).await
    };
    let read = read_head(&mut reader, &mut conn.buf, ask);
    tokio::pin!(write, read);
    let mut written: Option<Result<(), String>> = None;
    loop {
        tokio::select! {
            done = &mut write, if written.is_none() => match done {
                Ok(()) => written = Some(Ok(())),
                // The client's body broke: nothing more can be sent.
                Err(BodyFailure::Client(e)) => return Err(Failure::Other(format!("request body: {e}"))),
                // The target stopped reading; its answer may still come.
                Err(BodyFailure::Io(e)) => written = Some(Err(e)),
            },
            head = &mut read => {
                let request_done = matches!(written, Some(Ok(())));
                return match (head, written) {
                    (Ok(head), _) => Ok(Exchanged { head, request_done }),
                    (Err(_), Some(Err(w))) => Err(Failure::Other(format!("write: {w}"))),
                    (Err(e), _) => Err(e),
                };
            }
        }
    }
}

enum BodyFailure {
    /// The client's body failed (cut short, too long, over a limit).
    Client(String),
    /// Writing to the target failed.
    Io(String),
}

async fn send_body<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    mut body: ProxyBody,
    framing: RequestFraming,
) -> Result<(), BodyFailure> {
    let io = |e: std::io::Error| BodyFailure::Io(e.to_string());
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyFailure::Client(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Length(n) if sent > n => {
                return Err(BodyFailure::Client("body longer than its length".into()))
            }
            RequestFraming::Chunked => {
                let mut chunk = Vec::with_capacity(data.len() + 20);
                chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                w.write_all(&chunk).await.map_err(io)?;
            }
            _ => w.write_all(&data).await.map_err(io)?,
        }
    }
    match framing {
        RequestFraming::Chunked => w.write_all(b"0\r\n\r\n").await.map_err(io),
        RequestFraming::Length(n) if sent != n => {
            Err(BodyFailure::Client("body shorter than its length".into()))
        }
        _ => Ok(()),
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// Empty when the head is `raw`.
    headers: HeaderMap,
    raw: Option<RawHead>,
    framing: Framing,
    keep_alive: bool,
}

/// Read until a final (non-1xx, or 101) response head is in `buf`; consume it.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    ask: Ask,
) -> Result<Head, Failure> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            if let Some(head) = parse_head(buf, ask).map_err(Failure::Other)? {
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(Failure::Other("response head too large".into()));
            }
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8 * 1024);
        }
        let read = io.read_buf(buf).await;
        match read {
            Ok(0) if received => {
                return Err(Failure::Other(
                    "closed in the middle of the response head".into(),
                ))
            }
            Ok(0) => return Err(Failure::Stale("closed before responding".into())),
            Ok(_) => {}
            Err(e) if received => return Err(Failure::Other(format!("read: {e}"))),
            Err(e) => return Err(Failure::Stale(format!("read: {e}"))),
        }
    }
}

/// Parse one response head at the start of `buf`: `Ok(None)` when more
/// bytes are needed. Interim (1xx) responses other than 101 are skipped.
fn parse_head(buf: &mut BytesMut, ask: Ask) -> Result<Option<Head>, String> {
    loop {
        // Uninitialized: httparse writes only the headers it finds.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parse = httparse::ParserConfig::default();
        let len = match parse.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("invalid response head: {e}")),
        };
        // `read_head` only checks the limit while the head is incomplete; a
        // larger head that arrived whole in one read must be refused too.
        if len > MAX_HEAD {
            return Err("response head too large".into());
        }
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
        let version = if parsed.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each name and value sits in the head, to slice it without copying.
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        // Filled in place: collected, the inline array would be built and then copied.
        let mut fields = crate::h1_server::Fields::new();
        fields.extend(
            parsed
                .headers
                .iter()
                .map(|h| (offset(h.name.as_bytes()), offset(h.value))),
        );
        let bytes = buf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS && !ask.upgrade {
            return Err("101 to a request that did not ask to upgrade".into());
        }
        // A head the scan accepts has its framing and `close` from it.
        let scanned = if status == StatusCode::SWITCHING_PROTOCOLS {
            None
        } else {
            RawHead::scan(&bytes, &fields)
        };
        let invalid = || "invalid header name or value".to_string();
        // Room for the policy's and the client side's own headers (`Date`).
        const ROOM: usize = 2;
        let (headers, framing, close, raw) = match scanned {
            Some(raw) => {
                let framing = Framing::sized(status, ask.head_request, raw.content_length());
                let close = raw.close();
                match ask.heads {
                    ResponseHeads::Raw => (HeaderMap::new(), framing, close, Some(raw)),
                    ResponseHeads::Map => {
                        // The scan found no field that `Connection` names:
                        // the map is what `strip_hop_by_hop` would leave,
                        // built without the fields the scan drops (the
                        // hop-by-hop ones).
                        let keep = |i| raw.forwards(i);
                        let headers = crate::h1_server::header_map(&bytes, &fields, ROOM, keep)
                            .ok_or_else(invalid)?;
                        (headers, framing, close, None)
                    }
                }
            }
            None => {
                let headers = crate::h1_server::header_map(&bytes, &fields, ROOM, |_| true)
                    .ok_or_else(invalid)?;
                let framing = Framing::of(status, ask.head_request, &headers)?;
                let close = crate::headers::has_token(&headers, CONNECTION, "close");
                (headers, framing, close, None)
            }
        };
        let keep_alive = version == Version::HTTP_11 && framing != Framing::UntilClose && !close;
        return Ok(Some(Head {
            status,
            version,
            headers,
            raw,
            framing,
            keep_alive,
        }));
    }
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304), or the body has been read.
    Empty,
    /// `Content-Length`: bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the target closes the connection.
    UntilClose,
}

/// Where a chunked body's reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
}

impl Framing {
    fn of(status: StatusCode, head_request: bool, headers: &HeaderMap) -> Result<Framing, String> {
        // Before the framing headers are read: a bodiless answer's are not checked.
        if bodiless(status, head_request) {
            return Ok(Framing::Empty);
        }
        if headers.contains_key(TRANSFER_ENCODING) {
            if headers.contains_key(CONTENT_LENGTH) {
                return Err("response with both Content-Length and Transfer-Encoding".into());
            }
            return Ok(if crate::headers::chunked_is_final(headers) {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            });
        }
        let length = match crate::headers::content_length(headers) {
            Some(Err(why)) => return Err(format!("{why} in the response")),
            Some(Ok(n)) => Some(n),
            None => None,
        };
        Ok(Framing::sized(status, head_request, length))
    }

    /// The framing of a response without `Transfer-Encoding` that states
    /// `length` (or none).
    fn sized(status: StatusCode, head_request: bool, length: Option<u64>) -> Framing {
        match length {
            _ if bodiless(status, head_request) => Framing::Empty,
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    }

    /// The body's length, when the framing tells it.
    fn exact_len(self) -> Option<u64> {
        match self {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// Does a response carry no body whatever its headers say (the answer to a
/// HEAD, 1xx, 204, 304)?
fn bodiless(status: StatusCode, head_request: bool) -> bool {
    let code = status.as_u16();
    head_request || code == 204 || code == 304 || (100..200).contains(&code)
}

/// A response body read from a target connection. When it ends where its
/// framing says, the connection goes back to the pool; dropped early, the
/// connection is closed.
pub struct ResponseBody {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    framing: Framing,
    reusable: bool,
}

impl ResponseBody {
    /// The body is over: hand the connection back if it is clean.
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.pool.put(conn);
            }
        }
    }

    fn fail(&mut self, msg: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(msg.into().into())))
    }
}

/// Read more from the connection into its buffer: `Ok(0)` at EOF.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>, want: u64) -> Poll<std::io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < 4096 {
        let size = want.clamp(16 * 1024, 256 * 1024) as usize;
        conn.buf.reserve(size);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Bytes this state can use from the buffer, or how much to read.
            let (take, want) = match this.framing {
                Framing::Empty => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => (
                    conn.buf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX)),
                    left,
                ),
                Framing::UntilClose => (conn.buf.len(), 64 * 1024),
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    // httparse reads a line without digits ("\r\n", ";ext\r\n")
                    // as size 0, the last chunk; RFC 9112 §7.1 wants 1*HEXDIG.
                    Ok(httparse::Status::Complete((used, size)))
                        if conn.buf[0].is_ascii_hexdigit() =>
                    {
                        conn.buf.advance(used);
                        this.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < MAX_LINE => (0, 0),
                    _ => return this.fail("invalid chunk size in the response"),
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return this.fail("chunk not followed by CRLF in the response");
                        }
                        conn.buf.advance(2);
                        this.framing = Framing::Chunked(Chunk::Size);
                        continue;
                    }
                    (0, 0)
                }
                Framing::Chunked(Chunk::Trailers) => {
                    match conn.buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            conn.buf.advance(2);
                            this.finish();
                            return Poll::Ready(None);
                        }
                        // A trailer field: not forwarded.
                        Some(end) => {
                            conn.buf.advance(end + 2);
                            continue;
                        }
                        None if conn.buf.len() < MAX_LINE => (0, 0),
                        None => return this.fail("trailer line too long in the response"),
                    }
                }
            };
            if take > 0 {
                let data = conn.buf.split_to(take).freeze();
                match &mut this.framing {
                    Framing::Length(left) => {
                        *left -= take as u64;
                        if *left == 0 {
                            this.finish();
                        }
                    }
                    Framing::Chunked(chunk) => {
                        if let Chunk::Data(left) = chunk {
                            *left -= take as u64;
                            if *left == 0 {
                                *chunk = Chunk::DataEnd;
                            }
                        }
                    }
                    _ => {}
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match poll_fill(conn, cx, want) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return this.fail("target closed the connection before the body ended")
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(format!("reading the response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        self.framing
            .exact_len()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A response head as [`parse_head`] takes it, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) struct ParsedHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub raw: Option<RawHead>,
    /// The body's length, when its framing tells it (as `ResponseBody::size_hint`).
    pub exact: Option<u64>,
    pub keep_alive: bool,
}

/// Parse `bytes` as the head of the answer to a GET (or a HEAD).
#[cfg(test)]
pub(crate) fn parse_for_test(
    bytes: &[u8],
    head_request: bool,
    heads: ResponseHeads,
) -> Result<Option<ParsedHead>, String> {
    let ask = Ask {
        head_request,
        upgrade: false,
        heads,
    };
    let head = parse_head(&mut BytesMut::from(bytes), ask)?;
    Ok(head.map(|head| ParsedHead {
        status: head.status,
        headers: head.headers,
        raw: head.raw,
        exact: head.framing.exact_len(),
        keep_alive: head.keep_alive,
    }))
}
