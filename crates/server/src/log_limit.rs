//! Rate-limited logging of refusals. A refused TLS handshake or call is
//! worth a `warn` line to the operator — it is how they learn that a
//! client's certificate is wrong — but a scanner refused ten thousand times
//! a second must not turn the log into the attack's amplifier.
//!
//! A [`LogLimit`] lets a burst of lines through, then at most one line per
//! refill; the lines it held back are counted and reported by the next line
//! it lets through ("… and 4 812 more since"), so the log says how much
//! happened even when it does not say each thing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    refill: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    refilled_at: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `burst` lines at once, then one more every `refill`.
    pub const fn new(burst: u32, refill: Duration) -> Self {
        LogLimit {
            burst,
            refill,
            state: Mutex::new(State {
                tokens: burst,
                refilled_at: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being the lines held back
    /// since the last one that was; `None` if this one must be held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since = *state.refilled_at.get_or_insert(now);
        if !self.refill.is_zero() {
            let earned = now.saturating_duration_since(since).as_nanos() / self.refill.as_nanos();
            if earned > 0 {
                let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                state.tokens = state.tokens.saturating_add(earned).min(self.burst);
                state.refilled_at = Some(now);
            }
        }
        if state.tokens == 0 {
            state.suppressed += 1;
            return None;
        }
        state.tokens -= 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_line_per_refill_with_the_count_held_back() {
        let limit = LogLimit::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0), Some(0));
        for _ in 0..100 {
            assert_eq!(limit.admit_at(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(limit.admit_at(t0 + Duration::from_millis(1001)), Some(100));
        assert_eq!(limit.admit_at(t0 + Duration::from_millis(1002)), None);
        // A long quiet spell refills the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(limit.admit_at(later), Some(1));
        assert_eq!(limit.admit_at(later), Some(0));
        assert_eq!(limit.admit_at(later), Some(0));
        assert_eq!(limit.admit_at(later), None);
    }
}
