//! Wires the roles to their configuration: builds pools, publishers, storage and the pipeline's
//! sources, then runs one role or all of them until the shutdown token fires.

use crate::adapters::broker::{Publisher, Topology};
use crate::adapters::db;
use crate::adapters::dns::HickoryMailResolver;
use crate::adapters::smtp::TcpSmtpProber;
use crate::api::{self, AppState};
use crate::config::{Config, Switch, PLACEHOLDER_HELO, PLACEHOLDER_MAIL_FROM};
use crate::projector::{self, ProjectorConfig};
use crate::webhooks::{self, Dispatcher, DispatcherConfig};
use crate::worker::pipeline::Sources;
use crate::worker::sources::{Patient, PgCancelSignal, PgChunkLog, PgDirectory};
use crate::worker::verify::VerifySettings;
use crate::worker::{self, WorkerConfig};
use anyhow::Context;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A name for this process's broker connections, so `rabbitmqctl list_connections` tells them apart.
fn process_name(role: &str) -> String {
    format!("bdjobs-{role}-{}", std::process::id())
}

/// Creates the database if missing and applies migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<Pool> {
    if db::ensure_database(&config.database_url)
        .await
        .context("could not reach Postgres to check the database exists")?
    {
        tracing::info!("created the database");
    }
    let pool = connect_db(config)?;
    let applied = db::migrate(&pool).await.context("migrations failed")?;
    for name in applied {
        tracing::info!(migration = name, "applied");
    }
    Ok(pool)
}

pub fn connect_db(config: &Config) -> anyhow::Result<Pool> {
    db::pool(&config.database_url, config.db_pool_size).context("invalid DATABASE_URL")
}

pub fn max_message_bytes(config: &Config) -> usize {
    usize::try_from(config.max_message_bytes).unwrap_or(usize::MAX)
}

pub fn topology(config: &Config) -> Topology {
    Topology::new(&config.namespace)
}

pub fn sources(config: &Config, pool: &Pool) -> anyhow::Result<Sources> {
    let dns = HickoryMailResolver::new(
        config.dns_nameserver,
        Duration::from_millis(config.dns_timeout_ms),
    )
    .context("could not set up the DNS resolver")?;
    let directory = Patient {
        inner: PgDirectory(pool.clone()),
        patience: Duration::from_secs(60),
    };
    let chunk_log = PgChunkLog {
        pool: pool.clone(),
        storage: config.storage()?,
    };
    let mut sources = Sources::new(Arc::new(directory), Arc::new(dns))
        .with_cancel(Arc::new(PgCancelSignal(pool.clone())))
        .with_chunks(
            usize::try_from(config.chunk_size).unwrap_or(usize::MAX),
            Arc::new(chunk_log),
        )
        .with_job_timeout(Duration::from_secs(config.job_timeout_secs.max(1)))
        .with_progress_every(Duration::from_millis(config.progress_every_ms));
    if let Some(warning) = identity_warning(config) {
        tracing::warn!(
            helo = %config.smtp_helo,
            mail_from = %config.smtp_mail_from,
            "{warning}"
        );
    }
    if config.smtp_probe == Switch::On {
        sources = sources.with_probing(
            Arc::new(TcpSmtpProber::new(
                config.smtp_port,
                &config.smtp_helo,
                &config.smtp_mail_from,
                Duration::from_secs(30),
            )),
            verify_settings(config),
        );
    }
    Ok(sources)
}

/// What a worker says at start-up when it would probe with the placeholder identity, which real
/// mail servers refuse; nothing when probing is off or the identity is set.
pub fn identity_warning(config: &Config) -> Option<&'static str> {
    let placeholder =
        config.smtp_helo == PLACEHOLDER_HELO || config.smtp_mail_from == PLACEHOLDER_MAIL_FROM;
    (config.smtp_probe == Switch::On && placeholder).then_some(
        "SMTP probing is on with the placeholder identity: real mail servers refuse it. \
         Set BDJOBS_SMTP_HELO to a host name whose forward and reverse DNS match this \
         machine's public IP, and BDJOBS_SMTP_MAIL_FROM to an address at a domain you own",
    )
}

/// The verification engine's settings from the configuration.
pub fn verify_settings(config: &Config) -> VerifySettings {
    VerifySettings {
        concurrency: config.smtp_concurrency.max(1),
        per_host: config.smtp_per_host.max(1),
        rcpt_per_session: config.smtp_rcpt_per_session.max(1),
        greylist_wait: Duration::from_secs(config.smtp_greylist_secs),
        cache_ttl: Duration::from_secs(config.smtp_cache_secs),
        allow_private: config.smtp_allow_private == Switch::On,
        ..VerifySettings::default()
    }
}

