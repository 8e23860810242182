//! What one job costs every process it touches (issue 18): `bdjobs all` runs as its own
//! process (the binary cargo built beside this bench) against a RabbitMQ node and a Postgres
//! cluster the bench starts for itself (the shared ones serve other people too, so their CPU
//! would not be ours); 8 client tasks POST N small `verify_existing_emails` jobs of one contact
//! and completion is read from the database. utime + stime are read from /proc before and after
//! the measured phase for: the bdjobs process; the Postgres cluster (postmaster and every
//! backend, those that exited too); RabbitMQ's `beam.smp` and its helpers; the kernel's
//! writeback and workqueue threads (`kworker`, `jbd2`: machine-wide, so other people's I/O is in
//! there too); and the load generator. Statements and transactions per job come from
//! `pg_stat_statements` and `pg_stat_database`.
//!
//! Baseline, same run, same broker and database: Celery (see `celery.rs`) doing the same jobs
//! submitted by 8 threads, measured the same way. `BDJOBS_BENCH_BEFORE=PATH` also measures
//! another bdjobs binary (a copy of the one before a change), first, for a before/after pair.

use crate::celery;
use crate::env::{self, TENANT};
use crate::nodes::{Pg, Rabbit};
use crate::procs::{self, Snapshot};
use crate::report::{ms, num, Report, Row};
use crate::Scale;
use anyhow::Context;
use bdjobs::adapters::db;
use bdjobs::domain::ids::TenantId;
use serde_json::json;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

pub const CLIENTS: usize = 8;
const WARM: usize = 40;

/// CPU per job of each process, in ms.
#[derive(Default, Clone, Debug)]
struct Costs {
    system: f64,
    postgres: f64,
    rabbit: f64,
    kernel: f64,
    client: f64,
    /// Interrupts and softirqs, machine-wide (not in the total: no process is charged).
    irq: f64,
    /// The machine's busy time not in the rows above (other people's work, mostly).
    rest: f64,
}

impl Costs {
    fn total(&self) -> f64 {
        self.system + self.postgres + self.rabbit + self.kernel + self.client
    }
}

struct Pids {
    system: u32,
    postgres: u32,
    rabbit: u32,
    client: u32,
    /// Whether the client's children are its own load (Celery's client) or the processes the
    /// bench started (bdjobs, the RabbitMQ node), counted in their own rows.
    client_tree: bool,
}

const KERNEL: [&str; 2] = ["kworker", "jbd2"];

fn costs(before: &Snapshot, after: &Snapshot, pids: &Pids, jobs: usize) -> Costs {
    let tick_ms = 1000.0 / procs::ticks_per_sec();
    let per_job = |ticks: u64| ticks as f64 * tick_ms / jobs as f64;
    let d = |pid: u32| after.tree(pid).saturating_sub(before.tree(pid));
    let c = Costs {
        system: per_job(d(pids.system)),
        postgres: per_job(d(pids.postgres)),
        rabbit: per_job(d(pids.rabbit)),
        kernel: per_job(procs::named_delta(before, after, &KERNEL)),
        client: per_job(if pids.client_tree {
            d(pids.client)
        } else {
            let own = |s: &Snapshot| s.procs.get(&pids.client).map_or(0, |p| p.own);
            own(after).saturating_sub(own(before))
        }),
        irq: per_job(after.machine_irq.saturating_sub(before.machine_irq)),
        rest: 0.0,
    };
    let busy = per_job(after.machine_busy.saturating_sub(before.machine_busy));
    Costs {
        rest: (busy - c.total() - c.irq).max(0.0),
        ..c
    }
}

/// Statements and transactions in one database between two calls, read from the `postgres`
/// database so that reading them counts nothing.
struct Statements {
    admin: tokio_postgres::Client,
    dbname: String,
    xacts: i64,
}

impl Statements {
    async fn start(pg: &Pg, dbname: &str) -> anyhow::Result<Self> {
        let (admin, conn) =
            tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await?;
        admin
            .execute("SELECT pg_stat_statements_reset()", &[])
            .await?;
        let xacts = Self::xacts(&admin, dbname).await?;
        Ok(Self {
            admin,
            dbname: dbname.to_owned(),
            xacts,
        })
    }

    async fn xacts(admin: &tokio_postgres::Client, dbname: &str) -> anyhow::Result<i64> {
        // The counters are sent to the statistics system at the end of each transaction, at most
        // once a second per backend: give the last ones time to land.
        Ok(admin
            .query_one(
                "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
                &[&dbname],
            )
            .await?
            .get(0))
    }

