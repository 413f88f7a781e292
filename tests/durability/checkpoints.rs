//! What the writer checkpoints, and what a start rebuilds: the state from
//! the newest checkpoint and the command log's tail after it — after a
//! crash (a second hub opened on the store the first one was still
//! writing), after a clean close, and from a data directory written by the
//! hub before the command log existed (kept as a fixture:
//! `tests/fixtures/legacy-v1.tar.gz`, with what it holds in
//! `legacy-v1.json`).

use crate::common;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use common::hooked::Hooked;
use common::register_in_process;
use learning_hub::clock::ManualClock;
use learning_hub::domain::model::{Attributes, StrategyKey, StrategyRecord, StrategyShare};
use learning_hub::hub::{AuditQuery, Hub, HubSettings};
use learning_hub::store::{KvBackend, MemoryEngine, Store};
use serde_json::Value;

const T0: i64 = 1_700_000_000_000;

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

fn checkpointed(store: &Store) -> u64 {
    store.backend().checkpoint_position().unwrap().unwrap_or(0)
}

#[tokio::test]
async fn the_state_is_rebuilt_from_the_checkpoint_and_the_log_after_a_crash() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let first = open(&store, &clock);
    register_in_process(&first, "i1").await;
    share(&first, 60).await;
    let served = sorted(first.strategy_records());
    assert_eq!(served.iter().map(|r| r.applications).sum::<u64>(), 60);
    // Nothing waited long enough to be checkpointed: only the commands are
    // stored, which is what a crash now would leave behind.
    assert!(checkpointed(&store) < store.log_head().unwrap());
    let stored = store.load(7).unwrap().state;
    assert!(
        stored
            .tables
            .strategies
            .values()
            .map(|r| r.applications)
            .sum::<u64>()
            < 60,
        "the checkpoint lags the log"
    );

    let second = open(&store, &clock);
    assert_eq!(sorted(second.strategy_records()), served);
    assert_eq!(second.state_digest(), first.state_digest());
    // Activity (last seen, records shared) is folded from the log too: a
    // crash no longer sets it back.
    assert_eq!(second.state().tables.instances["i1"].shared_records, 60);
}

#[tokio::test]
async fn a_clean_close_leaves_nothing_to_fold() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(T0));
    let hub = open(&store, &clock);
    register_in_process(&hub, "i1").await;
    share(&hub, 40).await;
    let served = sorted(hub.strategy_records());
    let digest = hub.state_digest();
    hub.close().await.unwrap();
    let position = checkpointed(&store);
    assert!(position > 40, "{position}");
    assert!(
        store.read_log(0, 10).unwrap().is_empty(),
        "the log the checkpoint covers is trimmed"
    );
    let reopened = open(&store, &clock);
    assert_eq!(reopened.state().position, position);
    assert_eq!(sorted(reopened.strategy_records()), served);
    assert_eq!(reopened.state_digest(), digest);
}

/// Unpacks the fixture into a temporary directory.
fn legacy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-v1.tar.gz");
    let unpacked = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar");
    assert!(unpacked.success());
    dir
}

