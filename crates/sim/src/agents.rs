//! Simulated instances: how each one decides what to do when a metric
//! plateaus, in the three modes compared.
//!
//! - **isolated**: learns only from itself with UCB1 over (metric, value
//!   band, strategy), the reward being the observed change of the targeted
//!   metric minus any metric knocked back in the same cycle. A competent
//!   baseline, not a strawman: it explores each strategy once per band and
//!   then exploits with a shrinking exploration bonus.
//! - **hub**: the seed's instance loop against a real hub (see
//!   [`super::hub_agent`]): the same local learner, but its estimates are
//!   pooled with the fleet's via GetStrategies, pattern matches and failure
//!   checks come first, and every outcome is shared.
//! - **oracle**: knows the scenario and every cycle applies the strategy
//!   with the greatest true expected gain: the lower bound on time-to-peak.
//!
//! Every agent observes the same things: its metric values each cycle.

use std::collections::BTreeMap;

use super::world::{Application, InstanceState, Outcome, PROGRESS_EPSILON, World};

/// Value bands the local learner keeps separate statistics for.
pub const BANDS: [(f64, f64); 3] = [(0.0, 0.5), (0.5, 0.8), (0.8, f64::INFINITY)];

pub fn band_of(value: f64) -> usize {
    BANDS
        .iter()
        .position(|(lo, hi)| value >= *lo && value < *hi)
        .unwrap_or(BANDS.len() - 1)
}

/// The condition an outcome is shared under, so the hub's failure modes
/// separate value bands.
pub fn band_condition(value: f64) -> &'static str {
    match band_of(value) {
        0 => "value below 0.5",
        1 => "value 0.5 to 0.8",
        _ => "value above 0.8",
    }
}

/// Watches metric values and says which metrics are on a plateau.
#[derive(Debug, Clone)]
pub struct PlateauDetector {
    /// Cycles without progress before a metric counts as stuck.
    pub patience: usize,
    recent: Vec<Vec<f64>>,
}

impl PlateauDetector {
    pub fn new(metrics: usize, patience: usize) -> Self {
        PlateauDetector {
            patience: patience.max(1),
            recent: vec![Vec::new(); metrics],
        }
    }

    pub fn observe(&mut self, values: &[f64]) {
        for (history, value) in self.recent.iter_mut().zip(values) {
            history.push(*value);
            if history.len() > self.patience + 1 {
                history.remove(0);
            }
        }
    }

    /// Stuck: `patience` cycles observed and less than the progress
    /// threshold per cycle over them.
    pub fn stuck(&self, metric: usize) -> bool {
        let history = &self.recent[metric];
        history.len() > self.patience
            && history[history.len() - 1] - history[0] < PROGRESS_EPSILON * self.patience as f64
    }

    /// After acting on a metric its history restarts: the next verdict
    /// should be about what happened since.
    pub fn reset(&mut self, metric: usize) {
        self.recent[metric].clear();
    }

    pub fn stuck_metrics(&self) -> Vec<usize> {
        (0..self.recent.len()).filter(|m| self.stuck(*m)).collect()
    }
}

/// The stuck metric to work on: the one furthest below its maximum.
pub fn pick_metric(world: &World<'_>, state: &InstanceState, stuck: &[usize]) -> Option<usize> {
    stuck.iter().copied().min_by(|a, b| {
        let ha = world.scenario.metrics[*a].maximum - state.values[*a];
        let hb = world.scenario.metrics[*b].maximum - state.values[*b];
        hb.total_cmp(&ha).then(a.cmp(b))
    })
}

/// Running mean reward of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub pulls: u64,
    pub successes: u64,
    pub mean: f64,
}

impl Arm {
    fn record(&mut self, reward: f64, success: bool) {
        self.pulls += 1;
        self.successes += u64::from(success);
        self.mean += (reward - self.mean) / self.pulls as f64;
    }
}

/// Scale of the UCB exploration bonus, in reward units (metric deltas are
/// of order 0.1).
pub const EXPLORATION: f64 = 0.1;

/// UCB1 over (metric, band, strategy), learning only from the instance's
/// own outcomes.
#[derive(Debug, Clone, Default)]
pub struct LocalLearner {
    arms: BTreeMap<(usize, usize, usize), Arm>,
}

impl LocalLearner {
    pub fn arm(&self, metric: usize, band: usize, strategy: usize) -> Arm {
        self.arms
            .get(&(metric, band, strategy))
            .copied()
            .unwrap_or_default()
    }

