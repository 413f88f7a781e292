//! Fleet anomalies: a scan of the strategy aggregates (by the periodic job,
//! or when an operator asks) logged as a command, and the list operators
//! read. The detection itself is [`crate::domain::anomaly`].

use std::sync::Arc;

use super::{Hub, wrong_answer};
use crate::domain::anomaly::{self, Anomaly, AnomalyKind};
use crate::domain::command::{Action, JobStamp};
use crate::domain::fold::Answer;
use crate::error::{Error, Result};

/// What one scan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Anomalies kept after it.
    pub kept: usize,
    /// Of those, found for the first time.
    pub new: usize,
}

impl Hub {
    /// Scans the current state for anomalies and records what it finds
    /// (replacing what the last scan found, keeping first sightings).
    pub async fn scan_anomalies(&self, job: Option<JobStamp>) -> Result<ScanReport> {
        let state = self.state();
        let now = self.now();
        let retention_days = self.shared.settings.tuning.retention_days;
        // A pass over every aggregate: off the runtime's threads.
        let found = tokio::task::spawn_blocking(move || {
            let records: Vec<_> = state.tables.strategies.values().map(|r| &**r).collect();
            anomaly::scan(&records, now, retention_days)
        })
        .await
        .map_err(|e| Error::Internal(format!("anomaly scan: {e}")))?;
        let announce_ids = found
            .iter()
            .filter(|f| f.kind == AnomalyKind::StrategyShift)
            .map(|f| (f.id.clone(), super::insights::new_insight_id()))
            .collect();
        let action = Action::RecordAnomalies {
            found,
            announce_ids,
            announce_ttl_ms: self.shared.settings.insight_ttl_ms,
            job,
        };
        match self.submit(action).await? {
            Answer::AnomaliesRecorded { kept, new } => {
                if new > 0 {
                    tracing::warn!(new, kept, "anomaly scan found new anomalies");
                }
                Ok(ScanReport { kept, new })
            }
            other => Err(wrong_answer("RecordAnomalies", other)),
        }
    }

    /// Anomalies of one kind the last scan found.
    pub fn anomaly_count(&self, kind: AnomalyKind) -> u64 {
        let state = self.state();
        let count = state
            .tables
            .anomalies
            .values()
            .filter(|a| a.finding.kind == kind)
            .count();
        count as u64
    }

    /// The anomalies the last scan found, highest score first.
    pub fn anomalies(&self) -> Vec<Arc<Anomaly>> {
        let mut all: Vec<Arc<Anomaly>> = self.state().tables.anomalies.values().cloned().collect();
        all.sort_by(|a, b| {
            b.finding
                .score
                .total_cmp(&a.finding.score)
                .then(a.finding.id.cmp(&b.finding.id))
        });
        all
    }
}
