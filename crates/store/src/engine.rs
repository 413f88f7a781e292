//! The key-value seam under the hub's store: an ordered map of byte keys to
//! byte values with atomic batches and an explicit durability point. Two
//! engines implement it: [`SledEngine`] on disk and [`MemoryEngine`] for
//! unit tests (and [`super::faults::FaultyEngine`] wraps either to inject
//! failures). Everything above (record encoding, the hub's state) is
//! written once against this trait.
//!
//! Failures are [`Error::Unavailable`] with a message that names the cause
//! the way an operator would look for it ("store unavailable: disk full
//! (write failed: …)"); [`store_io_error`] is the one place that wording is
//! made, for real and injected errors alike.

use std::{
    collections::BTreeMap,
    io,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// One key's new value; `None` deletes the key.
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// Applies every write or none of them. Where a batch writes the same
    /// key twice, the later write wins.
    fn apply(&self, writes: Vec<KvWrite>) -> Result<()>;

    /// Returns once every applied write is durable on disk. If it fails,
    /// writes applied since the last successful flush may or may not be
    /// durable.
    fn flush(&self) -> Result<()>;

    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The same from the end: the last `limit` entries of the range, in
    /// descending key order.
    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Approximate bytes on disk (0 for memory).
    fn size_on_disk(&self) -> u64;

    /// Called by the hub's writer after a failed apply or flush, before it
    /// writes again: makes the engine writable again if it can (`Ok`), or
    /// says why not. Recovering may drop writes applied since the last
    /// successful flush; the caller rewrites them. The default has nothing
    /// to recover.
    fn recover(&self) -> Result<()> {
        Ok(())
    }
}

/// The error for a failed store operation (`action`: "write", "flush",
/// "read", "open"), naming the cause an operator can act on.
pub fn store_io_error(action: &str, e: &io::Error) -> Error {
    let cause = match e.kind() {
        io::ErrorKind::StorageFull => "disk full",
        io::ErrorKind::QuotaExceeded => "disk quota exceeded",
        io::ErrorKind::ReadOnlyFilesystem => "file system is read-only",
        _ => "I/O error",
    };
    Error::Unavailable(format!("store unavailable: {cause} ({action} failed: {e})"))
}

/// The on-disk engine: one sled tree.
///
/// sled's I/O errors are sticky: once a write to its log fails (a full
/// disk, say), every later write and flush of that database fails with the
/// same error, even after space returns. So after an I/O error the engine
/// reopens the database when the writer asks it to [`Engine::recover`]
/// (at most every [`REOPEN_BACKOFF`]…[`REOPEN_BACKOFF_MAX`], doubling, so
/// a disk that stays full is not re-read in a loop). Reopening recovers
/// sled's log from disk, which may drop writes that were applied but not
/// flushed; the writer puts those back.
pub struct SledEngine {
    dir: PathBuf,
    /// `None` after a reopen failed (every operation then fails until the
    /// next successful recover).
    db: RwLock<Option<Opened>>,
    recovery: Mutex<Recovery>,
}

struct Opened {
    db: sled::Db,
    tree: sled::Tree,
}

/// Whether the database needs reopening, and when it was last tried.
struct Recovery {
    /// The error that broke it (`None`: healthy).
    broken: Option<Error>,
    last_reopen: Option<Instant>,
    /// The wait after `last_reopen` before the next attempt.
    backoff: Duration,
}

/// sled's page cache.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The first wait before reopening after an I/O error…
pub const REOPEN_BACKOFF: Duration = Duration::from_millis(250);
/// …doubling up to this…
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// …and back to the first after this long without a reopen.
const REOPEN_QUIET: Duration = Duration::from_secs(30);

impl SledEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(SledEngine {
            dir: dir.to_path_buf(),
            db: RwLock::new(Some(Self::open_db(dir)?)),
            recovery: Mutex::new(Recovery {
                broken: None,
                last_reopen: None,
                backoff: REOPEN_BACKOFF,
            }),
        })
    }

    fn open_db(dir: &Path) -> Result<Opened> {
        // A database this process just closed stays locked until sled's
        // background flusher (every 500 ms) lets go of it: a reopen right
        // after a close (a restart, a test) waits that out. Another
        // process's lock is still reported, a second later.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Self::try_open_db(dir) {
                Err(e) if is_in_use(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                result => return result,
            }
        }
    }

    fn try_open_db(dir: &Path) -> Result<Opened> {
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
            .map_err(|e| match e {
                // sled locks its directory (flock) for as long as it is open,
                // and says so only in the text of an untyped I/O error.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    in_use(dir)
                }
                sled::Error::Io(io) => store_io_error(&format!("open of {}", dir.display()), &io),
                other => Error::Unavailable(format!(
                    "store unavailable: cannot open {}: {other}",
                    dir.display()
                )),
            })?;
        let tree = db
            .open_tree("records")
            .map_err(|e| sled_error("open of the records tree", e))?;
        Ok(Opened { db, tree })
    }

    /// Runs `f` on the open tree; an I/O error marks the database for
    /// reopening.
    fn with_tree<T>(
        &self,
        action: &str,
        f: impl FnOnce(&sled::Tree) -> sled::Result<T>,
    ) -> Result<T> {
        let result = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            db.as_ref().map(|opened| f(&opened.tree))
        };
        let Some(result) = result else {
            return Err(self.broken_error());
        };
        // The read lock is released before `recovery` is taken: `recover`
        // takes them in the other order.
        result.map_err(|e| {
            let io = matches!(e, sled::Error::Io(_));
            let error = sled_error(action, e);
            if io {
                self.mark_broken(&error);
            }
            error
        })
    }

    fn mark_broken(&self, error: &Error) {
        let mut recovery = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
        recovery.broken.get_or_insert_with(|| error.clone());
    }

    fn broken_error(&self) -> Error {
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .broken
            .clone()
            .unwrap_or_else(|| Error::Unavailable("store unavailable: not open".into()))
    }
}

