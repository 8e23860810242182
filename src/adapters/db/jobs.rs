//! Queries of the read model (`jobs`), the event log (`events`), the command outbox and the
//! asset index. Functions that take a `GenericClient` run inside the caller's transaction.

use super::DbError;
use crate::domain::ids::{AssetId, JobId, TenantId};
use crate::domain::job::{JobStatus, JobView};
use crate::domain::messages::RawEnvelope;
use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

fn view_from_json(v: serde_json::Value) -> Result<JobView, DbError> {
    serde_json::from_value(v).map_err(|e| DbError::Corrupt(format!("job view: {e}")))
}

/// A value sent as jsonb, serialised straight into the statement's buffer: building a
/// `serde_json::Value` first would allocate a tree per event and per view.
fn to_json<T: serde::Serialize + std::fmt::Debug>(v: &T) -> tokio_postgres::types::Json<&T> {
    tokio_postgres::types::Json(v)
}

/// Appends an event to the log. `false` when it was already there: the caller then skips it,
/// which is what makes applying an event idempotent across projectors and redeliveries.
pub async fn insert_event(tx: &impl GenericClient, raw: &RawEnvelope) -> Result<bool, DbError> {
    let n = tx
        .execute(
            "INSERT INTO events (message_id, job_id, tenant, type, version, attempt, seq, occurred_at, envelope)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (message_id) DO NOTHING",
            &[
                &raw.message_id.0,
                &raw.job_id.0,
                &raw.tenant.as_str(),
                &raw.kind,
                &(raw.version as i32),
                &(raw.attempt as i32),
                &(raw.seq as i64),
                &raw.occurred_at,
                &to_json(raw),
            ],
        )
        .await?;
    Ok(n == 1)
}

pub async fn insert_view(tx: &impl GenericClient, view: &JobView) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO jobs (job_id, tenant, status, created_at, updated_at, view)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (job_id) DO UPDATE
         SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view",
        &[
            &view.job_id.0,
            &view.tenant.as_str(),
            &view.status.as_str(),
            &view.created_at,
            &view.updated_at,
            &to_json(view),
        ],
    )
    .await?;
    Ok(())
}

/// The view of a job, locked for update until the transaction ends.
pub async fn lock_view(tx: &impl GenericClient, job: JobId) -> Result<Option<JobView>, DbError> {
    match tx
        .query_opt(
            "SELECT view FROM jobs WHERE job_id = $1 FOR UPDATE",
            &[&job.0],
        )
        .await?
    {
        Some(row) => Ok(Some(view_from_json(row.get(0))?)),
        None => Ok(None),
    }
}

pub async fn save_view(tx: &impl GenericClient, view: &JobView) -> Result<(), DbError> {
    tx.execute(
        "UPDATE jobs SET status = $2, updated_at = $3, view = $4 WHERE job_id = $1",
        &[
            &view.job_id.0,
            &view.status.as_str(),
            &view.updated_at,
            &to_json(view),
        ],
    )
    .await?;
    Ok(())
}

/// Every logged event of one job, in arrival order.
pub async fn events_of_job(
    tx: &impl GenericClient,
    job: JobId,
) -> Result<Vec<RawEnvelope>, DbError> {
    tx.query(
        "SELECT envelope FROM events WHERE job_id = $1 ORDER BY id",
        &[&job.0],
    )
    .await?
    .into_iter()
    .map(|r| serde_json::from_value(r.get(0)).map_err(|e| DbError::Corrupt(format!("event: {e}"))))
    .collect()
}

/// A job's `job.chunk_completed` events as recorded, for the worker deciding whether a chunked
/// job is complete.
pub async fn chunk_reports(pool: &Pool, job: JobId) -> Result<Vec<RawEnvelope>, DbError> {
    let client = pool.get().await?;
    client
        .query(
            "SELECT envelope FROM events WHERE job_id = $1 AND type = 'job.chunk_completed' ORDER BY id",
            &[&job.0],
        )
        .await?
        .into_iter()
        .map(|r| {
            serde_json::from_value(r.get(0)).map_err(|e| DbError::Corrupt(format!("event: {e}")))
        })
        .collect()
}

/// What creating a job writes: its `job.created` event, its view and its `job.run` command
/// (with the routing key and correlation id it is to be published with).
pub struct NewJob<'a> {
    pub created: &'a RawEnvelope,
    pub view: &'a JobView,
    pub command: &'a RawEnvelope,
    pub routing_key: &'a str,
    pub correlation_id: Option<&'a str>,
}

