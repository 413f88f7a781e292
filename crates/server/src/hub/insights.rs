//! Insights: share (stamped, deduplicated, published once durable), list,
//! and generate from the fleet's history.

use std::sync::Arc;

use super::{DAY_MS, Hub, wrong_answer};
use crate::domain::command::{Action, Generated, JobStamp};
use crate::domain::fold::{Answer, GENERATED_BY};
use crate::domain::idempotency::RequestTag;
use crate::domain::insight_gen::{self, GenerationSettings};
use crate::domain::model::{Insight, InsightCategory, InsightDraft, Pattern, StrategyOutcome};
use crate::error::{Error, Result};
use crate::store::RowLog;

/// A new insight's id (random: it is fixed in the command, not by the fold).
pub(super) fn new_insight_id() -> String {
    format!("insight_{}", uuid::Uuid::new_v4().simple())
}

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
        let now = self.now();
        let max_ttl = self.shared.settings.max_insight_ttl_ms;
        if let Some(until) = draft.valid_until
            && (until <= now || until > now + max_ttl)
        {
            return Err(Error::invalid(
                "insight.valid_until",
                format!(
                    "must lie in the future and at most {} days ahead",
                    max_ttl / DAY_MS
                ),
            ));
        }
        let answer = self
            .submit(Action::ShareInsight {
                caller: caller.to_string(),
                draft,
                id: new_insight_id(),
                default_ttl_ms: self.shared.settings.insight_ttl_ms,
                request: self.idempotency(request),
                max_bytes_per_instance: self.shared.settings.insight_bytes_per_instance,
            })
            .await?;
        match answer {
            Answer::InsightShared { insight, duplicate } => Ok((insight, duplicate)),
            other => Err(wrong_answer("ShareInsight", other)),
        }
    }

    /// Valid insights: those the hub derived and validated on held-out
    /// history first, then those instances shared; each group most
    /// effective first (ties: newest first).
    ///
    /// A shared insight's effectiveness is what its instance declares, so
    /// however high it claims, it cannot push what the hub measured out of
    /// a top-N.
    pub fn get_insights(
        &self,
        category: Option<InsightCategory>,
        context: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Insight>> {
        let now = self.now();
        let state = self.state();
        let mut insights: Vec<_> = state
            .tables
            .insights
            .values()
            .filter(|i| i.is_valid_at(now))
            .filter(|i| category.is_none_or(|c| i.draft.category == c))
            .filter(|i| context.is_none_or(|c| i.applies_to(c)))
            .cloned()
            .collect();
        let generated = |i: &Insight| i.shared_by == GENERATED_BY;
        insights.sort_by(|a, b| {
            generated(b)
                .cmp(&generated(a))
                .then(b.draft.effectiveness.total_cmp(&a.draft.effectiveness))
                .then(b.sequence.cmp(&a.sequence))
        });
        insights.truncate(limit);
        insights
    }

    /// Counts one use of an insight and extends its validity.
    pub async fn record_insight_use(
        &self,
        caller: &str,
        id: String,
        request: Option<RequestTag>,
    ) -> Result<Arc<Insight>> {
        let answer = self
            .submit(Action::RecordInsightUse {
                caller: caller.to_string(),
                insight_id: id,
                request: self.idempotency(request),
            })
            .await?;
        match answer {
            Answer::InsightUsed { insight } => Ok(insight),
            other => Err(wrong_answer("RecordInsightUse", other)),
        }
    }

    /// Removes a valid insight from reads and replays (operators).
    pub async fn invalidate_insight(&self, id: String) -> Result<()> {
        match self
            .submit(Action::InvalidateInsight { insight_id: id })
            .await?
        {
            Answer::InsightInvalidated => Ok(()),
            other => Err(wrong_answer("InvalidateInsight", other)),
        }
    }
}

/// What one run of insight generation did.
#[derive(Debug, Clone, Default)]
pub struct GenerationReport {
    /// Insights stored and published.
    pub stored: Vec<Arc<Insight>>,
    /// Candidates derived before validation.
    pub candidates: usize,
    /// Candidates that held on the held-out history.
    pub validated: usize,
    /// Validated ones already known (same category and title, still valid).
    pub duplicates: usize,
    /// Outcomes the run examined.
    pub outcomes_examined: u64,
}

/// Outcomes examined per run at most (the newest).
const MAX_OUTCOMES_EXAMINED: usize = 500_000;
const OUTCOME_PAGE: usize = 10_000;

impl Hub {
    /// The outcomes logged since `since` that `keep` accepts (the newest
    /// `limit` of them), in order: the store's, then those still in memory
    /// since the last checkpoint. Read off the runtime's threads.
    pub(super) async fn outcomes_since(
        &self,
        since: i64,
        keep: impl Fn(&StrategyOutcome) -> bool + Send + 'static,
        limit: usize,
    ) -> Result<Vec<StrategyOutcome>> {
        let state = self.state();
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<StrategyOutcome>> {
            let mut recent: std::collections::VecDeque<StrategyOutcome> = Default::default();
            // Only the outcomes from `since` on are read, not the whole log.
            let mut after = store.seek(RowLog::Outcomes, since)?.saturating_sub(1);
            loop {
                let page = store.outcomes_after(after, OUTCOME_PAGE)?;
                let Some(last) = page.last() else { break };
                after = last.sequence;
                recent.extend(page.into_iter().filter(|o| o.at >= since && keep(o)));
                while recent.len() > limit {
                    recent.pop_front();
                }
            }
            for outcome in &state.rows.outcomes {
                if outcome.sequence > after && outcome.at >= since && keep(outcome) {
                    recent.push_back((**outcome).clone());
                }
            }
            while recent.len() > limit {
                recent.pop_front();
            }
            Ok(recent.into())
        })
        .await
        .map_err(|e| Error::Internal(format!("outcome scan failed: {e}")))?
    }

    /// Derives insights from the outcomes of the evidence window and the
    /// stored patterns, keeps those that hold on held-out history, and
    /// stores and publishes the new ones.
    pub async fn generate_insights(
        &self,
        settings: GenerationSettings,
    ) -> Result<GenerationReport> {
        self.generate_insights_for(settings, None).await
    }

    /// [`Hub::generate_insights`] as a run of the periodic job `job` (see
    /// [`Hub::job_turn`]): the fold refuses it if that run is stale.
    pub async fn generate_insights_for(
        &self,
        settings: GenerationSettings,
        job: Option<JobStamp>,
    ) -> Result<GenerationReport> {
        let since = self.now() - self.shared.settings.tuning.retention_days * DAY_MS;
        let outcomes = self
            .outcomes_since(since, |_| true, MAX_OUTCOMES_EXAMINED)
            .await?;
        let patterns: Vec<Arc<Pattern>> = self.state().tables.patterns.values().cloned().collect();
        let pattern_refs: Vec<&Pattern> = patterns.iter().map(|p| &**p).collect();
        let generation = insight_gen::generate(&outcomes, &pattern_refs, &settings);
        let validated = generation.validated.len();
        let generated = generation
            .validated
            .into_iter()
            .map(|found| Generated {
                id: new_insight_id(),
                draft: found.draft,
            })
            .collect();
        let answer = self
            .submit(Action::PublishInsights {
                generated,
                ttl_ms: self.shared.settings.insight_ttl_ms,
                by: GENERATED_BY.to_string(),
                job,
            })
            .await?;
        let Answer::InsightsPublished { stored, duplicates } = answer else {
            return Err(wrong_answer("PublishInsights", answer));
        };
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
