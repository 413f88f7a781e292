//! A [`SharedLog`] in memory, for tests (feature `faults`): several hubs
//! in one process share it as replicas share PostgreSQL, without a
//! database. It can be switched off ([`MemorySharedLog::set_down`]: every
//! call fails as UNAVAILABLE, as when PostgreSQL is unreachable) and made
//! to lose the answer of its next commit ([`MemorySharedLog::lose_next_commit_answer`]).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::backend::{Appended, Backend, Checkpoint, RowLog};
use crate::engine::MemoryEngine;
use crate::error::{Error, Result};
use crate::kv::KvBackend;
use crate::shared::{AppendError, BatchId, SharedLog, WatchGuard};

type Waker = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Default)]
struct Inner {
    head: u64,
    batches: BTreeMap<BatchId, u64>,
    generation: u64,
    /// name → (holder, epoch, expires)
    leases: BTreeMap<String, (String, u64, Instant)>,
    watchers: BTreeMap<u64, Waker>,
    next_watcher: u64,
}

/// See the module documentation. Clones share one log.
#[derive(Clone)]
pub struct MemorySharedLog {
    kv: Arc<KvBackend>,
    inner: Arc<Mutex<Inner>>,
    down: Arc<AtomicBool>,
    lose_answer: Arc<AtomicBool>,
    appends: Arc<AtomicU64>,
}

impl Default for MemorySharedLog {
    fn default() -> Self {
        MemorySharedLog {
            kv: Arc::new(KvBackend::new(Arc::new(MemoryEngine::default()))),
            inner: Arc::default(),
            down: Arc::default(),
            lose_answer: Arc::default(),
            appends: Arc::default(),
        }
    }
}

impl std::fmt::Debug for MemorySharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemorySharedLog")
    }
}

struct Unwatch {
    inner: Arc<Mutex<Inner>>,
    id: u64,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        self.inner().watchers.remove(&self.id);
    }
}

impl Unwatch {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemorySharedLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// While down, every call fails as UNAVAILABLE (appends certainly not
    /// applied); back up, watchers are told they may have missed appends.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if !down {
            self.wake(u64::MAX);
        }
    }

    /// The next append is committed, but its caller hears that the
    /// connection broke during the commit.
    pub fn lose_next_commit_answer(&self) {
        self.lose_answer.store(true, Ordering::SeqCst);
    }

    /// Batches appended (not counting ones found appended already).
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn up(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Unavailable(
                "shared log unavailable: switched off by the test".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn wake(&self, head: u64) {
        let watchers: Vec<Waker> = self.inner().watchers.values().cloned().collect();
        for wake in watchers {
            wake(head);
        }
    }
}

impl Backend for MemorySharedLog {
    fn checkpoint_position(&self) -> Result<Option<u64>> {
        self.up()?;
        self.kv.checkpoint_position()
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.up()?;
        self.kv.meta(name)
    }
    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.up()?;
        self.kv.table(table)
    }
    fn append(&self, entries: &[Appended]) -> Result<()> {
        self.up()?;
        let mut inner = self.inner();
        self.kv.append(entries)?;
        if let Some(last) = entries.last() {
            inner.head = inner.head.max(last.position);
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.up()
    }
    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        self.up()?;
        self.kv.log_after(after, limit)
    }
    fn log_head(&self) -> Result<u64> {
        self.up()?;
        self.kv.log_head()
    }
    fn discard_log_after(&self, position: u64) -> Result<()> {
        self.up()?;
        let mut inner = self.inner();
        self.kv.discard_log_after(position)?;
        inner.head = position;
        Ok(())
    }
    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        self.up()?;
        let mut inner = self.inner();
        self.kv.checkpoint(checkpoint)?;
        inner.generation += 1;
        Ok(())
    }
    fn trim_log(&self, before: u64) -> Result<usize> {
        self.up()?;
        self.kv.trim_log(before)
    }
    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.up()?;
        self.kv.rows_after(log, after, limit)
    }
    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.up()?;
        self.kv.rows_before(log, before, limit)
    }
    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        self.up()?;
        self.kv.trim_rows(log, before)
    }
    fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
    fn recover(&self) -> Result<()> {
        self.up()
    }
}

impl SharedLog for MemorySharedLog {
    fn append_batch(
        &self,
        batch: BatchId,
        commands: &[Vec<u8>],
    ) -> std::result::Result<u64, AppendError> {
        self.up().map_err(AppendError::NotApplied)?;
        let head = {
            let mut inner = self.inner();
            if let Some(first) = inner.batches.get(&batch) {
                return Ok(*first);
            }
            let first = inner.head + 1;
            let entries: Vec<Appended> = commands
                .iter()
                .enumerate()
                .map(|(i, bytes)| Appended {
                    position: first + i as u64,
                    bytes: bytes.clone(),
                })
                .collect();
            self.kv.append(&entries).map_err(AppendError::NotApplied)?;
            inner.head += commands.len() as u64;
            inner.batches.insert(batch, first);
            self.appends.fetch_add(1, Ordering::SeqCst);
            inner.head
        };
        self.wake(head);
        if self.lose_answer.swap(false, Ordering::SeqCst) {
            return Err(AppendError::InDoubt(Error::Unavailable(
                "shared log unavailable: the connection broke during the commit (test)".into(),
            )));
        }
        Ok(head + 1 - commands.len() as u64)
    }

    fn checkpoint_generation(&self) -> Result<u64> {
        self.up()?;
        Ok(self.inner().generation)
    }

    fn checkpoint_from(&self, base: u64, checkpoint: Checkpoint) -> Result<bool> {
        self.up()?;
        let mut inner = self.inner();
        if self.kv.checkpoint_position()?.unwrap_or(0) != base {
            return Ok(false);
        }
        self.kv.checkpoint(checkpoint)?;
        inner.generation += 1;
        Ok(true)
    }

    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>> {
        self.up()?;
        let now = Instant::now();
        let mut inner = self.inner();
        let lease = inner
            .leases
            .entry(name.to_owned())
            .or_insert_with(|| (holder.to_owned(), 1, now + ttl));
        if lease.0 == holder {
            lease.2 = now + ttl;
            return Ok(Some(lease.1));
        }
        if lease.2 < now {
            *lease = (holder.to_owned(), lease.1 + 1, now + ttl);
            return Ok(Some(lease.1));
        }
        Ok(None)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.up()?;
        if let Some(lease) = self.inner().leases.get_mut(name) {
            if lease.0 == holder {
                lease.2 = Instant::now()
                    .checked_sub(Duration::from_millis(1))
                    .unwrap_or_else(Instant::now);
            }
        }
        Ok(())
    }

    fn watch_head(&self, wake: Box<dyn Fn(u64) + Send + Sync>) -> Result<WatchGuard> {
        let mut inner = self.inner();
        let id = inner.next_watcher;
        inner.next_watcher += 1;
        inner.watchers.insert(id, Arc::from(wake));
        Ok(Box::new(Unwatch {
            inner: self.inner.clone(),
            id,
        }))
    }

    fn describe(&self) -> String {
        "a shared log in memory".into()
    }
}
