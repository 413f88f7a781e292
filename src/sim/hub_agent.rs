//! A simulated instance that follows the seed's flows against a real hub,
//! through the public client over mutual TLS: register and apply the
//! bootstrap configuration; on a plateau ask GetPatterns and GetStrategies,
//! check the choice with CheckAction, apply it, and share what happened
//! (ShareStrategy, SharePattern, RecordPatternOutcome, ShareFailure,
//! ShareConfiguration, ShareInsight); act on insights from the stream; fall
//! back to its own learner where the hub knows nothing.
//!
//! It sees the hub only as [`HubClient`]: what the hub knows is exactly
//! what instances told it.

use std::collections::BTreeMap;
use std::time::Duration;

use prost_types::{Value, value::Kind};

use super::agents::{LocalLearner, PlateauDetector, argmax, band_condition, band_of, ucb};
use super::world::{Application, InstanceState, Outcome, World};
use crate::client::{HubClient, InsightSubscription};
use crate::error::{Error, Result};
use crate::pb;

/// A pattern's recovery is followed when the match is this similar…
const PATTERN_MIN_SIMILARITY: f64 = 0.9;
/// …and the recovery has worked this often for it (Laplace rate, reports).
const PATTERN_MIN_SUCCESS_RATE: f64 = 0.7;
const PATTERN_MIN_REPORTS: u64 = 3;
/// CheckAction warnings at or above this failure rate veto a strategy.
const VETO_FAILURE_RATE: f64 = 0.3;
/// Own evidence that makes an instance share an insight.
const INSIGHT_MIN_PULLS: u64 = 5;
const INSIGHT_MIN_SUCCESS: f64 = 0.8;
/// Configurations are shared this often (cycles).
const CONFIG_SHARE_EVERY: u32 = 50;

/// The parameter a simulated instance's configuration carries.
pub const PATIENCE_PARAMETER: &str = "plateau_patience";

/// What the hub agent decided for one stuck metric.
#[derive(Debug, Clone)]
pub struct Decision {
    pub app: Application,
    /// The pattern whose recovery was followed, if any.
    pub pattern: Option<String>,
    /// The metric state at the plateau, as shared.
    pub plateau: BTreeMap<String, pb::MetricState>,
    /// Whether GetPatterns' top match recommended the truly best strategy
    /// (`None`: no match with a recovery to judge).
    pub pattern_hit: Option<bool>,
}

/// The hub side of a simulated instance.
pub struct HubLink {
    client: HubClient,
    context: BTreeMap<String, String>,
    context_name: String,
    subscription: InsightSubscription,
    /// Insights received so far (highest sequence).
    pub insights_seen: u64,
    /// Strategy hints from insights: metric → strategy.
    hints: BTreeMap<usize, usize>,
    shared_insights: Vec<(usize, usize)>,
    last_config_share: u32,
}

fn hub_error(status: tonic::Status) -> Error {
    Error::Unavailable(format!("hub call failed: {status}"))
}

impl HubLink {
    /// Registers the instance and subscribes to insights. Returns the link
    /// and the plateau patience the bootstrap configuration recommends.
    pub async fn join(
        client: HubClient,
        instance_id: &str,
        world: &World<'_>,
        state: &InstanceState,
    ) -> Result<(Self, Option<usize>)> {
        let context_spec = &world.scenario.contexts[state.context];
        let reply = client
            .register(pb::RegisterRequest {
                instance_id: instance_id.to_string(),
                region: format!("sim-{}", context_spec.name),
                context: context_spec.attributes.clone(),
                capabilities: world
                    .scenario
                    .strategies
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
            })
            .await
            .map_err(hub_error)?;
        let patience = reply
            .bootstrap
            .and_then(|b| b.parameters.get(PATIENCE_PARAMETER).cloned())
            .and_then(|v| match v.kind {
                Some(Kind::NumberValue(n)) if (1.0..=20.0).contains(&n) => Some(n as usize),
                _ => None,
            });
        let subscription = client.subscribe_insights(0, pb::InsightCategory::Unspecified);
        Ok((
            HubLink {
                client,
                context: context_spec.attributes.clone(),
                context_name: context_spec.name.clone(),
                subscription,
                insights_seen: 0,
                hints: BTreeMap::new(),
                shared_insights: Vec::new(),
                last_config_share: 0,
            },
            patience,
        ))
    }

