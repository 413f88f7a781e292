//! Failure prevention: does a proposed action (apply a strategy to a
//! metric) match a failure the fleet has seen? A failure matches when it was
//! triggered by the same strategy and hit either the targeted metric or any
//! other metric the instance tracks (strategies can reverse metrics they do
//! not target).

use super::model::{FailurePattern, Metrics};

/// One failure the action may trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning<F> {
    pub failure: F,
    pub failure_rate: f64,
    pub message: String,
}

/// Checks the action against `failures`. `applications_of_strategy` is how
/// many outcomes of the strategy (any metric, any context) the hub holds; it
/// turns occurrence counts into rates.
pub fn check_action<F: AsRef<FailurePattern>>(
    strategy: &str,
    metric: &str,
    metrics: &Metrics,
    failures: impl IntoIterator<Item = F>,
    applications_of_strategy: u64,
) -> Vec<Warning<F>> {
    let mut warnings: Vec<Warning<F>> = failures
        .into_iter()
        .filter(|f| {
            let f = f.as_ref();
            f.strategy == strategy && (f.metric == metric || metrics.contains_key(&f.metric))
        })
        .map(|f| {
            let pattern = f.as_ref();
            let failure_rate = if applications_of_strategy == 0 {
                1.0
            } else {
                (pattern.occurrences as f64 / applications_of_strategy as f64).min(1.0)
            };
            let message = format!(
                "applying {strategy} has led to {} {} of {} ({} report(s), failure rate {:.2}){}",
                pattern.failure_type.as_str().replace('_', " "),
                if pattern.occurrences == 1 {
                    "failure"
                } else {
                    "failures"
                },
                pattern.metric,
                pattern.occurrences,
                failure_rate,
                pattern
                    .triggers
                    .last()
                    .map(|t| format!("; latest trigger: {t}"))
                    .unwrap_or_default(),
            );
            Warning {
                failure: f,
                failure_rate,
                message,
            }
        })
        .collect();
    warnings.sort_by(|a, b| {
        b.failure_rate
            .total_cmp(&a.failure_rate)
            .then(
                b.failure
                    .as_ref()
                    .occurrences
                    .cmp(&a.failure.as_ref().occurrences),
            )
            .then(a.failure.as_ref().id.cmp(&b.failure.as_ref().id))
    });
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{FailureReport, FailureType, MetricState};

    fn failure(metric: &str, strategy: &str) -> FailurePattern {
        FailurePattern::new(
            &FailureReport {
                failure_type: FailureType::MetricReversal,
                trigger: format!("{metric} dropped after {strategy}"),
                metric: metric.into(),
                strategy: strategy.into(),
                recovery: vec![],
                prevention: vec![],
            },
            "i",
            0,
        )
    }

    #[test]
    fn matches_target_and_tracked_metrics() {
        let target = failure("lv", "speed_optimization");
        let side_effect = failure("te", "speed_optimization");
        let untracked = failure("zz", "speed_optimization");
        let other_strategy = failure("lv", "calibration");
        let metrics = Metrics::from([(
            "te".to_string(),
            MetricState {
                value: 0.5,
                stuck: false,
            },
        )]);
        let all = [&target, &side_effect, &untracked, &other_strategy];
        let warnings = check_action("speed_optimization", "lv", &metrics, all, 4);
        let ids: Vec<_> = warnings.iter().map(|w| w.failure.metric.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"lv") && ids.contains(&"te"));
        assert!((warnings[0].failure_rate - 0.25).abs() < 1e-12);
        assert!(warnings[0].message.contains("metric reversal"));
    }

    #[test]
    fn unknown_application_count_means_certain_failure() {
        let f = failure("lv", "s");
        let w = check_action("s", "lv", &Metrics::new(), [&f], 0);
        assert_eq!(w[0].failure_rate, 1.0);
    }
}
