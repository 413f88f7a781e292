//! Every RPC of learninghub.v1.Hub, end to end over mutual TLS, the way an
//! instance and an operator use them.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use learning_hub::pb;
use prost_types::{Value, value::Kind};
use tonic::Code;

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

#[tokio::test]
async fn register_returns_instance_and_default_bootstrap() {
    let hub = TestHub::start().await;
    let client = hub.client("us-east-1").await;
    let request = pb::RegisterRequest {
        instance_id: "us-east-1".into(),
        region: "us-east".into(),
        context: BTreeMap::from([("provider".into(), "claude".into())]),
        capabilities: vec!["novelty_injection".into()],
    };
    let first = client.register(request.clone()).await.unwrap();
    assert!(first.newly_registered);
    let instance = first.instance.unwrap();
    assert_eq!(instance.instance_id, "us-east-1");
    assert_eq!(instance.context["provider"], "claude");
    let bootstrap = first.bootstrap.unwrap();
    assert_eq!(bootstrap.source, pb::ConfigSource::Default as i32);
    assert_eq!(bootstrap.parameters["cycle_interval_ms"], number(300_000.0));
    assert!(bootstrap.proven_strategies.is_empty());

    let again = client.register(request).await.unwrap();
    assert!(
        !again.newly_registered,
        "re-registering refreshes the record"
    );
    assert_eq!(
        again.instance.unwrap().registered_at,
        instance.registered_at,
        "first registration time is kept"
    );
}

