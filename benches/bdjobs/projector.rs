//! Projector: the event streams of N jobs are recorded once (worker step into a `VecSink`),
//! published to the projector queue while no projector runs, then a projector starts and the
//! clock runs until every view is terminal. Baseline: the same rows (each event into the log,
//! the job's view after it into the read model) written by plain SQL, one event a transaction
//! and then in batches.

use crate::broker_raw::{self, Msg};
use crate::env::{self, Env};
use crate::fixtures::{self, Recorded};
use crate::report::{num, Report, Row};
use crate::Scale;
use anyhow::Context;
use bdjobs::adapters::broker;
use bdjobs::app;
use bdjobs::domain::messages::EventRecord;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const BATCH: usize = 500;

/// One event and the view it leaves behind, as plain column values.
struct Written {
    message_id: Uuid,
    job_id: Uuid,
    tenant: String,
    kind: String,
    version: i32,
    attempt: i32,
    seq: i64,
    occurred_at: DateTime<Utc>,
    envelope: String,
    status: &'static str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    view: String,
}

/// The order a busy broker delivers events of concurrent jobs in: each job's own in order,
/// jobs interleaved.
fn interleaved(recorded: &[Recorded]) -> Vec<(usize, usize)> {
    let longest = recorded.iter().map(|r| r.events.len()).max().unwrap_or(0);
    let mut order = Vec::new();
    for k in 0..longest {
        for (j, r) in recorded.iter().enumerate() {
            if k < r.events.len() {
                order.push((j, k));
            }
        }
    }
    order
}

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let jobs = scale.n(2000, 100);
    let env = Env::new("proj").await?;
    let dns = env::stub_dns().await?;
    let sources = fixtures::sources(&dns)?;
    eprintln!("   recording {jobs} jobs...");
    let recorded = fixtures::record_jobs(&env.pool, &sources, jobs).await?;
    let order = interleaved(&recorded);
    let events = order.len();

    env.declare().await?;
    {
        let conn = broker::connect(&env.config.amqp_url, "bench-preload").await?;
        let ch = broker_raw::confirm_channel(&conn).await?;
        let msgs = order.iter().map(|&(j, k)| {
            let e = &recorded[j].events[k];
            Msg {
                routing_key: e.kind.clone(),
                message_id: e.message_id.to_string(),
                kind: e.kind.clone(),
                body: serde_json::to_vec(e).expect("envelopes serialise"),
            }
        });
        broker_raw::publish_windowed(&ch, &env.topology().events_exchange(), msgs, 256).await?;
        conn.close(200, "preloaded".into()).await?;
    }

    eprintln!("   projecting {events} events...");
    let shutdown = env.shutdown.child_token();
    let started = Instant::now();
    let projector = {
        let (config, pool, shutdown) = (env.config.clone(), env.pool.clone(), shutdown.clone());
        tokio::spawn(async move { app::run_projector(&config, pool, shutdown).await })
    };
    let client = env.pool.get().await?;
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')",
                &[],
            )
            .await?
            .get(0);
        if done as usize >= jobs {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {done} of {jobs} jobs terminal after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    shutdown.cancel();
    projector.await??;
    let projector_rate = events as f64 / took.as_secs_f64();

    // The projector's step alone, without the broker: another set of the same jobs, applied
    // one event after another as the consumer loop does.
    let second = fixtures::record_jobs(&env.pool, &sources, jobs).await?;
    let store = bdjobs::adapters::storage::operator(&env.config.assets_location())?;
    let t = Instant::now();
    for (j, k) in interleaved(&second) {
        bdjobs::read_model::apply(&env.pool, &store, &second[j].events[k]).await?;
    }
    let step_rate = events as f64 / t.elapsed().as_secs_f64();

    // The batched step alone, as the consumer loop now applies events: chunks of 128 (the
    // default prefetch shared by 4 batches), one after another.
    let third = fixtures::record_jobs(&env.pool, &sources, jobs).await?;
    let ordered: Vec<_> = interleaved(&third)
        .into_iter()
        .map(|(j, k)| third[j].events[k].clone())
        .collect();
    let t = Instant::now();
    for chunk in ordered.chunks(128) {
        bdjobs::read_model::apply_batch(&env.pool, &store, chunk).await?;
    }
    let batch_step_rate = events as f64 / t.elapsed().as_secs_f64();

    // The same with the assets in memory: what the filesystem backend's fsync of every object
    // (OpenDAL syncs each file before renaming it into place) costs the step.
    let fourth = fixtures::record_jobs(&env.pool, &sources, jobs).await?;
    let ordered: Vec<_> = interleaved(&fourth)
        .into_iter()
        .map(|(j, k)| fourth[j].events[k].clone())
        .collect();
    let memory = bdjobs::adapters::storage::operator("memory://")?;
    let t = Instant::now();
    for chunk in ordered.chunks(128) {
        bdjobs::read_model::apply_batch(&env.pool, &memory, chunk).await?;
    }
    let memory_step_rate = events as f64 / t.elapsed().as_secs_f64();

    // The filesystem backend, fsync and all, on tmpfs: what the disk's inode allocator and
    // flushes cost, apart from the backend's own work. Profiled on this machine's ext4, creating
    // the asset files took nearly half the CPU of the whole projector phase.
    let tmpfs_step_rate = match tempfile::Builder::new()
        .prefix("bdjobs-bench-shm-")
        .tempdir_in("/dev/shm")
    {
        Ok(dir) => {
            let fifth = fixtures::record_jobs(&env.pool, &sources, jobs).await?;
            let ordered: Vec<_> = interleaved(&fifth)
                .into_iter()
                .map(|(j, k)| fifth[j].events[k].clone())
                .collect();
            let shm =
                bdjobs::adapters::storage::operator(&format!("fs://{}", dir.path().display()))?;
            let t = Instant::now();
            for chunk in ordered.chunks(128) {
                bdjobs::read_model::apply_batch(&env.pool, &shm, chunk).await?;
            }
            Some(events as f64 / t.elapsed().as_secs_f64())
        }
        Err(e) => {
            eprintln!("   no tmpfs at /dev/shm ({e}): skipping the tmpfs row");
            None
        }
    };

    // The baseline's rows: each event, and the job's view once it is applied.
    let mut views: Vec<_> = recorded.iter().map(|r| r.view.clone()).collect();
    let mut rows = Vec::with_capacity(events);
    for &(j, k) in &order {
        let raw = &recorded[j].events[k];
        views[j].apply(&EventRecord::from_raw(raw)?);
        let v = &views[j];
        rows.push(Written {
            message_id: raw.message_id.0,
            job_id: raw.job_id.0,
            tenant: raw.tenant.as_str().to_owned(),
            kind: raw.kind.clone(),
            version: raw.version as i32,
            attempt: raw.attempt as i32,
            seq: raw.seq as i64,
            occurred_at: raw.occurred_at,
            envelope: serde_json::to_string(raw)?,
            status: v.status.as_str(),
            created_at: v.created_at,
            updated_at: v.updated_at,
            view: serde_json::to_string(v)?,
        });
    }
    let initial: Vec<Written> = recorded
        .iter()
        .map(|r| Written {
            message_id: r.created.message_id.0,
            job_id: r.job.job_id.0,
            tenant: r.job.tenant.as_str().to_owned(),
            kind: r.created.kind.clone(),
            version: 1,
            attempt: 0,
            seq: 0,
            occurred_at: r.created.occurred_at,
            envelope: serde_json::to_string(&r.created).expect("serialises"),
            status: r.view.status.as_str(),
            created_at: r.view.created_at,
            updated_at: r.view.updated_at,
            view: serde_json::to_string(&r.view).expect("serialises"),
        })
        .collect();
    let mut client = env.pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE bench_events (LIKE events INCLUDING ALL);
             CREATE TABLE bench_jobs (LIKE jobs INCLUDING ALL);",
        )
        .await?;

    reset(&mut client, &initial).await?;
    let t = Instant::now();
    one_per_transaction(&mut client, &rows, true).await?;
    let single_rate = events as f64 / t.elapsed().as_secs_f64();

    // The same with statements sent as text each time, as `db::jobs` does: tokio-postgres
    // then prepares every statement again (one more round trip per statement).
    reset(&mut client, &initial).await?;
    let t = Instant::now();
    one_per_transaction(&mut client, &rows, false).await?;
    let unprepared_rate = events as f64 / t.elapsed().as_secs_f64();

    reset(&mut client, &initial).await?;
    let t = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let tx = client.transaction().await?;
        batched(&tx, chunk, true).await?;
        tx.commit().await?;
    }
    let batched_rate = events as f64 / t.elapsed().as_secs_f64();

    let what = format!(
        "events/s, {events} events of {jobs} jobs, assets included ({} jobs/s; prefetch {})",
        num(jobs as f64 / took.as_secs_f64()),
        env.config.projector_prefetch
    );
    report.add(
        Row::new("projector", what.clone(), num(projector_rate))
            .baseline(
                format!("raw SQL, 1 event/tx: {} ev/s", num(single_rate)),
                projector_rate / single_rate,
            )
            .target("≥ 20,000 events/s", projector_rate >= 20_000.0),
    );
    report.add(Row::new("projector", what, num(projector_rate)).baseline(
        format!("raw SQL, {BATCH} events/tx: {} ev/s", num(batched_rate)),
        projector_rate / batched_rate,
    ));
    report.add(
        Row::new(
            "projector",
            "raw SQL, 1 event/tx, statements re-prepared each time, ev/s",
            num(unprepared_rate),
        )
        .baseline(
            format!("the same, prepared once: {} ev/s", num(single_rate)),
            unprepared_rate / single_rate,
        ),
    );
    report.add(
        Row::new(
            "projector",
            "`projector::apply` step alone, no broker, ev/s",
            num(step_rate),
        )
        .baseline(
            format!("raw SQL, 1 event/tx: {} ev/s", num(single_rate)),
            step_rate / single_rate,
        ),
    );
    report.add(
        Row::new(
            "projector",
            "`projector::apply_batch` step alone, batches of 128, no broker, ev/s",
            num(batch_step_rate),
        )
        .baseline(
            format!("raw SQL, {BATCH} events/tx: {} ev/s", num(batched_rate)),
            batch_step_rate / batched_rate,
        ),
    );
    report.add(
        Row::new(
            "projector",
            "`projector::apply_batch` step alone, batches of 128, assets in memory (no fsync), ev/s",
            num(memory_step_rate),
        )
        .baseline(
            format!("raw SQL, {BATCH} events/tx: {} ev/s", num(batched_rate)),
            memory_step_rate / batched_rate,
        ),
    );
    if let Some(rate) = tmpfs_step_rate {
        report.add(
            Row::new(
                "projector",
                "`projector::apply_batch` step alone, batches of 128, filesystem assets on tmpfs, ev/s",
                num(rate),
            )
            .baseline(
                format!("the same on the disk: {} ev/s", num(batch_step_rate)),
                rate / batch_step_rate,
            ),
        );
    }
    Ok(())
}

