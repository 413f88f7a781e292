//! Scenarios: the hidden truth of a simulated world, as TOML. A scenario
//! names the metrics instances track and how they grow, the contexts
//! instances run in, and the catalogue of strategies with their true
//! effects, failure modes and side effects. The format is documented in
//! `scenarios/README.md`; every field is checked on load.
//!
//! Only the simulated environment reads a scenario. The hub never does: it
//! learns what instances share over gRPC, and nothing else.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate;

/// The scenario built into the binary (`scenarios/default.toml`).
pub const DEFAULT_SCENARIO: &str = include_str!("../../../scenarios/default.toml");

/// A complete simulated world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Cycles each instance runs.
    #[serde(default = "defaults::horizon")]
    pub horizon: u32,
    /// Instances in the fleet (the CLI may override).
    #[serde(default = "defaults::instances")]
    pub instances: usize,
    /// Relative noise (standard deviation) on a successful strategy's gain.
    #[serde(default = "defaults::noise")]
    pub noise: f64,
    /// What a failed application costs the targeted metric.
    #[serde(default = "defaults::regression")]
    pub regression: f64,
    pub metrics: Vec<MetricSpec>,
    pub contexts: Vec<ContextSpec>,
    pub strategies: Vec<StrategySpec>,
}

/// One tracked metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub name: String,
    /// Value at the start of a run.
    pub start: f64,
    /// Where the metric plateaus without any strategy.
    pub natural_ceiling: f64,
    /// The theoretical maximum.
    #[serde(default = "defaults::maximum")]
    pub maximum: f64,
    /// Share of the gap to the current ceiling closed per cycle.
    pub growth: f64,
}

/// A kind of deployment; instances are assigned one by weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    pub name: String,
    #[serde(default = "defaults::one")]
    pub weight: f64,
    /// What the instance reports as its context, e.g. {latency = "high"}.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Multiplier on every metric's natural growth.
    #[serde(default = "defaults::one")]
    pub growth: f64,
}

/// A strategy and its true behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    pub name: String,
    /// Gain multiplier per immediately repeated use on the same metric.
    #[serde(default = "defaults::repeat_decay")]
    pub repeat_decay: f64,
    #[serde(default)]
    pub effects: Vec<EffectSpec>,
    #[serde(default)]
    pub side_effects: Vec<SideEffectSpec>,
}

/// What a strategy does to one metric when applied to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectSpec {
    pub metric: String,
    /// Share of the remaining headroom (maximum − value) gained on success.
    pub gain: f64,
    /// Probability of success inside the band.
    pub success: f64,
    /// The value band where the strategy works as specified.
    #[serde(default = "defaults::band")]
    pub band: [f64; 2],
    /// Multiplier on `success` outside the band.
    #[serde(default = "defaults::outside_band")]
    pub outside_band: f64,
    /// Per-context multipliers, by context name.
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEffect>,
}

/// How a context changes an effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextEffect {
    #[serde(default = "defaults::one")]
    pub gain: f64,
    #[serde(default = "defaults::one")]
    pub success: f64,
}

/// A failure mode: applying the strategy (to any metric) may knock another
/// metric back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideEffectSpec {
    /// The metric that drops.
    pub metric: String,
    /// How much it drops.
    pub drop: f64,
    pub probability: f64,
    /// No drop if this strategy was applied within `within` cycles before.
    #[serde(default)]
    pub unless_after: Option<String>,
    #[serde(default = "defaults::within")]
    pub within: u32,
}

mod defaults {
    pub fn horizon() -> u32 {
        300
    }
    pub fn instances() -> usize {
        20
    }
    pub fn noise() -> f64 {
        0.2
    }
    pub fn regression() -> f64 {
        0.02
    }
    pub fn maximum() -> f64 {
        1.0
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn repeat_decay() -> f64 {
        0.7
    }
    pub fn band() -> [f64; 2] {
        [0.0, 1.0]
    }
    pub fn outside_band() -> f64 {
        0.3
    }
    pub fn within() -> u32 {
        3
    }
}

fn check(ok: bool, field: impl Into<String>, reason: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, reason))
    }
}

