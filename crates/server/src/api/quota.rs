//! Open insight streams per identity. A stream costs the hub its HTTP/2
//! buffers for as long as it is open, and the rate limit counts a stream
//! once, when it opens; without a cap, one instance opening streams it
//! never reads could hold gigabytes (950 unread streams took 600 MB). The
//! cap (`limits.max_streams_per_identity`, 32) is far above what an
//! instance needs — one stream, or a few while reconnecting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Identity;
use crate::error::{Error, Result};
use crate::log_limit::LogLimit;

/// Refused streams are logged at `warn`, a burst of 10 then one a second.
static REFUSED_STREAMS: LogLimit = LogLimit::new(10, std::time::Duration::from_secs(1));

/// Streams open per identity, capped.
#[derive(Debug)]
pub struct StreamQuota {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place; dropping it (with the stream) frees it.
#[derive(Debug)]
pub struct StreamSlot {
    quota: Arc<StreamQuota>,
    owner: String,
}

impl StreamQuota {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(StreamQuota {
            max: max.max(1),
            open: Mutex::default(),
        })
    }

    /// A place for one more stream of `identity`, or RESOURCE_EXHAUSTED
    /// naming the cap.
    pub fn open(self: &Arc<Self>, identity: &Identity) -> Result<StreamSlot> {
        let owner = identity.to_string();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(owner.clone()).or_insert(0);
        if *held >= self.max {
            if let Some(held_back) = REFUSED_STREAMS.admit() {
                tracing::warn!(
                    caller = %owner,
                    max = self.max,
                    more_refused_since_last_line = held_back,
                    "insight stream refused: the caller holds its share"
                );
            }
            return Err(Error::ResourceExhausted(format!(
                "{owner} already has {} insight streams open \
                 (limits.max_streams_per_identity); close one first",
                self.max
            )));
        }
        *held += 1;
        Ok(StreamSlot {
            quota: self.clone(),
            owner,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.quota.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get_mut(&self.owner) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_identity_and_freed_with_their_slot() {
        let quota = StreamQuota::new(2);
        let a = Identity::instance("a");
        let first = quota.open(&a).unwrap();
        let _second = quota.open(&a).unwrap();
        let refused = quota.open(&a).unwrap_err();
        assert!(matches!(refused, Error::ResourceExhausted(ref m) if m.contains("instance a")));
        let _b = quota.open(&Identity::instance("b")).unwrap();
        drop(first);
        let _third = quota.open(&a).unwrap();
    }
}