/// Empties the baseline's tables and puts the jobs back as the API left them.
async fn reset(client: &mut deadpool_postgres::Client, initial: &[Written]) -> anyhow::Result<()> {
    client
        .batch_execute("TRUNCATE bench_events, bench_jobs")
        .await?;
    let tx = client.transaction().await?;
    batched(&tx, initial, false).await?;
    tx.commit().await?;
    // One statement each: VACUUM cannot run in the implicit transaction of a multi-statement batch.
    client.batch_execute("VACUUM ANALYZE bench_events").await?;
    client.batch_execute("VACUUM ANALYZE bench_jobs").await?;
    Ok(())
}

const INSERT_EVENT: &str = "INSERT INTO bench_events
      (message_id, job_id, tenant, type, version, attempt, seq, occurred_at, envelope)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb)
    ON CONFLICT (message_id) DO NOTHING";
const UPSERT_VIEW: &str =
    "INSERT INTO bench_jobs (job_id, tenant, status, created_at, updated_at, view)
    VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
    ON CONFLICT (job_id) DO UPDATE
    SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view";

async fn one_per_transaction(
    client: &mut deadpool_postgres::Client,
    rows: &[Written],
    prepared: bool,
) -> anyhow::Result<()> {
    let insert = client.prepare(INSERT_EVENT).await?;
    let upsert = client.prepare(UPSERT_VIEW).await?;
    for r in rows {
        let tx = client.transaction().await?;
        let (insert, upsert) = if prepared {
            (insert.clone(), upsert.clone())
        } else {
            (
                tx.prepare(INSERT_EVENT).await?,
                tx.prepare(UPSERT_VIEW).await?,
            )
        };
        tx.execute(
            &insert,
            &[
                &r.message_id,
                &r.job_id,
                &r.tenant,
                &r.kind,
                &r.version,
                &r.attempt,
                &r.seq,
                &r.occurred_at,
                &r.envelope,
            ],
        )
        .await?;
        tx.execute(
            &upsert,
            &[
                &r.job_id,
                &r.tenant,
                &r.status,
                &r.created_at,
                &r.updated_at,
                &r.view,
            ],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// One multi-row insert of the events and one multi-row upsert of the last view of each job.
async fn batched(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Written],
    with_events: bool,
) -> anyhow::Result<()> {
    if with_events {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
        let jobs: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
        let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
        let envs: Vec<&str> = rows.iter().map(|r| r.envelope.as_str()).collect();
        tx.execute(
            "INSERT INTO bench_events
               (message_id, job_id, tenant, type, version, attempt, seq, occurred_at, envelope)
             SELECT m, j, t, k, v, a, s, o, e::jsonb
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $6::int4[],
                         $7::int8[], $8::timestamptz[], $9::text[]) AS u(m, j, t, k, v, a, s, o, e)
             ON CONFLICT (message_id) DO NOTHING",
            &[
                &ids, &jobs, &tenants, &kinds, &versions, &attempts, &seqs, &ats, &envs,
            ],
        )
        .await
        .context("batched event insert")?;
    }
    // An upsert may touch a row once per statement: the last view of each job wins.
    let mut last: HashMap<Uuid, &Written> = HashMap::new();
    for r in rows {
        last.insert(r.job_id, r);
    }
    let views: Vec<&Written> = last.into_values().collect();
    let jobs: Vec<Uuid> = views.iter().map(|r| r.job_id).collect();
    let tenants: Vec<&str> = views.iter().map(|r| r.tenant.as_str()).collect();
    let statuses: Vec<&str> = views.iter().map(|r| r.status).collect();
    let created: Vec<DateTime<Utc>> = views.iter().map(|r| r.created_at).collect();
    let updated: Vec<DateTime<Utc>> = views.iter().map(|r| r.updated_at).collect();
    let bodies: Vec<&str> = views.iter().map(|r| r.view.as_str()).collect();
    tx.execute(
        "INSERT INTO bench_jobs (job_id, tenant, status, created_at, updated_at, view)
         SELECT j, t, s, c, u, v::jsonb
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                     $6::text[]) AS x(j, t, s, c, u, v)
         ON CONFLICT (job_id) DO UPDATE
         SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view",
        &[&jobs, &tenants, &statuses, &created, &updated, &bodies],
    )
    .await
    .context("batched view upsert")?;
    Ok(())
}
