//! The hub as the auth layer sees it: [`HubAccess`] answers the layer's
//! [`AccessControl`] questions from the hub's keys and audit log, and
//! holds the per-identity rate limiter (the hub core knows nothing of
//! request rates). [`connection_refusals`] is where the transport reports
//! the connections it turned away, audited like refused calls.

use std::sync::Arc;

use super::limits::RateLimiter;
use super::{AccessControl, Identity};
use crate::domain::model::{AuditEntry, UnixMillis};
use crate::error::Result;
use crate::hub::Hub;
use crate::transport::{PeerIdentity, PeerInfo, RefusalSink};

/// [`AccessControl`] over a [`Hub`].
pub struct HubAccess {
    hub: Arc<Hub>,
    limiter: Arc<RateLimiter>,
}

impl HubAccess {
    /// Access control over `hub`, with its configured rate limit. On a
    /// replica, calls other replicas admitted (their audit entries, folded
    /// from the shared log) are charged to the same buckets, so an instance
    /// has one allowance across the replicas.
    pub fn new(hub: Arc<Hub>) -> Self {
        let settings = hub.settings();
        let limiter = Arc::new(RateLimiter::new(
            settings.rate_limit_per_hour,
            settings.rate_limit_max_tracked,
        ));
        let charged = limiter.clone();
        hub.on_remote_calls(Box::new(move |entries: &[AuditEntry]| {
            for entry in entries.iter().filter(|e| took_a_token(e)) {
                charged.charge(&entry.caller, entry.at);
            }
        }));
        HubAccess { hub, limiter }
    }
}

/// Whether the call an audit entry records took a rate-limit token: an
/// instance's call to the Hub service that the auth layer admitted (it
/// refuses with UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED).
fn took_a_token(entry: &AuditEntry) -> bool {
    const UNAUTHENTICATED: i32 = 16;
    const PERMISSION_DENIED: i32 = 7;
    const RESOURCE_EXHAUSTED: i32 = 8;
    entry.role == "instance"
        && entry.rpc.starts_with("/learninghub.v1.Hub/")
        && ![UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED].contains(&entry.code)
}

impl AccessControl for HubAccess {
    fn check_key(&self, instance_id: &str, presented: Option<&str>) -> Result<()> {
        self.hub.check_key(instance_id, presented)
    }

    fn take_rate_token(&self, identity: &Identity) -> std::result::Result<(), u64> {
        if self.hub.settings().rate_limit_per_hour == 0 {
            return Ok(());
        }
        let taken = self.limiter.take(&identity.name, self.hub.now());
        if taken.is_err() {
            self.hub.metrics().rate_limited();
        }
        taken
    }

    fn observe(&self, rpc: &str, code: i32, elapsed: std::time::Duration) {
        self.hub.metrics().observe_call(rpc, code, elapsed);
    }

    fn audit(&self, entry: AuditEntry, sampled: bool) {
        self.hub.audit(entry, sampled);
    }

    fn now(&self) -> UnixMillis {
        self.hub.now()
    }

    fn log_position(&self) -> u64 {
        self.hub.position()
    }

    fn wait_for_position(
        &self,
        position: u64,
        timeout: std::time::Duration,
    ) -> futures_util::future::BoxFuture<'static, bool> {
        let hub = self.hub.clone();
        Box::pin(async move { hub.wait_for_position(position, timeout).await })
    }
}

/// The hub as the auth layer's access control.
pub fn access_control(hub: &Arc<Hub>) -> Arc<dyn AccessControl> {
    Arc::new(HubAccess::new(hub.clone()))
}

/// Where the transport reports connections it refused a slot: sampled
/// audit entries (rpc `connection`, RESOURCE_EXHAUSTED), like refused
/// calls.
pub fn connection_refusals(hub: &Arc<Hub>) -> RefusalSink {
    let hub = hub.clone();
    Arc::new(move |peer: &PeerInfo, _why: &str| {
        let (caller, role) = match &peer.identity {
            PeerIdentity::Verified(identity) => {
                (identity.name.clone(), identity.role.as_str().to_string())
            }
            _ => (String::new(), "unknown".to_string()),
        };
        let entry = AuditEntry {
            sequence: 0,
            at: hub.now(),
            caller,
            role,
            rpc: crate::schema::CONNECTION.to_string(),
            code: tonic::Code::ResourceExhausted as i32,
            request_bytes: 0,
            count: 1,
            peer: peer.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            serial: peer.serial().to_string(),
            path: String::new(),
        };
        hub.audit(entry, true);
    })
}
