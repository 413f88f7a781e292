//! The failure knowledge base: report, list, and check proposed actions.

use std::sync::Arc;

use super::{Hub, touch_instance};
use crate::domain::model::{FailurePattern, FailureReport, FailureType, Metrics};
use crate::domain::prevention::{self, Warning};
use crate::error::Result;

impl Hub {
    /// Folds a failure report into its (type, metric, strategy) pattern.
    pub async fn share_failure(
        &self,
        caller: &str,
        report: FailureReport,
    ) -> Result<Arc<FailurePattern>> {
        let caller = caller.to_string();
        self.write(move |txn| {
            touch_instance(txn, &caller)?;
            let id = FailurePattern::id_for(report.failure_type, &report.metric, &report.strategy);
            let failure = match txn.failure(&id) {
                Some(existing) => {
                    let mut failure = (*existing).clone();
                    failure.record(&report, &caller, txn.now);
                    failure
                }
                None => FailurePattern::new(&report, &caller, txn.now),
            };
            Ok(txn.put_failure(failure))
        })
        .await
    }

    /// Failures matching the filters, most frequent first.
    pub fn get_failures(
        &self,
        failure_type: Option<FailureType>,
        metric: Option<&str>,
        strategy: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<FailurePattern>> {
        let state = self.state();
        let mut failures: Vec<_> = state
            .failures
            .values()
            .filter(|f| failure_type.is_none_or(|t| f.failure_type == t))
            .filter(|f| metric.is_none_or(|m| f.metric == m))
            .filter(|f| strategy.is_none_or(|s| f.strategy == s))
            .cloned()
            .collect();
        failures.sort_by(|a, b| {
            b.occurrences
                .cmp(&a.occurrences)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.id.cmp(&b.id))
        });
        failures.truncate(limit);
        failures
    }

    /// Known failures that applying `strategy` to `metric` may trigger.
    pub fn check_action(
        &self,
        strategy: &str,
        metric: &str,
        metrics: &Metrics,
    ) -> Vec<Warning<Arc<FailurePattern>>> {
        let applications = self.applications_of_strategy(strategy);
        let state = self.state();
        prevention::check_action(
            strategy,
            metric,
            metrics,
            state.failures.values().cloned(),
            applications,
        )
    }
}
