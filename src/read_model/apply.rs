//! Applying events to the read model: the step that appends them to the log and folds them
//! into the job views, in one transaction, with the assets of jobs they decide.

use super::assets::{sync_assets, sync_assets_many, winner};
use super::ReadModelError;
use crate::adapters::db::{self, DbError};
use crate::domain::ids::ErrorRef;
use crate::domain::job::{fold, JobView};
use crate::domain::messages::{Event, EventRecord, RawEnvelope};
use deadpool_postgres::Pool;
use opendal::Operator;

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

/// Appends an event that originates in this process (the API's cancellation, the reaper's
/// failure) and folds it into `view`, which the caller holds locked in `tx`.
pub async fn append_and_fold(
    tx: &impl deadpool_postgres::GenericClient,
    view: &mut JobView,
    raw: &RawEnvelope,
) -> Result<(), ReadModelError> {
    let rec = EventRecord::from_raw(raw)?;
    let before = view.terminal_at;
    if db::jobs::insert_event(tx, raw).await? && view.apply(&rec) {
        db::jobs::save_view(tx, view).await?;
        if view.terminal_at != before {
            super::webhooks::queue(tx, Vec::new(), [&*view]).await?;
        }
    }
    Ok(())
}

/// Fails jobs that have made no progress for `idle_secs`: a worker crash loop the delivery
/// limit did not end, a command lost outside our outbox, a queue no worker consumes. Returns how
/// many it failed. Any number of projectors may run it at once (rows are locked SKIP LOCKED).
pub async fn reap_stuck(pool: &Pool, idle_secs: f64) -> Result<usize, ReadModelError> {
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

/// What becomes of an event the projector can never apply (a permanent database error: jsonb
/// refusing a NUL, a value out of range): the caller dead-letters it, and this records it
/// (`projector_rejections`, which `/metrics` counts), logs the error under a reference, and fails
/// its job with a message that quotes the reference and no internals, unless the job already
/// ended. Without this the job would stay `running` until the reaper gave up on it.
pub async fn reject(
    pool: &Pool,
    storage: &Operator,
    raw: &RawEnvelope,
    error: &ReadModelError,
) -> Result<ErrorRef, ReadModelError> {
    let reference = ErrorRef::of(raw.message_id.0);
    tracing::error!(
        error = %error,
        %reference,
        job_id = %raw.job_id,
        kind = %raw.kind,
        message_id = %raw.message_id,
        "dead-lettering an event that cannot be applied; failing its job"
    );
    {
        let client = pool.get().await.map_err(DbError::from)?;
        db::jobs::record_rejection(&client, raw, reference.as_str()).await?;
    }
    if matches!(db::jobs::status(pool, raw.job_id).await?, Some(s) if s.is_terminal()) {
        return Ok(reference);
    }
    let what = if raw.kind == crate::domain::messages::kinds::COMPLETED {
        "the job finished, but its result could not be recorded"
    } else {
        "an update of the job could not be recorded, so its outcome is unknown"
    };
    let job = crate::domain::messages::JobRef {
        job_id: raw.job_id,
        tenant: raw.tenant.clone(),
    };
    let mut failed = Event::Failed(crate::domain::messages::Failed {
        error: format!(
            "{what} (reference {reference}); submit the job again, and quote the reference if it \
fails the same way"
        ),
        stage: None,
    })
    .into_envelope(
        &job,
        crate::domain::messages::Position::PROJECTOR,
        chrono::Utc::now(),
    );
    // One failure per rejected event, however often the event is redriven.
    failed.message_id = crate::domain::ids::MessageId(uuid::Uuid::new_v5(
        &raw.message_id.0,
        b"bdjobs projector rejection",
    ));
    apply(pool, storage, &failed).await?;
    Ok(reference)
}

/// The step: applies one event in one transaction.
pub async fn apply(
    pool: &Pool,
    storage: &Operator,
    raw: &RawEnvelope,
) -> Result<Applied, ReadModelError> {
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
) -> Result<Vec<Applied>, ReadModelError> {
    // The log keeps payloads inline: a claim-checked event is opened before it is appended, so
    // that the events table alone still rebuilds every answer (docs/messaging.md).
    let opened = crate::adapters::claims::open_all(storage, raws).await?;
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
    // The stages reached in this batch by jobs that asked for them, in the order reached: decided
    // in memory, queued with the outcomes in one statement (a job that did not ask costs nothing).
    let mut stages = Vec::new();
    for &i in &fresh {
        let rec = &records[i];
        results[i] = match views.get_mut(&rec.job_id) {
            Some(view) => {
                let reached = view.stage_reached;
                if view.apply(rec) {
                    if let Some(stage) = crate::domain::webhooks::stage_to_announce(reached, view) {
                        stages.push(super::webhooks::stage_delivery(view, stage));
                    }
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
    // The webhooks of every job whose outcome was decided (or overturned) in this batch.
    let mut newly_terminal: Vec<crate::domain::ids::JobId> = changed
        .iter()
        .filter(|id| views[*id].terminal_at != before[*id])
        .copied()
        .collect();
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
                newly_terminal.push(job);
            }
            None => results[i] = Applied::Orphan,
        }
    }
    super::webhooks::queue(&tx, stages, newly_terminal.iter().map(|id| &views[id])).await?;
    tx.commit().await?;
    Ok(results)
}
