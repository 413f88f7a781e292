//! Federated models: how the hub turns instances' weight updates into a
//! versioned global model, without ever seeing their data.
//!
//! Aggregation is asynchronous and buffered, in the manner of FedBuff:
//! instances train whenever they like on the version they last fetched
//! and send the change of the weights (a *delta*) against it. The hub
//! keeps one pending delta per instance — a newer one replaces the older,
//! so one instance is one voice per version — and once `buffer_size`
//! distinct instances are waiting it aggregates them into the next
//! version. A delta trained on an older version counts less (its staleness
//! τ, in versions, scales it by `1/sqrt(1+τ)`) and is refused past
//! `max_staleness`.
//!
//! Every delta is first clipped to `clip_norm` (L2), which bounds what one
//! instance can move the model by: at most `server_learning_rate ×
//! clip_norm` per version with FedAvg over one update, and under the robust
//! rules less, since they ignore the extremes of each coordinate:
//! - `TrimmedMean` drops the `trim_fraction` largest and smallest values of
//!   each coordinate and averages the rest;
//! - `Median` takes each coordinate's median;
//! - `FedAvg` is the example-weighted mean, for comparison (examples are
//!   self-declared, so their weight is capped at `max_example_weight`).
//!
//! All of it is pure and deterministic: pending updates are kept in
//! instance order and coordinates are sorted with a total order, so every
//! replica that folds the same updates computes the same weights, bit for
//! bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::UnixMillis;

/// How updates are combined into a version.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    FedAvg,
    TrimmedMean,
    Median,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::FedAvg => "fedavg",
            Aggregation::TrimmedMean => "trimmed-mean",
            Aggregation::Median => "median",
        }
    }

    pub fn parse(name: &str) -> Option<Aggregation> {
        [
            Aggregation::FedAvg,
            Aggregation::TrimmedMean,
            Aggregation::Median,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// The rules an update is folded by, fixed in its command (hub settings
/// `model.*`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FederationRules {
    /// Weights of the model.
    pub dimension: usize,
    /// Distinct instances whose updates make a version.
    pub buffer_size: usize,
    pub aggregation: Aggregation,
    /// Share of each coordinate's values dropped at each end (trimmed mean).
    pub trim_fraction: f64,
    /// L2 norm every delta is clipped to.
    pub clip_norm: f64,
    /// Versions a delta's base may lag the model by.
    pub max_staleness: u64,
    /// The aggregated delta is added times this.
    pub server_learning_rate: f64,
    /// Examples an update may weigh at most (FedAvg).
    pub max_example_weight: u64,
}

impl Default for FederationRules {
    fn default() -> Self {
        FederationRules {
            dimension: 0,
            buffer_size: 5,
            // The simulator's poisoning measure (README): with 2 of 20
            // instances poisoning the same buffers, the median kept 95-102%
            // of the clean model's accuracy over the five scenarios, the
            // trimmed mean 77-92%, FedAvg 64-70%; clean, all three scored
            // alike.
            aggregation: Aggregation::Median,
            trim_fraction: 0.2,
            clip_norm: 5.0,
            max_staleness: 8,
            server_learning_rate: 1.0,
            max_example_weight: 1000,
        }
    }
}

/// How a version of the model did on examples instances held out of
/// training, summed over their reports.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub examples: u64,
    /// Predictions on the right side of 0.5.
    pub correct: u64,
    /// Sum of the examples' log losses.
    pub log_loss: f64,
    /// Instances that reported.
    pub reports: u64,
}

impl Evaluation {
    pub fn accuracy(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.correct as f64 / self.examples as f64)
    }

    pub fn mean_log_loss(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.log_loss / self.examples as f64)
    }

    /// Both as one.
    fn plus(self, other: &Evaluation) -> Evaluation {
        Evaluation {
            examples: self.examples.saturating_add(other.examples),
            correct: self.correct.saturating_add(other.correct),
            log_loss: self.log_loss + other.log_loss,
            reports: self.reports.saturating_add(other.reports),
        }
    }
}

/// An instance's update, as validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    pub model: String,
    /// The version the delta was trained from.
    pub base_version: u64,
    pub delta: Vec<f64>,
    /// Examples it was trained on (self-declared).
    pub examples: u64,
    /// The base version evaluated on held-out examples, if reported.
    pub evaluation: Option<Evaluation>,
    /// The caller's registered context (its key), if any: where a context
    /// update goes, and where a fleet update's evaluation also counts.
    #[serde(default)]
    pub context: Option<String>,
    /// The update is for the context's model, not the fleet's.
    #[serde(default)]
    pub for_context: bool,
}

