//! A PostgreSQL database of the test's own: created on the machine's
//! server (`LEARNING_HUB_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) with a random name, and
//! dropped when the test ends. A plain `cargo test` without a server skips
//! the test with a line; `scripts/test` starts the server and under it (and
//! under CI) a missing server fails.

use std::time::Duration;

use super::outside_dependency;

/// The server tests create their databases on (an admin connection URL).
pub fn admin_url() -> String {
    std::env::var("LEARNING_HUB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs `sql` on the admin connection, from a thread of its own (callers
/// may be inside a runtime).
pub fn admin(sql: String) -> Result<(), String> {
    admin_on(&admin_url(), sql)
}

/// Runs `sql` on a connection to `url`, from a thread of its own.
pub fn admin_on(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
            config.connect_timeout(Duration::from_secs(5));
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await.map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_owned())
            })
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the admin thread panicked".into()))
}

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A new empty database, or `None` if PostgreSQL is not there (and
    /// the run may skip `test`).
    pub fn create(test: &str) -> Option<TestDb> {
        let name = format!("hub_test_{}", uuid::Uuid::new_v4().simple());
        let created = admin(format!("CREATE DATABASE {name}"));
        if !outside_dependency(test, "a PostgreSQL server", created) {
            return None;
        }
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(slash) if base[..slash].contains("://") => format!("{}/{name}", &base[..slash]),
            _ => format!("{base} dbname={name}"),
        };
        Some(TestDb { name, url })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
