//! Overload: past `max_in_flight` unary calls in progress the hub refuses
//! further calls at once with RESOURCE_EXHAUSTED and a `retry-after` hint,
//! instead of queueing them; what it admitted completes normally, nothing
//! refused was applied, and insight streams do not take up the bound.
//! The latency figures at 3× capacity come from the bench (RELIABILITY.md).

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use learning_hub::{client::RetryPolicy, pb};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_bound_are_refused_at_once_and_not_applied() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_in_flight = 2;
        c.hub.rate_limit_per_hour = 0;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        // Each call sent once: the test is about the hub's refusals, not
        // the client's retries (which honour retry-after).
        clients.push(
            hub.registered(&format!("busy{i}"))
                .await
                .with_retry_policy(RetryPolicy::none()),
        );
    }

    let calls = (0..96).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move {
            client
                .share_strategy(strategy_outcome("s", "learningVelocity", true, 0.1))
                .await
        }
    });
    let results = join_all(calls).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count() as u64;
    let mut refused = 0;
    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("overloaded"),
                "{}",
                status.message()
            );
            assert_eq!(
                status
                    .metadata()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                "1"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "96 concurrent calls against a bound of 2");
    assert!(accepted > 0);

    // Exactly the accepted outcomes were applied.
    let op = hub.operator().await;
    let stored = op
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .strategy_outcomes;
    assert_eq!(stored, accepted);

    // The bound frees up as calls finish.
    for client in &clients {
        client.get_status(pb::GetStatusRequest {}).await.unwrap();
    }
}

#[tokio::test]
async fn insight_streams_do_not_count_against_the_bound() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_in_flight = 1;
    })
    .await;
    let client = hub.registered("watcher").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(
            client
                .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
                .await
                .unwrap(),
        );
    }
    for _ in 0..3 {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_status(pb::GetStatusRequest {}),
        )
        .await
        .unwrap()
        .unwrap();
    }
}
