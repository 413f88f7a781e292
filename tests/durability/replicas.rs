//! Replicated hubs: several hubs on one PostgreSQL database (a database of
//! the test's own), and hubs in this process on one in-memory shared log
//! where a test needs to break the log in ways PostgreSQL will not on
//! request.
//!
//! - writes through every replica fold to one state (equal digests at one
//!   position), and an instance reads its own write on another replica;
//! - insights get the same sequences everywhere, so a stream resumes on
//!   any replica;
//! - a key revoked through one replica is refused by the others;
//! - one replica holds the jobs lease, another takes it over;
//! - a client with every replica's address carries on when one stops;
//! - an append whose commit answer was lost is applied once;
//! - a log entry in a newer format stops a replica, named.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use learning_hub::{
    clock::SystemClock,
    domain::command::{Action, COMMAND_FORMAT, Command},
    domain::model::Registration,
    hub::{Hub, HubSettings, replica::ReplicaSettings},
    pb,
    store::{Backend, MemorySharedLog, SharedLog},
};
use tonic::Code;

use crate::common::cluster::Cluster;

fn share(i: usize) -> pb::ShareStrategyRequest {
    pb::ShareStrategyRequest {
        strategy: format!("s{}", i % 4),
        metric: "accuracy".into(),
        value_before: 0.5,
        successful: i % 3 != 0,
        delta: 0.01 * (i % 5) as f64,
        ..Default::default()
    }
}

