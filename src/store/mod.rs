//! Durable state. [`Store`] reads and writes the hub's typed records through
//! an [`Engine`] (sled on disk, or memory in unit tests), encoded by
//! [`codec`]. The hub keeps its working state in memory; the store is where
//! that state is made durable and rebuilt from at start ([`Store::load`]).
//! The raw strategy-outcome log is write-mostly and is only read back by
//! range ([`Store::outcomes_after`]), never loaded whole.

pub mod codec;
pub mod engine;
pub mod faults;
mod finite;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use serde::de::DeserializeOwned;

pub use engine::{Engine, KvWrite, MemoryEngine, PID_FILE, SledEngine};
pub use faults::{Fault, Faults, FaultyEngine, Op};

use crate::domain::idempotency::{RequestKey, RequestRecord};
use crate::domain::matching::MatchCalibration;
use crate::domain::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, Pattern, StrategyKey,
    StrategyOutcome, StrategyRecord, UnixMillis,
};
use crate::error::{Error, Result};
use codec::Kind;

/// Meta keys for the hub's counters. Sequences are persisted rather than
/// derived from the highest stored record so that a deleted (expired)
/// record's sequence is never handed out again.
const INSIGHT_SEQUENCE: &[u8] = b"insight_sequence";
const OUTCOME_SEQUENCE: &[u8] = b"outcome_sequence";
const PATTERN_CALIBRATION: &[u8] = b"pattern_calibration";
const AUDIT_SEQUENCE: &[u8] = b"audit_sequence";
/// Outcomes after this sequence may be missing from the stored strategy
/// aggregates (see [`Changes::checkpoint`]).
const STRATEGY_FLOOR: &[u8] = b"strategy_floor";

/// A set of record upserts to make durable together. A later change to the
/// same record replaces an earlier one, so a group commit writes each
/// record once however many requests touched it.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// New instance versions, for the in-memory state. Only those named in
    /// `instance_writes` (registrations) are written by this commit; an
    /// instance's activity (last seen, records shared) changes with every
    /// write it makes and is persisted lazily through
    /// `instance_checkpoint`.
    pub instances: HashMap<String, Arc<Instance>>,
    pub instance_writes: HashSet<String>,
    pub instance_checkpoint: Vec<Arc<Instance>>,
    pub patterns: HashMap<String, Arc<Pattern>>,
    /// New aggregate versions, for the in-memory state. They are *not*
    /// written by [`Store::commit`]: an aggregate is derived from the
    /// outcome log, so rewriting it (it can hold kilobytes of windowed
    /// evidence) with every outcome would multiply the bytes each write
    /// costs. The writer persists them lazily through `checkpoint`.
    pub strategies: HashMap<StrategyKey, Arc<StrategyRecord>>,
    /// Aggregates to persist in this commit.
    pub checkpoint: Vec<Arc<StrategyRecord>>,
    /// Every outcome up to this sequence is in the persisted aggregates
    /// (each aggregate's `through_sequence` says which it holds); a restart
    /// replays the outcomes after it.
    pub strategy_floor: Option<u64>,
    pub insights: BTreeMap<u64, Arc<Insight>>,
    pub failures: HashMap<String, Arc<FailurePattern>>,
    pub configs: HashMap<String, Arc<Configuration>>,
    /// Appended to the outcome log; never rewritten.
    pub outcomes: Vec<StrategyOutcome>,
    pub insight_sequence: Option<u64>,
    pub outcome_sequence: Option<u64>,
    pub pattern_calibration: Option<MatchCalibration>,
    /// API keys set (`Some`) or revoked (`None`), by instance.
    pub api_keys: HashMap<String, Option<Arc<ApiKey>>>,
    /// Appended to the audit log.
    pub audit: Vec<AuditEntry>,
    pub audit_sequence: Option<u64>,
    /// Records removed (retention).
    pub removed_patterns: BTreeSet<String>,
    pub removed_insights: BTreeSet<u64>,
    /// Request ids remembered (idempotent writes), written in the same
    /// batch as the write they guard…
    pub requests: HashMap<RequestKey, RequestRecord>,
    /// …and forgotten once expired. A key is never in both.
    pub removed_requests: BTreeSet<RequestKey>,
}

