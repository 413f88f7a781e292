//! Golden tests for insight derivation (`domain::insight_gen::generate`).
//!
//! Every `tests/golden/insights/*.json` file is one case. Writing hundreds of
//! outcomes by hand is impractical, so a case describes its history with
//! deterministic generator specs:
//!
//! ```json
//! {
//!   "description": "...",
//!   "outcomes": [{
//!     "strategy": "B", "metric": "m", "count": 120,
//!     "success_every": [1, 1, 1, 0],   // cycled success pattern
//!     "delta_success": 0.2, "delta_failure": -0.02,
//!     "preceded_by": ["A"], "context": {"latency": "high"},
//!     "instance": "i1",                // or "instances": ["i1", "i2"] (cycled)
//!     "value_before": 0.5,
//!     "phase": "all"                   // "early" | "late" | "all"
//!   }],
//!   "patterns": [{
//!     "metric": "m", "values": [0.5, 0.6],   // cycled
//!     "stuck": true, "frequency": 1, "count": 60,
//!     "environment": {"provider": "gpt"}, "extra_metrics": {"n": 0.3},
//!     "instance": "i1", "phase": "all"
//!   }],
//!   "expect": [{
//!     "category": "SEQUENCE", "title": "A before B helps m",
//!     "strategy": "B", "metric": "m",   // outcome-based: data_points is checked
//!     "data_points": 120,                // against the generated outcomes
//!     "instances_covered": 1, "effectiveness": 0.75
//!   }],
//!   "expect_absent_titles": ["..."],
//!   "expect_candidates_at_least": 1,
//!   "expect_candidates": 1,
//!   "expect_validated_count": 1
//! }
//! ```
//!
//! **Timeline.** Each spec's items are spread over a window of the
//! timeline — `all`: [0, 1), `early`: [0, 0.5), `late`: [0.75, 1) — item `i`
//! of `n` at `lo + (hi − lo)·(i + ½)/n`. All items are then ordered by that
//! position (ties by spec order), so specs of equal count and window are
//! interleaved round-robin and unequal ones proportionally: every `all` group
//! is present in both the older 70% and the newer 30% of any
//! (strategy, metric) history, while an `early` group never reaches the
//! held-out part. Outcomes get `sequence` 1, 2, … and `at` one minute apart in
//! that order; patterns get `first_seen` the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use learning_hub::domain::insight_gen::{GenerationSettings, generate};
use learning_hub::domain::matching::signature;
use learning_hub::domain::model::{
    Attributes, InsightCategory, MetricState, Metrics, Pattern, PatternShare, StrategyOutcome,
    UnixMillis, context_key,
};

const T0: UnixMillis = 1_700_000_000_000;
const STEP: UnixMillis = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    #[serde(default)]
    outcomes: Vec<OutcomeSpec>,
    #[serde(default)]
    patterns: Vec<PatternSpec>,
    #[serde(default)]
    expect: Vec<Expected>,
    #[serde(default)]
    expect_absent_titles: Vec<String>,
    #[serde(default)]
    expect_candidates_at_least: Option<usize>,
    #[serde(default)]
    expect_candidates: Option<usize>,
    #[serde(default)]
    expect_validated_count: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    All,
    Early,
    Late,
}

