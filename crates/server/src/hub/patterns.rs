//! Plateau patterns: share (deduplicated by signature), match, and record
//! whether acting on a match worked.

use std::sync::Arc;

use super::{Hub, StrategyAsk, wrong_answer};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::identity::Identity;
use crate::domain::matching::{self, PatternMatch, RecoveryEstimate};
use crate::domain::model::{Attributes, Metrics, Pattern, PatternShare, RecentApplication};
use crate::error::Result;

/// A match with its recovery strategies ranked for the caller.
#[derive(Debug, Clone)]
pub struct RankedMatch {
    pub found: PatternMatch<Arc<Pattern>>,
    pub recoveries: Vec<RecoveryEstimate>,
}

impl Hub {
    /// Stores a plateau pattern, or counts one more occurrence of the same
    /// signature. Returns the pattern and whether it is new.
    pub async fn share_pattern(
        &self,
        caller: &str,
        share: PatternShare,
        request: Option<RequestTag>,
    ) -> Result<(Arc<Pattern>, bool)> {
        let answer = self
            .submit(Action::SharePattern {
                caller: caller.to_string(),
                share,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::PatternShared { pattern, new } => Ok((pattern, new)),
            other => Err(wrong_answer("SharePattern", other)),
        }
    }

    /// Patterns matching a metric state, best first, each with its recovery
    /// strategies ranked for `target` (the metric to get unstuck) at the
    /// caller's value and environment.
    pub fn get_patterns(
        &self,
        caller: Option<&Identity>,
        metrics: &Metrics,
        environment: &Attributes,
        target: Option<&str>,
        recent: &[RecentApplication],
        limit: usize,
    ) -> Vec<RankedMatch> {
        let state = self.state();
        let matches = state.indexes.patterns.rank(
            metrics,
            environment,
            &state.counters.pattern_calibration,
            limit,
        );
        let fleet = match target {
            Some(metric) => self.recommend_in(
                &state,
                &StrategyAsk {
                    caller: caller.cloned(),
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

    /// Records how acting on a matched pattern went.
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
        let answer = self
            .submit(Action::RecordPatternOutcome {
                caller: caller.to_string(),
                pattern_id: id,
                success,
                metric,
                strategy,
                similarity,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::PatternOutcome { pattern } => Ok(pattern),
            other => Err(wrong_answer("RecordPatternOutcome", other)),
        }
    }
}
