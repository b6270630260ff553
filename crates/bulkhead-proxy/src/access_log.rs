//! The access log (DESIGN §5): exactly one JSON object per request (and per
//! TCP connection), written off the hot path. Request tasks hand a finished
//! [`LogLine`] to a bounded channel; one writer task serializes and writes
//! them through a buffer, flushing whenever the channel runs dry.

use bulkhead_config::AccessLog;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// `tls` field of a log line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TlsInfo {
    /// SNI sent by the client.
    pub sni: Option<String>,
    /// `TLSv1_3` / `TLSv1_2`.
    pub version: Option<String>,
    /// Verified client identity (SPIFFE id or SAN), if any.
    pub identity: Option<String>,
}

/// A name from the config (listener, zone, tenant, route, group, target),
/// shared: filling a log line costs a reference count, not a copy.
pub type Name = Arc<str>;

/// The config's names as [`Name`]s, indexed like the snapshot's tables.
#[derive(Debug, Default)]
pub struct Names {
    /// Zone names.
    pub zones: Vec<Name>,
    /// Tenant names.
    pub tenants: Vec<Name>,
    /// Route names, per tenant.
    pub routes: Vec<Vec<Name>>,
    /// `tenant/group` names.
    pub groups: Vec<Name>,
}

impl Names {
    /// The names of `snap`.
    pub fn of(snap: &bulkhead_core::Snapshot) -> Names {
        Names {
            zones: snap
                .zones
                .iter()
                .map(|z| Name::from(z.name.as_str()))
                .collect(),
            tenants: snap
                .tenants
                .iter()
                .map(|t| Name::from(t.name.as_str()))
                .collect(),
            routes: snap
                .tenants
                .iter()
                .map(|t| {
                    t.routes
                        .iter()
                        .map(|r| Name::from(r.name.as_str()))
                        .collect()
                })
                .collect(),
            groups: snap
                .groups
                .iter()
                .map(|g| Name::from(g.full_name.as_str()))
                .collect(),
        }
    }
}

/// One access-log line; fields that do not apply are `null`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogLine {
    /// RFC 3339 time the request started (formatted by the writer thread).
    pub ts: Timestamp,
    /// Listener name.
    pub listener: Option<Name>,
    /// Listener zone.
    pub zone: Option<Name>,
    /// `ip:port` of the client.
    pub client: Option<Name>,
    /// Tenant.
    pub tenant: Option<Name>,
    /// Route.
    pub route: Option<Name>,
    /// `tenant/group`.
    pub group: Option<Name>,
    /// Group zone.
    pub group_zone: Option<Name>,
    /// Target `host:port`.
    pub target: Option<Name>,
    /// Decision (DESIGN §4).
    pub decision: &'static str,
    /// Status sent, or null.
    pub status: Option<u16>,
    /// Method (the standard ones are static, not allocated per request).
    pub method: Option<std::borrow::Cow<'static, str>>,
    /// Normalized host.
    pub host: Option<Name>,
    /// Normalized path, without query.
    pub path: Option<Name>,
    /// Raw query.
    pub query: Option<Name>,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Total time.
    pub duration_ms: f64,
    /// Time to the upstream's response headers.
    pub upstream_ms: Option<f64>,
    /// TLS facts, or null.
    pub tls: Option<TlsInfo>,
    /// Request id.
    pub request_id: Option<Name>,
}

/// When a request started. Kept as a `SystemTime` on the hot path and
/// formatted (RFC 3339, milliseconds) only when the line is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// A time.
    At(SystemTime),
    /// An already formatted time (tests, replays).
    Text(String),
}

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Timestamp::At(SystemTime::now())
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp::At(SystemTime::UNIX_EPOCH)
    }
}

impl From<&str> for Timestamp {
    fn from(s: &str) -> Self {
        Timestamp::Text(s.to_string())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Timestamp::At(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            Timestamp::Text(t) => s.serialize_str(t),
        }
    }
}

/// RFC 3339 timestamp with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where log lines go. Cheap to clone.
#[derive(Clone)]
pub struct AccessLogger {
    tx: Option<mpsc::Sender<LogLine>>,
    dropped: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
    /// Lines queued so far, and lines the writer has written and flushed:
    /// [`AccessLogger::flush`] waits for the second to catch up.
    queued: Arc<AtomicU64>,
    written: Arc<(Mutex<u64>, Condvar)>,
}

