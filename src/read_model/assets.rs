//! A finished job's assets: rendered from the event that won its fold (pure, deterministic:
//! the same event gives the same bytes, which is what lets replay reproduce every download),
//! written to object storage, then named in the asset index.

use super::ReadModelError;
use crate::adapters::db;
use crate::adapters::storage::{self, StorageError};
use crate::domain::ids::{asset_storage_key, AssetId};
use crate::domain::job::JobView;
use crate::domain::messages::{Completed, Event, EventRecord};
use crate::domain::stages::deliverable::{render_csv, render_json};
use opendal::Operator;
use sha2::{Digest, Sha256};

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
) -> Result<(), ReadModelError> {
    sync_assets_many(tx, storage, &[(view, winner)]).await
}

/// [`sync_assets`] for many jobs: objects written concurrently, the index changed in one
/// statement each way.
pub async fn sync_assets_many(
    tx: &impl deadpool_postgres::GenericClient,
    storage: &Operator,
    jobs: &[(&JobView, &EventRecord)],
) -> Result<(), ReadModelError> {
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
