//! The hub's working state in memory and the transaction view writers use.
//!
//! [`State`] holds every record except the outcome log, indexed for the
//! queries the hub answers. Readers see only what is durable: writes are
//! staged in a [`Txn`] overlay, made durable by the writer, and only then
//! installed with [`State::apply`].

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::Arc,
};

use crate::domain::matching::{MatchCalibration, PatternIndex};
use crate::domain::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, Pattern, StrategyKey,
    StrategyOutcome, StrategyRecord, UnixMillis,
};
use crate::store::{Changes, Snapshot};

/// Everything the hub knows, except the raw outcome log.
#[derive(Debug, Default)]
pub struct State {
    pub instances: BTreeMap<String, Arc<Instance>>,
    pub patterns: BTreeMap<String, Arc<Pattern>>,
    /// The same patterns, indexed for matching.
    pub pattern_index: PatternIndex,
    /// Ordered by metric first: one metric's aggregates are one range.
    pub strategies: BTreeMap<StrategyKey, Arc<StrategyRecord>>,
    /// By sequence.
    pub insights: BTreeMap<u64, Arc<Insight>>,
    pub failures: BTreeMap<String, Arc<FailurePattern>>,
    pub configs: BTreeMap<String, Arc<Configuration>>,
    /// The last insight sequence handed out.
    pub insight_sequence: u64,
    /// The last outcome sequence handed out.
    pub outcome_sequence: u64,
    /// How acted-on pattern matches turned out, by similarity.
    pub pattern_calibration: MatchCalibration,
    /// Each instance's current API key (hash).
    pub api_keys: HashMap<String, Arc<ApiKey>>,
    /// The last audit sequence handed out.
    pub audit_sequence: u64,
}

impl State {
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let mut state = State {
            instances: snapshot
                .instances
                .into_iter()
                .map(|v| (v.instance_id.clone(), Arc::new(v)))
                .collect(),
            patterns: snapshot
                .patterns
                .into_iter()
                .map(|v| (v.id.clone(), Arc::new(v)))
                .collect(),
            strategies: snapshot
                .strategies
                .into_iter()
                .map(|v| (v.key(), Arc::new(v)))
                .collect(),
            insights: snapshot
                .insights
                .into_iter()
                .map(|v| (v.sequence, Arc::new(v)))
                .collect(),
            failures: snapshot
                .failures
                .into_iter()
                .map(|v| (v.id.clone(), Arc::new(v)))
                .collect(),
            configs: snapshot
                .configs
                .into_iter()
                .map(|v| (v.id.clone(), Arc::new(v)))
                .collect(),
            insight_sequence: snapshot.insight_sequence,
            outcome_sequence: snapshot.outcome_sequence,
            pattern_index: PatternIndex::default(),
            pattern_calibration: snapshot.pattern_calibration,
            api_keys: snapshot
                .api_keys
                .into_iter()
                .map(|k| (k.instance_id.clone(), Arc::new(k)))
                .collect(),
            audit_sequence: snapshot.audit_sequence,
        };
        for pattern in state.patterns.values() {
            state.pattern_index.upsert(pattern.clone());
        }
        state
    }

    /// Installs durable changes.
    pub fn apply(&mut self, changes: &Changes) {
        fn install<K: Ord + Clone, V>(
            map: &mut BTreeMap<K, Arc<V>>,
            changes: impl IntoIterator<Item = (K, Arc<V>)>,
        ) {
            for (k, v) in changes {
                map.insert(k, v);
            }
        }
        install(
            &mut self.instances,
            changes
                .instances
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        install(
            &mut self.patterns,
            changes.patterns.iter().map(|(k, v)| (k.clone(), v.clone())),
        );
        for pattern in changes.patterns.values() {
            self.pattern_index.upsert(pattern.clone());
        }
        install(
            &mut self.strategies,
            changes
                .strategies
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        install(
            &mut self.insights,
            changes.insights.iter().map(|(k, v)| (*k, v.clone())),
        );
        install(
            &mut self.failures,
            changes.failures.iter().map(|(k, v)| (k.clone(), v.clone())),
        );
        install(
            &mut self.configs,
            changes.configs.iter().map(|(k, v)| (k.clone(), v.clone())),
        );
        if let Some(seq) = changes.insight_sequence {
            self.insight_sequence = self.insight_sequence.max(seq);
        }
        if let Some(seq) = changes.outcome_sequence {
            self.outcome_sequence = self.outcome_sequence.max(seq);
        }
        if let Some(calibration) = changes.pattern_calibration {
            self.pattern_calibration = calibration;
        }
        for (id, key) in &changes.api_keys {
            match key {
                Some(key) => self.api_keys.insert(id.clone(), key.clone()),
                None => self.api_keys.remove(id),
            };
        }
        if let Some(seq) = changes.audit_sequence {
            self.audit_sequence = self.audit_sequence.max(seq);
        }
        for id in &changes.removed_patterns {
            self.patterns.remove(id);
            self.pattern_index.remove(id);
        }
        for seq in &changes.removed_insights {
            self.insights.remove(seq);
        }
    }

    /// Every aggregate (any strategy, any context) for `metric`.
    pub fn strategies_for_metric<'s>(
        &'s self,
        metric: &str,
    ) -> impl Iterator<Item = &'s Arc<StrategyRecord>> + 's {
        let start = StrategyKey {
            metric: metric.to_string(),
            strategy: String::new(),
            context_key: String::new(),
        };
        let metric = metric.to_string();
        self.strategies
            .range(start..)
            .take_while(move |(k, _)| k.metric == metric)
            .map(|(_, v)| v)
    }
}

