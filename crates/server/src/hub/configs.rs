//! Configurations and bootstrap: what the fleet recommends a (new) instance
//! starts with.

use std::{collections::BTreeSet, sync::Arc};

use super::{Hub, State, StrategyAsk, wrong_answer};
use crate::domain::bootstrap::{choose_configuration, offered_to_others};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::model::{
    Attributes, ConfigShare, Configuration, Parameters, default_parameters,
};
use crate::domain::recommend::Recommendation;
use crate::error::Result;

/// Proven strategies returned with a bootstrap configuration.
const PROVEN_STRATEGIES: usize = 5;
/// Alternative configurations returned with it.
const MAX_ALTERNATIVES: usize = 5;

/// `context`, or when it is empty the registered context of `caller` (an
/// instance asking about itself).
pub(super) fn or_registered_context(
    state: &State,
    caller: Option<&str>,
    context: Attributes,
) -> Attributes {
    if !context.is_empty() {
        return context;
    }
    caller
        .and_then(|id| state.tables.instances.get(id).map(|i| i.context.clone()))
        .unwrap_or_default()
}

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
    /// Records a configuration's results; it is judged against its
    /// context's rivals (and they against it) as it is stored.
    pub async fn share_configuration(
        &self,
        caller: &str,
        share: ConfigShare,
        request: Option<RequestTag>,
    ) -> Result<Arc<Configuration>> {
        let answer = self
            .submit(Action::ShareConfiguration {
                caller: caller.to_string(),
                share,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::ConfigurationShared { config } => Ok(config),
            other => Err(wrong_answer("ShareConfiguration", other)),
        }
    }

    /// The bootstrap for `context`, or for the caller's registered context
    /// when `context` is empty.
    pub fn bootstrap(&self, caller: Option<&str>, context: Attributes) -> Bootstrap {
        let context = or_registered_context(&self.state(), caller, context);
        self.bootstrap_for(&context)
    }

    pub(super) fn bootstrap_for(&self, context: &Attributes) -> Bootstrap {
        let state = self.state();
        let configs = state.configurations();
        let configuration = choose_configuration(&configs, context).cloned();
        let mut alternatives: Vec<Arc<Configuration>> = configs
            .iter()
            .filter(|c| offered_to_others(c) && c.context_match(context).is_some())
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
        let metrics: BTreeSet<&str> = state.tables.strategies.keys().map(|k| &*k.metric).collect();
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
