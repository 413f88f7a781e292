//! [`Backend`] over an ordered key-value [`Engine`]: one keyspace, a prefix
//! per kind of data, so that a checkpoint — tables, rows, meta, position —
//! is one atomic batch.
//!
//! | prefix | holds |
//! |---|---|
//! | `L/` + position (u64 big-endian) | the command log in frames, each under its first position (on disk the hub keeps its log in files instead — [`DiskBackend`](super::disk::DiskBackend) — and only reads `L/` to move an older directory's log there) |
//! | a table's prefix (`i/`, `p/`, `s/` …) + key | checkpointed records |
//! | `o/`, `u/` + sequence (u64 big-endian) | the outcome and audit logs in frames of rows, each under its first sequence (a value written before frames holds one row) |
//! | `m/` + name | meta values; `m/checkpoint` is the checkpoint's position |
//!
//! The table, row and meta prefixes are the ones the hub used before the
//! command log existed, so a data directory written then is a checkpoint
//! without a position (see `Store::load`).
//!
//! The log is kept in *frames*: an append (the writer's group commit)
//! becomes a few keys, each the position of its first entry, whose values
//! hold runs of entries of up to 4 KiB. A group commit then costs the
//! engine a few inserts, and trimming a few deletes, rather than one per
//! command — per-key writes and deletes were most of what a durable write
//! cost in sled. The row logs are kept the same way: a checkpoint writes
//! its outcome rows and its audit rows in frames (values that start with
//! [`ROW_FRAME`]); single rows stored before frames existed are read as
//! frames of one. Frames are capped because sled hangs on large nodes (see
//! [`MAX_FRAME_BYTES`](super::frame::MAX_FRAME_BYTES)).

use std::sync::Arc;

use super::backend::{Appended, Backend, Checkpoint, RowLog};
use super::codec;
use super::engine::{Engine, KvWrite};
use super::frame::{decode_frame, encode_frame, frame_runs};
use crate::error::{Error, Result};

const LOG: &[u8] = b"L/";
const META: &[u8] = b"m/";
/// The meta key of the checkpoint's position.
const CHECKPOINT: &str = "checkpoint";

fn prefixed(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id);
    key
}

/// The keys with `prefix`: `[prefix, prefix + 1)`.
fn range_of(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.to_vec();
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (start, end)
}

/// Frames read per engine scan.
const FRAME_PAGE: usize = 256;

fn frame_key(position: u64) -> Vec<u8> {
    prefixed(LOG, &position.to_be_bytes())
}

/// The smallest key after `key` (keys of one prefix have one length).
fn after_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The first byte of a row-log value holding a frame of rows. A single
/// row (written before frames) starts with its codec format byte, never
/// this.
const ROW_FRAME: u8 = 0xFE;

fn row_key(prefix: &[u8], sequence: u64) -> Vec<u8> {
    prefixed(prefix, &sequence.to_be_bytes())
}

fn encode_rows(rows: &[Appended]) -> Vec<u8> {
    let mut value = vec![ROW_FRAME];
    value.extend_from_slice(&encode_frame(rows));
    value
}

/// The rows a row-log value holds, as (sequence, bytes) in order.
fn decode_rows(prefix: &[u8], key: &[u8], value: &[u8]) -> Result<Vec<Appended>> {
    match value.split_first() {
        Some((&ROW_FRAME, frame)) => decode_frame(key, frame),
        _ => Ok(vec![Appended {
            position: sequence_of(prefix, key)?,
            bytes: value.to_vec(),
        }]),
    }
}

fn row_prefix(log: RowLog) -> &'static [u8] {
    match log {
        RowLog::Outcomes => b"o/",
        RowLog::Audit => b"u/",
    }
}

fn sequence_of(prefix: &[u8], key: &[u8]) -> Result<u64> {
    key.strip_prefix(prefix)
        .and_then(|id| id.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            Error::Internal(format!(
                "corrupt store: key {:?} is not a sequence key",
                String::from_utf8_lossy(key)
            ))
        })
}

/// The commands of the log, the checkpoint and the row logs, in one engine.
#[derive(Clone)]
pub struct KvBackend {
    engine: Arc<dyn Engine>,
}

