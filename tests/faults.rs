//! The fault suite: real `bdjobs` processes against a real broker and database, with the
//! failures production sees — a broker restart, a database restart, SIGKILLed workers and
//! projectors, several copies of every role, SIGTERM. Each scenario prints one line:
//! `fault=NAME jobs=N in_flight=F lost=0 duplicated=0 redundant_runs=R recovery_ms=T`.
//!
//! The audit counts from ground truth (`common::audit`, shared with `tests/cluster.rs`): per
//! job exactly one `job.created`, no more worker runs (`job.started`) than the fault explains
//! and no more terminal events than runs, a completed view delivering its contacts, both assets
//! matching the stored bytes' SHA-256; at the end an empty outbox and empty queues, dead-letter
//! queue included. Each fault must land while jobs are unfinished, and is timed by conditions
//! (a job running, a job unfinished), not by sleeps.
//!
//! The scenarios that restart a service start their own: a RabbitMQ node or a Postgres server
//! on loopback ports of their own (`common::nodes`), removed when the scenario ends. The others
//! use the machine's services through a database and namespace of their own, like every suite,
//! so this one runs beside the others.
//!
//! Duplicated and reordered deliveries and poison messages have their own tests
//! (`tests/projector.rs`, `tests/messaging.rs`).

mod common;

use common::audit::{assert_drained, job_facts, judge, Verdict};
use common::nodes::{free_port, queue_depths, Pg, Rabbit};
use common::Resources;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Processes sharing one test's database, namespace and assets. Fields drop in order: the
/// processes stop, then the test's database and namespace go, then the nodes the test started.
struct Cluster {
    procs: Vec<Proc>,
    apis: Vec<String>,
    key: String,
    http: reqwest::Client,
    dns: bdjobs::adapters::dns_stub::StubDns,
    res: Resources,
    pg: Option<Pg>,
    rabbit: Option<Rabbit>,
}

const TERMINAL: &str = "('job.completed','job.failed','job.cancelled')";

impl Cluster {
    /// On the machine's broker and database.
    async fn new(tag: &str) -> Self {
        Self::with(tag, None, None).await
    }

    /// On a RabbitMQ node and/or a Postgres server of its own, which the scenario may restart.
    async fn own(tag: &str, rabbit: bool, pg: bool) -> Self {
        let (rabbit, pg) = tokio::task::block_in_place(|| {
            (
                rabbit.then(|| Rabbit::start(1)),
                pg.then(|| Pg::start(false)),
            )
        });
        Self::with(tag, rabbit, pg).await
    }

    async fn with(tag: &str, rabbit: Option<Rabbit>, pg: Option<Pg>) -> Self {
        let pg_base = pg.as_ref().map_or(common::PG.to_owned(), Pg::base);
        let amqp = rabbit
            .as_ref()
            .map_or(common::AMQP.to_owned(), |r| r.url(0));
        let res = Resources::on(tag, &pg_base, &amqp).await;
        let zone = common::demo_zone().slow("slow.test");
        let dns = bdjobs::adapters::dns_stub::StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        let key = res.key("acme").await;
        Self {
            procs: Vec::new(),
            apis: Vec::new(),
            key,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            dns,
            res,
            pg,
            rabbit,
        }
    }

