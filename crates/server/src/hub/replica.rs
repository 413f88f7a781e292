//! A hub as one of several replicas of a shared log (PostgreSQL).
//!
//! Every replica appends its commands to the one log and folds the whole
//! log, its own commands and everyone else's, in log order: the same
//! commands in the same order give the same state and the same answers on
//! every replica (the writer's replica loop, `writer::replica`). Beside
//! the log, replicas agree through the database on two things:
//!
//! - **the jobs lease**: one replica at a time runs the periodic jobs
//!   (insight generation, retention) and writes checkpoints. The lease is a
//!   row with an epoch, renewed on the database's clock; this replica
//!   counts it as held until a little before it would expire as seen from
//!   when the renewal was *sent*. A job's output carries the epoch and the
//!   period it ran for, and the fold refuses output from an older epoch or
//!   for a period already run ([`crate::domain::command::JobStamp`]), so a
//!   holder that was deposed without noticing does no harm.
//! - **the checkpoint**: written by the lease holder, fenced on the
//!   position of the checkpoint it was diffed from; every replica starts
//!   from it plus the log after it, read whole
//!   ([`load_whole`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};

use super::Hub;
use crate::domain::command::JobStamp;
use crate::error::{Error, Result};
use crate::store::SharedLog;

/// The lease the periodic jobs and checkpoints run under.
pub const JOBS_LEASE: &str = "jobs";

/// How a replica takes part.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// This replica's name in logs and in the lease (say `host:port`).
    pub name: String,
    /// How long the jobs lease lasts unless renewed (renewed every third).
    pub lease: Duration,
    /// How long the replica may stay behind the log's head before it
    /// reports NOT_SERVING (it folds what others append within
    /// milliseconds; more means it cannot read the log).
    pub max_lag: Duration,
}

impl ReplicaSettings {
    pub fn new(name: impl Into<String>) -> Self {
        ReplicaSettings {
            name: name.into(),
            lease: Duration::from_secs(10),
            max_lag: Duration::from_secs(5),
        }
    }
}

/// What a replica hub keeps besides the state.
pub(crate) struct Replica {
    pub log: Arc<dyn SharedLog>,
    pub settings: ReplicaSettings,
    /// This process in the lease: the name and a random run id, so a
    /// restarted replica is a new holder (with a new epoch).
    pub holder: String,
    /// The jobs lease while held: its epoch and when to stop counting on
    /// it (local monotonic time).
    lease: Mutex<Option<(u64, Instant)>>,
    /// The newest head the log announced (appends by any replica).
    pub known_head: AtomicU64,
}

impl Replica {
    pub fn new(log: Arc<dyn SharedLog>, settings: ReplicaSettings) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Replica {
            holder: format!("{}#{}", settings.name, &run[..8]),
            log,
            settings,
            lease: Mutex::new(None),
            known_head: AtomicU64::new(0),
        }
    }

    /// The epoch of the jobs lease while this replica holds it.
    pub fn lease_epoch(&self) -> Option<u64> {
        let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        lease
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(epoch, _)| epoch)
    }

    /// Takes or renews the lease (blocking); whether it is held.
    fn renew(&self) -> Result<Option<u64>> {
        let sent = Instant::now();
        let ttl = self.settings.lease;
        let taken = self.log.acquire_lease(JOBS_LEASE, &self.holder, ttl)?;
        let before = self.lease_epoch();
        // Counted from when the renewal was sent, with a margin for the
        // clocks' drift: the database may start its count later, never
        // earlier.
        let until = sent + ttl.mul_f64(0.9);
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = taken.map(|epoch| (epoch, until));
        if taken != before {
            match taken {
                Some(epoch) => tracing::info!(holder = %self.holder, epoch, "holds the jobs lease"),
                None if before.is_some() => {
                    tracing::warn!(holder = %self.holder, "lost the jobs lease")
                }
                None => {}
            }
        }
        Ok(taken)
    }

    fn drop_lease(&self) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn note_head(&self, head: u64) {
        if head != u64::MAX {
            self.known_head.fetch_max(head, Ordering::SeqCst);
        }
    }
}

/// Runs `load` until the shared log's checkpoint generation is the same
/// before and after it: then no checkpoint was written while it read, and
/// what it read is one checkpoint plus the log after it.
pub fn load_whole<T>(log: &dyn SharedLog, mut load: impl FnMut() -> Result<T>) -> Result<T> {
    for _ in 0..10 {
        let before = log.checkpoint_generation()?;
        let loaded = load()?;
        if log.checkpoint_generation()? == before {
            return Ok(loaded);
        }
        tracing::debug!("a checkpoint was written while loading; loading again");
    }
    Err(Error::Unavailable(
        "checkpoints kept being written while this replica loaded: try again".into(),
    ))
}

/// A hub's place in its storage (Admin.GetReplicaStatus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub is_replica: bool,
    /// The replica's lease holder name (empty: a hub of its own).
    pub replica: String,
    /// Where the state is kept (no credentials).
    pub storage: String,
    pub log_position: u64,
    /// The newest head the log announced.
    pub log_head: u64,
    /// Hex of [`crate::domain::state::State::digest`] at `log_position`.
    pub state_digest: String,
    /// The jobs lease's epoch while this replica holds it.
    pub lease_epoch: Option<u64>,
    /// Why writes are not served, if they are not.
    pub not_serving: Option<String>,
}

