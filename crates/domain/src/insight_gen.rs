//! Insight generation (the seed's "Insight Generation Flow"): find
//! candidate insights in the fleet's history, validate each on held-out
//! recent history, and keep only those that hold.
//!
//! The history is split in time: candidates are found on the older 70% and
//! must hold, with the same sign and enough evidence, on the newer 30%.
//! Three kinds are looked for, each only where at least `min_support`
//! applications (or patterns) back it:
//!
//! - **sequences** — applying A within a few cycles before B changes B's
//!   outcomes on a metric ("consolidation_cycle before speed_optimization:
//!   +0.06 on adaptationSpeed");
//! - **context effects** — a strategy's success rate on a metric differs
//!   under one context attribute ("phase_acceleration on adaptationSpeed
//!   works less under latency=high");
//! - **plateau predictors** — in an environment, a metric tends to plateau
//!   at a value ("learningVelocity plateaus near 0.55 under provider=gpt"),
//!   with the share of held-out plateaus it predicted.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{
    ApplicableContext, InsightCategory, InsightDraft, InsightEvidence, Pattern, StrategyOutcome,
    UnixMillis, context_key,
};

/// Knobs of a generation run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationSettings {
    /// Evidence a candidate needs (applications of the strategy on the
    /// metric, or patterns of the metric in the environment).
    pub min_support: usize,
    /// Share of the history (oldest first) used to find candidates.
    pub train_share: f64,
    /// Each side of a comparison needs this many outcomes in the training part…
    pub min_group: usize,
    /// …and this many in the held-out part.
    pub min_holdout_group: usize,
    /// Standard errors a difference must reach on the training part…
    pub z_train: f64,
    /// …and on the held-out part.
    pub z_holdout: f64,
    /// Share of held-out plateaus a predictor must get right.
    pub min_prediction_accuracy: f64,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            min_support: 50,
            train_share: 0.7,
            min_group: 10,
            min_holdout_group: 5,
            z_train: 2.5,
            z_holdout: 1.5,
            min_prediction_accuracy: 0.7,
        }
    }
}

/// A validated insight, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedInsight {
    pub draft: InsightDraft,
}

/// What a run found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub candidates: usize,
    pub validated: Vec<GeneratedInsight>,
    pub outcomes_examined: usize,
}

/// Mean, spread and count of a group of values.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    n: usize,
    sum: f64,
    sum_sq: f64,
    successes: usize,
}

impl Group {
    fn add(&mut self, delta: f64, success: bool) {
        self.n += 1;
        self.sum += delta;
        self.sum_sq += delta * delta;
        self.successes += usize::from(success);
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        ((self.sum_sq - self.sum * self.sum / self.n as f64) / (self.n - 1) as f64).max(0.0)
    }

    fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.successes as f64 / self.n as f64
        }
    }
}

/// Welch's z for the difference of two means (0 when undefined).
fn z_means(a: &Group, b: &Group) -> f64 {
    let se = (a.variance() / a.n.max(1) as f64 + b.variance() / b.n.max(1) as f64).sqrt();
    if se <= 1e-12 {
        let d = a.mean() - b.mean();
        return if d.abs() <= 1e-12 {
            0.0
        } else {
            d.signum() * 1e6
        };
    }
    (a.mean() - b.mean()) / se
}

/// z for the difference of two success rates (pooled).
fn z_rates(a: &Group, b: &Group) -> f64 {
    let n = (a.n + b.n) as f64;
    if a.n == 0 || b.n == 0 {
        return 0.0;
    }
    let pooled = (a.successes + b.successes) as f64 / n;
    let se = (pooled * (1.0 - pooled) * (1.0 / a.n as f64 + 1.0 / b.n as f64)).sqrt();
    if se <= 1e-12 {
        return 0.0;
    }
    (a.rate() - b.rate()) / se
}

