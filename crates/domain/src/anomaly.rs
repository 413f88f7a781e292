//! Fleet anomaly detection: what in the hub's evidence looks wrong, for an
//! operator to look at.
//!
//! Two kinds, each a pure function of the strategy aggregates:
//!
//! - **Inconsistent reports**: an instance whose outcomes of a strategy, on
//!   a metric, in its context, disagree with every other instance's in the
//!   same aggregate far more than chance allows — its success rate or its
//!   mean delta, compared with the rest's by a two-sample z statistic. A
//!   bug or poisoning; the score is the largest |z| over the instance's
//!   aggregates, and the evidence names the aggregate behind it.
//! - **Metric regression**: an instance whose metric falls, outcome after
//!   outcome, whatever it applies, while the other instances of its
//!   context see the same metric rise: its mean change per application
//!   pooled over every strategy, compared with the rest of the context's by
//!   a z statistic. A regression on the instance's side (its data, its
//!   environment) that no single aggregate shows and the fleet does not
//!   share. Only falls are listed: an instance doing better than its
//!   context is not a problem to look into.
//! - **Strategy shift**: an aggregate whose success rate on the latest day
//!   differs from the days before it in the window, far more than chance
//!   allows: the environment changed, and what the fleet learned of the
//!   strategy may no longer hold (the design's "invalidate when
//!   assumptions change").
//!
//! Thresholds are set so that the simulator's clean runs of every scenario
//! flag nothing (README, "Anomalies"). A periodic job (and
//! `Admin/ListAnomalies {scan}`) logs what a scan finds as a command; the
//! fold keeps when each anomaly was first seen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{
    InsightCategory, InsightDraft, InsightEvidence, StrategyRecord, UnixMillis, content_id, day_of,
};
use super::stats::RunningStats;

/// Outcomes of an instance in an aggregate before it is compared.
pub const MIN_INSTANCE_REPORTS: u64 = 5;
/// Outcomes of the other instances in that aggregate, and how many
/// instances they come from, before they are a reference.
pub const MIN_OTHER_REPORTS: u64 = 10;
pub const MIN_OTHER_INSTANCES: usize = 2;
/// |z| from which an instance's reports are inconsistent… (The simulator's
/// clean runs of every scenario flag nobody at 6; at 5, 2 of 500 honest
/// instance runs were flagged. Lower finds poisoners sooner: at 8, with 10
/// and 20 outcomes, they were found after 73 reports instead of 47.)
pub const INCONSISTENT_Z: f64 = 6.0;
/// …when the difference is also large: this much in success rate, or one
/// standard deviation of the aggregate's deltas in mean delta. With
/// hundreds of reports a small honest difference (another value band, a
/// slower instance) has a large z; it is not what an operator looks for.
pub const MIN_RATE_GAP: f64 = 0.25;
/// Outcomes on each side of a shift (the latest day, the days before).
pub const MIN_SHIFT_REPORTS: u64 = 20;
/// |z| from which a success rate has shifted.
pub const SHIFT_Z: f64 = 5.0;
/// Outcomes on a metric an instance needs before its trend is compared,
/// and the other instances of its context theirs.
pub const MIN_METRIC_REPORTS: u64 = 10;
pub const MIN_OTHER_METRIC_REPORTS: u64 = 20;
/// |z| from which an instance's metric regresses against its context's.
pub const REGRESSION_Z: f64 = 6.0;
/// Assumed spread of deltas when the aggregate's own is smaller.
const MIN_DELTA_SD: f64 = 0.01;

/// What kind of anomaly.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AnomalyKind {
    InconsistentReports,
    StrategyShift,
    MetricRegression,
}

impl AnomalyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AnomalyKind::InconsistentReports => "inconsistent_reports",
            AnomalyKind::StrategyShift => "strategy_shift",
            AnomalyKind::MetricRegression => "metric_regression",
        }
    }
}

