//! Configuration: every setting is a CLI flag, an environment variable and a key of the
//! configuration file (`bdjobs.toml`), with a default that works on a developer machine with
//! Postgres and RabbitMQ on loopback. Precedence: flag > environment > file > default.
//!
//! The file is applied by turning its values into clap's defaults ([`parse`]), so one parser
//! (clap's) validates every source and the precedence is clap's own. Its keys are the settings'
//! names in snake case (`database_url`, `worker_concurrency`, ...); an unknown key is an error.

use crate::adapters::storage::{self, S3Credentials, StorageError};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, ValueEnum};
use opendal::Operator;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// For a primary with standbys use libpq's multi-host form,
    /// `postgres://h1:5432,h2:5432/bdjobs?target_session_attrs=read-write`: connections go to
    /// whichever host accepts writes, and move when it fails over.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/bdjobs",
        global = true
    )]
    pub database_url: String,

    /// RabbitMQ connection URL, or the comma-separated URLs of a cluster's nodes (a list in the
    /// config file): a process connects to the first that answers, in an order shuffled per
    /// process, and to the next one when its node is lost.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = amqp_urls,
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

    /// Name the probe gives in EHLO. Set it to a host name of yours whose forward and reverse
    /// DNS match the prober's public IP: real mail servers refuse the placeholder.
    #[arg(
        long,
        env = "BDJOBS_SMTP_HELO",
        default_value = PLACEHOLDER_HELO,
        global = true
    )]
    pub smtp_helo: String,

    /// Envelope sender of the probe (MAIL FROM), at a domain you own; no mail is ever sent from
    /// it. Real mail servers refuse the placeholder.
    #[arg(
        long,
        env = "BDJOBS_SMTP_MAIL_FROM",
        default_value = PLACEHOLDER_MAIL_FROM,
        global = true
    )]
    pub smtp_mail_from: String,

    /// SMTP sessions one worker holds open at once, across its jobs.
    #[arg(
        long,
        env = "BDJOBS_SMTP_CONCURRENCY",
        default_value_t = 50,
        global = true
    )]
    pub smtp_concurrency: usize,

    /// SMTP sessions one worker holds open at once with one mail-server IP; lowered by itself
    /// for a server that answers 421 or refuses connections.
    #[arg(long, env = "BDJOBS_SMTP_PER_HOST", default_value_t = 5, global = true)]
    pub smtp_per_host: usize,

    /// Recipients asked in one SMTP session at most; a server that answers `452 too many
    /// recipients` sooner gets its own lower cap, learnt for the run.
    #[arg(
        long,
        env = "BDJOBS_SMTP_RCPT_PER_SESSION",
        default_value_t = 50,
        global = true
    )]
    pub smtp_rcpt_per_session: usize,

    /// Seconds before a greylisted recipient (4xx on RCPT) is asked again; retried 3 times
    /// within the job's time, then `unknown`.
    #[arg(
        long,
        env = "BDJOBS_SMTP_GREYLIST_SECS",
        default_value_t = 300,
        global = true
    )]
    pub smtp_greylist_secs: u64,

    /// Seconds a worker remembers definite SMTP verdicts (accepted, rejected, catch-all
    /// domain) across jobs, at most 100,000 of them; 0 turns the cache off.
    #[arg(
        long,
        env = "BDJOBS_SMTP_CACHE_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub smtp_cache_secs: u64,

    /// Probe mail servers whose addresses are loopback, private (RFC 1918), CGNAT, link-local,
    /// unique-local, multicast or unspecified. Off in production: an MX pointing there would
    /// make the prober knock on internal networks. The demo and the tests turn it on.
    #[arg(
        long,
        env = "BDJOBS_SMTP_ALLOW_PRIVATE",
        value_enum,
        default_value = "off",
        global = true
    )]
    pub smtp_allow_private: Switch,

    /// Post webhooks to internal addresses (loopback, RFC 1918, CGNAT, link-local, unique-local,
    /// multicast, unspecified) and accept `http://` webhook URLs. Off in production: a job's
    /// webhook_url would otherwise let a tenant make the dispatcher call your own network. The
    /// demo and the tests turn it on.
    #[arg(
        long,
        env = "BDJOBS_WEBHOOK_ALLOW_PRIVATE",
        value_enum,
        default_value = "off",
        global = true
    )]
    pub webhook_allow_private: Switch,

    /// Milliseconds one webhook attempt may take (connecting, sending, reading the answer)
    /// before it counts as a timeout and is retried.
    #[arg(
        long,
        env = "BDJOBS_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub webhook_timeout_ms: u64,

    /// Milliseconds before a failed webhook's first retry; each later wait is four times the
    /// one before (at most 8 hours), give or take 20 % at random.
    #[arg(
        long,
        env = "BDJOBS_WEBHOOK_RETRY_BASE_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub webhook_retry_base_ms: u64,

    /// Attempts of one webhook delivery, the first included, before it is given up (kept, and
    /// sent again by `bdjobs webhooks redeliver`). The default spans about a day.
    #[arg(
        long,
        env = "BDJOBS_WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub webhook_max_attempts: u32,

    /// Jobs one worker process runs at once. Jobs mostly wait on DNS, SMTP and the database, so
    /// this can well exceed the number of cores.
    #[arg(
        long,
        env = "BDJOBS_WORKER_CONCURRENCY",
        default_value_t = 16,
        global = true
    )]
    pub worker_concurrency: u16,

    /// Events one projector holds unacknowledged at once, shared by the batches it applies
    /// concurrently (4, each one transaction).
    #[arg(
        long,
        env = "BDJOBS_PROJECTOR_PREFETCH",
        default_value_t = 512,
        global = true
    )]
    pub projector_prefetch: u16,

    /// Largest number of Postgres connections per process.
    #[arg(long, env = "BDJOBS_DB_POOL_SIZE", default_value_t = 16, global = true)]
    pub db_pool_size: usize,

    /// A job that reports no progress for this many seconds fails (a no-progress timeout: a
    /// long job that keeps moving is never failed for being long).
    #[arg(
        long,
        env = "BDJOBS_JOB_TIMEOUT_SECS",
        default_value_t = 1200,
        global = true
    )]
    pub job_timeout_secs: u64,

    /// Jobs with more records (companies and contacts) than this run in chunks of at most this
    /// many, which any worker may take: a crash redoes one chunk, progress moves per chunk.
    #[arg(long, env = "BDJOBS_CHUNK_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub chunk_size: u64,

    /// The largest message a process publishes, in bytes: set it to the broker's
    /// max_message_size or lower. Payloads over a quarter of it (a big job's input, a
    /// completion's contacts) travel through the asset store and the message carries a
    /// reference.
    #[arg(
        long,
        env = "BDJOBS_MAX_MESSAGE_BYTES",
        default_value_t = 1_048_576,
        value_parser = clap::value_parser!(u64).range(4096..),
        global = true
    )]
    pub max_message_bytes: u64,

    /// Least milliseconds between two progress events of one run; reports in between are
    /// dropped (the next one sent carries the latest), and a run that ends sooner sends none.
    /// 0 sends every report.
    #[arg(
        long,
        env = "BDJOBS_PROGRESS_EVERY_MS",
        default_value_t = 250,
        global = true
    )]
    pub progress_every_ms: u64,

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

    /// Access key id for an s3:// asset store (with --aws-secret-access-key).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", global = true)]
    pub aws_access_key_id: Option<String>,

    /// Secret of that access key. Prefer the environment variable or the config file: a flag's
    /// value is visible to every user of the machine.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        global = true
    )]
    pub aws_secret_access_key: Option<String>,

    #[command(flatten)]
    pub api: ApiLimits,
}

