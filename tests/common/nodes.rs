//! Servers a test starts for itself on loopback from the machine's own `rabbitmq-server` and
//! PostgreSQL 15 binaries — RabbitMQ nodes (one, or several clustered) and a Postgres primary
//! with an optional synchronous standby — each with its own ports, node names, data and log
//! folders, stopped and removed by `Drop` even when the test fails. Tests that stop or restart a
//! service use these, never the machine's shared broker and database. Also the per-job audit
//! the fault suites share: what the database and the stored asset bytes say about each job.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion within `limit`, killing it if it takes longer.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
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

pub fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is still a process whose command line mentions `program` (a stale pid file
/// may name a pid the system has since given to someone else).
pub fn runs(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
}

pub fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

// ---- RabbitMQ ---------------------------------------------------------------------------------

pub struct RabbitNode {
    pub name: String,
    pub port: u16,
    pub dist_port: u16,
    pub dir: PathBuf,
    pub server: Option<Child>,
}

/// Three RabbitMQ nodes clustered on loopback. Dropping it stops them and removes their folders.
pub struct Rabbit {
    // Holds the shared Erlang cookie ($HOME/.erlang.cookie) and every node's folder.
    pub home: tempfile::TempDir,
    pub nodes: Vec<RabbitNode>,
}

impl Rabbit {
    pub fn start(count: usize) -> Self {
        Self::start_with(count, "")
    }

    /// `count` clustered nodes whose rabbitmq.conf also holds `extra` (lines of its own format).
    pub fn start_with(count: usize, extra: &str) -> Self {
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
                format!("listeners.tcp.1 = 127.0.0.1:{}\n{extra}", node.port),
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

    pub fn spawn(&mut self, i: usize) {
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

    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        self.ctl_on(&self.nodes[i].name, args)
    }

    pub fn ctl_on(&self, node: &str, args: &[&str]) -> Result<String, String> {
        run_bounded(
            Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
                .env("HOME", self.home.path())
                .args(["-n", node])
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// Waits for node `i`'s pid file and then for its broker to be running. On a loaded machine
    /// (other suites building and starting nodes) an Erlang node can take minutes to boot, and
    /// `rabbitmqctl wait` may give up early (`rabbit_is_not_running` while the node is still
    /// booting): ask again until three minutes have passed.
    pub fn await_node(&self, i: usize) {
        let pid = self.nodes[i].dir.join("pid");
        let started = Instant::now();
        loop {
            match self.ctl(i, &["wait", pid.to_str().unwrap(), "--timeout", "50"]) {
                Ok(_) => return,
                Err(e) if started.elapsed() < Duration::from_secs(180) => {
                    eprintln!("node {i} not up yet ({}); asking again", e.trim());
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("{e}\n{}", self.log_tail(i)),
            }
        }
    }

    pub fn await_running(&self, count: usize) {
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

    pub fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `AMQP_URL` for every node.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which node leads `queue`, asked of a running node.
    pub fn leader(&self, queue: &str, ask: usize) -> usize {
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
    pub fn stop(&mut self, i: usize) {
        self.ctl(i, &["stop"]).unwrap();
        if let Some(mut child) = self.nodes[i].server.take() {
            let _ = child.wait();
        }
    }

    /// Starts node `i` again from its data; it rejoins the cluster by itself.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.await_node(i);
        self.await_running(self.nodes.len());
    }

    /// Ready and unacknowledged messages of every queue of `namespace`.
    pub fn queue_depths(&self, namespace: &str, ask: usize) -> Vec<(String, u64)> {
        let mut cmd = Command::new(format!("{RABBIT_BIN}/rabbitmqctl"));
        cmd.env("HOME", self.home.path())
            .args(["-n", &self.nodes[ask].name]);
        queue_depths(cmd, namespace)
    }

    /// `AMQP_URL` of node `i` alone.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }
}

/// Ready and unacknowledged messages of every queue of `namespace`, as `rabbitmqctl` (the
/// command given, pointed at a node) lists them.
pub fn queue_depths(mut rabbitmqctl: Command, namespace: &str) -> Vec<(String, u64)> {
    let out = run_bounded(
        rabbitmqctl.args(["list_queues", "name", "messages", "--formatter", "json"]),
        Duration::from_secs(60),
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
pub fn postgres_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    cmd
}

pub struct PgNode {
    pub data: PathBuf,
    pub port: u16,
}

/// A primary, and with `Pg::start(true)` a synchronous streaming standby, on loopback.
/// Dropping it stops both and removes their folders.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub primary: PgNode,
    pub standby: PgNode,
    with_standby: bool,
}

impl Pg {
    pub fn start(with_standby: bool) -> Self {
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
            with_standby,
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
             shared_buffers = 32MB\n",
            pg.primary.port
        );
        append(&pg.primary.data.join("postgresql.conf"), &settings);
        if !with_standby {
            pg.pg_ctl(&pg.primary, "start");
            return pg;
        }
        append(
            &pg.primary.data.join("postgresql.conf"),
            "# An acknowledged commit is on the standby too, so it survives the primary's loss.\n\
             synchronous_standby_names = '*'\nsynchronous_commit = on\n\
             wal_receiver_status_interval = 1s\n",
        );
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

    pub fn pg_ctl(&self, node: &PgNode, action: &str) {
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

    pub fn await_sync_standby(&self) {
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

    /// `DATABASE_URL` of database `db`: both hosts, the primary first, when there is a standby.
    pub fn url(&self, db: &str) -> String {
        if !self.with_standby {
            return format!("{}/{db}", self.base());
        }
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    /// The primary's URL without a database.
    pub fn base(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.primary.port)
    }

    /// Restarts the primary the way an operator's restart does (`-m fast`: clients are
    /// disconnected, the data stays).
    pub fn restart_primary(&self) {
        run_bounded(
            as_postgres("pg_ctl").args([
                "-D",
                self.primary.data.to_str().unwrap(),
                "-l",
                self.primary.data.with_extension("log").to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ]),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("pg_ctl restart: {e}"));
    }

    /// SIGKILLs the primary's postmaster: its backends notice and exit, dropping every client.
    pub fn kill_primary(&self) {
        let pid = pid_in(&self.primary.data.join("postmaster.pid")).expect("primary pid");
        kill9(pid);
    }

    pub fn promote_standby(&self) {
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

pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::File::options().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
