//! The hub's state: what folding the command log up to a position yields.
//!
//! Everything in it is a persistent (immutable, structurally shared) map, so
//! the writer can hand readers a snapshot after every batch at the cost of
//! a few reference counts, keep the version it last checkpointed and write
//! only the difference ([`Tables::diff`]), and make a command atomic by
//! folding it into a clone that it drops if the command fails.
//!
//! The record tables are declared once, in [`tables!`]: each is a map from
//! a key to `Arc<Record>` with a one-letter prefix that names it in the
//! store. What the declaration generates — the fields, loading, the diff a
//! checkpoint writes, the digest — is all a new record kind needs.
//!
//! Besides the tables: [`Counters`] (the sequences handed out, pattern
//! calibration), the rows of the outcome and audit logs folded since the
//! last checkpoint (the store keeps the rest), and indexes derived from the
//! tables for queries (never checkpointed, rebuilt at load, not part of
//! the digest). Nothing in here is iterated in hash order where the order
//! could reach a result.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use super::anomaly::Anomaly;
use super::digest::{Batch, OriginState, Subject, remote_evidence, remote_usage};
use super::federated::ModelRecord;
use super::idempotency::{RequestKey, RequestRecord};
use super::knowledge::{self, ConfigKnowledge, FailureKnowledge, Knowledge, PatternKnowledge};
use super::matching::{MatchCalibration, PatternIndex};
use super::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, JobRun, Name, Pattern,
    Quarantine, StrategyKey, StrategyOutcome, StrategyRecord, UnixMillis, merge_windows,
};
use super::prevention::StrategyUsage;
use super::recommend::{Banding, Tuning, fleet_view};

/// A table of records.
pub type Table<K, V> = OrdMap<K, Arc<V>>;

/// How a table's key is written in the store: bytes whose order is the
/// key's order.
pub trait TableKey: Ord + Clone + Sized {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl TableKey for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl TableKey for Name {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok().map(Name::from)
    }
}

impl TableKey for u64 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl TableKey for StrategyKey {
    fn to_bytes(&self) -> Vec<u8> {
        format!("{}\0{}\0{}", self.metric, self.strategy, self.context_key).into_bytes()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, '\0');
        Some(StrategyKey::new(
            parts.next()?,
            parts.next()?,
            parts.next()?,
        ))
    }
}

impl TableKey for RequestKey {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_str().as_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        RequestKey::from_stored(String::from_utf8(bytes.to_vec()).ok()?)
    }
}

/// What walks the tables: a checkpoint writing them, a digest hashing them.
pub trait TableVisitor {
    type Error;
    /// One record of `table` (`None`: removed, in a diff).
    fn record<K: TableKey, V: Serialize>(
        &mut self,
        table: &'static str,
        key: &K,
        value: Option<&V>,
    ) -> Result<(), Self::Error>;
}

/// What fills the tables when the state is loaded.
pub trait TableSource {
    type Error;
    /// Every record of `table`, in key order.
    fn records<K: TableKey, V: for<'de> Deserialize<'de>>(
        &mut self,
        table: &'static str,
    ) -> Result<Vec<(K, V)>, Self::Error>;
}

