//! Queuing a job's webhooks: the delivery row is written in the same transaction as the view
//! that makes the job `completed`, `failed` or `cancelled`, or (for a job that asked for its
//! stages) reach a later stage of its plan (an outbox of webhooks), so a delivery exists if and
//! only if what it announces was committed, and nothing is kept in memory. Replay rebuilds
//! views without passing here, so it never re-sends old outcomes or stages; nor does a job
//! rebuilt from the log when its `job.created` arrives after its other events (its stages are
//! not announced). The dispatcher role (`src/webhooks/`) sends what is queued.

use super::ReadModelError;
use crate::adapters::db::{self, webhooks::NewDelivery};
use crate::domain::job::{JobStatus, JobView};
use crate::domain::messages::kinds;
use crate::domain::plan::Capability;
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

/// The announcement of `stage`, which `view` (as the event that reached it left it) has just
/// reached; see [`webhooks::stage_to_announce`].
pub fn stage_delivery(view: &JobView, stage: Capability) -> NewDelivery {
    NewDelivery {
        delivery_id: webhooks::stage_delivery_id(view.job_id, stage),
        job_id: view.job_id,
        tenant: view.tenant.as_str().to_owned(),
        event: webhooks::STAGE_EVENT,
        url: view.webhook_url.clone(),
        payload: webhooks::stage_payload(view, stage),
    }
}

/// Queues the stage announcements `stages` (in the order they were reached), then the deliveries
/// of the views that have just become terminal: one statement, none when there is nothing to
/// queue. Rows are numbered in that order, so a job's stages go out before its outcome. Tenants
/// without an endpoint get none; a (job, outcome) or (job, stage) already queued is not queued
/// again.
pub async fn queue<'a>(
    tx: &impl deadpool_postgres::GenericClient,
    stages: Vec<NewDelivery>,
    newly_terminal: impl IntoIterator<Item = &'a JobView>,
) -> Result<(), ReadModelError> {
    let mut rows = stages;
    rows.extend(newly_terminal.into_iter().filter_map(delivery));
    db::webhooks::enqueue(tx, &rows).await?;
    Ok(())
}
