//! What this regional hub tells the hubs of other regions: its own
//! knowledge as digest batches (see [`crate::domain::digest`]), for peers
//! the configuration lists.

use super::Hub;
use crate::domain::digest::{self, Batch};
use crate::domain::identity::Identity;
use crate::error::{Error, Result};

impl Hub {
    /// This region's own knowledge above `after` for the peer `caller`:
    /// FAILED_PRECONDITION when this hub has no region, PERMISSION_DENIED
    /// when the caller's region is not among its peers.
    pub fn pull(&self, caller: &Identity, after: u64) -> Result<Batch> {
        let settings = &self.shared.settings;
        if settings.region.is_empty() {
            return Err(Error::FailedPrecondition(
                "this hub has no region (federation.region): it does not federate".into(),
            ));
        }
        if !settings.peers.contains(&caller.name) {
            return Err(Error::PermissionDenied(format!(
                "region {:?} is not among this hub's peers (federation.peers: {:?})",
                caller.name, settings.peers
            )));
        }
        let state = self.state();
        let through = state
            .tables
            .strategies
            .values()
            .map(|r| r.through_sequence)
            .max()
            .unwrap_or(0);
        Ok(digest::export_strategies(
            &settings.region,
            state.tables.strategies.values().map(|r| &**r),
            after,
            through,
        ))
    }

    /// This hub's region (empty when it does not federate).
    pub fn region(&self) -> &str {
        &self.shared.settings.region
    }
}
