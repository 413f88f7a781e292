//! Mergeable knowledge between regions: what one regional hub exports of
//! its aggregates, and how another keeps what every origin region exported
//! so that delivering the same digest twice, out of order, or after a
//! partition never counts anything twice.
//!
//! Each origin region's knowledge ([`OriginState`]) is a map from a
//! [`Subject`] (a strategy on a metric in a context, value band and day; a
//! recovery method of a kind of failure) to its sufficient [`Stats`], and
//! every entry carries the origin's *version* at which it last changed. An
//! entry is the subject's whole value at that version, never a change to
//! it, so keeping, per origin and subject, the entry of the highest version
//! is a join: merging is commutative, associative and idempotent (a map of
//! last-writer-wins registers whose versions the single writer, the
//! origin, orders). An aggregate sent whole ([`Subject::Aggregate`])
//! replaces what was held of it, so removals cross too. Anti-entropy is
//! pull-based: a region asks a peer for each origin's entries above the
//! version it holds ([`OriginState::since`]); a [`Batch`] says through
//! which version it is complete, and only a batch that continues what is
//! held moves that version on, so a lost or reordered batch is asked for
//! again rather than skipped. Insights and fleet models ride along.
//!
//! Only aggregates cross: subjects name strategies, metrics, contexts and
//! methods, never an instance; stats are sums. Fleet figures are every
//! origin's stats summed in origin order ([`fleet_figures`]); rankings add
//! other regions' day buckets to their windows ([`remote_evidence`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::federated::ModelRecord;
use super::influence::Viewer;
use super::knowledge::{self, Record};
use super::model::{
    DayBucket, InsightDraft, OutcomeStats, STREAK_CLASSES, StrategyRecord, UnixMillis, VALUE_BANDS,
};
use super::prevention::StrategyUsage;
use super::stats::RunningStats;

/// What a statistic is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// A strategy's outcomes on a metric, in a context (its key), a value
    /// band (tenths of the metric's value before) and a day.
    Strategy {
        metric: String,
        strategy: String,
        context_key: String,
        band: u8,
        day: i64,
    },
    /// A recovery method's attempts for a kind of failure of a metric.
    Recovery {
        failure_type: String,
        metric: String,
        method: String,
    },
    /// A strategy aggregate as a whole (metric, strategy, context key): an
    /// export sends its marker with every entry of the aggregate, all at
    /// the aggregate's version, or the marker alone once the aggregate no
    /// longer crosses (too few reporters, e.g. after a quarantine). A
    /// receiver then holds exactly the entries of the aggregate's newest
    /// version, so what a rebuild or an expiry removed goes there too.
    Aggregate {
        metric: String,
        strategy: String,
        context_key: String,
    },
    /// A strategy aggregate's lifetime outcomes in a streak class (0, 1, 2,
    /// 3+ applications of it in a row before): what rankings scale a
    /// repeated use's gain by. Part of the aggregate.
    Streak {
        metric: String,
        strategy: String,
        context_key: String,
        class: u8,
    },
    /// A strategy aggregate's lifetime outcomes when `before` was applied
    /// shortly before. Part of the aggregate.
    Preceded {
        metric: String,
        strategy: String,
        context_key: String,
        before: String,
    },
    /// How often the origin's instances applied a strategy, on any metric
    /// (its count; `before` empty), or shortly after `before`: what another
    /// region's failure reports of the strategy are rates of.
    Usage { strategy: String, before: String },
}

impl Subject {
    /// The metric it is about ("" for usage, which spans metrics).
    pub fn metric(&self) -> &str {
        match self {
            Subject::Strategy { metric, .. }
            | Subject::Recovery { metric, .. }
            | Subject::Aggregate { metric, .. }
            | Subject::Streak { metric, .. }
            | Subject::Preceded { metric, .. } => metric,
            Subject::Usage { .. } => "",
        }
    }
}

/// Sufficient statistics of a set of outcomes: enough to merge sets and
/// get back counts, the success rate, and the mean and variance of the
/// deltas of successes (gains) and of failures (losses) apart, as the
/// hub's rankings use them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub successes: u64,
    pub gain_sum: f64,
    pub gain_sum_sq: f64,
    pub loss_sum: f64,
    pub loss_sum_sq: f64,
}

impl Stats {
    /// One outcome.
    pub fn of(successful: bool, delta: f64) -> Stats {
        let (gain, loss) = if successful {
            (delta, 0.0)
        } else {
            (0.0, delta)
        };
        Stats {
            count: 1,
            successes: u64::from(successful),
            gain_sum: gain,
            gain_sum_sq: gain * gain,
            loss_sum: loss,
            loss_sum_sq: loss * loss,
        }
    }

    /// An aggregate's outcomes (a day's band of a strategy record).
    pub fn from_outcomes(o: &OutcomeStats) -> Stats {
        let sums = |r: &RunningStats| {
            let n = r.count as f64;
            (r.mean * n, r.m2 + n * r.mean * r.mean)
        };
        let (gain_sum, gain_sum_sq) = sums(&o.improvement);
        let (loss_sum, loss_sum_sq) = sums(&o.regression);
        Stats {
            count: o.applications,
            successes: o.successes,
            gain_sum,
            gain_sum_sq,
            loss_sum,
            loss_sum_sq,
        }
    }

    /// Both sets as one (disjoint sets: each origin's own).
    pub fn plus(&self, other: &Stats) -> Stats {
        Stats {
            count: self.count.saturating_add(other.count),
            successes: self.successes.saturating_add(other.successes),
            gain_sum: self.gain_sum + other.gain_sum,
            gain_sum_sq: self.gain_sum_sq + other.gain_sum_sq,
            loss_sum: self.loss_sum + other.loss_sum,
            loss_sum_sq: self.loss_sum_sq + other.loss_sum_sq,
        }
    }