    /// Statements per job (the top ones printed), transactions per job. `polls` statements (one
    /// transaction each) were the bench's own completion checks and are taken out.
    async fn per_job(&self, jobs: usize, polls: usize) -> anyhow::Result<(f64, f64)> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = self
            .admin
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await;
        let rows = self
            .admin
            .query(
                "SELECT calls::int8, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
                   AND query NOT LIKE '%bench-poll%'
                 ORDER BY calls DESC",
                &[&self.dbname],
            )
            .await?;
        let per = |n: i64| n as f64 / jobs as f64;
        let mut total = 0;
        eprintln!(
            "   statements per job in {} (pg_stat_statements):",
            self.dbname
        );
        for (i, r) in rows.iter().enumerate() {
            let (calls, query): (i64, String) = (r.get(0), r.get(1));
            total += calls;
            if i < 14 {
                let q: String = query.chars().take(110).collect();
                eprintln!("     {:>6.2}  {q}", per(calls));
            }
        }
        let xacts = Self::xacts(&self.admin, &self.dbname).await? - self.xacts - polls as i64;
        Ok((per(total), per(xacts)))
    }
}

/// A one-contact `verify_existing_emails` job.
fn job_body(i: usize) -> serde_json::Value {
    let people = [
        ("Hanna", "Vogel", "hvogel@lumen.example"),
        ("Jonas", "Weber", "jweber@lumen.example"),
        ("Felix", "Braun", "fbraun@lumen.example"),
        ("Emma", "Koch", "ekoch@lumen.example"),
    ];
    let (first, last, email) = people[i % people.len()];
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
        {"first_name": first, "last_name": last, "email": email, "company_domain": "lumen.example"}
    ]}})
}

/// `jobs` POSTs from `CLIENTS` tasks, one after another in each.
async fn submit(http: &reqwest::Client, base: &str, key: &str, jobs: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url, key, next) = (
            http.clone(),
            format!("{base}/api/v1/bd/jobs"),
            key.to_owned(),
            next.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(());
                }
                let resp = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&job_body(i))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 202, "POST job: {}", resp.status());
                resp.bytes().await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("client task")??;
    }
    Ok(())
}

/// Waits until `total` jobs are completed, reading the database every 20 ms; returns how many
/// reads it took.
async fn await_completed(db: &tokio_postgres::Client, total: i64) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let row = db
            .query_one(
                "SELECT /* bench-poll */ count(*) FILTER (WHERE status = 'completed'),
                        count(*) FILTER (WHERE status IN ('failed', 'cancelled'))
                 FROM jobs",
                &[],
            )
            .await?;
        let (done, bad): (i64, i64) = (row.get(0), row.get(1));
        anyhow::ensure!(bad == 0, "{bad} jobs failed or were cancelled");
        if done >= total {
            return Ok(polls);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "{done} of {total} jobs completed after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Run {
    /// The run's asset folder, removed only when the bench ends: deleting thousands of files
    /// makes ext4 slower at allocating inodes for a while (it skips recently freed ones), which
    /// would tax whichever run comes next.
    _assets: Option<tempfile::TempDir>,
    wall: Duration,
    costs: Costs,
    statements: f64,
    xacts: f64,
    p50: f64,
    p99: f64,
}