/// Declares the record tables: `field: prefix => Key, Record`.
macro_rules! tables {
    ($($(#[$doc:meta])* $field:ident: $prefix:literal => $key:ty, $value:ty;)*) => {
        /// Every record the hub keeps, by table.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Tables {
            $($(#[$doc])* pub $field: Table<$key, $value>,)*
        }

        /// The tables' store prefixes, in declaration order.
        pub const TABLES: &[&str] = &[$($prefix),*];

        impl Tables {
            /// Visits every record of every table, in key order.
            pub fn visit<T: TableVisitor>(&self, visitor: &mut T) -> Result<(), T::Error> {
                $(for (key, value) in self.$field.iter() {
                    visitor.record($prefix, key, Some(&**value))?;
                })*
                Ok(())
            }

            /// Visits what changed from `old` to `self`: new and replaced
            /// records, and removed ones as `None`. Structure the two
            /// versions share is skipped unread.
            pub fn diff<T: TableVisitor>(&self, old: &Tables, visitor: &mut T) -> Result<(), T::Error> {
                $(for item in old.$field.diff(&self.$field) {
                    match item {
                        imbl::ordmap::DiffItem::Add(key, value)
                        | imbl::ordmap::DiffItem::Update { new: (key, value), .. } => {
                            visitor.record($prefix, key, Some(&**value))?
                        }
                        imbl::ordmap::DiffItem::Remove(key, _) => {
                            visitor.record::<$key, $value>($prefix, key, None)?
                        }
                    }
                })*
                Ok(())
            }

            /// Reads every table from `source`.
            pub fn load<S: TableSource>(source: &mut S) -> Result<Tables, S::Error> {
                Ok(Tables {
                    $($field: source
                        .records::<$key, $value>($prefix)?
                        .into_iter()
                        .map(|(k, v)| (k, Arc::new(v)))
                        .collect(),)*
                })
            }
        }
    };
}

tables! {
    /// Registered instances, by id.
    instances: "i/" => Name, Instance;
    /// Plateau patterns, by id (derived from their signature).
    patterns: "p/" => String, Pattern;
    /// Strategy aggregates, by (metric, strategy, context): one metric's
    /// aggregates are one range.
    strategies: "s/" => StrategyKey, StrategyRecord;
    /// Insights, by sequence.
    insights: "n/" => u64, Insight;
    /// Failure patterns, by id.
    failures: "f/" => String, FailurePattern;
    /// Configurations, by id.
    configs: "c/" => String, Configuration;
    /// Each instance's current API key (salted hash), by instance.
    api_keys: "k/" => String, ApiKey;
    /// Remembered request ids of idempotent writes, by (instance, id).
    requests: "r/" => RequestKey, RequestRecord;
    /// The last run of each periodic job (replicas: lease epoch, period).
    jobs: "j/" => String, JobRun;
    /// Federated models (their weights and pending updates), by name.
    models: "w/" => String, ModelRecord;
    /// Instances in quarantine, by id.
    quarantined: "x/" => String, Quarantine;
    /// What the latest anomaly scan found, by finding id.
    anomalies: "y/" => String, Anomaly;
    /// Other regions' knowledge as this region holds it, by origin region
    /// (see [`crate::digest`]).
    regions: "g/" => String, OriginState;
}

/// The sequences handed out, and what acted-on pattern matches taught.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// The last insight sequence handed out (never reused).
    pub insight_sequence: u64,
    /// The last strategy-outcome sequence handed out.
    pub outcome_sequence: u64,
    /// The last audit sequence handed out.
    pub audit_sequence: u64,
    /// How acted-on pattern matches turned out, by similarity.
    pub pattern_calibration: MatchCalibration,
}

/// Rows of the outcome and audit logs folded since the last checkpoint;
/// the store holds the older ones. Kept out of the tables because the logs
/// are read by range, never loaded whole.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub outcomes: Vector<Arc<StrategyOutcome>>,
    pub audit: Vector<Arc<AuditEntry>>,
    /// A running SHA-256 over every row ever folded (checkpointed or not),
    /// so that the digest covers the logs without holding them.
    pub digest: [u8; 32],
}

/// Feeds what is written into a running SHA-256 (a row's JSON goes
/// straight into the hash, without a buffer of its own).
struct HashWriter(ring::digest::Context);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Rows {
    fn chain(&mut self, kind: u8, row: &impl Serialize) {
        let mut hash = HashWriter(ring::digest::Context::new(&ring::digest::SHA256));
        hash.0.update(&self.digest);
        hash.0.update(&[kind]);
        // Rows are plain data; an encoding error would be a bug, and the
        // digest then still differs from a replica's that encoded it.
        let _ = serde_json::to_writer(&mut hash, row);
        self.digest.copy_from_slice(hash.0.finish().as_ref());
    }
}

/// One strategy's aggregates on one metric, merged across contexts.
#[derive(Debug)]
pub struct StrategyGroup {
    /// Every context merged (see [`fleet_view`]), with what other regions
    /// know of it in their windows.
    pub fleet: Viewed,
    /// Each context's aggregate, with other regions' evidence in that
    /// context in its window.
    pub by_context: BTreeMap<String, Viewed>,
    /// Other regions with evidence in it.
    pub remote_origins: u32,
}

/// An aggregate as queries see it, with its [`Banding`] for the day,
/// worked out by the first query that needs it. The group it is in is
/// replaced when the aggregate changes; the banding, when the day does.
#[derive(Debug)]
pub struct Viewed {
    pub record: Arc<StrategyRecord>,
    banding: Mutex<Option<Arc<Banding>>>,
}

impl Viewed {
    fn new(record: Arc<StrategyRecord>) -> Self {
        Viewed {
            record,
            banding: Mutex::default(),
        }
    }

    /// The aggregate's banding at `now` under `tuning`.
    pub fn banding(&self, now: UnixMillis, tuning: Tuning) -> Arc<Banding> {
        let kept = |cell: &Option<Arc<Banding>>| cell.clone().filter(|b| b.fits(now, &tuning));
        // A poisoned lock only means a panic elsewhere: the cache is
        // still a valid (or empty) banding.
        if let Some(banding) = kept(&self.banding.lock().unwrap_or_else(|e| e.into_inner())) {
            return banding;
        }
        // Worked out outside the lock; two queries racing both work it
        // out, and either result is the same.
        let banding = Arc::new(Banding::new(&self.record, now, tuning));
        *self.banding.lock().unwrap_or_else(|e| e.into_inner()) = Some(banding.clone());
        banding
    }
}

/// One strategy on one metric, as [`State::strategy_views`] returns it.
#[derive(Debug, Clone, Copy)]
pub struct GroupView<'s> {
    pub fleet: &'s Viewed,
    /// The aggregate in the caller's context, if there is one.
    pub own: Option<&'s Viewed>,
    /// Other regions with evidence in it.
    pub remote_origins: u32,
}

