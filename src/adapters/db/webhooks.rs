//! Webhooks' rows: tenants' endpoints and secrets, the deliveries the projector queues in the
//! transaction that makes a job terminal, the dispatcher's claims and the attempts it records.
//! What to send and when is decided in `domain::webhooks`; this module only moves rows.

use super::DbError;
use crate::domain::ids::{JobId, TenantId};
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use std::time::Duration;
use uuid::Uuid;

/// A delivery to queue: a job reached outcome `event` (`job.completed`, ...), or a stage
/// (`job.stage`, the stage named in the payload and in `delivery_id`).
pub struct NewDelivery {
    pub delivery_id: Uuid,
    pub job_id: JobId,
    pub tenant: String,
    pub event: &'static str,
    pub url: Option<String>,
    pub payload: serde_json::Value,
}

/// Queues deliveries, one statement for all, numbered (`id`, the order a job's deliveries go out
/// in) in the order of `rows`: only for tenants with an endpoint (the secret signs them), and
/// once per delivery id (a job's outcome, or one of its stages) however often the projector
/// folds the same transition (a redelivered event, a competing projector). Returns how many
/// were queued.
pub async fn enqueue(tx: &impl GenericClient, rows: &[NewDelivery]) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.delivery_id).collect();
    let jobs: Vec<Uuid> = rows.iter().map(|r| r.job_id.0).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let events: Vec<&str> = rows.iter().map(|r| r.event).collect();
    let urls: Vec<Option<&str>> = rows.iter().map(|r| r.url.as_deref()).collect();
    let payloads: Vec<&serde_json::Value> = rows.iter().map(|r| &r.payload).collect();
    Ok(tx
        .execute(
            "INSERT INTO webhook_deliveries (delivery_id, job_id, tenant, event, url, payload)
             SELECT t.d, t.j, t.tenant, t.ev, t.url, t.p
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[])
                  WITH ORDINALITY AS t(d, j, tenant, ev, url, p, n)
             WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.tenant = t.tenant)
             ORDER BY t.n
             ON CONFLICT DO NOTHING",
            &[&ids, &jobs, &tenants, &events, &urls, &payloads],
        )
        .await?)
}

/// Whether the tenant has an endpoint (and so a secret to sign with).
pub async fn has_endpoint(pool: &Pool, tenant: &TenantId) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT 1 FROM webhook_endpoints WHERE tenant = $1",
            &[&tenant.as_str()],
        )
        .await?
        .is_some())
}

/// Sets a tenant's endpoint URL. A new endpoint gets `new_secret`, which is returned; an
/// existing one keeps its secret (`None`).
pub async fn set_endpoint(
    pool: &Pool,
    tenant: &TenantId,
    url: &str,
    new_secret: &str,
) -> Result<Option<String>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO webhook_endpoints (tenant, url, secret) VALUES ($1, $2, $3)
             ON CONFLICT (tenant) DO UPDATE SET url = excluded.url, updated_at = now()
             RETURNING secret = $3",
            &[&tenant.as_str(), &url, &new_secret],
        )
        .await?;
    Ok(row.get::<_, bool>(0).then(|| new_secret.to_owned()))
}

/// Replaces a tenant's secret; false when it has no endpoint.
pub async fn rotate_secret(pool: &Pool, tenant: &TenantId, secret: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE webhook_endpoints SET secret = $2, updated_at = now() WHERE tenant = $1",
            &[&tenant.as_str(), &secret],
        )
        .await?
        == 1)
}

/// An endpoint as `webhooks list` shows it (never the secret).
pub struct Endpoint {
    pub tenant: String,
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub pending: i64,
    pub failed: i64,
}

/// Endpoints (one tenant's, or all), with their deliveries still to send and given up.
pub async fn list_endpoints(
    pool: &Pool,
    tenant: Option<&TenantId>,
) -> Result<Vec<Endpoint>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT e.tenant, e.url, e.created_at, e.updated_at,
                    (SELECT count(*) FROM webhook_deliveries d
                      WHERE d.tenant = e.tenant AND d.state = 'pending'),
                    (SELECT count(*) FROM webhook_deliveries d
                      WHERE d.tenant = e.tenant AND d.state = 'failed')
             FROM webhook_endpoints e WHERE $1::text IS NULL OR e.tenant = $1
             ORDER BY e.tenant",
            &[&tenant.map(|t| t.as_str())],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Endpoint {
            tenant: r.get(0),
            url: r.get(1),
            created_at: r.get(2),
            updated_at: r.get(3),
            pending: r.get(4),
            failed: r.get(5),
        })
        .collect())
}

/// A delivery the dispatcher has claimed (leased) to send now.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: Uuid,
    pub job_id: JobId,
    pub event: String,
    pub url: String,
    pub secret: String,
    /// The body, byte for byte the same on every attempt (jsonb's text form is canonical).
    pub body: String,
    /// Attempts already made in this round.
    pub attempts: i32,
}

