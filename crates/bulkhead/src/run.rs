//! `bulkhead run -c FILE`: load, compile, serve; SIGTERM/SIGINT stop
//! accepting at once and let in-flight requests finish within
//! `drain_timeout`, then exit 0.

use crate::output;
use anyhow::{Context, Result};
use bulkhead_core::Snapshot;
use bulkhead_proxy::access_log::AccessLogger;
use bulkhead_proxy::Proxy;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Set up diagnostics on stderr (`RUST_LOG` filters, default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Build the runtime with the config's `workers` (default: one per core).
/// One worker gets tokio's current-thread scheduler: everything runs on the
/// one thread with no work-stealing bookkeeping (measured faster, see
/// docs/benchmarks.md); more workers get the multi-thread scheduler.
pub fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .thread_name("bulkhead-worker")
        .build()
        .context("cannot start the runtime")
}

/// Run `bulkhead run`.
pub fn run(config: &Path, watch: bool) -> Result<ExitCode> {
    let Some(snapshot) = output::load_or_report(config) else {
        return Ok(ExitCode::from(1));
    };
    let mut token = None;
    if let Some(admin) = &snapshot.config.admin {
        if let Some(var) = &admin.token_env {
            match std::env::var(var) {
                Ok(t) if !t.is_empty() => token = Some(t),
                _ => {
                    eprintln!("{}: admin.token_env names `{var}`, which is not set — export it before `bulkhead run`", config.display());
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    init_tracing();
    let rt = runtime(snapshot.config.workers)?;
    rt.block_on(serve(
        Arc::new(snapshot),
        config.to_path_buf(),
        token,
        watch,
    ))
}

async fn serve(
    snapshot: Arc<Snapshot>,
    path: PathBuf,
    token: Option<String>,
    watch: bool,
) -> Result<ExitCode> {
    let drain = snapshot.config.drain_timeout;
    let admin = snapshot.config.admin.clone();
    let logger = match AccessLogger::start(&snapshot.config.log.access) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: access log: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let proxy = match Proxy::start_full(snapshot, logger, Some(path.clone())).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    for (name, addr) in proxy.bound() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    // Every signal handler is in place before the admin API answers.
    let stopping = stop_signals()?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
        let logger = proxy.logger().clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the access log");
                logger.reopen();
            }
        });
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let p = proxy.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let _ = p.reload_from_file().await;
            }
        });
    }
    let _watcher = if watch {
        Some(watch_files(proxy.clone(), &path)?)
    } else {
        None
    };
    // The admin API comes last: once it answers, the signal handlers and
    // `--watch` are in place (a SIGHUP or SIGTERM before its handler would
    // kill the process).
    let stop = CancellationToken::new();
    if let Some(admin) = admin {
        match bulkhead_proxy::admin::serve(proxy.clone(), admin.bind.value, token, stop.clone())
            .await
        {
            Ok(addr) => tracing::info!(address = %addr, "admin API listening"),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    stopping.await;
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "stopping: no new connections; draining in-flight requests"
    );
    stop.cancel();
    if !proxy.shutdown(drain).await {
        tracing::warn!("drain timeout reached; closing the connections left");
    }
    // Every request served has its line: wait for the writer to catch up.
    let logger = proxy.logger().clone();
    let flushed = tokio::task::spawn_blocking(move || logger.flush(Duration::from_secs(5))).await;
    if !matches!(flushed, Ok(true)) {
        tracing::warn!("the access log could not be flushed before exit");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The files whose change triggers a reload: the config and every
/// certificate, key, CA, JWKS and users file it names.
fn watched_files(proxy: &Proxy, config: &Path) -> Vec<PathBuf> {
    let g = proxy.shared().generation.load();
    let mut files = vec![config.to_path_buf()];
    for l in &g.snapshot.config.listeners {
        let pairs = l
            .tls
            .iter()
            .flat_map(|t| t.certificates.iter())
            .chain(l.default_certificate.iter());
        for pair in pairs {
            files.push(pair.cert.value.clone());
            files.push(pair.key.value.clone());
        }
        if let Some(ca) = l.tls.as_ref().and_then(|t| t.client_auth.as_ref()) {
            files.push(ca.ca.value.clone());
        }
    }
    // The JWKS and users files of every auth policy (profiles and inline on routes).
    let cfg = &g.snapshot.config;
    let policies = cfg.profiles.iter().map(|p| &p.policy).chain(
        cfg.tenants
            .iter()
            .flat_map(|t| t.routes.iter().map(|r| &r.policy)),
    );
    for policy in policies {
        match &policy.auth {
            Some(bulkhead_config::Auth::Jwt(jwt)) => files.push(jwt.jwks.clone()),
            Some(bulkhead_config::Auth::Basic { users_file }) => files.push(users_file.clone()),
            _ => {}
        }
    }
    files.sort();
    files.dedup();
    files
        .iter()
        .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
        .collect()
}

/// `--watch`: reload when the config or a certificate changes (events are
/// debounced: editors write files in several steps).
fn watch_files(proxy: Arc<Proxy>, config: &Path) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let files = watched_files(&proxy, config);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let interesting = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let hit = event.paths.iter().any(|p| {
                interesting
                    .iter()
                    .any(|f| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()) == *f || p == f)
            });
            if hit && !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })
    .context("cannot watch the config file")?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            tracing::info!("a watched file changed: reloading");
            let _ = proxy.reload_from_file().await;
        }
    });
    tracing::info!(
        files = files.len(),
        "watching the config and its certificates for changes"
    );
    Ok(watcher)
}

/// Wait for SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_stop() -> Result<()> {
    stop_signals()?.await;
    Ok(())
}

/// Listen for SIGTERM and SIGINT (Ctrl-C) from now on — they no longer
/// kill the process — and return a future that ends at the first of them.
pub fn stop_signals() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
