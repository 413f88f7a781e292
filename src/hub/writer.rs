//! The single writer: every change to the hub's knowledge goes through one
//! dedicated thread, which gives read-modify-write updates of aggregates a
//! total order without locks in the request path, and turns concurrent
//! requests into group commits.
//!
//! The loop takes every job waiting in its queue (up to a batch limit),
//! runs each against a [`Txn`] over the durable state plus the changes
//! staged so far, writes the batch atomically, flushes once, installs the
//! batch into the in-memory state, publishes new insights, and only then
//! answers every request in the batch. One fsync thus covers many
//! acknowledgements, and no reader or subscriber ever sees a change that
//! could still be lost. sled's blocking calls stay off the async runtime.
//!
//! Three kinds of data are made durable more cheaply:
//!
//! - Strategy aggregates are derived from the outcome log, which is what a
//!   ShareStrategy makes durable. The writer persists a changed aggregate
//!   only once it has been dirty for [`CHECKPOINT_AGE`] (a few per commit,
//!   more when idle), together with the *floor*: the outcome sequence up to
//!   which every stored aggregate is complete. A restart replays the
//!   outcomes after the floor ([`super::strategies::replay_outcomes`]).
//!   An aggregate with a month of windowed evidence is kilobytes; writing
//!   it with every outcome cost more than everything else a write does.
//! - An instance's activity (last seen, records shared) changes with every
//!   write it makes; it is persisted the same lazy way, so a crash can set
//!   it back by up to [`CHECKPOINT_AGE`]. Registrations are written at once.
//! - Audit entries of calls that changed nothing (reads, refusals) are
//!   written without a flush of their own: they become durable with the
//!   next flush (the next write's, the writer's own within
//!   [`UNFLUSHED_MAX_AGE`], or sled's within half a second).
//!
//! When the store fails (a full disk, an I/O error), the batch is not
//! installed and every request in it is answered with the store's error
//! (UNAVAILABLE, naming the cause); readers keep the last acknowledged
//! state. The writer keeps going: each later batch (or, when idle, each
//! tick) first asks the engine to recover and repairs what the failure
//! left in doubt (see [`InDoubt`]), so writes resume on their own once the
//! disk does, without a restart.
//!
//! When the store stalls instead (a disk or network volume that stops
//! answering), nothing fails, so nothing would ever answer: a caller waits
//! at most the write timeout, then gets DEADLINE_EXCEEDED saying the write
//! may still be applied (the same request id makes the retry safe). Audit
//! entries queued meanwhile are bounded ([`MAX_DETACHED_WAITING`]) and
//! counted when dropped, and `stop` gives up after the timeout: everything
//! acknowledged was flushed before its acknowledgement.

use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::state::{State, Txn};
use crate::domain::model::StrategyKey;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::Changes;

/// How long an aggregate or an instance's activity may stay changed in
/// memory only.
pub const CHECKPOINT_AGE: Duration = Duration::from_secs(10);
/// Aggregates persisted per commit at most (bounds a commit's cost).
const CHECKPOINT_PER_COMMIT: usize = 64;
/// How often an idle writer wakes to persist aged aggregates.
const TICK: Duration = Duration::from_secs(1);
/// Audit entries that may wait for room in a full queue (a stalled store);
/// beyond this they are dropped and counted, not piled up without bound.
pub const MAX_DETACHED_WAITING: usize = 10_000;

