//! Per-connection clocks for the two client timeouts of DESIGN §2 step 2:
//!
//! - `header_timeout`: a request's headers must be complete within this time
//!   of its first byte (of accept, for the first request) — slowloris
//!   protection;
//! - `idle_timeout`: a kept-alive connection with no new request for this
//!   long is closed quietly.
//!
//! hyper's own `header_read_timeout` starts while a connection is merely
//! idle, which would cut idle keep-alive connections at `header_timeout`; so
//! the IO wrapper here notes when a request's first byte arrives, the
//! service notes when requests start and end, and a watchdog decides.

use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No request head is being read.
const NONE: u64 = u64::MAX;

/// The clocks of one connection.
#[derive(Debug)]
pub struct ConnTimers {
    base: Instant,
    /// Milliseconds (since `base`) when the pending request's first byte came, or `NONE`.
    head_started: AtomicU64,
    /// Milliseconds when the connection last became idle.
    idle_since: AtomicU64,
    in_flight: AtomicUsize,
}

/// What the watchdog should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this instant.
    Wait(Instant),
    /// The request's headers took too long.
    HeaderTimeout,
    /// Idle for too long.
    IdleTimeout,
}

impl ConnTimers {
    /// Clocks for a connection accepted now: the first request's header time starts at accept.
    pub fn new() -> Arc<Self> {
        Arc::new(ConnTimers {
            base: Instant::now(),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            self.head_started.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request's headers are complete: it is being served.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Decide at `now` given the limits.
    pub fn verdict(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        // While a request is in flight, look again as soon as either clock
        // could run out once it ends.
        let far = Instant::now() + idle_timeout.min(header_timeout);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Wait(far);
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != NONE {
            let deadline = head + header_timeout.as_millis() as u64;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::Wait(self.at(deadline))
            };
        }
        let deadline = self.idle_since.load(Ordering::Relaxed) + idle_timeout.as_millis() as u64;
        if now >= deadline {
            Verdict::IdleTimeout
        } else {
            Verdict::Wait(self.at(deadline))
        }
    }
}

/// Marks a request in flight; dropping it (when the response is done) makes
/// the connection idle again if it was the last one.
pub struct Busy(Arc<ConnTimers>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

pin_project! {
    /// An IO that tells its [`ConnTimers`] when client bytes arrive.
    pub struct TimedIo<T> {
        #[pin]
        inner: T,
        timers: Arc<ConnTimers>,
    }
}

impl<T> TimedIo<T> {
    /// Wrap `inner`.
    pub fn new(inner: T, timers: Arc<ConnTimers>) -> Self {
        TimedIo { inner, timers }
    }
}

impl<T: crate::h1_server::WaitReadable> crate::h1_server::WaitReadable for TimedIo<T> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_readable(cx)
    }
}

impl<T: AsyncRead> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.timers.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_counts_from_accept() {
        let t = ConnTimers::new();
        assert!(matches!(
            t.verdict(Duration::from_secs(10), Duration::from_secs(60)),
            Verdict::Wait(_)
        ));
        assert_eq!(
            t.verdict(Duration::ZERO, Duration::from_secs(60)),
            Verdict::HeaderTimeout
        );
    }

    #[test]
    fn idle_after_a_request() {
        let t = ConnTimers::new();
        let busy = t.request_started();
        assert!(
            matches!(t.verdict(Duration::ZERO, Duration::ZERO), Verdict::Wait(_)),
            "busy connections are never cut"
        );
        drop(busy);
        assert_eq!(
            t.verdict(Duration::ZERO, Duration::ZERO),
            Verdict::IdleTimeout
        );
        assert!(matches!(
            t.verdict(Duration::ZERO, Duration::from_secs(60)),
            Verdict::Wait(_)
        ));
        t.on_read();
        assert_eq!(
            t.verdict(Duration::ZERO, Duration::from_secs(60)),
            Verdict::HeaderTimeout
        );
    }
}
