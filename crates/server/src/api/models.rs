//! Conversions of the federated-model RPCs (ShareModelUpdate, GetModel,
//! PredictPlateau): requests validated into domain terms, answers back
//! into messages. Kept apart from [`super::convert`], which holds the
//! knowledge-sharing RPCs'.

use std::collections::BTreeSet;

use learning_hub_proto::plateau;

use super::convert::{self, recommendation};
use crate::domain::federated::{Evaluation, ModelUpdate};
use crate::domain::model::Attributes;
use crate::error::{Error, Result};
use crate::hub::{
    ModelView, Prediction, Predictions, Trajectory, UpdateReceipt, WARNING_THRESHOLD,
    model_dimension,
};
use crate::pb;
use crate::validate::{self, finite, name, unit};

/// The most one example's log loss can be: -ln(1e-12), rounded up.
const MAX_EXAMPLE_LOG_LOSS: f64 = 27.64;

/// The longest delta (L2) an update may carry; the hub clips to far less
/// (see `FederationRules::clip_norm`), so a longer one is a bug or an
/// attack, not a large step.
pub const MAX_DELTA_NORM: f64 = 1000.0;
/// Examples an update or evaluation may claim.
const MAX_EXAMPLES: u64 = 1_000_000;
/// Values of a trajectory.
const MAX_TRAJECTORY: usize = 32;

fn examples(field: &str, n: u64) -> Result<u64> {
    if n == 0 || n > MAX_EXAMPLES {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_EXAMPLES}, got {n}"),
        ));
    }
    Ok(n)
}

pub fn model_update(req: pb::ShareModelUpdateRequest) -> Result<ModelUpdate> {
    let dimension = model_dimension("model", &req.model)?;
    if req.delta.len() != dimension {
        return Err(Error::invalid(
            "delta",
            format!(
                "has {} values; model {} has {dimension} weights",
                req.delta.len(),
                req.model
            ),
        ));
    }
    for (i, d) in req.delta.iter().enumerate() {
        finite(&format!("delta[{i}]"), *d)?;
    }
    let norm = crate::domain::federated::l2_norm(&req.delta);
    if norm > MAX_DELTA_NORM {
        return Err(Error::invalid(
            "delta",
            format!("has norm {norm:.3e}; at most {MAX_DELTA_NORM} is accepted"),
        ));
    }
    let evaluation = req
        .evaluation
        .map(|e| {
            examples("evaluation.examples", e.examples)?;
            if e.correct > e.examples {
                return Err(Error::invalid(
                    "evaluation.correct",
                    format!("must be at most evaluation.examples ({})", e.examples),
                ));
            }
            let log_loss = finite("evaluation.log_loss", e.log_loss)?;
            if log_loss < 0.0 {
                return Err(Error::invalid("evaluation.log_loss", "must be at least 0"));
            }
            // Probabilities are clamped to [1e-12, 1 - 1e-12] before the
            // log: no example loses more than -ln(1e-12). A larger sum is
            // not a log loss, and sums of such would overflow to infinity.
            let most = e.examples as f64 * MAX_EXAMPLE_LOG_LOSS;
            if log_loss > most {
                return Err(Error::invalid(
                    "evaluation.log_loss",
                    format!("must be at most {MAX_EXAMPLE_LOG_LOSS} per example ({most} for {} examples)", e.examples),
                ));
            }
            Ok(Evaluation {
                examples: e.examples,
                correct: e.correct,
                log_loss,
                reports: 0,
            })
        })
        .transpose()?;
    Ok(ModelUpdate {
        examples: examples("examples", req.examples)?,
        model: req.model,
        base_version: req.base_version,
        delta: req.delta,
        evaluation,
        context: None,
        for_context: req.context_model,
    })
}

/// A validated GetModel request.
#[derive(Debug, Clone)]
pub struct ModelQuery {
    pub model: String,
    pub known_version: u64,
    pub context_model: bool,
}

pub fn model_query(req: pb::GetModelRequest) -> Result<ModelQuery> {
    model_dimension("model", &req.model)?;
    Ok(ModelQuery {
        model: req.model,
        known_version: req.known_version,
        context_model: req.context_model,
    })
}

/// A validated PredictPlateau request.
#[derive(Debug, Clone)]
pub struct PredictQuery {
    pub trajectories: Vec<Trajectory>,
    pub context: Attributes,
}

