//! The hub's working state in memory and the transaction view writers use.
//!
//! [`State`] holds every record except the outcome log, indexed for the
//! queries the hub answers. Readers see only what is durable: writes are
//! staged in a [`Txn`] overlay, made durable by the writer, and only then
//! installed with [`State::apply`].

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

use crate::domain::idempotency::{RequestKey, RequestRecord};
use crate::domain::matching::{MatchCalibration, PatternIndex};
use crate::domain::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, Pattern, StrategyKey,
    StrategyOutcome, StrategyRecord, UnixMillis,
};
use crate::domain::prevention::StrategyUsage;
use crate::domain::recommend::fleet_view;
use crate::store::{Changes, Snapshot};

/// One strategy's aggregates on one metric.
#[derive(Debug)]
struct StrategyGroup {
    /// Every context merged (see [`fleet_view`]).
    fleet: Arc<StrategyRecord>,
    by_context: HashMap<String, Arc<StrategyRecord>>,
}

/// Everything the hub knows, except the raw outcome log.
#[derive(Debug, Default)]
pub struct State {
    pub instances: BTreeMap<String, Arc<Instance>>,
    pub patterns: BTreeMap<String, Arc<Pattern>>,
    /// The same patterns, indexed for matching.
    pub pattern_index: PatternIndex,
    /// Ordered by metric first: one metric's aggregates are one range.
    pub strategies: BTreeMap<StrategyKey, Arc<StrategyRecord>>,
    /// Each strategy's use on any metric in any context, kept up to date
    /// as aggregates change (failure warnings need it per query).
    pub usage: HashMap<String, StrategyUsage>,
    /// The strategies with an aggregate on each metric.
    metric_strategies: HashMap<String, BTreeSet<String>>,
    /// metric → strategy → its aggregates, merged and by context: built on
    /// first use, dropped when one of them changes. Ranking then reads one
    /// merged view per strategy instead of every context's aggregate.
    groups: Mutex<HashMap<String, HashMap<String, Arc<StrategyGroup>>>>,
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
    /// Request ids of applied writes, by (instance, request id), until the
    /// retention sweep forgets them (see [`crate::domain::idempotency`]).
    pub requests: HashMap<RequestKey, RequestRecord>,
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
            requests: snapshot.requests.into_iter().collect(),
            usage: HashMap::new(),
            metric_strategies: HashMap::new(),
            groups: Mutex::default(),
        };
        for pattern in state.patterns.values() {
            state.pattern_index.upsert(pattern.clone());
        }
        for record in state.strategies.values() {
            state
                .usage
                .entry(record.strategy.clone())
                .or_default()
                .add(record);
            state
                .metric_strategies
                .entry(record.metric.clone())
                .or_default()
                .insert(record.strategy.clone());
        }
        state
    }

    /// Replaces (or adds) one aggregate, keeping the derived views right.
    pub fn put_strategy(&mut self, record: Arc<StrategyRecord>) {
        let key = record.key();
        let usage = self.usage.entry(key.strategy.clone()).or_default();
        usage.add(&record);
        match self.strategies.insert(key.clone(), record) {
            Some(old) => usage.subtract(&old),
            None => {
                self.metric_strategies
                    .entry(key.metric.clone())
                    .or_default()
                    .insert(key.strategy.clone());
            }
        }
        if let Some(groups) = self
            .groups
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&key.metric)
        {
            groups.remove(&key.strategy);
        }
    }

    fn build_group(&self, metric: &str, strategy: &str) -> StrategyGroup {
        let start = StrategyKey {
            metric: metric.to_string(),
            strategy: strategy.to_string(),
            context_key: String::new(),
        };
        let records: Vec<&Arc<StrategyRecord>> = self
            .strategies
            .range(start..)
            .take_while(|(k, _)| k.metric == metric && k.strategy == strategy)
            .map(|(_, r)| r)
            .collect();
        StrategyGroup {
            fleet: Arc::new(fleet_view(records.iter().map(|r| &***r))),
            by_context: records
                .into_iter()
                .map(|r| (r.context_key.clone(), r.clone()))
                .collect(),
        }
    }

    /// Every strategy with evidence on `metric`: its fleet view, and its
    /// aggregate in `context_key` if it has one there.
    pub fn strategy_views(
        &self,
        metric: &str,
        context_key: &str,
    ) -> Vec<(Arc<StrategyRecord>, Option<Arc<StrategyRecord>>)> {
        let Some(names) = self.metric_strategies.get(metric) else {
            return Vec::new();
        };
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if !groups.contains_key(metric) {
            groups.insert(metric.to_string(), HashMap::new());
        }
        let groups = groups.get_mut(metric).expect("just ensured");
        names
            .iter()
            .map(|name| {
                let group = match groups.get(name.as_str()) {
                    Some(group) => group.clone(),
                    None => {
                        let group = Arc::new(self.build_group(metric, name));
                        groups.insert(name.clone(), group.clone());
                        group
                    }
                };
                let own = if context_key.is_empty() {
                    None
                } else {
                    group.by_context.get(context_key).cloned()
                };
                (group.fleet.clone(), own)
            })
            .collect()
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
        for record in changes.strategies.values() {
            self.put_strategy(record.clone());
        }
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
        for (key, record) in &changes.requests {
            self.requests.insert(key.clone(), *record);
        }
        for key in &changes.removed_requests {
            self.requests.remove(key);
        }
    }

    /// This state's version of every record `touched` writes, for
    /// [`crate::store::Store::commit_repairing`]: what the store must hold
    /// for those keys once a failed commit is undone. Records the state
    /// does not have (a registration, an outcome, an audit entry that was
    /// never acknowledged) are left out, so the repair erases them; audit
    /// entries the state has counted are kept. `floor` is the strategy
    /// floor the writer last wrote.
    pub fn restore(&self, touched: &Changes, floor: u64) -> Changes {
        let mut restore = Changes::default();
        let instance_ids = touched
            .instance_writes
            .iter()
            .chain(touched.instance_checkpoint.iter().map(|i| &i.instance_id));
        for id in instance_ids {
            if let Some(v) = self.instances.get(id) {
                restore.instances.insert(id.clone(), v.clone());
                restore.instance_writes.insert(id.clone());
            }
        }
        for id in touched.patterns.keys().chain(&touched.removed_patterns) {
            if let Some(v) = self.patterns.get(id) {
                restore.patterns.insert(id.clone(), v.clone());
            }
        }
        for record in &touched.checkpoint {
            if let Some(v) = self.strategies.get(&record.key()) {
                restore.checkpoint.push(v.clone());
            }
        }
        if touched.strategy_floor.is_some() {
            restore.strategy_floor = Some(floor);
        }
        for sequence in touched.insights.keys().chain(&touched.removed_insights) {
            if let Some(v) = self.insights.get(sequence) {
                restore.insights.insert(*sequence, v.clone());
            }
        }
        for id in touched.failures.keys() {
            if let Some(v) = self.failures.get(id) {
                restore.failures.insert(id.clone(), v.clone());
            }
        }
        for id in touched.configs.keys() {
            if let Some(v) = self.configs.get(id) {
                restore.configs.insert(id.clone(), v.clone());
            }
        }
        // Outcomes are only ever installed after their flush succeeded:
        // any in `touched` were never acknowledged.
        if touched.insight_sequence.is_some() {
            restore.insight_sequence = Some(self.insight_sequence);
        }
        if touched.outcome_sequence.is_some() {
            restore.outcome_sequence = Some(self.outcome_sequence);
        }
        if touched.pattern_calibration.is_some() {
            restore.pattern_calibration = Some(self.pattern_calibration);
        }
        for id in touched.api_keys.keys() {
            restore
                .api_keys
                .insert(id.clone(), self.api_keys.get(id).cloned());
        }
        restore.audit = touched
            .audit
            .iter()
            .filter(|e| e.sequence <= self.audit_sequence)
            .cloned()
            .collect();
        if touched.audit_sequence.is_some() {
            restore.audit_sequence = Some(self.audit_sequence);
        }
        // A request id remembered by a write that failed must not survive
        // it, or a retry of that write would be taken as already applied.
        for key in touched.requests.keys().chain(&touched.removed_requests) {
            if let Some(record) = self.requests.get(key) {
                restore.requests.insert(key.clone(), *record);
            }
        }
        restore
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

    /// Drops everything this request staged: it failed, and nothing of it
    /// may be written.
    pub fn discard(&mut self) {
        self.own = Changes::default();
    }

    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        lookup(
            &self.own.instances,
            &self.batch.instances,
            &self.base.instances,
            id,
        )
    }

    /// Stages an instance record to be written with this commit.
    pub fn put_instance(&mut self, v: Instance) -> Arc<Instance> {
        self.own.instance_writes.insert(v.instance_id.clone());
        self.put_instance_activity(v)
    }

    /// Stages a change of an instance's activity only (last seen, records
    /// shared), which the writer persists lazily.
    pub fn put_instance_activity(&mut self, v: Instance) -> Arc<Instance> {
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

    /// The newest version of the insight with this sequence, if any (an
    /// insight removed in this commit is gone).
    pub fn insight(&self, sequence: u64) -> Option<Arc<Insight>> {
        if let Some(v) = self.own.insights.get(&sequence) {
            return Some(v.clone());
        }
        if self.own.removed_insights.contains(&sequence) {
            return None;
        }
        if let Some(v) = self.batch.insights.get(&sequence) {
            return Some(v.clone());
        }
        if self.batch.removed_insights.contains(&sequence) {
            return None;
        }
        self.base.insights.get(&sequence).cloned()
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

    /// What is remembered of request id `key`, durable or staged (expired
    /// or not: the caller judges).
    pub fn request(&self, key: &RequestKey) -> Option<RequestRecord> {
        for changes in [&self.own, self.batch] {
            if let Some(record) = changes.requests.get(key) {
                return Some(*record);
            }
            if changes.removed_requests.contains(key) {
                return None;
            }
        }
        self.base.requests.get(key).copied()
    }

    /// Remembers request id `key`, in the same commit as the write it guards.
    pub fn put_request(&mut self, key: RequestKey, record: RequestRecord) {
        self.own.removed_requests.remove(&key);
        self.own.requests.insert(key, record);
    }

    /// Forgets request id `key` (expired).
    pub fn remove_request(&mut self, key: &RequestKey) {
        self.own.requests.remove(key);
        self.own.removed_requests.insert(key.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Attributes, StrategyOutcome};

    fn outcome(
        sequence: u64,
        strategy: &str,
        context: &str,
        preceded_by: &[&str],
    ) -> StrategyOutcome {
        StrategyOutcome {
            sequence,
            at: 1_700_000_000_000,
            instance_id: "i1".into(),
            strategy: strategy.into(),
            metric: "m".into(),
            value_before: 0.5,
            successful: sequence % 2 == 0,
            delta: 0.1,
            condition: String::new(),
            context: Attributes::from([("p".to_string(), context.to_string())]),
            streak: 0,
            preceded_by: preceded_by.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Folds `outcome` into the state the way the writer's apply does.
    fn fold(state: &mut State, outcome: &StrategyOutcome) {
        let key = StrategyKey {
            metric: outcome.metric.clone(),
            strategy: outcome.strategy.clone(),
            context_key: crate::domain::model::context_key(&outcome.context),
        };
        let mut record = state
            .strategies
            .get(&key)
            .map(|r| (**r).clone())
            .unwrap_or_else(|| StrategyRecord::empty(&key, outcome.at));
        record.record(outcome, 7);
        state.put_strategy(Arc::new(record));
    }

    fn instance(id: &str, shared_records: u64) -> Arc<Instance> {
        Arc::new(Instance {
            instance_id: id.into(),
            region: "r".into(),
            context: Attributes::new(),
            capabilities: vec![],
            registered_at: 1,
            last_seen: 1,
            shared_records,
        })
    }

    fn audit(sequence: u64) -> AuditEntry {
        AuditEntry {
            sequence,
            at: 1,
            caller: "i1".into(),
            role: "instance".into(),
            rpc: "/learninghub.v1.Hub/GetStatus".into(),
            code: 0,
            request_bytes: 0,
            ..Default::default()
        }
    }

    #[test]
    fn restore_is_the_state_for_every_record_a_failed_commit_touched() {
        let mut state = State::default();
        state.instances.insert("i1".into(), instance("i1", 3));
        state.audit_sequence = 1;
        state.outcome_sequence = 7;
        // A failed commit: a registration, activity of a known instance, an
        // outcome, a key, two audit entries (one already installed).
        let mut touched = Changes::default();
        touched.instance_writes.insert("ghost".into());
        touched
            .instances
            .insert("ghost".into(), instance("ghost", 0));
        touched.instance_checkpoint.push(instance("i1", 4));
        touched.outcomes.push(outcome(8, "s", "x", &[]));
        touched.outcome_sequence = Some(8);
        touched.api_keys.insert("ghost".into(), None);
        touched.audit = vec![audit(1), audit(2)];
        touched.audit_sequence = Some(2);

        let restore = state.restore(&touched, 5);
        // The known instance as the state has it; the ghost left out (so
        // the repair erases it); the counter back where the state is.
        assert_eq!(restore.instances.keys().collect::<Vec<_>>(), ["i1"]);
        assert_eq!(restore.instances["i1"].shared_records, 3);
        assert!(restore.instance_writes.contains("i1"));
        assert!(restore.outcomes.is_empty());
        assert_eq!(restore.outcome_sequence, Some(7));
        assert!(matches!(restore.api_keys.get("ghost"), Some(None)));
        assert_eq!(
            restore.audit.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(restore.audit_sequence, Some(1));
        assert_eq!(restore.strategy_floor, None, "no floor was touched");
    }

    #[test]
    fn restore_forgets_request_ids_only_a_failed_commit_remembered() {
        use crate::domain::idempotency::{Applied, Fingerprint};
        let record = RequestRecord {
            applied: Applied::ShareStrategy {
                outcome_sequence: 1,
            },
            fingerprint: Fingerprint::of(b"x"),
            at: 1,
        };
        let known = RequestKey::new("i1", "acknowledged");
        let failed = RequestKey::new("i1", "failed");
        let mut state = State::default();
        state.requests.insert(known.clone(), record);
        let mut touched = Changes::default();
        touched.requests.insert(failed.clone(), record);
        touched.removed_requests.insert(known.clone());
        let restore = state.restore(&touched, 0);
        // The acknowledged id is put back; the failed write's is left out,
        // so the repair erases it and a retry is applied.
        assert_eq!(restore.requests.len(), 1);
        assert!(restore.requests.contains_key(&known));
        assert!(!restore.requests.contains_key(&failed));
    }

    #[test]
    fn derived_views_follow_every_change() {
        let mut state = State::default();
        let mut sequence = 0;
        for round in 0..3 {
            for (strategy, context, before) in [
                ("a", "x", &["b"][..]),
                ("a", "y", &[][..]),
                ("b", "x", &["a"][..]),
            ] {
                sequence += 1;
                fold(&mut state, &outcome(sequence, strategy, context, before));
            }
            // Views are read between rounds, so the cache must be dropped
            // when the next round changes their aggregates.
            let views = state.strategy_views("m", "p=x");
            let a = views.iter().find(|(f, _)| f.strategy == "a").unwrap();
            assert_eq!(a.0.applications, 2 * (round + 1));
            assert_eq!(a.1.as_ref().unwrap().applications, round + 1);
            assert_eq!(a.0.context_key, "");
        }
        // The usage index equals a recount from scratch.
        let mut recount: HashMap<String, StrategyUsage> = HashMap::new();
        for record in state.strategies.values() {
            recount
                .entry(record.strategy.clone())
                .or_default()
                .add(record);
        }
        assert_eq!(state.usage, recount);
        assert_eq!(state.usage["a"].applications, 6);
        assert_eq!(state.usage["a"].preceded_by["b"], 3);
    }
}
