//! What the store may hold that differs from what the hub has installed,
//! and how the writer puts it right.
//!
//! Audit entries are appended to the log without a flush of their own and
//! installed at once (they become durable with the next flush); a batch
//! whose append or flush failed is not installed, though its entries may
//! have reached the store. So until the next successful flush the log's
//! tail is in doubt: the failed entries may surface after a restart, and a
//! store that recovers from an I/O error by reopening (sled) drops the
//! unflushed ones. After a failure the next commit therefore first
//! recovers the store, discards every log entry after the last flushed
//! position, and appends the unflushed installed entries again
//! ([`Pending::repair_plan`]) — then its own, and flushes.

use std::time::{Duration, Instant};

use crate::domain::command::LogEntry;
use crate::error::Error;

/// How long installed entries may stay unflushed before the writer flushes
/// them on its own.
pub const UNFLUSHED_MAX_AGE: Duration = Duration::from_secs(1);
/// While commits keep failing, how often the writer logs that again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The log's tail as the writer knows it.
#[derive(Debug, Default)]
pub struct Pending {
    /// The last position known durable.
    pub flushed: u64,
    /// Installed entries after `flushed`, in order.
    pub unflushed: Vec<LogEntry>,
    /// When the oldest of them was installed.
    oldest: Option<Instant>,
    /// A commit failed since the last successful flush.
    pub failed: bool,
    failing: Option<FailureRun>,
}

#[derive(Debug)]
struct FailureRun {
    since: Instant,
    commits: u64,
    requests: u64,
    last_logged: Instant,
}

/// What a commit must do before its own entries, after a failure.
#[derive(Debug, PartialEq)]
pub struct RepairPlan<'a> {
    /// Discard the log after this position…
    pub discard_after: u64,
    /// …then append these again.
    pub reappend: &'a [LogEntry],
}

impl Pending {
    pub fn new(flushed: u64) -> Self {
        Pending {
            flushed,
            ..Pending::default()
        }
    }

    /// Whether unflushed entries have waited long enough to be flushed now.
    pub fn aged(&self, now: Instant) -> bool {
        self.oldest
            .is_some_and(|t| now.duration_since(t) >= UNFLUSHED_MAX_AGE)
    }

    /// What the next commit repairs first, if a failure left the tail in
    /// doubt.
    pub fn repair_plan(&self) -> Option<RepairPlan<'_>> {
        self.failed.then_some(RepairPlan {
            discard_after: self.flushed,
            reappend: &self.unflushed,
        })
    }

    /// `entries` were appended and installed without a flush.
    pub fn installed(&mut self, entries: Vec<LogEntry>, now: Instant) {
        if entries.is_empty() {
            return;
        }
        self.unflushed.extend(entries);
        self.oldest.get_or_insert(now);
    }

    /// Everything up to `head` is durable.
    pub fn flushed(&mut self, head: u64) {
        if let Some(run) = self.failing.take() {
            tracing::warn!(
                failed_commits = run.commits,
                failed_requests = run.requests,
                seconds = run.since.elapsed().as_secs_f64(),
                "store writable again; writes resumed"
            );
        }
        self.flushed = head;
        self.unflushed.clear();
        self.oldest = None;
        self.failed = false;
    }

    /// A commit of `requests` requests failed with `error`.
    pub fn failed(&mut self, requests: usize, error: &Error, now: Instant) {
        self.failed = true;
        match &mut self.failing {
            None => {
                tracing::error!(%error, requests, "group commit failed; writes are refused until the store recovers");
                self.failing = Some(FailureRun {
                    since: now,
                    commits: 1,
                    requests: requests as u64,
                    last_logged: now,
                });
            }
            Some(run) => {
                run.commits += 1;
                run.requests += requests as u64;
                if now.duration_since(run.last_logged) >= FAILURE_LOG_EVERY {
                    run.last_logged = now;
                    tracing::error!(
                        %error,
                        failed_commits = run.commits,
                        failed_requests = run.requests,
                        seconds = now.duration_since(run.since).as_secs_f64(),
                        "store still failing"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::{Action, Command};

    fn entry(position: u64) -> LogEntry {
        LogEntry {
            position,
            command: Command {
                at: 0,
                action: Action::Audit { entries: vec![] },
            },
        }
    }

    #[test]
    fn a_failure_plans_a_repair_of_everything_since_the_last_flush() {
        let mut pending = Pending::new(3);
        let t0 = Instant::now();
        assert_eq!(pending.repair_plan(), None, "nothing in doubt");
        pending.installed(vec![entry(4), entry(5)], t0);
        assert!(!pending.aged(t0));
        assert!(pending.aged(t0 + UNFLUSHED_MAX_AGE));
        pending.failed(2, &Error::Unavailable("disk full".into()), t0);
        let plan = pending.repair_plan().unwrap();
        assert_eq!(plan.discard_after, 3);
        assert_eq!(
            plan.reappend.iter().map(|e| e.position).collect::<Vec<_>>(),
            [4, 5]
        );
        // A second failure plans the same repair.
        pending.failed(1, &Error::Unavailable("disk full".into()), t0);
        assert_eq!(pending.repair_plan().unwrap().discard_after, 3);
        pending.flushed(7);
        assert_eq!(pending.repair_plan(), None);
        assert_eq!((pending.flushed, pending.unflushed.len()), (7, 0));
        assert!(!pending.aged(t0 + UNFLUSHED_MAX_AGE));
    }
}