/// A metric's recent values, checked: 2 to [`MAX_TRAJECTORY`] of them,
/// each in [0, 1]; errors name `field` (and the value's index).
pub fn trajectory(field: &str, metric: String, values: Vec<f64>) -> Result<Trajectory> {
    if values.len() < 2 || values.len() > MAX_TRAJECTORY {
        return Err(Error::invalid(
            field,
            format!("needs 2 to {MAX_TRAJECTORY} values, got {}", values.len()),
        ));
    }
    for (n, v) in values.iter().enumerate() {
        unit(&format!("{field}[{n}]"), *v)?;
    }
    Ok(Trajectory { metric, values })
}

/// One prediction as a message.
pub fn prediction(p: &Prediction) -> pb::PlateauPrediction {
    pb::PlateauPrediction {
        metric: p.metric.clone(),
        probability: p.probability,
        warning: p.warning,
        recommended: p.recommended.as_ref().map(recommendation),
    }
}

pub fn predict_query(req: pb::PredictPlateauRequest) -> Result<PredictQuery> {
    if req.metrics.is_empty() {
        return Err(Error::invalid("metrics", "at least one metric is required"));
    }
    validate::list_len("metrics", req.metrics.len())?;
    let mut seen = BTreeSet::new();
    let trajectories = req
        .metrics
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            name(&format!("metrics[{i}].metric"), &t.metric)?;
            if !seen.insert(t.metric.clone()) {
                return Err(Error::invalid(
                    format!("metrics[{i}].metric"),
                    format!("{:?} appears twice", t.metric),
                ));
            }
            trajectory(&format!("metrics[{}].values", t.metric), t.metric, t.values)
        })
        .collect::<Result<_>>()?;
    Ok(PredictQuery {
        trajectories,
        context: convert::context("context", &req.context)?,
    })
}

pub fn update_receipt(receipt: &UpdateReceipt) -> pb::ShareModelUpdateResponse {
    pb::ShareModelUpdateResponse {
        version: receipt.model.version,
        new_version: receipt.new_version.unwrap_or(0),
        pending: count(receipt.model.pending.len()),
        buffer_size: count(receipt.buffer_size),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn evaluation(e: &Evaluation) -> pb::ModelEvaluation {
    pb::ModelEvaluation {
        examples: e.examples,
        correct: e.correct,
        log_loss: e.log_loss,
        reports: e.reports,
    }
}

pub fn model_reply(view: &ModelView, known_version: u64) -> pb::GetModelResponse {
    let model = &view.model;
    let unchanged = known_version == model.version && known_version > 0;
    pb::GetModelResponse {
        model: model.name.clone(),
        version: model.version,
        weights: if unchanged {
            Vec::new()
        } else {
            model.weights.clone()
        },
        unchanged,
        features: plateau::FEATURE_NAMES
            .iter()
            .map(|f| f.to_string())
            .collect(),
        horizon: plateau::HORIZON as u32,
        aggregation: model
            .last_aggregation
            .map(|a| a.name().to_string())
            .unwrap_or_default(),
        round_instances: u32::try_from(model.last_round_instances).unwrap_or(u32::MAX),
        contributors: count(model.contributors.len()),
        pending: count(model.pending.len()),
        buffer_size: count(view.buffer_size),
        evaluations: model
            .evaluations
            .iter()
            .rev()
            .map(|(version, e)| pb::VersionEvaluation {
                version: *version,
                evaluation: Some(evaluation(e)),
                accuracy: e.accuracy().unwrap_or(0.0),
                mean_log_loss: e.mean_log_loss().unwrap_or(0.0),
            })
            .collect(),
        context: view
            .context
            .as_ref()
            .map(|(key, _)| key.clone())
            .unwrap_or_default(),
        context_share: view.context.as_ref().map_or(0.0, |(_, share)| *share),
    }
}

pub fn predictions(p: &Predictions) -> pb::PredictPlateauResponse {
    pb::PredictPlateauResponse {
        model_version: p.version,
        predictions: p.predictions.iter().map(prediction).collect(),
        warning_threshold: WARNING_THRESHOLD,
        horizon: plateau::HORIZON as u32,
        context_model_version: p.context.map_or(0, |(version, _)| version),
        context_share: p.context.map_or(0.0, |(_, share)| share),
    }
}
