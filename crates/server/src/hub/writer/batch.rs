//! The writer's loop and one group commit.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};

use super::checkpointer::{Checkpointer, Finished};
use super::checkpoints::Checkpoints;
use super::repair::Pending;
use super::{Message, Start, TrimRows, shutting_down};
use crate::domain::command::{Action, Command, LogEntry};
use crate::domain::fold::{Answer, fold_in_place};
use crate::domain::model::AuditEntry;
use crate::domain::state::State;
use crate::error::{Error, Result};
use crate::hub::Shared;
use crate::store::RowLog;

type Reply = oneshot::Sender<Result<Answer>>;
type TrimReply = oneshot::Sender<Result<(usize, usize)>>;

/// What the loop keeps between batches.
struct Writer {
    shared: Arc<Shared>,
    /// The installed state (what readers see, but for rows the last
    /// checkpoint moved to the store).
    state: State,
    checkpoints: Checkpoints,
    /// Writes checkpoints beside this thread (`None`: it could not start,
    /// and checkpoints are written here).
    checkpointer: Option<Checkpointer>,
    pending: Pending,
}

/// One batch's messages, sorted.
#[derive(Default)]
pub(super) struct Batch {
    pub writes: Vec<(Command, Reply)>,
    pub audit: Vec<AuditEntry>,
    pub trims: Vec<(TrimRows, TrimReply)>,
    pub stop: Option<oneshot::Sender<Result<()>>>,
}

impl Batch {
    pub fn take(&mut self, message: Message) {
        match message {
            Message::Write { command, reply } => self.writes.push((command, reply)),
            Message::Audit(entry) => self.audit.push(entry),
            Message::Trim { trim, reply } => self.trims.push((trim, reply)),
            Message::Tick => {}
            Message::Stop(tx) => self.stop = Some(tx),
        }
    }

    pub fn len(&self) -> usize {
        self.writes.len() + self.audit.len() + self.trims.len()
    }

    /// Waits for a message, then takes every one waiting (up to
    /// `max_batch`, and none after a stop); `None` once the queue closed.
    pub fn next(rx: &mut mpsc::Receiver<Message>, max_batch: usize) -> Option<Batch> {
        let first = rx.blocking_recv()?;
        let mut batch = Batch::default();
        batch.take(first);
        while batch.stop.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(message) => batch.take(message),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    /// After a stop: closes the queue, answers the writes and trims that
    /// raced with it (a clear answer rather than a dropped channel), and
    /// returns the audit entries that did, which are still written.
    pub fn late_audit(rx: &mut mpsc::Receiver<Message>) -> Vec<AuditEntry> {
        rx.close();
        let mut late = Batch::default();
        while let Ok(message) = rx.try_recv() {
            late.take(message);
        }
        for (_, reply) in late.writes {
            let _ = reply.send(Err(shutting_down()));
        }
        for (_, reply) in late.trims {
            let _ = reply.send(Err(shutting_down()));
        }
        late.audit
    }
}

pub(super) fn run(
    shared: Arc<Shared>,
    start: Start,
    mut rx: mpsc::Receiver<Message>,
    max_batch: usize,
) {
    let now = Instant::now();
    // Beside the writer only where the store keeps its log apart from its
    // checkpoints (on disk: files and sled); elsewhere on this thread.
    let checkpointer = if shared.store.checkpoints_beside_appends() {
        Checkpointer::spawn(shared.clone())
            .inspect_err(
                |e| tracing::warn!(error = %e, "checkpoints are written on the writer thread"),
            )
            .ok()
    } else {
        None
    };
    let mut writer = Writer {
        pending: Pending::new(start.state.position),
        checkpoints: Checkpoints::new(start.stored, start.checkpoint_now, now),
        checkpointer,
        state: start.state,
        shared,
    };
    writer.checkpoint_if_due(Instant::now());
    let mut stop = None;
    while stop.is_none() {
        let Some(mut batch) = Batch::next(&mut rx, max_batch) else {
            break;
        };
        stop = batch.stop.take();
        // A failure was answered to the batch's callers and logged.
        let _ = writer.commit(batch.writes, batch.audit);
        for (trim, reply) in batch.trims {
            let _ = reply.send(writer.trim(trim));
        }
        // A checkpointer that falls behind (a core saturated by writes)
        // would let rows pile up without end: past the bound the writer
        // waits for it.
        let behind = writer.checkpoints.behind(&writer.state);
        writer.collect_checkpoint(behind);
        writer.checkpoint_if_due(Instant::now());
    }
    // The audit entries that raced with the stop are still written.
    let last = writer.commit(Vec::new(), Batch::late_audit(&mut rx));
    // Checkpoint everything, so the next start has nothing to fold. If that
    // fails the next start folds the log instead; the caller of `stop`
    // still hears of it.
    let flushed = last.and_then(|()| writer.checkpoint()).and_then(|()| {
        writer.shared.store.flush()?;
        writer.pending.flushed(writer.state.position);
        Ok(())
    });
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "final checkpoint or flush failed; the next start folds the log");
    }
    if let Some(tx) = stop {
        let _ = tx.send(flushed);
    }
}