/// Three replicas, a writer on each: one state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_replica_fold_to_one_state() {
    let Some(cluster) = Cluster::start(
        "replicas::writes_through_every_replica_fold_to_one_state",
        3,
        |_| {},
    )
    .await
    else {
        return;
    };
    let mut writers = Vec::new();
    for r in 0..3 {
        let client = cluster.client(&format!("w{r}"), r).await;
        writers.push(tokio::spawn(async move {
            for i in 0..30 {
                client.share_strategy(share(i + r)).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let reports = cluster.settled().await;
    assert!(
        reports.iter().all(|r| r.1 == reports[0].1),
        "one position, different states: {reports:?}"
    );
    for hub in &cluster.hubs {
        let status = hub
            .operator()
            .await
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap();
        assert_eq!(status.strategy_outcomes, 90);
        assert_eq!(status.instances, 3);
    }
}

/// A write through one replica, then a read through another that says
/// which position it must include: it waits for it; a position the log
/// has not reached is refused with a retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_another_replica_includes_the_callers_write() {
    let Some(cluster) = Cluster::start(
        "replicas::a_read_on_another_replica_includes_the_callers_write",
        2,
        |_| {},
    )
    .await
    else {
        return;
    };
    let writer = cluster.client("i1", 0).await;
    let written = writer
        .raw()
        .share_strategy(share(1))
        .await
        .expect("written");
    let position: u64 = written
        .metadata()
        .get("x-hub-log-pos")
        .expect("answers carry their log position")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(position > 0);
    let reader = cluster.hubs[1].client("i1").await;
    let mut request = tonic::Request::new(pb::GetStrategiesRequest {
        metric: "accuracy".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-hub-min-pos", position.to_string().parse().unwrap());
    let read = reader.raw().get_strategies(request).await.unwrap();
    let seen: u64 = read
        .metadata()
        .get("x-hub-log-pos")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen >= position, "answered at {seen}, asked for {position}");
    assert_eq!(read.into_inner().recommendations.len(), 1);

    let started = Instant::now();
    let mut ahead = tonic::Request::new(pb::GetStatusRequest {});
    ahead.metadata_mut().insert(
        "x-hub-min-pos",
        (position + 1_000).to_string().parse().unwrap(),
    );
    let refused = reader.raw().get_status(ahead).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("not yet"),
        "{}",
        refused.message()
    );
    assert!(refused.metadata().get("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Insights shared through different replicas are numbered alike on
/// every replica: a subscriber on one sees 1..n in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insight_sequences_are_the_same_on_every_replica() {
    let Some(cluster) = Cluster::start(
        "replicas::insight_sequences_are_the_same_on_every_replica",
        2,
        |_| {},
    )
    .await
    else {
        return;
    };
    let a = cluster.client("a", 0).await;
    let b = cluster.client("b", 1).await;
    let reader = cluster.hubs[1].client("reader").await;
    let mut stream = reader.subscribe_insights(0, pb::InsightCategory::Unspecified);
    for i in 0..10 {
        let client = if i % 2 == 0 { &a } else { &b };
        client
            .share_insight(pb::ShareInsightRequest {
                insight: Some(pb::Insight {
                    category: pb::InsightCategory::Sequence as i32,
                    title: format!("insight {i}"),
                    insight: "seen through one replica".into(),
                    evidence: Some(pb::InsightEvidence {
                        data_points: 10,
                        correlation_strength: 0.5,
                        instances_covered: 2,
                        improvement_observed: 0.1,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut sequences = Vec::new();
    while sequences.len() < 10 {
        let insight = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("delivered within 10 s")
            .unwrap()
            .unwrap();
        sequences.push(insight.sequence);
    }
    assert_eq!(sequences, (1..=10).collect::<Vec<u64>>());
}

/// A key revoked through one replica stops working on the others within
/// two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_replica_is_refused_by_the_others() {
    let Some(cluster) = Cluster::start(
        "replicas::a_key_revoked_through_one_replica_is_refused_by_the_others",
        2,
        |_| {},
    )
    .await
    else {
        return;
    };
    let on_b = cluster.hubs[1].registered("victim").await;
    on_b.get_status(pb::GetStatusRequest {}).await.unwrap();
    let revoked = Instant::now();
    cluster.hubs[0]
        .operator()
        .await
        .revoke_api_key("victim")
        .await
        .unwrap();
    let on_b = on_b.with_retry_policy(learning_hub::client::RetryPolicy::none());
    loop {
        match on_b.get_status(pb::GetStatusRequest {}).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            _ => {}
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "still accepted 2 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lease_holders(cluster: &Cluster) -> Vec<(usize, u64)> {
    let mut holders = Vec::new();
    for (i, hub) in cluster.hubs.iter().enumerate() {
        let Ok(op) = hub.try_operator().await else {
            continue;
        };
        let Ok(status) = op
            .admin()
            .get_replica_status(pb::GetReplicaStatusRequest {})
            .await
        else {
            continue;
        };
        let status = status.into_inner();
        if status.holds_jobs_lease {
            holders.push((i, status.lease_epoch));
        }
    }
    holders
}

/// One replica holds the jobs lease; when it stops (and gives the lease
/// up), another holds it within a second, under a greater epoch. (A holder
/// that dies without giving it up: the lease expires — tests/durability/
/// replica_kills.rs, and the shared log's rules.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_lease_has_one_holder_and_moves_when_it_stops() {
    let Some(mut cluster) = Cluster::start(
        "replicas::the_jobs_lease_has_one_holder_and_moves_when_it_stops",
        3,
        |_| {},
    )
    .await
    else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (holder, epoch) = loop {
        let holders = lease_holders(&cluster).await;
        assert!(holders.len() <= 1, "two holders: {holders:?}");
        if let [one] = holders[..] {
            break one;
        }
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.hubs[holder].stop().await.unwrap();
    let lost = Instant::now();
    let (next, next_epoch) = loop {
        let holders: Vec<_> = lease_holders(&cluster)
            .await
            .into_iter()
            .filter(|(i, _)| *i != holder)
            .collect();
        if let [one] = holders[..] {
            break one;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(1),
            "no new holder within 1 s of the holder's stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(next, holder);
    assert!(next_epoch > epoch, "epoch {next_epoch} after {epoch}");
}

/// A client that knows every replica carries on, writes and reads, when
/// the replica it used stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_carries_on_when_its_replica_stops() {
    let Some(mut cluster) = Cluster::start(
        "replicas::a_client_carries_on_when_its_replica_stops",
        2,
        |_| {},
    )
    .await
    else {
        return;
    };
    let client = cluster.client("i1", 0).await;
    client.share_strategy(share(1)).await.unwrap();
    cluster.hubs[0].stop().await.unwrap();
    let started = Instant::now();
    client.share_strategy(share(2)).await.unwrap();
    let failover = started.elapsed();
    let strategies = client
        .get_strategies(pb::GetStrategiesRequest {
            metric: "accuracy".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!strategies.recommendations.is_empty());
    assert_eq!(client.endpoint(), cluster.hubs[1].url());
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
}

// --- in-process replicas on the in-memory shared log ---------------------

fn settings() -> HubSettings {
    HubSettings {
        write_timeout: Duration::from_secs(5),
        ..HubSettings::default()
    }
}

fn replica(log: &MemorySharedLog, name: &str) -> Arc<Hub> {
    Hub::open_replica(
        Arc::new(log.clone()),
        ReplicaSettings::new(name),
        Arc::new(SystemClock),
        settings(),
    )
    .unwrap()
}

fn register(id: &str) -> Registration {
    Registration {
        instance_id: id.into(),
        region: "r".into(),
        context: Default::default(),
        capabilities: vec![],
    }
}

/// The connection broke while the commit went through: the writer appends
/// the batch again under its id, the log keeps one copy, and the caller
/// gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_commit_answer_was_lost_is_applied_once() {
    let log = MemorySharedLog::new();
    let hub = replica(&log, "a");
    hub.register("a", register("a")).await.unwrap();
    let before = log.appends();
    log.lose_next_commit_answer();
    hub.register("b", register("b")).await.unwrap();
    assert_eq!(log.appends(), before + 1, "appended once");
    let entries = log.log_after(0, 100).unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(hub.state().tables.instances.len(), 2);
    hub.close().await.unwrap();
}

/// While the log is away, writes are refused as UNAVAILABLE naming it and
/// health says why; once it is back, writes go on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_its_log_refuses_writes_and_recovers() {
    let log = MemorySharedLog::new();
    let hub = replica(&log, "a");
    hub.register("a", register("a")).await.unwrap();
    log.set_down(true);
    let refused = hub.register("b", register("b")).await.unwrap_err();
    assert!(
        matches!(&refused, learning_hub::Error::Unavailable(m) if m.contains("switched off")),
        "{refused:?}"
    );
    assert!(hub.health().borrow().is_some(), "not serving");
    log.set_down(false);
    hub.register("b", register("b")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.health().borrow().is_some() {
        assert!(Instant::now() < deadline, "still not serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.close().await.unwrap();
}

/// Two replicas in one process: what one appends, the other folds, and
/// both end at one digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_log_agree() {
    let log = MemorySharedLog::new();
    let a = replica(&log, "a");
    let b = replica(&log, "b");
    for i in 0..20 {
        let hub = if i % 2 == 0 { &a } else { &b };
        hub.register(&format!("i{i}"), register(&format!("i{i}")))
            .await
            .unwrap();
    }
    let head = log.log_head().unwrap();
    assert!(a.wait_for_position(head, Duration::from_secs(5)).await);
    assert!(b.wait_for_position(head, Duration::from_secs(5)).await);
    assert_eq!(a.state_digest(), b.state_digest());
    let ids: BTreeSet<String> = b.state().tables.instances.keys().cloned().collect();
    assert_eq!(ids.len(), 20);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// An entry in a command format newer than this hub reads: the replica
/// stops folding and says why, rather than misfold the rest of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_command_format_stops_a_replica_by_name() {
    let log = MemorySharedLog::new();
    let hub = replica(&log, "a");
    hub.register("a", register("a")).await.unwrap();
    let mut newer = Command {
        at: 0,
        action: Action::RevokeApiKey {
            instance_id: "a".into(),
        },
    }
    .encode();
    newer[0] = COMMAND_FORMAT + 1;
    log.append_batch([9; 16], &[newer]).unwrap();
    hub.wake();
    let deadline = Instant::now() + Duration::from_secs(5);
    let why = loop {
        if let Some(why) = hub.health().borrow().clone() {
            break why;
        }
        assert!(Instant::now() < deadline, "still serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains("newer than this hub reads"), "{why}");
    let refused = hub.register("b", register("b")).await.unwrap_err();
    assert!(
        refused.to_string().contains("newer than this hub reads"),
        "{refused}"
    );
    hub.close().await.unwrap();
}
