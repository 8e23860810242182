//! Peak RSS of each role under load: `bdjobs api`, `bdjobs worker` and `bdjobs projector` run as
//! separate processes (the binary cargo built beside this bench) against the bench's database,
//! namespace and stub DNS; the end-to-end clients load them; then each process's high-water mark
//! (`VmHWM` in /proc/PID/status) is read. Baseline: each role's RSS once started, before load.

use crate::client::{self, JobLoad};
use crate::e2e::{CLIENTS, POLL};
use crate::env::{self, Env};
use crate::report::{num, Report, Row};
use crate::Scale;
use anyhow::Context;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub const LIMIT_MB: f64 = 100.0;

/// A `Vm*` field of /proc/PID/status, in MB.
pub fn vm_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?;
    Ok(kb * 1024.0 / 1_000_000.0)
}

async fn stop(mut child: Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // SIGTERM: the roles' graceful shutdown; a kill after 30 s otherwise.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            status?;
        }
        Err(_) => child.kill().await?,
    }
    Ok(())
}

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let jobs = scale.n(2000, 60);
    let env = Env::new("rss").await?;
    let dns = env::stub_dns().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let c = &env.config;
    let vars = [
        ("DATABASE_URL", c.database_url.clone()),
        ("AMQP_URL", c.amqp_url.clone()),
        ("BDJOBS_NAMESPACE", c.namespace.clone()),
        ("BDJOBS_LISTEN", format!("127.0.0.1:{port}")),
        ("BDJOBS_ASSETS", c.assets_location()),
        ("BDJOBS_DNS_NAMESERVER", dns.addr().to_string()),
        ("BDJOBS_SMTP_PROBE", "off".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
        (
            "BDJOBS_RATE_LIMIT_PER_SEC",
            c.api.rate_limit_per_sec.to_string(),
        ),
        (
            "BDJOBS_RATE_LIMIT_BURST",
            c.api.rate_limit_burst.to_string(),
        ),
    ];
    let exe = env!("CARGO_BIN_EXE_bdjobs");
    let mut roles = Vec::new();
    for role in ["api", "worker", "projector"] {
        let child = Command::new(exe)
            .arg(role)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {exe} {role}"))?;
        roles.push((role, child));
    }
    let http = client::http();
    let started = Instant::now();
    while !matches!(
        http.get(format!("{base}/healthz")).send().await,
        Ok(r) if r.status() == 200
    ) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the api did not answer /healthz within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = env.key().await?;
    client::run_jobs(
        &http,
        &base,
        &key,
        &JobLoad {
            jobs: 4,
            clients: 4,
            poll: POLL,
        },
    )
    .await
    .context("first jobs")?;
    let idle: Vec<f64> = roles
        .iter()
        .map(|(_, c)| vm_mb(c.id().context("role exited")?, "VmRSS:"))
        .collect::<anyhow::Result<_>>()?;
    eprintln!("   {jobs} jobs from {CLIENTS} clients against separate processes...");
    let load = client::run_jobs(
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
    let peaks: Vec<f64> = roles
        .iter()
        .map(|(_, c)| vm_mb(c.id().context("role exited")?, "VmHWM:"))
        .collect::<anyhow::Result<_>>()?;
    for (_, child) in roles.drain(..) {
        stop(child).await?;
    }
    for ((role, peak), idle) in ["api", "worker", "projector"].iter().zip(&peaks).zip(&idle) {
        report.add(
            Row::new(
                "rss",
                format!("peak RSS of `bdjobs {role}` after {jobs} jobs, MB"),
                format!("{peak:.1}"),
            )
            .baseline(format!("after start-up: {idle:.1} MB"), peak / idle)
            .target(format!("≤ {LIMIT_MB:.0} MB"), *peak <= LIMIT_MB),
        );
    }
    report.add(Row::new(
        "rss",
        "jobs/s with the roles as 3 processes (same load)",
        num(jobs as f64 / load.wall.as_secs_f64()),
    ));
    Ok(())
}
