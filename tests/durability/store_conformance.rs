//! The storage conformance suite: every [`Backend`] runs the same
//! goldenscripts (`tests/scripts/backend/*`) — scripts of backend
//! operations and the output they must give — so that a backend that keeps
//! the log, the checkpoint and the row logs in another way behaves the
//! same to the hub. Here: sled with the log in files (as shipped), memory, the fault injector (with no fault
//! switched on), the in-memory shared log, and PostgreSQL (a database of
//! the test's own per script).
//!
//! The commands, with values as text:
//!
//! ```text
//! append 1=a 2=b            log entries at positions
//! flush | head | reopen     (reopen: a new handle on the same storage)
//! log [after=N] [limit=N]   entries after a position
//! discard after=N           entries after N removed
//! trim_log before=N
//! checkpoint 5 i/a=one i/b=DELETE o/3=row u/1=row m/name=v
//!                           a checkpoint at position 5: table records
//!                           (DELETE removes; `.` in a key is a NUL byte),
//!                           rows of the outcome (o/) and audit (u/) logs,
//!                           meta values
//! position                  the checkpoint's position
//! table i/ | meta name
//! rows o/ [after=N] [limit=N] | rows_before u/ [before=N] [limit=N]
//! trim_rows o/ before=N
//! ```
//!
//! `UPDATE_GOLDENFILES=1 cargo test --test durability store_conformance::` rewrites the
//! expected output; read the diff before committing it.

use std::{error::Error, fmt::Write as _, path::Path, sync::Arc};

use learning_hub::store::{
    Appended, Backend, Checkpoint, DiskBackend, Faults, FaultyEngine, KvBackend, MemoryEngine,
    MemorySharedLog, PgBackend, PgSettings, RowLog, RowWrite, TableWrite,
};

use crate::common::hooked::Hooked;
use crate::common::pg::TestDb;

/// Opens handles on one storage.
trait Storage {
    fn open(&mut self) -> Box<dyn Backend>;
}

struct Memory(Arc<MemoryEngine>);
impl Storage for Memory {
    fn open(&mut self) -> Box<dyn Backend> {
        Box::new(KvBackend::new(self.0.clone()))
    }
}