/// Writes a new job in one transaction, so that a job exists if and only if its command will be
/// published. The same rows as [`insert_job`], in one prepared statement: a statement is its own
/// transaction, so the job costs one round trip and one commit, without BEGIN and COMMIT.
pub async fn create_job(pool: &Pool, job: &NewJob<'_>) -> Result<(), DbError> {
    let NewJob {
        created,
        view,
        command,
        routing_key,
        correlation_id,
    } = *job;
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH event AS (
               INSERT INTO events (message_id, job_id, tenant, type, version, attempt, seq, occurred_at, envelope)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (message_id) DO NOTHING
             ), view AS (
               INSERT INTO jobs (job_id, tenant, status, created_at, updated_at, view)
               VALUES ($10, $11, $12, $13, $14, $15)
               ON CONFLICT (job_id) DO UPDATE
               SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view
             )
             INSERT INTO outbox (message_id, job_id, routing_key, body, correlation_id)
             VALUES ($16, $17, $18, $19, $20)",
        )
        .await?;
    let body = serde_json::to_vec(command).expect("envelopes serialise");
    client
        .execute(
            &stmt,
            &[
                &created.message_id.0,
                &created.job_id.0,
                &created.tenant.as_str(),
                &created.kind,
                &(created.version as i32),
                &(created.attempt as i32),
                &(created.seq as i64),
                &created.occurred_at,
                &to_json(created),
                &view.job_id.0,
                &view.tenant.as_str(),
                &view.status.as_str(),
                &view.created_at,
                &view.updated_at,
                &to_json(view),
                &command.message_id.0,
                &command.job_id.0,
                &routing_key,
                &body,
                &correlation_id,
            ],
        )
        .await?;
    Ok(())
}

/// The writes of [`create_job`], inside the caller's transaction.
pub async fn insert_job(tx: &impl GenericClient, job: &NewJob<'_>) -> Result<(), DbError> {
    let NewJob {
        created,
        view,
        command,
        routing_key,
        correlation_id,
    } = *job;
    insert_event(tx, created).await?;
    insert_view(tx, view).await?;
    let body = serde_json::to_vec(command).expect("envelopes serialise");
    tx.execute(
        "INSERT INTO outbox (message_id, job_id, routing_key, body, correlation_id)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &command.message_id.0,
            &command.job_id.0,
            &routing_key,
            &body,
            &correlation_id,
        ],
    )
    .await?;
    Ok(())
}

/// Forgets outbox rows whose commands the broker confirmed, in one statement.
pub async fn delete_outbox_rows(pool: &Pool, messages: &[Uuid]) -> Result<(), DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("DELETE FROM outbox WHERE message_id = ANY($1)")
        .await?;
    client.execute(&stmt, &[&messages]).await?;
    Ok(())
}

/// Forgets one outbox row inside the relay's transaction, which holds it locked.
pub async fn delete_outbox_row(tx: &impl GenericClient, message: Uuid) -> Result<(), DbError> {
    tx.execute("DELETE FROM outbox WHERE message_id = $1", &[&message])
        .await?;
    Ok(())
}

/// Puts a row whose publish failed back with exponential backoff (1 s doubling, at most 60 s).
pub async fn postpone_outbox_row(tx: &impl GenericClient, message: Uuid) -> Result<(), DbError> {
    tx.execute(
        "UPDATE outbox SET attempts = attempts + 1,
         next_attempt_at = now() + make_interval(secs => least(60, power(2, attempts)))
         WHERE message_id = $1",
        &[&message],
    )
    .await?;
    Ok(())
}

pub struct OutboxRow {
    pub message_id: Uuid,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
}

/// Outbox rows older than `grace_secs` (whose fast-path publish evidently did not confirm),
/// locked so that two relays never publish the same row at once. The caller publishes them and
/// deletes them in the same transaction.
pub async fn due_outbox(
    tx: &impl GenericClient,
    grace_secs: f64,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    Ok(tx
        .query(
            "SELECT message_id, routing_key, body, correlation_id FROM outbox
             WHERE created_at < now() - make_interval(secs => $1) AND next_attempt_at <= now()
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&grace_secs, &limit],
        )
        .await?
        .into_iter()
        .map(|r| OutboxRow {
            message_id: r.get(0),
            routing_key: r.get(1),
            body: r.get(2),
            correlation_id: r.get(3),
        })
        .collect())
}

