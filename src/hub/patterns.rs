//! Plateau patterns: share (deduplicated by signature), match, and record
//! whether acting on a match worked.

use std::sync::Arc;

use super::idempotency::{gone, unexpected};
use super::{Hub, StrategyAsk, touch_instance};
use crate::domain::idempotency::{Applied, RequestTag, WriteRpc};
use crate::domain::matching::{self, PatternMatch, RecoveryEstimate};
use crate::domain::model::{Attributes, Metrics, Pattern, PatternShare, RecentApplication};
use crate::error::{Error, Result};

/// A match with its recovery strategies ranked for the caller.
#[derive(Debug, Clone)]
pub struct RankedMatch {
    pub found: PatternMatch<Arc<Pattern>>,
    pub recoveries: Vec<RecoveryEstimate>,
}

impl Hub {
    /// Stores a pattern share. Returns the pattern and whether it is new.
    /// With a request id, a retry changes nothing and returns the pattern
    /// as it is now, with the first call's `new`.
    pub async fn share_pattern(
        &self,
        caller: &str,
        share: PatternShare,
        request: Option<RequestTag>,
    ) -> Result<(Arc<Pattern>, bool)> {
        let instance = caller.to_string();
        let request_id = request.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        self.write_once(
            caller,
            WriteRpc::SharePattern,
            request,
            move |txn, first| {
                let signature = matching::signature(&share.metrics, &share.environment);
                let id = crate::domain::model::content_id("pattern", &signature);
                if let Some(first) = first {
                    let Applied::SharePattern { new_pattern } = first else {
                        return Err(unexpected(first, WriteRpc::SharePattern));
                    };
                    let pattern = txn
                        .pattern(&id)
                        .ok_or_else(|| gone(&request_id, "the pattern"))?;
                    return Ok(((pattern, new_pattern), first));
                }
                touch_instance(txn, &instance)?;
                let (pattern, new) = match txn.pattern(&id) {
                    Some(existing) => {
                        let mut pattern = (*existing).clone();
                        pattern.record_share(&share, &instance, txn.now);
                        (pattern, false)
                    }
                    None => (Pattern::new(signature, &share, &instance, txn.now), true),
                };
                Ok((
                    (txn.put_pattern(pattern), new),
                    Applied::SharePattern { new_pattern: new },
                ))
            },
        )
        .await
    }

    /// Patterns matching a metric state, best first, each with its recovery
    /// strategies ranked for `target` (the metric to get unstuck) at the
    /// caller's value and environment.
    pub fn get_patterns(
        &self,
        metrics: &Metrics,
        environment: &Attributes,
        target: Option<&str>,
        recent: &[RecentApplication],
        limit: usize,
    ) -> Vec<RankedMatch> {
        let state = self.state();
        let matches =
            state
                .pattern_index
                .rank(metrics, environment, &state.pattern_calibration, limit);
        let fleet = match target {
            Some(metric) => self.recommend_in(
                &state,
                &StrategyAsk {
                    metric: metric.to_string(),
                    context: environment.clone(),
                    current_value: metrics.get(metric).map(|m| m.value),
                    limit: usize::MAX,
                    recent: recent.to_vec(),
                    ..Default::default()
                },
            ),
            None => Vec::new(),
        };
        matches
            .into_iter()
            .map(|found| RankedMatch {
                recoveries: matching::rank_recoveries(&found.pattern, target, &fleet),
                found,
            })
            .collect()
    }

    /// Records whether acting on pattern `id` worked (with the recovery
    /// applied, for which metric, and the match's similarity when known).
    /// With a request id, a retry records nothing and returns the pattern
    /// as it is now.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_pattern_outcome(
        &self,
        caller: &str,
        id: String,
        success: bool,
        metric: Option<String>,
        strategy: Option<String>,
        similarity: Option<f64>,
        request: Option<RequestTag>,
    ) -> Result<Arc<Pattern>> {
        let instance = caller.to_string();
        let request_id = request.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        self.write_once(
            caller,
            WriteRpc::RecordPatternOutcome,
            request,
            move |txn, first| {
                if let Some(first) = first {
                    if first != Applied::RecordPatternOutcome {
                        return Err(unexpected(first, WriteRpc::RecordPatternOutcome));
                    }
                    let pattern = txn
                        .pattern(&id)
                        .ok_or_else(|| gone(&request_id, "the pattern"))?;
                    return Ok((pattern, first));
                }
                let Some(existing) = txn.pattern(&id) else {
                    return Err(Error::not_found("pattern", id));
                };
                touch_instance(txn, &instance)?;
                let mut pattern = (*existing).clone();
                pattern.record_outcome(success, strategy.as_deref(), metric.as_deref(), txn.now);
                if let Some(similarity) = similarity {
                    let mut calibration = txn.pattern_calibration();
                    calibration.record(similarity, success);
                    txn.put_pattern_calibration(calibration);
                }
                Ok((txn.put_pattern(pattern), Applied::RecordPatternOutcome))
            },
        )
        .await
    }
}
