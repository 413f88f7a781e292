//! Frames: several log entries stored as one value. An append (a group
//! commit) is one frame, so a backend writes one record per batch rather
//! than one per command; sled keys it by its first position, PostgreSQL
//! stores it as one row.

use super::backend::Appended;
use crate::error::{Error, Result};

/// A frame's value: each entry as its position (u64 big-endian), its
/// length (u32 big-endian) and its bytes.
pub fn encode_frame(entries: &[Appended]) -> Vec<u8> {
    let len = entries.iter().map(|e| 12 + e.bytes.len()).sum();
    let mut value = Vec::with_capacity(len);
    for entry in entries {
        value.extend_from_slice(&entry.position.to_be_bytes());
        // An entry is a command, far below 4 GiB (requests are capped at 4 MiB).
        value.extend_from_slice(&(entry.bytes.len() as u32).to_be_bytes());
        value.extend_from_slice(&entry.bytes);
    }
    value
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
        let (head, rest) = value.split_at_checked(12).ok_or_else(corrupt)?;
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
