//! The HTTP/1.x fast path on the client side: the common request — a
//! `GET`, `HEAD`, `DELETE`… with no body — parsed in place, answered and
//! written back without hyper's per-connection machinery, and no buffer held
//! between keep-alive requests.
//!
//! Anything else goes to hyper, unchanged: a request with a body
//! (`Content-Length` other than 0, `Transfer-Encoding`), `Expect`, `Upgrade`,
//! `CONNECT`, HTTP/2's preface, a head httparse or the `http` crate refuses,
//! one with more headers than [`MAX_HEADERS`] or over `max_header_bytes`.
//! [`serve`] then returns the connection with every byte it read
//! ([`Served::Fallback`]), hyper serves the rest of the connection, and its
//! checks and errors (400, 413, 431, the smuggling refusals) stay the ones
//! the rest of the proxy's tests pin down.

use crate::body::RequestBody;
use crate::http::{handle, Conn};
use crate::raw_head::{RawHead, ResponseHeads};
use crate::upstream::ProxyBody;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Headers a fast-path request may carry; more go to hyper (which takes 100).
pub const MAX_HEADERS: usize = 64;
/// The first read's buffer; it grows up to the listener's `max_header_bytes`.
const FIRST_READ: usize = 4096;
/// Spare room below which a read-ahead gets a fresh buffer.
const READ_AHEAD_ROOM: usize = 1024;
/// Header entries reserved beyond a request's own.
const FORWARDING_ROOM: usize = 8;
/// Response bytes gathered from a body that is ready before one write.
const MAX_GATHER: usize = 256 * 1024;

/// An IO whose readability can be awaited without lending it a buffer, so
/// an idle keep-alive connection holds none.
pub trait WaitReadable {
    /// Ready when a read would not block (or the IO cannot tell).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl WaitReadable for tokio::net::TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl<T> WaitReadable for tokio_rustls::server::TlsStream<T> {
    // rustls keeps its own buffers; it is read directly.
    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How a connection left the fast path.
pub enum Served<I> {
    /// It is closed (or done with: the client left, the proxy drains).
    Closed,
    /// A request hyper must serve: the connection, with the bytes read from it.
    Fallback(Rewind<I>),
}

/// Serve HTTP/1.x requests on `io` until the connection ends or a request
/// needs hyper. `max_head`: the listener's `max_header_bytes` (at least 8 KiB,
/// as hyper's buffer).
pub async fn serve<I>(
    mut io: I,
    conn: Arc<Conn>,
    drain: CancellationToken,
    max_head: usize,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send,
{
    let mut buf = BytesMut::new();
    loop {
        if buf.is_empty() {
            // Idle: give the buffer back and wait for the next request's first byte.
            buf = BytesMut::new();
            tokio::select! {
                biased;
                _ = drain.cancelled() => return Served::Closed,
                ready = poll_fn(|cx| io.poll_readable(cx)) => if ready.is_err() { return Served::Closed },
            }
        }
        let (req, keep_alive) = loop {
            let parsed = if buf.is_empty() {
                Parsed::Partial
            } else {
                parse(&mut buf)
            };
            match parsed {
                Parsed::Request(req, keep_alive) => break (*req, keep_alive),
                Parsed::NotOurs => return Served::Fallback(Rewind::new(buf.freeze(), io)),
                Parsed::Partial if buf.len() >= max_head => {
                    return Served::Fallback(Rewind::new(buf.freeze(), io))
                }
                Parsed::Partial => {
                    buf.reserve(FIRST_READ.min(max_head - buf.len()));
                    match io.read_buf(&mut buf).await {
                        Ok(0) if buf.is_empty() => return Served::Closed,
                        // A head cut short: hyper answers it as it always has.
                        Ok(0) => return Served::Fallback(Rewind::new(buf.freeze(), io)),
                        Ok(_) => {}
                        Err(_) => return Served::Closed,
                    }
                }
            }
        };
        let head_only = req.method() == Method::HEAD;
        let version = req.version();
        let Some(resp) = answer(&mut io, &mut buf, req, &conn).await else {
            return Served::Closed;
        };
        let keep_alive = keep_alive && !drain.is_cancelled();
        match write_response(&mut io, resp, version, head_only, keep_alive).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return Served::Closed;
            }
        }
    }
}

