//! Plateau-pattern identity and matching. A pattern's identity is its
//! canonical signature (metric values rounded to a grid, stuck flags, the
//! environment); matching ranks exact signatures first and then patterns
//! whose metric state is close to the query's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::{Attributes, MetricState, Metrics, Pattern};
use super::recommend::Recommendation;
use super::stats::laplace_rate;

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

/// How close two states of one metric are: 1 − |Δvalue|, halved when the
/// stuck flags differ.
fn closeness(a: &MetricState, b: &MetricState) -> f64 {
    let closeness = 1.0 - (a.value - b.value).abs().min(1.0);
    if a.stuck == b.stuck {
        closeness
    } else {
        closeness / 2.0
    }
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
            total += closeness(sa, sb);
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

/// Acted-on matches and how they turned out, by similarity: what turns a
/// pattern's own outcome record into a calibrated confidence.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MatchCalibration {
    /// (successes, trials) for similarity < 0.7, < 0.8, < 0.9, < 1 and exact.
    pub bins: [(u64, u64); 5],
}

/// Pseudo-observations a pattern's own outcomes are shrunk with.
const CALIBRATION_STRENGTH: f64 = 4.0;

impl MatchCalibration {
    fn bin(similarity: f64, exact: bool) -> usize {
        if exact || similarity >= 1.0 {
            4
        } else {
            [0.7, 0.8, 0.9]
                .iter()
                .take_while(|t| similarity >= **t)
                .count()
        }
    }

    /// Records how acting on a match of this similarity turned out.
    pub fn record(&mut self, similarity: f64, success: bool) {
        let bin = &mut self.bins[Self::bin(similarity, false)];
        bin.0 += u64::from(success);
        bin.1 += 1;
    }

    /// How often acting on matches this similar worked (Laplace rate).
    pub fn rate(&self, similarity: f64, exact: bool) -> f64 {
        let (s, n) = self.bins[Self::bin(similarity, exact)];
        laplace_rate(s, n)
    }

    /// Probability that acting on `pattern`, matched at `similarity`,
    /// works: its own outcomes shrunk towards the rate for matches this
    /// similar.
    pub fn confidence(&self, pattern: &Pattern, similarity: f64, exact: bool) -> f64 {
        let prior = self.rate(similarity, exact);
        let n = (pattern.successes + pattern.failures) as f64;
        (pattern.successes as f64 + CALIBRATION_STRENGTH * prior) / (n + CALIBRATION_STRENGTH)
    }
}

/// A recovery strategy of a pattern, ranked for the caller's metric.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryEstimate {
    pub strategy: String,
    pub suggested: u64,
    pub successes: u64,
    pub failures: u64,
    /// The pattern's record for this strategy shrunk towards the fleet's
    /// estimate for the metric (probability of success).
    pub success_rate: f64,
    pub expected_delta: f64,
}

