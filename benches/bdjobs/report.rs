//! The table the harness prints: absolute figures, the baseline measured in the same run, their
//! ratio, and the target for that line (met or missed). Printed as Markdown so that it
//! can be pasted into BENCHMARKS.md as it is.

use crate::Scale;
use std::time::Duration;

pub struct Row {
    pub bench: &'static str,
    pub measure: String,
    pub value: String,
    pub baseline: String,
    /// value / baseline, as the target states it.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(bench: &'static str, measure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            bench,
            measure: measure.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: None,
            target: String::new(),
            met: None,
        }
    }

    pub fn baseline(mut self, what: impl Into<String>, ratio: f64) -> Self {
        self.baseline = what.into();
        self.ratio = Some(ratio);
        self
    }

    pub fn target(mut self, what: impl Into<String>, met: bool) -> Self {
        self.target = what.into();
        self.met = Some(met);
        self
    }
}

pub struct Report {
    scale: Scale,
    rows: Vec<Row>,
    failures: Vec<(String, String)>,
}

impl Report {
    pub fn new(scale: Scale) -> Self {
        Self {
            scale,
            rows: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn add(&mut self, row: Row) {
        // Printed as it comes too, so a long run shows progress and an interrupted one keeps
        // what it measured.
        eprintln!(
            "   {} | {} | {} | {} | {}",
            row.measure,
            row.value,
            row.baseline,
            row.ratio.map(fmt_ratio).unwrap_or_default(),
            row.target
        );
        self.rows.push(row);
    }

    pub fn failed(&mut self, bench: &str, why: String) {
        self.failures.push((bench.to_owned(), why));
    }

    pub fn any_failed(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn print(&self, took: Duration) {
        println!();
        println!(
            "bdjobs benchmarks, {} UTC, {}; {} run (scale {}), {:.0} s",
            chrono::Utc::now().format("%Y-%m-%d %H:%M"),
            machine(),
            if self.scale.quick { "quick" } else { "full" },
            self.scale.factor,
            took.as_secs_f64()
        );
        println!();
        println!("| bench | measure | value | baseline (same run) | ratio | target | met |");
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.bench,
                r.measure,
                r.value,
                r.baseline,
                r.ratio.map(fmt_ratio).unwrap_or_default(),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        for (bench, why) in &self.failures {
            println!("| {bench} | FAILED: {why} | | | | | |");
        }
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// "2 cores, <CPU model>" from /proc on Linux.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores, {model}")
}

/// 12,345 with thousands separators, for rates.
pub fn num(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The q-quantile (0..=1) of unsorted samples.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}
