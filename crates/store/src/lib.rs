//! Durable state, typed. [`Store`] turns the hub's values — commands,
//! checkpoints of its [`State`], outcome and audit rows — into the bytes a
//! [`Backend`] keeps, and back; the backend decides how they are kept
//! (sled on disk through [`KvBackend`], memory in tests, PostgreSQL for
//! replicas).
//!
//! What is durable is the command log ([`Store::append`]): the state is
//! what folding it yields, checkpointed now and then so that a start folds
//! only the log's tail ([`Store::checkpoint`], [`Store::load`]).
//! Records are encoded by [`codec`]; commands by
//! [`crate::domain::command`].

pub mod backend;
pub mod codec;
pub mod disk;
pub mod engine;
#[cfg(feature = "faults")]
pub mod faults;
mod file_log;
mod finite;
mod frame;
pub mod kv;
pub mod pg;
pub mod shared;
#[cfg(feature = "faults")]
pub mod shared_memory;

use std::{path::Path, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};

pub use backend::{Appended, Backend, Checkpoint, RowLog, RowWrite, TableWrite};
pub use disk::{DiskBackend, LOG_DIR};
pub use engine::{Engine, KvWrite, MemoryEngine, PID_FILE, SledEngine};
#[cfg(feature = "faults")]
pub use faults::{Fault, Faults, FaultyEngine, Op};
pub use kv::KvBackend;
/// The domain this store keeps, under the name the modules here use.
pub use learning_hub_domain as domain;
pub use learning_hub_domain::error;
pub use pg::{PgBackend, PgSettings};
pub use shared::{AppendError, BatchId, SharedLog, WatchGuard};
#[cfg(feature = "faults")]
pub use shared_memory::MemorySharedLog;

use crate::domain::command::{Command, LogEntry};
use crate::domain::fold::fold_outcome;
use crate::domain::model::{AuditEntry, StrategyOutcome, UnixMillis};
use crate::domain::state::{Counters, State, TableKey, TableSource, TableVisitor, Tables};
use crate::error::{Error, Result};

/// Meta values. The counters keep the names they had before the command
/// log, so that an older data directory loads as a checkpoint.
const INSIGHT_SEQUENCE: &str = "insight_sequence";
const OUTCOME_SEQUENCE: &str = "outcome_sequence";
const AUDIT_SEQUENCE: &str = "audit_sequence";
const PATTERN_CALIBRATION: &str = "pattern_calibration";
const ROWS_DIGEST: &str = "rows_digest";
/// Written only before the command log: outcomes after it may be missing
/// from the stored aggregates.
const LEGACY_STRATEGY_FLOOR: &str = "strategy_floor";

/// A state read from the store.
#[derive(Debug)]
pub struct Loaded {
    /// The state exactly as the store holds it: what the next checkpoint
    /// is the difference from.
    pub stored: State,
    /// The state to start from: `stored`, and for a store written before
    /// the command log its aggregates brought up to date with the outcomes
    /// logged after their last checkpoint. The command log's tail after
    /// `state.position` is still to be folded.
    pub state: State,
    /// The store was written before the command log existed: it has no
    /// checkpoint position yet, and the first checkpoint writes every
    /// record (`stored` is then empty).
    pub legacy: bool,
}

/// Typed access to a [`Backend`].
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store { .. }")
    }
}

/// Reads the tables out of a backend.
struct Source<'a>(&'a dyn Backend);

impl TableSource for Source<'_> {
    type Error = Error;
    fn records<K: TableKey, V: DeserializeOwned>(
        &mut self,
        table: &'static str,
    ) -> Result<Vec<(K, V)>> {
        self.0
            .table(table)?
            .into_iter()
            .map(|(key, value)| {
                let shown = || format!("{table}{}", String::from_utf8_lossy(&key));
                let k = K::from_bytes(&key).ok_or_else(|| {
                    Error::Internal(format!("corrupt store: bad key {:?}", shown()))
                })?;
                let v = codec::decode(shown().as_bytes(), &value)?;
                Ok((k, v))
            })
            .collect()
    }
}