/// Ranks a pattern's recovery strategies. With a target metric, each
/// candidate — what was recorded for the pattern on that metric, and every
/// strategy the fleet has evidence for on it (`fleet`, evaluated at the
/// caller's state) — gets the pattern's own success record shrunk towards
/// the fleet's estimate, and they are ordered by expected delta net of the
/// damage the strategy risks to other metrics. Without a target, the
/// pattern's own record orders them.
pub fn rank_recoveries(
    pattern: &Pattern,
    target: Option<&str>,
    fleet: &[Recommendation],
) -> Vec<RecoveryEstimate> {
    let Some(target) = target else {
        return pattern
            .ranked_recovery()
            .into_iter()
            .map(|(strategy, stat)| RecoveryEstimate {
                strategy: strategy.to_string(),
                suggested: stat.suggested,
                successes: stat.successes,
                failures: stat.failures,
                success_rate: stat.success_rate(),
                expected_delta: 0.0,
            })
            .collect();
    };
    let empty = Default::default();
    let local = pattern.recovery_by_metric.get(target).unwrap_or(&empty);
    let mut names: Vec<&str> = local.keys().map(String::as_str).collect();
    names.extend(fleet.iter().map(|r| r.strategy.as_str()));
    names.sort_unstable();
    names.dedup();
    let mut ranked: Vec<RecoveryEstimate> = names
        .into_iter()
        .map(|name| {
            let stat = local.get(name).copied().unwrap_or_default();
            let prior = fleet.iter().find(|r| r.strategy == name);
            let (p_fleet, up, down, risk) = prior.map_or((0.5, 0.0, 0.0, 0.0), |r| {
                (
                    r.confidence,
                    r.improvement_estimate,
                    r.regression_estimate,
                    r.failure_risk,
                )
            });
            let n = (stat.successes + stat.failures) as f64;
            let p = (stat.successes as f64 + CALIBRATION_STRENGTH * p_fleet)
                / (n + CALIBRATION_STRENGTH);
            RecoveryEstimate {
                strategy: name.to_string(),
                suggested: stat.suggested,
                successes: stat.successes,
                failures: stat.failures,
                success_rate: p,
                expected_delta: p * up + (1.0 - p) * down - risk,
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.expected_delta
            .total_cmp(&a.expected_delta)
            .then(b.success_rate.total_cmp(&a.success_rate))
            .then(a.strategy.cmp(&b.strategy))
    });
    ranked
}

/// One ranked match.
#[derive(Debug, Clone)]
pub struct PatternMatch<P> {
    pub pattern: P,
    pub exact: bool,
    pub similarity: f64,
    pub confidence: f64,
}

/// The signature's grid cell of a value.
fn bucket(value: f64) -> i64 {
    (value / SIGNATURE_RESOLUTION).round() as i64
}

/// Every stored pattern, grouped by (metric names, environment) so that a
/// query computes the environment part of the similarity once per group and
/// the metric part as arithmetic over value vectors — no string-keyed
/// lookups per pattern. Ranking is the same as comparing the query with
/// each pattern one by one.
///
/// Its collections are persistent, so the hub's state (which holds it)
/// clones in constant time for every snapshot it publishes.
#[derive(Debug, Clone, Default)]
pub struct PatternIndex {
    groups: imbl::Vector<Group>,
    group_of: imbl::OrdMap<(Vec<String>, Attributes), usize>,
    slot_of: imbl::OrdMap<String, (usize, usize)>,
}

#[derive(Debug, Clone)]
struct Group {
    names: Vec<String>,
    environment: Attributes,
    members: imbl::Vector<Member>,
}

#[derive(Debug, Clone)]
struct Member {
    /// The pattern's metric states in the group's name order.
    states: Vec<MetricState>,
    /// Their signature cells, for exact matching without strings.
    cells: Vec<(i64, bool)>,
    pattern: Arc<Pattern>,
}

impl PatternIndex {
    /// Adds a pattern or replaces its previous version. A pattern's metric
    /// state never changes after creation (only its counts do).
    pub fn upsert(&mut self, pattern: Arc<Pattern>) {
        if let Some(&(g, m)) = self.slot_of.get(&pattern.id) {
            if let Some(member) = self.groups.get_mut(g).and_then(|g| g.members.get_mut(m)) {
                member.pattern = pattern;
            }
            return;
        }
        let names: Vec<String> = pattern.metrics.keys().cloned().collect();
        let key = (names.clone(), pattern.environment.clone());
        let g = match self.group_of.get(&key) {
            Some(&g) => g,
            None => {
                self.groups.push_back(Group {
                    names,
                    environment: pattern.environment.clone(),
                    members: imbl::Vector::new(),
                });
                let g = self.groups.len() - 1;
                self.group_of.insert(key, g);
                g
            }
        };
        let states: Vec<MetricState> = pattern.metrics.values().copied().collect();
        let cells = states.iter().map(|s| (bucket(s.value), s.stuck)).collect();
        let Some(group) = self.groups.get_mut(g) else {
            return;
        };
        self.slot_of
            .insert(pattern.id.clone(), (g, group.members.len()));
        group.members.push_back(Member {
            states,
            cells,
            pattern,
        });
    }

    /// Forgets a pattern (retention). The group's last member takes its
    /// slot.
    pub fn remove(&mut self, id: &str) {
        let Some((g, m)) = self.slot_of.remove(id) else {
            return;
        };
        let Some(group) = self.groups.get_mut(g) else {
            return;
        };
        let Some(last) = group.members.pop_back() else {
            return;
        };
        if m < group.members.len() {
            self.slot_of.insert(last.pattern.id.clone(), (g, m));
            group.members.set(m, last);
        }
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Ranks the stored patterns against a query: exact signature matches
    /// first, then patterns with similarity ≥ [`MIN_SIMILARITY`], most
    /// similar first, then by calibrated confidence, then by frequency, then
    /// by id so the order is deterministic.
    pub fn rank(
        &self,
        metrics: &Metrics,
        environment: &Attributes,
        calibration: &MatchCalibration,
        limit: usize,
    ) -> Vec<PatternMatch<Arc<Pattern>>> {
        let query: Vec<&MetricState> = metrics.values().collect();
        let query_cells: Vec<(i64, bool)> =
            query.iter().map(|s| (bucket(s.value), s.stuck)).collect();
        let mut matches = Vec::new();
        for group in &self.groups {
            let env_similarity = environment_similarity(environment, &group.environment);
            let same_names = group.names.len() == metrics.len()
                && group.names.iter().zip(metrics.keys()).all(|(a, b)| a == b);
            if !same_names {
                // No exact match is possible; skip the group when even
                // identical values on the shared metrics could not qualify.
                let shared = group
                    .names
                    .iter()
                    .filter(|n| metrics.contains_key(*n))
                    .count();
                let union = group.names.len() + metrics.len() - shared;
                let best = shared as f64 / union.max(1) as f64;
                if METRIC_WEIGHT * best + (1.0 - METRIC_WEIGHT) * env_similarity < MIN_SIMILARITY {
                    continue;
                }
            }
            let same_environment = same_names && group.environment == *environment;
            for member in &group.members {
                let exact = same_environment && member.cells == query_cells;
                let metric_similarity = if same_names {
                    let total: f64 = query
                        .iter()
                        .zip(&member.states)
                        .map(|(q, p)| closeness(q, p))
                        .sum();
                    if query.is_empty() {
                        1.0
                    } else {
                        total / query.len() as f64
                    }
                } else {
                    metric_similarity(metrics, &member.pattern.metrics)
                };
                let similarity = if exact {
                    1.0
                } else {
                    METRIC_WEIGHT * metric_similarity + (1.0 - METRIC_WEIGHT) * env_similarity
                };
                if exact || similarity >= MIN_SIMILARITY {
                    matches.push(PatternMatch {
                        confidence: calibration.confidence(&member.pattern, similarity, exact),
                        pattern: member.pattern.clone(),
                        exact,
                        similarity,
                    });
                }
            }
        }
        matches.sort_by(|a, b| {
            b.exact
                .cmp(&a.exact)
                .then(b.similarity.total_cmp(&a.similarity))
                .then(b.confidence.total_cmp(&a.confidence))
                .then(b.pattern.frequency.cmp(&a.pattern.frequency))
                .then(a.pattern.id.cmp(&b.pattern.id))
        });
        matches.truncate(limit);
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricState, PatternShare};

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
            target_metric: None,
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
        for i in 0..50 {
            similar.record_outcome(&format!("i{i}"), true, None, None, 1);
        }
        let unrelated = pattern(metrics(&[("tx", 0.1, false)]), env.clone());
        let mut index = PatternIndex::default();
        for p in [&similar, &unrelated, &exact] {
            index.upsert(Arc::new(p.clone()));
        }
        let ranked = index.rank(&query, &env, &MatchCalibration::default(), 10);
        assert_eq!(ranked.len(), 2, "unrelated pattern filtered out");
        assert!(ranked[0].exact);
        assert_eq!(ranked[0].pattern.id, exact.id);
        assert!(!ranked[1].exact);
        assert!(ranked[1].similarity > 0.9 && ranked[1].similarity < 1.0);
        // Removing forgets it; the others stay findable.
        let mut smaller = index.clone();
        smaller.remove(&exact.id);
        assert_eq!(smaller.len(), 2);
        assert!(!smaller.rank(&query, &env, &MatchCalibration::default(), 10)[0].exact);
        // Updating a pattern replaces it in place.
        let mut proven = exact.clone();
        proven.record_outcome("i", false, None, None, 2);
        index.upsert(Arc::new(proven));
        assert_eq!(index.len(), 3);
        assert_eq!(
            index.rank(&query, &env, &MatchCalibration::default(), 10)[0]
                .pattern
                .failures,
            1
        );
    }

    #[test]
    fn index_matches_pairwise_similarity_across_name_sets() {
        let env = Attributes::from([("p".to_string(), "x".to_string())]);
        let other_env = Attributes::from([("p".to_string(), "y".to_string())]);
        let candidates = [
            pattern(metrics(&[("a", 0.5, true), ("b", 0.5, false)]), env.clone()),
            pattern(
                metrics(&[("a", 0.6, true), ("b", 0.4, true)]),
                other_env.clone(),
            ),
            pattern(metrics(&[("a", 0.5, true), ("c", 0.5, false)]), env.clone()),
            pattern(metrics(&[("a", 0.5, true)]), env.clone()),
        ];
        let mut index = PatternIndex::default();
        for p in &candidates {
            index.upsert(Arc::new(p.clone()));
        }
        let query = metrics(&[("a", 0.52, true), ("b", 0.45, false)]);
        let ranked = index.rank(&query, &env, &MatchCalibration::default(), 10);
        for m in &ranked {
            let expected = METRIC_WEIGHT * metric_similarity(&query, &m.pattern.metrics)
                + (1.0 - METRIC_WEIGHT) * environment_similarity(&env, &m.pattern.environment);
            if !m.exact {
                assert!((m.similarity - expected).abs() < 1e-12);
            }
        }
        let expected_count = candidates
            .iter()
            .filter(|p| {
                METRIC_WEIGHT * metric_similarity(&query, &p.metrics)
                    + (1.0 - METRIC_WEIGHT) * environment_similarity(&env, &p.environment)
                    >= MIN_SIMILARITY
                    || p.signature == signature(&query, &env)
            })
            .count();
        assert_eq!(ranked.len(), expected_count);
    }
}