impl KvBackend {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        KvBackend { engine }
    }

    /// The last frame starting at or before `position`, with its entries.
    fn frame_at_or_before(&self, position: u64) -> Result<Option<(Vec<u8>, Vec<Appended>)>> {
        let (start, _) = range_of(LOG);
        match self
            .engine
            .scan_rev(&start, &after_key(&frame_key(position)), 1)?
            .pop()
        {
            Some((key, value)) => {
                let entries = decode_frame(&key, &value)?;
                Ok(Some((key, entries)))
            }
            None => Ok(None),
        }
    }

    /// The last row frame of `prefix` starting at or before `sequence`.
    fn row_frame_at_or_before(&self, prefix: &[u8], sequence: u64) -> Result<Option<Vec<u8>>> {
        let (start, _) = range_of(prefix);
        Ok(self
            .engine
            .scan_rev(&start, &after_key(&row_key(prefix, sequence)), 1)?
            .pop()
            .map(|(key, _)| key))
    }

    /// Deletes every key in `[start, end)`, a page at a time; how many.
    fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<usize> {
        let mut removed = 0;
        loop {
            let page = self.engine.scan(start, end, 4096)?;
            if page.is_empty() {
                return Ok(removed);
            }
            removed += page.len();
            self.engine
                .apply(page.into_iter().map(|(k, _)| (k, None)).collect())?;
        }
    }
}

