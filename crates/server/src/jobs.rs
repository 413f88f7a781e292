//! Background jobs: insight generation (every 4 hours), the retention
//! sweep (hourly) and the anomaly scan (every 10 minutes). Each holds an `Arc` of the hub, waits for its next tick
//! or the hub's shutdown (whichever comes first), and uses the hub's clock
//! for anything time-stamped — so tests drive it with a short interval and
//! a manual clock instead of waiting days. Among replicas only the holder
//! of the jobs lease runs insight generation and retention, and their
//! output carries the lease epoch and period (`Hub::job_turn`).

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::domain::insight_gen::GenerationSettings;
use crate::hub::Hub;

/// Runs insight generation every `every` (first run one interval after
/// start) until the hub shuts down.
pub fn spawn_insight_generation(hub: Arc<Hub>, every: Duration) -> JoinHandle<()> {
    spawn_periodic(hub, every, "insight generation", move |hub| async move {
        // Replicas: only the holder of the jobs lease runs it.
        let Some(job) = hub.job_turn("insights", every) else {
            return Ok(());
        };
        hub.generate_insights_for(GenerationSettings::default(), job)
            .await
            .map(drop)
    })
}

/// Runs the retention sweep every `every` until the hub shuts down.
pub fn spawn_retention(hub: Arc<Hub>, every: Duration) -> JoinHandle<()> {
    spawn_periodic(hub, every, "retention", move |hub| async move {
        let Some(job) = hub.job_turn("retention", every) else {
            return Ok(());
        };
        hub.run_retention_for(job).await.map(drop)
    })
}

/// Scans the fleet for anomalies every `every` until the hub shuts down.
pub fn spawn_anomaly_scan(hub: Arc<Hub>, every: Duration) -> JoinHandle<()> {
    spawn_periodic(hub, every, "anomaly scan", move |hub| async move {
        let Some(job) = hub.job_turn("anomalies", every) else {
            return Ok(());
        };
        hub.scan_anomalies(job).await.map(drop)
    })
}

/// Writes the audit sampler's ended windows every `every` until the hub
/// shuts down (the rest are written by `Hub::close`).
pub fn spawn_audit_sampling(hub: Arc<Hub>, every: Duration) -> JoinHandle<()> {
    spawn_periodic(hub, every, "audit sampling", |hub| async move {
        hub.flush_audit_samples();
        Ok(())
    })
}

fn spawn_periodic<F, Fut>(
    hub: Arc<Hub>,
    every: Duration,
    name: &'static str,
    run: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<Hub>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::error::Result<()>> + Send,
{
    let mut shutdown = hub.shutdown_signal();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(e) = run(hub.clone()).await {
                        tracing::warn!(job = name, error = %e, "background job failed; will retry at the next tick");
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(job = name, "background job stopped");
    })
}
