//! A RabbitMQ node and a Postgres cluster of the bench's own, on loopback ports, from the
//! machine's `rabbitmq-server` and PostgreSQL 15 binaries (as `tests/common/nodes.rs` starts
//! them). The `cpu` bench needs them: the machine's shared broker and database also serve other
//! people's tests, so their CPU time would not be this run's. Both are stopped and their folders
//! removed on drop, after a panic or ctrl-c too.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            anyhow::ensure!(
                status.success(),
                "{cmd:?} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(text);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// One RabbitMQ node.
pub struct Rabbit {
    home: tempfile::TempDir,
    name: String,
    pub port: u16,
    server: Option<Child>,
}

impl Rabbit {
    pub fn start() -> anyhow::Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("bdjobs-bench-rabbit")
            .tempdir()?;
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(
            &cookie,
            uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        )?;
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let (port, dist_port) = (free_port()?, free_port()?);
        let dir = home.path().join("node");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )?;
        // No plugins: the management plugin would want the shared broker's port 15672.
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let name = format!("bdjobs_bench_{tag}@localhost");
        let server = Command::new(format!("{RABBIT_BIN}/rabbitmq-server"))
            .env("HOME", home.path())
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("rabbitmq-server")?;
        let rabbit = Rabbit {
            home,
            name,
            port,
            server: Some(server),
        };
        let pid = rabbit.dir().join("pid");
        rabbit
            .ctl(&["wait", pid.to_str().expect("utf-8"), "--timeout", "90"])
            .context("the bench's RabbitMQ node did not start")?;
        Ok(rabbit)
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join("node")
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_bounded(
            Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
                .env("HOME", self.home.path())
                .args(["-n", &self.name])
                .args(args),
            Duration::from_secs(100),
        )
    }

    /// The Erlang VM's pid (`beam.smp`).
    pub fn pid(&self) -> Option<u32> {
        pid_in(&self.dir().join("pid"))
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(pid) = self.pid() {
            if runs(pid, "beam") {
                kill9(pid);
            }
        }
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn runs(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    cmd
}

/// One Postgres cluster with the shared one's durability settings (fsync, synchronous commit)
/// and `pg_stat_statements` loaded, so that the bench can count statements per job.
pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Pg {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bdjobs-bench-pg")
            .tempdir()?;
        let uid: u32 =
            String::from_utf8_lossy(&Command::new("id").args(["-u", "postgres"]).output()?.stdout)
                .trim()
                .parse()
                .context("no postgres account (the server refuses to run as root)")?;
        std::os::unix::fs::chown(dir.path(), Some(uid), None)?;
        let pg = Pg {
            port: free_port()?,
            dir,
        };
        run_bounded(
            as_postgres("initdb").args([
                "-D",
                pg.data().to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]),
            Duration::from_secs(120),
        )?;
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nport = {}\n\
             max_connections = 100\nshared_buffers = 128MB\n\
             shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
            pg.dir.path().display(),
            pg.port
        );
        use std::io::Write;
        std::fs::File::options()
            .append(true)
            .open(pg.data().join("postgresql.conf"))?
            .write_all(settings.as_bytes())?;
        run_bounded(
            as_postgres("pg_ctl").args([
                "-D",
                pg.data().to_str().expect("utf-8"),
                "-l",
                pg.dir.path().join("log").to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
                "start",
            ]),
            Duration::from_secs(90),
        )?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> Option<u32> {
        pid_in(&self.data().join("postmaster.pid"))
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = run_bounded(
                as_postgres("pg_ctl").args([
                    "-D",
                    self.data().to_str().expect("utf-8"),
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