pub async fn run_api(
    config: &Config,
    pool: Pool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let storage = config.storage()?;
    let publisher = Arc::new(
        Publisher::new(&config.amqp_url, &process_name("api"), topology(config))
            .with_max_message_bytes(max_message_bytes(config)),
    );
    let state = AppState::new(pool, storage, publisher, &config.api)
        .with_webhook_allow_private(config.webhook_allow_private == Switch::On);
    api::serve(listener, state, shutdown).await
}

pub async fn run_worker(
    config: &Config,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sources = sources(config, &pool)?;
    let wc = WorkerConfig {
        amqp_url: config.amqp_url.clone(),
        topology: topology(config),
        concurrency: config.worker_concurrency.max(1),
        name: process_name("worker"),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        storage: config.storage()?,
        max_message_bytes: max_message_bytes(config),
    };
    worker::run(wc, sources, pool, shutdown).await
}

pub async fn run_projector(
    config: &Config,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let storage = config.storage()?;
    let pc = ProjectorConfig {
        amqp_url: config.amqp_url.clone(),
        topology: topology(config),
        prefetch: config.projector_prefetch.max(1),
        name: process_name("projector"),
        stuck_after: Duration::from_secs(config.stuck_after_secs.max(1)),
    };
    projector::run(pc, pool, storage, shutdown).await
}

/// The webhook dispatcher's settings from the configuration.
pub fn dispatcher_config(config: &Config) -> DispatcherConfig {
    DispatcherConfig {
        timeout: Duration::from_millis(config.webhook_timeout_ms.max(1)),
        allow_private: config.webhook_allow_private == Switch::On,
        schedule: crate::domain::webhooks::Schedule {
            base: Duration::from_millis(config.webhook_retry_base_ms),
            max_attempts: config.webhook_max_attempts.max(1),
            ..Default::default()
        },
        batch: 32,
        idle: Duration::from_millis(500),
    }
}

pub async fn run_webhooks(
    config: &Config,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dispatcher = Dispatcher::new(pool, dispatcher_config(config))?;
    webhooks::run(dispatcher, shutdown).await
}

/// Every role in one process. Returns when all have stopped; if one fails, the others are
/// asked to stop too.
pub async fn run_all(
    config: &Config,
    pool: Pool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop_all = |r: anyhow::Result<()>, token: &CancellationToken| {
        if r.is_err() {
            token.cancel();
        }
        r
    };
    let (a, w, p, h) = tokio::join!(
        async {
            stop_all(
                run_api(config, pool.clone(), listener, shutdown.clone()).await,
                &shutdown,
            )
        },
        async {
            stop_all(
                run_worker(config, pool.clone(), shutdown.clone()).await,
                &shutdown,
            )
        },
        async {
            stop_all(
                run_projector(config, pool.clone(), shutdown.clone()).await,
                &shutdown,
            )
        },
        async {
            stop_all(
                run_webhooks(config, pool.clone(), shutdown.clone()).await,
                &shutdown,
            )
        },
    );
    a.context("api")?;
    w.context("worker")?;
    p.context("projector")?;
    h.context("webhooks")?;
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        config: Config,
    }

    fn config(flags: &[&str]) -> Config {
        TestCli::try_parse_from(std::iter::once("bdjobs").chain(flags.iter().copied()))
            .expect("flags parse")
            .config
    }

    const OWN: [&str; 4] = [
        "--smtp-helo",
        "probe.example.com",
        "--smtp-mail-from",
        "verify@example.com",
    ];

    #[test]
    fn probing_with_the_placeholder_identity_is_warned_about() {
        let helo_only = config(&[
            "--smtp-probe",
            "on",
            "--smtp-helo",
            "probe.example.com",
            "--smtp-mail-from",
            PLACEHOLDER_MAIL_FROM,
        ]);
        let warning = identity_warning(&helo_only).expect("a warning");
        assert!(warning.contains("BDJOBS_SMTP_MAIL_FROM"), "{warning}");
        let both = config(&[
            "--smtp-probe",
            "on",
            "--smtp-helo",
            PLACEHOLDER_HELO,
            "--smtp-mail-from",
            PLACEHOLDER_MAIL_FROM,
        ]);
        assert!(identity_warning(&both).is_some());
    }

    #[test]
    fn an_own_identity_or_probing_off_needs_no_warning() {
        let own: Vec<&str> = ["--smtp-probe", "on"].into_iter().chain(OWN).collect();
        assert_eq!(identity_warning(&config(&own)), None);
        let off = config(&[
            "--smtp-probe",
            "off",
            "--smtp-helo",
            PLACEHOLDER_HELO,
            "--smtp-mail-from",
            PLACEHOLDER_MAIL_FROM,
        ]);
        assert_eq!(identity_warning(&off), None);
    }

    #[test]
    fn the_per_session_recipient_cap_reaches_the_engine() {
        let c = config(&["--smtp-rcpt-per-session", "7"]);
        assert_eq!(verify_settings(&c).rcpt_per_session, 7);
        let zero = config(&["--smtp-rcpt-per-session", "0"]);
        assert_eq!(verify_settings(&zero).rcpt_per_session, 1);
    }
}
