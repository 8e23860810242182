//! Each benchmark's private world: a database (migrated, with the sample directory imported), a
//! broker namespace and an asset folder, all with unique names on loopback. Every one is
//! registered as it is made and removed by [`cleanup_all`], which the harness calls after each
//! benchmark and again on the way out (error, panic or ctrl-c).

use anyhow::Context;
use bdjobs::adapters::broker::{self, Topology};
use bdjobs::adapters::db;
use bdjobs::adapters::dns_stub::{StubDns, StubZone};
use bdjobs::app;
use bdjobs::config::{Config, LogFormat, Switch};
use bdjobs::domain::ids::TenantId;
use deadpool_postgres::Pool;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TENANT: &str = "bench";

struct Registered {
    config: Config,
    shutdown: CancellationToken,
    assets: tempfile::TempDir,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

pub struct Env {
    pub config: Config,
    pub pool: Pool,
    /// Cancelled by the cleanup: everything the benchmark spawns listens to it.
    pub shutdown: CancellationToken,
}

impl Env {
    pub async fn new(tag: &str) -> anyhow::Result<Self> {
        let assets = tempfile::Builder::new()
            .prefix("bdjobs-bench-")
            .tempdir()
            .context("asset folder")?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut config = Config::from_env();
        config.database_url = format!("{PG}/bdjobs_bench_{tag}_{}", &id[..12]);
        config.amqp_url = AMQP.to_owned();
        config.namespace = format!("bdjobs_bench_{tag}_{}", &id[..12]);
        config.listen = "127.0.0.1:0".parse().expect("address");
        // BDJOBS_BENCH_ASSETS=memory:// measures the system without the filesystem backend's
        // fsync of every asset (roles in one process only: each builds its own memory store).
        config.assets = Some(
            std::env::var("BDJOBS_BENCH_ASSETS")
                .unwrap_or_else(|_| format!("fs://{}", assets.path().display())),
        );
        config.dns_nameserver = None;
        config.smtp_probe = Switch::Off;
        config.log_format = LogFormat::Text;
        // The clients are the load, one key for all of them: the per-key rate limit would
        // measure itself.
        if std::env::var_os("BDJOBS_RATE_LIMIT_PER_SEC").is_none() {
            config.api.rate_limit_per_sec = 1e9;
            config.api.rate_limit_burst = u32::MAX;
        }
        let shutdown = CancellationToken::new();
        // Registered before anything is created, so that a failure half-way is cleaned up too.
        REGISTRY.lock().expect("registry").push(Registered {
            config: config.clone(),
            shutdown: shutdown.clone(),
            assets,
        });
        let pool = app::migrate(&config).await?;
        let report = bdjobs::cli::import::import_file(
            &pool,
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/directory.jsonl"
            )),
            false,
        )
        .await?;
        anyhow::ensure!(report.skipped.is_empty(), "directory import skipped rows");
        Ok(Self {
            config,
            pool,
            shutdown,
        })
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.config.namespace)
    }

    pub fn tenant(&self) -> TenantId {
        TenantId::parse(TENANT).expect("tenant")
    }

    pub async fn key(&self) -> anyhow::Result<String> {
        Ok(db::keys::create_key(&self.pool, &self.tenant())
            .await?
            .secret)
    }

    /// Declares the namespace's exchanges and queues.
    pub async fn declare(&self) -> anyhow::Result<()> {
        let conn = broker::connect(&self.config.amqp_url, "bench-declare").await?;
        self.topology().declare(&conn).await?;
        conn.close(200, "declared".into()).await?;
        Ok(())
    }
}

pub fn demo_zone() -> StubZone {
    StubZone::from_text(include_str!("../../examples/demo.zone")).expect("demo zone parses")
}

/// The demo's stub nameserver on 127.0.0.1.
pub async fn stub_dns() -> anyhow::Result<StubDns> {
    Ok(StubDns::start("127.0.0.1:0".parse().expect("address"), demo_zone()).await?)
}

/// Stops whatever runs against the registered resources and removes them.
pub async fn cleanup_all() {
    let all: Vec<Registered> = std::mem::take(&mut *REGISTRY.lock().expect("registry"));
    if all.is_empty() {
        return;
    }
    for r in &all {
        r.shutdown.cancel();
    }
    // Let the roles notice and close their connections; the drop below forces the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in all {
        if let Ok(conn) = broker::connect(&r.config.amqp_url, "bench-cleanup").await {
            if let Ok(ch) = conn.create_channel().await {
                if let Err(e) = Topology::new(&r.config.namespace).delete(&ch).await {
                    eprintln!("could not delete namespace {}: {e}", r.config.namespace);
                }
            }
            let _ = conn.close(200, "cleanup".into()).await;
        }
        if let Err(e) = db::drop_database(&r.config.database_url).await {
            eprintln!("could not drop {}: {e}", r.config.database_url);
        }
        drop(r.assets);
    }
}
