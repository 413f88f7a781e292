//! Fleet intelligence over gRPC: recommendations that learn value bands,
//! contexts, streaks and failure risk; failure prevention with learned
//! prerequisites; combinations that avoid conflicts; calibrated pattern
//! matches; validated configurations; insight generation on demand and in
//! the background; evidence that ages out.

use crate::common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use common::*;
use learning_hub::{client::HubClient, clock::ManualClock, pb};
use tokio_stream::StreamExt;
use tonic::Code;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn outcome(
    strategy: &str,
    metric: &str,
    value: f64,
    ok: bool,
    delta: f64,
) -> pb::ShareStrategyRequest {
    pb::ShareStrategyRequest {
        value_before: value,
        ..strategy_outcome(strategy, metric, ok, delta)
    }
}

fn recent(entries: &[(&str, &str, u32)]) -> Vec<pb::RecentApplication> {
    entries
        .iter()
        .map(|(strategy, metric, cycles_ago)| pb::RecentApplication {
            strategy: strategy.to_string(),
            metric: metric.to_string(),
            cycles_ago: *cycles_ago,
        })
        .collect()
}

async fn share_all(
    client: &HubClient,
    requests: impl IntoIterator<Item = pb::ShareStrategyRequest>,
) {
    for request in requests {
        client.share_strategy(request).await.unwrap();
    }
}

async fn top_strategy(client: &HubClient, metric: &str, value: f64) -> pb::StrategyRecommendation {
    client
        .get_strategies(pb::GetStrategiesRequest {
            metric: metric.into(),
            current_value: value,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations
        .remove(0)
}

#[tokio::test]
async fn recommendations_depend_on_the_value_band() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut shares = Vec::new();
    for _ in 0..12 {
        shares.push(outcome("boost", "lv", 0.3, true, 0.2));
        shares.push(outcome("boost", "lv", 0.9, false, -0.05));
        shares.push(outcome("steady", "lv", 0.3, true, 0.05));
        shares.push(outcome("steady", "lv", 0.9, true, 0.03));
    }
    share_all(&a, shares).await;
    let low = top_strategy(&a, "lv", 0.3).await;
    assert_eq!(low.strategy, "boost");
    assert!(low.band_high <= 0.6 + 1e-9, "{low:?}");
    assert!(
        low.optimal_conditions.starts_with("use when lv in (0.20"),
        "{}",
        low.optimal_conditions
    );
    assert_eq!(top_strategy(&a, "lv", 0.9).await.strategy, "steady");
}

#[tokio::test]
async fn the_callers_context_counts_when_it_has_evidence() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let ctx = |latency: &str| BTreeMap::from([("latency".to_string(), latency.to_string())]);
    let mut shares = Vec::new();
    for _ in 0..20 {
        shares.push(pb::ShareStrategyRequest {
            context: ctx("low"),
            ..outcome("fast", "lv", 0.5, true, 0.3)
        });
        shares.push(pb::ShareStrategyRequest {
            context: ctx("low"),
            ..outcome("slow", "lv", 0.5, true, 0.1)
        });
    }
    for _ in 0..8 {
        shares.push(pb::ShareStrategyRequest {
            context: ctx("high"),
            ..outcome("fast", "lv", 0.5, false, -0.05)
        });
        shares.push(pb::ShareStrategyRequest {
            context: ctx("high"),
            ..outcome("slow", "lv", 0.5, true, 0.1)
        });
    }
    share_all(&a, shares).await;
    let ask = |latency: &str| pb::GetStrategiesRequest {
        metric: "lv".into(),
        current_value: 0.5,
        context: ctx(latency),
        ..Default::default()
    };
    let low = a.get_strategies(ask("low")).await.unwrap().recommendations;
    assert_eq!(low[0].strategy, "fast");
    let high = a.get_strategies(ask("high")).await.unwrap().recommendations;
    assert_eq!(high[0].strategy, "slow");
    assert_eq!(high[0].scope, pb::EvidenceScope::Context as i32);
    // A context nobody shared from gets the fleet's view.
    let unknown = a
        .get_strategies(ask("medium"))
        .await
        .unwrap()
        .recommendations;
    assert_eq!(unknown[0].scope, pb::EvidenceScope::Fleet as i32);
}

#[tokio::test]
async fn exploring_draws_vary_by_seed_and_repeat_for_a_seed() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    share_all(
        &a,
        [
            outcome("x", "lv", 0.5, true, 0.2),
            outcome("x", "lv", 0.5, false, -0.02),
            outcome("y", "lv", 0.5, true, 0.2),
            outcome("y", "lv", 0.5, false, -0.02),
        ],
    )
    .await;
    let draw = |seed: u64| {
        let a = a.clone();
        async move {
            a.get_strategies(pb::GetStrategiesRequest {
                metric: "lv".into(),
                current_value: 0.5,
                explore: true,
                explore_seed: seed,
                ..Default::default()
            })
            .await
            .unwrap()
            .recommendations[0]
                .strategy
                .clone()
        }
    };
    assert_eq!(draw(3).await, draw(3).await);
    let mut tops = std::collections::BTreeSet::new();
    for seed in 0..30 {
        tops.insert(draw(seed).await);
    }
    assert_eq!(tops.len(), 2, "both strategies get explored");
}

