//! The projector role: folds events into the read model (`jobs`), appends them to the event log,
//! and writes a completed job's assets to object storage.
//!
//! [`apply`] is the step, used by the consumer loop and by `events import`; [`run`] is the loop.
//! [`render_assets`] and [`sync_assets`] are shared with `replay`, so that a rebuilt asset has
//! the very bytes the projector wrote.
//! Idempotency: an event whose message id is already in the log is skipped inside the same
//! transaction that would have applied it, so redeliveries and competing projectors change
//! nothing. Ordering: the fold in `domain::job` converges whatever order events arrive in.

use crate::adapters::broker::{self, BrokerError, Topology};
use crate::adapters::db::{self, DbError};
use crate::adapters::storage::{self, StorageError};
use crate::domain::ids::{asset_storage_key, AssetId};
use crate::domain::job::{fold, JobView};
use crate::domain::messages::{Completed, DecodeError, Event, EventRecord, RawEnvelope};
use crate::domain::stages::deliverable::{render_csv, render_json};
use deadpool_postgres::Pool;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use opendal::Operator;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("malformed event: {0}")]
    Malformed(#[from] DecodeError),
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl ProjectorError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ProjectorError::Malformed(_) => false,
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

#[derive(Debug, PartialEq, Eq)]
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

/// One asset of a completed job, rendered: where it goes, its bytes, and its index row.
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

/// Writes rendered assets to object storage. A rewrite puts identical bytes.
pub async fn put_assets(storage: &Operator, assets: &[RenderedAsset]) -> Result<(), StorageError> {
    for a in assets {
        storage::put(storage, &a.row.storage_key, a.bytes.clone()).await?;
    }
    Ok(())
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
    let Event::Completed(done) = &winner.event else {
        db::jobs::delete_assets(tx, view.job_id).await?;
        return Ok(());
    };
    let assets = render_assets(view, done);
    put_assets(storage, &assets).await?;
    for a in &assets {
        db::jobs::upsert_asset(tx, &view.tenant, view.job_id, &a.asset_id, &a.row).await?;
    }
    Ok(())
}

/// The step: applies one event in one transaction.
pub async fn apply(
    pool: &Pool,
    storage: &Operator,
    raw: &RawEnvelope,
) -> Result<Applied, ProjectorError> {
    let rec = EventRecord::from_raw(raw)?;
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    if !db::jobs::insert_event(&tx, raw).await? {
        tx.commit().await?;
        return Ok(Applied::Duplicate);
    }
    let applied = match db::jobs::lock_view(&tx, rec.job_id).await? {
        Some(mut view) => {
            if view.apply(&rec) {
                if view.terminal_at == Some((rec.position, rec.message_id)) {
                    sync_assets(&tx, storage, &view, &rec).await?;
                }
                db::jobs::save_view(&tx, &view).await?;
                Applied::Changed
            } else {
                Applied::Unchanged
            }
        }
        None if matches!(rec.event, Event::Created(_)) => {
            // A job created outside our API (or the log replayed out of order): rebuild from
            // everything logged for it so far.
            let records = db::jobs::events_of_job(&tx, rec.job_id)
                .await?
                .iter()
                .map(EventRecord::from_raw)
                .collect::<Result<Vec<_>, _>>()?;
            match fold(&records) {
                Some(view) => {
                    if let Some(winner) = winner(&view, &records) {
                        sync_assets(&tx, storage, &view, winner).await?;
                    }
                    db::jobs::insert_view(&tx, &view).await?;
                    Applied::Changed
                }
                None => Applied::Orphan,
            }
        }
        None => Applied::Orphan,
    };
    tx.commit().await?;
    Ok(applied)
}

/// The terminal event that decided a folded view, if it has an outcome.
pub fn winner<'a>(view: &JobView, records: &'a [EventRecord]) -> Option<&'a EventRecord> {
    let (pos, id) = view.terminal_at?;
    records
        .iter()
        .find(|r| r.position == pos && r.message_id == id)
}

#[derive(Clone)]
pub struct ProjectorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub prefetch: u16,
    pub name: String,
}

/// The loop: consume, apply, ack after commit; reconnect with backoff; stop on shutdown.
pub async fn run(
    config: ProjectorConfig,
    pool: Pool,
    storage: Operator,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
    tracing::info!("projector stopped");
    Ok(())
}

async fn consume(
    config: &ProjectorConfig,
    pool: &Pool,
    storage: &Operator,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let conn = broker::connect(&config.amqp_url, &config.name).await?;
    let channel = broker::consumer_channel(&conn, config.prefetch).await?;
    config.topology.declare(&channel).await?;
    let mut consumer = channel
        .basic_consume(
            config.topology.projector_queue().into(),
            config.name.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.topology.projector_queue(), "projector consuming");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(BrokerError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                )))
            }
        };
        let raw = match RawEnvelope::from_slice(&delivery.data) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, "dead-lettering a malformed event");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            }
        };
        let span = tracing::info_span!("event", job_id = %raw.job_id, kind = %raw.kind);
        let _enter = span.enter();
        match apply(pool, storage, &raw).await {
            Ok(applied) => {
                tracing::debug!(?applied, "event applied");
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "could not apply an event; requeueing");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
            Err(e) => {
                tracing::error!(error = %e, "dead-lettering an event that cannot be applied");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
    }
}
