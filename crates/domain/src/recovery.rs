//! Automated troubleshooting: for a failure an instance just reported, a
//! ranked recovery plan it can follow without an operator — what the
//! whole fleet learned recovers this kind of failure of this metric.
//!
//! Every open failure of the same type on the same metric contributes its
//! recovery methods; a method's evidence is merged across them. Methods
//! are ranked by their smoothed success rate, `(successes + 1) /
//! (attempts + 2)` (so one lucky attempt does not outrank a long record),
//! then by the cycles they took; each step says how many cycles to give
//! it before moving on to the next.

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use super::influence::{EARLIER_REPORTERS, Viewer, counted_recovery};
use super::model::{FailurePattern, FailureType, RecoveryMethodStats};

/// Steps a plan holds at most.
pub const MAX_STEPS: usize = 5;
/// A step is given its mean cycles to recover times this (at least one
/// more cycle) before the next is tried.
const PATIENCE_FACTOR: f64 = 2.0;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub method: String,
    /// Reported attempts and successes, fleet-wide.
    pub attempts: u64,
    pub successes: u64,
    /// (successes + 1) / (attempts + 2).
    pub success_rate: f64,
    /// Mean cycles to recover over successful attempts (0: none).
    pub expected_cycles: f64,
    /// Cycles to give it before the next step.
    pub give_up_after: u32,
}

/// A ranked recovery plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Failures (of this type, on this metric) the evidence comes from.
    pub failures: usize,
    /// P(some step recovers), if their outcomes were independent.
    pub success_rate: f64,
    /// Prevention advice reported with those failures, most common first.
    pub prevention: Vec<String>,
}

