//! Failure prevention: does a proposed action (apply a strategy to a
//! metric) match a failure the fleet has seen, how likely is it given what
//! the caller applied just before, and what prevents it?
//!
//! A failure matches when it was triggered by the same strategy and hit
//! either the targeted metric or any other metric the instance tracks
//! (strategies can reverse metrics they do not target). Its rate is the
//! share of the strategy's applications that ended in it. A prerequisite is
//! a strategy whose presence within the preceding cycles clearly lowered
//! that rate in the data; if the caller applied it recently, the lower rate
//! is the one that applies.

use std::collections::BTreeMap;

use super::model::{FailurePattern, Metrics, RecentApplication, StrategyRecord, preceding};

/// Evidence needed before a prerequisite is trusted: applications of the
/// strategy with it shortly before…
const PREREQUISITE_MIN_APPLICATIONS: u64 = 3;
/// …and a rate at most this share of the rate without it…
const PREREQUISITE_MAX_RATIO: f64 = 0.5;
/// …and at least this much lower.
const PREREQUISITE_MIN_DROP: f64 = 0.1;
/// Pseudo-observations of the overall rate a rate after one strategy is
/// shrunk with.
const CONDITIONAL_STRENGTH: f64 = 3.0;

/// What the hub knows about the proposed strategy's applications (on any
/// metric): in total, and by strategy applied shortly before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyUsage {
    pub applications: u64,
    /// Applications per reporting instance: a failure report counts only
    /// against an application its reporter made (see [`crate::influence`]).
    pub by_instance: BTreeMap<String, u64>,
    /// Applications by strategy applied shortly before.
    pub preceded_by: BTreeMap<String, u64>,
}

impl StrategyUsage {
    /// The applications `failure`'s rate is divided by, bounded by
    /// influence rule 2's share: where one instance reported more
    /// applications than the [`crate::influence::allowance`] the others'
    /// give it, the rate is at least what it would be with that instance's
    /// applications (and its failures, in proportion) cut to its share.
    /// So an instance that reports applications it never made dilutes a
    /// rate by about half at most, not to nothing — and an instance alone,
    /// or against fewer than [`crate::influence::FREE_REPORTS`] other
    /// applications, is never cut (there is no reference rate to protect). Returns the
    /// denominator that gives that rate with the failure's counted reports;
    /// while nobody holds more than its share it is the applications
    /// reported. A failure recorded without reporters keeps the plain
    /// count.
    pub fn applications_for(&self, failure: &FailurePattern) -> u64 {
        let all = self.applications;
        if failure.reports.is_empty() || all == 0 {
            return all;
        }
        let counted = |instance: &str| {
            let applied = self.by_instance.get(instance).copied().unwrap_or(0);
            let reports = failure.reports.get(instance).copied().unwrap_or(0);
            reports.min(applied.max(1))
        };
        let failed = failure
            .reports
            .keys()
            .map(|i| counted(i))
            .fold(0u64, u64::saturating_add);
        // Nothing to bound where failures already outnumber applications
        // (the rate is 1 either way).
        if failed == 0 || failed >= all {
            return all;
        }
        let mut rate = failed as f64 / all as f64;
        for (instance, &applied) in &self.by_instance {
            // Not an instance: earlier reporters, other regions.
            if instance == crate::influence::EARLIER_REPORTERS {
                continue;
            }
            let others = all.saturating_sub(applied);
            let share = crate::influence::allowance(others);
            // The others must be a reference ([`FREE_REPORTS`]
            // applications at least): one instance's single application
            // and failure does not get to cut a dominant one.
            if others < crate::influence::FREE_REPORTS || applied <= share {
                continue;
            }
            let own = counted(instance) as f64;
            let cut = (failed as f64 - own + own * share as f64 / applied as f64)
                / (others + share) as f64;
            rate = rate.max(cut);
        }
        ((failed as f64 / rate).round() as u64).clamp(failed, all)
    }

