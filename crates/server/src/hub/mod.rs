//! The hub's core: what happens when an instance shares something or asks
//! for collective knowledge, independent of gRPC.
//!
//! A write is a [`Command`]: [`Hub`] builds it (fixing its time and the ids
//! it creates), the [`Writer`] thread folds it into the state
//! ([`crate::domain::fold`]), appends it to the command log, flushes, and
//! publishes the new state. A read is a pure function of `domain` applied
//! to the published [`State`] snapshot — it never takes a lock the writer
//! needs. The operations live in one file per area (`instances`,
//! `patterns`, `strategies`, `insights`, `failures`, `configs`,
//! `retention`, `access`); the [`InsightBus`] fans new insights out to
//! subscribers.

mod access;
mod anomalies;
pub mod audit_sampler;
mod configs;
mod failures;
mod insights;
mod instances;
mod models;
mod patterns;
mod regions;
pub mod replica;
mod retention;
mod strategies;
mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, atomic::Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use access::AuditQuery;
pub use anomalies::ScanReport;
pub use configs::Bootstrap;
pub use failures::ActionCheck;
pub use insights::GenerationReport;
pub use instances::InstancePage;
pub use models::{
    MODELS, ModelView, Prediction, Predictions, Trajectory, UpdateReceipt, WARNING_THRESHOLD,
    model_dimension,
};
pub use patterns::RankedMatch;
pub use strategies::StrategyAsk;
pub use writer::{CHECKPOINT_EVERY, CHECKPOINT_ROWS, MAX_DETACHED_WAITING};

pub use crate::domain::fold::{GENERATED_BY, RetentionReport};
pub use crate::domain::state::State;

use crate::clock::Clock;
use crate::domain::anomaly::AnomalyKind;
use crate::domain::command::{Action, Command, Idempotency};
use crate::domain::fold::{Answer, fold};
use crate::domain::idempotency::RequestTag;
use crate::domain::model::{Insight, InsightCategory, UnixMillis};
use crate::domain::recommend::Tuning;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::stream::{Credentials, InsightBus, InsightLog, InsightStream};
use writer::Writer;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Tunables of the hub core.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Validity of an insight shared without `valid_until`.
    pub insight_ttl_ms: i64,
    /// The furthest ahead a shared `valid_until` may lie.
    pub max_insight_ttl_ms: i64,
    /// Bytes of insights one instance may have stored
    /// (`Insight::stored_bytes`); its oldest go to make room.
    pub insight_bytes_per_instance: u64,
    /// Insights the live broadcast buffers; a subscriber further behind
    /// catches up from the store.
    pub broadcast_capacity: usize,
    /// Write requests that may wait for the writer.
    pub writer_queue: usize,
    /// Requests folded into one group commit at most.
    pub max_batch: usize,
    /// How long a write waits for the store to make it durable before the
    /// caller gets DEADLINE_EXCEEDED (the write may still be applied).
    pub write_timeout: std::time::Duration,
    /// How strategy evidence is weighed (retention window, recency
    /// half-life, shrinkage).
    pub tuning: Tuning,
    /// Instances must present their API key (`authorization: Bearer`).
    pub require_api_keys: bool,
    /// Requests an instance may make per hour (0: unlimited).
    pub rate_limit_per_hour: u32,
    /// Identities the rate limiter tracks before evicting idle ones.
    pub rate_limit_max_tracked: usize,
    /// What the retention job keeps.
    pub retention: RetentionSettings,
    /// How long a write's request id is remembered: a retry within this
    /// window is answered without applying the write again. Each
    /// remembered id costs about 200 bytes of memory (see
    /// [`crate::domain::idempotency::RequestRecord`]).
    pub request_id_window_ms: i64,
    /// The window of audit sampling (see [`audit_sampler`]): refusals,
    /// unknown paths, health and reflection are written once per kind and
    /// window, plus one entry counting the rest.
    pub audit_sample_window: std::time::Duration,
    /// How federated models combine instances' updates (`dimension` is
    /// set per model).
    pub federation: crate::domain::federated::FederationRules,
    /// Distinct instances of one context whose updates make a version of
    /// that context's model (`model.context_buffer_size`).
    pub context_buffer_size: usize,
    /// This hub's region (`federation.region`; empty: not federated).
    pub region: String,
    /// The regions whose hubs may pull from this one (`federation.peers`).
    pub peers: std::collections::BTreeSet<String>,
}

