//! Horizontal scale for real: a three-node RabbitMQ cluster and a Postgres primary with a
//! synchronous streaming standby, all started by this test on loopback from the machine's own
//! `rabbitmq-server` and PostgreSQL 15 binaries (own node names, ports, data and log folders;
//! the machine's default broker and database are never touched), with two APIs, two workers and
//! two projectors (the `bdjobs` binary) pointed at them through `AMQP_URL` as a list of nodes
//! and `DATABASE_URL` in libpq's multi-host form.
//!
//! While jobs are submitted continuously it stops the node leading the jobs queue, brings it
//! back, stops a second node, brings it back, then kills the Postgres primary and promotes the
//! standby. Every accepted job must complete exactly once, whole (one `job.created`, a completed
//! view delivering its contacts, both assets matching the stored bytes' SHA-256), nothing may be
//! left in the outbox or the queues, and each fault must land while jobs are unfinished. Each
//! fault prints `fault=NAME jobs=N in_flight=F lost=0 duplicated=0 redundant_runs=R
//! recovery_ms=T`: N jobs accepted from just before it to the next fault, F unfinished when it
//! hit, R extra worker runs (redeliveries the fault caused), T from the fault to the completion
//! of the first job submitted after it.
//!
//! Everything started here is stopped and its folders removed by guards, also when the test
//! fails.

mod common;

use common::audit::{assert_drained, job_facts, judge};
use common::nodes::{free_port, run_bounded, Pg, Rabbit};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- bdjobs processes -------------------------------------------------------------------------

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
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

/// The environment every `bdjobs` process of the test shares.
struct Deployment {
    env: Vec<(&'static str, String)>,
    logs: PathBuf,
    procs: Vec<Proc>,
}

impl Deployment {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdjobs"));
        cmd.args(args)
            .env_remove("BDJOBS_CONFIG")
            .env("RUST_LOG", "warn,bdjobs=info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        run_bounded(&mut self.command(args), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("bdjobs {args:?}: {e}"))
    }

    fn spawn(&mut self, role: &str, extra: &[(&str, String)]) {
        let n = self.procs.len();
        let log = self.logs.join(format!("{role}-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = self.command(&[role]);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.procs.push(Proc {
            name: format!("{role}#{n}"),
            child,
            log,
        });
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A job that spends about 0.7 s waiting on a nameserver that never answers (so that every
/// fault finds jobs running); both contacts are delivered, the second as `unknown`.
fn slow_job(i: usize) -> Value {
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
        {"full_name": format!("Person {i}"), "email": format!("p{i}@lumen.example")},
        {"full_name": "Slow", "email": format!("s{i}@slow.test")}
    ]}})
}

/// Jobs the submitter had accepted (202), with when.
#[derive(Default)]
struct Accepted {
    jobs: Vec<(String, Instant)>,
}

