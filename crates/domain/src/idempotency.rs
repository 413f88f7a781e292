//! Idempotent writes. An instance may give a write a `request_id` of its
//! choosing; the hub then remembers, per (instance, request id), which RPC
//! it was, a fingerprint of its payload and what it answered — for a
//! window (24 hours by default). The same request arriving again within
//! the window (a client retrying after a timeout or a dropped connection)
//! is not applied again: it gets the first call's answer. The same id with
//! another payload or on another RPC is refused: that is a client bug, and
//! answering it with the first call's result would hide it.
//!
//! The key is the *authenticated* instance and the request id, so no
//! instance can collide with (or probe) another's ids.
//!
//! What is remembered is small and fixed-size ([`RequestRecord`]): the
//! records a write changed are not copied, they are read again to answer a
//! retry. A retry therefore sees those records as they are now (with later
//! writes of others folded in), never its own write twice.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::model::UnixMillis;

/// The writes that accept a request id. Register needs none: repeating it
/// changes nothing but the instance's `last_seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WriteRpc {
    SharePattern,
    RecordPatternOutcome,
    ShareStrategy,
    ShareInsight,
    RecordInsightUse,
    ShareFailure,
    ShareConfiguration,
    ShareModelUpdate,
}

impl WriteRpc {
    /// The RPC's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            WriteRpc::SharePattern => "SharePattern",
            WriteRpc::RecordPatternOutcome => "RecordPatternOutcome",
            WriteRpc::ShareStrategy => "ShareStrategy",
            WriteRpc::ShareInsight => "ShareInsight",
            WriteRpc::RecordInsightUse => "RecordInsightUse",
            WriteRpc::ShareFailure => "ShareFailure",
            WriteRpc::ShareConfiguration => "ShareConfiguration",
            WriteRpc::ShareModelUpdate => "ShareModelUpdate",
        }
    }
}

impl fmt::Display for WriteRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a write answered, as far as the records it changed do not say it:
/// enough to answer a retry the same way. The variant is the RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rpc")]
pub enum Applied {
    /// The pattern is found again from the share's signature.
    SharePattern {
        new_pattern: bool,
    },
    RecordPatternOutcome,
    /// The aggregate is found again from the share's key.
    ShareStrategy {
        outcome_sequence: u64,
    },
    /// The insight stored (or, with `duplicate`, the one found identical).
    ShareInsight {
        sequence: u64,
        duplicate: bool,
    },
    RecordInsightUse,
    ShareFailure,
    ShareConfiguration,
    /// The model is found again from the update's model name; a
    /// context's model from `context_record` ([`name_tag`] of its record
    /// name), because the caller may have registered another context
    /// before it retries. 0 for the fleet's model, and in records written
    /// before the tag was kept (whose retries name the record from the
    /// caller's registration, as they did then).
    ShareModelUpdate {
        #[serde(default)]
        context_record: u64,
    },
}

/// A record name in 64 bits (the first 8 bytes of its SHA-256): what a
/// remembered model update keeps to find its record again, without making
/// every remembered request larger.
pub fn name_tag(name: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(bytes)
}

impl Applied {
    pub fn rpc(&self) -> WriteRpc {
        match self {
            Applied::SharePattern { .. } => WriteRpc::SharePattern,
            Applied::RecordPatternOutcome => WriteRpc::RecordPatternOutcome,
            Applied::ShareStrategy { .. } => WriteRpc::ShareStrategy,
            Applied::ShareInsight { .. } => WriteRpc::ShareInsight,
            Applied::RecordInsightUse => WriteRpc::RecordInsightUse,
            Applied::ShareFailure => WriteRpc::ShareFailure,
            Applied::ShareConfiguration => WriteRpc::ShareConfiguration,
            Applied::ShareModelUpdate { .. } => WriteRpc::ShareModelUpdate,
        }
    }
}

/// The first 128 bits of the SHA-256 of a request's payload (its encoding
/// without the request id). Only one instance's requests with one id are
/// ever compared, so 128 bits leave no practical chance of a collision.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    pub fn of(payload: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, payload);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        Fingerprint(bytes)
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(bytes))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

/// Stored as 32 hex digits, readable in a dump.
impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        Fingerprint::from_hex(&hex)
            .ok_or_else(|| de::Error::custom(format!("not a 32-digit hex fingerprint: {hex:?}")))
    }
}

/// A write's request id and the fingerprint of its payload, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTag {
    pub id: String,
    pub fingerprint: Fingerprint,
}

/// Whose request id: the instance and the id, joined by NUL (neither may
/// contain one: both are validated names), which is also its store key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(std::sync::Arc<str>);

impl RequestKey {
    pub fn new(instance_id: &str, request_id: &str) -> Self {
        let mut key = String::with_capacity(instance_id.len() + 1 + request_id.len());
        key.push_str(instance_id);
        key.push('\0');
        key.push_str(request_id);
        RequestKey(key.into())
    }

