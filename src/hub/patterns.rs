//! Plateau patterns: share (deduplicated by signature), match, and record
//! whether acting on a match worked.

use std::sync::Arc;

use super::{Hub, touch_instance};
use crate::domain::matching::{self, PatternMatch};
use crate::domain::model::{Attributes, Metrics, Pattern, PatternShare};
use crate::error::{Error, Result};

impl Hub {
    /// Stores a pattern share. Returns the pattern and whether it is new.
    pub async fn share_pattern(
        &self,
        caller: &str,
        share: PatternShare,
    ) -> Result<(Arc<Pattern>, bool)> {
        let caller = caller.to_string();
        self.write(move |txn| {
            touch_instance(txn, &caller)?;
            let signature = matching::signature(&share.metrics, &share.environment);
            let id = crate::domain::model::content_id("pattern", &signature);
            let (pattern, new) = match txn.pattern(&id) {
                Some(existing) => {
                    let mut pattern = (*existing).clone();
                    pattern.record_share(&share, &caller, txn.now);
                    (pattern, false)
                }
                None => (Pattern::new(signature, &share, &caller, txn.now), true),
            };
            Ok((txn.put_pattern(pattern), new))
        })
        .await
    }

    /// Patterns matching a metric state, best first.
    pub fn get_patterns(
        &self,
        metrics: &Metrics,
        environment: &Attributes,
        limit: usize,
    ) -> Vec<PatternMatch<Arc<Pattern>>> {
        self.state().pattern_index.rank(metrics, environment, limit)
    }

    /// Records whether acting on pattern `id` worked.
    pub async fn record_pattern_outcome(
        &self,
        caller: &str,
        id: String,
        success: bool,
        strategy: Option<String>,
    ) -> Result<Arc<Pattern>> {
        let caller = caller.to_string();
        self.write(move |txn| {
            let Some(existing) = txn.pattern(&id) else {
                return Err(Error::not_found("pattern", id));
            };
            touch_instance(txn, &caller)?;
            let mut pattern = (*existing).clone();
            pattern.record_outcome(success, strategy.as_deref(), txn.now);
            Ok(txn.put_pattern(pattern))
        })
        .await
    }
}
