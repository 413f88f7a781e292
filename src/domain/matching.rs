//! Plateau-pattern identity and matching. A pattern's identity is its
//! canonical signature (metric values rounded to a grid, stuck flags, the
//! environment); matching ranks exact signatures first and then patterns
//! whose metric state is close to the query's.

use super::model::{Attributes, Metrics, Pattern};

/// Width of the grid metric values are rounded to in a signature: values
/// closer than this usually describe the same plateau.
pub const SIGNATURE_RESOLUTION: f64 = 0.05;

/// Patterns less similar than this are not worth returning.
pub const MIN_SIMILARITY: f64 = 0.6;

/// Weight of the metric state in the similarity; the environment has the rest.
const METRIC_WEIGHT: f64 = 0.8;

/// The canonical signature of a metric state in an environment.
///
/// Metric names in order, each with its value rounded to the nearest
/// [`SIGNATURE_RESOLUTION`] and `s` (stuck) or `-`, then `|` and the
/// environment's `key=value` pairs in order. Example:
/// `adaptationSpeed=0.50-,learningVelocity=1.00s|provider=claude`.
pub fn signature(metrics: &Metrics, environment: &Attributes) -> String {
    let mut sig = String::new();
    for (i, (name, state)) in metrics.iter().enumerate() {
        if i > 0 {
            sig.push(',');
        }
        let bucket = (state.value / SIGNATURE_RESOLUTION).round() * SIGNATURE_RESOLUTION;
        sig.push_str(&format!(
            "{name}={bucket:.2}{}",
            if state.stuck { 's' } else { '-' }
        ));
    }
    sig.push('|');
    sig.push_str(&super::model::context_key(environment));
    sig
}

/// How alike two metric states are, in [0, 1]: over the union of metric
/// names, the mean of 1 − |Δvalue| (halved when the stuck flags differ),
/// counting 0 for a metric only one side has.
pub fn metric_similarity(a: &Metrics, b: &Metrics) -> f64 {
    let mut union = 0usize;
    let mut total = 0.0;
    for (name, sa) in a {
        union += 1;
        if let Some(sb) = b.get(name) {
            let closeness = 1.0 - (sa.value - sb.value).abs().min(1.0);
            total += if sa.stuck == sb.stuck {
                closeness
            } else {
                closeness / 2.0
            };
        }
    }
    union += b.keys().filter(|k| !a.contains_key(*k)).count();
    if union == 0 {
        1.0
    } else {
        total / union as f64
    }
}

/// How alike two environments are, in [0, 1]: the share of keys (over the
/// union) present on both sides with equal values; 1 when both are empty.
pub fn environment_similarity(a: &Attributes, b: &Attributes) -> f64 {
    let same = a.iter().filter(|(k, v)| b.get(*k) == Some(*v)).count();
    let union = a.len() + b.keys().filter(|k| !a.contains_key(*k)).count();
    if union == 0 {
        1.0
    } else {
        same as f64 / union as f64
    }
}

/// One ranked match.
#[derive(Debug, Clone)]
pub struct PatternMatch<P> {
    pub pattern: P,
    pub exact: bool,
    pub similarity: f64,
    pub confidence: f64,
}

