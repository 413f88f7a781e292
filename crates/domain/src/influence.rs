//! Bounded influence: how much one instance's reports may weigh in what the
//! hub tells *other* instances.
//!
//! Every instance with a valid certificate can report anything, so the hub
//! does not trust what a single instance says about the fleet. It counts
//! the evidence itself, per aggregate (one strategy on one metric in one
//! context, or one kind of failure), and applies three rules:
//!
//! 1. **Corroboration.** A strategy is ranked for other instances only
//!    once at least [`MIN_REPORTERS`] distinct instances have reported
//!    outcomes of it, in any context (the same bound a configuration needs
//!    before it bootstraps anyone). Until then it informs only the one
//!    that reported it (and operators, who look but do not act on it).
//! 2. **A share, not a volume.** In an aggregate, an instance's outcomes
//!    count for others up to [`FREE_REPORTS`], and beyond that only while
//!    it has no more counted outcomes than all the other instances reported
//!    together — about half of the evidence any other instance's ranking
//!    rests on, at most. The rest is its *excess*: logged, kept, counted in
//!    full in the rankings that instance itself asks for, and counted for
//!    everyone once the others' reports make room for all of it.
//!    Outcomes of acting on a pattern count by the same share (without an
//!    excess: what is over it is dropped).
//! 3. **Failures need applications.** An instance's reports of a failure
//!    count up to the applications of the failing strategy it reported
//!    (at least one). Twenty reports of a failure from an instance that
//!    never applied the strategy count as one. (A failure rate is divided
//!    by every reported application, so an instance that also reports
//!    applications it did not make can dilute one.)
//!
//! Decisions are made in the fold from counts kept in the aggregate, so
//! they are deterministic and replicate with the command log. Lifetime
//! totals (the success rate and applications a recommendation shows,
//! streak and sequence statistics) still include every report; the
//! estimates rankings, warnings and bootstraps are built from are bounded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Role};
use crate::model::{DayBucket, Excess, StrategyKey, StrategyOutcome, StrategyRecord};

/// Distinct instances whose outcomes an aggregate needs before it informs
/// anyone else.
pub const MIN_REPORTERS: usize = 2;

/// Outcomes of an aggregate one instance may have counted regardless of
/// the others.
pub const FREE_REPORTS: u64 = 5;

/// How many of an instance's outcomes in an aggregate may count for the
/// fleet, given how many outcomes every other instance reported there
/// together. Others' reports, not their counted ones: two instances that
/// report at different paces, or one that reported alone before the other
/// joined, never hold each other back.
pub fn allowance(others: u64) -> u64 {
    FREE_REPORTS.max(others.saturating_add(1))
}

/// Who a ranking is for, which decides what evidence it may rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// An instance: its own reports count in full for it (its excess
    /// included), others' within the bounds, and a strategy only it
    /// reported is still ranked for it.
    Instance(&'a str),
    /// An instance that has reported nothing (Bootstrap's proven
    /// strategies): what the fleet corroborates, within the bounds.
    Newcomer,
    /// An operator: every strategy, uncorroborated ones included (an
    /// operator looks into what the hub was told; nobody acts on it
    /// unasked), each instance's reports within the bounds.
    Operator,
}

impl<'a> Viewer<'a> {
    /// The viewer a caller's identity makes (none: a newcomer).
    pub fn of(identity: Option<&'a Identity>) -> Viewer<'a> {
        match identity {
            Some(identity) => match identity.role {
                Role::Instance => Viewer::Instance(&identity.name),
                Role::Operator => Viewer::Operator,
            },
            None => Viewer::Newcomer,
        }
    }

    /// The instance whose excess counts for this viewer ("" for none).
    pub fn own(&self) -> &'a str {
        match self {
            Viewer::Instance(id) => id,
            _ => "",
        }
    }

    /// Whether evidence reported by `reporters` may inform this viewer:
    /// enough distinct instances reported it, or the viewer itself did,
    /// or the viewer is an operator.
    pub fn sees<V>(&self, reporters: &BTreeMap<String, V>) -> bool {
        match self {
            Viewer::Operator => true,
            Viewer::Newcomer => reporters.len() >= MIN_REPORTERS,
            Viewer::Instance(id) => reporters.len() >= MIN_REPORTERS || reporters.contains_key(*id),
        }
    }
}

/// The failure reports that count: each instance's up to its applications
/// of the strategy (at least one). `applications` are per instance.
pub fn counted_failures(
    reports: &BTreeMap<String, u64>,
    applications: &BTreeMap<String, u64>,
) -> u64 {
    reports
        .iter()
        .map(|(instance, n)| {
            let applied = applications.get(instance).copied().unwrap_or(0).max(1);
            (*n).min(applied)
        })
        .fold(0u64, u64::saturating_add)
}

