//! Who is calling and what they may do. The transport verifies the client
//! certificate and reads the identity out of it ([`identity`]); the
//! [`AuthLayer`] turns that into an [`Identity`] in every request's
//! extensions, checks an instance's API key ([`keys`]), enforces the role
//! policy ([`policy`]) and the rate limit ([`limits`]) before any handler
//! runs, and records every call in the audit log — so authorization is
//! decided in one place.

pub mod access;
mod audit;
pub use crate::domain::identity;
pub use crate::domain::keys;
mod layer;
pub mod limits;
pub mod policy;

pub use access::{HubAccess, access_control, connection_refusals};
pub use identity::{Identity, Role};
pub use layer::{AuthLayer, INSECURE_IDENTITY_HEADER};

use crate::domain::model::{AuditEntry, UnixMillis};
use crate::error::Result;

/// What the auth layer asks the hub: whether a key is valid, whether the
/// caller has a request left, where to record a call, and the time.
pub trait AccessControl: Send + Sync + 'static {
    /// Ok if `presented` is the current key of `instance_id` (or keys are
    /// not required); UNAUTHENTICATED otherwise.
    fn check_key(&self, instance_id: &str, presented: Option<&str>) -> Result<()>;
    /// Takes one request from the caller's allowance; `Err(seconds)` until
    /// the next one when it is used up.
    fn take_rate_token(&self, identity: &Identity) -> std::result::Result<(), u64>;
    /// Appends to the audit log (without waiting for it); a `sampled`
    /// entry (a refusal, an unknown path, health, reflection) is kept once
    /// per kind and window, the rest of the window counted
    /// ([`crate::hub::audit_sampler`]).
    fn audit(&self, entry: AuditEntry, sampled: bool);
    /// Counts a call that ended with gRPC status `code` after `elapsed`.
    fn observe(&self, _rpc: &str, _code: i32, _elapsed: std::time::Duration) {}
    fn now(&self) -> UnixMillis;
    /// The log position of the state the hub answers from now.
    fn log_position(&self) -> u64 {
        0
    }
    /// Waits until the hub answers from the log up to `position`, at most
    /// `timeout`; whether it does (replicas: read-your-writes).
    fn wait_for_position(
        &self,
        _position: u64,
        _timeout: std::time::Duration,
    ) -> futures_util::future::BoxFuture<'static, bool> {
        Box::pin(std::future::ready(true))
    }
}