    /// The outcomes' summary as an aggregate keeps it: counts, and the
    /// mean and spread of gains and of losses (their extremes are not
    /// known from sums: each is the mean).
    pub fn outcomes(&self) -> OutcomeStats {
        let summary = |n: u64, sum: f64, sum_sq: f64| {
            if n == 0 {
                return RunningStats::default();
            }
            let mean = sum / n as f64;
            RunningStats {
                count: n,
                mean,
                m2: (sum_sq - n as f64 * mean * mean).max(0.0),
                min: mean,
                max: mean,
            }
        };
        let failures = self.count.saturating_sub(self.successes);
        OutcomeStats {
            applications: self.count,
            successes: self.successes,
            improvement: summary(self.successes, self.gain_sum, self.gain_sum_sq),
            regression: summary(failures, self.loss_sum, self.loss_sum_sq),
        }
    }

    /// The mean delta over every outcome.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.gain_sum + self.loss_sum) / self.count as f64)
    }

    /// A total order, for the (never expected) case of one origin sending
    /// two different values at the same version: every replica keeps the
    /// same one.
    fn order(&self, other: &Stats) -> std::cmp::Ordering {
        self.count
            .cmp(&other.count)
            .then(self.successes.cmp(&other.successes))
            .then(self.gain_sum.total_cmp(&other.gain_sum))
            .then(self.gain_sum_sq.total_cmp(&other.gain_sum_sq))
            .then(self.loss_sum.total_cmp(&other.loss_sum))
            .then(self.loss_sum_sq.total_cmp(&other.loss_sum_sq))
    }
}

/// An entry: a subject's value at the origin's version when it last
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: u64,
    pub stats: Stats,
}

impl Versioned {
    /// Whether `self` supersedes `held`.
    fn beats(&self, held: &Versioned) -> bool {
        self.version > held.version
            || (self.version == held.version && self.stats.order(&held.stats).is_gt())
    }
}

/// What one origin exported, as sent: its entries above `after`, complete
/// through `through` (the origin's version when the batch was taken); and
/// its insights above `insights_after`, complete through
/// `insights_through` (insights go by the origin's insight sequence).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub origin: String,
    pub after: u64,
    pub through: u64,
    #[serde(with = "pairs")]
    pub entries: BTreeMap<Subject, Versioned>,
    #[serde(default)]
    pub insights_after: u64,
    #[serde(default)]
    pub insights_through: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insights: Vec<RemoteInsight>,
    /// The origin's fleet models (not its context models), each whole at
    /// its version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<RemoteModel>,
    /// Whole records (failures) above `after`, by id ([`crate::knowledge`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, Record>,
}

/// A region's fleet model as other regions receive it: the weights its own
/// instances' updates moved it to from zero (never what it added of other
/// regions), at its version, and how many instance updates went into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteModel {
    pub name: String,
    pub version: u64,
    pub weights: Vec<f64>,
    pub updates: u64,
}

impl RemoteModel {
    /// Whether `self` supersedes `held` (a higher version; at the same
    /// version, a total order, so every replica keeps the same one).
    fn beats(&self, held: &RemoteModel) -> bool {
        self.version > held.version
            || (self.version == held.version
                && (self.updates, bits(&self.weights)) > (held.updates, bits(&held.weights)))
    }
}

fn bits(weights: &[f64]) -> Vec<u64> {
    weights.iter().map(|w| w.to_bits()).collect()
}

/// The fleet model every region's instances train on: `own` with every
/// other region's model of its name added (in the order given). A model
/// starts at zero and each region's record holds only the steps its own
/// instances' updates made, so the sum is every step of every region,
/// each counted once, as one global hub would have taken them (though
/// each region stepped from the sum it knew then). Its version is the
/// sum of the regions' versions. Models of another shape are left out.
pub fn fleet_model<'a>(
    own: &ModelRecord,
    others: impl IntoIterator<Item = &'a RemoteModel>,
) -> ModelRecord {
    let mut fleet = own.clone();
    for model in others {
        if model.name != own.name || model.weights.len() != fleet.weights.len() {
            continue;
        }
        for (w, other) in fleet.weights.iter_mut().zip(&model.weights) {
            *w += other;
        }
        fleet.version = fleet.version.saturating_add(model.version);
    }
    fleet
}

/// An insight as it crosses regions: the origin's sequence for it (what
/// insights are exchanged by) and what it says — not who shared it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteInsight {
    pub origin_sequence: u64,
    pub id: String,
    pub draft: InsightDraft,
    pub created_at: UnixMillis,
    pub valid_until: UnixMillis,
}

impl Batch {
    /// Whether it carries nothing the receiver lacks (no entries, no
    /// insights, no version to move).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.insights.is_empty()
            && self.models.is_empty()
            && self.records.is_empty()
            && self.through <= self.after
            && self.insights_through <= self.insights_after
    }
}

/// One origin's knowledge as held: its entries, and the version through
/// which they are known to be complete.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OriginState {
    pub complete_through: u64,
    #[serde(with = "pairs")]
    pub entries: BTreeMap<Subject, Versioned>,
    /// The origin's insight sequence through which its insights are held.
    #[serde(default)]
    pub insights_through: u64,
    /// Each imported insight: the origin's sequence → this region's (0: it
    /// had expired when it arrived).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub imported: BTreeMap<u64, u64>,
    /// The origin's fleet models, by name, each the newest version held.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, RemoteModel>,
    /// The origin's whole records (failures), by id, each the newest
    /// version held.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, Record>,
}

