//! Whole records crossing regions: what another region knows of a failure,
//! and how this region's queries join it to their own.
//!
//! Strategy statistics cross as sums ([`crate::digest`]); a failure carries
//! text too (its triggers and prevention advice) and rates that are only
//! meaningful whole, so it crosses as one [`Record`] per failure id (the
//! id is derived from the failure's content, so every region names the
//! same failure alike), at the origin's version (the log position of its
//! last change). A receiver keeps, per origin and id, the record of the
//! highest version: a join, like the entries'. A record without knowledge
//! says the failure no longer crosses (an instance's quarantine left it
//! one reporter), so what a receiver held of it goes.
//!
//! Only what a newcomer to the origin region may see crosses: failures two
//! instances reported at least, their counted occurrences, and recovery
//! methods and advice within [`crate::influence`]'s bounds — never an
//! instance id. On arrival, another region's knowledge of a failure joins
//! this region's record of it ([`joined_failure`]) as the voice of
//! [`EARLIER_REPORTERS`]: it counts in full and informs everyone, as it
//! was already bounded and corroborated where it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::influence::{EARLIER_REPORTERS, Viewer};
use super::model::{
    Attributes, ConfigAlternative, Configuration, FailurePattern, FailureType, MAX_TRIGGERS,
    Metrics, Parameters, Pattern, RIVAL_MIN_DATA_POINTS, RecoveryMethodStats, RecoveryStat,
    UnixMillis, context_key,
};
use super::prevention::StrategyUsage;
use super::stats::RunningStats;

/// A failure as other regions learn of it: its figures, no reporter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureKnowledge {
    pub failure_type: FailureType,
    pub metric: String,
    pub strategy: String,
    /// Distinct triggers, newest last.
    pub triggers: Vec<String>,
    /// Occurrences as the origin counts them (each reporter's up to its
    /// applications of the strategy).
    pub occurrences: u64,
    /// Recovery methods as a newcomer there sees them.
    pub recovery: BTreeMap<String, RecoveryMethodStats>,
    /// Prevention advice as a newcomer there sees it.
    pub prevention: Vec<String>,
    /// Occurrences after each strategy applied shortly before.
    pub preceded_by: BTreeMap<String, u64>,
    pub magnitude: RunningStats,
    /// An operator there marked it no longer applicable.
    pub resolved: bool,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
}

/// A plateau pattern as other regions learn of it. Its signature holds
/// its environment, which every reporter shared alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternKnowledge {
    pub signature: String,
    pub metrics: Metrics,
    pub environment: Attributes,
    pub cycles_until_plateau: RunningStats,
    pub recovery: BTreeMap<String, RecoveryStat>,
    pub recovery_by_metric: BTreeMap<String, BTreeMap<String, RecoveryStat>>,
    /// Counted outcomes of acting on it.
    pub successes: u64,
    pub failures: u64,
    /// Shares of it.
    pub frequency: u64,
    /// Instances that shared it there (a count).
    pub reporters: u64,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
}

/// A configuration as other regions learn of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigKnowledge {
    pub context: Attributes,
    pub parameters: Parameters,
    /// Effectiveness averaged over shares, weighted by their data points.
    pub effectiveness: f64,
    /// The effectiveness values shared, unweighted.
    pub shared_effectiveness: RunningStats,
    pub data_points: u64,
    /// Instances that shared it there (a count).
    pub reporters: u64,
    pub recommendation: String,
    pub alternatives: Vec<ConfigAlternative>,
    pub first_seen: UnixMillis,
    pub last_updated: UnixMillis,
}

/// Knowledge that crosses regions whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knowledge {
    Failure(FailureKnowledge),
    Pattern(PatternKnowledge),
    Configuration(ConfigKnowledge),
}

/// A record as held: its knowledge at the origin's version, or `None` once
/// it no longer crosses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u64,
    pub knowledge: Option<Knowledge>,
}

impl Record {
    /// Whether `self` supersedes `held`: a higher version, or at the same
    /// version a total order on the content, so every replica and region
    /// keeps the same one whatever the order of arrival.
    pub fn beats(&self, held: &Record) -> bool {
        self.version > held.version
            || (self.version == held.version && order_key(self) > order_key(held))
    }
}

