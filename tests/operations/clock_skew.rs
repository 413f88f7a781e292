//! Clock skew: retention and TTLs under a clock that jumps forwards and
//! backwards, driven by a [`ManualClock`] and one explicit sweep at a time.
//!
//! The policy (documented in `domain::retention`): expiry is judged by the
//! hub's clock when the sweep runs. A forward jump is taken as time having
//! passed: whatever it puts past its expiry goes at the first sweep after
//! it, nothing before. A backward jump deletes nothing; data expires when
//! the clock reaches its expiry again (so a record stamped while the clock
//! was ahead lives until the clock reaches its stamped expiry). The logs
//! are trimmed in the order records were made, so a record with a future
//! stamp holds nothing else back. Sequences never depend on the clock: a
//! jump back neither reuses one nor reorders the insight stream.

use crate::common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use common::*;
use learning_hub::{
    api::convert,
    clock::ManualClock,
    domain::model::{Attributes, Registration, StrategyShare},
    hub::{Hub, HubSettings, RetentionReport},
    pb,
    store::Store,
};

/// Midnight UTC.
const T0: i64 = 1_762_214_400_000;
const DAY: i64 = 24 * 60 * 60 * 1000;

async fn hub_at(clock: &ManualClock, store: &Store) -> Arc<Hub> {
    let hub = Hub::open(
        store.clone(),
        Arc::new(clock.clone()),
        HubSettings::default(),
    )
    .unwrap();
    hub.register(
        "a",
        Registration {
            instance_id: "a".into(),
            region: "test".into(),
            context: Attributes::new(),
            capabilities: vec![],
        },
    )
    .await
    .unwrap();
    hub
}

/// Shares an insight with the default TTL (7 days); returns its sequence.
async fn share_insight(hub: &Hub, title: &str) -> u64 {
    let draft = convert::insight_draft(insight(title).insight).unwrap();
    hub.share_insight("a", draft, None)
        .await
        .unwrap()
        .0
        .sequence
}

/// Shares the pattern of metric `name` `times` times (fewer than 3: it
/// expires after 7 idle days, otherwise after 30).
async fn share_pattern(hub: &Hub, name: &str, times: usize) {
    for _ in 0..times {
        let share = convert::pattern_share(pb::SharePatternRequest {
            metrics: BTreeMap::from([(name.to_string(), metric(0.5, true))]),
            ..Default::default()
        })
        .unwrap();
        hub.share_pattern("a", share, None).await.unwrap();
    }
}

async fn share_outcome(hub: &Hub) -> u64 {
    let share = StrategyShare {
        strategy: "s".into(),
        metric: "m".into(),
        value_before: 0.5,
        successful: true,
        delta: 0.1,
        condition: String::new(),
        context: Attributes::new(),
        recent: vec![],
    };
    hub.share_strategy("a", share, None).await.unwrap().0
}

fn titles(hub: &Hub) -> Vec<String> {
    let mut titles: Vec<String> = hub
        .get_insights(None, None, 100)
        .iter()
        .map(|i| i.draft.title.clone())
        .collect();
    titles.sort();
    titles
}

/// Moves the clock to `at` and runs one sweep.
async fn sweep_at(hub: &Hub, clock: &ManualClock, at: i64) -> RetentionReport {
    clock.set(at);
    hub.run_retention().await.unwrap()
}

fn removed(patterns: usize, insights: usize) -> (usize, usize) {
    (patterns, insights)
}

fn counts(report: &RetentionReport) -> (usize, usize) {
    (report.patterns, report.insights)
}

#[tokio::test]
async fn forward_jumps_expire_nothing_early_and_everything_at_the_first_sweep_after() {
    let clock = ManualClock::new(T0);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    let first = share_insight(&hub, "week").await;
    share_pattern(&hub, "unconfirmed", 1).await;
    share_pattern(&hub, "confirmed", 3).await;

    // Each jump lands just short of an expiry, then exactly on it.
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY - 1).await;
    assert_eq!(counts(&report), removed(0, 0));
    assert_eq!(titles(&hub), ["week"]);
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY).await;
    assert_eq!(counts(&report), removed(0, 1), "the insight's TTL is up");
    assert!(titles(&hub).is_empty());
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY + 1).await;
    assert_eq!(
        counts(&report),
        removed(1, 0),
        "more than 7 days unconfirmed"
    );
    let report = sweep_at(&hub, &clock, T0 + 30 * DAY).await;
    assert_eq!(counts(&report), removed(0, 0));
    assert_eq!(hub.status().patterns, 1);
    let report = sweep_at(&hub, &clock, T0 + 30 * DAY + 1).await;
    assert_eq!(counts(&report), removed(1, 0), "more than 30 days idle");
    assert_eq!(hub.status().patterns, 0);
    // An expired insight's sequence is never handed out again.
    assert_eq!(share_insight(&hub, "next").await, first + 1);
}

