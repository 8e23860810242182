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

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion within `limit`, killing it if it takes longer.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            return if status.success() {
                Ok(text)
            } else {
                Err(format!(
                    "{cmd:?} failed: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} took longer than {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is still a process whose command line mentions `program` (a stale pid file
/// may name a pid the system has since given to someone else).
fn runs(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
}

fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

// ---- RabbitMQ ---------------------------------------------------------------------------------

struct RabbitNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

/// Three RabbitMQ nodes clustered on loopback. Dropping it stops them and removes their folders.
struct Rabbit {
    // Holds the shared Erlang cookie ($HOME/.erlang.cookie) and every node's folder.
    home: tempfile::TempDir,
    nodes: Vec<RabbitNode>,
}

impl Rabbit {
    fn start(count: usize) -> Self {
        let home = tempfile::Builder::new()
            .prefix("bdjt-rabbit")
            .tempdir()
            .unwrap();
        let cookie = home.path().join(".erlang.cookie");
        let secret = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        std::fs::write(&cookie, secret).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let mut rabbit = Rabbit {
            nodes: (1..=count)
                .map(|i| RabbitNode {
                    name: format!("bdjt{i}_{tag}@localhost"),
                    port: free_port(),
                    dist_port: free_port(),
                    dir: home.path().join(format!("n{i}")),
                    server: None,
                })
                .collect(),
            home,
        };
        for i in 0..count {
            let node = &rabbit.nodes[i];
            std::fs::create_dir_all(&node.dir).unwrap();
            std::fs::write(
                node.dir.join("rabbitmq.conf"),
                format!("listeners.tcp.1 = 127.0.0.1:{}\n", node.port),
            )
            .unwrap();
            // No plugins: the management plugin would want the default broker's port 15672.
            std::fs::write(node.dir.join("enabled_plugins"), "[].\n").unwrap();
            // Not the machine's /etc/rabbitmq/rabbitmq-env.conf, which names the default node.
            std::fs::write(node.dir.join("rabbitmq-env.conf"), "").unwrap();
            rabbit.spawn(i);
        }
        for i in 0..count {
            rabbit.await_node(i);
        }
        for i in 1..count {
            let first = rabbit.nodes[0].name.clone();
            rabbit.ctl(i, &["stop_app"]).unwrap();
            rabbit.ctl(i, &["join_cluster", &first]).unwrap();
            rabbit.ctl(i, &["start_app"]).unwrap();
        }
        rabbit.await_running(count);
        rabbit
    }

    fn spawn(&mut self, i: usize) {
        let home = self.home.path().to_owned();
        let node = &mut self.nodes[i];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(node.dir.join("server.log"))
            .unwrap();
        let child = Command::new(format!("{RABBIT_BIN}/rabbitmq-server"))
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", node.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server");
        node.server = Some(child);
    }

    fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        self.ctl_on(&self.nodes[i].name, args)
    }

    fn ctl_on(&self, node: &str, args: &[&str]) -> Result<String, String> {
        run_bounded(
            Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
                .env("HOME", self.home.path())
                .args(["-n", node])
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// Waits for node `i`'s pid file and then for its broker to be running.
    fn await_node(&self, i: usize) {
        let pid = self.nodes[i].dir.join("pid");
        self.ctl(i, &["wait", pid.to_str().unwrap(), "--timeout", "90"])
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(i)));
    }

    fn await_running(&self, count: usize) {
        let started = Instant::now();
        loop {
            if let Ok(out) = self.ctl(0, &["cluster_status", "--formatter", "json"]) {
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                if v["running_nodes"].as_array().map(Vec::len) == Some(count) {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the cluster never had {count} running nodes"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `AMQP_URL` for every node.
    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which node leads `queue`, asked of a running node.
    fn leader(&self, queue: &str, ask: usize) -> usize {
        let started = Instant::now();
        loop {
            if let Ok(out) = self.ctl(
                ask,
                &["list_queues", "name", "leader", "--formatter", "json"],
            ) {
                let rows: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                let leader = rows.as_array().into_iter().flatten().find_map(|r| {
                    (r["name"] == queue).then(|| r["leader"].as_str().unwrap_or("").to_owned())
                });
                if let Some(i) = leader.and_then(|l| self.nodes.iter().position(|n| n.name == l)) {
                    return i;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no leader found for {queue}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops node `i` (the whole Erlang node, as a host going down would).
    fn stop(&mut self, i: usize) {
        self.ctl(i, &["stop"]).unwrap();
        if let Some(mut child) = self.nodes[i].server.take() {
            let _ = child.wait();
        }
    }

    /// Starts node `i` again from its data; it rejoins the cluster by itself.
    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.await_node(i);
        self.await_running(self.nodes.len());
    }

    /// Ready and unacknowledged messages of every queue of `namespace`.
    fn queue_depths(&self, namespace: &str, ask: usize) -> Vec<(String, u64)> {
        let out = self
            .ctl(
                ask,
                &["list_queues", "name", "messages", "--formatter", "json"],
            )
            .unwrap();
        let rows: Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{namespace}.")))
            })
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["messages"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].server.is_none() {
                continue;
            }
            let _ = run_bounded(
                Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
                    .env("HOME", self.home.path())
                    .args(["-n", &self.nodes[i].name, "stop"]),
                Duration::from_secs(20),
            );
            if let Some(pid) = pid_in(&self.nodes[i].dir.join("pid")) {
                if runs(pid, "beam") {
                    kill9(pid);
                }
            }
            if let Some(mut child) = self.nodes[i].server.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---- Postgres ---------------------------------------------------------------------------------

/// The uid of the `postgres` account: the server refuses to run as root.
fn postgres_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    cmd
}

struct PgNode {
    data: PathBuf,
    port: u16,
}

/// A primary and a synchronous streaming standby on loopback. Dropping it stops both and
/// removes their folders.
struct Pg {
    dir: tempfile::TempDir,
    primary: PgNode,
    standby: PgNode,
}

impl Pg {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bdjt-pg")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(postgres_uid()), None).unwrap();
        let pg = Pg {
            primary: PgNode {
                data: dir.path().join("primary"),
                port: free_port(),
            },
            standby: PgNode {
                data: dir.path().join("standby"),
                port: free_port(),
            },
            dir,
        };
        run_bounded(
            as_postgres("initdb").args([
                "-D",
                pg.primary.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
        let socket = pg.dir.path().display();
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{socket}'\n\
             port = {}\nwal_level = replica\nmax_wal_senders = 4\nmax_connections = 100\n\
             shared_buffers = 32MB\n\
             # An acknowledged commit is on the standby too, so it survives the primary's loss.\n\
             synchronous_standby_names = '*'\nsynchronous_commit = on\n\
             wal_receiver_status_interval = 1s\n",
            pg.primary.port
        );
        append(&pg.primary.data.join("postgresql.conf"), &settings);
        pg.pg_ctl(&pg.primary, "start");
        run_bounded(
            as_postgres("pg_basebackup").args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                pg.standby.data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
        // Once promoted the standby is a primary without a standby of its own: it must not wait
        // for one on every commit (a failover manager resets this too).
        append(
            &pg.standby.data.join("postgresql.auto.conf"),
            &format!(
                "port = {}\nsynchronous_standby_names = ''\n",
                pg.standby.port
            ),
        );
        pg.pg_ctl(&pg.standby, "start");
        pg.await_sync_standby();
        pg
    }

    fn pg_ctl(&self, node: &PgNode, action: &str) {
        run_bounded(
            as_postgres("pg_ctl").args([
                "-D",
                node.data.to_str().unwrap(),
                "-l",
                node.data.with_extension("log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                action,
            ]),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("pg_ctl {action}: {e}"));
    }

    fn await_sync_standby(&self) {
        let started = Instant::now();
        loop {
            let out = run_bounded(
                Command::new(format!("{PG_BIN}/psql")).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.primary.port.to_string(),
                    "-U",
                    "postgres",
                    "-Atc",
                    "SELECT sync_state FROM pg_stat_replication",
                ]),
                Duration::from_secs(10),
            );
            if out.is_ok_and(|o| o.trim() == "sync") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the standby never became synchronous"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `DATABASE_URL` naming both hosts, the primary first.
    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    /// SIGKILLs the primary's postmaster: its backends notice and exit, dropping every client.
    fn kill_primary(&self) {
        let pid = pid_in(&self.primary.data.join("postmaster.pid")).expect("primary pid");
        kill9(pid);
    }

    fn promote_standby(&self) {
        self.pg_ctl(&self.standby, "promote");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        for node in [&self.primary, &self.standby] {
            if let Some(pid) = pid_in(&node.data.join("postmaster.pid")) {
                // Immediate: the backends exit with the postmaster, nothing is left behind.
                let _ = run_bounded(
                    as_postgres("pg_ctl").args([
                        "-D",
                        node.data.to_str().unwrap(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]),
                    Duration::from_secs(30),
                );
                if runs(pid, "postgres") {
                    kill9(pid);
                }
            }
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::File::options().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

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

/// A job's state in the database, as the audit reads it.
struct JobFacts {
    status: String,
    delivered: Option<String>,
    created_events: i64,
    started_events: i64,
    completed_events: i64,
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
    let pg = Pg::start();
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
    let uuids: Vec<uuid::Uuid> = all.iter().map(|i| i.parse().unwrap()).collect();
    let mut facts: HashMap<String, JobFacts> = HashMap::new();
    for r in db
        .query(
            "SELECT j.job_id::text, j.status, j.view->'result'->'summary'->>'delivered_contacts',
                    count(*) FILTER (WHERE e.type = 'job.created'),
                    count(*) FILTER (WHERE e.type = 'job.started'),
                    count(*) FILTER (WHERE e.type = 'job.completed')
             FROM jobs j LEFT JOIN events e ON e.job_id = j.job_id
             WHERE j.job_id = ANY($1) GROUP BY j.job_id",
            &[&uuids],
        )
        .await
        .unwrap()
    {
        facts.insert(
            r.get(0),
            JobFacts {
                status: r.get(1),
                delivered: r.get(2),
                created_events: r.get(3),
                started_events: r.get(4),
                completed_events: r.get(5),
            },
        );
    }
    let mut whole_assets: HashMap<String, usize> = HashMap::new();
    for r in db
        .query(
            "SELECT job_id::text, storage_key, sha256, size_bytes FROM assets WHERE job_id = ANY($1)",
            &[&uuids],
        )
        .await
        .unwrap()
    {
        let (job, storage_key, sha, size): (String, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let bytes = std::fs::read(assets.path().join(&storage_key)).unwrap_or_default();
        if bytes.len() as i64 == size && hex::encode(Sha256::digest(&bytes)) == sha {
            *whole_assets.entry(job).or_default() += 1;
        }
    }
    // Is a job lost (not completed, or its view short of its contacts) or doubled (created
    // twice, or its assets not those stored)? How many extra runs did it take?
    let judge = |id: &String| -> (bool, bool, i64) {
        match facts.get(id) {
            None => (true, false, 0),
            Some(f) => {
                let lost = f.status != "completed" || f.delivered.as_deref() != Some("2");
                let duplicated = f.created_events != 1
                    || f.completed_events < 1
                    || whole_assets.get(id).copied().unwrap_or(0) != 2;
                (lost, duplicated, (f.started_events - 1).max(0))
            }
        }
    };
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
    let mut failures = Vec::new();
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
        let (mut lost, mut duplicated, mut redundant) = (0, 0, 0);
        for id in &jobs {
            let (l, dup, extra) = judge(id);
            lost += l as usize;
            duplicated += dup as usize;
            redundant += extra;
        }
        println!(
            "fault={name} jobs={} in_flight={in_flight} lost={lost} duplicated={duplicated} redundant_runs={redundant} recovery_ms={}",
            jobs.len(),
            recovery.as_millis()
        );
        // A fault that hit no unfinished job would prove nothing.
        if (lost, duplicated) != (0, 0) || in_flight == 0 {
            failures.push(name);
        }
    }
    let (lost, duplicated): (usize, usize) = all.iter().fold((0, 0), |(l, dup), id| {
        let (a, b, _) = judge(id);
        (l + a as usize, dup + b as usize)
    });
    println!(
        "cluster: {} jobs accepted, lost={lost} duplicated={duplicated}, {} s in all",
        all.len(),
        test_started.elapsed().as_secs()
    );
    assert!(
        failures.is_empty(),
        "faults that lost or doubled jobs, or hit no work in flight: {failures:?}"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(
        total_rows as usize,
        all.len(),
        "the read model holds a job no one accepted"
    );
    // The outbox and the queues drain: a row whose delete was lost to the failover is
    // published again by the relay (its job is finished, so a worker skips the command).
    let alive = (0..3).find(|i| rabbit.nodes[*i].server.is_some()).unwrap();
    let started = Instant::now();
    loop {
        let outbox: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        let depths = tokio::task::block_in_place(|| rabbit.queue_depths(namespace, alive));
        assert_eq!(depths.len(), 3, "{depths:?}");
        if outbox == 0 && depths.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "left after a minute: {outbox} outbox rows, messages {depths:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(d);
    drop(rabbit);
}
