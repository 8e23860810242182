//! `bdjobs replay [--tenant T] [--job ID]`: rebuilds the read model from the event log and says
//! what changed. The rebuild itself is `read_model::replay` (see its docs for how it stays safe
//! while projectors run).

use crate::app;
use crate::config::Config;
use crate::read_model;
use anyhow::Context;
use std::process::ExitCode;

pub async fn run(
    config: &Config,
    tenant: Option<String>,
    job: Option<uuid::Uuid>,
) -> anyhow::Result<ExitCode> {
    let scope = super::scope(tenant, job)?;
    let pool = app::connect_db(config)?;
    // The configured store with its configured credentials (flag, variable or file): the
    // environment alone would leave requests to a private bucket unsigned.
    let store = config.storage()?;
    let report = read_model::replay::replay(&pool, &store, scope, super::show_progress())
        .await
        .context("replay failed; the read model is unchanged")?;
    let s = &report.swapped;
    println!(
        "replayed {} job(s) ({} caught up during the rebuild): {} view(s) changed, \
{} removed; {} asset(s) changed, {} removed",
        report.jobs,
        report.caught_up,
        s.views_changed,
        s.views_removed,
        s.assets_changed,
        s.assets_removed
    );
    Ok(ExitCode::SUCCESS)
}