/// The on-disk backend as the hub opens it: sled, and the log's files.
struct Disk(tempfile::TempDir);
impl Storage for Disk {
    fn open(&mut self) -> Box<dyn Backend> {
        // sled may take a moment to let go of the directory.
        let mut tries = 0;
        loop {
            match DiskBackend::open(self.0.path()) {
                Ok(backend) => return Box::new(backend),
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn row_log(prefix: &str) -> Result<RowLog, Box<dyn Error>> {
    match prefix {
        "o/" => Ok(RowLog::Outcomes),
        "u/" => Ok(RowLog::Audit),
        other => Err(format!("no row log {other:?}").into()),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Runner<S: Storage> {
    storage: S,
    backend: Box<dyn Backend>,
}

impl<S: Storage> Runner<S> {
    fn new(mut storage: S) -> Self {
        let backend = storage.open();
        Runner { storage, backend }
    }
}

impl<S: Storage> goldenscript::Runner for Runner<S> {
    fn run(&mut self, command: &goldenscript::Command) -> Result<String, Box<dyn Error>> {
        let mut output = String::new();
        let mut args = command.consume_args();
        let b = &self.backend;
        match command.name.as_str() {
            "append" => {
                let entries = args
                    .rest_key()
                    .into_iter()
                    .map(|a| {
                        Ok(Appended {
                            position: a.key.as_deref().unwrap_or("").parse()?,
                            bytes: a.value.clone().into_bytes(),
                        })
                    })
                    .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
                b.append(&entries)?;
            }
            "flush" => b.flush()?,
            "head" => writeln!(output, "{}", b.log_head()?)?,
            "reopen" => {
                // The old handle goes first (sled holds its directory).
                self.backend = Box::new(KvBackend::new(Arc::new(MemoryEngine::default())));
                self.backend = self.storage.open();
            }
            "log" => {
                let after = args.lookup_parse("after")?.unwrap_or(0);
                let limit = args.lookup_parse("limit")?.unwrap_or(usize::MAX);
                for e in b.log_after(after, limit)? {
                    writeln!(output, "{} {}", e.position, text(&e.bytes))?;
                }
            }
            "discard" => b.discard_log_after(args.lookup_parse("after")?.unwrap_or(0))?,
            "trim_log" => {
                let removed = b.trim_log(args.lookup_parse("before")?.unwrap_or(0))?;
                writeln!(output, "removed {removed}")?;
            }
            "checkpoint" => {
                let position: u64 = args.next_pos().ok_or("a position")?.parse()?;
                let mut checkpoint = Checkpoint {
                    position,
                    ..Default::default()
                };
                for a in args.rest_key() {
                    let key = a.key.as_deref().unwrap_or("");
                    let (prefix, id) = key.split_at(2);
                    let value = (a.value != "DELETE").then(|| a.value.clone().into_bytes());
                    match prefix {
                        "o/" | "u/" => checkpoint.rows.push(RowWrite {
                            log: row_log(prefix)?,
                            sequence: id.parse()?,
                            bytes: value.ok_or("rows are not removed")?,
                        }),
                        "m/" => {
                            let name: &'static str = Box::leak(id.to_string().into_boxed_str());
                            checkpoint
                                .meta
                                .push((name, value.ok_or("meta is not removed")?));
                        }
                        _ => {
                            let table: &'static str =
                                Box::leak(prefix.to_string().into_boxed_str());
                            checkpoint.tables.push(TableWrite {
                                table,
                                key: id.replace('.', "\0").into_bytes(),
                                value,
                            });
                        }
                    }
                }
                b.checkpoint(checkpoint)?;
            }
            "position" => writeln!(output, "{:?}", b.checkpoint_position()?)?,
            "table" => {
                let table = args.next_pos().ok_or("a table prefix")?.value.clone();
                for (k, v) in b.table(&table)? {
                    writeln!(output, "{}={}", text(&k).replace('\0', "."), text(&v))?;
                }
            }
            "meta" => {
                let name = args.next_pos().ok_or("a name")?.value.clone();
                writeln!(output, "{:?}", b.meta(&name)?.map(|v| text(&v)))?;
            }
            "rows" => {
                let log = row_log(&args.next_pos().ok_or("a row log")?.value)?;
                let after = args.lookup_parse("after")?.unwrap_or(0);
                let limit = args.lookup_parse("limit")?.unwrap_or(usize::MAX);
                for (sequence, v) in b.rows_after(log, after, limit)? {
                    writeln!(output, "{sequence} {}", text(&v))?;
                }
            }
            "rows_before" => {
                let log = row_log(&args.next_pos().ok_or("a row log")?.value)?;
                let before = args.lookup_parse("before")?.unwrap_or(u64::MAX);
                let limit = args.lookup_parse("limit")?.unwrap_or(usize::MAX);
                for (sequence, v) in b.rows_before(log, before, limit)? {
                    writeln!(output, "{sequence} {}", text(&v))?;
                }
            }
            "trim_rows" => {
                let log = row_log(&args.next_pos().ok_or("a row log")?.value)?;
                let removed = b.trim_rows(log, args.lookup_parse("before")?.unwrap_or(0))?;
                writeln!(output, "removed {removed}")?;
            }
            name => return Err(format!("unknown command {name}").into()),
        }
        args.reject_rest()?;
        Ok(output)
    }
}

fn scripts() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/backend");
    let mut scripts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 3, "{scripts:?}");
    scripts
}

fn run_all<S: Storage>(make: impl Fn() -> S) {
    for script in scripts() {
        goldenscript::run(&mut Runner::new(make()), &script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    }
}

#[test]
fn memory_conforms() {
    run_all(|| Memory(Arc::default()));
}

#[test]
fn sled_with_the_log_in_files_conforms() {
    run_all(|| Disk(tempfile::tempdir().unwrap()));
}

#[test]
fn the_fault_injector_with_no_fault_conforms() {
    struct FaultyMemory(Arc<FaultyEngine>);
    impl Storage for FaultyMemory {
        fn open(&mut self) -> Box<dyn Backend> {
            Box::new(KvBackend::new(self.0.clone()))
        }
    }
    run_all(|| {
        FaultyMemory(Arc::new(FaultyEngine::new(
            Arc::new(MemoryEngine::default()),
            Faults::new(),
        )))
    });
}

#[test]
fn the_memory_shared_log_conforms() {
    struct Shared(MemorySharedLog);
    impl Storage for Shared {
        fn open(&mut self) -> Box<dyn Backend> {
            Box::new(self.0.clone())
        }
    }
    run_all(|| Shared(MemorySharedLog::new()));
}

#[test]
fn postgres_conforms() {
    /// A database per script; `reopen` connects again.
    struct Pg(TestDb);
    impl Storage for Pg {
        fn open(&mut self) -> Box<dyn Backend> {
            Box::new(PgBackend::connect(&PgSettings::new(&self.0.url)).unwrap())
        }
    }
    for script in scripts() {
        let Some(db) = TestDb::create("store_conformance::postgres_conforms") else {
            return;
        };
        goldenscript::run(&mut Runner::new(Pg(db)), &script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    }
}

/// The suite has teeth: a backend that reads the log one entry short
/// fails it.
#[test]
fn a_backend_that_breaks_a_rule_fails_the_suite() {
    struct Broken(Arc<MemoryEngine>);
    impl Storage for Broken {
        fn open(&mut self) -> Box<dyn Backend> {
            Box::new(
                Hooked::new(KvBackend::new(self.0.clone())).rewrite_log(|mut entries| {
                    entries.pop();
                    entries
                }),
            )
        }
    }
    let failed = std::panic::catch_unwind(|| run_all(|| Broken(Arc::default())));
    assert!(failed.is_err(), "a broken backend passed the suite");
}