/// Answers one request once its batch is durable (or failed).
type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// One request's work: stage changes in the transaction, return how to answer.
type Job = Box<dyn FnOnce(&mut Txn<'_>) -> Completion + Send>;

enum Message {
    /// `durable: false` for audit entries, which need no flush of their own.
    Job {
        job: Job,
        durable: bool,
    },
    /// Time passed: persist aged aggregates.
    Tick,
    Stop(oneshot::Sender<Result<()>>),
}

/// Handle to the writer thread.
pub struct Writer {
    queue: mpsc::Sender<Message>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// How long a caller waits for its write to be durable.
    timeout: Duration,
    /// Audit entries waiting for room in the queue…
    detached_waiting: Arc<AtomicUsize>,
    /// Whether a drop of one (too many waiting) was logged.
    detached_drop_logged: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer thread. `queue_depth` bounds waiting requests
    /// (senders wait when it is full); `max_batch` bounds one group commit;
    /// a caller waits at most `timeout` for its write to be durable.
    pub fn spawn(
        shared: Arc<Shared>,
        queue_depth: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let metrics = shared.metrics.clone();
        let (queue, rx) = mpsc::channel(queue_depth.max(1));
        let thread = thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || run(shared, rx, max_batch.max(1)))
            .map_err(|e| Error::Internal(format!("cannot start writer thread: {e}")))?;
        let ticks = queue.clone();
        thread::Builder::new()
            .name("hub-writer-tick".into())
            .spawn(move || {
                loop {
                    thread::sleep(TICK);
                    // Full means busy, and a busy writer checkpoints anyway.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = ticks.try_send(Message::Tick)
                    {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start writer tick thread: {e}")))?;
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(thread)),
            timeout,
            detached_waiting: Arc::new(AtomicUsize::new(0)),
            detached_drop_logged: AtomicBool::new(false),
            metrics,
        })
    }

    /// Runs `f` in the writer and resolves once its changes are durable.
    /// If `f` fails, nothing it staged is written.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |txn| match f(txn) {
            Ok(value) => Box::new(move |durable: Result<()>| {
                let _ = reply.send(durable.map(|()| value));
            }),
            Err(e) => {
                // Whatever it staged before failing is not written.
                txn.discard();
                Box::new(move |_| {
                    let _ = reply.send(Err(e));
                })
            }
        });
        let durable = async {
            self.queue
                .send(Message::Job { job, durable: true })
                .await
                .map_err(|_| shutting_down())?;
            // The reply is only dropped unanswered if the job panicked.
            answer
                .await
                .map_err(|_| Error::Internal("a write job panicked".into()))?
        };
        match tokio::time::timeout(self.timeout, durable).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "the store did not confirm the write within {} s (a stalled disk?); \
                 it may still be applied: send it again with the same request_id",
                self.timeout.as_secs_f64()
            ))),
        }
    }

    /// Queues `f` without waiting for it (audit entries): it joins the next
    /// group commit. If the queue is full, a task waits for room.
    pub fn write_detached<F>(&self, f: F)
    where
        F: FnOnce(&mut Txn<'_>) + Send + 'static,
    {
        let job: Job = Box::new(move |txn| {
            f(txn);
            Box::new(|_| {})
        });
        match self.queue.try_send(Message::Job {
            job,
            durable: false,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let waiting = self.detached_waiting.clone();
                if waiting.fetch_add(1, Ordering::Relaxed) >= MAX_DETACHED_WAITING {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.audit_dropped();
                    if !self.detached_drop_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            waiting = MAX_DETACHED_WAITING,
                            "the store is not keeping up: audit entries are being dropped \
                             (counted in learning_hub_audit_dropped_total)"
                        );
                    }
                    return;
                }
                let queue = self.queue.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = queue.send(message).await;
                        waiting.fetch_sub(1, Ordering::Relaxed);
                    });
                } else {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Finishes queued work, flushes, and stops the thread. Later writes
    /// fail with UNAVAILABLE. A stalled store is given the write timeout,
    /// then left behind (with an error): whatever was acknowledged was
    /// already durable.
    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let stopped = async {
            if self.queue.send(Message::Stop(tx)).await.is_err() {
                return None; // already stopped
            }
            Some(rx.await.map_err(|_| shutting_down()))
        };
        let flushed = match tokio::time::timeout(self.timeout, stopped).await {
            Ok(None) => return Ok(()),
            Ok(Some(flushed)) => flushed?,
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "the store did not finish its last flush within {} s; \
                     every acknowledged write was flushed before it was acknowledged",
                    self.timeout.as_secs_f64()
                )));
            }
        };
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        flushed
    }
}

fn shutting_down() -> Error {
    Error::Unavailable("hub is shutting down".into())
}

/// Records changed in memory and not yet persisted, oldest first.
struct Aging<K> {
    since: HashMap<K, Instant>,
    by_age: BTreeSet<(Instant, K)>,
}