/// The proxy's answer to `req`. Bytes the client sends meanwhile (a pipelined
/// request) are read ahead into an empty `buf`; the client closing its side
/// then cancels the request (`None`), as hyper does.
async fn answer<I>(
    io: &mut I,
    buf: &mut BytesMut,
    req: http::Request<RequestBody>,
    conn: &Arc<Conn>,
) -> Option<Response<ProxyBody>>
where
    I: AsyncRead + Unpin,
{
    // Boxed: an idle connection's task keeps room for every state it can be
    // in, and the request's state is large; it lives on the heap only while
    // a request is being answered. Written into the box, not built on the
    // stack and copied (see `http::handle`).
    let mut handling = Box::into_pin(Box::write(
        Box::new_uninit(),
        handle(req, conn.clone(), ResponseHeads::Raw),
    ));
    loop {
        tokio::select! {
            biased;
            resp = &mut handling => return resp.ok(),
            // Only with nothing buffered (as hyper): a client that pipelines
            // requests and then closes its side still gets the ones it sent.
            read = read_ahead(io, buf), if buf.is_empty() => {
                match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Read into `buf`, reusing the room the parsed head left behind when
/// there is enough (no second buffer per request).
async fn read_ahead<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_AHEAD_ROOM {
        buf.reserve(FIRST_READ);
    }
    io.read_buf(buf).await
}

enum Parsed {
    Request(Box<http::Request<RequestBody>>, bool),
    Partial,
    NotOurs,
}

/// Parse one request head from the front of `buf` (removing it) if it is
/// complete and a fast-path request; the bool says whether the client keeps
/// the connection alive after it.
fn parse(buf: &mut BytesMut) -> Parsed {
    // Uninitialized: httparse writes only the headers it finds.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::NotOurs,
    };
    let Some(Ok(method)) = parsed.method.map(|m| Method::from_bytes(m.as_bytes())) else {
        return Parsed::NotOurs;
    };
    if method == Method::CONNECT {
        return Parsed::NotOurs;
    }
    // Offsets into the head, so names and values can share its bytes.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let Some(path) = parsed.path.map(|p| offset(p.as_bytes())) else {
        return Parsed::NotOurs;
    };
    let mut fields = Fields::new();
    let mut empty_length = false;
    // What `Connection` says, read here rather than from the header map;
    // as hyper reads it, a value that is not visible ASCII says nothing.
    let (mut close, mut keep) = (false, false);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            let visible = h
                .value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
            close |= visible && crate::headers::lists_token(h.value, b"close");
            keep |= visible && crate::headers::lists_token(h.value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // `Content-Length: 0` once is a request without a body; anything else is hyper's.
            if empty_length || h.value != b"0" {
                return Parsed::NotOurs;
            }
            empty_length = true;
        } else if NOT_OURS.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return Parsed::NotOurs;
        }
        fields.push((offset(name), offset(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1));
    // Room for the forwarding headers the proxy adds (`headers::set_forwarding`):
    // growing the map later would rehash every entry.
    let map = header_map(&head, &fields, FORWARDING_ROOM, |_| true);
    let (Some(map), Ok(uri)) = (map, uri) else {
        // Give the bytes back, in order, for hyper.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::NotOurs;
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep,
        _ => !close,
    };
    let mut req = http::Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = map;
    Parsed::Request(Box::new(req), keep_alive)
}

/// Where a name or value lies in the head: offset and length.
pub(crate) type Span = (usize, usize);

/// The name and value spans of a head's fields: inline (no allocation, no
/// zeroing) for the usual few dozen.
pub(crate) type Fields = smallvec::SmallVec<[(Span, Span); 32]>;

/// The fast path's verdict on the front of `buf`, for the fuzz target
/// `client_head`: `Some((request, keep_alive))` when it is a complete
/// fast-path head (removed from `buf`); `None` when `buf` is left exactly as
/// it was, for more bytes or for hyper.
#[doc(hidden)]
pub fn parse_head(buf: &mut BytesMut) -> Option<(http::Request<()>, bool)> {
    match parse(buf) {
        Parsed::Request(req, keep_alive) => Some((req.map(|_| ()), keep_alive)),
        Parsed::Partial | Parsed::NotOurs => None,
    }
}

/// Headers that put a request outside the fast path.
const NOT_OURS: [&[u8]; 3] = [b"transfer-encoding", b"expect", b"upgrade"];

/// The header map of a parsed head, its names and values sharing `head`'s
/// bytes, with room for `room` more entries: the fields whose indexes `keep`
/// accepts. `None` if the `http` crate refuses a kept name or value.
pub(crate) fn header_map(
    head: &Bytes,
    fields: &[(Span, Span)],
    room: usize,
    keep: impl Fn(usize) -> bool,
) -> Option<HeaderMap> {
    let slice = |(start, len): Span| head.slice(start..start + len);
    let mut map = HeaderMap::with_capacity(fields.len() + room);
    for (i, &(name, value)) in fields.iter().enumerate() {
        if !keep(i) {
            continue;
        }
        let name = HeaderName::from_bytes(&head[name.0..name.0 + name.1]).ok()?;
        let value = HeaderValue::from_maybe_shared(slice(value)).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// How the response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked (HTTP/1.1, length unknown).
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    Close,
}

/// Write `resp` for a request of `version`; `Ok(true)` when the connection
/// may carry another request.
async fn write_response<I>(
    io: &mut I,
    resp: Response<ProxyBody>,
    version: Version,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, body) = resp.into_parts();
    let raw = parts.extensions.remove::<RawHead>();
    let given = Given {
        version,
        status: parts.status,
        headers: &parts.headers,
        raw: raw.as_ref(),
    };
    let framed = Framed::of(&given, body.size_hint().exact(), head_only, keep_alive);
    let head = encode_head(&given, &framed);
    drop((parts, raw));
    let mut out = Outgoing {
        segments: smallvec::smallvec![Bytes::from(head)],
        gathered: 0,
    };
    if framed.framing == Framing::None {
        drop(body);
        out.write(io).await?;
        return Ok(framed.keep_alive);
    }
    let sent = stream_body(io, body, framed.framing, &mut out).await?;
    match framed.framing {
        Framing::Length(n) if sent != n => Ok(false),
        Framing::Close => Ok(false),
        _ => Ok(framed.keep_alive),
    }
}

/// A response head as the proxy has it: the fields of its header map and,
/// from an HTTP/1.1 target, those it forwards as bytes.
struct Given<'a> {
    version: Version,
    status: StatusCode,
    headers: &'a HeaderMap,
    raw: Option<&'a RawHead>,
}