async fn run_bdjobs(
    pg: &Pg,
    rabbit: &Rabbit,
    jobs: usize,
    exe: &str,
    dbname: &str,
) -> anyhow::Result<Run> {
    let assets = tempfile::Builder::new().prefix("bdjobs-bench-").tempdir()?;
    let mut config = bdjobs::config::Config::from_env();
    config.database_url = pg.url(dbname);
    config.amqp_url = rabbit.url();
    config.namespace = dbname.to_owned();
    let pool = bdjobs::app::migrate(&config).await?;
    bdjobs::cli::import::import_file(
        &pool,
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/directory.jsonl"
        )),
        false,
    )
    .await?;
    let key = db::keys::create_key(&pool, &TenantId::parse(TENANT)?)
        .await?
        .secret;
    let dns = env::stub_dns().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let vars = [
        ("DATABASE_URL", config.database_url.clone()),
        ("AMQP_URL", config.amqp_url.clone()),
        ("BDJOBS_NAMESPACE", config.namespace.clone()),
        ("BDJOBS_LISTEN", format!("127.0.0.1:{port}")),
        (
            "BDJOBS_ASSETS",
            std::env::var("BDJOBS_BENCH_ASSETS")
                .unwrap_or_else(|_| format!("fs://{}", assets.path().display())),
        ),
        ("BDJOBS_DNS_NAMESERVER", dns.addr().to_string()),
        ("BDJOBS_SMTP_PROBE", "off".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
        // One key is all the load: the per-key rate limit would measure itself.
        ("BDJOBS_RATE_LIMIT_PER_SEC", "1000000000".to_owned()),
        ("BDJOBS_RATE_LIMIT_BURST", u32::MAX.to_string()),
    ];
    let mut child = Command::new(exe)
        .arg("all")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {exe} all"))?;
    let http = crate::client::http();
    let started = Instant::now();
    while !matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == 200) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no /healthz within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (watch, conn) =
        tokio_postgres::connect(&config.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    submit(&http, &base, &key, WARM).await.context("warm-up")?;
    await_completed(&watch, WARM as i64).await?;

    let stmts = Statements::start(pg, dbname).await?;
    let t0: chrono::DateTime<chrono::Utc> = watch.query_one("SELECT now()", &[]).await?.get(0);
    let pids = Pids {
        system: child.id().context("bdjobs exited")?,
        postgres: pg.pid().context("postmaster pid")?,
        rabbit: rabbit.pid().context("beam pid")?,
        client: std::process::id(),
        client_tree: false,
    };
    eprintln!("   {jobs} jobs of one contact from {CLIENTS} clients ({exe} all)...");
    let before = Snapshot::take();
    let clock = Instant::now();
    submit(&http, &base, &key, jobs).await?;
    let polls = await_completed(&watch, (WARM + jobs) as i64).await?;
    let wall = clock.elapsed();
    let after = Snapshot::take();
    let costs = costs(&before, &after, &pids, jobs);
    let (statements, xacts) = stmts.per_job(jobs, polls).await?;
    // POST accepted → the projector's commit of the job's last event.
    let lat = watch
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
             FROM (SELECT extract(epoch FROM max(e.recorded_at) - j.created_at)::float8 * 1000 AS d
                   FROM jobs j JOIN events e USING (job_id) WHERE j.created_at >= $1 GROUP BY j.job_id, j.created_at) x",
            &[&t0],
        )
        .await?;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().unwrap_or(0).to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    Ok(Run {
        _assets: Some(assets),
        wall,
        costs,
        statements,
        xacts,
        p50: lat.get(0),
        p99: lat.get(1),
    })
}

async fn run_celery(pg: &Pg, rabbit: &Rabbit, jobs: usize) -> anyhow::Result<Run> {
    let venv = celery::venv().await?;
    let dir = celery::scripts()?;
    let dbname = "celery_cpu";
    db::ensure_database(&pg.url(dbname)).await?;
    let database = format!("postgresql://postgres@127.0.0.1:{}/{dbname}", pg.port);
    let settings = celery::Settings {
        broker: &format!("amqp://guest:guest@127.0.0.1:{}//", rabbit.port),
        database: &database,
    };
    let worker = celery::worker(&venv, &dir, &settings)?;
    let worker_pid = worker.id().context("celery worker exited")?;
    let run = async {
        let mut client = celery::Client::start(&venv, &dir, &settings, jobs, CLIENTS, WARM).await?;
        let stmts = Statements::start(pg, dbname).await?;
        let pids = Pids {
            system: worker_pid,
            postgres: pg.pid().context("postmaster pid")?,
            rabbit: rabbit.pid().context("beam pid")?,
            client: client.pid(),
            client_tree: true,
        };
        eprintln!("   {jobs} tasks from {CLIENTS} threads (Celery, prefork 2)...");
        let before = Snapshot::take();
        let (wall, polls) = client.go().await?;
        let after = Snapshot::take();
        let costs = costs(&before, &after, &pids, jobs);
        drop(client.child.stdin.take());
        let _ = client.child.wait().await;
        let (statements, xacts) = stmts.per_job(jobs, polls).await?;
        Ok::<_, anyhow::Error>(Run {
            _assets: None,
            wall,
            costs,
            statements,
            xacts,
            p50: f64::NAN,
            p99: f64::NAN,
        })
    }
    .await;
    celery::stop(worker).await;
    run
}

