//! How well the federated plateau model predicts, against a model each
//! instance trains alone and one trained centrally on every instance's
//! raw trajectories (the privacy-free upper bound) — by fleet size.
//!
//! A training fleet runs the scenario in isolated mode; each instance's
//! examples are the labelled cycles of its first `train_cycles` cycles
//! (a young instance: a little history of its own). A separate test fleet
//! (other seeds, every cycle) is the held-out set. The federated model is
//! trained as the hub trains it: in rounds, each instance fetches the
//! current version, trains a few epochs from it on its own examples and
//! sends the delta, and [`ModelRecord::accept`] — the very code the hub's
//! fold runs — buffers, clips and combines the deltas into versions. The
//! hub never sees an example.
//!
//! Scores are accuracy at 0.5, AUC (the probability that a plateau-ahead
//! cycle is scored above one without), the expected calibration error over
//! ten bins, and the base rate (the accuracy of always answering "no").

use std::sync::Arc;

use indicatif::ProgressBar;
use serde::Serialize;

use super::measures::Estimate;
use super::runner::{self, FaultyMode, Mode, RunSpec};
use super::scenario::Scenario;
use crate::client::plateau::{self, Example, Training};
use crate::domain::federated::{
    Aggregation, Evaluation, FederationRules, ModelRecord, ModelUpdate,
};
use crate::error::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PredictionOptions {
    pub scenario: Scenario,
    /// Training fleet sizes.
    pub fleet_sizes: Vec<usize>,
    /// Seeds `seed`, `seed + 1`, … per fleet size.
    pub seeds: usize,
    pub seed: u64,
    /// Cycles of its own history each training instance learns from.
    pub train_cycles: u32,
    /// Cycles the test fleet runs (all held out).
    pub horizon: u32,
    /// Instances of the held-out test fleet.
    pub test_instances: usize,
    /// Federated rounds: every instance sends one update per round.
    pub rounds: usize,
    pub rules: FederationRules,
}

/// One model's scores on the held-out fleet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub accuracy: f64,
    pub auc: f64,
    pub calibration_error: f64,
}

/// Scores over seeds, per training regime, at one fleet size.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionPoint {
    pub instances: usize,
    pub federated: [Estimate; 3],
    /// Each instance's own model, averaged over instances.
    pub local: [Estimate; 3],
    pub central: [Estimate; 3],
    pub base_rate: Estimate,
    /// Training examples per instance (mean).
    pub examples_per_instance: Estimate,
    /// Versions the federated model reached.
    pub versions: Estimate,
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictionReport {
    pub scenario: String,
    pub seeds: Vec<u64>,
    pub train_cycles: u32,
    pub horizon: u32,
    pub test_instances: usize,
    pub rounds: usize,
    pub aggregation: String,
    pub buffer_size: usize,
    pub points: Vec<PredictionPoint>,
}

/// Local training per federated round: a few epochs from the fetched
/// version.
const LOCAL_EPOCHS: usize = 5;
/// A lone or central model is trained to convergence ([`plateau::fit`]):
/// with gradient descent (even 3,000 epochs) the central model stayed
/// under-trained and scored below the federated one, which had been
/// through thousands of versions.
const L2: f64 = 0.001;

/// The labelled examples of every metric of every instance of a fleet
/// run, each instance's cut to its first `cycles` cycles.
async fn fleet_examples(
    scenario: &Arc<Scenario>,
    seed: u64,
    instances: usize,
    cycles: u32,
) -> Result<Vec<(usize, Vec<Example>)>> {
    let spec = RunSpec {
        scenario: scenario.clone(),
        mode: Mode::Isolated,
        seed,
        instances,
        horizon: cycles,
        stagger: 0,
        id_prefix: String::new(),
        faulty: 0,
        faulty_mode: FaultyMode::Inflate,
        quarantine_flagged: false,
        regions: 1,
        federated: false,
    };
    let traces = runner::run(&spec, None, &ProgressBar::hidden()).await?;
    Ok(traces
        .iter()
        .map(|t| {
            let examples = t
                .values
                .iter()
                .flat_map(|values| plateau::examples(values))
                .collect();
            (t.context, examples)
        })
        .collect())
}

/// A fleet's examples, per instance, with the index of its context.
type Fleet = Vec<(usize, Vec<Example>)>;