    fn metric_states(
        world: &World<'_>,
        state: &InstanceState,
        detector: &PlateauDetector,
    ) -> BTreeMap<String, pb::MetricState> {
        world
            .scenario
            .metrics
            .iter()
            .enumerate()
            .map(|(m, spec)| {
                (
                    spec.name.clone(),
                    pb::MetricState {
                        value: state.values[m],
                        stuck: detector.stuck(m),
                    },
                )
            })
            .collect()
    }

    /// Chooses a strategy for stuck `metric`: a proven pattern recovery if
    /// there is one, else UCB over the fleet's pooled evidence and the
    /// instance's own, skipping strategies CheckAction warns about.
    pub async fn decide(
        &mut self,
        world: &World<'_>,
        state: &InstanceState,
        detector: &PlateauDetector,
        learner: &LocalLearner,
        metric: usize,
    ) -> Result<Decision> {
        let scenario = world.scenario;
        let metric_name = &scenario.metrics[metric].name;
        let value = state.values[metric];
        let plateau = Self::metric_states(world, state, detector);

        let matches = self
            .client
            .get_patterns(pb::GetPatternsRequest {
                metrics: plateau.clone(),
                environment: self.context.clone(),
                limit: 3,
            })
            .await
            .map_err(hub_error)?
            .matches;
        let top_recovery = matches.first().and_then(|m| {
            let pattern = m.pattern.as_ref()?;
            let recovery = pattern.recovery_strategies.first()?;
            let strategy = scenario.strategy_index(&recovery.strategy)?;
            Some((m.similarity, pattern.id.clone(), recovery.clone(), strategy))
        });
        let pattern_hit = top_recovery
            .as_ref()
            .map(|(_, _, _, strategy)| *strategy == world.best_strategy(state, metric));
        let pattern_choice = top_recovery.and_then(|(similarity, id, recovery, strategy)| {
            (similarity >= PATTERN_MIN_SIMILARITY
                && recovery.success_rate >= PATTERN_MIN_SUCCESS_RATE
                && recovery.successes + recovery.failures >= PATTERN_MIN_REPORTS)
                .then_some((id, strategy))
        });

        let fleet: BTreeMap<String, pb::StrategyRecommendation> = self
            .client
            .get_strategies(pb::GetStrategiesRequest {
                metric: metric_name.clone(),
                current_value: value,
                context: self.context.clone(),
                limit: 100,
                ..Default::default()
            })
            .await
            .map_err(hub_error)?
            .recommendations
            .into_iter()
            .map(|r| (r.strategy.clone(), r))
            .collect();

        // Pool the evidence: the fleet's figures where they rest on more
        // outcomes than the instance's own (they include its own shares).
        let band = band_of(value);
        let pooled: Vec<(f64, u64)> = scenario
            .strategies
            .iter()
            .enumerate()
            .map(|(s, spec)| {
                let own = learner.arm(metric, band, s);
                match fleet.get(&spec.name) {
                    Some(r) if r.applications >= own.pulls => (r.expected_delta, r.applications),
                    _ => (own.mean, own.pulls),
                }
            })
            .collect();
        let total: u64 = pooled.iter().map(|(_, n)| n).sum();
        let hint = self.hints.get(&metric).copied();
        let mut scores: Vec<f64> = pooled
            .iter()
            .enumerate()
            .map(|(s, (mean, n))| match (*n, hint) {
                // An untried strategy an insight recommends goes first.
                (0, Some(h)) if h == s => f64::INFINITY,
                (0, _) => f64::MAX,
                _ => ucb(*mean, *n, total),
            })
            .collect();

        let mut candidates: Vec<(usize, Option<String>)> = Vec::new();
        if let Some((id, strategy)) = pattern_choice {
            candidates.push((strategy, Some(id)));
        }
        for _ in 0..scores.len() {
            let best = argmax(&scores);
            scores[best] = f64::NEG_INFINITY;
            if !candidates.iter().any(|(s, _)| *s == best) {
                candidates.push((best, None));
            }
        }

        let metrics_for_check = plateau.clone();
        let mut chosen = candidates[0].clone();
        for (strategy, pattern) in candidates.iter().take(3) {
            let check = self
                .client
                .check_action(pb::CheckActionRequest {
                    strategy: scenario.strategies[*strategy].name.clone(),
                    metric: metric_name.clone(),
                    metrics: metrics_for_check.clone(),
                })
                .await
                .map_err(hub_error)?;
            let vetoed = check
                .warnings
                .iter()
                .any(|w| w.failure_rate >= VETO_FAILURE_RATE);
            if !vetoed {
                chosen = (*strategy, pattern.clone());
                break;
            }
        }
        Ok(Decision {
            app: Application {
                strategy: chosen.0,
                metric,
            },
            pattern: chosen.1,
            plateau,
            pattern_hit,
        })
    }

