//! A finished job's assets: rendered from the event that won its fold (pure, deterministic:
//! the same event gives the same bytes, which is what lets replay reproduce every download),
//! written to object storage, then named in the asset index.

use super::ReadModelError;
use crate::adapters::db;
use crate::adapters::storage::{self, StorageError};
use crate::domain::ids::{assets_storage_key, joined_assets_storage_key, AssetId, JobId, TenantId};
use crate::domain::job::JobView;
use crate::domain::messages::{Completed, Event, EventRecord};
use crate::domain::stages::deliverable::{write_csv, write_json};
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

/// Finished jobs' assets, rendered: the one object that holds them all, where it goes, and the
/// index row of each asset (its job, and its slice of the object). All of one tenant.
///
/// One object, not one per asset (nor per job, when a projector batch decides several jobs at
/// once: [`join_by_tenant`]), because on a filesystem each object costs an inode and an fsync
/// in the projector's batch, and small jobs are mostly that cost (issue 18). The API serves
/// each asset as its own slice, ranges included, so clients never see the bundle.
pub struct RenderedAssets {
    pub tenant: TenantId,
    pub storage_key: String,
    pub bytes: opendal::Buffer,
    pub assets: Vec<(JobId, AssetId, db::jobs::AssetRow)>,
}

/// Renders the assets the view's result lists from the completion that won the fold, in the
/// order listed, into one object. Pure and deterministic: same event, same bytes, which is what
/// lets replay reproduce every download. `None` when the result lists no asset.
pub fn render_assets(view: &JobView, done: &Completed) -> Option<RenderedAssets> {
    let listed = &view.result.as_ref()?.assets;
    if listed.is_empty() {
        return None;
    }
    let storage_key = assets_storage_key(&view.tenant, view.job_id);
    let mut bytes = Vec::new();
    let mut assets = Vec::with_capacity(listed.len());
    for asset in listed {
        let start = bytes.len();
        match asset.mime_type.as_str() {
            "text/csv" => write_csv(&done.contacts, &mut bytes),
            _ => write_json(&done.contacts, &mut bytes),
        }
        let slice = &bytes[start..];
        let row = db::jobs::AssetRow {
            storage_key: storage_key.clone(),
            byte_offset: start as i64,
            mime_type: asset.mime_type.clone(),
            size_bytes: slice.len() as i64,
            sha256: hex::encode(Sha256::digest(slice)),
        };
        assets.push((view.job_id, asset.asset_id.clone(), row));
    }
    Some(RenderedAssets {
        tenant: view.tenant.clone(),
        storage_key,
        bytes: bytes.into(),
        assets,
    })
}

/// Joins the assets of the jobs one batch decided into one object per tenant: the jobs' objects
/// back to back, each row's offset moved by where its job's object now starts, under a key
/// named by the joined bytes ([`joined_assets_storage_key`]). A job alone keeps its own object
/// and key, which is also what replay (one job at a time) writes. Pure.
pub fn join_by_tenant(rendered: Vec<RenderedAssets>) -> Vec<RenderedAssets> {
    let mut groups: std::collections::BTreeMap<TenantId, Vec<RenderedAssets>> =
        std::collections::BTreeMap::new();
    for r in rendered {
        groups.entry(r.tenant.clone()).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(tenant, mut parts)| {
            if parts.len() == 1 {
                return parts.pop().expect("one part");
            }
            let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.bytes.len()).sum());
            let mut assets = Vec::new();
            for part in parts {
                let base = bytes.len() as i64;
                bytes.extend_from_slice(&part.bytes.to_bytes());
                assets.extend(part.assets.into_iter().map(|(job, id, mut row)| {
                    row.byte_offset += base;
                    (job, id, row)
                }));
            }
            let storage_key = joined_assets_storage_key(&tenant, &Sha256::digest(&bytes));
            for (_, _, row) in &mut assets {
                row.storage_key.clone_from(&storage_key);
            }
            RenderedAssets {
                tenant,
                storage_key,
                bytes: bytes.into(),
                assets,
            }
        })
        .collect()
}

