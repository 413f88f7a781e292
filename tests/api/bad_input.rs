//! Bad input, RPC by RPC: every RPC validates what it is sent (empty or
//! oversized ids and names, NaN and infinity, values out of range, too many
//! map entries or list items, unknown ids and enum numbers) and answers with
//! the right status code and a message naming the field; a rejected request
//! stores nothing; nothing panics and the hub keeps serving.

use crate::common;

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::*;
use learning_hub::{client::HubClient, pb};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// One call to any RPC
// ---------------------------------------------------------------------------

/// A request to one RPC.
enum Call {
    Register(pb::RegisterRequest),
    ListInstances(pb::ListInstancesRequest),
    SharePattern(pb::SharePatternRequest),
    GetPatterns(pb::GetPatternsRequest),
    RecordPatternOutcome(pb::RecordPatternOutcomeRequest),
    ShareStrategy(pb::ShareStrategyRequest),
    GetStrategies(pb::GetStrategiesRequest),
    GetOptimalCombination(pb::GetOptimalCombinationRequest),
    ShareInsight(pb::ShareInsightRequest),
    GetInsights(pb::GetInsightsRequest),
    SubscribeInsights(pb::SubscribeInsightsRequest),
    ShareFailure(pb::ShareFailureRequest),
    GetFailures(pb::GetFailuresRequest),
    CheckAction(pb::CheckActionRequest),
    ShareConfiguration(pb::ShareConfigurationRequest),
    Bootstrap(pb::BootstrapRequest),
}

impl Call {
    fn rpc(&self) -> &'static str {
        match self {
            Call::Register(_) => "Register",
            Call::ListInstances(_) => "ListInstances",
            Call::SharePattern(_) => "SharePattern",
            Call::GetPatterns(_) => "GetPatterns",
            Call::RecordPatternOutcome(_) => "RecordPatternOutcome",
            Call::ShareStrategy(_) => "ShareStrategy",
            Call::GetStrategies(_) => "GetStrategies",
            Call::GetOptimalCombination(_) => "GetOptimalCombination",
            Call::ShareInsight(_) => "ShareInsight",
            Call::GetInsights(_) => "GetInsights",
            Call::SubscribeInsights(_) => "SubscribeInsights",
            Call::ShareFailure(_) => "ShareFailure",
            Call::GetFailures(_) => "GetFailures",
            Call::CheckAction(_) => "CheckAction",
            Call::ShareConfiguration(_) => "ShareConfiguration",
            Call::Bootstrap(_) => "Bootstrap",
        }
    }

    /// Sends the request; `Ok` means the hub accepted it.
    async fn send(self, client: &HubClient) -> Result<(), Status> {
        match self {
            Call::Register(r) => client.register(r).await.map(drop),
            Call::ListInstances(r) => client.list_instances(r).await.map(drop),
            Call::SharePattern(r) => client.share_pattern(r).await.map(drop),
            Call::GetPatterns(r) => client.get_patterns(r).await.map(drop),
            Call::RecordPatternOutcome(r) => client.record_pattern_outcome(r).await.map(drop),
            Call::ShareStrategy(r) => client.share_strategy(r).await.map(drop),
            Call::GetStrategies(r) => client.get_strategies(r).await.map(drop),
            Call::GetOptimalCombination(r) => client.get_optimal_combination(r).await.map(drop),
            Call::ShareInsight(r) => client.share_insight(r).await.map(drop),
            Call::GetInsights(r) => client.get_insights(r).await.map(drop),
            Call::SubscribeInsights(r) => client.subscribe_insights_once(r).await.map(drop),
            Call::ShareFailure(r) => client.share_failure(r).await.map(drop),
            Call::GetFailures(r) => client.get_failures(r).await.map(drop),
            Call::CheckAction(r) => client.check_action(r).await.map(drop),
            Call::ShareConfiguration(r) => client.share_configuration(r).await.map(drop),
            Call::Bootstrap(r) => client.bootstrap(r).await.map(drop),
        }
    }
}

/// Which client sends the request.
#[derive(Clone, Copy)]
enum Who {
    /// `inst-a`, registered.
    Registered,
    /// `inst-b`, with a valid certificate but never registered.
    Unregistered,
    /// The operator: reads everything, shares nothing.
    Operator,
}

/// One bad request and the answer it must get.
struct Case {
    name: &'static str,
    who: Who,
    call: Call,
    code: Code,
    /// For InvalidArgument: the field path the message must start with
    /// (`"{field}: …"`). For other codes: text the message must contain.
    field: String,
}

fn case(name: &'static str, call: Call, code: Code, field: impl Into<String>) -> Case {
    Case {
        name,
        who: Who::Registered,
        call,
        code,
        field: field.into(),
    }
}

/// An InvalidArgument case from the registered instance.
fn invalid(name: &'static str, call: Call, field: impl Into<String>) -> Case {
    case(name, call, Code::InvalidArgument, field)
}

struct Clients {
    registered: HubClient,
    unregistered: HubClient,
    operator: HubClient,
}

/// Runs `case` and describes what went wrong, if anything.
async fn check(clients: &Clients, case: Case) -> Option<String> {
    let client = match case.who {
        Who::Registered => &clients.registered,
        Who::Unregistered => &clients.unregistered,
        Who::Operator => &clients.operator,
    };
    let rpc = case.call.rpc();
    let label = format!("[{}] {rpc}", case.name);
    let answer = match tokio::time::timeout(Duration::from_secs(10), case.call.send(client)).await {
        Err(_) => return Some(format!("{label}: no answer within 10 s")),
        Ok(answer) => answer,
    };
    let status = match answer {
        Ok(()) => {
            return Some(format!(
                "{label}: accepted, expected {:?} naming {:?}",
                case.code, case.field
            ));
        }
        Err(status) => status,
    };
    let mut problems = Vec::new();
    if status.code() != case.code {
        problems.push(format!(
            "code {:?}, expected {:?}",
            status.code(),
            case.code
        ));
    }
    let named = if case.code == Code::InvalidArgument {
        status.message().starts_with(&format!("{}: ", case.field))
    } else {
        status.message().contains(&case.field)
    };
    if !named {
        problems.push(format!("message does not name {:?}", case.field));
    }
    if status.message().len() > 400 {
        problems.push(format!(
            "message is {} bytes long (echoes the input?)",
            status.message().len()
        ));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{label}: {} (got {:?} {:?})",
            problems.join("; "),
            status.code(),
            status.message()
        )
    })
}

