//! The failure knowledge base: report (answered with a recovery plan),
//! list, and check proposed actions.

use std::sync::Arc;

use super::{Hub, StrategyAsk, wrong_answer};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::identity::Identity;
use crate::domain::influence::Viewer;
use crate::domain::model::{
    Attributes, FailurePattern, FailureReport, FailureType, Metrics, RecentApplication,
};
use crate::domain::prevention::{self, Warning};
use crate::domain::recovery::{self, Plan};
use crate::error::Result;

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
    /// Records a failure (deduplicated by type, metric and strategy) with
    /// how it was recovered from.
    pub async fn share_failure(
        &self,
        caller: &str,
        report: FailureReport,
        request: Option<RequestTag>,
    ) -> Result<Arc<FailurePattern>> {
        let answer = self
            .submit(Action::ShareFailure {
                caller: caller.to_string(),
                report,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            // Its reporter is told of it as it may see it.
            Answer::FailureShared { failure } => {
                Ok(Arc::new(failure.seen_by(Viewer::Instance(caller))))
            }
            other => Err(wrong_answer("ShareFailure", other)),
        }
    }

    /// The fleet's recovery plan for a `failure_type` failure of `metric`,
    /// from the evidence that may inform `caller`.
    pub fn recovery_plan(
        &self,
        caller: Option<&Identity>,
        failure_type: FailureType,
        metric: &str,
    ) -> Plan {
        recovery::plan(
            self.state().failures().iter().map(|f| &**f),
            failure_type,
            metric,
            Viewer::of(caller),
        )
    }

    /// Marks a failure resolved (operators).
    pub async fn resolve_failure(&self, id: String) -> Result<Arc<FailurePattern>> {
        match self
            .submit(Action::ResolveFailure { failure_id: id })
            .await?
        {
            Answer::FailureResolved { failure } => Ok(failure),
            other => Err(wrong_answer("ResolveFailure", other)),
        }
    }

    /// Failures matching the filters, most frequent first.
    pub fn get_failures(
        &self,
        caller: Option<&Identity>,
        failure_type: Option<FailureType>,
        metric: Option<&str>,
        strategy: Option<&str>,
        include_resolved: bool,
        limit: usize,
    ) -> Vec<Arc<FailurePattern>> {
        let state = self.state();
        let mut failures: Vec<_> = state
            .failures()
            .iter()
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
        let viewer = Viewer::of(caller);
        failures
            .into_iter()
            .map(|f| Arc::new(f.seen_by(viewer)))
            .collect()
    }

    /// Known failures that applying `strategy` to `metric` may trigger,
    /// given what the caller applied recently, and a safer alternative.
    pub fn check_action(
        &self,
        caller: Option<&Identity>,
        strategy: &str,
        metric: &str,
        metrics: &Metrics,
        recent: &[RecentApplication],
        context: &Attributes,
    ) -> ActionCheck {
        let state = self.state();
        let open: Vec<Arc<FailurePattern>> = state
            .failures()
            .iter()
            .filter(|f| !f.resolved)
            .cloned()
            .collect();
        let warnings_for = |candidate: &str| {
            prevention::check_action(
                candidate,
                metric,
                metrics,
                recent,
                open.iter().cloned(),
                &state.usage_of(candidate),
            )
        };
        let viewer = Viewer::of(caller);
        let mut warnings = warnings_for(strategy);
        for w in &mut warnings {
            w.failure = Arc::new(w.failure.seen_by(viewer));
        }
        let safe = warnings
            .iter()
            .all(|w| w.failure_rate < UNSAFE_FAILURE_RATE);
        let safer_alternative = if safe {
            None
        } else {
            self.recommend_in(
                &state,
                &StrategyAsk {
                    caller: caller.cloned(),
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
