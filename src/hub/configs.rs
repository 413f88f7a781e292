//! Configurations and bootstrap: what the fleet recommends a (new) instance
//! starts with.

use std::{collections::BTreeSet, sync::Arc};

use super::idempotency::unexpected;
use super::{Hub, StrategyAsk, touch_instance};
use crate::domain::bootstrap::choose_configuration;
use crate::domain::idempotency::{Applied, RequestTag, WriteRpc};
use crate::domain::model::{
    Attributes, ConfigShare, Configuration, Parameters, RIVAL_MIN_DATA_POINTS, context_key,
    default_parameters,
};
use crate::domain::recommend::Recommendation;
use crate::error::{Error, Result};

/// Proven strategies returned with a bootstrap configuration.
const PROVEN_STRATEGIES: usize = 5;
/// Alternative configurations returned with it.
const MAX_ALTERNATIVES: usize = 5;

/// A bootstrap answer.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub parameters: Parameters,
    /// The fleet configuration chosen; `None` means the default.
    pub configuration: Option<Arc<Configuration>>,
    /// Best strategies in this context (or fleet-wide), best first.
    pub proven_strategies: Vec<Recommendation>,
    /// Other configurations that fit, most effective first.
    pub alternatives: Vec<Arc<Configuration>>,
}

impl Hub {
    /// Folds a configuration share into its (context, parameters) record.
    /// With a request id, a retry changes nothing and returns the
    /// configuration as it is now.
    pub async fn share_configuration(
        &self,
        caller: &str,
        share: ConfigShare,
        request: Option<RequestTag>,
    ) -> Result<Arc<Configuration>> {
        let instance = caller.to_string();
        self.write_once(
            caller,
            WriteRpc::ShareConfiguration,
            request,
            move |txn, first| {
                let id = Configuration::id_for(&share.context, &share.parameters);
                if let Some(first) = first {
                    if first != Applied::ShareConfiguration {
                        return Err(unexpected(first, WriteRpc::ShareConfiguration));
                    }
                    // Configurations are never deleted.
                    let config = txn
                        .config(&id)
                        .ok_or_else(|| Error::Internal(format!("configuration {id} is missing")))?;
                    return Ok((config, first));
                }
                touch_instance(txn, &instance)?;
                let config = match txn.config(&id) {
                    Some(existing) => {
                        let mut config = (*existing).clone();
                        config.record(&share, &instance, txn.now);
                        config
                    }
                    None => Configuration::new(&share, &instance, txn.now),
                };
                let id = config.id.clone();
                txn.put_config(config);
                // A share can change which configuration of the context is
                // best, so every one of them is re-judged.
                let rivals = txn.configs_in_context(&context_key(&share.context));
                for candidate in &rivals {
                    let best_rival = rivals
                        .iter()
                        .filter(|r| r.id != candidate.id && r.data_points >= RIVAL_MIN_DATA_POINTS)
                        .map(|r| r.effectiveness)
                        .max_by(f64::total_cmp);
                    let mut judged = (**candidate).clone();
                    if judged.revalidate(best_rival, txn.now) {
                        txn.put_config(judged);
                    }
                }
                let config = txn
                    .config(&id)
                    .ok_or_else(|| Error::Internal("configuration vanished".into()))?;
                Ok((config, Applied::ShareConfiguration))
            },
        )
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
        let state = self.state();
        let configuration = choose_configuration(state.configs.values(), context).cloned();
        let mut alternatives: Vec<Arc<Configuration>> = state
            .configs
            .values()
            .filter(|c| c.context_match(context).is_some())
            .filter(|c| {
                configuration
                    .as_ref()
                    .is_none_or(|chosen| chosen.id != c.id)
            })
            .cloned()
            .collect();
        alternatives.sort_by(|a, b| {
            b.effectiveness
                .total_cmp(&a.effectiveness)
                .then(a.id.cmp(&b.id))
        });
        alternatives.truncate(MAX_ALTERNATIVES);
        let metrics: BTreeSet<&str> = state.strategies.keys().map(|k| k.metric.as_str()).collect();
        let mut proven: Vec<Recommendation> = metrics
            .into_iter()
            .flat_map(|metric| {
                self.recommend_in(
                    &state,
                    &StrategyAsk {
                        metric: metric.to_string(),
                        context: context.clone(),
                        limit: PROVEN_STRATEGIES,
                        ..Default::default()
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
            alternatives,
        }
    }
}