/// One anomaly a scan found.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable across scans: the kind and the subject.
    pub id: String,
    pub kind: AnomalyKind,
    /// The instance (inconsistent reports), or "" (a strategy shift).
    pub instance_id: String,
    /// The aggregate behind it: strategy, metric and context key.
    pub strategy: String,
    pub metric: String,
    pub context_key: String,
    /// |z|: how many standard errors from what the rest shows.
    pub score: f64,
    /// The figures, in words.
    pub evidence: String,
}

/// A finding as the state keeps it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub finding: Finding,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
}

// Scores are finite (a scan drops the rest), so equality is reflexive; the
// state's tables diff faster with `Eq` (see model.rs, finite_records_are_eq).
impl Eq for Anomaly {}

fn finding_id(kind: AnomalyKind, subject: &str) -> String {
    content_id("anomaly", &format!("{}\u{0}{subject}", kind.as_str()))
}

/// Two-proportion z statistic (pooled), with the pooled rate kept off 0
/// and 1 so that unanimous samples still have a spread.
fn proportion_z(s1: u64, n1: u64, s2: u64, n2: u64) -> f64 {
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = ((s1 + s2) as f64 / (n1f + n2f)).clamp(0.01, 0.99);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    (s1 as f64 / n1f - s2 as f64 / n2f) / se
}

fn place(record: &StrategyRecord) -> String {
    let context = if record.context_key.is_empty() {
        "no context".to_string()
    } else {
        record.context_key.clone()
    };
    format!("{} on {} ({context})", record.strategy, record.metric)
}

/// Instances whose reports in some aggregate disagree with the rest's: at
/// most one finding per instance, for its most inconsistent aggregate.
pub fn inconsistent_instances<'r>(
    records: impl IntoIterator<Item = &'r StrategyRecord>,
) -> Vec<Finding> {
    let mut worst: BTreeMap<&'r str, Finding> = BTreeMap::new();
    for record in records {
        let tracked: Vec<(&String, &super::model::InstanceShare)> = record
            .instances
            .iter()
            .filter(|(_, s)| s.tracked() > 0)
            .collect();
        let n_all: u64 = tracked.iter().map(|(_, s)| s.tracked()).sum();
        let s_all: u64 = tracked.iter().map(|(_, s)| s.successes).sum();
        let d_all: f64 = tracked.iter().map(|(_, s)| s.delta_sum).sum();
        let spread = record
            .improvement
            .merge(&record.regression)
            .std_dev()
            .max(MIN_DELTA_SD);
        for (instance, share) in &tracked {
            let n = share.tracked();
            let others = n_all - n;
            if n < MIN_INSTANCE_REPORTS
                || others < MIN_OTHER_REPORTS
                || tracked.len() <= MIN_OTHER_INSTANCES
            {
                continue;
            }
            let s_others = s_all - share.successes;
            let z_rate = proportion_z(share.successes, n, s_others, others);
            let mean = share.delta_sum / n as f64;
            let mean_others = (d_all - share.delta_sum) / others as f64;
            let z_delta =
                (mean - mean_others) / (spread * (1.0 / n as f64 + 1.0 / others as f64).sqrt());
            let rate_gap = share.successes as f64 / n as f64 - s_others as f64 / others as f64;
            let score = f64::max(
                if rate_gap.abs() >= MIN_RATE_GAP {
                    z_rate.abs()
                } else {
                    0.0
                },
                if (mean - mean_others).abs() >= spread {
                    z_delta.abs()
                } else {
                    0.0
                },
            );
            if !score.is_finite() || score < INCONSISTENT_Z {
                continue;
            }
            if worst
                .get(instance.as_str())
                .is_some_and(|w| w.score >= score)
            {
                continue;
            }
            worst.insert(
                instance.as_str(),
                Finding {
                    id: finding_id(AnomalyKind::InconsistentReports, instance),
                    kind: AnomalyKind::InconsistentReports,
                    instance_id: instance.to_string(),
                    strategy: record.strategy.clone(),
                    metric: record.metric.clone(),
                    context_key: record.context_key.clone(),
                    score,
                    evidence: format!(
                        "{}: success {:.0}% of its {n} outcomes vs {:.0}% of the other {} instances' {others}; mean delta {mean:+.3} vs {mean_others:+.3} (z {z_rate:+.1} and {z_delta:+.1})",
                        place(record),
                        100.0 * share.successes as f64 / n as f64,
                        100.0 * s_others as f64 / others as f64,
                        tracked.len() - 1,
                    ),
                },
            );
        }
    }
    worst.into_values().collect()
}

