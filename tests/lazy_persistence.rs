//! What the writer persists lazily. Strategy aggregates are rebuilt from
//! the outcome log: after a crash (a second hub opened on the store the
//! first one was still writing), after a clean close, with aggregates
//! stored past the floor, and with a retention sweep trimming the log in
//! between. Instance activity trails registrations, which are immediate.

mod common;

use std::sync::Arc;

use common::register_in_process;
use learning_hub::clock::ManualClock;
use learning_hub::domain::model::{Attributes, StrategyRecord, StrategyShare};
use learning_hub::hub::{Hub, HubSettings};
use learning_hub::store::{Changes, Store};

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 24 * 60 * 60 * 1000;

fn open(store: &Store, clock: &Arc<ManualClock>) -> Arc<Hub> {
    Hub::open(store.clone(), clock.clone(), HubSettings::default()).unwrap()
}

/// `n` outcomes over 5 strategies and 2 contexts, successes and failures.
async fn share(hub: &Hub, n: usize) {
    for i in 0..n {
        let context = Attributes::from([("provider".to_string(), format!("p{}", i % 2))]);
        hub.share_strategy(
            "i1",
            StrategyShare {
                strategy: format!("s{}", i % 5),
                metric: "m".into(),
                value_before: 0.1 + 0.8 * (i % 7) as f64 / 7.0,
                successful: i % 3 != 0,
                delta: if i % 3 != 0 { 0.1 } else { -0.05 },
                condition: String::new(),
                context,
                recent: vec![],
            },
            None,
        )
        .await
        .unwrap();
    }
}

fn sorted(mut records: Vec<Arc<StrategyRecord>>) -> Vec<StrategyRecord> {
    records.sort_by_key(|r| r.key());
    records.into_iter().map(|r| (*r).clone()).collect()
}

fn stored_applications(store: &Store) -> u64 {
    store
        .load()
        .unwrap()
        .strategies
        .iter()
        .map(|r| r.applications)
        .sum()
}

#[tokio::test]
async fn aggregates_are_rebuilt_from_the_outcome_log_after_a_crash() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let first = open(&store, &clock);
    register_in_process(&first, "i1").await;
    share(&first, 60).await;
    let served = sorted(first.strategy_records());
    assert_eq!(served.iter().map(|r| r.applications).sum::<u64>(), 60);
    // Nothing has aged enough to be checkpointed: the stored aggregates
    // lag the log, which is what a crash now would leave behind.
    assert!(stored_applications(&store) < 60);

    let second = open(&store, &clock);
    assert_eq!(sorted(second.strategy_records()), served);
    // The rebuilt aggregates were persisted with a floor at the log's end.
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.strategy_floor, Some(60));
    assert_eq!(stored_applications(&store), 60);
}

#[tokio::test]
async fn a_clean_close_leaves_nothing_to_replay() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let hub = open(&store, &clock);
    register_in_process(&hub, "i1").await;
    share(&hub, 40).await;
    let served = sorted(hub.strategy_records());
    hub.close().await.unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.strategy_floor, Some(snapshot.outcome_sequence));
    assert_eq!(
        sorted(snapshot.strategies.into_iter().map(Arc::new).collect()),
        served
    );
}

#[tokio::test]
async fn a_replay_never_counts_an_outcome_twice() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let hub = open(&store, &clock);
    register_in_process(&hub, "i1").await;
    share(&hub, 30).await;
    let served = sorted(hub.strategy_records());
    hub.close().await.unwrap();
    // Aggregates stored complete, but a floor far behind them: every
    // outcome is replayed against aggregates that already hold it.
    store
        .commit(&Changes {
            strategy_floor: Some(0),
            ..Default::default()
        })
        .unwrap();
    let reopened = open(&store, &clock);
    assert_eq!(sorted(reopened.strategy_records()), served);
}

#[tokio::test]
async fn trimming_the_outcome_log_keeps_what_a_replay_needs() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let first = open(&store, &clock);
    register_in_process(&first, "i1").await;
    share(&first, 20).await;
    let served = sorted(first.strategy_records());
    // A month later the outcomes are past retention, but their aggregates
    // were never stored: the sweep must leave them in the log.
    clock.advance(31 * DAY);
    let report = first.run_retention().await.unwrap();
    assert_eq!(report.outcomes, 0, "{report:?}");

    let second = open(&store, &clock);
    let rebuilt = sorted(second.strategy_records());
    assert_eq!(
        rebuilt.iter().map(|r| r.applications).sum::<u64>(),
        served.iter().map(|r| r.applications).sum::<u64>()
    );
    // Now that they are stored, the next sweep trims the log.
    let report = second.run_retention().await.unwrap();
    assert_eq!(report.outcomes, 20, "{report:?}");
}

#[tokio::test]
async fn registrations_are_written_at_once_and_activity_by_close() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let hub = open(&store, &clock);
    register_in_process(&hub, "i1").await;
    share(&hub, 5).await;
    // A crash now keeps the registration; the activity may trail.
    let stored = store.load().unwrap().instances;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].shared_records < 5, "{:?}", stored[0]);
    hub.close().await.unwrap();
    assert_eq!(store.load().unwrap().instances[0].shared_records, 5);
}
