//! A simulated instance that follows the seed's flows against a real hub,
//! through the public client over mutual TLS: register and apply the
//! bootstrap configuration; on a plateau ask GetPatterns and GetStrategies,
//! check the choice with CheckAction, apply it, and share what happened
//! (ShareStrategy, SharePattern, RecordPatternOutcome, ShareFailure,
//! ShareConfiguration, ShareInsight); act on insights from the stream; fall
//! back to its own learner where the hub knows nothing. It also trains the
//! fleet's plateau model on its own trajectories (ShareModelUpdate every
//! few cycles, GetModel after) and acts *before* a plateau the model sees
//! coming.
//!
//! It sees the hub only as [`HubClient`]: what the hub knows is exactly
//! what instances told it.

use std::collections::BTreeMap;
use std::time::Duration;

use prost_types::{Value, value::Kind};

use super::agents::{LocalLearner, PlateauDetector, band_condition};
use super::rng::Rng;
use super::runner::FaultyMode;
use super::world::{Application, InstanceState, Outcome, World};
use crate::client::plateau::{self, Training};
use crate::client::{HubClient, InsightSubscription};
use crate::error::{Error, Result};
use crate::pb;

/// A pattern's recovery is followed when the match is this similar…
const PATTERN_MIN_SIMILARITY: f64 = 0.9;
/// …and the recovery is this likely to work, on this much evidence.
const PATTERN_MIN_SUCCESS_RATE: f64 = 0.7;
const PATTERN_MIN_REPORTS: u64 = 3;
/// Candidates checked with CheckAction before giving up on finding a safe one.
const CHECKED_CANDIDATES: usize = 3;
/// Own evidence that makes an instance share an insight.
const INSIGHT_MIN_PULLS: u64 = 5;
const INSIGHT_MIN_SUCCESS: f64 = 0.8;
/// Configurations are shared this often (cycles).
const CONFIG_SHARE_EVERY: u32 = 50;
/// Applications remembered to report as recent (and cycles they count for).
const RECENT_REMEMBERED: usize = 8;
const RECENT_CYCLES: u32 = 10;

/// Cycles between an instance's model updates (and fetches).
const MODEL_SYNC_EVERY: u32 = 10;
/// Local epochs per update.
const MODEL_LOCAL_EPOCHS: usize = 5;
/// A metric the model gives at least this is acted on before it stalls.
const ACT_EARLY_PROBABILITY: f64 = 0.5;

/// The parameter a simulated instance's configuration carries.
pub const PATIENCE_PARAMETER: &str = "plateau_patience";

/// What the hub agent decided for one stuck metric.
#[derive(Debug, Clone)]
pub struct Decision {
    pub app: Application,
    /// The pattern whose recovery was followed, and its similarity.
    pub pattern: Option<(String, f64)>,
    /// The metric state at the plateau, as shared.
    pub plateau: BTreeMap<String, pb::MetricState>,
    /// Whether GetPatterns' top match recommended the truly best strategy,
    /// within a near-tie and strictly (`None`: no match with a recovery to
    /// judge).
    pub pattern_hit: Option<(bool, bool)>,
    /// The hub's confidence that the chosen strategy succeeds, when the hub
    /// recommended it.
    pub confidence: Option<f64>,
    /// What the instance had applied before, as reported with this decision.
    pub recent: Vec<pb::RecentApplication>,
}

/// A strategy considered for one decision.
#[derive(Debug, Clone)]
struct Candidate {
    strategy: usize,
    /// The draw it was ranked by.
    score: f64,
    /// The hub's confidence, when the hub knows the strategy.
    confidence: Option<f64>,
    /// Its expected change of the metric.
    expected: f64,
    /// The pattern whose recovery it is, and the match's similarity.
    pattern: Option<(String, f64)>,
}

