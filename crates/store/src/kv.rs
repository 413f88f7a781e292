//! [`Backend`] over an ordered key-value [`Engine`]: one keyspace, a prefix
//! per kind of data, so that a checkpoint — tables, rows, meta, position —
//! is one atomic batch.
//!
//! | prefix | holds |
//! |---|---|
//! | `L/` + position (u64 big-endian) | the command log |
//! | a table's prefix (`i/`, `p/`, `s/` …) + key | checkpointed records |
//! | `o/`, `u/` + sequence (u64 big-endian) | the outcome and audit logs |
//! | `m/` + name | meta values; `m/checkpoint` is the checkpoint's position |
//!
//! The table, row and meta prefixes are the ones the hub used before the
//! command log existed, so a data directory written then is a checkpoint
//! without a position (see `Store::load`).

use std::sync::Arc;

use super::backend::{Appended, Backend, Checkpoint, RowLog};
use super::codec;
use super::engine::{Engine, KvWrite};
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
        let writes = entries
            .iter()
            .map(|e| {
                (
                    prefixed(LOG, &e.position.to_be_bytes()),
                    Some(e.bytes.clone()),
                )
            })
            .collect();
        self.engine.apply(writes)
    }

    fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (_, end) = range_of(LOG);
        self.engine
            .scan(&prefixed(LOG, &from.to_be_bytes()), &end, limit)?
            .into_iter()
            .map(|(k, v)| {
                Ok(Appended {
                    position: sequence_of(LOG, &k)?,
                    bytes: v,
                })
            })
            .collect()
    }

    fn log_head(&self) -> Result<u64> {
        let (start, end) = range_of(LOG);
        match self.engine.scan_rev(&start, &end, 1)?.pop() {
            Some((k, _)) => sequence_of(LOG, &k),
            None => Ok(0),
        }
    }

    fn discard_log_after(&self, position: u64) -> Result<()> {
        let Some(from) = position.checked_add(1) else {
            return Ok(());
        };
        let (_, end) = range_of(LOG);
        self.delete_range(&prefixed(LOG, &from.to_be_bytes()), &end)
            .map(drop)
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let mut writes: Vec<KvWrite> = Vec::with_capacity(
            checkpoint.tables.len() + checkpoint.rows.len() + checkpoint.meta.len() + 1,
        );
        for write in checkpoint.tables {
            writes.push((prefixed(write.table.as_bytes(), &write.key), write.value));
        }
        for row in checkpoint.rows {
            writes.push((
                prefixed(row_prefix(row.log), &row.sequence.to_be_bytes()),
                Some(row.bytes),
            ));
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
        self.delete_range(&start, &prefixed(LOG, &before.to_be_bytes()))
    }

    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = row_prefix(log);
        let (_, end) = range_of(prefix);
        self.engine
            .scan(&prefixed(prefix, &from.to_be_bytes()), &end, limit)?
            .into_iter()
            .map(|(k, v)| Ok((sequence_of(prefix, &k)?, v)))
            .collect()
    }

    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let prefix = row_prefix(log);
        let (start, _) = range_of(prefix);
        self.engine
            .scan_rev(&start, &prefixed(prefix, &before.to_be_bytes()), limit)?
            .into_iter()
            .map(|(k, v)| Ok((sequence_of(prefix, &k)?, v)))
            .collect()
    }

    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        let prefix = row_prefix(log);
        let (start, _) = range_of(prefix);
        let removed = self.delete_range(&start, &prefixed(prefix, &before.to_be_bytes()))?;
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