// ---------------------------------------------------------------------------
// Valid requests to break one field of
// ---------------------------------------------------------------------------

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// `n` distinct valid names.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("name_{i:02}")).collect()
}

/// An attribute map with `n` valid entries.
fn attrs(n: usize) -> BTreeMap<String, String> {
    names(n).into_iter().map(|k| (k, "v".into())).collect()
}

fn attr(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), value.to_string())])
}

fn metrics(entries: &[(&str, f64)]) -> BTreeMap<String, pb::MetricState> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), metric(*v, true)))
        .collect()
}

/// A metric map with `n` valid entries.
fn many_metrics(n: usize) -> BTreeMap<String, pb::MetricState> {
    names(n)
        .into_iter()
        .map(|k| (k, metric(0.5, false)))
        .collect()
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn params(entries: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn register(id: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance_id: id.into(),
        region: "test".into(),
        ..Default::default()
    }
}

fn pattern() -> pb::SharePatternRequest {
    pb::SharePatternRequest {
        metrics: metrics(&[("learningVelocity", 0.4)]),
        cycles_until_plateau: 12,
        recovery_strategies: vec!["novelty_injection".into()],
        environment: attr("provider", "claude"),
        ..Default::default()
    }
}

fn patterns_query() -> pb::GetPatternsRequest {
    pb::GetPatternsRequest {
        metrics: metrics(&[("learningVelocity", 0.4)]),
        ..Default::default()
    }
}

fn outcome(pattern_id: &str) -> pb::RecordPatternOutcomeRequest {
    pb::RecordPatternOutcomeRequest {
        pattern_id: pattern_id.into(),
        success: true,
        ..Default::default()
    }
}

fn strategy() -> pb::ShareStrategyRequest {
    strategy_outcome("novelty_injection", "learningVelocity", true, 0.1)
}

fn strategies_query() -> pb::GetStrategiesRequest {
    pb::GetStrategiesRequest {
        metric: "learningVelocity".into(),
        current_value: 0.5,
        ..Default::default()
    }
}

fn combination() -> pb::GetOptimalCombinationRequest {
    pb::GetOptimalCombinationRequest {
        metrics: metrics(&[("learningVelocity", 0.4)]),
        budget: 2.0,
        ..Default::default()
    }
}

fn good_insight() -> pb::Insight {
    insight("cooldown helps").insight.unwrap()
}

fn share_insight(insight: pb::Insight) -> Call {
    Call::ShareInsight(pb::ShareInsightRequest {
        insight: Some(insight),
        ..Default::default()
    })
}

fn failure() -> pb::ShareFailureRequest {
    pb::ShareFailureRequest {
        failure_type: pb::FailureType::MetricReversal as i32,
        trigger: "learningVelocity dropped 0.2 after speed_optimization".into(),
        context: Some(pb::FailureContext {
            metric: "learningVelocity".into(),
            strategy: "speed_optimization".into(),
        }),
        recovery: vec![pb::RecoveryAttempt {
            method: "apply_consolidation".into(),
            succeeded: true,
            cycles_to_recover: 3,
        }],
        prevention: vec!["check the metric first".into()],
        ..Default::default()
    }
}

fn failure_context(metric: &str, strategy: &str) -> Option<pb::FailureContext> {
    Some(pb::FailureContext {
        metric: metric.into(),
        strategy: strategy.into(),
    })
}

fn check_action() -> pb::CheckActionRequest {
    pb::CheckActionRequest {
        strategy: "speed_optimization".into(),
        metric: "learningVelocity".into(),
        ..Default::default()
    }
}

fn configuration() -> pb::ShareConfigurationRequest {
    pb::ShareConfigurationRequest {
        context: attr("provider", "claude"),
        parameters: params(vec![("cycle_interval_ms", number(600_000.0))]),
        effectiveness: 0.8,
        data_points: 10,
        ..Default::default()
    }
}

fn alternative(name: &str, effectiveness: f64, risk: f64) -> pb::ConfigAlternative {
    pb::ConfigAlternative {
        name: name.into(),
        effectiveness,
        risk,
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    use Call::*;
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let past = Timestamp {
        seconds: now_secs() - 3600,
        nanos: 0,
    };
    let too_far = Timestamp {
        seconds: now_secs() + 60 * 24 * 3600,
        nanos: 0,
    };
    let unknown_pattern = "pattern_00000000000000000000000000000000";

    vec![
        // --- Register -----------------------------------------------------
        invalid("empty instance_id", Register(register("")), "instance_id"),
        invalid(
            "129-char instance_id",
            Register(register(&long(129))),
            "instance_id",
        ),
        invalid(
            "instance_id with a space",
            Register(register("inst a")),
            "instance_id",
        ),
        invalid(
            "empty region",
            Register(pb::RegisterRequest {
                region: String::new(),
                ..register("inst-a")
            }),
            "region",
        ),
        invalid(
            "129-char region",
            Register(pb::RegisterRequest {
                region: long(129),
                ..register("inst-a")
            }),
            "region",
        ),
        invalid(
            "region with a space",
            Register(pb::RegisterRequest {
                region: "us east".into(),
                ..register("inst-a")
            }),
            "region",
        ),
        invalid(
            "33 context entries",
            Register(pb::RegisterRequest {
                context: attrs(33),
                ..register("inst-a")
            }),
            "context",
        ),
        invalid(
            "129-char context key",
            Register(pb::RegisterRequest {
                context: attr(&long(129), "v"),
                ..register("inst-a")
            }),
            "context key",
        ),
        invalid(
            "257-char context value",
            Register(pb::RegisterRequest {
                context: attr("provider", &long(257)),
                ..register("inst-a")
            }),
            "context[provider]",
        ),
        invalid(
            "33 capabilities",
            Register(pb::RegisterRequest {
                capabilities: names(33),
                ..register("inst-a")
            }),
            "capabilities",
        ),
        invalid(
            "empty capability",
            Register(pb::RegisterRequest {
                capabilities: vec!["ok".into(), String::new()],
                ..register("inst-a")
            }),
            "capabilities[1]",
        ),
        Case {
            who: Who::Unregistered,
            ..invalid(
                "unregistered instance, bad region",
                Register(pb::RegisterRequest {
                    region: "bad region".into(),
                    ..register("inst-b")
                }),
                "region",
            )
        },
        case(
            "instance_id of another instance",
            Register(register("inst-c")),
            Code::PermissionDenied,
            "instance_id",
        ),
        // --- ListInstances ------------------------------------------------
        invalid(
            "region with a space",
            ListInstances(pb::ListInstancesRequest {
                region: "us east".into(),
                ..Default::default()
            }),
            "region",
        ),
        invalid(
            "129-char after_instance_id",
            ListInstances(pb::ListInstancesRequest {
                after_instance_id: long(129),
                ..Default::default()
            }),
            "after_instance_id",
        ),
        invalid(
            "limit over 1000",
            ListInstances(pb::ListInstancesRequest {
                limit: 1001,
                ..Default::default()
            }),
            "limit",
        ),
        // --- SharePattern -------------------------------------------------
        invalid(
            "no metrics",
            SharePattern(pb::SharePatternRequest {
                metrics: BTreeMap::new(),
                ..pattern()
            }),
            "metrics",
        ),
        invalid(
            "33 metrics",
            SharePattern(pb::SharePatternRequest {
                metrics: many_metrics(33),
                ..pattern()
            }),
            "metrics",
        ),
        invalid(
            "metric value -0.1",
            SharePattern(pb::SharePatternRequest {
                metrics: metrics(&[("learningVelocity", -0.1)]),
                ..pattern()
            }),
            "metrics[learningVelocity].value",
        ),
        invalid(
            "metric value NaN",
            SharePattern(pb::SharePatternRequest {
                metrics: metrics(&[("learningVelocity", nan)]),
                ..pattern()
            }),
            "metrics[learningVelocity].value",
        ),
        invalid(
            "empty metric name",
            SharePattern(pb::SharePatternRequest {
                metrics: metrics(&[("", 0.5)]),
                ..pattern()
            }),
            "metrics key",
        ),
        invalid(
            "129-char metric name",
            SharePattern(pb::SharePatternRequest {
                metrics: metrics(&[(&long(129), 0.5)]),
                ..pattern()
            }),
            "metrics key",
        ),
        invalid(
            "cycles_until_plateau over 1,000,000",
            SharePattern(pb::SharePatternRequest {
                cycles_until_plateau: 1_000_001,
                ..pattern()
            }),
            "cycles_until_plateau",
        ),
        invalid(
            "33 recovery strategies",
            SharePattern(pb::SharePatternRequest {
                recovery_strategies: names(33),
                ..pattern()
            }),
            "recovery_strategies",
        ),
        invalid(
            "recovery strategy with a space",
            SharePattern(pb::SharePatternRequest {
                recovery_strategies: vec!["novelty injection".into()],
                ..pattern()
            }),
            "recovery_strategies[0]",
        ),
        invalid(
            "257-char environment value",
            SharePattern(pb::SharePatternRequest {
                environment: attr("provider", &long(257)),
                ..pattern()
            }),
            "environment[provider]",
        ),
        invalid(
            "33 environment entries",
            SharePattern(pb::SharePatternRequest {
                environment: attrs(33),
                ..pattern()
            }),
            "environment",
        ),
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance",
                SharePattern(pattern()),
                Code::FailedPrecondition,
                "not registered",
            )
        },
        // --- GetPatterns --------------------------------------------------
        invalid(
            "no metrics",
            GetPatterns(pb::GetPatternsRequest {
                metrics: BTreeMap::new(),
                ..patterns_query()
            }),
            "metrics",
        ),
        invalid(
            "metric value +inf",
            GetPatterns(pb::GetPatternsRequest {
                metrics: metrics(&[("learningVelocity", inf)]),
                ..patterns_query()
            }),
            "metrics[learningVelocity].value",
        ),
        invalid(
            "environment key with a space",
            GetPatterns(pb::GetPatternsRequest {
                environment: attr("bad key", "v"),
                ..patterns_query()
            }),
            "environment key",
        ),
        invalid(
            "limit over 100",
            GetPatterns(pb::GetPatternsRequest {
                limit: 101,
                ..patterns_query()
            }),
            "limit",
        ),
        // --- RecordPatternOutcome -----------------------------------------
        invalid(
            "empty pattern_id",
            RecordPatternOutcome(outcome("")),
            "pattern_id",
        ),
        invalid(
            "129-char pattern_id",
            RecordPatternOutcome(outcome(&long(129))),
            "pattern_id",
        ),
        case(
            "unknown pattern_id",
            RecordPatternOutcome(outcome(unknown_pattern)),
            Code::NotFound,
            format!("pattern {unknown_pattern:?} not found"),
        ),
        invalid(
            "metric_name with a space",
            RecordPatternOutcome(pb::RecordPatternOutcomeRequest {
                metric_name: "learning velocity".into(),
                ..outcome(unknown_pattern)
            }),
            "metric_name",
        ),
        invalid(
            "129-char strategy",
            RecordPatternOutcome(pb::RecordPatternOutcomeRequest {
                strategy: long(129),
                ..outcome(unknown_pattern)
            }),
            "strategy",
        ),
        // --- ShareStrategy ------------------------------------------------
        invalid(
            "empty strategy",
            ShareStrategy(pb::ShareStrategyRequest {
                strategy: String::new(),
                ..strategy()
            }),
            "strategy",
        ),
        invalid(
            "129-char strategy",
            ShareStrategy(pb::ShareStrategyRequest {
                strategy: long(129),
                ..strategy()
            }),
            "strategy",
        ),
        invalid(
            "strategy with a space",
            ShareStrategy(pb::ShareStrategyRequest {
                strategy: "novelty injection".into(),
                ..strategy()
            }),
            "strategy",
        ),
        invalid(
            "empty metric",
            ShareStrategy(pb::ShareStrategyRequest {
                metric: String::new(),
                ..strategy()
            }),
            "metric",
        ),
        invalid(
            "129-char metric",
            ShareStrategy(pb::ShareStrategyRequest {
                metric: long(129),
                ..strategy()
            }),
            "metric",
        ),
        invalid(
            "value_before 1.5",
            ShareStrategy(pb::ShareStrategyRequest {
                value_before: 1.5,
                ..strategy()
            }),
            "value_before",
        ),
        invalid(
            "value_before NaN",
            ShareStrategy(pb::ShareStrategyRequest {
                value_before: nan,
                ..strategy()
            }),
            "value_before",
        ),
        invalid(
            "delta -2",
            ShareStrategy(pb::ShareStrategyRequest {
                delta: -2.0,
                ..strategy()
            }),
            "delta",
        ),
        invalid(
            "delta +inf",
            ShareStrategy(pb::ShareStrategyRequest {
                delta: inf,
                ..strategy()
            }),
            "delta",
        ),
        invalid(
            "257-char condition",
            ShareStrategy(pb::ShareStrategyRequest {
                condition: long(257),
                ..strategy()
            }),
            "condition",
        ),
        invalid(
            "condition with a NUL",
            ShareStrategy(pb::ShareStrategyRequest {
                condition: "metric\0already high".into(),
                ..strategy()
            }),
            "condition",
        ),
        invalid(
            "33 context entries",
            ShareStrategy(pb::ShareStrategyRequest {
                context: attrs(33),
                ..strategy()
            }),
            "context",
        ),
        Case {
            who: Who::Unregistered,
            ..invalid(
                "unregistered instance, delta NaN (validated first)",
                ShareStrategy(pb::ShareStrategyRequest {
                    delta: nan,
                    ..strategy()
                }),
                "delta",
            )
        },
        Case {
            who: Who::Operator,
            ..case(
                "operator sharing",
                ShareStrategy(strategy()),
                Code::PermissionDenied,
                "is for instances",
            )
        },
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance",
                ShareStrategy(strategy()),
                Code::FailedPrecondition,
                "not registered",
            )
        },
        // --- GetStrategies ------------------------------------------------
        invalid(
            "empty metric",
            GetStrategies(pb::GetStrategiesRequest {
                metric: String::new(),
                ..strategies_query()
            }),
            "metric",
        ),
        invalid(
            "current_value NaN",
            GetStrategies(pb::GetStrategiesRequest {
                current_value: nan,
                ..strategies_query()
            }),
            "current_value",
        ),
        invalid(
            "current_value 1.5",
            GetStrategies(pb::GetStrategiesRequest {
                current_value: 1.5,
                ..strategies_query()
            }),
            "current_value",
        ),
        invalid(
            "negative budget",
            GetStrategies(pb::GetStrategiesRequest {
                budget: -1.0,
                ..strategies_query()
            }),
            "budget",
        ),
        invalid(
            "budget +inf",
            GetStrategies(pb::GetStrategiesRequest {
                budget: inf,
                ..strategies_query()
            }),
            "budget",
        ),
        invalid(
            "budget over 1e6",
            GetStrategies(pb::GetStrategiesRequest {
                budget: 1e7,
                ..strategies_query()
            }),
            "budget",
        ),
        invalid(
            "33 context entries",
            GetStrategies(pb::GetStrategiesRequest {
                context: attrs(33),
                ..strategies_query()
            }),
            "context",
        ),
        invalid(
            "limit over 100",
            GetStrategies(pb::GetStrategiesRequest {
                limit: 101,
                ..strategies_query()
            }),
            "limit",
        ),
        // --- GetOptimalCombination ----------------------------------------
        invalid(
            "no metrics",
            GetOptimalCombination(pb::GetOptimalCombinationRequest {
                metrics: BTreeMap::new(),
                ..combination()
            }),
            "metrics",
        ),
        invalid(
            "33 metrics",
            GetOptimalCombination(pb::GetOptimalCombinationRequest {
                metrics: many_metrics(33),
                ..combination()
            }),
            "metrics",
        ),
        invalid(
            "budget NaN",
            GetOptimalCombination(pb::GetOptimalCombinationRequest {
                budget: nan,
                ..combination()
            }),
            "budget",
        ),
        invalid(
            "metric value 1.01",
            GetOptimalCombination(pb::GetOptimalCombinationRequest {
                metrics: metrics(&[("learningVelocity", 1.01)]),
                ..combination()
            }),
            "metrics[learningVelocity].value",
        ),
        // --- ShareInsight -------------------------------------------------
        invalid(
            "insight missing",
            ShareInsight(pb::ShareInsightRequest {
                insight: None,
                ..Default::default()
            }),
            "insight",
        ),
        invalid(
            "client-set id",
            share_insight(pb::Insight {
                id: "insight_mine".into(),
                ..good_insight()
            }),
            "insight.id",
        ),
        invalid(
            "client-set sequence",
            share_insight(pb::Insight {
                sequence: 7,
                ..good_insight()
            }),
            "insight.sequence",
        ),
        invalid(
            "client-set created_at",
            share_insight(pb::Insight {
                created_at: Some(Timestamp {
                    seconds: now_secs(),
                    nanos: 0,
                }),
                ..good_insight()
            }),
            "insight.created_at",
        ),
        invalid(
            "category UNSPECIFIED",
            share_insight(pb::Insight {
                category: pb::InsightCategory::Unspecified as i32,
                ..good_insight()
            }),
            "insight.category",
        ),
        invalid(
            "category 99",
            share_insight(pb::Insight {
                category: 99,
                ..good_insight()
            }),
            "insight.category",
        ),
        invalid(
            "empty title",
            share_insight(pb::Insight {
                title: String::new(),
                ..good_insight()
            }),
            "insight.title",
        ),
        invalid(
            "blank title",
            share_insight(pb::Insight {
                title: "   ".into(),
                ..good_insight()
            }),
            "insight.title",
        ),
        invalid(
            "257-char title",
            share_insight(pb::Insight {
                title: long(257),
                ..good_insight()
            }),
            "insight.title",
        ),
        invalid(
            "title with a NUL",
            share_insight(pb::Insight {
                title: "cool\0down".into(),
                ..good_insight()
            }),
            "insight.title",
        ),
        invalid(
            "empty text",
            share_insight(pb::Insight {
                insight: String::new(),
                ..good_insight()
            }),
            "insight.insight",
        ),
        invalid(
            "4097-char text",
            share_insight(pb::Insight {
                insight: long(4097),
                ..good_insight()
            }),
            "insight.insight",
        ),
        invalid(
            "effectiveness 2",
            share_insight(pb::Insight {
                effectiveness: 2.0,
                ..good_insight()
            }),
            "insight.effectiveness",
        ),
        invalid(
            "risk NaN",
            share_insight(pb::Insight {
                risk: nan,
                ..good_insight()
            }),
            "insight.risk",
        ),
        invalid(
            "correlation_strength -1.5",
            share_insight(pb::Insight {
                evidence: Some(pb::InsightEvidence {
                    correlation_strength: -1.5,
                    ..Default::default()
                }),
                ..good_insight()
            }),
            "insight.evidence.correlation_strength",
        ),
        invalid(
            "improvement_observed -inf",
            share_insight(pb::Insight {
                evidence: Some(pb::InsightEvidence {
                    improvement_observed: -inf,
                    ..Default::default()
                }),
                ..good_insight()
            }),
            "insight.evidence.improvement_observed",
        ),
        invalid(
            "33 applicable contexts",
            share_insight(pb::Insight {
                applicable_contexts: names(33)
                    .into_iter()
                    .map(|context| pb::ApplicableContext {
                        context,
                        threshold: "any".into(),
                    })
                    .collect(),
                ..good_insight()
            }),
            "insight.applicable_contexts",
        ),
        invalid(
            "applicable context with a space",
            share_insight(pb::Insight {
                applicable_contexts: vec![pb::ApplicableContext {
                    context: "high latency".into(),
                    threshold: "> 500ms".into(),
                }],
                ..good_insight()
            }),
            "insight.applicable_contexts[0].context",
        ),
        invalid(
            "257-char applicable context threshold",
            share_insight(pb::Insight {
                applicable_contexts: vec![pb::ApplicableContext {
                    context: "high_latency".into(),
                    threshold: long(257),
                }],
                ..good_insight()
            }),
            "insight.applicable_contexts[0].threshold",
        ),
        invalid(
            "4097-char recommendation",
            share_insight(pb::Insight {
                recommendation: long(4097),
                ..good_insight()
            }),
            "insight.recommendation",
        ),
        invalid(
            "33 alternatives",
            share_insight(pb::Insight {
                alternatives: (0..33)
                    .map(|n| pb::InsightAlternative {
                        insight: format!("alternative {n}"),
                        effectiveness: 0.5,
                    })
                    .collect(),
                ..good_insight()
            }),
            "insight.alternatives",
        ),
        invalid(
            "empty alternative text",
            share_insight(pb::Insight {
                alternatives: vec![pb::InsightAlternative {
                    insight: String::new(),
                    effectiveness: 0.5,
                }],
                ..good_insight()
            }),
            "insight.alternatives[0].insight",
        ),
        invalid(
            "alternative effectiveness 2",
            share_insight(pb::Insight {
                alternatives: vec![pb::InsightAlternative {
                    insight: "try later".into(),
                    effectiveness: 2.0,
                }],
                ..good_insight()
            }),
            "insight.alternatives[0].effectiveness",
        ),
        invalid(
            "valid_until in the past",
            share_insight(pb::Insight {
                valid_until: Some(past),
                ..good_insight()
            }),
            "insight.valid_until",
        ),
        invalid(
            "valid_until 60 days ahead",
            share_insight(pb::Insight {
                valid_until: Some(too_far),
                ..good_insight()
            }),
            "insight.valid_until",
        ),
        invalid(
            "valid_until with negative nanos",
            share_insight(pb::Insight {
                valid_until: Some(Timestamp {
                    seconds: now_secs() + 3600,
                    nanos: -1,
                }),
                ..good_insight()
            }),
            "insight.valid_until",
        ),
        invalid(
            "valid_until past year 9999",
            share_insight(pb::Insight {
                valid_until: Some(Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..good_insight()
            }),
            "insight.valid_until",
        ),
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance",
                share_insight(good_insight()),
                Code::FailedPrecondition,
                "not registered",
            )
        },
        // --- GetInsights / SubscribeInsights ------------------------------
        invalid(
            "category 99",
            GetInsights(pb::GetInsightsRequest {
                category: 99,
                ..Default::default()
            }),
            "category",
        ),
        invalid(
            "context with a space",
            GetInsights(pb::GetInsightsRequest {
                context: "high latency".into(),
                ..Default::default()
            }),
            "context",
        ),
        invalid(
            "limit over 1000",
            GetInsights(pb::GetInsightsRequest {
                limit: 1001,
                ..Default::default()
            }),
            "limit",
        ),
        invalid(
            "category 99",
            SubscribeInsights(pb::SubscribeInsightsRequest {
                category: 99,
                ..Default::default()
            }),
            "category",
        ),
        // --- ShareFailure -------------------------------------------------
        invalid(
            "failure_type UNSPECIFIED",
            ShareFailure(pb::ShareFailureRequest {
                failure_type: pb::FailureType::Unspecified as i32,
                ..failure()
            }),
            "failure_type",
        ),
        invalid(
            "failure_type 99",
            ShareFailure(pb::ShareFailureRequest {
                failure_type: 99,
                ..failure()
            }),
            "failure_type",
        ),
        invalid(
            "empty trigger",
            ShareFailure(pb::ShareFailureRequest {
                trigger: String::new(),
                ..failure()
            }),
            "trigger",
        ),
        invalid(
            "context missing",
            ShareFailure(pb::ShareFailureRequest {
                context: None,
                ..failure()
            }),
            "context",
        ),
        invalid(
            "empty context.metric",
            ShareFailure(pb::ShareFailureRequest {
                context: failure_context("", "speed_optimization"),
                ..failure()
            }),
            "context.metric",
        ),
        invalid(
            "context.strategy with a space",
            ShareFailure(pb::ShareFailureRequest {
                context: failure_context("learningVelocity", "speed optimization"),
                ..failure()
            }),
            "context.strategy",
        ),
        invalid(
            "33 recovery attempts",
            ShareFailure(pb::ShareFailureRequest {
                recovery: names(33)
                    .into_iter()
                    .map(|method| pb::RecoveryAttempt {
                        method,
                        succeeded: true,
                        cycles_to_recover: 1,
                    })
                    .collect(),
                ..failure()
            }),
            "recovery",
        ),
        invalid(
            "empty recovery method",
            ShareFailure(pb::ShareFailureRequest {
                recovery: vec![pb::RecoveryAttempt {
                    method: String::new(),
                    succeeded: true,
                    cycles_to_recover: 1,
                }],
                ..failure()
            }),
            "recovery[0].method",
        ),
        invalid(
            "cycles_to_recover over 1,000,000",
            ShareFailure(pb::ShareFailureRequest {
                recovery: vec![pb::RecoveryAttempt {
                    method: "apply_consolidation".into(),
                    succeeded: true,
                    cycles_to_recover: 1_000_001,
                }],
                ..failure()
            }),
            "recovery[0].cycles_to_recover",
        ),
        invalid(
            "33 prevention items",
            ShareFailure(pb::ShareFailureRequest {
                prevention: names(33),
                ..failure()
            }),
            "prevention",
        ),
        invalid(
            "empty prevention item",
            ShareFailure(pb::ShareFailureRequest {
                prevention: vec!["fine".into(), " ".into()],
                ..failure()
            }),
            "prevention[1]",
        ),
        // --- GetFailures --------------------------------------------------
        invalid(
            "failure_type 99",
            GetFailures(pb::GetFailuresRequest {
                failure_type: 99,
                ..Default::default()
            }),
            "failure_type",
        ),
        invalid(
            "129-char metric",
            GetFailures(pb::GetFailuresRequest {
                metric: long(129),
                ..Default::default()
            }),
            "metric",
        ),
        invalid(
            "strategy with a space",
            GetFailures(pb::GetFailuresRequest {
                strategy: "speed optimization".into(),
                ..Default::default()
            }),
            "strategy",
        ),
        invalid(
            "limit over 1000",
            GetFailures(pb::GetFailuresRequest {
                limit: 1001,
                ..Default::default()
            }),
            "limit",
        ),
        // --- CheckAction --------------------------------------------------
        invalid(
            "empty strategy",
            CheckAction(pb::CheckActionRequest {
                strategy: String::new(),
                ..check_action()
            }),
            "strategy",
        ),
        invalid(
            "empty metric",
            CheckAction(pb::CheckActionRequest {
                metric: String::new(),
                ..check_action()
            }),
            "metric",
        ),
        invalid(
            "metric value NaN",
            CheckAction(pb::CheckActionRequest {
                metrics: metrics(&[("transferEfficiency", nan)]),
                ..check_action()
            }),
            "metrics[transferEfficiency].value",
        ),
        invalid(
            "33 metrics",
            CheckAction(pb::CheckActionRequest {
                metrics: many_metrics(33),
                ..check_action()
            }),
            "metrics",
        ),
        // --- ShareConfiguration -------------------------------------------
        invalid(
            "no parameters",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: BTreeMap::new(),
                ..configuration()
            }),
            "parameters",
        ),
        invalid(
            "33 parameters",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: names(33).into_iter().map(|k| (k, number(1.0))).collect(),
                ..configuration()
            }),
            "parameters",
        ),
        invalid(
            "parameter key with a space",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![("cycle interval", number(1.0))]),
                ..configuration()
            }),
            "parameters key",
        ),
        invalid(
            "null parameter",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![(
                    "x",
                    Value {
                        kind: Some(Kind::NullValue(0)),
                    },
                )]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "parameter without a kind",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![("x", Value { kind: None })]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "list parameter",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![(
                    "x",
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![number(1.0)],
                        })),
                    },
                )]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "object parameter",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![(
                    "x",
                    Value {
                        kind: Some(Kind::StructValue(Struct::default())),
                    },
                )]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "NaN parameter",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![("x", number(nan))]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "257-char string parameter",
            ShareConfiguration(pb::ShareConfigurationRequest {
                parameters: params(vec![(
                    "x",
                    Value {
                        kind: Some(Kind::StringValue(long(257))),
                    },
                )]),
                ..configuration()
            }),
            "parameters[x]",
        ),
        invalid(
            "effectiveness 2",
            ShareConfiguration(pb::ShareConfigurationRequest {
                effectiveness: 2.0,
                ..configuration()
            }),
            "effectiveness",
        ),
        invalid(
            "effectiveness NaN",
            ShareConfiguration(pb::ShareConfigurationRequest {
                effectiveness: nan,
                ..configuration()
            }),
            "effectiveness",
        ),
        invalid(
            "data_points over 1,000,000",
            ShareConfiguration(pb::ShareConfigurationRequest {
                data_points: 1_000_001,
                ..configuration()
            }),
            "data_points",
        ),
        invalid(
            "33 context entries",
            ShareConfiguration(pb::ShareConfigurationRequest {
                context: attrs(33),
                ..configuration()
            }),
            "context",
        ),
        invalid(
            "4097-char recommendation",
            ShareConfiguration(pb::ShareConfigurationRequest {
                recommendation: long(4097),
                ..configuration()
            }),
            "recommendation",
        ),
        invalid(
            "33 alternatives",
            ShareConfiguration(pb::ShareConfigurationRequest {
                alternatives: names(33).iter().map(|n| alternative(n, 0.5, 0.5)).collect(),
                ..configuration()
            }),
            "alternatives",
        ),
        invalid(
            "empty alternative name",
            ShareConfiguration(pb::ShareConfigurationRequest {
                alternatives: vec![alternative("", 0.5, 0.5)],
                ..configuration()
            }),
            "alternatives[0].name",
        ),
        invalid(
            "alternative risk 1.5",
            ShareConfiguration(pb::ShareConfigurationRequest {
                alternatives: vec![alternative("aggressive", 0.5, 1.5)],
                ..configuration()
            }),
            "alternatives[0].risk",
        ),
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance",
                ShareConfiguration(configuration()),
                Code::FailedPrecondition,
                "not registered",
            )
        },
        // --- ShareFailure / RecordPatternOutcome (unregistered) -----------
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance, unknown pattern",
                RecordPatternOutcome(outcome(unknown_pattern)),
                Code::NotFound,
                unknown_pattern,
            )
        },
        Case {
            who: Who::Unregistered,
            ..case(
                "unregistered instance",
                ShareFailure(failure()),
                Code::FailedPrecondition,
                "not registered",
            )
        },
        // --- Bootstrap ----------------------------------------------------
        invalid(
            "33 context entries",
            Bootstrap(pb::BootstrapRequest { context: attrs(33) }),
            "context",
        ),
        invalid(
            "context value with a NUL",
            Bootstrap(pb::BootstrapRequest {
                context: attr("provider", "cl\0aude"),
            }),
            "context[provider]",
        ),
        invalid(
            "empty context key",
            Bootstrap(pb::BootstrapRequest {
                context: attr("", "v"),
            }),
            "context key",
        ),
    ]
}

