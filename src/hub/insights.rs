//! Insights: share (stamped, deduplicated, published once durable), list,
//! and generate from the fleet's history.

use std::sync::Arc;

use super::Hub;
use super::idempotency::{gone, unexpected};
use crate::domain::idempotency::{Applied, RequestTag, WriteRpc};
use crate::domain::insight_gen::{self, GenerationSettings};
use crate::domain::model::{Insight, InsightCategory, InsightDraft, Pattern, StrategyOutcome};
use crate::error::{Error, Result};

impl Hub {
    /// Stores and publishes an insight. If an identical insight (category,
    /// title, text) is still valid, returns it with `true` and stores
    /// nothing. With a request id, a retry stores nothing and returns the
    /// first call's insight (same id and sequence) and flag.
    pub async fn share_insight(
        &self,
        caller: &str,
        draft: InsightDraft,
        request: Option<RequestTag>,
    ) -> Result<(Arc<Insight>, bool)> {
        let instance = caller.to_string();
        let request_id = request.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let ttl = self.shared.settings.insight_ttl_ms;
        let max_ttl = self.shared.settings.max_insight_ttl_ms;
        self.write_once(
            caller,
            WriteRpc::ShareInsight,
            request,
            move |txn, first| {
                if let Some(first) = first {
                    let Applied::ShareInsight {
                        sequence,
                        duplicate,
                    } = first
                    else {
                        return Err(unexpected(first, WriteRpc::ShareInsight));
                    };
                    let insight = txn
                        .insight(sequence)
                        .ok_or_else(|| gone(&request_id, "the insight"))?;
                    return Ok(((insight, duplicate), first));
                }
                let now = txn.now;
                if let Some(until) = draft.valid_until
                    && (until <= now || until > now + max_ttl)
                {
                    return Err(Error::invalid(
                        "insight.valid_until",
                        format!(
                            "must lie in the future and at most {} days ahead",
                            max_ttl / super::DAY_MS
                        ),
                    ));
                }
                if let Some(existing) = txn
                    .insights()
                    .find(|i| i.is_valid_at(now) && i.same_content(&draft))
                {
                    let existing = existing.clone();
                    if txn.instance(&instance).is_none() {
                        return Err(Error::FailedPrecondition(format!(
                            "instance {instance:?} is not registered; call Register first"
                        )));
                    }
                    let applied = Applied::ShareInsight {
                        sequence: existing.sequence,
                        duplicate: true,
                    };
                    return Ok(((existing, true), applied));
                }
                super::touch_instance(txn, &instance)?;
                let insight = Insight {
                    id: format!("insight_{}", uuid::Uuid::new_v4().simple()),
                    sequence: txn.next_insight_sequence(),
                    valid_until: draft.valid_until.unwrap_or(now + ttl),
                    draft,
                    created_at: now,
                    shared_by: instance,
                    uses: 0,
                };
                let applied = Applied::ShareInsight {
                    sequence: insight.sequence,
                    duplicate: false,
                };
                Ok(((txn.put_insight(insight), false), applied))
            },
        )
        .await
    }

    /// Valid insights, most effective first (newest first among equals).
    pub fn get_insights(
        &self,
        category: Option<InsightCategory>,
        context: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Insight>> {
        let now = self.now();
        let state = self.state();
        let mut insights: Vec<_> = state
            .insights
            .values()
            .filter(|i| i.is_valid_at(now))
            .filter(|i| category.is_none_or(|c| i.draft.category == c))
            .filter(|i| context.is_none_or(|c| i.applies_to(c)))
            .cloned()
            .collect();
        insights.sort_by(|a, b| {
            b.draft
                .effectiveness
                .total_cmp(&a.draft.effectiveness)
                .then(b.sequence.cmp(&a.sequence))
        });
        insights.truncate(limit);
        insights
    }
}

/// An insight in use stays valid this long after its latest use…
const USE_EXTENSION_MS: i64 = 7 * super::DAY_MS;
/// …but never longer than this after its creation.
const MAX_LIFETIME_MS: i64 = 30 * super::DAY_MS;

impl Hub {
    /// Records that `caller` acted on insight `id`, extending its validity.
    /// With a request id, a retry records nothing and returns the insight
    /// as it is now.
    pub async fn record_insight_use(
        &self,
        caller: &str,
        id: String,
        request: Option<RequestTag>,
    ) -> Result<Arc<Insight>> {
        let instance = caller.to_string();
        let request_id = request.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        self.write_once(
            caller,
            WriteRpc::RecordInsightUse,
            request,
            move |txn, first| {
                if let Some(first) = first {
                    if first != Applied::RecordInsightUse {
                        return Err(unexpected(first, WriteRpc::RecordInsightUse));
                    }
                    let insight =
                        newest_with_id(txn, &id).ok_or_else(|| gone(&request_id, "the insight"))?;
                    return Ok((insight, first));
                }
                let now = txn.now;
                let Some(found) = newest_with_id(txn, &id).filter(|i| i.is_valid_at(now)) else {
                    return Err(Error::not_found("valid insight", id));
                };
                super::touch_instance(txn, &instance)?;
                let mut insight = (*found).clone();
                insight.uses += 1;
                insight.valid_until = insight
                    .valid_until
                    .max((now + USE_EXTENSION_MS).min(insight.created_at + MAX_LIFETIME_MS));
                Ok((txn.put_insight(insight), Applied::RecordInsightUse))
            },
        )
        .await
    }

