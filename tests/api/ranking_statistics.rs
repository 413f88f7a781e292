//! Statistical behaviour of `recommend::recommend` on synthetic evidence
//! with known ground truth: how often the top recommendation is the truly
//! best strategy with small samples (against a naive ranking), and whether
//! the returned `confidence` is calibrated.
//!
//! Everything is driven by the hub's own deterministic `Rng`, so each run
//! sees the same numbers and the thresholds below are fixed measurements
//! with a margin, not flaky bounds.

use std::collections::BTreeMap;

use learning_hub::domain::influence::Viewer;
use learning_hub::domain::model::{
    Attributes, StrategyKey, StrategyOutcome, StrategyRecord, UnixMillis,
};
use learning_hub::domain::recommend::{Recommendation, StrategyQuery, Tuning, recommend};
use learning_hub::domain::rng::Rng;

const NOW: UnixMillis = 1_700_000_000_000;
const METRIC: &str = "learningVelocity";
/// Every outcome starts here (value band 2 of 5), and so does the caller.
const VALUE: f64 = 0.5;

/// A strategy's true behaviour.
#[derive(Debug, Clone, Copy)]
struct Truth {
    name: &'static str,
    /// Probability that an application succeeds.
    p: f64,
    /// Mean change on success (drawn with spread `GAIN_SD`).
    gain: f64,
    /// Mean change on failure (drawn with spread `LOSS_SD`).
    loss: f64,
}

impl Truth {
    fn expected(&self) -> f64 {
        self.p * self.gain + (1.0 - self.p) * self.loss
    }
}

const GAIN_SD: f64 = 0.03;
const LOSS_SD: f64 = 0.01;

/// One synthetic application.
fn draw(truth: &Truth, rng: &mut Rng) -> (bool, f64) {
    let successful = rng.chance(truth.p);
    let delta = if successful {
        (truth.gain + GAIN_SD * rng.normal()).max(0.001)
    } else {
        (truth.loss + LOSS_SD * rng.normal()).min(0.0)
    };
    (successful, delta)
}

fn record_of(name: &str, outcomes: &[(bool, f64)]) -> StrategyRecord {
    let key = StrategyKey {
        metric: METRIC.into(),
        strategy: name.into(),
        context_key: "".into(),
    };
    let mut record = StrategyRecord::empty(&key, NOW);
    for (i, (successful, delta)) in outcomes.iter().enumerate() {
        record.record(
            &StrategyOutcome {
                sequence: i as u64,
                at: NOW,
                instance_id: "sim".into(),
                strategy: name.into(),
                metric: METRIC.into(),
                value_before: VALUE,
                successful: *successful,
                delta: *delta,
                condition: String::new(),
                context: Attributes::new(),
                streak: 0,
                preceded_by: vec![],
            },
            7,
        );
    }
    record
}

fn query(risk: &BTreeMap<String, f64>, limit: usize) -> StrategyQuery<'_> {
    StrategyQuery {
        // Every outcome is this reporter's own: all of it counts.
        viewer: Viewer::Instance("sim"),
        metric: METRIC,
        context_key: "",
        current_value: Some(VALUE),
        budget: None,
        limit,
        recent: &[],
        explore_seed: None,
        now: NOW,
        tuning: Tuning::default(),
        failure_risk: risk,
    }
}

/// The naive score: observed success rate × mean gain of the successes.
fn naive_score(outcomes: &[(bool, f64)]) -> f64 {
    let gains: Vec<f64> = outcomes.iter().filter(|o| o.0).map(|o| o.1).collect();
    if gains.is_empty() {
        return 0.0;
    }
    let rate = gains.len() as f64 / outcomes.len() as f64;
    rate * gains.iter().sum::<f64>() / gains.len() as f64
}

/// Ties go to the earlier strategy, as if the naive ranker sorted stably.
fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    best
}

