//! The body of each command of the `bdjobs` binary, one file a command; `main.rs` only parses
//! and dispatches. Every body returns the process's exit code (or an error, which `main`
//! prints and exits 1 with); none exits the process itself.
//!
//! - [`roles`]: `all`, `api`, `worker`, `projector`, `webhooks` (the dispatcher), `migrate`;
//! - [`webhooks`]: `webhooks set | list | rotate-secret | redeliver`, or the dispatcher;
//! - [`demo`]: the whole system on the sample job;
//! - [`keys`], [`dlq`], [`import`] (`directory import`), [`watch`], [`config`];
//! - [`submit`]: a CSV or JSON Lines file posted as a job through the API, then `watch`ed;
//! - [`replay`] and [`event_log`] (`events export|import|compact`): they print; the work is done
//!   by `read_model::replay` and `read_model::event_log`, which own the writes.

pub mod config;
pub mod demo;
pub mod dlq;
pub mod event_log;
pub mod import;
pub mod keys;
pub mod replay;
pub mod roles;
pub mod submit;
pub mod watch;
pub mod webhooks;

use crate::adapters::db::events::Scope;
use crate::config::LogFormat;
use crate::domain::ids::{JobId, TenantId};
use std::io::IsTerminal;

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), as text or JSON lines.
pub fn init_logging(format: LogFormat, default_filter: &str) {
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

/// Progress bars only for a person watching stderr.
fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// The `--tenant` / `--job` options of `replay` and `events export`.
fn scope(tenant: Option<String>, job: Option<uuid::Uuid>) -> anyhow::Result<Scope> {
    Ok(Scope {
        tenant: tenant.as_deref().map(TenantId::parse).transpose()?,
        job: job.map(JobId),
    })
}