impl Candidate {
    fn new(strategy: usize, score: f64, confidence: Option<f64>, expected: f64) -> Self {
        Candidate {
            strategy,
            score,
            confidence,
            expected,
            pattern: None,
        }
    }
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
    /// (strategy, metric, cycle) of the latest applications, newest last.
    applied: Vec<(usize, usize, u32)>,
    /// Draws for exploration seeds and for strategies the fleet has not
    /// tried yet.
    rng: Rng,
    /// The plateau model as last fetched, its version, and when.
    model: Vec<f64>,
    model_version: u64,
    last_model_sync: u32,
    /// Set for a faulty instance: what it reports instead of the truth.
    pub faulty: Option<FaultyMode>,
    /// Metrics knocked back and being recovered, by metric.
    recovering: BTreeMap<usize, Recovery>,
}

/// A knock-back being recovered from, as the hub's plan says.
#[derive(Debug, Clone)]
struct Recovery {
    /// The failure as reported (a follow-up completes it).
    report: pb::ShareFailureRequest,
    /// The plan's first step, when it names a strategy.
    step: Option<usize>,
    /// The strategy last applied to the metric since.
    applied: Option<usize>,
    since: u32,
}

/// Cycles a knocked-back metric goes first before the instance moves on.
const RECOVERY_PATIENCE: u32 = 10;

fn hub_error(status: tonic::Status) -> Error {
    Error::Unavailable(format!("hub call failed: {status}"))
}

