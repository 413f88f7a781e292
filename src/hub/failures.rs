//! The failure knowledge base: report, list, and check proposed actions.

use std::sync::Arc;

use super::idempotency::unexpected;
use super::{Hub, StrategyAsk, touch_instance};
use crate::domain::idempotency::{Applied, RequestTag, WriteRpc};
use crate::domain::model::{
    Attributes, FailurePattern, FailureReport, FailureType, Metrics, RecentApplication,
};
use crate::domain::prevention::{self, Warning};
use crate::error::{Error, Result};

/// Warnings at or above this failure rate make an action unsafe.
pub const UNSAFE_FAILURE_RATE: f64 = 0.1;

/// CheckAction's answer.
#[derive(Debug, Clone)]
pub struct ActionCheck {
    pub warnings: Vec<Warning<Arc<FailurePattern>>>,
    pub safe: bool,
    /// The best-ranked strategy for the metric with no unsafe warning.
    pub safer_alternative: Option<String>,
}

impl Hub {
    /// Folds a failure report into its (type, metric, strategy) pattern.
    /// With a request id, a retry changes nothing and returns the failure
    /// pattern as it is now.
    pub async fn share_failure(
        &self,
        caller: &str,
        report: FailureReport,
        request: Option<RequestTag>,
    ) -> Result<Arc<FailurePattern>> {
        let instance = caller.to_string();
        self.write_once(
            caller,
            WriteRpc::ShareFailure,
            request,
            move |txn, first| {
                let id =
                    FailurePattern::id_for(report.failure_type, &report.metric, &report.strategy);
                if let Some(first) = first {
                    if first != Applied::ShareFailure {
                        return Err(unexpected(first, WriteRpc::ShareFailure));
                    }
                    // Failures are never deleted.
                    let failure = txn
                        .failure(&id)
                        .ok_or_else(|| Error::Internal(format!("failure {id} is missing")))?;
                    return Ok((failure, first));
                }
                touch_instance(txn, &instance)?;
                let failure = match txn.failure(&id) {
                    Some(existing) => {
                        let mut failure = (*existing).clone();
                        failure.record(&report, &instance, txn.now);
                        failure
                    }
                    None => FailurePattern::new(&report, &instance, txn.now),
                };
                Ok((txn.put_failure(failure), Applied::ShareFailure))
            },
        )
        .await
    }

    /// Marks failure `id` resolved: no longer warned about.
    pub async fn resolve_failure(&self, id: String) -> Result<Arc<FailurePattern>> {
        self.write(move |txn| {
            let Some(existing) = txn.failure(&id) else {
                return Err(Error::not_found("failure", id));
            };
            let mut failure = (*existing).clone();
            failure.resolved = true;
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
        include_resolved: bool,
        limit: usize,
    ) -> Vec<Arc<FailurePattern>> {
        let state = self.state();
        let mut failures: Vec<_> = state
            .failures
            .values()
            .filter(|f| include_resolved || !f.resolved)
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

    /// Known failures that applying `strategy` to `metric` may trigger,
    /// given what the caller applied recently, and a safer alternative.
    pub fn check_action(
        &self,
        strategy: &str,
        metric: &str,
        metrics: &Metrics,
        recent: &[RecentApplication],
        context: &Attributes,
    ) -> ActionCheck {
        let state = self.state();
        let warnings_for = |candidate: &str| {
            prevention::check_action(
                candidate,
                metric,
                metrics,
                recent,
                state.failures.values().filter(|f| !f.resolved).cloned(),
                &Self::usage_of(&state, candidate),
            )
        };
        let warnings = warnings_for(strategy);
        let safe = warnings
            .iter()
            .all(|w| w.failure_rate < UNSAFE_FAILURE_RATE);
        let safer_alternative = if safe {
            None
        } else {
            self.recommend_in(
                &state,
                &StrategyAsk {
                    metric: metric.to_string(),
                    context: context.clone(),
                    current_value: metrics.get(metric).map(|m| m.value),
                    limit: usize::MAX,
                    recent: recent.to_vec(),
                    ..Default::default()
                },
            )
            .into_iter()
            .filter(|r| r.strategy != strategy && r.expected_delta > 0.0)
            .find(|r| {
                warnings_for(&r.strategy)
                    .iter()
                    .all(|w| w.failure_rate < UNSAFE_FAILURE_RATE)
            })
            .map(|r| r.strategy)
        };
        ActionCheck {
            warnings,
            safe,
            safer_alternative,
        }
    }
}