/// How long an open waits for a lock a closed database may still hold.
const LOCK_WAIT: Duration = Duration::from_secs(1);

fn is_in_use(e: &Error) -> bool {
    matches!(e, Error::Unavailable(m) if m.contains("is in use by"))
}

/// The name of the file in the data directory that holds the PID of the
/// hub serving from it (written once the store is open, so its PID is the
/// lock holder's).
pub const PID_FILE: &str = "hub.pid";

/// The error for a data directory another process holds open.
fn in_use(dir: &Path) -> Error {
    let pid_file = dir.join(PID_FILE);
    let holder = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or_else(
            || "another hub".to_string(),
            |pid| format!("another hub (PID {pid}, from {})", pid_file.display()),
        );
    Error::Unavailable(format!(
        "data directory {} is in use by {holder}: stop that hub, or give this one its own \
         --data-dir",
        dir.display()
    ))
}

fn sled_error(action: &str, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => store_io_error(action, &io),
        other => Error::Unavailable(format!("store unavailable: {action} failed: {other}")),
    }
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
        self.with_tree("write", |tree| tree.apply_batch(batch))
    }

    fn flush(&self) -> Result<()> {
        self.with_tree("flush", |tree| tree.flush().map(drop))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_tree("read", |tree| {
            tree.range(start..end)
                .take(limit)
                .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
    }

    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_tree("read", |tree| {
            tree.range(start..end)
                .rev()
                .take(limit)
                .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
    }

    fn size_on_disk(&self) -> u64 {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        db.as_ref()
            .and_then(|o| o.db.size_on_disk().ok())
            .unwrap_or(0)
    }

    fn recover(&self) -> Result<()> {
        let mut recovery = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
        let Some(error) = recovery.broken.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(last) = recovery.last_reopen {
            let since = now.duration_since(last);
            if since < recovery.backoff {
                return Err(error);
            }
            if since > REOPEN_QUIET {
                recovery.backoff = REOPEN_BACKOFF;
            }
        }
        recovery.last_reopen = Some(now);
        // A reopen that succeeds on a disk still full is followed by the
        // same failure: the wait grows either way.
        let wait = recovery.backoff;
        recovery.backoff = (wait * 2).min(REOPEN_BACKOFF_MAX);
        // The old database must be gone (its file lock released) before
        // the directory can be opened again.
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(db.take());
        match Self::open_db(&self.dir) {
            Ok(opened) => {
                *db = Some(opened);
                recovery.broken = None;
                tracing::warn!(
                    dir = %self.dir.display(),
                    after = %error,
                    "store reopened after an I/O error"
                );
                Ok(())
            }
            Err(e) => {
                recovery.broken = Some(e.clone());
                Err(e)
            }
        }
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

    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let map = self
            .map
            .lock()
            .map_err(|_| Error::Internal("memory engine poisoned".into()))?;
        Ok(map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .rev()
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
        let newest = engine.scan_rev(b"", b"\xff", 1).unwrap();
        assert_eq!(newest, vec![(b"b/1".to_vec(), b"other".to_vec())]);
    }

    #[test]
    fn store_errors_name_their_cause() {
        let message =
            |os: i32| store_io_error("write", &io::Error::from_raw_os_error(os)).to_string();
        assert_eq!(
            message(28),
            "unavailable: store unavailable: disk full (write failed: No space left on device (os error 28))"
        );
        assert!(message(122).contains("store unavailable: disk quota exceeded (write failed"));
        assert!(message(30).contains("store unavailable: file system is read-only"));
        assert!(message(5).contains("store unavailable: I/O error (write failed"));
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
        // A healthy engine has nothing to recover.
        engine.recover().unwrap();
        assert_eq!(engine.scan(b"a/", b"a0", 10).unwrap().len(), 1);
    }
}