/// Checks a broker setting (one node URL or a comma-separated list) and gives it back as a
/// comma-separated list without blanks.
fn amqp_urls(value: &str) -> Result<String, String> {
    crate::adapters::broker::parse_urls(value)
        .map(|urls| urls.join(","))
        .map_err(|e| e.to_string())
}

/// Settings that take a list; the config file may give them as a TOML array of strings.
const LIST_KEYS: [&str; 1] = ["amqp_url"];

// --- API limits (issue 6) -------------------------------------------------------------------
// Kept in a block of their own: the API reads nothing else from here but the listen address.

/// What one API process accepts before it pushes back (OWASP API4: unrestricted resource
/// consumption). Defaults suit one modest server; raise them behind a load balancer.
#[derive(Debug, Clone, Args)]
pub struct ApiLimits {
    /// Largest request body in bytes; a larger one gets 413.
    #[arg(long, env = "BDJOBS_MAX_BODY_BYTES", default_value_t = ApiLimits::DEFAULT.max_body_bytes, global = true)]
    pub max_body_bytes: usize,

    /// Seconds a request may take to be answered (body read included) before it gets 503.
    /// Event streams are not cut by it: it bounds the time to their first byte.
    #[arg(long, env = "BDJOBS_REQUEST_TIMEOUT_SECS", default_value_t = ApiLimits::DEFAULT.request_timeout_secs, global = true)]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to send a request's headers before the connection is closed
    /// (slow-loris defence).
    #[arg(long, env = "BDJOBS_HEADER_READ_TIMEOUT_SECS", default_value_t = ApiLimits::DEFAULT.header_read_timeout_secs, global = true)]
    pub header_read_timeout_secs: u64,