fn order_key(record: &Record) -> Vec<u8> {
    // Plain data: encoding cannot fail.
    serde_json::to_vec(&record.knowledge).unwrap_or_default()
}

/// Folds `incoming` into `held`, keeping per id the record that supersedes.
/// Returns whether anything changed.
pub fn merge(held: &mut BTreeMap<String, Record>, incoming: &BTreeMap<String, Record>) -> bool {
    let mut changed = false;
    for (id, record) in incoming {
        if held.get(id).is_none_or(|h| record.beats(h)) {
            held.insert(id.clone(), record.clone());
            changed = true;
        }
    }
    changed
}

/// Whether merging `incoming` into `held` would change anything.
pub fn would_change(held: &BTreeMap<String, Record>, incoming: &BTreeMap<String, Record>) -> bool {
    incoming
        .iter()
        .any(|(id, record)| held.get(id).is_none_or(|h| record.beats(h)))
}

/// The records of a version above `after`.
pub fn above(records: &BTreeMap<String, Record>, after: u64) -> BTreeMap<String, Record> {
    records
        .iter()
        .filter(|(_, r)| r.version > after)
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect()
}

/// What a region exports of its failures changed after `after`: each at
/// its version, with its knowledge when two instances reported it at
/// least, without otherwise (so receivers drop what they held).
/// `usage_of` gives the region's applications of a strategy, which bound
/// how many of each reporter's occurrences count.
pub fn export_failures<'f>(
    failures: impl IntoIterator<Item = &'f FailurePattern>,
    usage_of: impl Fn(&str) -> Arc<StrategyUsage>,
    after: u64,
) -> BTreeMap<String, Record> {
    failures
        .into_iter()
        .filter(|f| f.changed_at > after)
        .map(|f| {
            let knowledge = Viewer::Newcomer.sees_all(&f.instances).then(|| {
                let seen = f.seen_by(Viewer::Newcomer);
                Knowledge::Failure(FailureKnowledge {
                    failure_type: f.failure_type,
                    metric: f.metric.clone(),
                    strategy: f.strategy.clone(),
                    triggers: f.triggers.clone(),
                    occurrences: f.counted_occurrences(&usage_of(&f.strategy).by_instance),
                    recovery: seen.recovery,
                    prevention: seen.prevention,
                    preceded_by: f.preceded_by.clone(),
                    magnitude: f.magnitude,
                    resolved: f.resolved,
                    first_seen: f.first_seen,
                    last_seen: f.last_seen,
                })
            });
            (
                f.id.clone(),
                Record {
                    version: f.changed_at,
                    knowledge,
                },
            )
        })
        .collect()
}

/// What a region exports of its patterns changed after `after` (those two
/// instances shared at least; the others withdrawn).
pub fn export_patterns<'p>(
    patterns: impl IntoIterator<Item = &'p Pattern>,
    after: u64,
) -> BTreeMap<String, Record> {
    patterns
        .into_iter()
        .filter(|p| p.changed_at > after)
        .map(|p| {
            let knowledge = Viewer::Newcomer.sees_all(&p.instances).then(|| {
                Knowledge::Pattern(PatternKnowledge {
                    signature: p.signature.clone(),
                    metrics: p.metrics.clone(),
                    environment: p.environment.clone(),
                    cycles_until_plateau: p.cycles_until_plateau,
                    recovery: p.recovery.clone(),
                    recovery_by_metric: p.recovery_by_metric.clone(),
                    successes: p.successes,
                    failures: p.failures,
                    frequency: p.frequency,
                    reporters: p.instances.len() as u64,
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                })
            });
            let record = Record {
                version: p.changed_at,
                knowledge,
            };
            (p.id.clone(), record)
        })
        .collect()
}