/// An update waiting for its version.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingUpdate {
    pub instance: String,
    pub base_version: u64,
    pub delta: Vec<f64>,
    pub examples: u64,
    pub received: UnixMillis,
}

/// Evaluations kept per model (the newest versions').
pub const EVALUATIONS_KEPT: usize = 8;

/// A federated model: its current weights and what waits to change them.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    /// 0 until the first aggregation (all weights zero).
    pub version: u64,
    pub weights: Vec<f64>,
    /// One per instance, in instance order.
    pub pending: Vec<PendingUpdate>,
    /// Updates aggregated into a version so far, per instance.
    pub contributors: BTreeMap<String, u64>,
    /// Distinct instances in the newest version's aggregation.
    pub last_round_instances: u64,
    /// The rule the newest version was aggregated with.
    pub last_aggregation: Option<Aggregation>,
    /// Held-out evaluations by the version evaluated.
    pub evaluations: BTreeMap<u64, Evaluation>,
    /// For a context's model: the fleet model's versions as this context's
    /// instances evaluated them, what [`context_share`] weighs its own
    /// evaluations against (empty for the fleet model).
    #[serde(default)]
    pub fleet_evaluations: BTreeMap<u64, Evaluation>,
    /// For a context's model: `evaluations` per version and instance —
    /// what [`ModelRecord::context_share`] takes one voice per instance
    /// from (empty for the fleet model, and in records from before).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evaluated_by: BTreeMap<u64, BTreeMap<String, Evaluation>>,
    /// For a context's model: `fleet_evaluations` per version and instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fleet_evaluated_by: BTreeMap<u64, BTreeMap<String, Evaluation>>,
    pub created: UnixMillis,
    pub updated: UnixMillis,
}

// Weights are finite (validated on the way in; clipping and staleness
// keep them so), which makes equality an equivalence: see
// `model::finite_records_are_eq` for what `Eq` buys the checkpoint diff.
impl Eq for ModelRecord {}

/// Why an update cannot be folded.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `delta` has the wrong number of weights.
    Shape { expected: usize, got: usize },
    /// `base_version` is newer than the model.
    FromTheFuture { version: u64 },
    /// `base_version` lags the model by more than the rules allow.
    TooStale { version: u64, max_staleness: u64 },
}

impl ModelRecord {
    pub fn new(name: &str, dimension: usize, now: UnixMillis) -> Self {
        ModelRecord {
            name: name.to_string(),
            version: 0,
            weights: vec![0.0; dimension],
            pending: Vec::new(),
            contributors: BTreeMap::new(),
            last_round_instances: 0,
            last_aggregation: None,
            evaluations: BTreeMap::new(),
            fleet_evaluations: BTreeMap::new(),
            evaluated_by: BTreeMap::new(),
            fleet_evaluated_by: BTreeMap::new(),
            created: now,
            updated: now,
        }
    }

    /// Takes `update` from `instance`; when it completes the buffer, the
    /// model moves to its next version, which is returned.
    pub fn accept(
        &mut self,
        instance: &str,
        update: &ModelUpdate,
        rules: &FederationRules,
        now: UnixMillis,
    ) -> Result<Option<u64>, Refusal> {
        self.accept_among(instance, update, rules, now, 0)
    }

