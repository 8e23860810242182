//! Load generators: many concurrent clients each posting a job and polling it to the end, and a
//! fixed-concurrency GET loop.

use anyhow::Context;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client")
}

/// A small `verify_existing_emails` job: one or two contacts at lumen.example.
pub fn job_body(i: usize) -> Value {
    let people = [
        ("Hanna", "Vogel", "hvogel@lumen.example"),
        ("Jonas", "Weber", "jweber@lumen.example"),
        ("Felix", "Braun", "fbraun@lumen.example"),
        ("Emma", "Koch", "ekoch@lumen.example"),
    ];
    let n = 1 + i % 2;
    let contacts: Vec<Value> = (0..n)
        .map(|k| {
            let (first, last, email) = people[(i + k) % people.len()];
            json!({"first_name": first, "last_name": last, "email": email,
                   "company_domain": "lumen.example"})
        })
        .collect();
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": contacts}})
}

pub struct JobLoad {
    pub jobs: usize,
    pub clients: usize,
    pub poll: Duration,
}

pub struct LoadResult {
    pub wall: Duration,
    /// POST sent → `completed` seen, one per job.
    pub latencies: Vec<Duration>,
}

/// `clients` tasks share `jobs` jobs: each posts one, polls `GET /bd/jobs/{id}` until it is
/// terminal, and takes the next. Any job that does not complete is an error.
pub async fn run_jobs(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    load: &JobLoad,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.clients {
        let (http, base, key, next) = (http.clone(), base.to_owned(), key.to_owned(), next.clone());
        let (jobs, poll) = (load.jobs, load.poll);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                latencies.push(one_job(&http, &base, &key, i, poll).await?);
            }
        });
    }
    let mut latencies = Vec::with_capacity(load.jobs);
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.context("client task")??);
    }
    Ok(LoadResult {
        wall: started.elapsed(),
        latencies,
    })
}

async fn one_job(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    i: usize,
    poll: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(key)
        .json(&job_body(i))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "POST job: {}", resp.status());
    let created: Value = resp.json().await?;
    let id = created["job_id"].as_str().context("job_id")?.to_owned();
    let url = format!("{base}/api/v1/bd/jobs/{id}");
    loop {
        tokio::time::sleep(poll).await;
        let resp = http.get(&url).bearer_auth(key).send().await?;
        anyhow::ensure!(resp.status() == 200, "GET job: {}", resp.status());
        let job: Value = resp.json().await?;
        match job["status"].as_str() {
            Some("completed") => return Ok(t0.elapsed()),
            Some("failed" | "cancelled") => anyhow::bail!("job {id} ended {}", job["status"]),
            _ => {}
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "job {id} not completed after 120 s: {job}"
        );
    }
}

pub struct GetLoad {
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub bytes: u64,
}

/// `requests` GETs of `url` from `concurrency` tasks; every response must be 200.
pub async fn hammer(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<GetLoad> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, key, next) = (
            http.clone(),
            url.to_owned(),
            key.map(str::to_owned),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut bytes = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t0 = Instant::now();
                let mut req = http.get(&url);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let resp = req.send().await?;
                anyhow::ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
                bytes += resp.bytes().await?.len() as u64;
                latencies.push(t0.elapsed());
            }
            Ok((latencies, bytes))
        });
    }
    let mut out = GetLoad {
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(requests),
        bytes: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (l, b) = r.context("client task")??;
        out.latencies.extend(l);
        out.bytes += b;
    }
    out.wall = started.elapsed();
    Ok(out)
}