impl OriginState {
    /// Folds one of this origin's batches in: each entry kept where it
    /// supersedes what is held; `complete_through` moves to the batch's
    /// `through` only when the batch continues what is held (`after` at
    /// most the version held), otherwise its entries are kept and the gap
    /// is asked for again. Returns whether anything changed.
    pub fn merge(&mut self, batch: &Batch) -> bool {
        let mut changed = false;
        // Aggregates sent whole (with their marker): a newer version
        // replaces every entry held of the aggregate; an older one is
        // dropped whole.
        let markers = markers(batch);
        for (aggregate, entry) in &markers {
            if !self
                .entries
                .get(aggregate)
                .is_none_or(|held| entry.beats(held))
            {
                continue;
            }
            let stale: Vec<Subject> = aggregate_entries(&self.entries, aggregate)
                .into_iter()
                .map(|(s, _)| s.clone())
                .collect();
            for subject in stale {
                self.entries.remove(&subject);
            }
            for (subject, e) in aggregate_entries(&batch.entries, aggregate) {
                self.entries.insert(subject.clone(), *e);
            }
            self.entries.insert(aggregate.clone(), *entry);
            changed = true;
        }
        for (subject, entry) in &batch.entries {
            if sent_whole(&markers, subject) {
                continue;
            }
            match self.entries.get(subject) {
                Some(held) if !entry.beats(held) => {}
                _ => {
                    self.entries.insert(subject.clone(), *entry);
                    changed = true;
                }
            }
        }
        changed |= knowledge::merge(&mut self.records, &batch.records);
        if batch.after <= self.complete_through && batch.through > self.complete_through {
            self.complete_through = batch.through;
            changed = true;
        }
        for model in &batch.models {
            if self
                .models
                .get(&model.name)
                .is_none_or(|held| model.beats(held))
            {
                self.models.insert(model.name.clone(), model.clone());
                changed = true;
            }
        }
        changed
    }

    /// Whether merging `batch` would change anything.
    pub fn would_change(&self, batch: &Batch) -> bool {
        let markers = markers(batch);
        if markers.iter().any(|(aggregate, entry)| {
            self.entries
                .get(aggregate)
                .is_none_or(|held| entry.beats(held))
        }) {
            return true;
        }
        (batch.after <= self.complete_through && batch.through > self.complete_through)
            || (batch.insights_after <= self.insights_through
                && batch.insights_through > self.insights_through)
            || batch
                .insights
                .iter()
                .any(|i| !self.imported.contains_key(&i.origin_sequence))
            || batch
                .models
                .iter()
                .any(|m| self.models.get(&m.name).is_none_or(|held| m.beats(held)))
            || knowledge::would_change(&self.records, &batch.records)
            || batch.entries.iter().any(|(subject, entry)| {
                !sent_whole(&markers, subject)
                    && self
                        .entries
                        .get(subject)
                        .is_none_or(|held| entry.beats(held))
            })
    }

    /// Its entries above `after`, as a batch of `origin` (a region passes
    /// on what it holds of third regions, so knowledge crosses a cut link
    /// by another path).
    pub fn since(&self, origin: &str, after: u64) -> Batch {
        Batch {
            origin: origin.to_string(),
            after,
            through: self.complete_through,
            entries: above(&self.entries, after),
            records: knowledge::above(&self.records, after),
            // Whole models, small: a receiver keeps only newer versions.
            models: self.models.values().cloned().collect(),
            ..Batch::default()
        }
    }
}

/// The aggregate markers a batch carries.
fn markers(batch: &Batch) -> BTreeMap<Subject, Versioned> {
    batch
        .entries
        .iter()
        .filter(|(s, _)| matches!(s, Subject::Aggregate { .. }))
        .map(|(s, e)| (s.clone(), *e))
        .collect()
}

/// Whether `subject` is a marker of `markers` or one of their aggregates'
/// entries (merged whole, not entry by entry).
fn sent_whole(markers: &BTreeMap<Subject, Versioned>, subject: &Subject) -> bool {
    markers.contains_key(subject) || aggregate_of(subject).is_some_and(|a| markers.contains_key(&a))
}

/// The aggregate a strategy, streak or preceded subject belongs to.
fn aggregate_of(subject: &Subject) -> Option<Subject> {
    match subject {
        Subject::Strategy {
            metric,
            strategy,
            context_key,
            ..
        }
        | Subject::Streak {
            metric,
            strategy,
            context_key,
            ..
        }
        | Subject::Preceded {
            metric,
            strategy,
            context_key,
            ..
        } => Some(Subject::Aggregate {
            metric: metric.clone(),
            strategy: strategy.clone(),
            context_key: context_key.clone(),
        }),
        _ => None,
    }
}

/// The first subject of each of `aggregate`'s parts (its strategy,
/// streak and preceded subjects) in subject order: each part is one range.
fn aggregate_starts(aggregate: &Subject) -> Vec<Subject> {
    match aggregate {
        Subject::Aggregate {
            metric,
            strategy,
            context_key,
        } => vec![
            Subject::Strategy {
                metric: metric.clone(),
                strategy: strategy.clone(),
                context_key: context_key.clone(),
                band: 0,
                day: i64::MIN,
            },
            Subject::Streak {
                metric: metric.clone(),
                strategy: strategy.clone(),
                context_key: context_key.clone(),
                class: 0,
            },
            Subject::Preceded {
                metric: metric.clone(),
                strategy: strategy.clone(),
                context_key: context_key.clone(),
                before: String::new(),
            },
        ],
        other => vec![other.clone()],
    }
}

/// Every entry of `aggregate` in `entries` (its parts, not its marker).
fn aggregate_entries<'e>(
    entries: &'e BTreeMap<Subject, Versioned>,
    aggregate: &Subject,
) -> Vec<(&'e Subject, &'e Versioned)> {
    aggregate_starts(aggregate)
        .into_iter()
        .flat_map(|start| {
            entries
                .range(start..)
                .take_while(|(s, _)| in_aggregate(s, aggregate))
        })
        .collect()
}

/// Whether `subject` is one of `aggregate`'s parts.
fn in_aggregate(subject: &Subject, aggregate: &Subject) -> bool {
    aggregate_of(subject).as_ref() == Some(aggregate)
}

