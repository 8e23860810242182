//! The fault suite: real `bdjobs` processes against the real broker and database, with the
//! failures production sees — a broker restart, a database restart, SIGKILLed workers and
//! projectors, several copies of every role, SIGTERM. Each scenario prints one line:
//! `fault=NAME jobs=N lost=0 duplicated=0 redundant_runs=R recovery_ms=T`.
//!
//! Scenarios restart the shared RabbitMQ and Postgres, so they run one at a time (a lock), and
//! this test binary runs alone (cargo runs test binaries one after another). A guard restarts a
//! stopped service even when a scenario fails.
//!
//! Duplicated and reordered deliveries and poison messages have their own tests
//! (`tests/projector.rs`, `tests/messaging.rs`).

mod common;

use common::Resources;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `bdjobs` process.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.name);
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and how long it took.
    async fn terminate(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal("-TERM");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "{} ignored SIGTERM for {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes sharing one test's database, namespace and assets.
struct Cluster {
    res: Resources,
    dns: bdjobs::adapters::dns_stub::StubDns,
    procs: Vec<Proc>,
    apis: Vec<String>,
    key: String,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    async fn new(tag: &str) -> Self {
        let res = Resources::new(tag).await;
        let zone = common::demo_zone().slow("slow.test");
        let dns = bdjobs::adapters::dns_stub::StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        let key = res.key("acme").await;
        Self {
            res,
            dns,
            procs: Vec::new(),
            apis: Vec::new(),
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn spawn(&mut self, role: &str, extra: &[(&str, String)]) -> usize {
        let n = self.procs.len();
        let log = self.res.assets.path().join(format!("{role}-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdjobs"));
        cmd.arg(role)
            .env("DATABASE_URL", &self.res.config.database_url)
            .env("AMQP_URL", &self.res.config.amqp_url)
            .env("BDJOBS_NAMESPACE", &self.res.config.namespace)
            .env("BDJOBS_ASSETS", self.res.config.assets_location())
            .env("BDJOBS_DNS_NAMESERVER", self.dns.addr().to_string())
            .env("BDJOBS_DNS_TIMEOUT_MS", "700")
            .env("BDJOBS_DB_POOL_SIZE", "4")
            // A load test: one key sends hundreds of jobs a second.
            .env("BDJOBS_RATE_LIMIT_PER_SEC", "100000")
            .env("BDJOBS_RATE_LIMIT_BURST", "100000")
            .env("RUST_LOG", "warn,bdjobs=info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        self.procs.push(Proc {
            name: format!("{role}#{n}"),
            child,
            log,
        });
        n
    }

    async fn api(&mut self) -> usize {
        let port = free_port();
        let i = self.spawn("api", &[("BDJOBS_LISTEN", format!("127.0.0.1:{port}"))]);
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while self
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "api never listened:\n{}",
                self.procs[i].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.apis.push(base);
        i
    }

    /// Submits a job through the `i`-th API, retrying while the API cannot accept it (a 5xx or
    /// a 429 means "not accepted": nothing to lose). Returns the job id once accepted.
    async fn submit(&self, i: usize, body: &Value) -> String {
        let base = &self.apis[i % self.apis.len()];
        let started = Instant::now();
        loop {
            match self
                .http
                .post(format!("{base}/api/v1/bd/jobs"))
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .await
            {
                Ok(resp) if resp.status() == 202 => {
                    let v: Value = resp.json().await.unwrap();
                    return v["job_id"].as_str().unwrap().to_owned();
                }
                Ok(resp) => assert!(
                    resp.status().is_server_error() || resp.status() == 429,
                    "{}",
                    resp.status()
                ),
                Err(_) => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no API accepted the job"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (reading the database) until every job is terminal.
    async fn wait_all(&self, ids: &[String], limit: Duration) {
        let started = Instant::now();
        loop {
            let client = self.res.pool.get().await;
            if let Ok(client) = client {
                let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
                if let Ok(row) = client
                    .query_one(
                        "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status IN ('completed','failed','cancelled')",
                        &[&ids],
                    )
                    .await
                {
                    let done: i64 = row.get(0);
                    if done as usize == ids.len() {
                        return;
                    }
                    if started.elapsed() > limit {
                        let logs: Vec<String> = self.procs.iter().map(|p| format!("--- {}\n{}", p.name, p.log_tail())).collect();
                        panic!("{done}/{} jobs finished after {limit:?}\n{}", ids.len(), logs.join("\n"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks every job against what it must be: completed, its summary as expected, its two
    /// assets present. Returns (lost, duplicated, redundant runs).
    async fn audit(&self, ids: &[String], delivered: u64) -> (usize, usize, usize) {
        let client = self.res.pool.get().await.unwrap();
        let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
        let rows = client
            .query(
                "SELECT j.job_id, j.status, j.view->'result'->'summary'->>'delivered_contacts',
                        (SELECT count(*) FROM assets a WHERE a.job_id = j.job_id),
                        (SELECT count(*) FROM events e WHERE e.job_id = j.job_id AND e.type = 'job.completed')
                 FROM jobs j WHERE j.job_id = ANY($1)",
                &[&uuids],
            )
            .await
            .unwrap();
        let mut by_id: HashMap<uuid::Uuid, (String, Option<String>, i64, i64)> = HashMap::new();
        for r in rows {
            by_id.insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)));
        }
        let (mut lost, mut duplicated, mut redundant) = (0, 0, 0);
        for id in &uuids {
            match by_id.get(id) {
                None => lost += 1,
                Some((status, summary, assets, completions)) => {
                    if status != "completed" {
                        lost += 1;
                    }
                    if summary.as_deref() != Some(&delivered.to_string()) || *assets != 2 {
                        duplicated += 1;
                    }
                    if *completions > 1 {
                        redundant += 1;
                    }
                }
            }
        }
        // No job appears twice in the read model, and the read model holds nothing but these.
        let total: i64 = client
            .query_one("SELECT count(*) FROM jobs", &[])
            .await
            .unwrap()
            .get(0);
        duplicated += (total as usize).saturating_sub(ids.len());
        (lost, duplicated, redundant)
    }
}

fn quick_job(i: usize) -> Value {
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
        {"full_name": format!("Person {i}"), "email": format!("p{i}@lumen.example")},
        {"full_name": "Maya Chen", "email": "maya.chen@brightwave.example"}
    ]}})
}

/// A job that spends about 0.7 s waiting on a nameserver that never answers; both contacts are
/// delivered (the second as `unknown`).
fn slow_job(i: usize) -> Value {
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
        {"full_name": format!("Person {i}"), "email": format!("p{i}@lumen.example")},
        {"full_name": "Slow", "email": format!("s{i}@slow.test")}
    ]}})
}

async fn run(cmd: &str, args: &[&str]) {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < limit,
            "{what} not ready after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn broker_up() -> bool {
    Command::new("rabbitmq-diagnostics")
        .args(["-q", "check_port_connectivity"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn postgres_up() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts RabbitMQ's app again if a scenario left it stopped.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if !broker_up() {
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
        }
    }
}

fn report(
    fault: &str,
    jobs: usize,
    (lost, duplicated, redundant): (usize, usize, usize),
    recovery: Duration,
) {
    println!(
        "fault={fault} jobs={jobs} lost={lost} duplicated={duplicated} redundant_runs={redundant} recovery_ms={}",
        recovery.as_millis()
    );
    assert_eq!((lost, duplicated), (0, 0), "{fault}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_two_projectors_and_two_apis_complete_every_job_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::new("f_scale").await;
    c.api().await;
    c.api().await;
    for _ in 0..3 {
        c.spawn("worker", &[]);
    }
    for _ in 0..2 {
        c.spawn("projector", &[]);
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    let audit = c.audit(&ids, 2).await;
    println!(
        "scale: 200 jobs through 2 apis, 3 workers, 2 projectors in {} ms",
        started.elapsed().as_millis()
    );
    report("none_scaled", ids.len(), audit, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_200_jobs_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let _guard = BrokerGuard;
    let mut c = Cluster::new("f_broker").await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    run("rabbitmqctl", &["stop_app"]).await;
    // Accepted while the broker is down: the outbox keeps the commands.
    for i in 100..150 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    run("rabbitmqctl", &["start_app"]).await;
    wait_until("rabbitmq", Duration::from_secs(60), broker_up).await;
    let back = Instant::now();
    for i in 150..200 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(180)).await;
    let recovery = back.elapsed();
    report(
        "broker_restart",
        ids.len(),
        c.audit(&ids, 2).await,
        recovery,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_a_run_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::new("f_pg").await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    )
    .await;
    wait_until("postgres", Duration::from_secs(60), postgres_up).await;
    let back = Instant::now();
    for i in 60..120 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    report(
        "postgres_restart",
        ids.len(),
        c.audit(&ids, 2).await,
        back.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_its_jobs_to_another_and_each_completes_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::new("f_kill_w").await;
    c.api().await;
    let victim = c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    // Let the victim take jobs and start them, then kill it without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.procs[victim].kill9();
    let killed = Instant::now();
    c.spawn("worker", &[]);
    c.wait_all(&ids, Duration::from_secs(120)).await;
    // The kill landed mid-job: some job was started by the victim and finished by attempt 2.
    let client = c.res.pool.get().await.unwrap();
    let redelivered: i64 = client
        .query_one(
            "SELECT count(DISTINCT job_id) FROM events WHERE type = 'job.started' AND attempt >= 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        redelivered > 0,
        "no job was redelivered: the kill came too late to prove anything"
    );
    println!("worker_sigkill: {redelivered} job(s) redelivered after the kill");
    report(
        "worker_sigkill",
        ids.len(),
        c.audit(&ids, 2).await,
        killed.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_killed_again_and_again_count_nothing_twice() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::new("f_kill_p").await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("worker", &[]);
    let mut victim = c.spawn("projector", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    let started = Instant::now();
    for round in 0..5 {
        for i in 0..20 {
            let n = round * 20 + i;
            ids.push(c.submit(n, &quick_job(n)).await);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.procs[victim].kill9();
        victim = c.spawn("projector", &[]);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    let audit = c.audit(&ids, 2).await;
    // Every stored view equals the fold of its logged events: nothing was applied twice.
    let client = c.res.pool.get().await.unwrap();
    for id in &ids {
        let job = bdjobs::domain::ids::JobId(id.parse().unwrap());
        let events = bdjobs::adapters::db::jobs::events_of_job(&client, job)
            .await
            .unwrap();
        let records: Vec<_> = events
            .iter()
            .map(|e| bdjobs::domain::messages::EventRecord::from_raw(e).unwrap())
            .collect();
        let folded = bdjobs::domain::job::fold(&records).unwrap();
        let stored = bdjobs::adapters::db::jobs::get_view(&c.res.pool, &folded.tenant, job)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored, folded, "job {id}");
    }
    report("projector_sigkill", ids.len(), audit, started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_every_role_exits_zero() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::new("f_term").await;
    let api = c.api().await;
    let worker = c.spawn("worker", &[("BDJOBS_SHUTDOWN_GRACE_SECS", "20".into())]);
    let projector = c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, took) = c.procs[worker].terminate(Duration::from_secs(25)).await;
    assert_eq!(
        code,
        Some(0),
        "worker exit:\n{}",
        c.procs[worker].log_tail()
    );
    println!("worker drained and exited in {} ms", took.as_millis());
    // Whatever it had not finished is redelivered to the next worker.
    c.spawn("worker", &[]);
    c.wait_all(&ids, Duration::from_secs(60)).await;
    let audit = c.audit(&ids, 2).await;
    for i in [api, projector] {
        let (code, _) = c.procs[i].terminate(Duration::from_secs(15)).await;
        assert_eq!(
            code,
            Some(0),
            "{}:\n{}",
            c.procs[i].name,
            c.procs[i].log_tail()
        );
    }
    report("sigterm", ids.len(), audit, took);
}
