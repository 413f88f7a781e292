//! What the load generator sends: the RPCs it can drive and the requests it
//! makes for them, drawn from a fixed vocabulary of metrics, strategies and
//! contexts ([`Shape`]) so that the hub's aggregates look like a fleet's:
//! `metrics × strategies × contexts` strategy records once enough outcomes
//! arrived, patterns that recur, queries that hit stored evidence.

use std::{collections::BTreeMap, fmt, str::FromStr};

use tonic::Status;

use crate::client::HubClient;
use crate::domain::rng::Rng;
use crate::error::{Error, Result};
use crate::pb;

/// The RPC (or mix) a bench run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `Hub/Echo`: TLS, auth, rate limit and audit but no work — the ceiling.
    Echo,
    /// `Hub/Register` of the connection's own instance (a durable refresh).
    Register,
    ShareStrategy,
    GetStrategies,
    SharePattern,
    GetPatterns,
    /// An instance's plateau loop: mostly queries, a share per few.
    Mixed,
}

impl Rpc {
    pub const ALL: [Rpc; 7] = [
        Rpc::Echo,
        Rpc::Register,
        Rpc::ShareStrategy,
        Rpc::GetStrategies,
        Rpc::SharePattern,
        Rpc::GetPatterns,
        Rpc::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Echo => "echo",
            Rpc::Register => "register",
            Rpc::ShareStrategy => "share-strategy",
            Rpc::GetStrategies => "get-strategies",
            Rpc::SharePattern => "share-pattern",
            Rpc::GetPatterns => "get-patterns",
            Rpc::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Rpc {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Rpc::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<_> = Rpc::ALL.iter().map(|r| r.name()).collect();
            Error::invalid("rpc", format!("{s:?} is not one of {}", names.join(", ")))
        })
    }
}

/// A single RPC, what a [`Rpc::Mixed`] draw resolves to.
#[derive(Debug, Clone, Copy)]
enum OneCall {
    Echo,
    Register,
    ShareStrategy,
    GetStrategies,
    SharePattern,
    GetPatterns,
    CheckAction,
}

/// The share of each RPC in the `mixed` workload: what an instance does
/// around a plateau in the seed's loop (ask for patterns, strategies and a
/// failure check, then report what it applied).
const MIX: [(OneCall, f64); 5] = [
    (OneCall::GetStrategies, 0.30),
    (OneCall::GetPatterns, 0.20),
    (OneCall::CheckAction, 0.20),
    (OneCall::ShareStrategy, 0.20),
    (OneCall::SharePattern, 0.10),
];

/// The vocabulary requests are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub metrics: usize,
    pub strategies: usize,
    pub contexts: usize,
}

impl Default for Shape {
    /// 10 × 50 × 20: 10,000 strategy records once every key has an outcome.
    fn default() -> Self {
        Shape {
            metrics: 10,
            strategies: 50,
            contexts: 20,
        }
    }
}

impl Shape {
    /// Strategy records (strategy × metric × context) the vocabulary spans.
    pub fn records(&self) -> u64 {
        (self.metrics * self.strategies * self.contexts) as u64
    }

    pub fn validate(&self) -> Result<()> {
        for (field, n) in [
            ("metrics", self.metrics),
            ("strategies", self.strategies),
            ("contexts", self.contexts),
        ] {
            if n == 0 || n > 10_000 {
                return Err(Error::invalid(field, "must be within [1, 10000]"));
            }
        }
        Ok(())
    }
}

/// Request factory for one caller: names pre-built once, randomness from
/// the caller's own stream.
pub struct Requests {
    shape: Shape,
    metrics: Vec<String>,
    strategies: Vec<String>,
    contexts: Vec<BTreeMap<String, String>>,
    /// The instance this caller's connection is, for Register.
    instance_id: String,
    rng: Rng,
    /// 100 bytes, about the size of a ShareStrategy request.
    echo_payload: Vec<u8>,
}

