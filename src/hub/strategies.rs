//! Strategy outcomes and recommendations.

use std::sync::Arc;

use super::{Hub, touch_instance};
use crate::domain::model::{
    Attributes, Metrics, StrategyKey, StrategyOutcome, StrategyRecord, StrategyShare, context_key,
};
use crate::domain::recommend::{self, Combination, Recommendation, StrategyQuery};
use crate::error::Result;

impl Hub {
    /// Logs one outcome and folds it into its (strategy, metric, context)
    /// aggregate. Returns the outcome's sequence and the new aggregate.
    pub async fn share_strategy(
        &self,
        caller: &str,
        share: StrategyShare,
    ) -> Result<(u64, Arc<StrategyRecord>)> {
        let caller = caller.to_string();
        self.write(move |txn| {
            touch_instance(txn, &caller)?;
            let key = StrategyKey {
                metric: share.metric.clone(),
                strategy: share.strategy.clone(),
                context_key: context_key(&share.context),
            };
            let outcome = StrategyOutcome {
                sequence: txn.next_outcome_sequence(),
                at: txn.now,
                instance_id: caller,
                strategy: share.strategy,
                metric: share.metric,
                value_before: share.value_before,
                successful: share.successful,
                delta: share.delta,
                condition: share.condition,
                context: share.context,
            };
            let mut record = match txn.strategy(&key) {
                Some(existing) => (*existing).clone(),
                None => StrategyRecord::empty(&key, txn.now),
            };
            record.record(&outcome);
            let sequence = outcome.sequence;
            txn.append_outcome(outcome);
            Ok((sequence, txn.put_strategy(record)))
        })
        .await
    }

    /// Ranked recommendations for `metric`.
    pub fn get_strategies(
        &self,
        metric: &str,
        context: &Attributes,
        current_value: Option<f64>,
        budget: Option<f64>,
        limit: usize,
    ) -> Vec<Recommendation> {
        let context_key = context_key(context);
        let state = self.state();
        recommend::recommend(
            state.strategies_for_metric(metric).map(|r| &**r),
            StrategyQuery {
                context_key: &context_key,
                current_value,
                budget,
                limit,
            },
        )
    }

    /// The best strategies for several metrics within `budget`.
    pub fn optimal_combination(
        &self,
        metrics: &Metrics,
        context: &Attributes,
        budget: Option<f64>,
    ) -> Combination {
        let per_metric = metrics.iter().map(|(metric, state)| {
            // Every candidate of every metric competes; the cut happens in
            // the combination, not per metric.
            self.get_strategies(metric, context, Some(state.value), None, usize::MAX)
        });
        recommend::optimal_combination(per_metric.collect::<Vec<_>>(), budget)
    }

    /// Outcomes of `strategy` on any metric in any context.
    pub(super) fn applications_of_strategy(&self, strategy: &str) -> u64 {
        self.state()
            .strategies
            .values()
            .filter(|r| r.strategy == strategy)
            .map(|r| r.applications)
            .sum()
    }
}
