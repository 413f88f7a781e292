//! What the hub keeps for access control: API keys (issue, revoke,
//! check) and the audit log (append, sampled or not; query). The auth
//! layer reaches these through [`crate::auth::access`].

use tokio::sync::watch;

use super::{Hub, wrong_answer};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::keys;
use crate::domain::model::{AuditEntry, UnixMillis};
use crate::error::{Error, Result};

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from: UnixMillis,
    pub until: UnixMillis,
    /// Only calls by this instance or operator.
    pub caller: Option<String>,
    /// Only calls whose method path contains this (e.g. "ShareStrategy").
    pub rpc: Option<String>,
    /// Only calls to `learninghub.*` services (no reflection, no health).
    pub hub_calls_only: bool,
    /// Only calls by this role ("instance", "operator", "unknown").
    pub role: Option<String>,
    pub limit: usize,
}

impl Hub {
    /// Issues a new key for `instance_id` (replacing any previous one) and
    /// returns it: the only time it is shown. The command carries only its
    /// salted hash.
    pub async fn issue_api_key(&self, operator: &str, instance_id: String) -> Result<String> {
        let (key, stored) = keys::issue(&instance_id, operator, self.now())?;
        match self.submit(Action::IssueApiKey { key: stored }).await? {
            // The writer tells streams (on every replica) that keys changed.
            Answer::KeyIssued { .. } => Ok(key),
            other => Err(wrong_answer("IssueApiKey", other)),
        }
    }

    /// Revokes `instance_id`'s key at once; its calls and streams stop.
    pub async fn revoke_api_key(&self, instance_id: String) -> Result<()> {
        match self.submit(Action::RevokeApiKey { instance_id }).await? {
            Answer::KeyRevoked => Ok(()),
            other => Err(wrong_answer("RevokeApiKey", other)),
        }
    }

    /// Changes whenever a key is revoked or replaced.
    pub fn key_changes(&self) -> watch::Receiver<u64> {
        self.shared.key_changes.subscribe()
    }

    /// The audit entries matching `query`, newest first: those folded
    /// since the last checkpoint, then the store's, read backwards a page
    /// at a time until `limit` match or the entries are older than the
    /// range (the log is in time order) — not a scan of the whole log.
    pub async fn query_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        let state = self.state();
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            let keep = |e: &AuditEntry| {
                e.at >= query.from
                    && e.at < query.until
                    && query.caller.as_ref().is_none_or(|c| &e.caller == c)
                    && (!query.hub_calls_only || e.rpc.starts_with("/learninghub."))
                    && query.role.as_ref().is_none_or(|r| &e.role == r)
                    && query
                        .rpc
                        .as_ref()
                        .is_none_or(|r| e.rpc.contains(r.as_str()))
            };
            let mut found: Vec<AuditEntry> = Vec::new();
            let mut before = u64::MAX;
            for entry in state.rows.audit.iter().rev() {
                if found.len() >= query.limit || entry.at < query.from {
                    return Ok(found);
                }
                before = entry.sequence;
                if keep(entry) {
                    found.push((**entry).clone());
                }
            }
            while found.len() < query.limit {
                let page = store.audit_before(before, AUDIT_PAGE)?;
                let Some(last) = page.last() else { break };
                before = last.sequence;
                for entry in page {
                    if found.len() >= query.limit || entry.at < query.from {
                        return Ok(found);
                    }
                    if keep(&entry) {
                        found.push(entry);
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| Error::Internal(format!("audit query failed: {e}")))?
    }
}

/// Audit entries read from the store per page of a query.
const AUDIT_PAGE: usize = 1024;

impl Hub {
    /// Ok if `presented` is `instance_id`'s current key, or keys are not
    /// required; UNAUTHENTICATED otherwise.
    pub fn check_key(&self, instance_id: &str, presented: Option<&str>) -> Result<()> {
        self.shared.key_valid(instance_id, presented)
    }

    /// Appends `entry` to the audit log without waiting for it; a
    /// `sampled` entry (a refusal, an unknown path, health, reflection) is
    /// kept once per kind and window, the rest of the window counted
    /// ([`super::audit_sampler`]).
    pub fn audit(&self, entry: AuditEntry, sampled: bool) {
        let entries = if sampled {
            self.sampler.admit(entry, self.now())
        } else {
            vec![entry]
        };
        for entry in entries {
            self.writer.audit(entry);
        }
    }

    /// Writes the summaries of audit sampling windows that have ended (a
    /// background job calls this every window).
    pub fn flush_audit_samples(&self) {
        for entry in self.sampler.due(self.now()) {
            self.writer.audit(entry);
        }
    }
}

impl super::Shared {
    /// Ok if `presented` is `instance_id`'s current key, or keys are not
    /// required; UNAUTHENTICATED otherwise.
    pub(super) fn key_valid(&self, instance_id: &str, presented: Option<&str>) -> Result<()> {
        if !self.settings.require_api_keys {
            return Ok(());
        }
        let Some(presented) = presented else {
            return Err(Error::Unauthenticated(format!(
                "instance {instance_id:?} must present its API key (authorization: Bearer <key>)"
            )));
        };
        let stored = self.state().tables.api_keys.get(instance_id).cloned();
        match stored {
            Some(stored) if keys::verify(&stored, presented) => Ok(()),
            Some(_) => Err(Error::Unauthenticated(format!(
                "the API key is not valid for instance {instance_id:?}"
            ))),
            None => Err(Error::Unauthenticated(format!(
                "instance {instance_id:?} has no API key (none issued, or revoked)"
            ))),
        }
    }
}
