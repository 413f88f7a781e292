//! Federated models: instances' updates in (folded by
//! [`crate::domain::federated`]), the current version out, and plateau
//! predictions for instances that do not run the model themselves.

use std::sync::Arc;

use learning_hub_proto::plateau;

use super::configs::or_registered_context;
use super::{Hub, State, StrategyAsk, wrong_answer};
use crate::domain::command::Action;
use crate::domain::federated::{FederationRules, ModelRecord, ModelUpdate, context_model_name};
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::identity::Identity;
use crate::domain::model::{Attributes, context_key};
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
    /// For a context's model: its context's key and its share in its
    /// instances' predictions.
    pub context: Option<(String, f64)>,
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

/// What PredictPlateau answers.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// The fleet model's version.
    pub version: u64,
    /// The caller's context model mixed in: its version and share.
    pub context: Option<(u64, f64)>,
    pub predictions: Vec<Prediction>,
}

/// The registered context's key of `caller`, if it registered one.
fn context_of(state: &State, caller: &str) -> Option<String> {
    let context = &state.tables.instances.get(caller)?.context;
    (!context.is_empty()).then(|| context_key(context))
}

impl Hub {
    fn federation_rules(&self, model: &str, for_context: bool) -> Result<FederationRules> {
        let settings = &self.shared.settings;
        Ok(FederationRules {
            dimension: model_dimension("model", model)?,
            buffer_size: if for_context {
                settings.context_buffer_size
            } else {
                settings.federation.buffer_size
            },
            ..settings.federation
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
        let mut update = update;
        let rules = self.federation_rules(&update.model, update.for_context)?;
        // Where it goes (a context update) and where its evaluation also
        // counts (a fleet update) is decided here, into the command.
        update.context = context_of(&self.state(), caller);
        let for_context = update.for_context;
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
                // A fleet model is answered as instances see it: with the
                // other regions' added.
                model: if for_context {
                    model
                } else {
                    Arc::new(self.state().fleet_model(&model))
                },
                new_version,
                buffer_size: rules.buffer_size,
            }),
            other => Err(wrong_answer("ShareModelUpdate", other)),
        }
    }

    /// Model `name` as it is now: the fleet's, or with `context_model` the
    /// one of `caller`'s registered context.
    pub fn model(
        &self,
        caller: Option<&str>,
        name: &str,
        context_model: bool,
    ) -> Result<ModelView> {
        let state = self.state();
        if !context_model {
            return self.model_in(&state, name);
        }
        let context = caller.and_then(|c| context_of(&state, c)).ok_or_else(|| {
            Error::FailedPrecondition(
                "context_model: the caller registered no context (only an instance that \
                 registered with one has a context model)"
                    .into(),
            )
        })?;
        let rules = self.federation_rules(name, true)?;
        let model = match state.tables.models.get(&context_model_name(name, &context)) {
            Some(model) => model.clone(),
            None => {
                // Not started yet: it would start from the fleet's weights.
                let fleet = self.model_in(&state, name)?.model;
                let mut fresh =
                    ModelRecord::new(&context_model_name(name, &context), rules.dimension, 0);
                fresh.weights = fleet.weights.clone();
                Arc::new(fresh)
            }
        };
        let share = model.context_share();
        Ok(ModelView {
            model,
            buffer_size: rules.buffer_size,
            context: Some((context, share)),
        })
    }

    fn model_in(&self, state: &State, name: &str) -> Result<ModelView> {
        let rules = self.federation_rules(name, false)?;
        let mut model = state
            .tables
            .models
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(ModelRecord::new(name, rules.dimension, 0)));
        // Other regions' models of this name, if any, are added.
        if !state.tables.regions.is_empty() {
            model = Arc::new(state.fleet_model(&model));
        }
        Ok(ModelView {
            model,
            buffer_size: rules.buffer_size,
            context: None,
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
    ) -> Result<Predictions> {
        let state = self.state();
        let view = self.model_in(&state, plateau::MODEL)?;
        // The caller's context model and its share (summed from its
        // evaluations once, not per metric), once it has a version and a
        // share.
        let personal = caller
            .and_then(|c| context_of(&state, c))
            .and_then(|key| {
                state
                    .tables
                    .models
                    .get(&context_model_name(plateau::MODEL, &key))
            })
            .filter(|m| m.version > 0)
            .map(|m| (m.clone(), m.context_share()))
            .filter(|(_, share)| *share > 0.0);
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
                let probability = match &personal {
                    Some((own, share)) => plateau::predict_personal(
                        &view.model.weights,
                        &own.weights,
                        *share,
                        &features,
                    ),
                    None => plateau::predict(&view.model.weights, &features),
                };
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
        Ok(Predictions {
            version: view.model.version,
            context: personal.map(|(m, share)| (m.version, share)),
            predictions,
        })
    }
}
