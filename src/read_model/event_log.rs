//! `bdjobs events export | import | compact`: the event log as JSON Lines, and its retention.
//!
//! - **export** writes one envelope per line, exactly as recorded (old versions stay old: the
//!   upcaster runs on every read), in arrival order (`events.id`), for everything, a tenant or a
//!   job. That is how the replay fixtures in `tests/fixtures/` are recorded.
//! - **import** feeds a recorded stream through the projector's step (`read_model::apply`), one
//!   line at a time and in file order. The step is idempotent by message id and the fold does
//!   not care about order, so importing a file twice changes nothing and a shuffled file
//!   imports to the same answers. A line that is not a readable event is reported with its
//!   number and skipped.
//! - **compact** deletes the `job.progress` events of finished jobs that occurred more than a
//!   given age ago, except those the fold needs to reproduce the job's view field for field
//!   (`domain::retention`). Replay after compaction gives the same API answers.

use super::{Applied, ReadModelError};
use crate::adapters::db::events::{self as log, Scope};
use crate::adapters::db::DbError;
use crate::adapters::progress::bar;
use crate::domain::messages::{EventRecord, RawEnvelope};
use crate::domain::retention::redundant_progress;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use opendal::Operator;
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("line {line}: {source}")]
    Apply { line: usize, source: ReadModelError },
    #[error("the event log holds an event this build cannot read: {0}")]
    Corrupt(String),
}

/// Writes the events in scope to `out`, one JSON envelope per line, in arrival order. Returns
/// how many were written.
pub async fn export(
    pool: &Pool,
    storage: &Operator,
    scope: &Scope,
    out: &mut impl Write,
    show_progress: bool,
) -> Result<u64, EventLogError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let total = log::count(&client, scope).await?;
    let bar = bar(
        show_progress,
        total,
        "{spinner} exporting [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
    );
    let (mut after, mut written) = (0i64, 0u64);
    loop {
        let page = log::page(&client, scope, after, 1000).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        for (_, raw) in &page {
            // An exported stream stands alone: a claim check met in the log is written out
            // with its payload.
            let mut raw = std::borrow::Cow::Borrowed(raw);
            if raw.payload_ref.is_some() {
                crate::adapters::claims::open(storage, raw.to_mut())
                    .await
                    .map_err(|e| EventLogError::Corrupt(e.to_string()))?;
            }
            serde_json::to_writer(&mut *out, &*raw).map_err(|e| EventLogError::Write(e.into()))?;
            out.write_all(b"\n").map_err(EventLogError::Write)?;
            written += 1;
        }
        bar.inc(page.len() as u64);
    }
    out.flush().map_err(EventLogError::Write)?;
    bar.finish_and_clear();
    Ok(written)
}

/// What an import did, by the projector's verdict on each line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Events that changed a view (or created one).
    pub changed: u64,
    /// Events logged that the view already reflected.
    pub unchanged: u64,
    /// Events already in the log: nothing done.
    pub duplicates: u64,
    /// Events logged for jobs without a `job.created` yet.
    pub orphans: u64,
    /// (line number, reason) of lines that are not readable events.
    pub skipped: Vec<(usize, String)>,
}

/// Parses one line of a recorded stream into an envelope whose event this build can decode.
pub fn parse_line(line: &str) -> Result<RawEnvelope, String> {
    let raw = RawEnvelope::from_slice(line.as_bytes()).map_err(|e| e.to_string())?;
    // A claim-checked payload is read back, and checked, when the projector applies it.
    if raw.payload_ref.is_none() {
        EventRecord::from_raw(&raw).map_err(|e| e.to_string())?;
    }
    Ok(raw)
}

/// Imports a recorded stream from `input` (`name` is for messages) through the projector.
pub async fn import(
    pool: &Pool,
    storage: &Operator,
    input: impl BufRead,
    name: &str,
    show_progress: bool,
) -> Result<ImportReport, EventLogError> {
    let lines: Vec<String> = input
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| EventLogError::Read(name.to_owned(), e))?;
    let bar = bar(
        show_progress,
        lines.len() as u64,
        "{spinner} importing [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
    );
    let mut report = ImportReport::default();
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        bar.inc(1);
        if line.trim().is_empty() {
            continue;
        }
        let raw = match parse_line(line) {
            Ok(raw) => raw,
            Err(reason) => {
                report.skipped.push((number, reason));
                continue;
            }
        };
        match super::apply(pool, storage, &raw).await {
            Ok(Applied::Changed) => report.changed += 1,
            Ok(Applied::Unchanged) => report.unchanged += 1,
            Ok(Applied::Duplicate) => report.duplicates += 1,
            Ok(Applied::Orphan) => report.orphans += 1,
            Err(ReadModelError::Malformed(e)) => report.skipped.push((number, e.to_string())),
            Err(source) => {
                bar.abandon();
                return Err(EventLogError::Apply {
                    line: number,
                    source,
                });
            }
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Finished jobs with progress events older than the cutoff.
    pub jobs: u64,
    pub deleted: u64,
}

/// Deletes the redundant `job.progress` events of finished jobs that occurred before `cutoff`.
pub async fn compact(
    pool: &Pool,
    cutoff: DateTime<Utc>,
    show_progress: bool,
) -> Result<CompactReport, EventLogError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let jobs = log::compactable_jobs(&client, cutoff).await?;
    let bar = bar(
        show_progress,
        jobs.len() as u64,
        "{spinner} compacting [{bar:40}] {pos}/{len} jobs ({per_sec}, {eta} left)",
    );
    let mut report = CompactReport {
        jobs: jobs.len() as u64,
        deleted: 0,
    };
    for batch in jobs.chunks(200) {
        let tx = client.transaction().await.map_err(DbError::from)?;
        let events = log::events_of_jobs(&tx, batch, i64::MAX).await?;
        for job_events in events.chunk_by(|a, b| a.job_id == b.job_id) {
            let records = job_events
                .iter()
                .map(EventRecord::from_raw)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EventLogError::Corrupt(e.to_string()))?;
            // Only old events go; any subset of the redundant ones leaves the view as it was.
            let old: Vec<_> = redundant_progress(&records)
                .into_iter()
                .filter(|id| {
                    records
                        .iter()
                        .any(|r| r.message_id == *id && r.occurred_at < cutoff)
                })
                .collect();
            report.deleted += log::delete_events(&tx, &old).await?;
        }
        tx.commit().await.map_err(DbError::from)?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Parses an age such as `30s`, `15m`, `12h`, `7d` or `2w` (a bare number is seconds).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not an age; write e.g. 30s, 15m, 12h, 7d or 2w"))?;
    let unit_secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_units_people_write() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn a_malformed_age_says_what_is_expected() {
        assert!(parse_age("soon").unwrap_err().contains("7d"));
        assert!(parse_age("3y").unwrap_err().contains("unknown unit"));
        assert!(parse_age("").is_err());
        assert!(parse_age("99999999999999999999w").is_err());
    }

    #[test]
    fn a_line_that_is_not_an_event_says_why() {
        assert!(parse_line("{not json").unwrap_err().contains("envelope"));
        let unknown = r#"{"type":"job.exploded","version":1,"message_id":"0190c0de-0000-7000-8000-000000000001","job_id":"0190c0de-0000-7000-8000-000000000002","tenant":"acme","occurred_at":"2025-01-15T09:00:00Z","attempt":1,"seq":1,"payload":{}}"#;
        assert!(parse_line(unknown).unwrap_err().contains("job.exploded"));
    }
}
