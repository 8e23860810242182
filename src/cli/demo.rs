//! `bdjobs demo`: the whole system in one process on the sample job.
//!
//! It migrates the database, imports `examples/directory.jsonl`, starts a DNS nameserver of its
//! own on 127.0.0.1 (from `examples/demo.zone`, so not one query leaves loopback), runs every
//! role, creates an API key, submits `examples/demo-job.json` over HTTP, draws a progress bar
//! while it runs, then prints the result JSON and where the assets are stored. With `--serve`
//! it listens on `BDJOBS_LISTEN` (127.0.0.1:8080) and keeps running after the job, printing the
//! web console's URL and the key to sign in with, until Ctrl-C.

use crate::adapters::dns_stub::{StubDns, StubZone};
use crate::adapters::{db, progress};
use crate::app;
use crate::config::Config;
use crate::domain::ids::TenantId;
use anyhow::{bail, Context};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the demo waits for its job before giving up.
const DEADLINE: Duration = Duration::from_secs(120);

pub async fn run(mut config: Config, examples: &Path, serve: bool) -> anyhow::Result<ExitCode> {
    let read = |name: &str| {
        let path = examples.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (run the demo from the repository root, or pass --examples)",
                path.display()
            )
        })
    };
    let zone = StubZone::from_text(&read("demo.zone")?).context("examples/demo.zone")?;
    let job_body: serde_json::Value =
        serde_json::from_str(&read("demo-job.json")?).context("examples/demo-job.json")?;

    eprintln!("==> preparing the database");
    let pool = app::migrate(&config).await?;
    let report =
        super::import::import_file(&pool, &examples.join("directory.jsonl"), false).await?;
    eprintln!(
        "    directory: {} companies and {} people imported",
        report.companies, report.people
    );

    let dns = StubDns::start("127.0.0.1:0".parse()?, zone)
        .await
        .context("cannot start the demo's DNS server on 127.0.0.1")?;
    config.dns_nameserver = Some(dns.addr());
    // The demo's mail hosts, if it probes, are on loopback like everything else.
    config.smtp_allow_private = crate::config::Switch::On;
    config.webhook_allow_private = crate::config::Switch::On;
    eprintln!(
        "    DNS: every lookup goes to the demo's own nameserver at {}",
        dns.addr()
    );

    // Served for a person, the address is the configured one, so it can be bookmarked.
    let addr = if serve {
        config.listen
    } else {
        "127.0.0.1:0".parse()?
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (set BDJOBS_LISTEN or --listen)"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let roles = {
        let (config, pool, shutdown) = (config.clone(), pool.clone(), shutdown.clone());
        tokio::spawn(async move { app::run_all(&config, pool, listener, shutdown).await })
    };
    eprintln!("==> api, worker and projector running; API at {base}");

    let outcome = submit_and_wait(&pool, &base, &job_body).await;
    if let Ok((result, job_id, tenant, key)) = &outcome {
        println!("{}", serde_json::to_string_pretty(result)?);
        let location = config.assets_location();
        for asset in result["result_assets"].as_array().into_iter().flatten() {
            let id = asset["asset_id"].as_str().unwrap_or_default();
            let asset = crate::domain::ids::AssetId::parse(id)?;
            // Where the projector put it: a slice of one object (shared by a job's assets).
            if let Some(row) = db::jobs::get_asset(&pool, tenant, *job_id, &asset).await? {
                eprintln!(
                    "asset {id}: bytes {}..{} of {}/{}",
                    row.byte_offset,
                    row.byte_offset + row.size_bytes,
                    location.trim_end_matches('/'),
                    row.storage_key
                );
            }
        }
        if serve {
            eprintln!("==> the web console is at {base}/");
            eprintln!("    sign in with this key of the demo tenant (also for curl and `bdjobs watch`; kept until the database goes):");
            println!("{key}");
            eprintln!("    serving until Ctrl-C");
            app::shutdown_on_signals().cancelled().await;
        } else {
            eprintln!("==> `bdjobs demo --serve` keeps the system running and prints the web console's URL and a key");
        }
    }
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(15), roles).await {
        Ok(Ok(Err(e))) => eprintln!("a role stopped with an error: {e:#}"),
        Err(_) => eprintln!("the roles did not stop within 15 s"),
        _ => {}
    }
    let (result, ..) = outcome?;
    if result["status"] != "completed" {
        bail!("the demo job ended {}", result["status"]);
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit_and_wait(
    pool: &deadpool_postgres::Pool,
    base: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(
    serde_json::Value,
    crate::domain::ids::JobId,
    TenantId,
    String,
)> {
    let tenant = TenantId::parse("demo")?;
    let key = db::keys::create_key(pool, &tenant).await?;
    eprintln!("==> created an API key for tenant {tenant}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&key.secret)
        .json(body)
        .send()
        .await?
        .error_for_status()
        .context("POST /api/v1/bd/jobs")?
        .json()
        .await?;
    let job_id = created["job_id"]
        .as_str()
        .context("no job_id in the response")?
        .to_owned();
    eprintln!("==> submitted job {job_id}");
    let bar = progress::bar(true, 100, progress::PERCENT);
    let started = Instant::now();
    loop {
        let job = get_json(
            &http,
            &key.secret,
            &format!("{base}/api/v1/bd/jobs/{job_id}"),
        )
        .await?;
        bar.set_position(job["progress_percent"].as_u64().unwrap_or(0));
        bar.set_message(
            job["progress_message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if matches!(
            job["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            bar.finish();
            eprintln!(
                "==> job {} in {:.1} s",
                job["status"].as_str().unwrap_or_default(),
                started.elapsed().as_secs_f64()
            );
            if let Some(err) = job["error_message"].as_str() {
                eprintln!("    error: {err}");
            }
            break;
        }
        if started.elapsed() > DEADLINE {
            bar.abandon();
            bail!("the job did not finish within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = get_json(
        &http,
        &key.secret,
        &format!("{base}/api/v1/bd/jobs/{job_id}/result"),
    )
    .await?;
    let id = crate::domain::ids::JobId(job_id.parse()?);
    Ok((result, id, tenant, key.secret))
}

async fn get_json(
    http: &reqwest::Client,
    key: &str,
    url: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(url)
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await?)
}