impl<K> Default for Aging<K> {
    fn default() -> Self {
        Aging {
            since: HashMap::new(),
            by_age: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Aging<K> {
    /// Notes `key` as changed (if it is not already); true if it was not.
    fn mark(&mut self, key: &K, now: Instant) -> bool {
        if self.since.contains_key(key) {
            return false;
        }
        self.since.insert(key.clone(), now);
        self.by_age.insert((now, key.clone()));
        true
    }

    fn clear(&mut self, key: &K) {
        if let Some(since) = self.since.remove(key) {
            self.by_age.remove(&(since, key.clone()));
        }
    }

    /// Up to `max` keys changed before `cutoff` (all if `everything`),
    /// oldest first.
    fn due(&self, now: Instant, everything: bool) -> Vec<K> {
        let (cutoff, max) = if everything {
            (now, usize::MAX)
        } else {
            (
                now.checked_sub(CHECKPOINT_AGE).unwrap_or(now),
                CHECKPOINT_PER_COMMIT,
            )
        };
        self.by_age
            .iter()
            .take_while(|(since, _)| *since <= cutoff)
            .take(max)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// Aggregates changed in memory and not yet persisted, and what the floor
/// needs to know of them.
#[derive(Default)]
struct DirtyAggregates {
    aging: Aging<StrategyKey>,
    /// The `through_sequence` of each one's persisted version.
    persisted_through: HashMap<StrategyKey, u64>,
    /// For the floor: (persisted `through_sequence`, key) of the aggregates
    /// that lack outcomes (a retention roll-up changes an aggregate without
    /// adding any, and must not hold the floor back).
    by_floor: BTreeSet<(u64, StrategyKey)>,
}

impl DirtyAggregates {
    fn mark(
        &mut self,
        key: &StrategyKey,
        persisted_through: u64,
        newest_through: u64,
        now: Instant,
    ) {
        if self.aging.mark(key, now) {
            self.persisted_through
                .insert(key.clone(), persisted_through);
        }
        let through = self.persisted_through[key];
        if newest_through > through {
            self.by_floor.insert((through, key.clone()));
        }
    }

    fn clear(&mut self, key: &StrategyKey) {
        self.aging.clear(key);
        if let Some(through) = self.persisted_through.remove(key) {
            self.by_floor.remove(&(through, key.clone()));
        }
    }

    /// The floor once `persisting` are persisted: every outcome up to it is
    /// in the stored aggregates.
    fn floor_without(&self, persisting: &[StrategyKey], latest_outcome: u64) -> u64 {
        self.by_floor
            .iter()
            .find(|(_, k)| !persisting.contains(k))
            .map_or(latest_outcome, |(through, _)| *through)
    }
}

/// What the loop keeps between batches about lazily persisted records.
struct Checkpoints {
    aggregates: DirtyAggregates,
    /// Instances whose activity (last seen, records shared) changed.
    instances: Aging<String>,
    /// The floor last written.
    floor: u64,
}

/// What one commit persists lazily, to clear once it is durable.
struct Planned {
    aggregates: Vec<StrategyKey>,
    instances: Vec<String>,
}

impl Checkpoints {
    /// Notes what `batch` changes lazily and adds to it the records due for
    /// persisting (all of them if `everything`) with the new floor.
    fn plan(&mut self, state: &State, batch: &mut Changes, everything: bool) -> Planned {
        let now = Instant::now();
        for (key, newest) in &batch.strategies {
            // Unless already dirty, the version in memory is the stored one.
            let persisted_through = state.strategies.get(key).map_or(0, |r| r.through_sequence);
            self.aggregates
                .mark(key, persisted_through, newest.through_sequence, now);
        }
        for id in batch.instances.keys() {
            if batch.instance_writes.contains(id) {
                // Written in this commit, in its newest version.
                self.instances.clear(id);
            } else {
                self.instances.mark(id, now);
            }
        }
        let aggregates = self.aggregates.aging.due(now, everything);
        for key in &aggregates {
            let newest = batch
                .strategies
                .get(key)
                .or_else(|| state.strategies.get(key));
            batch.checkpoint.extend(newest.cloned());
        }
        let instances = self.instances.due(now, everything);
        for id in &instances {
            let newest = batch.instances.get(id).or_else(|| state.instances.get(id));
            batch.instance_checkpoint.extend(newest.cloned());
        }
        let latest = batch.outcome_sequence.unwrap_or(state.outcome_sequence);
        let floor = self.aggregates.floor_without(&aggregates, latest);
        if floor != self.floor {
            batch.strategy_floor = Some(floor);
        }
        Planned {
            aggregates,
            instances,
        }
    }

    fn persisted(&mut self, planned: &Planned, batch: &Changes) {
        for key in &planned.aggregates {
            self.aggregates.clear(key);
        }
        for id in &planned.instances {
            self.instances.clear(id);
        }
        if let Some(floor) = batch.strategy_floor {
            self.floor = floor;
        }
    }
}

/// How long writes may stay applied but not flushed (audit entries, idle
/// checkpoints) before the writer flushes them on its own.
const UNFLUSHED_MAX_AGE: Duration = Duration::from_secs(1);
/// While commits keep failing, how often the writer logs that again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the store may hold that differs from what the hub has installed.
///
/// Writes that need no flush of their own (audit entries, idle
/// checkpoints) are installed once applied; a failed commit is not
/// installed at all, though its writes may have reached the engine (a
/// flush that failed after the apply succeeded). Until the next successful
/// flush both are in doubt: the failed ones may surface after a restart,
/// and an engine that recovers from an I/O error by reopening (sled) drops
/// the unflushed ones. So after a failure, the next commit first rewrites
/// every record written since the last flush as the state has it — or
/// erases it — and flushes ([`Store::commit_repairing`]).
///
/// [`Store::commit_repairing`]: crate::store::Store::commit_repairing
#[derive(Default)]
struct InDoubt {
    /// Every record written since the last successful flush.
    since_flush: Changes,
    /// When the oldest of them was written.
    oldest: Option<Instant>,
    /// A commit failed since the last successful flush.
    repair: bool,
    /// The current run of failed commits, for the log.
    failing: Option<FailureRun>,
}

struct FailureRun {
    since: Instant,
    commits: u64,
    requests: u64,
    last_logged: Instant,
}

impl InDoubt {
    fn aged(&self, now: Instant) -> bool {
        self.oldest
            .is_some_and(|t| now.duration_since(t) >= UNFLUSHED_MAX_AGE)
    }

    /// `batch` was applied without a flush.
    fn applied(&mut self, batch: Changes, now: Instant) {
        self.since_flush.absorb(batch);
        self.oldest.get_or_insert(now);
    }

    /// Everything written so far is durable.
    fn flushed(&mut self) {
        if let Some(run) = self.failing.take() {
            tracing::warn!(
                failed_commits = run.commits,
                failed_requests = run.requests,
                seconds = run.since.elapsed().as_secs_f64(),
                "store writable again; writes resumed"
            );
        }
        *self = InDoubt::default();
    }

    /// The commit of `batch` failed with `error`.
    fn failed(&mut self, batch: Changes, requests: usize, error: &Error, now: Instant) {
        self.applied(batch, now);
        // Only which records were touched matters for the repair. Failed
        // batches reuse the same sequences and re-plan the same
        // checkpoints, so without this a long outage would grow the lists
        // by every refused request.
        let changes = &mut self.since_flush;
        changes.outcomes.sort_by_key(|o| o.sequence);
        changes.outcomes.dedup_by_key(|o| o.sequence);
        changes.audit.sort_by_key(|e| e.sequence);
        changes.audit.dedup_by_key(|e| e.sequence);
        changes.checkpoint.sort_by_key(|r| r.key());
        changes.checkpoint.dedup_by_key(|r| r.key());
        changes
            .instance_checkpoint
            .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        changes
            .instance_checkpoint
            .dedup_by(|a, b| a.instance_id == b.instance_id);
        self.repair = true;
        match &mut self.failing {
            None => {
                tracing::error!(%error, requests, "group commit failed; writes are refused until the store recovers");
                self.failing = Some(FailureRun {
                    since: now,
                    commits: 1,
                    requests: requests as u64,
                    last_logged: now,
                });
            }
            Some(run) => {
                run.commits += 1;
                run.requests += requests as u64;
                if now.duration_since(run.last_logged) >= FAILURE_LOG_EVERY {
                    run.last_logged = now;
                    tracing::error!(
                        %error,
                        failed_commits = run.commits,
                        failed_requests = run.requests,
                        seconds = now.duration_since(run.since).as_secs_f64(),
                        "store still failing"
                    );
                }
            }
        }
    }
}

fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Message>, max_batch: usize) {
    let mut checkpoints = Checkpoints {
        aggregates: DirtyAggregates::default(),
        instances: Aging::default(),
        floor: shared.strategy_floor.load(Ordering::SeqCst),
    };
    let mut in_doubt = InDoubt::default();
    let mut stop: Option<oneshot::Sender<Result<()>>> = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = Vec::new();
        let mut durable = false;
        let mut take = |message: Message, jobs: &mut Vec<Job>| match message {
            Message::Job { job, durable: d } => {
                jobs.push(job);
                durable |= d;
                None
            }
            Message::Tick => None,
            Message::Stop(tx) => Some(tx),
        };
        stop = take(first, &mut jobs);
        while stop.is_none() && jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(message) => stop = take(message, &mut jobs),
                Err(_) => break,
            }
        }
        // A failure was answered to the batch's callers and logged.
        let _ = commit_batch(
            &shared,
            jobs,
            durable,
            &mut checkpoints,
            &mut in_doubt,
            false,
        );
    }
    rx.close();
    // Requests that raced with the stop get a clear answer rather than a
    // dropped channel.
    let nothing_staged = Changes::default();
    while let Ok(message) = rx.try_recv() {
        if let Message::Job { job, .. } = message {
            let state = shared.read_state();
            let mut txn = Txn::new(&state, &nothing_staged, shared.clock.now());
            (job(&mut txn))(Err(shutting_down()));
        }
    }
    // Persist every aggregate, so the next start has nothing to replay. If
    // that fails the next start replays the outcome log instead; the
    // caller of `stop` still hears of it.
    let last = commit_batch(
        &shared,
        Vec::new(),
        true,
        &mut checkpoints,
        &mut in_doubt,
        true,
    );
    let flushed = last.and_then(|()| shared.store.flush());
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "final checkpoint or flush failed; the next start replays the outcome log");
    }
    if let Some(tx) = stop {
        let _ = tx.send(flushed);
    }
}

