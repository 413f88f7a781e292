//! Durable state. [`Store`] reads and writes the hub's typed records through
//! an [`Engine`] (sled on disk, or memory in unit tests), encoded by
//! [`codec`]. The hub keeps its working state in memory; the store is where
//! that state is made durable and rebuilt from at start ([`Store::load`]).
//! The raw strategy-outcome log is write-mostly and is only read back by
//! range ([`Store::outcomes_after`]), never loaded whole.

pub mod codec;
pub mod engine;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
};

use serde::de::DeserializeOwned;

pub use engine::{Engine, KvWrite, MemoryEngine, SledEngine};

use crate::domain::matching::MatchCalibration;
use crate::domain::model::{
    Configuration, FailurePattern, Insight, Instance, Pattern, StrategyKey, StrategyOutcome,
    StrategyRecord,
};
use crate::error::Result;
use codec::Kind;

/// Meta keys for the hub's counters. Sequences are persisted rather than
/// derived from the highest stored record so that a deleted (expired)
/// record's sequence is never handed out again.
const INSIGHT_SEQUENCE: &[u8] = b"insight_sequence";
const OUTCOME_SEQUENCE: &[u8] = b"outcome_sequence";
const PATTERN_CALIBRATION: &[u8] = b"pattern_calibration";

/// A set of record upserts to make durable together. A later change to the
/// same record replaces an earlier one, so a group commit writes each
/// record once however many requests touched it.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub instances: HashMap<String, Arc<Instance>>,
    pub patterns: HashMap<String, Arc<Pattern>>,
    pub strategies: HashMap<StrategyKey, Arc<StrategyRecord>>,
    pub insights: BTreeMap<u64, Arc<Insight>>,
    pub failures: HashMap<String, Arc<FailurePattern>>,
    pub configs: HashMap<String, Arc<Configuration>>,
    /// Appended to the outcome log; never rewritten.
    pub outcomes: Vec<StrategyOutcome>,
    pub insight_sequence: Option<u64>,
    pub outcome_sequence: Option<u64>,
    pub pattern_calibration: Option<MatchCalibration>,
}

impl Changes {
    /// Folds `later` into `self`; `later` wins where both touch a record.
    pub fn absorb(&mut self, later: Changes) {
        self.instances.extend(later.instances);
        self.patterns.extend(later.patterns);
        self.strategies.extend(later.strategies);
        self.insights.extend(later.insights);
        self.failures.extend(later.failures);
        self.configs.extend(later.configs);
        self.outcomes.extend(later.outcomes);
        self.insight_sequence = later.insight_sequence.or(self.insight_sequence);
        self.outcome_sequence = later.outcome_sequence.or(self.outcome_sequence);
        self.pattern_calibration = later.pattern_calibration.or(self.pattern_calibration);
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.patterns.is_empty()
            && self.strategies.is_empty()
            && self.insights.is_empty()
            && self.failures.is_empty()
            && self.configs.is_empty()
            && self.outcomes.is_empty()
            && self.insight_sequence.is_none()
            && self.outcome_sequence.is_none()
            && self.pattern_calibration.is_none()
    }

    fn encode(&self) -> Result<Vec<KvWrite>> {
        let mut writes = Vec::new();
        let mut put = |key: Vec<u8>, value: Vec<u8>| writes.push((key, Some(value)));
        for (id, v) in &self.instances {
            put(
                codec::key(Kind::Instance, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.patterns {
            put(
                codec::key(Kind::Pattern, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for (k, v) in &self.strategies {
            put(codec::strategy_key(k), codec::encode(&**v)?);
        }
        for (seq, v) in &self.insights {
            put(
                codec::sequence_key(Kind::Insight, *seq),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.failures {
            put(
                codec::key(Kind::Failure, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for (id, v) in &self.configs {
            put(
                codec::key(Kind::Config, id.as_bytes()),
                codec::encode(&**v)?,
            );
        }
        for outcome in &self.outcomes {
            put(
                codec::sequence_key(Kind::Outcome, outcome.sequence),
                codec::encode(outcome)?,
            );
        }
        if let Some(seq) = self.insight_sequence {
            put(
                codec::key(Kind::Meta, INSIGHT_SEQUENCE),
                codec::encode(&seq)?,
            );
        }
        if let Some(seq) = self.outcome_sequence {
            put(
                codec::key(Kind::Meta, OUTCOME_SEQUENCE),
                codec::encode(&seq)?,
            );
        }
        if let Some(calibration) = &self.pattern_calibration {
            put(
                codec::key(Kind::Meta, PATTERN_CALIBRATION),
                codec::encode(calibration)?,
            );
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
        })
    }

    /// Writes `changes` atomically. They are durable after [`Store::flush`].
    pub fn commit(&self, changes: &Changes) -> Result<()> {
        self.engine.apply(changes.encode()?)
    }

    /// Makes every committed change durable.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    /// Up to `limit` outcomes with a sequence greater than `after`, in order.
    pub fn outcomes_after(&self, after: u64, limit: usize) -> Result<Vec<StrategyOutcome>> {
        let (_, end) = Kind::Outcome.range();
        let start = codec::sequence_key(Kind::Outcome, after.saturating_add(1));
        self.engine
            .scan(&start, &end, limit)?
            .iter()
            .map(|(k, v)| codec::decode(k, v))
            .collect()
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
