//! Writes as data. Every change to the hub's state is a [`Command`]: a
//! share, an outcome, a key issued or revoked, audit entries, a retention
//! sweep, generated insights. The command log is the sequence of them, and
//! the state is what [`super::fold`] makes of it.
//!
//! A command carries everything the fold must not invent: the time it
//! happened at, the ids it creates (an insight's id), the key hash and salt
//! of an issued key, the fingerprint of an idempotent request, the windows
//! and rules it is judged by. Whoever appends it fixes those once; every
//! replica that folds it then computes the same state and the same answer.
//!
//! Commands are stored as a format byte and JSON ([`LogEntry::encode`]); a
//! reader that meets a format it does not know stops with an error naming
//! it rather than misfolding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::anomaly::Finding;
use super::digest::Batch;
use super::federated::{FederationRules, ModelUpdate};
use super::idempotency::RequestTag;
use super::influence::Rebuilt;
use super::model::{
    ApiKey, AuditEntry, ConfigShare, FailureReport, InsightDraft, PatternShare, Registration,
    StrategyShare, UnixMillis,
};

/// The command format this hub writes and the newest it reads.
pub const COMMAND_FORMAT: u8 = 1;

/// An idempotent write's request id, as the fold judges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub tag: RequestTag,
    /// How long the id is remembered (`hub.request_id_window_hours`).
    pub window_ms: i64,
}

/// The rules of a retention sweep, fixed when it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRules {
    pub pattern_days: i64,
    pub unconfirmed_pattern_days: i64,
    pub low_frequency: u64,
    /// Days of daily evidence a strategy aggregate keeps.
    pub evidence_days: i64,
    /// How long request ids are remembered.
    pub request_window_ms: i64,
    /// Context models idle for longer than this many days go (0: kept,
    /// as in sweeps logged before context models were retained, which
    /// must fold as they did).
    #[serde(default)]
    pub context_model_days: i64,
}

/// Which run of a periodic job a command is the output of: the lease
/// epoch its replica held and the period it ran for. With replicas, only
/// the lease holder runs the jobs; a deposed holder that still appends is
/// refused by the fold (a smaller epoch than the job's last run), and a
/// period runs once (a period not after the job's last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStamp {
    /// The job's name (`insights`, `retention`).
    pub job: String,
    pub epoch: u64,
    pub period: u64,
}

/// One generated insight to publish, with the id its appender chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub id: String,
    pub draft: InsightDraft,
}

/// What changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// An instance registers (or refreshes its record).
    Register {
        caller: String,
        registration: Registration,
    },
    SharePattern {
        caller: String,
        share: PatternShare,
        request: Option<Idempotency>,
    },
    RecordPatternOutcome {
        caller: String,
        pattern_id: String,
        success: bool,
        metric: Option<String>,
        strategy: Option<String>,
        similarity: Option<f64>,
        request: Option<Idempotency>,
    },
    ShareStrategy {
        caller: String,
        share: StrategyShare,
        /// Days of daily evidence the aggregate keeps.
        evidence_days: i64,
        request: Option<Idempotency>,
    },
    ShareInsight {
        caller: String,
        draft: InsightDraft,
        /// The id the insight gets if it is stored.
        id: String,
        /// Its validity when the draft sets none.
        default_ttl_ms: i64,
        request: Option<Idempotency>,
        /// The bytes of insights the caller may have stored
        /// ([`Insight::stored_bytes`](crate::model::Insight::stored_bytes));
        /// its oldest go to make room. 0 (commands logged before the bound
        /// existed): no bound.
        #[serde(default)]
        max_bytes_per_instance: u64,
    },
    RecordInsightUse {
        caller: String,
        insight_id: String,
        request: Option<Idempotency>,
    },
    ShareFailure {
        caller: String,
        report: FailureReport,
        request: Option<Idempotency>,
    },
    ShareConfiguration {
        caller: String,
        share: ConfigShare,
        request: Option<Idempotency>,
    },
    /// An instance's change of a federated model's weights.
    ShareModelUpdate {
        caller: String,
        update: ModelUpdate,
        rules: FederationRules,
        /// The insight that announces a new version, if this update makes
        /// one: its id and validity.
        announce_id: String,
        announce_ttl_ms: i64,
        request: Option<Idempotency>,
    },
    /// A new key for an instance (replacing its previous one): its salted
    /// hash, never the key.
    IssueApiKey {
        key: ApiKey,
    },
    RevokeApiKey {
        instance_id: String,
    },
    ResolveFailure {
        failure_id: String,
    },
    InvalidateInsight {
        insight_id: String,
    },
    /// An operator stops counting an instance's writes, and what it
    /// reported recently: the aggregates it reported into, rebuilt without
    /// it.
    QuarantineInstance {
        instance_id: String,
        by: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rebuilt: Vec<Rebuilt>,
    },
    ReleaseInstance {
        instance_id: String,
    },
    /// Calls to append to the audit log.
    Audit {
        entries: Vec<AuditEntry>,
    },
    /// Forget what has expired.
    Retention {
        rules: RetentionRules,
        /// Set when a periodic job decided it (absent: an operator asked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobStamp>,
    },
    /// What an anomaly scan found: it replaces the kept anomalies, keeping
    /// when each was first seen.
    RecordAnomalies {
        found: Vec<Finding>,
        /// The insight id each strategy shift is announced with if this
        /// scan is the first to find it, by finding id.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        announce_ids: BTreeMap<String, String>,
        #[serde(default)]
        announce_ttl_ms: i64,
        /// Set when the periodic job scanned (absent: an operator asked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobStamp>,
    },
    /// Other regions' knowledge, as a peer's hub sent it (see
    /// [`crate::digest`]): merged per origin, so a batch delivered twice,
    /// late or relayed by another region counts nothing twice.
    MergeDigests {
        /// This hub's own region: its own knowledge, relayed back by a
        /// peer, is not kept as another origin's.
        own_region: String,
        batches: Vec<Batch>,
    },
    /// Insights derived from the fleet's history, to store and publish.
    PublishInsights {
        generated: Vec<Generated>,
        ttl_ms: i64,
        by: String,
        /// Set when a periodic job generated them (absent: an operator asked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobStamp>,
    },
}

