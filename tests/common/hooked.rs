//! A storage backend that behaves exactly like another except where a test
//! hooks in: before each checkpoint (to hold it), on what a log read
//! returns (to break a rule on purpose), and in whether checkpoints may be
//! written beside appends.

use learning_hub::Result;
use learning_hub::store::{Appended, Backend, Checkpoint, RowLog};

type BeforeCheckpoint = Box<dyn Fn() + Send + Sync>;
type RewriteLog = Box<dyn Fn(Vec<Appended>) -> Vec<Appended> + Send + Sync>;

pub struct Hooked {
    inner: Box<dyn Backend>,
    before_checkpoint: BeforeCheckpoint,
    rewrite_log: RewriteLog,
    beside_appends: bool,
}

impl Hooked {
    /// `inner` unchanged, until hooks are added.
    pub fn new(inner: impl Backend) -> Self {
        Hooked {
            beside_appends: inner.checkpoints_beside_appends(),
            inner: Box::new(inner),
            before_checkpoint: Box::new(|| {}),
            rewrite_log: Box::new(|entries| entries),
        }
    }

    /// Runs `hook` before each checkpoint is written (it may block).
    pub fn before_checkpoint(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_checkpoint = Box::new(hook);
        self
    }

    /// Passes what each log read found through `rewrite`.
    pub fn rewrite_log(
        mut self,
        rewrite: impl Fn(Vec<Appended>) -> Vec<Appended> + Send + Sync + 'static,
    ) -> Self {
        self.rewrite_log = Box::new(rewrite);
        self
    }

    /// Says checkpoints may (or may not) be written beside appends.
    pub fn beside_appends(mut self, beside: bool) -> Self {
        self.beside_appends = beside;
        self
    }
}

impl Backend for Hooked {
    fn checkpoint_position(&self) -> Result<Option<u64>> {
        self.inner.checkpoint_position()
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.meta(name)
    }
    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.table(table)
    }
    fn append(&self, entries: &[Appended]) -> Result<()> {
        self.inner.append(entries)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        Ok((self.rewrite_log)(self.inner.log_after(after, limit)?))
    }
    fn log_head(&self) -> Result<u64> {
        self.inner.log_head()
    }
    fn discard_log_after(&self, position: u64) -> Result<()> {
        self.inner.discard_log_after(position)
    }
    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        (self.before_checkpoint)();
        self.inner.checkpoint(checkpoint)
    }
    fn trim_log(&self, before: u64) -> Result<usize> {
        self.inner.trim_log(before)
    }
    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.rows_after(log, after, limit)
    }
    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.rows_before(log, before, limit)
    }
    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        self.inner.trim_rows(log, before)
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
    fn recover(&self) -> Result<()> {
        self.inner.recover()
    }
    fn checkpoints_beside_appends(&self) -> bool {
        self.beside_appends
    }
}
