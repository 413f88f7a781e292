//! The hub's records as plain Rust values: what is stored, independent of
//! the wire format (prost types live in `api`, conversions in
//! `api::convert`). Each record knows how to fold a new observation into
//! itself; those updates are pure so they are tested without I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::stats::{RunningStats, laplace_rate, ratio};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Free-form attributes (instance context, pattern environment), sorted so
/// their canonical form is stable.
pub type Attributes = BTreeMap<String, String>;

/// The canonical form of a context: sorted `key=value` pairs joined by `;`.
/// Two maps with the same entries always give the same key.
pub fn context_key(context: &Attributes) -> String {
    let mut key = String::new();
    for (i, (k, v)) in context.iter().enumerate() {
        if i > 0 {
            key.push(';');
        }
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// Hex of the first 8 bytes of SHA-256: short stable ids for records whose
/// identity is their content (patterns, failures, configurations).
pub fn content_id(prefix: &str, content: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, content.as_bytes());
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('_');
    for byte in &digest.as_ref()[..8] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// A strategy an instance applied shortly before something it reports or
/// asks about.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentApplication {
    pub strategy: String,
    pub metric: String,
    /// Cycles before the current one (1 = the previous cycle).
    pub cycles_ago: u32,
}

/// Strategies applied within this many cycles before another count as
/// having preceded it (prerequisites, conflicts).
pub const PRECEDING_WINDOW: u32 = 3;

/// How many times in a row `strategy` was applied to `metric` just before
/// now: the leading run of `recent` (newest first, other metrics skipped).
pub fn streak(recent: &[RecentApplication], strategy: &str, metric: &str) -> u32 {
    recent
        .iter()
        .filter(|r| r.metric == metric)
        .take_while(|r| r.strategy == strategy)
        .count() as u32
}

/// The distinct strategies applied within [`PRECEDING_WINDOW`] cycles, in
/// name order.
pub fn preceding(recent: &[RecentApplication]) -> Vec<String> {
    let mut names: Vec<String> = recent
        .iter()
        .filter(|r| r.cycles_ago <= PRECEDING_WINDOW)
        .map(|r| r.strategy.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One metric's state.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricState {
    pub value: f64,
    pub stuck: bool,
}

/// Metric states by metric name.
pub type Metrics = BTreeMap<String, MetricState>;

// ---------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------

/// A registered instance.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub context: Attributes,
    pub capabilities: Vec<String>,
    pub registered_at: UnixMillis,
    pub last_seen: UnixMillis,
    pub shared_records: u64,
}

/// What an instance sends to register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub instance_id: String,
    pub region: String,
    pub context: Attributes,
    pub capabilities: Vec<String>,
}

// ---------------------------------------------------------------------------
// Plateau patterns
// ---------------------------------------------------------------------------

/// What an instance shares about a plateau.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternShare {
    pub metrics: Metrics,
    pub cycles_until_plateau: u32,
    pub recovery_strategies: Vec<String>,
    pub environment: Attributes,
    /// The metric the recovery strategies got unstuck, if known.
    pub target_metric: Option<String>,
}

/// How one recovery strategy has fared for one pattern.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStat {
    /// Shares that listed the strategy as a recovery.
    pub suggested: u64,
    pub successes: u64,
    pub failures: u64,
}

impl RecoveryStat {
    pub fn success_rate(&self) -> f64 {
        laplace_rate(self.successes, self.successes.saturating_add(self.failures))
    }
}

/// A deduplicated plateau pattern.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    pub id: String,
    pub signature: String,
    /// The metric state as first shared.
    pub metrics: Metrics,
    pub cycles_until_plateau: RunningStats,
    pub recovery: BTreeMap<String, RecoveryStat>,
    /// Recovery statistics per unstuck metric: metric → strategy → stat.
    #[serde(default)]
    pub recovery_by_metric: BTreeMap<String, BTreeMap<String, RecoveryStat>>,
    pub successes: u64,
    pub failures: u64,
    pub environment: Attributes,
    pub instances: BTreeSet<String>,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    pub frequency: u64,
    /// Outcomes reported per instance: (reported, counted). An instance's
    /// count up to its share (see [`crate::influence::allowance`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcome_reports: BTreeMap<String, (u64, u64)>,
    /// Instances of other regions that shared it: only in the pattern as
    /// matching sees it ([`crate::knowledge::joined_pattern`]); 0 stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remote_reporters: u64,
    /// The log position of its last change: its version for other regions.
    #[serde(default)]
    pub changed_at: u64,
}

impl AsRef<Pattern> for Pattern {
    fn as_ref(&self) -> &Pattern {
        self
    }
}

impl Pattern {
    /// A new pattern from its first share.
    pub fn new(signature: String, share: &PatternShare, instance: &str, now: UnixMillis) -> Self {
        let mut pattern = Pattern {
            id: content_id("pattern", &signature),
            signature,
            metrics: share.metrics.clone(),
            cycles_until_plateau: RunningStats::default(),
            recovery: BTreeMap::new(),
            recovery_by_metric: BTreeMap::new(),
            successes: 0,
            failures: 0,
            environment: share.environment.clone(),
            instances: BTreeSet::new(),
            outcome_reports: BTreeMap::new(),
            remote_reporters: 0,
            changed_at: 0,
            first_seen: now,
            last_seen: now,
            frequency: 0,
        };
        pattern.record_share(share, instance, now);
        pattern
    }

    /// Folds one more share of the same signature into the pattern.
    pub fn record_share(&mut self, share: &PatternShare, instance: &str, now: UnixMillis) {
        self.frequency = self.frequency.saturating_add(1);
        self.last_seen = self.last_seen.max(now);
        self.instances.insert(instance.to_string());
        self.cycles_until_plateau
            .push(f64::from(share.cycles_until_plateau));
        for strategy in &share.recovery_strategies {
            let stat = self.recovery.entry(strategy.clone()).or_default();
            stat.suggested = stat.suggested.saturating_add(1);
            if let Some(metric) = &share.target_metric {
                let stat = self
                    .recovery_by_metric
                    .entry(metric.clone())
                    .or_default()
                    .entry(strategy.clone())
                    .or_default();
                stat.suggested = stat.suggested.saturating_add(1);
            }
        }
    }