pub async fn get_view(
    pool: &Pool,
    tenant: &TenantId,
    job: JobId,
) -> Result<Option<JobView>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT view FROM jobs WHERE job_id = $1 AND tenant = $2")
        .await?;
    match client.query_opt(&stmt, &[&job.0, &tenant.as_str()]).await? {
        Some(row) => Ok(Some(view_from_json(row.get(0))?)),
        None => Ok(None),
    }
}

/// The status alone, for a worker deciding whether a command is still worth running.
pub async fn status(pool: &Pool, job: JobId) -> Result<Option<JobStatus>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT status FROM jobs WHERE job_id = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&job.0]).await?;
    Ok(row.and_then(|r| JobStatus::parse(r.get::<_, &str>(0))))
}

/// Where one asset's bytes are: the slice `[byte_offset, byte_offset + size_bytes)` of the
/// object at `storage_key` (a job's assets share one object; see `read_model::assets`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AssetRow {
    pub storage_key: String,
    /// Absent from rows recorded before assets shared an object: those start at byte 0.
    #[serde(default)]
    pub byte_offset: i64,
    pub mime_type: String,
    pub size_bytes: i64,
    pub sha256: String,
}

pub async fn upsert_asset(
    tx: &impl GenericClient,
    tenant: &TenantId,
    job: JobId,
    asset: &AssetId,
    row: &AssetRow,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO assets (job_id, asset_id, tenant, storage_key, byte_offset, mime_type,
                             size_bytes, sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (job_id, asset_id) DO UPDATE
         SET storage_key = EXCLUDED.storage_key, byte_offset = EXCLUDED.byte_offset,
             mime_type = EXCLUDED.mime_type, size_bytes = EXCLUDED.size_bytes,
             sha256 = EXCLUDED.sha256",
        &[
            &job.0,
            &asset.as_str(),
            &tenant.as_str(),
            &row.storage_key,
            &row.byte_offset,
            &row.mime_type,
            &row.size_bytes,
            &row.sha256,
        ],
    )
    .await?;
    Ok(())
}

/// Indexes many assets in one statement (the projector's batches).
pub async fn upsert_assets(
    tx: &impl GenericClient,
    rows: &[(&TenantId, JobId, &AssetId, &AssetRow)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let jobs: Vec<Uuid> = rows.iter().map(|r| r.1 .0).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.3.storage_key.as_str()).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.3.byte_offset).collect();
    let mimes: Vec<&str> = rows.iter().map(|r| r.3.mime_type.as_str()).collect();
    let sizes: Vec<i64> = rows.iter().map(|r| r.3.size_bytes).collect();
    let sums: Vec<&str> = rows.iter().map(|r| r.3.sha256.as_str()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO assets (job_id, asset_id, tenant, storage_key, byte_offset, mime_type,
                                 size_bytes, sha256)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                  $6::text[], $7::int8[], $8::text[])
             ON CONFLICT (job_id, asset_id) DO UPDATE
             SET storage_key = EXCLUDED.storage_key, byte_offset = EXCLUDED.byte_offset,
                 mime_type = EXCLUDED.mime_type, size_bytes = EXCLUDED.size_bytes,
                 sha256 = EXCLUDED.sha256",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &jobs, &ids, &tenants, &keys, &offsets, &mimes, &sizes, &sums,
        ],
    )
    .await?;
    Ok(())
}

/// Removes the asset index of several jobs in one statement.
pub async fn delete_assets_of(tx: &impl GenericClient, jobs: &[Uuid]) -> Result<u64, DbError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    Ok(tx
        .execute("DELETE FROM assets WHERE job_id = ANY($1)", &[&jobs])
        .await?)
}

/// Removes a job's asset index (its objects stay in storage, unreachable through the API).
pub async fn delete_assets(tx: &impl GenericClient, job: JobId) -> Result<u64, DbError> {
    Ok(tx
        .execute("DELETE FROM assets WHERE job_id = $1", &[&job.0])
        .await?)
}

/// One asset of one of the tenant's jobs. `None` for another tenant's, exactly as for a missing one.
pub async fn get_asset(
    pool: &Pool,
    tenant: &TenantId,
    job: JobId,
    asset: &AssetId,
) -> Result<Option<AssetRow>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT storage_key, byte_offset, mime_type, size_bytes, sha256 FROM assets
             WHERE job_id = $1 AND asset_id = $2 AND tenant = $3",
            &[&job.0, &asset.as_str(), &tenant.as_str()],
        )
        .await?
        .map(|r| AssetRow {
            storage_key: r.get(0),
            byte_offset: r.get(1),
            mime_type: r.get(2),
            size_bytes: r.get(3),
            sha256: r.get(4),
        }))
}

