//! [`Backend`] and [`SharedLog`] in PostgreSQL: the storage of replicated
//! hubs, shared by every replica.
//!
//! The command log is a table with a row per appended batch. An append
//! takes its positions from a counter row in the same transaction
//! (`UPDATE hub_log_head SET pos = pos + n RETURNING pos`), which
//! serializes appends: commit order is position order, so a replica that
//! reads "every batch after my position" never skips one still being
//! committed (a sequence or bigserial would: numbers are handed out at
//! insert time and committed in another order). The commit's NOTIFY
//! carries only the new head; readers read the data by position.
//!
//! A batch carries an id, unique in the table: when the connection breaks
//! during a commit, the appender appends the same batch again. If the
//! first commit went through, the second insert conflicts — PostgreSQL
//! makes it wait for the first transaction to end, so the answer is never
//! "not yet" — and the batch's positions are read back instead.
//!
//! Checkpoints, the row logs and the meta values are tables too, written
//! in one transaction per checkpoint; [`SharedLog::checkpoint_from`]
//! fences it on the previous checkpoint's position, so a replica that
//! lost the lease cannot overwrite a newer checkpoint with an older diff.
//! The jobs lease is a row with a holder, an epoch and an expiry on the
//! database's clock (not an advisory lock, which dies unnoticed with its
//! session behind a pooler).
//!
//! TLS: with a CA file (`storage.postgres_ca_file`) every connection is
//! TLS (rustls, ring), the server's certificate verified against that CA
//! and the URL's host name; `sslmode=require` without one is refused,
//! naming the setting.
//!
//! The hub calls backends from threads that may block (its writer thread,
//! the blocking pool). This backend owns a small runtime for tokio-postgres
//! and deadpool: each call is run there and its caller waits, at most the
//! configured timeout, so a database that stops answering makes a call
//! fail as UNAVAILABLE rather than hang.

pub mod schema;

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{AsyncMessage, NoTls, config::SslMode, error::SqlState};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend::{Appended, Backend, Checkpoint, RowLog};
use crate::error::{Error, Result};
use crate::frame::{decode_frame, encode_frame};
use crate::shared::{AppendError, BatchId, SharedLog, WatchGuard};