    /// Records whether acting on the pattern worked, crediting `strategy`
    /// (for `metric`, when named) when the instance names the recovery it
    /// applied — if the reporting `instance` is within its share (see
    /// [`crate::influence::allowance`]). Returns whether it counted.
    pub fn record_outcome(
        &mut self,
        instance: &str,
        success: bool,
        strategy: Option<&str>,
        metric: Option<&str>,
        now: UnixMillis,
    ) -> bool {
        self.last_seen = self.last_seen.max(now);
        let others = self
            .outcome_reports
            .iter()
            .filter(|(id, _)| id.as_str() != instance)
            .fold(0u64, |a, (_, (reported, _))| a.saturating_add(*reported));
        let mine = self
            .outcome_reports
            .entry(instance.to_string())
            .or_default();
        mine.0 = mine.0.saturating_add(1);
        if mine.1 >= crate::influence::allowance(others) {
            return false;
        }
        mine.1 = mine.1.saturating_add(1);
        if success {
            self.successes = self.successes.saturating_add(1);
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        if let Some(strategy) = strategy {
            let credit = |stat: &mut RecoveryStat| {
                if success {
                    stat.successes = stat.successes.saturating_add(1);
                } else {
                    stat.failures = stat.failures.saturating_add(1);
                }
            };
            credit(self.recovery.entry(strategy.to_string()).or_default());
            if let Some(metric) = metric {
                credit(
                    self.recovery_by_metric
                        .entry(metric.to_string())
                        .or_default()
                        .entry(strategy.to_string())
                        .or_default(),
                );
            }
        }
        true
    }

    /// Recovery strategies, best first: by success rate, then by how often
    /// they were suggested, then by name (so the order is deterministic).
    pub fn ranked_recovery(&self) -> Vec<(&str, &RecoveryStat)> {
        let mut ranked: Vec<_> = self.recovery.iter().map(|(k, v)| (k.as_str(), v)).collect();
        ranked.sort_by(|a, b| {
            b.1.success_rate()
                .total_cmp(&a.1.success_rate())
                .then(b.1.suggested.cmp(&a.1.suggested))
                .then(a.0.cmp(b.0))
        });
        ranked
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// What an instance shares about one strategy application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyShare {
    pub strategy: String,
    pub metric: String,
    pub value_before: f64,
    pub successful: bool,
    pub delta: f64,
    pub condition: String,
    pub context: Attributes,
    pub recent: Vec<RecentApplication>,
}

/// One strategy application as the hub logs it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyOutcome {
    /// Position in the hub's outcome log.
    pub sequence: u64,
    pub at: UnixMillis,
    pub instance_id: String,
    pub strategy: String,
    pub metric: String,
    pub value_before: f64,
    pub successful: bool,
    pub delta: f64,
    pub condition: String,
    pub context: Attributes,
    /// Applications of this strategy to this metric immediately before.
    #[serde(default)]
    pub streak: u32,
    /// Strategies applied within [`PRECEDING_WINDOW`] cycles before.
    #[serde(default)]
    pub preceded_by: Vec<String>,
}

impl StrategyOutcome {
    /// The aggregate it folds into.
    pub fn key(&self) -> StrategyKey {
        StrategyKey::new(&self.metric, &self.strategy, &context_key(&self.context))
    }
}

/// Applications, successes and deltas of a set of outcomes.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeStats {
    pub applications: u64,
    pub successes: u64,
    /// Deltas of successful applications.
    pub improvement: RunningStats,
    /// Deltas of failed applications.
    pub regression: RunningStats,
}

impl OutcomeStats {
    pub fn record(&mut self, successful: bool, delta: f64) {
        self.applications = self.applications.saturating_add(1);
        if successful {
            self.successes = self.successes.saturating_add(1);
            self.improvement.push(delta);
        } else {
            self.regression.push(delta);
        }
    }

    pub fn merge(&self, other: &OutcomeStats) -> OutcomeStats {
        OutcomeStats {
            applications: self.applications.saturating_add(other.applications),
            successes: self.successes.saturating_add(other.successes),
            improvement: self.improvement.merge(&other.improvement),
            regression: self.regression.merge(&other.regression),
        }
    }
}

/// Bands of the metric value before an application; evidence is kept per
/// band so recommendations depend on where the metric is.
pub const VALUE_BANDS: usize = 5;

/// The band of a value in [0, 1].
pub fn value_band(value: f64) -> usize {
    ((value * VALUE_BANDS as f64) as usize).min(VALUE_BANDS - 1)
}

/// The value range of a band.
pub fn band_range(band: usize) -> (f64, f64) {
    let width = 1.0 / VALUE_BANDS as f64;
    (band as f64 * width, (band + 1) as f64 * width)
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The day (since the epoch) a time falls on.
pub fn day_of(at: UnixMillis) -> i64 {
    at.div_euclid(DAY_MS)
}

/// One day's outcomes of one aggregate, per value band.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DayBucket {
    pub day: i64,
    pub bands: [OutcomeStats; VALUE_BANDS],
}

/// Streaks are tracked as 0, 1, 2 and "3 or more" previous applications.
pub const STREAK_CLASSES: usize = 4;

/// Applications and failures under one reported condition.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConditionStats {
    pub applications: u64,
    pub failures: u64,
}

impl ConditionStats {
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.applications)
    }
}

/// A shared, immutable name (a metric, strategy, context key or instance
/// id) used as a map key in the state.
///
/// The state's maps are persistent: a write copies the tree nodes on its
/// path, keys included, once per group commit. With `String` keys every
/// copied key was an allocation and a copy (profiled: about a third of the
/// writer thread went to the allocator); an `Arc<str>` is a reference
/// count. It serializes as a plain string.
pub type Name = Arc<str>;

/// The key of a strategy aggregate. Ordered by metric first so every
/// aggregate for a metric is one contiguous range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StrategyKey {
    pub metric: Name,
    pub strategy: Name,
    pub context_key: Name,
}

impl StrategyKey {
    pub fn new(metric: &str, strategy: &str, context_key: &str) -> Self {
        StrategyKey {
            metric: metric.into(),
            strategy: strategy.into(),
            context_key: context_key.into(),
        }
    }
}

/// Every outcome of one strategy on one metric in one context, folded.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRecord {
    pub strategy: String,
    pub metric: String,
    pub context_key: String,
    pub applications: u64,
    pub successes: u64,
    /// Deltas of successful applications.
    pub improvement: RunningStats,
    /// Deltas of failed applications.
    pub regression: RunningStats,
    pub failure_modes: BTreeMap<String, ConditionStats>,
    /// What each instance reported (lifetime): the influence bounds and
    /// the anomaly detector compare an instance with the rest.
    pub instances: BTreeMap<String, InstanceShare>,
    pub first_seen: UnixMillis,
    pub last_updated: UnixMillis,
    /// Outcomes within the retention window, per day and value band: what
    /// recommendations are computed from.
    #[serde(default)]
    pub window: Vec<DayBucket>,
    /// Outcomes by streak class (0, 1, 2, 3+ previous applications in a row).
    #[serde(default)]
    pub streaks: Vec<OutcomeStats>,
    /// Outcomes by strategy applied within [`PRECEDING_WINDOW`] cycles before.
    #[serde(default)]
    pub preceded_by: BTreeMap<String, OutcomeStats>,
    /// The sequence of the newest outcome folded in. The store persists
    /// aggregates lazily and rebuilds them from the outcome log after a
    /// crash; this is how a replay knows which outcomes a stored aggregate
    /// already holds.
    #[serde(default)]
    pub through_sequence: u64,
    /// The log position of its last change (0: not since this was kept):
    /// the version other regions receive it at (see [`Self::version`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changed_at: u64,
    /// Outcomes of instances over their share (see [`crate::influence`]):
    /// counted only in the rankings their reporter asks for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub excess: BTreeMap<String, Excess>,
}

