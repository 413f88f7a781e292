//! The thread that writes checkpoints beside the writer.
//!
//! A checkpoint of a busy hub writes tens of thousands of rows and records:
//! on the writer's own thread every request queued behind it waited for it
//! (`bench`, one core: checkpoints of 50,000 rows took 0.4–0.7 s, and the
//! writes' p99.9 was that long). So the writer hands the checkpointer two
//! versions of the state — what the store holds and what to write, which
//! share all unchanged structure, so handing them over copies nothing —
//! and goes on folding and committing while they are written. It takes the
//! result at its next batch or tick: only then do the written rows leave
//! memory and the written state become the next diff base. One checkpoint
//! is in flight at a time; the log it covers is trimmed here too, once the
//! checkpoint is durable.
//!
//! The writer still decides everything that is written: the checkpointer
//! writes what it is handed, and the writer waits for it before whatever
//! must not run beside a checkpoint (repairing the log's tail after a
//! failure, trimming rows, a synchronous checkpoint, shutdown).
//!
//! Only stores that keep their log apart from their checkpoints get one
//! ([`Backend::checkpoints_beside_appends`](crate::store::Backend::checkpoints_beside_appends):
//! on disk the log is in files and checkpoints in sled). A first version
//! wrote checkpoints beside a writer that appended to the same sled
//! database, and in 2 of 3 bench runs sled stopped completing flushes for
//! good (the writer in `flush`, sled's I/O threads in `write_to_log`), so
//! two threads never write one sled database here.
//!
//! The thread runs at the writer's priority. At a lower one (nice 10) it
//! looked better in 8-second benches and was not: on a core saturated by
//! writes it got a tenth of the time, each checkpoint took longer than the
//! rows it covered took to arrive (5.6 s, then 13.5 s, then 21.6 s for
//! 400,000 rows), and memory grew without end. Should it still fall behind,
//! the writer waits for it once rows pass
//! [`ROWS_BEHIND`](super::checkpoints::ROWS_BEHIND).

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::domain::state::State;
use crate::error::{Error, Result};
use crate::hub::Shared;

/// A checkpoint to write: the diff from `stored` to `state`.
struct Job {
    stored: State,
    state: State,
}

/// A checkpoint the thread finished (or failed).
pub struct Finished {
    /// What was written (rows included).
    pub state: State,
    pub result: Result<()>,
    pub took: Duration,
}

/// Handle to the checkpoint thread, owned by the writer.
pub struct Checkpointer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Finished>,
    thread: Option<thread::JoinHandle<()>>,
    in_flight: bool,
}

impl Checkpointer {
    pub fn spawn(shared: Arc<Shared>) -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("hub-checkpoint".into())
            .spawn(move || {
                for job in inbox {
                    let started = Instant::now();
                    let result = write(&shared, &job);
                    let finished = Finished {
                        state: job.state,
                        result,
                        took: started.elapsed(),
                    };
                    if outbox.send(finished).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a checkpoint is being written.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Starts writing the diff from `stored` to `state`. Only one at a
    /// time: the caller checks [`Checkpointer::busy`] first.
    pub fn start(&mut self, stored: State, state: State) -> Result<()> {
        debug_assert!(!self.in_flight, "one checkpoint at a time");
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job { stored, state }).is_ok());
        if !sent {
            return Err(Error::Internal("the checkpoint thread stopped".into()));
        }
        self.in_flight = true;
        Ok(())
    }

    /// The checkpoint in flight, if it has finished.
    pub fn poll(&mut self) -> Option<Finished> {
        if !self.in_flight {
            return None;
        }
        self.take(self.done.try_recv().ok())
    }

    /// Waits for the checkpoint in flight, if any.
    pub fn wait(&mut self) -> Option<Finished> {
        if !self.in_flight {
            return None;
        }
        self.take(self.done.recv().ok())
    }

    fn take(&mut self, finished: Option<Finished>) -> Option<Finished> {
        match finished {
            Some(finished) => {
                self.in_flight = false;
                Some(finished)
            }
            // Still writing (poll) — or the thread died (wait), which a
            // panic in a store call would do: the writer then goes on and
            // the next checkpoint fails to start, loudly.
            None => {
                if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    self.in_flight = false;
                }
                None
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes one checkpoint, then trims the log it covers (a trim that fails
/// is only logged: the next checkpoint trims again).
fn write(shared: &Shared, job: &Job) -> Result<()> {
    shared.store.checkpoint(&job.stored, &job.state)?;
    if let Err(e) = shared.store.trim_log(job.state.position.saturating_add(1)) {
        tracing::warn!(error = %e, "cannot trim the command log; the next checkpoint tries again");
    }
    Ok(())
}
