//! The higher seam: a command log that several hub replicas share.
//!
//! A [`Backend`] is storage one hub owns: the hub folds a command first and
//! appends it at the position it chose. A [`SharedLog`] is a backend that
//! several replicas append to at once, so the log chooses: a batch is
//! appended at the next free positions, atomically, in commit order, and
//! every replica learns what a command answers by folding the log up to
//! it. Next to the log it keeps what replicas must agree on outside it — a
//! lease for the jobs that one replica runs, and a fence so that only the
//! replica whose state a checkpoint was diffed from can write the next.
//!
//! PostgreSQL implements it ([`crate::pg::PgBackend`]); so does an
//! in-memory log for tests (`MemorySharedLog`, feature `faults`). Both
//! pass the same suite (`tests/durability/shared_log.rs`).

use std::{any::Any, time::Duration};

use crate::backend::{Backend, Checkpoint};
use crate::error::{Error, Result};

/// A batch's identity: appending the same batch twice appends it once.
pub type BatchId = [u8; 16];

/// Why an append failed, as far as the appender can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum AppendError {
    /// Certainly not appended (it failed before its commit was sent).
    NotApplied(Error),
    /// Perhaps appended: the connection failed during the commit. Append
    /// the same batch again, with the same id, to learn its positions.
    InDoubt(Error),
}

impl AppendError {
    pub fn error(&self) -> &Error {
        match self {
            AppendError::NotApplied(e) | AppendError::InDoubt(e) => e,
        }
    }
}

/// Keeps a head watch running; dropping it stops the watch.
pub type WatchGuard = Box<dyn Any + Send + Sync>;

/// A command log shared by hub replicas, with the checkpoint and row logs
/// of [`Backend`].
pub trait SharedLog: Backend {
    /// Appends `commands` as one batch at the positions after the log's
    /// head, all or none, and returns the first. Batches are appended in
    /// the order of their positions: a reader that has seen position `p`
    /// has seen every position before it. A batch whose id is already in
    /// the log is not appended again; its first position is returned.
    fn append_batch(
        &self,
        batch: BatchId,
        commands: &[Vec<u8>],
    ) -> std::result::Result<u64, AppendError>;

    /// The newest checkpoint's generation: it changes whenever a
    /// checkpoint is written, so a reader that sees the same generation
    /// before and after reading the checkpoint read one checkpoint whole.
    fn checkpoint_generation(&self) -> Result<u64>;

    /// Writes `checkpoint` if the stored checkpoint is still at `base`
    /// (0: none yet), the position of the state it was diffed from.
    /// `Ok(false)`: another replica wrote one meanwhile; nothing written.
    fn checkpoint_from(&self, base: u64, checkpoint: Checkpoint) -> Result<bool>;

    /// Takes or renews the lease `name` for `holder` for `ttl`, on the
    /// log's clock. `Some(epoch)` while `holder` holds it; the epoch grows
    /// whenever the lease changes hands. `None`: another holds it.
    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>>;

    /// Gives the lease up at once, if `holder` holds it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// Calls `wake` with the log's head whenever batches are appended (by
    /// any replica), and with `u64::MAX` whenever appends may have been
    /// missed (the watch reconnected): a wake-up, never the data. Stops
    /// when the guard is dropped.
    fn watch_head(&self, wake: Box<dyn Fn(u64) + Send + Sync>) -> Result<WatchGuard>;

    /// Where the log is, for messages (no credentials).
    fn describe(&self) -> String;
}