/// An aggregate's evidence window rebuilt without one instance's
/// outcomes: what a quarantine installs, so that what the instance
/// reported stops counting (see [`rebuild_without`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rebuilt {
    pub key: StrategyKey,
    /// The aggregate's `through_sequence` when it was rebuilt: the fold
    /// refuses a rebuild of an aggregate that has moved on since.
    pub based_on: u64,
    pub window: Vec<DayBucket>,
    pub excess: BTreeMap<String, Excess>,
}

/// Rebuilds `record`'s window and excess from `outcomes` (its outcomes
/// within the evidence window, in sequence order) without `instance`'s:
/// the others' outcomes are admitted again by the same rules, from zero.
pub fn rebuild_without(
    record: &StrategyRecord,
    outcomes: &[StrategyOutcome],
    instance: &str,
    retention_days: i64,
) -> Rebuilt {
    let key = record.key();
    let mut fresh = StrategyRecord::empty(&key, record.first_seen);
    for outcome in outcomes.iter().filter(|o| o.instance_id != instance) {
        fresh.record(outcome, retention_days);
    }
    Rebuilt {
        key,
        based_on: record.through_sequence,
        window: fresh.window,
        excess: fresh.excess,
    }
}

/// Installs a rebuild into `record`: its window and excess are replaced
/// and `instance` no longer counts among its reporters. Lifetime totals
/// keep what it reported (the outcome log has only recent outcomes to take
/// them out from).
pub fn install(record: &mut StrategyRecord, rebuilt: &Rebuilt, instance: &str) {
    record.window = rebuilt.window.clone();
    record.excess = rebuilt.excess.clone();
    record.instances.remove(instance);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folds `order` (one instance name per outcome) through [`allowance`]
    /// and returns how many of each instance's counted.
    fn run(order: &[&str]) -> BTreeMap<String, u64> {
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        let mut reports: BTreeMap<String, u64> = BTreeMap::new();
        for who in order {
            let own = counted.get(*who).copied().unwrap_or(0);
            let others = reports.values().sum::<u64>() - reports.get(*who).unwrap_or(&0);
            if own < allowance(others) {
                *counted.entry(who.to_string()).or_default() += 1;
            }
            *reports.entry(who.to_string()).or_default() += 1;
        }
        counted
    }

    #[test]
    fn a_lone_instance_counts_its_first_reports_only() {
        let counted = run(&["a"; 200]);
        assert_eq!(counted["a"], FREE_REPORTS);
    }

    #[test]
    fn instances_reporting_alike_all_count() {
        let mut order = Vec::new();
        for _ in 0..50 {
            order.extend(["a", "b", "c"]);
        }
        let counted = run(&order);
        assert_eq!(counted.values().sum::<u64>(), 150);
    }

    #[test]
    fn a_flooder_never_holds_more_than_half_plus_one() {
        // Five honest instances report 20 each; the flooder 200, first.
        let mut order = vec!["x"; 200];
        for _ in 0..20 {
            order.extend(["a", "b", "c", "d", "e"]);
        }
        order.extend(vec!["x"; 200]);
        let counted = run(&order);
        let honest: u64 = ["a", "b", "c", "d", "e"].iter().map(|i| counted[*i]).sum();
        assert_eq!(honest, 100);
        assert_eq!(counted["x"], 101, "{counted:?}");
    }

    #[test]
    fn a_faster_instance_keeps_pace_with_the_rest() {
        // a reports twice as often as b: it counts as much as b.
        let mut order = Vec::new();
        for _ in 0..30 {
            order.extend(["a", "a", "b"]);
        }
        let counted = run(&order);
        assert_eq!(counted["b"], 30);
        assert_eq!(counted["a"], 30);
    }

    #[test]
    fn corroboration_needs_two_reporters_or_the_callers_own() {
        let one = BTreeMap::from([("a".to_string(), 3u64)]);
        assert!(!Viewer::Instance("b").sees(&one));
        assert!(!Viewer::Newcomer.sees(&one));
        assert!(Viewer::Instance("a").sees(&one));
        assert!(Viewer::Operator.sees(&one));
        let two = BTreeMap::from([("a".to_string(), 3u64), ("b".to_string(), 1)]);
        assert!(Viewer::Instance("c").sees(&two));
        assert!(Viewer::Newcomer.sees(&two));
        let operator = Identity::operator("ops");
        assert_eq!(Viewer::of(Some(&operator)), Viewer::Operator);
        let instance = Identity::instance("a");
        assert_eq!(Viewer::of(Some(&instance)).own(), "a");
    }

    #[test]
    fn failures_count_up_to_the_reporters_applications() {
        let reports = BTreeMap::from([
            ("honest".to_string(), 3u64),
            ("attacker".to_string(), 20),
            ("new".to_string(), 2),
        ]);
        let applications = BTreeMap::from([("honest".to_string(), 10u64)]);
        // honest 3 (of 10 applications), attacker 1, new 1.
        assert_eq!(counted_failures(&reports, &applications), 5);
    }
}
