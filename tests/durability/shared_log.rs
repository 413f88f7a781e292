//! The shared log's rules, run against every [`SharedLog`]: the in-memory
//! one and PostgreSQL (a database of the test's own).
//!
//! - batches get the positions after the head, in order, and appending a
//!   batch id again returns its first position without a second copy;
//! - with several appenders at once, a reader that tails "after my
//!   position" sees every position exactly once (the reason positions come
//!   from a counter row, not a sequence);
//! - a checkpoint is written only on the base it was diffed from;
//! - a lease is held by one holder at a time, renewed under the same
//!   epoch, and taken over under a greater one once expired or released;
//! - the head watch wakes a reader when another appends.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use learning_hub::store::{Checkpoint, MemorySharedLog, PgBackend, PgSettings, SharedLog};

use crate::common::pg::TestDb;

fn batch(n: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = n;
    id[15] = 0xAB;
    id
}

fn commands(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

fn positions_and_batches(log: &dyn SharedLog) {
    assert_eq!(log.append_batch(batch(1), &commands(&["a", "b"])), Ok(1));
    assert_eq!(log.append_batch(batch(2), &commands(&["c"])), Ok(3));
    // The same batch again (its commit's answer was lost): found, not
    // appended again.
    assert_eq!(log.append_batch(batch(1), &commands(&["a", "b"])), Ok(1));
    assert_eq!(log.append_batch(batch(3), &commands(&["d"])), Ok(4));
    let read: Vec<(u64, String)> = log
        .log_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.position, String::from_utf8(e.bytes).unwrap()))
        .collect();
    let expected: Vec<(u64, String)> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, t.to_string()))
        .collect();
    assert_eq!(read, expected);
    assert_eq!(log.log_head().unwrap(), 4);
    assert_eq!(
        log.log_after(2, 1).unwrap()[0].position,
        3,
        "from inside a batch"
    );
}

/// 4 appenders, 100 batches each of 1–5 commands, and a tailer that reads
/// after its position as they go: it sees every position once, in order.
fn concurrent_appends_are_tailed_without_gaps(log: Arc<dyn SharedLog>) {
    const WRITERS: usize = 4;
    const BATCHES: usize = 100;
    let done = Arc::new(Mutex::new(0));
    let mut writers = Vec::new();
    let mut expected = 0u64;
    for w in 0..WRITERS {
        let log = log.clone();
        let done = done.clone();
        expected += (0..BATCHES).map(|b| (b % 5 + 1) as u64).sum::<u64>();
        writers.push(thread::spawn(move || {
            for b in 0..BATCHES {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(w as u64).to_be_bytes());
                id[8..].copy_from_slice(&(b as u64).to_be_bytes());
                let texts: Vec<Vec<u8>> = (0..b % 5 + 1)
                    .map(|i| format!("{w}-{b}-{i}").into_bytes())
                    .collect();
                log.append_batch(id, &texts).unwrap();
            }
            *done.lock().unwrap() += 1;
        }));
    }
    let mut seen = 0u64;
    let mut texts = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finished = *done.lock().unwrap() == WRITERS;
        for entry in log.log_after(seen, 1000).unwrap() {
            assert_eq!(entry.position, seen + 1, "a gap or a repeat after {seen}");
            seen = entry.position;
            assert!(texts.insert(entry.bytes), "a command twice");
        }
        if finished && seen == log.log_head().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "tailing took over 60 s");
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(seen, expected);
}

fn checkpoints_are_fenced(log: &dyn SharedLog) {
    let generation = log.checkpoint_generation().unwrap();
    let at = |position| Checkpoint {
        position,
        ..Default::default()
    };
    assert!(log.checkpoint_from(0, at(5)).unwrap(), "the first, on none");
    assert!(
        !log.checkpoint_from(0, at(7)).unwrap(),
        "diffed from a stale base"
    );
    assert_eq!(log.checkpoint_position().unwrap(), Some(5));
    assert!(log.checkpoint_from(5, at(9)).unwrap());
    assert_eq!(log.checkpoint_position().unwrap(), Some(9));
    assert_eq!(log.checkpoint_generation().unwrap(), generation + 2);
}

fn leases_have_one_holder(log: &dyn SharedLog) {
    let ttl = Duration::from_millis(300);
    let a = log
        .acquire_lease("jobs", "a", ttl)
        .unwrap()
        .expect("free: a takes it");
    assert_eq!(
        log.acquire_lease("jobs", "b", ttl).unwrap(),
        None,
        "held by a"
    );
    assert_eq!(
        log.acquire_lease("jobs", "a", ttl).unwrap(),
        Some(a),
        "renewed"
    );
    log.release_lease("jobs", "b").unwrap(); // not b's: nothing happens
    assert_eq!(log.acquire_lease("jobs", "b", ttl).unwrap(), None);
    thread::sleep(ttl + Duration::from_millis(100));
    let b = log
        .acquire_lease("jobs", "b", ttl)
        .unwrap()
        .expect("expired: b");
    assert!(b > a, "a new holder, a greater epoch ({b} after {a})");
    log.release_lease("jobs", "b").unwrap();
    let a2 = log
        .acquire_lease("jobs", "a", ttl)
        .unwrap()
        .expect("released");
    assert!(a2 > b);
    assert_eq!(
        log.acquire_lease("other", "b", ttl).unwrap(),
        Some(1),
        "leases are by name"
    );
}