    /// Requests served at once; the next one gets 503 with Retry-After.
    #[arg(long, env = "BDJOBS_MAX_CONCURRENT_REQUESTS", default_value_t = ApiLimits::DEFAULT.max_concurrent_requests, global = true)]
    pub max_concurrent_requests: usize,

    /// Open event streams (GET .../events) at once; the next one gets 503 with Retry-After.
    #[arg(long, env = "BDJOBS_MAX_EVENT_STREAMS", default_value_t = ApiLimits::DEFAULT.max_event_streams, global = true)]
    pub max_event_streams: usize,

    /// Open event streams one API key may hold at once, so that one client cannot take them
    /// all; its next one gets 429 with Retry-After.
    #[arg(long, env = "BDJOBS_MAX_EVENT_STREAMS_PER_KEY", default_value_t = ApiLimits::DEFAULT.max_event_streams_per_key, global = true)]
    pub max_event_streams_per_key: usize,

    /// Seconds an event stream stays open at most; then it ends without a terminal event and
    /// the client reconnects (bounds what a forgotten client holds).
    #[arg(long, env = "BDJOBS_EVENT_STREAM_MAX_SECS", default_value_t = ApiLimits::DEFAULT.event_stream_max_secs, global = true)]
    pub event_stream_max_secs: u64,

    /// Sustained requests per second per API key (token bucket); over it, 429 with Retry-After.
    #[arg(long, env = "BDJOBS_RATE_LIMIT_PER_SEC", default_value_t = ApiLimits::DEFAULT.rate_limit_per_sec, global = true)]
    pub rate_limit_per_sec: f64,

    /// Requests one API key may send in a burst above the sustained rate.
    #[arg(long, env = "BDJOBS_RATE_LIMIT_BURST", default_value_t = ApiLimits::DEFAULT.rate_limit_burst, global = true)]
    pub rate_limit_burst: u32,

    /// How many API processes serve this deployment. Each keeps its own rate-limit buckets and
    /// allows 1/N of the rate and burst above, so that N replicas behind a balancer allow a key
    /// the configured totals (exactly so when the balancer spreads a key's requests evenly).
    #[arg(long, env = "BDJOBS_API_REPLICAS", default_value_t = ApiLimits::DEFAULT.api_replicas, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub api_replicas: u32,

    /// Seconds an API process trusts a key it has checked before asking the database again:
    /// also how long a revoked key may still work. 0 checks every request.
    #[arg(long, env = "BDJOBS_KEY_CACHE_SECS", default_value_t = ApiLimits::DEFAULT.key_cache_secs, global = true)]
    pub key_cache_secs: u64,