/// How long things are kept (the seed's "Data Retention").
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Patterns not seen for this many days are removed…
    pub pattern_days: i64,
    /// …and patterns seen fewer than `low_frequency` times after this many.
    pub unconfirmed_pattern_days: i64,
    pub low_frequency: u64,
    /// Raw strategy outcomes are kept this many days.
    pub outcome_days: i64,
    /// Audit entries are kept this many days.
    pub audit_days: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            pattern_days: 30,
            unconfirmed_pattern_days: 7,
            low_frequency: 3,
            outcome_days: 30,
            audit_days: 30,
        }
    }
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            insight_ttl_ms: 7 * DAY_MS,
            max_insight_ttl_ms: 30 * DAY_MS,
            insight_bytes_per_instance: 4 << 20,
            broadcast_capacity: 1024,
            writer_queue: 4096,
            max_batch: 512,
            write_timeout: std::time::Duration::from_secs(10),
            tuning: Tuning::default(),
            require_api_keys: true,
            rate_limit_per_hour: 1000,
            rate_limit_max_tracked: 100_000,
            retention: RetentionSettings::default(),
            request_id_window_ms: DAY_MS,
            audit_sample_window: std::time::Duration::from_secs(60),
            federation: crate::domain::federated::FederationRules::default(),
            context_buffer_size: 3,
            region: String::new(),
            peers: Default::default(),
        }
    }
}

/// What the writer thread and the request handlers share.
pub(crate) struct Shared {
    /// The state as of the last batch the writer installed.
    snapshot: ArcSwap<State>,
    /// Its log position, for callers that wait to read their own writes.
    position: watch::Sender<u64>,
    store: Store,
    bus: InsightBus,
    clock: Arc<dyn Clock>,
    settings: HubSettings,
    metrics: Arc<Metrics>,
    /// Bumped whenever a key is issued or revoked: streams re-check.
    key_changes: watch::Sender<u64>,
    /// Why the hub cannot serve writes now (`None`: it can).
    health: watch::Sender<Option<String>>,
    /// Set when the hub is a replica of a shared log.
    replica: Option<replica::Replica>,
    /// Told of the calls other replicas audited, as their entries fold.
    remote_calls: std::sync::OnceLock<RemoteCalls>,
}

/// See [`Hub::on_remote_calls`].
pub type RemoteCalls = Box<dyn Fn(&[crate::domain::model::AuditEntry]) + Send + Sync>;

impl Shared {
    fn state(&self) -> Arc<State> {
        self.snapshot.load_full()
    }

    /// Makes `state` what readers see, and publishes the insights it added
    /// after `previous_insight` in sequence order. `keys_changed`: a key
    /// was issued or revoked since the last install.
    fn install(&self, state: Arc<State>, previous_insight: u64, keys_changed: bool) {
        self.snapshot.store(state.clone());
        self.position.send_if_modified(|p| {
            let moved = *p != state.position;
            *p = state.position;
            moved
        });
        for (_, insight) in state.tables.insights.range(previous_insight + 1..) {
            self.bus.publish(insight.clone());
        }
        if keys_changed {
            self.key_changes.send_modify(|n| *n += 1);
        }
    }

    /// Says whether writes can be served, and why not.
    fn set_health(&self, problem: Option<String>) {
        self.health.send_if_modified(|now| {
            if *now == problem {
                return false;
            }
            match &problem {
                Some(why) => tracing::warn!(reason = %why, "not serving writes"),
                None => tracing::info!("serving again"),
            }
            *now = problem;
            true
        });
    }
}

impl InsightLog for Shared {
    fn read_after(&self, after: u64, up_to: u64, max: usize) -> Vec<Arc<Insight>> {
        if after >= up_to {
            return Vec::new();
        }
        let now = self.clock.now();
        self.state()
            .tables
            .insights
            .range(after + 1..=up_to)
            .map(|(_, i)| i)
            .filter(|i| i.is_valid_at(now))
            .take(max)
            .cloned()
            .collect()
    }
}