/// The tenant's job, locked for update. `None` for another tenant's, as for a missing one.
pub async fn lock_tenant_view(
    tx: &impl GenericClient,
    tenant: &TenantId,
    job: JobId,
) -> Result<Option<JobView>, DbError> {
    match tx
        .query_opt(
            "SELECT view FROM jobs WHERE job_id = $1 AND tenant = $2 FOR UPDATE",
            &[&job.0, &tenant.as_str()],
        )
        .await?
    {
        Some(row) => Ok(Some(view_from_json(row.get(0))?)),
        None => Ok(None),
    }
}

pub async fn mark_cancel_requested(tx: &impl GenericClient, job: JobId) -> Result<(), DbError> {
    tx.execute(
        "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) WHERE job_id = $1",
        &[&job.0],
    )
    .await?;
    Ok(())
}

pub async fn cancel_requested(pool: &Pool, job: JobId) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT cancel_requested_at IS NOT NULL FROM jobs WHERE job_id = $1")
        .await?;
    Ok(client
        .query_opt(&stmt, &[&job.0])
        .await?
        .is_some_and(|r| r.get(0)))
}

/// What a worker asks before it runs a command, in one statement: the job's status, and
/// whether a client asked to cancel it.
pub async fn run_state(pool: &Pool, job: JobId) -> Result<Option<(JobStatus, bool)>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT status, cancel_requested_at IS NOT NULL FROM jobs WHERE job_id = $1",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&job.0])
        .await?
        .and_then(|r| Some((JobStatus::parse(r.get::<_, &str>(0))?, r.get(1)))))
}

/// Unfinished jobs whose view has not changed for `idle_secs`, locked (skipping rows another
/// reaper holds) until the transaction ends.
pub async fn lock_stale_jobs(
    tx: &impl GenericClient,
    idle_secs: f64,
    limit: i64,
) -> Result<Vec<JobView>, DbError> {
    tx.query(
        "SELECT view FROM jobs
         WHERE status IN ('pending', 'running') AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        &[&idle_secs, &limit],
    )
    .await?
    .into_iter()
    .map(|r| view_from_json(r.get(0)))
    .collect()
}

/// Appends many events in one statement; returns the message ids that were new (the others were
/// already logged and must not be applied again).
pub async fn insert_events(
    tx: &impl GenericClient,
    raws: &[&RawEnvelope],
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    let ids: Vec<Uuid> = raws.iter().map(|r| r.message_id.0).collect();
    let jobs: Vec<Uuid> = raws.iter().map(|r| r.job_id.0).collect();
    let tenants: Vec<&str> = raws.iter().map(|r| r.tenant.as_str()).collect();
    let kinds: Vec<&str> = raws.iter().map(|r| r.kind.as_str()).collect();
    let versions: Vec<i32> = raws.iter().map(|r| r.version as i32).collect();
    let attempts: Vec<i32> = raws.iter().map(|r| r.attempt as i32).collect();
    let seqs: Vec<i64> = raws.iter().map(|r| r.seq as i64).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = raws.iter().map(|r| r.occurred_at).collect();
    let bodies: Vec<_> = raws.iter().map(|r| to_json(*r)).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (message_id, job_id, tenant, type, version, attempt, seq, occurred_at, envelope)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[],
                                  $6::int4[], $7::int8[], $8::timestamptz[], $9::jsonb[])
             ON CONFLICT (message_id) DO NOTHING
             RETURNING message_id",
        )
        .await?;
    Ok(tx
        .query(
            &stmt,
            &[
                &ids, &jobs, &tenants, &kinds, &versions, &attempts, &seqs, &times, &bodies,
            ],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// The views of several jobs, locked for update in job-id order (so two projectors locking
/// overlapping sets cannot deadlock).
pub async fn lock_views(tx: &impl GenericClient, jobs: &[Uuid]) -> Result<Vec<JobView>, DbError> {
    let stmt = tx
        .prepare_cached("SELECT view FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE")
        .await?;
    tx.query(&stmt, &[&jobs])
        .await?
        .into_iter()
        .map(|r| view_from_json(r.get(0)))
        .collect()
}

/// Writes many views in one statement.
pub async fn save_views(tx: &impl GenericClient, views: &[&JobView]) -> Result<(), DbError> {
    if views.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = views.iter().map(|v| v.job_id.0).collect();
    let statuses: Vec<&str> = views.iter().map(|v| v.status.as_str()).collect();
    let updated: Vec<chrono::DateTime<chrono::Utc>> = views.iter().map(|v| v.updated_at).collect();
    let bodies: Vec<_> = views.iter().map(|v| to_json(*v)).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs AS j SET status = u.status, updated_at = u.updated_at, view = u.view
             FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[])
                  AS u(job_id, status, updated_at, view)
             WHERE j.job_id = u.job_id",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &statuses, &updated, &bodies])
        .await?;
    Ok(())
}

/// Takes, up front, the lock an event insert takes anyway. A transaction that locks a job row
/// and then appends an event calls it first, so that it acquires locks in the same order as
/// replay's swap (events, then jobs) and the two can never deadlock.
pub async fn lock_events_for_append(tx: &impl GenericClient) -> Result<(), DbError> {
    tx.batch_execute("LOCK TABLE events IN ROW EXCLUSIVE MODE")
        .await?;
    Ok(())
}

/// Where a page of a tenant's job list starts: after the job with this creation time and id
/// (the order of the `jobs_tenant_created` index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub job_id: Uuid,
}

