//! Configuration: every setting is an environment variable mirrored by a CLI flag, with a
//! default that works on a developer machine with Postgres and RabbitMQ on loopback.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Postgres connection URL. The database is created if missing by `migrate`, `all` and `demo`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/bdjobs",
        global = true
    )]
    pub database_url: String,

    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue, so deployments and tests can share one broker.
    #[arg(
        long,
        env = "BDJOBS_NAMESPACE",
        default_value = "bdjobs",
        global = true
    )]
    pub namespace: String,

    /// Address the API listens on.
    #[arg(
        long,
        env = "BDJOBS_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Asset storage: fs:///abs/path, memory://, or s3://BUCKET?endpoint=URL&region=REGION
    /// [default: fs://<cwd>/var/assets]
    #[arg(long, env = "BDJOBS_ASSETS", global = true)]
    pub assets: Option<String>,

    /// Send every DNS lookup to this nameserver (ip:port) instead of the system's resolvers.
    #[arg(long, env = "BDJOBS_DNS_NAMESERVER", global = true)]
    pub dns_nameserver: Option<SocketAddr>,

    /// DNS lookup timeout in milliseconds.
    #[arg(
        long,
        env = "BDJOBS_DNS_TIMEOUT_MS",
        default_value_t = 2000,
        global = true
    )]
    pub dns_timeout_ms: u64,

    /// Probe mail servers with SMTP RCPT (never sends mail) during email_verify.
    #[arg(
        long,
        env = "BDJOBS_SMTP_PROBE",
        value_enum,
        default_value = "off",
        global = true
    )]
    pub smtp_probe: Switch,

    /// TCP port of the SMTP probe (25 in production).
    #[arg(long, env = "BDJOBS_SMTP_PORT", default_value_t = 25, global = true)]
    pub smtp_port: u16,

    /// Jobs one worker process runs at once.
    #[arg(
        long,
        env = "BDJOBS_WORKER_CONCURRENCY",
        default_value_t = 4,
        global = true
    )]
    pub worker_concurrency: u16,

    /// Events one projector holds unacknowledged at once.
    #[arg(
        long,
        env = "BDJOBS_PROJECTOR_PREFETCH",
        default_value_t = 32,
        global = true
    )]
    pub projector_prefetch: u16,

    /// Largest number of Postgres connections per process.
    #[arg(long, env = "BDJOBS_DB_POOL_SIZE", default_value_t = 16, global = true)]
    pub db_pool_size: usize,

    /// A job still running after this many seconds fails. Keep it below RabbitMQ's
    /// consumer_timeout (30 min by default), or the broker takes the job away mid-run.
    #[arg(
        long,
        env = "BDJOBS_JOB_TIMEOUT_SECS",
        default_value_t = 1200,
        global = true
    )]
    pub job_timeout_secs: u64,

    /// A pending or running job whose progress has not changed for this many seconds is failed
    /// by the projector's reaper.
    #[arg(
        long,
        env = "BDJOBS_STUCK_AFTER_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub stuck_after_secs: u64,

    /// On SIGTERM, how long in-flight jobs may take to finish before the process exits and the
    /// broker redelivers them.
    #[arg(
        long,
        env = "BDJOBS_SHUTDOWN_GRACE_SECS",
        default_value_t = 30,
        global = true
    )]
    pub shutdown_grace_secs: u64,

    /// Log format.
    #[arg(
        long,
        env = "BDJOBS_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// The configuration the binary would run with given no flags: defaults, overridden by the
    /// environment. Tests start from it and set what they need.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::parse_from(["bdjobs"]).config
    }

    pub fn assets_location(&self) -> String {
        self.assets
            .clone()
            .unwrap_or_else(crate::adapters::storage::default_location)
    }
}
