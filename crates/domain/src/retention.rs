//! What the retention job removes (the seed's "Data Retention"), decided
//! from the records and the time alone so it is tested with any clock.
//!
//! - Patterns not seen for `pattern_days` go; so do patterns seen fewer
//!   than `low_frequency` times and not confirmed for
//!   `unconfirmed_pattern_days`.
//! - Insights past their validity go (they already vanished from reads and
//!   stream replays; sequences are never reused).
//! - Strategy aggregates keep their lifetime figures; their daily evidence
//!   older than the recommendation window is dropped (the daily roll-up).
//! - Failures are kept indefinitely (operators mark them resolved).
//! - A context's plateau model not updated for `context_model_days` (the
//!   hub passes `pattern_days`) goes, as an idle pattern does: a context whose instances left (or one an instance
//!   registered only to make a model of) does not keep a record for ever.
//!   The fleet model stays.
//!
//! Time is what the hub's clock says when the sweep runs:
//!
//! - A forward jump is taken as time having passed: whatever the new
//!   present puts past its expiry goes at the first sweep after it,
//!   nothing before.
//! - A backward jump deletes nothing new — every rule is "older than",
//!   measured from the clock's present — and records not yet swept stay
//!   until the clock reaches their expiry again.
//! - A record stamped while the clock was ahead therefore lives until the
//!   clock reaches its stamped expiry, longer than it should by however
//!   far the clock was ahead. Re-dating such records is not safe: a sweep
//!   cannot tell a clock that was ahead then from one that is behind now,
//!   and in the second case re-dating would delete data early.
//! - The logs are trimmed by the order records were made in, so one record
//!   with a future stamp holds nothing else back (see
//!   the store's `Store::first_sequence_at`).

use std::sync::Arc;

use super::federated::ModelRecord;
use super::model::{DayBucket, Insight, Pattern, StrategyRecord, UnixMillis, day_of};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The retention rules' parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub pattern_days: i64,
    pub unconfirmed_pattern_days: i64,
    pub low_frequency: u64,
    /// Days of daily evidence a strategy aggregate keeps.
    pub evidence_days: i64,
    /// Days a context model may go without an update (0: for ever).
    pub context_model_days: i64,
}

/// What one sweep removes or rewrites.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    pub patterns: Vec<String>,
    pub insights: Vec<u64>,
    /// Aggregates with their expired days dropped.
    pub strategies: Vec<StrategyRecord>,
    /// Context models idle for `context_model_days`.
    pub context_models: Vec<String>,
}

impl Sweep {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
            && self.insights.is_empty()
            && self.strategies.is_empty()
            && self.context_models.is_empty()
    }
}

/// The context models idle for longer than `context_model_days` at `now`
/// (the fleet models, whose names carry no context, are never idle here).
pub fn idle_context_models<'a>(
    models: impl IntoIterator<Item = &'a Arc<ModelRecord>>,
    rules: &Rules,
    now: UnixMillis,
) -> Vec<String> {
    models
        .into_iter()
        .filter(|m| {
            rules.context_model_days > 0
                && m.base_name() != m.name
                && now - m.updated > rules.context_model_days * DAY_MS
        })
        .map(|m| m.name.clone())
        .collect()
}

/// Whether a pattern has expired at `now`.
pub fn pattern_expired(pattern: &Pattern, rules: &Rules, now: UnixMillis) -> bool {
    let idle = now - pattern.last_seen;
    idle > rules.pattern_days * DAY_MS
        || (pattern.frequency < rules.low_frequency
            && idle > rules.unconfirmed_pattern_days * DAY_MS)
}