    /// Milliseconds an API process serves a finished job's status and result from memory before
    /// reading it again: also how long a change to a finished job (a late failure overtaking
    /// its completion) may take to show. Running jobs are always read fresh. 0 turns it off.
    #[arg(long, env = "BDJOBS_VIEW_CACHE_MS", default_value_t = ApiLimits::DEFAULT.view_cache_ms, global = true)]
    pub view_cache_ms: u64,
}

impl ApiLimits {
    pub const DEFAULT: ApiLimits = ApiLimits {
        max_body_bytes: 16 * 1024 * 1024,
        request_timeout_secs: 30,
        header_read_timeout_secs: 10,
        max_concurrent_requests: 512,
        max_event_streams: 1024,
        max_event_streams_per_key: 32,
        event_stream_max_secs: 3600,
        rate_limit_per_sec: 20.0,
        rate_limit_burst: 100,
        api_replicas: 1,
        key_cache_secs: 5,
        view_cache_ms: 1000,
    };
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// --- end of API limits ------------------------------------------------------------------------

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

    /// The S3 access key, when both halves are set; one without the other is an error, since
    /// it would silently send unsigned requests.
    pub fn s3_credentials(&self) -> Result<Option<S3Credentials>, StorageError> {
        match (&self.aws_access_key_id, &self.aws_secret_access_key) {
            (Some(id), Some(secret)) => Ok(Some(S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) | (None, Some(_)) => Err(StorageError::Config(
                self.assets_location(),
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".to_owned(),
            )),
        }
    }

    /// The asset store these settings name, with their credentials.
    pub fn storage(&self) -> Result<Operator, StorageError> {
        storage::operator_with(&self.assets_location(), self.s3_credentials()?.as_ref())
    }
}

/// The configuration file's location, parsed like every other option (it only chooses where the
/// rest come from, so it cannot itself be set in the file).
#[derive(Debug, Clone, Args)]
pub struct ConfigFile {
    /// Configuration file (TOML, keys as in bdjobs.example.toml). Its settings rank below flags
    /// and environment variables and above the defaults. [default: ./bdjobs.toml, if present]
    #[arg(
        long = "config",
        env = "BDJOBS_CONFIG",
        value_name = "PATH",
        global = true
    )]
    pub config: Option<PathBuf>,
}

/// The EHLO name used until an operator sets `BDJOBS_SMTP_HELO`.
pub const PLACEHOLDER_HELO: &str = "bdjobs.invalid";
/// The MAIL FROM used until an operator sets `BDJOBS_SMTP_MAIL_FROM`.
pub const PLACEHOLDER_MAIL_FROM: &str = "probe@bdjobs.invalid";

/// The file read when neither `--config` nor `BDJOBS_CONFIG` names one (and it exists).
pub const DEFAULT_FILE: &str = "bdjobs.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0} is not valid TOML: {1}")]
    Syntax(PathBuf, String),
    #[error("config file {path}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config file {path}: `{key}` {why}")]
    BadValue {
        path: PathBuf,
        key: String,
        why: String,
    },
    /// Bad flags or environment, `--help` or `--version`: clap prints and exits as usual.
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One setting as `bdjobs config` shows it: its value as given (None when unset) and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub env: Option<String>,
    pub value: Option<String>,
    pub source: Source,
}

/// A parsed command line with the provenance of every [`Config`] setting.
#[derive(Debug)]
pub struct Loaded<P> {
    pub cli: P,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Every setting of [`Config`], in declaration order.
    pub settings: Vec<Setting>,
}

/// The settings' clap arguments: the single list of keys the file may use.
fn config_args() -> Vec<clap::Arg> {
    Config::augment_args(clap::Command::new("bdjobs"))
        .get_arguments()
        .cloned()
        .collect()
}

