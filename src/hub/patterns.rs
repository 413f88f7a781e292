//! Plateau patterns: share (deduplicated by signature), match, and record
//! whether acting on a match worked.

use std::sync::Arc;

use super::{Hub, StrategyAsk, touch_instance};
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
    pub async fn share_pattern(
        &self,
        caller: &str,
        share: PatternShare,
    ) -> Result<(Arc<Pattern>, bool)> {
        let caller = caller.to_string();
        self.write(move |txn| {
            touch_instance(txn, &caller)?;
            let signature = matching::signature(&share.metrics, &share.environment);
            let id = crate::domain::model::content_id("pattern", &signature);
            let (pattern, new) = match txn.pattern(&id) {
                Some(existing) => {
                    let mut pattern = (*existing).clone();
                    pattern.record_share(&share, &caller, txn.now);
                    (pattern, false)
                }
                None => (Pattern::new(signature, &share, &caller, txn.now), true),
            };
            Ok((txn.put_pattern(pattern), new))
        })
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
    pub async fn record_pattern_outcome(
        &self,
        caller: &str,
        id: String,
        success: bool,
        metric: Option<String>,
        strategy: Option<String>,
        similarity: Option<f64>,
    ) -> Result<Arc<Pattern>> {
        let caller = caller.to_string();
        self.write(move |txn| {
            let Some(existing) = txn.pattern(&id) else {
                return Err(Error::not_found("pattern", id));
            };
            touch_instance(txn, &caller)?;
            let mut pattern = (*existing).clone();
            pattern.record_outcome(success, strategy.as_deref(), metric.as_deref(), txn.now);
            if let Some(similarity) = similarity {
                let mut calibration = txn.pattern_calibration();
                calibration.record(similarity, success);
                txn.put_pattern_calibration(calibration);
            }
            Ok(txn.put_pattern(pattern))
        })
        .await
    }
}