/// Instances whose metric regresses while their context's others' rises
/// (see the module's doc): at most one finding per instance and metric.
pub fn metric_regressions<'r>(
    records: impl IntoIterator<Item = &'r StrategyRecord>,
) -> Vec<Finding> {
    // (metric, context) -> per instance (applications, delta sum,
    // strategies it applied, of which it lost on average), the spread of
    // every delta, and the strategies behind them.
    type Group<'r> = (
        BTreeMap<&'r str, (u64, f64, usize, usize)>,
        RunningStats,
        usize,
    );
    let mut groups: BTreeMap<(&'r str, &'r str), Group<'r>> = BTreeMap::new();
    for record in records {
        let group = groups
            .entry((record.metric.as_str(), record.context_key.as_str()))
            .or_insert_with(|| (BTreeMap::new(), RunningStats::default(), 0));
        group.1 = group.1.merge(&record.improvement.merge(&record.regression));
        group.2 += 1;
        for (instance, share) in &record.instances {
            if share.tracked() == 0 {
                continue;
            }
            let entry = group.0.entry(instance.as_str()).or_default();
            entry.0 += share.tracked();
            entry.1 += share.delta_sum;
            entry.2 += 1;
            if share.delta_sum < 0.0 {
                entry.3 += 1;
            }
        }
    }
    let mut found = Vec::new();
    for ((metric, context_key), (instances, deltas, strategies)) in groups {
        if instances.len() <= MIN_OTHER_INSTANCES {
            continue;
        }
        let n_all: u64 = instances.values().map(|(n, ..)| n).sum();
        let d_all: f64 = instances.values().map(|(_, d, ..)| d).sum();
        let spread = deltas.std_dev().max(MIN_DELTA_SD);
        for (instance, (n, sum, applied, lost)) in &instances {
            let others = n_all - n;
            // Whatever it applies: two strategies at least, every one of
            // them a loss on average (one strategy alone is an
            // inconsistent report, or a bad strategy for it).
            if *n < MIN_METRIC_REPORTS
                || others < MIN_OTHER_METRIC_REPORTS
                || *applied < 2
                || lost < applied
            {
                continue;
            }
            let mean = sum / *n as f64;
            let mean_others = (d_all - sum) / others as f64;
            let z =
                (mean - mean_others) / (spread * (1.0 / *n as f64 + 1.0 / others as f64).sqrt());
            // A fall (its mean change below zero) where the context rises,
            // by a large margin and far beyond chance.
            let regresses = mean < 0.0
                && mean_others > 0.0
                && mean_others - mean >= spread
                && z.is_finite()
                && z <= -REGRESSION_Z;
            if !regresses {
                continue;
            }
            let context = if context_key.is_empty() {
                "no context"
            } else {
                context_key
            };
            found.push(Finding {
                id: finding_id(
                    AnomalyKind::MetricRegression,
                    &format!("{instance}\u{0}{metric}\u{0}{context_key}"),
                ),
                kind: AnomalyKind::MetricRegression,
                instance_id: instance.to_string(),
                strategy: String::new(),
                metric: metric.to_string(),
                context_key: context_key.to_string(),
                score: -z,
                evidence: format!(
                    "{metric} ({context}): a mean change of {mean:+.3} per application over its {n} outcomes vs {mean_others:+.3} over the other {} instances' {others}, whatever was applied ({strategies} strategies; z {z:+.1})",
                    instances.len() - 1,
                ),
            });
        }
    }
    found
}

