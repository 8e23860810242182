//! The API's writes: creating a job (its view, its `job.created` event and its `job.run`
//! command in the outbox, one transaction, optionally under an idempotency key) and cancelling
//! one (the flag a running worker sees, or for a pending job a `job.cancelled` event folded at
//! once).

use super::{append_and_fold, ReadModelError};
use crate::adapters::db::{self, DbError};
use crate::domain::ids::{JobId, TenantId};
use crate::domain::job::{JobStatus, JobView};
use crate::domain::messages::{Cancelled, Event, JobRef, Position};
use deadpool_postgres::Pool;

pub use crate::adapters::db::idempotency::{Idempotency, Outcome};
pub use crate::adapters::db::jobs::NewJob;

/// Creates a job: view, event and outbox row commit together or not at all.
pub async fn create(pool: &Pool, job: &NewJob<'_>) -> Result<(), ReadModelError> {
    Ok(db::jobs::create_job(pool, job).await?)
}

/// Creates a job under an idempotency key, storing `response` with it, unless a job already
/// holds the key (a racing repeat), whose stored answer is returned instead.
pub async fn create_once(
    pool: &Pool,
    tenant: &TenantId,
    idem: &Idempotency<'_>,
    response: &serde_json::Value,
    job: &NewJob<'_>,
) -> Result<Outcome, ReadModelError> {
    Ok(db::idempotency::create_job_once(pool, tenant, idem, response, job).await?)
}

/// What a cancellation found.
pub enum Cancel {
    /// No such job for this tenant.
    NotFound,
    /// The job had already finished; its view as it stands.
    Finished(JobView),
    /// Requested: a pending job is cancelled now, a running one at its next stage boundary.
    Requested(JobView),
}

/// Cancels a tenant's job, in one transaction that holds the view locked.
pub async fn cancel(pool: &Pool, tenant: &TenantId, id: JobId) -> Result<Cancel, ReadModelError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    db::jobs::lock_events_for_append(&tx).await?;
    let Some(mut view) = db::jobs::lock_tenant_view(&tx, tenant, id).await? else {
        return Ok(Cancel::NotFound);
    };
    if view.status.is_terminal() {
        return Ok(Cancel::Finished(view));
    }
    db::jobs::mark_cancel_requested(&tx, id).await?;
    if view.status == JobStatus::Pending {
        let job = JobRef {
            job_id: id,
            tenant: tenant.clone(),
        };
        let raw = Event::Cancelled(Cancelled {
            reason: "cancelled by the client before it started".to_owned(),
            partial: None,
        })
        .into_envelope(&job, Position::API_CANCEL, chrono::Utc::now());
        append_and_fold(&tx, &mut view, &raw).await?;
    }
    tx.commit().await?;
    Ok(Cancel::Requested(view))
}
