//! The per-job audit of the fault suites (`tests/faults.rs`, `tests/cluster.rs`), counted from
//! ground truth: the event log, the job's view, and the asset bytes in storage hashed again.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the database and the stored bytes say about one job.
#[derive(Debug, Default, Clone)]
pub struct JobFacts {
    pub status: String,
    pub delivered: Option<String>,
    pub created_events: i64,
    /// Worker runs: each run of the pipeline emits one `job.started`.
    pub started_events: i64,
    pub completed_events: i64,
    /// `job.completed`, `job.failed` and `job.cancelled` events.
    pub terminal_events: i64,
    /// Assets whose stored bytes have the size and SHA-256 the asset index records.
    pub whole_assets: usize,
    pub assets: usize,
}

impl JobFacts {
    /// Not completed, or its view short of the contacts it must deliver.
    pub fn lost(&self, delivered: &str) -> bool {
        self.status != "completed" || self.delivered.as_deref() != Some(delivered)
    }

    /// Created twice, never completed in the log, or assets that are not the bytes stored.
    pub fn duplicated(&self) -> bool {
        self.created_events != 1
            || self.completed_events < 1
            || self.assets != 2
            || self.whole_assets != 2
    }

    /// Runs beyond the first.
    pub fn extra_runs(&self) -> i64 {
        (self.started_events - 1).max(0)
    }
}

/// Reads the facts of `ids` (job ids) from `db`, hashing each asset stored under `assets` (the
/// root of an `fs://` asset location). A job with no row is absent from the map.
pub async fn job_facts(
    db: &tokio_postgres::Client,
    ids: &[String],
    assets: &Path,
) -> HashMap<String, JobFacts> {
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    let mut facts: HashMap<String, JobFacts> = HashMap::new();
    for r in db
        .query(
            "SELECT j.job_id::text, j.status, j.view->'result'->'summary'->>'delivered_contacts',
                    count(e.*) FILTER (WHERE e.type = 'job.created'),
                    count(e.*) FILTER (WHERE e.type = 'job.started'),
                    count(e.*) FILTER (WHERE e.type = 'job.completed'),
                    count(e.*) FILTER (WHERE e.type IN ('job.completed','job.failed','job.cancelled'))
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
                terminal_events: r.get(6),
                ..JobFacts::default()
            },
        );
    }
    for r in db
        .query(
            "SELECT job_id::text, storage_key, sha256, size_bytes, byte_offset FROM assets
             WHERE job_id = ANY($1)",
            &[&uuids],
        )
        .await
        .unwrap()
    {
        let (job, storage_key, sha, size, offset): (String, String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        // An asset is its slice of the job's object; a short or missing object gives fewer bytes.
        let object = std::fs::read(assets.join(&storage_key)).unwrap_or_default();
        let bytes = object
            .get(offset as usize..)
            .map(|rest| &rest[..rest.len().min(size as usize)])
            .unwrap_or_default();
        if let Some(f) = facts.get_mut(&job) {
            f.assets += 1;
            if bytes.len() as i64 == size && hex::encode(Sha256::digest(bytes)) == sha {
                f.whole_assets += 1;
            }
        }
    }
    facts
}

/// One fault's verdict over its jobs.
#[derive(Debug, Default)]
pub struct Verdict {
    pub jobs: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub redundant_runs: i64,
    /// Jobs with more runs than the fault explains, or more terminal events than runs.
    pub overrun: Vec<String>,
}

/// Judges `ids`: each must be completed delivering `delivered` contacts, created once, its
/// assets whole, run at most `max_runs` times with no more terminal events than runs.
pub fn judge(
    facts: &HashMap<String, JobFacts>,
    ids: &[String],
    delivered: &str,
    max_runs: i64,
) -> Verdict {
    let mut v = Verdict {
        jobs: ids.len(),
        ..Verdict::default()
    };
    for id in ids {
        match facts.get(id) {
            None => v.lost += 1,
            Some(f) => {
                v.lost += f.lost(delivered) as usize;
                v.duplicated += f.duplicated() as usize;
                v.redundant_runs += f.extra_runs();
                if f.started_events > max_runs || f.terminal_events > f.started_events.max(1) {
                    v.overrun.push(format!("{id}: {f:?}"));
                }
            }
        }
    }
    v
}

impl Verdict {
    /// Prints the fault's line and fails the test on a lost, doubled or over-run job, or on a
    /// fault that hit no unfinished job (`in_flight`: it would prove nothing; `None` for a run
    /// without a fault).
    pub fn report(&self, fault: &str, in_flight: Option<usize>, recovery: Duration) {
        println!(
            "fault={fault} jobs={} in_flight={} lost={} duplicated={} redundant_runs={} recovery_ms={}",
            self.jobs,
            in_flight.map_or("-".to_owned(), |n| n.to_string()),
            self.lost,
            self.duplicated,
            self.redundant_runs,
            recovery.as_millis()
        );
        assert_eq!((self.lost, self.duplicated), (0, 0), "{fault}");
        assert!(
            self.overrun.is_empty(),
            "{fault}: jobs run more often than the fault explains: {:#?}",
            self.overrun
        );
        assert!(in_flight != Some(0), "{fault} hit no work in flight");
    }
}

/// Waits until the outbox is empty and every queue of the namespace (commands, events and the
/// dead-letter queue; `depths` lists them) holds no message; fails after a minute.
pub async fn assert_drained(
    db: &tokio_postgres::Client,
    depths: impl Fn() -> Vec<(String, u64)>,
    queues: usize,
    logs: impl Fn() -> String,
) {
    let started = Instant::now();
    loop {
        let outbox: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        let depths = tokio::task::block_in_place(&depths);
        assert_eq!(depths.len(), queues, "{depths:?}");
        if outbox == 0 && depths.iter().all(|(_, n)| *n == 0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "left after a minute: {outbox} outbox rows, messages {depths:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
