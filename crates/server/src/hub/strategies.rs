//! Strategy outcomes, recommendations and combinations.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::{Hub, State, wrong_answer};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::idempotency::RequestTag;
use crate::domain::identity::Identity;
use crate::domain::influence::Viewer;
use crate::domain::model::{
    Attributes, FailurePattern, Metrics, RecentApplication, StrategyRecord, StrategyShare,
    context_key,
};
use crate::domain::prevention;
use crate::domain::recommend::{
    self, Combination, CombinationProblem, Recommendation, StrategyQuery, StrategyView,
};
use crate::error::Result;

/// What an instance asks GetStrategies.
#[derive(Debug, Clone, Default)]
pub struct StrategyAsk {
    /// Who asks (none: a newcomer); see [`Viewer`].
    pub caller: Option<Identity>,
    pub metric: String,
    pub context: Attributes,
    pub current_value: Option<f64>,
    pub budget: Option<f64>,
    pub limit: usize,
    pub recent: Vec<RecentApplication>,
    /// Rank by a Thompson draw with this seed.
    pub explore_seed: Option<u64>,
}

/// A strategy that, applied shortly before another, lowered its success
/// rate by at least this much…
const CONFLICT_MIN_DROP: f64 = 0.2;
/// …over at least this many applications…
const CONFLICT_MIN_APPLICATIONS: u64 = 5;
/// …or made its reported failures clearly more frequent (over at least this
/// many failures), conflicts with it.
const CONFLICT_MIN_FAILURES: u64 = 2;