/// The value of `--config` in `args` (as `--config PATH` or `--config=PATH`). Read before
/// parsing since it decides the other options' defaults.
fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Which file to read: `--config`, else `BDJOBS_CONFIG`, else `./bdjobs.toml` when it exists.
/// A file that is named explicitly must exist.
fn locate(args: &[OsString], env: Option<OsString>) -> Option<(PathBuf, bool)> {
    if let Some(path) = config_flag(args) {
        return Some((path, true));
    }
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let default = PathBuf::from(DEFAULT_FILE);
    default.exists().then_some((default, false))
}

/// Parses a config file's text into `key → value` strings, refusing unknown keys and values
/// the setting's own parser rejects.
pub fn parse_file(path: &Path, text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax(path.to_owned(), e.to_string()))?;
    let args = config_args();
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let Some(arg) = args.iter().find(|a| a.get_id().as_str() == key) else {
            let known = args
                .iter()
                .map(|a| a.get_id().as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known,
            });
        };
        let bad = |why: String| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            why,
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if LIST_KEYS.contains(&key.as_str()) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        other => {
                            return Err(bad(format!(
                                "must be a list of strings, not of {}",
                                other.type_str()
                            )))
                        }
                    }
                }
                parts.join(",")
            }
            other => {
                return Err(bad(format!(
                    "must be a string or a number, not {}",
                    other.type_str()
                )))
            }
        };
        // The setting's own parser, run on a one-option command: the same checks as for a
        // flag, reported with the file and key instead of a flag name.
        let long = arg.get_long().expect("every setting has a long flag");
        let probe = clap::Command::new("bdjobs")
            .no_binary_name(true)
            .arg(arg.clone().env(None::<&str>).default_value(None::<&str>))
            .try_get_matches_from([format!("--{long}={text}")]);
        if let Err(e) = probe {
            let why = e.to_string();
            let first = why.lines().next().unwrap_or("is invalid");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return Err(bad(format!("is invalid: {first}")));
        }
        out.insert(key, text);
    }
    Ok(out)
}

/// Parses `args` (the first is the program name) for the command `P`, which must flatten
/// [`Config`] and [`ConfigFile`]. The config file's values become clap defaults, so flags and
/// environment variables still win over them.
pub fn parse<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<Loaded<P>, ConfigError> {
    let located = locate(&args, std::env::var_os("BDJOBS_CONFIG"));
    let (file, values) = match located {
        Some((path, _)) => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| ConfigError::Read(path.clone(), e))?;
            let values = parse_file(&path, &text)?;
            (Some(path), values)
        }
        None => (None, BTreeMap::new()),
    };
    let mut command = P::command();
    for (key, value) in &values {
        // --help shows defaults: not when the file's value holds a password.
        let secret = mask(key, value) != *value;
        command = command.mut_arg(key.as_str(), |a| {
            a.default_value(value.clone()).hide_default_value(secret)
        });
    }
    let matches = command.try_get_matches_from(args)?;
    let cli = P::from_arg_matches(&matches)?;
    let settings = settings(&matches, file.as_deref(), &values);
    Ok(Loaded {
        cli,
        file,
        settings,
    })
}

fn settings(
    matches: &ArgMatches,
    file: Option<&Path>,
    from_file: &BTreeMap<String, String>,
) -> Vec<Setting> {
    config_args()
        .iter()
        .map(|arg| {
            let key = arg.get_id().as_str().to_owned();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let value = matches
                .get_raw(&key)
                .and_then(|mut v| v.next())
                .map(|v| v.to_string_lossy().into_owned());
            let source = match matches.value_source(&key) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env(env.clone().unwrap_or_default()),
                Some(ValueSource::DefaultValue) if from_file.contains_key(&key) => {
                    Source::File(file.map(Path::to_owned).unwrap_or_default())
                }
                _ => Source::Default,
            };
            Setting {
                key,
                env,
                value,
                source,
            }
        })
        .collect()
}