/// One instance's reports in an aggregate, lifetime.
///
/// Stored as `[applications, successes, delta_sum]`, or with a fourth
/// element, `untracked`: applications folded before successes and deltas
/// were kept per instance (a record written then holds only the count).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ShareRepr", into = "ShareRepr")]
pub struct InstanceShare {
    pub applications: u64,
    /// Successes among the tracked applications.
    pub successes: u64,
    /// Sum of the tracked applications' deltas (successes and failures).
    pub delta_sum: f64,
    /// Applications without success or delta on record.
    pub untracked: u64,
}

impl InstanceShare {
    fn record(&mut self, successful: bool, delta: f64) {
        self.applications = self.applications.saturating_add(1);
        if successful {
            self.successes = self.successes.saturating_add(1);
        }
        self.delta_sum += delta;
    }

    fn absorb(&mut self, other: &InstanceShare) {
        self.applications = self.applications.saturating_add(other.applications);
        self.successes = self.successes.saturating_add(other.successes);
        self.delta_sum += other.delta_sum;
        self.untracked = self.untracked.saturating_add(other.untracked);
    }

    /// Applications whose success and delta are on record.
    pub fn tracked(&self) -> u64 {
        self.applications.saturating_sub(self.untracked)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ShareRepr {
    Legacy(u64, u64, f64, u64),
    Full(u64, u64, f64),
    Count(u64),
}

impl From<ShareRepr> for InstanceShare {
    fn from(repr: ShareRepr) -> Self {
        let (applications, successes, delta_sum, untracked) = match repr {
            ShareRepr::Legacy(a, s, d, u) => (a, s, d, u),
            ShareRepr::Full(a, s, d) => (a, s, d, 0),
            ShareRepr::Count(a) => (a, 0, 0.0, a),
        };
        InstanceShare {
            applications,
            successes,
            delta_sum,
            untracked,
        }
    }
}

impl From<InstanceShare> for ShareRepr {
    fn from(share: InstanceShare) -> Self {
        let InstanceShare {
            applications,
            successes,
            delta_sum,
            untracked,
        } = share;
        if untracked == 0 {
            ShareRepr::Full(applications, successes, delta_sum)
        } else {
            ShareRepr::Legacy(applications, successes, delta_sum, untracked)
        }
    }
}

/// One instance's outcomes in an aggregate beyond what counts for the
/// fleet.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Excess {
    /// Every outcome ever set aside (the window forgets old days).
    pub reports: u64,
    /// Those within the retention window, as in [`StrategyRecord::window`].
    pub window: Vec<DayBucket>,
}

/// Adds one outcome to a window of day buckets, dropping days older than
/// `retention_days`.
fn add_to_window(window: &mut Vec<DayBucket>, outcome: &StrategyOutcome, retention_days: i64) {
    let day = day_of(outcome.at);
    window.retain(|b| b.day > day - retention_days);
    let i = match window.iter().position(|b| b.day == day) {
        Some(i) => i,
        None => {
            window.push(DayBucket {
                day,
                bands: [OutcomeStats::default(); VALUE_BANDS],
            });
            window.sort_by_key(|b| b.day);
            window
                .iter()
                .position(|b| b.day == day)
                .expect("just inserted")
        }
    };
    window[i].bands[value_band(outcome.value_before)].record(outcome.successful, outcome.delta);
}

/// Merges `other`'s day buckets into `window`.
pub(crate) fn merge_windows(window: &mut Vec<DayBucket>, other: &[DayBucket]) {
    for bucket in other {
        match window.iter_mut().find(|b| b.day == bucket.day) {
            Some(mine) => {
                for (a, b) in mine.bands.iter_mut().zip(&bucket.bands) {
                    *a = a.merge(b);
                }
            }
            None => window.push(*bucket),
        }
    }
    window.sort_by_key(|b| b.day);
}

impl StrategyRecord {
    /// An empty aggregate for `key`.
    pub fn empty(key: &StrategyKey, now: UnixMillis) -> Self {
        StrategyRecord {
            strategy: key.strategy.to_string(),
            metric: key.metric.to_string(),
            context_key: key.context_key.to_string(),
            applications: 0,
            successes: 0,
            improvement: RunningStats::default(),
            regression: RunningStats::default(),
            failure_modes: BTreeMap::new(),
            instances: BTreeMap::new(),
            first_seen: now,
            last_updated: now,
            window: Vec::new(),
            streaks: Vec::new(),
            preceded_by: BTreeMap::new(),
            through_sequence: 0,
            changed_at: 0,
            excess: BTreeMap::new(),
        }
    }

    /// Outcomes of `instance` that count for the fleet.
    pub fn counted(&self, instance: &str) -> u64 {
        let all = self.instances.get(instance).map_or(0, |s| s.applications);
        all.saturating_sub(self.excess.get(instance).map_or(0, |e| e.reports))
    }

    /// How many of `instance`'s outcomes may count for the fleet, given
    /// the other instances' reports (see [`crate::influence::allowance`]).
    pub fn allowance(&self, instance: &str) -> u64 {
        let others = self
            .instances
            .iter()
            .filter(|(id, _)| id.as_str() != instance)
            .fold(0u64, |a, (_, s)| a.saturating_add(s.applications));
        crate::influence::allowance(others)
    }

    /// The version other regions receive it at: the log position of its
    /// last change, or, for an aggregate last changed before positions
    /// were kept, its last outcome's sequence (never above that position).
    pub fn version(&self) -> u64 {
        if self.changed_at > 0 {
            self.changed_at
        } else {
            self.through_sequence
        }
    }

    pub fn key(&self) -> StrategyKey {
        StrategyKey::new(&self.metric, &self.strategy, &self.context_key)
    }

