//! Acknowledged writes survive: a graceful restart, and a hub process
//! killed with SIGKILL while writers are in flight.

use crate::common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use common::*;
use learning_hub::{auth::Identity, client::HubClient, pb};
use tokio::sync::Mutex;

/// Shares one record of every kind as instance `client`.
async fn share_everything(client: &HubClient, tag: &str) {
    client
        .share_pattern(pb::SharePatternRequest {
            metrics: BTreeMap::from([("learningVelocity".into(), metric(0.9, true))]),
            cycles_until_plateau: 5,
            recovery_strategies: vec!["novelty_injection".into()],
            environment: BTreeMap::from([("tag".into(), tag.into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .share_strategy(strategy_outcome(
            "novelty_injection",
            "learningVelocity",
            true,
            0.2,
        ))
        .await
        .unwrap();
    client.share_insight(insight(tag)).await.unwrap();
    client
        .share_failure(pb::ShareFailureRequest {
            failure_type: pb::FailureType::Deadlock as i32,
            trigger: tag.into(),
            context: Some(pb::FailureContext {
                metric: "adaptationSpeed".into(),
                strategy: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .share_configuration(pb::ShareConfigurationRequest {
            parameters: BTreeMap::from([(
                "tag".into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(tag.into())),
                },
            )]),
            effectiveness: 0.7,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn every_record_kind_survives_a_restart() {
    let mut hub = TestHub::start().await;
    let a = hub.registered("a").await;
    share_everything(&a, "one").await;
    share_everything(&a, "two").await;
    // The predictive hub's state: a pending model update, an anomaly (one
    // instance contradicting three) and a quarantine.
    a.share_model_update(pb::ShareModelUpdateRequest {
        model: "plateau".into(),
        delta: vec![0.1; 8],
        examples: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    for (who, ok) in [("h0", true), ("h1", true), ("h2", true), ("liar", false)] {
        let client = hub.registered(who).await;
        for _ in 0..10 {
            client
                .share_strategy(strategy_outcome("steady", "lv", ok, 0.05))
                .await
                .unwrap();
        }
    }
    let op = hub.operator().await;
    let anomalies = op
        .admin()
        .list_anomalies(pb::ListAnomaliesRequest { scan: true })
        .await
        .unwrap()
        .into_inner()
        .anomalies;
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    op.admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "h2".into(),
            reason: "kept across restarts".into(),
        })
        .await
        .unwrap();
    let before = op.get_status(pb::GetStatusRequest {}).await.unwrap();

    hub.restart().await;
    let op = hub.operator().await;
    let after = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(
        (
            after.instances,
            after.patterns,
            after.strategy_records,
            after.strategy_outcomes,
            after.insights,
            after.failures,
            after.configurations,
            after.last_insight_sequence
        ),
        (
            before.instances,
            before.patterns,
            before.strategy_records,
            before.strategy_outcomes,
            before.insights,
            before.failures,
            before.configurations,
            before.last_insight_sequence
        )
    );
    assert_eq!(
        (after.patterns, after.insights, after.configurations),
        (2, 2, 2)
    );
    let instance = &op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .instances[0];
    assert_eq!(
        instance.shared_records, 11,
        "10 shares and the model update"
    );
    let ranked = op
        .get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    assert_eq!(ranked[0].applications, 2);
    let failures = op
        .get_failures(pb::GetFailuresRequest::default())
        .await
        .unwrap()
        .failures;
    assert_eq!(failures[0].occurrences, 2);
    let model = plateau_model(&op).await;
    assert_eq!((model.version, model.pending), (0, 1));
    let kept = op
        .admin()
        .list_anomalies(pb::ListAnomaliesRequest { scan: false })
        .await
        .unwrap()
        .into_inner()
        .anomalies;
    assert_eq!(kept, anomalies, "the same anomaly, first seen when it was");
    let quarantined = op
        .admin()
        .list_quarantined(pb::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .quarantined;
    assert_eq!(quarantined[0].reason, "kept across restarts");
}

/// What one writer had acknowledged when the hub died.
#[derive(Default)]
struct Acked {
    outcomes: u64,
    insights: Vec<(u64, String)>,
    patterns: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    learning_hub::pki::generate_dev_pki(certs.path()).unwrap();
    let mut process = HubProcess::spawn(data.path(), certs.path(), 0);
    let addr = process.addr;

    const WRITERS: usize = 8;
    let mut tasks = Vec::new();
    let mut ledgers = Vec::new();
    for w in 0..WRITERS {
        let id = format!("writer{w}");
        let client = connect_registered(addr, certs.path(), &id, "test").await;
        let ledger = Arc::new(Mutex::new(Acked::default()));
        ledgers.push(ledger.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer has its own strategy and pattern, so what it
            // acknowledged can be checked on its own. Writes go on until the
            // hub dies under them.
            let strategy = format!("strategy_{id}");
            for i in 0u64.. {
                let ok = match i % 3 {
                    0 => client
                        .share_strategy(strategy_outcome(&strategy, "learningVelocity", true, 0.1))
                        .await
                        .is_ok_and(|_| true),
                    1 => {
                        let title = format!("{id} insight {i}");
                        match client.share_insight(insight(&title)).await {
                            Ok(reply) => {
                                let seq = reply.insight.unwrap().sequence;
                                ledger.lock().await.insights.push((seq, title));
                                continue;
                            }
                            Err(_) => false,
                        }
                    }
                    _ => client
                        .share_pattern(pb::SharePatternRequest {
                            metrics: BTreeMap::from([(id.clone(), metric(0.5, true))]),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if !ok {
                    return;
                }
                let mut ledger = ledger.lock().await;
                match i % 3 {
                    0 => ledger.outcomes += 1,
                    _ => ledger.patterns += 1,
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    process.kill9();
    for task in tasks {
        task.await.unwrap();
    }

    let restarted = HubProcess::spawn(data.path(), certs.path(), addr.port());
    let op = connect(
        restarted.addr,
        certs.path(),
        &Identity::operator("operator"),
    )
    .await;
    let mut total_outcomes = 0;
    // Every stored insight, through a stream replay (GetInsights stops at
    // 1000, and a fast machine writes more than that).
    let last = op
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .last_insight_sequence;
    let stored_insights = replay_insights(&op, last).await;
    for (w, ledger) in ledgers.iter().enumerate() {
        let ledger = ledger.lock().await;
        let id = format!("writer{w}");
        assert!(ledger.outcomes > 0, "{id} wrote nothing before the kill");
        let ranked = op
            .get_strategies(pb::GetStrategiesRequest {
                metric: "learningVelocity".into(),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .recommendations;
        let stored = ranked
            .iter()
            .find(|r| r.strategy == format!("strategy_{id}"))
            .map_or(0, |r| r.applications);
        // At most one request per writer was in flight when the hub died:
        // it may or may not have been applied; everything acknowledged was.
        assert!(
            stored >= ledger.outcomes && stored <= ledger.outcomes + 1,
            "{id}: {} acknowledged outcomes, {stored} stored",
            ledger.outcomes
        );
        total_outcomes += ledger.outcomes;
        for (seq, title) in &ledger.insights {
            assert_eq!(
                stored_insights.get(seq),
                Some(title),
                "{id}: acknowledged insight {seq} lost or changed"
            );
        }
        let patterns = op
            .get_patterns(pb::GetPatternsRequest {
                metrics: BTreeMap::from([(id.clone(), metric(0.5, true))]),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .matches;
        let frequency = patterns
            .first()
            .map_or(0, |m| m.pattern.as_ref().unwrap().frequency);
        assert!(
            frequency >= ledger.patterns && frequency <= ledger.patterns + 1,
            "{id}: {} acknowledged pattern shares, frequency {frequency}",
            ledger.patterns
        );
    }
    assert!(total_outcomes > 0);
    eprintln!(
        "sigkill: {total_outcomes} acknowledged outcomes and {} insights all present after restart",
        stored_insights.len()
    );
}