#[tokio::test]
async fn one_long_jump_purges_everything_expired_in_one_sweep() {
    let clock = ManualClock::new(T0);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    share_insight(&hub, "week").await;
    share_pattern(&hub, "unconfirmed", 1).await;
    share_pattern(&hub, "confirmed", 3).await;
    let report = sweep_at(&hub, &clock, T0 + 90 * DAY).await;
    assert_eq!(counts(&report), removed(2, 1));
    assert_eq!((hub.status().patterns, hub.status().insights), (0, 0));
}

#[tokio::test]
async fn a_backward_jump_deletes_nothing_and_expiry_comes_when_the_clock_returns() {
    let clock = ManualClock::new(T0);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    share_insight(&hub, "week").await;
    share_pattern(&hub, "unconfirmed", 1).await;

    // Three days back: nothing goes, and seeing the pattern again does not
    // date it back (its idle time still counts from T0).
    let report = sweep_at(&hub, &clock, T0 - 3 * DAY).await;
    assert_eq!(report, RetentionReport::default());
    share_pattern(&hub, "unconfirmed", 1).await;
    assert_eq!(titles(&hub), ["week"]);
    // Seven days after the backward jump is only four after T0.
    let report = sweep_at(&hub, &clock, T0 + 4 * DAY + 1).await;
    assert_eq!(counts(&report), removed(0, 0));
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY - 1).await;
    assert_eq!(counts(&report), removed(0, 0));
    // The clock is back where the expiry is: the first sweep purges.
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY).await;
    assert_eq!(counts(&report), removed(0, 1));
    // A jump back once expired data is gone brings nothing back.
    let report = sweep_at(&hub, &clock, T0 - 10 * DAY).await;
    assert_eq!(report, RetentionReport::default());
    assert!(titles(&hub).is_empty());
    assert_eq!(hub.status().patterns, 1);
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY + 1).await;
    assert_eq!(counts(&report), removed(1, 0));
}

#[tokio::test]
async fn a_record_stamped_while_the_clock_was_ahead_expires_by_its_stamp() {
    // The policy's price: the hub cannot tell a clock that was ahead then
    // from one that is behind now, so it keeps such a record until the
    // clock reaches its stamped expiry — and purges it at the first sweep
    // after that.
    let clock = ManualClock::new(T0 + 10 * DAY);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    share_insight(&hub, "ahead").await;
    let report = sweep_at(&hub, &clock, T0).await;
    assert_eq!(counts(&report), removed(0, 0));
    let report = sweep_at(&hub, &clock, T0 + 17 * DAY - 1).await;
    assert_eq!(counts(&report), removed(0, 0));
    assert_eq!(titles(&hub), ["ahead"]);
    let report = sweep_at(&hub, &clock, T0 + 17 * DAY).await;
    assert_eq!(counts(&report), removed(0, 1));
}

#[tokio::test]
async fn an_invalidated_insight_stays_invalid_when_the_clock_is_set_back() {
    let clock = ManualClock::new(T0 + 10 * DAY);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    share_insight(&hub, "wrong").await;
    let id = hub.get_insights(None, None, 10)[0].id.clone();
    hub.invalidate_insight(id).await.unwrap();
    // The clock was ten days ahead; corrected, the insight must not be
    // valid again, neither to readers nor to a sweep.
    clock.set(T0);
    assert!(titles(&hub).is_empty());
    let report = sweep_at(&hub, &clock, T0).await;
    assert_eq!(counts(&report), removed(0, 0));
    assert!(titles(&hub).is_empty());
    assert_eq!(hub.status().insights, 0);
}