    /// Counts `record`'s applications in.
    pub fn add(&mut self, record: &StrategyRecord) {
        // Saturating: counts come from the store, and a corrupt one must
        // not wrap (or panic) when summed.
        self.applications = self.applications.saturating_add(record.applications);
        for (instance, share) in &record.instances {
            let mine = self.by_instance.entry(instance.clone()).or_default();
            *mine = mine.saturating_add(share.applications);
        }
        for (p, stats) in &record.preceded_by {
            let n = self.preceded_by.entry(p.clone()).or_default();
            *n = n.saturating_add(stats.applications);
        }
    }

    /// Takes `record`'s applications out again (when it is replaced by a
    /// newer version).
    pub fn subtract(&mut self, record: &StrategyRecord) {
        self.applications = self.applications.saturating_sub(record.applications);
        for (instance, share) in &record.instances {
            if let Some(mine) = self.by_instance.get_mut(instance) {
                *mine = mine.saturating_sub(share.applications);
                if *mine == 0 {
                    self.by_instance.remove(instance);
                }
            }
        }
        for (p, stats) in &record.preceded_by {
            if let Some(n) = self.preceded_by.get_mut(p) {
                *n = n.saturating_sub(stats.applications);
                if *n == 0 {
                    self.preceded_by.remove(p);
                }
            }
        }
    }
}

/// One failure the action may trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning<F> {
    pub failure: F,
    pub failure_rate: f64,
    pub message: String,
    /// A strategy that prevents it when applied shortly before.
    pub prerequisite: Option<String>,
    pub failure_rate_with_prerequisite: f64,
}

fn rate(failures: u64, applications: u64) -> f64 {
    if applications == 0 {
        // Known to fail, never seen to succeed: assume the worst.
        1.0
    } else {
        (failures as f64 / applications as f64).min(1.0)
    }
}

