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

/// A name on a log line (listener, zone, client, target, …), shared:
/// filling a line costs a reference count, not a copy. Tenants, routes and
/// groups are [`LogName`]s, which cost neither.
pub type Name = Arc<str>;

/// The config's names as [`Name`]s, indexed like the snapshot's tables.
#[derive(Default)]
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

impl std::fmt::Debug for Names {
    // A config's names run to thousands: a log line's debug form shows
    // their counts, not every one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("zones", &self.zones.len())
            .field("tenants", &self.tenants.len())
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// A tenant, route or group on a log line: its name, or its place in the
/// line's [`Names`]. A request's line takes the place, so filling it reads
/// no name and counts no reference (with 1,000 tenants each would be a
/// cache miss); the writer looks the name up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogName {
    /// A name of its own (lines made outside a generation, tests, replays).
    Text(Name),
    /// Tenant `n` of the snapshot.
    Tenant(u32),
    /// Route `r` of tenant `t`.
    Route(u32, u32),
    /// Group `n` of the snapshot.
    Group(u32),
}

impl From<&str> for LogName {
    fn from(s: &str) -> Self {
        LogName::Text(s.into())
    }
}

/// One access-log line; fields that do not apply are `null`.
#[derive(Clone, Debug, Default)]
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
    pub tenant: Option<LogName>,
    /// Route.
    pub route: Option<LogName>,
    /// `tenant/group`.
    pub group: Option<LogName>,
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
    /// The names `tenant`, `route` and `group` point into (not written).
    pub names: Option<Arc<Names>>,
}

impl LogLine {
    /// The name `n` of this line stands for (`None` for an index without
    /// its table or out of range).
    pub fn name<'a>(&'a self, n: &'a Option<LogName>) -> Option<&'a Name> {
        let names = || self.names.as_deref();
        match *n.as_ref()? {
            LogName::Text(ref name) => Some(name),
            LogName::Tenant(t) => names()?.tenants.get(t as usize),
            LogName::Route(t, r) => names()?.routes.get(t as usize)?.get(r as usize),
            LogName::Group(g) => names()?.groups.get(g as usize),
        }
    }
}

impl Serialize for LogLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("LogLine", 21)?;
        o.serialize_field("ts", &self.ts)?;
        o.serialize_field("listener", &self.listener)?;
        o.serialize_field("zone", &self.zone)?;
        o.serialize_field("client", &self.client)?;
        o.serialize_field("tenant", &self.name(&self.tenant))?;
        o.serialize_field("route", &self.name(&self.route))?;
        o.serialize_field("group", &self.name(&self.group))?;
        o.serialize_field("group_zone", &self.group_zone)?;
        o.serialize_field("target", &self.target)?;
        o.serialize_field("decision", self.decision)?;
        o.serialize_field("status", &self.status)?;
        o.serialize_field("method", &self.method)?;
        o.serialize_field("host", &self.host)?;
        o.serialize_field("path", &self.path)?;
        o.serialize_field("query", &self.query)?;
        o.serialize_field("bytes_in", &self.bytes_in)?;
        o.serialize_field("bytes_out", &self.bytes_out)?;
        o.serialize_field("duration_ms", &self.duration_ms)?;
        o.serialize_field("upstream_ms", &self.upstream_ms)?;
        o.serialize_field("tls", &self.tls)?;
        o.serialize_field("request_id", &self.request_id)?;
        o.end()
    }
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

    fn names() -> Arc<Names> {
        Arc::new(Names {
            zones: vec!["public".into()],
            tenants: vec!["acme".into(), "globex".into()],
            routes: vec![vec!["site".into()], vec!["home".into(), "api".into()]],
            groups: vec!["acme/web".into(), "globex/api".into()],
        })
    }

    #[test]
    fn indexed_names_are_written_as_the_names_they_point_to() {
        let indexed = LogLine {
            tenant: Some(LogName::Tenant(1)),
            route: Some(LogName::Route(1, 1)),
            group: Some(LogName::Group(1)),
            decision: "forward",
            names: Some(names()),
            ..LogLine::default()
        };
        let text = LogLine {
            tenant: Some("globex".into()),
            route: Some("api".into()),
            group: Some("globex/api".into()),
            decision: "forward",
            ..LogLine::default()
        };
        let written = serde_json::to_string(&indexed).expect("serializes");
        assert_eq!(written, serde_json::to_string(&text).expect("serializes"));
        assert!(written.contains(r#""tenant":"globex","route":"api","group":"globex/api""#));
        assert!(!written.contains("names"), "{written}");
    }

    #[test]
    fn an_index_without_its_table_or_out_of_range_is_written_as_null() {
        let without_table = LogLine {
            tenant: Some(LogName::Tenant(0)),
            ..LogLine::default()
        };
        let out_of_range = LogLine {
            route: Some(LogName::Route(0, 7)),
            group: Some(LogName::Group(9)),
            names: Some(names()),
            ..LogLine::default()
        };
        for line in [without_table, out_of_range] {
            let written = serde_json::to_string(&line).expect("serializes");
            assert!(
                written.contains(r#""tenant":null,"route":null,"group":null"#),
                "{written}"
            );
        }
    }

    #[test]
    fn flush_of_a_logger_that_is_off_returns_at_once() {
        assert!(AccessLogger::off().flush(Duration::from_millis(1)));
    }
}