/// Plans a sweep over the given records at `now`.
pub fn plan<'a>(
    patterns: impl IntoIterator<Item = &'a Arc<Pattern>>,
    insights: impl IntoIterator<Item = &'a Arc<Insight>>,
    strategies: impl IntoIterator<Item = &'a Arc<StrategyRecord>>,
    models: impl IntoIterator<Item = &'a Arc<ModelRecord>>,
    rules: &Rules,
    now: UnixMillis,
) -> Sweep {
    let today = day_of(now);
    Sweep {
        context_models: idle_context_models(models, rules, now),
        patterns: patterns
            .into_iter()
            .filter(|p| pattern_expired(p, rules, now))
            .map(|p| p.id.clone())
            .collect(),
        insights: insights
            .into_iter()
            .filter(|i| !i.is_valid_at(now))
            .map(|i| i.sequence)
            .collect(),
        strategies: strategies
            .into_iter()
            .filter(|r| {
                let old = |window: &[DayBucket]| {
                    window.iter().any(|b| b.day <= today - rules.evidence_days)
                };
                old(&r.window) || r.excess.values().any(|e| old(&e.window))
            })
            .map(|r| {
                let mut rolled = (**r).clone();
                let cutoff = today - rules.evidence_days;
                rolled.window.retain(|b| b.day > cutoff);
                for excess in rolled.excess.values_mut() {
                    excess.window.retain(|b| b.day > cutoff);
                }
                rolled
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::signature;
    use crate::model::{Attributes, MetricState, Metrics, PatternShare};

    fn pattern(frequency: u64, last_seen_days: i64) -> Arc<Pattern> {
        let metrics = Metrics::from([(
            "m".to_string(),
            MetricState {
                value: 0.5,
                stuck: true,
            },
        )]);
        let share = PatternShare {
            metrics: metrics.clone(),
            cycles_until_plateau: 1,
            recovery_strategies: vec![],
            environment: Attributes::new(),
            target_metric: None,
        };
        let mut p = Pattern::new(signature(&metrics, &Attributes::new()), &share, "i", 0);
        p.frequency = frequency;
        p.last_seen = last_seen_days * DAY_MS;
        Arc::new(p)
    }

    const RULES: Rules = Rules {
        pattern_days: 30,
        unconfirmed_pattern_days: 7,
        low_frequency: 3,
        evidence_days: 7,
        context_model_days: 30,
    };

    #[test]
    fn idle_context_models_go_and_the_fleet_model_stays() {
        let now = 40 * DAY_MS;
        let model = |name: &str, updated_days: i64| {
            Arc::new(ModelRecord::new(name, 2, updated_days * DAY_MS))
        };
        let models = [
            model("plateau", 0),
            model("plateau@gpu=a100", 9),
            model("plateau@gpu=h100", 11),
        ];
        // RULES.context_model_days is 30: idle for 31 days goes, for 29 stays.
        let sweep = plan([], [], [], &models, &RULES, now);
        assert_eq!(sweep.context_models, vec!["plateau@gpu=a100".to_string()]);
        assert!(!sweep.is_empty());
        assert!(idle_context_models(&models, &RULES, 20 * DAY_MS).is_empty());
        // A sweep logged before context models were retained keeps them.
        let before = Rules {
            context_model_days: 0,
            ..RULES
        };
        assert!(idle_context_models(&models, &before, now).is_empty());
    }

    #[test]
    fn patterns_expire_by_age_and_confirmation() {
        let now = 40 * DAY_MS;
        assert!(
            !pattern_expired(&pattern(1, 35), &RULES, now),
            "5 days idle, unconfirmed: kept"
        );
        assert!(
            pattern_expired(&pattern(1, 32), &RULES, now),
            "8 days idle, unconfirmed: gone"
        );
        assert!(
            !pattern_expired(&pattern(5, 32), &RULES, now),
            "confirmed: kept"
        );
        assert!(
            pattern_expired(&pattern(50, 9), &RULES, now),
            "31 days idle: gone"
        );
        // A clock that went back deletes nothing.
        assert!(!pattern_expired(&pattern(1, 32), &RULES, 33 * DAY_MS));
    }
}
