//! What the audit log keeps of calls nobody vouched for: refusals (no
//! key, wrong role, rate limited, a certificate no longer accepted, too
//! many streams or connections), unknown paths, health checks and
//! reflection. These are not rate limited — a refusal is what the limit
//! produces — so writing each of them would let any holder of a
//! certificate grow the disk at the speed of the network.
//!
//! Instead they are sampled by kind: per (caller, role, peer address,
//! RPC label, status code) and window (`hub.audit_sample_window_seconds`,
//! 60 s), the first call is written as it happens, and the rest of the
//! window is written as one entry carrying their `count` when the window
//! ends. Storage per kind is then two entries a window, whatever the call
//! rate; the metrics (`learning_hub_calls_total`) still count every call.
//! The number of kinds tracked at once is bounded too: past it, every open
//! window is closed early (written) to make room.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::domain::model::{AuditEntry, UnixMillis};

/// What identifies a kind of sampled call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    caller: String,
    role: String,
    /// The peer's address without its port: a client reconnecting is the
    /// same kind.
    peer: String,
    rpc: String,
    code: i32,
}

#[derive(Debug)]
struct Window {
    started: UnixMillis,
    /// Calls after the first, not yet written.
    held: u64,
    held_bytes: u64,
    /// The last held call, the template of the summary entry.
    last: Option<AuditEntry>,
}

/// Sampling state; the hub owns one.
#[derive(Debug)]
pub struct AuditSampler {
    window_ms: i64,
    max_kinds: usize,
    windows: Mutex<BTreeMap<Kind, Window>>,
}

fn host(peer: &str) -> String {
    // "127.0.0.1:4711" → "127.0.0.1"; "[::1]:4711" → "[::1]".
    match peer.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => peer.to_string(),
    }
}

impl AuditSampler {
    pub fn new(window_ms: i64, max_kinds: usize) -> Self {
        AuditSampler {
            window_ms: window_ms.max(1),
            max_kinds: max_kinds.max(1),
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    /// The entries to write now for `entry`, which happened at `now`: the
    /// entry itself if it opens a window (preceded by the summary of the
    /// kind's previous window, if that held calls), or nothing when it is
    /// held (counted for the window's summary).
    pub fn admit(&self, entry: AuditEntry, now: UnixMillis) -> Vec<AuditEntry> {
        let kind = Kind {
            caller: entry.caller.clone(),
            role: entry.role.clone(),
            peer: host(&entry.peer),
            rpc: entry.rpc.clone(),
            code: entry.code,
        };
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if let Some(window) = windows.get_mut(&kind) {
            if now < window.started.saturating_add(self.window_ms) && now >= window.started {
                window.held += 1;
                window.held_bytes = window.held_bytes.saturating_add(entry.request_bytes);
                window.last = Some(entry);
                return out;
            }
            // The window is over (or the clock went back): close it.
            if let Some(window) = windows.remove(&kind) {
                out.extend(summary(window));
            }
        } else if windows.len() >= self.max_kinds {
            out.extend(
                std::mem::take(&mut *windows)
                    .into_values()
                    .filter_map(summary),
            );
        }
        windows.insert(
            kind,
            Window {
                started: now,
                held: 0,
                held_bytes: 0,
                last: None,
            },
        );
        out.push(entry);
        out
    }

    /// The summaries of windows that ended by `now`; those windows close.
    pub fn due(&self, now: UnixMillis) -> Vec<AuditEntry> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<Kind> = windows
            .iter()
            .filter(|(_, w)| now >= w.started.saturating_add(self.window_ms) || now < w.started)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|kind| windows.remove(&kind))
            .filter_map(summary)
            .collect()
    }

    /// Every open window's summary (at shutdown).
    pub fn drain(&self) -> Vec<AuditEntry> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *windows)
            .into_values()
            .filter_map(summary)
            .collect()
    }
}

/// The entry standing for a window's held calls, if it held any.
fn summary(window: Window) -> Option<AuditEntry> {
    let last = window.last?;
    Some(AuditEntry {
        count: window.held,
        request_bytes: window.held_bytes,
        // Only a window's first entry keeps an unknown path.
        path: String::new(),
        ..last
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(at: UnixMillis, peer: &str, code: i32) -> AuditEntry {
        AuditEntry {
            sequence: 0,
            at,
            caller: "a".into(),
            role: "instance".into(),
            rpc: "unknown".into(),
            code,
            request_bytes: 10,
            count: 1,
            peer: peer.into(),
            serial: "01".into(),
            path: "/made/up".into(),
        }
    }

    #[test]
    fn a_window_writes_its_first_call_and_then_one_summary() {
        let sampler = AuditSampler::new(60_000, 100);
        let first = sampler.admit(call(1_000, "10.0.0.1:5000", 16), 1_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].path, "/made/up");
        // 999 more in the window, from other ports of the same host.
        for i in 1..1000 {
            let port = 5000 + i;
            assert!(
                sampler
                    .admit(call(1_000 + i, &format!("10.0.0.1:{port}"), 16), 1_000 + i)
                    .is_empty()
            );
        }
        // Another code, or another host, is another kind.
        assert_eq!(sampler.admit(call(2_000, "10.0.0.1:1", 7), 2_000).len(), 1);
        assert_eq!(sampler.admit(call(2_000, "10.0.0.2:1", 16), 2_000).len(), 1);
        assert!(sampler.due(60_999).is_empty(), "not over yet");
        let due = sampler.due(61_000);
        assert_eq!(due.len(), 1, "only the window that held calls: {due:?}");
        assert_eq!((due[0].count, due[0].request_bytes), (999, 9990));
        assert_eq!(due[0].path, "", "the summary does not repeat the path");
        assert!(sampler.due(200_000).is_empty(), "the others held nothing");
    }

    #[test]
    fn a_call_after_its_window_closes_it_and_opens_the_next() {
        let sampler = AuditSampler::new(1_000, 100);
        sampler.admit(call(0, "h:1", 16), 0);
        sampler.admit(call(10, "h:1", 16), 10);
        sampler.admit(call(20, "h:1", 16), 20);
        let next = sampler.admit(call(1_500, "h:1", 16), 1_500);
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].count, 2, "the previous window's summary first");
        assert_eq!(next[1].count, 1);
        // A clock that goes back closes the window too, rather than
        // holding calls for ever.
        sampler.admit(call(1_600, "h:1", 16), 1_600);
        let back = sampler.admit(call(100, "h:1", 16), 100);
        assert_eq!(back.iter().map(|e| e.count).collect::<Vec<_>>(), vec![1, 1]);
    }

    #[test]
    fn the_number_of_kinds_is_bounded() {
        let sampler = AuditSampler::new(60_000, 3);
        for host in 0..3 {
            sampler.admit(call(0, &format!("10.0.0.{host}:1"), 16), 0);
            sampler.admit(call(1, &format!("10.0.0.{host}:1"), 16), 1);
        }
        // A fourth kind closes the three open windows (their summaries are
        // written) before it opens its own.
        let written = sampler.admit(call(2, "10.0.0.9:1", 16), 2);
        assert_eq!(written.len(), 4);
        assert_eq!(sampler.drain().len(), 0, "the new window holds nothing yet");
    }
}