    /// Folds one outcome into the aggregate, keeping `retention_days` days
    /// of windowed evidence.
    pub fn record(&mut self, outcome: &StrategyOutcome, retention_days: i64) {
        let own = self.counted(&outcome.instance_id);
        let admitted = own < self.allowance(&outcome.instance_id);
        if admitted {
            add_to_window(&mut self.window, outcome, retention_days);
        } else {
            let excess = self.excess.entry(outcome.instance_id.clone()).or_default();
            excess.reports = excess.reports.saturating_add(1);
            add_to_window(&mut excess.window, outcome, retention_days);
        }
        let class = (outcome.streak as usize).min(STREAK_CLASSES - 1);
        if self.streaks.len() < STREAK_CLASSES {
            self.streaks.resize(STREAK_CLASSES, OutcomeStats::default());
        }
        self.streaks[class].record(outcome.successful, outcome.delta);
        for p in &outcome.preceded_by {
            self.preceded_by
                .entry(p.clone())
                .or_default()
                .record(outcome.successful, outcome.delta);
        }
        self.applications = self.applications.saturating_add(1);
        if outcome.successful {
            self.successes = self.successes.saturating_add(1);
            self.improvement.push(outcome.delta);
        } else {
            self.regression.push(outcome.delta);
        }
        if !outcome.condition.is_empty() {
            let mode = self
                .failure_modes
                .entry(outcome.condition.clone())
                .or_default();
            mode.applications = mode.applications.saturating_add(1);
            if !outcome.successful {
                mode.failures = mode.failures.saturating_add(1);
            }
        }
        self.instances
            .entry(outcome.instance_id.clone())
            .or_default()
            .record(outcome.successful, outcome.delta);
        self.last_updated = self.last_updated.max(outcome.at);
        self.through_sequence = self.through_sequence.max(outcome.sequence);
        if admitted {
            // Another counted report may make room for others' excess.
            self.readmit();
        }
    }

    /// Counts in full the excess of every instance whose outcomes now all
    /// fit its share: an instance that reported alone before others joined
    /// is not held back for good.
    fn readmit(&mut self) {
        let fitting: Vec<String> = self
            .excess
            .keys()
            .filter(|instance| {
                let own = self.instances.get(*instance).map_or(0, |s| s.applications);
                own <= self.allowance(instance)
            })
            .cloned()
            .collect();
        for instance in fitting {
            if let Some(excess) = self.excess.remove(&instance) {
                merge_windows(&mut self.window, &excess.window);
            }
        }
    }

    /// Combines aggregates of the same strategy and metric from different
    /// contexts into a fleet-wide view (context key left empty).
    pub fn merge(&self, other: &StrategyRecord) -> StrategyRecord {
        let mut merged = self.clone();
        merged.absorb(other);
        merged
    }

    /// Folds `other` into this aggregate in place (see [`Self::merge`]).
    pub fn absorb(&mut self, other: &StrategyRecord) {
        self.context_key.clear();
        self.applications = self.applications.saturating_add(other.applications);
        self.successes = self.successes.saturating_add(other.successes);
        self.improvement = self.improvement.merge(&other.improvement);
        self.regression = self.regression.merge(&other.regression);
        for (condition, stats) in &other.failure_modes {
            let mode = self.failure_modes.entry(condition.clone()).or_default();
            mode.applications = mode.applications.saturating_add(stats.applications);
            mode.failures = mode.failures.saturating_add(stats.failures);
        }
        for (instance, share) in &other.instances {
            self.instances
                .entry(instance.clone())
                .or_default()
                .absorb(share);
        }
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_updated = self.last_updated.max(other.last_updated);
        merge_windows(&mut self.window, &other.window);
        for (instance, excess) in &other.excess {
            let mine = self.excess.entry(instance.clone()).or_default();
            mine.reports = mine.reports.saturating_add(excess.reports);
            merge_windows(&mut mine.window, &excess.window);
        }
        if self.streaks.len() < other.streaks.len() {
            self.streaks
                .resize(other.streaks.len(), OutcomeStats::default());
        }
        for (a, b) in self.streaks.iter_mut().zip(&other.streaks) {
            *a = a.merge(b);
        }
        for (p, stats) in &other.preceded_by {
            let mine = self.preceded_by.entry(p.clone()).or_default();
            *mine = mine.merge(stats);
        }
        self.through_sequence = self.through_sequence.max(other.through_sequence);
    }

    pub fn success_rate(&self) -> f64 {
        ratio(self.successes, self.applications)
    }

    /// Mean delta over all applications: successes' improvement weighted by
    /// the success rate plus failures' regression weighted by the rest.
    pub fn expected_delta(&self) -> f64 {
        let p = self.success_rate();
        p * self.improvement.mean + (1.0 - p) * self.regression.mean
    }

    /// Failure modes, highest failure rate first (then most applications).
    pub fn ranked_failure_modes(&self) -> Vec<(&str, &ConditionStats)> {
        let mut modes: Vec<_> = self
            .failure_modes
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        modes.sort_by(|a, b| {
            b.1.failure_rate()
                .total_cmp(&a.1.failure_rate())
                .then(b.1.applications.cmp(&a.1.applications))
                .then(a.0.cmp(b.0))
        });
        modes
    }
}

// ---------------------------------------------------------------------------
// Insights
// ---------------------------------------------------------------------------

/// What an insight is about.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InsightCategory {
    Configuration,
    Timing,
    Sequence,
    Fallback,
    Context,
    Prediction,
    /// A change the anomaly scan found in the fleet's evidence.
    Anomaly,
}

/// The data behind an insight.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct InsightEvidence {
    pub data_points: u64,
    pub correlation_strength: f64,
    pub instances_covered: u32,
    pub improvement_observed: f64,
}

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplicableContext {
    pub context: String,
    pub threshold: String,
}

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InsightAlternative {
    pub insight: String,
    pub effectiveness: f64,
}

/// The content of an insight, as shared (before the hub stamps it).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InsightDraft {
    pub category: InsightCategory,
    pub title: String,
    pub insight: String,
    pub evidence: InsightEvidence,
    pub applicable_contexts: Vec<ApplicableContext>,
    pub effectiveness: f64,
    pub risk: f64,
    pub recommendation: String,
    pub alternatives: Vec<InsightAlternative>,
    /// Requested end of validity; `None` means the default TTL.
    pub valid_until: Option<UnixMillis>,
}

/// A stored insight.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    pub id: String,
    pub sequence: u64,
    pub draft: InsightDraft,
    pub created_at: UnixMillis,
    pub valid_until: UnixMillis,
    /// The instance that shared it (or "hub" for generated insights).
    pub shared_by: String,
    /// Times instances reported acting on it.
    #[serde(default)]
    pub uses: u64,
    /// The region it was imported from (empty: learnt in this region).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin_region: String,
}

impl Insight {
    pub fn is_valid_at(&self, now: UnixMillis) -> bool {
        now < self.valid_until
    }

    /// Same category, title and text: the same piece of knowledge.
    pub fn same_content(&self, draft: &InsightDraft) -> bool {
        self.draft.category == draft.category
            && self.draft.title == draft.title
            && self.draft.insight == draft.insight
    }

    pub fn applies_to(&self, context: &str) -> bool {
        self.draft
            .applicable_contexts
            .iter()
            .any(|c| c.context == context)
    }