/// A value fit to print: passwords are masked wherever a connection string can hold one (a
/// URL's userinfo, a `?password=` query parameter, a libpq `key=value` string's `password=`),
/// and so is the whole value of a setting whose name says it is a secret. Handles lists of URLs
/// (`AMQP_URL`) and libpq's multi-host URLs (`postgres://u:pw@h1:5432,h2:5432/db`), which no
/// URL parser accepts, by masking each comma-separated part on its own.
pub fn mask(key: &str, value: &str) -> String {
    if is_secret_name(key) {
        return MASK.to_owned();
    }
    if !value.contains("://") {
        return mask_key_values(value);
    }
    value
        .split(',')
        .map(|part| mask_query(&mask_userinfo(part)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `scheme://user:password@rest` with the password masked; anything else unchanged.
fn mask_userinfo(part: &str) -> String {
    let Some(scheme_end) = part.find("://").map(|i| i + 3) else {
        return part.to_owned();
    };
    let rest = &part[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return part.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return part.to_owned();
    };
    format!(
        "{}{}{MASK}{}",
        &part[..scheme_end],
        &authority[..=colon],
        &rest[at..]
    )
}

/// The part with the values of secret query parameters (`?password=...`, `&sslpassword=...`)
/// masked; the rest is copied as written.
fn mask_query(part: &str) -> String {
    let Some(q) = part.find('?') else {
        return part.to_owned();
    };
    let (head, query) = part.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(f) => query.split_at(f),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_name(&decode_name(k)) => format!("{k}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}{fragment}", pairs.join("&"))
}

/// A query parameter's name, percent-decoded, so `pass%77ord` is still recognised.
fn decode_name(name: &str) -> String {
    url::form_urlencoded::parse(format!("{name}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

const MASK: &str = "********";

/// Names of settings, query parameters and libpq keys whose values are secrets
/// (`password`, `sslpassword`, `aws_secret_access_key`, ...).
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("secret") || name.contains("password")
}

/// A libpq connection string (`host=db user=app password='s3 cret' dbname=x`) with the values
/// of secret keys masked; everything else is copied as written. Values may be single-quoted,
/// with `\'` and `\\` escapes inside, and `=` may have spaces around it, as libpq allows.
fn mask_key_values(value: &str) -> String {
    let chars: Vec<(usize, char)> = value.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(value.len(), |&(at, _)| at);
    let mut out = String::with_capacity(value.len());
    let mut copied = 0; // bytes of `value` already in `out`
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < chars.len() && chars[i].1 != '=' && !chars[i].1.is_whitespace() {
            i += 1;
        }
        let key = &value[end_of(key_start)..end_of(i)];
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i].1 != '=' {
            // Not `key=value`: nothing more to recognise.
            break;
        }
        i += 1;
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < chars.len() && chars[i].1 == '\'' {
            i += 1;
            while i < chars.len() && chars[i].1 != '\'' {
                if chars[i].1 == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].1.is_whitespace() {
                i += 1;
            }
        }
        if is_secret_name(key) {
            out.push_str(&value[copied..end_of(value_start)]);
            out.push_str(MASK);
            copied = end_of(i);
        }
    }
    out.push_str(&value[copied..]);
    out
}

/// What `bdjobs config` prints: every setting as a line of TOML (so the output, secrets aside,
/// is a valid config file) with its source in a comment.
pub fn render(config: &Config, file: Option<&Path>, settings: &[Setting]) -> String {
    let mut out = String::from(
        "# Effective bdjobs configuration. Precedence: flag > env > file > default.\n",
    );
    match file {
        Some(path) => out.push_str(&format!("# Config file: {}\n", path.display())),
        None => out.push_str(&format!(
            "# Config file: none (no --config, no BDJOBS_CONFIG, no ./{DEFAULT_FILE})\n"
        )),
    }
    let lines: Vec<(String, String)> = settings
        .iter()
        .map(|s| {
            let value = match (&s.value, s.key.as_str()) {
                (Some(v), _) => Some(v.clone()),
                // Unset means "the default location", which is worth showing in full.
                (None, "assets") => Some(config.assets_location()),
                (None, _) => None,
            };
            let line = match value {
                Some(v) => {
                    let v = mask(&s.key, &v);
                    let shown = if v.parse::<i64>().is_ok() {
                        v
                    } else {
                        toml::Value::String(v).to_string()
                    };
                    format!("{} = {shown}", s.key)
                }
                None => format!("# {} is not set", s.key),
            };
            (line, format!("# {}", s.source))
        })
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (line, comment) in lines {
        out.push_str(&format!("{line:width$}  {comment}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        config: Config,
        #[command(flatten)]
        file: ConfigFile,
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("bdjobs")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bdjobs.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_file_value_replaces_the_default_and_a_flag_beats_the_file() {
        let (_dir, path) = write("namespace = \"from-file\"\nworker_concurrency = 9\n");
        let path = path.to_str().unwrap();
        let loaded: Loaded<TestCli> =
            parse(args(&["--config", path, "--worker-concurrency", "2"])).unwrap();
        assert_eq!(loaded.cli.config.namespace, "from-file");
        assert_eq!(loaded.cli.config.worker_concurrency, 2);
        let source = |key: &str| {
            loaded
                .settings
                .iter()
                .find(|s| s.key == key)
                .unwrap()
                .source
                .clone()
        };
        assert_eq!(source("namespace"), Source::File(PathBuf::from(path)));
        assert_eq!(source("worker_concurrency"), Source::Flag);
        assert_eq!(source("projector_prefetch"), Source::Default);
    }

    #[test]
    fn every_setting_is_a_flag_and_an_environment_variable() {
        for arg in config_args() {
            assert!(arg.get_long().is_some(), "{} has no flag", arg.get_id());
            assert!(arg.get_env().is_some(), "{} has no variable", arg.get_id());
        }
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let e = parse_file(
            Path::new("x.toml"),
            "namespace = \"a\"\nworker_concurency = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown key `worker_concurency`"), "{e}");
        assert!(
            e.contains("worker_concurrency"),
            "lists the known keys: {e}"
        );
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key_and_the_problem() {
        let e = parse_file(Path::new("x.toml"), "dns_timeout_ms = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dns_timeout_ms` is invalid"), "{e}");
        let e = parse_file(Path::new("x.toml"), "log_format = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`log_format`") && e.contains("xml"), "{e}");
        let e = parse_file(Path::new("x.toml"), "namespace = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a string or a number"), "{e}");
    }

    #[test]
    fn the_broker_may_be_a_list_of_nodes_in_the_file_or_a_comma_separated_variable() {
        let (_dir, path) = write(
            "amqp_url = [\"amqp://g:g@127.0.0.1:5681/%2f\", \"amqp://g:g@127.0.0.1:5682/%2f\"]\n",
        );
        let loaded: Loaded<TestCli> = parse(args(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(
            loaded.cli.config.amqp_url,
            "amqp://g:g@127.0.0.1:5681/%2f,amqp://g:g@127.0.0.1:5682/%2f"
        );
        let loaded: Loaded<TestCli> =
            parse(args(&["--amqp-url", "amqp://n1/%2f , amqp://n2/%2f"])).unwrap();
        assert_eq!(loaded.cli.config.amqp_url, "amqp://n1/%2f,amqp://n2/%2f");
    }

    #[test]
    fn a_bad_node_in_the_broker_list_is_an_error_naming_the_key() {
        let e = parse_file(
            Path::new("x.toml"),
            "amqp_url = [\"amqp://n1/%2f\", \"http://n2/\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`amqp_url` is invalid"), "{e}");
        let e = parse_file(Path::new("x.toml"), "amqp_url = [1, 2]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("list of strings"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_toml_is_a_syntax_error() {
        let e = parse_file(Path::new("x.toml"), "namespace = \n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn a_named_config_file_that_does_not_exist_is_an_error() {
        let e = parse::<TestCli>(args(&["--config=/nonexistent/bdjobs.toml"])).unwrap_err();
        assert!(matches!(e, ConfigError::Read(..)), "{e}");
    }

    #[test]
    fn the_config_flag_is_found_in_both_spellings_but_not_after_a_double_dash() {
        assert_eq!(
            config_flag(&args(&["api", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_flag(&args(&["--config=b.toml", "api"])),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(config_flag(&args(&["--", "--config", "c.toml"])), None);
    }

    #[test]
    fn passwords_in_urls_and_secret_settings_are_masked() {
        assert_eq!(
            mask("amqp_url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:********@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            mask("database_url", "postgres://postgres@127.0.0.1:5432/bdjobs"),
            "postgres://postgres@127.0.0.1:5432/bdjobs"
        );
        assert_eq!(mask("aws_secret_access_key", "abc"), "********");
        assert_eq!(
            mask(
                "amqp_url",
                "amqp://u:p1@n1:5672/%2f,amqp://u:p2@n2:5673/%2f"
            ),
            "amqp://u:********@n1:5672/%2f,amqp://u:********@n2:5673/%2f"
        );
        assert_eq!(
            mask(
                "database_url",
                "postgres://bd:pw@h1:5432,h2:5433/bdjobs?target_session_attrs=read-write"
            ),
            "postgres://bd:********@h1:5432,h2:5433/bdjobs?target_session_attrs=read-write"
        );
        assert_eq!(mask("namespace", "bdjobs"), "bdjobs");
    }

    #[test]
    fn passwords_in_query_parameters_are_masked() {
        assert_eq!(
            mask(
                "database_url",
                "postgres://app@db.internal:5432/bdjobs?sslmode=require&password=hunter2"
            ),
            "postgres://app@db.internal:5432/bdjobs?sslmode=require&password=********"
        );
        assert_eq!(
            mask(
                "database_url",
                "postgres:///bdjobs?host=/run/pg&PassWord=x%20y"
            ),
            "postgres:///bdjobs?host=/run/pg&PassWord=********"
        );
        // A multi-host URL is no URL to a parser; its query is masked all the same.
        assert_eq!(
            mask(
                "database_url",
                "postgres://h1:5432,h2:5433/bdjobs?pass%77ord=s3cret&target_session_attrs=read-write"
            ),
            "postgres://h1:5432,h2:5433/bdjobs?pass%77ord=********&target_session_attrs=read-write"
        );
    }

    #[test]
    fn passwords_in_libpq_key_value_strings_are_masked() {
        assert_eq!(
            mask(
                "database_url",
                "host=db.internal user=app password=hunter2 dbname=bdjobs"
            ),
            "host=db.internal user=app password=******** dbname=bdjobs"
        );
        assert_eq!(
            mask(
                "database_url",
                "host=db password = 'it\\'s a secret' sslpassword=k dbname=x"
            ),
            "host=db password = ******** sslpassword=******** dbname=x"
        );
        assert_eq!(
            mask("database_url", "host=db user=app dbname=bdjobs"),
            "host=db user=app dbname=bdjobs"
        );
        for odd in [
            "password=",
            "password='unterminated",
            "=x",
            "é=ü password=ß",
        ] {
            assert!(!mask("database_url", odd).contains('ß'), "{odd}");
        }
    }

    #[test]
    fn help_hides_a_file_default_holding_a_libpq_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bdjobs.toml");
        std::fs::write(
            &path,
            "database_url = \"host=db user=app password=hunter2 dbname=bdjobs\"\n",
        )
        .unwrap();
        let err = match parse::<TestCli>(args(&["--config", path.to_str().unwrap(), "--help"])) {
            Err(ConfigError::Cli(e)) => e,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("--help parses to an error that prints the help"),
        };
        let help = err.render().to_string();
        assert!(help.contains("--database-url"), "{help}");
        assert!(!help.contains("hunter2"), "{help}");
    }

    #[test]
    fn the_rendered_configuration_is_toml_with_every_setting() {
        let loaded: Loaded<TestCli> = parse(args(&["--namespace", "ns"])).unwrap();
        let text = render(&loaded.cli.config, None, &loaded.settings);
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["namespace"].as_str(), Some("ns"));
        assert_eq!(table["dns_timeout_ms"].as_integer(), Some(2000));
        for s in &loaded.settings {
            assert!(text.contains(&s.key), "{} missing from:\n{text}", s.key);
        }
    }
}