#[tokio::test]
async fn every_rpc_refuses_bad_input_naming_the_field_and_stores_nothing() {
    let hub = TestHub::start().await;
    let a = hub.registered("inst-a").await;
    let op = hub.operator().await;
    let clients = Clients {
        registered: a.clone(),
        unregistered: hub.client("inst-b").await,
        operator: op.clone(),
    };

    let cases = cases();
    let total = cases.len();
    assert!(total >= 40, "only {total} cases");
    let mut failures = Vec::new();
    for case in cases {
        if let Some(failure) = check(&clients, case).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} bad-input cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // A rejected request stores nothing.
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    let counts = [
        ("instances", status.instances, 1),
        ("patterns", status.patterns, 0),
        ("strategy_records", status.strategy_records, 0),
        ("strategy_outcomes", status.strategy_outcomes, 0),
        ("insights", status.insights, 0),
        ("last_insight_sequence", status.last_insight_sequence, 0),
        ("failures", status.failures, 0),
        ("configurations", status.configurations, 0),
    ];
    for (what, got, want) in counts {
        assert_eq!(got, want, "{what} after {total} rejected requests");
    }
    let fleet = op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap();
    let ids: Vec<_> = fleet.instances.iter().map(|i| &i.instance_id).collect();
    assert_eq!(ids, ["inst-a"], "only inst-a is registered");
    let inst_a = &fleet.instances[0];
    assert_eq!(inst_a.region, "test", "a refused Register changed inst-a");
    assert!(inst_a.context.is_empty() && inst_a.capabilities.is_empty());
    assert_eq!(
        inst_a.shared_records, 0,
        "rejected writes were counted as shared records"
    );

    // Nothing panicked: the hub still serves, and valid writes go through.
    let shared = a.share_strategy(strategy()).await.unwrap();
    assert_eq!(shared.record.unwrap().applications, 1);
    let shared = a.share_insight(insight("still serving")).await.unwrap();
    assert!(!shared.duplicate);
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.strategy_outcomes, 1);
    assert_eq!(status.insights, 1);
    assert_eq!(status.last_insight_sequence, 1);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_the_hub_keeps_serving() {
    let hub = TestHub::start().await;
    assert_eq!(hub.config.limits.max_message_bytes, 4 * 1024 * 1024);
    let a = hub.registered("inst-a").await;

    let mut big = insight("huge");
    big.insight.as_mut().unwrap().insight = long(5 * 1024 * 1024);
    let status = a.share_insight(big).await.unwrap_err();
    // tonic refuses a message over max_decoding_message_size with
    // OUT_OF_RANGE ("decoded message length too large").
    assert_eq!(
        status.code(),
        Code::OutOfRange,
        "unexpected answer to a 5 MiB message: {status:?}"
    );
    assert!(
        status.message().contains("too large") && status.message().contains("4194304"),
        "the refusal should name the limit: {:?}",
        status.message()
    );

    // Nothing stored, and the same connection keeps working.
    let op = hub.operator().await;
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.insights, 0);
    assert_eq!(status.last_insight_sequence, 0);
    let shared = a.share_insight(insight("small")).await.unwrap();
    assert_eq!(shared.insight.unwrap().sequence, 1);
    a.share_strategy(strategy()).await.unwrap();
}

