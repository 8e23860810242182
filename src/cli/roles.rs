//! `bdjobs all | api | worker | projector | webhooks | migrate`: the roles, wired by `app` to the
//! configuration and stopped by SIGTERM or Ctrl-C.

use crate::app;
use crate::config::Config;
use anyhow::Context;
use std::process::ExitCode;

pub async fn all(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = app::migrate(config).await?;
    let listener = bind(config).await?;
    app::run_all(config, pool, listener, app::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn api(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    let listener = bind(config).await?;
    app::run_api(config, pool, listener, app::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    app::run_worker(config, pool, app::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn projector(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    app::run_projector(config, pool, app::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn webhooks(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    app::run_webhooks(config, pool, app::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    app::migrate(config).await?;
    tracing::info!("database is up to date");
    Ok(ExitCode::SUCCESS)
}

async fn bind(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
}