fn the_head_watch_wakes_readers(log: &dyn SharedLog) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let _guard = log
        .watch_head(Box::new(move |head| {
            let _ = tx.lock().unwrap().send(head);
        }))
        .unwrap();
    // A watch that (re)connects says it may have missed appends (u64::MAX);
    // it may connect before or after the first append, so append until a
    // head is announced that was appended after it said so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = false;
    let mut appended = log.append_batch(batch(90), &commands(&["x"])).unwrap();
    loop {
        let head = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("woken within 10 s");
        if head == u64::MAX {
            connected = true;
            appended = log.append_batch(batch(91), &commands(&["y"])).unwrap();
        } else if connected && head >= appended {
            break;
        } else if head == appended {
            // Listening before the first append: woken with its head.
            break;
        }
    }
}

fn all(make: impl Fn() -> Option<Arc<dyn SharedLog>>) {
    type Rule = fn(Arc<dyn SharedLog>);
    let tests: [(&str, Rule); 5] = [
        ("positions_and_batches", |l| positions_and_batches(&*l)),
        (
            "concurrent_appends",
            concurrent_appends_are_tailed_without_gaps,
        ),
        ("checkpoints_are_fenced", |l| checkpoints_are_fenced(&*l)),
        ("leases_have_one_holder", |l| leases_have_one_holder(&*l)),
        ("the_head_watch", |l| the_head_watch_wakes_readers(&*l)),
    ];
    for (name, test) in tests {
        let Some(log) = make() else { return };
        eprintln!("shared log rule: {name}");
        test(log);
    }
}

#[test]
fn the_memory_shared_log_keeps_the_rules() {
    all(|| Some(Arc::new(MemorySharedLog::new())));
}

#[test]
fn postgres_keeps_the_rules() {
    // The databases live as long as the test.
    let dbs = Mutex::new(Vec::new());
    all(|| {
        let db = TestDb::create("shared_log::postgres_keeps_the_rules")?;
        let log = PgBackend::connect(&PgSettings::new(&db.url)).unwrap();
        dbs.lock().unwrap().push(db);
        Some(Arc::new(log))
    });
}

/// A database whose schema a newer hub wrote is refused by name.
#[test]
fn a_newer_schema_is_refused_by_name() {
    let Some(db) = TestDb::create("shared_log::a_newer_schema_is_refused_by_name") else {
        return;
    };
    drop(PgBackend::connect(&PgSettings::new(&db.url)).unwrap());
    let url = db.url.clone();
    crate::common::pg::admin_on(&url, "INSERT INTO hub_schema VALUES (99)".into()).unwrap();
    let error = PgBackend::connect(&PgSettings::new(&db.url))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("schema is version 99, newer than this hub knows (1)"),
        "{error}"
    );
}

/// A URL that is not one, or a server that is not there, is named.
#[test]
fn connection_problems_are_named() {
    let error = PgBackend::connect(&PgSettings::new("postgres://[nonsense"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("storage.postgres_url"), "{error}");
    let mut settings = PgSettings::new("postgres://postgres@127.0.0.1:1/none");
    settings.timeout = Duration::from_secs(2);
    let error = PgBackend::connect(&settings).unwrap_err().to_string();
    assert!(error.contains("PostgreSQL unavailable"), "{error}");
}

/// TLS to PostgreSQL: with the CA of its certificate every connection is
/// TLS and verified (here the machine's server, whose self-signed
/// certificate for `localhost` is its own CA); another CA, or
/// `sslmode=require` without one, is refused naming what is wrong.
#[test]
fn tls_to_postgres_is_verified_against_the_configured_ca() {
    const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let found = if std::path::Path::new(SERVER_CERT).exists() {
        Ok(())
    } else {
        Err(format!("no {SERVER_CERT}"))
    };
    if !crate::common::outside_dependency(
        "shared_log::tls_to_postgres_is_verified_against_the_configured_ca",
        "PostgreSQL's TLS certificate (Debian's ssl-cert snakeoil)",
        found,
    ) {
        return;
    }
    let Some(db) =
        TestDb::create("shared_log::tls_to_postgres_is_verified_against_the_configured_ca")
    else {
        return;
    };
    let url = db.url.replace("127.0.0.1", "localhost");
    let mut settings = PgSettings::new(format!("{url}?sslmode=require"));
    settings.ca_file = Some(SERVER_CERT.into());
    let log = PgBackend::connect(&settings).unwrap();
    assert_eq!(log.append_batch(batch(1), &commands(&["over TLS"])), Ok(1));
    drop(log);
    crate::common::pg::admin_on(&db.url, "SELECT 1".into()).unwrap();

    let other_ca = tempfile::tempdir().unwrap();
    learning_hub::pki::generate_dev_pki(other_ca.path()).unwrap();
    settings.ca_file = Some(other_ca.path().join("ca.pem"));
    settings.timeout = Duration::from_secs(5);
    let error = PgBackend::connect(&settings).unwrap_err().to_string();
    assert!(
        error.contains("PostgreSQL unavailable") && error.contains("certificate"),
        "{error}"
    );

    settings.ca_file = None;
    let error = PgBackend::connect(&settings).unwrap_err().to_string();
    assert!(error.contains("storage.postgres_ca_file"), "{error}");
}
