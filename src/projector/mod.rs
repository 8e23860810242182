//! The projector role: folds events into the read model (`jobs`), appends them to the event log,
//! and writes a completed job's assets to object storage.
//!
//! [`apply_batch`] is the step, used by the consumer loop and by `events import`; [`run`] is the
//! loop. [`render_assets`] and [`sync_assets`] are shared with `replay`, so that a rebuilt asset
//! has the very bytes the projector wrote.
//! Idempotency: an event whose message id is already in the log is skipped inside the same
//! transaction that would have applied it, so redeliveries and competing projectors change
//! nothing. Ordering: the fold in `domain::job` converges whatever order events arrive in.

use crate::adapters::broker::{self, BrokerError, Topology};
use crate::adapters::claims::{self, ClaimError};
use crate::adapters::db::{self, DbError};
use crate::adapters::storage::{self, StorageError};
use crate::domain::ids::{asset_storage_key, AssetId};
use crate::domain::job::{fold, JobView};
use crate::domain::messages::{Completed, DecodeError, Event, EventRecord, RawEnvelope};
use crate::domain::stages::deliverable::{render_csv, render_json};
use deadpool_postgres::Pool;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use opendal::Operator;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("malformed event: {0}")]
    Malformed(#[from] DecodeError),
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Claim(#[from] ClaimError),
}

impl ProjectorError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ProjectorError::Malformed(_) => false,
            ProjectorError::Claim(e) => e.is_retryable(),
            ProjectorError::Database(e) => e.is_retryable(),
            ProjectorError::Storage(e) => e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for ProjectorError {
    fn from(e: tokio_postgres::Error) -> Self {
        ProjectorError::Database(e.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The view changed (or was created).
    Changed,
    /// Logged, but the view already reflected it.
    Unchanged,
    /// Already in the log: nothing done.
    Duplicate,
    /// Logged; its job has no `job.created` yet, so the view waits for it.
    Orphan,
}

/// The deliverable a terminal event carries: a completion's, or the partial one of a job
/// cancelled mid-run.
pub fn deliverable_of(event: &Event) -> Option<&Completed> {
    match event {
        Event::Completed(done) => Some(done),
        Event::Cancelled(c) => c.partial.as_ref(),
        _ => None,
    }
}

/// One asset of a finished job, rendered: where it goes, its bytes, and its index row.
pub struct RenderedAsset {
    pub asset_id: AssetId,
    pub bytes: Vec<u8>,
    pub row: db::jobs::AssetRow,
}

/// Renders the assets the view's result lists from the completion that won the fold. Pure and
/// deterministic: same event, same bytes, which is what lets replay reproduce every download.
pub fn render_assets(view: &JobView, done: &Completed) -> Vec<RenderedAsset> {
    let Some(result) = &view.result else {
        return Vec::new();
    };
    result
        .assets
        .iter()
        .map(|asset| {
            let bytes = match asset.mime_type.as_str() {
                "text/csv" => render_csv(&done.contacts),
                _ => render_json(&done.contacts),
            };
            let row = db::jobs::AssetRow {
                storage_key: asset_storage_key(&view.tenant, view.job_id, &asset.asset_id),
                mime_type: asset.mime_type.clone(),
                size_bytes: bytes.len() as i64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            };
            RenderedAsset {
                asset_id: asset.asset_id.clone(),
                bytes,
                row,
            }
        })
        .collect()
}

/// Writes rendered assets to object storage, many at once. A rewrite puts identical bytes.
pub async fn put_assets(storage: &Operator, assets: &[RenderedAsset]) -> Result<(), StorageError> {
    put_all(storage, assets.iter()).await
}

async fn put_all<'a>(
    storage: &Operator,
    assets: impl Iterator<Item = &'a RenderedAsset>,
) -> Result<(), StorageError> {
    use futures::stream::TryStreamExt;
    // Local disks and object stores both take parallel writes far better than a queue of them.
    futures::stream::iter(assets.map(Ok::<_, StorageError>))
        .try_for_each_concurrent(32, |a| {
            storage::put(storage, &a.row.storage_key, a.bytes.clone())
        })
        .await
}

/// Makes the asset index of a job match the outcome that won its fold: the completion's assets,
/// or none when a failure or cancellation won (an earlier failure can overtake a completion
/// that was already indexed). Objects go to storage before the index names them.
pub async fn sync_assets(
    tx: &impl deadpool_postgres::GenericClient,
    storage: &Operator,
    view: &JobView,
    winner: &EventRecord,
) -> Result<(), ProjectorError> {
    sync_assets_many(tx, storage, &[(view, winner)]).await
}

/// [`sync_assets`] for many jobs: objects written concurrently, the index changed in one
/// statement each way.
pub async fn sync_assets_many(
    tx: &impl deadpool_postgres::GenericClient,
    storage: &Operator,
    jobs: &[(&JobView, &EventRecord)],
) -> Result<(), ProjectorError> {
    let mut without = Vec::new();
    let mut rendered = Vec::new();
    for (view, winner) in jobs {
        match deliverable_of(&winner.event) {
            Some(done) => rendered.push((*view, render_assets(view, done))),
            None => without.push(view.job_id.0),
        }
    }
    put_all(
        storage,
        rendered.iter().flat_map(|(_, assets)| assets.iter()),
    )
    .await?;
    db::jobs::delete_assets_of(tx, &without).await?;
    let rows: Vec<_> = rendered
        .iter()
        .flat_map(|(view, assets)| {
            assets
                .iter()
                .map(move |a| (&view.tenant, view.job_id, &a.asset_id, &a.row))
        })
        .collect();
    db::jobs::upsert_assets(tx, &rows).await?;
    Ok(())
}

/// The terminal event that decided a folded view, if it has an outcome.
pub fn winner<'a>(view: &JobView, records: &'a [EventRecord]) -> Option<&'a EventRecord> {
    let (pos, id) = view.terminal_at?;
    records
        .iter()
        .find(|r| r.position == pos && r.message_id == id)
}