/// Counts and facts for GetStatus.
#[derive(Debug, Clone, PartialEq)]
pub struct HubStatus {
    pub version: &'static str,
    pub started_at: UnixMillis,
    pub uptime_seconds: u64,
    pub instances: u64,
    pub patterns: u64,
    pub strategy_records: u64,
    pub strategy_outcomes: u64,
    pub insights: u64,
    pub failures: u64,
    pub configurations: u64,
    pub live_subscribers: u64,
    pub last_insight_sequence: u64,
    pub stream_catch_ups: u64,
    /// The last command-log position folded in.
    pub log_position: u64,
    /// When the status was taken.
    pub now: UnixMillis,
    /// This hub's region (empty: it does not federate).
    pub region: String,
    /// The peers this hub pulls from, and how each link is doing.
    pub peers: BTreeMap<String, regions::PeerLink>,
    /// Per other origin region, the version held complete.
    pub held: BTreeMap<String, u64>,
}

/// The hub core. Cheap to share behind an `Arc`.
pub struct Hub {
    shared: Arc<Shared>,
    writer: Writer,
    started_at: UnixMillis,
    shutdown: watch::Sender<bool>,
    /// What the audit log keeps of calls nobody vouched for.
    sampler: audit_sampler::AuditSampler,
    /// How the exchanges with each peer region this hub pulls from went.
    links: std::sync::Mutex<BTreeMap<String, regions::PeerLink>>,
    /// Per peer region this hub pulls from, what wakes its pull loop.
    wakes: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Notify>>>,
}

impl Hub {
    /// Loads the newest checkpoint from `store`, folds the command log's
    /// tail after it, and starts the writer.
    pub fn open(store: Store, clock: Arc<dyn Clock>, settings: HubSettings) -> Result<Arc<Self>> {
        let (stored, state, checkpoint_now) = Self::load_state(&store, &settings)?;
        Self::start(
            store,
            None,
            clock,
            settings,
            writer::Start {
                state,
                stored,
                checkpoint_now,
            },
        )
    }

    /// Opens a replica of the log `log` shares with other hubs: the newest
    /// checkpoint, read whole (see [`SharedLog::checkpoint_generation`]),
    /// the log folded after it, then the writer appends this hub's commands
    /// to the shared log and folds everyone's in log order.
    pub fn open_replica(
        log: Arc<dyn crate::store::SharedLog>,
        replica: replica::ReplicaSettings,
        clock: Arc<dyn Clock>,
        settings: HubSettings,
    ) -> Result<Arc<Self>> {
        let store = Store::new(log.clone());
        let (stored, state) = replica::load_whole(&*log, || {
            let (stored, state, _) = Self::load_state(&store, &settings)?;
            Ok((stored, state))
        })?;
        let replica = replica::Replica::new(log, replica);
        Self::start(
            store,
            Some(replica),
            clock,
            settings,
            writer::Start {
                state,
                stored,
                checkpoint_now: false,
            },
        )
    }

