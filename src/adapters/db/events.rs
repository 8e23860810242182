//! The event store's maintenance queries: reading the log by scope and by arrival order, the
//! `jobs_rebuild` shadow table and its swap into `jobs` and `assets`, and deleting compacted
//! events. The policy (what to fold, what may be deleted) lives in `crate::replay` and
//! `crate::domain::retention`; this module only moves rows.

use super::jobs::AssetRow;
use super::DbError;
use crate::domain::ids::{JobId, MessageId, TenantId};
use crate::domain::job::JobView;
use crate::domain::messages::RawEnvelope;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Which part of the log a command works on: everything, one tenant's jobs, or one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub tenant: Option<TenantId>,
    pub job: Option<JobId>,
}

impl Scope {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| t.as_str())
    }

    fn job(&self) -> Option<Uuid> {
        self.job.map(|j| j.0)
    }
}

/// The filter every scoped query uses, with two nullable parameters: $1 (tenant), $2 (job).
fn in_scope(table: &str) -> String {
    format!(
        "($1::text IS NULL OR {table}.tenant = $1) AND ($2::uuid IS NULL OR {table}.job_id = $2)"
    )
}

/// An envelope parsed straight from jsonb's wire form (a version byte, then the JSON text),
/// with no `serde_json::Value` in between: replay and export read the whole log, and building a
/// `Value` per event cost a third of the reading time (see the replay bench).
struct WireEnvelope(RawEnvelope);

impl<'a> tokio_postgres::types::FromSql<'a> for WireEnvelope {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, json)) => Ok(WireEnvelope(serde_json::from_slice(json)?)),
            _ => Err("unknown jsonb format version".into()),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

fn wire_envelope(row: &tokio_postgres::Row, column: usize) -> Result<RawEnvelope, DbError> {
    row.try_get::<_, WireEnvelope>(column)
        .map(|w| w.0)
        .map_err(|e| DbError::Corrupt(format!("event: {e}")))
}

/// The highest event id whose event is committed, with none below it still in flight. Ids come
/// from a sequence at insert time, so a transaction holding a lower id may commit after one
/// holding a higher id; taking the table lock briefly waits for every inserting transaction to
/// finish, after which every later insert gets a higher id.
pub async fn high_water_mark(client: &mut deadpool_postgres::Client) -> Result<i64, DbError> {
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE events IN SHARE MODE").await?;
    let high: i64 = tx
        .query_one("SELECT coalesce(max(id), 0) FROM events", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(high)
}

/// The jobs with events in scope, up to and including event id `upto`, in job id order.
pub async fn jobs_in_log(
    client: &impl GenericClient,
    scope: &Scope,
    upto: i64,
) -> Result<Vec<JobId>, DbError> {
    Ok(client
        .query(
            &format!(
                "SELECT DISTINCT job_id FROM events WHERE {} AND id <= $3 ORDER BY job_id",
                in_scope("events")
            ),
            &[&scope.tenant(), &scope.job(), &upto],
        )
        .await?
        .iter()
        .map(|r| JobId(r.get(0)))
        .collect())
}

/// The jobs in scope with an event recorded after `after`.
pub async fn jobs_after(
    client: &impl GenericClient,
    scope: &Scope,
    after: i64,
) -> Result<Vec<JobId>, DbError> {
    Ok(client
        .query(
            &format!(
                "SELECT DISTINCT job_id FROM events WHERE {} AND id > $3 ORDER BY job_id",
                in_scope("events")
            ),
            &[&scope.tenant(), &scope.job(), &after],
        )
        .await?
        .iter()
        .map(|r| JobId(r.get(0)))
        .collect())
}

/// The events of some jobs up to id `upto`, grouped by job, each job's in arrival order.
pub async fn events_of_jobs(
    client: &impl GenericClient,
    jobs: &[JobId],
    upto: i64,
) -> Result<Vec<RawEnvelope>, DbError> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.0).collect();
    client
        .query(
            "SELECT envelope FROM events WHERE job_id = ANY($1) AND id <= $2 ORDER BY job_id, id",
            &[&ids, &upto],
        )
        .await?
        .into_iter()
        .map(|r| wire_envelope(&r, 0))
        .collect()
}

