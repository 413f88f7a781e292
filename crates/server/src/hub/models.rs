//! Federated models: instances' updates in (folded by
//! [`crate::domain::federated`]), the current version out, and plateau
//! predictions for instances that do not run the model themselves.

use std::sync::Arc;

use learning_hub_proto::plateau;

use super::configs::or_registered_context;
use super::{Hub, State, StrategyAsk, wrong_answer};
use crate::domain::command::Action;
use crate::domain::federated::{FederationRules, ModelRecord, ModelUpdate};
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::identity::Identity;
use crate::domain::model::Attributes;
use crate::domain::recommend::Recommendation;
use crate::error::{Error, Result};

/// A prediction is a warning from this probability on.
pub const WARNING_THRESHOLD: f64 = 0.5;

/// The models the hub serves, with their number of weights.
pub const MODELS: &[(&str, usize)] = &[(plateau::MODEL, plateau::WEIGHTS)];

/// The number of weights of model `name`, or INVALID_ARGUMENT naming
/// `field`.
pub fn model_dimension(field: &str, name: &str) -> Result<usize> {
    MODELS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, dimension)| *dimension)
        .ok_or_else(|| {
            let known: Vec<&str> = MODELS.iter().map(|(n, _)| *n).collect();
            Error::invalid(
                field,
                format!("unknown model {name:?}; the hub serves {known:?}"),
            )
        })
}

/// What the hub answers an update with.
#[derive(Debug, Clone)]
pub struct UpdateReceipt {
    pub model: Arc<ModelRecord>,
    pub new_version: Option<u64>,
    pub buffer_size: usize,
}

/// A model as served: its record, or version 0 if nobody sent an update.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub model: Arc<ModelRecord>,
    pub buffer_size: usize,
}

/// One metric's prediction.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub metric: String,
    pub probability: f64,
    pub warning: bool,
    pub recommended: Option<Recommendation>,
}

/// A metric's recent values, oldest first.
#[derive(Debug, Clone)]
pub struct Trajectory {
    pub metric: String,
    pub values: Vec<f64>,
}

impl Hub {
    fn federation_rules(&self, model: &str) -> Result<FederationRules> {
        Ok(FederationRules {
            dimension: model_dimension("model", model)?,
            ..self.shared.settings.federation
        })
    }

    /// Folds an instance's update; the answer says whether it completed a
    /// version.
    pub async fn share_model_update(
        &self,
        caller: &str,
        update: ModelUpdate,
        request: Option<RequestTag>,
    ) -> Result<UpdateReceipt> {
        let rules = self.federation_rules(&update.model)?;
        let answer = self
            .submit(Action::ShareModelUpdate {
                caller: caller.to_string(),
                update,
                rules,
                announce_id: format!("insight_{}", uuid::Uuid::new_v4().simple()),
                announce_ttl_ms: self.shared.settings.insight_ttl_ms,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::ModelUpdated { model, new_version } => Ok(UpdateReceipt {
                model,
                new_version,
                buffer_size: rules.buffer_size,
            }),
            other => Err(wrong_answer("ShareModelUpdate", other)),
        }
    }

    /// Model `name` as it is now.
    pub fn model(&self, name: &str) -> Result<ModelView> {
        self.model_in(&self.state(), name)
    }

    fn model_in(&self, state: &State, name: &str) -> Result<ModelView> {
        let rules = self.federation_rules(name)?;
        let model = state
            .tables
            .models
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(ModelRecord::new(name, rules.dimension, 0)));
        Ok(ModelView {
            model,
            buffer_size: rules.buffer_size,
        })
    }

    /// The plateau model's predictions for `trajectories`, with the
    /// strategy the fleet ranks first for each warned metric (for
    /// `context`, or the caller's registered context when it is empty).
    pub fn predict_plateau(
        &self,
        caller: Option<&str>,
        trajectories: &[Trajectory],
        context: Attributes,
    ) -> Result<(u64, Vec<Prediction>)> {
        let state = self.state();
        let view = self.model_in(&state, plateau::MODEL)?;
        let context = or_registered_context(&state, caller, context);
        let predictions = trajectories
            .iter()
            .map(|t| {
                let features = plateau::features(&t.values).ok_or_else(|| {
                    Error::invalid(
                        format!("metrics[{}].values", t.metric),
                        "needs at least 2 values",
                    )
                })?;
                let probability = plateau::predict(&view.model.weights, &features);
                // An untrained model (version 0: every probability 0.5)
                // knows nothing worth a warning.
                let warning = view.model.version > 0 && probability >= WARNING_THRESHOLD;
                let recommended = if warning {
                    self.recommend_in(
                        &state,
                        &StrategyAsk {
                            caller: caller.map(Identity::instance),
                            metric: t.metric.clone(),
                            context: context.clone(),
                            current_value: t.values.last().copied(),
                            limit: 1,
                            ..Default::default()
                        },
                    )
                    .into_iter()
                    .next()
                } else {
                    None
                };
                Ok(Prediction {
                    metric: t.metric.clone(),
                    probability,
                    warning,
                    recommended,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((view.model.version, predictions))
    }
}