impl Hub {
    /// For a replica: keeps the jobs lease taken (or tries to take it)
    /// until the hub shuts down, then gives it up so another replica takes
    /// over at once. `None` for a hub of its own.
    pub fn spawn_lease(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        self.shared.replica.as_ref()?;
        let hub = self.clone();
        let mut shutdown = self.shutdown_signal();
        Some(tokio::spawn(async move {
            let Some(replica) = hub.shared.replica.as_ref() else {
                return;
            };
            let ttl = replica.settings.lease;
            loop {
                let shared = hub.shared.clone();
                let renewed = tokio::task::spawn_blocking(move || {
                    shared.replica.as_ref().map(Replica::renew)
                })
                .await;
                let held = match renewed {
                    Ok(Some(Ok(held))) => held.is_some(),
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "cannot renew the jobs lease");
                        replica.lease_epoch().is_some()
                    }
                    _ => false,
                };
                // A holder renews every third of the lease; the others look
                // often enough to take over soon after it expires.
                let next = if held {
                    ttl / 3
                } else {
                    (ttl / 3).min(Duration::from_millis(500))
                };
                tokio::select! {
                    _ = tokio::time::sleep(next) => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                    }
                }
            }
            replica.drop_lease();
            let shared = hub.shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(replica) = shared.replica.as_ref() {
                    let _ = replica.log.release_lease(JOBS_LEASE, &replica.holder);
                }
            })
            .await;
        }))
    }

    /// Whether this hub runs the periodic job `job` now, and the stamp its
    /// output carries: `Some(None)` on a hub of its own (it always runs
    /// them), `Some(Some(stamp))` on the replica holding the jobs lease,
    /// `None` on the others. The period is the hub's time divided by
    /// `every`.
    pub fn job_turn(&self, job: &str, every: Duration) -> Option<Option<JobStamp>> {
        let Some(replica) = &self.shared.replica else {
            return Some(None);
        };
        let epoch = replica.lease_epoch()?;
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
        Some(Some(JobStamp {
            job: job.to_string(),
            epoch,
            period: u64::try_from(self.now() / every).unwrap_or(0),
        }))
    }

    /// Where this hub is in its storage, with a digest of its state (which
    /// reads the whole state, off the async workers).
    pub async fn replica_report(&self) -> Result<ReplicaReport> {
        let state = self.state();
        // The digest and the position of one snapshot.
        let position = state.position;
        let state_digest =
            tokio::task::spawn_blocking(move || crate::domain::state::digest_hex(&state.digest()));
        let state_digest = state_digest
            .await
            .map_err(|e| Error::Internal(format!("digest failed: {e}")))?;
        Ok(ReplicaReport {
            state_digest,
            ..self.replica_summary(position)
        })
    }

    /// [`Hub::replica_report`] without the digest (cheap: what the
    /// dashboard polls), for the state at `position`.
    pub fn replica_summary(&self, position: u64) -> ReplicaReport {
        let state_digest = String::new();
        let not_serving = self.shared.health.borrow().clone();
        match &self.shared.replica {
            Some(replica) => ReplicaReport {
                is_replica: true,
                replica: replica.holder.clone(),
                storage: replica.log.describe(),
                log_position: position,
                log_head: replica.known_head.load(Ordering::SeqCst).max(position),
                state_digest,
                lease_epoch: replica.lease_epoch(),
                not_serving,
            },
            None => ReplicaReport {
                is_replica: false,
                replica: String::new(),
                storage: "sled".into(),
                log_position: position,
                log_head: position,
                state_digest,
                lease_epoch: None,
                not_serving,
            },
        }
    }

    /// Why the hub cannot serve writes now (`None`: it can); changes as
    /// that changes. A replica that cannot reach the shared log, or has
    /// fallen behind it, says so here (health turns NOT_SERVING).
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        self.shared.health.subscribe()
    }

    /// On a replica, `tell` hears of every call another replica audited, as
    /// the shared log brings its audit entries (the rate limiter charges
    /// them). Set once; later calls are ignored.
    pub fn on_remote_calls(&self, tell: super::RemoteCalls) {
        let _ = self.shared.remote_calls.set(tell);
    }

    /// Asks the writer to read the log now (a replica folds what others
    /// appended; it also does so when told, and every second).
    pub fn wake(&self) {
        self.writer.wake();
    }

    /// The log position of the state readers see now.
    pub fn position(&self) -> u64 {
        *self.shared.position.borrow()
    }

    /// The log position of the state readers see now, and a receiver that
    /// changes with it.
    pub fn log_position(&self) -> watch::Receiver<u64> {
        self.shared.position.subscribe()
    }

    /// Waits until the state readers see has folded the log up to
    /// `position`, at most `timeout`: whether it did. A caller that wrote
    /// through another replica reads its own write this way.
    pub async fn wait_for_position(&self, position: u64, timeout: Duration) -> bool {
        let mut seen = self.shared.position.subscribe();
        if *seen.borrow() >= position {
            return true;
        }
        // Not there yet: make sure the writer looks at the log now.
        self.writer.wake();
        tokio::time::timeout(timeout, seen.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
