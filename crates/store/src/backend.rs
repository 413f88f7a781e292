//! The storage seam: what the hub needs of durable storage, in bytes.
//!
//! A [`Backend`] holds four things:
//!
//! - the **command log**: encoded commands by position, appended in order,
//!   read back after a position, trimmed from the front;
//! - the newest **checkpoint**: the state's record tables (`<table prefix>` +
//!   key → value) as of a log position, written as the difference from the
//!   previous one, atomically with that position;
//! - the **row logs** of strategy outcomes and audit entries, by sequence:
//!   written with checkpoints, read by range forwards and backwards (never
//!   whole), trimmed from the front;
//! - a few named **meta** values written with checkpoints (the counters).
//!
//! Every implementation passes one conformance suite
//! (`tests/durability/store_conformance.rs`), written against this trait only, so a
//! backend that stores the same in another way (PostgreSQL, for replicas)
//! runs it unchanged. [`KvBackend`](super::kv::KvBackend) implements it
//! over an ordered key-value [`Engine`](super::Engine): sled on disk,
//! memory in tests, and the fault injector around either.

use crate::error::Result;

/// An encoded command at its log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub position: u64,
    pub bytes: Vec<u8>,
}

/// The logs read by range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLog {
    /// Strategy outcomes, by outcome sequence.
    Outcomes,
    /// Audit entries, by audit sequence.
    Audit,
}

/// A record of a table as a checkpoint writes it (`None`: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWrite {
    /// The table's prefix, e.g. `i/`.
    pub table: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One row appended to a row log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    pub log: RowLog,
    pub sequence: u64,
    pub bytes: Vec<u8>,
}

/// Everything one checkpoint makes durable together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log position the tables are as of.
    pub position: u64,
    pub tables: Vec<TableWrite>,
    pub rows: Vec<RowWrite>,
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

/// Durable storage of the command log, the checkpointed state and the row
/// logs. Calls block: the hub calls them from its writer thread or the
/// blocking pool, never on the async runtime.
pub trait Backend: Send + Sync + 'static {
    /// The log position of the newest checkpoint; `None` if none was ever
    /// written (a new store, or one written before checkpoints existed).
    fn checkpoint_position(&self) -> Result<Option<u64>>;

    /// A meta value written with a checkpoint.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Every record of `table` as of the checkpoint: (key, value) in key
    /// order.
    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Writes `entries` to the log atomically (all or none). Their
    /// positions follow the log's head without a gap. Durable once
    /// [`Backend::flush`] returns.
    fn append(&self, entries: &[Appended]) -> Result<()>;

    /// Makes everything appended durable.
    fn flush(&self) -> Result<()>;

    /// Up to `limit` log entries after `after`, in position order.
    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>>;

    /// The last position in the log (0: empty, or trimmed to nothing and
    /// never appended to since).
    fn log_head(&self) -> Result<u64>;

    /// Removes every log entry after `position`: entries a failed flush
    /// left in doubt, before they are appended again.
    fn discard_log_after(&self, position: u64) -> Result<()>;

    /// Writes `checkpoint` atomically and durably: its tables' records,
    /// its rows, its meta values and its position, or nothing.
    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()>;

    /// Removes the log entries before `position`; how many.
    fn trim_log(&self, before: u64) -> Result<usize>;

    /// Up to `limit` rows of `log` after sequence `after`, in order.
    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Up to `limit` rows of `log` before sequence `before`, newest first.
    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Removes the rows of `log` before sequence `before`; how many.
    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize>;

    /// Approximate bytes on disk.
    fn size_on_disk(&self) -> u64;

    /// After a failed write or flush: makes the backend writable again if
    /// it can, or says why not. Writes not yet flushed may be lost; the
    /// caller appends them again.
    fn recover(&self) -> Result<()>;

    /// Whether [`Backend::checkpoint`] and [`Backend::trim_log`] may run on
    /// another thread while appends and flushes go on: true where the log
    /// is kept apart from the checkpoint (sled would be written and flushed
    /// by two threads otherwise). The hub then writes checkpoints beside
    /// its writer instead of holding every write up for one.
    fn checkpoints_beside_appends(&self) -> bool {
        false
    }
}
