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

    /// Log format.
    #[arg(
        long,
        env = "BDJOBS_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub api: ApiLimits,
}

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
}

impl ApiLimits {
    pub const DEFAULT: ApiLimits = ApiLimits {
        max_body_bytes: 16 * 1024 * 1024,
        request_timeout_secs: 30,
        header_read_timeout_secs: 10,
        max_concurrent_requests: 512,
        max_event_streams: 1024,
        event_stream_max_secs: 3600,
        rate_limit_per_sec: 20.0,
        rate_limit_burst: 100,
    };
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// --- end of API limits ------------------------------------------------------------------------

impl Config {
    pub fn assets_location(&self) -> String {
        self.assets
            .clone()
            .unwrap_or_else(crate::adapters::storage::default_location)
    }
}
