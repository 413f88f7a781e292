//! The single-machine backend as shipped: the command log in files of its
//! own ([`FileLog`], under `commands/` in the data directory) and
//! everything a checkpoint writes — tables, row logs, meta values, the
//! checkpoint's position — in sled ([`KvBackend`] over [`SledEngine`]).
//!
//! The split is what lets the writer keep committing while a checkpoint is
//! written ([`Backend::checkpoints_beside_appends`]): appends and flushes
//! touch only the log's files, checkpoints only sled. The order that keeps
//! a crash safe is the hub's: a checkpoint is durable before the log it
//! covers is trimmed, so a start finds every command after the checkpoint.
//!
//! A data directory written before the log had files keeps its log in sled
//! (`L/` keys); opening moves those entries to the files — appended and
//! flushed there first, removed from sled after — so a crash in between
//! leaves them in both places, and the next open finishes the move.

use std::{path::Path, sync::Arc};

use super::backend::{Appended, Backend, Checkpoint, RowLog};
use super::engine::SledEngine;
use super::file_log::FileLog;
use super::kv::KvBackend;
use crate::error::{Error, Result};

/// The directory of the command log, inside the data directory.
pub const LOG_DIR: &str = "commands";

/// Commands moved from sled per step when an older directory is opened.
const MOVE_PAGE: usize = 4096;

/// sled for checkpoints, files for the command log.
pub struct DiskBackend {
    kv: KvBackend,
    log: FileLog,
}

impl DiskBackend {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let kv = KvBackend::new(Arc::new(SledEngine::open(dir)?));
        let log = FileLog::open(&dir.join(LOG_DIR))?;
        let backend = DiskBackend { kv, log };
        backend.move_log_out_of_sled()?;
        // Entries the checkpoint covers are not needed (a crash between a
        // checkpoint and its trim leaves them).
        if let Some(position) = backend.kv.checkpoint_position()?
            && backend.log.head() <= position
        {
            backend.log.trim(position.saturating_add(1))?;
        }
        Ok(backend)
    }

    /// Moves a log kept in sled (by an older hub) to the files.
    fn move_log_out_of_sled(&self) -> Result<()> {
        let mut after = 0;
        let mut moved = 0;
        loop {
            let page = self.kv.log_after(after, MOVE_PAGE)?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            let head = self.log.head();
            let fresh: Vec<Appended> = page.into_iter().filter(|e| e.position > head).collect();
            if let Some(first) = fresh.first()
                && head != 0
                && first.position != head + 1
            {
                return Err(Error::Internal(format!(
                    "the data directory holds two command logs that do not join: sled's continues \
                     at {} but the log files end at {head}",
                    first.position
                )));
            }
            moved += fresh.len();
            self.log.append(&fresh)?;
            after = last;
        }
        if after > 0 {
            self.log.flush()?;
            self.kv.trim_log(after + 1)?;
            self.kv.flush()?;
            tracing::info!(
                commands = moved,
                "moved the command log out of sled into its own files"
            );
        }
        Ok(())
    }
}

impl Backend for DiskBackend {
    fn checkpoint_position(&self) -> Result<Option<u64>> {
        self.kv.checkpoint_position()
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.kv.meta(name)
    }

    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.kv.table(table)
    }

    fn append(&self, entries: &[Appended]) -> Result<()> {
        self.log.append(entries)
    }

    fn flush(&self) -> Result<()> {
        self.log.flush()
    }

    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        self.log.after(after, limit)
    }

    fn log_head(&self) -> Result<u64> {
        Ok(self.log.head())
    }

    fn discard_log_after(&self, position: u64) -> Result<()> {
        self.log.discard_after(position)
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        // The log up to the checkpoint is durable before it: a crash then
        // never leaves the log's head behind the checkpoint, where the next
        // append would not join it.
        self.log.flush_through(checkpoint.position)?;
        self.kv.checkpoint(checkpoint)
    }

    fn trim_log(&self, before: u64) -> Result<usize> {
        self.log.trim(before)
    }

    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.kv.rows_after(log, after, limit)
    }

    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.kv.rows_before(log, before, limit)
    }

    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        self.kv.trim_rows(log, before)
    }

    fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk() + self.log.size()
    }

    fn recover(&self) -> Result<()> {
        // Either half may be the one that failed; both say so if they
        // cannot recover.
        self.log.recover()?;
        self.kv.recover()
    }

    fn checkpoints_beside_appends(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::file_log::tests::entries;
    use super::*;

    #[test]
    fn a_log_kept_in_sled_moves_to_the_files_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an older hub left: the log's tail in sled.
            let kv = KvBackend::new(Arc::new(SledEngine::open(dir.path()).unwrap()));
            kv.append(&entries(7..=5000)).unwrap();
            kv.flush().unwrap();
        }
        let backend = DiskBackend::open(dir.path()).unwrap();
        assert_eq!(backend.log_head().unwrap(), 5000);
        assert_eq!(backend.log_after(6, usize::MAX).unwrap(), entries(7..=5000));
        assert_eq!(backend.kv.log_head().unwrap(), 0, "sled keeps no log");
        backend.append(&entries(5001..=5001)).unwrap();
        backend.flush().unwrap();
        drop(backend);
        let backend = DiskBackend::open(dir.path()).unwrap();
        assert_eq!(backend.log_after(4999, 10).unwrap(), entries(5000..=5001));
    }

    #[test]
    fn a_move_cut_short_by_a_crash_finishes_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = KvBackend::new(Arc::new(SledEngine::open(dir.path()).unwrap()));
            kv.append(&entries(1..=10)).unwrap();
            kv.flush().unwrap();
            // The files got a prefix of it before the crash.
            let log = FileLog::open(&dir.path().join(LOG_DIR)).unwrap();
            log.append(&entries(1..=6)).unwrap();
            log.flush().unwrap();
        }
        let backend = DiskBackend::open(dir.path()).unwrap();
        assert_eq!(backend.log_after(0, usize::MAX).unwrap(), entries(1..=10));
        assert_eq!(backend.kv.log_head().unwrap(), 0);
    }
}