/// How many events are in scope (for a progress bar).
pub async fn count(client: &impl GenericClient, scope: &Scope) -> Result<u64, DbError> {
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM events WHERE {}", in_scope("events")),
            &[&scope.tenant(), &scope.job()],
        )
        .await?
        .get(0);
    Ok(n as u64)
}

/// A page of the log in arrival order: at most `limit` events in scope with id above `after`,
/// each with its id (the next page starts after the last one).
pub async fn page(
    client: &impl GenericClient,
    scope: &Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, RawEnvelope)>, DbError> {
    client
        .query(
            &format!(
                "SELECT id, envelope FROM events WHERE {} AND id > $3 ORDER BY id LIMIT $4",
                in_scope("events")
            ),
            &[&scope.tenant(), &scope.job(), &after, &limit],
        )
        .await?
        .into_iter()
        .map(|r| Ok((r.get(0), wire_envelope(&r, 1)?)))
        .collect()
}

/// Forgets what runs that never swapped (a crashed replay) left in the shadow table.
pub async fn prune_shadow(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM jobs_rebuild WHERE built_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}

/// One job's rebuilt view (`None` when its events fold to no view) and its asset index.
pub struct ShadowRow<'a> {
    pub job: JobId,
    pub tenant: &'a TenantId,
    pub view: Option<JobView>,
    pub assets: Vec<(String, AssetRow)>,
}

/// Records many jobs' rebuilt views and asset indexes in a run's shadow, in one statement.
pub async fn put_shadows(
    client: &impl GenericClient,
    run: Uuid,
    rows: &[ShadowRow<'_>],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let jobs: Vec<Uuid> = rows.iter().map(|r| r.job.0).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let statuses: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.view.as_ref().map(|v| v.status.as_str()))
        .collect();
    let created: Vec<Option<chrono::DateTime<chrono::Utc>>> = rows
        .iter()
        .map(|r| r.view.as_ref().map(|v| v.created_at))
        .collect();
    let updated: Vec<Option<chrono::DateTime<chrono::Utc>>> = rows
        .iter()
        .map(|r| r.view.as_ref().map(|v| v.updated_at))
        .collect();
    let views: Vec<Option<tokio_postgres::types::Json<&JobView>>> = rows
        .iter()
        .map(|r| r.view.as_ref().map(tokio_postgres::types::Json))
        .collect();
    let assets: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::Value::Array(
                r.assets
                    .iter()
                    .map(|(id, row)| {
                        let mut v = serde_json::to_value(row).expect("asset rows serialise");
                        v["asset_id"] = serde_json::Value::String(id.clone());
                        v
                    })
                    .collect(),
            )
        })
        .collect();
    let stmt = client
        .prepare_cached(
            "INSERT INTO jobs_rebuild (run_id, job_id, tenant, status, created_at, updated_at, view, assets)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::timestamptz[],
                                      $6::timestamptz[], $7::jsonb[], $8::jsonb[])
             ON CONFLICT (run_id, job_id) DO UPDATE
             SET status = EXCLUDED.status, created_at = EXCLUDED.created_at,
                 updated_at = EXCLUDED.updated_at, view = EXCLUDED.view, assets = EXCLUDED.assets,
                 built_at = now()",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &run, &jobs, &tenants, &statuses, &created, &updated, &views, &assets,
            ],
        )
        .await?;
    Ok(())
}

/// What a swap changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// Views written because they differed from (or were missing in) `jobs`.
    pub views_changed: u64,
    /// Rows of `jobs` in scope whose events fold to no view.
    pub views_removed: u64,
    pub assets_changed: u64,
    pub assets_removed: u64,
}

