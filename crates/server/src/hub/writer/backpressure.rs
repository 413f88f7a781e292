//! Audit entries are queued without waiting for the writer, so a store that
//! stalls would let them pile up without bound. At most
//! [`MAX_DETACHED_WAITING`] may wait for room in a full queue; past that
//! they are dropped and counted (`learning_hub_audit_dropped_total`), and
//! the first drop is logged.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Audit entries that may wait for room in a full queue (a stalled store);
/// beyond this they are dropped and counted, not piled up without bound.
pub const MAX_DETACHED_WAITING: usize = 10_000;

/// How many detached entries wait, and whether a drop was logged.
#[derive(Debug, Default)]
pub struct Backpressure {
    waiting: AtomicUsize,
    drop_logged: AtomicBool,
}

/// What to do with one more entry that found the queue full.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Wait for room (call [`Backpressure::done`] when sent).
    Wait,
    /// Drop it; `log` for the first drop.
    Drop { log: bool },
}

impl Backpressure {
    pub fn admit(&self) -> Verdict {
        self.admit_up_to(MAX_DETACHED_WAITING)
    }

    fn admit_up_to(&self, max: usize) -> Verdict {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= max {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            let log = !self.drop_logged.swap(true, Ordering::Relaxed);
            return Verdict::Drop { log };
        }
        Verdict::Wait
    }

    /// A waiting entry was sent (or given up).
    pub fn done(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_bounded_and_the_first_drop_is_logged_once() {
        let pressure = Backpressure::default();
        assert_eq!(pressure.admit_up_to(2), Verdict::Wait);
        assert_eq!(pressure.admit_up_to(2), Verdict::Wait);
        assert_eq!(pressure.admit_up_to(2), Verdict::Drop { log: true });
        assert_eq!(pressure.admit_up_to(2), Verdict::Drop { log: false });
        pressure.done();
        assert_eq!(pressure.admit_up_to(2), Verdict::Wait);
    }
}
