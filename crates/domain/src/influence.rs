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
//!    never applied the strategy count as one. And a failure rate is at
//!    least what it is with any one instance's applications cut to rule
//!    2's share (see `StrategyUsage::applications_for`), so an instance
//!    that also reports applications it did not make dilutes one by about
//!    half at most.
//! 4. **Recovery and prevention advice.** A recovery method's attempts
//!    count per instance by the share of rule 2 (up to [`FREE_REPORTS`],
//!    beyond that up to the other instances' attempts plus one), and a
//!    method only one instance reported informs only that instance, as a
//!    strategy does under rule 1. Prevention advice informs others once
//!    [`MIN_REPORTERS`] instances gave it, ranked by how many did, and an
//!    instance holds at most [`MAX_OWN_ADVICE`] of a failure's
//!    [`MAX_PREVENTION`] advice slots with advice nobody else gave: its own
//!    oldest gives way first, so it cannot push out what others said.
//!    Methods and advice from before reporters were kept stay the fleet's
//!    when an instance repeats them ([`EARLIER_REPORTERS`]).
//!
//! Decisions are made in the fold from counts kept in the aggregate, so
//! they are deterministic and replicate with the command log. Lifetime
//! totals (the success rate and applications a recommendation shows,
//! streak and sequence statistics) still include every report; the
//! estimates rankings, warnings and bootstraps are built from are bounded.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Role};
use crate::model::{
    DayBucket, Excess, FailurePattern, MAX_PREVENTION, RecoveryMethodStats, StrategyKey,
    StrategyOutcome, StrategyRecord,
};

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
                // A peer region sees what a newcomer would: corroborated
                // aggregates (it never reaches these queries: the policy
                // keeps it to the Federation service).
                Role::Hub => Viewer::Newcomer,
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
    /// or the viewer is an operator, or it was reported before reporters
    /// were kept ([`EARLIER_REPORTERS`]), which informed everyone then.
    pub fn sees<V>(&self, reporters: &BTreeMap<String, V>) -> bool {
        // The count first: it settles most calls without a lookup.
        self.admits(reporters.len(), |id| reporters.contains_key(id))
            || reporters.contains_key(EARLIER_REPORTERS)
    }

    /// [`Viewer::sees`] for a set of reporters.
    pub fn sees_all(&self, reporters: &BTreeSet<String>) -> bool {
        self.admits(reporters.len(), |id| reporters.contains(id))
            || reporters.contains(EARLIER_REPORTERS)
    }

    fn admits(&self, reporters: usize, reported_by: impl Fn(&str) -> bool) -> bool {
        match self {
            Viewer::Operator => true,
            Viewer::Newcomer => reporters >= MIN_REPORTERS,
            Viewer::Instance(id) => reporters >= MIN_REPORTERS || reported_by(id),
        }
    }
}

/// Pieces of one failure's prevention advice an instance may hold that no
/// other instance gave (rule 4).
pub const MAX_OWN_ADVICE: usize = 4;

/// The reporter that stands for everyone who gave a recovery method or a
/// piece of advice before reporters were kept (instance ids are never
/// empty). A record from then has the method or advice but no reporters,
/// and is shown as it is. When an instance then repeats it, the fleet's
/// earlier voice is kept under this name beside the instance's: recorded
/// as the instance's alone, it would have informed only that instance
/// from then on, so one repetition could hide it from everyone else.
pub const EARLIER_REPORTERS: &str = "";

/// Folds `instance`'s `advice` into `failure`'s prevention advice, within
/// rule 4: known advice gains a voice; new advice first makes room by
/// dropping the instance's own oldest uncorroborated advice when it holds
/// [`MAX_OWN_ADVICE`], then, when the record is full, the oldest advice
/// fewer than [`MIN_REPORTERS`] instances gave. When all of it is
/// corroborated the new advice waits for room.
pub fn give_advice(failure: &mut FailurePattern, advice: &str, instance: &str) {
    if failure.prevention.iter().any(|a| a == advice) {
        failure
            .advice_by
            .entry(advice.to_string())
            .or_insert_with(|| BTreeSet::from([EARLIER_REPORTERS.to_string()]))
            .insert(instance.to_string());
        return;
    }
    let own: Vec<String> = failure
        .prevention
        .iter()
        .filter(|a| {
            failure
                .advice_by
                .get(*a)
                .is_some_and(|by| by.len() == 1 && by.contains(instance))
        })
        .cloned()
        .collect();
    if own.len() >= MAX_OWN_ADVICE {
        drop_advice(failure, &own[0]);
    }
    if failure.prevention.len() >= MAX_PREVENTION {
        let uncorroborated = failure.prevention.iter().find(|a| {
            failure
                .advice_by
                .get(*a)
                .is_none_or(|by| by.len() < MIN_REPORTERS)
        });
        let Some(oldest) = uncorroborated.cloned() else {
            return;
        };
        drop_advice(failure, &oldest);
    }
    failure.prevention.push(advice.to_string());
    failure
        .advice_by
        .insert(advice.to_string(), BTreeSet::from([instance.to_string()]));
}

