//! Big jobs: claim checks keep every message small, and jobs above `BDJOBS_CHUNK_SIZE` records
//! run in chunks that survive a worker crash, stop together on a cancel, and assemble into one
//! deliverable.

mod common;

use bdjobs::adapters::dns_stub::StubZone;
use bdjobs::app;
use common::{demo_zone, Resources, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The `job.chunk_completed` reports recorded for a job: how many for each chunk index.
async fn chunk_reports(res: &Resources, job_id: &str) -> BTreeMap<i64, usize> {
    let client = res.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT (envelope->'payload'->'chunk'->>'index')::bigint FROM events
             WHERE job_id = $1::text::uuid AND type = 'job.chunk_completed'",
            &[&job_id],
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(r.get::<_, i64>(0)).or_default() += 1;
    }
    out
}

async fn wait_terminal(app_base: &str, key: &str, job_id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let job = common::get_json(app_base, key, &format!("/api/v1/bd/jobs/{job_id}")).await;
        if matches!(
            job["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(started.elapsed() < limit, "job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts a job, waits for it to end and asserts it completed: its id and final view.
async fn run_to_completion(
    app: &TestApp,
    key: &str,
    body: &Value,
    limit: Duration,
) -> (String, Value) {
    let resp = app.post_job(key, body).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let job_id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait_terminal(&app.base, key, &job_id, limit).await;
    assert_eq!(job["status"], "completed", "{job}");
    (job_id, job)
}

fn pad(prefix: &str, n: usize) -> String {
    let mut s = prefix.to_owned();
    while s.chars().count() < n {
        s.push('x');
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_thousand_record_job_with_512_character_fields_completes_with_every_message_small() {
    let mut res = Resources::new("chunk_big").await;
    // Far below any job's size: a message the claim check missed would be refused, and its job
    // would never finish.
    res.config.max_message_bytes = 16 * 1024;
    res.config.chunk_size = 500;
    let app = TestApp::start_with(res, demo_zone()).await;
    let key = app.res.key("acme").await;
    let domains = ["lumen.example", "brightwave.example"];
    let mut contacts: Vec<Value> = (0..9_990)
        .map(|i| {
            let domain = domains[i % 2];
            json!({
                "full_name": format!("Person {i}"),
                "title": pad(&format!("Title {i} "), 512),
                "company_name": pad(&format!("Company {i} "), 512),
                "email": format!("p{i}@{domain}"),
                "company_domain": domain,
            })
        })
        .collect();
    // Ten contacts without a company domain (a chunk of their own, apart from their domain's)
    // repeat addresses of the first ten: only assembly across chunks can drop them.
    for i in 0..10 {
        contacts.push(json!({
            "full_name": format!("Repeat {i}"),
            "title": pad("Repeat ", 512),
            "email": format!("p{i}@{}", domains[i % 2]),
        }));
    }
    let body = json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": contacts},
    });
    let (job_id, job) = run_to_completion(&app, &key, &body, Duration::from_secs(300)).await;
    assert_eq!(job["progress_percent"], 100);
    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    assert_eq!(result["summary"]["delivered_contacts"], 9_990, "{result}");
    assert!(
        job["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "10 duplicate contact(s) removed"),
        "{job}"
    );
    let reports = chunk_reports(&app.res, &job_id).await;
    assert_eq!(reports.len(), 21, "{reports:?}");
    // The payloads travelled through the asset store.
    let claims = walk(&app.res.assets.path().join("tenants/acme/claims"));
    assert!(claims > 21, "{claims} claim-checked payloads");
    app.stop().await;
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// A zone where every domain's lookup is swallowed: each costs the resolver's timeout, so a
/// chunk takes a while (its contacts end `unknown`, and are delivered).
fn slow_zone(domains: usize) -> StubZone {
    (0..domains).fold(StubZone::new(), |z, d| z.slow(&format!("d{d}.example")))
}

fn slow_job(contacts: usize) -> Value {
    let contacts: Vec<Value> = (0..contacts)
        .map(|i| {
            json!({
                "full_name": format!("Person {i}"),
                "email": format!("p{i}@d{i}.example"),
                "company_domain": format!("d{i}.example"),
            })
        })
        .collect();
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": contacts}})
}

/// The API and a projector in this process; workers are started by each test.
struct Stack {
    res: Resources,
    base: String,
    dns: bdjobs::adapters::dns_stub::StubDns,
    shutdown: CancellationToken,
    roles: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    async fn start(tag: &str, zone: StubZone) -> Self {
        let mut res = Resources::new(tag).await;
        let dns = bdjobs::adapters::dns_stub::StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        res.config.dns_nameserver = Some(dns.addr());
        res.config.dns_timeout_ms = 100;
        res.config.chunk_size = 10;
        res.config.worker_concurrency = 2;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let (c, p, s) = (res.config.clone(), res.pool.clone(), shutdown.clone());
        let api = tokio::spawn(async move { app::run_api(&c, p, listener, s).await });
        let (c, p, s) = (res.config.clone(), res.pool.clone(), shutdown.clone());
        let projector = tokio::spawn(async move { app::run_projector(&c, p, s).await });
        Self {
            res,
            base,
            dns,
            shutdown,
            roles: vec![api, projector],
        }
    }

    fn in_process_worker(&mut self) {
        let (c, p, s) = (
            self.res.config.clone(),
            self.res.pool.clone(),
            self.shutdown.clone(),
        );
        self.roles
            .push(tokio::spawn(async move { app::run_worker(&c, p, s).await }));
    }

    /// A `bdjobs worker` process taking one delivery at a time.
    fn worker_process(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_bdjobs"))
            .arg("worker")
            .env("DATABASE_URL", &self.res.config.database_url)
            .env("AMQP_URL", &self.res.config.amqp_url)
            .env("BDJOBS_NAMESPACE", &self.res.config.namespace)
            .env("BDJOBS_ASSETS", self.res.config.assets_location())
            .env("BDJOBS_DNS_NAMESERVER", self.dns.addr().to_string())
            .env("BDJOBS_DNS_TIMEOUT_MS", "100")
            .env("BDJOBS_CHUNK_SIZE", "10")
            .env("BDJOBS_WORKER_CONCURRENCY", "1")
            .env("BDJOBS_DB_POOL_SIZE", "2")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("bdjobs worker starts")
    }

    async fn post(&self, key: &str, body: &Value) -> String {
        common::create_job(&self.base, key, body).await["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn wait_for_reports(&self, job_id: &str, at_least: usize) {
        let started = Instant::now();
        while chunk_reports(&self.res, job_id).await.len() < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no chunk reports"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for r in self.roles {
            r.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_job_costs_at_most_the_chunk_it_was_running() {
    let mut stack = Stack::start("chunk_crash", slow_zone(80)).await;
    let key = stack.res.key("acme").await;
    let job_id = stack.post(&key, &slow_job(80)).await;
    let mut victim = stack.worker_process();
    stack.wait_for_reports(&job_id, 2).await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    let before = chunk_reports(&stack.res, &job_id).await;
    assert!(
        before.len() < 8,
        "the victim finished the job first: {before:?}"
    );
    stack.in_process_worker();
    let job = wait_terminal(&stack.base, &key, &job_id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let result = common::get_json(
        &stack.base,
        &key,
        &format!("/api/v1/bd/jobs/{job_id}/result"),
    )
    .await;
    assert_eq!(result["summary"]["delivered_contacts"], 80, "{result}");
    let reports = chunk_reports(&stack.res, &job_id).await;
    assert_eq!(reports.len(), 8, "{reports:?}");
    let redone: Vec<_> = reports.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        redone.len() <= 1,
        "more than one chunk was run twice: {reports:?}"
    );
    for (index, n) in &before {
        assert_eq!(
            reports[index], *n,
            "chunk {index} was done before the crash and again after"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_stops_every_chunk_and_delivers_the_chunks_done() {
    let mut stack = Stack::start("chunk_cancel", slow_zone(200)).await;
    stack.in_process_worker();
    let key = stack.res.key("acme").await;
    let job_id = stack.post(&key, &slow_job(200)).await;
    stack.wait_for_reports(&job_id, 1).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/bd/jobs/{job_id}/cancel", stack.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let job = wait_terminal(&stack.base, &key, &job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let result = common::get_json(
        &stack.base,
        &key,
        &format!("/api/v1/bd/jobs/{job_id}/result"),
    )
    .await;
    assert_eq!(
        result["result_assets"][0]["availability"], "partial",
        "{result}"
    );
    let delivered = result["summary"]["delivered_contacts"].as_u64().unwrap();
    assert!((10..200).contains(&delivered), "{result}");
    assert_eq!(delivered % 10, 0, "whole chunks only: {result}");
    let reports = chunk_reports(&stack.res, &job_id).await;
    assert!(reports.len() < 20, "every chunk ran: {reports:?}");
    stack.stop().await;
}

/// The broker itself refuses big messages here (`max_message_size`, 128 KiB, on a node of the
/// test's own): a job whose input is about 2.5 MB runs to completion all the same, because no
/// message carries the bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_refuses_big_messages_still_runs_a_big_job() {
    const BROKER_LIMIT: usize = 128 * 1024;
    let rabbit =
        common::nodes::Rabbit::start_with(1, &format!("max_message_size = {BROKER_LIMIT}\n"));
    let amqp = rabbit.url(0);

    // The limit is in force: a publish over it closes the channel.
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let refused = match channel
        .basic_publish(
            "".into(),
            "no-such-queue".into(),
            lapin::options::BasicPublishOptions::default(),
            &vec![b'x'; BROKER_LIMIT + 1],
            lapin::BasicProperties::default(),
        )
        .await
    {
        Err(_) => true,
        Ok(_) => {
            // The broker answers with a channel close, asynchronously.
            let until = Instant::now() + Duration::from_secs(10);
            while channel.status().connected() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            !channel.status().connected()
        }
    };
    assert!(
        refused,
        "the broker accepted a message over its max_message_size"
    );
    let _ = conn.close(200, "done".into()).await;

    let mut res = Resources::on("chunk_brk", common::PG, &amqp).await;
    res.config.max_message_bytes = (BROKER_LIMIT / 2) as u64;
    res.config.chunk_size = 500;
    let app = TestApp::start_with(res, demo_zone()).await;
    let key = app.res.key("acme").await;
    let domains = ["lumen.example", "brightwave.example"];
    let contacts: Vec<Value> = (0..2_000)
        .map(|i| {
            json!({
                "full_name": format!("Person {i}"),
                "title": pad(&format!("Title {i} "), 512),
                "company_name": pad(&format!("Company {i} "), 512),
                "email": format!("p{i}@{}", domains[i % 2]),
                "company_domain": domains[i % 2],
            })
        })
        .collect();
    let body = json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": contacts},
    });
    assert!(body.to_string().len() > 16 * BROKER_LIMIT);
    let (job_id, _) = run_to_completion(&app, &key, &body, Duration::from_secs(180)).await;
    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    assert_eq!(result["summary"]["delivered_contacts"], 2_000, "{result}");
    app.stop().await;
    drop(rabbit);
}
