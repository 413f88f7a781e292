//! Properties of `CombinationProblem::solve` on random small problems:
//! every constraint holds, the reported totals add up, and the total equals
//! the optimum found by exhaustive search.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;

use learning_hub::domain::model::ConditionStats;
use learning_hub::domain::recommend::{Combination, CombinationProblem, Recommendation, Scope};
use learning_hub::domain::stats::RunningStats;

const POOL: [&str; 5] = [
    "consolidation_cycle",
    "novelty_injection",
    "phase_acceleration",
    "speed_optimization",
    "warm_restart",
];

fn recommendation(strategy: &str, metric: &str, delta: f64, confidence: f64) -> Recommendation {
    let mut improvement = RunningStats::default();
    improvement.push(delta.max(0.01));
    Recommendation {
        strategy: strategy.to_string(),
        metric: metric.to_string(),
        confidence,
        expected_delta: delta,
        lower_bound: delta - 0.05,
        success_rate: confidence,
        applications: 12,
        improvement,
        failure_modes: vec![(
            "metric already high".to_string(),
            ConditionStats {
                applications: 3,
                failures: 1,
            },
        )],
        scope: Scope::Fleet,
        band: (0.2, 0.6),
        band_known: true,
        max_consecutive_uses: 0,
        cooldown_cycles: 0,
        evidence: 12.0,
        improvement_estimate: delta.max(0.01),
        regression_estimate: -0.02,
        failure_risk: 0.0,
        score: delta - 0.05,
        origin_regions: 0,
    }
}

fn unordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// A random problem: 1–5 metrics, 1–4 distinct candidates each, costs in
/// {0.5, 1, 2} (or missing: 1), any subset of the 10 pairs in conflict, an
/// optional budget.
fn problems() -> impl Strategy<Value = CombinationProblem> {
    let candidate = (-0.1f64..0.4, 0.05f64..1.0);
    let metric = (
        proptest::sample::subsequence(POOL.to_vec(), 1..=4),
        proptest::collection::vec(candidate, 4),
    );
    let cost = proptest::option::of(proptest::sample::select(vec![0.5, 1.0, 2.0]));
    let budget = proptest::option::of(prop_oneof![
        proptest::sample::select(vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]),
        0.0f64..6.0,
    ]);
    (
        proptest::collection::vec(metric, 1..=5),
        proptest::collection::vec(cost, POOL.len()),
        proptest::collection::vec(
            proptest::bool::weighted(0.3),
            POOL.len() * (POOL.len() - 1) / 2,
        ),
        budget,
    )
        .prop_map(|(metrics, costs, conflict_bits, budget)| {
            let candidates_per_metric = metrics
                .into_iter()
                .enumerate()
                .map(|(m, (names, figures))| {
                    names
                        .into_iter()
                        .zip(figures)
                        .map(|(name, (delta, confidence))| {
                            recommendation(name, &format!("metric{m}"), delta, confidence)
                        })
                        .collect()
                })
                .collect();
            let costs = POOL
                .iter()
                .zip(costs)
                .filter_map(|(name, cost)| cost.map(|c| (name.to_string(), c)))
                .collect();
            let pairs = (0..POOL.len()).flat_map(|a| (a + 1..POOL.len()).map(move |b| (a, b)));
            let conflicts = pairs
                .zip(conflict_bits)
                .filter(|(_, on)| *on)
                .map(|((a, b), _)| unordered(POOL[a], POOL[b]))
                .collect();
            CombinationProblem {
                candidates_per_metric,
                costs,
                conflicts,
                budget,
            }
        })
}

fn cost_of(problem: &CombinationProblem, strategy: &str) -> f64 {
    problem.costs.get(strategy).copied().unwrap_or(1.0)
}

fn in_conflict(problem: &CombinationProblem, a: &str, b: &str) -> bool {
    problem.conflicts.contains(&unordered(a, b))
}

/// The best total over every assignment of at most one helpful candidate to
/// each metric that respects the constraints.
fn brute_force(problem: &CombinationProblem) -> f64 {
    fn go<'p>(
        problem: &'p CombinationProblem,
        metric: usize,
        chosen: &mut Vec<&'p str>,
        cost: f64,
        value: f64,
    ) -> f64 {
        if metric == problem.candidates_per_metric.len() {
            return value;
        }
        let mut best = go(problem, metric + 1, chosen, cost, value);
        for candidate in &problem.candidates_per_metric[metric] {
            let name = candidate.strategy.as_str();
            let c = cost_of(problem, name);
            if candidate.expected_delta <= 0.0
                || problem.budget.is_some_and(|b| cost + c > b)
                || chosen
                    .iter()
                    .any(|other| *other == name || in_conflict(problem, other, name))
            {
                continue;
            }
            chosen.push(name);
            best = best.max(go(
                problem,
                metric + 1,
                chosen,
                cost + c,
                value + candidate.expected_delta,
            ));
            chosen.pop();
        }
        best
    }
    go(problem, 0, &mut Vec::new(), 0.0, 0.0)
}