/// Point-biserial correlation between membership of `a` and the value.
fn correlation(a: &Group, b: &Group) -> f64 {
    let n = (a.n + b.n) as f64;
    if a.n == 0 || b.n == 0 {
        return 0.0;
    }
    let mean = (a.sum + b.sum) / n;
    let var = ((a.sum_sq + b.sum_sq) / n - mean * mean).max(0.0);
    if var <= 1e-12 {
        return 0.0;
    }
    let p = a.n as f64 / n;
    ((a.mean() - b.mean()) * (p * (1.0 - p)).sqrt() / var.sqrt()).clamp(-1.0, 1.0)
}

/// The two groups of outcomes split by `condition`, in one part of the
/// history.
fn split<'o>(
    outcomes: impl Iterator<Item = &'o StrategyOutcome>,
    condition: impl Fn(&StrategyOutcome) -> bool,
) -> (Group, Group) {
    let (mut with, mut without) = (Group::default(), Group::default());
    for o in outcomes {
        if condition(o) {
            with.add(o.delta, o.successful);
        } else {
            without.add(o.delta, o.successful);
        }
    }
    (with, without)
}

fn instances_covered(outcomes: &[&StrategyOutcome]) -> u32 {
    outcomes
        .iter()
        .map(|o| o.instance_id.as_str())
        .collect::<BTreeSet<_>>()
        .len() as u32
}

/// Finds and validates insights in `outcomes` (any order; sorted by
/// sequence here) and `patterns`.
pub fn generate(
    outcomes: &[StrategyOutcome],
    patterns: &[&Pattern],
    settings: &GenerationSettings,
) -> Generation {
    let mut ordered: Vec<&StrategyOutcome> = outcomes.iter().collect();
    ordered.sort_by_key(|o| o.sequence);
    let mut by_pair: BTreeMap<(&str, &str), Vec<&StrategyOutcome>> = BTreeMap::new();
    for o in &ordered {
        by_pair
            .entry((o.strategy.as_str(), o.metric.as_str()))
            .or_default()
            .push(o);
    }
    let mut generation = Generation {
        outcomes_examined: ordered.len(),
        ..Default::default()
    };
    for ((strategy, metric), history) in &by_pair {
        if history.len() < settings.min_support {
            continue;
        }
        let cut = ((history.len() as f64) * settings.train_share) as usize;
        let (train, holdout) = history.split_at(cut);
        sequences(
            strategy,
            metric,
            history,
            train,
            holdout,
            settings,
            &mut generation,
        );
        context_effects(
            strategy,
            metric,
            history,
            train,
            holdout,
            settings,
            &mut generation,
        );
    }
    plateau_predictors(patterns, settings, &mut generation);
    generation
}