/// Aggregates whose latest day's success rate differs from the days
/// before it in the window.
pub fn strategy_shifts<'r>(
    records: impl IntoIterator<Item = &'r StrategyRecord>,
    now: UnixMillis,
    retention_days: i64,
) -> Vec<Finding> {
    let today = day_of(now);
    let mut found = Vec::new();
    for record in records {
        let Some(latest) = record
            .window
            .iter()
            .map(|b| b.day)
            .filter(|d| *d <= today && *d > today - retention_days)
            .max()
        else {
            continue;
        };
        let (mut recent, mut before) = ((0u64, 0u64), (0u64, 0u64));
        for bucket in &record.window {
            if bucket.day > latest || bucket.day <= today - retention_days {
                continue;
            }
            let side = if bucket.day == latest {
                &mut recent
            } else {
                &mut before
            };
            for band in &bucket.bands {
                side.0 += band.successes;
                side.1 += band.applications;
            }
        }
        if recent.1 < MIN_SHIFT_REPORTS || before.1 < MIN_SHIFT_REPORTS {
            continue;
        }
        let z = proportion_z(recent.0, recent.1, before.0, before.1);
        if !z.is_finite() || z.abs() < SHIFT_Z {
            continue;
        }
        let subject = format!(
            "{}\u{0}{}\u{0}{}",
            record.strategy, record.metric, record.context_key
        );
        found.push(Finding {
            id: finding_id(AnomalyKind::StrategyShift, &subject),
            kind: AnomalyKind::StrategyShift,
            instance_id: String::new(),
            strategy: record.strategy.clone(),
            metric: record.metric.clone(),
            context_key: record.context_key.clone(),
            score: z.abs(),
            evidence: format!(
                "{}: success {:.0}% of {} outcomes on the latest day vs {:.0}% of {} on the days before (z {z:+.1})",
                place(record),
                100.0 * recent.0 as f64 / recent.1 as f64,
                recent.1,
                100.0 * before.0 as f64 / before.1 as f64,
                before.1,
            ),
        });
    }
    found
}

/// Everything a scan finds, ordered by kind and id.
pub fn scan(records: &[&StrategyRecord], now: UnixMillis, retention_days: i64) -> Vec<Finding> {
    let mut found = inconsistent_instances(records.iter().copied());
    found.extend(metric_regressions(records.iter().copied()));
    found.extend(strategy_shifts(
        records.iter().copied(),
        now,
        retention_days,
    ));
    found.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.id.cmp(&b.id)));
    found
}

/// The insight a newly found strategy shift is announced with (instances
/// subscribed to insights learn that what the fleet knew of a strategy may
/// no longer hold). Inconsistent instances are not announced: they would
/// name an instance to the others.
pub fn announcement(finding: &Finding) -> Option<InsightDraft> {
    if finding.kind != AnomalyKind::StrategyShift {
        return None;
    }
    let context = if finding.context_key.is_empty() {
        String::new()
    } else {
        format!(" in {}", finding.context_key)
    };
    Some(InsightDraft {
        category: InsightCategory::Anomaly,
        title: format!(
            "{} on {}{context} shifted",
            finding.strategy, finding.metric
        ),
        insight: format!(
            "{}. What the fleet learned of it before may no longer hold.",
            finding.evidence
        ),
        evidence: InsightEvidence::default(),
        applicable_contexts: Vec::new(),
        effectiveness: 0.0,
        risk: 0.0,
        recommendation: format!(
            "Weigh recent outcomes of {} on {} over older ones; check what changed.",
            finding.strategy, finding.metric
        ),
        alternatives: Vec::new(),
        valid_until: None,
    })
}

