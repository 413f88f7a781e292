//! Fault injection under the store, **for tests**: [`FaultyEngine`] wraps a
//! real [`Engine`] and fails the operations a [`Faults`] handle switches on
//! — a full disk or an I/O error on apply, flush or scan, optionally only
//! for batches that write a given kind of record — or stalls them (a disk
//! that stops answering), so the hub's behaviour on a failing disk can be
//! exercised end to end without filling one.
//! Injected errors are made by [`store_io_error`] from the same OS errors a
//! real disk gives (ENOSPC, EIO), so clients see exactly the message they
//! would in production.
//!
//! It is public so integration tests (and an operator's drills) can build a
//! hub on it; nothing in the production path uses it.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use super::engine::{Engine, KvWrite, store_io_error};
use crate::error::Result;

/// What a failing operation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: "No space left on device".
    DiskFull,
    /// EIO: "Input/output error".
    Io,
}

impl Fault {
    fn error(self, action: &str) -> crate::error::Error {
        let os = match self {
            Fault::DiskFull => io::Error::from_raw_os_error(28),
            Fault::Io => io::Error::from_raw_os_error(5),
        };
        store_io_error(action, &os)
    }
}

/// The engine operations a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Flush,
    Scan,
}

impl Op {
    const ALL: [Op; 3] = [Op::Apply, Op::Flush, Op::Scan];

    fn index(self) -> usize {
        self as usize
    }

    fn action(self) -> &'static str {
        match self {
            Op::Apply => "write",
            Op::Flush => "flush",
            Op::Scan => "read",
        }
    }
}

/// When an operation fails.
#[derive(Debug, Clone)]
struct Rule {
    fault: Fault,
    /// Apply only: fail only batches writing a key with this prefix.
    prefix: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Switches {
    rules: Mutex<[Option<Rule>; 3]>,
    calls: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    /// Whether a recovery drops the writes applied since the last
    /// successful flush, as sled's reopen after an I/O error can.
    lose_unflushed: AtomicBool,
    /// Operations that block until released, and the wake-up for them.
    stalled: Mutex<[bool; 3]>,
    released: Condvar,
}

/// The switchboard of a [`FaultyEngine`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Switches>);

impl Faults {
    pub fn new() -> Self {
        Faults::default()
    }

    /// Every `op` fails with `fault` until cleared.
    pub fn inject(&self, op: Op, fault: Fault) {
        self.set(
            op,
            Some(Rule {
                fault,
                prefix: None,
            }),
        );
    }

    /// Applies that write (or delete) a key starting with `prefix` fail
    /// with `fault`; others succeed. E.g. `codec::Kind::Strategy.prefix()`
    /// fails lazy checkpoints of strategy aggregates only.
    pub fn inject_writes_of(&self, prefix: &[u8], fault: Fault) {
        self.set(
            Op::Apply,
            Some(Rule {
                fault,
                prefix: Some(prefix.to_vec()),
            }),
        );
    }

    /// From now on, a recovery (after a failure) drops every write applied
    /// since the last successful flush, the way reopening sled after an
    /// I/O error can.
    pub fn lose_unflushed_on_recover(&self) {
        self.0.lose_unflushed.store(true, Ordering::SeqCst);
    }

    /// Every `op` blocks its caller (the writer thread, for apply and
    /// flush) until cleared: a disk that stops answering without failing.
    pub fn stall(&self, op: Op) {
        self.stalled()[op.index()] = true;
    }

    /// `op` works again (and stalled calls of it go on).
    pub fn clear(&self, op: Op) {
        self.set(op, None);
        self.stalled()[op.index()] = false;
        self.0.released.notify_all();
    }

    fn stalled(&self) -> std::sync::MutexGuard<'_, [bool; 3]> {
        self.0.stalled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every operation works again ("space returned").
    pub fn clear_all(&self) {
        for op in Op::ALL {
            self.clear(op);
        }
    }

    /// How many calls of `op` the engine saw, and how many it failed.
    pub fn calls(&self, op: Op) -> u64 {
        self.0.calls[op.index()].load(Ordering::SeqCst)
    }

    pub fn failed(&self, op: Op) -> u64 {
        self.0.failed[op.index()].load(Ordering::SeqCst)
    }

    fn set(&self, op: Op, rule: Option<Rule>) {
        self.0.rules.lock().unwrap_or_else(|e| e.into_inner())[op.index()] = rule;
    }

