//! The operator dashboard: one page (`/dashboard` on the metrics listener,
//! loopback by default) that polls `/dashboard/state.json` twice a second
//! and draws the fleet, the strategy leaderboards, insights as they
//! arrive, failures and recoveries, anomalies, peer regions and charts of
//! outcomes per minute and success rate, and where this hub keeps its
//! state (a replica: how far it lags the shared log, whether it holds the
//! jobs lease). Read-only and aggregate-only:
//! the JSON carries counts, rates and names of strategies, metrics,
//! regions and contexts, never an instance id. Who can reach the metrics
//! listener can see it, which is why both stay on loopback unless an
//! operator puts them behind an authenticating proxy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::Identity;
use crate::domain::model::UnixMillis;
use crate::hub::{Hub, StrategyAsk};

/// The page: plain HTML, CSS and a module script, no outside resource.
pub const PAGE: &str = include_str!("index.html");

/// How often the charts' figures are sampled, and how many are kept (an
/// hour's worth).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES_KEPT: usize = 360;

/// Strategies shown per metric.
const LEADERBOARD: usize = 8;

/// One sample for the charts: when, outcomes ever, successes ever.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: UnixMillis,
    outcomes: u64,
    successes: u64,
}

/// The charts' samples, shared by the sampler and the page's requests.
#[derive(Debug, Default, Clone)]
pub struct Series {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl Series {
    /// Takes a sample of `hub` now.
    pub fn sample(&self, hub: &Hub) {
        let state = hub.state();
        let successes = state
            .tables
            .strategies
            .values()
            .map(|r| r.successes)
            .fold(0u64, u64::saturating_add);
        let sample = Sample {
            at: hub.now(),
            outcomes: state.counters.outcome_sequence,
            successes,
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample);
        while samples.len() > SAMPLES_KEPT {
            samples.pop_front();
        }
    }

    /// Per interval between samples: outcomes per minute and the share
    /// that succeeded.
    fn points(&self) -> Vec<Value> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let minutes = ((b.at - a.at).max(1) as f64) / 60_000.0;
                let outcomes = b.outcomes.saturating_sub(a.outcomes);
                let successes = b.successes.saturating_sub(a.successes);
                json!({
                    "at": b.at,
                    "outcomes_per_minute": outcomes as f64 / minutes,
                    "success_rate": (outcomes > 0).then(|| successes as f64 / outcomes as f64),
                })
            })
            .collect()
    }
}

/// Samples `hub` every [`SAMPLE_EVERY`] until it shuts down.
pub fn spawn_sampler(hub: Arc<Hub>, series: Series) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shutdown = hub.shutdown_signal();
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => series.sample(&hub),
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Everything the page shows, as of now.
pub fn state(hub: &Hub, series: &Series) -> Value {
    let state = hub.state();
    let status = hub.status();
    let now = status.now;
    // The fleet: instances by region and by context, counted.
    let mut by_region: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_context: BTreeMap<String, u64> = BTreeMap::new();
    for instance in state.tables.instances.values() {
        *by_region.entry(instance.region.as_str()).or_default() += 1;
        let context = crate::domain::model::context_key(&instance.context);
        *by_context.entry(context).or_default() += 1;
    }
    // Per metric, the leaderboard as an operator sees it.
    let operator = Identity::operator("dashboard");
    let metrics: std::collections::BTreeSet<&str> =
        state.tables.strategies.keys().map(|k| &*k.metric).collect();
    let leaderboards: Vec<Value> = metrics
        .into_iter()
        .map(|metric| {
            let ranked = hub.get_strategies(&StrategyAsk {
                caller: Some(operator.clone()),
                metric: metric.to_string(),
                limit: LEADERBOARD,
                ..Default::default()
            });
            let rows: Vec<Value> = ranked
                .iter()
                .map(|r| {
                    // The interval around the expected change: the lower
                    // bound is expected − z·sd, so the upper is its mirror.
                    let upper = 2.0 * r.expected_delta - r.lower_bound;
                    json!({
                        "strategy": r.strategy,
                        "confidence": r.confidence,
                        "expected_delta": r.expected_delta,
                        "interval": [r.lower_bound, upper],
                        "applications": r.applications,
                        "success_rate": r.success_rate,
                        "band": [r.band.0, r.band.1],
                        "band_known": r.band_known,
                        "failure_risk": r.failure_risk,
                        "origin_regions": r.origin_regions,
                    })
                })
                .collect();
            json!({"metric": metric, "strategies": rows})
        })
        .collect();
    let insights: Vec<Value> = state
        .tables
        .insights
        .values()
        .rev()
        .filter(|i| i.is_valid_at(now))
        .take(20)
        .map(|i| {
            json!({
                "sequence": i.sequence,
                "category": format!("{:?}", i.draft.category),
                "title": i.draft.title,
                "created_at": i.created_at,
                "origin_region": i.origin_region,
            })
        })
        .collect();
    let mut failures = state.failures().to_vec();
    failures.sort_by(|a, b| b.occurrences.cmp(&a.occurrences).then(a.id.cmp(&b.id)));
    let failures: Vec<Value> = failures
        .iter()
        .take(10)
        .map(|f| {
            let recoveries: Vec<Value> = f
                .ranked_recovery()
                .into_iter()
                .take(3)
                .map(|(method, s)| {
                    json!({"method": method, "attempts": s.attempts, "success_rate": s.success_rate()})
                })
                .collect();
            json!({
                "failure_type": f.failure_type.as_str(),
                "metric": f.metric,
                "strategy": f.strategy,
                "occurrences": f.occurrences,
                "resolved": f.resolved,
                "recoveries": recoveries,
            })
        })
        .collect();
    let mut anomalies: BTreeMap<&str, u64> = BTreeMap::new();
    for anomaly in state.tables.anomalies.values() {
        *anomalies.entry(anomaly.finding.kind.as_str()).or_default() += 1;
    }
    let peers: Vec<Value> = status
        .peers
        .iter()
        .map(|(region, link)| {
            json!({
                "region": region,
                "staleness_ms": link.last_success.map(|at| (now - at).max(0)),
                "failures_in_a_row": link.failures_in_a_row,
                "last_error": link.last_error,
            })
        })
        .collect();
    let replica = hub.replica_summary(state.position);
    json!({
        "now": now,
        "storage": {
            "storage": replica.storage,
            "replica": replica.replica,
            "log_position": replica.log_position,
            "log_head": replica.log_head,
            "lag": replica.log_head.saturating_sub(replica.log_position),
            "holds_jobs_lease": !replica.is_replica || replica.lease_epoch.is_some(),
            "not_serving": replica.not_serving,
        },
        "status": {
            "version": status.version,
            "uptime_seconds": status.uptime_seconds,
            "region": status.region,
            "instances": status.instances,
            "live_subscribers": status.live_subscribers,
            "strategy_outcomes": status.strategy_outcomes,
            "insights": status.insights,
            "failures": status.failures,
            "patterns": status.patterns,
            "log_position": status.log_position,
        },
        "fleet": {"by_region": by_region, "by_context": by_context},
        "leaderboards": leaderboards,
        "insights": insights,
        "failures": failures,
        "anomalies": anomalies,
        "peers": peers,
        "series": series.points(),
    })
}