/// Up to `limit` of the tenant's jobs, newest first, optionally of one status, starting after
/// `after`. Each view comes with the cursor that points just past it.
/// What `GET /bd/jobs?q=` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// A job id or a chat id.
    Id(uuid::Uuid),
    /// Part of a job id (lower-case hex and dashes), as people copy it from a list. v7 ids
    /// start with their creation time, so jobs of the same minute share a start: any part
    /// matches, not only the start.
    IdPart(String),
    Preset(crate::domain::plan::Preset),
}

pub async fn list_views(
    pool: &Pool,
    tenant: &TenantId,
    status: Option<JobStatus>,
    search: Option<&Search>,
    after: Option<ListCursor>,
    limit: i64,
) -> Result<Vec<(JobView, ListCursor)>, DbError> {
    let client = pool.get().await?;
    let status = status.map(|s| s.as_str());
    let (after_at, after_id) = match after {
        Some(c) => (Some(c.created_at), Some(c.job_id)),
        None => (None, None),
    };
    let (id, prefix, preset) = match search {
        None => (None, None, None),
        Some(Search::Id(id)) => (Some(*id), None, None),
        Some(Search::IdPart(p)) => (None, Some(format!("%{p}%")), None),
        Some(Search::Preset(p)) => (None, None, Some(p.as_str())),
    };
    client
        .query(
            "SELECT view, created_at, job_id FROM jobs
             WHERE tenant = $1
               AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR (created_at, job_id) < ($3, $4::uuid))
               AND ($6::uuid IS NULL OR job_id = $6 OR view->>'chat_id' = $6::text)
               AND ($7::text IS NULL OR job_id::text LIKE $7)
               AND ($8::text IS NULL OR view->>'preset' = $8)
             ORDER BY created_at DESC, job_id DESC
             LIMIT $5",
            &[
                &tenant.as_str(),
                &status,
                &after_at,
                &after_id,
                &limit,
                &id,
                &prefix,
                &preset,
            ],
        )
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                view_from_json(r.get(0))?,
                ListCursor {
                    created_at: r.get(1),
                    job_id: r.get(2),
                },
            ))
        })
        .collect()
}

/// How many jobs there are of each status, over all tenants (for `/metrics`).
pub async fn count_by_status(pool: &Pool) -> Result<Vec<(String, i64)>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query("SELECT status, count(*) FROM jobs GROUP BY status", &[])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Records an event the projector dead-letters because it can never be applied. Idempotent: a
/// redriven copy is recorded once.
pub async fn record_rejection(
    tx: &impl GenericClient,
    raw: &RawEnvelope,
    reference: &str,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO projector_rejections (message_id, job_id, tenant, type, reference)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
        &[
            &raw.message_id.0,
            &raw.job_id.0,
            &raw.tenant.as_str(),
            &raw.kind,
            &reference,
        ],
    )
    .await?;
    Ok(())
}

/// How many events the projector has dead-lettered as impossible to apply, ever.
pub async fn rejected_events(pool: &Pool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT count(*) FROM projector_rejections", &[])
        .await?;
    Ok(row.get(0))
}

/// How late the projector is, in seconds: the largest gap between an event's occurrence (the
/// worker's clock) and its application (the database's clock) over the events applied in the
/// last minute; 0 when none were. A backlog shows as the projector queue's depth.
pub async fn projector_lag_seconds(pool: &Pool) -> Result<f64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT coalesce(extract(epoch FROM max(recorded_at - occurred_at))::float8, 0)
             FROM events WHERE recorded_at > now() - interval '1 minute'",
            &[],
        )
        .await?;
    Ok(row.get::<_, f64>(0).max(0.0))
}
