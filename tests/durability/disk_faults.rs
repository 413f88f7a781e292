//! Disk full and I/O errors, end to end: a real hub over mutual TLS whose
//! sled store sits under a fault injector ([`FaultyEngine`]), switched on
//! and off per operation while clients, the retention sweep and background
//! insight generation keep running. What must hold:
//!
//! - while the store fails, every write RPC is answered promptly with
//!   UNAVAILABLE and a message naming the cause; reads keep working from
//!   memory; nothing panics; no unacknowledged write shows, then or after
//!   a restart;
//! - once the fault clears, writes succeed again without a restart, and a
//!   restart finds everything acknowledged before and after;
//! - a lazy checkpoint that cannot be written costs nothing: aggregates are
//!   rebuilt from the outcome log.
//!
//! The last test fills a real (tmpfs) disk under real sled; it needs root
//! to mount one and is opt-in (`-- --ignored`).

use crate::common;

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, Once},
    time::{Duration, Instant},
};

use common::*;
use learning_hub::{
    auth::access_control,
    client::RetryPolicy,
    clock::ManualClock,
    domain::model::{Attributes, AuditEntry, StrategyRecord, StrategyShare},
    hub::{AuditQuery, Hub, HubSettings},
    pb,
    store::{Fault, Faults, FaultyEngine, MemoryEngine, Op, SledEngine, Store},
};
use tonic::Code;

const EPOCH: i64 = 1_762_214_400_000;
/// A failing write must be answered within this (it is answered in
/// milliseconds; the bound leaves room for a loaded test machine).
const PROMPT: Duration = Duration::from_secs(2);

/// The threads that panicked so far, anywhere in this test process: the
/// writer thread, sled's threads, the hub's tasks (which run on the test's
/// own thread). Tests run in parallel, so a test that fails on its own
/// shows up here too, under its name.
fn panics() -> Vec<String> {
    static PANICKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string();
            PANICKED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            previous(info);
        }));
    });
    PANICKED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A hub on sled under `faults`, with the retention sweep and insight
/// generation running every few tens of milliseconds.
// Clients here send each call once (`RetryPolicy::none()`): the tests
// check the hub's own answer to a failing disk, not the client's retries.
async fn faulty_hub(faults: &Faults) -> TestHub {
    faulty_hub_with(faults, |_| {}).await
}

async fn faulty_hub_with(
    faults: &Faults,
    adjust: impl FnOnce(&mut learning_hub::config::Config),
) -> TestHub {
    let faults = faults.clone();
    let open: StoreOpener = Arc::new(move |dir: &Path| {
        let sled = SledEngine::open(dir)?;
        Ok(Store::on_engine(Arc::new(FaultyEngine::new(
            Arc::new(sled),
            faults.clone(),
        ))))
    });
    TestHub::start_with_store(Arc::new(ManualClock::new(EPOCH)), open, |c| {
        c.retention_interval = Some(Duration::from_millis(50));
        c.insight_interval = Some(Duration::from_millis(70));
        adjust(c);
    })
    .await
}

/// Runs a call that must fail with UNAVAILABLE naming `cause`; returns how
/// long the answer took.
async fn refused<T: std::fmt::Debug>(
    what: &str,
    cause: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Duration {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"));
    let took = started.elapsed();
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().starts_with("store unavailable: ") && status.message().contains(cause),
        "{what}: {:?}",
        status.message()
    );
    assert!(took < PROMPT, "{what} took {took:?}");
    took
}