/// A training fleet's examples (per instance, their first
/// `train_cycles`) and the held-out fleet's (other instances of other
/// seeds, whole runs).
async fn training_and_test(
    scenario: &Arc<Scenario>,
    seed: u64,
    instances: usize,
    options: &PredictionOptions,
) -> Result<(Fleet, Vec<(usize, Example)>)> {
    let fleet = fleet_examples(scenario, seed, instances, options.train_cycles).await?;
    let test: Vec<(usize, Example)> = fleet_examples(
        scenario,
        seed.wrapping_add(1_000_003),
        options.test_instances,
        options.horizon,
    )
    .await?
    .into_iter()
    .flat_map(|(context, examples)| examples.into_iter().map(move |e| (context, e)))
    .collect();
    if test.is_empty() {
        return Err(Error::invalid(
            "scenario",
            "the test fleet made no examples",
        ));
    }
    Ok((fleet, test))
}

/// Accuracy, AUC and calibration error of `weights` on `examples`.
pub fn score(weights: &[f64], examples: &[Example]) -> Scores {
    score_with(examples, |x| plateau::predict(weights, x))
}

/// The same scores for any predictor of the features.
pub fn score_with(
    examples: &[Example],
    predict: impl Fn(&[f64; plateau::FEATURES]) -> f64,
) -> Scores {
    let mut scored: Vec<(f64, bool)> = examples
        .iter()
        .map(|e| (predict(&e.features), e.plateau_ahead))
        .collect();
    let n = scored.len().max(1) as f64;
    let accuracy = scored.iter().filter(|(p, y)| (*p >= 0.5) == *y).count() as f64 / n;
    // ECE: |mean prediction − observed rate| per tenth, weighted by count.
    let mut bins = [(0.0, 0.0, 0usize); 10];
    for (p, y) in &scored {
        let bin = &mut bins[((p * 10.0) as usize).min(9)];
        bin.0 += p;
        bin.1 += f64::from(u8::from(*y));
        bin.2 += 1;
    }
    let calibration_error = bins
        .iter()
        .filter(|b| b.2 > 0)
        // |Σp − Σy| / n = (count / n) · |mean p − observed rate|.
        .map(|(p, y, _)| (p - y).abs() / n)
        .sum::<f64>();
    // AUC by ranks (Mann–Whitney), ties counted half.
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = scored.iter().filter(|(_, y)| *y).count() as f64;
    let negatives = scored.len() as f64 - positives;
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += mid_rank * scored[i..j].iter().filter(|(_, y)| *y).count() as f64;
        i = j;
    }
    let auc = if positives == 0.0 || negatives == 0.0 {
        0.5
    } else {
        (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
    };
    Scores {
        accuracy,
        auc,
        calibration_error,
    }
}

/// Trains the federated model over `rounds` rounds; returns its weights
/// and version. The first `faulty` instances poison it: each sends ten
/// times the opposite of what it learned, claiming a million examples —
/// and, being adjacent, they land in the same buffers (the worst case for
/// a trimmed mean that drops one value at each end).
pub fn federate(
    fleet: &Fleet,
    rounds: usize,
    rules: &FederationRules,
    faulty: usize,
) -> Result<(Vec<f64>, u64)> {
    let mut model = ModelRecord::new(plateau::MODEL, plateau::WEIGHTS, 0);
    let training = Training {
        epochs: LOCAL_EPOCHS,
        ..Training::default()
    };
    let mut now = 0;
    for _ in 0..rounds {
        for (i, (_, examples)) in fleet.iter().enumerate() {
            if examples.is_empty() {
                continue;
            }
            let base_version = model.version;
            let mut delta = plateau::train(&model.weights, examples, &training);
            let mut claimed = examples.len() as u64;
            if i < faulty {
                delta.iter_mut().for_each(|d| *d *= -10.0);
                claimed = 1_000_000;
            }
            now += 1;
            let update = ModelUpdate {
                model: plateau::MODEL.into(),
                base_version,
                delta,
                examples: claimed,
                evaluation: None,
                context: None,
                for_context: false,
            };
            model
                .accept(&format!("i{i:04}"), &update, rules, now)
                .map_err(|e| Error::Internal(format!("update refused: {e:?}")))?;
        }
    }
    Ok((model.weights, model.version))
}