    /// A key read back from the store (`None` unless it has both parts).
    pub fn from_stored(key: String) -> Option<Self> {
        match key.split_once('\0') {
            Some((instance, request)) if !instance.is_empty() && !request.is_empty() => {
                Some(RequestKey(key.into()))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn instance_id(&self) -> &str {
        self.0.split_once('\0').map_or(&self.0, |(i, _)| i)
    }

    pub fn request_id(&self) -> &str {
        self.0.split_once('\0').map_or("", |(_, r)| r)
    }
}

/// What the hub remembers of one applied write that carried a request id.
///
/// Its size is fixed: 40 bytes inline (`Applied` 16, `Fingerprint` 16, `at`
/// 8). In the hub's map it costs, with its key (24 bytes plus the heap
/// string `instance\0request_id`, 64 to 80 bytes with allocator overhead
/// for a UUID request id) and the hash table's spare capacity (load factor
/// between 7/16 and 7/8), about 160 to 240 bytes: a million UUID ids of
/// 500 instances measured 200 bytes each (RSS). On disk it is a key of the
/// same string (about 50 bytes) and about 125 bytes of JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub applied: Applied,
    pub fingerprint: Fingerprint,
    /// When the write was applied.
    pub at: UnixMillis,
}

/// Why a request id cannot be used for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// It was used for another RPC.
    OtherRpc(WriteRpc),
    /// It was used for this RPC with another payload.
    OtherPayload(WriteRpc),
}

impl fmt::Display for Reuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reuse::OtherRpc(rpc) => write!(f, "was already used for {rpc}"),
            Reuse::OtherPayload(rpc) => write!(f, "was already used for a different {rpc} request"),
        }
    }
}

impl RequestRecord {
    /// Whether the record still deduplicates at `now`: for `window_ms`
    /// after the write. (A clock that jumped back keeps it.)
    pub fn live_at(&self, now: UnixMillis, window_ms: i64) -> bool {
        now < self.at.saturating_add(window_ms)
    }

    /// Judges a request with the same key: the first call's answer if it is
    /// the same request again, or why it is not.
    pub fn judge(&self, rpc: WriteRpc, fingerprint: &Fingerprint) -> Result<Applied, Reuse> {
        let used_for = self.applied.rpc();
        if used_for != rpc {
            Err(Reuse::OtherRpc(used_for))
        } else if self.fingerprint != *fingerprint {
            Err(Reuse::OtherPayload(rpc))
        } else {
            Ok(self.applied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 60 * 60 * 1000;

    fn record(applied: Applied, payload: &[u8]) -> RequestRecord {
        RequestRecord {
            applied,
            fingerprint: Fingerprint::of(payload),
            at: 1_000,
        }
    }

    #[test]
    fn same_request_gets_the_first_answer_and_others_are_refused() {
        let first = record(
            Applied::ShareStrategy {
                outcome_sequence: 7,
            },
            b"payload",
        );
        let same = Fingerprint::of(b"payload");
        assert_eq!(
            first.judge(WriteRpc::ShareStrategy, &same),
            Ok(Applied::ShareStrategy {
                outcome_sequence: 7
            })
        );
        assert_eq!(
            first.judge(WriteRpc::ShareStrategy, &Fingerprint::of(b"payload2")),
            Err(Reuse::OtherPayload(WriteRpc::ShareStrategy))
        );
        assert_eq!(
            first.judge(WriteRpc::ShareInsight, &same),
            Err(Reuse::OtherRpc(WriteRpc::ShareStrategy))
        );
        assert_eq!(
            Reuse::OtherRpc(WriteRpc::ShareStrategy).to_string(),
            "was already used for ShareStrategy"
        );
    }

    #[test]
    fn records_live_for_the_window() {
        let r = record(Applied::ShareFailure, b"x");
        assert!(r.live_at(1_000, 24 * HOUR));
        assert!(r.live_at(1_000 + 24 * HOUR - 1, 24 * HOUR));
        assert!(!r.live_at(1_000 + 24 * HOUR, 24 * HOUR));
        assert!(r.live_at(0, 24 * HOUR), "a clock gone back keeps it");
        assert!(r.live_at(i64::MAX - 1, i64::MAX), "no overflow");
    }

    #[test]
    fn stored_form_round_trips_and_is_readable() {
        let r = RequestRecord {
            applied: Applied::ShareInsight {
                sequence: 3,
                duplicate: true,
            },
            fingerprint: Fingerprint::of(b"insight"),
            at: 1_700_000_000_000,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""rpc":"ShareInsight""#), "{json}");
        assert_eq!(serde_json::from_str::<RequestRecord>(&json).unwrap(), r);
        let unit = record(Applied::RecordInsightUse, b"u");
        let json = serde_json::to_string(&unit).unwrap();
        assert_eq!(serde_json::from_str::<RequestRecord>(&json).unwrap(), unit);
        assert!(
            serde_json::from_str::<RequestRecord>(
                r#"{"applied":{"rpc":"ShareFailure"},"fingerprint":"zz","at":1}"#
            )
            .is_err()
        );
        assert_eq!(std::mem::size_of::<RequestRecord>(), 40);
    }

    #[test]
    fn keys_keep_their_parts_apart() {
        let key = RequestKey::new("us-east-1", "r-1");
        assert_eq!(key.instance_id(), "us-east-1");
        assert_eq!(key.request_id(), "r-1");
        assert_ne!(key, RequestKey::new("us-east-1r", "-1"));
        assert_eq!(RequestKey::from_stored(key.as_str().to_string()), Some(key));
        assert_eq!(RequestKey::from_stored("no-separator".into()), None);
        assert_eq!(RequestKey::from_stored("\0r".into()), None);
    }
}