    /// [`ModelRecord::accept`] for a fleet model that other regions train
    /// too. Instances train on every region's model summed
    /// ([`crate::digest::fleet_model`]), whose version is this record's
    /// plus `elsewhere` (the other regions' versions, summed): update bases
    /// and staleness are judged against that, and the version returned is
    /// on that scale. The record itself keeps only this region's steps.
    pub fn accept_among(
        &mut self,
        instance: &str,
        update: &ModelUpdate,
        rules: &FederationRules,
        now: UnixMillis,
        elsewhere: u64,
    ) -> Result<Option<u64>, Refusal> {
        let current = self.version.saturating_add(elsewhere);
        if update.delta.len() != self.weights.len() {
            return Err(Refusal::Shape {
                expected: self.weights.len(),
                got: update.delta.len(),
            });
        }
        if update.base_version > current {
            return Err(Refusal::FromTheFuture { version: current });
        }
        if current - update.base_version > rules.max_staleness {
            return Err(Refusal::TooStale {
                version: current,
                max_staleness: rules.max_staleness,
            });
        }
        self.updated = now;
        if let Some(reported) = update.evaluation {
            add_evaluation(&mut self.evaluations, update.base_version, &reported);
            if update.for_context {
                add_instance_evaluation(
                    &mut self.evaluated_by,
                    update.base_version,
                    instance,
                    &reported,
                );
            }
        }
        let pending = PendingUpdate {
            instance: instance.to_string(),
            base_version: update.base_version,
            delta: update.delta.clone(),
            examples: update.examples,
            received: now,
        };
        match self
            .pending
            .binary_search_by(|p| p.instance.as_str().cmp(instance))
        {
            Ok(i) => self.pending[i] = pending,
            Err(i) => self.pending.insert(i, pending),
        }
        if self.pending.len() < rules.buffer_size.max(1) {
            return Ok(None);
        }
        let step = aggregate(&self.pending, current, rules);
        for (w, d) in self.weights.iter_mut().zip(&step) {
            *w += rules.server_learning_rate * d;
        }
        for p in &self.pending {
            *self.contributors.entry(p.instance.clone()).or_default() += 1;
        }
        self.last_round_instances = self.pending.len() as u64;
        self.last_aggregation = Some(rules.aggregation);
        self.pending.clear();
        self.version += 1;
        Ok(Some(current + 1))
    }

    /// Whether `instance` has an update waiting or a voice in the share.
    pub fn involves(&self, instance: &str) -> bool {
        self.pending.iter().any(|p| p.instance == instance)
            || self
                .evaluated_by
                .values()
                .any(|by| by.contains_key(instance))
            || self
                .fleet_evaluated_by
                .values()
                .any(|by| by.contains_key(instance))
    }

    /// Takes `instance` out (a quarantine): its waiting update and its
    /// voice in the share. The summed evaluations keep its reports.
    pub fn forget(&mut self, instance: &str) {
        self.pending.retain(|p| p.instance != instance);
        for by in self
            .evaluated_by
            .values_mut()
            .chain(self.fleet_evaluated_by.values_mut())
        {
            by.remove(instance);
        }
    }

    /// The evaluations kept (the newest versions'), summed.
    pub fn recent_evaluation(&self) -> Evaluation {
        sum(self.evaluations.values())
    }

    /// For a context's model: records how one of its instances found the
    /// fleet model's `version` on its held-out examples.
    pub fn record_fleet_evaluation(&mut self, version: u64, instance: &str, reported: &Evaluation) {
        add_evaluation(&mut self.fleet_evaluations, version, reported);
        add_instance_evaluation(&mut self.fleet_evaluated_by, version, instance, reported);
    }

