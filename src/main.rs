//! The `bdjobs` binary: one subcommand per role or task. All wiring lives in the library.

use anyhow::Context;
use bdjobs::adapters::db;
use bdjobs::adapters::db::events::Scope;
use bdjobs::adapters::storage;
use bdjobs::app;
use bdjobs::config::{self, Config, ConfigError, ConfigFile, LogFormat};
use bdjobs::domain::ids::{JobId, TenantId};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bdjobs",
    version,
    about = "Business-development jobs: workers on RabbitMQ, a read model in Postgres, an HTTP API.",
    long_about = "Business-development jobs: clients POST a job (companies or contacts plus a preset), \
workers run the BD pipeline from RabbitMQ, a projector folds their events into Postgres and stores \
the verified_contacts asset, and the API serves status, results and downloads.\n\n\
Every option is also read from the environment variable shown beside it, and from the \
configuration file (bdjobs.toml; see bdjobs.example.toml). Precedence: flag > environment > \
file > default. `bdjobs config` shows what is in effect and where each value came from."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    file: ConfigFile,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process on the sample job in examples/ and print its result.
    Demo {
        /// Folder holding directory.jsonl, demo-job.json and demo.zone.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
    },
    /// Apply migrations, then run the API, a worker and a projector in one process.
    All,
    /// Serve the HTTP API (any number of replicas may run).
    Api,
    /// Run jobs from the broker (any number may run).
    Worker,
    /// Fold events into the read model and store assets (any number may run).
    Projector,
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and re-drive the dead-letter queue (NS.dead).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Follow a job's progress through the API's event stream, with a progress bar; exit 0 when
    /// it completes, 1 when it fails (its error printed), 2 when it is cancelled.
    Watch {
        /// The job's id (from POST /api/v1/bd/jobs).
        job_id: String,
        /// Base URL of the API.
        #[arg(long, env = "BDJOBS_API_URL", default_value = "http://127.0.0.1:8080")]
        api: String,
        /// API key (dc_...). Prefer the environment variable: a flag shows in `ps`.
        #[arg(long, env = "BDJOBS_API_KEY", hide_env_values = true)]
        key: String,
    },
    /// Manage the company and people directory the pipeline reads.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Print the effective configuration, each setting with its source (flag, env, file or
    /// default); passwords and secrets are masked.
    Config,
    /// Rebuild the read model (job views, asset index and asset files) from the event log.
    #[command(
        long_about = "Rebuild the read model from the event log: every job's view, its asset index \
and its asset files, so that afterwards every API answer is what folding the log gives. Safe while \
projectors run: views are built into a shadow table, then events that arrived meanwhile are folded \
in and the result is swapped in under a short lock. Without options, replays every job."
    )]
    Replay {
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this job (its UUID).
        #[arg(long)]
        job: Option<uuid::Uuid>,
    },
    /// Export, import or compact the event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
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
        #[arg(long, env = "BDJOBS_PROGRESS_RETENTION", default_value = "7d", value_parser = parse_age)]
        older_than: std::time::Duration,
    },
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    bdjobs::read_model::event_log::parse_age(s)
}

fn scope(tenant: Option<String>, job: Option<uuid::Uuid>) -> anyhow::Result<Scope> {
    Ok(Scope {
        tenant: tenant.as_deref().map(TenantId::parse).transpose()?,
        job: job.map(JobId),
    })
}