/// Collects a table diff as writes.
struct Writes(Vec<TableWrite>);

impl TableVisitor for Writes {
    type Error = Error;
    fn record<K: TableKey, V: Serialize>(
        &mut self,
        table: &'static str,
        key: &K,
        value: Option<&V>,
    ) -> Result<()> {
        self.0.push(TableWrite {
            table,
            key: key.to_bytes(),
            value: value.map(codec::encode).transpose()?,
        });
        Ok(())
    }
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    /// A store over a key-value engine.
    pub fn on_engine(engine: Arc<dyn Engine>) -> Self {
        Store::new(Arc::new(KvBackend::new(engine)))
    }

    /// A store in `dir` on disk: sled for checkpoints, files for the
    /// command log ([`DiskBackend`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Store::new(Arc::new(DiskBackend::open(dir)?)))
    }

    /// Whether checkpoints may be written beside appends (see
    /// [`Backend::checkpoints_beside_appends`]).
    pub fn checkpoints_beside_appends(&self) -> bool {
        self.backend.checkpoints_beside_appends()
    }

    /// A store that forgets everything when dropped (unit tests).
    pub fn in_memory() -> Self {
        Store::on_engine(Arc::new(MemoryEngine::default()))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.backend
            .meta(name)?
            .map(|bytes| codec::decode(format!("m/{name}").as_bytes(), &bytes))
            .transpose()
    }

    /// Reads the newest checkpoint (see [`Loaded`]). `evidence_days` is what
    /// a legacy store's outcome replay folds with (today's rule).
    pub fn load(&self, evidence_days: i64) -> Result<Loaded> {
        let position = self.backend.checkpoint_position()?;
        let tables = Tables::load(&mut Source(&*self.backend))?;
        let counters = Counters {
            insight_sequence: self.meta(INSIGHT_SEQUENCE)?.unwrap_or(0),
            outcome_sequence: self.meta(OUTCOME_SEQUENCE)?.unwrap_or(0),
            audit_sequence: self.meta(AUDIT_SEQUENCE)?.unwrap_or(0),
            pattern_calibration: self.meta(PATTERN_CALIBRATION)?.unwrap_or_default(),
        };
        let digest = match self.meta::<String>(ROWS_DIGEST)? {
            Some(hex) => parse_digest(&hex)?,
            None => [0; 32],
        };
        // A store with nothing in it is new, not one from before the log.
        let fresh = tables == Tables::default() && counters == Counters::default();
        let stored = State::from_tables(position.unwrap_or(0), tables, counters, digest);
        if position.is_some() || fresh {
            return Ok(Loaded {
                state: stored.clone(),
                stored,
                legacy: false,
            });
        }
        // Written before the command log: aggregates were checkpointed
        // lazily, each complete up to the stored floor at least.
        let floor: Option<u64> = self.meta(LEGACY_STRATEGY_FLOOR)?;
        let last = stored.counters.outcome_sequence;
        if floor.is_some_and(|floor| floor > last) {
            return Err(Error::Internal(format!(
                "corrupt store: strategy floor {} is past the last outcome sequence {last}",
                floor.unwrap_or_default()
            )));
        }
        let mut state = stored;
        self.replay_legacy_outcomes(&mut state, floor.unwrap_or(last), evidence_days)?;
        Ok(Loaded {
            stored: State::default(),
            state,
            legacy: true,
        })
    }

    /// Folds every outcome after `floor` into its aggregate unless the
    /// stored aggregate already holds it.
    fn replay_legacy_outcomes(
        &self,
        state: &mut State,
        floor: u64,
        evidence_days: i64,
    ) -> Result<()> {
        let mut after = floor;
        loop {
            let page = self.outcomes_after(after, 4096)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.sequence;
            for outcome in &page {
                let key = outcome.key();
                let existing = state.tables.strategies.get(&key).cloned();
                if existing
                    .as_ref()
                    .is_some_and(|r| r.through_sequence >= outcome.sequence)
                {
                    continue;
                }
                let record = fold_outcome(existing.as_deref(), &key, outcome, evidence_days);
                state.put_strategy(key, Arc::new(record));
            }
        }
    }

    /// Up to `limit` log entries after `after`, decoded. A command in a
    /// format newer than this hub reads is an error that says so.
    pub fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        self.backend
            .log_after(after, limit)?
            .into_iter()
            .map(|e| {
                let command = Command::decode(e.position, &e.bytes)
                    .map_err(|why| Error::FailedPrecondition(why.to_string()))?;
                Ok(LogEntry {
                    position: e.position,
                    command,
                })
            })
            .collect()
    }

    pub fn log_head(&self) -> Result<u64> {
        self.backend.log_head()
    }

    /// Appends `entries` (durable after [`Store::flush`]).
    pub fn append(&self, entries: &[LogEntry]) -> Result<()> {
        let encoded: Vec<Appended> = entries
            .iter()
            .map(|e| Appended {
                position: e.position,
                bytes: e.command.encode(),
            })
            .collect();
        self.backend.append(&encoded)
    }

    pub fn flush(&self) -> Result<()> {
        self.backend.flush()
    }

    /// After a failure: see [`Backend::recover`].
    pub fn recover(&self) -> Result<()> {
        self.backend.recover()
    }

    pub fn discard_log_after(&self, position: u64) -> Result<()> {
        self.backend.discard_log_after(position)
    }

    /// Writes `state` as the newest checkpoint: what changed since
    /// `stored` (the previous checkpoint, or nothing for a legacy store's
    /// first), its rows not yet stored, its counters and its position.
    pub fn checkpoint(&self, stored: &State, state: &State) -> Result<()> {
        self.backend
            .checkpoint(self.prepare_checkpoint(stored, state)?)
    }

    fn prepare_checkpoint(&self, stored: &State, state: &State) -> Result<Checkpoint> {
        let mut writes = Writes(Vec::new());
        state.tables.diff(&stored.tables, &mut writes)?;
        let mut rows = Vec::with_capacity(state.rows.outcomes.len() + state.rows.audit.len());
        for outcome in &state.rows.outcomes {
            rows.push(RowWrite {
                log: RowLog::Outcomes,
                sequence: outcome.sequence,
                bytes: codec::encode(&**outcome)?,
            });
        }
        for entry in &state.rows.audit {
            rows.push(RowWrite {
                log: RowLog::Audit,
                sequence: entry.sequence,
                bytes: codec::encode(&**entry)?,
            });
        }
        let counters = &state.counters;
        let meta = vec![
            (INSIGHT_SEQUENCE, codec::encode(&counters.insight_sequence)?),
            (OUTCOME_SEQUENCE, codec::encode(&counters.outcome_sequence)?),
            (AUDIT_SEQUENCE, codec::encode(&counters.audit_sequence)?),
            (
                PATTERN_CALIBRATION,
                codec::encode(&counters.pattern_calibration)?,
            ),
            (
                ROWS_DIGEST,
                codec::encode(&crate::domain::state::digest_hex(&state.rows.digest))?,
            ),
        ];
        Ok(Checkpoint {
            position: state.position,
            tables: writes.0,
            rows,
            meta,
        })
    }

    /// [`Store::checkpoint`] written by `write` instead of the backend's
    /// `checkpoint` (a shared log fences it on its base): whatever `write`
    /// answers.
    pub fn checkpoint_with<T>(
        &self,
        stored: &State,
        state: &State,
        write: impl FnOnce(Checkpoint) -> Result<T>,
    ) -> Result<T> {
        write(self.prepare_checkpoint(stored, state)?)
    }

    /// The last outcome and audit sequences the checkpoint holds rows up
    /// to: rows at or before them are in the store.
    pub fn stored_sequences(&self) -> Result<(u64, u64)> {
        Ok((
            self.meta(OUTCOME_SEQUENCE)?.unwrap_or(0),
            self.meta(AUDIT_SEQUENCE)?.unwrap_or(0),
        ))
    }

    /// Removes log entries before `position`.
    pub fn trim_log(&self, before: u64) -> Result<usize> {
        self.backend.trim_log(before)
    }

    /// Up to `limit` stored outcomes with a sequence greater than `after`.
    pub fn outcomes_after(&self, after: u64, limit: usize) -> Result<Vec<StrategyOutcome>> {
        self.backend
            .rows_after(RowLog::Outcomes, after, limit)?
            .into_iter()
            .map(|(sequence, bytes)| {
                let key = format!("o/{sequence}");
                let outcome: StrategyOutcome = codec::decode(key.as_bytes(), &bytes)?;
                check_sequence(&key, sequence, outcome.sequence)?;
                Ok(outcome)
            })
            .collect()
    }

    /// Up to `limit` stored audit entries with a sequence below `before`,
    /// newest first.
    pub fn audit_before(&self, before: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.backend
            .rows_before(RowLog::Audit, before, limit)?
            .into_iter()
            .map(|(sequence, bytes)| {
                let key = format!("u/{sequence}");
                let entry: AuditEntry = codec::decode(key.as_bytes(), &bytes)?;
                check_sequence(&key, sequence, entry.sequence)?;
                Ok(entry)
            })
            .collect()
    }

    /// Trims the rows of `log` stamped before `cutoff` (see
    /// [`Store::first_sequence_at`]); how many.
    pub fn trim_rows(&self, log: RowLog, cutoff: UnixMillis, now: UnixMillis) -> Result<usize> {
        match self.first_sequence_at(log, cutoff, now)? {
            Some(first_kept) => self.backend.trim_rows(log, first_kept),
            None => Ok(0),
        }
    }

    /// Where trimming a row log for `cutoff` stops: the sequence of the
    /// first row that may be from `cutoff` or later (or one past the last
    /// row, if every row is older), reading forwards.
    ///
    /// Rows are in the order they happened, but their stamps come from a
    /// clock that may have jumped. A stamp at or before `now` is taken at
    /// its word. A stamp after `now` cannot be right (the clock was ahead
    /// when it was made and has since been set back); such a row happened
    /// no later than the next row with a believable stamp, so it is trimmed
    /// if that one is, and kept (with everything after it) otherwise. A row
    /// from a clock that was ahead therefore neither blocks trimming until
    /// the clock catches up nor is trimmed early.
    pub fn first_sequence_at(
        &self,
        log: RowLog,
        cutoff: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<u64>> {
        let mut after = 0;
        let mut last_seen = None;
        // The first of a run of rows stamped in the future.
        let mut future_run = None;
        loop {
            let page = self.backend.rows_after(log, after, 4096)?;
            let Some((last, _)) = page.last() else { break };
            let last = *last;
            for (sequence, bytes) in &page {
                let key = format!("{log:?}/{sequence}");
                let (own, time) = match log {
                    RowLog::Outcomes => {
                        let o: StrategyOutcome = codec::decode(key.as_bytes(), bytes)?;
                        (o.sequence, o.at)
                    }
                    RowLog::Audit => {
                        let e: AuditEntry = codec::decode(key.as_bytes(), bytes)?;
                        (e.sequence, e.at)
                    }
                };
                // The caller deletes below the answer: it must be the
                // sequence the key holds.
                check_sequence(&key, *sequence, own)?;
                if time > now {
                    future_run.get_or_insert(*sequence);
                } else if time >= cutoff {
                    return Ok(Some(future_run.unwrap_or(*sequence)));
                } else {
                    future_run = None;
                    last_seen = Some(sequence.saturating_add(1));
                }
            }
            if last == u64::MAX {
                break;
            }
            after = last;
        }
        Ok(future_run.or(last_seen))
    }

    /// About where rows of `log` stamped `at` or later begin: a sequence
    /// at or before the first such row, found by bisecting the sequences
    /// (rows are in the order they happened; a stamp a jumping clock put
    /// out of order only moves the answer, and readers still filter by
    /// time). Reads O(log n) rows instead of every older one.
    pub fn seek(&self, log: RowLog, at: UnixMillis) -> Result<u64> {
        let stamp = |after: u64| -> Result<Option<(u64, UnixMillis)>> {
            let Some((sequence, bytes)) = self.backend.rows_after(log, after, 1)?.pop() else {
                return Ok(None);
            };
            let key = format!("{log:?}/{sequence}");
            let time = match log {
                RowLog::Outcomes => codec::decode::<StrategyOutcome>(key.as_bytes(), &bytes)?.at,
                RowLog::Audit => codec::decode::<AuditEntry>(key.as_bytes(), &bytes)?.at,
            };
            Ok(Some((sequence, time)))
        };
        let Some((first, first_at)) = stamp(0)? else {
            return Ok(0);
        };
        if first_at >= at {
            return Ok(first);
        }
        let last = match self.backend.rows_before(log, u64::MAX, 1)?.pop() {
            Some((last, _)) => last,
            None => return Ok(first),
        };
        // Invariant: the row at `low` is older than `at`; from `high` on,
        // rows are not (or there are none).
        let (mut low, mut high) = (first, last.saturating_add(1));
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            match stamp(mid - 1)? {
                Some((sequence, time)) if time < at => low = sequence.max(mid).min(high - 1),
                Some(_) | None => high = mid,
            }
        }
        Ok(high)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.backend.size_on_disk()
    }
}