    /// For a context's model: its share in its instances' predictions.
    ///
    /// Evaluations are self-reported, so one instance must not decide it:
    /// each instance that evaluated both models on at least
    /// [`MIN_INSTANCE_EXAMPLES`] examples has its own [`gain_share`], and
    /// the share is their lower median, once the context's instances
    /// together evaluated each model on [`MIN_SHARE_EXAMPLES`] — and once
    /// two have a voice, where two or more evaluated at all. Among three
    /// or more voices one cannot move it past what the others found; of
    /// two, one can only lower it, towards the fleet model, which is where
    /// every context starts; an instance alone in its context decides for
    /// its context. (Summed, a million examples claimed by one instance
    /// outweighed everyone: `federated` tests.) Records from before
    /// evaluations were kept per instance use the sums. A model without a
    /// version (its weights a copy of the fleet's from when it began) has
    /// no share: PredictPlateau mixes in versions only.
    pub fn context_share(&self) -> f64 {
        if self.version == 0 {
            return 0.0;
        }
        let (own, fleet) = (
            self.recent_evaluation(),
            sum(self.fleet_evaluations.values()),
        );
        if self.evaluated_by.is_empty() && self.fleet_evaluated_by.is_empty() {
            return context_share(&own, &fleet);
        }
        if own.examples < MIN_SHARE_EXAMPLES || fleet.examples < MIN_SHARE_EXAMPLES {
            return 0.0;
        }
        let own = per_instance(&self.evaluated_by);
        let fleet = per_instance(&self.fleet_evaluated_by);
        let mut shares: Vec<f64> = own
            .iter()
            .filter_map(|(instance, own)| {
                let fleet = fleet.get(instance)?;
                (own.examples >= MIN_INSTANCE_EXAMPLES && fleet.examples >= MIN_INSTANCE_EXAMPLES)
                    .then(|| gain_share(own, fleet))
            })
            .collect();
        let evaluators = own
            .keys()
            .chain(fleet.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if shares.is_empty() || (evaluators >= 2 && shares.len() < 2) {
            return 0.0;
        }
        shares.sort_by(f64::total_cmp);
        shares[(shares.len() - 1) / 2]
    }
}

/// Held-out examples an instance must have evaluated each model on for its
/// view to count in a context model's share.
pub const MIN_INSTANCE_EXAMPLES: u64 = 20;

fn add_instance_evaluation(
    kept: &mut BTreeMap<u64, BTreeMap<String, Evaluation>>,
    version: u64,
    instance: &str,
    reported: &Evaluation,
) {
    let by = kept.entry(version).or_default();
    add_evaluation_to(by.entry(instance.to_string()).or_default(), reported);
    while kept.len() > EVALUATIONS_KEPT {
        kept.pop_first();
    }
}

/// Each instance's evaluations over the versions kept, summed.
fn per_instance(kept: &BTreeMap<u64, BTreeMap<String, Evaluation>>) -> BTreeMap<&str, Evaluation> {
    let mut per: BTreeMap<&str, Evaluation> = BTreeMap::new();
    for (instance, eval) in kept.values().flatten() {
        let sum = per.entry(instance.as_str()).or_default();
        *sum = sum.plus(eval);
    }
    per
}

fn add_evaluation(kept: &mut BTreeMap<u64, Evaluation>, version: u64, reported: &Evaluation) {
    add_evaluation_to(kept.entry(version).or_default(), reported);
    while kept.len() > EVALUATIONS_KEPT {
        kept.pop_first();
    }
}

fn add_evaluation_to(eval: &mut Evaluation, reported: &Evaluation) {
    eval.examples = eval.examples.saturating_add(reported.examples);
    eval.correct = eval.correct.saturating_add(reported.correct);
    eval.log_loss += reported.log_loss;
    eval.reports = eval.reports.saturating_add(1);
}

fn sum<'a>(evaluations: impl Iterator<Item = &'a Evaluation>) -> Evaluation {
    evaluations.fold(Evaluation::default(), |a, e| a.plus(e))
}

/// Held-out examples a context's model and the fleet model each need
/// evaluated on the context's instances before the context model counts.
pub const MIN_SHARE_EXAMPLES: u64 = 50;
/// The context model counts fully once its mean held-out log loss is this
/// share below the fleet model's.
pub const FULL_SHARE_GAIN: f64 = 0.1;

/// How much a context's own model weighs in its instances' predictions
/// (`plateau::predict_personal`), from held-out evaluations by the
/// context's instances: 0 until both models have [`MIN_SHARE_EXAMPLES`]
/// and while the context model's mean log loss is not below the fleet
/// model's, rising linearly to 1 at [`FULL_SHARE_GAIN`] below it. A
/// context model is trained on fewer instances, so it has to show it
/// predicts its context better; in the simulator's scenarios, where
/// plateaus look alike in every context, it mostly does not.
pub fn context_share(own: &Evaluation, fleet: &Evaluation) -> f64 {
    if own.examples < MIN_SHARE_EXAMPLES || fleet.examples < MIN_SHARE_EXAMPLES {
        return 0.0;
    }
    gain_share(own, fleet)
}

/// [`context_share`] without its minimum of examples: 0 while the context
/// model's mean log loss is not below the fleet model's, 1 from
/// [`FULL_SHARE_GAIN`] below, linear in between.
pub fn gain_share(own: &Evaluation, fleet: &Evaluation) -> f64 {
    let (Some(own), Some(fleet)) = (own.mean_log_loss(), fleet.mean_log_loss()) else {
        return 0.0;
    };
    if fleet <= 0.0 {
        return 0.0;
    }
    ((fleet - own) / (fleet * FULL_SHARE_GAIN)).clamp(0.0, 1.0)
}

/// The name a context's model is kept under: `plateau@provider=gpt;…`.
pub fn context_model_name(model: &str, context_key: &str) -> String {
    format!("{model}@{context_key}")
}