#[derive(Subcommand)]
enum KeysCommand {
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

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead messages (they stay in the queue).
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Republish dead messages to the queue they came from, oldest first.
    Redrive {
        /// Re-drive at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Import companies and people from a CSV or JSON Lines file (see the README for columns).
    Import {
        /// The file: .csv, .jsonl or .ndjson.
        file: PathBuf,
    },
}

fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal, not in files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let loaded = match config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(loaded) => loaded,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo talks to a person: its own lines, and the roles' warnings only (RUST_LOG=info
    // shows everything). The roles log their work.
    let default_filter = match loaded.cli.command {
        Command::Demo { .. } => "warn",
        _ => "info,lapin=warn,hickory_resolver=warn,hickory_proto=warn",
    };
    init_logging(loaded.cli.config.log_format, default_filter);
    if let Some(file) = &loaded.file {
        tracing::debug!(file = %file.display(), "read the config file");
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the Tokio runtime");
    match runtime.block_on(run(loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The same shape as anyhow's report from main, also in JSON mode's stderr.
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(loaded: config::Loaded<Cli>) -> anyhow::Result<()> {
    let config = loaded.cli.config;
    match loaded.cli.command {
        Command::Config => {
            print!(
                "{}",
                config::render(&config, loaded.file.as_deref(), &loaded.settings)
            );
            Ok(())
        }
        Command::Demo { examples } => bdjobs::demo::run(config, &examples).await,
        Command::All => {
            let pool = app::migrate(&config).await?;
            let listener = bind(&config).await?;
            app::run_all(&config, pool, listener, app::shutdown_on_signals()).await
        }
        Command::Api => {
            let pool = app::connect_db(&config)?;
            let listener = bind(&config).await?;
            app::run_api(&config, pool, listener, app::shutdown_on_signals()).await
        }
        Command::Worker => {
            let pool = app::connect_db(&config)?;
            app::run_worker(&config, pool, app::shutdown_on_signals()).await
        }
        Command::Projector => {
            let pool = app::connect_db(&config)?;
            app::run_projector(&config, pool, app::shutdown_on_signals()).await
        }
        Command::Migrate => {
            app::migrate(&config).await?;
            tracing::info!("database is up to date");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Create { tenant },
        } => {
            let tenant = TenantId::parse(&tenant)?;
            let pool = app::connect_db(&config)?;
            let key = db::keys::create_key(&pool, &tenant)
                .await
                .context("could not store the key (has `bdjobs migrate` run?)")?;
            eprintln!(
                "created key {} for tenant {tenant}; it is shown only once:",
                key.key_id
            );
            println!("{}", key.secret);
            Ok(())
        }
        Command::Dlq { command } => {
            let topology = app::topology(&config);
            match command {
                DlqCommand::List { limit } => {
                    let dead = bdjobs::dlq::list(&config.amqp_url, &topology, limit)
                        .await
                        .context("could not read the dead-letter queue")?;
                    println!(
                        "{:<38} {:<14} {:<38} {:<22} {:<16} BYTES",
                        "MESSAGE", "TYPE", "JOB", "FROM", "REASON"
                    );
                    for m in &dead {
                        println!(
                            "{:<38} {:<14} {:<38} {:<22} {:<16} {}",
                            m.message_id,
                            m.kind,
                            m.job_id.as_deref().unwrap_or("-"),
                            m.queue.as_deref().unwrap_or("-"),
                            m.reason.as_deref().unwrap_or("-"),
                            m.bytes
                        );
                    }
                    eprintln!("{} dead message(s) shown", dead.len());
                    Ok(())
                }
                DlqCommand::Redrive { limit } => {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.set_message("re-driving dead messages");
                    let done =
                        bdjobs::dlq::redrive(&config.amqp_url, &topology, limit, |_| bar.inc(1))
                            .await
                            .context("re-drive failed")?;
                    bar.finish_and_clear();
                    println!(
                        "republished {} message(s); left {} with no known origin",
                        done.republished, done.left
                    );
                    Ok(())
                }
            }
        }
        Command::Keys {
            command: KeysCommand::List { tenant },
        } => {
            let tenant = TenantId::parse(&tenant)?;
            let pool = app::connect_db(&config)?;
            let keys = db::keys::list_keys(&pool, &tenant)
                .await
                .context("could not read the keys (has `bdjobs migrate` run?)")?;
            if keys.is_empty() {
                eprintln!("tenant {tenant} has no keys");
                return Ok(());
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
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Revoke { key_id },
        } => {
            let pool = app::connect_db(&config)?;
            match db::keys::revoke_key(&pool, key_id)
                .await
                .context("could not revoke the key (has `bdjobs migrate` run?)")?
            {
                db::keys::Revoked::Now(k) => {
                    println!(
                        "revoked key {} ({}...) of tenant {}; API processes refuse it within their key cache time (BDJOBS_KEY_CACHE_SECS)",
                        k.key_id, k.prefix, k.tenant
                    );
                    Ok(())
                }
                db::keys::Revoked::Already(k) => {
                    println!(
                        "key {} ({}...) of tenant {} was already revoked",
                        k.key_id, k.prefix, k.tenant
                    );
                    Ok(())
                }
                db::keys::Revoked::NoSuchKey => anyhow::bail!("no key has id {key_id}"),
            }
        }
        Command::Watch { job_id, api, key } => {
            let outcome =
                bdjobs::watch::watch(&api, &key, &job_id, std::io::stderr().is_terminal()).await?;
            match &outcome {
                bdjobs::watch::Outcome::Completed => println!("job {job_id} completed"),
                bdjobs::watch::Outcome::Failed(why) => eprintln!("job {job_id} failed: {why}"),
                bdjobs::watch::Outcome::Cancelled => eprintln!("job {job_id} was cancelled"),
            }
            std::process::exit(outcome.exit_code());
        }
        Command::Directory {
            command: DirectoryCommand::Import { file },
        } => {
            let pool = app::connect_db(&config)?;
            let report = bdjobs::import::import_file(&pool, &file, std::io::stderr().is_terminal())
                .await
                .with_context(|| format!("import of {} failed", file.display()))?;
            for (line, reason) in &report.skipped {
                eprintln!("{}:{line}: skipped: {reason}", file.display());
            }
            println!(
                "imported {} companies and {} people; skipped {} record(s)",
                report.companies,
                report.people,
                report.skipped.len()
            );
            Ok(())
        }
        Command::Replay { tenant, job } => {
            let scope = scope(tenant, job)?;
            let pool = app::connect_db(&config)?;
            let store = storage::operator(&config.assets_location())?;
            let report = bdjobs::read_model::replay::replay(
                &pool,
                &store,
                scope,
                std::io::stderr().is_terminal(),
            )
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
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Export { tenant, job },
        } => {
            let scope = scope(tenant, job)?;
            let pool = app::connect_db(&config)?;
            let store = config.storage()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = bdjobs::read_model::event_log::export(
                &pool,
                &store,
                &scope,
                &mut out,
                std::io::stderr().is_terminal(),
            )
            .await
            .context("export failed")?;
            eprintln!("exported {n} event(s)");
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Import { file },
        } => {
            let pool = app::connect_db(&config)?;
            let store = storage::operator(&config.assets_location())?;
            let show = std::io::stderr().is_terminal();
            let stdin = file.as_os_str() == "-";
            let name = if stdin {
                "stdin".to_owned()
            } else {
                file.display().to_string()
            };
            let report = if stdin {
                bdjobs::read_model::event_log::import(
                    &pool,
                    &store,
                    std::io::stdin().lock(),
                    "stdin",
                    show,
                )
                .await
            } else {
                let f =
                    std::fs::File::open(&file).with_context(|| format!("cannot open {name}"))?;
                bdjobs::read_model::event_log::import(
                    &pool,
                    &store,
                    std::io::BufReader::new(f),
                    &name,
                    show,
                )
                .await
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
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Compact { older_than },
        } => {
            let pool = app::connect_db(&config)?;
            let age = chrono::Duration::from_std(older_than).context("age out of range")?;
            let cutoff = chrono::Utc::now()
                .checked_sub_signed(age)
                .context("--older-than reaches before the calendar starts")?;
            let report = bdjobs::read_model::event_log::compact(
                &pool,
                cutoff,
                std::io::stderr().is_terminal(),
            )
            .await
            .context("compaction failed")?;
            println!(
                "deleted {} progress event(s) of {} finished job(s) older than {}",
                report.deleted,
                report.jobs,
                cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(())
        }
    }
}

async fn bind(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
}
