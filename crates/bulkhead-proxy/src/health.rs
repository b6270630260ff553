//! Active health checks: every `interval`, each target of a group with a
//! `health` block is probed (an HTTP GET of `path`, healthy on 2xx/3xx, or a
//! TCP connect when there is no path). `unhealthy` consecutive failures take
//! it out of rotation, `healthy` consecutive successes bring it back.

use crate::raw_head::ResponseHeads;
use crate::upstream::{GroupRuntime, ProxyBody};
use bulkhead_config::HealthCheck;
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Start the checks of `group` (if it has a health block) until `stop`.
pub fn spawn(group: Arc<GroupRuntime>, check: HealthCheck, stop: CancellationToken) {
    for index in 0..group.targets.len() {
        let (group, check, stop) = (group.clone(), check.clone(), stop.clone());
        tokio::spawn(async move {
            let mut successes = 0u32;
            let mut failures = 0u32;
            let mut ticker = tokio::time::interval(check.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let ok = probe(&group, index, &check).await;
                let target = &group.targets[index];
                if ok {
                    successes += 1;
                    failures = 0;
                    if successes >= check.healthy && !target.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(group = %group.full_name, target = %target.address, "target is healthy again");
                    }
                } else {
                    failures += 1;
                    successes = 0;
                    if failures >= check.unhealthy && target.healthy.swap(false, Ordering::Relaxed)
                    {
                        tracing::warn!(group = %group.full_name, target = %target.address, "target failed its health checks; out of rotation");
                    }
                }
            }
        });
    }
}

async fn probe(group: &GroupRuntime, index: usize, check: &HealthCheck) -> bool {
    let address = &group.targets[index].address;
    let attempt = async {
        match &check.path {
            None => tokio::net::TcpStream::connect(&**address).await.is_ok(),
            Some(path) => {
                let Ok(req) = http::Request::get(format!("http://{address}{path}"))
                    .header(http::header::USER_AGENT, "bulkhead-health-check")
                    .body(ProxyBody::default())
                else {
                    return false;
                };
                match group
                    .send(
                        index,
                        req,
                        b"",
                        check.timeout,
                        group.timeouts.connect,
                        ResponseHeads::Map,
                    )
                    .await
                {
                    Ok(resp) => {
                        let ok = resp.status().is_success() || resp.status().is_redirection();
                        // Drain the body so the connection can be reused.
                        let _ = resp.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                }
            }
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false)
}
