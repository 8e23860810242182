//! `bdjobs webhooks [set | list | rotate-secret | redeliver]`: without a subcommand, the
//! dispatcher role (see `crate::webhooks`); with one, a tenant's endpoint and secret, and the
//! re-sending of deliveries that were given up. A secret is printed once, when made.

use super::roles;
use crate::adapters::db;
use crate::app;
use crate::config::{Config, Switch};
use crate::domain::ids::{JobId, TenantId};
use crate::domain::webhooks::{check_url, format_secret, SECRET_BYTES};
use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Set a tenant's endpoint: where its jobs' outcomes are posted (a job's own webhook_url
    /// overrides it). A new endpoint gets a secret, printed once as the last line of stdout.
    Set {
        /// Tenant (account) name.
        #[arg(long)]
        tenant: String,
        /// https:// URL (http:// and internal addresses only with BDJOBS_WEBHOOK_ALLOW_PRIVATE).
        url: String,
    },
    /// List endpoints (one tenant's with --tenant): URL, deliveries pending and given up. Never
    /// the secret.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Give a tenant's endpoint a new secret, printed once as the last line of stdout; every
    /// delivery sent from then on is signed with it.
    RotateSecret {
        #[arg(long)]
        tenant: String,
    },
    /// Send again the deliveries that were given up (retries exhausted, or a 4xx): all, one
    /// tenant's or one job's. They go out with their original webhook-id and body.
    Redeliver {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        job: Option<uuid::Uuid>,
    },
}

pub async fn run(config: &Config, command: Option<WebhooksCommand>) -> anyhow::Result<ExitCode> {
    match command {
        None => roles::webhooks(config).await,
        Some(WebhooksCommand::Set { tenant, url }) => set(config, &tenant, &url).await,
        Some(WebhooksCommand::List { tenant }) => list(config, tenant.as_deref()).await,
        Some(WebhooksCommand::RotateSecret { tenant }) => rotate(config, &tenant).await,
        Some(WebhooksCommand::Redeliver { tenant, job }) => {
            redeliver(config, tenant.as_deref(), job).await
        }
    }
}

fn new_secret() -> String {
    format_secret(&rand::random::<[u8; SECRET_BYTES]>())
}

async fn set(config: &Config, tenant: &str, url: &str) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant)?;
    check_url(url, config.webhook_allow_private == Switch::On).map_err(anyhow::Error::msg)?;
    let pool = app::connect_db(config)?;
    let made = db::webhooks::set_endpoint(&pool, &tenant, url, &new_secret())
        .await
        .context("could not store the endpoint (has `bdjobs migrate` run?)")?;
    match made {
        Some(secret) => {
            eprintln!(
                "set the webhook endpoint of tenant {tenant}; its signing secret is shown only once:"
            );
            println!("{secret}");
        }
        None => eprintln!(
            "updated the webhook endpoint of tenant {tenant}; its secret is unchanged \
             (`bdjobs webhooks rotate-secret` makes a new one)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(config: &Config, tenant: Option<&str>) -> anyhow::Result<ExitCode> {
    let tenant = tenant.map(TenantId::parse).transpose()?;
    let pool = app::connect_db(config)?;
    let endpoints = db::webhooks::list_endpoints(&pool, tenant.as_ref()).await?;
    println!("tenant\turl\tpending\tfailed\tcreated\tupdated");
    for e in endpoints {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.tenant,
            e.url,
            e.pending,
            e.failed,
            e.created_at.to_rfc3339(),
            e.updated_at.to_rfc3339()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate(config: &Config, tenant: &str) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant)?;
    let pool = app::connect_db(config)?;
    let secret = new_secret();
    if !db::webhooks::rotate_secret(&pool, &tenant, &secret).await? {
        eprintln!("tenant {tenant} has no webhook endpoint (`bdjobs webhooks set` makes one)");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("new signing secret of tenant {tenant}; it is shown only once:");
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

async fn redeliver(
    config: &Config,
    tenant: Option<&str>,
    job: Option<uuid::Uuid>,
) -> anyhow::Result<ExitCode> {
    let tenant = tenant.map(TenantId::parse).transpose()?;
    let pool = app::connect_db(config)?;
    let n = db::webhooks::redeliver(&pool, tenant.as_ref(), job.map(JobId)).await?;
    println!("{n} deliveries queued again");
    Ok(ExitCode::SUCCESS)
}
