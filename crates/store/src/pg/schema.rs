//! The database schema, as numbered migrations applied at start.
//!
//! A hub applies the migrations the database lacks, in one transaction
//! under a transaction-scoped advisory lock (replicas starting together
//! wait for each other; nothing is left half-migrated), and refuses to
//! start on a database whose schema is newer than it knows.
//!
//! | table | holds |
//! |---|---|
//! | `hub_log_head` | one row: the last position handed out; an append takes its positions from it in its own transaction, so appends commit in position order |
//! | `hub_log` | the command log, one row per appended batch: its first and last positions, its entry count, its batch id (unique: a batch appended again after an ambiguous commit is found, not duplicated) and its entries as one frame |
//! | `hub_checkpoint` | one row: the newest checkpoint's position and generation |
//! | `hub_records` | the checkpoint's tables: (table prefix, key) → value |
//! | `hub_rows` | the outcome (log 0) and audit (log 1) row logs, by sequence |
//! | `hub_meta` | the checkpoint's meta values (counters) |
//! | `hub_lease` | leases: holder, epoch, expiry on the database's clock |

use tokio_postgres::Client;

use super::{Stage, pg_error};
use crate::error::{Error, Result};

/// The schema version this hub writes and the newest it reads.
pub const VERSION: i64 = 1;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; VERSION as usize] = [r#"
CREATE TABLE hub_log_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    pos bigint NOT NULL
);
INSERT INTO hub_log_head VALUES (1, 0);
CREATE TABLE hub_log (
    first_pos bigint PRIMARY KEY,
    last_pos bigint NOT NULL,
    count integer NOT NULL,
    batch bytea NOT NULL UNIQUE,
    entries bytea NOT NULL
);
CREATE INDEX hub_log_last_pos ON hub_log (last_pos);
CREATE TABLE hub_checkpoint (
    id smallint PRIMARY KEY CHECK (id = 1),
    position bigint,
    generation bigint NOT NULL
);
INSERT INTO hub_checkpoint VALUES (1, NULL, 0);
CREATE TABLE hub_records (
    tbl text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
CREATE TABLE hub_rows (
    log smallint NOT NULL,
    seq bigint NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (log, seq)
);
CREATE TABLE hub_meta (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE hub_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires timestamptz NOT NULL
);
"#];

/// Any constant: the advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x6c68_7562_0001;

/// Brings the schema up to [`VERSION`]; returns the version found.
pub async fn migrate(client: &mut Client) -> Result<i64> {
    let failed = |e| pg_error(Stage::Migrate, e);
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hub_schema (version bigint NOT NULL)")
        .await
        .map_err(failed)?;
    let found: Option<i64> = tx
        .query_one("SELECT max(version) FROM hub_schema", &[])
        .await
        .map_err(failed)?
        .get(0);
    let found = found.unwrap_or(0);
    if found > VERSION {
        return Err(newer_schema(found));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(failed)?;
        let version = i as i64 + 1;
        tx.execute("INSERT INTO hub_schema VALUES ($1)", &[&version])
            .await
            .map_err(failed)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(failed)?;
    Ok(found)
}

/// A database written by a newer hub: this one stops rather than misread
/// it.
pub fn newer_schema(found: i64) -> Error {
    Error::FailedPrecondition(format!(
        "the PostgreSQL schema is version {found}, newer than this hub knows ({VERSION}): \
         upgrade the hub before it uses this database"
    ))
}
