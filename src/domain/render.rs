//! The JSON bodies of a job (`GET /bd/jobs/{id}`, also the job list, the cancel answer, the
//! event stream's `progress` and the webhook payload's `data`) and of its result
//! (`GET .../result`), in the seed's shape, from its view. Each body is a type: the API
//! (`api::render`) serves it, the webhook payload (`domain::webhooks::payload`) carries the
//! job's with the result's summary, and the OpenAPI document's schema of it is derived from it
//! (`ToSchema` only describes: no I/O). Pure.

use super::ids::{AssetId, JobId};
use super::job::{JobStatus, JobView, ResultView};
use super::plan::{Capability, Preset};
use super::stages::Summary;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// The example of the seed's `GET /api/v1/bd/jobs/{job_id}/result` page, verbatim: its shape is
/// binding, and the document shows it as the result's example.
pub const SEED_RESULT_EXAMPLE: &str = r#"{
  "result_id": "f9e8d7c6-b5a4-3210-fedc-ba9876543210",
  "job_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
  "status": "completed",
  "progress_percent": 100,
  "progress_message": "Job complete.",
  "summary": {
    "delivered_contacts": 18,
    "verified_emails": 14,
    "companies_processed": 2
  },
  "warnings": [],
  "result_assets": [
    {
      "asset_id": "verified_contacts",
      "label": "Verified Contacts",
      "kind": "contacts",
      "mime_type": "application/json",
      "availability": "inline",
      "download_url": "/api/v1/bd/jobs/a1b2c3d4-e5f6-7890-abcd-ef1234567890/assets/verified_contacts"
    }
  ],
  "created_at": "2026-04-08T12:08:12Z",
  "completed_at": "2026-04-08T12:08:12Z"
}"#;

pub fn seed_result_example() -> Value {
    serde_json::from_str(SEED_RESULT_EXAMPLE).expect("the seed example is JSON")
}

/// A timestamp as the API writes it: RFC 3339, UTC, whole seconds, `Z`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(
    value_type = String,
    format = DateTime,
    pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
    description = "RFC 3339 timestamp in UTC, seconds precision, `Z` suffix.",
    example = "2026-04-08T12:08:12Z"
)]
pub struct Timestamp(pub String);

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp(ts(t))
    }
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// With milliseconds: webhook attempts and retries can be closer together than a second.
pub fn ts_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(Timestamp::from)
}

/// `GET /bd/jobs/{id}`: a job's status and progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Job, description = "A job's status and progress.")]
pub struct JobBody {
    #[schema(value_type = Uuid)]
    pub job_id: JobId,
    pub status: JobStatus,
    /// Never decreases; 100 only once `completed`.
    #[schema(minimum = 0, maximum = 100)]
    pub progress_percent: u8,
    /// Human-readable current stage, e.g. `Queued.`, `Discovering contacts at 2 companies...`,
    /// `Job complete.`.
    pub progress_message: String,
    /// The preset requested; null when capabilities were listed.
    pub preset: Option<Preset>,
    /// The capabilities as planned.
    pub requested_capabilities: Vec<Capability>,
    /// Planning warnings, then execution warnings, each once.
    pub warnings: Vec<String>,
    /// Why the job failed; null unless `status` is `failed`.
    pub error_message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When a worker first started the job; null while pending.
    pub started_at: Option<Timestamp>,
    /// When the job reached a terminal status; null until then.
    pub completed_at: Option<Timestamp>,
}

impl JobBody {
    pub fn of(v: &JobView) -> Self {
        Self {
            job_id: v.job_id,
            status: v.status,
            progress_percent: v.progress_percent,
            progress_message: v.progress_message.clone(),
            preset: v.preset,
            requested_capabilities: v.requested_capabilities.clone(),
            warnings: v.warnings.clone(),
            error_message: v.error_message.clone(),
            created_at: v.created_at.into(),
            updated_at: v.updated_at.into(),
            started_at: opt_ts(v.started_at),
            completed_at: opt_ts(v.completed_at),
        }
    }
}

