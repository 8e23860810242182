//! Queuing a job's webhook when it becomes terminal: the delivery row is written in the same
//! transaction as the view that makes the job `completed`, `failed` or `cancelled` (an outbox of
//! webhooks), so a delivery exists if and only if the outcome was committed, and nothing is
//! kept in memory. Replay rebuilds views without passing here, so it never re-sends old
//! outcomes; the dispatcher role (`src/webhooks/`) sends what is queued.

use super::ReadModelError;
use crate::adapters::db::{self, webhooks::NewDelivery};
use crate::domain::job::{JobStatus, JobView};
use crate::domain::messages::kinds;
use crate::domain::webhooks;

/// The delivery for a terminal view; `None` for a job still pending or running.
fn delivery(view: &JobView) -> Option<NewDelivery> {
    let event = match view.status {
        JobStatus::Completed => kinds::COMPLETED,
        JobStatus::Failed => kinds::FAILED,
        JobStatus::Cancelled => kinds::CANCELLED,
        JobStatus::Pending | JobStatus::Running => return None,
    };
    Some(NewDelivery {
        delivery_id: webhooks::delivery_id(view.job_id, event),
        job_id: view.job_id,
        tenant: view.tenant.as_str().to_owned(),
        event,
        url: view.webhook_url.clone(),
        payload: webhooks::payload(event, view),
    })
}

/// Queues the deliveries of the views that have just become terminal (one statement, none
/// when no view did). Tenants without an endpoint get none; a (job, outcome) already queued is
/// not queued again.
pub async fn queue<'a>(
    tx: &impl deadpool_postgres::GenericClient,
    newly_terminal: impl IntoIterator<Item = &'a JobView>,
) -> Result<(), ReadModelError> {
    let rows: Vec<NewDelivery> = newly_terminal.into_iter().filter_map(delivery).collect();
    db::webhooks::enqueue(tx, &rows).await?;
    Ok(())
}