/// The prerequisite with the lowest failure rate, if any clearly helps:
/// (name, rate with it, rate without it). `occurrences`: the failure's
/// counted reports.
fn prerequisite(
    failure: &FailurePattern,
    occurrences: u64,
    usage: &StrategyUsage,
    all_applications: u64,
) -> Option<(String, f64, f64)> {
    usage
        .preceded_by
        .iter()
        .filter(|(name, applications)| {
            **name != failure.strategy && **applications >= PREREQUISITE_MIN_APPLICATIONS
        })
        .filter_map(|(name, &applications)| {
            let with_failures = failure
                .preceded_by
                .get(name)
                .copied()
                .unwrap_or(0)
                .min(applications)
                .min(occurrences);
            let with = rate(with_failures, applications);
            let without_apps = all_applications.saturating_sub(applications);
            let without_failures = occurrences.saturating_sub(with_failures);
            if without_apps == 0 {
                return None;
            }
            let without = rate(without_failures, without_apps);
            (with <= PREREQUISITE_MAX_RATIO * without && without - with >= PREREQUISITE_MIN_DROP)
                .then(|| (name.clone(), with, without))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
}

/// The rate of `failure` that applies to a caller who applied
/// `applied_before` shortly before, and the prerequisite behind it:
/// (rate, prerequisite, whether the caller applied it).
fn applicable_rate(
    failure: &FailurePattern,
    occurrences: u64,
    usage: &StrategyUsage,
    applied_before: &[String],
) -> (f64, Option<(String, f64, f64)>, bool) {
    let applications = usage.applications_for(failure);
    let prerequisite = prerequisite(failure, occurrences, usage, applications);
    match &prerequisite {
        Some((name, with, _)) if applied_before.contains(name) => (*with, prerequisite, true),
        Some((_, _, without)) => (*without, prerequisite, false),
        None => {
            // No prerequisite proven yet: what the caller applied before may
            // still be one in the making. Each strategy it applied gives a
            // posterior of the rate after it, shrunk towards the overall
            // rate; the lowest applies, so evidence for a prevention counts
            // as soon as it accumulates (and data keeps flowing to prove it).
            let overall = rate(occurrences, applications);
            let conditional = applied_before
                .iter()
                .filter(|p| **p != failure.strategy)
                .filter_map(|p| {
                    let applications = *usage.preceded_by.get(p)?;
                    let failures = failure
                        .preceded_by
                        .get(p)
                        .copied()
                        .unwrap_or(0)
                        .min(applications)
                        .min(occurrences);
                    Some(
                        (failures as f64 + CONDITIONAL_STRENGTH * overall)
                            / (applications as f64 + CONDITIONAL_STRENGTH),
                    )
                })
                .fold(overall, f64::min);
            (conditional, None, false)
        }
    }
}

/// The damage applying the strategy is expected to do to other metrics:
/// for each of its known failures (whichever metric they hit), the rate
/// that applies to this caller times the failure's mean magnitude. A
/// failure reported without a magnitude counts with the mean of those
/// that had one.
pub fn expected_loss<F: AsRef<FailurePattern>>(
    failures_of_strategy: impl IntoIterator<Item = F>,
    recent: &[RecentApplication],
    usage: &StrategyUsage,
) -> f64 {
    let applied_before = preceding(recent);
    let failures: Vec<F> = failures_of_strategy.into_iter().collect();
    let measured: Vec<f64> = failures
        .iter()
        .filter(|f| f.as_ref().magnitude.count > 0)
        .map(|f| f.as_ref().magnitude.mean)
        .collect();
    let fallback = if measured.is_empty() {
        0.0
    } else {
        measured.iter().sum::<f64>() / measured.len() as f64
    };
    failures
        .iter()
        .map(|f| {
            let f = f.as_ref();
            let occurrences = f.counted_occurrences(&usage.by_instance);
            let (rate, _, _) = applicable_rate(f, occurrences, usage, &applied_before);
            let magnitude = if f.magnitude.count > 0 {
                f.magnitude.mean
            } else {
                fallback
            };
            rate * magnitude
        })
        .sum()
}

/// Checks the action against `failures`, given what the caller applied
/// recently and how the strategy has been used.
pub fn check_action<F: AsRef<FailurePattern>>(
    strategy: &str,
    metric: &str,
    metrics: &Metrics,
    recent: &[RecentApplication],
    failures: impl IntoIterator<Item = F>,
    usage: &StrategyUsage,
) -> Vec<Warning<F>> {
    let applied_before = preceding(recent);
    let mut warnings: Vec<Warning<F>> = failures
        .into_iter()
        .filter(|f| {
            let f = f.as_ref();
            f.strategy == strategy && (f.metric == metric || metrics.contains_key(&f.metric))
        })
        .map(|f| {
            let pattern = f.as_ref();
            let counted = pattern.counted_occurrences(&usage.by_instance);
            let (failure_rate, prerequisite, prevented) =
                applicable_rate(pattern, counted, usage, &applied_before);
            let mut message = format!(
                "applying {strategy} has led to {} {} of {} ({} report(s), failure rate {:.2})",
                pattern.failure_type.as_str().replace('_', " "),
                if counted == 1 { "failure" } else { "failures" },
                pattern.metric,
                counted,
                failure_rate,
            );
            match &prerequisite {
                Some((name, with, _)) if prevented => message.push_str(&format!(
                    "; {name} applied shortly before keeps it at {with:.2}"
                )),
                Some((name, with, _)) => message.push_str(&format!(
                    "; apply {name} first to bring it down to {with:.2}"
                )),
                None => {}
            }
            if let Some(trigger) = pattern.triggers.last() {
                message.push_str(&format!("; latest trigger: {trigger}"));
            }
            Warning {
                failure: f,
                failure_rate,
                message,
                failure_rate_with_prerequisite: prerequisite.as_ref().map_or(failure_rate, |p| p.1),
                prerequisite: prerequisite.map(|p| p.0),
            }
        })
        .collect();
    warnings.sort_by(|a, b| {
        b.failure_rate
            .total_cmp(&a.failure_rate)
            .then(
                b.failure
                    .as_ref()
                    .occurrences
                    .cmp(&a.failure.as_ref().occurrences),
            )
            .then(a.failure.as_ref().id.cmp(&b.failure.as_ref().id))
    });
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailureReport, FailureType, MetricState};

    fn failure(metric: &str, strategy: &str, reports: &[&[&str]]) -> FailurePattern {
        let report = |preceded: &[&str]| FailureReport {
            failure_type: FailureType::MetricReversal,
            trigger: format!("{metric} dropped after {strategy}"),
            metric: metric.into(),
            strategy: strategy.into(),
            recovery: vec![],
            prevention: vec![],
            preceded_by: preceded.iter().map(|s| s.to_string()).collect(),
            magnitude: Some(0.2),
            follow_up: false,
        };
        let mut f = FailurePattern::new(&report(reports[0]), "i", 0);
        for r in &reports[1..] {
            f.record(&report(r), "i", 0);
        }
        f
    }

    fn usage(applications: u64, preceded: &[(&str, u64)]) -> StrategyUsage {
        StrategyUsage {
            applications,
            // Every failure below is reported by "i", which made them all.
            by_instance: BTreeMap::from([("i".to_string(), applications)]),
            preceded_by: preceded
                .iter()
                .map(|(name, n)| (name.to_string(), *n))
                .collect(),
        }
    }

    #[test]
    fn matches_target_and_tracked_metrics() {
        let target = failure("lv", "speed_optimization", &[&[]]);
        let side_effect = failure("te", "speed_optimization", &[&[]]);
        let untracked = failure("zz", "speed_optimization", &[&[]]);
        let other_strategy = failure("lv", "calibration", &[&[]]);
        let metrics = Metrics::from([(
            "te".to_string(),
            MetricState {
                value: 0.5,
                stuck: false,
            },
        )]);
        let all = [&target, &side_effect, &untracked, &other_strategy];
        let warnings = check_action(
            "speed_optimization",
            "lv",
            &metrics,
            &[],
            all,
            &usage(4, &[]),
        );
        let ids: Vec<_> = warnings.iter().map(|w| w.failure.metric.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"lv") && ids.contains(&"te"));
        assert!((warnings[0].failure_rate - 0.25).abs() < 1e-12);
        assert!(warnings[0].message.contains("metric reversal"));
    }

    #[test]
    fn reports_count_only_against_the_reporters_applications() {
        // Twenty reports from "i", which made none of the 100 applications
        // ("h" did): they count as one.
        let none: &[&str] = &[];
        let f = failure("lv", "s", &[none; 20]);
        let honest = StrategyUsage {
            applications: 100,
            by_instance: BTreeMap::from([("h".to_string(), 100)]),
            preceded_by: BTreeMap::new(),
        };
        let w = check_action("s", "lv", &Metrics::new(), &[], [&f], &honest);
        assert!(
            (w[0].failure_rate - 0.01).abs() < 1e-12,
            "{}",
            w[0].failure_rate
        );
        assert!(w[0].message.contains("(1 report(s)"), "{}", w[0].message);
        // Had it applied the strategy 20 times, all twenty would count.
        let applied = StrategyUsage {
            applications: 120,
            by_instance: BTreeMap::from([("h".to_string(), 100), ("i".to_string(), 20)]),
            preceded_by: BTreeMap::new(),
        };
        let w = check_action("s", "lv", &Metrics::new(), &[], [&f], &applied);
        // …against "h"'s 100 applications, of which 21 (its share against
        // 20) count: 20 / 41, not 20 / 120.
        assert!(
            (w[0].failure_rate - 20.0 / 41.0).abs() < 1e-3,
            "{}",
            w[0].failure_rate
        );
    }

    #[test]
    fn one_instance_cannot_dilute_a_failure_rate_to_nothing() {
        let none: &[&str] = &[];
        let mut f = failure("lv", "s", &[none; 10]);
        // Ten honest failures among five instances' 100 applications…
        f.reports = (0..5).map(|i| (format!("h{i}"), 2)).collect();
        let mut by_instance: BTreeMap<String, u64> =
            (0..5).map(|i| (format!("h{i}"), 20)).collect();
        let honest = StrategyUsage {
            applications: 100,
            by_instance: by_instance.clone(),
            preceded_by: BTreeMap::new(),
        };
        let rate = |usage: &StrategyUsage| {
            check_action("s", "lv", &Metrics::new(), &[], [&f], usage)[0].failure_rate
        };
        assert!((rate(&honest) - 0.1).abs() < 1e-12);
        // …and 10,000 made-up successful ones: the rate halves, no more.
        by_instance.insert("x".into(), 10_000);
        let diluted = StrategyUsage {
            applications: 10_100,
            by_instance,
            preceded_by: BTreeMap::new(),
        };
        let r = rate(&diluted);
        assert!((r - 10.0 / 201.0).abs() < 1e-3, "{r}");
        // Failures outnumbering applications: no panic, the plain count.
        let mut many = failure("lv", "s", &[none; 2]);
        many.reports = BTreeMap::from([("b".to_string(), 1), ("c".to_string(), 1)]);
        let one = StrategyUsage {
            applications: 1,
            by_instance: BTreeMap::from([("a".to_string(), 1)]),
            preceded_by: BTreeMap::new(),
        };
        assert_eq!(one.applications_for(&many), 1);
        // One application and failure of another instance do not cut a
        // dominant one: 11 failures in 10,001 applications stay ~0.001.
        let mut dominant = failure("lv", "s", &[none; 11]);
        dominant.reports = BTreeMap::from([("h".to_string(), 10), ("g".to_string(), 1)]);
        let usage = StrategyUsage {
            applications: 10_001,
            by_instance: BTreeMap::from([("h".to_string(), 10_000), ("g".to_string(), 1)]),
            preceded_by: BTreeMap::new(),
        };
        assert_eq!(usage.applications_for(&dominant), 10_001);
        // An instance alone is never cut: its own rate.
        let mut alone = failure("lv", "s", &[none; 10]);
        alone.reports = BTreeMap::from([("h".to_string(), 10)]);
        let usage = StrategyUsage {
            applications: 100,
            by_instance: BTreeMap::from([("h".to_string(), 100)]),
            preceded_by: BTreeMap::new(),
        };
        let w = check_action("s", "lv", &Metrics::new(), &[], [&alone], &usage);
        assert!((w[0].failure_rate - 0.1).abs() < 1e-12);
    }

    #[test]
    fn unknown_application_count_means_certain_failure() {
        let f = failure("lv", "s", &[&[]]);
        let w = check_action("s", "lv", &Metrics::new(), &[], [&f], &usage(0, &[]));
        assert_eq!(w[0].failure_rate, 1.0);
    }

    #[test]
    fn a_prerequisite_is_learned_and_honoured() {
        // 30 applications of s: 10 right after c (1 failed), 10 right after
        // x (4 failed), 10 after neither (5 failed).
        let mut reports: Vec<&[&str]> = vec![&[]; 5];
        reports.extend([&["x"][..]; 4]);
        reports.push(&["c"]);
        let f = failure("te", "s", &reports);
        let usage = usage(30, &[("c", 10), ("x", 10)]);
        let without = check_action("s", "te", &Metrics::new(), &[], [&f], &usage);
        assert_eq!(
            without[0].prerequisite.as_deref(),
            Some("c"),
            "x does not help"
        );
        assert!((without[0].failure_rate - 0.45).abs() < 1e-12);
        assert!((without[0].failure_rate_with_prerequisite - 0.1).abs() < 1e-12);
        assert!(without[0].message.contains("apply c first"));
        let recent = [RecentApplication {
            strategy: "c".into(),
            metric: "te".into(),
            cycles_ago: 1,
        }];
        let with = check_action("s", "te", &Metrics::new(), &recent, [&f], &usage);
        assert!((with[0].failure_rate - 0.1).abs() < 1e-12);
        // Applied too long ago, it does not count.
        let stale = [RecentApplication {
            cycles_ago: 9,
            ..recent[0].clone()
        }];
        let old = check_action("s", "te", &Metrics::new(), &stale, [&f], &usage);
        assert!((old[0].failure_rate - 0.45).abs() < 1e-12);
        // The expected damage follows the rate that applies.
        assert!((expected_loss([&f], &[], &usage) - 0.45 * 0.2).abs() < 1e-12);
        assert!((expected_loss([&f], &recent, &usage) - 0.1 * 0.2).abs() < 1e-12);
    }
}
