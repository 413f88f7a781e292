//! Idempotent writes end to end: a write sent again with the same
//! `request_id` is applied once and answered as the first time — sent
//! twice, sent 20 times at once, across a restart, and by the client's own
//! retries after an answer got lost on the way back. Different instances'
//! ids never collide; an id reused for something else is refused; ids are
//! forgotten after the window.

use crate::common;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use common::*;
use learning_hub::{
    client::{HubClient, RetryPolicy},
    clock::ManualClock,
    pb,
};
use prost_types::{Value, value::Kind};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::Code;

const EPOCH: i64 = 1_762_214_400_000;
const HOUR_MS: i64 = 60 * 60 * 1000;

/// A registered client whose calls are sent exactly once, so the test
/// decides which request ids go out.
async fn once(hub: &TestHub, id: &str) -> HubClient {
    hub.registered(id)
        .await
        .with_retry_policy(RetryPolicy::none())
}

fn outcome(id: &str) -> pb::ShareStrategyRequest {
    pb::ShareStrategyRequest {
        request_id: id.into(),
        ..strategy_outcome("novelty_injection", "learningVelocity", true, 0.1)
    }
}

async fn outcomes(hub: &TestHub) -> u64 {
    hub.operator()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .strategy_outcomes
}

/// Applications of novelty_injection as instance "a", which reported
/// them all, sees them (a lone reporter's outcomes count in full only for
/// itself: crates/domain/src/influence.rs).
async fn applications(hub: &TestHub) -> u64 {
    hub.client("a")
        .await
        .get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations
        .iter()
        .map(|r| r.applications)
        .sum()
}

#[tokio::test]
async fn share_strategy_sent_twice_with_one_request_id_counts_once() {
    let hub = TestHub::start().await;
    let a = once(&hub, "a").await;
    let first = a.share_strategy(outcome("r-1")).await.unwrap();
    let again = a.share_strategy(outcome("r-1")).await.unwrap();
    assert_eq!(again.outcome_sequence, first.outcome_sequence);
    assert_eq!(again.record.as_ref().unwrap().applications, 1);
    assert_eq!(again.record, first.record, "the same answer");
    assert_eq!(outcomes(&hub).await, 1);
    assert_eq!(applications(&hub).await, 1);

    // A new id is a new write; without an id nothing is deduplicated.
    a.share_strategy(outcome("r-2")).await.unwrap();
    a.share_strategy(outcome("")).await.unwrap();
    a.share_strategy(outcome("")).await.unwrap();
    assert_eq!(outcomes(&hub).await, 4);
    assert_eq!(applications(&hub).await, 4);
}

#[tokio::test]
async fn every_write_with_a_request_id_applies_once() {
    let hub = TestHub::start().await;
    let a = once(&hub, "a").await;

    let pattern = pb::SharePatternRequest {
        metrics: BTreeMap::from([("lv".to_string(), metric(0.5, true))]),
        recovery_strategies: vec!["novelty_injection".into()],
        request_id: "p-1".into(),
        ..Default::default()
    };
    let first = a.share_pattern(pattern.clone()).await.unwrap();
    let again = a.share_pattern(pattern).await.unwrap();
    assert!(first.new_pattern && again.new_pattern, "the first answer");
    assert_eq!(again.pattern.as_ref().unwrap().frequency, 1);
    let pattern_id = first.pattern.unwrap().id;

    let report = pb::RecordPatternOutcomeRequest {
        pattern_id: pattern_id.clone(),
        success: true,
        strategy: "novelty_injection".into(),
        request_id: "po-1".into(),
        ..Default::default()
    };
    a.record_pattern_outcome(report.clone()).await.unwrap();
    let again = a.record_pattern_outcome(report).await.unwrap();
    let effectiveness = again.pattern.unwrap().effectiveness.unwrap();
    assert_eq!((effectiveness.success, effectiveness.failure), (1, 0));

    let mut shared = insight("cooldown helps");
    shared.request_id = "i-1".into();
    let first = a.share_insight(shared.clone()).await.unwrap();
    let again = a.share_insight(shared).await.unwrap();
    assert!(!first.duplicate && !again.duplicate, "the first answer");
    let (first, again) = (first.insight.unwrap(), again.insight.unwrap());
    assert_eq!((&again.id, again.sequence), (&first.id, first.sequence));
    let status = hub
        .operator()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!((status.insights, status.last_insight_sequence), (1, 1));

    let usage = pb::RecordInsightUseRequest {
        insight_id: first.id.clone(),
        request_id: "u-1".into(),
    };
    let first_use = a.record_insight_use(usage.clone()).await.unwrap();
    let again = a.record_insight_use(usage).await.unwrap();
    assert_eq!(again.insight, first_use.insight);

    let failure = pb::ShareFailureRequest {
        failure_type: pb::FailureType::MetricReversal as i32,
        trigger: "lv dropped".into(),
        context: Some(pb::FailureContext {
            metric: "lv".into(),
            strategy: "speed".into(),
        }),
        request_id: "f-1".into(),
        ..Default::default()
    };
    a.share_failure(failure.clone()).await.unwrap();
    let again = a.share_failure(failure).await.unwrap();
    assert_eq!(again.failure.unwrap().occurrences, 1);

    let configuration = pb::ShareConfigurationRequest {
        parameters: BTreeMap::from([(
            "cycle_interval_ms".to_string(),
            Value {
                kind: Some(Kind::NumberValue(600_000.0)),
            },
        )]),
        effectiveness: 0.8,
        data_points: 10,
        request_id: "c-1".into(),
        ..Default::default()
    };
    a.share_configuration(configuration.clone()).await.unwrap();
    let again = a.share_configuration(configuration).await.unwrap();
    assert_eq!(again.configuration.unwrap().based_on_data_points, 10);

    // Each applied write counts once towards the instance's shared
    // records: six writes, each sent twice.
    let op = hub.operator().await;
    let me = &op
        .list_instances(Default::default())
        .await
        .unwrap()
        .instances[0];
    assert_eq!(me.shared_records, 6);
}