fn fixture_json(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_data_directory_from_before_the_command_log_opens_with_every_record() {
    let dir = legacy_fixture();
    let expected = fixture_json("legacy-v1.json");
    // The fixture's own time: its request ids and insights are live then.
    let clock = Arc::new(ManualClock::new(expected["load_now_ms"].as_i64().unwrap()));
    let data = dir.path().join("data");
    let store = Store::open(&data).unwrap();
    let hub = open(&store, &clock);
    let state = hub.state();

    let counters = &expected["counters"];
    assert_eq!(
        (
            state.counters.insight_sequence,
            state.counters.outcome_sequence,
            state.counters.audit_sequence
        ),
        (
            counters["insight_sequence"].as_u64().unwrap(),
            counters["outcome_sequence"].as_u64().unwrap(),
            counters["audit_sequence"].as_u64().unwrap(),
        )
    );
    let calibration: Vec<(u64, u64)> =
        serde_json::from_value(expected["pattern_calibration"]["bins"].clone()).unwrap();
    assert_eq!(
        state.counters.pattern_calibration.bins.to_vec(),
        calibration
    );

    for instance in expected["instances"].as_array().unwrap() {
        let id = instance["instance_id"].as_str().unwrap();
        let found = &state.tables.instances[id];
        assert_eq!(found.region, instance["region"].as_str().unwrap());
        assert_eq!(
            found.shared_records,
            instance["shared_records"].as_u64().unwrap()
        );
    }
    assert_eq!(
        state.tables.instances.len(),
        expected["instances"].as_array().unwrap().len()
    );
    for pattern in expected["patterns"].as_array().unwrap() {
        let found = &state.tables.patterns[pattern["id"].as_str().unwrap()];
        assert_eq!(found.frequency, pattern["frequency"].as_u64().unwrap());
    }
    assert_eq!(state.indexes.patterns.len(), 6, "the index is rebuilt");
    // The aggregates as the outcome log after the old floor makes them.
    let strategies: BTreeMap<StrategyKey, (u64, u64)> = expected["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                StrategyKey {
                    metric: s["metric"].as_str().unwrap().into(),
                    strategy: s["strategy"].as_str().unwrap().into(),
                    context_key: s["context_key"].as_str().unwrap().into(),
                },
                (
                    s["applications"].as_u64().unwrap(),
                    s["successes"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let found: BTreeMap<StrategyKey, (u64, u64)> = state
        .tables
        .strategies
        .values()
        .map(|r| (r.key(), (r.applications, r.successes)))
        .collect();
    assert_eq!(found, strategies);
    for insight in expected["insights"].as_array().unwrap() {
        let sequence = insight["sequence"].as_u64().unwrap();
        let found = &state.tables.insights[&sequence];
        assert_eq!(found.draft.title, insight["title"].as_str().unwrap());
        assert_eq!(found.uses, insight["uses"].as_u64().unwrap());
    }
    for failure in expected["failures"].as_array().unwrap() {
        let found = &state.tables.failures[failure["id"].as_str().unwrap()];
        assert_eq!(found.resolved, failure["resolved"].as_bool().unwrap());
        assert_eq!(found.occurrences, failure["occurrences"].as_u64().unwrap());
    }
    for config in expected["configurations"].as_array().unwrap() {
        let found = &state.tables.configs[config["id"].as_str().unwrap()];
        assert_eq!(found.data_points, config["data_points"].as_u64().unwrap());
    }
    for request in expected["request_ids_on_disk"].as_array().unwrap() {
        let key = learning_hub::domain::idempotency::RequestKey::new(
            request["instance_id"].as_str().unwrap(),
            request["request_id"].as_str().unwrap(),
        );
        let found = state.tables.requests.get(&key).expect("request id kept");
        assert_eq!(found.at, request["at"].as_i64().unwrap());
    }
    assert_eq!(state.tables.requests.len(), 24);
    // The stored key hashes still authenticate the keys issued then.
    let keys: BTreeMap<String, String> =
        serde_json::from_value(fixture_json("legacy-v1-keys.json")).unwrap();
    for (instance, key) in &keys {
        hub.check_key(instance, Some(key)).unwrap();
        assert!(hub.check_key(instance, Some("lhk_wrong")).is_err());
    }
    // The outcome and audit logs are read where they were.
    let audit = hub
        .query_audit(AuditQuery {
            from: 0,
            until: i64::MAX,
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit.len() as u64,
        expected["audit_entries_on_disk"].as_u64().unwrap()
    );
    assert_eq!(
        store.outcomes_after(0, 10_000).unwrap().len() as u64,
        expected["outcomes_on_disk"].as_u64().unwrap()
    );

    // It was converted in place: a checkpoint now, and the next start
    // loads it as it is.
    let digest = hub.state_digest();
    hub.close().await.unwrap();
    drop(hub);
    drop(state);
    drop(store);
    let store = reopen(&data);
    assert!(store.backend().checkpoint_position().unwrap().is_some());
    let loaded = store.load(7).unwrap();
    assert!(!loaded.legacy);
    let again = open(&store, &clock);
    assert_eq!(again.state_digest(), digest);
}

/// Opens `dir` once the previous store let go of it (sled releases its
/// lock from a background thread).
fn reopen(dir: &Path) -> Store {
    for _ in 0..100 {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Store::open(dir).unwrap()
}

/// A gate checkpoints wait at, counting those waiting.
#[derive(Default)]
struct Gate {
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.closed.lock().unwrap() = !open;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let closed = self.closed.lock().unwrap();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(self.opened.wait_while(closed, |closed| *closed).unwrap());
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn writes_are_acknowledged_while_a_checkpoint_is_being_written() {
    // Checkpoints wait at the gate; the store keeps its log apart from
    // them, as the one on disk does, so the writer writes them beside it.
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let backend = Hooked::new(KvBackend::new(Arc::new(MemoryEngine::default())))
        .before_checkpoint(move || held.pass())
        .beside_appends(true);
    let store = Store::new(Arc::new(backend));
    let clock = Arc::new(ManualClock::new(T0));
    let first = open(&store, &clock);
    register_in_process(&first, "i1").await;
    share(&first, 10).await;
    // A second hub on the store (a crash of the first): it folds the log's
    // tail and checkpoints at once — on the checkpoint thread, held at the
    // gate.
    gate.set(false);
    let second = open(&store, &clock);
    let started = std::time::Instant::now();
    while gate.waiting() == 0 {
        assert!(started.elapsed().as_secs() < 10, "no checkpoint started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = checkpointed(&store);
    share(&second, 20).await;
    assert_eq!(
        second.state().tables.instances["i1"].shared_records,
        30,
        "writes were acknowledged while the checkpoint waited"
    );
    assert_eq!(checkpointed(&store), before, "the checkpoint is still held");
    gate.set(true);
    let digest = second.state_digest();
    second.close().await.unwrap();
    assert_eq!(checkpointed(&store), second.state().position);
    let reopened = open(&store, &clock);
    assert_eq!(reopened.state_digest(), digest);
}