fn drop_advice(failure: &mut FailurePattern, advice: &str) {
    failure.prevention.retain(|a| a != advice);
    failure.advice_by.remove(advice);
}

/// `failure` as `viewer` may be told of it (rule 4): each recovery method
/// from the attempts that count for the viewer (methods only another
/// instance reported left out), and the prevention advice the viewer may
/// see, most often given first. Methods and advice recorded before their
/// reporters were kept are shown as they are.
pub fn failure_seen_by(failure: &FailurePattern, viewer: Viewer) -> FailurePattern {
    let mut seen = failure.clone();
    seen.recovery = failure
        .recovery
        .iter()
        .filter_map(|(method, total)| match failure.recovery_by.get(method) {
            None => Some((method.clone(), *total)),
            Some(by) if viewer.sees(by) => {
                let counted = counted_recovery(by, viewer.own());
                (counted.attempts > 0).then(|| (method.clone(), counted))
            }
            Some(_) => None,
        })
        .collect();
    let mut advice: Vec<(usize, usize, &String)> = failure
        .prevention
        .iter()
        .enumerate()
        .filter_map(|(age, a)| match failure.advice_by.get(a) {
            None => Some((MIN_REPORTERS, age, a)),
            Some(by) => viewer.sees_all(by).then_some((by.len(), age, a)),
        })
        .collect();
    advice.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    seen.prevention = advice.into_iter().map(|(_, _, a)| a.clone()).collect();
    seen
}

/// A recovery method's attempts as they count for the instance `own`
/// ("" for none): its own and those from before reporters were kept
/// ([`EARLIER_REPORTERS`]) in full, every other instance's up to the
/// [`allowance`] the rest of the attempts give it.
pub fn counted_recovery(
    by: &BTreeMap<String, RecoveryMethodStats>,
    own: &str,
) -> RecoveryMethodStats {
    let total: u64 = by.values().map(|s| s.attempts).fold(0, u64::saturating_add);
    by.iter()
        .map(|(instance, stats)| {
            if instance == own || instance == EARLIER_REPORTERS {
                *stats
            } else {
                stats.scaled_to(allowance(total - stats.attempts))
            }
        })
        .fold(RecoveryMethodStats::default(), |sum, s| sum.merge(&s))
}