/// How a response goes on the wire, and what its head gains and loses on
/// the way: the framing is the proxy's to choose (it never passes one on).
#[derive(Debug, PartialEq)]
struct Framed {
    framing: Framing,
    keep_alive: bool,
    /// The header map's `Transfer-Encoding` is left out.
    drop_transfer_encoding: bool,
    /// The header map's `Content-Length` is left out.
    drop_content_length: bool,
    /// `Content-Length` written by the proxy.
    length: Option<u64>,
    /// `Transfer-Encoding: chunked` written by the proxy.
    chunked: bool,
    /// `Date` written by the proxy (the response has none).
    date: Option<HeaderValue>,
    /// `Connection` written by the proxy, in place of the map's.
    connection: Option<&'static [u8]>,
}

impl Framed {
    /// The framing of `given`, whose body is `exact` bytes if known, for a
    /// client that would keep the connection alive or not.
    fn of(given: &Given<'_>, exact: Option<u64>, head_only: bool, keep_alive: bool) -> Framed {
        let headers = given.headers;
        let status = given.status;
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut framed = Framed {
            framing: Framing::None,
            keep_alive: keep_alive && !crate::headers::has_token(headers, CONNECTION, "close"),
            drop_transfer_encoding: !(bodiless || head_only),
            drop_content_length: false,
            length: None,
            chunked: false,
            date: None,
            connection: None,
        };
        // A raw head's length is one plain number (`RawHead::scan`).
        let stated = match given.raw.and_then(RawHead::content_length) {
            Some(n) => Some(Ok(n)),
            None => crate::headers::content_length(headers),
        };
        framed.framing = match (stated, exact) {
            // The headers stay as they are: they describe what a GET would have had.
            _ if bodiless || head_only => Framing::None,
            (Some(Ok(n)), _) => {
                // A list of one length (`12, 12`, or the header repeated)
                // goes on as that one value (RFC 9110 §8.6).
                let mut values = headers.get_all(CONTENT_LENGTH).iter();
                let first_is_list = values.next().is_some_and(|v| v.as_bytes().contains(&b','));
                if first_is_list || values.next().is_some() {
                    framed.drop_content_length = true;
                    framed.length = Some(n);
                }
                Framing::Length(n)
            }
            // A malformed length the response carries is not passed on.
            (Some(Err(_)), _) => {
                framed.drop_content_length = true;
                framed.keep_alive = false;
                Framing::Close
            }
            (None, Some(n)) => {
                framed.length = Some(n);
                Framing::Length(n)
            }
            (None, None) if given.version == Version::HTTP_11 => {
                framed.chunked = true;
                Framing::Chunked
            }
            (None, None) => {
                framed.keep_alive = false;
                Framing::Close
            }
        };
        if !(given.raw.is_some_and(RawHead::has_date) || headers.contains_key(DATE)) {
            framed.date = Some(http_date());
        }
        framed.connection = match (given.version, framed.keep_alive) {
            (Version::HTTP_11, false) => Some(b"close"),
            (Version::HTTP_10, true) => Some(b"keep-alive"),
            _ => None,
        };
        framed
    }