/// What a region exports of its configurations changed after `after`
/// (those two instances shared at least; the others withdrawn).
pub fn export_configurations<'c>(
    configs: impl IntoIterator<Item = &'c Configuration>,
    after: u64,
) -> BTreeMap<String, Record> {
    configs
        .into_iter()
        .filter(|c| c.changed_at > after)
        .map(|c| {
            let knowledge = Viewer::Newcomer.sees_all(&c.instances).then(|| {
                Knowledge::Configuration(ConfigKnowledge {
                    context: c.context.clone(),
                    parameters: c.parameters.clone(),
                    effectiveness: c.effectiveness,
                    shared_effectiveness: c.shared_effectiveness,
                    data_points: c.data_points,
                    reporters: c.instances.len() as u64,
                    recommendation: c.recommendation.clone(),
                    alternatives: c.alternatives.clone(),
                    first_seen: c.first_seen,
                    last_updated: c.last_updated,
                })
            });
            let record = Record {
                version: c.changed_at,
                knowledge,
            };
            (c.id.clone(), record)
        })
        .collect()
}

/// A pattern of this region's own for one only other regions know: its
/// identity, no counts (what an instance acting on it starts from).
pub fn local_pattern(id: &str, known: &PatternKnowledge) -> Pattern {
    Pattern {
        id: id.to_string(),
        signature: known.signature.clone(),
        metrics: known.metrics.clone(),
        cycles_until_plateau: RunningStats::default(),
        recovery: BTreeMap::new(),
        recovery_by_metric: BTreeMap::new(),
        successes: 0,
        failures: 0,
        environment: known.environment.clone(),
        instances: Default::default(),
        first_seen: known.first_seen,
        last_seen: known.last_seen,
        frequency: 0,
        outcome_reports: BTreeMap::new(),
        remote_reporters: 0,
        changed_at: 0,
    }
}

fn add_recovery(into: &mut BTreeMap<String, RecoveryStat>, from: &BTreeMap<String, RecoveryStat>) {
    for (strategy, stat) in from {
        let held = into.entry(strategy.clone()).or_default();
        held.suggested = held.suggested.saturating_add(stat.suggested);
        held.successes = held.successes.saturating_add(stat.successes);
        held.failures = held.failures.saturating_add(stat.failures);
    }
}

/// Pattern `id` as matching sees it: this region's record (if any) with
/// every other region's knowledge of it added; `None` if neither knows it.
pub fn joined_pattern<'k>(
    own: Option<&Pattern>,
    remote: impl IntoIterator<Item = &'k PatternKnowledge>,
    id: &str,
) -> Option<Pattern> {
    let mut remote = remote.into_iter().peekable();
    let mut joined = match (own, remote.peek()) {
        (Some(own), _) => own.clone(),
        (None, Some(first)) => local_pattern(id, first),
        (None, None) => return None,
    };
    for k in remote {
        joined.cycles_until_plateau = joined.cycles_until_plateau.merge(&k.cycles_until_plateau);
        add_recovery(&mut joined.recovery, &k.recovery);
        for (metric, by) in &k.recovery_by_metric {
            add_recovery(
                joined.recovery_by_metric.entry(metric.clone()).or_default(),
                by,
            );
        }
        joined.successes = joined.successes.saturating_add(k.successes);
        joined.failures = joined.failures.saturating_add(k.failures);
        joined.frequency = joined.frequency.saturating_add(k.frequency);
        joined.remote_reporters = joined.remote_reporters.saturating_add(k.reporters);
        joined.first_seen = joined.first_seen.min(k.first_seen);
        joined.last_seen = joined.last_seen.max(k.last_seen);
    }
    Some(joined)
}