    fn start(
        store: Store,
        replica: Option<replica::Replica>,
        clock: Arc<dyn Clock>,
        settings: HubSettings,
        start: writer::Start,
    ) -> Result<Arc<Self>> {
        let state = &start.state;
        tracing::info!(
            position = state.position,
            instances = state.tables.instances.len(),
            patterns = state.tables.patterns.len(),
            strategy_records = state.tables.strategies.len(),
            insights = state.tables.insights.len(),
            failures = state.tables.failures.len(),
            configurations = state.tables.configs.len(),
            request_ids = state.tables.requests.len(),
            "state loaded"
        );
        let started_at = clock.now();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(state.clone()),
            position: watch::channel(state.position).0,
            store,
            bus: InsightBus::new(settings.broadcast_capacity),
            clock,
            settings,
            metrics: Arc::new(Metrics::new()),
            key_changes: watch::channel(0).0,
            health: watch::channel(None).0,
            replica,
            remote_calls: std::sync::OnceLock::new(),
        });
        let writer = Writer::spawn(
            shared.clone(),
            start,
            shared.settings.writer_queue,
            shared.settings.max_batch,
            shared.settings.write_timeout,
        )?;
        let sampler = audit_sampler::AuditSampler::new(
            i64::try_from(shared.settings.audit_sample_window.as_millis()).unwrap_or(i64::MAX),
            10_000,
        );
        Ok(Arc::new(Hub {
            shared,
            writer,
            started_at,
            shutdown: watch::channel(false).0,
            sampler,
            links: std::sync::Mutex::default(),
            wakes: std::sync::Mutex::default(),
        }))
    }

    /// What the hub counts (served by [`crate::metrics::serve`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The metrics exposition as of now.
    pub fn render_metrics(&self) -> String {
        let status = self.status();
        self.shared.metrics.render(&crate::metrics::StateGauges {
            records: vec![
                ("instances", status.instances),
                ("patterns", status.patterns),
                ("strategy_records", status.strategy_records),
                ("strategy_outcomes", status.strategy_outcomes),
                ("insights", status.insights),
                ("failures", status.failures),
                ("configurations", status.configurations),
                (
                    "quarantined_instances",
                    self.state().tables.quarantined.len() as u64,
                ),
                (
                    "inconsistent_instances",
                    self.anomaly_count(AnomalyKind::InconsistentReports),
                ),
                (
                    "strategy_shifts",
                    self.anomaly_count(AnomalyKind::StrategyShift),
                ),
                (
                    "metric_regressions",
                    self.anomaly_count(AnomalyKind::MetricRegression),
                ),
            ],
            live_subscribers: status.live_subscribers,
            stream_catch_ups: status.stream_catch_ups,
            last_insight_sequence: status.last_insight_sequence,
            store_bytes: self.shared.store.size_on_disk(),
            peers: status
                .peers
                .iter()
                .map(|(peer, link)| {
                    (
                        peer.clone(),
                        link.staleness_ms(status.now, status.started_at) as f64 / 1000.0,
                        link.failures_in_a_row,
                    )
                })
                .collect(),
        })
    }

    /// Reads the hub's state from `store` as a start does: the newest
    /// checkpoint, then every command logged after it folded in. Returns
    /// the state the store holds (the next checkpoint's base), the state to
    /// serve, and whether a checkpoint is due at once (a tail was folded,
    /// or the store was written before the command log). It starts
    /// nothing, so the load path can be exercised on its own (`fuzz/`:
    /// arbitrary stores).
    pub fn load_state(store: &Store, settings: &HubSettings) -> Result<(State, State, bool)> {
        let loaded = store.load(settings.tuning.retention_days)?;
        let mut state = loaded.state;
        let checkpointed = state.position;
        loop {
            let page = store.read_log(state.position, 4096)?;
            if page.is_empty() {
                break;
            }
            for entry in page {
                if entry.position <= state.position {
                    return Err(Error::Internal(format!(
                        "corrupt store: log entry {} after position {}",
                        entry.position, state.position
                    )));
                }
                if let Err(e) = fold(&mut state, entry.position, &entry.command) {
                    // Only commands that folded are logged here; one that
                    // no longer does changed nothing when it was folded.
                    tracing::warn!(
                        position = entry.position,
                        command = entry.command.action.name(),
                        error = %e,
                        "a logged command did not fold again; skipped"
                    );
                    state.skip_to(entry.position);
                }
            }
        }
        if state.position > checkpointed {
            tracing::info!(
                from = checkpointed,
                to = state.position,
                "folded the command log after the checkpoint"
            );
        }
        let checkpoint_now = loaded.legacy || state.position > checkpointed;
        if loaded.legacy {
            tracing::info!(
                "data directory written before the command log: it is checkpointed in the new \
                 format now (records, outcomes and audit entries kept as they are)"
            );
        }
        Ok((loaded.stored, state, checkpoint_now))
    }

    /// Ends every insight stream (clients get UNAVAILABLE with their resume
    /// sequence). Writes keep working until [`Hub::close`].
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Finishes queued writes, checkpoints, flushes the store and stops
    /// the writer.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        // The windows still open are written with the last flush.
        for entry in self.sampler.drain() {
            self.writer.audit(entry);
        }
        self.writer.stop().await
    }

    /// Turns true when the hub begins to shut down (for background jobs).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The settings this hub was opened with.
    pub fn settings(&self) -> &HubSettings {
        &self.shared.settings
    }

    pub fn now(&self) -> UnixMillis {
        self.shared.clock.now()
    }

    /// The state as of the last batch the writer installed: a snapshot
    /// that stays as it is however long a query holds it.
    pub fn state(&self) -> Arc<State> {
        self.shared.state()
    }

    /// Folds `action` in the writer (decided now) and returns its answer
    /// once it is durable.
    async fn submit(&self, action: Action) -> Result<Answer> {
        self.writer
            .submit(Command {
                at: self.now(),
                action,
            })
            .await
    }

    /// The idempotency a write's request id asks for.
    fn idempotency(&self, request: Option<RequestTag>) -> Option<Idempotency> {
        request.map(|tag| Idempotency {
            tag,
            window_ms: self.shared.settings.request_id_window_ms,
        })
    }

    /// Opens an insight stream (see [`crate::stream`]). `holder` is the
    /// subscribing instance and the key it presented: the stream ends when
    /// that key stops being valid.
    pub fn subscribe_insights(
        &self,
        after: u64,
        category: Option<InsightCategory>,
        holder: Option<(String, Option<String>)>,
    ) -> Result<InsightStream> {
        let shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Error::Unavailable("hub is shutting down".into()));
        }
        let stopped = self.shared.health.subscribe();
        if let Some(why) = stopped.borrow().clone() {
            return Err(Error::Unavailable(format!(
                "{why}; subscribe on another replica"
            )));
        }
        let credentials = holder
            .filter(|_| self.shared.settings.require_api_keys)
            .map(|(instance, key)| {
                let shared = self.shared.clone();
                Credentials {
                    changes: self.shared.key_changes.subscribe(),
                    still_valid: Box::new(move || {
                        shared.key_valid(&instance, key.as_deref()).is_ok()
                    }),
                }
            });
        Ok(self.shared.bus.subscribe(
            self.shared.clone(),
            after,
            category,
            shutdown,
            stopped,
            credentials,
        ))
    }

    /// Every strategy aggregate as the hub serves it now (diagnostics and
    /// tests).
    pub fn strategy_records(&self) -> Vec<Arc<crate::domain::model::StrategyRecord>> {
        self.state().tables.strategies.values().cloned().collect()
    }

    pub fn status(&self) -> HubStatus {
        let now = self.now();
        let state = self.state();
        HubStatus {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            uptime_seconds: (now - self.started_at).max(0) as u64 / 1000,
            instances: state.tables.instances.len() as u64,
            patterns: state.tables.patterns.len() as u64,
            strategy_records: state.tables.strategies.len() as u64,
            strategy_outcomes: state.counters.outcome_sequence,
            insights: state
                .tables
                .insights
                .values()
                .filter(|i| i.is_valid_at(now))
                .count() as u64,
            failures: state.tables.failures.len() as u64,
            configurations: state.tables.configs.len() as u64,
            live_subscribers: self.shared.bus.stats().live.load(Ordering::SeqCst),
            last_insight_sequence: state.counters.insight_sequence,
            stream_catch_ups: self.shared.bus.stats().catch_ups.load(Ordering::SeqCst),
            log_position: state.position,
            now,
            region: self.region().to_string(),
            peers: self.peer_links(),
            held: self.held_versions(),
        }
    }

    /// The state's digest (see [`State::digest`]): equal on two hubs that
    /// folded the same log.
    pub fn state_digest(&self) -> [u8; 32] {
        self.state().digest()
    }
}

/// The answer `answer` should be, for a command that answers `expected`;
/// any other is a bug in the hub.
fn wrong_answer(expected: &str, answer: Answer) -> Error {
    Error::Internal(format!("{expected} was answered with {answer:?}"))
}