    /// Whether the header map's field `name` is left out of the head.
    fn drops(&self, name: &HeaderName) -> bool {
        (self.drop_transfer_encoding && name == TRANSFER_ENCODING)
            || (self.drop_content_length && name == CONTENT_LENGTH)
            || (self.connection.is_some() && name == CONNECTION)
    }
}

/// Stream `body`, writing whatever is ready in one go; returns the data bytes sent.
async fn stream_body<I>(
    io: &mut I,
    body: ProxyBody,
    framing: Framing,
    out: &mut Outgoing,
) -> io::Result<u64>
where
    I: AsyncWrite + Unpin,
{
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                out.write(io).await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        match frame {
            None => {
                if framing == Framing::Chunked {
                    out.push(Bytes::from_static(b"0\r\n\r\n"));
                }
                out.write(io).await?;
                return Ok(sent);
            }
            Some(Err(e)) => {
                // The body failed (an upstream cut short): what was ready still goes out,
                // then the connection closes, so the client sees the response end early.
                let _ = out.write(io).await;
                return Err(io::Error::other(e));
            }
            Some(Ok(frame)) => {
                // Trailers are dropped: clients rarely ask for them (`TE: trailers`).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let len = data.len() as u64;
                if let Framing::Length(n) = framing {
                    if sent + len > n {
                        let _ = out.write(io).await;
                        return Err(io::Error::other("response body longer than its length"));
                    }
                }
                sent += len;
                if framing == Framing::Chunked {
                    out.push(Bytes::from(format!("{len:x}\r\n")));
                    out.push(data);
                    out.push(Bytes::from_static(b"\r\n"));
                } else {
                    out.push(data);
                }
                if out.gathered >= MAX_GATHER {
                    out.write(io).await?;
                }
            }
        }
    }
}

/// Response bytes waiting for one vectored write.
struct Outgoing {
    /// Usually the head, one body chunk and a terminator: no allocation.
    segments: smallvec::SmallVec<[Bytes; 4]>,
    gathered: usize,
}

