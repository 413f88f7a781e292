//! The single writer: every change to the hub's state goes through one
//! dedicated thread, which folds commands in a total order and turns
//! concurrent requests into group commits.
//!
//! The loop takes every message waiting in its queue (up to a batch
//! limit), folds each command into a working copy of the state at the next
//! log position ([`crate::domain::fold`]: a command that fails is answered
//! with its error and not logged), appends the batch's commands to the log
//! at once, flushes once, then publishes the new state for readers (a
//! snapshot: readers never wait for the writer, nor it for them), publishes
//! new insights, and only then answers every request. One fsync thus covers
//! many acknowledgements, and no reader or subscriber ever sees a change
//! that could still be lost. Store calls block and stay on this thread.
//!
//! What the modules own:
//!
//! - [`batch`]: one group commit — fold, append, flush, install, answer;
//! - [`checkpoints`]: when the state is checkpointed and the log trimmed;
//! - [`checkpointer`]: the thread that writes checkpoints beside the
//!   writer (where the store keeps its log apart from its checkpoints), so
//!   that a large one does not hold up the writes queued behind it;
//! - [`repair`]: what a failed commit leaves in doubt and how the next one
//!   puts it right, so writes resume on their own once the disk does;
//! - [`backpressure`]: the bound on audit entries queued while the store
//!   stalls.
//!
//! Audit entries need no flush of their own: they are folded as one
//! `Audit` command per batch and become durable with the next flush (a
//! write's, the writer's own within a second, or a checkpoint's). When the
//! store stalls, a caller waits at most the write timeout, then gets
//! DEADLINE_EXCEEDED saying the write may still be applied (the same
//! request id makes the retry safe), and `stop` gives up after the timeout:
//! everything acknowledged was flushed before its acknowledgement.

mod backpressure;
mod batch;
mod checkpointer;
mod checkpoints;
mod repair;
mod replica;

use std::{
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

pub use backpressure::MAX_DETACHED_WAITING;
pub use checkpoints::{CHECKPOINT_EVERY, CHECKPOINT_ROWS};

use super::Shared;
use crate::domain::command::Command;
use crate::domain::fold::Answer;
use crate::domain::model::{AuditEntry, UnixMillis};
use crate::domain::state::State;
use crate::error::{Error, Result};
use backpressure::{Backpressure, Verdict};

/// How often an idle writer wakes to checkpoint and flush.
const TICK: Duration = Duration::from_secs(1);

/// Trims of the outcome and audit logs, decided by a retention sweep.
#[derive(Debug, Clone, Copy)]
pub struct TrimRows {
    /// Rows stamped before these go.
    pub outcomes_before: UnixMillis,
    pub audit_before: UnixMillis,
    pub now: UnixMillis,
}

enum Message {
    Write {
        command: Command,
        reply: oneshot::Sender<Result<Answer>>,
    },
    Audit(AuditEntry),
    Trim {
        trim: TrimRows,
        reply: oneshot::Sender<Result<(usize, usize)>>,
    },
    /// Time passed: checkpoint or flush if due.
    Tick,
    Stop(oneshot::Sender<Result<()>>),
}

/// Handle to the writer thread.
pub struct Writer {
    queue: mpsc::Sender<Message>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// A replica's watch of the shared log's head (wakes the writer).
    _watch: Option<crate::store::WatchGuard>,
    /// How long a caller waits for its write to be durable.
    timeout: Duration,
    pressure: Arc<Backpressure>,
    shared: Arc<Shared>,
}

/// Where the writer starts.
pub struct Start {
    /// The state to fold onto (the log's tail already folded).
    pub state: State,
    /// What the store's newest checkpoint holds.
    pub stored: State,
    /// Checkpoint at once (a tail was folded, or the store is legacy).
    pub checkpoint_now: bool,
}

impl Writer {
    /// Starts the writer thread. `queue_depth` bounds waiting requests
    /// (senders wait when it is full); `max_batch` bounds one group commit;
    /// a caller waits at most `timeout` for its write to be durable.
    pub fn spawn(
        shared: Arc<Shared>,
        start: Start,
        queue_depth: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let (queue, rx) = mpsc::channel(queue_depth.max(1));
        let loop_shared = shared.clone();
        let replica = shared.replica.is_some();
        let thread = thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || {
                if replica {
                    replica::run(loop_shared, start, rx, max_batch.max(1), timeout)
                } else {
                    batch::run(loop_shared, start, rx, max_batch.max(1))
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start writer thread: {e}")))?;
        // A replica reads the log when another appends to it.
        let watch = match &shared.replica {
            Some(replica) => {
                let wake = queue.clone();
                let notes = shared.clone();
                Some(replica.log.watch_head(Box::new(move |head| {
                    if let Some(replica) = &notes.replica {
                        replica.note_head(head);
                    }
                    let _ = wake.try_send(Message::Tick);
                }))?)
            }
            None => None,
        };
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
            _watch: watch,
            timeout,
            pressure: Arc::default(),
            shared,
        })
    }

    /// Folds `command` in the writer and resolves with its answer once it
    /// is durable. A command that fails changes nothing.
    pub async fn submit(&self, command: Command) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        let durable = async {
            self.queue
                .send(Message::Write { command, reply })
                .await
                .map_err(|_| shutting_down())?;
            // The reply is only dropped unanswered if the writer died.
            answer
                .await
                .map_err(|_| Error::Internal("the writer stopped".into()))?
        };
        self.waited(durable).await
    }

    /// Asks the writer to look at the log now (a replica reads what other
    /// replicas appended).
    pub fn wake(&self) {
        let _ = self.queue.try_send(Message::Tick);
    }

    /// Trims the outcome and audit logs (retention); how many of each.
    pub async fn trim_rows(&self, trim: TrimRows) -> Result<(usize, usize)> {
        let (reply, answer) = oneshot::channel();
        let done = async {
            self.queue
                .send(Message::Trim { trim, reply })
                .await
                .map_err(|_| shutting_down())?;
            answer.await.map_err(|_| shutting_down())?
        };
        self.waited(done).await
    }

    async fn waited<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "the store did not confirm the write within {} s (a stalled disk?); \
                 it may still be applied: send it again with the same request_id",
                self.timeout.as_secs_f64()
            ))),
        }
    }

    /// Queues an audit entry without waiting: it joins the next group
    /// commit. If the queue is full, a task waits for room (see
    /// [`backpressure`]).
    pub fn audit(&self, entry: AuditEntry) {
        match self.queue.try_send(Message::Audit(entry)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => match self.pressure.admit() {
                Verdict::Drop { log } => {
                    self.shared.metrics.audit_dropped();
                    if log {
                        tracing::error!(
                            waiting = MAX_DETACHED_WAITING,
                            "the store is not keeping up: audit entries are being dropped \
                             (counted in learning_hub_audit_dropped_total)"
                        );
                    }
                }
                Verdict::Wait => {
                    let queue = self.queue.clone();
                    let pressure = self.pressure.clone();
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            let _ = queue.send(message).await;
                            pressure.done();
                        });
                    } else {
                        pressure.done();
                    }
                }
            },
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Finishes queued work, checkpoints, flushes, and stops the thread.
    /// Later writes fail with UNAVAILABLE. A stalled store is given the
    /// write timeout, then left behind (with an error): whatever was
    /// acknowledged was already durable.
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
