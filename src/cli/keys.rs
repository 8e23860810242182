//! `bdjobs keys create | list | revoke`: API keys. A key is printed once, when created; only
//! its SHA-256 is stored.

use crate::adapters::db;
use crate::app;
use crate::config::Config;
use crate::domain::ids::TenantId;
use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant and print it once, as the last line of stdout.
    Create {
        /// Tenant (account) name: lowercase letters, digits, '_' and '-'.
        #[arg(long)]
        tenant: String,
    },
    /// List a tenant's keys: id, prefix, created, last used, revoked. Never the secret (only
    /// its hash is stored).
    List {
        /// Tenant (account) name.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by id (from `keys list`): it gets 401 once each API process's key cache
    /// lets it go (BDJOBS_KEY_CACHE_SECS, 5 s by default).
    Revoke {
        /// The key's id.
        key_id: uuid::Uuid,
    },
}

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { tenant } => create(config, &tenant).await,
        KeysCommand::List { tenant } => list(config, &tenant).await,
        KeysCommand::Revoke { key_id } => revoke(config, key_id).await,
    }
}

async fn create(config: &Config, tenant: &str) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant)?;
    let pool = app::connect_db(config)?;
    let key = db::keys::create_key(&pool, &tenant)
        .await
        .context("could not store the key (has `bdjobs migrate` run?)")?;
    eprintln!(
        "created key {} for tenant {tenant}; it is shown only once:",
        key.key_id
    );
    println!("{}", key.secret);
    Ok(ExitCode::SUCCESS)
}

async fn list(config: &Config, tenant: &str) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant)?;
    let pool = app::connect_db(config)?;
    let keys = db::keys::list_keys(&pool, &tenant)
        .await
        .context("could not read the keys (has `bdjobs migrate` run?)")?;
    if keys.is_empty() {
        eprintln!("tenant {tenant} has no keys");
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "{:<36}  {:<12}  {:<20}  {:<20}  {:<20}",
        "KEY ID", "PREFIX", "CREATED", "LAST USED", "REVOKED"
    );
    for k in keys {
        println!(
            "{:<36}  {:<12}  {:<20}  {:<20}  {:<20}",
            k.key_id,
            format!("{}...", k.prefix),
            when(Some(k.created_at)),
            when(k.last_used_at),
            when(k.revoked_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(config: &Config, key_id: uuid::Uuid) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    match db::keys::revoke_key(&pool, key_id)
        .await
        .context("could not revoke the key (has `bdjobs migrate` run?)")?
    {
        db::keys::Revoked::Now(k) => println!(
            "revoked key {} ({}...) of tenant {}; API processes refuse it within their key cache time (BDJOBS_KEY_CACHE_SECS)",
            k.key_id, k.prefix, k.tenant
        ),
        db::keys::Revoked::Already(k) => println!(
            "key {} ({}...) of tenant {} was already revoked",
            k.key_id, k.prefix, k.tenant
        ),
        db::keys::Revoked::NoSuchKey => anyhow::bail!("no key has id {key_id}"),
    }
    Ok(ExitCode::SUCCESS)
}
