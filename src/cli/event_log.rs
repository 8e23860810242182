//! `bdjobs events export | import | compact`: the event log as JSON Lines, and its retention.
//! This file parses options and prints; `read_model::event_log` does the work.

use crate::app;
use crate::config::Config;
use crate::read_model::event_log;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Write events as JSON Lines to stdout, one envelope per line, in the order they were recorded.
    Export {
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this job's events (its UUID).
        #[arg(long)]
        job: Option<uuid::Uuid>,
    },
    /// Feed a recorded JSON Lines stream through the projector (importing twice changes nothing).
    #[command(
        long_about = "Feed a recorded stream (one event envelope per line, as `events export` writes) \
through the projector: each event is logged once by message id and folded into its job's view, and \
completed jobs get their assets. Importing the same file twice changes nothing; lines that are not \
readable events are reported with their line numbers and skipped."
    )]
    Import {
        /// The .jsonl file, or - for stdin.
        file: PathBuf,
    },
    /// Delete old progress events of finished jobs, keeping what replay needs.
    #[command(
        long_about = "Delete the job.progress events of finished (completed, failed or cancelled) jobs \
that occurred longer ago than --older-than, except the few that decide the job's view (its highest \
percentage, latest message and last update). Replay after compaction gives the same answers."
    )]
    Compact {
        /// Age beyond which progress events may go: e.g. 30s, 15m, 12h, 7d, 2w.
        #[arg(long, env = "BDJOBS_PROGRESS_RETENTION", default_value = "7d", value_parser = event_log::parse_age)]
        older_than: std::time::Duration,
    },
}

pub async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Export { tenant, job } => export(config, tenant, job).await,
        EventsCommand::Import { file } => import(config, &file).await,
        EventsCommand::Compact { older_than } => compact(config, older_than).await,
    }
}

async fn export(
    config: &Config,
    tenant: Option<String>,
    job: Option<uuid::Uuid>,
) -> anyhow::Result<ExitCode> {
    let scope = super::scope(tenant, job)?;
    let pool = app::connect_db(config)?;
    let store = config.storage()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let n = event_log::export(&pool, &store, &scope, &mut out, super::show_progress())
        .await
        .context("export failed")?;
    eprintln!("exported {n} event(s)");
    Ok(ExitCode::SUCCESS)
}

async fn import(config: &Config, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    // The configured store with its configured credentials (flag, variable or file): the
    // environment alone would leave requests to a private bucket unsigned.
    let store = config.storage()?;
    let show = super::show_progress();
    let stdin = file.as_os_str() == "-";
    let name = if stdin {
        "stdin".to_owned()
    } else {
        file.display().to_string()
    };
    let report = if stdin {
        event_log::import(&pool, &store, std::io::stdin().lock(), "stdin", show).await
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {name}"))?;
        event_log::import(&pool, &store, std::io::BufReader::new(f), &name, show).await
    }
    .with_context(|| format!("import of {name} failed"))?;
    for (line, reason) in &report.skipped {
        eprintln!("{name}:{line}: skipped: {reason}");
    }
    println!(
        "imported {} event(s): {} changed a view, {} already reflected, {} awaiting \
job.created, {} duplicate(s); skipped {} line(s)",
        report.changed + report.unchanged + report.orphans,
        report.changed,
        report.unchanged,
        report.orphans,
        report.duplicates,
        report.skipped.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn compact(config: &Config, older_than: std::time::Duration) -> anyhow::Result<ExitCode> {
    let pool = app::connect_db(config)?;
    let age = chrono::Duration::from_std(older_than).context("age out of range")?;
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(age)
        .context("--older-than reaches before the calendar starts")?;
    let report = event_log::compact(&pool, cutoff, super::show_progress())
        .await
        .context("compaction failed")?;
    println!(
        "deleted {} progress event(s) of {} finished job(s) older than {}",
        report.deleted,
        report.jobs,
        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(ExitCode::SUCCESS)
}