    /// The error `op` fails with now, if any (`writes` for a prefix rule).
    fn check(&self, op: Op, writes: Option<&[KvWrite]>) -> Result<()> {
        self.0.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let mut stalled = self.stalled();
        while stalled[op.index()] {
            stalled = self
                .0
                .released
                .wait(stalled)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(stalled);
        let rule = self.0.rules.lock().unwrap_or_else(|e| e.into_inner())[op.index()].clone();
        let Some(rule) = rule else { return Ok(()) };
        let hit = match (&rule.prefix, writes) {
            (None, _) => true,
            (Some(prefix), Some(writes)) => writes.iter().any(|(k, _)| k.starts_with(prefix)),
            (Some(_), None) => false,
        };
        if !hit {
            return Ok(());
        }
        self.0.failed[op.index()].fetch_add(1, Ordering::SeqCst);
        Err(rule.fault.error(op.action()))
    }
}

/// An [`Engine`] that fails what its [`Faults`] say and passes everything
/// else to `inner`. A failed apply writes nothing; a failed flush happens
/// after the writes were applied to `inner` (as on a real disk, they may
/// or may not end up durable).
pub struct FaultyEngine {
    inner: Arc<dyn Engine>,
    faults: Faults,
    /// With `lose_unflushed`: each key written since the last successful
    /// flush and its value before.
    unflushed: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl FaultyEngine {
    pub fn new(inner: Arc<dyn Engine>, faults: Faults) -> Self {
        FaultyEngine {
            inner,
            faults,
            unflushed: Mutex::default(),
        }
    }

    fn lose_unflushed(&self) -> bool {
        self.faults.0.lose_unflushed.load(Ordering::SeqCst)
    }
}

impl Engine for FaultyEngine {
    fn apply(&self, writes: Vec<KvWrite>) -> Result<()> {
        self.faults.check(Op::Apply, Some(&writes))?;
        if self.lose_unflushed() {
            let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
            for (key, _) in &writes {
                if !unflushed.contains_key(key) {
                    let mut end = key.clone();
                    end.push(0);
                    let before = self.inner.scan(key, &end, 1)?.pop().map(|(_, v)| v);
                    unflushed.insert(key.clone(), before);
                }
            }
        }
        self.inner.apply(writes)
    }

    fn flush(&self) -> Result<()> {
        self.faults.check(Op::Flush, None)?;
        self.inner.flush()?;
        self.unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.faults.check(Op::Scan, None)?;
        self.inner.scan(start, end, limit)
    }

    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.faults.check(Op::Scan, None)?;
        self.inner.scan_rev(start, end, limit)
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }

    /// A disk that is still failing writes cannot recover.
    fn recover(&self) -> Result<()> {
        let rules = self
            .faults
            .0
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rule) = &rules[Op::Apply.index()]
            && rule.prefix.is_none()
        {
            return Err(rule.fault.error("write"));
        }
        drop(rules);
        self.inner.recover()?;
        let lost: Vec<KvWrite> = self
            .unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if !lost.is_empty() {
            self.inner.apply(lost)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEngine;
    use crate::error::Error;

    fn put(key: &[u8]) -> Vec<KvWrite> {
        vec![(key.to_vec(), Some(b"v".to_vec()))]
    }

    #[test]
    fn faults_switch_on_and_off_per_operation() {
        let faults = Faults::new();
        let engine = FaultyEngine::new(Arc::new(MemoryEngine::default()), faults.clone());
        engine.apply(put(b"a/1")).unwrap();

        faults.inject(Op::Apply, Fault::DiskFull);
        let err = engine.apply(put(b"a/2")).unwrap_err();
        assert_eq!(
            err,
            Error::Unavailable(
                "store unavailable: disk full (write failed: No space left on device (os error 28))"
                    .into()
            )
        );
        assert!(engine.recover().is_err(), "a full disk does not recover");
        // Reads and flushes still work; the failed batch wrote nothing.
        engine.flush().unwrap();
        assert_eq!(engine.scan(b"a/", b"a0", 10).unwrap().len(), 1);

        faults.inject(Op::Flush, Fault::Io);
        let err = engine.flush().unwrap_err().to_string();
        assert!(err.contains("I/O error (flush failed"), "{err}");
        faults.clear_all();
        engine.recover().unwrap();
        engine.apply(put(b"a/2")).unwrap();
        engine.flush().unwrap();
        assert_eq!(faults.failed(Op::Apply), 1);
        assert_eq!(faults.failed(Op::Flush), 1);
        assert_eq!(faults.calls(Op::Apply), 3);
    }

    #[test]
    fn a_recovery_can_drop_what_was_not_flushed() {
        let faults = Faults::new();
        faults.lose_unflushed_on_recover();
        let engine = FaultyEngine::new(Arc::new(MemoryEngine::default()), faults.clone());
        engine.apply(put(b"a/1")).unwrap();
        engine.flush().unwrap();
        engine
            .apply(vec![
                (b"a/1".to_vec(), None),
                (b"a/2".to_vec(), Some(b"new".to_vec())),
            ])
            .unwrap();
        engine.recover().unwrap();
        assert_eq!(
            engine.scan(b"a/", b"a0", 10).unwrap(),
            vec![(b"a/1".to_vec(), b"v".to_vec())]
        );
    }

    #[test]
    fn a_prefix_fault_fails_only_batches_touching_it() {
        let faults = Faults::new();
        let engine = FaultyEngine::new(Arc::new(MemoryEngine::default()), faults.clone());
        faults.inject_writes_of(b"s/", Fault::Io);
        engine.apply(put(b"o/1")).unwrap();
        let mut both = put(b"o/2");
        both.extend(put(b"s/x"));
        assert!(engine.apply(both).is_err());
        engine.recover().unwrap();
        assert_eq!(engine.scan(b"", b"\xff", 10).unwrap().len(), 1);
    }
}