    /// What the insight counts against its instance's storage bound: the
    /// bytes of its text, and [`INSIGHT_OVERHEAD_BYTES`] for the rest. A
    /// function of the content only, so every replica folds it alike.
    pub fn stored_bytes(&self) -> u64 {
        let draft = &self.draft;
        let text = draft.title.len()
            + draft.insight.len()
            + draft.recommendation.len()
            + draft
                .alternatives
                .iter()
                .map(|a| a.insight.len() + 8)
                .sum::<usize>()
            + draft
                .applicable_contexts
                .iter()
                .map(|c| c.context.len() + c.threshold.len())
                .sum::<usize>()
            + self.id.len()
            + self.shared_by.len();
        text as u64 + INSIGHT_OVERHEAD_BYTES
    }
}

/// The fixed part of an insight's [`Insight::stored_bytes`]: numbers,
/// times and the encoding around the text.
pub const INSIGHT_OVERHEAD_BYTES: u64 = 256;

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FailureType {
    MetricReversal,
    Deadlock,
    Cascade,
    RecoveryFail,
}

impl FailureType {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureType::MetricReversal => "metric_reversal",
            FailureType::Deadlock => "deadlock",
            FailureType::Cascade => "cascade",
            FailureType::RecoveryFail => "recovery_fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryAttempt {
    pub method: String,
    pub succeeded: bool,
    pub cycles_to_recover: u32,
}

/// What an instance reports about a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReport {
    pub failure_type: FailureType,
    pub trigger: String,
    pub metric: String,
    /// Empty when no strategy triggered it.
    pub strategy: String,
    pub recovery: Vec<RecoveryAttempt>,
    pub prevention: Vec<String>,
    /// Strategies applied within [`PRECEDING_WINDOW`] cycles before the
    /// triggering one.
    pub preceded_by: Vec<String>,
    /// How far the metric fell, if measured.
    pub magnitude: Option<f64>,
    /// Completes an earlier report: only its recovery attempts count.
    #[serde(default)]
    pub follow_up: bool,
}

/// How one recovery method has fared for one failure.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryMethodStats {
    pub attempts: u64,
    pub successes: u64,
    /// Cycles to recover, over successful attempts.
    pub cycles: RunningStats,
}

impl RecoveryMethodStats {
    pub fn success_rate(&self) -> f64 {
        ratio(self.successes, self.attempts)
    }

    /// Both as one.
    pub fn merge(&self, other: &RecoveryMethodStats) -> RecoveryMethodStats {
        RecoveryMethodStats {
            attempts: self.attempts.saturating_add(other.attempts),
            successes: self.successes.saturating_add(other.successes),
            cycles: self.cycles.merge(&other.cycles),
        }
    }

    /// These stats as if only `attempts` of them (fewer) had been made, in
    /// the same proportions.
    pub fn scaled_to(&self, attempts: u64) -> RecoveryMethodStats {
        if attempts >= self.attempts {
            return *self;
        }
        let share = attempts as f64 / self.attempts as f64;
        let scale = |n: u64| (n as f64 * share).round() as u64;
        RecoveryMethodStats {
            attempts,
            successes: scale(self.successes),
            cycles: RunningStats {
                count: scale(self.cycles.count),
                m2: self.cycles.m2 * share,
                ..self.cycles
            },
        }
    }

    fn add(&mut self, attempt: &RecoveryAttempt) {
        self.attempts = self.attempts.saturating_add(1);
        if attempt.succeeded {
            self.successes = self.successes.saturating_add(1);
            self.cycles.push(f64::from(attempt.cycles_to_recover));
        }
    }
}

/// The most triggers and prevention items a failure keeps; older ones give
/// way so the record stays small however often the failure recurs.
pub const MAX_TRIGGERS: usize = 10;
pub const MAX_PREVENTION: usize = 32;

/// A deduplicated failure pattern.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailurePattern {
    pub id: String,
    pub failure_type: FailureType,
    pub metric: String,
    pub strategy: String,
    /// Distinct triggers, newest last.
    pub triggers: Vec<String>,
    pub occurrences: u64,
    pub recovery: BTreeMap<String, RecoveryMethodStats>,
    pub prevention: Vec<String>,
    pub instances: BTreeSet<String>,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    /// Reports in which each strategy had been applied shortly before.
    #[serde(default)]
    pub preceded_by: BTreeMap<String, u64>,
    /// Magnitudes reported.
    #[serde(default)]
    pub magnitude: RunningStats,
    /// Marked by an operator as no longer applicable.
    #[serde(default)]
    pub resolved: bool,
    /// Reports per instance (empty in records written before it was kept).
    #[serde(default)]
    pub reports: BTreeMap<String, u64>,
    /// Recovery attempts by method, then by instance: what
    /// [`FailurePattern::seen_by`] bounds (empty in records written before
    /// it was kept, whose `recovery` is shown as it is).
    #[serde(default)]
    pub recovery_by: BTreeMap<String, BTreeMap<String, RecoveryMethodStats>>,
    /// The instances that gave each piece of `prevention` advice (advice
    /// missing here was given before reporters were kept).
    #[serde(default)]
    pub advice_by: BTreeMap<String, BTreeSet<String>>,
    /// The log position of its last change: its version for other regions
    /// (0 in records last changed before it was kept).
    #[serde(default)]
    pub changed_at: u64,
}

impl AsRef<FailurePattern> for FailurePattern {
    fn as_ref(&self) -> &FailurePattern {
        self
    }
}

impl FailurePattern {
    /// The reports that count, given each instance's applications of the
    /// strategy (see [`crate::influence::counted_failures`]). Records from
    /// before reports were kept per instance (reporters but no per-instance
    /// reports) count as they are.
    pub fn counted_occurrences(&self, applications: &BTreeMap<String, u64>) -> u64 {
        if self.reports.is_empty() && !self.instances.is_empty() {
            self.occurrences
        } else {
            crate::influence::counted_failures(&self.reports, applications)
        }
    }

    /// This failure as `viewer` may be told of it: recovery methods and
    /// prevention advice bounded by [`crate::influence`]'s rule 4.
    pub fn seen_by(&self, viewer: crate::influence::Viewer) -> FailurePattern {
        crate::influence::failure_seen_by(self, viewer)
    }

    /// The id shared by every report of this (type, metric, strategy).
    pub fn id_for(failure_type: FailureType, metric: &str, strategy: &str) -> String {
        content_id(
            "failure",
            &format!("{}\u{0}{metric}\u{0}{strategy}", failure_type.as_str()),
        )
    }

    pub fn new(report: &FailureReport, instance: &str, now: UnixMillis) -> Self {
        let mut failure = FailurePattern {
            id: Self::id_for(report.failure_type, &report.metric, &report.strategy),
            failure_type: report.failure_type,
            metric: report.metric.clone(),
            strategy: report.strategy.clone(),
            triggers: Vec::new(),
            occurrences: 0,
            recovery: BTreeMap::new(),
            prevention: Vec::new(),
            instances: BTreeSet::new(),
            first_seen: now,
            last_seen: now,
            preceded_by: BTreeMap::new(),
            magnitude: RunningStats::default(),
            resolved: false,
            reports: BTreeMap::new(),
            recovery_by: BTreeMap::new(),
            advice_by: BTreeMap::new(),
            changed_at: 0,
        };
        failure.record(report, instance, now);
        failure
    }