impl Hub {
    /// Logs one outcome and folds it into its (strategy, metric, context)
    /// aggregate. Returns the outcome's sequence and the new aggregate.
    /// With a request id, a retry logs nothing and returns the first
    /// call's sequence with the aggregate as it is now.
    pub async fn share_strategy(
        &self,
        caller: &str,
        share: StrategyShare,
        request: Option<RequestTag>,
    ) -> Result<(u64, Arc<StrategyRecord>)> {
        let answer = self
            .submit(Action::ShareStrategy {
                caller: caller.to_string(),
                share,
                evidence_days: self.shared.settings.tuning.retention_days,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::StrategyShared {
                outcome_sequence,
                record,
            } => Ok((outcome_sequence, record)),
            other => Err(wrong_answer("ShareStrategy", other)),
        }
    }

    /// Ranked recommendations (see [`crate::domain::recommend`]).
    pub fn get_strategies(&self, ask: &StrategyAsk) -> Vec<Recommendation> {
        let state = self.state();
        self.recommend_in(&state, ask)
    }

    pub(super) fn recommend_in(&self, state: &State, ask: &StrategyAsk) -> Vec<Recommendation> {
        let key = context_key(&ask.context);
        let views = state.strategy_views(&ask.metric, &key);
        // Open failures by strategy, read once rather than once per strategy.
        let failures = state.failures();
        let mut open_failures: BTreeMap<&str, Vec<&FailurePattern>> = BTreeMap::new();
        for failure in failures.iter().filter(|f| !f.resolved) {
            open_failures
                .entry(failure.strategy.as_str())
                .or_default()
                .push(failure);
        }
        let failure_risk: BTreeMap<String, f64> = views
            .iter()
            .filter_map(|view| {
                let name = view.fleet.record.strategy.as_str();
                let failures = open_failures.get(name)?;
                let usage = state.usage_of(name);
                Some((
                    name.to_string(),
                    prevention::expected_loss(failures.iter().copied(), &ask.recent, &usage),
                ))
            })
            .collect();
        let now = self.now();
        let tuning = self.shared.settings.tuning;
        let bandings: Vec<_> = views
            .iter()
            .map(|view| {
                (
                    view.fleet.banding(now, tuning),
                    view.own.map(|own| own.banding(now, tuning)),
                )
            })
            .collect();
        recommend::recommend_views(
            views
                .iter()
                .zip(&bandings)
                .map(|(view, (fleet, own))| StrategyView {
                    fleet: &view.fleet.record,
                    own: view.own.map(|own| &*own.record),
                    fleet_banding: Some(fleet),
                    own_banding: own.as_deref(),
                    remote_origins: view.remote_origins,
                }),
            StrategyQuery {
                viewer: Viewer::of(ask.caller.as_ref()),
                metric: &ask.metric,
                context_key: &key,
                current_value: ask.current_value,
                budget: ask.budget,
                limit: ask.limit,
                recent: &ask.recent,
                explore_seed: ask.explore_seed,
                now,
                tuning,
                failure_risk: &failure_risk,
            },
        )
    }

    /// The best set of strategies for several metrics within a budget,
    /// avoiding pairs the fleet has seen conflict.
    pub fn optimal_combination(
        &self,
        caller: Option<&Identity>,
        metrics: &Metrics,
        context: &Attributes,
        budget: Option<f64>,
        costs: BTreeMap<String, f64>,
        recent: &[RecentApplication],
    ) -> (Combination, Vec<(String, String)>) {
        let state = self.state();
        let candidates_per_metric: Vec<Vec<Recommendation>> = metrics
            .iter()
            .map(|(metric, m)| {
                self.recommend_in(
                    &state,
                    &StrategyAsk {
                        caller: caller.cloned(),
                        metric: metric.clone(),
                        context: context.clone(),
                        current_value: Some(m.value),
                        limit: usize::MAX,
                        recent: recent.to_vec(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let names: BTreeSet<&str> = candidates_per_metric
            .iter()
            .flatten()
            .map(|r| r.strategy.as_str())
            .collect();
        let conflicts = conflicts(&state, &names);
        let problem = CombinationProblem {
            candidates_per_metric: candidates_per_metric.clone(),
            costs,
            conflicts: conflicts.iter().cloned().collect(),
            budget,
        };
        let combination = problem.solve();
        (combination, conflicts)
    }
}

/// Pairs among `names` the fleet has seen conflict, each as (a, b) with a < b.
fn conflicts(state: &State, names: &BTreeSet<&str>) -> Vec<(String, String)> {
    let mut found = HashSet::new();
    let pair = |a: &str, b: &str| {
        if a <= b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        }
    };
    for record in state.tables.strategies.values() {
        if !names.contains(record.strategy.as_str()) || record.applications == 0 {
            continue;
        }
        let overall = record.success_rate();
        for (before, stats) in &record.preceded_by {
            if before == &record.strategy || !names.contains(before.as_str()) {
                continue;
            }
            let with = stats.successes as f64 / stats.applications.max(1) as f64;
            if stats.applications >= CONFLICT_MIN_APPLICATIONS
                && overall - with >= CONFLICT_MIN_DROP
            {
                found.insert(pair(before, &record.strategy));
            }
        }
    }
    for failure in state.failures().iter().filter(|f| !f.resolved) {
        if !names.contains(failure.strategy.as_str()) {
            continue;
        }
        let usage = state.usage_of(&failure.strategy);
        for (before, failures_with) in &failure.preceded_by {
            if before == &failure.strategy || !names.contains(before.as_str()) {
                continue;
            }
            let applications_with = usage.preceded_by.get(before).copied().unwrap_or(0);
            let applications_without = usage.applications.saturating_sub(applications_with);
            if applications_with < CONFLICT_MIN_APPLICATIONS
                || *failures_with < CONFLICT_MIN_FAILURES
            {
                continue;
            }
            let with = *failures_with as f64 / applications_with as f64;
            let without = failure.occurrences.saturating_sub(*failures_with) as f64
                / applications_without.max(1) as f64;
            // Only a clearly higher failure rate after `before` makes the
            // pair a conflict; failures that happen anyway do not.
            if with >= 2.0 * without && with - without >= CONFLICT_MIN_DROP {
                found.insert(pair(before, &failure.strategy));
            }
        }
    }
    let mut conflicts: Vec<_> = found.into_iter().collect();
    conflicts.sort();
    conflicts
}
