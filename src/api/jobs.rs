//! The BD jobs endpoints: create, status, result, asset download.

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::adapters::broker::{Outgoing, RUN_JOB_KEY};
use crate::adapters::db;
use crate::domain::ids::{AssetId, JobId};
use crate::domain::input::RawInput;
use crate::domain::job::{JobView, ResultView};
use crate::domain::messages::{
    run_job_command, Created, Event, EventRecord, JobRef, Position, RunJob,
};
use crate::domain::plan::{plan, planning_warnings, InputShape, Request};
use crate::domain::stages::{ExecutionOptions, IcpConfig, Summary};
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// `Json` whose rejections speak the API's error format: 400 for a body that is not JSON, 422 for
/// JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".to_owned(),
            )),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateJob {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub requested_capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub input_assets: RawInput,
    #[serde(default)]
    pub icp_config: Option<IcpConfig>,
    #[serde(default)]
    pub execution_options: Option<ExecutionOptions>,
    #[serde(default)]
    pub chat_id: Option<Uuid>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

fn parse_job_id(s: &str) -> Result<JobId, ApiError> {
    // A malformed id names no job: the same 404 as a missing one.
    Uuid::parse_str(s)
        .map(JobId)
        .map_err(|_| ApiError::NotFound("job not found"))
}

async fn load(state: &AppState, caller: &Caller, job_id: &str) -> Result<JobView, ApiError> {
    let id = parse_job_id(job_id)?;
    db::jobs::get_view(&state.pool, &caller.0, id)
        .await?
        .ok_or(ApiError::NotFound("job not found"))
}

#[derive(Serialize)]
pub struct CreatedBody {
    job_id: JobId,
    status: &'static str,
    progress_percent: u8,
    preset: Option<String>,
    requested_capabilities: Vec<String>,
    warnings: Vec<String>,
    created_at: String,
}

fn validate(
    body: &CreateJob,
) -> Result<(crate::domain::plan::Plan, crate::domain::input::JobInput), ApiError> {
    let request = match (&body.preset, &body.requested_capabilities) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "preset and requested_capabilities are mutually exclusive; send one".to_owned(),
            ))
        }
        (None, None) => {
            return Err(ApiError::Unprocessable(
                "one of preset or requested_capabilities is required".to_owned(),
            ))
        }
        (Some(p), None) => Request::Preset(p),
        (None, Some(caps)) => Request::Capabilities(caps),
    };
    let plan = plan(request).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let input = body
        .input_assets
        .validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if let Some(icp) = &body.icp_config {
        icp.validate().map_err(ApiError::Unprocessable)?;
    }
    if let Some(o) = &body.execution_options {
        o.validate().map_err(ApiError::Unprocessable)?;
    }
    Ok((plan, input))
}

