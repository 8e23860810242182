//! The `bdjobs` binary: parses the command line and the configuration, sets up logging and the
//! runtime, and dispatches to the command's body in `bdjobs::cli` (one file a command).

use bdjobs::cli::webhooks::WebhooksCommand;
use bdjobs::cli::{self, dlq::DlqCommand, event_log::EventsCommand, import::DirectoryCommand};
use bdjobs::cli::{keys::KeysCommand, submit::SubmitArgs, watch::WatchArgs};
use bdjobs::config::{self, Config, ConfigError, ConfigFile};
use clap::{Parser, Subcommand};
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
        /// After the job, keep everything running on BDJOBS_LISTEN (127.0.0.1:8080) and print the
        /// web console's URL and an API key to sign in with; stop with Ctrl-C.
        #[arg(long)]
        serve: bool,
    },
    /// Apply migrations, then run the API, a worker, a projector and the webhook dispatcher in
    /// one process.
    All,
    /// Serve the HTTP API (any number of replicas may run).
    Api,
    /// Run jobs from the broker (any number may run).
    Worker,
    /// Fold events into the read model and store assets (any number may run).
    Projector,
    /// Without a subcommand, send the webhooks of finished jobs (the dispatcher; any number may
    /// run). With one, manage tenants' endpoints and re-send given-up deliveries.
    #[command(
        long_about = "Without a subcommand: the webhook dispatcher. It posts each finished job's \
outcome (job.completed, job.failed, job.cancelled), and each stage it reaches when it was created \
with webhook_stages (job.stage), to the job's webhook_url or its tenant's endpoint, signed per \
the Standard Webhooks spec (webhook-id, webhook-timestamp, webhook-signature), \
at least once and in order per job, retrying timeouts, 5xx and 429 with exponential backoff for \
about a day (BDJOBS_WEBHOOK_*). Any number may run.\n\nWith a subcommand: set, list or re-key a \
tenant's endpoint, or send given-up deliveries again."
    )]
    Webhooks {
        #[command(subcommand)]
        command: Option<WebhooksCommand>,
    },
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
    Watch(WatchArgs),
    /// Submit a CSV or JSON Lines file of contacts or companies as a job; with --wait follow it
    /// with a progress bar, with --out also save its CSV deliverable.
    #[command(
        long_about = "Submit a CSV (header row) or JSON Lines file of contacts or companies as a job, \
through the API (POST /api/v1/bd/jobs, multipart). Columns as in `directory import`: contacts have \
first_name, last_name, full_name, title, email, company_name, company_domain, linkedin_url; \
companies have domain, name, employee_count, industry, country, linkedin_url. Other columns are \
ignored (the job warns). Problems are reported with their line numbers and nothing is submitted.\n\n\
Without --wait, prints the job's id and exits 0. With --wait (or --out), follows the job with a \
progress bar like `watch` and exits 0 when it completes, 1 when it fails (reason printed), 2 when \
it is cancelled; --out FILE saves the completed job's CSV deliverable there."
    )]
    Submit(SubmitArgs),
    /// Manage the company and people directory the pipeline reads.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Print the effective configuration, each setting with its source (flag, env, file or
    /// default); passwords and secrets are masked.
    Config,
    /// Print the HTTP API's OpenAPI 3.1 document (what GET /api/v1/openapi.json serves).
    Openapi,
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
    cli::init_logging(loaded.cli.config.log_format, default_filter);
    if let Some(file) = &loaded.file {
        tracing::debug!(file = %file.display(), "read the config file");
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the Tokio runtime");
    match runtime.block_on(dispatch(loaded)) {
        Ok(code) => code,
        Err(e) => {
            // The same shape as anyhow's report from main, also in JSON mode's stderr.
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(loaded: config::Loaded<Cli>) -> anyhow::Result<ExitCode> {
    let config: Config = loaded.cli.config;
    match loaded.cli.command {
        Command::Config => cli::config::run(&config, loaded.file.as_deref(), &loaded.settings),
        Command::Openapi => cli::openapi::run(),
        Command::Demo { examples, serve } => cli::demo::run(config, &examples, serve).await,
        Command::All => cli::roles::all(&config).await,
        Command::Api => cli::roles::api(&config).await,
        Command::Worker => cli::roles::worker(&config).await,
        Command::Projector => cli::roles::projector(&config).await,
        Command::Migrate => cli::roles::migrate(&config).await,
        Command::Webhooks { command } => cli::webhooks::run(&config, command).await,
        Command::Keys { command } => cli::keys::run(&config, command).await,
        Command::Dlq { command } => cli::dlq::run(&config, command).await,
        Command::Watch(args) => cli::watch::run(args).await,
        Command::Submit(args) => cli::submit::run(args).await,
        Command::Directory { command } => cli::import::run(&config, command).await,
        Command::Replay { tenant, job } => cli::replay::run(&config, tenant, job).await,
        Command::Events { command } => cli::event_log::run(&config, command).await,
    }
}