/// A `google.protobuf.Value` nested `depth` lists deep.
fn nested_value(depth: usize) -> Value {
    let mut value = number(1.0);
    for _ in 0..depth {
        value = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![value],
            })),
        };
    }
    value
}

/// The encoded body of a ShareConfigurationRequest whose parameter `x` is a
/// list nested `depth` deep, built without recursion (prost's encoder
/// recurses, and would overflow the test's stack at this depth).
fn deeply_nested_request(depth: usize) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn varint_len(n: usize) -> usize {
        let mut out = Vec::new();
        varint(n, &mut out);
        out.len()
    }
    // Bottom-up lengths: Value.list_value (field 6) holds a ListValue whose
    // values (field 1) hold the next Value; the innermost Value is empty.
    let mut value_lens = vec![0usize];
    let mut list_lens = Vec::with_capacity(depth);
    for _ in 0..depth {
        let inner = *value_lens.last().unwrap();
        let list = 1 + varint_len(inner) + inner;
        list_lens.push(list);
        value_lens.push(1 + varint_len(list) + list);
    }
    let value = *value_lens.last().unwrap();
    // parameters (field 2) is a map: an entry with key "x" (1) and value (2).
    let entry = 3 + 1 + varint_len(value) + value;
    let mut out = Vec::with_capacity(entry + 8);
    out.push(0x12);
    varint(entry, &mut out);
    out.extend_from_slice(&[0x0a, 1, b'x', 0x12]);
    varint(value, &mut out);
    for level in (0..depth).rev() {
        out.push(0x32);
        varint(list_lens[level], &mut out);
        out.push(0x0a);
        varint(value_lens[level], &mut out);
    }
    out
}