#[tokio::test]
async fn status_and_instance_listing() {
    let hub = TestHub::start().await;
    for (id, region) in [("a1", "us"), ("a2", "us"), ("b1", "eu")] {
        let client = hub.client(id).await;
        client
            .register(pb::RegisterRequest {
                instance_id: id.into(),
                region: region.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let op = hub.operator().await;
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.instances, 3);
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.started_at.is_some());

    let page = op
        .list_instances(pb::ListInstancesRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = page
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert_eq!(page.total, 3);
    assert_eq!(page.instances_by_region["us"], 2);
    assert_eq!(page.instances_by_region["eu"], 1);
    assert_eq!(page.next_after_instance_id, "a2");
    let rest = op
        .list_instances(pb::ListInstancesRequest {
            after_instance_id: "a2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.instances.len(), 1);
    assert_eq!(rest.next_after_instance_id, "");
    let eu = op
        .list_instances(pb::ListInstancesRequest {
            region: "eu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(eu.instances[0].instance_id, "b1");
}

#[tokio::test]
async fn patterns_share_match_and_outcome() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    let share = pb::SharePatternRequest {
        metrics: BTreeMap::from([
            ("learningVelocity".into(), metric(1.0, true)),
            ("adaptationSpeed".into(), metric(0.48, false)),
        ]),
        cycles_until_plateau: 8,
        recovery_strategies: vec!["novelty_injection".into(), "consolidation_cycle".into()],
        environment: BTreeMap::from([("provider".into(), "claude".into())]),
        ..Default::default()
    };
    let first = a.share_pattern(share.clone()).await.unwrap();
    assert!(first.new_pattern);
    let pattern = first.pattern.unwrap();
    assert_eq!(
        pattern.signature,
        "adaptationSpeed=0.50-,learningVelocity=1.00s|provider=claude"
    );

    // Same signature from another instance (values within the rounding grid).
    let mut close = share.clone();
    close
        .metrics
        .insert("adaptationSpeed".into(), metric(0.51, false));
    close.cycles_until_plateau = 12;
    let second = b.share_pattern(close).await.unwrap();
    assert!(!second.new_pattern);
    let merged = second.pattern.unwrap();
    assert_eq!(merged.id, pattern.id);
    assert_eq!(merged.frequency, 2);
    // Who shared it is for operators; instances see how many did.
    assert!(merged.instances.is_empty());
    assert_eq!(merged.instance_count, 2);
    assert_eq!(merged.cycles_until_plateau, 10.0);
    let operators_view = hub
        .operator()
        .await
        .get_patterns(pb::GetPatternsRequest {
            metrics: share.metrics.clone(),
            environment: share.environment.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        operators_view.matches[0]
            .pattern
            .as_ref()
            .unwrap()
            .instances,
        ["a", "b"]
    );

    // A different plateau elsewhere.
    let mut other = share.clone();
    other
        .metrics
        .insert("learningVelocity".into(), metric(0.8, true));
    a.share_pattern(other).await.unwrap();

    let matches = b
        .get_patterns(pb::GetPatternsRequest {
            metrics: share.metrics.clone(),
            environment: share.environment.clone(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .matches;
    assert_eq!(matches.len(), 2);
    assert!(matches[0].exact);
    assert_eq!(matches[0].pattern.as_ref().unwrap().id, pattern.id);
    assert!(!matches[1].exact);
    assert!(matches[1].similarity < 1.0 && matches[1].similarity >= 0.6);

    let outcome = a
        .record_pattern_outcome(pb::RecordPatternOutcomeRequest {
            pattern_id: pattern.id.clone(),
            success: true,
            metric_name: "learningVelocity".into(),
            strategy: "consolidation_cycle".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .pattern
        .unwrap();
    assert_eq!(outcome.effectiveness.unwrap().success, 1);
    assert_eq!(
        outcome.recovery_strategies[0].strategy, "consolidation_cycle",
        "the strategy that worked ranks first"
    );

    let missing = a
        .record_pattern_outcome(pb::RecordPatternOutcomeRequest {
            pattern_id: "pattern_0000000000000000".into(),
            success: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("pattern_0000000000000000"));
}

#[tokio::test]
async fn strategies_rank_and_combine() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    // novelty_injection: 3/4 successes, improvement 0.2 on average.
    for (ok, delta) in [(true, 0.1), (true, 0.2), (true, 0.3), (false, -0.05)] {
        a.share_strategy(strategy_outcome(
            "novelty_injection",
            "learningVelocity",
            ok,
            delta,
        ))
        .await
        .unwrap();
    }
    // calibration: 1/1, small gain.
    a.share_strategy(strategy_outcome(
        "calibration",
        "learningVelocity",
        true,
        0.05,
    ))
    .await
    .unwrap();
    // phase_acceleration on another metric.
    a.share_strategy(strategy_outcome(
        "phase_acceleration",
        "adaptationSpeed",
        true,
        0.12,
    ))
    .await
    .unwrap();

    let ranked = a
        .get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            current_value: 0.5,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    let names: Vec<_> = ranked.iter().map(|r| r.strategy.as_str()).collect();
    assert_eq!(names, ["novelty_injection", "calibration"]);
    let top = &ranked[0];
    assert_eq!(top.applications, 4);
    assert!((top.success_rate - 0.75).abs() < 1e-12);
    // Four outcomes are little evidence: the estimates are the observed ones
    // (3/4 successes, mean change 0.75 × 0.2 − 0.25 × 0.05) shrunk towards
    // an uninformed prior, and the ranking key is a lower bound.
    assert!(
        top.confidence > 0.5 && top.confidence < top.success_rate,
        "{top:?}"
    );
    assert!(top.expected_delta > 0.0 && top.expected_delta < 0.75 * 0.2 - 0.25 * 0.05);
    assert!(top.lower_bound < top.expected_delta && top.score == top.lower_bound);
    assert_eq!(
        top.optimal_conditions,
        "use when learningVelocity in (0.40, 0.60)"
    );

    let budgeted = a
        .get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            budget: 1.0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(budgeted.recommendations.len(), 1);

    let combo = a
        .get_optimal_combination(pb::GetOptimalCombinationRequest {
            metrics: BTreeMap::from([
                ("learningVelocity".into(), metric(0.5, true)),
                ("adaptationSpeed".into(), metric(0.4, false)),
            ]),
            ..Default::default()
        })
        .await
        .unwrap();
    // Greatest expected delta first: novelty (four outcomes) before
    // phase_acceleration (one outcome, shrunk harder).
    assert_eq!(
        combo.strategies,
        ["novelty_injection", "phase_acceleration"]
    );
    let total: f64 = combo.steps.iter().map(|s| s.expected_delta).sum();
    assert!((combo.expected_total_delta - total).abs() < 1e-12);
    let all_succeed: f64 = combo.steps.iter().map(|s| s.confidence).product();
    assert!((combo.confidence - all_succeed).abs() < 1e-12);
    assert_eq!(combo.total_cost, 2.0);
    assert!(combo.conflicts.is_empty());
}

#[tokio::test]
async fn insights_share_list_and_deduplicate() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut low = insight("Cache training metrics");
    low.insight.as_mut().unwrap().effectiveness = 0.5;
    low.insight.as_mut().unwrap().applicable_contexts = vec![pb::ApplicableContext {
        context: "high_latency_training".into(),
        threshold: "> 500ms".into(),
    }];
    let first = a.share_insight(low.clone()).await.unwrap();
    assert!(!first.duplicate);
    let stored = first.insight.unwrap();
    assert_eq!(stored.sequence, 1);
    assert!(stored.id.starts_with("insight_"));
    let created = stored.created_at.unwrap();
    let until = stored.valid_until.unwrap();
    assert_eq!(
        until.seconds - created.seconds,
        7 * 24 * 3600,
        "7-day default TTL"
    );

    let high = a
        .share_insight(insight("Longer cycles"))
        .await
        .unwrap()
        .insight
        .unwrap();
    assert_eq!(high.sequence, 2);

    let again = a.share_insight(low).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.insight.unwrap().id, stored.id);

    let listed = a
        .get_insights(pb::GetInsightsRequest::default())
        .await
        .unwrap()
        .insights;
    let titles: Vec<_> = listed.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(
        titles,
        ["Longer cycles", "Cache training metrics"],
        "most effective first"
    );
    let by_context = a
        .get_insights(pb::GetInsightsRequest {
            context: "high_latency_training".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .insights;
    assert_eq!(by_context.len(), 1);
    let by_category = a
        .get_insights(pb::GetInsightsRequest {
            category: pb::InsightCategory::Sequence as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .insights;
    assert!(by_category.is_empty());
}

#[tokio::test]
async fn failures_recoveries_and_action_checks() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let report = |recovered: bool, cycles: u32| pb::ShareFailureRequest {
        failure_type: pb::FailureType::MetricReversal as i32,
        trigger: "transferEfficiency dropped 0.2 after speed_optimization".into(),
        context: Some(pb::FailureContext {
            metric: "transferEfficiency".into(),
            strategy: "speed_optimization".into(),
        }),
        recovery: vec![
            pb::RecoveryAttempt {
                method: "apply_consolidation".into(),
                succeeded: true,
                cycles_to_recover: cycles,
            },
            pb::RecoveryAttempt {
                method: "revert_and_retry".into(),
                succeeded: recovered,
                cycles_to_recover: 1,
            },
        ],
        prevention: vec!["Use consolidation_cycle before speed_optimization".into()],
        ..Default::default()
    };
    a.share_failure(report(false, 2)).await.unwrap();
    let failure = a
        .share_failure(report(true, 4))
        .await
        .unwrap()
        .failure
        .unwrap();
    assert_eq!(failure.occurrences, 2);
    assert_eq!(failure.triggers.len(), 1);
    assert_eq!(failure.prevention.len(), 1);
    let first = &failure.recovery[0];
    assert_eq!(
        first.method, "apply_consolidation",
        "always worked, so it ranks first"
    );
    assert_eq!(first.success_rate, 1.0);
    assert_eq!(first.mean_cycles_to_recover, 3.0);
    assert_eq!(failure.recovery[1].success_rate, 0.5);

    let listed = a
        .get_failures(pb::GetFailuresRequest {
            metric: "transferEfficiency".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .failures;
    assert_eq!(listed.len(), 1);
    let none = a
        .get_failures(pb::GetFailuresRequest {
            failure_type: pb::FailureType::Deadlock as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .failures;
    assert!(none.is_empty());

    // 8 applications of speed_optimization, 2 of which reversed a metric.
    for _ in 0..8 {
        a.share_strategy(strategy_outcome(
            "speed_optimization",
            "learningVelocity",
            true,
            0.1,
        ))
        .await
        .unwrap();
    }
    let check = a
        .check_action(pb::CheckActionRequest {
            strategy: "speed_optimization".into(),
            metric: "learningVelocity".into(),
            metrics: BTreeMap::from([("transferEfficiency".into(), metric(0.7, false))]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!check.safe);
    assert_eq!(check.warnings.len(), 1);
    let warning = &check.warnings[0];
    assert!((warning.failure_rate - 0.25).abs() < 1e-12);
    assert_eq!(
        warning.prevention,
        ["Use consolidation_cycle before speed_optimization"]
    );
    assert!(warning.message.contains("transferEfficiency"));

    let safe = a
        .check_action(pb::CheckActionRequest {
            strategy: "calibration".into(),
            metric: "learningVelocity".into(),
            metrics: BTreeMap::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(safe.safe && safe.warnings.is_empty());
}

#[tokio::test]
async fn configurations_drive_bootstrap() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    let high_latency = BTreeMap::from([("latency".to_string(), "high".to_string())]);
    let share = |effectiveness: f64, points: u64, interval: f64| pb::ShareConfigurationRequest {
        context: high_latency.clone(),
        parameters: BTreeMap::from([
            ("cycle_interval_ms".into(), number(interval)),
            (
                "default_strategy".into(),
                Value {
                    kind: Some(Kind::StringValue("conservative".into())),
                },
            ),
        ]),
        effectiveness,
        data_points: points,
        recommendation: "Use for latency > 500ms".into(),
        alternatives: vec![pb::ConfigAlternative {
            name: "aggressive".into(),
            effectiveness: 0.82,
            risk: 0.15,
        }],
        ..Default::default()
    };
    let candidate = a
        .share_configuration(share(0.95, 10, 300_000.0))
        .await
        .unwrap();
    assert!(!candidate.configuration.unwrap().validated);
    a.share_configuration(share(0.9, 80, 600_000.0))
        .await
        .unwrap();
    let validated = b
        .share_configuration(share(0.86, 40, 600_000.0))
        .await
        .unwrap()
        .configuration
        .unwrap();
    assert!(validated.validated, "120 data points from 2 instances");
    assert_eq!(validated.applicable_instances, 2);
    assert!((validated.effectiveness - (0.9 * 80.0 + 0.86 * 40.0) / 120.0).abs() < 1e-12);

    // Registered with a matching context: the validated config wins over the
    // more effective candidate.
    let c = hub.client("c").await;
    let registered = c
        .register(pb::RegisterRequest {
            instance_id: "c".into(),
            region: "r".into(),
            context: BTreeMap::from([
                ("latency".into(), "high".into()),
                ("provider".into(), "claude".into()),
            ]),
            ..Default::default()
        })
        .await
        .unwrap();
    let bootstrap = registered.bootstrap.unwrap();
    assert_eq!(bootstrap.source, pb::ConfigSource::Fleet as i32);
    assert_eq!(bootstrap.parameters["cycle_interval_ms"], number(600_000.0));
    assert_eq!(bootstrap.configuration.unwrap().id, validated.id);

    // Bootstrap with an empty context uses the caller's registered one.
    let again = c.bootstrap(pb::BootstrapRequest::default()).await.unwrap();
    assert_eq!(again.config.unwrap().source, pb::ConfigSource::Fleet as i32);
    // A context the configuration does not fit gets the default.
    let low = c
        .bootstrap(pb::BootstrapRequest {
            context: BTreeMap::from([("latency".into(), "low".into())]),
        })
        .await
        .unwrap();
    assert_eq!(low.config.unwrap().source, pb::ConfigSource::Default as i32);
}

#[tokio::test]
async fn bootstrap_lists_proven_strategies() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    // Two reporters each: one instance's outcomes alone inform nobody else.
    for reporter in [&a, &b] {
        reporter
            .share_strategy(strategy_outcome(
                "calibration",
                "adaptationSpeed",
                true,
                0.05,
            ))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        a.share_strategy(strategy_outcome(
            "novelty_injection",
            "learningVelocity",
            true,
            0.2,
        ))
        .await
        .unwrap();
    }
    b.share_strategy(strategy_outcome(
        "novelty_injection",
        "learningVelocity",
        true,
        0.2,
    ))
    .await
    .unwrap();
    let op = hub.operator().await;
    let config = op
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap();
    let proven: Vec<_> = config
        .proven_strategies
        .iter()
        .map(|r| (r.strategy.as_str(), r.metric.as_str()))
        .collect();
    assert_eq!(
        proven,
        [
            ("novelty_injection", "learningVelocity"),
            ("calibration", "adaptationSpeed")
        ]
    );
}

#[tokio::test]
async fn writes_need_registration() {
    let hub = TestHub::start().await;
    let stranger = hub.client("stranger").await;
    let err = stranger
        .share_strategy(strategy_outcome("s", "m", true, 0.1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("Register"));
    let status = hub
        .operator()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(status.strategy_outcomes, 0);
}