/// Submits a job every `every` through the APIs in turn until stopped. Each job carries an
/// `Idempotency-Key`, so a POST whose answer was lost (a 503 during a failover may follow a
/// commit) is repeated safely, as a client would, until it gets its 202.
fn submitter(
    apis: Vec<String>,
    key: String,
    accepted: Arc<Mutex<Accepted>>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut i = 0usize;
        while !stop.is_cancelled() {
            let body = slow_job(i);
            let idem = format!("cluster-{i}");
            let started = Instant::now();
            let mut attempt = 0usize;
            loop {
                let base = &apis[(i + attempt) % apis.len()];
                attempt += 1;
                let resp = http
                    .post(format!("{base}/api/v1/bd/jobs"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", &idem)
                    .json(&body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap();
                        let id = v["job_id"].as_str().unwrap().to_owned();
                        accepted.lock().unwrap().jobs.push((id, Instant::now()));
                        break;
                    }
                    Ok(r) => {
                        let status = r.status();
                        assert!(
                            status.is_server_error() || status == 429,
                            "POST answered {status}"
                        );
                        if attempt == 1 || attempt.is_multiple_of(25) {
                            eprintln!(
                                "cluster: job {i}: {status} {}",
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        if attempt == 1 || attempt.is_multiple_of(25) {
                            eprintln!("cluster: job {i}: {e}");
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(120) {
                    eprintln!("cluster: job {i} was not accepted within 2 minutes");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            i += 1;
            tokio::time::sleep(every).await;
        }
    })
}

async fn client_for(url: &str) -> tokio_postgres::Client {
    let config = bdjobs::adapters::db::connection_config(url).unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn completed_among(url: &str, ids: &[String]) -> Option<usize> {
    let config = bdjobs::adapters::db::connection_config(url).ok()?;
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'completed'",
            &[&uuids],
        )
        .await
        .ok()?;
    Some(row.get::<_, i64>(0) as usize)
}

/// Jobs accepted and not yet completed: the work a fault landing now hits.
async fn in_flight(url: &str, accepted: &Arc<Mutex<Accepted>>) -> usize {
    let ids: Vec<String> = accepted
        .lock()
        .unwrap()
        .jobs
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let done = completed_among(url, &ids)
        .await
        .expect("the database answers");
    ids.len() - done
}

/// Time from `fault` until a job accepted after it has completed; `None` after two minutes.
async fn recovery_after(
    url: &str,
    accepted: &Arc<Mutex<Accepted>>,
    fault: Instant,
) -> Option<Duration> {
    loop {
        let after: Vec<String> = accepted
            .lock()
            .unwrap()
            .jobs
            .iter()
            .filter(|(_, at)| *at > fault)
            .map(|(id, _)| id.clone())
            .collect();
        if !after.is_empty() && completed_among(url, &after).await.unwrap_or(0) > 0 {
            return Some(fault.elapsed());
        }
        if fault.elapsed() > Duration::from_secs(120) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cluster_and_a_postgres_pair_lose_nodes_and_every_job_completes_once() {
    common::init_logs();
    let mut rabbit = Rabbit::start(3);
    eprintln!("cluster: three RabbitMQ nodes clustered");
    let pg = Pg::start(true);
    eprintln!("cluster: Postgres primary and synchronous standby up");
    let assets = tempfile::tempdir().unwrap();
    let dns = bdjobs::adapters::dns_stub::StubDns::start(
        "127.0.0.1:0".parse().unwrap(),
        common::demo_zone().slow("slow.test"),
    )
    .await
    .unwrap();
    let namespace = "bdjobs_cluster";
    let database_url = pg.url("bdjobs_cluster");
    let mut d = Deployment {
        env: vec![
            ("DATABASE_URL", database_url.clone()),
            ("AMQP_URL", rabbit.urls()),
            ("BDJOBS_NAMESPACE", namespace.into()),
            ("BDJOBS_ASSETS", format!("fs://{}", assets.path().display())),
            ("BDJOBS_DNS_NAMESERVER", dns.addr().to_string()),
            ("BDJOBS_DNS_TIMEOUT_MS", "700".into()),
            ("BDJOBS_DB_POOL_SIZE", "4".into()),
            ("BDJOBS_RATE_LIMIT_PER_SEC", "100000".into()),
            ("BDJOBS_RATE_LIMIT_BURST", "100000".into()),
        ],
        logs: assets.path().join("logs"),
        procs: Vec::new(),
    };
    std::fs::create_dir_all(&d.logs).unwrap();

    // `migrate` creates the database through the multi-host URL: on the primary.
    d.run(&["migrate"]);
    d.run(&[
        "directory",
        "import",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/directory.jsonl"),
    ]);
    let key = d
        .run(&["keys", "create", "--tenant", "acme"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();

    let mut apis = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        d.spawn("api", &[("BDJOBS_LISTEN", format!("127.0.0.1:{port}"))]);
        apis.push(format!("http://127.0.0.1:{port}"));
    }
    for _ in 0..2 {
        d.spawn("worker", &[]);
        d.spawn("projector", &[]);
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for base in &apis {
        let started = Instant::now();
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{base} never ready:\n{}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    eprintln!("cluster: brokers, databases and roles up");
    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let submitting = submitter(
        apis.clone(),
        key,
        accepted.clone(),
        Duration::from_millis(50),
        stop.clone(),
    );
    let test_started = Instant::now();
    // Work in flight before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let jobs_queue = format!("{namespace}.jobs");
    let mut faults: Vec<(&str, Instant, Duration)> = Vec::new();
    let mut hit: Vec<usize> = Vec::new();

    // 1. The node leading the jobs queue goes down; the other two elect a new leader.
    let first = tokio::task::block_in_place(|| rabbit.leader(&jobs_queue, 0));
    hit.push(in_flight(&database_url, &accepted).await);
    let at = Instant::now();
    tokio::task::block_in_place(|| rabbit.stop(first));
    let recovery = recovery_after(&database_url, &accepted, at)
        .await
        .unwrap_or_else(|| panic!("no job completed after node {first} stopped\n{}", d.logs()));
    eprintln!("cluster: node {first} (leading {jobs_queue}) stopped; recovered in {recovery:?}");
    faults.push(("rabbit_jobs_leader_down", at, recovery));
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| rabbit.restart(first));
    eprintln!("cluster: node {first} is back");

    // 2. With the first back, a second node goes down: the leader again, unless that is the
    //    node just restarted.
    let ask = (first + 1) % 3;
    let leader = tokio::task::block_in_place(|| rabbit.leader(&jobs_queue, ask));
    let second = if leader == first { ask } else { leader };
    hit.push(in_flight(&database_url, &accepted).await);
    let at = Instant::now();
    tokio::task::block_in_place(|| rabbit.stop(second));
    let recovery = recovery_after(&database_url, &accepted, at)
        .await
        .unwrap_or_else(|| panic!("no job completed after node {second} stopped\n{}", d.logs()));
    eprintln!("cluster: node {second} stopped; recovered in {recovery:?}");
    faults.push(("rabbit_second_node_down", at, recovery));
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| rabbit.restart(second));
    eprintln!("cluster: node {second} is back");

    // 3. The Postgres primary dies; the standby is promoted (what a failover manager does).
    tokio::time::sleep(Duration::from_secs(1)).await;
    hit.push(in_flight(&database_url, &accepted).await);
    let at = Instant::now();
    pg.kill_primary();
    tokio::task::block_in_place(|| pg.promote_standby());
    let recovery = recovery_after(&database_url, &accepted, at)
        .await
        .unwrap_or_else(|| panic!("no job completed after the failover\n{}", d.logs()));
    eprintln!("cluster: postgres failed over; recovered in {recovery:?}");
    faults.push(("postgres_primary_killed", at, recovery));
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.cancel();
    submitting.await.expect("the submitter");
    let all: Vec<String> = accepted
        .lock()
        .unwrap()
        .jobs
        .iter()
        .map(|(id, _)| id.clone())
        .collect();

    // Every accepted job reaches a terminal state.
    let started = Instant::now();
    loop {
        let done = completed_among(&database_url, &all).await.unwrap_or(0);
        if done == all.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{done}/{} jobs completed after 3 minutes\n{}",
            all.len(),
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The audit, from the database (now the promoted standby) and the stored asset bytes.
    let db = client_for(&database_url).await;
    let facts = job_facts(&db, &all, assets.path()).await;
    let total_rows: i64 = db
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .unwrap()
        .get(0);

    let windows: Vec<(&str, Instant, Option<Instant>, Duration, usize)> = faults
        .iter()
        .enumerate()
        .map(|(k, (name, at, rec))| (*name, *at, faults.get(k + 1).map(|f| f.1), *rec, hit[k]))
        .collect();
    // A job runs for under a second and the faults are seconds apart, so at most one fault
    // cuts a job's run short: its worker's connection (node stop) or its events' database
    // (failover) goes, and the command is redelivered once. Hence at most two runs per job.
    const MAX_RUNS: i64 = 2;
    for (name, from, until, recovery, in_flight) in windows {
        // The jobs of a fault: accepted from shortly before it (work in flight when it hit)
        // until the next fault.
        let jobs: Vec<String> = accepted
            .lock()
            .unwrap()
            .jobs
            .iter()
            .filter(|(_, at)| *at + Duration::from_secs(2) >= from && until.is_none_or(|u| *at < u))
            .map(|(id, _)| id.clone())
            .collect();
        judge(&facts, &jobs, "2", MAX_RUNS).report(name, Some(in_flight), recovery);
    }
    let all_jobs = judge(&facts, &all, "2", MAX_RUNS);
    println!(
        "cluster: {} jobs accepted, lost={} duplicated={} redundant_runs={}, {} s in all",
        all.len(),
        all_jobs.lost,
        all_jobs.duplicated,
        all_jobs.redundant_runs,
        test_started.elapsed().as_secs()
    );
    assert_eq!((all_jobs.lost, all_jobs.duplicated), (0, 0));
    assert!(all_jobs.overrun.is_empty(), "{:#?}", all_jobs.overrun);
    assert_eq!(
        total_rows as usize,
        all.len(),
        "the read model holds a job no one accepted"
    );
    // The outbox and the queues drain: a row whose delete was lost to the failover is
    // published again by the relay (its job is finished, so a worker skips the command).
    let alive = (0..3).find(|i| rabbit.nodes[*i].server.is_some()).unwrap();
    assert_drained(
        &db,
        || rabbit.queue_depths(namespace, alive),
        3,
        || d.logs(),
    )
    .await;
    drop(d);
    drop(rabbit);
}