impl Outgoing {
    fn push(&mut self, b: Bytes) {
        self.gathered += b.len();
        self.segments.push(b);
    }

    /// Write every segment, then flush (TLS: send the records).
    async fn write<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> io::Result<()> {
        let mut first = 0;
        while first < self.segments.len() {
            let slices: smallvec::SmallVec<[IoSlice<'_>; 8]> = self.segments[first..]
                .iter()
                .map(|s| IoSlice::new(s))
                .collect();
            let written = io.write_vectored(&slices).await;
            drop(slices);
            let mut n = written?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while first < self.segments.len() && n >= self.segments[first].len() {
                n -= self.segments[first].len();
                first += 1;
            }
            if n > 0 {
                let rest = self.segments[first].slice(n..);
                self.segments[first] = rest;
            }
        }
        self.segments.clear();
        self.gathered = 0;
        io.flush().await
    }
}

/// `Date` for now, formatted once a second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(value) = HeaderValue::from_str(&text) {
                *cached = (second, value);
            }
        }
        cached.1.clone()
    })
}

/// The status line and headers.
fn encode_head(given: &Given<'_>, framed: &Framed) -> Vec<u8> {
    use crate::h1_upstream::{push_header, push_line};
    let size = given
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + given.raw.map_or(0, RawHead::encoded_len);
    // The status line and what the proxy adds fit in 160 bytes.
    let mut head = Vec::with_capacity(size + 160);
    head.extend_from_slice(match given.version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    head.extend_from_slice(given.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(given.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in given.headers {
        if !framed.drops(name) {
            push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some(raw) = given.raw {
        raw.write(&mut head);
    }
    if let Some(n) = framed.length {
        push_line(&mut head, b"content-length: ", n.to_string().as_bytes());
    }
    if framed.chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(date) = &framed.date {
        push_line(&mut head, b"date: ", date.as_bytes());
    }
    if let Some(connection) = framed.connection {
        push_line(&mut head, b"connection: ", connection);
    }
    head.extend_from_slice(b"\r\n");
    head
}

pin_project_lite::pin_project! {
    /// An IO that first yields bytes already read from it.
    pub struct Rewind<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> Rewind<I> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        (parse(&mut buf), buf)
    }

    #[test]
    fn a_plain_get_is_ours_and_leaves_the_next_request_in_the_buffer() {
        let (p, rest) =
            parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        let Parsed::Request(req, keep_alive) = p else {
            panic!("not parsed")
        };
        assert!(keep_alive);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn bodies_upgrades_expectations_and_connect_go_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        ] {
            let (p, rest) = parsed(raw);
            assert!(
                matches!(p, Parsed::NotOurs),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&rest[..], raw, "the bytes stay for hyper");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert!(matches!(parsed(raw.as_bytes()).0, Parsed::NotOurs));
    }

    #[test]
    fn an_empty_content_length_and_keep_alive_rules() {
        let (p, _) = parsed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, true)));
        let (p, _) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, Close\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, false)));
        let (p, _) = parsed(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, false)));
        let (p, _) = parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, true)));
        // As hyper: a value with obs-text is not read for tokens (the fuzz
        // target `client_head` holds the fast path to hyper's reading).
        let (p, _) = parsed(b"GET / HTTP/1.1\r\nConnection: x\xff, close\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, true)));
        let (p, _) = parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive, \xff\r\n\r\n");
        assert!(matches!(p, Parsed::Request(_, false)));
    }

    #[test]
    fn a_partial_head_waits() {
        let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(p, Parsed::Partial));
        assert_eq!(rest.len(), 25);
    }

    #[test]
    fn declared_lengths() {
        use crate::headers::content_length;
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.append(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&h), Some(Ok(12)));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&h), Some(Ok(12)));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(matches!(content_length(&h), Some(Err(_))));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert!(matches!(content_length(&h), Some(Err(_))));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("+12"));
        assert!(matches!(content_length(&h), Some(Err(_))));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(content_length(&h), Some(Ok(12)));
    }

    fn given<'a>(headers: &'a HeaderMap, raw: Option<&'a RawHead>) -> Given<'a> {
        Given {
            version: Version::HTTP_11,
            status: StatusCode::OK,
            headers,
            raw,
        }
    }

    #[test]
    fn heads_are_encoded_as_hyper_writes_them() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(DATE, HeaderValue::from_static("today"));
        let mut g = given(&h, None);
        g.status = StatusCode::NOT_FOUND;
        let framed = Framed::of(&g, Some(0), false, true);
        assert_eq!(
            encode_head(&g, &framed),
            b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\ndate: today\r\ncontent-length: 0\r\n\r\n"
        );
        g.version = Version::HTTP_10;
        g.status = StatusCode::from_u16(599).unwrap();
        let framed = Framed::of(&g, None, false, true);
        assert_eq!(framed.framing, Framing::Close);
        assert!(!framed.keep_alive);
        assert_eq!(
            encode_head(&g, &framed),
            b"HTTP/1.0 599 \r\nx-a: 1\r\ndate: today\r\n\r\n"
        );
    }

    #[test]
    fn an_nginx_head_is_forwarded_as_bytes() {
        use crate::h1_upstream::parse_for_test;
        let upstream =
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\
            Content-Type: text/plain\r\nContent-Length: 23\r\nConnection: keep-alive\r\n\r\n";
        let parsed = parse_for_test(upstream, false, ResponseHeads::Raw)
            .unwrap()
            .unwrap();
        assert!(parsed.headers.is_empty());
        let raw = parsed.raw.as_ref().expect("taken as bytes");
        assert!(parsed.keep_alive);
        let g = given(&parsed.headers, Some(raw));
        let framed = Framed::of(&g, parsed.exact, false, true);
        assert_eq!(framed.framing, Framing::Length(23));
        assert_eq!(
            String::from_utf8(encode_head(&g, &framed)).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 23\r\n\r\n"
        );
        // Asked for a header map, the same head gives one, without the
        // hop-by-hop field, as `strip_hop_by_hop` would leave it.
        let parsed = parse_for_test(upstream, false, ResponseHeads::Map)
            .unwrap()
            .unwrap();
        assert!(parsed.raw.is_none());
        assert!(parsed.keep_alive);
        let names: Vec<&str> = parsed.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "date", "content-type", "content-length"]);
        // `Connection: close` is still heard.
        let closing = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let parsed = parse_for_test(closing, false, ResponseHeads::Map)
            .unwrap()
            .unwrap();
        assert!(!parsed.keep_alive);
        assert!(parsed.headers.get("connection").is_none());
    }

    #[test]
    fn a_head_whose_connection_names_fields_keeps_them_in_the_map_for_the_strip() {
        use crate::h1_upstream::parse_for_test;
        let upstream = b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-End: 2\r\n\
            Content-Length: 0\r\n\r\n";
        let mut parsed = parse_for_test(upstream, false, ResponseHeads::Map)
            .unwrap()
            .unwrap();
        // Not scanned: the whole head is in the map, and the strip takes
        // out `Connection` and the field it names.
        assert_eq!(parsed.headers.len(), 4);
        crate::headers::strip_hop_by_hop(&mut parsed.headers, false);
        let names: Vec<&str> = parsed.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-end", "content-length"]);
    }

    /// A client-side head as `(lowercased name, value)` pairs, grouped by
    /// name in a stable order (the values of one name stay in theirs), the
    /// `Date` the proxy adds blanked (it may tick between two heads).
    fn fields_of(head: &[u8]) -> Vec<(String, String)> {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(parsed.parse(head).unwrap().is_complete());
        let mut fields: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                let name = h.name.to_ascii_lowercase();
                let value = String::from_utf8_lossy(h.value).into_owned();
                (name, value)
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields
    }

    /// A target's field: name, value and line ending.
    fn upstream_field() -> impl proptest::strategy::Strategy<Value = (String, String, &'static str)>
    {
        use proptest::prelude::*;
        const NAMES: [&str; 16] = [
            "Server",
            "Content-Length",
            "content-length",
            "Date",
            "Connection",
            "Keep-Alive",
            "Transfer-Encoding",
            "Upgrade",
            "TE",
            "Trailer",
            "Proxy-Connection",
            "X-A",
            "x-a",
            "X-B",
            "Content-Type",
            "Set-Cookie",
        ];
        const VALUES: [&str; 19] = [
            "12",
            "0",
            "3",
            "1, 1",
            "1, 2",
            "+3",
            " 7 ",
            "keep-alive",
            "close",
            "Keep-Alive, CLOSE",
            "x-a",
            "x-b, close",
            "X-Request-Id",
            "chunked",
            "gzip, chunked",
            "nginx",
            "",
            "Mon, 07 Dec 2026 20:00:00 GMT",
            "a=b; Path=/",
        ];
        (
            proptest::sample::select(NAMES.as_slice()),
            proptest::sample::select(VALUES.as_slice()),
            proptest::sample::select(["\r\n", "\r\n", "\n", " \r\n"].as_slice()),
        )
            .prop_map(|(n, v, end)| (n.to_string(), v.to_string(), end))
    }

    proptest::proptest! {
        /// Taken as bytes or as a header map, a target's head reaches the
        /// client the same: the same framing and keep-alive upstream and
        /// downstream, the same fields (names compared case-insensitively).
        #[test]
        fn a_head_forwarded_as_bytes_equals_the_header_maps(
            status in proptest::sample::select(vec![200u16, 201, 204, 206, 304, 404, 503]),
            upstream_11 in proptest::bool::ANY,
            fields in proptest::collection::vec(upstream_field(), 0..8),
            head_request in proptest::bool::ANY,
            client_11 in proptest::bool::ANY,
            client_keep_alive in proptest::bool::ANY,
        ) {
            use crate::h1_upstream::parse_for_test;
            let mut upstream = format!("HTTP/1.{} {status} X\r\n", u8::from(upstream_11));
            for (name, value, end) in &fields {
                upstream.push_str(&format!("{name}: {value}{end}"));
            }
            upstream.push_str("\r\n");
            let map = parse_for_test(upstream.as_bytes(), head_request, ResponseHeads::Map);
            let raw = parse_for_test(upstream.as_bytes(), head_request, ResponseHeads::Raw);
            let (map, raw) = match (map, raw) {
                (Ok(Some(map)), Ok(Some(raw))) => (map, raw),
                (Err(_), Err(_)) => return Ok(()),
                (map, raw) => panic!("differ: {:?} / {:?}", map.map(|m| m.is_some()), raw.map(|r| r.is_some())),
            };
            proptest::prop_assert_eq!(map.status, raw.status);
            proptest::prop_assert_eq!(map.exact, raw.exact);
            proptest::prop_assert_eq!(map.keep_alive, raw.keep_alive);
            // What `http::forward` does to a header map before the client
            // side sees it (the raw form's is one where the head needs it).
            let mut map_headers = map.headers;
            crate::headers::strip_hop_by_hop(&mut map_headers, false);
            let mut raw_headers = raw.headers;
            crate::headers::strip_hop_by_hop(&mut raw_headers, false);
            let version = if client_11 { Version::HTTP_11 } else { Version::HTTP_10 };
            let heads = [(&map_headers, None), (&raw_headers, raw.raw.as_ref())].map(|(headers, raw_head)| {
                let g = Given { version, status: map.status, headers, raw: raw_head };
                let framed = Framed::of(&g, map.exact, head_request, client_keep_alive);
                let head = encode_head(&g, &framed);
                (framed.framing, framed.keep_alive, fields_of(&head))
            });
            proptest::prop_assert_eq!(&heads[0], &heads[1]);
        }
    }

    #[tokio::test]
    async fn rewind_yields_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