fn sequences(
    strategy: &str,
    metric: &str,
    history: &[&StrategyOutcome],
    train: &[&StrategyOutcome],
    holdout: &[&StrategyOutcome],
    settings: &GenerationSettings,
    generation: &mut Generation,
) {
    let before: BTreeSet<&str> = history
        .iter()
        .flat_map(|o| o.preceded_by.iter().map(String::as_str))
        .filter(|p| *p != strategy)
        .collect();
    for first in before {
        let has = |o: &StrategyOutcome| o.preceded_by.iter().any(|p| p == first);
        let (with, without) = split(train.iter().copied(), has);
        if with.n < settings.min_group || without.n < settings.min_group {
            continue;
        }
        let z = z_means(&with, &without);
        if z.abs() < settings.z_train {
            continue;
        }
        generation.candidates += 1;
        let (h_with, h_without) = split(holdout.iter().copied(), has);
        if h_with.n < settings.min_holdout_group
            || h_without.n < settings.min_holdout_group
            || z_means(&h_with, &h_without) * z.signum() < settings.z_holdout
        {
            continue;
        }
        let (all_with, all_without) = split(history.iter().copied(), has);
        let gain = all_with.mean() - all_without.mean();
        let helps = gain > 0.0;
        let relative = if all_without.mean().abs() > 1e-9 {
            format!(" ({:+.0}%)", 100.0 * gain / all_without.mean().abs())
        } else {
            String::new()
        };
        generation.validated.push(GeneratedInsight {
            draft: InsightDraft {
                category: if helps { InsightCategory::Sequence } else { InsightCategory::Fallback },
                title: if helps {
                    format!("{first} before {strategy} helps {metric}")
                } else {
                    format!("{first} before {strategy} hurts {metric}")
                },
                insight: format!(
                    "Applied within 3 cycles after {first}, {strategy} changes {metric} by {:+.3} on average against {:+.3} without it{relative}; success rate {:.0}% against {:.0}%. Held on the most recent {} outcomes.",
                    all_with.mean(),
                    all_without.mean(),
                    100.0 * all_with.rate(),
                    100.0 * all_without.rate(),
                    holdout.len()
                ),
                evidence: InsightEvidence {
                    data_points: history.len() as u64,
                    correlation_strength: correlation(&all_with, &all_without),
                    instances_covered: instances_covered(history),
                    improvement_observed: gain.clamp(-1.0, 1.0),
                },
                applicable_contexts: vec![],
                effectiveness: all_with.rate().clamp(0.0, 1.0),
                risk: (1.0 - all_with.rate()).clamp(0.0, 1.0),
                recommendation: if helps {
                    format!("apply {first} before {strategy} for {metric}")
                } else {
                    format!("avoid {strategy} right after {first} for {metric}")
                },
                alternatives: vec![],
                valid_until: None,
            },
        });
    }
}