#[tokio::test]
async fn strategy_evidence_leaves_the_window_on_time_whichever_way_the_clock_jumps() {
    let clock = ManualClock::new(T0);
    let hub = hub_at(&clock, &Store::in_memory()).await;
    share_outcome(&hub).await;
    let windowed = |hub: &Hub| -> u64 {
        hub.strategy_records()[0]
            .window
            .iter()
            .flat_map(|b| b.bands.iter())
            .map(|s| s.applications)
            .sum()
    };
    // A jump back keeps the evidence; so does one to the last day of the
    // 7-day window.
    let report = sweep_at(&hub, &clock, T0 - 30 * DAY).await;
    assert_eq!(report.strategies_rolled_up, 0);
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY - 1).await;
    assert_eq!(report.strategies_rolled_up, 0);
    assert_eq!(windowed(&hub), 1);
    // The first sweep on the eighth day rolls it up; the lifetime figures
    // stay.
    let report = sweep_at(&hub, &clock, T0 + 7 * DAY).await;
    assert_eq!(report.strategies_rolled_up, 1);
    assert_eq!(windowed(&hub), 0);
    assert_eq!(hub.strategy_records()[0].applications, 1);
}

#[tokio::test]
async fn log_trimming_is_neither_early_nor_blocked_by_a_clock_that_was_ahead() {
    let store = Store::in_memory();
    let clock = ManualClock::new(T0);
    let hub = hub_at(&clock, &store).await;
    for _ in 0..3 {
        share_outcome(&hub).await;
    }
    clock.set(T0 + 365 * DAY);
    share_outcome(&hub).await; // 4: stamped a year ahead
    clock.set(T0 + 60 * 1000);
    share_outcome(&hub).await; // 5: the clock corrected
    clock.set(T0 + 20 * DAY);
    let recent = share_outcome(&hub).await; // 6
    // Stored aggregates hold every outcome, so only age limits trimming.
    hub.close().await.unwrap();
    let hub = Hub::open(
        store.clone(),
        Arc::new(clock.clone()),
        HubSettings::default(),
    )
    .unwrap();

    // 30 days of outcomes are kept: at T0 + 31 days, 1–3 and 5 are older
    // than that, and so is 4, which happened between 3 and 5 whatever its
    // stamp says; 6 is not.
    let report = sweep_at(&hub, &clock, T0 + 31 * DAY).await;
    assert_eq!(report.outcomes, 5, "{report:?}");
    let left: Vec<u64> = store
        .outcomes_after(0, 100)
        .unwrap()
        .iter()
        .map(|o| o.sequence)
        .collect();
    assert_eq!(left, [recent]);
}

#[tokio::test]
async fn a_backward_jump_neither_reuses_sequences_nor_reorders_the_stream() {
    let clock = ManualClock::new(T0);
    let mut hub = TestHub::start_with_clock(Arc::new(clock.clone()), |c| {
        c.retention_interval = None;
        c.insight_interval = None;
    })
    .await;
    let a = hub.registered("a").await;
    let mut stream = a.subscribe_insights(0, pb::InsightCategory::Unspecified);
    let mut shared = Vec::new();
    for (jump, title) in [
        (0, "first"),
        (-2 * DAY, "after a jump back"),
        (-DAY, "further back"),
        (5 * DAY, "forwards again"),
    ] {
        clock.advance(jump);
        let insight = a
            .share_insight(insight(title))
            .await
            .unwrap()
            .insight
            .unwrap();
        shared.push(insight.sequence);
    }
    assert_eq!(shared, [1, 2, 3, 4]);
    let mut delivered = Vec::new();
    for _ in 0..4 {
        let insight = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        delivered.push((insight.sequence, insight.title));
    }
    assert_eq!(
        delivered.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(delivered[1].1, "after a jump back");

    // After a restart with the clock set back again, the next sequence
    // follows the last one handed out, and a replay keeps the order.
    clock.advance(-4 * DAY);
    hub.restart().await;
    let a = hub.client("a").await;
    let next = a
        .share_insight(insight("after the restart"))
        .await
        .unwrap()
        .insight
        .unwrap();
    assert_eq!(next.sequence, 5);
    let mut replay = a.subscribe_insights(0, pb::InsightCategory::Unspecified);
    let mut sequences = Vec::new();
    for _ in 0..5 {
        let insight = tokio::time::timeout(Duration::from_secs(5), replay.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        sequences.push(insight.sequence);
    }
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
}