/// A map with structured keys, written as a list of pairs: JSON (the
/// command log's and the tables' encoding) has only string keys.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// What other regions know of one strategy on one metric, as a hub's
/// rankings use it: per context key, their day buckets (every origin's
/// entries added origin by origin, in the order given), and how many
/// origins have any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    pub by_context: BTreeMap<String, Vec<DayBucket>>,
    pub origins: u32,
    /// Lifetime outcomes by streak class, every context's summed.
    pub streaks: Vec<OutcomeStats>,
    /// Lifetime outcomes by strategy applied shortly before, every
    /// context's summed.
    pub preceded_by: BTreeMap<String, OutcomeStats>,
}

/// [`Remote`] evidence on `strategy` for `metric` from `origins`.
pub fn remote_evidence<'a>(
    origins: impl IntoIterator<Item = &'a OriginState>,
    metric: &str,
    strategy: &str,
) -> Remote {
    let start = Subject::Strategy {
        metric: metric.to_string(),
        strategy: strategy.to_string(),
        context_key: String::new(),
        band: 0,
        day: i64::MIN,
    };
    let mut remote = Remote::default();
    for origin in origins {
        let mut any = false;
        for (subject, entry) in origin.entries.range(start.clone()..) {
            let Subject::Strategy {
                metric: m,
                strategy: s,
                context_key,
                band,
                day,
            } = subject
            else {
                break;
            };
            if m != metric || s != strategy {
                break;
            }
            let band = usize::from(*band);
            if entry.stats.count == 0 || band >= VALUE_BANDS {
                continue;
            }
            any = true;
            let window = remote.by_context.entry(context_key.clone()).or_default();
            let at = match window.iter().position(|b| b.day == *day) {
                Some(at) => at,
                None => {
                    window.push(DayBucket {
                        day: *day,
                        bands: [OutcomeStats::default(); VALUE_BANDS],
                    });
                    window.len() - 1
                }
            };
            let outcomes = &mut window[at].bands[band];
            *outcomes = outcomes.merge(&entry.stats.outcomes());
        }
        remote.origins += u32::from(any);
        let streaks = Subject::Streak {
            metric: metric.to_string(),
            strategy: strategy.to_string(),
            context_key: String::new(),
            class: 0,
        };
        for (subject, entry) in origin.entries.range(streaks..) {
            let Subject::Streak {
                metric: m,
                strategy: s,
                class,
                ..
            } = subject
            else {
                break;
            };
            if m != metric || s != strategy {
                break;
            }
            let class = usize::from(*class);
            if class >= STREAK_CLASSES {
                continue;
            }
            if remote.streaks.len() <= class {
                remote.streaks.resize(class + 1, OutcomeStats::default());
            }
            remote.streaks[class] = remote.streaks[class].merge(&entry.stats.outcomes());
        }
        let preceded = Subject::Preceded {
            metric: metric.to_string(),
            strategy: strategy.to_string(),
            context_key: String::new(),
            before: String::new(),
        };
        for (subject, entry) in origin.entries.range(preceded..) {
            let Subject::Preceded {
                metric: m,
                strategy: s,
                before,
                ..
            } = subject
            else {
                break;
            };
            if m != metric || s != strategy {
                break;
            }
            let held = remote.preceded_by.entry(before.clone()).or_default();
            *held = held.merge(&entry.stats.outcomes());
        }
    }
    remote
}

/// How often other regions' instances applied `strategy` (on any metric),
/// in total and shortly after each other strategy: every origin's
/// [`Subject::Usage`] entries summed.
pub fn remote_usage<'a>(
    origins: impl IntoIterator<Item = &'a OriginState>,
    strategy: &str,
) -> (u64, BTreeMap<String, u64>) {
    let start = Subject::Usage {
        strategy: strategy.to_string(),
        before: String::new(),
    };
    let mut total = 0u64;
    let mut preceded_by: BTreeMap<String, u64> = BTreeMap::new();
    for origin in origins {
        for (subject, entry) in origin.entries.range(start.clone()..) {
            let Subject::Usage {
                strategy: s,
                before,
            } = subject
            else {
                break;
            };
            if s != strategy {
                break;
            }
            if before.is_empty() {
                total = total.saturating_add(entry.stats.count);
            } else {
                let n = preceded_by.entry(before.clone()).or_default();
                *n = n.saturating_add(entry.stats.count);
            }
        }
    }
    (total, preceded_by)
}

/// One subject's fleet-wide figures: every origin's stats summed, and how
/// many origin regions have evidence on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStats {
    pub stats: Stats,
    pub origins: u32,
}

/// The fleet's figures from every origin's entries (this region's own
/// export among them), summed origin by origin in name order: every region
/// that holds the same entries gets the same figures, to the bit.
pub fn fleet_figures<'a>(
    origins: &BTreeMap<&'a str, &'a BTreeMap<Subject, Versioned>>,
) -> BTreeMap<Subject, FleetStats> {
    let mut total: BTreeMap<Subject, FleetStats> = BTreeMap::new();
    for entries in origins.values() {
        for (subject, entry) in *entries {
            if entry.stats.count == 0 {
                continue;
            }
            let sum = total.entry(subject.clone()).or_default();
            sum.stats = sum.stats.plus(&entry.stats);
            sum.origins += 1;
        }
    }
    total
}

/// A SHA-256 over fleet figures, entry by entry in subject order: equal
/// for regions that hold the same knowledge.
pub fn figures_digest<'a>(
    figures: impl IntoIterator<Item = (&'a Subject, &'a FleetStats)>,
) -> [u8; 32] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for entry in figures {
        // Plain data: encoding cannot fail.
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        hash.update(&(bytes.len() as u64).to_be_bytes());
        hash.update(&bytes);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(hash.finish().as_ref());
    digest
}