#[tokio::test]
async fn twenty_concurrent_duplicates_apply_once() {
    let hub = TestHub::start().await;
    let a = once(&hub, "a").await;
    let calls = (0..20).map(|_| {
        let a = a.clone();
        tokio::spawn(async move { a.share_strategy(outcome("burst")).await })
    });
    let mut sequences = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        sequences.push(call.await.unwrap().unwrap().outcome_sequence);
    }
    assert_eq!(sequences, vec![1; 20]);
    assert_eq!(outcomes(&hub).await, 1);
    assert_eq!(applications(&hub).await, 1);
}

#[tokio::test]
async fn request_ids_are_per_instance() {
    let hub = TestHub::start().await;
    let a = once(&hub, "a").await;
    let b = once(&hub, "b").await;
    let from_a = a.share_strategy(outcome("same-id")).await.unwrap();
    // b's request with the same id and another payload is b's own.
    let mut other = outcome("same-id");
    other.delta = 0.3;
    let from_b = b.share_strategy(other).await.unwrap();
    assert_ne!(from_a.outcome_sequence, from_b.outcome_sequence);
    assert_eq!(outcomes(&hub).await, 2);
    // And each is still deduplicated for its own instance.
    a.share_strategy(outcome("same-id")).await.unwrap();
    assert_eq!(outcomes(&hub).await, 2);
}

