//! What each role may see (the seed's "Data Segregation"). Operators see
//! everything. An instance sees aggregates and its own record, never
//! another instance's id, context or per-instance counts: replies to
//! instances go through [`Redact`] before they leave.

use crate::auth::{Identity, Role};
use crate::pb;

/// Removes what only operators may see.
pub trait Redact {
    fn redact(&mut self);
}

/// Applies [`Redact`] when `viewer` is an instance.
pub fn for_viewer<T: Redact>(viewer: &Identity, mut message: T) -> T {
    if viewer.role != Role::Operator {
        message.redact();
    }
    message
}

impl Redact for pb::Pattern {
    fn redact(&mut self) {
        self.instances.clear();
    }
}

impl Redact for pb::StrategyRecord {
    fn redact(&mut self) {
        self.instances.clear();
    }
}

impl Redact for pb::FailurePattern {
    fn redact(&mut self) {
        self.instances.clear();
    }
}

impl<T: Redact> Redact for Option<T> {
    fn redact(&mut self) {
        if let Some(inner) = self {
            inner.redact();
        }
    }
}

impl<T: Redact> Redact for Vec<T> {
    fn redact(&mut self) {
        self.iter_mut().for_each(Redact::redact);
    }
}

impl Redact for pb::PatternMatch {
    fn redact(&mut self) {
        self.pattern.redact();
    }
}

impl Redact for pb::SharePatternResponse {
    fn redact(&mut self) {
        self.pattern.redact();
    }
}

impl Redact for pb::GetPatternsResponse {
    fn redact(&mut self) {
        self.matches.redact();
    }
}

impl Redact for pb::RecordPatternOutcomeResponse {
    fn redact(&mut self) {
        self.pattern.redact();
    }
}

impl Redact for pb::ShareStrategyResponse {
    fn redact(&mut self) {
        self.record.redact();
    }
}

impl Redact for pb::ShareFailureResponse {
    fn redact(&mut self) {
        self.failure.redact();
    }
}

impl Redact for pb::GetFailuresResponse {
    fn redact(&mut self) {
        self.failures.redact();
    }
}

impl Redact for pb::ActionWarning {
    fn redact(&mut self) {
        self.failure.redact();
    }
}

impl Redact for pb::CheckActionResponse {
    fn redact(&mut self) {
        self.warnings.redact();
    }
}

/// An instance's view of the fleet: counts by region and its own record.
pub fn instance_listing(
    viewer: &Identity,
    mut page: pb::ListInstancesResponse,
) -> pb::ListInstancesResponse {
    if viewer.role != Role::Operator {
        page.instances.retain(|i| i.instance_id == viewer.name);
        page.next_after_instance_id.clear();
    }
    page
}