#[tokio::test]
async fn streaks_are_learned_and_applied() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut shares = Vec::new();
    for _ in 0..10 {
        // First use pays 0.2; a third use in a row pays almost nothing.
        shares.push(outcome("repeat", "lv", 0.5, true, 0.2));
        shares.push(pb::ShareStrategyRequest {
            recent: recent(&[("repeat", "lv", 1), ("repeat", "lv", 2)]),
            ..outcome("repeat", "lv", 0.5, true, 0.01)
        });
        shares.push(outcome("other", "lv", 0.5, true, 0.1));
    }
    share_all(&a, shares).await;
    let fresh = top_strategy(&a, "lv", 0.5).await;
    assert_eq!(fresh.strategy, "repeat");
    assert_eq!(fresh.max_consecutive_uses, 2);
    assert_eq!(fresh.cooldown_cycles, 1);
    let after_two = a
        .get_strategies(pb::GetStrategiesRequest {
            metric: "lv".into(),
            current_value: 0.5,
            recent: recent(&[("repeat", "lv", 1), ("repeat", "lv", 2)]),
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    assert_eq!(
        after_two[0].strategy, "other",
        "a third use in a row is not worth it"
    );
}

/// speed_optimization knocks transferEfficiency back unless
/// consolidation_cycle came within 3 cycles before.
async fn teach_prerequisite(a: &HubClient) {
    for i in 0..12 {
        let guarded = i % 2 == 0;
        let before = if guarded {
            recent(&[("consolidation_cycle", "te", 1)])
        } else {
            recent(&[("calibration", "lv", 1)])
        };
        a.share_strategy(pb::ShareStrategyRequest {
            recent: before.clone(),
            ..outcome("speed_optimization", "as", 0.5, true, 0.2)
        })
        .await
        .unwrap();
        if !guarded {
            a.share_failure(pb::ShareFailureRequest {
                failure_type: pb::FailureType::MetricReversal as i32,
                trigger: "te dropped after speed_optimization".into(),
                context: Some(pb::FailureContext {
                    metric: "te".into(),
                    strategy: "speed_optimization".into(),
                }),
                recent: before,
                magnitude: 0.15,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        a.share_strategy(outcome("calibration", "as", 0.5, true, 0.05))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn failure_prevention_learns_prerequisites_and_offers_alternatives() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    teach_prerequisite(&a).await;
    let check = |recent_apps: Vec<pb::RecentApplication>| {
        let a = a.clone();
        async move {
            a.check_action(pb::CheckActionRequest {
                strategy: "speed_optimization".into(),
                metric: "as".into(),
                metrics: BTreeMap::from([
                    ("te".into(), metric(0.6, false)),
                    ("as".into(), metric(0.5, true)),
                ]),
                recent: recent_apps,
                ..Default::default()
            })
            .await
            .unwrap()
        }
    };
    let unguarded = check(vec![]).await;
    assert!(!unguarded.safe);
    let warning = &unguarded.warnings[0];
    assert_eq!(warning.prerequisite, "consolidation_cycle");
    assert!((warning.failure_rate - 1.0).abs() < 1e-9, "{warning:?}");
    assert_eq!(warning.failure_rate_with_prerequisite, 0.0);
    assert!(
        warning
            .prevention
            .iter()
            .any(|p| p.contains("apply consolidation_cycle"))
    );
    assert_eq!(unguarded.safer_alternative, "calibration");
    assert!((warning.failure.as_ref().unwrap().mean_magnitude - 0.15).abs() < 1e-12);

    let guarded = check(recent(&[("consolidation_cycle", "te", 2)])).await;
    assert!(guarded.safe, "{guarded:?}");
    assert_eq!(guarded.warnings[0].failure_rate, 0.0);

    // GetStrategies prices the risk in: without the prerequisite the risky
    // strategy's score carries its expected damage.
    let recs = a
        .get_strategies(pb::GetStrategiesRequest {
            metric: "as".into(),
            current_value: 0.5,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    let risky = recs
        .iter()
        .find(|r| r.strategy == "speed_optimization")
        .unwrap();
    assert!((risky.failure_risk - 0.15).abs() < 1e-9, "{risky:?}");
    assert!((risky.score - (risky.lower_bound - risky.failure_risk)).abs() < 1e-12);
}

/// Automated troubleshooting: an instance that reports a failure gets a
/// ranked recovery plan built from what the fleet learned recovers this
/// kind of failure on this metric — even when its own report has none.
#[tokio::test]
async fn a_reported_failure_is_answered_with_the_fleets_recovery_plan() {
    let hub = TestHub::start().await;
    let report = |strategy: &str, recovery: &[(&str, bool, u32)]| pb::ShareFailureRequest {
        failure_type: pb::FailureType::MetricReversal as i32,
        trigger: format!("accuracy dropped after {strategy}"),
        context: Some(pb::FailureContext {
            metric: "accuracy".into(),
            strategy: strategy.into(),
        }),
        recovery: recovery
            .iter()
            .map(|(method, succeeded, cycles)| pb::RecoveryAttempt {
                method: method.to_string(),
                succeeded: *succeeded,
                cycles_to_recover: *cycles,
            })
            .collect(),
        prevention: vec!["apply warmup first".into()],
        ..Default::default()
    };
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    a.share_failure(report(
        "s1",
        &[("rollback", true, 2), ("retrain", false, 0)],
    ))
    .await
    .unwrap();
    b.share_failure(report("s2", &[("rollback", true, 4), ("retrain", true, 6)]))
        .await
        .unwrap();
    let c = hub.registered("c").await;
    let answer = c.share_failure(report("s3", &[])).await.unwrap();
    let plan = answer.plan.unwrap();
    assert_eq!(plan.failures, 3);
    let steps: Vec<(&str, u64, u64)> = plan
        .steps
        .iter()
        .map(|s| (s.method.as_str(), s.attempts, s.successes))
        .collect();
    assert_eq!(steps, [("rollback", 2, 2), ("retrain", 2, 1)]);
    assert_eq!(plan.steps[0].success_rate, 0.75);
    assert_eq!(plan.steps[0].expected_cycles, 3.0);
    assert_eq!(plan.steps[0].give_up_after, 6);
    assert_eq!(plan.expected_cycles, 3.0);
    assert_eq!(plan.success_rate, 0.875);
    assert_eq!(plan.prevention, ["apply warmup first"]);
    // Another metric: nothing known, an empty plan.
    let mut other = report("s1", &[]);
    other.context.as_mut().unwrap().metric = "loss".into();
    let plan = c.share_failure(other).await.unwrap().plan.unwrap();
    assert!(
        plan.steps.is_empty() && plan.success_rate == 0.0,
        "{plan:?}"
    );
}

#[tokio::test]
async fn combinations_avoid_conflicts_and_respect_costs() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut shares = Vec::new();
    for i in 0..10 {
        shares.push(outcome("a_strat", "m1", 0.5, true, 0.2));
        // b_strat works alone, fails right after a_strat.
        let after_a = i % 2 == 0;
        shares.push(pb::ShareStrategyRequest {
            recent: if after_a {
                recent(&[("a_strat", "m1", 1)])
            } else {
                vec![]
            },
            ..outcome(
                "b_strat",
                "m2",
                0.5,
                !after_a,
                if after_a { -0.05 } else { 0.2 },
            )
        });
        shares.push(outcome("c_strat", "m2", 0.5, true, 0.05));
    }
    share_all(&a, shares).await;
    let ask = |budget: f64, costs: BTreeMap<String, f64>| pb::GetOptimalCombinationRequest {
        metrics: BTreeMap::from([
            ("m1".into(), metric(0.5, true)),
            ("m2".into(), metric(0.5, true)),
        ]),
        budget,
        costs,
        ..Default::default()
    };
    let combo = a
        .get_optimal_combination(ask(0.0, BTreeMap::new()))
        .await
        .unwrap();
    assert_eq!(combo.conflicts, ["a_strat+b_strat"]);
    assert!(
        !(combo.strategies.contains(&"a_strat".to_string())
            && combo.strategies.contains(&"b_strat".to_string()))
    );
    assert_eq!(combo.steps.len(), 2);
    // With a_strat expensive and a budget of 1.5, only one cheap step fits.
    let costly = a
        .get_optimal_combination(ask(1.5, BTreeMap::from([("a_strat".to_string(), 2.0)])))
        .await
        .unwrap();
    assert!(costly.total_cost <= 1.5);
    assert!(!costly.strategies.contains(&"a_strat".to_string()));
}

#[tokio::test]
async fn pattern_matches_rank_recoveries_for_the_target_and_calibrate_confidence() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let state = BTreeMap::from([
        ("lv".into(), metric(0.6, true)),
        ("as".into(), metric(0.4, false)),
    ]);
    let shared = a
        .share_pattern(pb::SharePatternRequest {
            metrics: state.clone(),
            recovery_strategies: vec!["weak".into()],
            target_metric: "lv".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .pattern
        .unwrap();
    // The fleet knows "strong" works on lv at this value; "weak" barely.
    let mut shares = Vec::new();
    for _ in 0..10 {
        shares.push(outcome("strong", "lv", 0.6, true, 0.2));
        shares.push(outcome("weak", "lv", 0.6, false, -0.02));
    }
    share_all(&a, shares).await;
    let get = |target: &str| pb::GetPatternsRequest {
        metrics: state.clone(),
        target_metric: target.into(),
        ..Default::default()
    };
    let found = a.get_patterns(get("lv")).await.unwrap().matches;
    let recovery = &found[0].pattern.as_ref().unwrap().recovery_strategies;
    assert_eq!(recovery[0].strategy, "strong", "{recovery:?}");
    let weak = recovery.iter().find(|r| r.strategy == "weak").unwrap();
    assert_eq!(weak.suggested, 1);
    let before = found[0].confidence;
    assert!(
        (before - 0.5).abs() < 1e-9,
        "no outcome reports yet: {before}"
    );
    for _ in 0..6 {
        a.record_pattern_outcome(pb::RecordPatternOutcomeRequest {
            pattern_id: shared.id.clone(),
            success: true,
            metric_name: "lv".into(),
            strategy: "strong".into(),
            similarity: 1.0,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let after = a.get_patterns(get("lv")).await.unwrap().matches[0].confidence;
    assert!(after > 0.8, "{after}");
}

/// Five honest instances' outcomes: "steady" works (20 each, +0.05).
async fn honest_fleet(hub: &TestHub) -> Vec<HubClient> {
    let mut honest = Vec::new();
    for i in 0..5 {
        let client = hub.registered(&format!("honest-{i}")).await;
        share_all(
            &client,
            (0..20).map(|j| outcome("steady", "lv", 0.5, j % 10 != 0, 0.05)),
        )
        .await;
        honest.push(client);
    }
    honest
}

async fn ranked(client: &HubClient) -> Vec<pb::StrategyRecommendation> {
    client
        .get_strategies(pb::GetStrategiesRequest {
            metric: "lv".into(),
            current_value: 0.5,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations
}

/// The outcome attack of issue 16: against five honest instances' 100
/// outcomes, one instance's 2 reports of `delta = 1.0` for its own
/// strategy put it first for everyone, and 200 gave it confidence 0.988.
/// Uncorroborated, its reports now inform only itself; and where it does
/// share a strategy with others, it holds at most about half of the
/// evidence they see.
#[tokio::test]
async fn one_instance_cannot_put_its_strategy_first_for_everyone() {
    let hub = TestHub::start().await;
    let honest = honest_fleet(&hub).await;
    let attacker = hub.registered("attacker").await;
    let bystander = hub.registered("bystander").await;
    for rounds in [2, 200] {
        share_all(
            &attacker,
            (0..rounds).map(|_| outcome("miracle", "lv", 0.5, true, 1.0)),
        )
        .await;
        let seen = ranked(&bystander).await;
        assert_eq!(seen[0].strategy, "steady", "after {rounds}: {seen:?}");
        assert!(seen.iter().all(|r| r.strategy != "miracle"), "{seen:?}");
    }
    // The operator's Bootstrap lists the fleet's proven strategies: not it.
    let proven = hub
        .operator()
        .await
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap()
        .proven_strategies;
    assert!(proven.iter().all(|r| r.strategy != "miracle"), "{proven:?}");
    // Its own ranking still has everything it reported.
    let own = ranked(&attacker).await;
    let miracle = own.iter().find(|r| r.strategy == "miracle").unwrap();
    assert_eq!(miracle.applications, 202);
    assert!(miracle.confidence > 0.95, "{miracle:?}");

    // Now it floods "steady", which the honest fleet backs with 100
    // outcomes, with 300 failures: only as many as the others' plus one
    // count for them (101). That still halves the success rate others see
    // (the bound is a share, not immunity: ListAnomalies is what finds
    // such an instance).
    share_all(
        &attacker,
        (0..300).map(|_| outcome("steady", "lv", 0.5, false, -0.2)),
    )
    .await;
    let steady = ranked(&bystander).await;
    let steady = steady.iter().find(|r| r.strategy == "steady").unwrap();
    assert_eq!(
        steady.applications, 400,
        "lifetime counts show every report"
    );
    assert!(
        (steady.evidence - 201.0).abs() < 1e-6,
        "100 honest and 101 of the attacker's outcomes count: {steady:?}"
    );
    assert!(steady.confidence > 0.4, "{steady:?}");
    // Another honest report is counted (and makes room for one more of
    // the attacker's, when it next reports).
    honest[0]
        .share_strategy(outcome("steady", "lv", 0.5, true, 0.05))
        .await
        .unwrap();
    let steady = ranked(&bystander).await;
    let steady = steady.iter().find(|r| r.strategy == "steady").unwrap();
    assert!((steady.evidence - 202.0).abs() < 1e-6, "{steady:?}");

    // An operator quarantines it: what it reported stops counting (the
    // window is rebuilt from the outcome log without it).
    hub.operator()
        .await
        .admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "attacker".into(),
            reason: "300 failures nobody else sees".into(),
        })
        .await
        .unwrap();
    let steady = ranked(&bystander).await;
    let steady = steady.iter().find(|r| r.strategy == "steady").unwrap();
    assert!((steady.evidence - 101.0).abs() < 1e-6, "{steady:?}");
    assert!(steady.confidence > 0.85, "{steady:?}");
}

/// The failure attack of issue 16: 20 ShareFailure reports made CheckAction
/// call the honest strategy unsafe and name the attacker's as the safer
/// alternative. A failure report counts only against an application its
/// reporter made: twenty from an instance that never applied it count as
/// one.
#[tokio::test]
async fn one_instance_cannot_make_the_fleets_strategy_unsafe() {
    let hub = TestHub::start().await;
    let _honest = honest_fleet(&hub).await;
    let attacker = hub.registered("attacker").await;
    share_all(
        &attacker,
        (0..20).map(|_| outcome("miracle", "lv", 0.5, true, 1.0)),
    )
    .await;
    for _ in 0..20 {
        attacker
            .share_failure(pb::ShareFailureRequest {
                failure_type: pb::FailureType::MetricReversal as i32,
                trigger: "lv collapsed after steady".into(),
                context: Some(pb::FailureContext {
                    metric: "lv".into(),
                    strategy: "steady".into(),
                }),
                magnitude: 0.5,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let bystander = hub.registered("bystander").await;
    let check = bystander
        .check_action(pb::CheckActionRequest {
            strategy: "steady".into(),
            metric: "lv".into(),
            metrics: BTreeMap::from([("lv".into(), metric(0.5, true))]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(check.safe, "{check:?}");
    assert!(
        (check.warnings[0].failure_rate - 0.01).abs() < 1e-9,
        "{check:?}"
    );
    assert!(
        check.warnings[0].message.contains("(1 report(s)"),
        "{check:?}"
    );
    assert_eq!(check.safer_alternative, "");
    // GetStrategies prices in 1 % of the magnitude, not 20 %.
    let steady = ranked(&bystander).await;
    assert_eq!(steady[0].strategy, "steady");
    assert!((steady[0].failure_risk - 0.005).abs() < 1e-9, "{steady:?}");
}

/// Anomaly detection: an instance whose reports disagree with the rest of
/// its context's is listed, with its figures, by the periodic scan and by
/// a scan on demand; it keeps its first sighting; an honest fleet lists
/// nothing; quarantine shows on the listing.
#[tokio::test]
async fn an_inconsistent_instance_is_listed_as_an_anomaly() {
    let hub = TestHub::start_with(|c| c.anomaly_interval = Some(Duration::from_millis(200))).await;
    let _honest = honest_fleet(&hub).await;
    let op = hub.operator().await;
    let list = |scan: bool| {
        let op = op.clone();
        async move {
            op.admin()
                .list_anomalies(pb::ListAnomaliesRequest { scan })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let clean = list(true).await;
    assert!(clean.anomalies.is_empty(), "{clean:?}");
    assert_eq!(clean.new_anomalies, 0);

    // Reports that "steady" fails badly, where five others see it work.
    let liar = hub.registered("liar").await;
    share_all(
        &liar,
        (0..12).map(|_| outcome("steady", "lv", 0.5, false, -0.3)),
    )
    .await;
    // The periodic scan finds it without being asked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        let listed = list(false).await;
        if !listed.anomalies.is_empty() {
            break listed.anomalies;
        }
        assert!(tokio::time::Instant::now() < deadline, "never scanned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(a.kind, pb::AnomalyKind::InconsistentReports as i32);
    assert_eq!(a.instance_id, "liar");
    assert_eq!((a.strategy.as_str(), a.metric.as_str()), ("steady", "lv"));
    assert!(a.score >= 6.0, "{a:?}");
    assert!(!a.quarantined);
    // Scanned again, it is the same anomaly, first seen when it was, with
    // the figures of every report (the periodic scan may have run before
    // all 12 were in).
    let again = list(true).await;
    assert_eq!(again.new_anomalies, 0);
    let b = &again.anomalies[0];
    assert_eq!((&b.id, &b.first_seen), (&a.id, &a.first_seen));
    assert!(
        b.evidence
            .contains("success 0% of its 12 outcomes vs 90% of the other 5 instances' 100"),
        "{b:?}"
    );

    op.admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "liar".into(),
            reason: "listed as an anomaly".into(),
        })
        .await
        .unwrap();
    assert!(list(false).await.anomalies[0].quarantined);
    // Its reports no longer count, so the next scan finds nothing.
    assert!(list(true).await.anomalies.is_empty());
    // Instances may not look.
    let denied = liar
        .admin()
        .list_anomalies(pb::ListAnomaliesRequest { scan: true })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

/// An instance whose metric falls whatever it applies, while the rest of
/// its context see it rise, is listed as a metric regression.
#[tokio::test]
async fn a_metric_falling_for_one_instance_only_is_listed_as_a_regression() {
    let hub = TestHub::start().await;
    let _honest = honest_fleet(&hub).await;
    let drifting = hub.registered("drifting").await;
    for j in 0..8 {
        for strategy in ["steady", "bold"] {
            drifting
                .share_strategy(outcome(strategy, "lv", 0.5, j % 2 == 0, -0.03))
                .await
                .unwrap();
        }
    }
    let op = hub.operator().await;
    let listed = op
        .admin()
        .list_anomalies(pb::ListAnomaliesRequest { scan: true })
        .await
        .unwrap()
        .into_inner();
    let regressions: Vec<&pb::Anomaly> = listed
        .anomalies
        .iter()
        .filter(|a| a.kind == pb::AnomalyKind::MetricRegression as i32)
        .collect();
    assert_eq!(regressions.len(), 1, "{listed:?}");
    let r = regressions[0];
    assert_eq!(
        (r.instance_id.as_str(), r.metric.as_str()),
        ("drifting", "lv")
    );
    assert!(r.strategy.is_empty() && r.score >= 6.0, "{r:?}");
    assert!(
        r.evidence
            .contains("a mean change of -0.030 per application over its 16 outcomes"),
        "{}",
        r.evidence
    );
}

/// The attack from the review: one instance shares a configuration with an
/// empty context and a declared million data points. It must not become
/// what new instances start with, nor be offered to them, until another
/// instance shares it too.
#[tokio::test]
async fn one_instance_cannot_make_the_fleet_bootstrap() {
    let hub = TestHub::start().await;
    let attacker = hub.registered("attacker").await;
    let share = pb::ShareConfigurationRequest {
        parameters: BTreeMap::from([(
            "cycle_interval_ms".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(1.0)),
            },
        )]),
        effectiveness: 1.0,
        data_points: 1_000_000,
        ..Default::default()
    };
    attacker.share_configuration(share.clone()).await.unwrap();
    let newcomer = hub.registered("newcomer").await;
    let config = newcomer
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(config.source, pb::ConfigSource::Default as i32);
    assert!(config.configuration.is_none() && config.alternatives.is_empty());
    // A second instance's share makes it the fleet's (the documented bound).
    newcomer.share_configuration(share).await.unwrap();
    let config = hub
        .registered("third")
        .await
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(config.source, pb::ConfigSource::Fleet as i32);
}

/// The insight flood of issue 16's attack: one instance sharing insights
/// of the largest size allowed fills the store and every new
/// subscription's replay. Its stored insights are bounded; it only pushes
/// out its own oldest.
#[tokio::test]
async fn one_instance_cannot_fill_the_insight_store() {
    let hub = TestHub::start_with(|c| c.hub.insight_bytes_per_instance = 256 * 1024).await;
    let bystander = hub.registered("bystander").await;
    bystander
        .share_insight(crate::common::insight("kept"))
        .await
        .unwrap();
    let flooder = hub.registered("flooder").await;
    let large = |i: usize| {
        let mut request = crate::common::insight(&format!("flood {i:02}"));
        if let Some(insight) = request.insight.as_mut() {
            insight.insight = "x".repeat(4096);
            insight.alternatives = (0..8)
                .map(|_| pb::InsightAlternative {
                    insight: "y".repeat(4096),
                    effectiveness: 0.5,
                })
                .collect();
        }
        request
    };
    for i in 0..40 {
        flooder.share_insight(large(i)).await.unwrap();
    }
    let titles = crate::common::insight_titles(&bystander, 100).await;
    let flood: Vec<&String> = titles.iter().filter(|t| t.starts_with("flood")).collect();
    // About 37 KB each: 7 fit in 256 KiB, and they are the newest.
    assert_eq!(flood.len(), 7, "{titles:?}");
    assert!(titles.iter().any(|t| t == "flood 39"), "{titles:?}");
    assert!(!titles.iter().any(|t| t == "flood 32"), "{titles:?}");
    assert!(
        titles.iter().any(|t| t == "kept"),
        "another's insight stays"
    );
}

#[tokio::test]
async fn configurations_are_validated_against_rivals_and_offered_as_alternatives() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    let share = |interval: f64, effectiveness: f64, points: u64| pb::ShareConfigurationRequest {
        parameters: BTreeMap::from([(
            "cycle_interval_ms".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(interval)),
            },
        )]),
        effectiveness,
        data_points: points,
        ..Default::default()
    };
    a.share_configuration(share(1.0, 0.7, 80)).await.unwrap();
    let first = b
        .share_configuration(share(1.0, 0.7, 80))
        .await
        .unwrap()
        .configuration
        .unwrap();
    assert!(
        first.validated,
        "160 data points from 2 instances, no rival"
    );
    // A better-performing rival with enough data takes the title.
    a.share_configuration(share(2.0, 0.9, 60)).await.unwrap();
    let rival = b
        .share_configuration(share(2.0, 0.9, 60))
        .await
        .unwrap()
        .configuration
        .unwrap();
    assert!(rival.validated);
    let bootstrap = a
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(bootstrap.configuration.unwrap().id, rival.id);
    assert_eq!(bootstrap.alternatives.len(), 1);
    assert_eq!(bootstrap.alternatives[0].name, first.id);
    let op = hub.operator().await;
    let list = op
        .bootstrap(pb::BootstrapRequest::default())
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(list.alternatives[0].effectiveness, 0.7);
}

/// A history with a clear sequence effect: B works when A came first.
async fn sequence_history(client: &HubClient) {
    let mut shares = Vec::new();
    for i in 0..120 {
        let after_a = i % 2 == 0;
        shares.push(pb::ShareStrategyRequest {
            recent: if after_a {
                recent(&[("a_first", "m", 1)])
            } else {
                vec![]
            },
            ..outcome("b_then", "m", 0.5, true, if after_a { 0.2 } else { 0.05 })
        });
    }
    share_all(client, shares).await;
}

#[tokio::test]
async fn generate_insights_is_for_operators_validates_and_publishes() {
    let hub = TestHub::start_with(|c| c.insight_interval = None).await;
    let a = hub.registered("a").await;
    let denied = a
        .admin()
        .generate_insights(pb::GenerateInsightsRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    sequence_history(&a).await;
    let mut stream = a
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    let mut admin = hub.operator().await.admin();
    let report = admin
        .generate_insights(pb::GenerateInsightsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.outcomes_examined, 120);
    assert!(report.validated >= 1);
    let insight = report
        .insights
        .iter()
        .find(|i| i.title == "a_first before b_then helps m")
        .expect("the sequence insight");
    assert_eq!(insight.category, pb::InsightCategory::Sequence as i32);
    assert_eq!(insight.evidence.as_ref().unwrap().data_points, 120);
    assert!((insight.evidence.as_ref().unwrap().improvement_observed - 0.15).abs() < 1e-9);
    let streamed = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(streamed.insight.unwrap().sequence, insight.sequence);

    let again = admin
        .generate_insights(pb::GenerateInsightsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(again.insights.is_empty());
    assert_eq!(again.duplicates, report.validated);

    // An instance's insight claiming more than anything the hub measured
    // (effectiveness 1.0, a trillion data points) ranks after the hub's own.
    let mut loud = crate::common::insight("loud claim");
    if let Some(i) = loud.insight.as_mut() {
        i.effectiveness = 1.0;
        i.evidence = Some(pb::InsightEvidence {
            data_points: 1_000_000_000_000,
            instances_covered: 4_000_000_000,
            ..Default::default()
        });
    }
    let loud = a.share_insight(loud).await.unwrap().insight.unwrap();
    let generated: Vec<String> = report.insights.iter().map(|i| i.id.clone()).collect();
    let listed = a
        .get_insights(pb::GetInsightsRequest {
            limit: generated.len() as u32 + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .insights;
    let ids: Vec<String> = listed.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), generated.len() + 1);
    assert!(
        ids[..generated.len()]
            .iter()
            .all(|id| generated.contains(id)),
        "{ids:?}"
    );
    assert_eq!(ids.last(), Some(&loud.id));
}

#[tokio::test]
async fn background_generation_runs_on_its_interval() {
    let hub = TestHub::start_with(|c| c.insight_interval = Some(Duration::from_millis(200))).await;
    let a = hub.registered("a").await;
    sequence_history(&a).await;
    for _ in 0..100 {
        let insights = a
            .get_insights(pb::GetInsightsRequest::default())
            .await
            .unwrap()
            .insights;
        if insights
            .iter()
            .any(|i| i.title == "a_first before b_then helps m")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no insight generated in the background");
}

#[tokio::test]
async fn evidence_older_than_the_retention_window_stops_counting() {
    let clock = ManualClock::new(1_762_214_400_000);
    let hub = TestHub::start_with_clock(Arc::new(clock.clone()), |_| {}).await;
    let a = hub.registered("a").await;
    share_all(
        &a,
        (0..10).map(|_| outcome("old_favourite", "lv", 0.5, true, 0.3)),
    )
    .await;
    clock.advance(8 * DAY_MS);
    share_all(
        &a,
        (0..3).map(|_| outcome("newcomer", "lv", 0.5, true, 0.1)),
    )
    .await;
    let recs = a
        .get_strategies(pb::GetStrategiesRequest {
            metric: "lv".into(),
            current_value: 0.5,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    assert_eq!(recs[0].strategy, "newcomer");
    let old = recs.iter().find(|r| r.strategy == "old_favourite").unwrap();
    assert_eq!(old.evidence, 0.0);
    assert_eq!(old.applications, 10, "the lifetime record stays");
}

/// The environment changes: a strategy that worked for days stops working.
/// The anomaly scan lists the shift and announces it once on the insight
/// stream (category ANOMALY), naming no instance.
#[tokio::test]
async fn a_strategy_that_stops_working_is_announced_as_a_shift() {
    let clock = ManualClock::new(1_762_214_400_000);
    let hub = TestHub::start_with_clock(Arc::new(clock.clone()), |_| {}).await;
    let a = hub.registered("a").await;
    let b = hub.registered("b").await;
    for _ in 0..3 {
        for client in [&a, &b] {
            share_all(
                client,
                (0..10).map(|j| outcome("steady", "lv", 0.5, j != 0, 0.05)),
            )
            .await;
        }
        clock.advance(DAY_MS);
    }
    let op = hub.operator().await;
    let scan = || {
        let op = op.clone();
        async move {
            op.admin()
                .list_anomalies(pb::ListAnomaliesRequest { scan: true })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(scan().await.anomalies.is_empty(), "a steady success rate");
    for client in [&a, &b] {
        share_all(
            client,
            (0..15).map(|j| outcome("steady", "lv", 0.5, j < 3, -0.02)),
        )
        .await;
    }
    let found = scan().await;
    assert_eq!(found.new_anomalies, 1, "{found:?}");
    let shift = &found.anomalies[0];
    assert_eq!(shift.kind, pb::AnomalyKind::StrategyShift as i32);
    assert_eq!(shift.instance_id, "");
    assert!(
        shift
            .evidence
            .contains("success 20% of 30 outcomes on the latest day vs 90% of 60"),
        "{shift:?}"
    );
    assert_eq!(scan().await.new_anomalies, 0, "found again, not new");
    let announced: Vec<pb::Insight> = a
        .get_insights(pb::GetInsightsRequest {
            category: pb::InsightCategory::Anomaly as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .insights;
    assert_eq!(announced.len(), 1, "announced once: {announced:?}");
    assert_eq!(announced[0].title, "steady on lv shifted");
    assert!(!announced[0].insight.contains("\"a\"") && !announced[0].insight.contains(" b "));
}

/// A failure is reported when it happens (the answer is the fleet's plan),
/// then completed with how the recovery went: the follow-up adds the
/// attempt without counting the failure again, and the next instance's
/// plan has it.
#[tokio::test]
async fn a_follow_up_completes_a_failure_with_its_recovery() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let report = |follow_up: bool, recovery: Vec<pb::RecoveryAttempt>| pb::ShareFailureRequest {
        failure_type: pb::FailureType::MetricReversal as i32,
        trigger: "te dropped after speed_optimization".into(),
        context: Some(pb::FailureContext {
            metric: "te".into(),
            strategy: "speed_optimization".into(),
        }),
        recovery,
        follow_up,
        ..Default::default()
    };
    let consolidation = || {
        vec![pb::RecoveryAttempt {
            method: "consolidation_cycle".into(),
            succeeded: true,
            cycles_to_recover: 2,
        }]
    };
    // Nothing to follow up yet.
    let missing = a
        .share_failure(report(true, consolidation()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let first = a.share_failure(report(false, vec![])).await.unwrap();
    assert!(first.plan.unwrap().steps.is_empty(), "nobody recovered yet");
    let empty = a.share_failure(report(true, vec![])).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("recovery"), "{empty:?}");
    let done = a
        .share_failure(report(true, consolidation()))
        .await
        .unwrap()
        .failure
        .unwrap();
    assert_eq!(done.occurrences, 1, "a follow-up is not another failure");
    assert_eq!(done.recovery[0].method, "consolidation_cycle");
    let b = hub.registered("b").await;
    let plan = |client: HubClient| async move {
        client
            .share_failure(report(false, vec![]))
            .await
            .unwrap()
            .plan
            .unwrap()
    };
    // One instance's remedy informs only it until another confirms it.
    assert!(plan(b.clone()).await.steps.is_empty());
    b.share_failure(report(true, consolidation()))
        .await
        .unwrap();
    let c = hub.registered("c").await;
    let plan = plan(c).await;
    assert_eq!(plan.steps[0].method, "consolidation_cycle");
    assert_eq!(plan.steps[0].attempts, 2);
    assert_eq!(plan.expected_cycles, 2.0);
}

/// Rule 4 of bounded influence: one instance cannot put a remedy of its
/// own into everyone's recovery plan, sink the fleet's remedy by more than
/// its share, or crowd out the fleet's prevention advice.
#[tokio::test]
async fn one_instance_cannot_steer_recovery_or_prevention() {
    let hub = TestHub::start().await;
    let report =
        |recovery: Vec<(&str, bool, u32)>, prevention: Vec<String>| pb::ShareFailureRequest {
            failure_type: pb::FailureType::MetricReversal as i32,
            trigger: "te dropped after speed_optimization".into(),
            context: Some(pb::FailureContext {
                metric: "te".into(),
                strategy: "speed_optimization".into(),
            }),
            recovery: recovery
                .into_iter()
                .map(|(method, succeeded, cycles)| pb::RecoveryAttempt {
                    method: method.into(),
                    succeeded,
                    cycles_to_recover: cycles,
                })
                .collect(),
            prevention,
            ..Default::default()
        };
    for name in ["a", "b"] {
        let honest = hub.registered(name).await;
        honest
            .share_failure(report(
                vec![("rollback", true, 4)],
                vec!["warm up first".into()],
            ))
            .await
            .unwrap();
    }
    let attacker = hub.registered("attacker").await;
    for round in 0..5 {
        let flood = report(
            [("miracle", true, 1), ("rollback", false, 0)].repeat(10),
            (0..20).map(|i| format!("junk {round}-{i}")).collect(),
        );
        attacker.share_failure(flood).await.unwrap();
    }
    let bystander = hub.registered("bystander").await;
    let answer = bystander
        .share_failure(report(vec![], vec![]))
        .await
        .unwrap();
    let plan = answer.plan.unwrap();
    let steps: Vec<(&str, u64, u64)> = plan
        .steps
        .iter()
        .map(|s| (s.method.as_str(), s.attempts, s.successes))
        .collect();
    // 50 failed rollbacks count as 5 (its free share); "miracle" is its
    // own alone.
    assert_eq!(steps, [("rollback", 7, 2)]);
    assert_eq!(plan.prevention, ["warm up first"]);
    let failure = answer.failure.unwrap();
    assert_eq!(failure.prevention, ["warm up first"]);
    // The attacker sees its own, and holds 4 advice slots at most.
    let own = attacker
        .get_failures(pb::GetFailuresRequest::default())
        .await
        .unwrap()
        .failures
        .remove(0);
    assert_eq!(own.recovery[0].method, "miracle", "{own:?}");
    assert_eq!(own.recovery[0].attempts, 50);
    assert_eq!(own.prevention.len(), 1 + 4, "{:?}", own.prevention);
    assert_eq!(own.prevention[0], "warm up first");
    assert_eq!(own.prevention[4], "junk 4-19");
    // Quarantined, nothing of it counts, even for operators.
    let op = hub.operator().await;
    op.admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "attacker".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let seen = op
        .get_failures(pb::GetFailuresRequest::default())
        .await
        .unwrap()
        .failures
        .remove(0);
    let methods: Vec<(&str, u64)> = seen
        .recovery
        .iter()
        .map(|m| (m.method.as_str(), m.attempts))
        .collect();
    assert_eq!(methods, [("rollback", 2)]);
    assert_eq!(seen.prevention, ["warm up first"]);
}

/// Pattern outcomes are bounded like strategy outcomes: one instance's
/// flood of failures counts up to its share (5, or as many as the others
/// reported, plus one), so it cannot sink a pattern the others confirm.
#[tokio::test]
async fn one_instance_cannot_sink_a_pattern() {
    let hub = TestHub::start().await;
    let state = BTreeMap::from([("lv".into(), metric(0.6, true))]);
    let a = hub.registered("a").await;
    let shared = a
        .share_pattern(pb::SharePatternRequest {
            metrics: state.clone(),
            recovery_strategies: vec!["strong".into()],
            target_metric: "lv".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .pattern
        .unwrap();
    let outcome = |success: bool| pb::RecordPatternOutcomeRequest {
        pattern_id: shared.id.clone(),
        success,
        metric_name: "lv".into(),
        strategy: "strong".into(),
        ..Default::default()
    };
    for name in ["a", "b"] {
        let client = hub.registered(name).await;
        for _ in 0..4 {
            client.record_pattern_outcome(outcome(true)).await.unwrap();
        }
    }
    let attacker = hub.registered("attacker").await;
    let mut last = None;
    for _ in 0..50 {
        last = attacker
            .record_pattern_outcome(outcome(false))
            .await
            .unwrap()
            .pattern;
    }
    let effectiveness = last.unwrap().effectiveness.unwrap();
    assert_eq!(effectiveness.success, 8);
    assert_eq!(effectiveness.failure, 9, "the others' 8 reports, plus one");
}