/// What a region exports of its strategy aggregates above `after`: every
/// day's band of every aggregate whose last outcome came after it and that
/// at least two instances reported (the admitted evidence, within the
/// bounds of [`crate::influence`]), each at
/// the aggregate's version ([`StrategyRecord::version`]), with the
/// aggregate's marker ([`Subject::Aggregate`]); complete through `through` (the
/// region's log position). Nothing in it names an instance.
pub fn export_strategies<'r>(
    origin: &str,
    records: impl IntoIterator<Item = &'r StrategyRecord>,
    after: u64,
    through: u64,
) -> Batch {
    let mut entries = BTreeMap::new();
    // Per strategy: its newest aggregate's version, and its applications.
    let mut usage: BTreeMap<&str, (u64, StrategyUsage)> = BTreeMap::new();
    for record in records {
        let version = record.version();
        let used = usage.entry(record.strategy.as_str()).or_default();
        used.0 = used.0.max(version);
        used.1.add(record);
        if version <= after {
            continue;
        }
        // The marker: the aggregate is sent whole at this version (alone
        // once it no longer crosses, so receivers drop what they held).
        entries.insert(
            Subject::Aggregate {
                metric: record.metric.clone(),
                strategy: record.strategy.clone(),
                context_key: record.context_key.clone(),
            },
            Versioned {
                version,
                stats: Stats::default(),
            },
        );
        // Only corroborated evidence crosses: what a newcomer here may see
        // (two reporters at least), so another region's instances never
        // rank on what a single instance said.
        if !Viewer::Newcomer.sees(&record.instances) {
            continue;
        }
        for bucket in &record.window {
            for (band, outcomes) in bucket.bands.iter().enumerate() {
                if outcomes.applications == 0 {
                    continue;
                }
                entries.insert(
                    Subject::Strategy {
                        metric: record.metric.clone(),
                        strategy: record.strategy.clone(),
                        context_key: record.context_key.clone(),
                        band: band as u8,
                        day: bucket.day,
                    },
                    Versioned {
                        version,
                        stats: Stats::from_outcomes(outcomes),
                    },
                );
            }
        }
        let at = |stats: &OutcomeStats| Versioned {
            version,
            stats: Stats::from_outcomes(stats),
        };
        for (class, stats) in record.streaks.iter().enumerate().take(STREAK_CLASSES) {
            if stats.applications > 0 {
                entries.insert(
                    Subject::Streak {
                        metric: record.metric.clone(),
                        strategy: record.strategy.clone(),
                        context_key: record.context_key.clone(),
                        class: class as u8,
                    },
                    at(stats),
                );
            }
        }
        for (before, stats) in &record.preceded_by {
            if stats.applications > 0 {
                entries.insert(
                    Subject::Preceded {
                        metric: record.metric.clone(),
                        strategy: record.strategy.clone(),
                        context_key: record.context_key.clone(),
                        before: before.clone(),
                    },
                    at(stats),
                );
            }
        }
    }
    // Usage counts every aggregate, corroborated or not: it is what the
    // origin's failure reports are rates of, and it names no instance.
    for (strategy, (version, used)) in usage {
        if version <= after {
            continue;
        }
        let count = |count: u64| Versioned {
            version,
            stats: Stats {
                count,
                ..Stats::default()
            },
        };
        entries.insert(
            Subject::Usage {
                strategy: strategy.to_string(),
                before: String::new(),
            },
            count(used.applications),
        );
        for (before, n) in &used.preceded_by {
            entries.insert(
                Subject::Usage {
                    strategy: strategy.to_string(),
                    before: before.clone(),
                },
                count(*n),
            );
        }
    }
    Batch {
        origin: origin.to_string(),
        after,
        through,
        entries,
        ..Batch::default()
    }
}