    /// `bdjobs ARGS` with the environment every process of the scenario shares.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdjobs"));
        cmd.args(args)
            .env_remove("BDJOBS_CONFIG")
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
            .env("RUST_LOG", "warn,bdjobs=info");
        cmd
    }

    /// Runs a `bdjobs` command to its end; returns its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "bdjobs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&mut self, role: &str, extra: &[(&str, String)]) -> usize {
        let n = self.procs.len();
        let log = self.res.assets.path().join(format!("{role}-{n}.log"));
        let mut cmd = self.command(&[role]);
        cmd.stdin(Stdio::null())
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
        self.api_with(&[]).await
    }

    async fn api_with(&mut self, extra: &[(&str, String)]) -> usize {
        let port = free_port();
        let mut env = vec![("BDJOBS_LISTEN", format!("127.0.0.1:{port}"))];
        env.extend(extra.iter().cloned());
        let i = self.spawn("api", &env);
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

    /// Submits job `i` through an API, retrying while the API cannot accept it (a 5xx or a 429
    /// means "not accepted": nothing to lose). The `Idempotency-Key` makes a retry after a lost
    /// answer (the commit may have happened) return the same job. Returns the job id.
    async fn submit(&self, i: usize, body: &Value) -> String {
        let base = &self.apis[i % self.apis.len()];
        let started = Instant::now();
        loop {
            match self
                .http
                .post(format!("{base}/api/v1/bd/jobs"))
                .bearer_auth(&self.key)
                .header("Idempotency-Key", format!("fault-{i}"))
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

    /// A count from the read model, `None` while the database cannot answer.
    async fn count(&self, sql: &str, ids: &[String]) -> Option<i64> {
        let client = self.res.pool.get().await.ok()?;
        let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
        let row = client.query_one(sql, &[&ids]).await.ok()?;
        Some(row.get(0))
    }

    /// Jobs among `ids` not terminal in the read model: the work a fault landing now hits.
    async fn unfinished(&self, ids: &[String]) -> usize {
        let done = self
            .count(
                "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status IN ('completed','failed','cancelled')",
                ids,
            )
            .await
            .expect("the database answers");
        ids.len() - done as usize
    }

    /// Jobs among `ids` a worker has started (the log shows `job.started`) and not finished.
    async fn running(&self, ids: &[String]) -> usize {
        let sql = format!(
            "SELECT count(DISTINCT s.job_id) FROM events s WHERE s.job_id = ANY($1) AND s.type = 'job.started'
               AND NOT EXISTS (SELECT 1 FROM events t WHERE t.job_id = s.job_id AND t.type IN {TERMINAL})"
        );
        self.count(&sql, ids).await.unwrap_or(0) as usize
    }

    /// Waits until some job among `ids` is running, and returns how many are.
    async fn some_running(&self, ids: &[String]) -> usize {
        let started = Instant::now();
        loop {
            let n = self.running(ids).await;
            if n > 0 {
                return n;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no job started within 30 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (reading the database) until every job is terminal.
    async fn wait_all(&self, ids: &[String], limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some(done) = self
                .count(
                    "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status IN ('completed','failed','cancelled')",
                    ids,
                )
                .await
            {
                if done as usize == ids.len() {
                    return;
                }
                if started.elapsed() > limit {
                    panic!(
                        "{done}/{} jobs finished after {limit:?}\n{}",
                        ids.len(),
                        self.logs()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stored view equals the fold of its logged events.
    async fn assert_views_are_folds(&self, ids: &[String]) {
        let client = self.res.pool.get().await.unwrap();
        for id in ids {
            let job = bdjobs::domain::ids::JobId(id.parse().unwrap());
            let events = bdjobs::adapters::db::jobs::events_of_job(&client, job)
                .await
                .unwrap();
            let records: Vec<_> = events
                .iter()
                .map(|e| bdjobs::domain::messages::EventRecord::from_raw(e).unwrap())
                .collect();
            let folded = bdjobs::domain::job::fold(&records).unwrap();
            let stored = bdjobs::adapters::db::jobs::get_view(&self.res.pool, &folded.tenant, job)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored, folded, "job {id}");
        }
    }

    /// Judges every job (each delivering two contacts, run at most `max_runs` times), checks
    /// that the read model holds no job but these, and waits for the outbox and every queue of
    /// the namespace to drain.
    async fn audit(&self, ids: &[String], max_runs: i64) -> Verdict {
        let client = self.res.pool.get().await.unwrap();
        let facts = job_facts(&client, ids, self.res.assets.path()).await;
        let mut verdict = judge(&facts, ids, "2", max_runs);
        let total: i64 = client
            .query_one("SELECT count(*) FROM jobs", &[])
            .await
            .unwrap()
            .get(0);
        verdict.duplicated += (total as usize).saturating_sub(ids.len());
        let namespace = self.res.config.namespace.clone();
        let depths = || match &self.rabbit {
            Some(rabbit) => rabbit.queue_depths(&namespace, 0),
            None => queue_depths(Command::new("rabbitmqctl"), &namespace),
        };
        assert_drained(&client, depths, 3, || self.logs()).await;
        verdict
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_two_projectors_and_two_apis_complete_every_job_once() {
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
    println!(
        "scale: 200 jobs through 2 apis, 3 workers, 2 projectors in {} ms",
        started.elapsed().as_millis()
    );
    // No fault: every job runs once.
    c.audit(&ids, 1)
        .await
        .report("none_scaled", None, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_200_jobs_loses_nothing() {
    let mut c = Cluster::own("f_broker", true, false).await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..90 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    // Slow jobs last, so the stop finds work running.
    for i in 90..100 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    let in_flight = c.unfinished(&ids).await;
    // The whole node stops, as a host going down would; its data stays.
    tokio::task::block_in_place(|| c.rabbit.as_mut().unwrap().stop(0));
    // Accepted while the broker is down: the outbox keeps the commands.
    for i in 100..150 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    tokio::task::block_in_place(|| c.rabbit.as_mut().unwrap().restart(0));
    let back = Instant::now();
    for i in 150..200 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(180)).await;
    let recovery = back.elapsed();
    // A run the stop cut short is redelivered once; so is a command whose confirm the stop
    // swallowed (the relay publishes it again): at most two runs a job.
    c.audit(&ids, 2)
        .await
        .report("broker_restart", Some(in_flight), recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_a_run_loses_nothing() {
    let mut c = Cluster::own("f_pg", false, true).await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    for i in 50..60 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    let in_flight = c.unfinished(&ids).await;
    tokio::task::block_in_place(|| c.pg.as_ref().unwrap().restart_primary());
    let back = Instant::now();
    for i in 60..120 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    let recovery = back.elapsed();
    // The worker needs the database only to skip finished jobs (a failed check means "run
    // it"); the restart can swallow the delete of a confirmed outbox row, and the relay then
    // publishes the command again, which runs a second time only if the job is unfinished:
    // at most two runs a job.
    c.audit(&ids, 2)
        .await
        .report("postgres_restart", Some(in_flight), recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_its_jobs_to_another_and_each_completes_once() {
    let mut c = Cluster::new("f_kill_w").await;
    c.api().await;
    let victim = c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    // Kill the victim without warning once it is running a job.
    let in_flight = c.some_running(&ids).await;
    c.procs[victim].kill9();
    let killed = Instant::now();
    c.spawn("worker", &[]);
    c.wait_all(&ids, Duration::from_secs(120)).await;
    let redelivered = c
        .count(
            "SELECT count(DISTINCT job_id) FROM events WHERE job_id = ANY($1) AND type = 'job.started' AND attempt >= 2",
            &ids,
        )
        .await
        .unwrap();
    assert!(
        redelivered > 0,
        "no job was redelivered: the kill came too late to prove anything"
    );
    println!("worker_sigkill: {redelivered} job(s) redelivered after the kill");
    // The jobs the victim had started run again on the other worker: two runs at most.
    c.audit(&ids, 2)
        .await
        .report("worker_sigkill", Some(in_flight), killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_killed_again_and_again_count_nothing_twice() {
    let mut c = Cluster::new("f_kill_p").await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("worker", &[]);
    let mut victim = c.spawn("projector", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for round in 0..5 {
        for i in 0..20 {
            let n = round * 20 + i;
            ids.push(c.submit(n, &quick_job(n)).await);
        }
        let unfinished = c.unfinished(&ids).await;
        assert!(unfinished > 0, "kill {round} would hit no work in flight");
        in_flight.push(unfinished);
        c.procs[victim].kill9();
        victim = c.spawn("projector", &[]);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    // Nothing was applied twice.
    c.assert_views_are_folds(&ids).await;
    println!("projector_sigkill: unfinished at each kill {in_flight:?}");
    // Projectors do not run jobs: one run each.
    c.audit(&ids, 1).await.report(
        "projector_sigkill",
        in_flight.iter().min().copied(),
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_every_role_exits_zero() {
    let mut c = Cluster::new("f_term").await;
    let api = c.api().await;
    let worker = c.spawn("worker", &[("BDJOBS_SHUTDOWN_GRACE_SECS", "20".into())]);
    let projector = c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    let in_flight = c.some_running(&ids).await;
    let (code, took) = c.procs[worker].terminate(Duration::from_secs(25)).await;
    assert_eq!(
        code,
        Some(0),
        "worker exit:\n{}",
        c.procs[worker].log_tail()
    );
    println!("worker drained and exited in {} ms", took.as_millis());
    // No worker runs now: whatever completes was finished by the draining one.
    let drained = Instant::now();
    let finished = loop {
        let done = c
            .count(
                "SELECT count(*) FROM events WHERE job_id = ANY($1) AND type = 'job.completed'",
                &ids,
            )
            .await
            .unwrap_or(0);
        if done as usize >= in_flight || drained.elapsed() > Duration::from_secs(10) {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        finished as usize >= in_flight,
        "the draining worker finished {finished} of the {in_flight} jobs it was running"
    );
    println!("sigterm: the draining worker finished {finished} job(s)");
    // Whatever it had not started is redelivered to the next worker.
    c.spawn("worker", &[]);
    c.wait_all(&ids, Duration::from_secs(60)).await;
    // Running jobs finish, the rest were never started: one run each.
    let verdict = c.audit(&ids, 1).await;
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
    verdict.report("sigterm", Some(in_flight), took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_commit_and_publish_leaves_the_job_to_the_relay_and_a_late_copy_is_skipped(
) {
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
    };
    let mut c = Cluster::new("f_api_kill").await;
    let topology = c.res.topology();
    let conn = bdjobs::adapters::broker::connect(&c.res.config.amqp_url, "test-copy")
        .await
        .unwrap();
    topology.declare(&conn).await.unwrap();
    // A copy of every command (a server-named queue, gone with the connection), to deliver
    // one again once its job has finished.
    let ch = conn.create_channel().await.unwrap();
    let copy = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        copy.name().clone(),
        topology.commands_exchange().into(),
        bdjobs::adapters::broker::RUN_JOB_KEY.into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();

    // An API that aborts right after the commit, before the publish (test-only hook).
    let crashing = c
        .api_with(&[("BDJOBS_TEST_CRASH_AFTER_COMMIT", "1".into())])
        .await;
    let answer = c
        .http
        .post(format!("{}/api/v1/bd/jobs", c.apis[0]))
        .bearer_auth(&c.key)
        .json(&slow_job(0))
        .send()
        .await;
    assert!(answer.is_err(), "the API answered: {answer:?}");
    let status = c.procs[crashing].child.wait().unwrap();
    assert!(!status.success(), "the API did not die: {status:?}");
    c.apis.clear();
    let client = c.res.pool.get().await.unwrap();
    let ids: Vec<String> = client
        .query("SELECT job_id::text FROM jobs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 1, "the commit happened");
    let outbox: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 1, "the command waits in the outbox");
    let copied = ch
        .queue_declare(
            copy.name().clone(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(copied, 0, "nothing was published before the crash");

    // Another API's relay publishes the command; a worker runs it.
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    let relayed = Instant::now();
    c.wait_all(&ids, Duration::from_secs(60)).await;
    c.audit(&ids, 1)
        .await
        .report("api_sigkill_after_commit", Some(1), relayed.elapsed());

    // The same command delivered again after its job finished: the worker acknowledges it
    // without running it (the audit's one run stands), and the queues drain.
    let late = ch
        .basic_get(copy.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the relayed command was copied");
    ch.basic_publish(
        topology.commands_exchange().into(),
        bdjobs::adapters::broker::RUN_JOB_KEY.into(),
        BasicPublishOptions::default(),
        &late.delivery.data,
        late.delivery.properties.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let started = Instant::now();
    while !c.logs().contains("job already finished") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no worker skipped the late command\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.audit(&ids, 1)
        .await
        .report("late_duplicate_command", None, started.elapsed());
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_on_every_delivery_fails_at_the_delivery_limit() {
    let mut c = Cluster::new("f_limit").await;
    c.api().await;
    c.spawn("projector", &[]);
    let ids = vec![c.submit(0, &slow_job(0)).await];
    // Each run waits 5 s on a nameserver that never answers: time to kill it mid-run. A
    // SIGKILLed worker's connection closes with the command unacknowledged, and the queue
    // counts the return in `x-delivery-count` (whatever the broker does with `basic.nack`).
    let limit = bdjobs::adapters::broker::DELIVERY_LIMIT;
    for attempt in 1..=limit {
        let w = c.spawn("worker", &[("BDJOBS_DNS_TIMEOUT_MS", "5000".into())]);
        let started = Instant::now();
        loop {
            let seen = c
                .count(
                    &format!(
                        "SELECT count(*) FROM events WHERE job_id = ANY($1) AND type = 'job.started' AND attempt = {attempt}"
                    ),
                    &ids,
                )
                .await
                .unwrap_or(0);
            if seen == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "attempt {attempt} never started\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.procs[w].kill9();
    }
    // The next delivery is past the limit: a worker fails the job without running it.
    c.spawn("worker", &[]);
    c.wait_all(&ids, Duration::from_secs(60)).await;
    let client = c.res.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT status, view->>'error_message' FROM jobs WHERE job_id = $1::text::uuid",
            &[&ids[0]],
        )
        .await
        .unwrap();
    let (status, error): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains(&format!("gave up after {limit} attempts")),
        "{error}"
    );
    let facts = job_facts(&client, &ids, c.res.assets.path()).await;
    let f = &facts[&ids[0]];
    // Runs 1 to 5 (one `job.started` each, numbered from `x-delivery-count`), then one failure.
    assert_eq!(
        (f.created_events, f.started_events, f.terminal_events),
        (1, limit, 1),
        "{f:?}"
    );
    println!(
        "fault=worker_sigkill_every_run jobs=1 runs={} status={status}",
        f.started_events
    );
    assert_drained(
        &client,
        || queue_depths(Command::new("rabbitmqctl"), &c.res.config.namespace),
        3,
        || c.logs(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_returned_past_the_delivery_limit_is_dead_lettered_and_its_job_failed() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    let mut c = Cluster::new("f_dlq").await;
    c.api().await;
    let ids = vec![c.submit(0, &quick_job(0)).await];
    // No worker: a consumer that takes the command and crashes (its channel closes with the
    // command unacknowledged), again and again, as a worker crashing at once would.
    let topology = c.res.topology();
    let conn = bdjobs::adapters::broker::connect(&c.res.config.amqp_url, "test-crash")
        .await
        .unwrap();
    let mut attempts = Vec::new();
    let started = Instant::now();
    loop {
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(
                topology.jobs_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        match got {
            Some(msg) => attempts.push(bdjobs::adapters::broker::attempt_of(
                &msg.delivery.properties,
            )),
            None => {
                let dead = ch
                    .queue_declare(
                        topology.dead_queue().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
                    .unwrap()
                    .message_count();
                if dead == 1 {
                    break;
                }
            }
        }
        let _ = ch.close(200, "crash".into()).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not dead-lettered after deliveries {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limit = bdjobs::adapters::broker::DELIVERY_LIMIT as u32;
    // Delivered once and returned `limit` times, each counted in `x-delivery-count`; the
    // return past the limit dead-letters it.
    assert_eq!(attempts, (1..=limit + 1).collect::<Vec<_>>());
    let listing = c.cli(&["dlq", "list"]);
    assert!(listing.contains(&ids[0]), "{listing}");

    // The job made no progress: the projector's reaper fails it.
    c.spawn("projector", &[("BDJOBS_STUCK_AFTER_SECS", "2".into())]);
    c.wait_all(&ids, Duration::from_secs(30)).await;
    let client = c.res.pool.get().await.unwrap();
    let facts = job_facts(&client, &ids, c.res.assets.path()).await;
    let f = &facts[&ids[0]];
    assert_eq!(f.status, "failed", "{f:?}");
    assert_eq!(
        (f.created_events, f.started_events, f.terminal_events),
        (1, 0, 1),
        "{f:?}"
    );

    // Redriven, the command reaches a worker, which skips the finished job; all drains.
    c.spawn("worker", &[]);
    c.cli(&["dlq", "redrive"]);
    let redriven = Instant::now();
    while !c.logs().contains("job already finished") {
        assert!(
            redriven.elapsed() < Duration::from_secs(30),
            "no worker skipped the redriven command\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let facts = job_facts(&client, &ids, c.res.assets.path()).await;
    assert_eq!(facts[&ids[0]].started_events, 0, "the job never ran");
    println!(
        "fault=consumer_crash_every_delivery jobs=1 deliveries={} dead_lettered=1 status=failed",
        attempts.len()
    );
    assert_drained(
        &client,
        || queue_depths(Command::new("rabbitmqctl"), &c.res.config.namespace),
        3,
        || c.logs(),
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_while_projectors_write_loses_and_doubles_nothing() {
    let mut c = Cluster::new("f_replay").await;
    c.api().await;
    c.spawn("worker", &[]);
    c.spawn("worker", &[]);
    c.spawn("projector", &[]);
    c.spawn("projector", &[]);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    for i in 40..50 {
        ids.push(c.submit(i, &slow_job(i)).await);
    }
    // `bdjobs replay` rebuilds every view while jobs run and new ones arrive.
    let in_flight = c.unfinished(&ids).await;
    let replay_started = Instant::now();
    let mut replay = c
        .command(&["replay"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = 50;
    let status = loop {
        if let Some(status) = replay.try_wait().unwrap() {
            break status;
        }
        ids.push(c.submit(i, &quick_job(i)).await);
        i += 1;
        assert!(
            replay_started.elapsed() < Duration::from_secs(120),
            "the replay did not end"
        );
    };
    let out = replay.wait_with_output().unwrap();
    assert!(
        status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = i - 50;
    for i in i..i + 20 {
        ids.push(c.submit(i, &quick_job(i)).await);
    }
    c.wait_all(&ids, Duration::from_secs(120)).await;
    println!(
        "replay: {during} jobs submitted while it ran {} ms",
        replay_started.elapsed().as_millis()
    );
    c.assert_views_are_folds(&ids).await;
    // A replay runs no job: one run each.
    c.audit(&ids, 1)
        .await
        .report("replay_during_writes", Some(in_flight), Duration::ZERO);
}
