//! The JSON bodies of a job and of its result, rendered from its view: `GET /bd/jobs/{id}` (and
//! the job list, the cancel answer and the event stream's `progress`) and `GET .../result`, in
//! the seed's shape. Pure; the view cache keeps bodies rendered here. The JSON itself is built
//! in `domain::render`, which webhook payloads share.

use crate::domain::job::JobView;
use axum::body::Bytes;

// The bodies themselves are pure and shared with the webhook dispatcher's payload.
pub use crate::domain::render::{job_json, opt_ts, result_json, ts};

/// A job's two bodies, rendered once.
#[derive(Clone)]
pub struct Rendered {
    /// `GET /bd/jobs/{id}`.
    pub job: Bytes,
    /// `GET /bd/jobs/{id}/result`.
    pub result: Bytes,
}

impl Rendered {
    pub fn of(view: &JobView) -> Self {
        Self {
            job: Bytes::from(job_json(view).to_string()),
            result: Bytes::from(result_json(view).to_string()),
        }
    }
}

/// `GET /bd/jobs/{id}/webhooks`: each delivery (its `webhook_id` as the receiver sees it) with
/// its attempts, oldest first.
pub fn webhooks_json(
    job: crate::domain::ids::JobId,
    deliveries: &[crate::adapters::db::webhooks::DeliveryInfo],
) -> serde_json::Value {
    let deliveries: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            let attempts: Vec<serde_json::Value> = d
                .attempts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "attempt": a.attempt,
                        "attempted_at": crate::domain::render::ts_ms(a.attempted_at),
                        "status_code": a.status_code,
                        "latency_ms": a.latency_ms,
                        "error": a.error,
                        "next_attempt_at": a.next_attempt_at.map(crate::domain::render::ts_ms),
                    })
                })
                .collect();
            serde_json::json!({
                "webhook_id": crate::domain::webhooks::msg_id(d.delivery_id),
                "event": d.event,
                "state": d.state,
                "created_at": ts(d.created_at),
                "next_attempt_at": d.next_attempt_at.map(crate::domain::render::ts_ms),
                "attempts": attempts,
            })
        })
        .collect();
    serde_json::json!({ "job_id": job, "deliveries": deliveries })
}
