//! `bulkhead run -c FILE`: load, compile, serve; SIGTERM/SIGINT stop
//! accepting at once and let in-flight requests finish within
//! `drain_timeout`, then exit 0.

use crate::output;
use anyhow::{Context, Result};
use bulkhead_core::Snapshot;
use bulkhead_proxy::Proxy;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

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
pub fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .thread_name("bulkhead-worker")
        .build()
        .context("cannot start the runtime")
}

/// Run `bulkhead run`.
pub fn run(config: &Path) -> Result<ExitCode> {
    let Some(snapshot) = output::load_or_report(config) else {
        return Ok(ExitCode::from(1));
    };
    if let Some(admin) = &snapshot.config.admin {
        if let Some(var) = &admin.token_env {
            if std::env::var_os(var).is_none() {
                eprintln!("{}: admin.token_env names `{var}`, which is not set — export it before `bulkhead run`", config.display());
                return Ok(ExitCode::from(1));
            }
        }
    }
    init_tracing();
    let rt = runtime(snapshot.config.workers)?;
    rt.block_on(serve(Arc::new(snapshot)))
}

async fn serve(snapshot: Arc<Snapshot>) -> Result<ExitCode> {
    let drain = snapshot.config.drain_timeout;
    if snapshot.config.admin.is_some() {
        tracing::warn!(
            "the admin API is not part of this version yet; `admin` is validated but not served"
        );
    }
    let proxy = match Proxy::start(snapshot).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    for (name, addr) in proxy.bound() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
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
    }
    wait_for_stop().await?;
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "stopping: no new connections; draining in-flight requests"
    );
    let drained = proxy.shutdown(drain).await;
    if !drained {
        tracing::warn!("drain timeout reached; closing the connections left");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Wait for SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_stop() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}
