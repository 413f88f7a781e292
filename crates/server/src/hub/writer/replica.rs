//! The writer of a replica: append first, then fold what the log says.
//!
//! A replica cannot fold its commands before appending them, because
//! other replicas append to the same log at the same time: a command's
//! answer depends on everything before it in the log. So each batch of
//! waiting commands (and one `Audit` command of the batch's audit entries)
//! is appended to the shared log in one transaction, which gives it its
//! positions; then the writer reads the log after its position — its own
//! batch and whatever others appended meanwhile — folds every entry in
//! order, installs the new state, publishes the insights it added, and
//! answers each caller with what its command folded to. A command that
//! fails to fold is answered with its error and skipped by every replica
//! alike. Nothing is answered before it is in the log and folded here, so
//! an acknowledged write survives the loss of any replica.
//!
//! An append whose commit's answer was lost is appended again with the
//! same batch id until the log says where it went (the log keeps one
//! copy); if the log stays away past the write timeout, the callers hear
//! that the write may still be applied. The same loop reads the log when
//! the head watch says another replica appended, and every second anyway
//! (a watch that reconnects may have missed a wake-up).
//!
//! Housekeeping between batches: the holder of the jobs lease writes
//! checkpoints (fenced on the previous one's position) and trims the log
//! that the previous checkpoint covers, so a replica a checkpoint behind
//! still finds its tail; the others drop from memory the outcome and audit rows
//! a checkpoint has stored. A replica that finds its tail trimmed away
//! (it fell that far behind) loads the checkpoint again. One whose reads
//! or appends fail, or that lags the head, says so in the hub's health.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::Message;
use super::batch::{Batch, fold_guarded, refold};
use super::checkpoints::Checkpoints;
use crate::domain::command::{Action, Command, LogEntry};
use crate::domain::fold::Answer;
use crate::domain::model::AuditEntry;
use crate::domain::state::State;
use crate::error::{Error, Result};
use crate::hub::Shared;
use crate::hub::replica::{Replica, load_whole};
use crate::store::{AppendError, RowLog};

type Reply = oneshot::Sender<Result<Answer>>;

/// Log entries read per query.
const PAGE: usize = 512;
/// How often a replica that does not hold the lease looks for rows a
/// checkpoint stored.
const ROWS_CHECK_EVERY: Duration = Duration::from_secs(1);

struct ReplicaWriter {
    shared: Arc<Shared>,
    /// The installed state.
    state: State,
    /// Callers waiting for their command to be folded, by position.
    waiting: BTreeMap<u64, Reply>,
    /// Positions of this replica's own audit commands not yet folded:
    /// every other audit command's calls are told to `remote_calls`.
    own_audit: std::collections::BTreeSet<u64>,
    /// The lease holder's checkpoint base (`None`: to be read first).
    checkpoints: Option<Checkpoints>,
    rows_checked: Instant,
    /// Since when the state has been behind the announced head.
    behind_since: Option<Instant>,
    /// A log entry this hub cannot read (a newer format): it stops folding.
    stuck: Option<Error>,
    timeout: Duration,
}

pub(super) fn run(
    shared: Arc<Shared>,
    start: super::Start,
    mut rx: mpsc::Receiver<Message>,
    max_batch: usize,
    timeout: Duration,
) {
    let now = Instant::now();
    let mut writer = ReplicaWriter {
        checkpoints: Some(Checkpoints::new(start.stored, false, now)),
        state: start.state,
        waiting: BTreeMap::new(),
        own_audit: Default::default(),
        rows_checked: now,
        behind_since: None,
        stuck: None,
        timeout,
        shared,
    };
    let mut stop = None;
    while stop.is_none() {
        let Some(mut batch) = Batch::next(&mut rx, max_batch) else {
            break;
        };
        stop = batch.stop.take();
        writer.append(batch.writes, batch.audit);
        writer.tail();
        for (trim, reply) in batch.trims {
            let store = &writer.shared.store;
            let trimmed = (|| {
                Ok((
                    store.trim_rows(RowLog::Outcomes, trim.outcomes_before, trim.now)?,
                    store.trim_rows(RowLog::Audit, trim.audit_before, trim.now)?,
                ))
            })();
            let _ = reply.send(trimmed);
        }
        writer.housekeeping(Instant::now());
    }
    // The audit entries that raced with the stop are still appended, and
    // the holder checkpoints what it folded.
    writer.append(Vec::new(), Batch::late_audit(&mut rx));
    writer.tail();
    for (_, reply) in std::mem::take(&mut writer.waiting) {
        let _ = reply.send(Err(in_doubt(&super::shutting_down())));
    }
    let done = if writer.holds_lease() && writer.stuck.is_none() {
        writer.checkpoint(Instant::now())
    } else {
        Ok(())
    };
    if let Some(tx) = stop {
        let _ = tx.send(done);
    }
}

