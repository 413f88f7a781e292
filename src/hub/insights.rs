//! Insights: share (stamped, deduplicated, published once durable) and list.

use std::sync::Arc;

use super::Hub;
use crate::domain::model::{Insight, InsightCategory, InsightDraft};
use crate::error::{Error, Result};

impl Hub {
    /// Stores and publishes an insight. If an identical insight (category,
    /// title, text) is still valid, returns it with `true` and stores
    /// nothing.
    pub async fn share_insight(
        &self,
        caller: &str,
        draft: InsightDraft,
    ) -> Result<(Arc<Insight>, bool)> {
        let caller = caller.to_string();
        let ttl = self.shared.settings.insight_ttl_ms;
        let max_ttl = self.shared.settings.max_insight_ttl_ms;
        self.write(move |txn| {
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
                if txn.instance(&caller).is_none() {
                    return Err(Error::FailedPrecondition(format!(
                        "instance {caller:?} is not registered; call Register first"
                    )));
                }
                return Ok((existing, true));
            }
            super::touch_instance(txn, &caller)?;
            let insight = Insight {
                id: format!("insight_{}", uuid::Uuid::new_v4().simple()),
                sequence: txn.next_insight_sequence(),
                valid_until: draft.valid_until.unwrap_or(now + ttl),
                draft,
                created_at: now,
                shared_by: caller,
            };
            Ok((txn.put_insight(insight), false))
        })
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