fn check(problem: &CombinationProblem, solution: &Combination) -> Result<(), TestCaseError> {
    let mut metrics = BTreeSet::new();
    let mut strategies = BTreeSet::new();
    for (step, cost) in &solution.steps {
        prop_assert!(
            metrics.insert(step.metric.clone()),
            "metric {} used twice",
            step.metric
        );
        prop_assert!(
            strategies.insert(step.strategy.clone()),
            "strategy {} used twice",
            step.strategy
        );
        prop_assert!(
            step.expected_delta > 0.0,
            "unhelpful step {} ({})",
            step.strategy,
            step.expected_delta
        );
        prop_assert_eq!(*cost, cost_of(problem, &step.strategy));
        // Every step is one of the candidates offered for its metric.
        let offered = problem
            .candidates_per_metric
            .iter()
            .flatten()
            .any(|c| c == step);
        prop_assert!(
            offered,
            "step {}/{} was not a candidate",
            step.strategy,
            step.metric
        );
    }
    let names: Vec<&String> = strategies.iter().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            prop_assert!(!in_conflict(problem, a, b), "{a} and {b} conflict");
        }
    }
    let cost: f64 = solution.steps.iter().map(|s| s.1).sum();
    prop_assert!((solution.total_cost - cost).abs() < 1e-12);
    if let Some(budget) = problem.budget {
        prop_assert!(
            solution.total_cost <= budget + 1e-9,
            "cost {} over budget {budget}",
            solution.total_cost
        );
    }
    let total: f64 = solution.steps.iter().map(|s| s.0.expected_delta).sum();
    prop_assert!(
        (solution.expected_total_delta - total).abs() < 1e-12,
        "total {} but steps sum to {total}",
        solution.expected_total_delta
    );
    let confidence = if solution.steps.is_empty() {
        0.0
    } else {
        solution.steps.iter().map(|s| s.0.confidence).product()
    };
    prop_assert!(
        (solution.confidence - confidence).abs() < 1e-12,
        "confidence {} but steps multiply to {confidence}",
        solution.confidence
    );
    let optimum = brute_force(problem);
    prop_assert!(
        (solution.expected_total_delta - optimum).abs() <= 1e-9,
        "solver found {} but the optimum is {optimum}",
        solution.expected_total_delta
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn solution_is_feasible_consistent_and_optimal(problem in problems()) {
        let solution = problem.solve();
        check(&problem, &solution)?;
    }

    #[test]
    fn more_budget_never_hurts(problem in problems(), extra in 0.0f64..3.0) {
        let tight = problem.solve();
        let mut loose = problem.clone();
        loose.budget = problem.budget.map(|b| b + extra);
        prop_assert!(loose.solve().expected_total_delta >= tight.expected_total_delta - 1e-9);
        let mut unlimited = problem;
        unlimited.budget = None;
        prop_assert!(unlimited.solve().expected_total_delta >= tight.expected_total_delta - 1e-9);
    }
}

/// `CombinationProblem::conflicts` is documented as a set of *unordered*
/// pairs: a pair must be honoured whichever way round it was inserted.
#[test]
fn conflict_pairs_are_unordered() {
    let problem = |pair: (&str, &str)| CombinationProblem {
        candidates_per_metric: vec![
            vec![recommendation("b_strategy", "m1", 0.3, 0.9)],
            vec![recommendation("a_strategy", "m2", 0.2, 0.9)],
        ],
        costs: BTreeMap::new(),
        conflicts: HashSet::from([(pair.0.to_string(), pair.1.to_string())]),
        budget: None,
    };
    for pair in [("a_strategy", "b_strategy"), ("b_strategy", "a_strategy")] {
        let solution = problem(pair).solve();
        assert_eq!(
            solution.steps.len(),
            1,
            "conflict {pair:?} ignored: chose {:?}",
            solution
                .steps
                .iter()
                .map(|s| s.0.strategy.as_str())
                .collect::<Vec<_>>()
        );
        assert!((solution.expected_total_delta - 0.3).abs() < 1e-12);
    }
}