/// Every configuration as a bootstrap sees it: this region's (`own`) with
/// other regions' knowledge of the same id added (effectiveness weighted
/// by data points, reporters counted), and those only other regions know;
/// each judged against its context's rivals again, as the fold does. In
/// id order.
pub fn joined_configurations<'k>(
    own: impl IntoIterator<Item = Arc<Configuration>>,
    remote: impl IntoIterator<Item = (&'k str, &'k ConfigKnowledge)>,
) -> Vec<Arc<Configuration>> {
    let mut all: BTreeMap<String, Arc<Configuration>> =
        own.into_iter().map(|c| (c.id.clone(), c)).collect();
    let mut touched: std::collections::BTreeSet<String> = Default::default();
    for (id, k) in remote {
        let config = all.entry(id.to_string()).or_insert_with(|| {
            Arc::new(Configuration {
                id: id.to_string(),
                context: k.context.clone(),
                context_key: context_key(&k.context),
                parameters: k.parameters.clone(),
                effectiveness: 0.0,
                shared_effectiveness: RunningStats::default(),
                data_points: 0,
                instances: Default::default(),
                remote_reporters: 0,
                recommendation: k.recommendation.clone(),
                alternatives: k.alternatives.clone(),
                validated: false,
                validation_date: None,
                first_seen: k.first_seen,
                last_updated: k.last_updated,
                changed_at: 0,
            })
        });
        let c = Arc::make_mut(config);
        let total = c.data_points.saturating_add(k.data_points);
        if total > 0 {
            c.effectiveness = (c.effectiveness * c.data_points as f64
                + k.effectiveness * k.data_points as f64)
                / total as f64;
        }
        c.data_points = total;
        c.shared_effectiveness = c.shared_effectiveness.merge(&k.shared_effectiveness);
        c.remote_reporters = c.remote_reporters.saturating_add(k.reporters);
        c.first_seen = c.first_seen.min(k.first_seen);
        c.last_updated = c.last_updated.max(k.last_updated);
        touched.insert(c.context_key.clone());
    }
    // Judged again where other regions' evidence changed the figures.
    let judged: Vec<(String, Option<f64>)> = all
        .values()
        .filter(|c| touched.contains(&c.context_key))
        .map(|c| {
            let best_rival = all
                .values()
                .filter(|r| {
                    r.context_key == c.context_key
                        && r.id != c.id
                        && r.data_points >= RIVAL_MIN_DATA_POINTS
                })
                .map(|r| r.effectiveness)
                .max_by(f64::total_cmp);
            (c.id.clone(), best_rival)
        })
        .collect();
    for (id, best_rival) in judged {
        if let Some(c) = all.get_mut(&id) {
            let at = c.last_updated;
            Arc::make_mut(c).revalidate(best_rival, at);
        }
    }
    all.into_values().collect()
}

/// The failure `id` as this region's queries see it: its own record (if
/// any) with every other region's knowledge of it joined, in the order
/// given; `None` if neither knows it.
pub fn joined_failure<'k>(
    own: Option<&FailurePattern>,
    remote: impl IntoIterator<Item = &'k FailureKnowledge>,
    id: &str,
) -> Option<FailurePattern> {
    let mut remote = remote.into_iter().peekable();
    let first = remote.peek()?;
    let mut joined = match own {
        Some(own) => own.clone(),
        None => FailurePattern {
            id: id.to_string(),
            failure_type: first.failure_type,
            metric: first.metric.clone(),
            strategy: first.strategy.clone(),
            triggers: Vec::new(),
            occurrences: 0,
            recovery: BTreeMap::new(),
            prevention: Vec::new(),
            instances: Default::default(),
            first_seen: first.first_seen,
            last_seen: first.last_seen,
            preceded_by: BTreeMap::new(),
            magnitude: RunningStats::default(),
            resolved: false,
            reports: BTreeMap::new(),
            recovery_by: BTreeMap::new(),
            advice_by: BTreeMap::new(),
            changed_at: 0,
        },
    };
    // A record from before reporters were kept counts its occurrences
    // plainly; any other counts reporters', the other regions' as one.
    let plain = joined.reports.is_empty() && !joined.instances.is_empty();
    for k in remote {
        joined.occurrences = joined.occurrences.saturating_add(k.occurrences);
        if !plain {
            let n = joined
                .reports
                .entry(EARLIER_REPORTERS.to_string())
                .or_default();
            *n = n.saturating_add(k.occurrences);
        }
        for trigger in &k.triggers {
            if !joined.triggers.contains(trigger) {
                joined.triggers.push(trigger.clone());
            }
        }
        for (method, stats) in &k.recovery {
            let total = joined.recovery.entry(method.clone()).or_default();
            // A method shown as it is (no reporters kept) keeps its
            // attempts under the same voice.
            let earlier =
                (!joined.recovery_by.contains_key(method) && total.attempts > 0).then_some(*total);
            *total = total.merge(stats);
            let by = joined.recovery_by.entry(method.clone()).or_default();
            if let Some(earlier) = earlier {
                by.insert(EARLIER_REPORTERS.to_string(), earlier);
            }
            let voice = by.entry(EARLIER_REPORTERS.to_string()).or_default();
            *voice = voice.merge(stats);
        }
        for advice in &k.prevention {
            if !joined.prevention.contains(advice) {
                joined.prevention.push(advice.clone());
            }
            if let Some(by) = joined.advice_by.get_mut(advice) {
                by.insert(EARLIER_REPORTERS.to_string());
            }
        }
        for (before, n) in &k.preceded_by {
            let held = joined.preceded_by.entry(before.clone()).or_default();
            *held = held.saturating_add(*n);
        }
        joined.magnitude = joined.magnitude.merge(&k.magnitude);
        joined.resolved |= k.resolved;
        joined.first_seen = joined.first_seen.min(k.first_seen);
        joined.last_seen = joined.last_seen.max(k.last_seen);
    }
    let extra = joined.triggers.len().saturating_sub(MAX_TRIGGERS);
    joined.triggers.drain(..extra);
    Some(joined)
}