impl Action {
    /// The command's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Register { .. } => "Register",
            Action::SharePattern { .. } => "SharePattern",
            Action::RecordPatternOutcome { .. } => "RecordPatternOutcome",
            Action::ShareStrategy { .. } => "ShareStrategy",
            Action::ShareInsight { .. } => "ShareInsight",
            Action::RecordInsightUse { .. } => "RecordInsightUse",
            Action::ShareFailure { .. } => "ShareFailure",
            Action::ShareConfiguration { .. } => "ShareConfiguration",
            Action::ShareModelUpdate { .. } => "ShareModelUpdate",
            Action::IssueApiKey { .. } => "IssueApiKey",
            Action::RevokeApiKey { .. } => "RevokeApiKey",
            Action::ResolveFailure { .. } => "ResolveFailure",
            Action::InvalidateInsight { .. } => "InvalidateInsight",
            Action::QuarantineInstance { .. } => "QuarantineInstance",
            Action::ReleaseInstance { .. } => "ReleaseInstance",
            Action::Audit { .. } => "Audit",
            Action::Retention { .. } => "Retention",
            Action::PublishInsights { .. } => "PublishInsights",
            Action::RecordAnomalies { .. } => "RecordAnomalies",
            Action::MergeDigests { .. } => "MergeDigests",
        }
    }

    /// Whether folding it can change which API keys are valid (streams
    /// re-check their key when one does).
    pub fn changes_keys(&self) -> bool {
        matches!(
            self,
            Action::IssueApiKey { .. } | Action::RevokeApiKey { .. }
        )
    }

    /// Whether the caller waits for it to be durable (everything but audit
    /// entries, which ride along with the next flush).
    pub fn durable(&self) -> bool {
        !matches!(self, Action::Audit { .. })
    }
}

/// A state change and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The appender's clock when it was decided.
    pub at: UnixMillis,
    pub action: Action,
}

/// A command at its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub position: u64,
    pub command: Command,
}

/// Why a stored command cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "log entry {position} is in command format {found}, newer than this hub reads \
         (up to {COMMAND_FORMAT}): upgrade the hub before it folds this log"
    )]
    Newer { position: u64, found: u8 },
    #[error("log entry {position} is corrupt: {why}")]
    Corrupt { position: u64, why: String },
}

impl Command {
    /// The stored form: the format byte, then JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![COMMAND_FORMAT];
        // Commands are plain data with finite numbers (validated on the way
        // in); serde_json cannot fail on them.
        serde_json::to_writer(&mut bytes, self).unwrap_or_default();
        bytes
    }

    /// Reads a stored command found at `position`.
    pub fn decode(position: u64, bytes: &[u8]) -> Result<Command, FormatError> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT, json)) => {
                serde_json::from_slice(json).map_err(|e| FormatError::Corrupt {
                    position,
                    why: e.to_string(),
                })
            }
            Some((&found, _)) if found > COMMAND_FORMAT => {
                Err(FormatError::Newer { position, found })
            }
            Some((found, _)) => Err(FormatError::Corrupt {
                position,
                why: format!("unknown command format {found}"),
            }),
            None => Err(FormatError::Corrupt {
                position,
                why: "empty".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_newer_formats_are_refused_by_name() {
        let command = Command {
            at: 1_700_000_000_000,
            action: Action::RevokeApiKey {
                instance_id: "a".into(),
            },
        };
        let bytes = command.encode();
        assert_eq!(Command::decode(7, &bytes), Ok(command));
        let mut newer = bytes.clone();
        newer[0] = COMMAND_FORMAT + 1;
        let error = Command::decode(7, &newer).unwrap_err();
        assert_eq!(
            error,
            FormatError::Newer {
                position: 7,
                found: COMMAND_FORMAT + 1
            }
        );
        assert!(error.to_string().contains("upgrade the hub"));
        assert!(matches!(
            Command::decode(7, b"\x01{"),
            Err(FormatError::Corrupt { position: 7, .. })
        ));
    }
}