/// The response header that returns a job's correlation id to its client.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The correlation id of a new job: the client's `X-Correlation-Id` (or else `X-Request-Id`)
/// when it is a sensible token, so the job joins the caller's own trace; otherwise a fresh
/// UUID. Anything else (too long, spaces, control characters) is replaced rather than refused:
/// it is a tracing aid, not part of the request, and must not be able to forge log lines.
pub fn correlation_id(headers: &HeaderMap) -> String {
    let usable = |v: &HeaderValue| {
        let s = v.to_str().ok()?;
        let ok = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| s.to_owned())
    };
    headers
        .get(CORRELATION_ID)
        .and_then(usable)
        .or_else(|| headers.get(REQUEST_ID).and_then(usable))
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<Response, ApiError> {
    let correlation = correlation_id(&headers);
    let (plan, input) = validate(&body)?;
    let icp_config = body.icp_config.unwrap_or_default();
    let shape = InputShape {
        companies: input.companies.len(),
        contacts: input.contacts.len(),
        contacts_without_email: input.contacts.iter().filter(|c| c.email.is_none()).count(),
        icp_gate_applied: icp_config.applies(),
    };
    let warnings = planning_warnings(&plan, shape);
    let job = JobRef {
        job_id: JobId::new(),
        tenant: caller.0.clone(),
    };
    let now = Utc::now();
    let created = Event::Created(Created {
        preset: plan.preset,
        requested_capabilities: plan.capabilities.clone(),
        warnings: warnings.clone(),
        chat_id: body.chat_id,
        companies: shape.companies,
        contacts: shape.contacts,
    })
    .into_envelope(&job, Position::ORIGIN, now);
    let view = JobView::created(
        &EventRecord::from_raw(&created).map_err(|e| ApiError::Internal(e.into()))?,
    )
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("created event did not start a view")))?;
    let run = RunJob {
        plan,
        input,
        icp_config,
        execution_options: body.execution_options.unwrap_or_default(),
    };
    let command = run_job_command(&job, &run, now);
    db::jobs::create_job(
        &state.pool,
        &created,
        &view,
        &command,
        RUN_JOB_KEY,
        Some(&correlation),
    )
    .await?;
    tracing::info!(job_id = %job.job_id, correlation_id = %correlation, "job created");
    // The fast path; if it fails the outbox relay publishes the command a few seconds later.
    let body_bytes = serde_json::to_vec(&command).expect("envelopes serialise");
    let exchange = state.publisher.topology().commands_exchange();
    match state
        .publisher
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: RUN_JOB_KEY,
            message_id: &command.message_id.to_string(),
            kind: &command.kind,
            body: &body_bytes,
            correlation_id: Some(&correlation),
        })
        .await
    {
        Ok(()) => {
            if let Err(e) = db::jobs::delete_outbox(&state.pool, command.message_id).await {
                tracing::warn!(error = %e, "published, but the outbox row stays for the relay");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, job_id = %job.job_id, "publish failed; the outbox relay will retry")
        }
    }
    let out = CreatedBody {
        job_id: job.job_id,
        status: "pending",
        progress_percent: 0,
        preset: view.preset.map(|p| p.as_str().to_owned()),
        requested_capabilities: view
            .requested_capabilities
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        warnings,
        created_at: ts(now),
    };
    let location = format!("/api/v1/bd/jobs/{}", job.job_id);
    let mut resp = (StatusCode::ACCEPTED, Json(out)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&correlation) {
        resp.headers_mut().insert(CORRELATION_ID, v);
    }
    Ok(resp)
}

pub fn job_json(v: &JobView) -> serde_json::Value {
    json!({
        "job_id": v.job_id,
        "status": v.status.as_str(),
        "progress_percent": v.progress_percent,
        "progress_message": v.progress_message,
        "preset": v.preset.map(|p| p.as_str()),
        "requested_capabilities": v.requested_capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "warnings": v.warnings,
        "error_message": v.error_message,
        "created_at": ts(v.created_at),
        "updated_at": ts(v.updated_at),
        "started_at": opt_ts(v.started_at),
        "completed_at": opt_ts(v.completed_at),
    })
}

pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = load(&state, &caller, &job_id).await?;
    Ok(Json(job_json(&view)))
}

/// The seed's shape, field for field.
pub fn result_json(v: &JobView) -> serde_json::Value {
    let empty = Summary::default();
    let (result_id, summary, assets, created_at) = match &v.result {
        Some(ResultView {
            result_id,
            summary,
            assets,
            created_at,
        }) => (
            Some(*result_id),
            summary,
            assets.as_slice(),
            Some(*created_at),
        ),
        None => (None, &empty, &[][..], None),
    };
    let assets: Vec<_> = assets
        .iter()
        .map(|a| {
            json!({
                "asset_id": a.asset_id,
                "label": a.label,
                "kind": a.kind,
                "mime_type": a.mime_type,
                "availability": a.availability,
                "download_url": format!("/api/v1/bd/jobs/{}/assets/{}", v.job_id, a.asset_id),
            })
        })
        .collect();
    json!({
        "result_id": result_id,
        "job_id": v.job_id,
        "status": v.status.as_str(),
        "progress_percent": v.progress_percent,
        "progress_message": v.progress_message,
        "summary": summary,
        "warnings": v.warnings,
        "result_assets": assets,
        "created_at": opt_ts(created_at),
        "completed_at": opt_ts(v.completed_at),
    })
}