/// Distinct instances a context model's version waits for in the study
/// (fewer when the context has fewer training instances).
const CONTEXT_BUFFER: usize = 3;

/// Trains the fleet model and, alongside it, one model per context the way
/// the hub keeps them: each instance sends every round one update of the
/// fleet model and one of its context's, which starts from the fleet
/// model's weights when its first update arrives and is then moved only
/// by its context's instances. Each instance keeps the last
/// [`HELD_OUT_SHARE`] of its examples out of training and reports how both
/// models do on them, as an instance does with `evaluation`; from those
/// the context model gets its share ([`ModelRecord::context_share`]).
/// Returns the fleet model's weights and each context's model (`None` for
/// a context without training instances).
pub fn federate_personal(
    fleet: &Fleet,
    contexts: usize,
    rounds: usize,
    rules: &FederationRules,
) -> Result<(Vec<f64>, Vec<Option<ModelRecord>>)> {
    let mut global = ModelRecord::new(plateau::MODEL, plateau::WEIGHTS, 0);
    let mut own: Vec<Option<ModelRecord>> = vec![None; contexts];
    let members: Vec<usize> = (0..contexts)
        .map(|c| {
            fleet
                .iter()
                .filter(|(ctx, e)| *ctx == c && !e.is_empty())
                .count()
        })
        .collect();
    let training = Training {
        epochs: LOCAL_EPOCHS,
        ..Training::default()
    };
    let refused = |e| Error::Internal(format!("update refused: {e:?}"));
    let mut now = 0;
    for _ in 0..rounds {
        for (i, (context, examples)) in fleet.iter().enumerate() {
            let cut = examples.len() - (examples.len() as f64 * HELD_OUT_SHARE) as usize;
            let (train, held_out) = examples.split_at(cut);
            if train.is_empty() {
                continue;
            }
            now += 1;
            let id = format!("i{i:04}");
            let update = |model: &ModelRecord| ModelUpdate {
                model: plateau::MODEL.into(),
                base_version: model.version,
                delta: plateau::train(&model.weights, train, &training),
                examples: train.len() as u64,
                evaluation: (!held_out.is_empty()).then(|| {
                    let e = plateau::evaluate(&model.weights, held_out);
                    Evaluation {
                        examples: e.examples,
                        correct: e.correct,
                        log_loss: e.log_loss,
                        reports: 0,
                    }
                }),
                context: None,
                for_context: false,
            };
            let u = update(&global);
            let model = own[*context].get_or_insert_with(|| {
                let mut m = ModelRecord::new(plateau::MODEL, plateau::WEIGHTS, now);
                m.weights = global.weights.clone();
                m
            });
            if let Some(e) = &u.evaluation {
                model.record_fleet_evaluation(u.base_version, &id, e);
            }
            global.accept(&id, &u, rules, now).map_err(refused)?;
            let context_rules = FederationRules {
                buffer_size: CONTEXT_BUFFER.min(members[*context]).max(1),
                ..*rules
            };
            let u = ModelUpdate {
                for_context: true,
                ..update(model)
            };
            model
                .accept(&id, &u, &context_rules, now)
                .map_err(refused)?;
        }
    }
    Ok((global.weights, own))
}

/// The share of its examples an instance holds out of training to
/// evaluate the models on, in [`federate_personal`].
const HELD_OUT_SHARE: f64 = 0.3;

/// One context's predictions on the held-out fleet: the fleet model's, the
/// context model's alone, and the personalised mixture instances use.
#[derive(Debug, Clone, Serialize)]
pub struct PersonalRow {
    pub context: String,
    /// Training instances of the context (mean over seeds).
    pub instances: Estimate,
    /// Accuracy and AUC of the fleet model…
    pub fleet: [Estimate; 2],
    /// …of the context's model alone…
    pub own: [Estimate; 2],
    /// …and of the mixture ([`plateau::predict_personal`]).
    pub mixed: [Estimate; 2],
    /// The context model's share in the mixture.
    pub share: Estimate,
}