impl Requests {
    pub fn new(shape: Shape, instance_id: &str, rng: Rng) -> Self {
        Requests {
            shape,
            metrics: (0..shape.metrics).map(|i| format!("metric{i}")).collect(),
            strategies: (0..shape.strategies)
                .map(|i| format!("strategy{i}"))
                .collect(),
            contexts: (0..shape.contexts)
                .map(|i| {
                    BTreeMap::from([
                        ("provider".to_string(), format!("provider{}", i % 4)),
                        ("workload".to_string(), format!("workload{i}")),
                    ])
                })
                .collect(),
            instance_id: instance_id.to_string(),
            rng,
            echo_payload: vec![0x5a; 100],
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    /// The `index`-th outcome of a preload: keys are visited in order, so N
    /// outcomes touch `min(N, records)` distinct strategy records.
    pub fn preload_outcome(&mut self, index: u64) -> pb::ShareStrategyRequest {
        let records = self.shape.records();
        let key = index % records;
        let metric = (key % self.shape.metrics as u64) as usize;
        let rest = key / self.shape.metrics as u64;
        let strategy = (rest % self.shape.strategies as u64) as usize;
        let context = (rest / self.shape.strategies as u64) as usize;
        self.outcome(metric, strategy, context)
    }

    fn outcome(
        &mut self,
        metric: usize,
        strategy: usize,
        context: usize,
    ) -> pb::ShareStrategyRequest {
        // Strategies differ in how often they work, so rankings are real.
        let p_success = 0.3 + 0.6 * (strategy as f64 / self.shape.strategies.max(1) as f64);
        let successful = self.rng.chance(p_success);
        let delta = if successful {
            0.02 + 0.2 * self.rng.uniform()
        } else {
            -0.1 * self.rng.uniform()
        };
        pb::ShareStrategyRequest {
            strategy: self.strategies[strategy].clone(),
            metric: self.metrics[metric].clone(),
            value_before: 0.2 + 0.7 * self.rng.uniform(),
            successful,
            delta,
            context: self.contexts[context].clone(),
            ..Default::default()
        }
    }

    pub fn share_strategy(&mut self) -> pb::ShareStrategyRequest {
        let (m, s, c) = (
            self.pick(self.shape.metrics),
            self.pick(self.shape.strategies),
            self.pick(self.shape.contexts),
        );
        self.outcome(m, s, c)
    }

    pub fn get_strategies(&mut self) -> pb::GetStrategiesRequest {
        let (m, c) = (
            self.pick(self.shape.metrics),
            self.pick(self.shape.contexts),
        );
        pb::GetStrategiesRequest {
            metric: self.metrics[m].clone(),
            current_value: 0.2 + 0.7 * self.rng.uniform(),
            context: self.contexts[c].clone(),
            limit: 5,
            ..Default::default()
        }
    }

    /// A metric state over three metrics, values on a 0.1 grid so that
    /// signatures recur the way a fleet's plateaus do.
    fn metric_state(&mut self) -> BTreeMap<String, pb::MetricState> {
        (0..3.min(self.shape.metrics))
            .map(|_| {
                let m = self.pick(self.shape.metrics);
                let value = (self.pick(10) as f64 + 0.5) / 10.0;
                let stuck = self.rng.chance(0.5);
                (self.metrics[m].clone(), pb::MetricState { value, stuck })
            })
            .collect()
    }

    pub fn share_pattern(&mut self) -> pb::SharePatternRequest {
        let c = self.pick(self.shape.contexts);
        let recovery = (0..2)
            .map(|_| {
                let s = self.pick(self.shape.strategies);
                self.strategies[s].clone()
            })
            .collect();
        pb::SharePatternRequest {
            metrics: self.metric_state(),
            cycles_until_plateau: 1 + self.pick(20) as u32,
            recovery_strategies: recovery,
            environment: self.contexts[c].clone(),
            ..Default::default()
        }
    }

    pub fn get_patterns(&mut self) -> pb::GetPatternsRequest {
        let c = self.pick(self.shape.contexts);
        pb::GetPatternsRequest {
            metrics: self.metric_state(),
            environment: self.contexts[c].clone(),
            limit: 5,
            ..Default::default()
        }
    }

    fn check_action(&mut self) -> pb::CheckActionRequest {
        let (m, s, c) = (
            self.pick(self.shape.metrics),
            self.pick(self.shape.strategies),
            self.pick(self.shape.contexts),
        );
        pb::CheckActionRequest {
            strategy: self.strategies[s].clone(),
            metric: self.metrics[m].clone(),
            metrics: self.metric_state(),
            context: self.contexts[c].clone(),
            ..Default::default()
        }
    }

    pub fn register(&self) -> pb::RegisterRequest {
        pb::RegisterRequest {
            instance_id: self.instance_id.clone(),
            region: "bench".into(),
            context: self.contexts[0].clone(),
            capabilities: vec![],
        }
    }

    /// Sends one request of `rpc` and waits for its answer.
    pub async fn call(&mut self, hub: &HubClient, rpc: Rpc) -> std::result::Result<(), Status> {
        self.issue(hub, rpc).await
    }

    /// Draws the next request of `rpc` now and returns its sending as a
    /// future that owns everything it needs, so an open-loop generator can
    /// spawn it without waiting for the previous answer.
    pub fn issue(&mut self, hub: &HubClient, rpc: Rpc) -> Call {
        let hub = hub.clone();
        let one = match rpc {
            Rpc::Echo => OneCall::Echo,
            Rpc::Register => OneCall::Register,
            Rpc::ShareStrategy => OneCall::ShareStrategy,
            Rpc::GetStrategies => OneCall::GetStrategies,
            Rpc::SharePattern => OneCall::SharePattern,
            Rpc::GetPatterns => OneCall::GetPatterns,
            Rpc::Mixed => {
                let weights: Vec<f64> = MIX.iter().map(|(_, w)| *w).collect();
                MIX[self.rng.weighted(&weights)].0
            }
        };
        match one {
            OneCall::Echo => {
                let payload = self.echo_payload.clone();
                Box::pin(async move { hub.echo(pb::EchoRequest { payload }).await.map(drop) })
            }
            OneCall::Register => {
                let request = self.register();
                Box::pin(async move { hub.register(request).await.map(drop) })
            }
            OneCall::ShareStrategy => {
                let request = self.share_strategy();
                Box::pin(async move { hub.share_strategy(request).await.map(drop) })
            }
            OneCall::GetStrategies => {
                let request = self.get_strategies();
                Box::pin(async move { hub.get_strategies(request).await.map(drop) })
            }
            OneCall::SharePattern => {
                let request = self.share_pattern();
                Box::pin(async move { hub.share_pattern(request).await.map(drop) })
            }
            OneCall::GetPatterns => {
                let request = self.get_patterns();
                Box::pin(async move { hub.get_patterns(request).await.map(drop) })
            }
            OneCall::CheckAction => {
                let request = self.check_action();
                Box::pin(async move { hub.check_action(request).await.map(drop) })
            }
        }
    }
}

/// One request on its way: owns its client handle and request.
pub type Call = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<(), Status>> + Send + 'static>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_round_trip_and_unknown_names_are_refused() {
        for rpc in Rpc::ALL {
            assert_eq!(rpc.name().parse::<Rpc>().unwrap(), rpc);
        }
        let err = "sharestrategy".parse::<Rpc>().unwrap_err().to_string();
        assert!(
            err.contains("rpc") && err.contains("share-strategy"),
            "{err}"
        );
    }

    #[test]
    fn a_preload_visits_every_record_once_before_repeating() {
        let shape = Shape {
            metrics: 3,
            strategies: 4,
            contexts: 2,
        };
        let mut requests = Requests::new(shape, "bench-0", Rng::new(1));
        let keys: std::collections::HashSet<_> = (0..shape.records())
            .map(|i| {
                let r = requests.preload_outcome(i);
                (r.metric, r.strategy, r.context["workload"].clone())
            })
            .collect();
        assert_eq!(keys.len() as u64, shape.records());
        let again = requests.preload_outcome(shape.records());
        let first = requests.preload_outcome(0);
        assert_eq!(
            (again.metric, again.strategy),
            (first.metric, first.strategy)
        );
    }

    #[test]
    fn generated_requests_pass_the_hubs_validation() {
        let mut requests = Requests::new(Shape::default(), "bench-0", Rng::new(7));
        for _ in 0..200 {
            learning_hub_server::api::convert::strategy_share(requests.share_strategy()).unwrap();
            learning_hub_server::api::convert::pattern_share(requests.share_pattern()).unwrap();
        }
    }
}