/// Indexes derived from the tables, kept up to date as they change.
#[derive(Debug, Clone, Default)]
pub struct Indexes {
    /// The patterns, grouped for matching.
    pub patterns: PatternIndex,
    /// Each strategy's use on any metric in any context (failure warnings
    /// need it per query).
    pub usage: OrdMap<Name, Arc<StrategyUsage>>,
    /// metric → every strategy with an aggregate on it → its merged view,
    /// built by the first query that needs it and replaced (empty) when
    /// one of its aggregates changes.
    views: OrdMap<Name, OrdMap<Name, Arc<OnceLock<StrategyGroup>>>>,
    /// Every failure joined with other regions' knowledge
    /// ([`State::failures`]), built by the first query that needs it and
    /// replaced (empty) when a failure or another region's knowledge
    /// changes ([`State::failures_changed`]).
    failures: Arc<OnceLock<Arc<[Arc<FailurePattern>]>>>,
}

/// Everything the hub knows, as of log position `position`.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The last log position folded in (0: none).
    pub position: u64,
    pub tables: Tables,
    pub counters: Counters,
    pub rows: Rows,
    pub indexes: Indexes,
}

impl State {
    /// A state from loaded tables, with its indexes built.
    pub fn from_tables(
        position: u64,
        tables: Tables,
        counters: Counters,
        rows_digest: [u8; 32],
    ) -> Self {
        let mut state = State {
            position,
            counters,
            rows: Rows {
                digest: rows_digest,
                ..Rows::default()
            },
            ..State::default()
        };
        for (key, record) in tables.strategies.iter() {
            state.index_strategy(key, record, None);
        }
        for knowledge in tables.regions.values() {
            state.index_remote(knowledge.entries.keys());
        }
        state.tables = tables;
        // Patterns as matching sees them: with other regions' joined.
        let mut ids: std::collections::BTreeSet<String> =
            state.tables.patterns.keys().cloned().collect();
        for knowledge in state.tables.regions.values() {
            ids.extend(knowledge.records.keys().cloned());
        }
        for id in ids {
            state.index_pattern(&id);
        }
        state
    }

    /// Moves past a log position whose command failed to fold (it changed
    /// nothing).
    pub fn skip_to(&mut self, position: u64) {
        self.position = self.position.max(position);
    }

    // --- records with indexes: the fold changes them through these -------

    /// Replaces (or adds) the aggregate at `key` (its own key), keeping
    /// the indexes right.
    ///
    /// Callers stamp the record's `changed_at` with the position being
    /// folded (its version for other regions).
    pub fn put_strategy(&mut self, key: StrategyKey, record: Arc<StrategyRecord>) {
        debug_assert!(*key.metric == *record.metric && *key.strategy == *record.strategy);
        let old = self.tables.strategies.insert(key.clone(), record.clone());
        self.index_strategy(&key, &record, old.as_deref());
    }

    fn index_strategy(
        &mut self,
        key: &StrategyKey,
        record: &StrategyRecord,
        old: Option<&StrategyRecord>,
    ) {
        let usage = Arc::make_mut(self.indexes.usage.entry(key.strategy.clone()).or_default());
        usage.add(record);
        if let Some(old) = old {
            usage.subtract(old);
        }
        self.indexes
            .views
            .entry(key.metric.clone())
            .or_default()
            .insert(key.strategy.clone(), Arc::default());
    }