/// Per-context personalisation at `instances` training instances.
pub async fn personalization(
    options: &PredictionOptions,
    instances: usize,
) -> Result<Vec<PersonalRow>> {
    let scenario = Arc::new(options.scenario.clone());
    let contexts = scenario.contexts.len();
    let rules = FederationRules {
        dimension: plateau::WEIGHTS,
        buffer_size: options.rules.buffer_size.min(instances),
        ..options.rules
    };
    let mut per_context: Vec<[Vec<f64>; 8]> = vec![Default::default(); contexts];
    for seed in (0..options.seeds as u64).map(|s| options.seed + s) {
        let (fleet, test) = training_and_test(&scenario, seed, instances, options).await?;
        let (global, own) = federate_personal(&fleet, contexts, options.rounds, &rules)?;
        for (c, row) in per_context.iter_mut().enumerate() {
            let held_out: Vec<Example> = test
                .iter()
                .filter(|(ctx, _)| *ctx == c)
                .map(|(_, e)| *e)
                .collect();
            if held_out.is_empty() {
                continue;
            }
            let f = score(&global, &held_out);
            let share = own[c].as_ref().map_or(0.0, ModelRecord::context_share);
            let (o, m) = match &own[c] {
                Some(model) => (
                    score(&model.weights, &held_out),
                    score_with(&held_out, |x| {
                        plateau::predict_personal(&global, &model.weights, model.context_share(), x)
                    }),
                ),
                None => (f, f),
            };
            let members = fleet.iter().filter(|(ctx, _)| *ctx == c).count();
            let values = [
                members as f64,
                f.accuracy,
                f.auc,
                o.accuracy,
                o.auc,
                m.accuracy,
                m.auc,
                share,
            ];
            for (list, v) in row.iter_mut().zip(values) {
                list.push(v);
            }
        }
    }
    Ok(scenario
        .contexts
        .iter()
        .zip(per_context)
        .filter(|(_, row)| !row[0].is_empty())
        .map(|(context, row)| PersonalRow {
            context: context.name.clone(),
            instances: estimate(&row[0]),
            fleet: [estimate(&row[1]), estimate(&row[2])],
            own: [estimate(&row[3]), estimate(&row[4])],
            mixed: [estimate(&row[5]), estimate(&row[6])],
            share: estimate(&row[7]),
        })
        .collect())
}

/// The personalisation rows as a Markdown table.
pub fn personalization_table(instances: usize, rows: &[PersonalRow]) -> String {
    let pct = |e: &Estimate| format!("{:.1} ± {:.1}", e.mean * 100.0, e.ci95 * 100.0);
    let num = |e: &Estimate| format!("{:.3} ± {:.3}", e.mean, e.ci95);
    let mut out = format!(
        "\nper-context personalisation, {instances} training instances: the fleet model, \
         the context's own model, and the mixture instances use\n\n\
         | context | training instances | accuracy % fleet / own / mixed | AUC fleet / own / mixed | context share |\n\
         |---|---|---|---|---|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.1} | {} / {} / {} | {} / {} / {} | {:.2} ± {:.2} |\n",
            r.context,
            r.instances.mean,
            pct(&r.fleet[0]),
            pct(&r.own[0]),
            pct(&r.mixed[0]),
            num(&r.fleet[1]),
            num(&r.own[1]),
            num(&r.mixed[1]),
            r.share.mean,
            r.share.ci95,
        ));
    }
    out
}

/// One aggregation rule, clean and poisoned.
#[derive(Debug, Clone, Serialize)]
pub struct PoisoningRow {
    pub aggregation: String,
    /// Accuracy and AUC without faulty instances…
    pub clean: [Estimate; 2],
    /// …and with them.
    pub poisoned: [Estimate; 2],
    /// Poisoned accuracy / clean accuracy, per seed.
    pub kept_accuracy: Estimate,
}