/// A writer's view: the durable state, the changes staged earlier in the
/// same group commit, and this request's own changes. Reads look through
/// all three, newest first. If the request fails, its own changes are
/// dropped and nothing of it is written.
pub struct Txn<'a> {
    base: &'a State,
    batch: &'a Changes,
    own: Changes,
    /// The time this request is processed at.
    pub now: UnixMillis,
}

fn lookup<K, V, Q>(
    own: &HashMap<K, Arc<V>>,
    batch: &HashMap<K, Arc<V>>,
    base: &BTreeMap<K, Arc<V>>,
    key: &Q,
) -> Option<Arc<V>>
where
    K: Borrow<Q> + Hash + Eq + Ord,
    Q: Hash + Eq + Ord + ?Sized,
{
    own.get(key)
        .or_else(|| batch.get(key))
        .or_else(|| base.get(key))
        .cloned()
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a State, batch: &'a Changes, now: UnixMillis) -> Self {
        Txn {
            base,
            batch,
            own: Changes::default(),
            now,
        }
    }

    pub fn into_changes(self) -> Changes {
        self.own
    }

    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        lookup(
            &self.own.instances,
            &self.batch.instances,
            &self.base.instances,
            id,
        )
    }

    pub fn put_instance(&mut self, v: Instance) -> Arc<Instance> {
        let v = Arc::new(v);
        self.own.instances.insert(v.instance_id.clone(), v.clone());
        v
    }

    pub fn pattern(&self, id: &str) -> Option<Arc<Pattern>> {
        lookup(
            &self.own.patterns,
            &self.batch.patterns,
            &self.base.patterns,
            id,
        )
    }

    pub fn put_pattern(&mut self, v: Pattern) -> Arc<Pattern> {
        let v = Arc::new(v);
        self.own.patterns.insert(v.id.clone(), v.clone());
        v
    }

    pub fn strategy(&self, key: &StrategyKey) -> Option<Arc<StrategyRecord>> {
        lookup(
            &self.own.strategies,
            &self.batch.strategies,
            &self.base.strategies,
            key,
        )
    }

    pub fn put_strategy(&mut self, v: StrategyRecord) -> Arc<StrategyRecord> {
        let v = Arc::new(v);
        self.own.strategies.insert(v.key(), v.clone());
        v
    }

    pub fn failure(&self, id: &str) -> Option<Arc<FailurePattern>> {
        lookup(
            &self.own.failures,
            &self.batch.failures,
            &self.base.failures,
            id,
        )
    }

    pub fn put_failure(&mut self, v: FailurePattern) -> Arc<FailurePattern> {
        let v = Arc::new(v);
        self.own.failures.insert(v.id.clone(), v.clone());
        v
    }

    pub fn config(&self, id: &str) -> Option<Arc<Configuration>> {
        lookup(
            &self.own.configs,
            &self.batch.configs,
            &self.base.configs,
            id,
        )
    }

    pub fn put_config(&mut self, v: Configuration) -> Arc<Configuration> {
        let v = Arc::new(v);
        self.own.configs.insert(v.id.clone(), v.clone());
        v
    }

    /// Every insight, durable or staged (for deduplication).
    pub fn insights(&self) -> impl Iterator<Item = &Arc<Insight>> {
        self.base
            .insights
            .values()
            .chain(self.batch.insights.values())
            .chain(self.own.insights.values())
    }

    pub fn put_insight(&mut self, v: Insight) -> Arc<Insight> {
        let v = Arc::new(v);
        self.own.insights.insert(v.sequence, v.clone());
        v
    }

    /// Hands out the next insight sequence (never reused, even if the
    /// insight later expires).
    pub fn next_insight_sequence(&mut self) -> u64 {
        let last = self
            .own
            .insight_sequence
            .or(self.batch.insight_sequence)
            .unwrap_or(self.base.insight_sequence);
        self.own.insight_sequence = Some(last + 1);
        last + 1
    }

    pub fn next_outcome_sequence(&mut self) -> u64 {
        let last = self
            .own
            .outcome_sequence
            .or(self.batch.outcome_sequence)
            .unwrap_or(self.base.outcome_sequence);
        self.own.outcome_sequence = Some(last + 1);
        last + 1
    }

    pub fn append_outcome(&mut self, outcome: StrategyOutcome) {
        self.own.outcomes.push(outcome);
    }

    pub fn pattern_calibration(&self) -> MatchCalibration {
        self.own
            .pattern_calibration
            .or(self.batch.pattern_calibration)
            .unwrap_or(self.base.pattern_calibration)
    }

    pub fn api_key(&self, instance_id: &str) -> Option<Arc<ApiKey>> {
        match self
            .own
            .api_keys
            .get(instance_id)
            .or(self.batch.api_keys.get(instance_id))
        {
            Some(staged) => staged.clone(),
            None => self.base.api_keys.get(instance_id).cloned(),
        }
    }

    /// Sets (`Some`) or revokes (`None`) an instance's key.
    pub fn put_api_key(&mut self, instance_id: &str, key: Option<ApiKey>) {
        self.own
            .api_keys
            .insert(instance_id.to_string(), key.map(Arc::new));
    }

    /// Appends an entry to the audit log, giving it the next sequence.
    pub fn append_audit(&mut self, mut entry: AuditEntry) {
        let last = self
            .own
            .audit_sequence
            .or(self.batch.audit_sequence)
            .unwrap_or(self.base.audit_sequence);
        entry.sequence = last + 1;
        self.own.audit_sequence = Some(last + 1);
        self.own.audit.push(entry);
    }

    pub fn remove_pattern(&mut self, id: &str) {
        self.own.patterns.remove(id);
        self.own.removed_patterns.insert(id.to_string());
    }

    pub fn remove_insight(&mut self, sequence: u64) {
        self.own.insights.remove(&sequence);
        self.own.removed_insights.insert(sequence);
    }

    pub fn put_pattern_calibration(&mut self, calibration: MatchCalibration) {
        self.own.pattern_calibration = Some(calibration);
    }

    /// Every configuration of a context, durable or staged, in its newest
    /// version (to compare rivals).
    pub fn configs_in_context(&self, context_key: &str) -> Vec<Arc<Configuration>> {
        let mut by_id: BTreeMap<String, Arc<Configuration>> = self
            .base
            .configs
            .values()
            .filter(|c| c.context_key == context_key)
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        for c in self.batch.configs.values().chain(self.own.configs.values()) {
            if c.context_key == context_key {
                by_id.insert(c.id.clone(), c.clone());
            }
        }
        by_id.into_values().collect()
    }
}