    /// Records an outcome: the targeted metric's change, minus what side
    /// effects cost other metrics in the same cycle.
    pub fn record(&mut self, app: Application, outcome: &Outcome) {
        let reward = outcome.delta - outcome.reversals.iter().map(|r| r.drop).sum::<f64>();
        self.arms
            .entry((app.metric, band_of(outcome.value_before), app.strategy))
            .or_default()
            .record(reward, outcome.success);
    }

    /// UCB1 scores of every strategy for `metric` at `value`; untried
    /// strategies score +∞ so each is tried once.
    pub fn scores(&self, strategies: usize, metric: usize, value: f64) -> Vec<f64> {
        let band = band_of(value);
        let total: u64 = (0..strategies)
            .map(|s| self.arm(metric, band, s).pulls)
            .sum();
        (0..strategies)
            .map(|s| {
                let arm = self.arm(metric, band, s);
                ucb(arm.mean, arm.pulls, total)
            })
            .collect()
    }

    /// Own successes with `strategy` on `metric` (all bands).
    pub fn totals(&self, metric: usize, strategy: usize) -> Arm {
        let mut total = Arm::default();
        for band in 0..BANDS.len() {
            let arm = self.arm(metric, band, strategy);
            if arm.pulls > 0 {
                total.mean = (total.mean * total.pulls as f64 + arm.mean * arm.pulls as f64)
                    / (total.pulls + arm.pulls) as f64;
                total.pulls += arm.pulls;
                total.successes += arm.successes;
            }
        }
        total
    }
}

/// The UCB1 index: mean plus an exploration bonus shrinking with pulls.
pub fn ucb(mean: f64, pulls: u64, total: u64) -> f64 {
    if pulls == 0 {
        return f64::INFINITY;
    }
    mean + EXPLORATION * ((2.0 * (total.max(1) as f64).ln()) / pulls as f64).sqrt()
}

/// Index of the highest score; the lowest index wins ties (deterministic).
pub fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    best
}

/// The oracle's move: the (metric, strategy) with the greatest true
/// expected gain net of the natural growth the cycle would have brought
/// the metric, if any is positive.
pub fn oracle_action(world: &World<'_>, state: &InstanceState) -> Option<Application> {
    let growth = world.scenario.contexts[state.context].growth;
    let mut best: Option<(f64, Application)> = None;
    for (metric, spec) in world.scenario.metrics.iter().enumerate() {
        // The oracle may read the hidden ceiling: it is the oracle.
        let forgone = (spec.growth * growth).min(1.0) * world.ceiling_gap(state, metric);
        for strategy in 0..world.scenario.strategies.len() {
            let app = Application { strategy, metric };
            let net = world.expected_gain(state, app) - forgone;
            if net > 1e-9 && best.is_none_or(|(b, _)| net > b) {
                best = Some((net, app));
            }
        }
    }
    best.map(|(_, app)| app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::scenario::Scenario;

    #[test]
    fn plateau_detector() {
        let mut d = PlateauDetector::new(1, 3);
        for v in [0.1, 0.2, 0.3, 0.4] {
            d.observe(&[v]);
            assert!(!d.stuck(0));
        }
        for _ in 0..3 {
            d.observe(&[0.4005]);
        }
        assert!(d.stuck(0));
        d.reset(0);
        assert!(!d.stuck(0));
    }

    #[test]
    fn ucb_tries_everything_then_exploits() {
        let mut learner = LocalLearner::default();
        let scores = learner.scores(3, 0, 0.6);
        assert!(scores.iter().all(|s| s.is_infinite()));
        let outcome = |delta: f64| Outcome {
            success: delta > 0.0,
            value_before: 0.6,
            delta,
            reversals: vec![],
        };
        for (s, delta) in [(0, 0.02), (1, 0.2), (2, -0.02)] {
            learner.record(
                Application {
                    strategy: s,
                    metric: 0,
                },
                &outcome(delta),
            );
        }
        assert_eq!(argmax(&learner.scores(3, 0, 0.6)), 1);
        // Another band knows nothing yet.
        assert!(learner.scores(3, 0, 0.2)[1].is_infinite());
    }

    #[test]
    fn oracle_outperforms_doing_nothing() {
        let scenario = Scenario::builtin();
        let world = World::new(&scenario);
        let mut rng = Rng::new(1);
        let mut idle = world.instance(0);
        let mut oracle = world.instance(0);
        for _ in 0..150 {
            world.step(&mut idle, None, &mut rng);
            let action = oracle_action(&world, &oracle);
            world.step(&mut oracle, action, &mut rng);
        }
        assert!(world.performance(&oracle) > 0.9);
        assert!(world.performance(&idle) < 0.6);
    }
}