/// Ranks `patterns` against a query: exact signature matches first, then
/// patterns with similarity ≥ [`MIN_SIMILARITY`], each group by confidence
/// (similarity × the pattern's outcome-based reliability), then by
/// frequency, then by id so the order is deterministic.
pub fn rank<P: AsRef<Pattern>>(
    metrics: &Metrics,
    environment: &Attributes,
    patterns: impl IntoIterator<Item = P>,
    limit: usize,
) -> Vec<PatternMatch<P>> {
    let query_signature = signature(metrics, environment);
    let mut matches: Vec<PatternMatch<P>> = patterns
        .into_iter()
        .filter_map(|p| {
            let (exact, similarity, reliability) = {
                let pattern = p.as_ref();
                let exact = pattern.signature == query_signature;
                let similarity = if exact {
                    1.0
                } else {
                    METRIC_WEIGHT * metric_similarity(metrics, &pattern.metrics)
                        + (1.0 - METRIC_WEIGHT)
                            * environment_similarity(environment, &pattern.environment)
                };
                (exact, similarity, pattern.reliability())
            };
            (exact || similarity >= MIN_SIMILARITY).then(|| PatternMatch {
                confidence: similarity * reliability,
                pattern: p,
                exact,
                similarity,
            })
        })
        .collect();
    matches.sort_by(|a, b| {
        b.exact
            .cmp(&a.exact)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(
                b.pattern
                    .as_ref()
                    .frequency
                    .cmp(&a.pattern.as_ref().frequency),
            )
            .then(a.pattern.as_ref().id.cmp(&b.pattern.as_ref().id))
    });
    matches.truncate(limit);
    matches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{MetricState, PatternShare};

    fn metrics(entries: &[(&str, f64, bool)]) -> Metrics {
        entries
            .iter()
            .map(|(n, v, s)| {
                (
                    n.to_string(),
                    MetricState {
                        value: *v,
                        stuck: *s,
                    },
                )
            })
            .collect()
    }

    fn pattern(m: Metrics, env: Attributes) -> Pattern {
        let share = PatternShare {
            metrics: m.clone(),
            cycles_until_plateau: 8,
            recovery_strategies: vec![],
            environment: env.clone(),
        };
        Pattern::new(signature(&m, &env), &share, "i", 0)
    }

    #[test]
    fn signature_is_canonical_and_rounded() {
        let env = Attributes::from([("provider".into(), "claude".into())]);
        let a = metrics(&[("lv", 1.0, true), ("as", 0.48, false)]);
        let b = metrics(&[("as", 0.51, false), ("lv", 0.99, true)]);
        assert_eq!(signature(&a, &env), "as=0.50-,lv=1.00s|provider=claude");
        assert_eq!(signature(&a, &env), signature(&b, &env));
        let c = metrics(&[("lv", 1.0, false), ("as", 0.48, false)]);
        assert_ne!(
            signature(&a, &env),
            signature(&c, &env),
            "stuck flag counts"
        );
        assert_ne!(
            signature(&a, &env),
            signature(&a, &Attributes::new()),
            "environment counts"
        );
    }

    #[test]
    fn similarity_bounds() {
        let a = metrics(&[("lv", 0.5, true)]);
        assert_eq!(metric_similarity(&a, &a), 1.0);
        let far = metrics(&[("x", 0.5, true)]);
        assert_eq!(metric_similarity(&a, &far), 0.0);
        let half = metrics(&[("lv", 0.5, false)]);
        assert_eq!(metric_similarity(&a, &half), 0.5);
        assert_eq!(
            environment_similarity(&Attributes::new(), &Attributes::new()),
            1.0
        );
    }

    #[test]
    fn exact_ranks_before_similar() {
        let env = Attributes::new();
        let query = metrics(&[("lv", 0.9, true), ("as", 0.4, false)]);
        let exact = pattern(
            metrics(&[("lv", 0.91, true), ("as", 0.41, false)]),
            env.clone(),
        );
        let mut similar = pattern(
            metrics(&[("lv", 0.8, true), ("as", 0.4, false)]),
            env.clone(),
        );
        // Even a well-proven similar pattern ranks after the exact one.
        for _ in 0..50 {
            similar.record_outcome(true, None, 1);
        }
        let unrelated = pattern(metrics(&[("tx", 0.1, false)]), env.clone());
        let ranked = rank(&query, &env, [&similar, &unrelated, &exact], 10);
        assert_eq!(ranked.len(), 2, "unrelated pattern filtered out");
        assert!(ranked[0].exact);
        assert_eq!(ranked[0].pattern.id, exact.id);
        assert!(!ranked[1].exact);
        assert!(ranked[1].similarity > 0.9 && ranked[1].similarity < 1.0);
    }
}
