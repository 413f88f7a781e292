//! How records become bytes. Keys are a one-letter kind prefix and the
//! record's identity (big-endian numbers, so key order is sequence order);
//! values are a format-version byte followed by the record's JSON. JSON is
//! slower than a binary format but self-describing: old records stay
//! readable as fields are added (`#[serde(default)]`), and an operator can
//! inspect a dump.

use serde::{Serialize, de::DeserializeOwned};

use super::finite::first_non_finite;
use crate::domain::idempotency::RequestKey;
use crate::domain::model::StrategyKey;
use crate::error::{Error, Result};

/// Version byte in front of every value.
const FORMAT_V1: u8 = 1;

/// The kinds of record and their key prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance,
    Pattern,
    Strategy,
    Outcome,
    Insight,
    Failure,
    Config,
    Meta,
    ApiKey,
    Audit,
    Request,
}

impl Kind {
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Kind::Instance => b"i/",
            Kind::Pattern => b"p/",
            Kind::Strategy => b"s/",
            Kind::Outcome => b"o/",
            Kind::Insight => b"n/",
            Kind::Failure => b"f/",
            Kind::Config => b"c/",
            Kind::Meta => b"m/",
            Kind::ApiKey => b"k/",
            Kind::Audit => b"u/",
            Kind::Request => b"r/",
        }
    }

    /// The key range holding every record of this kind: the prefix up to
    /// (excluding) the prefix with its last byte incremented.
    pub fn range(self) -> (Vec<u8>, Vec<u8>) {
        let start = self.prefix().to_vec();
        let mut end = start.clone();
        *end.last_mut().expect("prefixes are non-empty") += 1;
        (start, end)
    }
}

pub fn key(kind: Kind, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(kind.prefix().len() + id.len());
    key.extend_from_slice(kind.prefix());
    key.extend_from_slice(id);
    key
}

pub fn sequence_key(kind: Kind, sequence: u64) -> Vec<u8> {
    key(kind, &sequence.to_be_bytes())
}

/// Names may not contain NUL (validation forbids it), so NUL separates the
/// parts unambiguously and keeps one metric's aggregates contiguous.
pub fn strategy_key(k: &StrategyKey) -> Vec<u8> {
    let id = format!("{}\u{0}{}\u{0}{}", k.metric, k.strategy, k.context_key);
    key(Kind::Strategy, id.as_bytes())
}

/// A remembered request id: `r/<instance>\0<request id>`.
pub fn request_key(k: &RequestKey) -> Vec<u8> {
    key(Kind::Request, k.as_str().as_bytes())
}

/// The record's bytes: the format version, then its JSON. A record holding
/// NaN or an infinity is refused (`Internal`): JSON has no such numbers,
/// serde_json would write `null`, and the record would fail to load at the
/// next start — better that this write fails.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![FORMAT_V1];
    serde_json::to_writer(&mut bytes, value)
        .map_err(|e| Error::Internal(format!("cannot encode record: {e}")))?;
    // serde_json writes a non-finite number as `null`: JSON without that
    // word has none, and the walk that finds and names one (a second pass
    // over the record, a good part of a checkpoint's encoding) is needed
    // only when the word is there — for a None, a string, or such a number.
    if memchr::memmem::find(&bytes, b"null").is_some() {
        if let Some((path, number)) = first_non_finite(value) {
            let at = if path.is_empty() { "the value" } else { &path };
            return Err(Error::Internal(format!(
                "cannot encode record: {at} is {number}; JSON cannot hold it"
            )));
        }
    }
    Ok(bytes)
}

fn corrupt(key: &[u8], why: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "corrupt record at key {:?}: {why}",
        String::from_utf8_lossy(key)
    ))
}

/// The sequence in a key of a sequence-keyed `kind` (`None` if `key` is
/// not one).
pub fn key_sequence(kind: Kind, key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(kind.prefix())?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// Checks that a record read at a sequence key carries that sequence: code
/// that pages through a log by the records' own sequences would otherwise
/// read the same page forever.
pub fn check_sequence(kind: Kind, key: &[u8], sequence: u64) -> Result<()> {
    match key_sequence(kind, key) {
        Some(at) if at == sequence => Ok(()),
        Some(at) => Err(corrupt(
            key,
            format!("holds sequence {sequence}, stored at {at}"),
        )),
        None => Err(corrupt(key, "not a sequence key")),
    }
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |why: String| corrupt(key, why);
    match bytes.split_first() {
        Some((&FORMAT_V1, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}"))),
        None => Err(corrupt("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::RecoveryStat;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let value = RecoveryStat {
            suggested: 3,
            successes: 2,
            failures: 1,
        };
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<RecoveryStat>(b"k", &bytes).unwrap(), value);
        assert!(decode::<RecoveryStat>(b"k", &[]).is_err());
        assert!(decode::<RecoveryStat>(b"k", &[9, b'{', b'}']).is_err());
        assert!(decode::<RecoveryStat>(b"k", &[1, b'{']).is_err());
    }

    /// Found by fuzz/store_records: serde_json's default number parser read
    /// 2.7085039786150142e-306 back as …145e-306, so an aggregate could
    /// change in its last digit with every checkpoint and reload.
    #[test]
    fn numbers_read_back_exactly() {
        for x in [
            2.7085039786150142e-306,
            0.1 + 0.2,
            1.0 / 3.0,
            0.123_456_789_012_345_68,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -0.0,
        ] {
            let bytes = encode(&x).unwrap();
            let back: f64 = decode(b"k", &bytes).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e} came back as {back:e}");
        }
    }

    /// Found by fuzz/store_records: a pattern whose metric value was NaN
    /// was written as `"value":null` and then could not be decoded — a
    /// store the hub could not start from. Such a record is refused at
    /// encode, naming the number.
    #[test]
    fn numbers_json_cannot_hold_are_refused_at_encode() {
        use crate::domain::model::MetricState;
        use std::collections::BTreeMap;
        let metrics = BTreeMap::from([(
            "lv".to_string(),
            MetricState {
                value: f64::NAN,
                stuck: false,
            },
        )]);
        let err = encode(&metrics).unwrap_err().to_string();
        assert!(err.contains("[…].value is NaN"), "{err}");
        let stats = crate::domain::stats::RunningStats {
            m2: f64::INFINITY,
            ..Default::default()
        };
        let err = encode(&stats).unwrap_err().to_string();
        assert!(err.contains("m2 is inf; JSON cannot hold it"), "{err}");
        assert!(encode(&f64::NEG_INFINITY).is_err());
        // Finite values, None and nested options still encode.
        assert!(encode(&(Some(1.5), None::<f64>, vec![0.0, -0.0])).is_ok());
    }

    #[test]
    fn sequence_keys_sort_numerically() {
        assert!(sequence_key(Kind::Insight, 2) < sequence_key(Kind::Insight, 10));
        let (start, end) = Kind::Insight.range();
        let k = sequence_key(Kind::Insight, u64::MAX);
        assert!(start <= k && k < end);
    }
}
