//! Per-instance rate limiting: a token bucket per authenticated identity
//! (never per anything the client can choose), refilled continuously at
//! `per_hour` tokens an hour up to `per_hour`. An instance can therefore
//! burst its whole hourly allowance, and the call after it is refused until
//! a token has refilled. Time comes from the hub's clock, so tests step it.
//!
//! Memory stays bounded: when the table grows past its limit, buckets that
//! have refilled completely (idle instances) are dropped — a dropped bucket
//! and a full one behave the same.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::model::UnixMillis;

const HOUR_MS: f64 = 3_600_000.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: UnixMillis,
}

/// Token buckets keyed by identity.
#[derive(Debug)]
pub struct RateLimiter {
    per_hour: u32,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_hour: u32, max_keys: usize) -> Self {
        RateLimiter {
            per_hour,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Bucket, now: UnixMillis) -> Bucket {
        // A clock that went backwards refills nothing (and takes nothing).
        let elapsed = (now - bucket.updated).max(0) as f64;
        Bucket {
            tokens: (bucket.tokens + elapsed * f64::from(self.per_hour) / HOUR_MS)
                .min(f64::from(self.per_hour)),
            updated: now.max(bucket.updated),
        }
    }

    /// Takes a token for `key`. `Err(seconds)` when there is none, with the
    /// seconds until one refills (at least 1).
    pub fn take(&self, key: &str, now: UnixMillis) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let full = f64::from(self.per_hour);
            let evict: Vec<String> = buckets
                .iter()
                .filter(|(_, b)| self.refilled(**b, now).tokens >= full)
                .map(|(k, _)| k.clone())
                .collect();
            for k in evict {
                buckets.remove(&k);
            }
        }
        let bucket = buckets.get(key).copied().unwrap_or(Bucket {
            tokens: f64::from(self.per_hour),
            updated: now,
        });
        let mut bucket = self.refilled(bucket, now);
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            let seconds = (missing * HOUR_MS / f64::from(self.per_hour) / 1000.0).ceil();
            Err((seconds as u64).max(1))
        };
        buckets.insert(key.to_string(), bucket);
        result
    }

    /// Counts a call another replica admitted for `key` at `at`: the token
    /// is taken whether or not one is left (down to a debt of one hour's
    /// allowance), so that every replica's bucket holds the fleet's use.
    pub fn charge(&self, key: &str, at: UnixMillis) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.get(key).copied().unwrap_or(Bucket {
            tokens: f64::from(self.per_hour),
            updated: at,
        });
        let mut bucket = self.refilled(bucket, at);
        bucket.tokens = (bucket.tokens - 1.0).max(-f64::from(self.per_hour));
        buckets.insert(key.to_string(), bucket);
    }

    /// Identities currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_at_the_boundary() {
        let limiter = RateLimiter::new(1000, 100);
        for i in 0..1000 {
            assert!(limiter.take("a", 0).is_ok(), "call {i}");
        }
        // The 1001st within the hour is refused, for 3.6 s (one token).
        assert_eq!(limiter.take("a", 0), Err(4));
        assert_eq!(limiter.take("a", 3_599), Err(1));
        assert!(limiter.take("a", 3_600).is_ok());
        assert!(limiter.take("a", 3_600).is_err());
        // Other identities are unaffected.
        assert!(limiter.take("b", 0).is_ok());
    }

    #[test]
    fn calls_charged_from_other_replicas_use_up_the_same_allowance() {
        let limiter = RateLimiter::new(10, 100);
        for _ in 0..6 {
            limiter.charge("a", 0);
        }
        for i in 0..4 {
            assert!(limiter.take("a", 0).is_ok(), "call {i}");
        }
        assert!(limiter.take("a", 0).is_err(), "6 elsewhere + 4 here");
        // Charges past empty are a debt that refills like any use.
        for _ in 0..5 {
            limiter.charge("a", 0);
        }
        assert!(limiter.take("a", 5 * 360_000).is_err(), "still paying off");
        assert!(limiter.take("a", 6 * 360_000).is_ok());
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let limiter = RateLimiter::new(2, 100);
        assert!(limiter.take("a", 10_000).is_ok());
        assert!(limiter.take("a", 10_000).is_ok());
        assert!(limiter.take("a", 0).is_err());
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let limiter = RateLimiter::new(10, 3);
        for k in ["a", "b", "c"] {
            limiter.take(k, 0).unwrap();
        }
        // An hour later all three have refilled; a fourth evicts them.
        limiter.take("d", 3_600_000).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }
}