/// Moves a run's shadow into `jobs` and `assets` for the jobs in scope, inside the caller's
/// transaction (which must hold the locks `crate::replay` documents), then drops the run's rows.
/// Rows that already hold the rebuilt value are left untouched.
pub async fn swap_shadow(
    tx: &impl GenericClient,
    run: Uuid,
    scope: &Scope,
) -> Result<Swapped, DbError> {
    let (t, j) = (scope.tenant(), scope.job());
    let views_changed = tx
        .execute(
            "INSERT INTO jobs (job_id, tenant, status, created_at, updated_at, view)
             SELECT job_id, tenant, status, created_at, updated_at, view
             FROM jobs_rebuild WHERE run_id = $1 AND view IS NOT NULL
             ON CONFLICT (job_id) DO UPDATE
             SET tenant = EXCLUDED.tenant, status = EXCLUDED.status,
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
                 view = EXCLUDED.view
             WHERE jobs.view IS DISTINCT FROM EXCLUDED.view",
            &[&run],
        )
        .await?;
    let views_removed = tx
        .execute(
            &format!(
                "DELETE FROM jobs j WHERE {} AND NOT EXISTS (
                     SELECT 1 FROM jobs_rebuild r
                     WHERE r.run_id = $3 AND r.job_id = j.job_id AND r.view IS NOT NULL)",
                in_scope("j")
            ),
            &[&t, &j, &run],
        )
        .await?;
    let assets_changed = tx
        .execute(
            "INSERT INTO assets (job_id, asset_id, tenant, storage_key, byte_offset, mime_type,
                                 size_bytes, sha256)
             SELECT r.job_id, a->>'asset_id', r.tenant, a->>'storage_key',
                    COALESCE((a->>'byte_offset')::bigint, 0), a->>'mime_type',
                    (a->>'size_bytes')::bigint, a->>'sha256'
             FROM jobs_rebuild r, jsonb_array_elements(r.assets) a
             WHERE r.run_id = $1
             ON CONFLICT (job_id, asset_id) DO UPDATE
             SET tenant = EXCLUDED.tenant, storage_key = EXCLUDED.storage_key,
                 byte_offset = EXCLUDED.byte_offset, mime_type = EXCLUDED.mime_type,
                 size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256
             WHERE (assets.tenant, assets.storage_key, assets.byte_offset, assets.mime_type,
                    assets.size_bytes, assets.sha256)
                   IS DISTINCT FROM
                   (EXCLUDED.tenant, EXCLUDED.storage_key, EXCLUDED.byte_offset, EXCLUDED.mime_type,
                    EXCLUDED.size_bytes, EXCLUDED.sha256)",
            &[&run],
        )
        .await?;
    let assets_removed = tx
        .execute(
            &format!(
                "DELETE FROM assets x WHERE {} AND NOT EXISTS (
                     SELECT 1 FROM jobs_rebuild r, jsonb_array_elements(r.assets) a
                     WHERE r.run_id = $3 AND r.job_id = x.job_id AND a->>'asset_id' = x.asset_id)",
                in_scope("x")
            ),
            &[&t, &j, &run],
        )
        .await?;
    tx.execute("DELETE FROM jobs_rebuild WHERE run_id = $1", &[&run])
        .await?;
    Ok(Swapped {
        views_changed,
        views_removed,
        assets_changed,
        assets_removed,
    })
}

/// Forgets a run's shadow rows (a replay that stops before its swap).
pub async fn drop_shadow(client: &impl GenericClient, run: Uuid) -> Result<(), DbError> {
    client
        .execute("DELETE FROM jobs_rebuild WHERE run_id = $1", &[&run])
        .await?;
    Ok(())
}

/// Finished jobs (a terminal event is logged) with progress events that occurred before
/// `cutoff`: the candidates for compaction.
pub async fn compactable_jobs(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<Vec<JobId>, DbError> {
    Ok(client
        .query(
            "SELECT DISTINCT e.job_id FROM events e
             WHERE e.type = 'job.progress' AND e.occurred_at < $1
               AND EXISTS (SELECT 1 FROM events t WHERE t.job_id = e.job_id
                           AND t.type IN ('job.completed', 'job.failed', 'job.cancelled'))
             ORDER BY e.job_id",
            &[&cutoff],
        )
        .await?
        .iter()
        .map(|r| JobId(r.get(0)))
        .collect())
}

/// Deletes events by message id; returns how many went.
pub async fn delete_events(client: &impl GenericClient, ids: &[MessageId]) -> Result<u64, DbError> {
    let ids: Vec<Uuid> = ids.iter().map(|m| m.0).collect();
    Ok(client
        .execute("DELETE FROM events WHERE message_id = ANY($1)", &[&ids])
        .await?)
}