/// Writes rendered assets to object storage, many jobs at once. A rewrite puts identical bytes.
pub async fn put_assets(
    storage: &Operator,
    rendered: &[RenderedAssets],
) -> Result<(), StorageError> {
    use futures::stream::TryStreamExt;
    // Local disks and object stores both take parallel writes far better than a queue of them.
    futures::stream::iter(rendered.iter().map(Ok::<_, StorageError>))
        .try_for_each_concurrent(32, |r| {
            storage::put(storage, &r.storage_key, r.bytes.clone())
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

/// [`sync_assets`] for many jobs: one object per tenant ([`join_by_tenant`]), written
/// concurrently, the index changed in one statement each way.
pub async fn sync_assets_many(
    tx: &impl deadpool_postgres::GenericClient,
    storage: &Operator,
    jobs: &[(&JobView, &EventRecord)],
) -> Result<(), ReadModelError> {
    let mut without = Vec::new();
    let mut rendered = Vec::new();
    for (view, winner) in jobs {
        match deliverable_of(&winner.event) {
            Some(done) => rendered.extend(render_assets(view, done)),
            None => without.push(view.job_id.0),
        }
    }
    let objects = join_by_tenant(rendered);
    put_assets(storage, &objects).await?;
    db::jobs::delete_assets_of(tx, &without).await?;
    let rows: Vec<_> = objects
        .iter()
        .flat_map(|r| {
            r.assets
                .iter()
                .map(|(job, id, row)| (&r.tenant, *job, id, row))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{JobId, MessageId, TenantId};
    use crate::domain::job::fold;
    use crate::domain::messages::{Created, Position};
    use crate::domain::plan::{Capability, Preset};
    use crate::domain::stages::deliverable::{render_csv, render_json};
    use crate::domain::stages::DeliveredContact;
    use crate::domain::stages::Summary;

    const JOB: u128 = 0x0193a1b2c3d47e5f8a9b0c1d2e3f40a7;

    fn record(job: u128, tenant: &str, seq: u64, event: Event) -> EventRecord {
        EventRecord {
            message_id: MessageId::new(),
            job_id: JobId(uuid::Uuid::from_u128(job)),
            tenant: TenantId::parse(tenant).unwrap(),
            occurred_at: chrono::Utc::now(),
            position: Position { attempt: 1, seq },
            event,
        }
    }

    fn finished_job(contacts: Vec<DeliveredContact>) -> (JobView, Completed) {
        finished_job_of(JOB, "acme", contacts)
    }

    fn finished_job_of(
        job: u128,
        tenant: &str,
        contacts: Vec<DeliveredContact>,
    ) -> (JobView, Completed) {
        let done = Completed {
            summary: Summary::default(),
            contacts,
        };
        let events = [
            record(
                job,
                tenant,
                0,
                Event::Created(Created {
                    webhook_url: None,
                    webhook_stages: false,
                    preset: Some(Preset::VerifyExistingEmails),
                    requested_capabilities: vec![
                        Capability::EmailVerify,
                        Capability::DeliverableFinalize,
                    ],
                    warnings: vec![],
                    chat_id: None,
                    companies: 0,
                    contacts: 2,
                }),
            ),
            record(job, tenant, 1, Event::Completed(done.clone())),
        ];
        (fold(&events).unwrap(), done)
    }

    #[test]
    fn a_jobs_assets_are_slices_of_one_object_each_exactly_its_own_rendering() {
        let contacts = vec![
            DeliveredContact {
                full_name: Some("Zoë Ångström".into()),
                email: Some("zoe@acme.example".into()),
                source: "input".into(),
                ..Default::default()
            },
            DeliveredContact {
                full_name: Some("Ada, \"the\" Countess".into()),
                source: "input".into(),
                ..Default::default()
            },
        ];
        let (view, done) = finished_job(contacts.clone());
        let r = render_assets(&view, &done).unwrap();
        assert_eq!(
            r.storage_key,
            "tenants/acme/assets/a7/0193a1b2c3d47e5f8a9b0c1d2e3f40a7.deliverable"
        );
        let object = r.bytes.to_vec();
        let listed: Vec<&str> = view
            .result
            .as_ref()
            .unwrap()
            .assets
            .iter()
            .map(|a| a.asset_id.as_str())
            .collect();
        let indexed: Vec<&str> = r.assets.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(indexed, listed);
        let mut end = 0;
        for (_, _, row) in &r.assets {
            assert_eq!(row.storage_key, r.storage_key);
            assert_eq!(row.byte_offset as usize, end, "slices are back to back");
            let slice = &object[end..end + row.size_bytes as usize];
            let expected = match row.mime_type.as_str() {
                "text/csv" => render_csv(&contacts),
                _ => render_json(&contacts),
            };
            assert_eq!(slice, expected, "{}", row.mime_type);
            assert_eq!(row.sha256, hex::encode(Sha256::digest(&expected)));
            end += row.size_bytes as usize;
        }
        assert_eq!(
            end,
            object.len(),
            "the object holds the assets and nothing else"
        );
    }

    #[test]
    fn the_same_completion_renders_the_same_object() {
        let (view, done) = finished_job(vec![DeliveredContact {
            email: Some("a@acme.example".into()),
            source: "input".into(),
            ..Default::default()
        }]);
        let (a, b) = (
            render_assets(&view, &done).unwrap(),
            render_assets(&view, &done).unwrap(),
        );
        assert_eq!(a.bytes.to_vec(), b.bytes.to_vec());
        assert_eq!(a.assets, b.assets);
    }

    fn contact(email: &str) -> DeliveredContact {
        DeliveredContact {
            email: Some(email.into()),
            source: "input".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_batchs_jobs_share_one_object_per_tenant_and_each_asset_is_still_its_own_rendering() {
        let jobs = [
            finished_job_of(1, "acme", vec![contact("a@acme.example")]),
            finished_job_of(2, "zenith", vec![contact("z@zenith.example")]),
            finished_job_of(
                3,
                "acme",
                vec![contact("b@acme.example"), contact("c@acme.example")],
            ),
        ];
        let alone: Vec<RenderedAssets> = jobs
            .iter()
            .map(|(view, done)| render_assets(view, done).unwrap())
            .collect();
        // Each job's own asset bytes, by (job, asset).
        let own: std::collections::HashMap<(JobId, AssetId), Vec<u8>> = alone
            .iter()
            .flat_map(|r| {
                let bytes = r.bytes.to_vec();
                r.assets.iter().map(move |(job, id, row)| {
                    let at = row.byte_offset as usize;
                    (
                        (*job, id.clone()),
                        bytes[at..at + row.size_bytes as usize].to_vec(),
                    )
                })
            })
            .collect();
        let joined = join_by_tenant(alone);
        assert_eq!(joined.len(), 2, "one object per tenant");
        let acme = &joined[0];
        assert_eq!(acme.tenant.as_str(), "acme");
        assert!(
            acme.storage_key.starts_with("tenants/acme/assets/")
                && acme.storage_key.ends_with(".deliverables"),
            "{}",
            acme.storage_key
        );
        assert_eq!(
            acme.storage_key,
            joined_assets_storage_key(&acme.tenant, &Sha256::digest(acme.bytes.to_vec()))
        );
        assert_eq!(acme.assets.len(), 4, "two jobs, two assets each");
        let bytes = acme.bytes.to_vec();
        for (job, id, row) in &acme.assets {
            assert_eq!(row.storage_key, acme.storage_key);
            let at = row.byte_offset as usize;
            let slice = &bytes[at..at + row.size_bytes as usize];
            assert_eq!(slice, own[&(*job, id.clone())], "{job} {id}");
            assert_eq!(row.sha256, hex::encode(Sha256::digest(slice)));
        }
        // A job alone in its tenant keeps the object replay would write for it.
        let zenith = &joined[1];
        assert_eq!(
            zenith.storage_key,
            assets_storage_key(&zenith.tenant, JobId(uuid::Uuid::from_u128(2)))
        );
        assert!(zenith
            .assets
            .iter()
            .all(|(_, _, row)| row.storage_key == zenith.storage_key));
    }
}