/// Model poisoning: `faulty` of `instances` send poisoned updates; every
/// rule, the same seeds.
pub async fn poisoning(
    options: &PredictionOptions,
    instances: usize,
    faulty: usize,
) -> Result<Vec<PoisoningRow>> {
    let scenario = Arc::new(options.scenario.clone());
    let mut rows = Vec::new();
    let mut fleets = Vec::new();
    for seed in (0..options.seeds as u64).map(|s| options.seed + s) {
        fleets.push(training_and_test(&scenario, seed, instances, options).await?);
    }
    for aggregation in [
        Aggregation::FedAvg,
        Aggregation::TrimmedMean,
        Aggregation::Median,
    ] {
        let rules = FederationRules {
            dimension: plateau::WEIGHTS,
            aggregation,
            buffer_size: options.rules.buffer_size.min(instances),
            ..options.rules
        };
        let (mut clean, mut poisoned, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for (fleet, test) in &fleets {
            let test = examples_of(test);
            let test = &test;
            let c = score(&federate(fleet, options.rounds, &rules, 0)?.0, test);
            let p = score(&federate(fleet, options.rounds, &rules, faulty)?.0, test);
            clean.push([c.accuracy, c.auc, 0.0]);
            poisoned.push([p.accuracy, p.auc, 0.0]);
            kept.push(p.accuracy / c.accuracy);
        }
        let [ca, cu, _] = estimates(&clean);
        let [pa, pu, _] = estimates(&poisoned);
        rows.push(PoisoningRow {
            aggregation: aggregation.name().to_string(),
            clean: [ca, cu],
            poisoned: [pa, pu],
            kept_accuracy: estimate(&kept),
        });
    }
    Ok(rows)
}

/// The poisoning rows as a Markdown table.
pub fn poisoning_table(instances: usize, faulty: usize, rows: &[PoisoningRow]) -> String {
    let mut out = format!(
        "\nmodel poisoning: {faulty} of {instances} instances send -10x what they learned, \
         claiming 1,000,000 examples, into the same buffers\n\n\
         | rule | clean accuracy % | clean AUC | poisoned accuracy % | poisoned AUC | accuracy kept % |\n\
         |---|---|---|---|---|---|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.1} ± {:.1} | {:.3} ± {:.3} | {:.1} ± {:.1} | {:.3} ± {:.3} | {:.1} ± {:.1} |\n",
            r.aggregation,
            r.clean[0].mean * 100.0,
            r.clean[0].ci95 * 100.0,
            r.clean[1].mean,
            r.clean[1].ci95,
            r.poisoned[0].mean * 100.0,
            r.poisoned[0].ci95 * 100.0,
            r.poisoned[1].mean,
            r.poisoned[1].ci95,
            r.kept_accuracy.mean * 100.0,
            r.kept_accuracy.ci95 * 100.0,
        ));
    }
    out
}

fn examples_of(test: &[(usize, Example)]) -> Vec<Example> {
    test.iter().map(|(_, e)| *e).collect()
}

fn estimates(values: &[[f64; 3]]) -> [Estimate; 3] {
    [0, 1, 2].map(|k| estimate(&values.iter().map(|v| v[k]).collect::<Vec<_>>()))
}

fn triple(s: Scores) -> [f64; 3] {
    [s.accuracy, s.auc, s.calibration_error]
}

fn estimate(values: &[f64]) -> Estimate {
    Estimate::of(values).unwrap_or(Estimate {
        mean: 0.0,
        ci95: 0.0,
        n: 0,
    })
}

