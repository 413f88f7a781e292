//! The key-value seam under the hub's store: an ordered map of byte keys to
//! byte values with atomic batches and an explicit durability point. Two
//! engines implement it: [`SledEngine`] on disk and [`MemoryEngine`] for
//! unit tests. Everything above (record encoding, the hub's state) is
//! written once against this trait.

use std::{collections::BTreeMap, ops::Bound, path::Path, sync::Mutex};

use crate::error::{Error, Result};

/// One key's new value; `None` deletes the key.
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// Applies every write or none of them.
    fn apply(&self, writes: Vec<KvWrite>) -> Result<()>;

    /// Returns once every applied write is durable on disk.
    fn flush(&self) -> Result<()>;

    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Approximate bytes on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
}

/// The on-disk engine: one sled tree.
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

/// sled's page cache.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from our own flush before every acknowledgement;
            // sled's periodic background flush is left on as a second line.
            .flush_every_ms(Some(500))
            // The hub serves reads from its own in-memory state; sled's
            // cache only needs the pages writes touch (the logs' tails, the
            // aggregates being checkpointed). Its 1 GiB default would make
            // the hub's memory grow with the store for nothing.
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| {
                Error::Unavailable(format!("cannot open store in {}: {e}", dir.display()))
            })?;
        let tree = db
            .open_tree("records")
            .map_err(|e| Error::Unavailable(format!("cannot open records tree: {e}")))?;
        Ok(SledEngine { db, tree })
    }
}

fn io_error(action: &str, e: sled::Error) -> Error {
    Error::Unavailable(format!("store {action} failed: {e}"))
}

impl Engine for SledEngine {
    fn apply(&self, writes: Vec<KvWrite>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| io_error("write", e))
    }

    fn flush(&self) -> Result<()> {
        self.tree.flush().map_err(|e| io_error("flush", e))?;
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .range(start..end)
            .take(limit)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| io_error("read", e))
            })
            .collect()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// An engine that keeps everything in memory; flush is a no-op.
#[derive(Default)]
pub struct MemoryEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemoryEngine {
    fn apply(&self, writes: Vec<KvWrite>) -> Result<()> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| Error::Internal("memory engine poisoned".into()))?;
        for (key, value) in writes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let map = self
            .map
            .lock()
            .map_err(|_| Error::Internal("memory engine poisoned".into()))?;
        Ok(map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(engine: &dyn Engine) {
        engine
            .apply(vec![
                (b"a/1".to_vec(), Some(b"one".to_vec())),
                (b"a/2".to_vec(), Some(b"two".to_vec())),
                (b"b/1".to_vec(), Some(b"other".to_vec())),
            ])
            .unwrap();
        engine.apply(vec![(b"a/1".to_vec(), None)]).unwrap();
        engine.flush().unwrap();
        let a = engine.scan(b"a/", b"a0", usize::MAX).unwrap();
        assert_eq!(a, vec![(b"a/2".to_vec(), b"two".to_vec())]);
        assert_eq!(engine.scan(b"", b"\xff", 1).unwrap().len(), 1);
    }

    #[test]
    fn memory_engine_semantics() {
        exercise(&MemoryEngine::default());
    }

    #[test]
    fn sled_engine_semantics_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            exercise(&engine);
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.scan(b"a/", b"a0", 10).unwrap().len(), 1);
    }
}