/// Takes `instance` out of what `failure` counts (a quarantine): its
/// reports, its recovery attempts (a method only it reported goes) and its
/// voice in the prevention advice (advice only it gave goes). Lifetime
/// totals of methods others reported too keep its attempts.
pub fn forget_failure_reports(failure: &mut FailurePattern, instance: &str) {
    failure.reports.remove(instance);
    failure.instances.remove(instance);
    for (method, by) in failure.recovery_by.iter_mut() {
        if by.remove(instance).is_some() && by.is_empty() {
            failure.recovery.remove(method);
        }
    }
    failure.recovery_by.retain(|_, by| !by.is_empty());
    let alone: Vec<String> = failure
        .advice_by
        .iter_mut()
        .filter_map(|(advice, by)| (by.remove(instance) && by.is_empty()).then(|| advice.clone()))
        .collect();
    for advice in alone {
        drop_advice(failure, &advice);
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

    fn failure_with_advice(given: &[(&str, &str)]) -> FailurePattern {
        let report = crate::model::FailureReport {
            failure_type: crate::model::FailureType::Deadlock,
            trigger: "t".into(),
            metric: "m".into(),
            strategy: "s".into(),
            recovery: vec![],
            prevention: vec![],
            preceded_by: vec![],
            magnitude: None,
            follow_up: false,
        };
        let mut failure = FailurePattern::new(&report, "a", 0);
        for (instance, advice) in given {
            give_advice(&mut failure, advice, instance);
        }
        failure
    }

    /// A record from before reporters were kept: one repetition of its
    /// advice or method by an attacker must not make them the attacker's.
    #[test]
    fn repeating_what_the_fleet_said_before_reporters_were_kept_does_not_take_it_over() {
        let mut failure = failure_with_advice(&[]);
        failure.prevention = vec!["drain the queue first".into()];
        failure.advice_by.clear();
        let earlier = RecoveryMethodStats {
            attempts: 10,
            successes: 8,
            ..Default::default()
        };
        failure.recovery = BTreeMap::from([("restart".to_string(), earlier)]);
        failure.recovery_by.clear();
        let repeat = crate::model::FailureReport {
            failure_type: failure.failure_type,
            trigger: "t".into(),
            metric: "m".into(),
            strategy: "s".into(),
            recovery: vec![crate::model::RecoveryAttempt {
                method: "restart".into(),
                succeeded: false,
                cycles_to_recover: 0,
            }],
            prevention: vec!["drain the queue first".into()],
            preceded_by: vec![],
            magnitude: None,
            follow_up: false,
        };
        for _ in 0..20 {
            failure.record(&repeat, "attacker", 1);
        }
        let seen = failure.seen_by(Viewer::Instance("bystander"));
        assert_eq!(seen.prevention, vec!["drain the queue first".to_string()]);
        let restart = seen.recovery["restart"];
        // The earlier 10 attempts in full, the attacker's 20 failures at
        // its share (the others' 10, plus one).
        assert_eq!((restart.attempts, restart.successes), (21, 8));
        // A quarantine of the attacker leaves what the fleet said.
        forget_failure_reports(&mut failure, "attacker");
        let seen = failure.seen_by(Viewer::Newcomer);
        assert_eq!(seen.prevention, vec!["drain the queue first".to_string()]);
        assert_eq!(seen.recovery["restart"].attempts, 10);
    }

    #[test]
    fn an_instance_holds_a_few_advice_slots_and_cannot_evict_corroborated_advice() {
        let mut given: Vec<(String, String)> = Vec::new();
        // 30 pieces of advice from 15 honest instances, two corroborated.
        for i in 0..30 {
            given.push((format!("h{}", i / 2), format!("honest {i}")));
        }
        given.push(("g".into(), "honest 0".into()));
        given.push(("g".into(), "honest 1".into()));
        for i in 0..100 {
            given.push(("x".into(), format!("junk {i}")));
        }
        let pairs: Vec<(&str, &str)> = given
            .iter()
            .map(|(i, a)| (i.as_str(), a.as_str()))
            .collect();
        let failure = failure_with_advice(&pairs);
        assert_eq!(failure.prevention.len(), MAX_PREVENTION);
        let junk: Vec<&String> = failure
            .prevention
            .iter()
            .filter(|a| a.starts_with("junk"))
            .collect();
        assert_eq!(junk, ["junk 96", "junk 97", "junk 98", "junk 99"]);
        // The junk pushed out two uncorroborated honest pieces, the
        // oldest, on its way in, and none since.
        assert!(!failure.prevention.contains(&"honest 2".to_string()));
        assert!(!failure.prevention.contains(&"honest 3".to_string()));
        assert!(failure.prevention.contains(&"honest 4".to_string()));
        assert!(failure.prevention.contains(&"honest 0".to_string()));
        assert!(failure.prevention.contains(&"honest 1".to_string()));
        // Others see the corroborated advice only; the giver its own too.
        let seen = failure.seen_by(Viewer::Instance("z"));
        assert_eq!(seen.prevention, ["honest 0", "honest 1"]);
        let own = failure.seen_by(Viewer::Instance("x"));
        assert_eq!(own.prevention.len(), 2 + 4);
    }

    #[test]
    fn a_recovery_method_counts_each_instance_within_its_share() {
        let stats = |attempts, successes| RecoveryMethodStats {
            attempts,
            successes,
            ..Default::default()
        };
        let by = BTreeMap::from([
            ("a".to_string(), stats(3, 3)),
            ("b".to_string(), stats(2, 2)),
            ("x".to_string(), stats(100, 0)),
        ]);
        // x counts as allowance(5) = 6 attempts for others, in full for x.
        let counted = counted_recovery(&by, "");
        assert_eq!((counted.attempts, counted.successes), (11, 5));
        let own = counted_recovery(&by, "x");
        assert_eq!((own.attempts, own.successes), (105, 5));
        // Proportions are kept when scaling down.
        let half = stats(10, 5).scaled_to(4);
        assert_eq!((half.attempts, half.successes), (4, 2));
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