fn context_effects(
    strategy: &str,
    metric: &str,
    history: &[&StrategyOutcome],
    train: &[&StrategyOutcome],
    holdout: &[&StrategyOutcome],
    settings: &GenerationSettings,
    generation: &mut Generation,
) {
    let attributes: BTreeSet<(&str, &str)> = history
        .iter()
        .flat_map(|o| o.context.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    for (key, value) in attributes {
        let has = |o: &StrategyOutcome| o.context.get(key).is_some_and(|v| v == value);
        let (with, without) = split(train.iter().copied(), has);
        if with.n < settings.min_group || without.n < settings.min_group {
            continue;
        }
        let z = z_rates(&with, &without);
        if z.abs() < settings.z_train {
            continue;
        }
        generation.candidates += 1;
        let (h_with, h_without) = split(holdout.iter().copied(), has);
        if h_with.n < settings.min_holdout_group
            || h_without.n < settings.min_holdout_group
            || z_rates(&h_with, &h_without) * z.signum() < settings.z_holdout
        {
            continue;
        }
        let (all_with, all_without) = split(history.iter().copied(), has);
        let better = all_with.rate() > all_without.rate();
        // Context names follow the hub's name rule; other characters of
        // free-form attribute values become '_'.
        let context_name: String = format!("{key}:{value}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(crate::validate::MAX_NAME_LEN)
            .collect();
        generation.validated.push(GeneratedInsight {
            draft: InsightDraft {
                category: InsightCategory::Context,
                title: format!(
                    "{strategy} on {metric} works {} under {key}={value}",
                    if better { "better" } else { "worse" }
                ),
                insight: format!(
                    "Under {key}={value}, {strategy} succeeds on {metric} {:.0}% of the time (mean change {:+.3}) against {:.0}% ({:+.3}) elsewhere. Held on the most recent {} outcomes.",
                    100.0 * all_with.rate(),
                    all_with.mean(),
                    100.0 * all_without.rate(),
                    all_without.mean(),
                    holdout.len()
                ),
                evidence: InsightEvidence {
                    data_points: history.len() as u64,
                    correlation_strength: correlation(&all_with, &all_without),
                    instances_covered: instances_covered(history),
                    improvement_observed: (all_with.mean() - all_without.mean()).clamp(-1.0, 1.0),
                },
                applicable_contexts: vec![ApplicableContext {
                    context: context_name,
                    threshold: format!("{key}={value}"),
                }],
                effectiveness: all_with.rate().clamp(0.0, 1.0),
                risk: (1.0 - all_with.rate()).clamp(0.0, 1.0),
                recommendation: if better {
                    format!("prefer {strategy} for {metric} under {key}={value}")
                } else {
                    format!("avoid {strategy} for {metric} under {key}={value}")
                },
                alternatives: vec![],
                valid_until: None,
            },
        });
    }
}

/// One pattern's plateau of one metric.
struct Plateau<'p> {
    first_seen: UnixMillis,
    value: f64,
    frequency: u64,
    instances: &'p BTreeSet<String>,
}

/// Half-width of the value band a plateau predictor claims.
const PREDICTOR_BAND: f64 = 0.1;

fn plateau_predictors(
    patterns: &[&Pattern],
    settings: &GenerationSettings,
    generation: &mut Generation,
) {
    // Plateaus of each (environment, stuck metric), oldest first.
    let mut plateaus: BTreeMap<(String, &str), Vec<Plateau>> = BTreeMap::new();
    for pattern in patterns {
        let environment = context_key(&pattern.environment);
        for (metric, state) in &pattern.metrics {
            if state.stuck {
                plateaus
                    .entry((environment.clone(), metric.as_str()))
                    .or_default()
                    .push(Plateau {
                        first_seen: pattern.first_seen,
                        value: state.value,
                        frequency: pattern.frequency,
                        instances: &pattern.instances,
                    });
            }
        }
    }
    for ((environment, metric), mut seen) in plateaus {
        let support: u64 = seen.iter().map(|s| s.frequency).sum();
        if (support as usize) < settings.min_support {
            continue;
        }
        seen.sort_by(|a, b| {
            a.first_seen
                .cmp(&b.first_seen)
                .then(a.value.total_cmp(&b.value))
        });
        let cut = ((seen.len() as f64) * settings.train_share) as usize;
        let (train, holdout) = seen.split_at(cut);
        let weight: f64 = train.iter().map(|s| s.frequency as f64).sum();
        if weight <= 0.0 || holdout.is_empty() {
            continue;
        }
        let centre = train
            .iter()
            .map(|s| s.value * s.frequency as f64)
            .sum::<f64>()
            / weight;
        generation.candidates += 1;
        let held: f64 = holdout.iter().map(|s| s.frequency as f64).sum();
        let hits: f64 = holdout
            .iter()
            .filter(|s| (s.value - centre).abs() <= PREDICTOR_BAND)
            .map(|s| s.frequency as f64)
            .sum();
        let accuracy = hits / held;
        if accuracy < settings.min_prediction_accuracy {
            continue;
        }
        let where_ = if environment.is_empty() {
            "across the fleet".to_string()
        } else {
            format!("under {environment}")
        };
        generation.validated.push(GeneratedInsight {
            draft: InsightDraft {
                category: InsightCategory::Prediction,
                title: format!("{metric} plateaus near {centre:.2} {where_}"),
                insight: format!(
                    "{metric} has plateaued within ±{PREDICTOR_BAND} of {centre:.2} {where_}: a metric approaching that value is about to plateau. The prediction held for {:.0}% of the most recent plateaus.",
                    100.0 * accuracy
                ),
                evidence: InsightEvidence {
                    data_points: support,
                    correlation_strength: 0.0,
                    instances_covered: seen
                        .iter()
                        .flat_map(|s| s.instances.iter())
                        .collect::<BTreeSet<_>>()
                        .len() as u32,
                    improvement_observed: 0.0,
                },
                applicable_contexts: vec![],
                effectiveness: accuracy.clamp(0.0, 1.0),
                risk: (1.0 - accuracy).clamp(0.0, 1.0),
                recommendation: format!(
                    "prepare a plateau strategy for {metric} as it nears {centre:.2}"
                ),
                alternatives: vec![],
                valid_until: None,
            },
        });
    }
}