/// A disk that stops answering (a hung volume) fails nothing, so without a
/// bound a write would wait for ever, holding its caller and a share of
/// the load-shedding bound. The hub answers DEADLINE_EXCEEDED after the
/// write timeout, saying the write may still land; reads go on from
/// memory; once the disk answers, the retry with the same request id is
/// applied once; and a shutdown while the disk hangs ends, with an error,
/// instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_times_writes_out_keeps_reads_and_applies_the_retry_once() {
    let panics_before = panics();
    let faults = Faults::new();
    let mut hub = faulty_hub_with(&faults, |c| {
        c.hub.write_timeout = Duration::from_millis(300);
    })
    .await;
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    a.share_strategy(strategy_outcome("s1", "lv", true, 0.2))
        .await
        .unwrap();
    let before = op.get_status(pb::GetStatusRequest {}).await.unwrap();

    faults.stall(Op::Flush);
    let mut outcome = strategy_outcome("s1", "lv", true, 0.3);
    outcome.request_id = "stalled-1".into();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), a.share_strategy(outcome.clone()))
        .await
        .expect("a write to a stalled disk must be answered")
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("may still be applied")
            && status.message().contains("request_id"),
        "{:?}",
        status.message()
    );
    assert!(
        took >= Duration::from_millis(300) && took < PROMPT,
        "{took:?}"
    );

    // Reads are answered from memory meanwhile, however many: their audit
    // entries queue behind the stalled flush without holding them up.
    for _ in 0..50 {
        let ranked = a
            .get_strategies(pb::GetStrategiesRequest {
                metric: "lv".into(),
                current_value: 0.5,
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ranked.recommendations[0].strategy, "s1");
    }
    let during = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(during.strategy_outcomes, before.strategy_outcomes);

    // The disk answers again: the write that timed out lands, and its
    // retry is recognised, not applied a second time.
    faults.clear(Op::Flush);
    let retried = a.share_strategy(outcome).await.unwrap();
    let after = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(after.strategy_outcomes, before.strategy_outcomes + 1);
    assert_eq!(retried.outcome_sequence, after.strategy_outcomes);
    a.share_strategy(strategy_outcome("s2", "lv", true, 0.1))
        .await
        .unwrap();

    // Shutting down on a stalled disk: given the write timeout, then given
    // up on, with an error saying what was and was not flushed.
    faults.stall(Op::Flush);
    let pending = {
        let a = a.clone();
        tokio::spawn(async move {
            a.share_strategy(strategy_outcome("s3", "lv", true, 0.1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), hub.stop())
        .await
        .expect("shutdown must not wait for a stalled disk");
    let error = stopped.unwrap_err().to_string();
    assert!(error.contains("did not finish its last flush"), "{error}");
    assert_eq!(
        pending.await.unwrap().unwrap_err().code(),
        Code::DeadlineExceeded
    );
    faults.clear(Op::Flush);
    assert_eq!(panics(), panics_before);
}

fn pattern(name: &str) -> pb::SharePatternRequest {
    pb::SharePatternRequest {
        metrics: BTreeMap::from([(name.to_string(), metric(0.5, true))]),
        ..Default::default()
    }
}

fn failure(trigger: &str) -> pb::ShareFailureRequest {
    pb::ShareFailureRequest {
        failure_type: pb::FailureType::Deadlock as i32,
        trigger: trigger.into(),
        context: Some(pb::FailureContext {
            metric: "lv".into(),
            strategy: String::new(),
        }),
        ..Default::default()
    }
}

fn config() -> pb::ShareConfigurationRequest {
    pb::ShareConfigurationRequest {
        context: BTreeMap::from([("latency".to_string(), "high".to_string())]),
        parameters: BTreeMap::from([(
            "cycle_interval_ms".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(600_000.0)),
            },
        )]),
        effectiveness: 0.9,
        data_points: 40,
        ..Default::default()
    }
}

async fn titles(client: &learning_hub::client::HubClient) -> Vec<String> {
    let mut titles = crate::common::insight_titles(client, 0).await;
    titles.sort();
    titles
}

/// The strategies GetStrategies knows for metric "lv".
async fn strategy_names(client: &learning_hub::client::HubClient) -> Vec<String> {
    let mut names: Vec<String> = client
        .get_strategies(pb::GetStrategiesRequest {
            metric: "lv".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations
        .into_iter()
        .map(|r| r.strategy)
        .collect();
    names.sort();
    names
}

async fn instance_ids(op: &learning_hub::client::HubClient) -> Vec<String> {
    let mut ids: Vec<String> = op
        .list_instances(Default::default())
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_restart() {
    let panics_before = panics();
    let faults = Faults::new();
    let mut hub = faulty_hub(&faults).await;
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    // b gets its key now: issuing one is itself a write.
    let b = hub.client("b").await.with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());

    // Acknowledged before the fault.
    let p1 = a
        .share_pattern(pattern("before"))
        .await
        .unwrap()
        .pattern
        .unwrap();
    a.share_strategy(strategy_outcome("s1", "lv", true, 0.2))
        .await
        .unwrap();
    let before = a
        .share_insight(insight("before"))
        .await
        .unwrap()
        .insight
        .unwrap();
    let mut stream = a.subscribe_insights(0, pb::InsightCategory::Unspecified);
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.sequence, before.sequence);
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();

    faults.inject(Op::Apply, Fault::DiskFull);
    let full = "disk full";
    let mut slowest = Duration::ZERO;
    let mut note = |took: Duration| slowest = slowest.max(took);
    note(
        refused(
            "Register",
            full,
            b.register(pb::RegisterRequest {
                instance_id: "b".into(),
                region: "test".into(),
                ..Default::default()
            }),
        )
        .await,
    );
    note(refused("SharePattern", full, a.share_pattern(pattern("during"))).await);
    note(
        refused(
            "RecordPatternOutcome",
            full,
            a.record_pattern_outcome(pb::RecordPatternOutcomeRequest {
                pattern_id: p1.id.clone(),
                success: true,
                ..Default::default()
            }),
        )
        .await,
    );
    note(
        refused(
            "ShareStrategy",
            full,
            a.share_strategy(strategy_outcome("s1", "lv", false, -0.1)),
        )
        .await,
    );
    note(refused("ShareInsight", full, a.share_insight(insight("during"))).await);
    note(
        refused(
            "RecordInsightUse",
            full,
            a.record_insight_use(pb::RecordInsightUseRequest {
                insight_id: before.id.clone(),
                ..Default::default()
            }),
        )
        .await,
    );
    note(refused("ShareFailure", full, a.share_failure(failure("during"))).await);
    note(refused("ShareConfiguration", full, a.share_configuration(config())).await);
    note(refused("IssueApiKey", full, op.issue_api_key("c")).await);
    note(refused("RevokeApiKey", full, op.revoke_api_key("a")).await);
    note(
        refused(
            "InvalidateInsight",
            full,
            op.admin().invalidate_insight(pb::InvalidateInsightRequest {
                insight_id: before.id.clone(),
            }),
        )
        .await,
    );
    // Many at once: one group commit or several, every one is answered.
    let many: Vec<_> = (0..50)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                refused(
                    "concurrent ShareStrategy",
                    "disk full",
                    a.share_strategy(strategy_outcome(&format!("c{i}"), "lv", true, 0.1)),
                )
                .await
            })
        })
        .collect();
    for call in many {
        note(call.await.unwrap());
    }
    eprintln!("slowest refused write while the disk was full: {slowest:?}");

    // Reads are served from memory and show only what was acknowledged;
    // the sweep and insight generation keep running against the failing
    // store in the meantime.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .patterns,
        status.patterns
    );
    let during = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(
        (
            during.instances,
            during.strategy_outcomes,
            during.insights,
            during.failures,
            during.configurations,
            during.last_insight_sequence
        ),
        (
            status.instances,
            status.strategy_outcomes,
            status.insights,
            status.failures,
            status.configurations,
            status.last_insight_sequence
        )
    );
    assert_eq!(titles(&a).await, ["before"]);
    assert_eq!(instance_ids(&op).await, ["a"]);
    assert_eq!(strategy_names(&a).await, ["s1"]);
    assert!(faults.failed(Op::Apply) > 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err(),
        "nothing new was published"
    );

    // Space returns: the very next write succeeds, no restart.
    faults.clear_all();
    let recovered = Instant::now();
    let after = a
        .share_insight(insight("after"))
        .await
        .unwrap()
        .insight
        .unwrap();
    eprintln!(
        "first write after the fault cleared answered in {:?}",
        recovered.elapsed()
    );
    // The refused insight never took a place in the stream.
    assert_eq!(after.sequence, before.sequence + 1);
    assert_eq!(
        stream.next().await.unwrap().unwrap().sequence,
        after.sequence
    );
    b.register(pb::RegisterRequest {
        instance_id: "b".into(),
        region: "test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.share_pattern(pattern("after")).await.unwrap();
    a.share_strategy(strategy_outcome("s1", "lv", true, 0.3))
        .await
        .unwrap();

    // Everything acknowledged, before and after, survives a restart; none
    // of what was refused does.
    hub.restart().await;
    let a = hub.client("a").await.with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    assert_eq!(titles(&a).await, ["after", "before"]);
    assert_eq!(instance_ids(&op).await, ["a", "b"]);
    let restarted = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(restarted.patterns, 2);
    assert_eq!(restarted.strategy_outcomes, 2);
    assert_eq!(restarted.failures, 0);
    assert_eq!(restarted.configurations, 0);
    assert_eq!(restarted.last_insight_sequence, after.sequence);
    let p1_now = a
        .get_patterns(pb::GetPatternsRequest {
            metrics: BTreeMap::from([("before".to_string(), metric(0.5, true))]),
            ..Default::default()
        })
        .await
        .unwrap()
        .matches;
    let p1_now = p1_now[0].pattern.as_ref().unwrap();
    let reports = p1_now
        .effectiveness
        .as_ref()
        .map_or((0, 0), |e| (e.success, e.failure));
    assert_eq!((p1_now.frequency, reports), (1, (0, 0)));
    // a's key was not revoked, c got none.
    assert_eq!(
        op.revoke_api_key("c").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(panics(), panics_before, "threads that panicked");
}

#[tokio::test]
async fn a_failed_flush_leaves_nothing_behind() {
    let panics_before = panics();
    let faults = Faults::new();
    let mut hub = faulty_hub(&faults).await;
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    let ghost = hub
        .client("ghost")
        .await
        .with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    a.share_strategy(strategy_outcome("s1", "lv", true, 0.2))
        .await
        .unwrap();

    // The writes reach the engine; only making them durable fails. As far
    // as anyone can tell they did not happen, and they must not surface
    // later either.
    faults.inject(Op::Flush, Fault::Io);
    refused(
        "Register",
        "I/O error",
        ghost.register(pb::RegisterRequest {
            instance_id: "ghost".into(),
            region: "test".into(),
            ..Default::default()
        }),
    )
    .await;
    refused(
        "SharePattern",
        "I/O error",
        a.share_pattern(pattern("ghost")),
    )
    .await;
    refused(
        "ShareStrategy",
        "I/O error",
        a.share_strategy(strategy_outcome("s2", "lv", true, 0.4)),
    )
    .await;
    refused(
        "ShareInsight",
        "I/O error",
        a.share_insight(insight("ghost")),
    )
    .await;
    assert!(faults.failed(Op::Flush) > 0);
    assert_eq!(instance_ids(&op).await, ["a"]);

    faults.clear_all();
    // One unrelated write: nothing of it reuses the refused records' keys.
    a.share_failure(failure("after")).await.unwrap();

    hub.restart().await;
    let a = hub.client("a").await.with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    assert_eq!(instance_ids(&op).await, ["a"]);
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(
        (
            status.patterns,
            status.strategy_outcomes,
            status.insights,
            status.failures,
            status.last_insight_sequence
        ),
        (0, 1, 0, 1, 0)
    );
    assert_eq!(strategy_names(&a).await, ["s1"]);
    assert_eq!(panics(), panics_before, "threads that panicked");
}

#[tokio::test]
async fn reads_from_a_failing_disk_fail_cleanly_and_writes_go_on() {
    let faults = Faults::new();
    let hub = faulty_hub(&faults).await;
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    faults.inject(Op::Scan, Fault::Io);
    // Only the audit log and the outcome log are read from disk.
    refused(
        "QueryAudit",
        "I/O error (read failed",
        op.admin().query_audit(pb::QueryAuditRequest::default()),
    )
    .await;
    refused(
        "GenerateInsights",
        "I/O error (read failed",
        op.admin().generate_insights(pb::GenerateInsightsRequest {}),
    )
    .await;
    a.share_strategy(strategy_outcome("s1", "lv", true, 0.2))
        .await
        .unwrap();
    assert_eq!(
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .strategy_outcomes,
        1
    );
    faults.clear_all();
    op.admin()
        .query_audit(pb::QueryAuditRequest::default())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// The writer's lazy persistence under faults (the hub core, no gRPC)
// ---------------------------------------------------------------------------

fn faulty_store(faults: &Faults) -> Store {
    Store::on_engine(Arc::new(FaultyEngine::new(
        Arc::new(MemoryEngine::default()),
        faults.clone(),
    )))
}

fn open(store: &Store) -> Arc<Hub> {
    Hub::open(
        store.clone(),
        Arc::new(ManualClock::new(EPOCH)),
        HubSettings::default(),
    )
    .unwrap()
}

fn outcome(i: usize) -> StrategyShare {
    StrategyShare {
        strategy: format!("s{}", i % 4),
        metric: "m".into(),
        value_before: 0.1 + 0.8 * (i % 5) as f64 / 5.0,
        successful: i % 3 != 0,
        delta: if i % 3 != 0 { 0.1 } else { -0.05 },
        condition: String::new(),
        context: Attributes::new(),
        recent: vec![],
    }
}

fn sorted(mut records: Vec<Arc<StrategyRecord>>) -> Vec<StrategyRecord> {
    records.sort_by_key(|r| r.key());
    records.into_iter().map(|r| (*r).clone()).collect()
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_is_rebuilt_from_the_command_log() {
    let faults = Faults::new();
    let store = faulty_store(&faults);
    let hub = open(&store);
    register_in_process(&hub, "i1").await;
    for i in 0..30 {
        hub.share_strategy("i1", outcome(i), None).await.unwrap();
    }
    // Only batches that write strategy aggregates fail — checkpoints; the
    // commands still go into the log.
    faults.inject_writes_of(b"s/", Fault::DiskFull);
    hub.share_strategy("i1", outcome(30), None).await.unwrap();
    let served = sorted(hub.strategy_records());
    // The shutdown checkpoint fails, and says so.
    let closed = hub.close().await.unwrap_err().to_string();
    assert!(closed.contains("disk full"), "{closed}");
    assert!(faults.failed(Op::Apply) > 0);
    let checkpointed = store.backend().checkpoint_position().unwrap().unwrap_or(0);
    assert!(
        checkpointed < store.log_head().unwrap(),
        "the log holds commands past the checkpoint ({checkpointed})"
    );

    faults.clear_all();
    let reopened = open(&store);
    assert_eq!(sorted(reopened.strategy_records()), served);
    assert_eq!(reopened.status().strategy_outcomes, 31);
}

#[tokio::test]
async fn writes_a_recovering_engine_dropped_are_put_back() {
    // An engine that, like sled reopened after an I/O error, loses what
    // was applied since its last flush: here an audit entry, which is
    // applied without a flush of its own.
    let faults = Faults::new();
    faults.lose_unflushed_on_recover();
    let store = faulty_store(&faults);
    let hub = open(&store);
    register_in_process(&hub, "i1").await;
    let audit = access_control(&hub);
    audit.audit(
        AuditEntry {
            sequence: 0,
            at: EPOCH,
            caller: "i1".into(),
            role: "instance".into(),
            rpc: "/learninghub.v1.Hub/GetStatus".into(),
            code: 0,
            request_bytes: 5,
            ..Default::default()
        },
        false,
    );
    // Let it be applied (but not flushed) before the disk fills.
    tokio::time::sleep(Duration::from_millis(50)).await;
    faults.inject(Op::Apply, Fault::DiskFull);
    let refused = hub
        .share_strategy("i1", outcome(0), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("disk full"), "{refused}");
    faults.clear_all();
    hub.share_strategy("i1", outcome(1), None).await.unwrap();

    let everything = AuditQuery {
        from: 0,
        until: i64::MAX,
        limit: 100,
        ..Default::default()
    };
    let entries = hub.query_audit(everything.clone()).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1],
        "{entries:?}"
    );
    hub.close().await.unwrap();
    let reopened = open(&store);
    assert_eq!(reopened.query_audit(everything).await.unwrap().len(), 1);
    assert_eq!(reopened.status().strategy_outcomes, 1);
    assert_eq!(reopened.status().instances, 1);
}

// ---------------------------------------------------------------------------
// A real full disk
// ---------------------------------------------------------------------------

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (this test needs root or CAP_SYS_ADMIN)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system with `ballast` until the last page is taken.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let ballast = self.0.join("ballast");
        let mut file = std::fs::File::create(&ballast).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let bytes = vec![0u8; chunk];
            while file.write_all(&bytes).and_then(|()| file.flush()).is_ok() {}
        }
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
#[ignore = "mounts a tmpfs: needs root or CAP_SYS_ADMIN; run with -- --ignored"]
async fn sled_on_a_full_tmpfs_refuses_writes_and_recovers_when_space_returns() {
    let panics_before = panics();
    let mount_point = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(mount_point.path(), 32 * 1024 * 1024);
    let data_dir = mount_point.path().join("data");
    let mut hub = TestHub::start_with(|c| {
        c.data_dir = data_dir.clone();
        c.retention_interval = Some(Duration::from_millis(100));
        c.insight_interval = None;
        c.hub.rate_limit_per_hour = 0;
    })
    .await;
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    let op = hub.operator().await.with_retry_policy(RetryPolicy::none());
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let title = format!("before {i}");
        a.share_insight(insight(&title)).await.unwrap();
        acknowledged.push(title);
    }

    let ballast = tmpfs.fill();
    // sled writes into its log's current segment until it needs a new
    // page: the disk is full from the first write that does.
    let mut refusals = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..2000 {
        let title = format!("full {i}");
        let started = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), a.share_insight(insight(&title)))
                .await
                .expect("a write on the full disk hung");
        match answer {
            Ok(_) => {
                acknowledged.push(title);
                assert!(acknowledged.len() < 1000, "the disk never filled");
            }
            Err(status) => {
                slowest = slowest.max(started.elapsed());
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().starts_with("store unavailable: disk full"),
                    "{:?}",
                    status.message()
                );
                refusals += 1;
                if refusals == 20 {
                    break;
                }
            }
        }
    }
    assert_eq!(refusals, 20, "the disk never filled");
    eprintln!(
        "real disk full: {} writes acknowledged, then 20 refused, slowest refusal {slowest:?}",
        acknowledged.len()
    );
    assert!(slowest < PROMPT);
    assert_eq!(
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .insights as usize,
        acknowledged.len()
    );

    // Space returns: writes resume without a restart (sled is reopened).
    std::fs::remove_file(ballast).unwrap();
    let freed = Instant::now();
    let resumed = loop {
        let answer =
            tokio::time::timeout(Duration::from_secs(10), a.share_insight(insight("after")))
                .await
                .expect("a write after space returned hung");
        match answer {
            Ok(_) => break freed.elapsed(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(freed.elapsed() < Duration::from_secs(15), "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    acknowledged.push("after".into());
    eprintln!("writes resumed {resumed:?} after space returned");

    hub.restart().await;
    let a = hub.client("a").await.with_retry_policy(RetryPolicy::none());
    let mut expected = acknowledged.clone();
    expected.sort();
    let mut found = crate::common::insight_titles(&a, 1000).await;
    found.sort();
    assert_eq!(found, expected);
    hub.stop().await.unwrap();
    assert_eq!(panics(), panics_before, "threads that panicked");
}

/// What a metrics exposition says `name` is.
fn metric_value(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

/// Audit entries are written without their call waiting. Behind a disk
/// that stalls, they wait for room in the writer's queue — each a task —
/// so their number is bounded (10,000, `hub::writer::MAX_DETACHED_WAITING`)
/// and the rest are dropped and counted; the ones that waited are written
/// once the disk answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_entries_behind_a_stalled_disk_are_bounded_and_counted() {
    const WAITING_AT_MOST: u64 = 10_000;
    const QUEUE: u64 = 4;
    let faults = Faults::new();
    let store = faulty_store(&faults);
    let settings = HubSettings {
        writer_queue: QUEUE as usize,
        ..HubSettings::default()
    };
    let hub = Hub::open(store, Arc::new(ManualClock::new(EPOCH)), settings).unwrap();
    let audit = access_control(&hub);
    let entry = || AuditEntry {
        sequence: 0,
        at: EPOCH,
        caller: "i1".into(),
        role: "instance".into(),
        rpc: "/learninghub.v1.Hub/GetStatus".into(),
        code: 0,
        request_bytes: 5,
        ..Default::default()
    };
    let applies_before = faults.calls(Op::Apply);
    faults.stall(Op::Apply);

    // One entry first, and wait until the writer is stuck writing it, so
    // the bounds below do not depend on when the writer thread runs.
    audit.audit(entry(), false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while faults.calls(Op::Apply) == applies_before {
        assert!(Instant::now() < deadline, "the writer never wrote");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = WAITING_AT_MOST + 2_000;
    for _ in 1..sent {
        audit.audit(entry(), false);
    }
    // The stalled batch took at least one entry and at most a batch, the
    // queue holds `QUEUE`, at most `WAITING_AT_MOST` wait: the rest dropped.
    let dropped = metric_value(&hub.render_metrics(), "learning_hub_audit_dropped_total");
    let most = sent - WAITING_AT_MOST - QUEUE - 1;
    let least = sent - WAITING_AT_MOST - QUEUE - 512;
    assert!((least..=most).contains(&dropped), "{dropped} dropped");

    faults.clear(Op::Apply);
    let everything = AuditQuery {
        from: 0,
        until: i64::MAX,
        limit: 100_000,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let written = hub.query_audit(everything.clone()).await.unwrap().len() as u64;
        if written == sent - dropped {
            break;
        }
        assert!(written < sent - dropped, "{written} written");
        assert!(
            Instant::now() < deadline,
            "only {written} of {} written",
            sent - dropped
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.close().await.unwrap();
}