/// The error of a caller whose command may or may not be in the log.
fn in_doubt(e: &Error) -> Error {
    Error::DeadlineExceeded(format!(
        "{e}; the write may still be applied: send it again with the same request_id"
    ))
}

impl ReplicaWriter {
    fn replica(&self) -> &Replica {
        self.shared
            .replica
            .as_ref()
            .expect("the replica loop runs only for replicas")
    }

    fn holds_lease(&self) -> bool {
        self.replica().lease_epoch().is_some()
    }

    /// Appends the batch's commands (and its audit entries as one
    /// command); their callers wait in `waiting` for the fold.
    fn append(&mut self, writes: Vec<(Command, Reply)>, audit: Vec<AuditEntry>) {
        if writes.is_empty() && audit.is_empty() {
            return;
        }
        if let Some(stuck) = &self.stuck {
            for (_, reply) in writes {
                let _ = reply.send(Err(stuck.clone()));
            }
            return;
        }
        let mut encoded: Vec<Vec<u8>> = writes.iter().map(|(c, _)| c.encode()).collect();
        if !audit.is_empty() {
            encoded.push(
                Command {
                    at: self.shared.clock.now(),
                    action: Action::Audit { entries: audit },
                }
                .encode(),
            );
        }
        let started = Instant::now();
        let appended = self.append_resolving(&encoded);
        self.shared
            .metrics
            .group_commit(writes.len(), started.elapsed(), appended.is_ok());
        match appended {
            Ok(first) => {
                let last = first + encoded.len() as u64 - 1;
                self.replica().note_head(last);
                if encoded.len() > writes.len() {
                    self.own_audit.insert(last);
                }
                for (i, (_, reply)) in writes.into_iter().enumerate() {
                    self.waiting.insert(first + i as u64, reply);
                }
            }
            Err(e) => {
                for (_, reply) in writes {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Appends `encoded` as one batch; the first position. An answer lost
    /// in the commit is sought by appending the same batch again until the
    /// log answers or the write timeout passes.
    fn append_resolving(&mut self, encoded: &[Vec<u8>]) -> Result<u64> {
        let batch = *uuid::Uuid::new_v4().as_bytes();
        let log = self.replica().log.clone();
        let deadline = Instant::now() + self.timeout;
        let mut doubt = match log.append_batch(batch, encoded) {
            Ok(first) => return Ok(first),
            Err(AppendError::NotApplied(e)) => {
                self.shared.set_health(Some(e.to_string()));
                return Err(e);
            }
            Err(AppendError::InDoubt(e)) => e,
        };
        self.shared.set_health(Some(doubt.to_string()));
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline {
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
            match log.append_batch(batch, encoded) {
                Ok(first) => return Ok(first),
                Err(e) => doubt = e.error().clone(),
            }
        }
        Err(in_doubt(&doubt))
    }

    /// Folds the log after the installed position, installs the result and
    /// answers the callers whose commands it folded.
    fn tail(&mut self) {
        if self.stuck.is_some() {
            return;
        }
        let previous_insight = self.state.counters.insight_sequence;
        let mut answers: Vec<(Reply, Result<Answer>)> = Vec::new();
        let mut keys_changed = false;
        let mut folded = false;
        let mut read_ok = true;
        loop {
            let page = match self.shared.store.read_log(self.state.position, PAGE) {
                Ok(page) => page,
                Err(e @ Error::FailedPrecondition(_)) => {
                    // A command this hub cannot read: stop rather than
                    // misfold the rest of the log.
                    tracing::error!(error = %e, "cannot fold the shared log; this replica stops serving writes");
                    self.shared.set_health(Some(e.to_string()));
                    self.stuck = Some(Error::Unavailable(e.to_string()));
                    read_ok = false;
                    break;
                }
                Err(e) => {
                    self.shared.set_health(Some(e.to_string()));
                    read_ok = false;
                    break;
                }
            };
            let Some(first) = page.first() else { break };
            if first.position > self.state.position + 1 {
                // Trimmed past this replica: start again from the checkpoint.
                if let Err(e) = self.reload() {
                    self.shared.set_health(Some(e.to_string()));
                    read_ok = false;
                    break;
                }
                folded = true;
                continue;
            }
            match self.fold_page(page, &mut answers) {
                Ok(changed_keys) => {
                    keys_changed |= changed_keys;
                    folded = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a page of the log did not fold twice alike");
                    read_ok = false;
                    break;
                }
            }
        }
        if folded {
            self.shared
                .install(Arc::new(self.state.clone()), previous_insight, keys_changed);
        }
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        if read_ok {
            self.check_lag(Instant::now());
        }
    }

    /// Folds one page of entries into the state, in place (rebuilding from
    /// the page's start when one fails); whether a key changed.
    fn fold_page(
        &mut self,
        page: Vec<LogEntry>,
        answers: &mut Vec<(Reply, Result<Answer>)>,
    ) -> Result<bool> {
        let base = self.state.clone();
        let mut state = base.clone();
        let mut applied: Vec<LogEntry> = Vec::with_capacity(page.len());
        let mut keys_changed = false;
        for entry in page {
            let result = fold_guarded(&mut state, entry.position, &entry.command);
            if result.is_err() {
                // Every replica skips it alike; its answer is the error.
                state = refold(&base, &applied)?;
                state.skip_to(entry.position);
            } else {
                keys_changed |= entry.command.action.changes_keys();
            }
            if let Some(reply) = self.waiting.remove(&entry.position) {
                answers.push((reply, result.clone()));
            } else if !self.own_audit.contains(&entry.position) {
                // Another replica's command: how long it took to get here.
                let lag = self.shared.clock.now() - entry.command.at;
                self.shared
                    .metrics
                    .fold_lag(Duration::from_millis(lag.max(0) as u64));
            }
            if let Action::Audit { entries } = &entry.command.action {
                if !self.own_audit.remove(&entry.position) {
                    if let Some(tell) = self.shared.remote_calls.get() {
                        tell(entries);
                    }
                }
            }
            if result.is_ok() {
                applied.push(entry);
            }
        }
        self.state = state;
        Ok(keys_changed)
    }

    /// Loads the newest checkpoint and the log after it again (the tail
    /// this replica needed was trimmed).
    fn reload(&mut self) -> Result<()> {
        let store = self.shared.store.clone();
        let log = self.replica().log.clone();
        let settings = self.shared.settings.clone();
        let (stored, state) = load_whole(&*log, || {
            let (stored, state, _) = crate::hub::Hub::load_state(&store, &settings)?;
            Ok((stored, state))
        })?;
        tracing::warn!(
            from = self.state.position,
            to = state.position,
            "this replica fell behind the trimmed log; loaded the checkpoint again"
        );
        // Callers whose commands were in the trimmed part cannot be told
        // their answer any more.
        let skipped: Vec<u64> = self
            .waiting
            .range(..=state.position)
            .map(|(p, _)| *p)
            .collect();
        for position in skipped {
            if let Some(reply) = self.waiting.remove(&position) {
                let _ = reply.send(Err(in_doubt(&Error::Unavailable(
                    "this replica fell behind the log".into(),
                ))));
            }
        }
        self.state = state;
        self.checkpoints = Some(Checkpoints::new(stored, false, Instant::now()));
        Ok(())
    }

    /// NOT_SERVING while the state stays behind the head the log announced
    /// for longer than allowed; SERVING once it has caught up (or is
    /// catching up quickly).
    fn check_lag(&mut self, now: Instant) {
        let (head, max_lag) = {
            let replica = self.replica();
            (
                replica.known_head.load(Ordering::SeqCst),
                replica.settings.max_lag,
            )
        };
        if self.state.position >= head {
            self.behind_since = None;
            self.shared.set_health(None);
            return;
        }
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) > max_lag {
            self.shared.set_health(Some(format!(
                "this replica is {} log entries behind the shared log's head ({head}) for over {} s",
                head - self.state.position,
                max_lag.as_secs_f64()
            )));
        } else {
            self.shared.set_health(None);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        if self.stuck.is_some() {
            return;
        }
        if self.holds_lease() {
            let due = self
                .checkpoints
                .as_ref()
                .is_none_or(|c| c.due(&self.state, now));
            if due {
                let _ = self.checkpoint(now);
            }
        } else {
            // Another replica checkpoints; this one's base goes stale.
            self.checkpoints = None;
            if now.duration_since(self.rows_checked) >= ROWS_CHECK_EVERY {
                self.rows_checked = now;
                self.drop_stored_rows();
            }
        }
    }

    /// Drops from memory the rows the newest checkpoint stored (readers
    /// find them in the store now).
    fn drop_stored_rows(&mut self) {
        if self.state.rows.outcomes.is_empty() && self.state.rows.audit.is_empty() {
            return;
        }
        match self.shared.store.stored_sequences() {
            Ok((outcomes, audit)) => {
                let before = self.state.rows.outcomes.len() + self.state.rows.audit.len();
                self.state.rows.outcomes.retain(|o| o.sequence > outcomes);
                self.state.rows.audit.retain(|e| e.sequence > audit);
                if self.state.rows.outcomes.len() + self.state.rows.audit.len() != before {
                    self.shared.snapshot.store(Arc::new(self.state.clone()));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the stored row sequences"),
        }
    }

    /// Writes a checkpoint of the installed state (lease holder), fenced on
    /// the one it was diffed from, then trims the log before the previous
    /// checkpoint.
    fn checkpoint(&mut self, now: Instant) -> Result<()> {
        let log = self.replica().log.clone();
        if self.checkpoints.is_none() {
            let store = self.shared.store.clone();
            let evidence_days = self.shared.settings.tuning.retention_days;
            let stored = load_whole(&*log, || store.load(evidence_days).map(|l| l.stored))?;
            // The rows it stored are no longer this replica's to write.
            self.checkpoints = Some(Checkpoints::new(stored, false, now));
            self.drop_stored_rows();
        }
        let Some(checkpoints) = self.checkpoints.as_mut() else {
            return Ok(());
        };
        if self.state.position <= checkpoints.stored.position {
            return Ok(());
        }
        let base = checkpoints.stored.position;
        let started = Instant::now();
        let written = self
            .shared
            .store
            .checkpoint_with(&checkpoints.stored, &self.state, |c| {
                log.checkpoint_from(base, c)
            });
        match written {
            Ok(true) => {
                tracing::debug!(
                    position = self.state.position,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "checkpoint written"
                );
                checkpoints.written(self.state.clone(), now);
                self.state.rows.outcomes.clear();
                self.state.rows.audit.clear();
                self.shared.snapshot.store(Arc::new(self.state.clone()));
                // What the previous checkpoint covers goes: a replica that
                // has folded that far still finds the rest of its tail.
                if base > 0 {
                    if let Err(e) = log.trim_log(base + 1) {
                        tracing::warn!(error = %e, "cannot trim the shared log; the next checkpoint tries again");
                    }
                }
                Ok(())
            }
            Ok(false) => {
                tracing::info!("another replica wrote a checkpoint; reading it before the next");
                self.checkpoints = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; the log keeps every command meanwhile");
                Err(e)
            }
        }
    }
}
