//! Replay of 1,000,000 events: what replay is made of (the pure fold in memory, reading the
//! event log back from Postgres and folding it, against reading the same rows without decoding
//! them), then `bdjobs replay` itself rebuilding the read model from that log.

use crate::env::{self, Env};
use crate::fixtures;
use crate::report::{num, Report, Row};
use crate::Scale;
use bdjobs::domain::ids::{JobId, MessageId};
use bdjobs::domain::job::fold;
use bdjobs::domain::messages::{EventRecord, RawEnvelope};
use futures::{pin_mut, TryStreamExt};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio_postgres::types::{FromSql, ToSql, Type};

/// A column's bytes as they came off the wire, whatever its type: reading without decoding.
struct Wire<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Wire<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn no_params() -> impl ExactSizeIterator<Item = &'static (dyn ToSql + Sync)> {
    std::iter::empty()
}

const READ: &str = "SELECT job_id, envelope FROM events ORDER BY job_id, attempt, seq";

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let target = scale.n(1_000_000, 20_000);
    let env = Env::new("replay").await?;
    let dns = env::stub_dns().await?;
    let job = fixtures::record(0, &fixtures::sources(&dns)?).await?;
    let template: Vec<RawEnvelope> = std::iter::once(job.created.clone())
        .chain(job.events.iter().cloned())
        .collect();
    let per_job = template.len();
    let jobs = target.div_ceil(per_job);
    let events = jobs * per_job;

    // In memory, decoded: the fold alone. Each job gets its own ids, as in a real log.
    let records: Vec<EventRecord> = template
        .iter()
        .map(EventRecord::from_raw)
        .collect::<Result<_, _>>()?;
    let mut folding = Duration::ZERO;
    for _ in 0..jobs {
        let job_id = JobId::new();
        let recs: Vec<EventRecord> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.job_id = job_id;
                r.message_id = MessageId::new();
                r
            })
            .collect();
        let t = Instant::now();
        black_box(fold(&recs).expect("a view"));
        folding += t.elapsed();
    }
    report.add(Row::new(
        "replay",
        format!(
            "fold in memory, {} decoded events ({per_job} per job), ev/s",
            num(events as f64)
        ),
        num(events as f64 / folding.as_secs_f64()),
    ));

    // In memory, from JSON: what a replay does per event besides I/O.
    let bytes: Vec<Vec<u8>> = template
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for _ in 0..jobs {
        let recs = bytes
            .iter()
            .map(|b| Ok(EventRecord::from_raw(&RawEnvelope::from_slice(b)?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        black_box(fold(&recs).expect("a view"));
    }
    let decode_fold = events as f64 / t.elapsed().as_secs_f64();
    report.add(Row::new(
        "replay",
        "decode JSON + fold in memory, ev/s",
        num(decode_fold),
    ));

    eprintln!("   writing {events} events to the log...");
    let t = Instant::now();
    fill_log(&env, &template, jobs).await?;
    let fill_rate = events as f64 / t.elapsed().as_secs_f64();

    let client = env.pool.get().await?;
    // Raw: the same query, rows counted, nothing decoded.
    let t = Instant::now();
    let mut raw_rows = 0usize;
    let mut raw_bytes = 0usize;
    {
        let rows = client.query_raw(READ, no_params()).await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            raw_bytes += row.get::<_, Wire>(1).0.len();
            raw_rows += 1;
        }
    }
    let raw_rate = raw_rows as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(raw_rows == events, "read {raw_rows} of {events} events");

    // As the code reads the log today (`db::jobs::events_of_job`): jsonb → Value → envelope.
    let t = Instant::now();
    let views = read_and_fold(&client, |row| {
        let v: serde_json::Value = row.try_get(1)?;
        Ok(serde_json::from_value(v)?)
    })
    .await?;
    anyhow::ensure!(views == jobs, "folded {views} of {jobs} jobs");
    let table_rate = events as f64 / t.elapsed().as_secs_f64();
    report.add(
        Row::new(
            "replay",
            "events table → jsonb → Value → envelope → fold, ev/s",
            num(table_rate),
        )
        .baseline(
            format!(
                "reading the rows undecoded: {} ev/s ({} MB); writing them: {} ev/s",
                num(raw_rate),
                raw_bytes / 1_000_000,
                num(fill_rate)
            ),
            table_rate / raw_rate,
        ),
    );

    // The same, parsing the envelope straight from the jsonb bytes (no Value in between).
    let t = Instant::now();
    read_and_fold(&client, |row| {
        let w: Wire = row.try_get(1)?;
        // jsonb's binary form is a version byte (1) and the JSON text.
        anyhow::ensure!(w.0.first() == Some(&1), "unknown jsonb version");
        Ok(serde_json::from_slice(&w.0[1..])?)
    })
    .await?;
    let direct_rate = events as f64 / t.elapsed().as_secs_f64();
    report.add(
        Row::new(
            "replay",
            "events table → envelope parsed from jsonb bytes → fold, ev/s",
            num(direct_rate),
        )
        .baseline(
            format!("reading the rows undecoded: {} ev/s", num(raw_rate)),
            direct_rate / raw_rate,
        ),
    );
    drop(client);

    // The command: every view and asset index row rebuilt and swapped into `jobs` and `assets`.
    // Assets go to memory: on the disk, creating a file per asset would measure the filesystem
    // (see the projector's tmpfs row), not replay.
    eprintln!("   bdjobs replay of {events} events...");
    let store = bdjobs::adapters::storage::operator("memory://")?;
    let t = Instant::now();
    let replayed = bdjobs::read_model::replay::replay(
        &env.pool,
        &store,
        bdjobs::adapters::db::events::Scope {
            tenant: None,
            job: None,
        },
        false,
    )
    .await?;
    let command_rate = events as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(
        replayed.jobs as usize == jobs,
        "replayed {} of {jobs} jobs",
        replayed.jobs
    );
    report.add(
        Row::new(
            "replay",
            format!("`bdjobs replay` (views, asset index, assets in memory), {jobs} jobs, ev/s"),
            num(command_rate),
        )
        .baseline(
            format!("reading the rows undecoded: {} ev/s", num(raw_rate)),
            command_rate / raw_rate,
        ),
    );
    Ok(())
}

/// Streams the log in replay order and folds each job's events; returns how many jobs it folded.
async fn read_and_fold(
    client: &deadpool_postgres::Client,
    decode: impl Fn(&tokio_postgres::Row) -> anyhow::Result<RawEnvelope>,
) -> anyhow::Result<usize> {
    let rows = client.query_raw(READ, no_params()).await?;
    pin_mut!(rows);
    let mut current: Option<uuid::Uuid> = None;
    let mut batch: Vec<EventRecord> = Vec::new();
    let mut folded = 0;
    let mut flush = |batch: &mut Vec<EventRecord>| {
        if !batch.is_empty() {
            black_box(fold(batch.iter()));
            folded += 1;
            batch.clear();
        }
    };
    while let Some(row) = rows.try_next().await? {
        let job: uuid::Uuid = row.get(0);
        if current != Some(job) {
            flush(&mut batch);
            current = Some(job);
        }
        batch.push(EventRecord::from_raw(&decode(&row)?)?);
    }
    flush(&mut batch);
    Ok(folded)
}

/// Writes `jobs` copies of the template job's events into `events`, each job with its own ids,
/// rows in job order (as a log of jobs that ran one after another), by INSERT ... SELECT over
/// generate_series in chunks.
pub async fn fill_log(env: &Env, template: &[RawEnvelope], jobs: usize) -> anyhow::Result<()> {
    let types: Vec<&str> = template.iter().map(|e| e.kind.as_str()).collect();
    let attempts: Vec<i32> = template.iter().map(|e| e.attempt as i32).collect();
    let seqs: Vec<i64> = template.iter().map(|e| e.seq as i64).collect();
    let ats: Vec<chrono::DateTime<chrono::Utc>> = template.iter().map(|e| e.occurred_at).collect();
    let envs: Vec<String> = template
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    let tenant = env.tenant();
    let client = env.pool.get().await?;
    let insert = client
        .prepare(
            "INSERT INTO events (message_id, job_id, tenant, type, version, attempt, seq,
                                 occurred_at, envelope)
             SELECT id, job, $1, type, 1, attempt, seq, occurred_at,
                    envelope::jsonb || jsonb_build_object('message_id', id, 'job_id', job)
             FROM (SELECT gen_random_uuid() AS id, md5('bench-job-' || g)::uuid AS job, t.*
                   FROM generate_series($2::int, $3::int) AS g,
                        unnest($4::text[], $5::int4[], $6::int8[], $7::timestamptz[],
                               $8::text[]) WITH ORDINALITY AS t(type, attempt, seq, occurred_at,
                                                                envelope, k)
                   ORDER BY g, t.k) AS s",
        )
        .await?;
    let chunk = 20_000usize;
    let mut from = 0usize;
    while from < jobs {
        let to = (from + chunk).min(jobs);
        client
            .execute(
                &insert,
                &[
                    &tenant.as_str(),
                    &(from as i32),
                    &(to as i32 - 1),
                    &types,
                    &attempts,
                    &seqs,
                    &ats,
                    &envs,
                ],
            )
            .await?;
        from = to;
    }
    client.batch_execute("VACUUM ANALYZE events").await?;
    Ok(())
}