/// Runs the study.
pub async fn study(options: &PredictionOptions) -> Result<PredictionReport> {
    let scenario = Arc::new(options.scenario.clone());
    let rules = FederationRules {
        dimension: plateau::WEIGHTS,
        ..options.rules
    };
    let seeds: Vec<u64> = (0..options.seeds as u64)
        .map(|s| options.seed + s)
        .collect();
    let mut points = Vec::new();
    for &instances in &options.fleet_sizes {
        let (mut federated, mut local, mut central) = (Vec::new(), Vec::new(), Vec::new());
        let (mut base_rates, mut per_instance, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for &seed in &seeds {
            let (fleet, test) = training_and_test(&scenario, seed, instances, options).await?;
            let test = examples_of(&test);
            let pooled: Vec<Example> = fleet.iter().flat_map(|(_, e)| e).copied().collect();
            central.push(triple(score(&plateau::fit(&pooled, L2), &test)));
            let lone: Vec<[f64; 3]> = fleet
                .iter()
                .map(|(_, own)| triple(score(&plateau::fit(own, L2), &test)))
                .collect();
            local.push(estimates(&lone).map(|e| e.mean));
            // A fleet smaller than the buffer would never make a version:
            // its operator sets model.buffer_size to the fleet.
            let rules = FederationRules {
                buffer_size: rules.buffer_size.min(instances),
                ..rules
            };
            let (weights, version) = federate(&fleet, options.rounds, &rules, 0)?;
            federated.push(triple(score(&weights, &test)));
            versions.push(version as f64);
            base_rates.push(
                1.0 - test.iter().filter(|e| e.plateau_ahead).count() as f64 / test.len() as f64,
            );
            per_instance.push(pooled.len() as f64 / instances as f64);
        }
        points.push(PredictionPoint {
            instances,
            federated: estimates(&federated),
            local: estimates(&local),
            central: estimates(&central),
            base_rate: estimate(&base_rates),
            examples_per_instance: estimate(&per_instance),
            versions: estimate(&versions),
        });
    }
    Ok(PredictionReport {
        scenario: options.scenario.name.clone(),
        seeds,
        train_cycles: options.train_cycles,
        horizon: options.horizon,
        test_instances: options.test_instances,
        rounds: options.rounds,
        aggregation: rules.aggregation.name().to_string(),
        buffer_size: rules.buffer_size,
        points,
    })
}

/// The report as a Markdown table.
pub fn table(report: &PredictionReport) -> String {
    let pct = |e: &Estimate| format!("{:.1} ± {:.1}", e.mean * 100.0, e.ci95 * 100.0);
    let num = |e: &Estimate| format!("{:.3} ± {:.3}", e.mean, e.ci95);
    let mut out = format!(
        "plateau prediction, scenario {}: P(plateau within {} cycles) on {} held-out instances x {} cycles; \
         training instances learn from their first {} cycles; federated: {} rounds, {} over buffers of {}; \
         seeds {:?}\n\n",
        report.scenario,
        plateau::HORIZON,
        report.test_instances,
        report.horizon,
        report.train_cycles,
        report.rounds,
        report.aggregation,
        report.buffer_size,
        report.seeds,
    );
    out.push_str(
        "| instances | examples each | always-no accuracy % | accuracy % fed / local / central | AUC fed / local / central | calibration error fed / local / central | versions |\n|---|---|---|---|---|---|---|\n",
    );
    for p in &report.points {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {:.0} |\n",
            p.instances,
            p.examples_per_instance.mean,
            pct(&p.base_rate),
            pct(&p.federated[0]),
            pct(&p.local[0]),
            pct(&p.central[0]),
            num(&p.federated[1]),
            num(&p.local[1]),
            num(&p.central[1]),
            num(&p.federated[2]),
            num(&p.local[2]),
            num(&p.central[2]),
            p.versions.mean,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(x: f64, y: bool) -> Example {
        Example {
            features: [x, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            plateau_ahead: y,
        }
    }

    /// A small study end to end: the federated model learns (its AUC is
    /// far above a coin's), and under poisoning the median keeps more of
    /// its accuracy than FedAvg.
    #[tokio::test]
    async fn a_small_study_learns_and_the_median_resists_poisoning() {
        let options = PredictionOptions {
            scenario: Scenario::builtin(),
            fleet_sizes: vec![5],
            seeds: 1,
            seed: 7,
            train_cycles: 40,
            horizon: 100,
            test_instances: 10,
            rounds: 30,
            rules: FederationRules::default(),
        };
        let report = study(&options).await.unwrap();
        let point = &report.points[0];
        assert!(point.federated[1].mean > 0.8, "{point:?}");
        assert!(point.versions.mean >= 30.0, "{point:?}");
        let rows = poisoning(&options, 5, 1).await.unwrap();
        let kept = |rule: &str| {
            rows.iter()
                .find(|r| r.aggregation == rule)
                .unwrap()
                .kept_accuracy
                .mean
        };
        assert!(kept("median") > kept("fedavg"), "{rows:?}");
        assert!(table(&report).contains("| 5 |"));
    }

    #[test]
    fn scores_of_known_predictions() {
        // Weight 1 on x: p = sigmoid(x). Positives at x = 2 and 0.5,
        // negatives at -1 and 1: AUC = 3/4 (only (0.5 vs 1) is misordered).
        let weights = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let examples = [
            example(2.0, true),
            example(0.5, true),
            example(-1.0, false),
            example(1.0, false),
        ];
        let s = score(&weights, &examples);
        assert!((s.auc - 0.75).abs() < 1e-12, "{s:?}");
        // p >= 0.5 for x >= 0: right for 2, 0.5, -1; wrong for 1.
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        // A constant model ranks nothing: AUC 0.5.
        assert_eq!(score(&[0.0; 8], &examples).auc, 0.5);
    }
}
