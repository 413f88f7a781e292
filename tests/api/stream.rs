//! The insight stream's guarantees: replay then live, in order, no gaps, no
//! duplicates; resumable after a disconnect and after a hub restart; a
//! subscriber that falls behind catches up from the store; subscribers that
//! go away are unregistered; shutdown ends streams with a resume hint.

use crate::common;

use std::time::Duration;

use common::*;
use learning_hub::{client::HubClient, pb};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

async fn open(client: &HubClient, after: u64) -> Streaming<pb::SubscribeInsightsResponse> {
    client
        .subscribe_insights_once(pb::SubscribeInsightsRequest {
            after_sequence: after,
            category: 0,
        })
        .await
        .unwrap()
}

/// Reads `n` insights and returns their sequences.
async fn take(stream: &mut Streaming<pb::SubscribeInsightsResponse>, n: usize) -> Vec<u64> {
    let mut sequences = Vec::with_capacity(n);
    while sequences.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("insight within 10 s")
            .expect("stream open")
            .expect("no error");
        sequences.push(item.insight.unwrap().sequence);
    }
    sequences
}

async fn share_n(client: &HubClient, prefix: &str, n: usize) {
    for i in 0..n {
        client
            .share_insight(insight(&format!("{prefix} {i}")))
            .await
            .unwrap();
    }
}

async fn live_subscribers(hub: &TestHub) -> u64 {
    hub.operator()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .live_subscribers
}

#[tokio::test]
async fn replays_then_streams_live_in_order() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    share_n(&a, "before", 3).await;

    let mut all = open(&a, 0).await;
    assert_eq!(
        take(&mut all, 3).await,
        [1, 2, 3],
        "replay of stored insights"
    );
    let mut tail = open(&a, 2).await;
    assert_eq!(
        take(&mut tail, 1).await,
        [3],
        "replay starts after after_sequence"
    );

    share_n(&a, "after", 2).await;
    assert_eq!(
        take(&mut all, 2).await,
        [4, 5],
        "live insights follow the replay"
    );
    assert_eq!(take(&mut tail, 2).await, [4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_seen_in_sequence_order() {
    let hub = TestHub::start().await;
    let reader = hub.registered("reader").await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        subscribers.push(open(&reader, 0).await);
    }
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = hub.registered(&format!("w{w}")).await;
        writers.push(tokio::spawn(async move {
            share_n(&client, &format!("w{w}"), 25).await
        }));
    }
    // A subscriber joining mid-burst must see the same complete sequence.
    tokio::time::sleep(Duration::from_millis(20)).await;
    subscribers.push(open(&reader, 0).await);
    for writer in writers {
        writer.await.unwrap();
    }
    let expected: Vec<u64> = (1..=100).collect();
    for mut stream in subscribers {
        assert_eq!(take(&mut stream, 100).await, expected);
    }
}

#[tokio::test]
async fn category_filter_keeps_order() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut stream = a
        .subscribe_insights_once(pb::SubscribeInsightsRequest {
            after_sequence: 0,
            category: pb::InsightCategory::Sequence as i32,
        })
        .await
        .unwrap();
    for i in 0..6 {
        let mut request = insight(&format!("i{i}"));
        if i % 2 == 1 {
            request.insight.as_mut().unwrap().category = pb::InsightCategory::Sequence as i32;
        }
        a.share_insight(request).await.unwrap();
    }
    assert_eq!(take(&mut stream, 3).await, [2, 4, 6]);
}

#[tokio::test]
async fn resumes_after_disconnect_without_gaps_or_duplicates() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut stream = open(&a, 0).await;
    share_n(&a, "x", 3).await;
    let seen = take(&mut stream, 2).await;
    drop(stream);
    share_n(&a, "y", 3).await;
    let mut resumed = open(&a, *seen.last().unwrap()).await;
    assert_eq!(take(&mut resumed, 4).await, [3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_client_survives_hub_restart() {
    let mut hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut subscription = a.subscribe_insights(0, pb::InsightCategory::Unspecified);
    share_n(&a, "before", 2).await;
    for expected in 1..=2 {
        let got = subscription.next().await.unwrap().unwrap();
        assert_eq!(got.sequence, expected);
    }

    hub.restart().await;
    // The same client reconnects by itself; sequences continue, not restart.
    let after = hub.registered("a").await;
    share_n(&after, "after", 2).await;
    for expected in 3..=4 {
        let got = tokio::time::timeout(Duration::from_secs(15), subscription.next())
            .await
            .expect("resumed within 15 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.sequence, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_subscriber_catches_up_from_the_store() {
    // A tiny broadcast buffer: a subscriber that stops reading falls
    // behind after a handful of insights.
    let hub = TestHub::start_with(|c| {
        c.hub.broadcast_capacity = 4;
    })
    .await;
    let reader = hub.registered("reader").await;
    let mut slow = open(&reader, 0).await;
    let mut fast = open(&reader, 0).await;

    // Big insights so HTTP/2 flow control stops the server writing to the
    // slow client long before 300 have been published.
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = hub.registered(&format!("w{w}")).await;
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                let mut request = insight(&format!("w{w} {i}"));
                request.insight.as_mut().unwrap().insight = "x".repeat(4000);
                client.share_insight(request).await.unwrap();
            }
        }));
    }
    let expected: Vec<u64> = (1..=300).collect();
    assert_eq!(take(&mut fast, 300).await, expected);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        take(&mut slow, 300).await,
        expected,
        "complete despite lagging"
    );
    let status = hub
        .operator()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert!(
        status.stream_catch_ups > 0,
        "the slow subscriber did lag: {status:?}"
    );
}

#[tokio::test]
async fn disconnected_subscribers_are_unregistered() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let first = open(&a, 0).await;
    let second = open(&a, 0).await;
    let _third = open(&a, 0).await;
    assert_eq!(live_subscribers(&hub).await, 3);
    drop(first);
    drop(second);
    for _ in 0..100 {
        if live_subscribers(&hub).await == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "dropped subscribers still counted: {}",
        live_subscribers(&hub).await
    );
}

#[tokio::test]
async fn shutdown_ends_streams_with_resume_hint() {
    let mut hub = TestHub::start().await;
    let a = hub.registered("a").await;
    share_n(&a, "x", 2).await;
    let mut stream = open(&a, 0).await;
    take(&mut stream, 2).await;
    let stopping = tokio::spawn(async move { hub.stop().await });
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends promptly on shutdown");
    let status = end.expect("an error, not a silent end").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("after_sequence=2"),
        "{}",
        status.message()
    );
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn sequences_are_never_reused_after_restart() {
    let mut hub = TestHub::start().await;
    let a = hub.registered("a").await;
    share_n(&a, "x", 3).await;
    hub.restart().await;
    let a = hub.registered("a").await;
    let next = a.share_insight(insight("after restart")).await.unwrap();
    assert_eq!(next.insight.unwrap().sequence, 4);
}