    /// Shares what an application did. Returns the sequence of an insight
    /// it published, if any.
    pub async fn share_outcome(
        &mut self,
        world: &World<'_>,
        learner: &LocalLearner,
        decision: &Decision,
        outcome: &Outcome,
        cycles_until_plateau: u32,
    ) -> Result<Option<u64>> {
        let scenario = world.scenario;
        let app = decision.app;
        let strategy = &scenario.strategies[app.strategy].name;
        let metric = &scenario.metrics[app.metric].name;
        self.client
            .share_strategy(pb::ShareStrategyRequest {
                strategy: strategy.clone(),
                metric: metric.clone(),
                value_before: outcome.value_before,
                successful: outcome.success,
                delta: outcome.delta.clamp(-1.0, 1.0),
                condition: band_condition(outcome.value_before).to_string(),
                context: self.context.clone(),
            })
            .await
            .map_err(hub_error)?;
        if let Some(pattern_id) = &decision.pattern {
            self.client
                .record_pattern_outcome(pb::RecordPatternOutcomeRequest {
                    pattern_id: pattern_id.clone(),
                    success: outcome.success,
                    metric_name: metric.clone(),
                    strategy: strategy.clone(),
                })
                .await
                .map_err(hub_error)?;
        }
        if outcome.success {
            self.client
                .share_pattern(pb::SharePatternRequest {
                    metrics: decision.plateau.clone(),
                    cycles_until_plateau,
                    recovery_strategies: vec![strategy.clone()],
                    environment: self.context.clone(),
                })
                .await
                .map_err(hub_error)?;
        }
        for reversal in &outcome.reversals {
            let hit = &scenario.metrics[reversal.metric].name;
            self.client
                .share_failure(pb::ShareFailureRequest {
                    failure_type: pb::FailureType::MetricReversal as i32,
                    trigger: format!("{hit} dropped {:.2} after {strategy}", reversal.drop),
                    context: Some(pb::FailureContext {
                        metric: hit.clone(),
                        strategy: strategy.clone(),
                    }),
                    ..Default::default()
                })
                .await
                .map_err(hub_error)?;
        }
        self.maybe_share_insight(world, learner, app).await
    }