    /// Keeps what this region now holds of `origin` after merging
    /// `batch`, and empties the views of the strategies it touched (adding
    /// those known only from other regions).
    pub fn put_region(&mut self, origin: String, knowledge: Arc<OriginState>, batch: &Batch) {
        self.tables.regions.insert(origin, knowledge);
        self.failures_changed();
        self.index_remote(batch.entries.keys());
        for id in batch.records.keys() {
            self.index_pattern(id);
        }
    }

    /// Other regions' knowledge of pattern `id`, origin by origin.
    pub fn remote_pattern(&self, id: &str) -> Vec<&PatternKnowledge> {
        self.tables
            .regions
            .values()
            .filter_map(|origin| match origin.records.get(id)?.knowledge.as_ref()? {
                Knowledge::Pattern(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Puts pattern `id` in the matching index as matching sees it (this
    /// region's record joined with other regions' knowledge), or takes it
    /// out when neither knows it. Ids of other kinds are left alone.
    pub fn index_pattern(&mut self, id: &str) {
        let own = self.tables.patterns.get(id).cloned();
        let remote = self.remote_pattern(id);
        if remote.is_empty() {
            match own {
                Some(own) => self.indexes.patterns.upsert(own),
                None => self.indexes.patterns.remove(id),
            }
            return;
        }
        if let Some(joined) = knowledge::joined_pattern(own.as_deref(), remote, id) {
            self.indexes.patterns.upsert(Arc::new(joined));
        }
    }

    fn index_remote<'a>(&mut self, subjects: impl IntoIterator<Item = &'a Subject>) {
        let touched: std::collections::BTreeSet<(&str, &str)> = subjects
            .into_iter()
            .filter_map(|subject| match subject {
                Subject::Strategy {
                    metric, strategy, ..
                }
                | Subject::Aggregate {
                    metric, strategy, ..
                }
                | Subject::Streak {
                    metric, strategy, ..
                }
                | Subject::Preceded {
                    metric, strategy, ..
                } => Some((metric.as_str(), strategy.as_str())),
                // Usage is joined per query (see `usage_of`).
                Subject::Recovery { .. } | Subject::Usage { .. } => None,
            })
            .collect();
        for (metric, strategy) in touched {
            self.indexes
                .views
                .entry(Name::from(metric))
                .or_default()
                .insert(Name::from(strategy), Arc::default());
        }
    }

    pub fn put_pattern(&mut self, pattern: Arc<Pattern>) {
        let id = pattern.id.clone();
        self.tables.patterns.insert(id.clone(), pattern);
        self.index_pattern(&id);
    }

    pub fn remove_pattern(&mut self, id: &str) {
        self.tables.patterns.remove(id);
        self.index_pattern(id);
    }

    /// Appends a strategy outcome to the outcome log.
    pub fn log_outcome(&mut self, outcome: StrategyOutcome) {
        self.rows.chain(b'o', &outcome);
        self.rows.outcomes.push_back(Arc::new(outcome));
    }

    /// Appends an entry to the audit log, giving it the next sequence.
    pub fn log_audit(&mut self, mut entry: AuditEntry) -> u64 {
        self.counters.audit_sequence += 1;
        entry.sequence = self.counters.audit_sequence;
        self.rows.chain(b'u', &entry);
        self.rows.audit.push_back(Arc::new(entry));
        self.counters.audit_sequence
    }

    // --- queries ----------------------------------------------------------

    /// Every strategy with evidence on `metric`: its fleet view, and its
    /// aggregate in `context_key` if it has one there.
    pub fn strategy_views(&self, metric: &str, context_key: &str) -> Vec<GroupView<'_>> {
        let Some(strategies) = self.indexes.views.get(metric) else {
            return Vec::new();
        };
        strategies
            .iter()
            .map(|(name, cell)| {
                let group = cell.get_or_init(|| self.build_group(metric, name));
                GroupView {
                    fleet: &group.fleet,
                    own: group.by_context.get(context_key),
                    remote_origins: group.remote_origins,
                }
            })
            .collect()
    }

    fn build_group(&self, metric: &str, strategy: &str) -> StrategyGroup {
        let start = StrategyKey::new(metric, strategy, "");
        let records: Vec<&Arc<StrategyRecord>> = self
            .tables
            .strategies
            .range(start.clone()..)
            .take_while(|(k, _)| *k.metric == *metric && *k.strategy == *strategy)
            .map(|(_, r)| r)
            .collect();
        let mut fleet = match records.is_empty() {
            // Known from other regions only.
            true => StrategyRecord::empty(&start, 0),
            false => fleet_view(records.iter().map(|r| &***r)),
        };
        let mut by_context: BTreeMap<String, Viewed> = records
            .into_iter()
            .filter(|r| !r.context_key.is_empty())
            .map(|r| (r.context_key.clone(), Viewed::new(r.clone())))
            .collect();
        // Other regions' evidence joins the windows rankings read (not the
        // lifetime figures, which stay this region's own).
        let remote = remote_evidence(self.tables.regions.values().map(|o| &**o), metric, strategy);
        // Streaks and strategies applied before: lifetime figures the
        // fleet's rankings scale by, every region's.
        if fleet.streaks.len() < remote.streaks.len() {
            fleet
                .streaks
                .resize(remote.streaks.len(), Default::default());
        }
        for (own, other) in fleet.streaks.iter_mut().zip(&remote.streaks) {
            *own = own.merge(other);
        }
        for (before, stats) in &remote.preceded_by {
            let own = fleet.preceded_by.entry(before.clone()).or_default();
            *own = own.merge(stats);
        }
        for (context_key, window) in &remote.by_context {
            merge_windows(&mut fleet.window, window);
            if context_key.is_empty() {
                continue;
            }
            let mut own = match by_context.get(context_key) {
                Some(local) => (*local.record).clone(),
                None => StrategyRecord::empty(&StrategyKey::new(metric, strategy, context_key), 0),
            };
            merge_windows(&mut own.window, window);
            by_context.insert(context_key.clone(), Viewed::new(Arc::new(own)));
        }
        StrategyGroup {
            fleet: Viewed::new(Arc::new(fleet)),
            by_context,
            remote_origins: remote.origins,
        }
    }

    /// How `strategy` has been used (any metric, any context), in this
    /// region and, as one voice, in the others
    /// ([`crate::knowledge::joined_usage`]).
    pub fn usage_of(&self, strategy: &str) -> Arc<StrategyUsage> {
        let own = self.own_usage_of(strategy);
        if self.tables.regions.is_empty() {
            return own;
        }
        let remote = remote_usage(self.tables.regions.values().map(|o| &**o), strategy);
        if remote.0 == 0 && remote.1.is_empty() {
            return own;
        }
        Arc::new(knowledge::joined_usage(&own, remote))
    }

    /// How `strategy` has been used in this region alone: what its own
    /// failure reports are counted against when they are exported.
    pub fn own_usage_of(&self, strategy: &str) -> Arc<StrategyUsage> {
        self.indexes
            .usage
            .get(strategy)
            .cloned()
            .unwrap_or_default()
    }

    /// Fleet model `own` as this region's instances train on it: with every
    /// other region's of its name added ([`crate::digest::fleet_model`]).
    pub fn fleet_model(&self, own: &ModelRecord) -> ModelRecord {
        crate::digest::fleet_model(
            own,
            self.tables
                .regions
                .values()
                .filter_map(|origin| origin.models.get(&own.name)),
        )
    }

    /// Every configuration as a bootstrap sees it: this region's, joined
    /// with other regions' knowledge
    /// ([`crate::knowledge::joined_configurations`]).
    pub fn configurations(&self) -> Vec<Arc<Configuration>> {
        let remote: Vec<(&str, &ConfigKnowledge)> = self
            .tables
            .regions
            .values()
            .flat_map(|origin| {
                origin
                    .records
                    .iter()
                    .filter_map(|(id, r)| match r.knowledge.as_ref()? {
                        Knowledge::Configuration(c) => Some((id.as_str(), c)),
                        _ => None,
                    })
            })
            .collect();
        let own = self.tables.configs.values().cloned();
        if remote.is_empty() {
            return own.collect();
        }
        knowledge::joined_configurations(own, remote)
    }

    /// Every failure as queries see it: this region's records, each with
    /// what other regions know of it joined, and failures only other
    /// regions know ([`crate::knowledge::joined_failure`]), in id order.
    pub fn failures(&self) -> Arc<[Arc<FailurePattern>]> {
        self.indexes
            .failures
            .get_or_init(|| self.join_failures().into())
            .clone()
    }

    /// What [`State::failures`] keeps must be built again: a failure or
    /// another region's knowledge changed.
    pub fn failures_changed(&mut self) {
        self.indexes.failures = Arc::default();
    }

    fn join_failures(&self) -> Vec<Arc<FailurePattern>> {
        if self.tables.regions.is_empty() {
            return self.tables.failures.values().cloned().collect();
        }
        let mut remote: BTreeMap<&str, Vec<&FailureKnowledge>> = BTreeMap::new();
        for origin in self.tables.regions.values() {
            for (id, record) in &origin.records {
                if let Some(Knowledge::Failure(k)) = &record.knowledge {
                    remote.entry(id.as_str()).or_default().push(k);
                }
            }
        }
        if remote.is_empty() {
            return self.tables.failures.values().cloned().collect();
        }
        let mut joined: BTreeMap<&str, Arc<FailurePattern>> = self
            .tables
            .failures
            .iter()
            .map(|(id, f)| (id.as_str(), f.clone()))
            .collect();
        for (id, knowledge) in remote {
            let own = joined.get(id).map(|f| &**f);
            if let Some(failure) = knowledge::joined_failure(own, knowledge, id) {
                joined.insert(id, Arc::new(failure));
            }
        }
        joined.into_values().collect()
    }

    /// A SHA-256 over everything the log decides: the position, every
    /// record of every table in key order, the counters and the rows ever
    /// logged. Two replicas at the same position hold the same state if and
    /// only if (barring a collision) their digests are equal; how they got
    /// there — from scratch, from a checkpoint — does not enter it.
    pub fn digest(&self) -> [u8; 32] {
        struct Hasher(ring::digest::Context);
        impl TableVisitor for Hasher {
            type Error = std::convert::Infallible;
            fn record<K: TableKey, V: Serialize>(
                &mut self,
                table: &'static str,
                key: &K,
                value: Option<&V>,
            ) -> Result<(), Self::Error> {
                let key = key.to_bytes();
                let value = value
                    .map(|v| serde_json::to_vec(v).unwrap_or_default())
                    .unwrap_or_default();
                for part in [table.as_bytes(), &key, &value] {
                    self.0.update(&(part.len() as u64).to_be_bytes());
                    self.0.update(part);
                }
                Ok(())
            }
        }
        let mut hasher = Hasher(ring::digest::Context::new(&ring::digest::SHA256));
        hasher.0.update(&self.position.to_be_bytes());
        let Ok(()) = self.tables.visit(&mut hasher);
        hasher
            .0
            .update(&serde_json::to_vec(&self.counters).unwrap_or_default());
        hasher.0.update(&self.rows.digest);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hasher.0.finish().as_ref());
        digest
    }
}

/// Hex of a digest, for logs and reports.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_order() {
        let a = StrategyKey {
            metric: "m".into(),
            strategy: "a".into(),
            context_key: "p=1".into(),
        };
        assert_eq!(StrategyKey::from_bytes(&a.to_bytes()), Some(a.clone()));
        assert!(2u64.to_bytes() < 10u64.to_bytes());
        let r = RequestKey::new("i1", "req-1");
        assert_eq!(RequestKey::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(RequestKey::from_bytes(b"no-separator"), None);
    }

    #[test]
    fn a_clone_is_a_snapshot_and_the_diff_is_what_changed() {
        let mut state = State::default();
        let instance = |id: &str| {
            Arc::new(Instance {
                instance_id: id.into(),
                region: "r".into(),
                context: Default::default(),
                capabilities: vec![],
                registered_at: 1,
                last_seen: 1,
                shared_records: 0,
            })
        };
        for id in ["a", "b", "c"] {
            state.tables.instances.insert(id.into(), instance(id));
        }
        let snapshot = state.clone();
        state.tables.instances.insert("d".into(), instance("d"));
        state.tables.instances.remove("a");
        assert_eq!(
            snapshot.tables.instances.len(),
            3,
            "the snapshot is unchanged"
        );

        struct Seen(Vec<(String, bool)>);
        impl TableVisitor for Seen {
            type Error = ();
            fn record<K: TableKey, V: Serialize>(
                &mut self,
                table: &'static str,
                key: &K,
                value: Option<&V>,
            ) -> Result<(), ()> {
                let key = String::from_utf8(key.to_bytes()).unwrap();
                self.0.push((format!("{table}{key}"), value.is_some()));
                Ok(())
            }
        }
        let mut seen = Seen(Vec::new());
        state.tables.diff(&snapshot.tables, &mut seen).unwrap();
        assert_eq!(
            seen.0,
            vec![("i/a".to_string(), false), ("i/d".to_string(), true)]
        );
        assert_ne!(state.digest(), snapshot.digest());
    }
}
