//! Strategy recommendations from the fleet's aggregates: which strategies to
//! try for a metric, and which combination to apply across several metrics
//! within a budget. The ranking is deliberately simple (success rate × mean
//! improvement) with a sample-size-aware confidence; every input is an
//! aggregate the hub already holds, so a query never touches the outcome log.

use std::collections::{BTreeMap, HashSet};

use super::model::{ConditionStats, StrategyRecord};
use super::stats::{RunningStats, wilson_lower_bound};

/// A context's own aggregate is trusted over the fleet's once it holds this
/// many applications.
pub const MIN_CONTEXT_APPLICATIONS: u64 = 5;

/// Where a recommendation's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Context,
    Fleet,
}

/// One ranked recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub strategy: String,
    pub metric: String,
    /// Wilson 95% lower bound of the success rate.
    pub confidence: f64,
    pub expected_delta: f64,
    pub success_rate: f64,
    pub applications: u64,
    pub improvement: RunningStats,
    /// Highest failure rate first.
    pub failure_modes: Vec<(String, ConditionStats)>,
    pub scope: Scope,
    /// The ranking key: success rate × mean improvement.
    pub score: f64,
}

impl Recommendation {
    fn from_record(record: &StrategyRecord, scope: Scope, current_value: Option<f64>) -> Self {
        let mut expected_delta = record.expected_delta();
        if let Some(value) = current_value {
            // A metric in [0, 1] cannot rise past 1 or fall below 0, whatever
            // the strategy did elsewhere.
            expected_delta = expected_delta.clamp(-value, 1.0 - value);
        }
        Recommendation {
            strategy: record.strategy.clone(),
            metric: record.metric.clone(),
            confidence: wilson_lower_bound(record.successes, record.applications),
            expected_delta,
            success_rate: record.success_rate(),
            applications: record.applications,
            improvement: record.improvement,
            failure_modes: record
                .ranked_failure_modes()
                .into_iter()
                .map(|(c, s)| (c.to_string(), *s))
                .collect(),
            scope,
            score: record.success_rate() * record.improvement.mean,
        }
    }
}

/// The question an instance asks.
#[derive(Debug, Clone, Copy)]
pub struct StrategyQuery<'a> {
    /// Canonical context key of the caller ("" for none).
    pub context_key: &'a str,
    pub current_value: Option<f64>,
    /// Maximum total cost (each strategy costs 1); `None`: unlimited.
    pub budget: Option<f64>,
    pub limit: usize,
}

/// Ranks the strategies whose aggregates are in `records` (all for one
/// metric, any context). For each strategy the caller's own context is used
/// when it holds at least [`MIN_CONTEXT_APPLICATIONS`] applications,
/// otherwise every context merged.
pub fn recommend<'r>(
    records: impl IntoIterator<Item = &'r StrategyRecord>,
    query: StrategyQuery<'_>,
) -> Vec<Recommendation> {
    let mut by_strategy: BTreeMap<&str, (Option<&StrategyRecord>, Option<StrategyRecord>)> =
        BTreeMap::new();
    for record in records {
        let entry = by_strategy.entry(record.strategy.as_str()).or_default();
        if !query.context_key.is_empty() && record.context_key == query.context_key {
            entry.0 = Some(record);
        }
        entry.1 = Some(match entry.1.take() {
            None => {
                let mut fleet = record.clone();
                fleet.context_key.clear();
                fleet
            }
            Some(fleet) => fleet.merge(record),
        });
    }

    let mut ranked: Vec<Recommendation> = by_strategy
        .into_values()
        .filter_map(|(own, fleet)| match own {
            Some(own) if own.applications >= MIN_CONTEXT_APPLICATIONS => Some(
                Recommendation::from_record(own, Scope::Context, query.current_value),
            ),
            _ => fleet.map(|f| Recommendation::from_record(&f, Scope::Fleet, query.current_value)),
        })
        .filter(|r| r.applications > 0)
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(a.strategy.cmp(&b.strategy))
    });
    let affordable = match query.budget {
        Some(budget) => budget.floor().max(0.0) as usize,
        None => usize::MAX,
    };
    ranked.truncate(query.limit.min(affordable));
    ranked
}

/// A chosen set of strategies across metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    pub steps: Vec<Recommendation>,
    pub expected_total_delta: f64,
    /// The lowest confidence among the steps (0 with none).
    pub confidence: f64,
}

