//! End to end: every role in this process (`app::run_all`) with the demo's stub DNS; concurrent
//! clients post small `verify_existing_emails` jobs and poll each until the API shows it
//! `completed`. Baseline: the broker moving as many messages as those jobs used (counted from the
//! events table), with lapin alone.

use crate::client::{self, JobLoad};
use crate::env::{self, Env};
use crate::report::{ms, num, quantile, Report, Row};
use crate::{broker_raw, Scale};
use anyhow::Context;
use bdjobs::app;
use std::time::Duration;

pub const CLIENTS: usize = 32;
pub const POLL: Duration = Duration::from_millis(20);

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let jobs = scale.n(2000, 60);
    let env = Env::new("e2e").await?;
    let dns = env::stub_dns().await?;
    let mut config = env.config.clone();
    config.dns_nameserver = Some(dns.addr());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let roles = {
        let (config, pool, shutdown) = (config.clone(), env.pool.clone(), env.shutdown.clone());
        tokio::spawn(async move { app::run_all(&config, pool, listener, shutdown).await })
    };
    let key = env.key().await?;
    let http = client::http();

    // Warm up: connections, the publisher's channel, the consumers.
    client::run_jobs(
        &http,
        &base,
        &key,
        &JobLoad {
            jobs: CLIENTS,
            clients: CLIENTS,
            poll: POLL,
        },
    )
    .await
    .context("warm-up")?;
    // Unloaded: one client, one job at a time, polling often: the path's own latency.
    let mut alone = client::run_jobs(
        &http,
        &base,
        &key,
        &JobLoad {
            jobs: 20,
            clients: 1,
            poll: Duration::from_millis(2),
        },
    )
    .await?;
    eprintln!("   {jobs} jobs from {CLIENTS} clients...");
    let mut load = client::run_jobs(
        &http,
        &base,
        &key,
        &JobLoad {
            jobs,
            clients: CLIENTS,
            poll: POLL,
        },
    )
    .await?;
    env.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), roles)
        .await
        .context("roles did not stop within 30 s")???;

    // What the jobs cost the broker: job.created never travels (the API writes it), job.run
    // does; so the messages per job equal the logged events per job.
    let client = env.pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*)::float8 / count(DISTINCT job_id),
                    avg(octet_length(envelope::text)) FILTER (WHERE type <> 'job.created')::float8
             FROM events",
            &[],
        )
        .await?;
    let (per_job, body_len): (f64, f64) = (row.get(0), row.get(1));
    let per_job_n = per_job.round() as usize;

    let raw_env = Env::new("raw").await?;
    let raw = broker_raw::publish_and_consume(
        &raw_env,
        jobs,
        per_job_n,
        body_len.round() as usize,
        64,
        64,
    )
    .await?;

    let jobs_per_s = jobs as f64 / load.wall.as_secs_f64();
    let raw_jobs_per_s = jobs as f64 / raw.as_secs_f64();
    let raw_msgs_per_s = (jobs * per_job_n) as f64 / raw.as_secs_f64();
    report.add(
        Row::new(
            "e2e",
            format!(
                "jobs/s, {jobs} jobs × {:.1} contacts, {CLIENTS} clients, worker concurrency {}",
                1.5, config.worker_concurrency
            ),
            num(jobs_per_s),
        )
        .baseline(
            format!(
                "broker raw: {} jobs/s ({} msg/s, {per_job_n} msgs/job of {:.0} B)",
                num(raw_jobs_per_s),
                num(raw_msgs_per_s),
                body_len
            ),
            jobs_per_s / raw_jobs_per_s,
        )
        .target("≥ 1,000 jobs/s", jobs_per_s >= 1000.0),
    );
    let p50 = quantile(&mut load.latencies, 0.50);
    let p99 = quantile(&mut load.latencies, 0.99);
    report.add(Row::new(
        "e2e",
        format!(
            "latency POST → completed seen (polling every {} ms)",
            POLL.as_millis()
        ),
        format!("p50 {} / p99 {}", ms(p50), ms(p99)),
    ));
    report.add(Row::new(
        "e2e",
        "latency of one job alone (1 client, polling every 2 ms), 20 jobs",
        format!(
            "p50 {} / max {}",
            ms(quantile(&mut alone.latencies, 0.5)),
            ms(quantile(&mut alone.latencies, 1.0))
        ),
    ));
    Ok(())
}
