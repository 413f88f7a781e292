//! Configurations and bootstrap: what the fleet recommends a (new) instance
//! starts with.

use std::{collections::BTreeSet, sync::Arc};

use super::{Hub, touch_instance};
use crate::domain::bootstrap::choose_configuration;
use crate::domain::model::{
    Attributes, ConfigShare, Configuration, Parameters, context_key, default_parameters,
};
use crate::domain::recommend::{self, Recommendation, StrategyQuery};
use crate::error::Result;

/// Proven strategies returned with a bootstrap configuration.
const PROVEN_STRATEGIES: usize = 5;

/// A bootstrap answer.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub parameters: Parameters,
    /// The fleet configuration chosen; `None` means the default.
    pub configuration: Option<Arc<Configuration>>,
    /// Best strategies in this context (or fleet-wide), best first.
    pub proven_strategies: Vec<Recommendation>,
}

impl Hub {
    /// Folds a configuration share into its (context, parameters) record.
    pub async fn share_configuration(
        &self,
        caller: &str,
        share: ConfigShare,
    ) -> Result<Arc<Configuration>> {
        let caller = caller.to_string();
        self.write(move |txn| {
            touch_instance(txn, &caller)?;
            let id = Configuration::id_for(&share.context, &share.parameters);
            let config = match txn.config(&id) {
                Some(existing) => {
                    let mut config = (*existing).clone();
                    config.record(&share, &caller, txn.now);
                    config
                }
                None => Configuration::new(&share, &caller, txn.now),
            };
            Ok(txn.put_config(config))
        })
        .await
    }

    /// The bootstrap for `context`, or for the caller's registered context
    /// when `context` is empty.
    pub fn bootstrap(&self, caller: Option<&str>, context: Attributes) -> Bootstrap {
        let context = if context.is_empty() {
            caller
                .and_then(|id| self.state().instances.get(id).map(|i| i.context.clone()))
                .unwrap_or_default()
        } else {
            context
        };
        self.bootstrap_for(&context)
    }

    pub(super) fn bootstrap_for(&self, context: &Attributes) -> Bootstrap {
        let key = context_key(context);
        let state = self.state();
        let configuration = choose_configuration(state.configs.values(), context).cloned();
        let metrics: BTreeSet<&str> = state.strategies.keys().map(|k| k.metric.as_str()).collect();
        let mut proven: Vec<Recommendation> = metrics
            .into_iter()
            .flat_map(|metric| {
                recommend::recommend(
                    state.strategies_for_metric(metric).map(|r| &**r),
                    StrategyQuery {
                        context_key: &key,
                        current_value: None,
                        budget: None,
                        limit: PROVEN_STRATEGIES,
                    },
                )
            })
            .collect();
        proven.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.confidence.total_cmp(&a.confidence))
                .then(a.metric.cmp(&b.metric))
                .then(a.strategy.cmp(&b.strategy))
        });
        proven.truncate(PROVEN_STRATEGIES);
        Bootstrap {
            parameters: configuration
                .as_ref()
                .map_or_else(default_parameters, |c| c.parameters.clone()),
            configuration,
            proven_strategies: proven,
        }
    }
}