impl HubLink {
    /// Registers the instance and subscribes to insights. Returns the link
    /// and the plateau patience the bootstrap configuration recommends.
    pub async fn join(
        client: HubClient,
        instance_id: &str,
        seed: u64,
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
                applied: Vec::new(),
                rng: Rng::new(seed),
                model: vec![0.0; plateau::WEIGHTS],
                model_version: 0,
                last_model_sync: 0,
                faulty: None,
                recovering: BTreeMap::new(),
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

    /// What the instance applied in the last cycles, newest first.
    fn recent(&self, world: &World<'_>, cycle: u32) -> Vec<pb::RecentApplication> {
        self.applied
            .iter()
            .rev()
            .filter(|(_, _, at)| cycle.saturating_sub(*at) <= RECENT_CYCLES)
            .map(|(s, m, at)| pb::RecentApplication {
                strategy: world.scenario.strategies[*s].name.clone(),
                metric: world.scenario.metrics[*m].name.clone(),
                cycles_ago: cycle - at,
            })
            .collect()
    }

    /// Chooses a strategy for stuck `metric`: a pattern recovery that is
    /// likely to work if there is one, else a Thompson draw — the hub's for
    /// strategies the fleet has evidence on, a draw from an uninformed prior
    /// for strategies nobody has tried — then checks the choice with
    /// CheckAction and takes the hub's safer alternative when warned.
    pub async fn decide(
        &mut self,
        world: &World<'_>,
        state: &InstanceState,
        detector: &PlateauDetector,
        metric: usize,
    ) -> Result<Decision> {
        let scenario = world.scenario;
        let metric_name = &scenario.metrics[metric].name;
        let value = state.values[metric];
        let plateau = Self::metric_states(world, state, detector);
        let recent = self.recent(world, state.cycle);

        let matches = self
            .client
            .get_patterns(pb::GetPatternsRequest {
                metrics: plateau.clone(),
                environment: self.context.clone(),
                limit: 3,
                target_metric: metric_name.clone(),
                recent: recent.clone(),
            })
            .await
            .map_err(hub_error)?
            .matches;
        let top_recovery = matches.first().and_then(|m| {
            let pattern = m.pattern.as_ref()?;
            let recovery = pattern.recovery_strategies.first()?;
            let strategy = scenario.strategy_index(&recovery.strategy)?;
            Some((
                m.similarity,
                m.exact,
                pattern.id.clone(),
                recovery.clone(),
                strategy,
            ))
        });
        let pattern_hit = top_recovery.as_ref().map(|(_, _, _, _, strategy)| {
            (
                world.is_near_best(state, metric, *strategy),
                *strategy == world.best_strategy(state, metric),
            )
        });
        let pattern_choice =
            top_recovery.and_then(|(similarity, exact, id, recovery, strategy)| {
                ((exact || similarity >= PATTERN_MIN_SIMILARITY)
                    && recovery.success_rate >= PATTERN_MIN_SUCCESS_RATE
                    && recovery.successes + recovery.failures >= PATTERN_MIN_REPORTS)
                    .then_some((strategy, id, similarity))
            });

        let recommendations = self
            .client
            .get_strategies(pb::GetStrategiesRequest {
                metric: metric_name.clone(),
                current_value: value,
                context: self.context.clone(),
                limit: 100,
                recent: recent.clone(),
                explore: true,
                explore_seed: self.rng.next_u64(),
                ..Default::default()
            })
            .await
            .map_err(hub_error)?
            .recommendations;
        let hint = self.hints.get(&metric).copied();
        let headroom = scenario.metrics[metric].maximum - value;
        let mut scored: Vec<Candidate> = scenario
            .strategies
            .iter()
            .enumerate()
            .map(|(s, spec)| {
                match recommendations.iter().find(|r| r.strategy == spec.name) {
                    Some(r) => Candidate::new(s, r.score, Some(r.confidence), r.expected_delta),
                    // Nobody has tried it: an insight's recommendation goes
                    // first, otherwise a draw from a flat prior on success
                    // and gain.
                    None if hint == Some(s) => Candidate::new(s, f64::INFINITY, None, 0.0),
                    None => {
                        let draw = self.rng.uniform() * self.rng.uniform() * 0.4 * headroom;
                        Candidate::new(s, draw, None, draw)
                    }
                }
            })
            .collect();
        scored.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.strategy.cmp(&b.strategy))
        });
        let scored_for = |strategy: usize| {
            scored
                .iter()
                .find(|c| c.strategy == strategy)
                .cloned()
                .unwrap_or_else(|| Candidate::new(strategy, 0.0, None, 0.0))
        };
        let mut candidates: Vec<Candidate> = Vec::new();
        if let Some((strategy, id, similarity)) = pattern_choice {
            candidates.push(Candidate {
                pattern: Some((id, similarity)),
                ..scored_for(strategy)
            });
        }
        for c in &scored {
            if !candidates.iter().any(|x| x.strategy == c.strategy) {
                candidates.push(c.clone());
            }
        }
        // Recovering from a knock-back, the plan said which metric; the
        // strategy is the hub's ranking's (it weighs value band and
        // context; the plan's steps rank by reported recoveries, and
        // taking its first recovered slower: README). Its first step only
        // when the hub ranks nothing for the metric.
        if let Some(step) = self
            .recovering
            .get(&metric)
            .and_then(|r| r.step)
            .filter(|_| recommendations.is_empty())
        {
            candidates.retain(|c| c.strategy != step);
            candidates.insert(0, scored_for(step));
        }

        let mut chosen = candidates[0].clone();
        for candidate in candidates.iter().take(CHECKED_CANDIDATES) {
            let check = self
                .client
                .check_action(pb::CheckActionRequest {
                    strategy: scenario.strategies[candidate.strategy].name.clone(),
                    metric: metric_name.clone(),
                    metrics: plateau.clone(),
                    recent: recent.clone(),
                    context: self.context.clone(),
                })
                .await
                .map_err(hub_error)?;
            // A warning vetoes the candidate only when the damage it expects
            // outweighs the gain: risky strategies that pay off are still
            // applied, and the fleet learns what prevents their failures.
            let damage: f64 = check
                .warnings
                .iter()
                .map(|w| w.failure_rate * w.failure.as_ref().map_or(0.0, |f| f.mean_magnitude))
                .sum();
            if check.safe || damage < candidate.expected {
                chosen = candidate.clone();
                break;
            }
            if let Some(alternative) = scenario.strategy_index(&check.safer_alternative) {
                chosen = scored_for(alternative);
                break;
            }
        }
        Ok(Decision {
            app: Application {
                strategy: chosen.strategy,
                metric,
            },
            pattern: chosen.pattern,
            plateau,
            pattern_hit,
            confidence: chosen.confidence,
            recent,
        })
    }
    /// Shares what an application did. Returns the sequence of an insight
    /// it published, if any.
    pub async fn share_outcome(
        &mut self,
        world: &World<'_>,
        learner: &LocalLearner,
        state: &InstanceState,
        decision: &Decision,
        outcome: &Outcome,
        cycles_until_plateau: u32,
    ) -> Result<Option<u64>> {
        let scenario = world.scenario;
        let app = decision.app;
        self.applied
            .push((app.strategy, app.metric, cycles_until_plateau));
        if self.applied.len() > RECENT_REMEMBERED {
            self.applied.remove(0);
        }
        let strategy = &scenario.strategies[app.strategy].name;
        let metric = &scenario.metrics[app.metric].name;
        // A faulty instance reports something else than what happened.
        let (reported, successful, delta) = match self.faulty {
            None | Some(FaultyMode::Model) => (app.strategy, outcome.success, outcome.delta),
            Some(FaultyMode::Inflate) => (world.worst_strategy(state, app.metric), true, 0.3),
            Some(FaultyMode::Random) => (
                (self.rng.next_u64() % scenario.strategies.len() as u64) as usize,
                self.rng.chance(0.5),
                self.rng.uniform() * 0.5 - 0.2,
            ),
        };
        self.client
            .share_strategy(pb::ShareStrategyRequest {
                strategy: scenario.strategies[reported].name.clone(),
                metric: metric.clone(),
                value_before: outcome.value_before,
                successful,
                delta: delta.clamp(-1.0, 1.0),
                condition: band_condition(outcome.value_before).to_string(),
                context: self.context.clone(),
                recent: decision.recent.clone(),
                ..Default::default()
            })
            .await
            .map_err(hub_error)?;
        if let Some((pattern_id, similarity)) = &decision.pattern {
            self.client
                .record_pattern_outcome(pb::RecordPatternOutcomeRequest {
                    pattern_id: pattern_id.clone(),
                    success: outcome.success,
                    metric_name: metric.clone(),
                    strategy: strategy.clone(),
                    similarity: *similarity,
                    ..Default::default()
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
                    target_metric: metric.clone(),
                    ..Default::default()
                })
                .await
                .map_err(hub_error)?;
        }
        if let Some(recovery) = self.recovering.get_mut(&app.metric) {
            recovery.applied = Some(app.strategy);
        }
        for reversal in &outcome.reversals {
            let hit = &scenario.metrics[reversal.metric].name;
            let report = pb::ShareFailureRequest {
                failure_type: pb::FailureType::MetricReversal as i32,
                trigger: format!("{hit} dropped {:.2} after {strategy}", reversal.drop),
                context: Some(pb::FailureContext {
                    metric: hit.clone(),
                    strategy: strategy.clone(),
                }),
                recent: decision.recent.clone(),
                magnitude: reversal.drop.clamp(0.0, 1.0),
                ..Default::default()
            };
            let answer = self
                .client
                .share_failure(report.clone())
                .await
                .map_err(hub_error)?;
            // The answer is the fleet's recovery plan: follow it.
            let step = answer
                .plan
                .and_then(|plan| plan.steps.into_iter().next())
                .and_then(|step| scenario.strategy_index(&step.method));
            self.recovering.insert(
                reversal.metric,
                Recovery {
                    report,
                    step,
                    applied: None,
                    since: state.cycle,
                },
            );
        }
        self.maybe_share_insight(world, learner, app).await
    }

    /// The knocked-back metric to work on first, if any (one knocked back
    /// within [`RECOVERY_PATIENCE`] cycles).
    pub fn recovering(&self, cycle: u32) -> Option<usize> {
        self.recovering
            .iter()
            .find(|(_, r)| cycle.saturating_sub(r.since) < RECOVERY_PATIENCE)
            .map(|(metric, _)| *metric)
    }

    /// `metric` is back where it was, `cycles` after the knock-back: the
    /// failure is completed with how (the strategy last applied to it), so
    /// that the fleet's plans learn it.
    pub async fn recovered(&mut self, world: &World<'_>, metric: usize, cycles: u32) -> Result<()> {
        let Some(recovery) = self.recovering.remove(&metric) else {
            return Ok(());
        };
        let Some(strategy) = recovery.applied else {
            // It regrew by itself: nothing to teach.
            return Ok(());
        };
        if self.faulty.is_some() {
            return Ok(());
        }
        self.client
            .share_failure(pb::ShareFailureRequest {
                recovery: vec![pb::RecoveryAttempt {
                    method: world.scenario.strategies[strategy].name.clone(),
                    succeeded: true,
                    cycles_to_recover: cycles,
                }],
                follow_up: true,
                recent: Vec::new(),
                magnitude: 0.0,
                ..recovery.report
            })
            .await
            .map_err(hub_error)?;
        Ok(())
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
                ..Default::default()
            })
            .await
            .map_err(hub_error)?;
        Ok(reply.insight.map(|i| i.sequence))
    }

    /// Every [`MODEL_SYNC_EVERY`] cycles: trains the plateau model from the
    /// version it has on its own trajectories (`values`, per metric), sends
    /// the change, and fetches the current version.
    pub async fn maybe_sync_model(&mut self, cycle: u32, values: &[Vec<f64>]) -> Result<()> {
        if cycle < self.last_model_sync + MODEL_SYNC_EVERY {
            return Ok(());
        }
        self.last_model_sync = cycle;
        let examples: Vec<plateau::Example> =
            values.iter().flat_map(|v| plateau::examples(v)).collect();
        if !examples.is_empty() {
            let training = Training {
                epochs: MODEL_LOCAL_EPOCHS,
                ..Training::default()
            };
            let mut delta = plateau::train(&self.model, &examples, &training);
            let mut claimed = examples.len() as u64;
            if self.faulty == Some(FaultyMode::Model) {
                // Towards a wrong model, as hard as validation lets it.
                delta.iter_mut().for_each(|d| *d *= -10.0);
                claimed = 1_000_000;
                let norm = crate::domain::federated::l2_norm(&delta);
                if norm > 1000.0 {
                    delta.iter_mut().for_each(|d| *d *= 1000.0 / norm);
                }
            }
            let sent = self
                .client
                .share_model_update(pb::ShareModelUpdateRequest {
                    model: plateau::MODEL.into(),
                    base_version: self.model_version,
                    delta,
                    examples: claimed,
                    ..Default::default()
                })
                .await;
            // Too stale a base: the fetch below brings the current one.
            if let Err(status) = sent
                && status.code() != tonic::Code::FailedPrecondition
            {
                return Err(hub_error(status));
            }
        }
        let current = self
            .client
            .get_model(pb::GetModelRequest {
                model: plateau::MODEL.into(),
                known_version: self.model_version,
                ..Default::default()
            })
            .await
            .map_err(hub_error)?;
        if !current.unchanged {
            self.model = current.weights;
            self.model_version = current.version;
        }
        Ok(())
    }

    /// The metric the model most expects to reach a plateau within its
    /// horizon, if it expects one at all (never before the fleet's first
    /// version).
    pub fn plateau_ahead(&self, values: &[Vec<f64>]) -> Option<usize> {
        if self.model_version == 0 {
            return None;
        }
        values
            .iter()
            .enumerate()
            .filter_map(|(m, v)| {
                let features = plateau::features(v)?;
                Some((m, plateau::predict(&self.model, &features)))
            })
            .filter(|(_, p)| *p >= ACT_EARLY_PROBABILITY)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(m, _)| m)
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
                ..Default::default()
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