/// Lines that may wait for the writer; past this, lines are counted as dropped
/// rather than slowing requests down.
const QUEUE: usize = 65_536;

impl AccessLogger {
    /// A logger that writes nothing (`log.access: off`).
    pub fn off() -> Self {
        AccessLogger {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen: Arc::new(AtomicBool::new(false)),
            queued: Arc::default(),
            written: Arc::default(),
        }
    }

    /// Start the writer task for `dest`. Must run inside a tokio runtime.
    pub fn start(dest: &AccessLog) -> std::io::Result<Self> {
        let sink = match dest {
            AccessLog::Off => return Ok(Self::off()),
            AccessLog::Stdout => Sink::Stdout,
            AccessLog::Stderr => Sink::Stderr,
            AccessLog::File(path) => Sink::File(path.clone(), open(path)?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let written: Arc<(Mutex<u64>, Condvar)> = Arc::default();
        let progress = written.clone();
        // Writing is blocking I/O: give it its own thread so request workers never wait on it.
        std::thread::Builder::new()
            .name("bulkhead-access-log".into())
            .spawn(move || write_loop(rx, sink, &flag, &progress))?;
        Ok(AccessLogger {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            reopen,
            queued: Arc::default(),
            written,
        })
    }

    /// Reopen the log file (after rotation; `SIGUSR1`). No-op for stdout/stderr.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Queue a line (never blocks).
    pub fn log(&self, line: LogLine) {
        if let Some(tx) = &self.tx {
            if tx.try_send(line).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.queued.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Wait (blocking, at most `timeout`) until every line queued so far is
    /// written and flushed: a stopping process loses no line. False on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.queued.load(Ordering::Acquire);
        let (count, changed) = &*self.written;
        let written = count.lock().unwrap_or_else(PoisonError::into_inner);
        let (written, _) = changed
            .wait_timeout_while(written, timeout, |w| *w < target)
            .unwrap_or_else(PoisonError::into_inner);
        *written >= target
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Sink {
    Stdout,
    Stderr,
    File(PathBuf, std::fs::File),
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn writer(sink: &Sink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::Stderr => Box::new(std::io::stderr()),
        Sink::File(_, f) => Box::new(f.try_clone()?),
    })
}

fn write_loop(
    mut rx: mpsc::Receiver<LogLine>,
    mut sink: Sink,
    reopen: &AtomicBool,
    progress: &(Mutex<u64>, Condvar),
) {
    let Ok(w) = writer(&sink) else { return };
    let mut out = std::io::BufWriter::with_capacity(64 << 10, w);
    while let Some(line) = rx.blocking_recv() {
        // Rotated? Lines from now on go to the new file.
        if reopen.swap(false, Ordering::Relaxed) {
            if let Sink::File(path, _) = &sink {
                match open(path) {
                    Ok(f) => {
                        sink = Sink::File(path.clone(), f);
                        if let Ok(w) = writer(&sink) {
                            out = std::io::BufWriter::with_capacity(64 << 10, w);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log")
                    }
                }
            }
        }
        let mut next = Some(line);
        let mut batch = 0u64;
        while let Some(line) = next {
            if serde_json::to_writer(&mut out, &line).is_ok() {
                let _ = out.write_all(b"\n");
            }
            batch += 1;
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        let (count, changed) = progress;
        *count.lock().unwrap_or_else(PoisonError::into_inner) += batch;
        changed.notify_all();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_waits_until_every_queued_line_is_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let logger = AccessLogger::start(&AccessLog::File(path.clone())).expect("start");
        for i in 0..500u16 {
            logger.log(LogLine {
                status: Some(i),
                decision: "forward",
                ..LogLine::default()
            });
        }
        assert!(logger.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 500);
        assert!(text
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"status\":499")));
    }

    #[test]
    fn flush_of_a_logger_that_is_off_returns_at_once() {
        assert!(AccessLogger::off().flush(Duration::from_millis(1)));
    }
}