/// The entries that changed after `after`.
fn above(entries: &BTreeMap<Subject, Versioned>, after: u64) -> BTreeMap<Subject, Versioned> {
    entries
        .iter()
        .filter(|(_, e)| e.version > after)
        .map(|(s, e)| (s.clone(), *e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every other origin's knowledge, as one region holds it (the hub keeps
    /// it in `State`'s `regions` table; this is its model for the properties).
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Merged {
        pub origins: BTreeMap<String, OriginState>,
    }

    impl Merged {
        /// Folds a batch in: each entry kept where it supersedes what is
        /// held. The origin's vector moves to `through` only when the batch
        /// continues what is held (`after` at most the version held);
        /// otherwise its entries are kept and the gap is asked for again.
        /// Returns whether anything changed.
        pub fn merge(&mut self, batch: &Batch) -> bool {
            self.origins
                .entry(batch.origin.clone())
                .or_default()
                .merge(batch)
        }

        /// The version through which each origin is held complete: what a
        /// pull asks a peer to send entries above.
        pub fn version_vector(&self) -> BTreeMap<String, u64> {
            self.origins
                .iter()
                .map(|(origin, state)| (origin.clone(), state.complete_through))
                .collect()
        }

        /// What this region can pass on of `origin` above `after` (a peer
        /// relays what it holds of third regions too, so knowledge crosses a
        /// cut link by another path).
        pub fn since(&self, origin: &str, after: u64) -> Option<Batch> {
            Some(self.origins.get(origin)?.since(origin, after))
        }

        /// The fleet's figures: `own` (this region's) plus every other
        /// origin's. `own_origin` is never counted from `self`, even if a
        /// peer relayed it back.
        pub fn fleet(
            &self,
            own_origin: &str,
            own: &BTreeMap<Subject, Stats>,
        ) -> BTreeMap<Subject, Stats> {
            let mut total = own.clone();
            for (origin, state) in &self.origins {
                if origin == own_origin {
                    continue;
                }
                for (subject, entry) in &state.entries {
                    let sum = total.entry(subject.clone()).or_default();
                    *sum = sum.plus(&entry.stats);
                }
            }
            total
        }

        /// How many other origin regions have evidence on `subject`.
        pub fn origins_of(&self, own_origin: &str, subject: &Subject) -> usize {
            self.origins
                .iter()
                .filter(|(origin, state)| {
                    *origin != own_origin
                        && state
                            .entries
                            .get(subject)
                            .is_some_and(|e| e.stats.count > 0)
                })
                .count()
        }
    }

    /// An origin's own knowledge as it exports it, subject by subject: each
    /// subject's stats with the version at which they last changed.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Export {
        pub origin: String,
        pub version: u64,
        pub entries: BTreeMap<Subject, Versioned>,
        pub records: BTreeMap<String, Record>,
    }

    impl Export {
        pub fn new(origin: &str) -> Export {
            Export {
                origin: origin.to_string(),
                ..Export::default()
            }
        }

        /// Records an observation at the origin's next version.
        pub fn observe(&mut self, subject: Subject, observation: Stats) {
            self.version += 1;
            let entry = self.entries.entry(subject).or_insert(Versioned {
                version: 0,
                stats: Stats::default(),
            });
            entry.stats = entry.stats.plus(&observation);
            entry.version = self.version;
        }

        /// Records a report of failure `k` at the origin's next version:
        /// one more occurrence, or (`withdrawn`) the failure no longer
        /// crossing.
        pub fn report_failure(&mut self, k: u8, withdrawn: bool) {
            self.version += 1;
            let id = format!("failure_{k}");
            let occurrences = match self.records.get(&id).and_then(|r| r.knowledge.as_ref()) {
                Some(knowledge::Knowledge::Failure(f)) => f.occurrences,
                _ => 0,
            };
            let knowledge = (!withdrawn).then(|| {
                knowledge::Knowledge::Failure(knowledge::FailureKnowledge {
                    failure_type: crate::model::FailureType::Deadlock,
                    metric: "m".into(),
                    strategy: format!("s{k}"),
                    triggers: vec![format!("at {}", self.version)],
                    occurrences: occurrences + 1,
                    recovery: BTreeMap::new(),
                    prevention: Vec::new(),
                    preceded_by: BTreeMap::new(),
                    magnitude: RunningStats::default(),
                    resolved: false,
                    first_seen: 0,
                    last_seen: self.version as i64,
                })
            });
            self.records.insert(
                id,
                Record {
                    version: self.version,
                    knowledge,
                },
            );
        }

        /// Its entries and records above `after`, complete through its
        /// current version.
        pub fn since(&self, after: u64) -> Batch {
            Batch {
                origin: self.origin.clone(),
                after,
                through: self.version,
                entries: above(&self.entries, after),
                records: knowledge::above(&self.records, after),
                ..Batch::default()
            }
        }

        /// Its stats alone.
        pub fn stats(&self) -> BTreeMap<Subject, Stats> {
            self.entries
                .iter()
                .map(|(s, e)| (s.clone(), e.stats))
                .collect()
        }
    }

    fn subject(k: u8) -> Subject {
        Subject::Strategy {
            metric: format!("m{}", k % 3),
            strategy: format!("s{}", k % 4),
            context_key: String::new(),
            band: k % 2,
            day: i64::from(k % 2),
        }
    }

    /// Three origins' histories: (origin, subject, successful, value).
    fn histories() -> impl Strategy<Value = Vec<(u8, u8, bool, i8)>> {
        proptest::collection::vec((0u8..3, 0u8..12, any::<bool>(), any::<i8>()), 1..60)
    }

    /// Every origin's export after `events`, and the batches it sent on
    /// the way: cut at `cuts` (versions), each from the previous cut.
    fn run(events: &[(u8, u8, bool, i8)], cuts: &[u8]) -> (Vec<Export>, Vec<Batch>) {
        let mut exports: Vec<Export> = (0..3).map(|o| Export::new(&format!("r{o}"))).collect();
        let mut batches = Vec::new();
        let mut last = [0u64; 3];
        for (i, (origin, k, ok, v)) in events.iter().enumerate() {
            let o = *origin as usize;
            if k % 4 == 0 {
                // Now and then a failure report instead, or its withdrawal.
                exports[o].report_failure(k % 3, *v < -100);
            } else {
                exports[o].observe(subject(*k), Stats::of(*ok, f64::from(*v) / 100.0));
            }
            if cuts.contains(&(i as u8)) {
                batches.push(exports[o].since(last[o]));
                last[o] = exports[o].version;
            }
        }
        for o in 0..3 {
            batches.push(exports[o].since(last[o]));
        }
        (exports, batches)
    }

    fn truth(exports: &[Export]) -> BTreeMap<Subject, Stats> {
        let mut all = BTreeMap::new();
        for e in exports {
            for (s, stats) in e.stats() {
                let sum: &mut Stats = all.entry(s).or_default();
                *sum = sum.plus(&stats);
            }
        }
        all
    }

    proptest! {
        /// Batches delivered in any order, some twice, fold to the same
        /// state, and the fleet totals are exactly every origin's stats
        /// summed once: what one hub fed every observation would hold.
        #[test]
        fn merge_is_order_and_duplicate_insensitive_and_counts_once(
            events in histories(),
            cuts in proptest::collection::vec(any::<u8>(), 0..10),
            order in any::<u64>(),
            repeats in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let (exports, batches) = run(&events, &cuts);
            let mut in_order = Merged::default();
            for b in &batches {
                in_order.merge(b);
            }
            // A shuffled delivery with replays.
            let mut shuffled: Vec<&Batch> = batches.iter().collect();
            for r in &repeats {
                shuffled.push(r.get(&batches));
            }
            let mut seed = order;
            for i in (1..shuffled.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let mut other = Merged::default();
            for b in &shuffled {
                other.merge(b);
            }
            // Entries are the same whatever the order (the vector can lag
            // behind a reordered delivery, and is asked again).
            for (origin, state) in &in_order.origins {
                prop_assert_eq!(&state.entries, &other.origins[origin].entries);
                prop_assert_eq!(&state.records, &other.origins[origin].records);
            }
            // Each origin's records as it last had them, whatever the order.
            for e in &exports {
                let held = other.origins.get(&e.origin).map(|s| s.records.clone());
                prop_assert_eq!(held.unwrap_or_default(), e.records.clone());
            }
            prop_assert_eq!(in_order.fleet("none", &BTreeMap::new()), truth(&exports));
            // The same figures summed origin by origin in name order (as a
            // hub reports them), with how many origins contributed.
            let by_origin: BTreeMap<&str, &BTreeMap<Subject, Versioned>> = in_order
                .origins
                .iter()
                .map(|(o, state)| (o.as_str(), &state.entries))
                .collect();
            let figures = fleet_figures(&by_origin);
            let nonzero: BTreeMap<Subject, Stats> =
                truth(&exports).into_iter().filter(|(_, s)| s.count > 0).collect();
            prop_assert_eq!(
                figures.iter().map(|(s, f)| (s.clone(), f.stats)).collect::<BTreeMap<_, _>>(),
                nonzero
            );
            for (subject, f) in &figures {
                prop_assert_eq!(f.origins as usize, in_order.origins_of("none", subject));
            }
            // Merging everything again changes nothing.
            let before = other.clone();
            for b in &batches {
                other.merge(b);
            }
            prop_assert_eq!(&before.origins.keys().collect::<Vec<_>>(), &other.origins.keys().collect::<Vec<_>>());
            for (origin, state) in &before.origins {
                prop_assert_eq!(&state.entries, &other.origins[origin].entries);
                prop_assert_eq!(&state.records, &other.origins[origin].records);
            }
        }

        /// `would_change` says exactly whether a merge changes anything,
        /// and what a hub keeps survives its encoding.
        #[test]
        fn would_change_predicts_merge_and_state_round_trips(
            events in histories(),
            cuts in proptest::collection::vec(any::<u8>(), 0..10),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let (_, batches) = run(&events, &cuts);
            let mut held = Merged::default();
            for i in &order {
                let batch = i.get(&batches);
                let state = held.origins.get(&batch.origin).cloned().unwrap_or_default();
                let predicted = state.would_change(batch);
                prop_assert_eq!(predicted, held.merge(batch));
            }
            for (origin, state) in &held.origins {
                let json = serde_json::to_string(state).unwrap();
                prop_assert_eq!(&serde_json::from_str::<OriginState>(&json).unwrap(), state);
                let batch = state.since(origin, 0);
                let json = serde_json::to_string(&batch).unwrap();
                prop_assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
            }
        }

        /// A region that pulls from its vector catches up after any gap,
        /// and a region's own origin relayed back is never counted twice.
        #[test]
        fn pulling_from_the_vector_converges_and_own_knowledge_counts_once(
            events in histories(),
            cuts in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let (exports, batches) = run(&events, &cuts);
            // Region r0 holds a relay that has seen every batch.
            let mut relay = Merged::default();
            for b in &batches {
                relay.merge(b);
            }
            // r0 saw only the first batch of each origin, then the link
            // was cut; after healing it pulls above its vector.
            let mut r0 = Merged::default();
            for b in batches.iter().filter(|b| b.after == 0) {
                r0.merge(b);
            }
            for (origin, held) in r0.version_vector() {
                if let Some(b) = relay.since(&origin, held) {
                    r0.merge(&b);
                }
            }
            for origin in relay.origins.keys() {
                if !r0.origins.contains_key(origin) {
                    r0.merge(&relay.since(origin, 0).unwrap());
                }
            }
            prop_assert_eq!(r0.version_vector(), relay.version_vector());
            let own = exports[0].stats();
            prop_assert_eq!(r0.fleet("r0", &own), truth(&exports));
        }
    }

    /// Aggregates sent whole (with their marker) replace what was held of
    /// them, in any order of delivery: the newest version's entries and
    /// nothing else remain, so a rebuild's removals cross too.
    #[test]
    fn an_aggregate_sent_whole_replaces_what_was_held_in_any_order() {
        let marker = Subject::Aggregate {
            metric: "m".into(),
            strategy: "s".into(),
            context_key: "c".into(),
        };
        let at = |band: u8| Subject::Strategy {
            metric: "m".into(),
            strategy: "s".into(),
            context_key: "c".into(),
            band,
            day: 1,
        };
        let other = Subject::Strategy {
            metric: "m".into(),
            strategy: "t".into(),
            context_key: "c".into(),
            band: 0,
            day: 1,
        };
        let entry = |version, count| Versioned {
            version,
            stats: Stats {
                count,
                ..Stats::default()
            },
        };
        let batch = |entries: Vec<(Subject, Versioned)>| Batch {
            origin: "eu-west".into(),
            entries: entries.into_iter().collect(),
            ..Batch::default()
        };
        let v1 = batch(vec![
            (marker.clone(), entry(1, 0)),
            (at(0), entry(1, 3)),
            (at(1), entry(1, 2)),
            (other.clone(), entry(1, 5)),
        ]);
        // Rebuilt: band 1 emptied.
        let v2 = batch(vec![(marker.clone(), entry(2, 0)), (at(0), entry(2, 1))]);
        // No longer crossing: the marker alone.
        let v3 = batch(vec![(marker.clone(), entry(3, 0))]);
        let fold = |order: &[&Batch]| {
            let mut held = OriginState::default();
            for b in order {
                let predicted = held.would_change(b);
                assert_eq!(predicted, held.merge(b));
            }
            held.entries
        };
        let after_v2 = fold(&[&v1, &v2]);
        assert_eq!(after_v2, fold(&[&v2, &v1]));
        assert_eq!(after_v2, fold(&[&v1, &v2, &v1, &v2]));
        assert_eq!(after_v2.get(&at(0)), Some(&entry(2, 1)));
        assert_eq!(after_v2.get(&at(1)), None, "the emptied band is gone");
        assert_eq!(
            after_v2.get(&other),
            Some(&entry(1, 5)),
            "another aggregate stays"
        );
        let after_v3 = fold(&[&v3, &v1, &v2]);
        assert_eq!(after_v3, fold(&[&v1, &v2, &v3]));
        assert_eq!(after_v3.get(&at(0)), None);
        assert_eq!(after_v3.get(&marker), Some(&entry(3, 0)));
    }

    #[test]
    fn fleet_models_are_kept_newest_first_and_summed() {
        let model = |version, w: f64, updates| RemoteModel {
            name: "plateau".into(),
            version,
            weights: vec![w; 2],
            updates,
        };
        let batch = |m| Batch {
            origin: "eu-west".into(),
            models: vec![m],
            ..Batch::default()
        };
        let mut held = OriginState::default();
        assert!(held.would_change(&batch(model(2, 1.0, 3))));
        assert!(held.merge(&batch(model(2, 1.0, 3))));
        // An older version, or the same again, changes nothing.
        for old in [model(1, 9.0, 9), model(2, 1.0, 3)] {
            assert!(!held.would_change(&batch(old.clone())));
            assert!(!held.merge(&batch(old)));
        }
        assert_eq!(held.models["plateau"].weights, [1.0, 1.0]);
        // Own weights 0.5 at version 1, eu-west's 1.0 at version 2: the
        // steps add up, and so do the versions.
        let mut own = ModelRecord::new("plateau", 2, 0);
        own.weights = vec![0.5, 0.5];
        own.version = 1;
        let fleet = fleet_model(&own, held.models.values());
        assert_eq!((fleet.version, fleet.weights), (3, vec![1.5, 1.5]));
        // A model of another shape or name is left out.
        let odd = [
            RemoteModel {
                weights: vec![5.0; 3],
                ..model(1, 5.0, 4)
            },
            RemoteModel {
                name: "other".into(),
                ..model(1, 5.0, 4)
            },
        ];
        let alone = fleet_model(&own, &odd);
        assert_eq!((alone.version, alone.weights), (1, vec![0.5, 0.5]));
    }

    #[test]
    fn a_region_exports_its_admitted_evidence_by_band_and_day_and_no_instance() {
        use crate::model::{StrategyKey, StrategyOutcome};
        let now = 20_000 * 86_400_000;
        let mut record = StrategyRecord::empty(&StrategyKey::new("lv", "steady", "tier=gold"), now);
        for (i, (who, value, ok, delta)) in [
            ("secret-instance-a", 0.15, true, 0.1),
            ("secret-instance-b", 0.15, false, -0.2),
            ("secret-instance-a", 0.75, true, 0.3),
        ]
        .into_iter()
        .enumerate()
        {
            record.record(
                &StrategyOutcome {
                    sequence: i as u64 + 1,
                    at: now,
                    instance_id: who.into(),
                    strategy: "steady".into(),
                    metric: "lv".into(),
                    value_before: value,
                    successful: ok,
                    delta,
                    condition: String::new(),
                    context: [("tier".to_string(), "gold".to_string())].into(),
                    streak: 0,
                    preceded_by: vec![],
                },
                7,
            );
            record.through_sequence = i as u64 + 1;
        }
        // One reporter so far: nothing of it crosses but its marker and
        // the strategy's usage count.
        let lone = {
            let mut r = record.clone();
            r.instances.remove("secret-instance-b");
            r
        };
        let lone_batch = export_strategies("eu-west", [&lone], 0, 3);
        assert!(
            lone_batch
                .entries
                .keys()
                .all(|s| matches!(s, Subject::Aggregate { .. } | Subject::Usage { .. })),
            "only its marker and usage: {lone_batch:?}"
        );
        assert_eq!(lone_batch.entries.len(), 2);
        let batch = export_strategies("eu-west", [&record], 0, 3);
        // Its lifetime streak class and usage go with it.
        let streak = &batch.entries[&Subject::Streak {
            metric: "lv".into(),
            strategy: "steady".into(),
            context_key: "tier=gold".into(),
            class: 0,
        }];
        assert_eq!((streak.stats.count, streak.stats.successes), (3, 2));
        let usage = &batch.entries[&Subject::Usage {
            strategy: "steady".into(),
            before: String::new(),
        }];
        assert_eq!((usage.version, usage.stats.count), (3, 3));
        let low = &batch.entries[&Subject::Strategy {
            metric: "lv".into(),
            strategy: "steady".into(),
            context_key: "tier=gold".into(),
            band: 0,
            day: 20_000,
        }];
        assert_eq!(low.version, 3);
        assert_eq!((low.stats.count, low.stats.successes), (2, 1));
        assert!((low.stats.gain_sum - 0.1).abs() < 1e-12);
        assert!((low.stats.loss_sum + 0.2).abs() < 1e-12);
        // Two bands, a streak class, the aggregate's marker and usage.
        assert_eq!(batch.entries.len(), 5);
        let wire = format!("{batch:?}");
        assert!(!wire.contains("secret-instance"), "{wire}");
        // Nothing newer than what the peer holds: nothing sent.
        assert!(
            export_strategies("eu-west", [&record], 3, 3)
                .entries
                .is_empty()
        );
    }

    #[test]
    fn a_batch_after_a_gap_keeps_its_entries_but_not_the_vector() {
        let mut e = Export::new("eu");
        e.observe(subject(1), Stats::of(true, 0.1));
        let first = e.since(0);
        e.observe(subject(2), Stats::of(false, -0.1));
        let second = e.since(first.through);
        let mut m = Merged::default();
        assert!(m.merge(&second));
        assert_eq!(m.version_vector()["eu"], 0, "version 1 is still missing");
        assert!(m.merge(&first));
        assert_eq!(m.version_vector()["eu"], 1);
        assert!(m.merge(&second));
        assert_eq!(m.version_vector()["eu"], 2);
        assert!(!m.merge(&second), "a replay changes nothing");
        assert_eq!(m.origins_of("us", &subject(1)), 1);
        assert_eq!(m.origins_of("eu", &subject(1)), 0, "its own");
    }
}
