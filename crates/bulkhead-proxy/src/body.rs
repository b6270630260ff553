//! Body wrappers: counting request bytes, and writing the access-log line
//! when a response body ends — completed or aborted — so every request gets
//! exactly one line, with the bytes actually sent (DESIGN §5).

use crate::access_log::LogLine;
use crate::policy::BudgetSlots;
use crate::timers::Busy;
use crate::upstream::{elapsed_ms, Lease};
use crate::Shared;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a request body's wrapper ([`Counted`]) learns as the body passes:
/// its data bytes, and whether it failed. One allocation per request, shared
/// by the body, the forwarding code and the log line's guard.
#[derive(Debug, Default)]
pub struct Tally {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl Tally {
    /// Data bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Has the body gone past `limit` (`max_body_bytes`, if any)?
    pub fn over(&self, limit: Option<u64>) -> bool {
        limit.is_some_and(|max| self.bytes() > max)
    }

    /// Did the body yield an error (a client's bad chunking, say)?
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// Counts the data bytes that pass through, and notes whether the
    /// inner body failed, into a [`Tally`].
    pub struct Counted<B> {
        #[pin]
        inner: B,
        tally: Arc<Tally>,
    }
}

impl<B> Counted<B> {
    /// Count `inner`'s bytes and failure into `tally`.
    pub fn new(inner: B, tally: Arc<Tally>) -> Self {
        Counted { inner, tally }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.tally
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => this.tally.failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Writes one access-log line when dropped (the request is over, one way or
/// another), and releases the upstream lease at the same moment.
pub struct LogGuard {
    line: Option<LogLine>,
    shared: Arc<Shared>,
    started: Instant,
    request_body: Arc<Tally>,
    /// Response body bytes sent so far.
    pub bytes_out: u64,
    _lease: Option<Lease>,
    _busy: Option<(Busy, BudgetSlots)>,
}

impl LogGuard {
    /// A guard that will log `line`.
    pub fn new(
        line: LogLine,
        shared: Arc<Shared>,
        started: Instant,
        request_body: Arc<Tally>,
        lease: Option<Lease>,
        busy: Option<(Busy, BudgetSlots)>,
    ) -> Self {
        LogGuard {
            line: Some(line),
            shared,
            started,
            request_body,
            bytes_out: 0,
            _lease: lease,
            _busy: busy,
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            line.bytes_in = self.request_body.bytes();
            line.bytes_out = self.bytes_out;
            line.duration_ms = elapsed_ms(self.started);
            self.shared.record(line);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that logs its request when it ends.
    pub struct Logged<B> {
        #[pin]
        inner: B,
        guard: Option<LogGuard>,
    }
}

impl<B> Logged<B> {
    /// Wrap `inner`; `guard` logs when the body ends or is dropped.
    pub fn new(inner: B, guard: LogGuard) -> Self {
        Logged {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(g)) = (frame.data_ref(), this.guard.as_mut()) {
                    g.bytes_out += data.len() as u64;
                }
            }
            // The end (or a failure): log now rather than when hyper drops the body.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.guard.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client request's body: hyper's, or none at all (a request the
/// HTTP/1.x fast path in `h1_server` parsed: it takes only requests without
/// a body).
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// A body hyper is reading.
    Hyper(hyper::body::Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(body) => body.size_hint(),
        }
    }
}
