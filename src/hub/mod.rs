//! The hub's core: what happens when an instance shares something or asks
//! for collective knowledge, independent of gRPC.
//!
//! [`Hub`] owns the in-memory [`State`] (read by queries under a short read
//! lock), the [`Writer`] thread that makes changes durable in group commits,
//! and the [`InsightBus`] that fans new insights out to subscribers. The
//! operations live in one file per area (`instances`, `patterns`,
//! `strategies`, `insights`, `failures`, `configs`); each write is a closure
//! run by the writer against a [`Txn`], each read a pure function from
//! `domain` applied to the state.

mod access;
pub mod audit_sampler;
mod configs;
mod failures;
mod idempotency;
mod insights;
mod instances;
mod patterns;
mod retention;
pub mod state;
mod strategies;
mod writer;

use std::sync::{
    Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::watch;

pub use access::{AuditQuery, access_control, connection_refusals};
pub use configs::Bootstrap;
pub use failures::ActionCheck;
pub use insights::{GENERATED_BY, GenerationReport};
pub use instances::InstancePage;
pub use patterns::RankedMatch;
pub use retention::RetentionReport;
pub use state::{State, Txn};
pub use strategies::StrategyAsk;

use crate::auth::limits::RateLimiter;
use crate::clock::Clock;
use crate::domain::model::{Insight, InsightCategory, UnixMillis};
use crate::domain::recommend::Tuning;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Changes, Store};
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
        }
    }
}