impl ModelRecord {
    /// The model's name without its context (`plateau@…` → `plateau`).
    pub fn base_name(&self) -> &str {
        self.name
            .split_once('@')
            .map_or(&self.name, |(base, _)| base)
    }
}

/// `delta` scaled down to L2 norm `max` if it is longer.
pub fn clip(delta: &[f64], max: f64) -> Vec<f64> {
    let norm = l2_norm(delta);
    if norm <= max || norm == 0.0 {
        return delta.to_vec();
    }
    let scale = max / norm;
    delta.iter().map(|d| d * scale).collect()
}

pub fn l2_norm(values: &[f64]) -> f64 {
    values.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// The weight of a delta trained `staleness` versions ago.
pub fn staleness_weight(staleness: u64) -> f64 {
    1.0 / (1.0 + staleness as f64).sqrt()
}

/// The combined step of `pending` (the model at `version`): each delta
/// clipped and scaled by its staleness weight, then combined by the rule.
pub fn aggregate(pending: &[PendingUpdate], version: u64, rules: &FederationRules) -> Vec<f64> {
    let dimension = pending.first().map_or(0, |p| p.delta.len());
    if pending.is_empty() {
        return Vec::new();
    }
    let scaled: Vec<Vec<f64>> = pending
        .iter()
        .map(|p| {
            let s = staleness_weight(version.saturating_sub(p.base_version));
            clip(&p.delta, rules.clip_norm)
                .into_iter()
                .map(|d| d * s)
                .collect()
        })
        .collect();
    match rules.aggregation {
        Aggregation::FedAvg => {
            let weights: Vec<f64> = pending
                .iter()
                .map(|p| p.examples.clamp(1, rules.max_example_weight.max(1)) as f64)
                .collect();
            let total: f64 = weights.iter().sum();
            (0..dimension)
                .map(|i| {
                    scaled
                        .iter()
                        .zip(&weights)
                        .map(|(d, w)| d[i] * w)
                        .sum::<f64>()
                        / total
                })
                .collect()
        }
        Aggregation::TrimmedMean | Aggregation::Median => (0..dimension)
            .map(|i| {
                let mut column: Vec<f64> = scaled.iter().map(|d| d[i]).collect();
                column.sort_by(f64::total_cmp);
                if rules.aggregation == Aggregation::Median {
                    median(&column)
                } else {
                    trimmed_mean(&column, rules.trim_fraction)
                }
            })
            .collect(),
    }
}

/// The median of sorted values (the mean of the middle two for an even
/// count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The mean of sorted values without the `floor(fraction × n)` smallest
/// and largest (but always at least one value).
fn trimmed_mean(sorted: &[f64], fraction: f64) -> f64 {
    let n = sorted.len();
    let mut k = (fraction.clamp(0.0, 0.5) * n as f64).floor() as usize;
    if 2 * k >= n {
        k = (n - 1) / 2;
    }
    let kept = &sorted[k..n - k];
    kept.iter().sum::<f64>() / kept.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(instance: &str, base: u64, delta: &[f64], examples: u64) -> PendingUpdate {
        PendingUpdate {
            instance: instance.into(),
            base_version: base,
            delta: delta.to_vec(),
            examples,
            received: 0,
        }
    }

    /// How an instance found both models: `examples` held-out examples
    /// at a mean log loss of `own` (the context model) and `fleet`.
    fn evaluate(record: &mut ModelRecord, instance: &str, examples: u64, own: f64, fleet: f64) {
        let eval = |loss: f64| Evaluation {
            examples,
            correct: examples / 2,
            log_loss: loss * examples as f64,
            reports: 1,
        };
        let update = ModelUpdate {
            model: "plateau".into(),
            base_version: record.version,
            delta: vec![0.0; 2],
            examples: 10,
            evaluation: Some(eval(own)),
            context: Some("c".into()),
            for_context: true,
        };
        let rules = FederationRules {
            buffer_size: 100,
            ..rules(Aggregation::Median)
        };
        record.accept(instance, &update, &rules, 0).unwrap();
        record.record_fleet_evaluation(0, instance, &eval(fleet));
    }

    #[test]
    fn one_instance_cannot_decide_a_context_models_share() {
        // Three instances find the context model a little worse.
        let honest = |record: &mut ModelRecord| {
            for i in ["h1", "h2", "h3"] {
                evaluate(record, i, 40, 0.52, 0.50);
            }
        };
        let mut record = fresh();
        honest(&mut record);
        assert_eq!(record.context_share(), 0.0);
        // One claims a million examples on which it is perfect.
        evaluate(&mut record, "liar", 1_000_000, 0.0, 0.69);
        let summed = context_share(
            &record.recent_evaluation(),
            &sum(record.fleet_evaluations.values()),
        );
        assert_eq!(summed, 1.0, "summed, the liar decided");
        assert_eq!(record.context_share(), 0.0);
        // Where the context model is better, a liar cannot take it away
        // either, among three.
        let mut record = fresh();
        for i in ["h1", "h2", "h3"] {
            evaluate(&mut record, i, 40, 0.40, 0.50);
        }
        assert_eq!(record.context_share(), 1.0);
        evaluate(&mut record, "liar", 1_000_000, 0.69, 0.0);
        assert_eq!(record.context_share(), 1.0);
        // Of two, it can only lower the share.
        let mut record = fresh();
        evaluate(&mut record, "h1", 60, 0.52, 0.50);
        evaluate(&mut record, "liar", 1_000_000, 0.0, 0.69);
        assert_eq!(record.context_share(), 0.0);
        // A liar cannot be the only voice where others evaluated too…
        let mut record = fresh();
        evaluate(&mut record, "h1", MIN_INSTANCE_EXAMPLES - 1, 0.52, 0.50);
        evaluate(&mut record, "liar", 1_000_000, 0.0, 0.69);
        assert_eq!(record.context_share(), 0.0);
        // …and its voice goes with a quarantine.
        let mut record = fresh();
        evaluate(&mut record, "h1", 60, 0.40, 0.50);
        evaluate(&mut record, "liar", 1_000_000, 0.69, 0.0);
        assert_eq!(record.context_share(), 0.0, "of two, the lower");
        assert!(record.involves("liar"));
        record.forget("liar");
        assert!(!record.involves("liar"));
        assert_eq!(record.context_share(), 1.0);
        // An instance alone in its context decides for its context.
        let mut record = fresh();
        evaluate(&mut record, "h1", 60, 0.40, 0.50);
        assert_eq!(record.context_share(), 1.0);
        // A model without a version has no share.
        record.version = 0;
        assert_eq!(record.context_share(), 0.0);
    }

    /// A context model with a version, as the share needs.
    fn fresh() -> ModelRecord {
        let mut record = ModelRecord::new("plateau@c", 2, 0);
        record.version = 1;
        record
    }

    fn rules(aggregation: Aggregation) -> FederationRules {
        FederationRules {
            dimension: 2,
            buffer_size: 3,
            aggregation,
            trim_fraction: 0.2,
            clip_norm: 10.0,
            ..FederationRules::default()
        }
    }

    /// Golden values, worked by hand: three fresh updates and one that
    /// pulls far away.
    #[test]
    fn the_rules_combine_known_updates_as_worked_by_hand() {
        let updates = [
            pending("a", 0, &[1.0, 0.0], 100),
            pending("b", 0, &[2.0, 1.0], 100),
            pending("c", 0, &[3.0, 2.0], 200),
            pending("evil", 0, &[9.0, -9.0], 1_000_000),
            pending("d", 0, &[4.0, 3.0], 100),
        ];
        let fedavg = rules(Aggregation::FedAvg);
        // Weights 100, 100, 200, 1000 (capped), 100 of 1500; "evil" has a
        // norm of 12.73, clipped to 10: (7.0711, -7.0711).
        let avg = aggregate(&updates, 0, &fedavg);
        let e = 10.0 / (162.0f64).sqrt() * 9.0;
        let x = (100.0 + 200.0 + 600.0 + 1000.0 * e + 400.0) / 1500.0;
        let y = (0.0 + 100.0 + 400.0 - 1000.0 * e + 300.0) / 1500.0;
        assert!(
            (avg[0] - x).abs() < 1e-12 && (avg[1] - y).abs() < 1e-12,
            "{avg:?}"
        );
        // Trimmed mean, 5 values, 20%: drop one at each end.
        // x: 1, 2, 3, 4, 7.07 -> mean of 2, 3, 4 = 3; y: -7.07, 0, 1, 2, 3 -> 1.
        let trimmed = aggregate(&updates, 0, &rules(Aggregation::TrimmedMean));
        assert!((trimmed[0] - 3.0).abs() < 1e-12 && (trimmed[1] - 1.0).abs() < 1e-12);
        let median = aggregate(&updates, 0, &rules(Aggregation::Median));
        assert_eq!(median, vec![3.0, 1.0]);
    }

    #[test]
    fn stale_updates_count_less_and_clipping_bounds_them() {
        // Staleness 3 halves a delta: 1/sqrt(4).
        let updates = [pending("a", 1, &[2.0, 0.0], 1)];
        assert_eq!(
            aggregate(&updates, 4, &rules(Aggregation::FedAvg)),
            vec![1.0, 0.0]
        );
        let clipped = clip(&[3.0, 4.0], 1.0);
        assert!((clipped[0] - 0.6).abs() < 1e-12 && (clipped[1] - 0.8).abs() < 1e-12);
        assert_eq!(clip(&[0.3, 0.4], 1.0), vec![0.3, 0.4]);
        assert_eq!(trimmed_mean(&[1.0, 2.0], 0.5), 1.5);
        assert_eq!(median(&[1.0, 2.0, 10.0, 11.0]), 6.0);
    }

    #[test]
    fn a_version_needs_distinct_instances_and_checks_its_base() {
        let rules = rules(Aggregation::Median);
        let mut model = ModelRecord::new("plateau", 2, 0);
        let update = |base, delta: [f64; 2]| ModelUpdate {
            model: "plateau".into(),
            base_version: base,
            delta: delta.to_vec(),
            examples: 10,
            evaluation: Some(Evaluation {
                examples: 10,
                correct: 7,
                log_loss: 5.0,
                reports: 0,
            }),
            context: None,
            for_context: false,
        };
        assert_eq!(
            model.accept("a", &update(0, [1.0, 1.0]), &rules, 1),
            Ok(None)
        );
        // The same instance again replaces its update: still one voice.
        assert_eq!(
            model.accept("a", &update(0, [2.0, 2.0]), &rules, 2),
            Ok(None)
        );
        assert_eq!(model.pending.len(), 1);
        assert_eq!(
            model.accept("b", &update(0, [4.0, 4.0]), &rules, 3),
            Ok(None)
        );
        assert_eq!(
            model.accept("c", &update(0, [6.0, 6.0]), &rules, 4),
            Ok(Some(1))
        );
        assert_eq!(model.weights, vec![4.0, 4.0]);
        assert!(model.pending.is_empty());
        assert_eq!(model.contributors.len(), 3);
        let eval = model.evaluations[&0];
        assert_eq!((eval.examples, eval.correct, eval.reports), (40, 28, 4));
        assert_eq!(eval.accuracy(), Some(0.7));
        assert_eq!(
            model.accept("a", &update(2, [0.0, 0.0]), &rules, 5),
            Err(Refusal::FromTheFuture { version: 1 })
        );
        let wrong = ModelUpdate {
            delta: vec![1.0],
            ..update(1, [0.0, 0.0])
        };
        assert_eq!(
            model.accept("a", &wrong, &rules, 5),
            Err(Refusal::Shape {
                expected: 2,
                got: 1
            })
        );
        model.version = 20;
        assert_eq!(
            model.accept("a", &update(11, [0.0, 0.0]), &rules, 5),
            Err(Refusal::TooStale {
                version: 20,
                max_staleness: 8
            })
        );
    }

    #[test]
    fn one_instance_moves_a_robust_model_by_at_most_its_clipped_share() {
        // Four honest instances agree on (0.1, 0.1); one sends a huge delta.
        let mut updates: Vec<PendingUpdate> = ["a", "b", "c", "d"]
            .iter()
            .map(|i| pending(i, 0, &[0.1, 0.1], 10))
            .collect();
        updates.push(pending("evil", 0, &[1e6, -1e6], 10));
        let mut rules = rules(Aggregation::TrimmedMean);
        rules.clip_norm = 2.0;
        for aggregation in [Aggregation::TrimmedMean, Aggregation::Median] {
            rules.aggregation = aggregation;
            let step = aggregate(&updates, 0, &rules);
            assert!(step.iter().all(|s| (s - 0.1).abs() < 1e-12), "{step:?}");
        }
        rules.aggregation = Aggregation::FedAvg;
        let step = aggregate(&updates, 0, &rules);
        // FedAvg is moved, but by at most clip_norm / 5 per coordinate.
        assert!(
            step.iter().all(|s| (s - 0.1).abs() <= 2.0 / 5.0 + 0.02),
            "{step:?}"
        );
    }
}
