//! The simulated environment: how an instance's metrics evolve and what a
//! strategy truly does. This is the hidden truth the hub must discover from
//! shared outcomes; agents only observe metric values.
//!
//! Per cycle every metric grows by a share of the gap to its current
//! ceiling (diminishing returns), so it plateaus at the ceiling. Applying a
//! strategy to a metric succeeds with a probability that depends on the
//! metric's value band and the instance's context; success closes a share
//! of the remaining headroom to the theoretical maximum and lifts the
//! ceiling, failure costs a little. Repeating the same strategy on the same
//! metric yields less each time, and some strategies knock other metrics
//! back unless a prerequisite was applied shortly before.

use super::rng::Rng;
use super::scenario::{EffectSpec, Scenario};

/// Expected gains this close count as a tie (see [`World::is_near_best`]).
pub const NEAR_TIE: f64 = 0.005;

/// Below this improvement per cycle a metric counts as not progressing.
pub const PROGRESS_EPSILON: f64 = 0.002;

/// One instance's hidden state.
#[derive(Debug, Clone)]
pub struct InstanceState {
    pub context: usize,
    pub values: Vec<f64>,
    ceilings: Vec<f64>,
    /// Per metric: the last strategy applied to it and how many times in a row.
    streak: Vec<Option<(usize, u32)>>,
    /// Per strategy: the cycle it was last applied in.
    last_used: Vec<Option<u32>>,
    pub cycle: u32,
}

/// A strategy applied to a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Application {
    pub strategy: usize,
    pub metric: usize,
}

/// A metric knocked back by a side effect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reversal {
    pub metric: usize,
    pub value_before: f64,
    pub drop: f64,
}

/// What an application did, as the instance observes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub success: bool,
    pub value_before: f64,
    /// Change of the targeted metric.
    pub delta: f64,
    pub reversals: Vec<Reversal>,
}

/// The rules of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct World<'s> {
    pub scenario: &'s Scenario,
}

impl<'s> World<'s> {
    pub fn new(scenario: &'s Scenario) -> Self {
        World { scenario }
    }

    /// A fresh instance in `context`.
    pub fn instance(&self, context: usize) -> InstanceState {
        InstanceState {
            context,
            values: self.scenario.metrics.iter().map(|m| m.start).collect(),
            ceilings: self
                .scenario
                .metrics
                .iter()
                .map(|m| m.natural_ceiling)
                .collect(),
            streak: vec![None; self.scenario.metrics.len()],
            last_used: vec![None; self.scenario.strategies.len()],
            cycle: 0,
        }
    }

    /// Picks a context by weight.
    pub fn draw_context(&self, rng: &mut Rng) -> usize {
        let weights: Vec<f64> = self.scenario.contexts.iter().map(|c| c.weight).collect();
        rng.weighted(&weights)
    }