    /// Shares "S lifts M in context C" once the instance's own evidence is
    /// strong; identical insights from other instances deduplicate.
    async fn maybe_share_insight(
        &mut self,
        world: &World<'_>,
        learner: &LocalLearner,
        app: Application,
    ) -> Result<Option<u64>> {
        let own = learner.totals(app.metric, app.strategy);
        if own.pulls < INSIGHT_MIN_PULLS
            || (own.successes as f64) < INSIGHT_MIN_SUCCESS * own.pulls as f64
            || self.shared_insights.contains(&(app.metric, app.strategy))
        {
            return Ok(None);
        }
        self.shared_insights.push((app.metric, app.strategy));
        let strategy = &world.scenario.strategies[app.strategy].name;
        let metric = &world.scenario.metrics[app.metric].name;
        let reply = self
            .client
            .share_insight(pb::ShareInsightRequest {
                insight: Some(pb::Insight {
                    category: pb::InsightCategory::Context as i32,
                    title: format!("{strategy} lifts {metric} in {}", self.context_name),
                    insight: format!(
                        "In context {}, {strategy} reliably improves {metric}.",
                        self.context_name
                    ),
                    evidence: Some(pb::InsightEvidence {
                        data_points: own.pulls,
                        instances_covered: 1,
                        improvement_observed: own.mean.clamp(-1.0, 1.0),
                        ..Default::default()
                    }),
                    applicable_contexts: vec![pb::ApplicableContext {
                        context: self.context_name.clone(),
                        threshold: "any".into(),
                    }],
                    effectiveness: own.successes as f64 / own.pulls as f64,
                    recommendation: format!("prefer {strategy} for {metric}"),
                    ..Default::default()
                }),
            })
            .await
            .map_err(hub_error)?;
        Ok(reply.insight.map(|i| i.sequence))
    }

    /// Shares the instance's configuration with how well it is doing.
    pub async fn maybe_share_configuration(
        &mut self,
        cycle: u32,
        patience: usize,
        performance: f64,
    ) -> Result<()> {
        if cycle < self.last_config_share + CONFIG_SHARE_EVERY {
            return Ok(());
        }
        let data_points = u64::from(cycle - self.last_config_share);
        self.last_config_share = cycle;
        self.client
            .share_configuration(pb::ShareConfigurationRequest {
                context: self.context.clone(),
                parameters: BTreeMap::from([(
                    PATIENCE_PARAMETER.to_string(),
                    Value {
                        kind: Some(Kind::NumberValue(patience as f64)),
                    },
                )]),
                effectiveness: performance.clamp(0.0, 1.0),
                data_points,
                recommendation: String::new(),
                alternatives: vec![],
            })
            .await
            .map_err(hub_error)?;
        Ok(())
    }

    /// Reads insights until `sequence` has arrived (so every instance acts
    /// on the same insights at the same cycle, keeping runs deterministic)
    /// and turns "prefer S for M" recommendations for its context into hints.
    pub async fn catch_up_insights(&mut self, world: &World<'_>, sequence: u64) -> Result<()> {
        while self.insights_seen < sequence {
            let next = tokio::time::timeout(Duration::from_secs(10), self.subscription.next())
                .await
                .map_err(|_| {
                    Error::Unavailable(format!("insight {sequence} did not arrive within 10 s"))
                })?;
            let insight = match next {
                Some(Ok(insight)) => insight,
                Some(Err(status)) => return Err(hub_error(status)),
                None => return Err(Error::Unavailable("insight stream ended".into())),
            };
            self.insights_seen = self.insights_seen.max(insight.sequence);
            let for_me = insight
                .applicable_contexts
                .iter()
                .any(|c| c.context == self.context_name);
            let hint = insight
                .recommendation
                .strip_prefix("prefer ")
                .and_then(|rest| rest.split_once(" for "))
                .and_then(|(s, m)| {
                    Some((
                        world.scenario.metric_index(m)?,
                        world.scenario.strategy_index(s)?,
                    ))
                });
            if let (true, Some((metric, strategy))) = (for_me, hint) {
                self.hints.insert(metric, strategy);
            }
        }
        Ok(())
    }
}
