//! Arbitrary bytes as the request of every Hub and Admin RPC, through the
//! validation and conversion its handler runs (`api::inbound`).
//!
//! Input: one byte picks the method (`METHODS[byte % len]`), the rest is
//! the protobuf body. Must hold for every input: no panic; a refusal is
//! INVALID_ARGUMENT naming a field, with a message short enough not to
//! echo the input back; the same bytes always get the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

use learning_hub::Error;
use learning_hub::api::inbound::{METHODS, validate_encoded};

/// A fixed clock: QueryAudit's default time range depends on it.
const NOW: i64 = 1_762_214_400_000;
/// What `tests/api/bad_input.rs` allows a gRPC answer: field paths hold map
/// keys (names, at most 128 characters, checked before they are echoed)
/// and rejected values are shown as a short preview.
const MAX_MESSAGE: usize = 400;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (path, _) = METHODS[usize::from(pick) % METHODS.len()];
    let first = validate_encoded(path, body, NOW);
    match &first {
        Ok(()) => {}
        Err(Error::InvalidArgument { field, reason }) => {
            assert!(!field.is_empty(), "{path}: refusal names no field");
            assert!(!reason.is_empty(), "{path}: refusal gives no reason");
            if field != "request" {
                let message = first.as_ref().unwrap_err().to_string();
                assert!(
                    message.len() <= MAX_MESSAGE,
                    "{path}: {}-byte message: {message}",
                    message.len()
                );
            }
        }
        Err(other) => panic!("{path}: validation answered {other:?}, not INVALID_ARGUMENT"),
    }
    assert_eq!(
        first,
        validate_encoded(path, body, NOW),
        "{path}: not deterministic"
    );
});
