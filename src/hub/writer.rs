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

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex},
    thread,
};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::state::Txn;
use crate::error::{Error, Result};

/// Answers one request once its batch is durable (or failed).
type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// One request's work: stage changes in the transaction, return how to answer.
type Job = Box<dyn FnOnce(&mut Txn<'_>) -> Completion + Send>;

enum Message {
    Job(Job),
    Stop(oneshot::Sender<Result<()>>),
}

/// Handle to the writer thread.
pub struct Writer {
    queue: mpsc::Sender<Message>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread. `queue_depth` bounds waiting requests
    /// (senders wait when it is full); `max_batch` bounds one group commit.
    pub fn spawn(shared: Arc<Shared>, queue_depth: usize, max_batch: usize) -> Result<Self> {
        let (queue, rx) = mpsc::channel(queue_depth.max(1));
        let thread = thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || run(shared, rx, max_batch.max(1)))
            .map_err(|e| Error::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(thread)),
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
            Err(e) => Box::new(move |_| {
                let _ = reply.send(Err(e));
            }),
        });
        self.queue
            .send(Message::Job(job))
            .await
            .map_err(|_| shutting_down())?;
        // The reply is only dropped unanswered if the job panicked.
        answer
            .await
            .map_err(|_| Error::Internal("a write job panicked".into()))?
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
        match self.queue.try_send(Message::Job(job)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let queue = self.queue.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = queue.send(message).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Finishes queued work, flushes, and stops the thread. Later writes
    /// fail with UNAVAILABLE.
    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Stop(tx)).await.is_err() {
            return Ok(()); // already stopped
        }
        let flushed = rx.await.map_err(|_| shutting_down())?;
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

fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Message>, max_batch: usize) {
    let mut stop: Option<oneshot::Sender<Result<()>>> = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = Vec::new();
        match first {
            Message::Job(job) => jobs.push(job),
            Message::Stop(tx) => stop = Some(tx),
        }
        while stop.is_none() && jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(Message::Job(job)) => jobs.push(job),
                Ok(Message::Stop(tx)) => stop = Some(tx),
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            commit_batch(&shared, jobs);
        }
    }
    rx.close();
    // Requests that raced with the stop get a clear answer rather than a
    // dropped channel.
    let nothing_staged = crate::store::Changes::default();
    while let Ok(Message::Job(job)) = rx.try_recv() {
        let state = shared.read_state();
        let mut txn = Txn::new(&state, &nothing_staged, shared.clock.now());
        (job(&mut txn))(Err(shutting_down()));
    }
    let flushed = shared.store.flush();
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "final flush failed");
    }
    if let Some(tx) = stop {
        let _ = tx.send(flushed);
    }
}

fn commit_batch(shared: &Shared, jobs: Vec<Job>) {
    let mut batch = crate::store::Changes::default();
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let previous_insight_sequence;
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
    }

    let durable = if batch.is_empty() {
        Ok(())
    } else {
        shared
            .store
            .commit(&batch)
            .and_then(|()| shared.store.flush())
    };
    match &durable {
        Ok(()) => {
            shared.write_state().apply(&batch);
            for insight in batch.insights.values() {
                if insight.sequence > previous_insight_sequence {
                    shared.bus.publish(insight.clone());
                }
            }
        }
        Err(e) => tracing::error!(error = %e, requests = completions.len(), "group commit failed"),
    }
    for completion in completions {
        completion(durable.clone());
    }
}