#[tokio::test]
async fn a_request_id_reused_for_something_else_is_refused() {
    let hub = TestHub::start().await;
    let a = once(&hub, "a").await;
    a.share_strategy(outcome("r-1")).await.unwrap();

    let mut changed = outcome("r-1");
    changed.delta = 0.2;
    let refused = a.share_strategy(changed).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(
        refused.message().starts_with("request_id \"r-1\"")
            && refused
                .message()
                .contains("different ShareStrategy request"),
        "{}",
        refused.message()
    );

    let refused = a
        .share_insight(pb::ShareInsightRequest {
            request_id: "r-1".into(),
            ..insight("other rpc")
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(
        refused
            .message()
            .contains("request_id \"r-1\" was already used for ShareStrategy"),
        "{}",
        refused.message()
    );
    assert_eq!(outcomes(&hub).await, 1, "neither was applied");
    assert!(
        a.get_insights(Default::default())
            .await
            .unwrap()
            .insights
            .is_empty()
    );

    let invalid = a.share_strategy(outcome("not an id")).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().starts_with("request_id: "), "{invalid:?}");
}

#[tokio::test]
async fn request_ids_survive_a_restart() {
    let mut hub = TestHub::start().await;
    let a = once(&hub, "a").await;
    let first = a.share_strategy(outcome("r-1")).await.unwrap();
    hub.restart().await;
    let a = hub.client("a").await.with_retry_policy(RetryPolicy::none());
    let again = a.share_strategy(outcome("r-1")).await.unwrap();
    assert_eq!(again.outcome_sequence, first.outcome_sequence);
    assert_eq!(outcomes(&hub).await, 1);
    assert_eq!(applications(&hub).await, 1);
}

#[tokio::test]
async fn request_ids_are_forgotten_after_the_window() {
    let clock = ManualClock::new(EPOCH);
    let hub = TestHub::start_with_clock(Arc::new(clock.clone()), |c| {
        c.hub.request_id_window_ms = 24 * HOUR_MS;
    })
    .await;
    let a = once(&hub, "a").await;
    let first = a.share_strategy(outcome("r-1")).await.unwrap();
    clock.advance(24 * HOUR_MS - 1);
    let again = a.share_strategy(outcome("r-1")).await.unwrap();
    assert_eq!(again.outcome_sequence, first.outcome_sequence);
    assert_eq!(outcomes(&hub).await, 1);
    // From the window's end on, the same request is a new write.
    clock.advance(1);
    let later = a.share_strategy(outcome("r-1")).await.unwrap();
    assert_eq!(later.outcome_sequence, first.outcome_sequence + 1);
    assert_eq!(outcomes(&hub).await, 2);
    // …and is remembered afresh.
    a.share_strategy(outcome("r-1")).await.unwrap();
    assert_eq!(outcomes(&hub).await, 2);
}

/// A TCP relay in front of the hub that can hold back everything the hub
/// sends (its answers) while the requests still get through: an answer
/// lost on the way back, as a client that timed out sees it.
struct Relay {
    addr: SocketAddr,
    hold: watch::Sender<bool>,
}

impl Relay {
    async fn start(hub: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(hub).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_hub, mut to_hub) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_hub).await;
                });
                let mut held = held.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_hub.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if held.wait_for(|hold| !*hold).await.is_err()
                            || to_client.write_all(&buffer[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Relay { addr, hold }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_after_a_lost_answer_count_once() {
    let hub = TestHub::start().await;
    hub.registered("a").await;
    let relay = Relay::start(hub.addr).await;
    let mut settings = hub.instance_settings("a").await;
    settings.url = format!("https://{}", relay.addr);
    let retrying = RetryPolicy {
        max_attempts: 100,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Some(Duration::from_millis(300)),
    };
    let client = HubClient::connect(&settings)
        .await
        .unwrap()
        .with_retry_policy(retrying);

    // The hub's answers stop reaching the client. The call carries no
    // request id: the client makes one up and keeps it for its retries.
    relay.hold.send_replace(true);
    let call = tokio::spawn(async move { client.share_strategy(outcome("")).await });

    // The hub applies the first attempt…
    let op = hub.operator().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let applied = || async {
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .strategy_outcomes
    };
    while applied().await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and answers retries of it, which the client does not see either.
    let answered = || async {
        op.admin()
            .query_audit(pb::QueryAuditRequest {
                caller: "a".into(),
                rpc: "ShareStrategy".into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .iter()
            .filter(|e| e.code == Code::Ok as i32)
            .count()
    };
    while answered().await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!call.is_finished(), "no answer got through yet");

    // Answers flow again: the next attempt's gets through.
    relay.hold.send_replace(false);
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends once answers get through")
        .unwrap()
        .unwrap();
    assert_eq!(answer.outcome_sequence, 1);
    assert_eq!(answer.record.unwrap().applications, 1);
    assert_eq!(outcomes(&hub).await, 1, "one write, however many attempts");
    assert_eq!(applications(&hub).await, 1);
}

#[tokio::test]
async fn the_default_client_rides_out_a_restart_with_a_new_id_per_call() {
    let mut hub = TestHub::start().await;
    let a = hub.registered("a").await;
    assert!(a.retry_policy().retries());
    a.share_strategy(outcome("")).await.unwrap();
    a.share_strategy(outcome("")).await.unwrap();
    assert_eq!(
        outcomes(&hub).await,
        2,
        "one request id per call: two writes"
    );
    // Its connection breaks with the restart; the call is retried on a new
    // one.
    hub.restart().await;
    a.share_strategy(outcome("")).await.unwrap();
    assert_eq!(outcomes(&hub).await, 3);
}