/// One downloadable output of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ResultAsset, description = "One downloadable output of a job.")]
pub struct ResultAssetBody {
    /// The asset's id within its job.
    #[schema(
        value_type = String,
        pattern = "^[a-z0-9_][a-z0-9_-]{0,63}$",
        examples("verified_contacts", "verified_contacts_csv")
    )]
    pub asset_id: AssetId,
    /// Human-readable name.
    #[schema(examples("Verified Contacts", "Verified Contacts (CSV)"))]
    pub label: String,
    /// What the asset holds.
    #[schema(examples("contacts"))]
    pub kind: String,
    /// The `Content-Type` the download is served with.
    #[schema(examples("application/json", "text/csv"))]
    pub mime_type: String,
    /// inline: stored and downloadable now via download_url. partial: stored and downloadable
    /// now, but from a job cancelled mid-run: it holds what the job had done before it stopped.
    #[schema(value_type = Availability, inline)]
    pub availability: String,
    /// Relative URL of `GET /api/v1/bd/jobs/{job_id}/assets/{asset_id}`; send the same bearer
    /// token.
    #[schema(
        format = "uri-reference",
        pattern = "^/api/v1/bd/jobs/[0-9a-f-]{36}/assets/[a-z0-9_][a-z0-9_-]{0,63}$"
    )]
    pub download_url: String,
}

// The values of an asset's `availability`, for the OpenAPI document (the read model keeps it
// as text).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Availability {
    Inline,
    Partial,
}

/// `GET /bd/jobs/{id}/result`: the seed's shape, field for field.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(
    as = JobResult,
    description = "A job's result: summary and downloadable assets. Available at any status; before completion `result_id` and `created_at` are null, `summary` is all zeros and `result_assets` is empty.",
    example = json!(seed_result_example())
)]
pub struct ResultBody {
    /// UUID of the result record; null while the job has not produced a result.
    pub result_id: Option<Uuid>,
    /// UUID of the parent job.
    #[schema(value_type = Uuid)]
    pub job_id: JobId,
    pub status: JobStatus,
    /// Completion percentage (0-100).
    #[schema(minimum = 0, maximum = 100)]
    pub progress_percent: u8,
    /// Human-readable current stage description.
    pub progress_message: String,
    pub summary: Summary,
    /// Non-fatal warnings from planning and execution.
    pub warnings: Vec<String>,
    /// Downloadable output assets; empty until the job completes.
    pub result_assets: Vec<ResultAssetBody>,
    /// When the result record was created; null while there is none.
    pub created_at: Option<Timestamp>,
    /// When the job reached a terminal status; null while pending or running.
    pub completed_at: Option<Timestamp>,
}

impl ResultBody {
    pub fn of(v: &JobView) -> Self {
        let (result_id, summary, assets, created_at) = match &v.result {
            Some(ResultView {
                result_id,
                summary,
                assets,
                created_at,
            }) => (
                Some(*result_id),
                summary.clone(),
                assets.as_slice(),
                Some(*created_at),
            ),
            None => (None, Summary::default(), &[][..], None),
        };
        let result_assets = assets
            .iter()
            .map(|a| ResultAssetBody {
                asset_id: a.asset_id.clone(),
                label: a.label.clone(),
                kind: a.kind.clone(),
                mime_type: a.mime_type.clone(),
                availability: a.availability.clone(),
                download_url: format!("/api/v1/bd/jobs/{}/assets/{}", v.job_id, a.asset_id),
            })
            .collect();
        Self {
            result_id,
            job_id: v.job_id,
            status: v.status,
            progress_percent: v.progress_percent,
            progress_message: v.progress_message.clone(),
            summary,
            warnings: v.warnings.clone(),
            result_assets,
            created_at: opt_ts(created_at),
            completed_at: opt_ts(v.completed_at),
        }
    }
}

pub fn job_json(v: &JobView) -> serde_json::Value {
    serde_json::to_value(JobBody::of(v)).expect("a job body serialises")
}

/// The seed's shape, field for field.
pub fn result_json(v: &JobView) -> serde_json::Value {
    serde_json::to_value(ResultBody::of(v)).expect("a result body serialises")
}
