//! When the writer checkpoints, and what a checkpoint makes durable.
//!
//! Between checkpoints only commands are written: a write costs its
//! command's bytes, however large the records it changes (an aggregate with
//! a month of daily evidence is kilobytes). A checkpoint writes what
//! changed since the previous one — the difference of two versions of the
//! state, which share everything else — with the rows of the outcome and
//! audit logs folded meanwhile, and its position; a start then folds only
//! the log after it. The log before a checkpoint is no longer needed and
//! is trimmed.
//!
//! A checkpoint is due every [`CHECKPOINT_EVERY`], or sooner once
//! [`CHECKPOINT_ROWS`] rows wait in memory, and always at shutdown (so the
//! next start has nothing to fold) and after a start that folded a tail or
//! read a store written before the command log.

use std::time::{Duration, Instant};

use crate::domain::state::State;

/// The longest the state goes without a checkpoint while it changes.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// Rows (outcomes, audit entries) that may wait in memory for one. Small
/// checkpoints keep the hub's memory down: a checkpoint's bytes exist
/// several times over while sled takes them (encoded, in sled's batch, in
/// its I/O buffers), and the allocator keeps the peak. With checkpoints
/// beside the writer their number costs little: at 10,000 rows instead of
/// 50,000 the hub ended 30-second write benches at 221–227 MiB instead of
/// 469–470, at 0.90–0.93× the throughput; at 5,000 instead of 10,000 (with
/// mimalloc) at 230–239 MiB instead of 285–291, at 0.91–0.97× the
/// throughput and a p99.9 of 17–19 ms instead of 17–23 (BENCHMARKS.md).
pub const CHECKPOINT_ROWS: usize = 5_000;
/// Rows past which the writer waits for the checkpoint being written
/// beside it, so that memory stays bounded when it falls behind.
pub const ROWS_BEHIND: usize = 4 * CHECKPOINT_ROWS;

/// The writer's view of its checkpoints.
#[derive(Debug)]
pub struct Checkpoints {
    /// The state the newest checkpoint holds (the next one's diff base).
    pub stored: State,
    /// When it was written.
    written_at: Instant,
    /// Write one at the first chance, whatever the clock says.
    urgent: bool,
}

impl Checkpoints {
    /// `stored` is what the store holds; `urgent` asks for a checkpoint at
    /// once (a start that folded a tail, or read a legacy store).
    pub fn new(stored: State, urgent: bool, now: Instant) -> Self {
        Checkpoints {
            stored,
            written_at: now,
            urgent,
        }
    }

    /// Whether `state` should be checkpointed now.
    pub fn due(&self, state: &State, now: Instant) -> bool {
        if state.position == self.stored.position && !self.urgent {
            return false;
        }
        self.urgent
            || state.rows.outcomes.len() + state.rows.audit.len() >= CHECKPOINT_ROWS
            || now.duration_since(self.written_at) >= CHECKPOINT_EVERY
    }

    /// Whether rows wait in memory far beyond [`CHECKPOINT_ROWS`]
    /// ([`ROWS_BEHIND`]): a checkpoint written beside the writer is not
    /// keeping up, and the writer should wait for it.
    pub fn behind(&self, state: &State) -> bool {
        state.rows.outcomes.len() + state.rows.audit.len() >= ROWS_BEHIND
    }

    /// Whether nothing would be written: `state` is what the store holds.
    pub fn up_to_date(&self, state: &State) -> bool {
        !self.urgent
            && state.position == self.stored.position
            && state.rows.outcomes.is_empty()
            && state.rows.audit.is_empty()
    }

    /// `state` was written: it is the new base. Its rows are in the store
    /// now, so the base keeps none.
    pub fn written(&mut self, mut state: State, now: Instant) {
        state.rows.outcomes.clear();
        state.rows.audit.clear();
        self.stored = state;
        self.written_at = now;
        self.urgent = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::AuditEntry;

    #[test]
    fn due_by_time_by_rows_or_when_urgent_and_never_without_change() {
        let t0 = Instant::now();
        let mut state = State::default();
        let mut checkpoints = Checkpoints::new(state.clone(), false, t0);
        assert!(!checkpoints.due(&state, t0 + CHECKPOINT_EVERY), "unchanged");
        state.position = 1;
        assert!(!checkpoints.due(&state, t0));
        assert!(checkpoints.due(&state, t0 + CHECKPOINT_EVERY));
        for _ in 0..CHECKPOINT_ROWS {
            state.log_audit(AuditEntry::default());
        }
        assert!(checkpoints.due(&state, t0), "rows pile up");
        assert!(!checkpoints.behind(&state));
        for _ in CHECKPOINT_ROWS..ROWS_BEHIND {
            state.log_audit(AuditEntry::default());
        }
        assert!(
            checkpoints.behind(&state),
            "the writer waits past the bound"
        );
        checkpoints.written(state.clone(), t0);
        assert!(
            checkpoints.stored.rows.audit.is_empty(),
            "written rows leave the base"
        );
        state.rows.audit.clear();
        assert_eq!(checkpoints.stored.position, 1);
        assert!(!checkpoints.due(&state, t0 + CHECKPOINT_EVERY));
        let urgent = Checkpoints::new(state.clone(), true, t0);
        assert!(urgent.due(&state, t0));
    }
}
