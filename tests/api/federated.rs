//! The federated plateau model over gRPC: instances' updates make versions
//! (announced on the insight stream, kept across a restart), bad updates
//! are refused naming the field with nothing folded, one instance cannot
//! drag a robust model, PredictPlateau warns with a recommendation, and a
//! context's own model is trained by its instances and mixed in on
//! evidence.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use learning_hub::client::plateau;
use learning_hub::domain::federated::Aggregation;
use learning_hub::{client::HubClient, pb};
use tokio_stream::StreamExt;
use tonic::Code;

fn update(base_version: u64, delta: Vec<f64>) -> pb::ShareModelUpdateRequest {
    pb::ShareModelUpdateRequest {
        model: plateau::MODEL.into(),
        base_version,
        delta,
        examples: 40,
        ..Default::default()
    }
}

async fn model(client: &HubClient, known_version: u64) -> pb::GetModelResponse {
    client
        .get_model(pb::GetModelRequest {
            model: plateau::MODEL.into(),
            known_version,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Trajectories of saturating metrics: each instance's own examples.
fn local_examples(seed: usize) -> Vec<plateau::Example> {
    let mut all = Vec::new();
    for k in 0..4 {
        let rate = 0.15 + 0.1 * ((seed + k) % 4) as f64;
        let mut values = vec![0.1 + 0.05 * k as f64];
        for _ in 0..20 {
            let last = *values.last().unwrap();
            values.push(last + (0.9 - last) * rate);
        }
        all.extend(plateau::examples(&values));
    }
    all
}

#[tokio::test]
async fn updates_of_distinct_instances_make_versions_that_are_announced_and_kept() {
    let mut hub = TestHub::start_with(|config| {
        config.hub.federation.buffer_size = 3;
        // Not the default (median): the setting is what counts.
        config.hub.federation.aggregation = Aggregation::TrimmedMean;
    })
    .await;
    let watcher = hub.registered("watcher").await;
    let mut stream = watcher
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    let zero = model(&watcher, 0).await;
    assert_eq!((zero.version, zero.weights.len()), (0, plateau::WEIGHTS));
    assert!(zero.weights.iter().all(|w| *w == 0.0));
    assert_eq!(zero.features.len(), plateau::FEATURES);
    assert_eq!(zero.buffer_size, 3);

    // Three instances train locally from version 0 and send their deltas.
    let mut deltas = Vec::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let client = hub.registered(id).await;
        let examples = local_examples(i);
        let delta = plateau::train(&zero.weights, &examples, &plateau::Training::default());
        let evaluation = plateau::evaluate(&zero.weights, &examples);
        let answer = client
            .share_model_update(pb::ShareModelUpdateRequest {
                evaluation: Some(pb::ModelEvaluation {
                    examples: evaluation.examples,
                    correct: evaluation.correct,
                    log_loss: evaluation.log_loss,
                    reports: 0,
                }),
                ..update(0, delta.clone())
            })
            .await
            .unwrap();
        deltas.push(delta);
        if i < 2 {
            assert_eq!((answer.version, answer.new_version), (0, 0));
            assert_eq!(answer.pending, i as u32 + 1);
        } else {
            assert_eq!((answer.version, answer.new_version), (1, 1));
            assert_eq!(answer.pending, 0);
        }
    }
    // Version 1 is the coordinate-wise trimmed mean of the three deltas
    // (each within the clip norm of 5, or scaled to it): 20% of 3 values
    // trims none, so their mean.
    let v1 = model(&watcher, 0).await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.aggregation, "trimmed-mean");
    assert_eq!((v1.round_instances, v1.contributors), (3, 3));
    for (i, w) in v1.weights.iter().enumerate() {
        let column: Vec<f64> = deltas
            .iter()
            .map(|d| {
                let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
                d[i] * (5.0 / norm).min(1.0)
            })
            .collect();
        let mean = column.iter().sum::<f64>() / 3.0;
        assert!((w - mean).abs() < 1e-12, "weight {i}: {w} vs {column:?}");
    }
    let evaluated = &v1.evaluations[0];
    assert_eq!(
        (evaluated.version, evaluated.evaluation.unwrap().reports),
        (0, 3)
    );
    assert!(evaluated.accuracy > 0.0 && evaluated.accuracy <= 1.0);
    // The new version is announced to subscribers.
    let announced = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an insight within 10 s")
        .unwrap()
        .unwrap()
        .insight
        .unwrap();
    assert_eq!(announced.title, "Model plateau version 1");
    assert_eq!(announced.category, pb::InsightCategory::Prediction as i32);
    // A caller that has version 1 is told nothing changed.
    let same = model(&watcher, 1).await;
    assert!(same.unchanged && same.weights.is_empty());

    // The model is state like any other: it survives a restart.
    drop(stream);
    hub.restart().await;
    let after = model(&hub.client("watcher").await, 0).await;
    assert_eq!((after.version, after.weights), (1, v1.weights));
}

#[tokio::test]
async fn bad_updates_are_refused_naming_the_field_and_fold_nothing() {
    let hub = TestHub::start_with(|config| config.hub.federation.buffer_size = 2).await;
    let a = hub.registered("a").await;
    let good = || update(0, vec![0.1; plateau::WEIGHTS]);
    let mut nan = good();
    nan.delta[3] = f64::NAN;
    let mut huge = good();
    huge.delta[0] = 1e6;
    let cases = [
        (
            pb::ShareModelUpdateRequest {
                model: "weather".into(),
                ..good()
            },
            Code::InvalidArgument,
            "model",
        ),
        (update(0, vec![0.1; 3]), Code::InvalidArgument, "delta"),
        (nan, Code::InvalidArgument, "delta[3]"),
        (huge, Code::InvalidArgument, "delta"),
        (
            pb::ShareModelUpdateRequest {
                examples: 0,
                ..good()
            },
            Code::InvalidArgument,
            "examples",
        ),
        (
            pb::ShareModelUpdateRequest {
                evaluation: Some(pb::ModelEvaluation {
                    examples: 5,
                    correct: 6,
                    ..Default::default()
                }),
                ..good()
            },
            Code::InvalidArgument,
            "evaluation.correct",
        ),
        (
            // More than -ln(1e-12) per example: two such sums would add up
            // to infinity, which no record can hold.
            pb::ShareModelUpdateRequest {
                evaluation: Some(pb::ModelEvaluation {
                    examples: 5,
                    correct: 2,
                    log_loss: 1e308,
                    ..Default::default()
                }),
                ..good()
            },
            Code::InvalidArgument,
            "evaluation.log_loss",
        ),
        (
            update(3, vec![0.1; plateau::WEIGHTS]),
            Code::FailedPrecondition,
            "base_version",
        ),
    ];
    for (request, code, field) in cases {
        let error = a.share_model_update(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{field}: {error:?}");
        assert!(
            error.message().contains(field),
            "{field}: {}",
            error.message()
        );
    }
    let state = model(&a, 0).await;
    assert_eq!((state.version, state.pending), (0, 0), "nothing folded");
    // Operators do not train models.
    let refused = hub
        .operator()
        .await
        .share_model_update(good())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // An instance that is not registered cannot send one.
    let stranger = hub.client("stranger").await;
    let refused = stranger.share_model_update(good()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

/// Model poisoning: one of five instances sends a delta that would wreck
/// the model. Clipping and the (default) median leave the version where
/// the honest four put it.
#[tokio::test]
async fn one_instance_cannot_drag_the_model() {
    let hub = TestHub::start_with(|config| config.hub.federation.buffer_size = 5).await;
    let honest = vec![0.05; plateau::WEIGHTS];
    for id in ["a", "b", "c", "d"] {
        let client = hub.registered(id).await;
        client
            .share_model_update(update(0, honest.clone()))
            .await
            .unwrap();
    }
    let evil = hub.registered("evil").await;
    let answer = evil
        .share_model_update(update(0, vec![-300.0; plateau::WEIGHTS]))
        .await
        .unwrap();
    assert_eq!(answer.new_version, 1);
    let v1 = model(&evil, 0).await;
    assert_eq!(v1.aggregation, "median");
    for w in &v1.weights {
        assert!((w - 0.05).abs() < 1e-12, "{:?}", v1.weights);
    }
}

#[tokio::test]
async fn predict_plateau_warns_with_the_fleets_strategy() {
    let hub = TestHub::start_with(|config| config.hub.federation.buffer_size = 1).await;
    let a = hub.registered("a").await;
    // A fleet strategy for the metric, so a warning has one to recommend.
    for _ in 0..5 {
        a.share_strategy(pb::ShareStrategyRequest {
            value_before: 0.88,
            ..strategy_outcome("curriculum_shift", "accuracy", true, 0.05)
        })
        .await
        .unwrap();
    }
    // Train a model on saturating trajectories (one instance, buffer of 1).
    let zero = model(&a, 0).await;
    let examples = local_examples(0);
    let delta = plateau::train(&zero.weights, &examples, &plateau::Training::default());
    let answer = a.share_model_update(update(0, delta)).await.unwrap();
    assert_eq!(answer.new_version, 1);

    let trajectory = |metric: &str, values: &[f64]| pb::MetricTrajectory {
        metric: metric.into(),
        values: values.to_vec(),
    };
    // A metric closing in on its ceiling, cut where a plateau is 1 or 2
    // cycles ahead (by the model's own definition), and one still climbing.
    let mut curve = vec![0.3];
    for _ in 0..25 {
        let last = *curve.last().unwrap();
        curve.push(last + (0.9 - last) * 0.3);
    }
    let first_plateau = (0..curve.len())
        .find(|t| plateau::on_plateau(&curve[..=*t]) == Some(true))
        .unwrap();
    let closing_in = &curve[..first_plateau - 1];
    let climbing = &curve[..5];
    let reply = a
        .predict_plateau(pb::PredictPlateauRequest {
            metrics: vec![
                trajectory("accuracy", closing_in),
                trajectory("speed", climbing),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((reply.model_version, reply.horizon), (1, 2));
    let [accuracy, speed] = &reply.predictions[..] else {
        panic!("{reply:?}")
    };
    assert!(accuracy.probability > speed.probability, "{reply:?}");
    assert!(accuracy.warning && !speed.warning, "{reply:?}");
    assert_eq!(
        accuracy.recommended.as_ref().map(|r| r.strategy.as_str()),
        Some("curriculum_shift")
    );
    assert!(speed.recommended.is_none());
    // The hub's probability is the client's own computation with the
    // served weights.
    let weights = model(&a, 0).await.weights;
    let features = plateau::features(climbing).unwrap();
    assert!((plateau::predict(&weights, &features) - speed.probability).abs() < 1e-12);

    let error = a
        .predict_plateau(pb::PredictPlateauRequest {
            metrics: vec![trajectory("accuracy", &[0.5])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("metrics[accuracy].values"),
        "{error:?}"
    );

    // The same warning, proactively: on the ShareStrategy an instance makes
    // anyway, with the metric's trajectory.
    let shared = a
        .share_strategy(pb::ShareStrategyRequest {
            value_before: closing_in[closing_in.len() - 2],
            trajectory: closing_in.to_vec(),
            ..strategy_outcome("curriculum_shift", "accuracy", true, 0.01)
        })
        .await
        .unwrap();
    let warned = shared.plateau.expect("a prediction with the trajectory");
    assert!(warned.warning, "{warned:?}");
    assert!((warned.probability - accuracy.probability).abs() < 1e-12);
    assert_eq!(
        warned.recommended.as_ref().map(|r| r.strategy.as_str()),
        Some("curriculum_shift")
    );
    let plain = a
        .share_strategy(strategy_outcome("curriculum_shift", "accuracy", true, 0.01))
        .await
        .unwrap();
    assert!(plain.plateau.is_none(), "no trajectory, no prediction");
    // A bad trajectory is refused naming it, and nothing is written.
    let before = plain.record.unwrap().applications;
    let error = a
        .share_strategy(pb::ShareStrategyRequest {
            trajectory: vec![0.5, f64::NAN],
            ..strategy_outcome("curriculum_shift", "accuracy", true, 0.01)
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("trajectory[1]"), "{error:?}");
    let after = a
        .share_strategy(strategy_outcome("curriculum_shift", "accuracy", true, 0.01))
        .await
        .unwrap()
        .record
        .unwrap()
        .applications;
    assert_eq!(after, before + 1, "the refused share wrote nothing");
}

/// Per-context personalisation: a context's own model, moved only by its
/// instances' updates, starting from the fleet model's weights, and mixed
/// into their predictions once held-out evaluations show it predicts the
/// context better than the fleet model.
#[tokio::test]
async fn a_context_model_is_trained_by_its_context_and_mixed_in_on_evidence() {
    let hub = TestHub::start_with(|config| {
        config.hub.federation.buffer_size = 2;
        config.hub.context_buffer_size = 2;
    })
    .await;
    let in_context = |id: &'static str, tier: &'static str| {
        let hub = &hub;
        async move {
            let client = hub.client(id).await;
            client
                .register(pb::RegisterRequest {
                    instance_id: id.into(),
                    region: "test".into(),
                    context: BTreeMap::from([("tier".to_string(), tier.to_string())]),
                    ..Default::default()
                })
                .await
                .unwrap();
            client
        }
    };
    let get = |client: HubClient, context_model: bool| async move {
        client
            .get_model(pb::GetModelRequest {
                model: plateau::MODEL.into(),
                context_model,
                ..Default::default()
            })
            .await
    };
    // No registered context: no context model.
    let loner = hub.registered("loner").await;
    let refused = get(loner.clone(), true).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("context_model"), "{refused:?}");
    let refused = loner
        .share_model_update(pb::ShareModelUpdateRequest {
            context_model: true,
            ..update(0, vec![0.1; plateau::WEIGHTS])
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // The fleet model gets a version from two instances of another tier.
    for id in ["s1", "s2"] {
        let client = in_context(id, "silver").await;
        client
            .share_model_update(update(0, vec![0.5; plateau::WEIGHTS]))
            .await
            .unwrap();
    }
    let fleet = get(loner.clone(), false).await.unwrap();
    assert_eq!(fleet.version, 1);

    // Gold's model starts from the fleet's weights, at version 0.
    let g1 = in_context("g1", "gold").await;
    let g2 = in_context("g2", "gold").await;
    let gold = get(g1.clone(), true).await.unwrap();
    assert_eq!((gold.version, gold.context.as_str()), (0, "tier=gold"));
    assert_eq!(gold.weights, fleet.weights);
    assert_eq!((gold.context_share, gold.buffer_size), (0.0, 2));

    // Two gold updates make its version 1; the fleet model is untouched.
    let evaluation = |examples: u64, log_loss: f64| pb::ModelEvaluation {
        examples,
        correct: examples,
        log_loss,
        reports: 0,
    };
    for client in [&g1, &g2] {
        client
            .share_model_update(pb::ShareModelUpdateRequest {
                context_model: true,
                evaluation: Some(evaluation(60, 6.0)),
                ..update(0, vec![-1.0; plateau::WEIGHTS])
            })
            .await
            .unwrap();
    }
    let gold = get(g1.clone(), true).await.unwrap();
    assert_eq!(gold.version, 1);
    assert!(
        gold.weights
            .iter()
            .zip(&fleet.weights)
            .all(|(g, f)| (g - (f - 1.0)).abs() < 1e-12),
        "{gold:?}"
    );
    assert_eq!(get(loner.clone(), false).await.unwrap().version, 1);
    // Its own held-out loss (0.1 a example) is not yet weighed against the
    // fleet's on gold's examples: share 0, and silver sees no gold model.
    assert_eq!(gold.context_share, 0.0);
    let silver = in_context("s3", "silver").await;
    assert_eq!(
        get(silver, true).await.unwrap().context.as_str(),
        "tier=silver"
    );

    // Gold's instances report the fleet model doing worse on their
    // examples (0.2 an example): the gold model's loss is half, so it
    // counts fully — once both have a voice (each instance's view counts
    // once, and one cannot speak for two).
    g1.share_model_update(pb::ShareModelUpdateRequest {
        evaluation: Some(evaluation(60, 12.0)),
        ..update(1, vec![0.0; plateau::WEIGHTS])
    })
    .await
    .unwrap();
    assert_eq!(get(g1.clone(), true).await.unwrap().context_share, 0.0);
    // (Zero deltas: the fleet's next version has the same weights.)
    g2.share_model_update(pb::ShareModelUpdateRequest {
        evaluation: Some(evaluation(60, 12.0)),
        ..update(1, vec![0.0; plateau::WEIGHTS])
    })
    .await
    .unwrap();
    let gold = get(g1.clone(), true).await.unwrap();
    assert_eq!(gold.context_share, 1.0);
    let trajectory = vec![0.2, 0.3, 0.35, 0.37, 0.38];
    let predicted = g1
        .predict_plateau(pb::PredictPlateauRequest {
            metrics: vec![pb::MetricTrajectory {
                metric: "lv".into(),
                values: trajectory.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (predicted.context_model_version, predicted.context_share),
        (1, 1.0)
    );
    let features = plateau::features(&trajectory).unwrap();
    let expected = plateau::predict(&gold.weights, &features);
    assert!(
        (predicted.predictions[0].probability - expected).abs() < 1e-12,
        "{predicted:?}"
    );
    // An instance of another context still predicts with the fleet model.
    let other = loner
        .predict_plateau(pb::PredictPlateauRequest {
            metrics: vec![pb::MetricTrajectory {
                metric: "lv".into(),
                values: trajectory,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(other.context_model_version, 0);
    assert!(
        (other.predictions[0].probability - plateau::predict(&fleet.weights, &features)).abs()
            < 1e-12
    );
}