impl Phase {
    fn window(self) -> (f64, f64) {
        match self {
            Phase::All => (0.0, 1.0),
            Phase::Early => (0.0, 0.5),
            Phase::Late => (0.75, 1.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeSpec {
    strategy: String,
    metric: String,
    count: usize,
    success_every: Vec<u8>,
    delta_success: f64,
    delta_failure: f64,
    #[serde(default)]
    preceded_by: Vec<String>,
    #[serde(default)]
    context: Attributes,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    instances: Vec<String>,
    #[serde(default)]
    value_before: Option<f64>,
    #[serde(default)]
    phase: Phase,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternSpec {
    metric: String,
    values: Vec<f64>,
    #[serde(default = "yes")]
    stuck: bool,
    #[serde(default = "one")]
    frequency: u64,
    count: usize,
    #[serde(default)]
    environment: Attributes,
    #[serde(default)]
    extra_metrics: BTreeMap<String, f64>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    phase: Phase,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    category: String,
    title: String,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    data_points: Option<u64>,
    #[serde(default)]
    instances_covered: Option<u32>,
    #[serde(default)]
    effectiveness: Option<f64>,
}

fn category(name: &str) -> InsightCategory {
    match name {
        "CONFIGURATION" => InsightCategory::Configuration,
        "TIMING" => InsightCategory::Timing,
        "SEQUENCE" => InsightCategory::Sequence,
        "FALLBACK" => InsightCategory::Fallback,
        "CONTEXT" => InsightCategory::Context,
        "PREDICTION" => InsightCategory::Prediction,
        other => panic!("unknown category {other:?}"),
    }
}

/// The order in which the items of specs (given as (count, phase)) appear:
/// (spec index, item index) pairs, oldest first.
fn timeline(specs: &[(usize, Phase)]) -> Vec<(usize, usize)> {
    let mut items: Vec<(f64, usize, usize)> = Vec::new();
    for (s, (count, phase)) in specs.iter().enumerate() {
        let (lo, hi) = phase.window();
        for i in 0..*count {
            let position = lo + (hi - lo) * (i as f64 + 0.5) / *count as f64;
            items.push((position, s, i));
        }
    }
    items.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    items.into_iter().map(|(_, s, i)| (s, i)).collect()
}

fn build_outcomes(specs: &[OutcomeSpec]) -> Vec<StrategyOutcome> {
    for spec in specs {
        assert!(
            !spec.success_every.is_empty(),
            "{}: empty success_every",
            spec.strategy
        );
    }
    let order = timeline(&specs.iter().map(|s| (s.count, s.phase)).collect::<Vec<_>>());
    order
        .into_iter()
        .enumerate()
        .map(|(k, (s, i))| {
            let spec = &specs[s];
            let successful = spec.success_every[i % spec.success_every.len()] != 0;
            let instance = if spec.instances.is_empty() {
                spec.instance.clone().unwrap_or_else(|| "i1".to_string())
            } else {
                spec.instances[i % spec.instances.len()].clone()
            };
            StrategyOutcome {
                sequence: k as u64 + 1,
                at: T0 + k as i64 * STEP,
                instance_id: instance,
                strategy: spec.strategy.clone(),
                metric: spec.metric.clone(),
                value_before: spec.value_before.unwrap_or(0.5),
                successful,
                delta: if successful {
                    spec.delta_success
                } else {
                    spec.delta_failure
                },
                condition: String::new(),
                context: spec.context.clone(),
                streak: 0,
                preceded_by: spec.preceded_by.clone(),
            }
        })
        .collect()
}

fn build_patterns(specs: &[PatternSpec]) -> Vec<Pattern> {
    let order = timeline(&specs.iter().map(|s| (s.count, s.phase)).collect::<Vec<_>>());
    order
        .into_iter()
        .enumerate()
        .map(|(k, (s, i))| {
            let spec = &specs[s];
            assert!(!spec.values.is_empty() && spec.frequency >= 1);
            let mut metrics = Metrics::new();
            for (name, value) in &spec.extra_metrics {
                metrics.insert(
                    name.clone(),
                    MetricState {
                        value: *value,
                        stuck: false,
                    },
                );
            }
            metrics.insert(
                spec.metric.clone(),
                MetricState {
                    value: spec.values[i % spec.values.len()],
                    stuck: spec.stuck,
                },
            );
            let share = PatternShare {
                metrics: metrics.clone(),
                cycles_until_plateau: 10,
                recovery_strategies: vec![],
                environment: spec.environment.clone(),
                target_metric: None,
            };
            let instance = spec.instance.clone().unwrap_or_else(|| "i1".to_string());
            let first_seen = T0 + k as i64 * STEP;
            let mut pattern = Pattern::new(
                signature(&metrics, &spec.environment),
                &share,
                &instance,
                first_seen,
            );
            for _ in 1..spec.frequency {
                pattern.record_share(&share, &instance, first_seen);
            }
            pattern
        })
        .collect()
}

fn run_case(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = serde_json::from_str(&text).map_err(|e| format!("bad case file: {e}"))?;
    let outcomes = build_outcomes(&case.outcomes);
    let patterns = build_patterns(&case.patterns);
    let pattern_refs: Vec<&Pattern> = patterns.iter().collect();
    let generation = generate(&outcomes, &pattern_refs, &GenerationSettings::default());

    let mut problems = Vec::new();
    let found: Vec<String> = generation
        .validated
        .iter()
        .map(|g| format!("{:?}: {}", g.draft.category, g.draft.title))
        .collect();
    if generation.outcomes_examined != outcomes.len() {
        problems.push(format!(
            "outcomes_examined {} != {}",
            generation.outcomes_examined,
            outcomes.len()
        ));
    }
    for expected in &case.expect {
        let Some(got) = generation
            .validated
            .iter()
            .find(|g| g.draft.title == expected.title)
        else {
            problems.push(format!("missing insight {:?}", expected.title));
            continue;
        };
        let draft = &got.draft;
        if draft.category != category(&expected.category) {
            problems.push(format!(
                "{:?}: category {:?}, expected {}",
                expected.title, draft.category, expected.category
            ));
        }
        // Outcome-based insights rest on every outcome of their strategy
        // on their metric.
        let counted = match (&expected.strategy, &expected.metric) {
            (Some(strategy), Some(metric)) => Some(
                outcomes
                    .iter()
                    .filter(|o| &o.strategy == strategy && &o.metric == metric)
                    .count() as u64,
            ),
            (None, None) => None,
            _ => {
                problems.push(format!(
                    "{:?}: give both strategy and metric or neither",
                    expected.title
                ));
                None
            }
        };
        // Plateau predictors rest on the shares (frequencies) of their
        // metric's stuck plateaus in their environment.
        let plateau_support = (draft.category == InsightCategory::Prediction).then(|| {
            patterns
                .iter()
                .filter(|p| {
                    p.metrics
                        .iter()
                        .any(|(m, s)| s.stuck && draft.title.starts_with(&format!("{m} plateaus")))
                        && {
                            let env = context_key(&p.environment);
                            if env.is_empty() {
                                draft.title.ends_with("across the fleet")
                            } else {
                                draft.title.ends_with(&format!("under {env}"))
                            }
                        }
                })
                .map(|p| p.frequency)
                .sum::<u64>()
        });
        for (what, want) in [
            ("generated outcomes", counted),
            ("plateau shares", plateau_support),
            ("the case file", expected.data_points),
        ] {
            if let Some(want) = want
                && draft.evidence.data_points != want
            {
                problems.push(format!(
                    "{:?}: data_points {} but {what} say {want}",
                    expected.title, draft.evidence.data_points
                ));
            }
        }
        if counted.is_none() && plateau_support.is_none() && expected.data_points.is_none() {
            problems.push(format!(
                "{:?}: nothing to check data_points against",
                expected.title
            ));
        }
        if let Some(want) = expected.instances_covered
            && draft.evidence.instances_covered != want
        {
            problems.push(format!(
                "{:?}: instances_covered {} != {want}",
                expected.title, draft.evidence.instances_covered
            ));
        }
        if let Some(want) = expected.effectiveness
            && (draft.effectiveness - want).abs() > 1e-9
        {
            problems.push(format!(
                "{:?}: effectiveness {} != {want}",
                expected.title, draft.effectiveness
            ));
        }
    }
    for title in &case.expect_absent_titles {
        if generation.validated.iter().any(|g| &g.draft.title == title) {
            problems.push(format!("unexpected insight {title:?}"));
        }
    }
    if let Some(at_least) = case.expect_candidates_at_least
        && generation.candidates < at_least
    {
        problems.push(format!(
            "{} candidates, expected at least {at_least}",
            generation.candidates
        ));
    }
    if let Some(exact) = case.expect_candidates
        && generation.candidates != exact
    {
        problems.push(format!(
            "{} candidates, expected {exact}",
            generation.candidates
        ));
    }
    if let Some(exact) = case.expect_validated_count
        && generation.validated.len() != exact
    {
        problems.push(format!(
            "{} validated, expected {exact}",
            generation.validated.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n  {}\n  generated ({} candidates): {found:#?}",
            case.description,
            problems.join("\n  "),
            generation.candidates
        ))
    }
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/insights");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn golden_insight_cases() {
    let files = case_files();
    assert!(
        files.len() >= 7,
        "expected the golden cases, found {files:?}"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            run_case(path)
                .err()
                .map(|e| format!("{}: {e}", path.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn timeline_interleaves_round_robin_and_respects_phases() {
    // Equal counts and windows: strict round-robin by spec.
    let order = timeline(&[(3, Phase::All), (3, Phase::All)]);
    assert_eq!(order, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
    // An early group ends before the last 30% of the combined history; a
    // late one starts after the first 70%.
    let order = timeline(&[(40, Phase::Early), (100, Phase::All), (30, Phase::Late)]);
    let cut = (order.len() as f64 * 0.7) as usize;
    assert!(order[cut..].iter().all(|(s, _)| *s != 0));
    assert!(order[..cut - 10].iter().all(|(s, _)| *s != 2));
    let (early, late) = order.split_at(cut);
    assert!(early.iter().any(|(s, _)| *s == 1) && late.iter().any(|(s, _)| *s == 1));
}