#[test]
fn top_recommendation_recovers_the_true_best_with_small_samples() {
    let strategies = [
        // Clearly best in expected value: 0.8·0.10 − 0.2·0.02 = 0.076.
        Truth {
            name: "steady",
            p: 0.8,
            gain: 0.10,
            loss: -0.02,
        },
        // Looks great when it works, rarely does, and costs when it fails:
        // 0.25·0.30 − 0.75·0.05 = 0.0375 (naively 0.075, level with steady).
        Truth {
            name: "lucky",
            p: 0.25,
            gain: 0.30,
            loss: -0.05,
        },
        // Coin flip with a big gain and a big loss: 0.5·0.15 − 0.5·0.08 = 0.035.
        Truth {
            name: "risky",
            p: 0.5,
            gain: 0.15,
            loss: -0.08,
        },
        // Nearly always works, small gain: 0.9·0.05 − 0.1·0.01 = 0.044.
        Truth {
            name: "modest",
            p: 0.9,
            gain: 0.05,
            loss: -0.01,
        },
    ];
    let best = argmax(&strategies.iter().map(Truth::expected).collect::<Vec<_>>());
    assert_eq!(strategies[best].name, "steady");

    let trials = 300;
    let risk = BTreeMap::new();
    let mut rng = Rng::new(20_240_601);
    let (mut hub_hits, mut naive_hits) = (0usize, 0usize);
    let mut hub_picks: BTreeMap<&str, usize> = BTreeMap::new();
    let mut naive_picks: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..trials {
        let samples: Vec<Vec<(bool, f64)>> = strategies
            .iter()
            .map(|t| {
                let n = 3 + (rng.next_u64() % 13) as usize; // 3..=15
                (0..n).map(|_| draw(t, &mut rng)).collect()
            })
            .collect();
        let records: Vec<StrategyRecord> = strategies
            .iter()
            .zip(&samples)
            .map(|(t, s)| record_of(t.name, s))
            .collect();
        let ranked: Vec<Recommendation> = recommend(&records, query(&risk, 10));
        assert_eq!(ranked.len(), strategies.len());
        let top = ranked[0].strategy.as_str();
        let top = strategies.iter().find(|t| t.name == top).unwrap().name;
        *hub_picks.entry(top).or_default() += 1;
        hub_hits += usize::from(top == strategies[best].name);

        let naive = argmax(&samples.iter().map(|s| naive_score(s)).collect::<Vec<_>>());
        *naive_picks.entry(strategies[naive].name).or_default() += 1;
        naive_hits += usize::from(naive == best);
    }
    let hub_rate = hub_hits as f64 / trials as f64;
    let naive_rate = naive_hits as f64 / trials as f64;
    eprintln!(
        "true best recovered: hub {hub_rate:.3} {hub_picks:?}, naive {naive_rate:.3} {naive_picks:?}"
    );
    assert!(
        hub_hits >= naive_hits,
        "the hub ({hub_rate:.3}) must find the best at least as often as the naive ranking ({naive_rate:.3})"
    );
    // Measured 0.703 (naive 0.387) with this seed, 0.667..0.773 (naive
    // 0.290..0.390) over seeds 1..10.
    assert!(hub_rate >= 0.65, "hub recovers the best only {hub_rate:.3}");
}

/// Per tenth of the predicted probability: sum of predictions, fresh
/// successes, fresh draws, strategies.
#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    predicted: f64,
    successes: u64,
    draws: u64,
    strategies: u64,
}

fn add(bins: &mut [Bin; 10], predicted: f64, successes: u64, draws: u64) {
    let bin = &mut bins[((predicted * 10.0) as usize).min(9)];
    bin.predicted += predicted;
    bin.successes += successes;
    bin.draws += draws;
    bin.strategies += 1;
}

/// Strategy-weighted mean |mean prediction − observed rate| over the bins.
fn calibration_error(bins: &[Bin; 10], label: &str) -> f64 {
    let mut total = 0.0;
    let mut weight = 0.0;
    for (i, b) in bins.iter().enumerate() {
        if b.strategies == 0 {
            continue;
        }
        let mean = b.predicted / b.strategies as f64;
        let observed = b.successes as f64 / b.draws as f64;
        eprintln!(
            "{label} [{:.1}, {:.1}): {:4} strategies, mean prediction {mean:.3}, observed {observed:.3}",
            i as f64 / 10.0,
            (i + 1) as f64 / 10.0,
            b.strategies
        );
        total += b.strategies as f64 * (mean - observed).abs();
        weight += b.strategies as f64;
    }
    total / weight
}

#[test]
fn confidence_is_calibrated() {
    let mut rng = Rng::new(7_771);
    let risk = BTreeMap::new();
    let mut hub = [Bin::default(); 10];
    // Reference: Laplace's rule (s + 1)/(n + 2), the posterior mean under a
    // uniform prior, on the same evidence.
    let mut laplace = [Bin::default(); 10];
    let strategies_total = 2_000;
    let fresh_per_strategy = 20;
    let batch = 50;
    let mut done = 0;
    while done < strategies_total {
        let truths: Vec<(String, f64)> = (0..batch)
            .map(|i| (format!("s{}", done + i), 0.1 + 0.8 * rng.uniform()))
            .collect();
        let records: Vec<StrategyRecord> = truths
            .iter()
            .map(|(name, p)| {
                let n = 5 + (rng.next_u64() % 36) as usize; // 5..=40
                let truth = Truth {
                    name: "",
                    p: *p,
                    gain: 0.1,
                    loss: -0.02,
                };
                let outcomes: Vec<(bool, f64)> = (0..n).map(|_| draw(&truth, &mut rng)).collect();
                record_of(name, &outcomes)
            })
            .collect();
        // One query ranks the whole batch (each strategy's estimate uses only
        // its own records).
        let ranked = recommend(&records, query(&risk, batch));
        assert_eq!(ranked.len(), batch);
        for ((name, p), record) in truths.iter().zip(&records) {
            let rec = ranked.iter().find(|r| &r.strategy == name).unwrap();
            let successes = (0..fresh_per_strategy).filter(|_| rng.chance(*p)).count() as u64;
            add(&mut hub, rec.confidence, successes, fresh_per_strategy);
            let rule = (record.successes as f64 + 1.0) / (record.applications as f64 + 2.0);
            add(&mut laplace, rule, successes, fresh_per_strategy);
        }
        done += batch;
    }
    let ece = calibration_error(&hub, "hub confidence");
    let reference = calibration_error(&laplace, "laplace");
    eprintln!("expected calibration error: hub {ece:.4}, Laplace reference {reference:.4}");
    // Measured 0.018 with this seed (Laplace 0.015), after the band
    // estimate stopped counting its own outcomes twice (it was 0.027). With
    // 2,000 strategies × 20 fresh draws the sampling noise of the ECE is
    // below 0.01, so 0.03 fails only on a real regression.
    assert!(ece < 0.03, "confidence is miscalibrated: ECE {ece:.4}");
}
