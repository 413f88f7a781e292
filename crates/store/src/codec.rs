//! How records become bytes. Keys are a one-letter kind prefix and the
//! record's identity (big-endian numbers, so key order is sequence order);
//! values are a format-version byte followed by the record's JSON, which
//! records of [`COMPRESS_FROM`] bytes or more hold LZ4-compressed. JSON is
//! slower than a binary format but self-describing: old records stay
//! readable as fields are added (`#[serde(default)]`), and an operator can
//! inspect a dump (after `lz4` for version 2).

use serde::{Serialize, de::DeserializeOwned};

use super::finite::first_non_finite;
use crate::domain::idempotency::RequestKey;
use crate::domain::model::StrategyKey;
use crate::error::{Error, Result};

/// Version byte of a value held as its JSON.
const FORMAT_V1: u8 = 1;
/// Version byte of a value held as its JSON compressed: an LZ4 block with
/// the JSON's length in front (4 bytes, little-endian). Written since the
/// checkpoints of write benches were found to be 90% of the bytes the hub
/// wrote, most of them strategy aggregates of ~2.7 KB of JSON whose field
/// names repeat (BENCHMARKS.md, "The command log"); read by every hub
/// since, so a store written by a newer hub does not open under an older.
const FORMAT_V2_LZ4: u8 = 2;
/// Values whose JSON is at least this long are compressed, when that
/// saves a quarter or more (shorter ones, the outcome and audit rows,
/// gain little).
pub const COMPRESS_FROM: usize = 512;
/// LZ4 expands a block at most ~255-fold: a length in front beyond that is
/// corruption, and must not become an allocation of gigabytes.
const MAX_EXPANSION: usize = 255;

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

/// The record's bytes: the format version, then its JSON (compressed from
/// [`COMPRESS_FROM`] bytes). A record holding NaN or an infinity is refused
/// (`Internal`): JSON has no such numbers, serde_json would write `null`,
/// and the record would fail to load at the next start — better that this
/// write fails.
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
    let json = &bytes[1..];
    if json.len() >= COMPRESS_FROM && u32::try_from(json.len()).is_ok() {
        let packed = lz4_flex::block::compress_prepend_size(json);
        if packed.len() <= json.len() / 4 * 3 {
            let mut compressed = Vec::with_capacity(1 + packed.len());
            compressed.push(FORMAT_V2_LZ4);
            compressed.extend_from_slice(&packed);
            return Ok(compressed);
        }
    }
    Ok(bytes)
}

/// The JSON in a version-2 value (see [`FORMAT_V2_LZ4`]).
fn uncompress(packed: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let (length, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|e| format!("compressed: {e}"))?;
    if length > block.len().saturating_mul(MAX_EXPANSION) {
        return Err(format!(
            "compressed: {length} bytes cannot come from a block of {}",
            block.len()
        ));
    }
    let json =
        lz4_flex::block::decompress(block, length).map_err(|e| format!("compressed: {e}"))?;
    if json.len() != length {
        return Err(format!(
            "compressed: {} bytes where {length} were announced",
            json.len()
        ));
    }
    Ok(json)
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
        Some((&FORMAT_V2_LZ4, packed)) => {
            let json = uncompress(packed).map_err(corrupt)?;
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
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
    fn large_records_are_compressed_and_read_back_small_ones_are_not() {
        let small = vec![1u64, 2, 3];
        assert_eq!(encode(&small).unwrap()[0], FORMAT_V1);
        // An aggregate-like record: its field names repeat.
        let large: Vec<RecoveryStat> = (0..40)
            .map(|i| RecoveryStat {
                suggested: i,
                successes: i / 2,
                failures: i / 3,
            })
            .collect();
        let json = serde_json::to_vec(&large).unwrap();
        assert!(json.len() >= COMPRESS_FROM);
        let bytes = encode(&large).unwrap();
        assert_eq!(bytes[0], FORMAT_V2_LZ4);
        assert!(
            bytes.len() * 2 < json.len(),
            "{} of {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(decode::<Vec<RecoveryStat>>(b"k", &bytes).unwrap(), large);
        // What a hub before compression wrote still reads.
        let mut old = vec![FORMAT_V1];
        old.extend_from_slice(&json);
        assert_eq!(decode::<Vec<RecoveryStat>>(b"k", &old).unwrap(), large);
        // JSON that does not compress by a quarter is kept as it is.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: String = (0..COMPRESS_FROM * 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        assert_eq!(encode(&noise).unwrap()[0], FORMAT_V1);
    }

    #[test]
    fn corrupt_compressed_values_are_errors_not_allocations_or_panics() {
        let large: Vec<u64> = vec![7; 400];
        let bytes = encode(&large).unwrap();
        assert_eq!(bytes[0], FORMAT_V2_LZ4);
        // A length in front of 4 GiB over a few bytes of block.
        let mut huge = vec![FORMAT_V2_LZ4];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&bytes[5..]);
        let err = decode::<Vec<u64>>(b"k", &huge).unwrap_err().to_string();
        assert!(err.contains("cannot come from a block"), "{err}");
        // Every truncation and a flipped byte anywhere: an error or the
        // value, never a panic.
        for cut in 0..bytes.len() {
            let _ = decode::<Vec<u64>>(b"k", &bytes[..cut]);
        }
        for at in 1..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x5a;
            let _ = decode::<Vec<u64>>(b"k", &flipped);
        }
        assert!(decode::<Vec<u64>>(b"k", &[FORMAT_V2_LZ4, 1]).is_err());
    }

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
