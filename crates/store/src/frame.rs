//! Frames: several log entries stored as one value, so that a backend
//! writes a few records per batch (a group commit) rather than one per
//! command. PostgreSQL stores an append as one frame in one row; sled cuts
//! it into [`frame_runs`] of up to [`MAX_FRAME_BYTES`], each keyed by its
//! first position.

use super::backend::Appended;
use crate::error::{Error, Result};

/// What precedes each entry's bytes in a frame: its position (u64) and its
/// length (u32).
const ENTRY_HEADER: usize = 12;

/// A frame's value: each entry as its position (u64 big-endian), its
/// length (u32 big-endian) and its bytes.
pub fn encode_frame(entries: &[Appended]) -> Vec<u8> {
    let len = entries.iter().map(|e| ENTRY_HEADER + e.bytes.len()).sum();
    let mut value = Vec::with_capacity(len);
    for entry in entries {
        value.extend_from_slice(&entry.position.to_be_bytes());
        // An entry is a command, far below 4 GiB (requests are capped at 4 MiB).
        value.extend_from_slice(&(entry.bytes.len() as u32).to_be_bytes());
        value.extend_from_slice(&entry.bytes);
    }
    value
}

/// The most bytes of entries one frame holds; a longer run of entries is
/// split into several frames (an entry larger than this is a frame of its
/// own).
///
/// sled 0.34 writes a tree node larger than a quarter of its 512 KiB
/// segment out of line, and a leaf holds up to 16 values before it splits.
/// With frames of whole checkpoints (hundreds of KiB) several hubs in one
/// process hung for good in sled's flush — every run of the simulator's
/// tests; with 16 KiB frames every other run; with 4 KiB none in 16. At
/// 4 KiB a full leaf stays near 64 KiB, inline.
pub const MAX_FRAME_BYTES: usize = 4 * 1024;

/// `entries` cut into runs of at most [`MAX_FRAME_BYTES`] encoded bytes,
/// in order; each run is stored as one frame under its first position.
pub fn frame_runs(entries: &[Appended]) -> Vec<&[Appended]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        let size = ENTRY_HEADER + entry.bytes.len();
        if i > start && bytes + size > MAX_FRAME_BYTES {
            runs.push(&entries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entries.len() {
        runs.push(&entries[start..]);
    }
    runs
}

pub fn decode_frame(key: &[u8], mut value: &[u8]) -> Result<Vec<Appended>> {
    let corrupt = || {
        Error::Internal(format!(
            "corrupt store: the command log frame at key {:?} is cut short",
            String::from_utf8_lossy(key)
        ))
    };
    let mut entries = Vec::new();
    while !value.is_empty() {
        let (head, rest) = value.split_at_checked(ENTRY_HEADER).ok_or_else(corrupt)?;
        let position = u64::from_be_bytes(head[..8].try_into().map_err(|_| corrupt())?);
        let len = u32::from_be_bytes(head[8..].try_into().map_err(|_| corrupt())?) as usize;
        let (bytes, rest) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        entries.push(Appended {
            position,
            bytes: bytes.to_vec(),
        });
        value = rest;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64, len: usize) -> Appended {
        Appended {
            position,
            bytes: vec![position as u8; len],
        }
    }

    #[test]
    fn runs_keep_order_and_stay_under_the_cap() {
        let entries: Vec<Appended> = (1..=100).map(|p| entry(p, 300)).collect();
        let runs = frame_runs(&entries);
        assert!(runs.len() > 1);
        let mut next = 1;
        for run in &runs {
            assert!(encode_frame(run).len() <= MAX_FRAME_BYTES, "{}", run.len());
            for e in *run {
                assert_eq!(e.position, next);
                next += 1;
            }
        }
        assert_eq!(next, 101);
    }

    #[test]
    fn an_entry_over_the_cap_is_a_run_of_its_own() {
        let entries = vec![entry(1, 10), entry(2, MAX_FRAME_BYTES * 2), entry(3, 10)];
        let runs = frame_runs(&entries);
        let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![1, 1, 1]);
        assert!(frame_runs(&[]).is_empty());
    }
}