/// A row's own sequence must be the one its key holds: readers page on by
/// it.
fn check_sequence(key: &str, stored_at: u64, own: u64) -> Result<()> {
    if stored_at == own {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "corrupt record at key {key:?}: holds sequence {own}, stored at {stored_at}"
        )))
    }
}

fn parse_digest(hex: &str) -> Result<[u8; 32]> {
    let mut digest = [0u8; 32];
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(Error::Internal(format!(
            "corrupt store: rows digest {hex:?}"
        )));
    }
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| Error::Internal(format!("corrupt store: rows digest {hex:?}")))?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Attributes;

    fn outcome(sequence: u64) -> StrategyOutcome {
        StrategyOutcome {
            sequence,
            at: 0,
            instance_id: "a".into(),
            strategy: "s".into(),
            metric: "m".into(),
            value_before: 0.5,
            successful: true,
            delta: 0.1,
            condition: String::new(),
            context: Attributes::new(),
            streak: 0,
            preceded_by: vec![],
        }
    }

    fn with_outcomes(outcomes: &[StrategyOutcome]) -> Store {
        let store = Store::in_memory();
        store
            .backend
            .checkpoint(Checkpoint {
                position: 0,
                rows: outcomes
                    .iter()
                    .map(|o| RowWrite {
                        log: RowLog::Outcomes,
                        sequence: o.sequence,
                        bytes: codec::encode(o).unwrap(),
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
        store
    }

    /// Found by fuzz/store_load: an outcome whose own sequence was below
    /// the one in its key made the replay (which pages on by the outcomes'
    /// sequences) read the same page forever. It is reported as corrupt.
    #[test]
    fn an_outcome_stored_under_another_sequence_is_corrupt_not_a_hang() {
        let store = Store::in_memory();
        store
            .backend
            .checkpoint(Checkpoint {
                rows: vec![RowWrite {
                    log: RowLog::Outcomes,
                    sequence: 5,
                    bytes: codec::encode(&outcome(1)).unwrap(),
                }],
                ..Default::default()
            })
            .unwrap();
        let err = store.outcomes_after(0, 10).unwrap_err().to_string();
        assert!(err.contains("holds sequence 1, stored at 5"), "{err}");
    }

    /// Found by fuzz/store_load: with a floor past the last outcome
    /// sequence, a start of a pre-command-log store replayed nothing and
    /// lowered the floor below outcomes it had never read.
    #[test]
    fn a_legacy_floor_past_the_last_outcome_is_corrupt() {
        let engine = MemoryEngine::default();
        engine
            .apply(vec![
                (
                    b"m/strategy_floor".to_vec(),
                    Some(codec::encode(&10u64).unwrap()),
                ),
                (
                    b"m/outcome_sequence".to_vec(),
                    Some(codec::encode(&3u64).unwrap()),
                ),
            ])
            .unwrap();
        let store = Store::on_engine(Arc::new(engine));
        let err = store.load(7).map(drop).unwrap_err().to_string();
        assert!(
            err.contains("strategy floor 10 is past the last outcome sequence 3"),
            "{err}"
        );
    }

    /// Found by fuzz/store_load: "one past the last sequence" overflowed
    /// (a panic in debug builds) when the last record held u64::MAX.
    #[test]
    fn the_first_sequence_at_a_time_never_overflows() {
        let mut last = outcome(u64::MAX);
        last.at = 5;
        let store = with_outcomes(&[last]);
        assert_eq!(
            store.first_sequence_at(RowLog::Outcomes, 10, 100).unwrap(),
            Some(u64::MAX)
        );
        assert_eq!(
            store.first_sequence_at(RowLog::Outcomes, 5, 100).unwrap(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn seek_finds_where_a_time_begins_in_few_reads() {
        let outcomes: Vec<_> = (1..=1000)
            .map(|i| StrategyOutcome {
                at: i as i64 * 10,
                ..outcome(i)
            })
            .collect();
        let store = with_outcomes(&outcomes);
        assert_eq!(store.seek(RowLog::Outcomes, 0).unwrap(), 1);
        assert_eq!(store.seek(RowLog::Outcomes, 10).unwrap(), 1);
        assert_eq!(store.seek(RowLog::Outcomes, 5005).unwrap(), 501);
        assert_eq!(store.seek(RowLog::Outcomes, 5000).unwrap(), 500);
        assert_eq!(store.seek(RowLog::Outcomes, 99_999).unwrap(), 1001);
        assert_eq!(Store::in_memory().seek(RowLog::Audit, 5).unwrap(), 0);
    }

    #[test]
    fn row_trimming_follows_the_order_rows_were_made_in() {
        const NOW: i64 = 1_000_000;
        const CUTOFF: i64 = 500_000;
        let trim_point = |stamps: &[i64]| {
            let outcomes: Vec<_> = stamps
                .iter()
                .enumerate()
                .map(|(i, &at)| StrategyOutcome {
                    at,
                    ..outcome(i as u64 + 1)
                })
                .collect();
            with_outcomes(&outcomes)
                .first_sequence_at(RowLog::Outcomes, CUTOFF, NOW)
                .unwrap()
        };
        let future = NOW + 1;
        let old = CUTOFF - 1;
        assert_eq!(trim_point(&[]), None);
        assert_eq!(trim_point(&[old, old]), Some(3), "all old: trim all");
        assert_eq!(
            trim_point(&[old, CUTOFF, old]),
            Some(2),
            "stop at the first kept"
        );
        // A future stamp followed by an old one: made before it, trimmed.
        assert_eq!(trim_point(&[old, future, old, CUTOFF]), Some(4));
        // Followed by a recent one, or by nothing: kept.
        assert_eq!(trim_point(&[old, future, CUTOFF]), Some(2));
        assert_eq!(trim_point(&[old, future, future]), Some(2));
    }
}