impl Changes {
    /// Folds `later` into `self`; `later` wins where both touch a record.
    pub fn absorb(&mut self, later: Changes) {
        self.instances.extend(later.instances);
        self.instance_writes.extend(later.instance_writes);
        self.instance_checkpoint.extend(later.instance_checkpoint);
        self.patterns.extend(later.patterns);
        self.strategies.extend(later.strategies);
        self.checkpoint.extend(later.checkpoint);
        self.strategy_floor = later.strategy_floor.or(self.strategy_floor);
        self.insights.extend(later.insights);
        self.failures.extend(later.failures);
        self.configs.extend(later.configs);
        self.outcomes.extend(later.outcomes);
        self.insight_sequence = later.insight_sequence.or(self.insight_sequence);
        self.outcome_sequence = later.outcome_sequence.or(self.outcome_sequence);
        self.pattern_calibration = later.pattern_calibration.or(self.pattern_calibration);
        self.api_keys.extend(later.api_keys);
        self.audit.extend(later.audit);
        self.audit_sequence = later.audit_sequence.or(self.audit_sequence);
        for id in later.removed_patterns {
            self.patterns.remove(&id);
            self.removed_patterns.insert(id);
        }
        for seq in later.removed_insights {
            self.insights.remove(&seq);
            self.removed_insights.insert(seq);
        }
        // `later` never holds a key in both sets, so the order is free.
        for key in later.removed_requests {
            self.requests.remove(&key);
            self.removed_requests.insert(key);
        }
        for (key, record) in later.requests {
            self.removed_requests.remove(&key);
            self.requests.insert(key, record);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.instance_checkpoint.is_empty()
            && self.patterns.is_empty()
            && self.strategies.is_empty()
            && self.checkpoint.is_empty()
            && self.strategy_floor.is_none()
            && self.insights.is_empty()
            && self.failures.is_empty()
            && self.configs.is_empty()
            && self.outcomes.is_empty()
            && self.insight_sequence.is_none()
            && self.outcome_sequence.is_none()
            && self.pattern_calibration.is_none()
            && self.api_keys.is_empty()
            && self.audit.is_empty()
            && self.audit_sequence.is_none()
            && self.removed_patterns.is_empty()
            && self.removed_insights.is_empty()
            && self.requests.is_empty()
            && self.removed_requests.is_empty()
    }

    fn encode(&self) -> Result<Vec<KvWrite>> {
        let mut writes = Vec::new();
        fn put(writes: &mut Vec<KvWrite>, key: Vec<u8>, value: Vec<u8>) {
            writes.push((key, Some(value)));
        }
        let registered = self
            .instances
            .iter()
            .filter(|(id, _)| self.instance_writes.contains(*id))
            .map(|(_, v)| v);
        for v in registered.chain(&self.instance_checkpoint) {
            put(
                &mut writes,
                codec::key(Kind::Instance, v.instance_id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.patterns {
            put(
                &mut writes,
                codec::key(Kind::Pattern, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for v in &self.checkpoint {
            put(
                &mut writes,
                codec::strategy_key(&v.key()),
                codec::encode(&**v)?,
            );
        }
        if let Some(floor) = self.strategy_floor {
            put(
                &mut writes,
                codec::key(Kind::Meta, STRATEGY_FLOOR),
                codec::encode(&floor)?,
            );
        }
        for (seq, v) in &self.insights {
            put(
                &mut writes,
                codec::sequence_key(Kind::Insight, *seq),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.failures {
            put(
                &mut writes,
                codec::key(Kind::Failure, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.configs {
            put(
                &mut writes,
                codec::key(Kind::Config, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for outcome in &self.outcomes {
            put(
                &mut writes,
                codec::sequence_key(Kind::Outcome, outcome.sequence),
                codec::encode(outcome)?,
            );
        }
        if let Some(seq) = self.insight_sequence {
            put(
                &mut writes,
                codec::key(Kind::Meta, INSIGHT_SEQUENCE),
                codec::encode(&seq)?,
            );
        }
        if let Some(seq) = self.outcome_sequence {
            put(
                &mut writes,
                codec::key(Kind::Meta, OUTCOME_SEQUENCE),
                codec::encode(&seq)?,
            );
        }
        for (id, key) in &self.api_keys {
            let k = codec::key(Kind::ApiKey, id.as_bytes());
            match key {
                Some(key) => put(&mut writes, k, codec::encode(&**key)?),
                None => writes.push((k, None)),
            }
        }
        for entry in &self.audit {
            writes.push((
                codec::sequence_key(Kind::Audit, entry.sequence),
                Some(codec::encode(entry)?),
            ));
        }
        if let Some(seq) = self.audit_sequence {
            writes.push((
                codec::key(Kind::Meta, AUDIT_SEQUENCE),
                Some(codec::encode(&seq)?),
            ));
        }
        for id in &self.removed_patterns {
            writes.push((codec::key(Kind::Pattern, id.as_bytes()), None));
        }
        for seq in &self.removed_insights {
            writes.push((codec::sequence_key(Kind::Insight, *seq), None));
        }
        if let Some(calibration) = &self.pattern_calibration {
            put(
                &mut writes,
                codec::key(Kind::Meta, PATTERN_CALIBRATION),
                codec::encode(calibration)?,
            );
        }
        for (key, record) in &self.requests {
            put(&mut writes, codec::request_key(key), codec::encode(record)?);
        }
        for key in &self.removed_requests {
            writes.push((codec::request_key(key), None));
        }
        Ok(writes)
    }
}

/// Everything the hub keeps in memory, as read from the store at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub instances: Vec<Instance>,
    pub patterns: Vec<Pattern>,
    pub strategies: Vec<StrategyRecord>,
    pub insights: Vec<Insight>,
    pub failures: Vec<FailurePattern>,
    pub configs: Vec<Configuration>,
    /// The last sequence handed out (0: none yet).
    pub insight_sequence: u64,
    pub outcome_sequence: u64,
    pub pattern_calibration: MatchCalibration,
    pub api_keys: Vec<ApiKey>,
    pub audit_sequence: u64,
    /// Outcomes after this one may be missing from `strategies` and must
    /// be replayed (`None`: the store never recorded a floor).
    pub strategy_floor: Option<u64>,
    /// Remembered request ids, expired ones included (the hub drops those).
    pub requests: Vec<(RequestKey, RequestRecord)>,
}

/// Typed access to the hub's durable records.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
}

impl Store {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Store { engine }
    }

    /// A store in `dir` on disk.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Store::new(Arc::new(SledEngine::open(dir)?)))
    }

    /// A store that forgets everything when dropped (unit tests).
    pub fn in_memory() -> Self {
        Store::new(Arc::new(MemoryEngine::default()))
    }

    /// Reads every record the hub keeps in memory.
    pub fn load(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            instances: self.load_kind(Kind::Instance)?,
            patterns: self.load_kind(Kind::Pattern)?,
            strategies: self.load_kind(Kind::Strategy)?,
            insights: self.load_kind(Kind::Insight)?,
            failures: self.load_kind(Kind::Failure)?,
            configs: self.load_kind(Kind::Config)?,
            insight_sequence: self.meta(INSIGHT_SEQUENCE)?.unwrap_or(0),
            outcome_sequence: self.meta(OUTCOME_SEQUENCE)?.unwrap_or(0),
            pattern_calibration: self.meta(PATTERN_CALIBRATION)?.unwrap_or_default(),
            api_keys: self.load_kind(Kind::ApiKey)?,
            audit_sequence: self.meta(AUDIT_SEQUENCE)?.unwrap_or(0),
            strategy_floor: self.meta(STRATEGY_FLOOR)?,
            requests: self.load_requests()?,
        })
    }

    /// Writes `changes` atomically. They are durable after [`Store::flush`].
    pub fn commit(&self, changes: &Changes) -> Result<()> {
        self.engine.apply(changes.encode()?)
    }

    /// Writes `changes` atomically on top of a repair of an earlier failed
    /// commit: every record `touched` wrote is first put back as `restore`
    /// has it, or erased where `restore` has no version of it. Whatever the
    /// failed commit left in the engine — all of it, none of it — is thereby
    /// replaced by what the hub acknowledged.
    pub fn commit_repairing(
        &self,
        touched: &Changes,
        restore: &Changes,
        changes: &Changes,
    ) -> Result<()> {
        let restored = restore.encode()?;
        let kept: HashSet<&[u8]> = restored.iter().map(|(k, _)| k.as_slice()).collect();
        let mut writes: Vec<KvWrite> = touched
            .encode()?
            .into_iter()
            .filter(|(k, _)| !kept.contains(k.as_slice()))
            .map(|(k, _)| (k, None))
            .collect();
        writes.extend(restored);
        // Later writes to a key win: the new changes over the repair.
        writes.extend(changes.encode()?);
        self.engine.apply(writes)
    }

    /// Makes every committed change durable.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    /// After a failed commit: makes the engine writable again if it can
    /// (see [`Engine::recover`]).
    pub fn recover(&self) -> Result<()> {
        self.engine.recover()
    }

    /// Up to `limit` outcomes with a sequence greater than `after`, in order.
    pub fn outcomes_after(&self, after: u64, limit: usize) -> Result<Vec<StrategyOutcome>> {
        let (_, end) = Kind::Outcome.range();
        let start = codec::sequence_key(Kind::Outcome, after.saturating_add(1));
        self.engine
            .scan(&start, &end, limit)?
            .iter()
            .map(|(k, v)| {
                let outcome: StrategyOutcome = codec::decode(k, v)?;
                codec::check_sequence(Kind::Outcome, k, outcome.sequence)?;
                Ok(outcome)
            })
            .collect()
    }

    /// Up to `limit` audit entries with `from <= at < until`, newest first,
    /// that pass `keep` (scanning at most the whole log).
    pub fn audit_between(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>> {
        let (start, end) = Kind::Audit.range();
        let mut found: Vec<AuditEntry> = Vec::new();
        let mut cursor = start;
        // Entries are in time order: read forwards in pages, keep the
        // newest `limit` matches.
        loop {
            let page = self.engine.scan(&cursor, &end, 4096)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (k, v) in &page {
                let entry: AuditEntry = codec::decode(k, v)?;
                if entry.at >= from && entry.at < until && keep(&entry) {
                    found.push(entry);
                    if found.len() > limit {
                        found.remove(0);
                    }
                }
            }
            cursor = next;
        }
        found.reverse();
        Ok(found)
    }

    /// Deletes the records of `kind` (a sequence-keyed log: outcomes or
    /// audit) with a sequence below `before`, and flushes. Returns how many.
    pub fn truncate_log(&self, kind: Kind, before: u64) -> Result<usize> {
        let (start, _) = kind.range();
        let end = codec::sequence_key(kind, before);
        let mut removed = 0;
        loop {
            let page = self.engine.scan(&start, &end, 4096)?;
            if page.is_empty() {
                break;
            }
            removed += page.len();
            self.engine
                .apply(page.into_iter().map(|(k, _)| (k, None)).collect())?;
        }
        if removed > 0 {
            self.engine.flush()?;
        }
        Ok(removed)
    }

    /// Where trimming a sequence-keyed log for `cutoff` stops: the sequence
    /// of the first record that may be from `cutoff` or later (or one past
    /// the last record, if every record is older), reading forwards.
    ///
    /// Records are in the order they happened, but their stamps come from a
    /// clock that may have jumped. A stamp at or before `now` is taken at
    /// its word. A stamp after `now` cannot be right (the clock was ahead
    /// when it was made and has since been set back); such a record
    /// happened no later than the next record with a believable stamp, so
    /// it is trimmed if that one is, and kept (with everything after it)
    /// otherwise. A record from a clock that was ahead therefore neither
    /// blocks trimming until the clock catches up nor is trimmed early.
    pub fn first_sequence_at(
        &self,
        kind: Kind,
        cutoff: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<u64>> {
        let (start, end) = kind.range();
        let mut cursor = start;
        let mut last_seen = None;
        // The first of a run of records stamped in the future.
        let mut future_run = None;
        loop {
            let page = self.engine.scan(&cursor, &end, 4096)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (k, v) in &page {
                let (sequence, time) = match kind {
                    Kind::Outcome => {
                        let o: StrategyOutcome = codec::decode(k, v)?;
                        (o.sequence, o.at)
                    }
                    _ => {
                        let e: AuditEntry = codec::decode(k, v)?;
                        (e.sequence, e.at)
                    }
                };
                // The caller deletes below the answer: it must be the
                // sequence the key holds.
                codec::check_sequence(kind, k, sequence)?;
                if time > now {
                    future_run.get_or_insert(sequence);
                } else if time >= cutoff {
                    return Ok(Some(future_run.unwrap_or(sequence)));
                } else {
                    future_run = None;
                    last_seen = Some(sequence.saturating_add(1));
                }
            }
            cursor = next;
        }
        Ok(future_run.or(last_seen))
    }

    pub fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }

    fn load_kind<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        let (start, end) = kind.range();
        self.engine
            .scan(&start, &end, usize::MAX)?
            .iter()
            .map(|(k, v)| codec::decode(k, v))
            .collect()
    }

    /// Remembered request ids with their keys (the key is not repeated in
    /// the value).
    fn load_requests(&self) -> Result<Vec<(RequestKey, RequestRecord)>> {
        let (start, end) = Kind::Request.range();
        self.engine
            .scan(&start, &end, usize::MAX)?
            .iter()
            .map(|(k, v)| {
                let key = String::from_utf8(k[Kind::Request.prefix().len()..].to_vec())
                    .ok()
                    .and_then(RequestKey::from_stored)
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "corrupt request key {:?}",
                            String::from_utf8_lossy(k)
                        ))
                    })?;
                Ok((key, codec::decode(k, v)?))
            })
            .collect()
    }

    fn meta<T: DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>> {
        let key = codec::key(Kind::Meta, name);
        let mut end = key.clone();
        end.push(0);
        self.engine
            .scan(&key, &end, 1)?
            .first()
            .map(|(k, v)| codec::decode(k, v))
            .transpose()
    }
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

    #[test]
    fn changes_round_trip_through_load() {
        let store = Store::in_memory();
        let mut changes = Changes::default();
        let instance = Instance {
            instance_id: "us-east-1".into(),
            region: "us-east".into(),
            context: Attributes::new(),
            capabilities: vec![],
            registered_at: 1,
            last_seen: 1,
            shared_records: 0,
        };
        changes
            .instances
            .insert(instance.instance_id.clone(), Arc::new(instance.clone()));
        changes.instance_writes.insert(instance.instance_id.clone());
        changes.outcomes = (1..=5).map(outcome).collect();
        changes.outcome_sequence = Some(5);
        changes.insight_sequence = Some(7);
        store.commit(&changes).unwrap();
        store.flush().unwrap();

        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.instances, vec![instance]);
        assert_eq!(snapshot.outcome_sequence, 5);
        assert_eq!(snapshot.insight_sequence, 7);
        let tail = store.outcomes_after(2, 2).unwrap();
        assert_eq!(
            tail.iter().map(|o| o.sequence).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    /// Found by fuzz/store_load: an outcome whose own sequence was below
    /// the one in its key made the start's replay (which pages on by the
    /// outcomes' sequences) read the same page forever. It is now reported
    /// as corrupt, and the hub's load fails at once.
    #[test]
    fn an_outcome_stored_under_another_sequence_is_corrupt_not_a_hang() {
        let store = Store::in_memory();
        store
            .engine
            .apply(vec![(
                codec::sequence_key(Kind::Outcome, 5),
                Some(codec::encode(&outcome(1)).unwrap()),
            )])
            .unwrap();
        let err = store.outcomes_after(0, 10).unwrap_err().to_string();
        assert!(err.contains("holds sequence 1, stored at 5"), "{err}");

        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let settings = crate::hub::HubSettings::default();
            let loaded = crate::hub::Hub::load_state(&store, &settings, 0).map(drop);
            tx.send(loaded).ok();
        });
        let loaded = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("loading the store hangs");
        assert!(loaded.unwrap_err().to_string().contains("corrupt record"));
    }

    /// Found by fuzz/store_load: with a floor past the last outcome
    /// sequence, a start replayed nothing, then lowered the floor to that
    /// sequence — below outcomes it had never read, which the next start
    /// then failed on. Such a store is now refused at the first start.
    #[test]
    fn a_floor_past_the_last_outcome_is_corrupt() {
        let store = Store::in_memory();
        store
            .commit(&Changes {
                strategy_floor: Some(10),
                outcome_sequence: Some(3),
                ..Default::default()
            })
            .unwrap();
        let err = crate::hub::Hub::load_state(&store, &Default::default(), 0)
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("strategy floor 10 is past the last outcome sequence 3"),
            "{err}"
        );
    }

    /// Found by fuzz/store_load: "one past the last sequence" overflowed
    /// (a panic in debug builds) when the last record held u64::MAX.
    #[test]
    fn the_first_sequence_at_a_time_never_overflows() {
        let store = Store::in_memory();
        let mut last = outcome(u64::MAX);
        last.at = 5;
        store
            .engine
            .apply(vec![(
                codec::sequence_key(Kind::Outcome, u64::MAX),
                Some(codec::encode(&last).unwrap()),
            )])
            .unwrap();
        assert_eq!(
            store.first_sequence_at(Kind::Outcome, 10, 100).unwrap(),
            Some(u64::MAX)
        );
        assert_eq!(
            store.first_sequence_at(Kind::Outcome, 5, 100).unwrap(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn log_trimming_follows_the_order_records_were_made_in() {
        const NOW: i64 = 1_000_000;
        const CUTOFF: i64 = 500_000;
        let trim_point = |stamps: &[i64]| {
            let store = Store::in_memory();
            let outcomes = stamps
                .iter()
                .enumerate()
                .map(|(i, &at)| StrategyOutcome {
                    at,
                    ..outcome(i as u64 + 1)
                })
                .collect();
            store
                .commit(&Changes {
                    outcomes,
                    ..Default::default()
                })
                .unwrap();
            store.first_sequence_at(Kind::Outcome, CUTOFF, NOW).unwrap()
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

    #[test]
    fn a_repair_puts_back_what_a_failed_commit_touched() {
        let store = Store::in_memory();
        let acknowledged = Changes {
            outcomes: vec![outcome(1)],
            outcome_sequence: Some(1),
            insight_sequence: Some(4),
            ..Default::default()
        };
        store.commit(&acknowledged).unwrap();
        // A commit whose flush failed: it reached the engine anyway.
        let failed = Changes {
            outcomes: vec![outcome(2)],
            outcome_sequence: Some(2),
            ..Default::default()
        };
        store.commit(&failed).unwrap();
        // The hub's view: outcome 2 never happened.
        let restore = Changes {
            outcome_sequence: Some(1),
            ..Default::default()
        };
        let next = Changes {
            insight_sequence: Some(5),
            ..Default::default()
        };
        store.commit_repairing(&failed, &restore, &next).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(
            (snapshot.outcome_sequence, snapshot.insight_sequence),
            (1, 5)
        );
        let log: Vec<u64> = store
            .outcomes_after(0, 10)
            .unwrap()
            .iter()
            .map(|o| o.sequence)
            .collect();
        assert_eq!(log, [1]);
    }

    #[test]
    fn request_ids_round_trip_and_are_deleted() {
        use crate::domain::idempotency::{Applied, Fingerprint};
        let store = Store::in_memory();
        let key = RequestKey::new("us-east-1", "3f1c-uuid");
        let record = RequestRecord {
            applied: Applied::ShareStrategy {
                outcome_sequence: 4,
            },
            fingerprint: Fingerprint::of(b"payload"),
            at: 1_700_000_000_000,
        };
        let mut changes = Changes::default();
        changes.requests.insert(key.clone(), record);
        store.commit(&changes).unwrap();
        assert_eq!(store.load().unwrap().requests, vec![(key.clone(), record)]);

        // A removal later in a batch wins over the earlier upsert, and the
        // reverse.
        let mut batch = Changes::default();
        batch.requests.insert(key.clone(), record);
        let mut removal = Changes::default();
        removal.removed_requests.insert(key.clone());
        batch.absorb(removal);
        assert!(batch.requests.is_empty() && !batch.is_empty());
        store.commit(&batch).unwrap();
        assert!(store.load().unwrap().requests.is_empty());
        let mut again = Changes::default();
        again.requests.insert(key.clone(), record);
        batch.absorb(again);
        assert!(batch.removed_requests.is_empty());
        assert_eq!(batch.requests.len(), 1);
    }

    #[test]
    fn absorb_prefers_later_changes() {
        let mut a = Changes {
            insight_sequence: Some(1),
            ..Default::default()
        };
        a.absorb(Changes {
            insight_sequence: Some(2),
            ..Default::default()
        });
        a.absorb(Changes::default());
        assert_eq!(a.insight_sequence, Some(2));
        assert!(!a.is_empty());
        assert!(Changes::default().is_empty());
    }
}