    fn effect(&self, strategy: usize, metric: usize) -> Option<&'s EffectSpec> {
        let name = &self.scenario.metrics[metric].name;
        self.scenario.strategies[strategy]
            .effects
            .iter()
            .find(|e| &e.metric == name)
    }

    /// The true success probability and gain (share of headroom) of
    /// applying `app` now.
    pub fn odds(&self, state: &InstanceState, app: Application) -> (f64, f64) {
        let Some(effect) = self.effect(app.strategy, app.metric) else {
            // A strategy with no effect on a metric almost never helps it.
            return (0.05, 0.05);
        };
        let value = state.values[app.metric];
        let mut success = effect.success;
        if value < effect.band[0] || value > effect.band[1] {
            success *= effect.outside_band;
        }
        let mut gain = effect.gain;
        let context = &self.scenario.contexts[state.context].name;
        if let Some(modifier) = effect.contexts.get(context) {
            success *= modifier.success;
            gain *= modifier.gain;
        }
        if let Some((last, times)) = state.streak[app.metric]
            && last == app.strategy
        {
            gain *= self.scenario.strategies[app.strategy]
                .repeat_decay
                .powi(times as i32);
        }
        (success.clamp(0.0, 1.0), gain.clamp(0.0, 1.0))
    }

    fn side_effect_prevented(
        &self,
        state: &InstanceState,
        strategy: usize,
        unless_after: &Option<String>,
        within: u32,
    ) -> bool {
        let Some(pre) = unless_after
            .as_deref()
            .and_then(|p| self.scenario.strategy_index(p))
        else {
            return false;
        };
        pre != strategy
            && state.last_used[pre].is_some_and(|cycle| state.cycle.saturating_sub(cycle) <= within)
    }

    /// The true expected change of performance (sum over metrics) from
    /// applying `app` now: the oracle's criterion and the yardstick for
    /// "the true best strategy".
    pub fn expected_gain(&self, state: &InstanceState, app: Application) -> f64 {
        let (p, gain) = self.odds(state, app);
        let metric = &self.scenario.metrics[app.metric];
        let value = state.values[app.metric];
        let up = p * gain * (metric.maximum - value);
        let down = (1.0 - p) * self.scenario.regression.min(value);
        let side: f64 = self.scenario.strategies[app.strategy]
            .side_effects
            .iter()
            .filter(|se| {
                !self.side_effect_prevented(state, app.strategy, &se.unless_after, se.within)
            })
            .map(|se| {
                let m = self.scenario.metric_index(&se.metric).unwrap_or(0);
                se.probability * se.drop.min(state.values[m])
            })
            .sum();
        up - down - side
    }

    /// The strategy with the smallest expected gain on `metric` now (what
    /// a faulty instance promotes).
    pub fn worst_strategy(&self, state: &InstanceState, metric: usize) -> usize {
        let gain = |strategy| self.expected_gain(state, Application { strategy, metric });
        (0..self.scenario.strategies.len())
            .min_by(|a, b| gain(*a).total_cmp(&gain(*b)).then(a.cmp(b)))
            .unwrap_or(0)
    }

    /// The strategy with the greatest expected gain on `metric` now.
    pub fn best_strategy(&self, state: &InstanceState, metric: usize) -> usize {
        (0..self.scenario.strategies.len())
            .max_by(|a, b| {
                let ga = self.expected_gain(
                    state,
                    Application {
                        strategy: *a,
                        metric,
                    },
                );
                let gb = self.expected_gain(
                    state,
                    Application {
                        strategy: *b,
                        metric,
                    },
                );
                ga.total_cmp(&gb).then(b.cmp(a))
            })
            .unwrap_or(0)
    }

    /// Whether `strategy` is the best on `metric` now, or within a near-tie
    /// of it: an expected gain at most 0.005 (or 10% of the best's) lower.
    /// Near the maximum every strategy's gain is tiny and their order is
    /// noise, which should not count as a wrong recommendation.
    pub fn is_near_best(&self, state: &InstanceState, metric: usize, strategy: usize) -> bool {
        let best = self.best_strategy(state, metric);
        let gain = |s| {
            self.expected_gain(
                state,
                Application {
                    strategy: s,
                    metric,
                },
            )
        };
        let (top, chosen) = (gain(best), gain(strategy));
        chosen >= top - (0.1 * top.abs()).max(NEAR_TIE)
    }

    /// Advances one cycle, applying `action` first if there is one.
    pub fn step(
        &self,
        state: &mut InstanceState,
        action: Option<Application>,
        rng: &mut Rng,
    ) -> Option<Outcome> {
        let outcome = action.map(|app| self.apply(state, app, rng));
        let growth = self.scenario.contexts[state.context].growth;
        for (m, spec) in self.scenario.metrics.iter().enumerate() {
            if action.is_some_and(|a| a.metric == m) {
                continue; // the cycle went into the strategy
            }
            let gap = state.ceilings[m] - state.values[m];
            if gap > 0.0 {
                state.values[m] += (spec.growth * growth).min(1.0) * gap;
            }
        }
        state.cycle += 1;
        outcome
    }

    fn apply(&self, state: &mut InstanceState, app: Application, rng: &mut Rng) -> Outcome {
        let (p, gain) = self.odds(state, app);
        let m = app.metric;
        let maximum = self.scenario.metrics[m].maximum;
        let value_before = state.values[m];
        let success = rng.chance(p);
        if success {
            let noisy = (gain * (1.0 + self.scenario.noise * rng.normal())).clamp(0.0, 1.0);
            state.values[m] = (value_before + noisy * (maximum - value_before)).min(maximum);
            state.ceilings[m] = state.ceilings[m].max(state.values[m]);
        } else {
            state.values[m] = (value_before - self.scenario.regression).max(0.0);
        }
        let mut reversals = Vec::new();
        for se in &self.scenario.strategies[app.strategy].side_effects {
            if self.side_effect_prevented(state, app.strategy, &se.unless_after, se.within) {
                continue;
            }
            if rng.chance(se.probability) {
                let target = self.scenario.metric_index(&se.metric).unwrap_or(0);
                let before = state.values[target];
                state.values[target] = (before - se.drop).max(0.0);
                reversals.push(Reversal {
                    metric: target,
                    value_before: before,
                    drop: before - state.values[target],
                });
            }
        }
        state.streak[m] = match state.streak[m] {
            Some((last, times)) if last == app.strategy => Some((last, times + 1)),
            _ => Some((app.strategy, 1)),
        };
        state.last_used[app.strategy] = Some(state.cycle);
        Outcome {
            success,
            value_before,
            delta: state.values[m] - value_before,
            reversals,
        }
    }

    /// How far `metric` is below its current (hidden) ceiling.
    pub fn ceiling_gap(&self, state: &InstanceState, metric: usize) -> f64 {
        (state.ceilings[metric] - state.values[metric]).max(0.0)
    }

    /// Mean metric value as a share of the theoretical maximum.
    pub fn performance(&self, state: &InstanceState) -> f64 {
        let mean = state.values.iter().sum::<f64>() / state.values.len() as f64;
        mean / self.scenario.theoretical_maximum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> Scenario {
        Scenario::builtin()
    }

    #[test]
    fn deterministic_for_a_seed() {
        let scenario = world();
        let w = World::new(&scenario);
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut s = w.instance(0);
            let mut trace = Vec::new();
            for c in 0..100 {
                let action = (c % 3 == 0).then_some(Application {
                    strategy: c as usize % scenario.strategies.len(),
                    metric: 0,
                });
                w.step(&mut s, action, &mut rng);
                trace.push(s.values.clone());
            }
            trace
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn metrics_stay_bounded_and_plateau_without_strategies() {
        let scenario = world();
        let w = World::new(&scenario);
        let mut rng = Rng::new(3);
        let mut s = w.instance(0);
        for _ in 0..500 {
            w.step(&mut s, None, &mut rng);
        }
        for (m, spec) in scenario.metrics.iter().enumerate() {
            assert!(s.values[m] <= spec.natural_ceiling + 1e-12);
            assert!(
                spec.natural_ceiling - s.values[m] < 0.01,
                "{} plateaus at its ceiling",
                spec.name
            );
        }
        let before = s.values.clone();
        w.step(&mut s, None, &mut rng);
        let progress: f64 = s.values.iter().zip(&before).map(|(a, b)| a - b).sum();
        assert!(progress < PROGRESS_EPSILON, "a plateau: no progress");
    }

    #[test]
    fn strategies_lift_metrics_towards_the_maximum_and_stay_bounded() {
        let scenario = world();
        let w = World::new(&scenario);
        let mut rng = Rng::new(5);
        let mut s = w.instance(0);
        for c in 0..2000 {
            let metric = c % scenario.metrics.len();
            let strategy = w.best_strategy(&s, metric);
            w.step(&mut s, Some(Application { strategy, metric }), &mut rng);
            for (m, spec) in scenario.metrics.iter().enumerate() {
                assert!((0.0..=spec.maximum).contains(&s.values[m]));
            }
        }
        assert!(
            w.performance(&s) > 0.9,
            "the best strategies reach the top: {}",
            w.performance(&s)
        );
    }

    #[test]
    fn side_effects_happen_and_prerequisites_prevent_them() {
        let scenario = world();
        let w = World::new(&scenario);
        let (risky, spec) = scenario
            .strategies
            .iter()
            .enumerate()
            .find(|(_, s)| s.side_effects.iter().any(|se| se.unless_after.is_some()))
            .expect("the default scenario has a guarded side effect");
        let side = &spec.side_effects[0];
        let pre = scenario
            .strategy_index(side.unless_after.as_ref().unwrap())
            .unwrap();
        let target = scenario.metric_index(&spec.effects[0].metric).unwrap();
        let mut rng = Rng::new(9);
        let (mut unguarded, mut guarded) = (0, 0);
        for _ in 0..200 {
            let mut s = w.instance(0);
            for _ in 0..60 {
                w.step(&mut s, None, &mut rng);
            }
            let out = w
                .step(
                    &mut s,
                    Some(Application {
                        strategy: risky,
                        metric: target,
                    }),
                    &mut rng,
                )
                .unwrap();
            unguarded += out.reversals.len();
            let mut s = w.instance(0);
            for _ in 0..60 {
                w.step(&mut s, None, &mut rng);
            }
            w.step(
                &mut s,
                Some(Application {
                    strategy: pre,
                    metric: target,
                }),
                &mut rng,
            );
            let out = w
                .step(
                    &mut s,
                    Some(Application {
                        strategy: risky,
                        metric: target,
                    }),
                    &mut rng,
                )
                .unwrap();
            guarded += out.reversals.len();
        }
        assert!(unguarded > 50, "failures happen: {unguarded}");
        assert_eq!(guarded, 0, "the prerequisite prevents them");
    }

    #[test]
    fn repeating_a_strategy_yields_less() {
        let scenario = world();
        let w = World::new(&scenario);
        let mut s = w.instance(0);
        let app = Application {
            strategy: 0,
            metric: 0,
        };
        let (_, first) = w.odds(&s, app);
        s.streak[0] = Some((0, 2));
        let (_, third) = w.odds(&s, app);
        assert!(third < first);
    }
}
