//! A hub starting on an arbitrary store: `Hub::load_state` (every record
//! decoded, the outcome log replayed into the aggregates, the state
//! indexed) and the log scans retention and the audit query use.
//!
//! Input: entries of `[kind byte][id][value mode byte][value]` (see
//! `entries`). Must hold: no panic, no hang (run with `-timeout`), and a
//! store the hub itself wrote — the checkpoint `load_state` asks for —
//! loads again.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use learning_hub::domain::matching::MatchCalibration;
use learning_hub::domain::model::{
    ApiKey, AuditEntry, Configuration, FailurePattern, Insight, Instance, Pattern, StrategyOutcome,
    StrategyRecord,
};
use learning_hub::hub::{Hub, HubSettings};
use learning_hub::store::codec::{self, Kind};
use learning_hub::store::{Engine, KvWrite, MemoryEngine, Store};

const META: [&[u8]; 5] = [
    b"insight_sequence",
    b"outcome_sequence",
    b"audit_sequence",
    b"pattern_calibration",
    b"strategy_floor",
];

/// The stored value: raw bytes, or a record of the key's kind made by
/// `arbitrary` and encoded as the hub would.
fn value(u: &mut Unstructured<'_>, kind: u8) -> Result<Vec<u8>> {
    if u.arbitrary::<bool>()? {
        let len = u.int_in_range(0..=512)?;
        return Ok(u.bytes(len)?.to_vec());
    }
    let encoded = match kind {
        0 => codec::encode(&Instance::arbitrary(u)?),
        1 => codec::encode(&Pattern::arbitrary(u)?),
        2 => codec::encode(&StrategyRecord::arbitrary(u)?),
        3 => codec::encode(&FailurePattern::arbitrary(u)?),
        4 => codec::encode(&Configuration::arbitrary(u)?),
        5 => codec::encode(&ApiKey::arbitrary(u)?),
        6 => codec::encode(&StrategyOutcome::arbitrary(u)?),
        7 => codec::encode(&Insight::arbitrary(u)?),
        8 => codec::encode(&AuditEntry::arbitrary(u)?),
        12 => codec::encode(&MatchCalibration::arbitrary(u)?),
        _ => codec::encode(&u64::arbitrary(u)?),
    };
    // A record JSON cannot hold is refused by encode; store junk instead.
    Ok(encoded.unwrap_or_default())
}

/// The store's entries: kinds 0-5 take a name id, 6-8 a sequence id, 9-13
/// are the meta keys, 14 a raw key.
fn entries(u: &mut Unstructured<'_>) -> Result<Vec<KvWrite>> {
    let mut writes = Vec::new();
    while !u.is_empty() && writes.len() < 64 {
        let kind = u.int_in_range(0..=14u8)?;
        let key = match kind {
            0..=5 => {
                let kinds = [
                    Kind::Instance,
                    Kind::Pattern,
                    Kind::Strategy,
                    Kind::Failure,
                    Kind::Config,
                    Kind::ApiKey,
                ];
                let len = u.int_in_range(0..=24)?;
                codec::key(kinds[usize::from(kind)], u.bytes(len)?)
            }
            6..=8 => {
                let kinds = [Kind::Outcome, Kind::Insight, Kind::Audit];
                // Small sequences, so that logs are contiguous now and then.
                let sequence = if u.arbitrary::<bool>()? {
                    u64::from(u.int_in_range(0..=16u8)?)
                } else {
                    u.arbitrary()?
                };
                codec::sequence_key(kinds[usize::from(kind - 6)], sequence)
            }
            9..=13 => codec::key(Kind::Meta, META[usize::from(kind - 9)]),
            _ => {
                let len = u.int_in_range(0..=24)?;
                u.bytes(len)?.to_vec()
            }
        };
        writes.push((key, Some(value(u, kind)?)));
    }
    Ok(writes)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(at) = i64::arbitrary(&mut u) else {
        return;
    };
    let Ok(writes) = entries(&mut u) else {
        return;
    };
    let engine = Arc::new(MemoryEngine::default());
    engine
        .apply(writes)
        .expect("the memory engine takes any write");
    let store = Store::new(engine);
    let settings = HubSettings::default();

    if let Ok((_, Some(checkpoint))) = Hub::load_state(&store, &settings, 0) {
        if store.commit(&checkpoint).is_ok() {
            if let Err(e) = Hub::load_state(&store, &settings, 0) {
                panic!("the store the hub checkpointed does not load again: {e}");
            }
        }
    }
    let _ = store.audit_between(i64::MIN, i64::MAX, 16, |_| true);
    // Trimming as at a sweep whose clock is far ahead, and at the cutoff
    // itself (every later record "from the future").
    let _ = store.first_sequence_at(Kind::Outcome, at, i64::MAX);
    let _ = store.first_sequence_at(Kind::Audit, at, at);
    let _ = store.outcomes_after(0, 64);
});
