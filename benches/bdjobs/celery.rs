//! The Celery baseline of the `cpu` bench: the same small job done the way a Python shop would,
//! as issue 18 describes it: a Celery worker with the prefork pool (concurrency 2) and
//! `acks_late`, publishes confirmed (`confirm_publish`), the database result backend
//! (SQLAlchemy on the bench's Postgres, its own database), three progress updates a task
//! (`update_state`) and the result stored. The task verifies nothing (it marks the address
//! valid), which favours Celery. Installed from PyPI into `target/celery-venv` the first time.

use anyhow::Context;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Pinned so that the baseline stays the same between runs.
const PACKAGES: [&str; 3] = [
    "celery==5.7.0",
    "psycopg2-binary==2.9.13",
    "sqlalchemy==2.1.9",
];

const TASKS_PY: &str = r#"
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
app.conf.update(
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(bind=True)
def verify(self, contact):
    stages = ("email_verify", "deliverable_finalize", "store")
    for i, stage in enumerate(stages):
        self.update_state(state="PROGRESS", meta={"stage": stage, "percent": 33 * (i + 1)})
    return {"contacts": [dict(contact, email_status="valid")], "summary": {"verified": 1}}
"#;

/// Submits `warm` tasks and waits for them, prints `ready`, waits for `go` on stdin, submits
/// `n` tasks from `clients` threads, waits until the result table shows them all, prints
/// `done SECONDS POLLS`, and stays until its stdin says more (or closes).
const CLIENT_PY: &str = r#"
import os, sys, threading, time
import psycopg2
from tasks import verify

n, clients, warm = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = psycopg2.connect(os.environ["BENCH_DSN"])
conn.autocommit = True
cur = conn.cursor()

def contact(i):
    return {"first_name": "Hanna", "last_name": "Vogel", "email": "hvogel@lumen.example",
            "company_domain": "lumen.example", "n": i}

polls = 0

def done():
    global polls
    polls += 1
    try:
        cur.execute("SELECT /* bench-poll */ count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
        return cur.fetchone()[0]
    except psycopg2.Error:
        return 0

def run(start, count, total):
    def submit(lo, hi):
        try:
            for i in range(lo, hi):
                verify.delay(contact(i))
        except BaseException as e:
            print("error %r" % e, flush=True)
            os._exit(1)
    bounds = [start + count * k // clients for k in range(clients + 1)]
    threads = [threading.Thread(target=submit, args=(bounds[k], bounds[k + 1])) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while done() < total:
        time.sleep(0.02)

run(0, warm, warm)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
polls = 0
run(warm, n, warm + n)
print("done %.6f %d" % (time.monotonic() - t0, polls), flush=True)
# Alive until the bench has read this process's CPU time.
sys.stdin.readline()
"#;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

/// The venv's folder, made and filled the first time (a minute or so, from PyPI).
pub async fn venv() -> anyhow::Result<PathBuf> {
    let venv = target_dir().join("celery-venv");
    let marker = venv.join(format!(".installed-{}", PACKAGES.join(",")));
    if marker.exists() {
        return Ok(venv);
    }
    eprintln!(
        "   installing {} into {}...",
        PACKAGES.join(" "),
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .await
        .context("python3 -m venv (python3 with venv is needed for the Celery baseline)")?;
    anyhow::ensure!(status.success(), "python3 -m venv failed");
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PACKAGES)
        .status()
        .await
        .context("pip install")?;
    anyhow::ensure!(
        status.success(),
        "pip install {} failed",
        PACKAGES.join(" ")
    );
    std::fs::write(&marker, "")?;
    Ok(venv)
}

/// The worker and client scripts, written beside the venv.
pub fn scripts() -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("celery-bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tasks.py"), TASKS_PY)?;
    std::fs::write(dir.join("client.py"), CLIENT_PY)?;
    Ok(dir)
}

pub struct Settings<'a> {
    pub broker: &'a str,
    /// `postgresql://…/db`, for SQLAlchemy (`db+` is added) and psycopg2.
    pub database: &'a str,
}

fn envs(s: &Settings<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("BENCH_BROKER", s.broker.to_owned()),
        // SQLAlchemy 2.1 takes postgresql:// for psycopg 3; the pinned driver is psycopg2.
        (
            "BENCH_BACKEND",
            format!(
                "db+{}",
                s.database
                    .replacen("postgresql://", "postgresql+psycopg2://", 1)
            ),
        ),
        ("BENCH_DSN", s.database.to_owned()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
    ]
}

/// `celery worker` with the prefork pool, two processes.
pub fn worker(
    venv: &std::path::Path,
    dir: &std::path::Path,
    s: &Settings<'_>,
) -> anyhow::Result<Child> {
    Command::new(venv.join("bin/celery"))
        .args([
            "-A",
            "tasks",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
        ])
        .current_dir(dir)
        .envs(envs(s))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group, so that stopping it stops the pool's children too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting the Celery worker")
}

/// The load generator, started and warmed up: [`Client::go`] runs the measured phase.
pub struct Client {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Client {
    pub async fn start(
        venv: &std::path::Path,
        dir: &std::path::Path,
        s: &Settings<'_>,
        jobs: usize,
        clients: usize,
        warm: usize,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(venv.join("bin/python"))
            .arg("client.py")
            .args([jobs.to_string(), clients.to_string(), warm.to_string()])
            .current_dir(dir)
            .envs(envs(s))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the Celery client")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(180), lines.next_line())
            .await
            .context("the Celery warm-up took longer than 3 minutes")??;
        anyhow::ensure!(line.as_deref() == Some("ready"), "Celery client: {line:?}");
        Ok(Self { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Runs the measured phase; returns its wall time as the client measured it, and how many
    /// times it read the result table.
    pub async fn go(&mut self) -> anyhow::Result<(std::time::Duration, usize)> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        let line =
            tokio::time::timeout(std::time::Duration::from_secs(1200), self.lines.next_line())
                .await
                .context("the Celery run took longer than 20 minutes")??
                .context("the Celery client ended without an answer")?;
        let (secs, polls) = line
            .strip_prefix("done ")
            .and_then(|s| s.split_once(' '))
            .with_context(|| format!("Celery client: {line}"))?;
        Ok((
            std::time::Duration::from_secs_f64(secs.parse()?),
            polls.parse()?,
        ))
    }
}

/// Stops the worker and its pool (its process group): warm shutdown, then SIGKILL after 20 s.
pub async fn stop(mut worker: Child) {
    let Some(pid) = worker.id() else { return };
    let group = format!("-{pid}");
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .status()
        .await;
    if tokio::time::timeout(std::time::Duration::from_secs(20), worker.wait())
        .await
        .is_err()
    {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .await;
        let _ = worker.wait().await;
    }
}