    fn record_recovery(&mut self, report: &FailureReport, instance: &str) {
        for attempt in &report.recovery {
            let total = self.recovery.entry(attempt.method.clone()).or_default();
            // A method recorded before reporters were kept keeps its
            // attempts under the earlier reporters' name.
            let earlier = (!self.recovery_by.contains_key(&attempt.method) && total.attempts > 0)
                .then_some(*total);
            total.add(attempt);
            let by = self.recovery_by.entry(attempt.method.clone()).or_default();
            if let Some(earlier) = earlier {
                by.insert(crate::influence::EARLIER_REPORTERS.to_string(), earlier);
            }
            by.entry(instance.to_string()).or_default().add(attempt);
        }
    }

    /// Folds one more report of the same failure in.
    pub fn record(&mut self, report: &FailureReport, instance: &str, now: UnixMillis) {
        if report.follow_up {
            // How an already counted failure was recovered from.
            self.record_recovery(report, instance);
            return;
        }
        self.occurrences = self.occurrences.saturating_add(1);
        self.last_seen = self.last_seen.max(now);
        self.instances.insert(instance.to_string());
        let reports = self.reports.entry(instance.to_string()).or_default();
        *reports = reports.saturating_add(1);
        self.triggers.retain(|t| t != &report.trigger);
        self.triggers.push(report.trigger.clone());
        if self.triggers.len() > MAX_TRIGGERS {
            self.triggers.remove(0);
        }
        self.record_recovery(report, instance);
        for advice in &report.prevention {
            crate::influence::give_advice(self, advice, instance);
        }
        for p in &report.preceded_by {
            let count = self.preceded_by.entry(p.clone()).or_default();
            *count = count.saturating_add(1);
        }
        if let Some(m) = report.magnitude {
            self.magnitude.push(m);
        }
    }

    /// Recovery methods, best first: highest success rate, then fewest
    /// cycles to recover, then most attempts.
    pub fn ranked_recovery(&self) -> Vec<(&str, &RecoveryMethodStats)> {
        let mut ranked: Vec<_> = self.recovery.iter().map(|(k, v)| (k.as_str(), v)).collect();
        ranked.sort_by(|a, b| {
            b.1.success_rate()
                .total_cmp(&a.1.success_rate())
                .then(a.1.cycles.mean.total_cmp(&b.1.cycles.mean))
                .then(b.1.attempts.cmp(&a.1.attempts))
                .then(a.0.cmp(b.0))
        });
        ranked
    }
}

// ---------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------

/// A configuration parameter's value.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Flag(bool),
    Number(f64),
    Text(String),
}

pub type Parameters = BTreeMap<String, ParamValue>;

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigAlternative {
    pub name: String,
    pub effectiveness: f64,
    pub risk: f64,
}

/// What an instance shares about a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigShare {
    pub context: Attributes,
    pub parameters: Parameters,
    pub effectiveness: f64,
    pub data_points: u64,
    pub recommendation: String,
    pub alternatives: Vec<ConfigAlternative>,
}

/// Data points and distinct instances a configuration needs before the hub
/// calls it validated.
pub const VALIDATION_MIN_DATA_POINTS: u64 = 100;
pub const VALIDATION_MIN_INSTANCES: usize = 2;
/// A rival configuration counts against validation from this many data
/// points on.
pub const RIVAL_MIN_DATA_POINTS: u64 = 30;

/// A configuration as the fleet knows it: one per (context, parameters).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub id: String,
    pub context: Attributes,
    pub context_key: String,
    pub parameters: Parameters,
    /// Effectiveness averaged over shares, weighted by their data points.
    pub effectiveness: f64,
    /// The effectiveness values shared, unweighted: their spread is the
    /// configuration's risk.
    #[serde(default)]
    pub shared_effectiveness: RunningStats,
    pub data_points: u64,
    pub instances: BTreeSet<String>,
    /// Instances of other regions that shared it: only in the
    /// configuration as a bootstrap sees it
    /// ([`crate::knowledge::joined_configurations`]); 0 stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remote_reporters: u64,
    pub recommendation: String,
    pub alternatives: Vec<ConfigAlternative>,
    pub validated: bool,
    pub validation_date: Option<UnixMillis>,
    pub first_seen: UnixMillis,
    pub last_updated: UnixMillis,
    /// The log position of its last share: its version for other regions.
    #[serde(default)]
    pub changed_at: u64,
}

impl AsRef<Configuration> for Configuration {
    fn as_ref(&self) -> &Configuration {
        self
    }
}

impl Configuration {
    /// The id shared by every share of these parameters in this context.
    pub fn id_for(context: &Attributes, parameters: &Parameters) -> String {
        let params = serde_json::to_string(parameters).unwrap_or_default();
        content_id("config", &format!("{}\u{0}{params}", context_key(context)))
    }

    pub fn new(share: &ConfigShare, instance: &str, now: UnixMillis) -> Self {
        let mut config = Configuration {
            id: Self::id_for(&share.context, &share.parameters),
            context: share.context.clone(),
            context_key: context_key(&share.context),
            parameters: share.parameters.clone(),
            effectiveness: 0.0,
            shared_effectiveness: RunningStats::default(),
            data_points: 0,
            instances: BTreeSet::new(),
            remote_reporters: 0,
            recommendation: String::new(),
            alternatives: Vec::new(),
            validated: false,
            validation_date: None,
            first_seen: now,
            last_updated: now,
            changed_at: 0,
        };
        config.record(share, instance, now);
        config
    }

    /// Folds one more share of the same configuration in.
    pub fn record(&mut self, share: &ConfigShare, instance: &str, now: UnixMillis) {
        let points = share.data_points.max(1);
        let total = self.data_points + points;
        self.effectiveness = (self.effectiveness * self.data_points as f64
            + share.effectiveness * points as f64)
            / total as f64;
        self.data_points = total;
        self.shared_effectiveness.push(share.effectiveness);
        self.instances.insert(instance.to_string());
        if !share.recommendation.is_empty() {
            self.recommendation = share.recommendation.clone();
        }
        if !share.alternatives.is_empty() {
            self.alternatives = share.alternatives.clone();
        }
        self.last_updated = self.last_updated.max(now);
    }

    /// Whether it rests on enough evidence to be validated (the hub also
    /// requires it to beat the other configurations of its context; see
    /// [`Configuration::revalidate`]).
    pub fn has_enough_evidence(&self) -> bool {
        self.data_points >= VALIDATION_MIN_DATA_POINTS
            && self.reporters() >= VALIDATION_MIN_INSTANCES
    }

    /// Instances that shared it, in this region and others.
    pub fn reporters(&self) -> usize {
        self.instances
            .len()
            .saturating_add(usize::try_from(self.remote_reporters).unwrap_or(usize::MAX))
    }

