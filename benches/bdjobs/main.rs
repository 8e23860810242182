//! The performance harness: `cargo bench --bench bdjobs [-- --quick] [NAME...]`.
//!
//! Absolute times drift on shared machines, so every benchmark measures its baseline in the
//! same run and reports the ratio. Each benchmark makes its own database, broker namespace and
//! asset folder (unique names, on loopback), and everything is removed at the end: after an
//! error, a panic or ctrl-c too. Timings are printed, never asserted. BENCHMARKS.md explains the
//! figures and holds the latest table.

mod broker_raw;
mod celery;
mod client;
mod cpu;
mod download;
mod e2e;
mod env;
mod fixtures;
mod nodes;
mod procs;
mod projector;
mod replay;
mod report;
mod result;
mod rss;
mod smtp;

use report::Report;
use std::time::Instant;

/// How big a run is: `--quick` is a smoke run of a minute or two; the default is the run whose
/// figures BENCHMARKS.md reports. `BDJOBS_BENCH_SCALE` multiplies every count.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub factor: f64,
    pub quick: bool,
}

impl Scale {
    /// `full` scaled, never below `min`.
    pub fn n(&self, full: usize, min: usize) -> usize {
        let f = if self.quick {
            self.factor / 10.0
        } else {
            self.factor
        };
        ((full as f64 * f).round() as usize).max(min)
    }
}

const BENCHES: [(&str, &str); 8] = [
    (
        "cpu",
        "CPU per job of every process (bdjobs, Postgres, RabbitMQ, kernel, client), vs Celery",
    ),
    (
        "e2e",
        "jobs/s and latency through the API, vs the broker's raw limit",
    ),
    (
        "projector",
        "events/s into the read model, vs raw Postgres upserts",
    ),
    (
        "result",
        "GET /result req/s and p99, vs a static handler on the same server",
    ),
    (
        "download",
        "16 MiB asset download MB/s, vs reading the object directly",
    ),
    (
        "replay",
        "events/s folding 1,000,000 events, in memory and from the events table",
    ),
    (
        "rss",
        "peak RSS of each role as its own process, under load",
    ),
    (
        "smtp",
        "verification of 5,000 addresses against 20 loaded mail hosts, vs a perfect polite verifier",
    ),
];

async fn run_one(name: &str, scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    match name {
        "cpu" => cpu::run(scale, report).await,
        "e2e" => e2e::run(scale, report).await,
        "projector" => projector::run(scale, report).await,
        "result" => result::run(scale, report).await,
        "download" => download::run(scale, report).await,
        "replay" => replay::run(scale, report).await,
        "rss" => rss::run(scale, report).await,
        "smtp" => smtp::run(scale, report).await,
        other => anyhow::bail!("no benchmark named {other}"),
    }
}

fn usage() -> String {
    let mut s = String::from(
        "usage: cargo bench --bench bdjobs -- [--quick] [NAME...]\n\n\
         Runs every benchmark, or those named. BDJOBS_BENCH_SCALE=F multiplies every count;\n\
         BDJOBS_* settings (e.g. BDJOBS_WORKER_CONCURRENCY) configure the roles as in production.\n\n\
         benchmarks:\n",
    );
    for (name, what) in BENCHES {
        s.push_str(&format!("  {name:<10} {what}\n"));
    }
    s
}

fn main() -> std::process::ExitCode {
    let mut quick = false;
    let mut via_cargo_bench = false;
    let mut names = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => via_cargo_bench = true,
            "--quick" => quick = true,
            "-h" | "--help" => {
                print!("{}", usage());
                return std::process::ExitCode::SUCCESS;
            }
            a if a.starts_with('-') => {
                eprintln!("unknown option {a}\n\n{}", usage());
                return std::process::ExitCode::from(2);
            }
            a => names.push(a.to_owned()),
        }
    }
    if !via_cargo_bench && !quick && names.is_empty() {
        // `cargo test --benches` (or --all-targets) runs this binary bare: a full run would take
        // many minutes and measure a debug build. Only cargo bench, or explicit arguments, run it.
        eprintln!("benchmarks run with `cargo bench --bench bdjobs`; see BENCHMARKS.md");
        return std::process::ExitCode::SUCCESS;
    }
    for n in &names {
        if !BENCHES.iter().any(|(name, _)| name == n) {
            eprintln!("no benchmark named {n:?}\n\n{}", usage());
            return std::process::ExitCode::from(2);
        }
    }
    let factor = match std::env::var("BDJOBS_BENCH_SCALE") {
        Ok(v) => match v.parse::<f64>() {
            Ok(f) if f > 0.0 => f,
            _ => {
                eprintln!("BDJOBS_BENCH_SCALE must be a positive number, not {v:?}");
                return std::process::ExitCode::from(2);
            }
        },
        Err(_) => 1.0,
    };
    let scale = Scale { factor, quick };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,lapin=off,deadpool=error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let started = Instant::now();
    let mut report = Report::new(scale);
    // A panicking benchmark unwinds out of block_on: catch it so that the cleanup below runs.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let run = async {
                for (name, _) in BENCHES {
                    if !names.is_empty() && !names.iter().any(|n| n == name) {
                        continue;
                    }
                    eprintln!("== {name}");
                    let t = Instant::now();
                    let r = run_one(name, scale, &mut report).await;
                    // Each benchmark's resources go as soon as it ends, so the next one runs on a
                    // quiet machine and a failure leaves nothing behind.
                    env::cleanup_all().await;
                    match r {
                        Ok(()) => eprintln!("== {name} done in {:.1} s", t.elapsed().as_secs_f64()),
                        Err(e) => {
                            eprintln!("== {name} FAILED: {e:#}");
                            report.failed(name, format!("{e:#}"));
                        }
                    }
                }
            };
            tokio::select! {
                () = run => Ok(()),
                r = tokio::signal::ctrl_c() => {
                    r.ok();
                    Err(anyhow::anyhow!("interrupted"))
                }
            }
        })
    }))
    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark panicked")));
    // Whatever happened above, remove what is left.
    rt.block_on(env::cleanup_all());
    drop(rt);
    report.print(started.elapsed());
    match outcome {
        Ok(()) if !report.any_failed() => std::process::ExitCode::SUCCESS,
        Ok(()) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(130)
        }
    }
}
