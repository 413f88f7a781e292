//! The retention sweep: applies [`crate::domain::retention`] to the state
//! (through the writer, re-checking each record in case it changed since
//! the plan), forgets request ids past their window, and trims the outcome
//! and audit logs on disk. Expiry is judged by the hub's clock when the
//! sweep runs; see the domain module for what that means when the clock
//! jumps.

use std::sync::atomic::Ordering;

use super::Hub;
use crate::domain::idempotency::RequestKey;
use crate::domain::retention::{self, Rules};
use crate::error::{Error, Result};
use crate::store::codec::Kind;

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub patterns: usize,
    pub insights: usize,
    pub strategies_rolled_up: usize,
    pub outcomes: usize,
    pub audit_entries: usize,
    /// Request ids forgotten (past the deduplication window).
    pub request_ids: usize,
}

impl Hub {
    /// Runs one retention sweep at the hub clock's present.
    pub async fn run_retention(&self) -> Result<RetentionReport> {
        let now = self.now();
        let settings = self.shared.settings.retention;
        let rules = Rules {
            pattern_days: settings.pattern_days,
            unconfirmed_pattern_days: settings.unconfirmed_pattern_days,
            low_frequency: settings.low_frequency,
            evidence_days: self.shared.settings.tuning.retention_days,
        };
        let sweep = {
            let state = self.state();
            retention::plan(
                state.patterns.values(),
                state.insights.values(),
                state.strategies.values(),
                &rules,
                now,
            )
        };
        let window = self.shared.settings.request_id_window_ms;
        let expired_requests: Vec<RequestKey> = self
            .state()
            .requests
            .iter()
            .filter(|(_, r)| !r.live_at(now, window))
            .map(|(key, _)| key.clone())
            .collect();
        let mut report = RetentionReport::default();
        if !expired_requests.is_empty() {
            report.request_ids = self
                .write(move |txn| {
                    let now = txn.now;
                    let mut forgotten = 0;
                    for key in expired_requests {
                        // Unless the id was used again since the plan.
                        if txn.request(&key).is_some_and(|r| !r.live_at(now, window)) {
                            txn.remove_request(&key);
                            forgotten += 1;
                        }
                    }
                    Ok(forgotten)
                })
                .await?;
        }
        if !sweep.is_empty() {
            let (patterns, insights, strategies) = self
                .write(move |txn| {
                    let now = txn.now;
                    let mut counts = (0, 0, 0);
                    for id in sweep.patterns {
                        if txn
                            .pattern(&id)
                            .is_some_and(|p| retention::pattern_expired(&p, &rules, now))
                        {
                            txn.remove_pattern(&id);
                            counts.0 += 1;
                        }
                    }
                    // The newest version of each: one extended since the
                    // plan (in this very batch, say) stays.
                    for sequence in sweep.insights {
                        if txn.insight(sequence).is_some_and(|i| !i.is_valid_at(now)) {
                            txn.remove_insight(sequence);
                            counts.1 += 1;
                        }
                    }
                    for rolled in sweep.strategies {
                        // Only if nothing was recorded since the plan.
                        if txn
                            .strategy(&rolled.key())
                            .is_some_and(|r| r.applications == rolled.applications)
                        {
                            txn.put_strategy(rolled);
                            counts.2 += 1;
                        }
                    }
                    Ok(counts)
                })
                .await?;
            report.patterns = patterns;
            report.insights = insights;
            report.strategies_rolled_up = strategies;
        }
        let store = self.shared.store.clone();
        // Outcomes after the floor are not yet in the stored aggregates: a
        // restart would need them.
        let floor = self.shared.strategy_floor.load(Ordering::SeqCst);
        let day = 24 * 60 * 60 * 1000;
        let (outcomes, audit) = tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
            let trim = |kind: Kind, days: i64, keep_after: u64| -> Result<usize> {
                match store.first_sequence_at(kind, now - days * day, now)? {
                    Some(first_kept) => store.truncate_log(kind, first_kept.min(keep_after + 1)),
                    None => Ok(0),
                }
            };
            Ok((
                trim(Kind::Outcome, settings.outcome_days, floor)?,
                trim(Kind::Audit, settings.audit_days, u64::MAX - 1)?,
            ))
        })
        .await
        .map_err(|e| Error::Internal(format!("log trimming failed: {e}")))??;
        report.outcomes = outcomes;
        report.audit_entries = audit;
        if report != RetentionReport::default() {
            tracing::info!(?report, "retention sweep");
        }
        Ok(report)
    }
}
