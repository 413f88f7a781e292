//! The retention sweep: a `Retention` command, folded like any write, that
//! forgets expired patterns, insights and request ids and rolls up stale
//! strategy evidence; then the writer trims the raw outcome and audit logs
//! past their retention. Both go through the writer: nothing bypasses it.

use super::writer::TrimRows;
use super::{DAY_MS, Hub, wrong_answer};
use crate::domain::command::{Action, JobStamp, RetentionRules};
use crate::domain::fold::{Answer, RetentionReport};
use crate::error::Result;

impl Hub {
    /// Runs one sweep at the hub's clock.
    pub async fn run_retention(&self) -> Result<RetentionReport> {
        self.run_retention_for(None).await
    }

    /// [`Hub::run_retention`] as a run of the periodic job (see
    /// [`Hub::job_turn`]): the fold refuses it if that run is stale.
    pub async fn run_retention_for(&self, job: Option<JobStamp>) -> Result<RetentionReport> {
        let now = self.now();
        let settings = self.shared.settings.retention;
        let rules = RetentionRules {
            pattern_days: settings.pattern_days,
            unconfirmed_pattern_days: settings.unconfirmed_pattern_days,
            low_frequency: settings.low_frequency,
            evidence_days: self.shared.settings.tuning.retention_days,
            request_window_ms: self.shared.settings.request_id_window_ms,
            // Context models follow the rule idle patterns do.
            context_model_days: settings.pattern_days,
        };
        let mut report = match self.submit(Action::Retention { rules, job }).await? {
            Answer::Retained(report) => report,
            other => return Err(wrong_answer("Retention", other)),
        };
        let (outcomes, audit) = self
            .writer
            .trim_rows(TrimRows {
                outcomes_before: now - settings.outcome_days * DAY_MS,
                audit_before: now - settings.audit_days * DAY_MS,
                now,
            })
            .await?;
        report.outcomes = outcomes;
        report.audit_entries = audit;
        if report != RetentionReport::default() {
            tracing::info!(?report, "retention sweep");
        }
        Ok(report)
    }
}