impl Backend for KvBackend {
    fn checkpoint_position(&self) -> Result<Option<u64>> {
        self.meta(CHECKPOINT)?
            .map(|bytes| codec::decode(b"m/checkpoint", &bytes))
            .transpose()
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = prefixed(META, name.as_bytes());
        let mut end = key.clone();
        end.push(0);
        Ok(self.engine.scan(&key, &end, 1)?.pop().map(|(_, v)| v))
    }

    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = range_of(table.as_bytes());
        Ok(self
            .engine
            .scan(&start, &end, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k[table.len()..].to_vec(), v))
            .collect())
    }

    fn append(&self, entries: &[Appended]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.engine.apply(
            frame_runs(entries)
                .into_iter()
                .map(|run| (frame_key(run[0].position), Some(encode_frame(run))))
                .collect(),
        )
    }

    fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (_, end) = range_of(LOG);
        // The frame holding `from` may start before it.
        let mut start = match self.frame_at_or_before(from)? {
            Some((key, _)) => key,
            None => frame_key(from),
        };
        let mut found = Vec::new();
        loop {
            let page = self.engine.scan(&start, &end, FRAME_PAGE)?;
            let full = page.len() == FRAME_PAGE;
            for (key, value) in &page {
                for entry in decode_frame(key, value)? {
                    if entry.position >= from {
                        if found.len() >= limit {
                            return Ok(found);
                        }
                        found.push(entry);
                    }
                }
            }
            match page.last() {
                Some((key, _)) if full => start = after_key(key),
                _ => return Ok(found),
            }
        }
    }

    fn log_head(&self) -> Result<u64> {
        let (start, end) = range_of(LOG);
        match self.engine.scan_rev(&start, &end, 1)?.pop() {
            Some((key, value)) => Ok(decode_frame(&key, &value)?.last().map_or(0, |e| e.position)),
            None => Ok(0),
        }
    }

    fn discard_log_after(&self, position: u64) -> Result<()> {
        let Some(from) = position.checked_add(1) else {
            return Ok(());
        };
        let (_, end) = range_of(LOG);
        self.delete_range(&frame_key(from), &end)?;
        // The frame holding `position` keeps its entries up to it.
        if let Some((key, entries)) = self.frame_at_or_before(position)? {
            if entries.last().is_some_and(|e| e.position > position) {
                let kept: Vec<Appended> = entries
                    .into_iter()
                    .filter(|e| e.position <= position)
                    .collect();
                self.engine.apply(vec![(key, Some(encode_frame(&kept)))])?;
            }
        }
        Ok(())
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let mut writes: Vec<KvWrite> = Vec::with_capacity(
            checkpoint.tables.len() + checkpoint.rows.len() + checkpoint.meta.len() + 1,
        );
        for write in checkpoint.tables {
            writes.push((prefixed(write.table.as_bytes(), &write.key), write.value));
        }
        // Each log's rows in frames, each under its first sequence.
        let (outcomes, audit): (Vec<_>, Vec<_>) = checkpoint
            .rows
            .into_iter()
            .partition(|r| r.log == RowLog::Outcomes);
        for (log, rows) in [(RowLog::Outcomes, outcomes), (RowLog::Audit, audit)] {
            let mut rows: Vec<Appended> = rows
                .into_iter()
                .map(|r| Appended {
                    position: r.sequence,
                    bytes: r.bytes,
                })
                .collect();
            rows.sort_by_key(|r| r.position);
            for run in frame_runs(&rows) {
                writes.push((
                    row_key(row_prefix(log), run[0].position),
                    Some(encode_rows(run)),
                ));
            }
        }
        for (name, value) in checkpoint.meta {
            writes.push((prefixed(META, name.as_bytes()), Some(value)));
        }
        writes.push((
            prefixed(META, CHECKPOINT.as_bytes()),
            Some(codec::encode(&checkpoint.position)?),
        ));
        self.engine.apply(writes)?;
        self.engine.flush()
    }

    fn trim_log(&self, before: u64) -> Result<usize> {
        let (start, _) = range_of(LOG);
        let end = frame_key(before);
        let mut removed = 0;
        loop {
            let page = self.engine.scan(&start, &end, FRAME_PAGE)?;
            if page.is_empty() {
                return Ok(removed);
            }
            let mut writes: Vec<KvWrite> = Vec::with_capacity(page.len() + 1);
            for (key, value) in page {
                let entries = decode_frame(&key, &value)?;
                let (gone, kept): (Vec<Appended>, Vec<Appended>) =
                    entries.into_iter().partition(|e| e.position < before);
                removed += gone.len();
                writes.push((key, None));
                // A frame that straddles `before` keeps its later entries,
                // under the position of the first of them.
                if let Some(first) = kept.first() {
                    writes.push((frame_key(first.position), Some(encode_frame(&kept))));
                }
            }
            self.engine.apply(writes)?;
        }
    }

    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = row_prefix(log);
        let (_, end) = range_of(prefix);
        // The frame holding `from` may start before it.
        let mut start = self
            .row_frame_at_or_before(prefix, from)?
            .unwrap_or_else(|| row_key(prefix, from));
        let mut found = Vec::new();
        loop {
            let page = self.engine.scan(&start, &end, FRAME_PAGE)?;
            let full = page.len() == FRAME_PAGE;
            for (key, value) in &page {
                for row in decode_rows(prefix, key, value)? {
                    if row.position > after {
                        found.push((row.position, row.bytes));
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                }
            }
            match page.last() {
                Some((key, _)) if full => start = after_key(key),
                _ => return Ok(found),
            }
        }
    }

    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = row_prefix(log);
        let (start, _) = range_of(prefix);
        // Frames start at their first row: none at or after `before` holds
        // an earlier row.
        let mut end = row_key(prefix, before);
        let mut found = Vec::new();
        loop {
            let page = self.engine.scan_rev(&start, &end, FRAME_PAGE)?;
            let full = page.len() == FRAME_PAGE;
            for (key, value) in &page {
                for row in decode_rows(prefix, key, value)?.into_iter().rev() {
                    if row.position < before {
                        found.push((row.position, row.bytes));
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                }
            }
            match page.last() {
                Some((key, _)) if full => end = key.clone(),
                _ => return Ok(found),
            }
        }
    }

    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        let prefix = row_prefix(log);
        let (start, _) = range_of(prefix);
        let end = row_key(prefix, before);
        let mut removed = 0;
        loop {
            let page = self.engine.scan(&start, &end, FRAME_PAGE)?;
            if page.is_empty() {
                break;
            }
            let mut writes: Vec<KvWrite> = Vec::with_capacity(page.len() + 1);
            for (key, value) in page {
                let (gone, kept): (Vec<Appended>, Vec<Appended>) =
                    decode_rows(prefix, &key, &value)?
                        .into_iter()
                        .partition(|r| r.position < before);
                removed += gone.len();
                writes.push((key, None));
                // A frame that straddles `before` keeps its later rows,
                // under the sequence of the first of them.
                if let Some(first) = kept.first() {
                    writes.push((row_key(prefix, first.position), Some(encode_rows(&kept))));
                }
            }
            self.engine.apply(writes)?;
        }
        if removed > 0 {
            self.engine.flush()?;
        }
        Ok(removed)
    }

    fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }

    fn recover(&self) -> Result<()> {
        self.engine.recover()
    }
}