pub async fn get_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = load(&state, &caller, &job_id).await?;
    Ok(Json(result_json(&view)))
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "text/csv" => "csv",
        "application/json" => "json",
        _ => "bin",
    }
}

pub async fn get_asset(
    State(state): State<AppState>,
    caller: Caller,
    Path((job_id, asset_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = parse_job_id(&job_id)?;
    let asset = AssetId::parse(&asset_id).map_err(|_| ApiError::NotFound("asset not found"))?;
    let row = db::jobs::get_asset(&state.pool, &caller.0, job, &asset)
        .await?
        .ok_or(ApiError::NotFound("asset not found"))?;
    let reader = state
        .storage
        .reader(&row.storage_key)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let stream = reader
        .into_bytes_stream(..)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let filename = format!("{}-{}.{}", asset, job, extension(&row.mime_type));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()));
    h.insert(header::CONTENT_TYPE, hv(&row.mime_type)?);
    h.insert(header::CONTENT_LENGTH, hv(&row.size_bytes.to_string())?);
    h.insert(header::ETAG, hv(&format!("\"{}\"", row.sha256))?);
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(&format!("attachment; filename=\"{filename}\""))?,
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Cancels a job. A pending job is cancelled at once (no worker has started it: its result has
/// nothing in it); a running one is flagged, and its worker stops at the next stage boundary,
/// keeping what it has done as partial assets. 409 once the job has finished.
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&job_id)?;
    let mut client = state.pool.get().await.map_err(db::DbError::from)?;
    let tx = client.transaction().await?;
    db::jobs::lock_events_for_append(&tx).await?;
    let mut view = db::jobs::lock_tenant_view(&tx, &caller.0, id)
        .await?
        .ok_or(ApiError::NotFound("job not found"))?;
    if view.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job is already {}; only pending or running jobs can be cancelled",
            view.status.as_str()
        )));
    }
    db::jobs::mark_cancel_requested(&tx, id).await?;
    if view.status == crate::domain::job::JobStatus::Pending {
        let job = JobRef {
            job_id: id,
            tenant: caller.0.clone(),
        };
        let raw = Event::Cancelled(crate::domain::messages::Cancelled {
            reason: "cancelled by the client before it started".to_owned(),
            partial: None,
        })
        .into_envelope(&job, Position::API_CANCEL, Utc::now());
        crate::projector::append_and_fold(&tx, &mut view, &raw).await?;
    }
    tx.commit().await?;
    tracing::info!(job_id = %id, status = view.status.as_str(), "cancellation requested");
    Ok((StatusCode::ACCEPTED, Json(job_json(&view))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_clients_correlation_id_is_kept_and_preferred_to_its_request_id() {
        let h = headers(&[("x-correlation-id", "abc-123"), ("x-request-id", "req-9")]);
        assert_eq!(correlation_id(&h), "abc-123");
        assert_eq!(
            correlation_id(&headers(&[("x-request-id", "req-9")])),
            "req-9"
        );
    }

    #[test]
    fn a_missing_or_unusable_correlation_id_is_replaced_by_a_fresh_uuid() {
        for h in [
            headers(&[]),
            headers(&[("x-correlation-id", "has spaces")]),
            headers(&[("x-correlation-id", &"x".repeat(129))]),
        ] {
            let id = correlation_id(&h);
            assert!(Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert_ne!(correlation_id(&headers(&[])), correlation_id(&headers(&[])));
    }
}
