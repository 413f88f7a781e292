//! Background jobs. Each holds an `Arc` of the hub, waits for its next tick
//! or the hub's shutdown (whichever comes first), and uses the hub's clock
//! for anything time-stamped — so tests drive it with a short interval and
//! a manual clock instead of waiting hours.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::domain::insight_gen::GenerationSettings;
use crate::hub::Hub;

/// Runs insight generation every `every` (first run one interval after
/// start) until the hub shuts down.
pub fn spawn_insight_generation(hub: Arc<Hub>, every: Duration) -> JoinHandle<()> {
    let mut shutdown = hub.shutdown_signal();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(e) = hub.generate_insights(GenerationSettings::default()).await {
                        tracing::warn!(error = %e, "insight generation failed; will retry at the next tick");
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("insight generation job stopped");
    })
}
