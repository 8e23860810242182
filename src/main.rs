//! The `bdjobs` binary: one subcommand per role or task. All wiring lives in the library.

use anyhow::Context;
use bdjobs::adapters::db;
use bdjobs::app;
use bdjobs::config::{Config, LogFormat};
use bdjobs::domain::ids::TenantId;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bdjobs",
    version,
    about = "Business-development jobs: workers on RabbitMQ, a read model in Postgres, an HTTP API.",
    long_about = "Business-development jobs: clients POST a job (companies or contacts plus a preset), \
workers run the BD pipeline from RabbitMQ, a projector folds their events into Postgres and stores \
the verified_contacts asset, and the API serves status, results and downloads.\n\n\
Every option is also read from the environment variable shown beside it."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
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
    /// Revoke a key by id (from `keys list`): from its next request on it gets 401.
    Revoke {
        /// The key's id.
        key_id: uuid::Uuid,
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,lapin=warn,hickory_resolver=warn,hickory_proto=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    init_logging(config.log_format);
    match cli.command {
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
            eprintln!("database is up to date");
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
                        "revoked key {} ({}...) of tenant {}",
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
    }
}

async fn bind(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
}
