//! The JSON bodies the API answers with, rendered from views: a job's two (`GET /bd/jobs/{id}`,
//! also the job list, the cancel answer and the event stream's `progress`, and
//! `GET .../result`), built in `domain::render` because the webhook payload shares them, and
//! kept here rendered once for the view cache; and a job's webhook deliveries
//! (`GET .../webhooks`). Pure. Each body is a type, and the OpenAPI document's schema of it is
//! derived from that type (`api::openapi`).

use crate::adapters::db::webhooks::{AttemptInfo, DeliveryInfo};
use crate::domain::ids::JobId;
use crate::domain::job::JobView;
use axum::body::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

// One renderer: the API's bodies are the domain's, which the webhook payload shares.
pub use crate::domain::render::{
    job_json, opt_ts, result_json, ts, ts_ms, Availability, JobBody, ResultAssetBody, ResultBody,
    Timestamp,
};

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
        let bytes = |body: Result<Vec<u8>, serde_json::Error>| {
            Bytes::from(body.expect("a rendered body serialises"))
        };
        Self {
            job: bytes(serde_json::to_vec(&JobBody::of(view))),
            result: bytes(serde_json::to_vec(&ResultBody::of(view))),
        }
    }
}

/// `GET /bd/jobs/{id}/webhooks`: each delivery (its `webhook_id` as the receiver sees it) with
/// its attempts, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(description = "A job's webhook deliveries.")]
pub struct WebhookDeliveries {
    #[schema(value_type = Uuid)]
    pub job_id: JobId,
    /// Oldest first. Empty when the job has not ended, or its account has no webhook endpoint.
    pub deliveries: Vec<WebhookDelivery>,
}

/// One webhook of a job: an outcome to post, with every attempt at posting it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The `webhook-id` header of every attempt of this delivery: receivers deduplicate by it.
    pub webhook_id: String,
    /// The outcome delivered, or `job.stage` for a stage the job reached (also the body's
    /// `type`).
    #[schema(value_type = WebhookEvent, inline)]
    pub event: String,
    /// The stage a `job.stage` delivery announces (also the body's `data.stage`); absent for
    /// an outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::domain::plan::Capability>)]
    pub stage: Option<String>,
    /// `pending`: to be sent or retried; `delivered`: a 2xx came back; `failed`: given up
    /// (retries exhausted, or a 4xx other than 408 and 429) and kept for re-sending.
    #[schema(value_type = WebhookState, inline)]
    pub state: String,
    pub created_at: Timestamp,
    /// When a pending delivery is (re)tried next; null otherwise.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<WebhookAttempt>,
}

/// One attempt at posting a webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAttempt {
    /// The attempt's number within its round (a redelivery starts again at 1).
    #[schema(minimum = 1)]
    pub attempt: i32,
    /// When the attempt started (UTC, milliseconds).
    #[schema(format = DateTime)]
    pub attempted_at: String,
    /// The receiver's HTTP status; null when no answer came (timeout, connection refused,
    /// address not allowed).
    pub status_code: Option<i32>,
    /// How long the attempt took.
    #[schema(minimum = 0)]
    pub latency_ms: i32,
    /// Why no answer came, when none did.
    pub error: Option<String>,
    /// When the next attempt was scheduled after this one; null after a success or when the
    /// delivery was given up.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<String>,
}

// The values of a delivery's `event` and `state`, for the OpenAPI document (the database keeps
// them as text).
#[derive(ToSchema)]
pub enum WebhookEvent {
    #[schema(rename = "job.completed")]
    Completed,
    #[schema(rename = "job.failed")]
    Failed,
    #[schema(rename = "job.cancelled")]
    Cancelled,
    #[schema(rename = "job.stage")]
    Stage,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum WebhookState {
    Pending,
    Delivered,
    Failed,
}

impl WebhookDeliveries {
    pub fn of(job: JobId, deliveries: &[DeliveryInfo]) -> Self {
        Self {
            job_id: job,
            deliveries: deliveries.iter().map(WebhookDelivery::of).collect(),
        }
    }
}

impl WebhookDelivery {
    fn of(d: &DeliveryInfo) -> Self {
        Self {
            webhook_id: crate::domain::webhooks::msg_id(d.delivery_id),
            event: d.event.clone(),
            stage: d.stage.clone(),
            state: d.state.clone(),
            created_at: d.created_at.into(),
            next_attempt_at: d.next_attempt_at.map(ts_ms),
            attempts: d.attempts.iter().map(WebhookAttempt::of).collect(),
        }
    }
}

impl WebhookAttempt {
    fn of(a: &AttemptInfo) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: ts_ms(a.attempted_at),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
            next_attempt_at: a.next_attempt_at.map(ts_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_webhook_listing_serialises_field_for_field_as_the_endpoint_has_always_answered() {
        let at = Utc.with_ymd_and_hms(2026, 4, 8, 12, 7, 10).unwrap()
            + chrono::Duration::milliseconds(120);
        let job = JobId(uuid::Uuid::from_u128(7));
        let delivery_id = crate::domain::webhooks::delivery_id(job, "job.failed");
        let deliveries = [DeliveryInfo {
            delivery_id,
            event: "job.failed".into(),
            stage: None,
            state: "pending".into(),
            created_at: at,
            next_attempt_at: Some(at),
            attempts: vec![AttemptInfo {
                attempt: 1,
                attempted_at: at,
                status_code: None,
                latency_ms: 84,
                error: Some("timed out".into()),
                next_attempt_at: Some(at),
            }],
        }];
        let out = serde_json::to_string(&WebhookDeliveries::of(job, &deliveries)).unwrap();
        let expected = format!(
            concat!(
                r#"{{"job_id":"00000000-0000-0000-0000-000000000007","deliveries":[{{"#,
                r#""webhook_id":"msg_{}","event":"job.failed","state":"pending","#,
                r#""created_at":"2026-04-08T12:07:10Z","next_attempt_at":"2026-04-08T12:07:10.120Z","#,
                r#""attempts":[{{"attempt":1,"attempted_at":"2026-04-08T12:07:10.120Z","#,
                r#""status_code":null,"latency_ms":84,"error":"timed out","#,
                r#""next_attempt_at":"2026-04-08T12:07:10.120Z"}}]}}]}}"#
            ),
            delivery_id.simple()
        );
        assert_eq!(out, expected);
    }
}