    /// Sets `validated` from the evidence and the effectiveness of the
    /// rivals in the same context (those with at least
    /// [`RIVAL_MIN_DATA_POINTS`]). Returns whether it changed.
    pub fn revalidate(&mut self, best_rival: Option<f64>, now: UnixMillis) -> bool {
        let validated = self.has_enough_evidence()
            && best_rival.is_none_or(|rival| self.effectiveness >= rival);
        if validated == self.validated {
            return false;
        }
        self.validated = validated;
        self.validation_date = validated.then_some(now);
        true
    }

    /// The spread of the effectiveness shared for it.
    pub fn risk(&self) -> f64 {
        self.shared_effectiveness.std_dev()
    }

    /// How many of the configuration's context attributes `context` has
    /// with the same value, or `None` if any attribute differs or is missing
    /// (a configuration made for latency > 500 ms does not suit a fast
    /// instance).
    pub fn context_match(&self, context: &Attributes) -> Option<usize> {
        self.context
            .iter()
            .all(|(k, v)| context.get(k) == Some(v))
            .then_some(self.context.len())
    }
}

// ---------------------------------------------------------------------------
// Access control records
// ---------------------------------------------------------------------------

/// An instance's API key, as stored: never the key itself, only a salted
/// SHA-256 of it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub instance_id: String,
    /// Hex of 16 random bytes.
    pub salt: String,
    /// Hex of SHA-256(salt || key).
    pub hash: String,
    pub issued_at: UnixMillis,
    /// The operator who issued it.
    pub issued_by: String,
}

/// The last run of a periodic job, as the fold admitted it: the lease
/// epoch of the replica that ran it and the period it ran for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    pub epoch: u64,
    pub period: u64,
}

/// An instance an operator put in quarantine: its writes are refused
/// until it is released.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub instance_id: String,
    /// The operator.
    pub by: String,
    pub reason: String,
    pub since: UnixMillis,
}

/// One call, as the audit log keeps it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub sequence: u64,
    pub at: UnixMillis,
    /// Instance id or operator name ("" when the caller was not identified).
    pub caller: String,
    /// "instance", "operator" or "unknown".
    pub role: String,
    /// The gRPC method, e.g. "/learninghub.v1.Hub/ShareStrategy", from
    /// the closed set of real RPCs; "unknown" for any other path.
    pub rpc: String,
    /// The gRPC status code it ended with.
    pub code: i32,
    /// Bytes of the request body (of all `count` calls).
    pub request_bytes: u64,
    /// How many calls this entry stands for: 1, or for a sampled kind of
    /// call (refusals, unknown paths, health, reflection) the calls of a
    /// window after its first.
    #[serde(default = "one")]
    pub count: u64,
    /// The peer's address, `ip:port` ("" before this was recorded).
    #[serde(default)]
    pub peer: String,
    /// The serial of the client certificate, as OpenSSL prints it.
    #[serde(default)]
    pub serial: String,
    /// For `rpc` "unknown": the path the caller sent, cut to 128 bytes
    /// (on the first entry of a sampling window only).
    #[serde(default)]
    pub path: String,
}

fn one() -> u64 {
    1
}

impl Default for AuditEntry {
    /// An entry for one call (`count` 1), everything else empty.
    fn default() -> Self {
        AuditEntry {
            sequence: 0,
            at: 0,
            caller: String::new(),
            role: String::new(),
            rpc: String::new(),
            code: 0,
            request_bytes: 0,
            count: 1,
            peer: String::new(),
            serial: String::new(),
            path: String::new(),
        }
    }
}