/// Appends an event that originates in this process (the API's cancellation, the reaper's
/// failure) and folds it into `view`, which the caller holds locked in `tx`.
pub async fn append_and_fold(
    tx: &impl deadpool_postgres::GenericClient,
    view: &mut JobView,
    raw: &RawEnvelope,
) -> Result<(), ProjectorError> {
    let rec = EventRecord::from_raw(raw)?;
    if db::jobs::insert_event(tx, raw).await? && view.apply(&rec) {
        db::jobs::save_view(tx, view).await?;
    }
    Ok(())
}

/// Fails jobs that have made no progress for `idle_secs`: a worker crash loop the delivery
/// limit did not end, a command lost outside our outbox, a queue no worker consumes. Returns how
/// many it failed. Any number of projectors may run it at once (rows are locked SKIP LOCKED).
pub async fn reap_stuck(pool: &Pool, idle_secs: f64) -> Result<usize, ProjectorError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    db::jobs::lock_events_for_append(&tx).await?;
    let stale = db::jobs::lock_stale_jobs(&tx, idle_secs, 100).await?;
    let n = stale.len();
    for mut view in stale {
        let job = crate::domain::messages::JobRef {
            job_id: view.job_id,
            tenant: view.tenant.clone(),
        };
        let raw = Event::Failed(crate::domain::messages::Failed {
            error: format!(
                "the job made no progress for {} minutes and was given up",
                (idle_secs / 60.0).round()
            ),
            stage: None,
        })
        .into_envelope(
            &job,
            crate::domain::messages::Position::REAPER,
            chrono::Utc::now(),
        );
        tracing::warn!(job_id = %view.job_id, "failing a job that made no progress");
        append_and_fold(&tx, &mut view, &raw).await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The step: applies one event in one transaction.
pub async fn apply(
    pool: &Pool,
    storage: &Operator,
    raw: &RawEnvelope,
) -> Result<Applied, ProjectorError> {
    let mut applied = apply_batch(pool, storage, std::slice::from_ref(raw)).await?;
    Ok(applied.pop().expect("one result per event"))
}

/// The step for many events at once, in one transaction: one statement appends them all to the
/// log, one locks the views they touch, one writes the views back. Results are in input order.
/// The outcome is the same as applying them one by one, in any order (the fold converges).
pub async fn apply_batch(
    pool: &Pool,
    storage: &Operator,
    raws: &[RawEnvelope],
) -> Result<Vec<Applied>, ProjectorError> {
    // The log keeps payloads inline: a claim-checked event is opened before it is appended, so
    // that the events table alone still rebuilds every answer (docs/messaging.md).
    let opened = claims::open_all(storage, raws).await?;
    let raws = &*opened;
    let records = raws
        .iter()
        .map(EventRecord::from_raw)
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    // A batch can hold the same message twice (a redelivery next to the original): log it once.
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<&RawEnvelope> = raws.iter().filter(|r| seen.insert(r.message_id)).collect();
    // Inserting in one global order keeps two projectors whose batches share events from
    // deadlocking on each other's uncommitted rows (each waits at the first row they share).
    unique.sort_by_key(|r| r.message_id);
    let new_ids = db::jobs::insert_events(&tx, &unique).await?;
    let mut results: Vec<Applied> = vec![Applied::Duplicate; raws.len()];
    let mut fresh: Vec<usize> = Vec::new();
    let mut counted = std::collections::HashSet::new();
    for (i, rec) in records.iter().enumerate() {
        if new_ids.contains(&rec.message_id.0) && counted.insert(rec.message_id) {
            fresh.push(i);
        }
    }
    let mut job_ids: Vec<uuid::Uuid> = fresh.iter().map(|&i| records[i].job_id.0).collect();
    job_ids.sort();
    job_ids.dedup();
    let mut views: std::collections::HashMap<crate::domain::ids::JobId, JobView> =
        db::jobs::lock_views(&tx, &job_ids)
            .await?
            .into_iter()
            .map(|v| (v.job_id, v))
            .collect();
    let before: std::collections::HashMap<_, _> =
        views.iter().map(|(id, v)| (*id, v.terminal_at)).collect();
    let mut changed = std::collections::HashSet::new();
    let mut created_here = Vec::new();
    for &i in &fresh {
        let rec = &records[i];
        results[i] = match views.get_mut(&rec.job_id) {
            Some(view) => {
                if view.apply(rec) {
                    changed.insert(rec.job_id);
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
            None if matches!(rec.event, Event::Created(_)) => {
                created_here.push(i);
                Applied::Changed
            }
            None => Applied::Orphan,
        };
    }
    // Assets for every job whose winning terminal event arrived in this batch.
    let decided: Vec<(&JobView, &EventRecord)> = changed
        .iter()
        .map(|id| &views[id])
        .filter(|view| view.terminal_at != before[&view.job_id])
        .filter_map(|view| winner(view, &records).map(|w| (view, w)))
        .collect();
    sync_assets_many(&tx, storage, &decided).await?;
    let to_save: Vec<&JobView> = changed.iter().map(|id| &views[id]).collect();
    db::jobs::save_views(&tx, &to_save).await?;
    for i in created_here {
        // A job created outside our API (or a log replayed out of order): rebuild it from
        // everything logged for it so far, this batch included.
        let job = records[i].job_id;
        if views.contains_key(&job) {
            continue;
        }
        let logged = db::jobs::events_of_job(&tx, job)
            .await?
            .iter()
            .map(EventRecord::from_raw)
            .collect::<Result<Vec<_>, _>>()?;
        match fold(&logged) {
            Some(view) => {
                if let Some(winner) = winner(&view, &logged) {
                    sync_assets(&tx, storage, &view, winner).await?;
                }
                db::jobs::insert_view(&tx, &view).await?;
                views.insert(job, view);
            }
            None => results[i] = Applied::Orphan,
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// Applies a batch, retrying with backoff while the failure is retryable (the database is
/// restarting, a connection broke) until it succeeds or shutdown. Holding the deliveries instead
/// of requeueing them keeps a database outage from spending the queue's delivery limit and
/// dead-lettering good events.
pub async fn apply_patiently(
    pool: &Pool,
    storage: &Operator,
    raws: &[RawEnvelope],
    shutdown: &CancellationToken,
) -> Result<Vec<Applied>, ProjectorError> {
    let mut failures = 0u32;
    loop {
        match apply_batch(pool, storage, raws).await {
            Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                failures += 1;
                let wait = broker::backoff(failures);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, ?wait, "could not apply events; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// How long a batch waits for more events after its first one.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Clone)]
pub struct ProjectorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub prefetch: u16,
    pub name: String,
    /// Unfinished jobs idle this long are failed by the reaper.
    pub stuck_after: std::time::Duration,
}

/// The loop: consume, apply, ack after commit; reconnect with backoff; stop on shutdown.
pub async fn run(
    config: ProjectorConfig,
    pool: Pool,
    storage: Operator,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reaper = tokio::spawn(reaper_loop(
        pool.clone(),
        config.stuck_after,
        shutdown.clone(),
    ));
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match consume(&config, &pool, &storage, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let wait = broker::backoff(failures);
                tracing::warn!(error = %e, ?wait, "projector lost the broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    let _ = reaper.await;
    tracing::info!("projector stopped");
    Ok(())
}

async fn reaper_loop(pool: Pool, stuck_after: std::time::Duration, shutdown: CancellationToken) {
    // Check a few times per idle period, but not more than once a second.
    let every = (stuck_after / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match reap_stuck(&pool, stuck_after.as_secs_f64()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "reaper failed jobs that made no progress"),
            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
        }
    }
}

async fn consume(
    config: &ProjectorConfig,
    pool: &Pool,
    storage: &Operator,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let (_conn, _channel, mut consumer) = broker::start_consuming(
        &config.amqp_url,
        &config.name,
        &config.topology,
        &config.topology.projector_queue(),
        config.prefetch,
    )
    .await?;
    // The prefetch window is shared by the batches in flight, so that each can fill up.
    let max_batch = (usize::from(config.prefetch) / BATCHES_IN_FLIGHT).max(1);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let tasks = tokio_util::task::TaskTracker::new();
    let ended = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            p = in_flight.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        // Whatever else arrives within a moment joins the batch: a couple of milliseconds of
        // latency buy transactions of hundreds of events instead of a few.
        let mut deliveries = vec![first];
        let linger = tokio::time::Instant::now() + BATCH_LINGER;
        while deliveries.len() < max_batch {
            match consumer.next().now_or_never() {
                Some(d) => deliveries.push(d),
                None => match tokio::time::timeout_at(linger, consumer.next()).await {
                    Ok(d) => deliveries.push(d),
                    Err(_) => break,
                },
            }
        }
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut failed = None;
        for d in deliveries {
            let delivery = match broker::delivery(d) {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            // A claim-checked payload is checked when the batch opens it.
            match RawEnvelope::from_slice(&delivery.data).and_then(|raw| {
                if raw.payload_ref.is_some() {
                    Ok(raw)
                } else {
                    EventRecord::from_raw(&raw).map(|_| raw)
                }
            }) {
                Ok(raw) => {
                    // Batches mix jobs, so each event's correlation id is logged on its own.
                    tracing::debug!(
                        job_id = %raw.job_id,
                        kind = %raw.kind,
                        correlation_id = broker::correlation_id_of(&delivery.properties).as_deref(),
                        "event received"
                    );
                    batch.push((delivery, raw))
                }
                Err(e) => {
                    tracing::error!(error = %e, "dead-lettering a malformed event");
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if batch.is_empty() {
            continue;
        }
        let (pool, storage, shutdown) = (pool.clone(), storage.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = settle_batch(&pool, &storage, batch, &shutdown).await {
                tracing::warn!(error = %e, "could not settle a batch; the broker will redeliver it");
            }
        });
    };
    // Batches in flight finish (or, on shutdown, go back to the queue) on this connection.
    tasks.close();
    tasks.wait().await;
    ended
}

/// Batches applied at once by one projector: while one waits for its commit, the next is
/// already being read and applied. Safe because the fold converges in any order and every
/// batch takes its locks in the same order.
const BATCHES_IN_FLIGHT: usize = 4;

/// Applies one batch and settles its deliveries: acked after the commit, requeued on shutdown,
/// and, if the batch as a whole cannot be applied, retried event by event so that only the
/// event at fault is dead-lettered.
async fn settle_batch(
    pool: &Pool,
    storage: &Operator,
    batch: Vec<(lapin::message::Delivery, RawEnvelope)>,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let raws: Vec<RawEnvelope> = batch.iter().map(|(_, raw)| raw.clone()).collect();
    let span = tracing::debug_span!("events", count = raws.len());
    match apply_patiently(pool, storage, &raws, shutdown)
        .instrument(span)
        .await
    {
        Ok(_) => {
            // One by one: with several batches in flight, a multiple-ack could settle another
            // batch's deliveries before its commit.
            for (d, _) in &batch {
                d.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        Err(e) if e.is_retryable() => {
            // Only on shutdown: the events go back to the queue for the next projector.
            let deliveries: Vec<_> = batch.into_iter().map(|(d, _)| d).collect();
            broker::release(&deliveries).await?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "a batch failed; applying its events one at a time");
            for (d, raw) in &batch {
                let span = tracing::info_span!("event", job_id = %raw.job_id, kind = %raw.kind);
                match apply(pool, storage, raw).instrument(span).await {
                    Ok(_) => d.acker.ack(BasicAckOptions::default()).await?,
                    Err(e) if e.is_retryable() => {
                        d.acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await?
                    }
                    Err(e) => {
                        tracing::error!(error = %e, job_id = %raw.job_id, "dead-lettering an event that cannot be applied");
                        d.acker
                            .reject(BasicRejectOptions { requeue: false })
                            .await?
                    }
                };
            }
        }
    }
    Ok(())
}