/// Picks strategies for several metrics, greedily by expected delta: each
/// metric gets at most one strategy, no strategy is used twice (applying
/// one strategy for two aims at once double-counts its effect), only
/// strategies expected to help are chosen, and at most `budget` are chosen
/// (each costs 1; `None`: one per metric).
pub fn optimal_combination(
    candidates_per_metric: impl IntoIterator<Item = Vec<Recommendation>>,
    budget: Option<f64>,
) -> Combination {
    let mut candidates: Vec<Recommendation> = candidates_per_metric
        .into_iter()
        .flatten()
        .filter(|r| r.expected_delta > 0.0)
        .collect();
    candidates.sort_by(|a, b| {
        b.expected_delta
            .total_cmp(&a.expected_delta)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(a.metric.cmp(&b.metric))
            .then(a.strategy.cmp(&b.strategy))
    });
    let max_steps = budget.map_or(usize::MAX, |b| b.floor().max(0.0) as usize);
    let mut used_metrics = HashSet::new();
    let mut used_strategies = HashSet::new();
    let mut steps = Vec::new();
    for candidate in candidates {
        if steps.len() >= max_steps {
            break;
        }
        if used_metrics.contains(&candidate.metric) || used_strategies.contains(&candidate.strategy)
        {
            continue;
        }
        used_metrics.insert(candidate.metric.clone());
        used_strategies.insert(candidate.strategy.clone());
        steps.push(candidate);
    }
    Combination {
        expected_total_delta: steps.iter().map(|s| s.expected_delta).sum(),
        confidence: steps
            .iter()
            .map(|s| s.confidence)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Attributes, StrategyKey, StrategyOutcome};

    fn record(strategy: &str, ctx: &str, outcomes: &[(bool, f64)]) -> StrategyRecord {
        let key = StrategyKey {
            metric: "lv".into(),
            strategy: strategy.into(),
            context_key: ctx.into(),
        };
        let mut r = StrategyRecord::empty(&key, 0);
        for (i, (ok, delta)) in outcomes.iter().enumerate() {
            r.record(&StrategyOutcome {
                sequence: i as u64,
                at: 0,
                instance_id: "x".into(),
                strategy: strategy.into(),
                metric: "lv".into(),
                value_before: 0.5,
                successful: *ok,
                delta: *delta,
                condition: String::new(),
                context: Attributes::new(),
            });
        }
        r
    }

    fn query(ctx: &str) -> StrategyQuery<'_> {
        StrategyQuery {
            context_key: ctx,
            current_value: None,
            budget: None,
            limit: 10,
        }
    }

    #[test]
    fn ranks_by_rate_times_improvement() {
        let a = record("a", "", &[(true, 0.1), (true, 0.1), (false, 0.0)]); // 0.667 × 0.1
        let b = record("b", "", &[(true, 0.3), (false, 0.0), (false, 0.0)]); // 0.333 × 0.3
        let ranked = recommend([&a, &b], query(""));
        assert_eq!(ranked[0].strategy, "b");
        assert!((ranked[0].score - 0.1).abs() < 1e-12);
        assert_eq!(ranked[1].strategy, "a");
        assert_eq!(ranked[0].scope, Scope::Fleet);
    }

    #[test]
    fn context_evidence_wins_when_sufficient() {
        let own = record("a", "p=x", &[(false, -0.1); 5]);
        let other = record("a", "p=y", &[(true, 0.3); 20]);
        let ranked = recommend([&own, &other], query("p=x"));
        assert_eq!(ranked[0].scope, Scope::Context);
        assert_eq!(ranked[0].success_rate, 0.0);
        // With too little own evidence the fleet view (both contexts) is used.
        let thin = record("a", "p=x", &[(false, -0.1); 2]);
        let ranked = recommend([&thin, &other], query("p=x"));
        assert_eq!(ranked[0].scope, Scope::Fleet);
        assert_eq!(ranked[0].applications, 22);
    }

    #[test]
    fn budget_and_headroom() {
        let a = record("a", "", &[(true, 0.3)]);
        let b = record("b", "", &[(true, 0.2)]);
        let c = record("c", "", &[(true, 0.1)]);
        let q = StrategyQuery {
            budget: Some(2.5),
            current_value: Some(0.9),
            ..query("")
        };
        let ranked = recommend([&a, &b, &c], q);
        assert_eq!(ranked.len(), 2);
        assert!(
            (ranked[0].expected_delta - 0.1).abs() < 1e-12,
            "capped at 1 − 0.9"
        );
    }

    #[test]
    fn combination_respects_uniqueness_and_budget() {
        let rec = |strategy: &str, metric: &str, delta: f64| Recommendation {
            strategy: strategy.into(),
            metric: metric.into(),
            confidence: 0.5 + delta,
            expected_delta: delta,
            success_rate: 1.0,
            applications: 10,
            improvement: RunningStats::default(),
            failure_modes: vec![],
            scope: Scope::Fleet,
            score: delta,
        };
        let per_metric = vec![
            vec![rec("s1", "m1", 0.3), rec("s2", "m1", 0.2)],
            vec![rec("s1", "m2", 0.25), rec("s3", "m2", 0.1)],
            vec![rec("s4", "m3", -0.1)],
        ];
        let combo = optimal_combination(per_metric.clone(), None);
        let chosen: Vec<_> = combo
            .steps
            .iter()
            .map(|s| (s.strategy.as_str(), s.metric.as_str()))
            .collect();
        assert_eq!(chosen, vec![("s1", "m1"), ("s3", "m2")]);
        assert!((combo.expected_total_delta - 0.4).abs() < 1e-12);
        assert!((combo.confidence - 0.6).abs() < 1e-12);
        let one = optimal_combination(per_metric, Some(1.0));
        assert_eq!(one.steps.len(), 1);
    }
}