/// What the writer thread and the request handlers share.
pub(crate) struct Shared {
    state: RwLock<State>,
    store: Store,
    bus: InsightBus,
    clock: Arc<dyn Clock>,
    settings: HubSettings,
    /// Every outcome up to this sequence is in the stored aggregates (the
    /// writer moves it; log trimming must keep the outcomes after it).
    strategy_floor: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while writing; the
        // state itself is replaced whole per record, so it stays usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl InsightLog for Shared {
    fn read_after(&self, after: u64, up_to: u64, max: usize) -> Vec<Arc<Insight>> {
        if after >= up_to {
            return Vec::new();
        }
        let now = self.clock.now();
        self.read_state()
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
}

/// The hub core. Cheap to share behind an `Arc`.
pub struct Hub {
    shared: Arc<Shared>,
    writer: Writer,
    started_at: UnixMillis,
    shutdown: watch::Sender<bool>,
    limiter: RateLimiter,
    /// Bumped whenever a key is revoked or replaced: streams re-check.
    key_changes: watch::Sender<u64>,
    /// What the audit log keeps of calls nobody vouched for.
    sampler: audit_sampler::AuditSampler,
}

impl Hub {
    /// Loads the state from `store` and starts the writer.
    pub fn open(store: Store, clock: Arc<dyn Clock>, settings: HubSettings) -> Result<Arc<Self>> {
        let (state, checkpoint) = Self::load_state(&store, &settings, clock.now())?;
        if let Some(checkpoint) = checkpoint {
            store.commit(&checkpoint)?;
            store.flush()?;
        }
        tracing::info!(
            instances = state.instances.len(),
            patterns = state.patterns.len(),
            strategy_records = state.strategies.len(),
            insights = state.insights.len(),
            failures = state.failures.len(),
            configurations = state.configs.len(),
            request_ids = state.requests.len(),
            "state loaded"
        );
        let started_at = clock.now();
        let outcome_sequence = state.outcome_sequence;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            store,
            bus: InsightBus::new(settings.broadcast_capacity),
            clock,
            settings,
            strategy_floor: AtomicU64::new(outcome_sequence),
            metrics: Arc::new(Metrics::new()),
        });
        let writer = Writer::spawn(
            shared.clone(),
            shared.settings.writer_queue,
            shared.settings.max_batch,
            shared.settings.write_timeout,
        )?;
        let limiter = RateLimiter::new(
            shared.settings.rate_limit_per_hour,
            shared.settings.rate_limit_max_tracked,
        );
        let sampler = audit_sampler::AuditSampler::new(
            i64::try_from(shared.settings.audit_sample_window.as_millis()).unwrap_or(i64::MAX),
            10_000,
        );
        Ok(Arc::new(Hub {
            shared,
            writer,
            started_at,
            shutdown: watch::channel(false).0,
            limiter,
            key_changes: watch::channel(0).0,
            sampler,
        }))
    }

    /// What the hub counts (served by [`crate::metrics::serve`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The metrics exposition as of now.
    pub fn render_metrics(&self) -> String {
        let store_bytes = self.shared.store.size_on_disk();
        self.shared.metrics.render(&self.status(), store_bytes)
    }

    /// Reads the hub's state from `store` as a start does: every record,
    /// then the outcome log after the stored floor replayed into the
    /// aggregates. Returns the state and, when the replay changed anything
    /// (or the store has no floor yet), the checkpoint [`Hub::open`] makes
    /// durable before serving. Request ids past their window at `now` are
    /// not loaded, and the checkpoint deletes them. It starts nothing, so
    /// the load path can be exercised on its own (`fuzz/`: arbitrary
    /// stores).
    pub fn load_state(
        store: &Store,
        settings: &HubSettings,
        now: UnixMillis,
    ) -> Result<(State, Option<Changes>)> {
        let mut snapshot = store.load()?;
        // Request ids past their window deduplicate nothing.
        let (live, expired): (Vec<_>, Vec<_>) = std::mem::take(&mut snapshot.requests)
            .into_iter()
            .partition(|(_, r)| r.live_at(now, settings.request_id_window_ms));
        snapshot.requests = live;
        let expired_requests: std::collections::BTreeSet<_> =
            expired.into_iter().map(|(key, _)| key).collect();
        // A store that never recorded a floor persisted every aggregate
        // with its outcome: there is nothing to replay.
        let stored_floor = snapshot.strategy_floor;
        // The floor never passes the last outcome handed out; a store that
        // says otherwise would have its floor lowered below outcomes this
        // load never read.
        if stored_floor.is_some_and(|floor| floor > snapshot.outcome_sequence) {
            return Err(Error::Internal(format!(
                "corrupt store: strategy floor {} is past the last outcome sequence {}",
                stored_floor.unwrap_or_default(),
                snapshot.outcome_sequence
            )));
        }
        let floor = stored_floor.unwrap_or(snapshot.outcome_sequence);
        let mut state = State::from_snapshot(snapshot);
        let replayed =
            strategies::replay_outcomes(&mut state, store, floor, settings.tuning.retention_days)?;
        // The writer only writes the floor when it moves, so a store must
        // start with one.
        if replayed.is_empty()
            && stored_floor == Some(state.outcome_sequence)
            && expired_requests.is_empty()
        {
            return Ok((state, None));
        }
        tracing::info!(
            outcomes_after = floor,
            aggregates = replayed.len(),
            expired_request_ids = expired_requests.len(),
            "start-up checkpoint: aggregates rebuilt from the outcome log, expired request ids dropped"
        );
        let checkpoint = Changes {
            checkpoint: replayed,
            strategy_floor: Some(state.outcome_sequence),
            removed_requests: expired_requests,
            ..Default::default()
        };
        Ok((state, Some(checkpoint)))
    }

    /// Ends every insight stream (clients get UNAVAILABLE with their resume
    /// sequence). Writes keep working until [`Hub::close`].
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Finishes queued writes, flushes the store and stops the writer.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        // The windows still open are written with the last flush.
        for entry in self.sampler.drain() {
            self.writer
                .write_detached(move |txn| txn.append_audit(entry));
        }
        self.writer.stop().await
    }

    /// Turns true when the hub begins to shut down (for background jobs).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn now(&self) -> UnixMillis {
        self.shared.clock.now()
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.read_state()
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.write(f).await
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
        let credentials = holder
            .filter(|_| self.shared.settings.require_api_keys)
            .map(|(instance, key)| {
                let shared = self.shared.clone();
                Credentials {
                    changes: self.key_changes.subscribe(),
                    still_valid: Box::new(move || {
                        shared.key_valid(&instance, key.as_deref()).is_ok()
                    }),
                }
            });
        Ok(self
            .shared
            .bus
            .subscribe(self.shared.clone(), after, category, shutdown, credentials))
    }

    /// Every strategy aggregate as the hub serves it now (diagnostics and
    /// tests).
    pub fn strategy_records(&self) -> Vec<Arc<crate::domain::model::StrategyRecord>> {
        self.state().strategies.values().cloned().collect()
    }

    pub fn status(&self) -> HubStatus {
        let now = self.now();
        let state = self.state();
        HubStatus {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            uptime_seconds: (now - self.started_at).max(0) as u64 / 1000,
            instances: state.instances.len() as u64,
            patterns: state.patterns.len() as u64,
            strategy_records: state.strategies.len() as u64,
            strategy_outcomes: state.outcome_sequence,
            insights: state
                .insights
                .values()
                .filter(|i| i.is_valid_at(now))
                .count() as u64,
            failures: state.failures.len() as u64,
            configurations: state.configs.len() as u64,
            live_subscribers: self.shared.bus.stats().live.load(Ordering::SeqCst),
            last_insight_sequence: state.insight_sequence,
            stream_catch_ups: self.shared.bus.stats().catch_ups.load(Ordering::SeqCst),
        }
    }
}

/// Every write needs a registered instance; this stamps its activity on the
/// instance record (last seen, records shared) within the same commit.
fn touch_instance(txn: &mut Txn<'_>, instance_id: &str) -> Result<()> {
    let Some(instance) = txn.instance(instance_id) else {
        return Err(Error::FailedPrecondition(format!(
            "instance {instance_id:?} is not registered; call Register first"
        )));
    };
    let mut instance = (*instance).clone();
    instance.last_seen = instance.last_seen.max(txn.now);
    instance.shared_records += 1;
    // Activity, not registration: a crash may lose the last few seconds of
    // it (see the writer), never a shared record.
    txn.put_instance_activity(instance);
    Ok(())
}