/// Sends raw bytes as the request of `path`, bypassing the typed stubs.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// prost decodes at most 100 nested messages; deeper input is refused
/// while decoding, before any handler runs, and the hub keeps serving.
/// The sender is told it sent a bad message (INVALID_ARGUMENT, not the
/// INTERNAL of tonic's own codec: see `api::codec`).
fn assert_refused_for_nesting(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the message is not a valid ShareConfigurationRequest: "),
        "the refusal should name the message: {:?}",
        status.message()
    );
    assert!(
        status.message().contains("recursion limit"),
        "the refusal should say what was wrong: {:?}",
        status.message()
    );
    assert!(
        status.message().len() < 4096,
        "{} bytes",
        status.message().len()
    );
}

#[tokio::test]
async fn deeply_nested_values_are_refused_without_overflowing_the_stack() {
    let hub = TestHub::start().await;
    let a = hub.registered("inst-a").await;

    // Within prost's limit (40 lists are 80 nested messages) the value
    // decodes, and validation refuses it without descending into it.
    let mut shallow = configuration();
    shallow.parameters = params(vec![("x", nested_value(40))]);
    let status = a.share_configuration(shallow).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("parameters[x]: "),
        "{:?}",
        status.message()
    );

    // Past it, decoding stops.
    let mut deep = configuration();
    deep.parameters = params(vec![("x", nested_value(200))]);
    assert_refused_for_nesting(&a.share_configuration(deep).await.unwrap_err());

    let op = hub.operator().await;
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.configurations, 0);
    a.share_configuration(configuration()).await.unwrap();
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_and_the_hub_keeps_serving() {
    // Plaintext dev mode: raw bytes need no TLS client of their own.
    let hub = TestHub::start_with(|c| c.insecure_dev = true).await;
    let a = hub.registered("inst-a").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", hub.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let body = deeply_nested_request(100_000);
    assert!(body.len() < 4 * 1024 * 1024, "{} bytes", body.len());
    let status = send_raw(channel.clone(), "ShareConfiguration", body).await;
    assert_refused_for_nesting(&status);

    // Bytes that are no message at all: a field with wire type 7 (none
    // exists), and a length-delimited field running past the end.
    for garbage in [vec![0x0f], vec![0x0a, 0x05, b'a']] {
        let status = send_raw(channel.clone(), "ShareStrategy", garbage).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("the message is not a valid ShareStrategyRequest: "),
            "{:?}",
            status.message()
        );
    }

    let shared = a.share_configuration(configuration()).await.unwrap();
    assert!(shared.configuration.is_some());
}

/// Sends `body` as the request of `Hub/<method>` from `inst-a` (plaintext
/// dev mode) and returns the refusal.
async fn send_raw(channel: tonic::transport::Channel, method: &str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("x-learning-hub-instance", "inst-a".parse().unwrap());
    let path = http::uri::PathAndQuery::try_from(format!("/learninghub.v1.Hub/{method}")).unwrap();
    grpc.unary(request, path, RawCodec).await.unwrap_err()
}
