//! Idempotency keys of job creation: `(tenant, key)` → the job it created and the 202 body it
//! answered, written in the same transaction as the job so that a key names a job if and only if
//! that job exists.

use super::DbError;
use crate::domain::ids::TenantId;
use deadpool_postgres::Pool;
use uuid::Uuid;

/// The key a request carried, with what identifies its body.
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8],
}

/// What an earlier request with the same key stored.
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub job_id: Uuid,
    pub response: serde_json::Value,
}

pub enum Outcome {
    /// The job was created now.
    Created,
    /// The key was used before; nothing was written.
    Existing(Stored),
}

pub async fn find(pool: &Pool, tenant: &TenantId, key: &str) -> Result<Option<Stored>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT request_hash, job_id, response FROM idempotency_keys
             WHERE tenant = $1 AND key = $2",
            &[&tenant.as_str(), &key],
        )
        .await?
        .map(|r| Stored {
            request_hash: r.get(0),
            job_id: r.get(1),
            response: r.get(2),
        }))
}

/// Creates the job (as `jobs::create_job`) and records the key, unless the key was recorded
/// before. The key's row is written first: a concurrent request with the same key waits on it,
/// then finds it taken and reads what the winner stored.
pub async fn create_job_once(
    pool: &Pool,
    tenant: &TenantId,
    idem: &Idempotency<'_>,
    response: &serde_json::Value,
    job: &super::jobs::NewJob<'_>,
) -> Result<Outcome, DbError> {
    {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO idempotency_keys (tenant, key, request_hash, job_id, response)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, key) DO NOTHING",
                &[
                    &tenant.as_str(),
                    &idem.key,
                    &idem.request_hash,
                    &job.view.job_id.0,
                    response,
                ],
            )
            .await?;
        if inserted == 1 {
            super::jobs::insert_job(&tx, job).await?;
            tx.commit().await?;
            return Ok(Outcome::Created);
        }
    }
    find(pool, tenant, idem.key)
        .await?
        .map(Outcome::Existing)
        .ok_or_else(|| DbError::Corrupt("idempotency key vanished".into()))
}