/// Folds a scan's findings into the kept anomalies (`first_seen` of a
/// kept one by id): new ones are first seen `now`, ones seen again keep
/// their first sighting, ones the scan no longer finds are gone. Returns
/// how many are new.
pub fn merge(
    first_seen: impl Fn(&str) -> Option<UnixMillis>,
    found: &[Finding],
    now: UnixMillis,
) -> (BTreeMap<String, Anomaly>, usize) {
    let mut next = BTreeMap::new();
    let mut new = 0;
    for finding in found {
        let first_seen = match first_seen(&finding.id) {
            Some(before) => before,
            None => {
                new += 1;
                now
            }
        };
        next.insert(
            finding.id.clone(),
            Anomaly {
                finding: finding.clone(),
                first_seen,
                last_seen: now,
            },
        );
    }
    (next, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attributes, StrategyKey, StrategyOutcome};

    const NOW: UnixMillis = 1_762_214_400_000;
    const DAY: i64 = 24 * 60 * 60 * 1000;

    fn report(r: &mut StrategyRecord, instance: &str, successful: bool, delta: f64, at: i64) {
        r.record(
            &StrategyOutcome {
                sequence: 0,
                at,
                instance_id: instance.into(),
                strategy: r.strategy.clone(),
                metric: r.metric.clone(),
                value_before: 0.5,
                successful,
                delta,
                condition: String::new(),
                context: Attributes::new(),
                streak: 0,
                preceded_by: vec![],
            },
            7,
        );
    }

    /// Five honest instances: 9 in 10 succeed, +0.05 each, −0.02 when not.
    fn honest() -> StrategyRecord {
        let mut r = StrategyRecord::empty(&StrategyKey::new("lv", "steady", ""), NOW);
        for i in 0..5 {
            for j in 0..20 {
                let ok = (i + j) % 10 != 0;
                report(
                    &mut r,
                    &format!("h{i}"),
                    ok,
                    if ok { 0.05 } else { -0.02 },
                    NOW,
                );
            }
        }
        r
    }

    #[test]
    fn honest_variation_is_not_an_anomaly() {
        let mut r = honest();
        // One honest instance that is unluckier than the rest: 14 of 20.
        for j in 0..20 {
            let ok = j % 10 >= 3;
            report(&mut r, "unlucky", ok, if ok { 0.05 } else { -0.02 }, NOW);
        }
        assert!(inconsistent_instances([&r]).is_empty());
    }

    #[test]
    fn a_poisoner_is_flagged_with_its_figures() {
        let mut r = honest();
        for _ in 0..10 {
            report(&mut r, "liar", false, -0.3, NOW);
        }
        let found = inconsistent_instances([&r]);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.instance_id, "liar");
        assert_eq!(f.kind, AnomalyKind::InconsistentReports);
        assert!(f.score >= INCONSISTENT_Z, "{f:?}");
        assert!(
            f.evidence
                .starts_with("steady on lv (no context): success 0% of its 10 outcomes vs 90%"),
            "{}",
            f.evidence
        );
        // Inflated gains are caught too, with every report a success.
        let mut r = honest();
        for _ in 0..10 {
            report(&mut r, "booster", true, 1.0, NOW);
        }
        let found = inconsistent_instances([&r]);
        assert_eq!(found[0].instance_id, "booster", "{found:?}");
        assert!(found[0].evidence.contains("mean delta +1.000"));
    }

    #[test]
    fn too_little_evidence_flags_nobody() {
        let mut r = honest();
        for _ in 0..(MIN_INSTANCE_REPORTS - 1) {
            report(&mut r, "liar", false, -0.3, NOW);
        }
        assert!(inconsistent_instances([&r]).is_empty());
        // Two instances are no reference for each other.
        let mut pair = StrategyRecord::empty(&StrategyKey::new("lv", "s", ""), NOW);
        for _ in 0..30 {
            report(&mut pair, "a", true, 0.05, NOW);
            report(&mut pair, "b", false, -0.3, NOW);
        }
        assert!(inconsistent_instances([&pair]).is_empty());
    }

    #[test]
    fn a_shift_in_success_is_found_and_a_steady_rate_is_not() {
        let mut r = StrategyRecord::empty(&StrategyKey::new("lv", "s", "x=1"), NOW);
        for day in 1..4 {
            for j in 0..20 {
                report(&mut r, &format!("i{j}"), j % 10 != 0, 0.05, NOW - day * DAY);
            }
        }
        for j in 0..20 {
            report(&mut r, &format!("i{j}"), j % 10 != 0, 0.05, NOW);
        }
        assert!(strategy_shifts([&r], NOW, 7).is_empty(), "steady");
        for j in 0..40 {
            report(&mut r, &format!("i{}", j % 20), false, -0.05, NOW);
        }
        let found = strategy_shifts([&r], NOW, 7);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].evidence.starts_with(
                "s on lv (x=1): success 30% of 60 outcomes on the latest day vs 90% of 60"
            ),
            "{}",
            found[0].evidence
        );
    }

    #[test]
    fn a_metric_that_falls_whatever_is_applied_is_a_regression() {
        let honest_b = |r: &mut StrategyRecord| {
            for i in 0..5 {
                for _ in 0..6 {
                    report(r, &format!("h{i}"), true, 0.04, NOW);
                }
            }
        };
        let mut a = honest();
        let mut b = StrategyRecord::empty(&StrategyKey::new("lv", "bold", ""), NOW);
        honest_b(&mut b);
        // Each loss alone is small; every strategy loses for it.
        for j in 0..8 {
            report(&mut a, "drifting", j % 2 == 0, -0.03, NOW);
            report(&mut b, "drifting", j % 2 == 0, -0.03, NOW);
        }
        let found = metric_regressions([&a, &b]);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.instance_id.as_str(), f.metric.as_str()),
            ("drifting", "lv")
        );
        assert_eq!(f.kind, AnomalyKind::MetricRegression);
        assert!(f.score >= REGRESSION_Z, "{f:?}");
        assert!(
            f.evidence.starts_with(
                "lv (no context): a mean change of -0.030 per application over its 16 outcomes"
            ),
            "{}",
            f.evidence
        );
        // One strategy alone is not a regression of the metric (the liar
        // of `a_poisoner_is_flagged_with_its_figures` is inconsistent).
        let mut one = honest();
        for _ in 0..16 {
            report(&mut one, "liar", false, -0.3, NOW);
        }
        assert!(metric_regressions([&one]).is_empty());
        // Nor is an instance that gains less than its context.
        let mut a = honest();
        let mut b = StrategyRecord::empty(&StrategyKey::new("lv", "bold", ""), NOW);
        honest_b(&mut b);
        for _ in 0..8 {
            report(&mut a, "slow", true, 0.001, NOW);
            report(&mut b, "slow", true, 0.001, NOW);
        }
        assert!(metric_regressions([&a, &b]).is_empty());
    }

    #[test]
    fn merging_keeps_first_sightings_and_drops_what_is_gone() {
        let mut r = honest();
        for _ in 0..10 {
            report(&mut r, "liar", false, -0.3, NOW);
        }
        let found = scan(&[&r], NOW, 7);
        let (kept, new) = merge(|_| None, &found, NOW);
        assert_eq!(new, 1);
        let seen = |id: &str| kept.get(id).map(|a| a.first_seen);
        let (again, new) = merge(seen, &found, NOW + 5);
        assert_eq!(new, 0);
        let a = again.values().next().unwrap();
        assert_eq!((a.first_seen, a.last_seen), (NOW, NOW + 5));
        let (gone, _) = merge(seen, &[], NOW + 10);
        assert!(gone.is_empty());
    }
}
