//! The integration-test harness: each test gets its own Postgres database, its own broker
//! namespace and its own asset folder, and removes all three when it ends (even on panic), so
//! tests run in parallel and hundreds of CI runs leave nothing behind on the shared services.
#![allow(dead_code)]

pub mod audit;
pub mod nodes;

use bdjobs::adapters::broker::{self, Topology};
use bdjobs::adapters::db;
use bdjobs::adapters::dns_stub::{StubDns, StubZone};
use bdjobs::app;
use bdjobs::config::{Config, LogFormat, Switch};
use bdjobs::domain::ids::TenantId;
use deadpool_postgres::Pool;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,bdjobs=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn demo_zone() -> StubZone {
    StubZone::from_text(include_str!("../../examples/demo.zone")).expect("demo zone parses")
}

/// A configuration private to one test.
pub fn test_config(tag: &str, assets: &std::path::Path) -> Config {
    test_config_on(tag, assets, PG, AMQP)
}

/// A configuration private to one test, on the Postgres server at `pg` (a URL without a
/// database) and the broker at `amqp`.
pub fn test_config_on(tag: &str, assets: &std::path::Path, pg: &str, amqp: &str) -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config::from_env();
    config.database_url = format!("{pg}/bdjobs_t_{tag}_{}", &id[..12]);
    config.amqp_url = amqp.to_owned();
    config.namespace = format!("bdjobs_t_{tag}_{}", &id[..12]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.assets = Some(format!("fs://{}", assets.display()));
    config.dns_nameserver = None;
    config.dns_timeout_ms = 1500;
    config.smtp_probe = Switch::Off;
    config.db_pool_size = 8;
    config.log_format = LogFormat::Text;
    config
}

/// Database, namespace and assets of one test; dropped last.
pub struct Resources {
    pub config: Config,
    pub pool: Pool,
    pub assets: tempfile::TempDir,
}

impl Resources {
    pub async fn new(tag: &str) -> Self {
        Self::on(tag, PG, AMQP).await
    }

    /// Resources on the Postgres server at `pg` (a URL without a database) and the broker at
    /// `amqp`, such as nodes the test started itself (`nodes`).
    pub async fn on(tag: &str, pg: &str, amqp: &str) -> Self {
        init_logs();
        let assets = tempfile::tempdir().unwrap();
        let config = test_config_on(tag, assets.path(), pg, amqp);
        let pool = app::migrate(&config).await.expect("test database");
        let r = Self {
            config,
            pool,
            assets,
        };
        let report = bdjobs::cli::import::import_file(
            &r.pool,
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/directory.jsonl"
            )),
            false,
        )
        .await
        .unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        r
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.config.namespace)
    }

    pub async fn key(&self, tenant: &str) -> String {
        db::keys::create_key(&self.pool, &TenantId::parse(tenant).unwrap())
            .await
            .unwrap()
            .secret
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop runs inside the test's runtime, which cannot block on async work: clean up from
        // a thread with a runtime of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(conn) = broker::connect(&config.amqp_url, "test-cleanup").await {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = Topology::new(&config.namespace).delete(&ch).await;
                    }
                    let _ = conn.close(200, "cleanup".into()).await;
                }
                let _ = db::drop_database(&config.database_url).await;
            });
        })
        .join()
        .unwrap();
    }
}

/// Every role running in this process against a test's resources, with the demo's DNS.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    roles: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dns: StubDns,
    // Last: dropped after the roles have been stopped.
    pub res: Resources,
}

impl TestApp {
    pub async fn start(tag: &str) -> Self {
        let res = Resources::new(tag).await;
        Self::start_with(res, demo_zone()).await
    }

    pub async fn start_with(mut res: Resources, zone: StubZone) -> Self {
        let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        res.config.dns_nameserver = Some(dns.addr());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let roles = {
            let (config, pool, shutdown) = (res.config.clone(), res.pool.clone(), shutdown.clone());
            tokio::spawn(async move { app::run_all(&config, pool, listener, shutdown).await })
        };
        Self {
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown,
            roles: Some(roles),
            dns,
            res,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_job(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/bd/jobs"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        let resp = self.get(key, path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    /// Polls the job until it is terminal; returns every body seen, in order.
    pub async fn wait(&self, key: &str, job_id: &str) -> Vec<Value> {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let job = self
                .get_json(key, &format!("/api/v1/bd/jobs/{job_id}"))
                .await;
            let done = matches!(
                job["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            seen.push(job);
            if done {
                return seen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "job {job_id} did not finish: {:?}",
                seen.last()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the roles and checks that they stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(roles) = self.roles.take() {
            tokio::time::timeout(Duration::from_secs(20), roles)
                .await
                .expect("roles stop within 20 s")
                .unwrap()
                .expect("roles stop without error");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn demo_job() -> Value {
    serde_json::from_str(include_str!("../../examples/demo-job.json")).unwrap()
}

/// An API alone (no worker, no projector): jobs it accepts stay pending.
pub async fn api_only(res: &Resources) -> (String, CancellationToken) {
    let state = bdjobs::api::AppState::new(
        res.pool.clone(),
        bdjobs::adapters::storage::operator(&res.config.assets_location()).unwrap(),
        std::sync::Arc::new(bdjobs::adapters::broker::Publisher::new(
            &res.config.amqp_url,
            "test-api",
            res.topology(),
        )),
        &res.config.api,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(bdjobs::api::serve(listener, state, shutdown.clone()));
    (base, shutdown)
}

/// POSTs a job to the API at `base` and returns its 202 body.
pub async fn create_job(base: &str, key: &str, body: &Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "POST /api/v1/bd/jobs");
    resp.json().await.unwrap()
}

/// GETs `path` from the API at `base` and returns its 200 body.
pub async fn get_json(base: &str, key: &str, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

/// The test's configuration with the demo's DNS served from this process (keep the server
/// alive as long as the roles run).
pub async fn with_demo_dns(res: &Resources) -> (StubDns, Config) {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), demo_zone())
        .await
        .unwrap();
    let mut config = res.config.clone();
    config.dns_nameserver = Some(dns.addr());
    (dns, config)
}