/// The plan for a `failure_type` failure of `metric`, from `failures`
/// (resolved ones are left out), as `viewer` may be told of it: each
/// method's attempts merged per instance over the failures and counted
/// within [`crate::influence`]'s rule 4, so a method one instance alone
/// reported is in its own plan only, and so is advice one instance alone
/// gave. Attempts and advice recorded before their reporters were kept
/// count as they are.
pub fn plan<'a>(
    failures: impl IntoIterator<Item = &'a FailurePattern>,
    failure_type: FailureType,
    metric: &str,
    viewer: Viewer,
) -> Plan {
    let mut by_method: BTreeMap<&str, BTreeMap<String, RecoveryMethodStats>> = BTreeMap::new();
    let mut legacy: BTreeMap<&str, RecoveryMethodStats> = BTreeMap::new();
    let mut advice: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut legacy_advice: BTreeMap<&str, usize> = BTreeMap::new();
    let mut count = 0;
    for failure in failures {
        if failure.resolved || failure.failure_type != failure_type || failure.metric != metric {
            continue;
        }
        count += 1;
        for (method, total) in &failure.recovery {
            let Some(by) = failure.recovery_by.get(method) else {
                let merged = legacy.entry(method).or_default();
                *merged = merged.merge(total);
                continue;
            };
            let merged = by_method.entry(method).or_default();
            for (instance, stats) in by {
                // What was reported before reporters were kept counts as
                // it always did, but only for its own failure: merged, it
                // would make an instance's attempts on another failure
                // look corroborated.
                if instance == EARLIER_REPORTERS {
                    let earlier = legacy.entry(method).or_default();
                    *earlier = earlier.merge(stats);
                    continue;
                }
                let m = merged.entry(instance.clone()).or_default();
                *m = m.merge(stats);
            }
        }
        for a in &failure.prevention {
            match failure.advice_by.get(a) {
                Some(by) => {
                    if by.contains(EARLIER_REPORTERS) {
                        *legacy_advice.entry(a).or_default() += 1;
                    }
                    advice
                        .entry(a)
                        .or_default()
                        .extend(by.iter().filter(|i| *i != EARLIER_REPORTERS).cloned());
                }
                None => *legacy_advice.entry(a).or_default() += 1,
            }
        }
    }
    let mut methods = legacy;
    for (method, by) in by_method {
        if viewer.sees(&by) {
            let counted = counted_recovery(&by, viewer.own());
            let merged = methods.entry(method).or_default();
            *merged = merged.merge(&counted);
        }
    }
    let mut prevention = legacy_advice;
    for (a, by) in advice {
        if viewer.sees_all(&by) {
            *prevention.entry(a).or_default() += by.len();
        }
    }
    let mut steps: Vec<Step> = methods
        .into_iter()
        .filter(|(_, stats)| stats.attempts > 0)
        .map(|(method, stats)| {
            let expected_cycles = if stats.cycles.count > 0 {
                stats.cycles.mean
            } else {
                0.0
            };
            Step {
                method: method.to_string(),
                attempts: stats.attempts,
                successes: stats.successes,
                success_rate: (stats.successes as f64 + 1.0) / (stats.attempts as f64 + 2.0),
                expected_cycles,
                give_up_after: ((expected_cycles * PATIENCE_FACTOR).ceil() as u32)
                    .max(expected_cycles.ceil() as u32 + 1),
            }
        })
        .collect();
    steps.sort_by(|a, b| {
        b.success_rate
            .total_cmp(&a.success_rate)
            .then(a.expected_cycles.total_cmp(&b.expected_cycles))
            .then(a.method.cmp(&b.method))
    });
    steps.truncate(MAX_STEPS);
    let success_rate = 1.0 - steps.iter().map(|s| 1.0 - s.success_rate).product::<f64>();
    let mut prevention: Vec<(&str, usize)> = prevention.into_iter().collect();
    prevention.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Plan {
        success_rate: if steps.is_empty() { 0.0 } else { success_rate },
        steps,
        failures: count,
        prevention: prevention
            .into_iter()
            .map(|(p, _)| p.to_string())
            .take(5)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailureReport, RecoveryAttempt};

    fn failure(
        failure_type: FailureType,
        metric: &str,
        strategy: &str,
        recovery: &[(&str, bool, u32)],
    ) -> FailurePattern {
        FailurePattern::new(
            &FailureReport {
                failure_type,
                trigger: "t".into(),
                metric: metric.into(),
                strategy: strategy.into(),
                recovery: recovery
                    .iter()
                    .map(|(method, succeeded, cycles)| RecoveryAttempt {
                        method: method.to_string(),
                        succeeded: *succeeded,
                        cycles_to_recover: *cycles,
                    })
                    .collect(),
                prevention: vec![format!("apply warmup before {strategy}")],
                preceded_by: vec![],
                magnitude: None,
                follow_up: false,
            },
            "a",
            0,
        )
    }

    /// Attempts from before reporters were kept, on one failure, do not
    /// make one instance's attempts on another failure corroborated.
    #[test]
    fn earlier_attempts_count_for_their_own_failure_only() {
        let mut earlier = failure(FailureType::MetricReversal, "accuracy", "s1", &[]);
        let stats = RecoveryMethodStats {
            attempts: 10,
            successes: 8,
            ..Default::default()
        };
        earlier.recovery.insert("restart".into(), stats);
        earlier.recovery_by.insert(
            "restart".into(),
            BTreeMap::from([(EARLIER_REPORTERS.to_string(), stats)]),
        );
        earlier.prevention = vec!["drain first".into()];
        earlier.advice_by.insert(
            "drain first".into(),
            BTreeSet::from([EARLIER_REPORTERS.to_string()]),
        );
        let mut attacked = failure(FailureType::MetricReversal, "accuracy", "s2", &[]);
        for _ in 0..50 {
            attacked.record(
                &FailureReport {
                    failure_type: FailureType::MetricReversal,
                    trigger: "t".into(),
                    metric: "accuracy".into(),
                    strategy: "s2".into(),
                    recovery: vec![RecoveryAttempt {
                        method: "restart".into(),
                        succeeded: false,
                        cycles_to_recover: 0,
                    }],
                    prevention: vec!["drain first".into(), "junk".into()],
                    preceded_by: vec![],
                    magnitude: None,
                    follow_up: false,
                },
                "attacker",
                1,
            );
        }
        let seen = plan(
            [&earlier, &attacked],
            FailureType::MetricReversal,
            "accuracy",
            Viewer::Instance("bystander"),
        );
        let restart = seen.steps.iter().find(|s| s.method == "restart").unwrap();
        assert_eq!((restart.attempts, restart.successes), (10, 8));
        assert!(seen.prevention.iter().any(|a| a == "drain first"));
        assert!(!seen.prevention.iter().any(|a| a == "junk"));
    }

    #[test]
    fn the_plan_merges_the_fleets_evidence_and_ranks_it() {
        let failures = [
            failure(
                FailureType::MetricReversal,
                "accuracy",
                "s1",
                &[("rollback", true, 2), ("retrain", false, 0)],
            ),
            failure(
                FailureType::MetricReversal,
                "accuracy",
                "s2",
                &[("rollback", true, 4), ("retrain", true, 6)],
            ),
            // Another metric, another type: not evidence for this plan.
            failure(
                FailureType::MetricReversal,
                "loss",
                "s1",
                &[("reset", true, 1)],
            ),
            failure(
                FailureType::Deadlock,
                "accuracy",
                "s1",
                &[("reset", true, 1)],
            ),
        ];
        let plan = plan(
            failures.iter(),
            FailureType::MetricReversal,
            "accuracy",
            Viewer::Operator,
        );
        assert_eq!(plan.failures, 2);
        let methods: Vec<&str> = plan.steps.iter().map(|s| s.method.as_str()).collect();
        assert_eq!(methods, ["rollback", "retrain"]);
        let rollback = &plan.steps[0];
        assert_eq!((rollback.attempts, rollback.successes), (2, 2));
        assert_eq!(rollback.success_rate, 0.75);
        assert_eq!(rollback.expected_cycles, 3.0);
        assert_eq!(rollback.give_up_after, 6);
        assert_eq!(plan.steps[1].success_rate, 0.5);
        // 1 - 0.25 * 0.5.
        assert_eq!(plan.success_rate, 0.875);
        assert_eq!(plan.prevention.len(), 2);
        let none = super::plan(
            failures.iter(),
            FailureType::Cascade,
            "accuracy",
            Viewer::Operator,
        );
        assert!(none.steps.is_empty() && none.success_rate == 0.0);
        // All of it was reported by one instance: its own plan has it,
        // another instance's has nothing yet.
        let own = super::plan(
            failures.iter(),
            FailureType::MetricReversal,
            "accuracy",
            Viewer::Instance("a"),
        );
        assert_eq!(own.steps, plan.steps);
        let other = super::plan(
            failures.iter(),
            FailureType::MetricReversal,
            "accuracy",
            Viewer::Instance("b"),
        );
        assert!(other.steps.is_empty() && other.prevention.is_empty());
        assert_eq!(other.failures, 2);
    }
}