/// The channel appends NOTIFY with the new head.
const CHANNEL: &str = "hub_log";
/// Frames read per query when reading the log.
const FRAME_PAGE: i64 = 64;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/database?…` or `host=… dbname=…`.
    pub url: String,
    /// Connections in the pool (the dedicated LISTEN connection is extra).
    pub pool_size: usize,
    /// The longest one call may take before it fails as UNAVAILABLE.
    pub timeout: Duration,
    /// The CA (PEM) that signed PostgreSQL's certificate: set, every
    /// connection is TLS and verified.
    pub ca_file: Option<PathBuf>,
}

impl PgSettings {
    pub fn new(url: impl Into<String>) -> Self {
        PgSettings {
            url: url.into(),
            pool_size: 8,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// What a call was doing when PostgreSQL failed it, for the message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Connect,
    Migrate,
    Append,
    Commit,
    Read,
    Checkpoint,
    Trim,
    Lease,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connecting",
            Stage::Migrate => "migrating the schema",
            Stage::Append => "appending to the log",
            Stage::Commit => "committing an append",
            Stage::Read => "reading",
            Stage::Checkpoint => "writing a checkpoint",
            Stage::Trim => "trimming",
            Stage::Lease => "renewing the lease",
        }
    }
}

/// A PostgreSQL failure as the hub reports it: UNAVAILABLE, naming what
/// was being done and why it failed.
pub(crate) fn pg_error(stage: Stage, e: tokio_postgres::Error) -> Error {
    let why = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            why
        }
    };
    Error::Unavailable(format!(
        "PostgreSQL unavailable: {} failed: {why}",
        stage.name()
    ))
}

fn pool_error(stage: Stage, e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg_error(stage, e),
        other => Error::Unavailable(format!(
            "PostgreSQL unavailable: {} failed: no connection: {other}",
            stage.name()
        )),
    }
}

/// A position or sequence as PostgreSQL stores it (bigint).
fn int(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| {
        Error::Internal(format!(
            "{what} {value} does not fit PostgreSQL's bigint; positions and sequences stop at 2^63"
        ))
    })
}

/// A bound of a range query: as far as bigint goes.
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn row_log(log: RowLog) -> i16 {
    match log {
        RowLog::Outcomes => 0,
        RowLog::Audit => 1,
    }
}

/// PostgreSQL behind [`Backend`] and [`SharedLog`].
pub struct PgBackend {
    pool: Pool,
    config: tokio_postgres::Config,
    /// TLS for the LISTEN connection, as for the pool's.
    tls: Option<MakeRustlsConnect>,
    handle: Handle,
    /// Owned, so that the backend works from any thread; shut down in the
    /// background on drop (dropping a runtime inside another would panic).
    runtime: Mutex<Option<Runtime>>,
    timeout: Duration,
    described: String,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgBackend({})", self.described)
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().ok().and_then(|mut r| r.take()) {
            runtime.shutdown_background();
        }
    }
}

/// `host:port/database` of a configuration, without credentials.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("PostgreSQL at {host}:{port}/{db}")
}

impl PgBackend {
    /// Connects, applies the schema's migrations, and returns the backend.
    /// Fails naming the problem: a URL that does not parse, a database that
    /// does not answer, a schema newer than this hub knows.
    pub fn connect(settings: &PgSettings) -> Result<Self> {
        let mut config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
            Error::invalid(
                "storage.postgres_url",
                format!("not a PostgreSQL connection URL: {e}"),
            )
        })?;
        let tls = match (&settings.ca_file, config.get_ssl_mode()) {
            (Some(ca), mode) if mode != SslMode::Disable => {
                config.ssl_mode(SslMode::Require);
                Some(rustls_connector(ca)?)
            }
            (None, SslMode::Require) => {
                return Err(Error::invalid(
                    "storage.postgres_ca_file",
                    "sslmode=require needs the CA that signed PostgreSQL's certificate, \
                     to verify it",
                ));
            }
            _ => None,
        };
        config.application_name("learning-hub");
        config.connect_timeout(settings.timeout);
        // A peer that vanished is noticed in seconds, not hours.
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        // An appender that died between its UPDATE and its COMMIT holds
        // the counter row; the server ends its transaction soon.
        if config.get_options().is_none() {
            config.options(
                "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=15000 \
                 -c client_min_messages=warning",
            );
        }
        let described = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hub-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the PostgreSQL pool: {e}")))?;
        let backend = PgBackend {
            pool,
            config,
            tls,
            handle,
            runtime: Mutex::new(Some(runtime)),
            timeout: settings.timeout,
            described,
        };
        let pool = backend.pool.clone();
        let found = backend.run(Stage::Migrate, async move {
            let mut client = pool
                .get()
                .await
                .map_err(|e| pool_error(Stage::Connect, e))?;
            schema::migrate(&mut client).await
        })?;
        tracing::info!(
            database = %backend.described,
            schema = schema::VERSION,
            found,
            "PostgreSQL connected"
        );
        Ok(backend)
    }

    /// Makes the log's next position `position + 1` (or later): a state
    /// copied in at `position` (`learning-hub migrate`) continues there.
    pub fn continue_log_after(&self, position: u64) -> Result<()> {
        let position = int(position, "log position")?;
        self.with_client(Stage::Append, move |client| async move {
            client
                .execute(
                    "UPDATE hub_log_head SET pos = greatest(pos, $1) WHERE id = 1",
                    &[&position],
                )
                .await
                .map(drop)
        })
    }

    /// Runs `work` on the backend's runtime and waits for it, at most the
    /// timeout.
    fn run<T: Send + 'static>(
        &self,
        stage: Stage,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let answer = match tokio::time::timeout(timeout, work).await {
                Ok(answer) => answer,
                Err(_) => Err(Error::Unavailable(format!(
                    "PostgreSQL unavailable: {} failed: no answer within {} s",
                    stage.name(),
                    timeout.as_secs_f64()
                ))),
            };
            let _ = tx.send(answer);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(Error::Unavailable("PostgreSQL client stopped".into())))
    }

    /// Runs one query's worth of work with a pooled connection.
    fn with_client<T: Send + 'static, F, Fut>(&self, stage: Stage, work: F) -> Result<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send,
    {
        let pool = self.pool.clone();
        self.run(stage, async move {
            let client = pool.get().await.map_err(|e| pool_error(stage, e))?;
            work(client).await.map_err(|e| pg_error(stage, e))
        })
    }

    async fn append_batch_async(
        pool: Pool,
        batch: BatchId,
        commands: Vec<Vec<u8>>,
    ) -> std::result::Result<u64, AppendError> {
        let not_applied = |e| AppendError::NotApplied(pg_error(Stage::Append, e));
        let mut client = pool
            .get()
            .await
            .map_err(|e| AppendError::NotApplied(pool_error(Stage::Append, e)))?;
        let n = i64::try_from(commands.len()).unwrap_or(i64::MAX);
        let tx = client.transaction().await.map_err(not_applied)?;
        let last: i64 = tx
            .query_one(
                "UPDATE hub_log_head SET pos = pos + $1 WHERE id = 1 RETURNING pos",
                &[&n],
            )
            .await
            .map_err(not_applied)?
            .get(0);
        let first = last - n + 1;
        let entries: Vec<Appended> = commands
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| Appended {
                position: (first + i as i64) as u64,
                bytes,
            })
            .collect();
        let inserted = tx
            .execute(
                "INSERT INTO hub_log (first_pos, last_pos, count, batch, entries) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &first,
                    &last,
                    &(n as i32),
                    &batch.as_slice(),
                    &encode_frame(&entries),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // Appended before (its commit's answer was lost): where?
                let _ = tx.rollback().await;
                let row = client
                    .query_one(
                        "SELECT first_pos FROM hub_log WHERE batch = $1",
                        &[&batch.as_slice()],
                    )
                    .await
                    .map_err(|e| AppendError::InDoubt(pg_error(Stage::Read, e)))?;
                let first: i64 = row.get(0);
                return Ok(first as u64);
            }
            Err(e) => return Err(not_applied(e)),
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &last.to_string()])
            .await
            .map_err(not_applied)?;
        tx.commit()
            .await
            .map_err(|e| AppendError::InDoubt(pg_error(Stage::Commit, e)))?;
        Ok(first as u64)
    }

    /// Writes a checkpoint in one transaction; with `base`, only if the
    /// stored checkpoint is still at that position.
    async fn write_checkpoint(
        pool: Pool,
        base: Option<i64>,
        checkpoint: Checkpoint,
    ) -> Result<bool> {
        let failed = |e| pg_error(Stage::Checkpoint, e);
        let mut client = pool
            .get()
            .await
            .map_err(|e| pool_error(Stage::Checkpoint, e))?;
        let position = int(checkpoint.position, "checkpoint position")?;
        let tx = client.transaction().await.map_err(failed)?;
        // First, so that checkpoints serialize on this row.
        let updated = match base {
            Some(base) => tx
                .execute(
                    "UPDATE hub_checkpoint SET position = $1, generation = generation + 1 \
                     WHERE id = 1 AND coalesce(position, 0) = $2",
                    &[&position, &base],
                )
                .await
                .map_err(failed)?,
            None => tx
                .execute(
                    "UPDATE hub_checkpoint SET position = $1, generation = generation + 1 \
                     WHERE id = 1",
                    &[&position],
                )
                .await
                .map_err(failed)?,
        };
        if updated == 0 {
            let _ = tx.rollback().await;
            return Ok(false);
        }
        // The last write of a key wins, as in one key-value batch.
        let mut records: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for write in checkpoint.tables {
            records.insert((write.table, write.key), write.value);
        }
        let (mut put_tables, mut put_keys, mut put_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_tables, mut del_keys) = (Vec::new(), Vec::new());
        for ((table, key), value) in records {
            match value {
                Some(value) => {
                    put_tables.push(table);
                    put_keys.push(key);
                    put_values.push(value);
                }
                None => {
                    del_tables.push(table);
                    del_keys.push(key);
                }
            }
        }
        if !del_keys.is_empty() {
            tx.execute(
                "DELETE FROM hub_records r USING unnest($1::text[], $2::bytea[]) AS d(tbl, key) \
                 WHERE r.tbl = d.tbl AND r.key = d.key",
                &[&del_tables, &del_keys],
            )
            .await
            .map_err(failed)?;
        }
        if !put_keys.is_empty() {
            tx.execute(
                "INSERT INTO hub_records (tbl, key, value) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                &[&put_tables, &put_keys, &put_values],
            )
            .await
            .map_err(failed)?;
        }
        let mut rows: BTreeMap<(i16, i64), Vec<u8>> = BTreeMap::new();
        for row in checkpoint.rows {
            rows.insert(
                (row_log(row.log), int(row.sequence, "row sequence")?),
                row.bytes,
            );
        }
        if !rows.is_empty() {
            let (mut logs, mut seqs, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
            for ((log, seq), row) in rows {
                logs.push(log);
                seqs.push(seq);
                bytes.push(row);
            }
            tx.execute(
                "INSERT INTO hub_rows (log, seq, bytes) \
                 SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (log, seq) DO UPDATE SET bytes = excluded.bytes",
                &[&logs, &seqs, &bytes],
            )
            .await
            .map_err(failed)?;
        }
        let meta: BTreeMap<&str, Vec<u8>> = checkpoint.meta.into_iter().collect();
        if !meta.is_empty() {
            let (names, values): (Vec<&str>, Vec<Vec<u8>>) = meta.into_iter().unzip();
            tx.execute(
                "INSERT INTO hub_meta (name, value) SELECT * FROM unnest($1::text[], $2::bytea[]) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&names, &values],
            )
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }
}

impl Backend for PgBackend {
    fn checkpoint_position(&self) -> Result<Option<u64>> {
        self.with_client(Stage::Read, |client| async move {
            let row = client
                .query_one("SELECT position FROM hub_checkpoint WHERE id = 1", &[])
                .await?;
            Ok(row.get::<_, Option<i64>>(0).map(|p| p as u64))
        })
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_owned();
        self.with_client(Stage::Read, |client| async move {
            let row = client
                .query_opt("SELECT value FROM hub_meta WHERE name = $1", &[&name])
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn table(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let table = table.to_owned();
        self.with_client(Stage::Read, |client| async move {
            let rows = client
                .query(
                    "SELECT key, value FROM hub_records WHERE tbl = $1 ORDER BY key",
                    &[&table],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn append(&self, entries: &[Appended]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let first = int(first.position, "log position")?;
        let last = int(last.position, "log position")?;
        let count = i32::try_from(entries.len()).unwrap_or(i32::MAX);
        let frame = encode_frame(entries);
        let batch = *uuid::Uuid::new_v4().as_bytes();
        self.with_client(Stage::Append, move |mut client| async move {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO hub_log (first_pos, last_pos, count, batch, entries) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&first, &last, &count, &batch.as_slice(), &frame],
            )
            .await?;
            tx.execute(
                "UPDATE hub_log_head SET pos = greatest(pos, $1) WHERE id = 1",
                &[&last],
            )
            .await?;
            tx.commit().await
        })
    }

    fn flush(&self) -> Result<()> {
        // Every transaction is durable when its commit returns.
        Ok(())
    }

    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut found: Vec<Appended> = Vec::new();
        // Frames whose last position is after `after`, a page at a time.
        let mut from = bound(after);
        loop {
            let page = self.with_client(Stage::Read, move |client| async move {
                let rows = client
                    .query(
                        "SELECT first_pos, last_pos, entries FROM hub_log \
                         WHERE last_pos > $1 ORDER BY first_pos LIMIT $2",
                        &[&from, &FRAME_PAGE],
                    )
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        (
                            r.get::<_, i64>(0),
                            r.get::<_, i64>(1),
                            r.get::<_, Vec<u8>>(2),
                        )
                    })
                    .collect::<Vec<_>>())
            })?;
            let full = page.len() as i64 == FRAME_PAGE;
            for (first, last, frame) in &page {
                let key = format!("hub_log/{first}");
                for entry in decode_frame(key.as_bytes(), frame)? {
                    if entry.position > after {
                        if found.len() >= limit {
                            return Ok(found);
                        }
                        found.push(entry);
                    }
                }
                from = from.max(*last);
            }
            if !full {
                return Ok(found);
            }
        }
    }

    fn log_head(&self) -> Result<u64> {
        self.with_client(Stage::Read, |client| async move {
            let row = client
                .query_one("SELECT coalesce(max(last_pos), 0) FROM hub_log", &[])
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn discard_log_after(&self, position: u64) -> Result<()> {
        let position = bound(position);
        self.run(Stage::Trim, {
            let pool = self.pool.clone();
            async move {
                let failed = |e| pg_error(Stage::Trim, e);
                let mut client = pool.get().await.map_err(|e| pool_error(Stage::Trim, e))?;
                let tx = client.transaction().await.map_err(failed)?;
                tx.execute("DELETE FROM hub_log WHERE first_pos > $1", &[&position])
                    .await
                    .map_err(failed)?;
                // The frame holding `position` keeps its entries up to it.
                if let Some(row) = tx
                    .query_opt(
                        "SELECT first_pos, entries FROM hub_log WHERE last_pos > $1",
                        &[&position],
                    )
                    .await
                    .map_err(failed)?
                {
                    let first: i64 = row.get(0);
                    let frame: Vec<u8> = row.get(1);
                    let key = format!("hub_log/{first}");
                    let kept: Vec<Appended> = decode_frame(key.as_bytes(), &frame)?
                        .into_iter()
                        .filter(|e| e.position as i64 <= position)
                        .collect();
                    tx.execute(
                        "UPDATE hub_log SET last_pos = $2, count = $3, entries = $4 \
                         WHERE first_pos = $1",
                        &[
                            &first,
                            &position,
                            &(kept.len() as i32),
                            &encode_frame(&kept),
                        ],
                    )
                    .await
                    .map_err(failed)?;
                }
                tx.execute(
                    "UPDATE hub_log_head SET pos = $1 WHERE id = 1",
                    &[&position],
                )
                .await
                .map_err(failed)?;
                tx.commit().await.map_err(failed)
            }
        })
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let pool = self.pool.clone();
        self.run(Stage::Checkpoint, async move {
            PgBackend::write_checkpoint(pool, None, checkpoint)
                .await
                .map(drop)
        })
    }

    fn trim_log(&self, before: u64) -> Result<usize> {
        let before = bound(before);
        let pool = self.pool.clone();
        self.run(Stage::Trim, async move {
            let failed = |e| pg_error(Stage::Trim, e);
            let mut client = pool.get().await.map_err(|e| pool_error(Stage::Trim, e))?;
            let tx = client.transaction().await.map_err(failed)?;
            let gone: i64 = tx
                .query_one(
                    "WITH gone AS (DELETE FROM hub_log WHERE last_pos < $1 RETURNING count) \
                     SELECT coalesce(sum(count), 0)::bigint FROM gone",
                    &[&before],
                )
                .await
                .map_err(failed)?
                .get(0);
            let mut removed = gone as usize;
            // A frame that straddles `before` keeps its later entries,
            // under the position of the first of them.
            if let Some(row) = tx
                .query_opt(
                    "SELECT first_pos, entries FROM hub_log WHERE first_pos < $1",
                    &[&before],
                )
                .await
                .map_err(failed)?
            {
                let first: i64 = row.get(0);
                let frame: Vec<u8> = row.get(1);
                let key = format!("hub_log/{first}");
                let (old, kept): (Vec<Appended>, Vec<Appended>) =
                    decode_frame(key.as_bytes(), &frame)?
                        .into_iter()
                        .partition(|e| (e.position as i64) < before);
                removed += old.len();
                if let Some(new_first) = kept.first() {
                    tx.execute(
                        "UPDATE hub_log SET first_pos = $2, count = $3, entries = $4 \
                         WHERE first_pos = $1",
                        &[
                            &first,
                            &(new_first.position as i64),
                            &(kept.len() as i32),
                            &encode_frame(&kept),
                        ],
                    )
                    .await
                    .map_err(failed)?;
                }
            }
            tx.commit().await.map_err(failed)?;
            Ok(removed)
        })
    }

    fn rows_after(&self, log: RowLog, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let (log, after, limit) = (row_log(log), bound(after), self::limit(limit));
        self.with_client(Stage::Read, move |client| async move {
            let rows = client
                .query(
                    "SELECT seq, bytes FROM hub_rows WHERE log = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                    &[&log, &after, &limit],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                .collect())
        })
    }

    fn rows_before(&self, log: RowLog, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let (log, before, limit) = (row_log(log), bound(before), self::limit(limit));
        self.with_client(Stage::Read, move |client| async move {
            let rows = client
                .query(
                    "SELECT seq, bytes FROM hub_rows WHERE log = $1 AND seq < $2 \
                     ORDER BY seq DESC LIMIT $3",
                    &[&log, &before, &limit],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                .collect())
        })
    }

    fn trim_rows(&self, log: RowLog, before: u64) -> Result<usize> {
        let (log, before) = (row_log(log), bound(before));
        self.with_client(Stage::Trim, move |client| async move {
            let n = client
                .execute(
                    "DELETE FROM hub_rows WHERE log = $1 AND seq < $2",
                    &[&log, &before],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.with_client(Stage::Read, |client| async move {
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .unwrap_or(0)
    }

    fn recover(&self) -> Result<()> {
        self.with_client(Stage::Connect, |client| async move {
            client.simple_query("SELECT 1").await.map(drop)
        })
    }
}

impl SharedLog for PgBackend {
    fn append_batch(
        &self,
        batch: BatchId,
        commands: &[Vec<u8>],
    ) -> std::result::Result<u64, AppendError> {
        if commands.is_empty() {
            return Err(AppendError::NotApplied(Error::Internal(
                "an empty batch".into(),
            )));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        let commands = commands.to_vec();
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let answer = tokio::time::timeout(
                timeout,
                PgBackend::append_batch_async(pool, batch, commands),
            )
            .await
            .unwrap_or_else(|_| {
                // Cut off somewhere between the UPDATE and the COMMIT's
                // answer: the commit may have happened.
                Err(AppendError::InDoubt(Error::Unavailable(format!(
                    "PostgreSQL unavailable: appending to the log failed: no answer within {} s",
                    timeout.as_secs_f64()
                ))))
            });
            let _ = tx.send(answer);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(AppendError::InDoubt(Error::Unavailable(
                "PostgreSQL client stopped".into(),
            )))
        })
    }

    fn checkpoint_generation(&self) -> Result<u64> {
        self.with_client(Stage::Read, |client| async move {
            let row = client
                .query_one("SELECT generation FROM hub_checkpoint WHERE id = 1", &[])
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn checkpoint_from(&self, base: u64, checkpoint: Checkpoint) -> Result<bool> {
        let base = int(base, "checkpoint position")?;
        let pool = self.pool.clone();
        self.run(Stage::Checkpoint, async move {
            PgBackend::write_checkpoint(pool, Some(base), checkpoint).await
        })
    }

    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let seconds = ttl.as_secs_f64();
        self.with_client(Stage::Lease, move |client| async move {
            let row = client
                .query_opt(
                    "INSERT INTO hub_lease AS l (name, holder, epoch, expires) \
                     VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
                     ON CONFLICT (name) DO UPDATE SET \
                       epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END, \
                       holder = excluded.holder, \
                       expires = excluded.expires \
                     WHERE l.expires < now() OR l.holder = excluded.holder \
                     RETURNING epoch",
                    &[&name, &holder, &seconds],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_client(Stage::Lease, move |client| async move {
            client
                .execute(
                    "UPDATE hub_lease SET expires = now() - interval '1 second' \
                     WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await
                .map(drop)
        })
    }

    fn watch_head(&self, wake: Box<dyn Fn(u64) + Send + Sync>) -> Result<WatchGuard> {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        let tls = self.tls.clone();
        let wake: Arc<dyn Fn(u64) + Send + Sync> = Arc::from(wake);
        let described = self.described.clone();
        self.handle.spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    ended = listen(&config, tls.clone(), wake.clone()) => {
                        if let Err(e) = ended {
                            tracing::debug!(database = %described, error = %e, "LISTEN connection lost; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Ok(Box::new(stop))
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

/// A rustls connector that trusts the CA certificates in `ca` (PEM).
fn rustls_connector(ca: &std::path::Path) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad = |why: String| Error::invalid("storage.postgres_ca_file", why);
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(format!("cannot read {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{} holds no certificate", ca.display())));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("TLS to PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// One LISTEN session: wakes with every NOTIFY until the connection ends.
async fn listen(
    config: &tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    wake: Arc<dyn Fn(u64) + Send + Sync>,
) -> std::result::Result<(), tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            listen_on(client, connection, wake).await
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            listen_on(client, connection, wake).await
        }
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    wake: Arc<dyn Fn(u64) + Send + Sync>,
) -> std::result::Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) =
            futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
        {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listened = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    // Whatever was appended while no one listened.
    wake(u64::MAX);
    while let Some(payload) = rx.recv().await {
        if let Ok(head) = payload.parse() {
            wake(head);
        }
    }
    drop(client);
    Ok(())
}