/// `own` usage of a strategy with other regions' (`remote`: applications
/// in total and after each strategy) added, as the voice of
/// [`EARLIER_REPORTERS`], which is what [`joined_failure`] counts their
/// occurrences under.
pub fn joined_usage(own: &StrategyUsage, remote: (u64, BTreeMap<String, u64>)) -> StrategyUsage {
    let (applications, preceded_by) = remote;
    let mut joined = own.clone();
    if applications > 0 {
        joined.applications = joined.applications.saturating_add(applications);
        let voice = joined
            .by_instance
            .entry(EARLIER_REPORTERS.to_string())
            .or_default();
        *voice = voice.saturating_add(applications);
    }
    for (before, n) in preceded_by {
        let held = joined.preceded_by.entry(before).or_default();
        *held = held.saturating_add(n);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailureReport, RecentApplication, RecoveryAttempt};
    use crate::prevention::check_action;

    fn report(advice: &str, succeeded: bool) -> FailureReport {
        FailureReport {
            failure_type: FailureType::MetricReversal,
            trigger: "lv fell".into(),
            metric: "lv".into(),
            strategy: "boost".into(),
            recovery: vec![RecoveryAttempt {
                method: "roll_back".into(),
                succeeded,
                cycles_to_recover: 3,
            }],
            prevention: vec![advice.into()],
            preceded_by: vec![],
            magnitude: Some(0.2),
            follow_up: false,
        }
    }

    /// A failure reported by `who` (one report each), last changed at 7.
    fn reported_by(who: &[&str]) -> FailurePattern {
        let mut f = FailurePattern::new(&report("warm up first", true), who[0], 0);
        for w in &who[1..] {
            f.record(&report("warm up first", true), w, 0);
        }
        f.changed_at = 7;
        f
    }

    fn usage(by: &[(&str, u64)]) -> Arc<StrategyUsage> {
        Arc::new(StrategyUsage {
            applications: by.iter().map(|(_, n)| n).sum(),
            by_instance: by.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
            preceded_by: BTreeMap::new(),
        })
    }

    #[test]
    fn a_failure_crosses_once_two_reported_it_and_names_no_one() {
        let lone = reported_by(&["secret-a"]);
        let both = reported_by(&["secret-a", "secret-b"]);
        let used = |_: &str| usage(&[("secret-a", 5), ("secret-b", 5)]);
        let records = export_failures([&lone], used, 0);
        assert_eq!(records[&lone.id].knowledge, None, "one reporter: withdrawn");
        assert_eq!(records[&lone.id].version, 7);
        let records = export_failures([&both], used, 0);
        let Some(Knowledge::Failure(k)) = &records[&both.id].knowledge else {
            panic!("{records:?}");
        };
        assert_eq!((k.occurrences, k.prevention.len()), (2, 1));
        assert_eq!(k.recovery["roll_back"].attempts, 2);
        let wire = serde_json::to_string(&records).unwrap();
        assert!(!wire.contains("secret"), "{wire}");
        // Nothing changed above 7: nothing sent.
        assert!(export_failures([&both], used, 7).is_empty());
    }

    #[test]
    fn a_newer_record_wins_in_any_order() {
        let at = |version, occurrences| {
            let mut k = FailureKnowledge {
                failure_type: FailureType::Deadlock,
                metric: "lv".into(),
                strategy: "boost".into(),
                triggers: vec![],
                occurrences,
                recovery: BTreeMap::new(),
                prevention: vec![],
                preceded_by: BTreeMap::new(),
                magnitude: RunningStats::default(),
                resolved: false,
                first_seen: 0,
                last_seen: 0,
            };
            k.occurrences = occurrences;
            BTreeMap::from([(
                "f".to_string(),
                Record {
                    version,
                    knowledge: (occurrences > 0).then_some(Knowledge::Failure(k)),
                },
            )])
        };
        let batches = [at(2, 3), at(5, 0), at(3, 4), at(5, 0)];
        let mut forward = BTreeMap::new();
        for b in &batches {
            merge(&mut forward, b);
        }
        let mut backward = BTreeMap::new();
        for b in batches.iter().rev() {
            assert_eq!(would_change(&backward, b), merge(&mut backward, b));
        }
        assert_eq!(forward, backward);
        assert_eq!(forward["f"].version, 5);
        assert_eq!(forward["f"].knowledge, None, "the withdrawal is newest");
        assert!(!would_change(&forward, &at(3, 9)));
    }

    #[test]
    fn another_regions_knowledge_counts_in_full_beside_this_ones() {
        // Here: a and b reported once each, over 10 applications. Elsewhere:
        // 4 occurrences over 30 applications, and advice of its own.
        let own = reported_by(&["a", "b"]);
        let mut remote_report = report("check lv first", false);
        remote_report.magnitude = Some(0.4);
        let elsewhere = {
            let f = FailurePattern::new(&remote_report, "x", 0);
            let Some(Knowledge::Failure(mut k)) = export_failures(
                [&reported_by(&["x", "y"])],
                |_| usage(&[("x", 5), ("y", 5)]),
                0,
            )
            .into_values()
            .next()
            .and_then(|r| r.knowledge) else {
                panic!("it crosses");
            };
            k.occurrences = 4;
            k.prevention = f.prevention.clone();
            k.magnitude = f.magnitude;
            k
        };
        let joined = joined_failure(Some(&own), [&elsewhere], &own.id).unwrap();
        assert_eq!(joined.occurrences, 6);
        assert_eq!(joined.reports[EARLIER_REPORTERS], 4);
        assert_eq!(joined.recovery["roll_back"].attempts, 4);
        assert!((joined.magnitude.mean - (0.2 * 2.0 + 0.4) / 3.0).abs() < 1e-12);
        // Everyone sees the other region's advice beside the corroborated.
        let seen = joined.seen_by(Viewer::Newcomer);
        assert_eq!(seen.prevention, ["warm up first", "check lv first"]);
        // The rate is every region's occurrences over every region's
        // applications; the other regions' voice is never cut as one
        // dominant instance would be.
        let here = usage(&[("a", 5), ("b", 5)]);
        let fleet = joined_usage(&here, (30, BTreeMap::new()));
        let warnings = check_action(
            "boost",
            "lv",
            &Default::default(),
            &[] as &[RecentApplication],
            [&joined],
            &fleet,
        );
        assert!((warnings[0].failure_rate - 6.0 / 40.0).abs() < 1e-12);
        // Known elsewhere only: a failure of its own here.
        let only = joined_failure(None, [&elsewhere], "failure_x").unwrap();
        assert_eq!((only.id.as_str(), only.occurrences), ("failure_x", 4));
        assert!(joined_failure(None, [], "failure_x").is_none());
    }
}