fn probability(field: &str, value: f64) -> Result<()> {
    validate::unit(field, value).map(drop)
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(toml_text: &str) -> Result<Self> {
        let scenario: Scenario =
            toml::from_str(toml_text).map_err(|e| Error::invalid("scenario", e.message()))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Reads a scenario file, or `default` for the built-in one.
    pub fn load(path_or_default: &str) -> Result<Self> {
        if path_or_default == "default" {
            return Self::parse(DEFAULT_SCENARIO);
        }
        let path = Path::new(path_or_default);
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid("scenario", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::InvalidArgument { field, reason } => {
                Error::invalid(format!("{}: {field}", path.display()), reason)
            }
            other => other,
        })
    }

    /// The built-in scenario.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_SCENARIO).expect("the built-in scenario is valid")
    }

    pub fn metric_index(&self, name: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m.name == name)
    }

    pub fn strategy_index(&self, name: &str) -> Option<usize> {
        self.strategies.iter().position(|s| s.name == name)
    }

    /// Mean of the metrics' maxima: performance is measured against it.
    pub fn theoretical_maximum(&self) -> f64 {
        self.metrics.iter().map(|m| m.maximum).sum::<f64>() / self.metrics.len() as f64
    }

    fn check(&self) -> Result<()> {
        validate::name("name", &self.name)?;
        check(
            self.horizon >= 10 && self.horizon <= 100_000,
            "horizon",
            "must be within [10, 100000]",
        )?;
        check(
            self.instances >= 1 && self.instances <= 10_000,
            "instances",
            "must be within [1, 10000]",
        )?;
        validate::within("noise", self.noise, 0.0, 1.0)?;
        validate::within("regression", self.regression, 0.0, 1.0)?;
        check(
            !self.metrics.is_empty(),
            "metrics",
            "at least one metric is required",
        )?;
        check(
            !self.contexts.is_empty(),
            "contexts",
            "at least one context is required",
        )?;
        check(
            !self.strategies.is_empty(),
            "strategies",
            "at least one strategy is required",
        )?;
        for (i, m) in self.metrics.iter().enumerate() {
            let f = |name: &str| format!("metrics[{i}].{name}");
            validate::name(&f("name"), &m.name)?;
            for (name, v) in [
                ("start", m.start),
                ("natural_ceiling", m.natural_ceiling),
                ("maximum", m.maximum),
                ("growth", m.growth),
            ] {
                validate::unit(&f(name), v)?;
            }
            check(
                m.start <= m.natural_ceiling && m.natural_ceiling <= m.maximum,
                f("natural_ceiling"),
                "must satisfy start <= natural_ceiling <= maximum",
            )?;
            check(m.maximum > 0.0, f("maximum"), "must be positive")?;
        }
        for (i, c) in self.contexts.iter().enumerate() {
            let f = |name: &str| format!("contexts[{i}].{name}");
            validate::name(&f("name"), &c.name)?;
            validate::within(&f("weight"), c.weight, 0.0, 1e6)?;
            validate::within(&f("growth"), c.growth, 0.0, 10.0)?;
            validate::attributes(&f("attributes"), c.attributes.iter())?;
        }
        check(
            self.contexts.iter().any(|c| c.weight > 0.0),
            "contexts",
            "at least one context needs a positive weight",
        )?;
        for (i, s) in self.strategies.iter().enumerate() {
            let f = |name: String| format!("strategies[{i}].{name}");
            validate::name(&f("name".into()), &s.name)?;
            validate::unit(&f("repeat_decay".into()), s.repeat_decay)?;
            for (j, e) in s.effects.iter().enumerate() {
                let g = |name: &str| f(format!("effects[{j}].{name}"));
                check(
                    self.metric_index(&e.metric).is_some(),
                    g("metric"),
                    "names no metric of the scenario",
                )?;
                validate::unit(&g("gain"), e.gain)?;
                probability(&g("success"), e.success)?;
                validate::unit(&g("band[0]"), e.band[0])?;
                validate::unit(&g("band[1]"), e.band[1])?;
                check(
                    e.band[0] <= e.band[1],
                    g("band"),
                    "must be [low, high] with low <= high",
                )?;
                validate::within(&g("outside_band"), e.outside_band, 0.0, 1.0)?;
                for (context, effect) in &e.contexts {
                    check(
                        self.contexts.iter().any(|c| &c.name == context),
                        g(&format!("contexts.{context}")),
                        "names no context of the scenario",
                    )?;
                    validate::within(
                        &g(&format!("contexts.{context}.gain")),
                        effect.gain,
                        0.0,
                        10.0,
                    )?;
                    validate::within(
                        &g(&format!("contexts.{context}.success")),
                        effect.success,
                        0.0,
                        10.0,
                    )?;
                }
            }
            for (j, se) in s.side_effects.iter().enumerate() {
                let g = |name: &str| f(format!("side_effects[{j}].{name}"));
                check(
                    self.metric_index(&se.metric).is_some(),
                    g("metric"),
                    "names no metric of the scenario",
                )?;
                validate::unit(&g("drop"), se.drop)?;
                probability(&g("probability"), se.probability)?;
                if let Some(pre) = &se.unless_after {
                    check(
                        self.strategy_index(pre).is_some(),
                        g("unless_after"),
                        "names no strategy of the scenario",
                    )?;
                }
            }
        }
        let mut names: Vec<&str> = self.strategies.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        check(
            names.windows(2).all(|w| w[0] != w[1]),
            "strategies",
            "names must be unique",
        )?;
        let mut metric_names: Vec<&str> = self.metrics.iter().map(|m| m.name.as_str()).collect();
        metric_names.sort_unstable();
        check(
            metric_names.windows(2).all(|w| w[0] != w[1]),
            "metrics",
            "names must be unique",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_shipped_scenarios_are_valid() {
        let builtin = Scenario::builtin();
        assert!(!builtin.metrics.is_empty());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(path.to_str().unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                count += 1;
            }
        }
        assert!(count >= 4, "default + at least three scenarios");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = DEFAULT_SCENARIO.replacen("growth = ", "growth = 7 #", 1);
        let err = Scenario::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("metrics[0].growth"), "{err}");
        let unknown = format!("{DEFAULT_SCENARIO}\nsurprise = 1\n");
        assert!(
            Scenario::parse(&unknown)
                .unwrap_err()
                .to_string()
                .contains("surprise")
        );
    }
}