    /// Ends an insight's validity now (an operator found its assumptions
    /// no longer hold). It is removed at once rather than marked expired:
    /// an expiry stamped "now" by a clock that is ahead would make the
    /// insight valid again once the clock is set back.
    pub async fn invalidate_insight(&self, id: String) -> Result<()> {
        self.write(move |txn| {
            let now = txn.now;
            let Some(found) = txn
                .insights()
                .find(|i| i.id == id && i.is_valid_at(now))
                .cloned()
            else {
                return Err(Error::not_found("valid insight", id));
            };
            txn.remove_insight(found.sequence);
            Ok(())
        })
        .await
    }
}

/// The newest version of the insight with `id`, durable or staged (two
/// uses in one group commit must both count).
fn newest_with_id(txn: &super::Txn<'_>, id: &str) -> Option<Arc<Insight>> {
    let sequence = txn.insights().find(|i| i.id == id)?.sequence;
    txn.insight(sequence)
}

/// What an insight-generation run did.
#[derive(Debug, Clone, Default)]
pub struct GenerationReport {
    pub stored: Vec<Arc<Insight>>,
    pub candidates: usize,
    pub validated: usize,
    pub duplicates: usize,
    pub outcomes_examined: u64,
}

/// Outcomes read from the log per step of a generation run.
const OUTCOME_PAGE: usize = 10_000;
/// The most recent outcomes a generation run examines at most.
const MAX_OUTCOMES_EXAMINED: usize = 500_000;

impl Hub {
    /// Runs insight generation now (see [`crate::domain::insight_gen`]):
    /// reads the outcomes of the retention window and the patterns, stores
    /// each validated insight that no valid insight already states (same
    /// category and title), and publishes it.
    pub async fn generate_insights(
        &self,
        settings: GenerationSettings,
    ) -> Result<GenerationReport> {
        let now = self.now();
        let since = now - self.shared.settings.tuning.retention_days * super::DAY_MS;
        let store = self.shared.store.clone();
        let outcomes = tokio::task::spawn_blocking(move || -> Result<Vec<StrategyOutcome>> {
            let mut recent: std::collections::VecDeque<StrategyOutcome> = Default::default();
            let mut after = 0;
            loop {
                let page = store.outcomes_after(after, OUTCOME_PAGE)?;
                let Some(last) = page.last() else { break };
                after = last.sequence;
                recent.extend(page.into_iter().filter(|o| o.at >= since));
                while recent.len() > MAX_OUTCOMES_EXAMINED {
                    recent.pop_front();
                }
            }
            Ok(recent.into())
        })
        .await
        .map_err(|e| Error::Internal(format!("outcome scan failed: {e}")))??;
        let patterns: Vec<Arc<Pattern>> = self.state().patterns.values().cloned().collect();
        let pattern_refs: Vec<&Pattern> = patterns.iter().map(|p| &**p).collect();
        let generation = insight_gen::generate(&outcomes, &pattern_refs, &settings);
        let ttl = self.shared.settings.insight_ttl_ms;
        let validated = generation.validated.len();
        let (stored, duplicates) = self
            .write(move |txn| {
                let mut stored = Vec::new();
                let mut duplicates = 0;
                for found in generation.validated {
                    let draft = found.draft;
                    let known = txn.insights().any(|i| {
                        i.is_valid_at(txn.now)
                            && i.draft.category == draft.category
                            && i.draft.title == draft.title
                    });
                    if known {
                        duplicates += 1;
                        continue;
                    }
                    let insight = Insight {
                        id: format!("insight_{}", uuid::Uuid::new_v4().simple()),
                        sequence: txn.next_insight_sequence(),
                        valid_until: txn.now + ttl,
                        draft,
                        created_at: txn.now,
                        shared_by: GENERATED_BY.to_string(),
                        uses: 0,
                    };
                    stored.push(txn.put_insight(insight));
                }
                Ok((stored, duplicates))
            })
            .await?;
        tracing::info!(
            candidates = generation.candidates,
            validated,
            stored = stored.len(),
            duplicates,
            outcomes = outcomes.len(),
            "insight generation ran"
        );
        self.shared.metrics.insight_run(stored.len());
        Ok(GenerationReport {
            stored,
            candidates: generation.candidates,
            validated,
            duplicates,
            outcomes_examined: outcomes.len() as u64,
        })
    }
}

/// `shared_by` of the insights the hub derives itself.
pub const GENERATED_BY: &str = "hub";