/// Runs `jobs` as one group commit, with aged aggregates (all of them if
/// `everything`), on top of a repair if an earlier commit failed. Flushes
/// unless nothing in it needs to be durable before its answer (`durable`
/// false: audit entries, checkpoints) and nothing unflushed has waited
/// [`UNFLUSHED_MAX_AGE`]. Returns what every job was answered.
fn commit_batch(
    shared: &Shared,
    jobs: Vec<Job>,
    durable: bool,
    checkpoints: &mut Checkpoints,
    in_doubt: &mut InDoubt,
    everything: bool,
) -> Result<()> {
    let mut batch = Changes::default();
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let previous_insight_sequence;
    let checkpointed;
    let restore;
    {
        let state = shared.read_state();
        previous_insight_sequence = state.insight_sequence;
        for job in jobs {
            let mut txn = Txn::new(&state, &batch, shared.clock.now());
            // A panicking job must not take the writer (and with it every
            // later write) down; its own staged changes are discarded.
            match catch_unwind(AssertUnwindSafe(|| job(&mut txn))) {
                Ok(completion) => {
                    batch.absorb(txn.into_changes());
                    completions.push(completion);
                }
                Err(_) => tracing::error!("a write job panicked; its changes were discarded"),
            }
        }
        checkpointed = checkpoints.plan(&state, &mut batch, everything);
        restore = in_doubt
            .repair
            .then(|| state.restore(&in_doubt.since_flush, checkpoints.floor));
    }

    let now = Instant::now();
    let nothing_to_write = batch.is_empty() && restore.is_none() && !in_doubt.aged(now);
    let flush = !nothing_to_write && (durable || restore.is_some() || in_doubt.aged(now));
    let written = if nothing_to_write {
        Ok(())
    } else {
        (|| -> Result<()> {
            match &restore {
                Some(restore) => {
                    shared.store.recover()?;
                    shared
                        .store
                        .commit_repairing(&in_doubt.since_flush, restore, &batch)?;
                }
                None if !batch.is_empty() => shared.store.commit(&batch)?,
                None => {}
            }
            if flush {
                shared.store.flush()?;
            }
            Ok(())
        })()
    };
    if !nothing_to_write {
        shared
            .metrics
            .group_commit(completions.len(), now.elapsed(), written.is_ok());
    }
    match &written {
        Ok(()) => {
            checkpoints.persisted(&checkpointed, &batch);
            shared
                .strategy_floor
                .store(checkpoints.floor, Ordering::SeqCst);
            shared.write_state().apply(&batch);
            for insight in batch.insights.values() {
                if insight.sequence > previous_insight_sequence {
                    shared.bus.publish(insight.clone());
                }
            }
            if flush {
                in_doubt.flushed();
            } else if !batch.is_empty() {
                in_doubt.applied(batch, now);
            }
        }
        Err(e) => in_doubt.failed(batch, completions.len(), e, now),
    }
    for completion in completions {
        completion(written.clone());
    }
    written
}
