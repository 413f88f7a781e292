//! Store records through the codec (`store::codec`).
//!
//! An even first byte: the rest is a key length byte, a key and a value,
//! decoded as every kind of stored record. Decoding never panics, and a
//! value that decodes re-encodes to one that decodes to the same record.
//!
//! An odd first byte: the rest builds a record with `arbitrary` (any
//! strings, any numbers), which is encoded and decoded again: the same
//! record comes back, or `encode` refused it (a number JSON cannot hold).
//! Sequence keys sort like their sequences; strategy keys of different
//! aggregates differ.
#![no_main]

use std::fmt::Debug;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

use learning_hub::Error;
use learning_hub::domain::matching::MatchCalibration;
use learning_hub::domain::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, Pattern, StrategyKey,
    StrategyOutcome, StrategyRecord,
};
use learning_hub::store::codec::{self, Kind};

#[derive(Debug, Arbitrary)]
enum Record {
    Instance(Instance),
    Pattern(Pattern),
    Strategy(StrategyRecord),
    Outcome(StrategyOutcome),
    Insight(Insight),
    Failure(FailurePattern),
    Config(Configuration),
    ApiKey(ApiKey),
    Audit(AuditEntry),
    Sequence(u64),
    Calibration(MatchCalibration),
    SequenceKeys(u64, u64),
    StrategyKeys([String; 3], [String; 3]),
}

/// A value that decoded as `T` survives encode + decode unchanged.
fn decodes_stably<T: Serialize + DeserializeOwned + PartialEq + Debug>(key: &[u8], value: &[u8]) {
    match codec::decode::<T>(key, value) {
        Ok(record) => round_trip(&record),
        Err(Error::Internal(why)) => assert!(why.starts_with("corrupt record at key"), "{why}"),
        Err(other) => panic!("decode answered {other:?}"),
    }
}

/// `record` comes back from the codec as it went in, or the codec refuses
/// to encode it.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(record: &T) {
    let bytes = match codec::encode(record) {
        Ok(bytes) => bytes,
        Err(Error::Internal(why)) if why.contains("JSON cannot hold") => return,
        Err(other) => panic!("encode failed: {other:?} for {record:?}"),
    };
    match codec::decode::<T>(b"k", &bytes) {
        Ok(back) => assert_eq!(&back, record, "changed by encode + decode"),
        Err(e) => panic!(
            "an encoded record does not decode: {e}\n{record:?}\n{}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

fn strategy_key([metric, strategy, context_key]: [String; 3]) -> StrategyKey {
    StrategyKey {
        metric: metric.into(),
        strategy: strategy.into(),
        context_key: context_key.into(),
    }
}

fn raw(data: &[u8]) {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(key_len % 32).min(rest.len()));
    decodes_stably::<Instance>(key, value);
    decodes_stably::<Pattern>(key, value);
    decodes_stably::<StrategyRecord>(key, value);
    decodes_stably::<StrategyOutcome>(key, value);
    decodes_stably::<Insight>(key, value);
    decodes_stably::<FailurePattern>(key, value);
    decodes_stably::<Configuration>(key, value);
    decodes_stably::<ApiKey>(key, value);
    decodes_stably::<AuditEntry>(key, value);
    decodes_stably::<u64>(key, value);
    decodes_stably::<MatchCalibration>(key, value);
}

fn structured(data: &[u8]) {
    let Ok(record) = Record::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match record {
        Record::Instance(r) => round_trip(&r),
        Record::Pattern(r) => round_trip(&r),
        Record::Strategy(r) => round_trip(&r),
        Record::Outcome(r) => round_trip(&r),
        Record::Insight(r) => round_trip(&r),
        Record::Failure(r) => round_trip(&r),
        Record::Config(r) => round_trip(&r),
        Record::ApiKey(r) => round_trip(&r),
        Record::Audit(r) => round_trip(&r),
        Record::Sequence(r) => round_trip(&r),
        Record::Calibration(r) => round_trip(&r),
        Record::SequenceKeys(a, b) => {
            let (ka, kb) = (
                codec::sequence_key(Kind::Outcome, a),
                codec::sequence_key(Kind::Outcome, b),
            );
            assert_eq!(a.cmp(&b), ka.cmp(&kb), "keys of {a} and {b} sort wrong");
            let (start, end) = Kind::Outcome.range();
            assert!(
                start <= ka && ka < end,
                "key of {a} outside its kind's range"
            );
        }
        Record::StrategyKeys(a, b) => {
            // Names never hold NUL (validation), which separates the parts.
            if a.iter().chain(&b).any(|part| part.contains('\0')) {
                return;
            }
            let (ka, kb) = (strategy_key(a), strategy_key(b));
            let same = codec::strategy_key(&ka) == codec::strategy_key(&kb);
            assert_eq!(same, ka == kb, "{ka:?} and {kb:?}");
            let (start, end) = Kind::Strategy.range();
            let key = codec::strategy_key(&ka);
            assert!(start <= key && key < end);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => raw(rest),
        Some((_, rest)) => structured(rest),
        None => {}
    }
});