impl Writer {
    /// Folds `writes` (and `audit` as one command) into a copy of the
    /// state, appends what folded, flushes if any of it must be durable
    /// (or unflushed entries have waited long enough, or a failure left
    /// the log's tail in doubt), installs and publishes the copy, and
    /// answers. On a store failure nothing is installed and every folded
    /// write is answered with the store's error.
    fn commit(&mut self, writes: Vec<(Command, Reply)>, audit: Vec<AuditEntry>) -> Result<()> {
        let requests = writes.len();
        // Commands are folded in place into one copy of the state (each
        // change then copies the path to it once per batch, not once per
        // command); when one fails, the copy is rebuilt from the batch's
        // start and the commands that succeeded before it.
        let base = self.state.clone();
        let mut state = base.clone();
        let previous_insight = state.counters.insight_sequence;
        let mut entries: Vec<LogEntry> = Vec::new();
        let mut answered: Vec<(Reply, Result<Answer>)> = Vec::with_capacity(requests);
        let mut durable = false;
        for (command, reply) in writes {
            let position = state.position + 1;
            match fold_guarded(&mut state, position, &command) {
                Ok(answer) => {
                    durable |= command.action.durable();
                    entries.push(LogEntry { position, command });
                    answered.push((reply, Ok(answer)));
                }
                Err(e) => {
                    state = match refold(&base, &entries) {
                        Ok(state) => state,
                        Err(bug) => {
                            for (reply, _) in answered {
                                let _ = reply.send(Err(bug.clone()));
                            }
                            let _ = reply.send(Err(bug.clone()));
                            return Err(bug);
                        }
                    };
                    answered.push((reply, Err(e)));
                }
            }
        }
        if !audit.is_empty() {
            let command = Command {
                at: self.shared.clock.now(),
                action: Action::Audit { entries: audit },
            };
            let position = state.position + 1;
            // Audit entries are plain rows: their fold does not fail.
            let mut next = state.clone();
            if fold_guarded(&mut next, position, &command).is_ok() {
                state = next;
                entries.push(LogEntry { position, command });
            }
        }

        let now = Instant::now();
        let repair = self.pending.repair_plan().is_some();
        if repair {
            // A repair rewrites the log's tail: not beside a checkpoint.
            self.collect_checkpoint(true);
        }
        let flush = durable || repair || self.pending.aged(now);
        if entries.is_empty() && !flush {
            for (reply, answer) in answered {
                let _ = reply.send(answer);
            }
            return Ok(());
        }
        let store = &self.shared.store;
        let written = (|| -> Result<()> {
            if let Some(plan) = self.pending.repair_plan() {
                store.recover()?;
                store.discard_log_after(plan.discard_after)?;
                store.append(plan.reappend)?;
            }
            if !entries.is_empty() {
                store.append(&entries)?;
            }
            if flush {
                store.flush()?;
            }
            Ok(())
        })();
        self.shared
            .metrics
            .group_commit(requests, now.elapsed(), written.is_ok());
        match &written {
            Ok(()) => {
                let keys_changed = entries.iter().any(|e| e.command.action.changes_keys());
                if flush {
                    self.pending.flushed(state.position);
                } else {
                    self.pending.installed(entries, now);
                }
                self.install(state, previous_insight, keys_changed);
                for (reply, answer) in answered {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                self.pending.failed(requests, e, now);
                for (reply, answer) in answered {
                    let _ = reply.send(answer.and(Err(e.clone())));
                }
            }
        }
        written
    }

    /// Makes `state` the installed one: readers see it from now on, and
    /// the insights it added are published in sequence order.
    fn install(&mut self, state: State, previous_insight: u64, keys_changed: bool) {
        let published = Arc::new(state.clone());
        self.state = state;
        self.shared
            .install(published, previous_insight, keys_changed);
    }

    /// Starts a checkpoint if one is due: on the checkpoint thread, or
    /// here when the log's tail must be repaired first or the thread is
    /// gone. A failure is logged; the next tick tries again.
    fn checkpoint_if_due(&mut self, now: Instant) {
        if !self.checkpoints.due(&self.state, now) {
            return;
        }
        match &mut self.checkpointer {
            Some(checkpointer) if self.pending.repair_plan().is_none() => {
                if checkpointer.busy() {
                    return;
                }
                let stored = self.checkpoints.stored.clone();
                if let Err(e) = checkpointer.start(stored, self.state.clone()) {
                    tracing::error!(error = %e, "checkpoints are written on the writer thread from now on");
                    self.checkpointer = None;
                    let _ = self.checkpoint();
                }
            }
            _ => {
                let _ = self.checkpoint();
            }
        }
    }

    /// Takes the result of the checkpoint in flight if it has finished
    /// (`wait`: waits for it).
    fn collect_checkpoint(&mut self, wait: bool) {
        let Some(checkpointer) = &mut self.checkpointer else {
            return;
        };
        let finished = if wait {
            checkpointer.wait()
        } else {
            checkpointer.poll()
        };
        if let Some(finished) = finished {
            self.checkpoint_finished(finished);
        }
    }

    /// A checkpoint written on the checkpoint thread: its rows leave
    /// memory (the state has only appended rows since it was handed over,
    /// so they are a prefix) and it is the next diff base.
    fn checkpoint_finished(&mut self, finished: Finished) {
        let Finished {
            state: written,
            result,
            took,
        } = finished;
        match result {
            Ok(()) => {
                tracing::debug!(
                    position = written.position,
                    rows = written.rows.outcomes.len() + written.rows.audit.len(),
                    ms = took.as_secs_f64() * 1000.0,
                    "checkpoint written (in the background)"
                );
                let rows = &mut self.state.rows;
                debug_assert!(
                    rows.outcomes.len() >= written.rows.outcomes.len()
                        && rows
                            .outcomes
                            .get(written.rows.outcomes.len().wrapping_sub(1))
                            == written.rows.outcomes.last()
                );
                rows.outcomes = rows.outcomes.skip(written.rows.outcomes.len());
                rows.audit = rows.audit.skip(written.rows.audit.len());
                self.checkpoints.written(written, Instant::now());
                self.shared.snapshot.store(Arc::new(self.state.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps every command meanwhile");
                self.pending.failed(0, &e, Instant::now());
            }
        }
    }

    /// Checkpoints the installed state on this thread (after the one in
    /// flight, if any), then trims the log it covers.
    fn checkpoint(&mut self) -> Result<()> {
        self.collect_checkpoint(true);
        if self.checkpoints.up_to_date(&self.state) && self.pending.repair_plan().is_none() {
            return Ok(());
        }
        let store = &self.shared.store;
        let started = Instant::now();
        let written = (|| -> Result<()> {
            if let Some(plan) = self.pending.repair_plan() {
                store.recover()?;
                store.discard_log_after(plan.discard_after)?;
                store.append(plan.reappend)?;
            }
            store.checkpoint(&self.checkpoints.stored, &self.state)
        })();
        match written {
            Ok(()) => {
                tracing::debug!(
                    position = self.state.position,
                    rows = self.state.rows.outcomes.len() + self.state.rows.audit.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "checkpoint written"
                );
                // The checkpoint's flush made the log durable too.
                self.pending.flushed(self.state.position);
                let written = self.state.clone();
                self.state.rows.outcomes.clear();
                self.state.rows.audit.clear();
                self.checkpoints.written(written, Instant::now());
                self.shared.snapshot.store(Arc::new(self.state.clone()));
                if let Err(e) = store.trim_log(self.state.position.saturating_add(1)) {
                    tracing::warn!(error = %e, "cannot trim the command log; the next checkpoint tries again");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps every command meanwhile");
                self.pending.failed(0, &e, Instant::now());
                Err(e)
            }
        }
    }

    /// Trims the outcome and audit logs in the store.
    fn trim(&mut self, trim: TrimRows) -> Result<(usize, usize)> {
        // Not beside a checkpoint writing rows of the same logs.
        self.collect_checkpoint(true);
        let store = &self.shared.store;
        Ok((
            store.trim_rows(RowLog::Outcomes, trim.outcomes_before, trim.now)?,
            store.trim_rows(RowLog::Audit, trim.audit_before, trim.now)?,
        ))
    }
}

/// Folds `command` in place; a panic in the fold is an internal error
/// rather than the end of the writer (and with it of every later write).
/// On error `state` may be half-changed.
pub(super) fn fold_guarded(state: &mut State, position: u64, command: &Command) -> Result<Answer> {
    catch_unwind(AssertUnwindSafe(|| fold_in_place(state, position, command))).unwrap_or_else(
        |_| {
            tracing::error!(command = command.action.name(), "a fold panicked");
            Err(Error::Internal(format!(
                "{} could not be applied",
                command.action.name()
            )))
        },
    )
}

/// `base` with `entries` folded in again: the batch's state up to its
/// last successful command. They folded before, so they fold again (the
/// fold is deterministic); if one did not, that is a bug, and the batch is
/// refused rather than logged with a state that disagrees with it.
pub(super) fn refold(base: &State, entries: &[LogEntry]) -> Result<State> {
    let mut state = base.clone();
    for entry in entries {
        fold_guarded(&mut state, entry.position, &entry.command).map_err(|e| {
            tracing::error!(error = %e, position = entry.position, "a command folded once but not again");
            Error::Internal("the hub could not apply this batch".into())
        })?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Attributes, Registration, StrategyShare};

    fn register(id: &str) -> Command {
        Command {
            at: 1_700_000_000_000,
            action: Action::Register {
                caller: id.into(),
                registration: Registration {
                    instance_id: id.into(),
                    region: "r".into(),
                    context: Attributes::new(),
                    capabilities: vec![],
                },
            },
        }
    }

    fn write(id: &str) -> (Message, oneshot::Receiver<Result<Answer>>) {
        let (reply, answer) = oneshot::channel();
        let message = Message::Write {
            command: register(id),
            reply,
        };
        (message, answer)
    }

    #[test]
    fn a_batch_takes_what_waits_up_to_its_limit_and_nothing_after_a_stop() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut answers = Vec::new();
        for i in 0..5 {
            let (message, answer) = write(&format!("i{i}"));
            tx.try_send(message).unwrap();
            answers.push(answer);
        }
        tx.try_send(Message::Audit(AuditEntry::default())).unwrap();
        let first = Batch::next(&mut rx, 3).unwrap();
        assert_eq!((first.writes.len(), first.audit.len()), (3, 0), "the limit");
        let second = Batch::next(&mut rx, 3).unwrap();
        assert_eq!((second.writes.len(), second.audit.len()), (2, 1));

        let (stop, _stopped) = oneshot::channel();
        tx.try_send(Message::Tick).unwrap();
        tx.try_send(Message::Stop(stop)).unwrap();
        let (late, late_answer) = write("late");
        tx.try_send(late).unwrap();
        tx.try_send(Message::Audit(AuditEntry::default())).unwrap();
        let last = Batch::next(&mut rx, 64).unwrap();
        assert!(last.stop.is_some());
        assert_eq!(last.len(), 0, "nothing after the stop joins its batch");

        // What raced with the stop: writes are refused, audit kept.
        let audit = Batch::late_audit(&mut rx);
        assert_eq!(audit.len(), 1);
        let refused = late_answer.blocking_recv().unwrap();
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        assert!(tx.try_send(Message::Tick).is_err(), "the queue is closed");
        drop(tx);
        assert!(Batch::next(&mut rx, 64).is_none());
    }

    #[test]
    fn a_refold_replays_the_commands_that_folded_and_refuses_one_that_does_not() {
        let base = State::default();
        let mut state = base.clone();
        let mut entries = Vec::new();
        for id in ["a", "b"] {
            let position = state.position + 1;
            let command = register(id);
            fold_guarded(&mut state, position, &command).unwrap();
            entries.push(LogEntry { position, command });
        }
        let again = refold(&base, &entries).unwrap();
        assert_eq!(again.digest(), state.digest());
        assert_eq!(again.position, 2);

        // A command that cannot fold on the base (its caller is not
        // registered): the batch would disagree with its own log, so the
        // refold refuses it rather than logging it.
        let orphan = Command {
            at: 1_700_000_000_000,
            action: Action::ShareStrategy {
                caller: "nobody".into(),
                share: StrategyShare {
                    strategy: "s".into(),
                    metric: "m".into(),
                    value_before: 0.5,
                    successful: true,
                    delta: 0.1,
                    condition: String::new(),
                    context: Attributes::new(),
                    recent: vec![],
                },
                evidence_days: 7,
                request: None,
            },
        };
        let mut bad = entries.clone();
        bad.push(LogEntry {
            position: 3,
            command: orphan,
        });
        assert!(matches!(refold(&base, &bad), Err(Error::Internal(_))));
    }
}