fn cost_row(what: &str, ours: f64, celery: f64) -> Row {
    let mut row = Row::new(
        "cpu",
        format!("CPU per job, {what}"),
        format!("{ours:.2} ms"),
    );
    if celery > 0.0 {
        row = row.baseline(format!("Celery: {celery:.2} ms"), ours / celery);
    } else {
        row.baseline = format!("Celery: {celery:.2} ms");
    }
    row
}

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let jobs = scale.n(2000, 200);
    eprintln!("   starting the bench's own Postgres and RabbitMQ...");
    let (pg, rabbit) =
        tokio::task::spawn_blocking(|| Ok::<_, anyhow::Error>((Pg::start()?, Rabbit::start()?)))
            .await??;
    let exe = env!("CARGO_BIN_EXE_bdjobs");
    // Another build of bdjobs (a copy of the binary before a change) measured in the same run,
    // on the same nodes, before this one: the before/after pair of a change.
    let before = match std::env::var("BDJOBS_BENCH_BEFORE") {
        Ok(old) => Some(run_bdjobs(&pg, &rabbit, jobs, &old, "bdjobs_cpu_before").await?),
        Err(_) => None,
    };
    let ours = run_bdjobs(&pg, &rabbit, jobs, exe, "bdjobs_cpu").await?;
    let theirs = run_celery(&pg, &rabbit, jobs).await?;
    let (o, c) = (&ours.costs, &theirs.costs);
    let ours_rate = jobs as f64 / ours.wall.as_secs_f64();
    let theirs_rate = jobs as f64 / theirs.wall.as_secs_f64();
    report.add(
        cost_row(
            &format!("total ({jobs} jobs of one contact, {CLIENTS} clients)"),
            o.total(),
            c.total(),
        )
        .target("≤ 4 ms", o.total() <= 4.0),
    );
    report.add(
        cost_row(
            "bdjobs all (api + worker + projector) / Celery worker (prefork 2)",
            o.system,
            c.system,
        )
        .target("≤ 1 ms", o.system <= 1.0),
    );
    report.add(
        cost_row(
            "Postgres (postmaster and every backend)",
            o.postgres,
            c.postgres,
        )
        .target("≤ 1 ms", o.postgres <= 1.0),
    );
    report.add(cost_row("RabbitMQ (beam.smp)", o.rabbit, c.rabbit));
    report.add(cost_row(
        "kernel threads (kworker, jbd2; machine-wide)",
        o.kernel,
        c.kernel,
    ));
    report.add(cost_row(
        "load generator (bench process / Python client)",
        o.client,
        c.client,
    ));
    report.add(cost_row(
        "interrupts and softirqs (loopback networking; machine-wide, not in the total)",
        o.irq,
        c.irq,
    ));
    report.add(cost_row(
        "rest of the machine (not ours: other people's work)",
        o.rest,
        c.rest,
    ));
    report.add(
        Row::new("cpu", "jobs/s (same load)", num(ours_rate))
            .baseline(
                format!("Celery: {} jobs/s", num(theirs_rate)),
                ours_rate / theirs_rate,
            )
            .target("≥ 4× Celery", ours_rate >= 4.0 * theirs_rate),
    );
    report.add(Row::new(
        "cpu",
        "latency POST accepted → last event committed",
        format!(
            "p50 {} / p99 {}",
            ms(Duration::from_secs_f64(ours.p50 / 1000.0)),
            ms(Duration::from_secs_f64(ours.p99 / 1000.0))
        ),
    ));
    report.add(
        Row::new(
            "cpu",
            "Postgres statements / transactions per job",
            format!("{:.2} / {:.2}", ours.statements, ours.xacts),
        )
        .baseline(
            format!("Celery: {:.2} / {:.2}", theirs.statements, theirs.xacts),
            ours.statements / theirs.statements,
        ),
    );
    if let Some(b) = before {
        let pair = |what: &str, after: f64, before: f64| {
            Row::new(
                "cpu",
                format!("after vs before (BDJOBS_BENCH_BEFORE): {what}"),
                format!("{after:.2} ms"),
            )
            .baseline(format!("before: {before:.2} ms"), after / before)
        };
        let bc = &b.costs;
        report.add(pair("CPU per job, total", o.total(), bc.total()));
        report.add(pair("CPU per job, bdjobs", o.system, bc.system));
        report.add(pair("CPU per job, Postgres", o.postgres, bc.postgres));
        report.add(pair("CPU per job, RabbitMQ", o.rabbit, bc.rabbit));
        report.add(pair("CPU per job, kernel threads", o.kernel, bc.kernel));
        report.add(pair("CPU per job, load generator", o.client, bc.client));
        let before_rate = jobs as f64 / b.wall.as_secs_f64();
        report.add(
            Row::new("cpu", "after vs before: jobs/s", num(ours_rate)).baseline(
                format!("before: {} jobs/s", num(before_rate)),
                ours_rate / before_rate,
            ),
        );
        report.add(
            Row::new(
                "cpu",
                "after vs before: statements / transactions per job",
                format!("{:.2} / {:.2}", ours.statements, ours.xacts),
            )
            .baseline(
                format!("before: {:.2} / {:.2}", b.statements, b.xacts),
                ours.statements / b.statements,
            ),
        );
    }
    drop((pg, rabbit));
    Ok(())
}