/// Claims up to `limit` due deliveries, each the oldest still pending of its job (so a job's
/// deliveries go out in order), and leases them for `lease`: until then no other dispatcher
/// takes them, and if this one dies they are taken again (at least once). One statement; rows
/// another dispatcher is claiming are skipped, not waited for.
pub async fn claim_due(pool: &Pool, limit: i64, lease: Duration) -> Result<Vec<Claimed>, DbError> {
    let client = pool.get().await?;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "WITH due AS (
                 SELECT d.id FROM webhook_deliveries d
                 WHERE d.state = 'pending' AND d.next_attempt_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                   WHERE p.job_id = d.job_id AND p.state = 'pending' AND p.id < d.id)
                 ORDER BY d.next_attempt_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d
             SET next_attempt_at = now() + $2 * interval '1 millisecond'
             FROM due, webhook_endpoints e
             WHERE d.id = due.id AND e.tenant = d.tenant
             RETURNING d.delivery_id, d.job_id, d.event, coalesce(d.url, e.url), e.secret,
                       d.payload::text, d.attempts",
            &[&limit, &(lease_ms as f64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Claimed {
            delivery_id: r.get(0),
            job_id: JobId(r.get(1)),
            event: r.get(2),
            url: r.get(3),
            secret: r.get(4),
            body: r.get(5),
            attempts: r.get(6),
        })
        .collect())
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

/// One attempt's record.
pub struct Attempt<'a> {
    pub delivery_id: Uuid,
    pub job_id: JobId,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: i32,
    pub error: Option<&'a str>,
    pub after: After,
}

/// Records an attempt and moves its delivery on, in one transaction.
pub async fn record_attempt(pool: &Pool, a: &Attempt<'_>) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let (state, next) = match a.after {
        After::Delivered => ("delivered", None),
        After::RetryAt(at) => ("pending", Some(at)),
        After::Failed => ("failed", None),
    };
    let row = tx
        .query_opt(
            "UPDATE webhook_deliveries
             SET state = $2, attempts = attempts + 1,
                 next_attempt_at = coalesce($3, next_attempt_at)
             WHERE delivery_id = $1 AND state = 'pending'
             RETURNING attempts",
            &[&a.delivery_id, &state, &next],
        )
        .await?;
    // Gone from `pending` meanwhile (a slower twin of this attempt recorded first): the
    // attempt still happened, and is listed under the round's next number.
    let attempt: i32 = match row {
        Some(r) => r.get(0),
        None => tx
            .query_one(
                "SELECT attempts + 1 FROM webhook_deliveries WHERE delivery_id = $1",
                &[&a.delivery_id],
            )
            .await?
            .get(0),
    };
    tx.execute(
        "INSERT INTO webhook_attempts
             (delivery_id, attempt, job_id, attempted_at, status_code, latency_ms, error,
              next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &a.delivery_id,
            &attempt,
            &a.job_id.0,
            &a.attempted_at,
            &a.status_code.map(i32::from),
            &a.latency_ms,
            &a.error,
            &next,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Puts deliveries that were given up back in line, as new: every one, one tenant's, or one
/// job's. Returns how many.
pub async fn redeliver(
    pool: &Pool,
    tenant: Option<&TenantId>,
    job: Option<JobId>,
) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now()
             WHERE state = 'failed' AND ($1::text IS NULL OR tenant = $1)
               AND ($2::uuid IS NULL OR job_id = $2)",
            &[&tenant.map(|t| t.as_str()), &job.map(|j| j.0)],
        )
        .await?)
}

/// A delivery with its attempts, as `GET /bd/jobs/{id}/webhooks` lists them.
pub struct DeliveryInfo {
    pub delivery_id: Uuid,
    pub event: String,
    /// The stage a `job.stage` delivery announces.
    pub stage: Option<String>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptInfo>,
}

pub struct AttemptInfo {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A tenant's job's deliveries in order, each with its attempts in order; `None` when the
/// tenant has no such job.
pub async fn deliveries_of_job(
    pool: &Pool,
    tenant: &TenantId,
    job: JobId,
) -> Result<Option<Vec<DeliveryInfo>>, DbError> {
    let client = pool.get().await?;
    let known = client
        .query_opt(
            "SELECT 1 FROM jobs WHERE job_id = $1 AND tenant = $2",
            &[&job.0, &tenant.as_str()],
        )
        .await?;
    if known.is_none() {
        return Ok(None);
    }
    let deliveries = client
        .query(
            "SELECT delivery_id, event, state, created_at,
                    CASE WHEN state = 'pending' THEN next_attempt_at END,
                    CASE WHEN event = 'job.stage' THEN payload #>> '{data,stage}' END
             FROM webhook_deliveries WHERE job_id = $1 AND tenant = $2 ORDER BY id",
            &[&job.0, &tenant.as_str()],
        )
        .await?;
    let attempts = client
        .query(
            "SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, error,
                    next_attempt_at
             FROM webhook_attempts WHERE job_id = $1 ORDER BY id",
            &[&job.0],
        )
        .await?;
    Ok(Some(
        deliveries
            .iter()
            .map(|d| {
                let id: Uuid = d.get(0);
                DeliveryInfo {
                    delivery_id: id,
                    event: d.get(1),
                    state: d.get(2),
                    created_at: d.get(3),
                    next_attempt_at: d.get(4),
                    stage: d.get(5),
                    attempts: attempts
                        .iter()
                        .filter(|a| a.get::<_, Uuid>(0) == id)
                        .map(|a| AttemptInfo {
                            attempt: a.get(1),
                            attempted_at: a.get(2),
                            status_code: a.get(3),
                            latency_ms: a.get(4),
                            error: a.get(5),
                            next_attempt_at: a.get(6),
                        })
                        .collect(),
                }
            })
            .collect(),
    ))
}