/// The configuration a new instance gets when the fleet has none that
/// matches its context. Documented in the proto (BootstrapConfig.parameters).
pub fn default_parameters() -> Parameters {
    Parameters::from([
        ("cycle_interval_ms".into(), ParamValue::Number(300_000.0)),
        ("max_cycles".into(), ParamValue::Number(0.0)),
        (
            "prediction_confidence_threshold".into(),
            ParamValue::Number(0.65),
        ),
        ("adaptation_budget".into(), ParamValue::Number(0.3)),
        (
            "default_strategy".into(),
            ParamValue::Text("conservative".into()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(successful: bool, delta: f64, condition: &str, instance: &str) -> StrategyOutcome {
        StrategyOutcome {
            sequence: 0,
            at: 1,
            instance_id: instance.into(),
            strategy: "novelty_injection".into(),
            metric: "learningVelocity".into(),
            value_before: 0.5,
            successful,
            delta,
            condition: condition.into(),
            context: Attributes::new(),
            streak: 0,
            preceded_by: vec![],
        }
    }

    /// Counted outcomes in the window (the fleet's evidence).
    fn windowed(r: &StrategyRecord) -> u64 {
        r.window
            .iter()
            .flat_map(|b| b.bands.iter())
            .map(|s| s.applications)
            .sum()
    }

    #[test]
    fn instance_shares_read_the_old_bare_count_and_round_trip() {
        let old: BTreeMap<String, InstanceShare> = serde_json::from_str(r#"{"a":3}"#).unwrap();
        assert_eq!(old["a"].applications, 3);
        assert_eq!(old["a"].tracked(), 0, "nothing known but the count");
        let mut share = InstanceShare {
            applications: 4,
            successes: 3,
            delta_sum: 0.25,
            untracked: 0,
        };
        let json = serde_json::to_string(&share).unwrap();
        assert_eq!(json, "[4,3,0.25]");
        assert_eq!(serde_json::from_str::<InstanceShare>(&json).unwrap(), share);
        share.absorb(&old["a"]);
        let json = serde_json::to_string(&share).unwrap();
        assert_eq!(json, "[7,3,0.25,3]");
        assert_eq!(serde_json::from_str::<InstanceShare>(&json).unwrap(), share);
    }

    #[test]
    fn a_pioneers_excess_counts_once_others_catch_up() {
        let key = StrategyKey::new("learningVelocity", "novelty_injection", "");
        let mut r = StrategyRecord::empty(&key, 0);
        for _ in 0..12 {
            r.record(&outcome(true, 0.1, "", "pioneer"), 7);
        }
        // Alone, it counts its first 5 for others; the rest is its excess.
        assert_eq!(r.counted("pioneer"), 5);
        assert_eq!(r.excess["pioneer"].reports, 7);
        assert_eq!(windowed(&r), 5);
        assert_eq!(r.applications, 12, "lifetime totals keep everything");
        for i in 0..11 {
            r.record(&outcome(true, 0.1, "", "second"), 7);
            // Once the second has 11 counted, all 12 of the pioneer's fit.
            assert_eq!(r.excess.contains_key("pioneer"), i < 10, "{i}");
        }
        assert_eq!(r.counted("pioneer"), 12);
        assert_eq!(windowed(&r), 23);
        // A flood beyond the others' share waits in the excess.
        for _ in 0..30 {
            r.record(&outcome(false, -0.2, "", "second"), 7);
        }
        assert_eq!(r.counted("second"), 13);
        assert_eq!(windowed(&r), 25);
        assert_eq!(r.instances["second"].applications, 41);
    }

    #[test]
    fn context_key_is_canonical() {
        let a = Attributes::from([("b".into(), "2".into()), ("a".into(), "1".into())]);
        assert_eq!(context_key(&a), "a=1;b=2");
        assert_eq!(context_key(&Attributes::new()), "");
    }

    #[test]
    fn content_ids_are_stable_and_distinct() {
        assert_eq!(content_id("pattern", "x"), content_id("pattern", "x"));
        assert_ne!(content_id("pattern", "x"), content_id("pattern", "y"));
        assert_eq!(content_id("pattern", "x").len(), "pattern_".len() + 16);
    }

    /// Found by fuzz/store_load: counts come from the store, and a start
    /// summing (or replaying into) aggregates whose counts are near
    /// u64::MAX overflowed — a panic with overflow checks, a silent wrap
    /// without. Counts now saturate.
    #[test]
    fn stored_counts_saturate_instead_of_overflowing() {
        let key = StrategyKey {
            metric: "learningVelocity".into(),
            strategy: "novelty_injection".into(),
            context_key: "".into(),
        };
        let mut r = StrategyRecord::empty(&key, 0);
        r.record(&outcome(true, 0.2, "c", "a"), 7);
        r.applications = u64::MAX;
        r.successes = u64::MAX;
        r.improvement.count = u64::MAX;
        r.instances.insert(
            "a".into(),
            InstanceShare {
                applications: u64::MAX,
                successes: u64::MAX,
                delta_sum: 0.0,
                untracked: 0,
            },
        );
        r.failure_modes.insert(
            "c".into(),
            ConditionStats {
                applications: u64::MAX,
                failures: u64::MAX,
            },
        );
        r.streaks[0].applications = u64::MAX;
        r.record(&outcome(true, 0.1, "c", "a"), 7);
        let merged = r.merge(&r);
        for record in [&r, &merged] {
            assert_eq!(record.applications, u64::MAX);
            assert_eq!(record.improvement.count, u64::MAX);
            assert_eq!(record.instances["a"].applications, u64::MAX);
            assert_eq!(record.failure_modes["c"].applications, u64::MAX);
        }
        let mut usage = crate::prevention::StrategyUsage::default();
        usage.add(&r);
        usage.add(&r);
        assert_eq!(usage.applications, u64::MAX);
    }

    #[test]
    fn strategy_record_folds_outcomes() {
        let key = StrategyKey {
            metric: "learningVelocity".into(),
            strategy: "novelty_injection".into(),
            context_key: "".into(),
        };
        let mut r = StrategyRecord::empty(&key, 0);
        r.record(&outcome(true, 0.2, "", "a"), 7);
        r.record(&outcome(true, 0.1, "", "b"), 7);
        r.record(&outcome(false, -0.05, "metric already > 0.9", "a"), 7);
        r.record(&outcome(true, 0.3, "metric already > 0.9", "a"), 7);
        assert_eq!((r.applications, r.successes), (4, 3));
        assert!((r.success_rate() - 0.75).abs() < 1e-12);
        assert!((r.improvement.mean - 0.2).abs() < 1e-12);
        assert!((r.improvement.std_dev() - 0.1).abs() < 1e-12);
        assert_eq!(r.regression.count, 1);
        let mode = r.failure_modes["metric already > 0.9"];
        assert_eq!((mode.applications, mode.failures), (2, 1));
        assert_eq!(r.instances["a"].applications, 3);
        assert!((r.expected_delta() - (0.75 * 0.2 + 0.25 * -0.05)).abs() < 1e-12);
    }

    #[test]
    fn failure_keeps_bounded_history() {
        let report = |trigger: &str| FailureReport {
            failure_type: FailureType::MetricReversal,
            trigger: trigger.into(),
            metric: "transferEfficiency".into(),
            strategy: "speed_optimization".into(),
            recovery: vec![RecoveryAttempt {
                method: "apply_consolidation".into(),
                succeeded: true,
                cycles_to_recover: 2,
            }],
            prevention: vec!["consolidate first".into()],
            preceded_by: vec![],
            magnitude: Some(0.2),
            follow_up: false,
        };
        let mut f = FailurePattern::new(&report("t0"), "a", 0);
        for i in 1..20 {
            f.record(&report(&format!("t{i}")), "b", i);
        }
        f.record(&report("t5"), "b", 30);
        assert_eq!(f.occurrences, 21);
        assert_eq!(f.triggers.len(), MAX_TRIGGERS);
        assert_eq!(f.triggers.last().unwrap(), "t5");
        assert_eq!(f.prevention, vec!["consolidate first".to_string()]);
        assert_eq!(f.recovery["apply_consolidation"].attempts, 21);
        assert_eq!(f.instances.len(), 2);
    }

    #[test]
    fn configuration_validates_with_enough_evidence() {
        let share = |points| ConfigShare {
            context: Attributes::new(),
            parameters: default_parameters(),
            effectiveness: 0.8,
            data_points: points,
            recommendation: String::new(),
            alternatives: vec![],
        };
        let mut c = Configuration::new(&share(150), "a", 1);
        assert!(!c.revalidate(None, 1), "one instance is not enough");
        c.record(
            &ConfigShare {
                effectiveness: 0.5,
                ..share(50)
            },
            "b",
            2,
        );
        assert!(c.revalidate(Some(0.6), 2));
        assert!(c.validated);
        assert_eq!(c.validation_date, Some(2));
        // A better rival in the same context makes it a candidate again.
        assert!(c.revalidate(Some(0.9), 3));
        assert!(!c.validated && c.validation_date.is_none());
        assert!((c.effectiveness - (0.8 * 150.0 + 0.5 * 50.0) / 200.0).abs() < 1e-12);
    }
}

/// Declares `Eq` for records whose numbers are floats. Their `PartialEq`
/// is an equivalence all the same: a record never holds NaN (validation
/// refuses non-finite input, folds divide only by non-zero counts, and the
/// store refuses to encode one). What `Eq` buys: the standard library
/// compares `Arc<T: Eq>` by pointer before contents, and the state's
/// tables hold records as `Arc`s, so a checkpoint's diff no longer compares
/// every unchanged record that shares a tree leaf with a changed one field
/// by field (8% of the checkpoint thread's samples in a write bench).
macro_rules! finite_records_are_eq {
    ($($record:ty),*) => {
        $(impl Eq for $record {})*
    };
}

finite_records_are_eq!(
    Instance,
    Pattern,
    StrategyRecord,
    Insight,
    FailurePattern,
    Configuration
);

fn is_zero(n: &u64) -> bool {
    *n == 0
}
