//! Postgres: the connection pool, database creation, migrations, and the queries of the read
//! model, event log, outbox, API keys and directory (one submodule each; `events` holds the
//! event store's maintenance: export, rebuild into the shadow table, compaction).

pub mod directory;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod keys;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
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
    /// Connection trouble, serialization failures and deadlocks pass; constraint and syntax
    /// errors do not.
    fn is_retryable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Query(e) => match e.code() {
                None => true,
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || c == "40001" || c == "40P01" || c.starts_with("57P")
                }
            },
            DbError::Config(_) | DbError::Corrupt(_) => false,
        }
    }
}

pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config =
        tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects to the server's `postgres` database with the same credentials as `url`.
async fn maintenance_client(url: &str) -> Result<(tokio_postgres::Client, String), DbError> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
    let name = config
        .get_dbname()
        .ok_or_else(|| DbError::Config("the URL names no database".into()))?
        .to_owned();
    config.dbname("postgres");
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
pub const MIGRATIONS: [(&str, &str); 7] = [
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
