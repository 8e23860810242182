//! Postgres: the connection pool, database creation, migrations, and the queries of the read
//! model, event log, outbox, API keys, directory and webhooks (one submodule each; `events` holds the
//! event store's maintenance: export, rebuild into the shadow table, compaction).

pub mod directory;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod webhooks;

use deadpool_postgres::Hook;
use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

pub type Client = deadpool_postgres::Object;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
}

impl crate::adapters::Retryable for DbError {
    /// Connection trouble, serialization failures, deadlocks and a host that no longer takes
    /// writes (a primary demoted in a failover: the pool drops it and finds the new one) pass;
    /// constraint and syntax errors do not.
    fn is_retryable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Query(e) => match e.code() {
                None => true,
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08")
                        || c == "40001"
                        || c == "40P01"
                        || c.starts_with("57P")
                        || c == "25006"
                }
            },
            DbError::Config(_) | DbError::Corrupt(_) => false,
        }
    }
}

/// How long a pooled connection may sit unused before it is checked to still take writes.
const WRITABLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// `url` parsed, with a connect timeout when it sets none: with several hosts, one that does
/// not answer must not hold up trying the next.
pub fn connection_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    Ok(config)
}

/// A pool for `url`, which may name one host or, in libpq's multi-host form, a primary and its
/// standbys (`postgres://h1:5432,h2:5432/db?target_session_attrs=read-write`). A connection
/// whose server closed it (a host that died) is dropped when next taken from the pool, and so,
/// after a second unused, is one to a host that no longer takes writes (a demoted primary);
/// new connections go to whichever host takes writes now.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config = connection_config(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .pre_recycle(Hook::async_fn(|client, metrics| {
            Box::pin(async move {
                // Checked only after a pause: a connection in steady use proves itself with
                // every statement, and the check costs a round trip.
                if metrics.last_used() < WRITABLE_CHECK_AFTER {
                    return Ok(());
                }
                let row = client
                    .query_one("SHOW transaction_read_only", &[])
                    .await
                    .map_err(HookError::Backend)?;
                match row.get::<_, &str>(0) {
                    "off" => Ok(()),
                    _ => Err(HookError::message("the host no longer takes writes")),
                }
            })
        }))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The configuration of a connection to the server's `postgres` database, with the same
/// hosts, credentials and options as `url` (so, with several hosts, to the one taking writes),
/// and the name of the database `url` names.
pub fn maintenance_config(url: &str) -> Result<(tokio_postgres::Config, String), DbError> {
    let mut config = connection_config(url)?;
    let name = config
        .get_dbname()
        .ok_or_else(|| DbError::Config("the URL names no database".into()))?
        .to_owned();
    config.dbname("postgres");
    Ok((config, name))
}

/// Connects to the server's `postgres` database with the same credentials as `url`.
async fn maintenance_client(url: &str) -> Result<(tokio_postgres::Client, String), DbError> {
    let (config, name) = maintenance_config(url)?;
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "maintenance connection closed");
        }
    });
    Ok((client, name))
}

/// Creates the database `url` names when it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let (client, name) = maintenance_client(url).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(e) if e.code().map(|c| c.code()) == Some("42P04") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Drops the database `url` names (tests use it to clean up after themselves).
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let (client, name) = maintenance_client(url).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .await?;
    Ok(())
}

/// The migrations, in order. Embedded so the binary carries its own schema.
pub const MIGRATIONS: [(&str, &str); 10] = [
    (
        "0001_init",
        include_str!("../../../migrations/0001_init.sql"),
    ),
    (
        "0002_directory",
        include_str!("../../../migrations/0002_directory.sql"),
    ),
    (
        "0003_cancellation",
        include_str!("../../../migrations/0003_cancellation.sql"),
    ),
    (
        "0004_outbox_correlation",
        include_str!("../../../migrations/0004_outbox_correlation.sql"),
    ),
    (
        "0005_replay",
        include_str!("../../../migrations/0005_replay.sql"),
    ),
    (
        "0006_idempotency",
        include_str!("../../../migrations/0006_idempotency.sql"),
    ),
    (
        "0007_projector_rejections",
        include_str!("../../../migrations/0007_projector_rejections.sql"),
    ),
    (
        "0008_webhooks",
        include_str!("../../../migrations/0008_webhooks.sql"),
    ),
    (
        "0009_webhook_stages",
        include_str!("../../../migrations/0009_webhook_stages.sql"),
    ),
    (
        "0010_asset_bundles",
        include_str!("../../../migrations/0010_asset_bundles.sql"),
    ),
];

/// Applies the migrations not yet applied. Safe to run from many processes at once: a
/// transaction-scoped advisory lock serialises them. Returns the names applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<&'static str>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // An arbitrary constant that names "bdjobs migrations" for pg_advisory_xact_lock.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7242011);
         CREATE TABLE IF NOT EXISTS schema_migrations (
             name text PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<String> = tx
        .query("SELECT name FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (name, sql) in MIGRATIONS {
        if done.iter().any(|d| d == name) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[&name])
            .await?;
        applied.push(name);
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, TargetSessionAttrs};

    const FAILOVER_URL: &str =
        "postgres://bd:pw@db1.internal:5432,db2.internal:5433/bdjobs?target_session_attrs=read-write";

    #[test]
    fn a_multi_host_url_keeps_every_host_and_asks_for_the_writable_one() {
        let config = connection_config(FAILOVER_URL).unwrap();
        assert_eq!(
            config.get_hosts(),
            [
                Host::Tcp("db1.internal".into()),
                Host::Tcp("db2.internal".into())
            ]
        );
        assert_eq!(config.get_ports(), [5432, 5433]);
        assert_eq!(
            config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
    }

    #[test]
    fn creating_the_database_goes_to_the_same_hosts_as_the_pool() {
        let (config, name) = maintenance_config(FAILOVER_URL).unwrap();
        assert_eq!(name, "bdjobs");
        assert_eq!(config.get_dbname(), Some("postgres"));
        assert_eq!(config.get_hosts().len(), 2);
        assert_eq!(config.get_ports(), [5432, 5433]);
        assert_eq!(config.get_user(), Some("bd"));
        assert_eq!(
            config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn a_connect_timeout_in_the_url_is_kept() {
        let config = connection_config("postgres://h/db?connect_timeout=2").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
    }
}
