//! The BD jobs endpoints: create (with `Idempotency-Key`), list, status, result, asset download,
//! webhook deliveries.

use super::auth::Caller;
use super::error::ApiError;
use super::range;
use super::render::{JobBody, Rendered, Timestamp, WebhookDeliveries};
use super::upload::JobRequest;
use super::AppState;
use crate::adapters::broker::{Outgoing, RUN_JOB_KEY};
use crate::adapters::claims::Claims;
use crate::adapters::{db, storage};
use crate::domain::ids::{AssetId, JobId};
use crate::domain::input::{Origins, RawInput};
use crate::domain::job::{JobStatus, JobView};
use crate::domain::messages::{
    run_job_command, Created, Event, EventRecord, JobRef, Position, RunJob,
};
use crate::domain::plan::{plan, planning_warnings, Capability, InputShape, Preset, Request};
use crate::domain::stages::{DeliveredContact, ExecutionOptions, IcpConfig};
use crate::read_model::{self, jobs::Cancel};
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

/// `Json` whose rejections speak the API's error format: 400 for a body that is not JSON, 413
/// for one over the size limit, 422 for JSON of the wrong shape. It keeps the SHA-256 of the
/// body as sent, which an `Idempotency-Key` is bound to.
pub struct ApiJson<T>(pub T, pub [u8; 32]);

fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".to_owned(),
            ));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(super::MAX_BODY_BYTES);
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(limit))
            }
            Err(e) => return Err(ApiError::BadRequest(e.body_text())),
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v, hash)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// The body limit in force, put in the request's extensions by the router so that a 413 can
/// say it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The body of `POST /bd/jobs`. `preset` and the capabilities stay strings here so that the
/// planner words the refusal of an unknown one; the document gives their enums.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(
    as = CreateJobRequest,
    description = "A new BD job. Send exactly one of `preset` and `requested_capabilities` (a field that is null counts as absent): both, or neither, is refused with 422. The planner puts capabilities in their canonical order, drops duplicates and always appends `deliverable_finalize`. Unknown fields are ignored."
)]
pub struct CreateJob {
    /// A named set of capabilities. Mutually exclusive with `requested_capabilities`.
    #[serde(default)]
    #[schema(value_type = Option<Preset>)]
    pub preset: Option<String>,
    /// An explicit, non-empty list of capabilities. Mutually exclusive with `preset`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Capability>>, min_items = 1, max_items = 100)]
    pub requested_capabilities: Option<Vec<String>>,
    #[serde(default)]
    #[schema(required = true)]
    pub input_assets: RawInput,
    /// Criteria for `qualification`.
    #[serde(default)]
    pub icp_config: Option<IcpConfig>,
    /// Controls of contact discovery.
    #[serde(default)]
    pub execution_options: Option<ExecutionOptions>,
    /// Optional UUID of a conversation to associate the job with.
    #[serde(default)]
    pub chat_id: Option<Uuid>,
    /// Optional https URL to post the job's outcome to (job.completed, job.failed or
    /// job.cancelled), signed per the Standard Webhooks spec with the secret of the caller's
    /// webhook endpoint, instead of that endpoint's URL. An account with no endpoint has no
    /// secret: the URL is then ignored, with a warning. Never posted to an internal address
    /// (unless the operator allows private targets, which also allows http).
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https://", max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Also post `job.stage` each time the job is seen starting a later stage of its plan
    /// (once per stage, never one older than a stage already announced, all before the
    /// outcome), to the same URL and signed the same way. Default false: the outcome only.
    #[serde(default)]
    pub webhook_stages: bool,
}

fn parse_job_id(s: &str) -> Result<JobId, ApiError> {
    // A malformed id names no job: the same 404 as a missing one.
    Uuid::parse_str(s)
        .map(JobId)
        .map_err(|_| ApiError::NotFound("job not found"))
}

/// The answer of `POST /bd/jobs` (kept with an `Idempotency-Key`, and answered again to a
/// repeat).
#[derive(Serialize, ToSchema)]
#[schema(as = JobCreated, description = "The accepted job, as `POST /api/v1/bd/jobs` answers.")]
pub struct CreatedBody {
    /// The new job's id.
    #[schema(value_type = Uuid)]
    job_id: JobId,
    /// Always `pending` at creation.
    #[schema(inline)]
    status: Pending,
    /// Always 0 at creation.
    #[schema(minimum = 0, maximum = 0)]
    progress_percent: u8,
    /// The preset requested; null when `requested_capabilities` was sent.
    preset: Option<Preset>,
    /// The capabilities as planned: canonical order, no duplicates, ending with
    /// `deliverable_finalize`.
    requested_capabilities: Vec<Capability>,
    /// Planning warnings: parts of the request that will do nothing (e.g. a company stage with
    /// no companies).
    warnings: Vec<String>,
    created_at: Timestamp,
}

// The status of a job just created.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    Pending,
}

/// The answer of a dry run.
#[derive(Serialize, ToSchema)]
#[schema(
    description = "The answer of a dry run (`POST /bd/jobs?dry_run=true`): the request is valid and would be accepted with this plan and these warnings; nothing was created."
)]
pub struct JobCheck {
    /// Always true: an invalid request gets 422.
    valid: bool,
    /// The preset, or null for explicit capabilities.
    preset: Option<Preset>,
    /// The plan, in order, ending with `deliverable_finalize`.
    requested_capabilities: Vec<Capability>,
    /// Companies the job would process.
    companies: usize,
    /// Contacts the job would process.
    contacts: usize,
    /// The warnings the job would start with (planning, ICP ranges, columns of a file that no
    /// field has).
    warnings: Vec<String>,
}

/// One page of `GET /bd/jobs`.
#[derive(Serialize, ToSchema)]
#[schema(description = "One page of the caller's jobs.")]
pub struct JobList {
    #[schema(max_items = 100)]
    jobs: Vec<JobBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(pattern = "^[0-9a-f]{48}$")]
    next_cursor: Option<String>,
}

fn validate(
    body: &CreateJob,
    origins: Origins<'_>,
    file_problems: Vec<String>,
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
        (None, Some(caps)) => {
            crate::domain::input::check_list("requested_capabilities", caps)
                .map_err(ApiError::Unprocessable)?;
            Request::Capabilities(caps)
        }
    };
    let plan = plan(request).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let input = body
        .input_assets
        .validate_from(origins, file_problems)
        .map_err(|e| ApiError::Invalid(e.problems))?;
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

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::Unprocessable(
            "Idempotency-Key: expected 1 to 255 visible ASCII characters".to_owned(),
        )
    };
    // HTTP strips the spaces around a header value, so inside is the only place one can be.
    let v = v.to_str().map_err(|_| bad())?.trim_matches(' ');
    if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad());
    }
    Ok(Some(v.to_owned()))
}

fn accepted(body: serde_json::Value, job_id: Uuid, replayed: bool, correlation: &str) -> Response {
    let location = format!("/api/v1/bd/jobs/{job_id}");
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Ok(v) = HeaderValue::from_str(correlation) {
        resp.headers_mut().insert(CORRELATION_ID, v);
    }
    resp
}

/// A request repeated under a used key: the first answer again, if it is the same request.
fn replay(
    stored: db::idempotency::Stored,
    hash: &[u8],
    correlation: &str,
) -> Result<Response, ApiError> {
    if stored.request_hash != hash {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different request body".to_owned(),
        ));
    }
    Ok(accepted(stored.response, stored.job_id, true, correlation))
}

/// `?dry_run=true` on `POST /bd/jobs`: validate and plan, create nothing.
fn dry_run(params: &[(String, String)]) -> Result<bool, ApiError> {
    let mut dry = false;
    for (name, value) in params {
        if name == "dry_run" {
            dry = match value.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::Unprocessable(
                        "dry_run: expected true or false".to_owned(),
                    ))
                }
            };
        }
    }
    Ok(dry)
}

#[utoipa::path(
    post,
    path = "/bd/jobs",
    operation_id = "createBdJob",
    tag = "bd-jobs",
    summary = "Create a BD job",
    description = "Validates the request, plans the capabilities, stores the job and queues it for a worker. Answers at once with `202 Accepted`; poll the `Location` to follow it. Authentication is checked before the body is read, so a request with a bad key gets 401 whatever its body. With an `Idempotency-Key` header, a repeated request (same key, same tenant, the same body byte for byte) creates nothing and gets the first answer again, `202` with the same body and `Idempotent-Replayed: true`; the same key with another body gets `409`. Keys are kept as long as their job. With `dry_run=true` the request is validated and planned and nothing is created: 200 with the plan and the warnings, or the same 422 a real request would get (the web console checks an upload this way before offering to submit it).",
    params(
        ("dry_run" = Option<bool>, Query, description = "`true`: validate and plan only (200, nothing created); `false` or absent: create the job. Anything else gets 422."),
        ("Idempotency-Key" = Option<String>, Header, description = "A client-chosen key that makes retries safe: 1 to 255 visible ASCII characters (spaces allowed inside), e.g. a UUID. Scoped to the caller's account.",
            min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$", example = "0b7e1e0e-3f0a-4c57-9d43-2f5c9a1e8b10"),
        ("X-Correlation-Id" = Option<String>, Header, description = "Your trace id for this job: kept when it is 1 to 128 visible ASCII characters, otherwise replaced by a fresh UUID. It follows the job through every role's logs and message headers and is returned in the response. Any value is accepted: one that is not 1 to 128 visible ASCII characters is replaced by a fresh UUID."),
        ("X-Request-Id" = Option<String>, Header, description = "Used as the correlation id when `X-Correlation-Id` is absent. Any value is accepted: one that is not 1 to 128 visible ASCII characters is replaced by a fresh UUID."),
    ),
    request_body(
        description = "Either a JSON document (`Content-Type: application/json`), or `multipart/form-data` with the records as CSV or JSON Lines files (what `bdjobs submit` and the web console send; e.g. `curl -F 'job={\"preset\":\"verify_existing_emails\"};type=application/json' -F contacts=@contacts.csv`). At most `BDJOBS_MAX_BODY_BYTES` (16 MiB by default).",
        content(
            (CreateJob = "application/json", examples(
                ("preset" = (summary = "A preset over companies and one contact", value = json!({"preset": "full_pipeline", "input_assets": {"companies": [{"name": "Lumen Robotics", "domain": "lumen.example"}], "contacts": [{"first_name": "Priya", "last_name": "Nair", "email": "priya.nair@lumen.example", "company_domain": "lumen.example"}]}, "icp_config": {"icp_gate": "apply", "industries": ["Robotics"], "min_employees": 20}, "execution_options": {"seniorities": ["vp", "director"], "max_contacts_per_company": 5}}))),
                ("capabilities" = (summary = "Explicit capabilities", value = json!({"requested_capabilities": ["email_verify"], "input_assets": {"contacts": [{"full_name": "Ada Lovelace", "email": "ada@acme.example"}]}, "chat_id": "0b7e1e0e-3f0a-4c57-9d43-2f5c9a1e8b10"}))),
            )),
            (super::upload::JobUpload = "multipart/form-data"),
        )
    ),
    responses(
        (status = 200, description = "Dry run (`dry_run=true`): the request is valid; nothing was created.", body = JobCheck,
            example = json!({"valid": true, "preset": "verify_existing_emails", "requested_capabilities": ["email_verify", "deliverable_finalize"], "companies": 0, "contacts": 18, "warnings": []})),
        (status = 202, description = "Accepted: the job is stored and queued.", body = CreatedBody,
            headers(("Location" = String), ("Idempotent-Replayed" = String), ("X-Correlation-Id" = String)),
            example = json!({"job_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "status": "pending", "progress_percent": 0, "preset": "verify_existing_emails", "requested_capabilities": ["email_verify", "deliverable_finalize"], "warnings": [], "created_at": "2026-04-08T12:05:40Z"})),
        (status = 400, response = super::openapi::BadRequest),
        (status = 409, description = "The `Idempotency-Key` was used before with another request body.", body = super::error::ErrorBody,
            example = json!({"detail": "this Idempotency-Key was already used with a different request body"})),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
    request: JobRequest,
) -> Result<Response, ApiError> {
    let correlation = correlation_id(&headers);
    let dry = dry_run(&params)?;
    let idem_key = idempotency_key(&headers)?;
    let (origins, body_hash) = (request.origins(), request.hash);
    let body = &request.body;
    if let Some(url) = &body.webhook_url {
        crate::domain::webhooks::check_url(url, state.webhook_allow_private)
            .map_err(ApiError::Unprocessable)?;
    }
    if dry {
        let (plan, input) = validate(body, origins, request.file_problems.clone())?;
        let warnings = job_warnings(body, &plan, &input, &request.ignored_columns);
        return Ok(Json(JobCheck {
            valid: true,
            preset: plan.preset,
            requested_capabilities: plan.capabilities.clone(),
            companies: input.companies.len(),
            contacts: input.contacts.len(),
            warnings,
        })
        .into_response());
    }
    if let Some(key) = &idem_key {
        // The common repeat (a client retrying after a lost answer) is answered without planning.
        if let Some(stored) = db::idempotency::find(&state.pool, &caller.0, key).await? {
            return replay(stored, &body_hash, &correlation);
        }
    }
    let (plan, input) = validate(body, origins, request.file_problems.clone())?;
    let mut warnings = job_warnings(body, &plan, &input, &request.ignored_columns);
    // A job's own URL is signed with its tenant's secret, which only an endpoint holds: without
    // one the job runs, unannounced, and says why.
    let mut webhook_url = body.webhook_url.clone();
    if webhook_url.is_some() && !db::webhooks::has_endpoint(&state.pool, &caller.0).await? {
        webhook_url = None;
        warnings.push(NO_ENDPOINT_WARNING.to_owned());
    }
    let icp_config = body.icp_config.clone().unwrap_or_default();
    let shape = input_shape(&input, &icp_config);
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
        webhook_url,
        webhook_stages: body.webhook_stages,
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
        execution_options: body.execution_options.clone().unwrap_or_default(),
    };
    // A big job's input goes to the asset store before anything is committed: the command the
    // outbox holds and the broker carries is then small whatever the job's size.
    let claims = Claims::new(state.storage.clone(), state.publisher.max_message_bytes());
    let (command, body_bytes) = claims
        .seal(run_job_command(&job, &run, now))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not store a big job's input");
            ApiError::Unavailable("the asset store is unavailable; retry later")
        })?;
    let out = CreatedBody {
        job_id: job.job_id,
        status: Pending::Pending,
        progress_percent: 0,
        preset: view.preset,
        requested_capabilities: view.requested_capabilities.clone(),
        warnings,
        created_at: now.into(),
    };
    let out = serde_json::to_value(&out).expect("the created body serialises");
    let new_job = read_model::jobs::NewJob {
        created: &created,
        view: &view,
        command: &command,
        routing_key: RUN_JOB_KEY,
        correlation_id: Some(&correlation),
    };
    match &idem_key {
        None => read_model::jobs::create(&state.pool, &new_job).await?,
        Some(key) => {
            let idem = read_model::jobs::Idempotency {
                key,
                request_hash: &body_hash,
            };
            match read_model::jobs::create_once(&state.pool, &caller.0, &idem, &out, &new_job)
                .await?
            {
                read_model::jobs::Outcome::Created => {}
                // A concurrent request with the same key won the race.
                read_model::jobs::Outcome::Existing(stored) => {
                    return replay(stored, &body_hash, &correlation)
                }
            }
        }
    }
    tracing::info!(job_id = %job.job_id, correlation_id = %correlation, "job created");
    crash_after_commit_if_testing();
    // The fast path; if it fails the outbox relay publishes the command a few seconds later.
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
            state
                .published
                .confirmed(&state.pool, command.message_id.0)
                .await
        }
        Err(e) => {
            tracing::warn!(error = %e, job_id = %job.job_id, "publish failed; the outbox relay will retry")
        }
    }
    Ok(accepted(out, job.job_id.0, false, &correlation))
}

fn input_shape(input: &crate::domain::input::JobInput, icp: &IcpConfig) -> InputShape {
    InputShape {
        companies: input.companies.len(),
        contacts: input.contacts.len(),
        contacts_without_email: input.contacts.iter().filter(|c| c.email.is_none()).count(),
        icp_gate_applied: icp.applies(),
    }
}

/// The warnings a new job starts with: the plan's, the ICP ranges', and the columns of an
/// uploaded file that no field has (a typo in a header must not pass unnoticed).
fn job_warnings(
    body: &CreateJob,
    plan: &crate::domain::plan::Plan,
    input: &crate::domain::input::JobInput,
    ignored_columns: &[String],
) -> Vec<String> {
    let icp = body.icp_config.clone().unwrap_or_default();
    let mut warnings = planning_warnings(plan, input_shape(input, &icp));
    warnings.extend(icp.range_warning());
    if !ignored_columns.is_empty() {
        warnings.push(format!(
            "columns ignored (no job field has their name): {}",
            ignored_columns.join(", ")
        ));
    }
    warnings
}

/// Test-only fault injection: with `BDJOBS_TEST_CRASH_AFTER_COMMIT=1` in its environment the
/// process aborts right after a job's commit and before its publish, the one moment a crash
/// leaves the command only in the outbox (`tests/faults.rs` proves the relay then publishes it).
/// Never set it in a deployment: every POST would kill the API.
fn crash_after_commit_if_testing() {
    static CRASH: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("BDJOBS_TEST_CRASH_AFTER_COMMIT").is_ok_and(|v| v == "1")
    });
    if *CRASH {
        eprintln!("BDJOBS_TEST_CRASH_AFTER_COMMIT: aborting between commit and publish");
        std::process::abort();
    }
}

#[utoipa::path(
    get,
    path = "/bd/jobs/{job_id}",
    operation_id = "getBdJob",
    tag = "bd-jobs",
    summary = "Get a BD job's status",
    description = "Status and progress of one of the caller's jobs. Poll until `status` is `completed`, `failed` or `cancelled`.",
    params(("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE))),
    responses(
        (status = 200, description = "The job.", body = JobBody,
            example = json!({"job_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "status": "running", "progress_percent": 40, "progress_message": "Discovering contacts at 2 companies...", "preset": "full_pipeline", "requested_capabilities": ["qualification", "company_size", "contact_discovery", "email_lookup", "email_verify", "deliverable_finalize"], "warnings": [], "error_message": null, "created_at": "2026-04-08T12:05:40Z", "updated_at": "2026-04-08T12:06:02Z", "started_at": "2026-04-08T12:05:41Z", "completed_at": null})),
        (status = 404, response = super::openapi::JobNotFound),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_bytes(rendered(&state, &caller, &job_id).await?.job))
}

/// The warning of a job that names a `webhook_url` for an account with no webhook endpoint.
pub const NO_ENDPOINT_WARNING: &str = "webhook_url ignored: this account has no webhook endpoint, \
so there is no secret to sign with; ask the operator to register one";

/// `GET /bd/jobs/{id}/webhooks`: the job's webhook deliveries and their attempts.
#[utoipa::path(
    get,
    path = "/bd/jobs/{job_id}/webhooks",
    operation_id = "listBdJobWebhooks",
    tag = "bd-jobs",
    summary = "List a BD job's webhook deliveries",
    description = "The webhooks sent (or to be sent) for one of the caller's jobs when it ended, each with its attempts: time, status code, latency, and the next retry.",
    params(("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE))),
    responses(
        (status = 200, description = "The job's deliveries.", body = WebhookDeliveries,
            example = json!({"job_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "deliveries": [{"webhook_id": "msg_5f0c2b9e8a7d4c1b9e2f3a4b5c6d7e8f", "event": "job.completed", "state": "delivered", "created_at": "2026-04-08T12:07:10Z", "next_attempt_at": null, "attempts": [{"attempt": 1, "attempted_at": "2026-04-08T12:07:10.120Z", "status_code": 503, "latency_ms": 84, "error": null, "next_attempt_at": "2026-04-08T12:07:15.310Z"}, {"attempt": 2, "attempted_at": "2026-04-08T12:07:15.402Z", "status_code": 200, "latency_ms": 41, "error": null, "next_attempt_at": null}]}]})),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 404, response = super::openapi::JobNotFound),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn job_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<WebhookDeliveries>, ApiError> {
    let id = parse_job_id(&job_id)?;
    let deliveries = db::webhooks::deliveries_of_job(&state.pool, &caller.0, id)
        .await?
        .ok_or(ApiError::NotFound("job not found"))?;
    Ok(Json(WebhookDeliveries::of(id, &deliveries)))
}

/// A job's two bodies: from the cache of finished jobs, or read and rendered (and kept, when
/// the job has finished).
async fn rendered(state: &AppState, caller: &Caller, job_id: &str) -> Result<Rendered, ApiError> {
    let id = parse_job_id(job_id)?;
    let now = std::time::Instant::now();
    if let Some(hit) = state.views.get(&caller.0, id, now) {
        return Ok(hit);
    }
    let view = db::jobs::get_view(&state.pool, &caller.0, id)
        .await?
        .ok_or(ApiError::NotFound("job not found"))?;
    let rendered = Rendered::of(&view);
    state.views.put(&view, &rendered, now);
    Ok(rendered)
}

fn json_bytes(body: axum::body::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/bd/jobs/{job_id}/result",
    operation_id = "getBdJobResult",
    tag = "bd-jobs",
    summary = "Get a BD job's result",
    description = "Fetch the output assets and summary for a BD job. Available at any job status; check `status` before accessing assets. Assets are downloaded individually from their `download_url`.",
    params(("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE))),
    responses(
        (status = 200, description = "The result.", body = super::render::ResultBody,
            example = json!(super::openapi::seed_result_example())),
        (status = 404, response = super::openapi::JobNotFound),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn get_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_bytes(rendered(&state, &caller, &job_id).await?.result))
}

/// Default and largest page of `GET /bd/jobs`.
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;

/// A page cursor: 48 lower-case hex digits, the creation time (microseconds since the epoch, 64
/// bits) and the id of the last job of the previous page. Opaque to clients; any value of that
/// form is a position (one far outside the calendar is clamped to its end), so a well-formed
/// cursor is never refused.
pub fn encode_cursor(c: &db::jobs::ListCursor) -> String {
    let micros = c.created_at.timestamp_micros();
    format!("{}{}", hex::encode(micros.to_be_bytes()), c.job_id.simple())
}

pub fn decode_cursor(s: &str) -> Option<db::jobs::ListCursor> {
    if s.len() != 48 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let micros = i64::from_be_bytes(hex::decode(&s[..16]).ok()?.try_into().ok()?);
    // Postgres stores years 4713 BC to 294276 AD; keep to 0001..9999, which orders the same.
    let min = DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z")
        .ok()?
        .timestamp_micros();
    let max = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .ok()?
        .timestamp_micros();
    let created_at = DateTime::from_timestamp_micros(micros.clamp(min, max))?;
    let job_id = Uuid::parse_str(&s[16..]).ok()?;
    Some(db::jobs::ListCursor { created_at, job_id })
}

/// `q` of `GET /bd/jobs`: a job id or chat id (a UUID), a preset's name, or 4 or more
/// consecutive characters of a job id.
pub fn parse_search(q: &str) -> Result<db::jobs::Search, ApiError> {
    if let Some(p) = crate::domain::plan::Preset::parse(q) {
        return Ok(db::jobs::Search::Preset(p));
    }
    if (4..=36).contains(&q.len()) && q.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        let q = q.to_ascii_lowercase();
        return Ok(match Uuid::try_parse(&q) {
            Ok(id) if q.len() == 36 => db::jobs::Search::Id(id),
            _ => db::jobs::Search::IdPart(q),
        });
    }
    Err(ApiError::Unprocessable(
        "q: expected a job id or chat_id (UUID), a preset name, or 4 or more consecutive characters of a job id"
            .to_owned(),
    ))
}

#[utoipa::path(
    get,
    path = "/bd/jobs",
    operation_id = "listBdJobs",
    tag = "bd-jobs",
    summary = "List the caller's BD jobs",
    description = "The caller's jobs, newest first, a page at a time. Follow `next_cursor` (pass it back as `cursor`, with the same `status`) until it is `null`. Jobs created after the first page was read appear on a new listing, not on later pages. `q` searches by job id, chat_id or preset, within the other filters.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Jobs per page, 1 to 100 (default 20). Anything else gets 422."),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-f]{48}$", description = "Where the page starts: the `next_cursor` of the previous page, as it was returned (opaque; any other value gets 422)."),
        ("status" = Option<JobStatus>, Query, description = "Only jobs of this status. An unknown status gets 422."),
        ("q" = Option<String>, Query, description = "Search: a job id or a chat_id (a UUID; either matches), a preset's name (jobs of that preset), or 4 or more consecutive characters of a job id (hex digits and dashes, any case; ids begin with their creation time, so jobs of the same minute share their first characters). Anything else gets 422.", example = "full_pipeline"),
    ),
    responses(
        (status = 200, description = "A page of jobs.", body = JobList),
        (status = 422, description = "`limit`, `cursor` or `status` is invalid.", body = super::error::ErrorBody,
            example = json!({"detail": "limit: expected an integer from 1 to 100"})),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<JobList>, ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut status = None;
    let mut cursor = None;
    let mut search = None;
    for (name, value) in &params {
        match name.as_str() {
            "limit" => {
                // `20.0` is the same number as `20` to JSON-minded clients.
                limit = value
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.fract() == 0.0 && (1.0..=MAX_PAGE as f64).contains(n))
                    .map(|n| n as i64)
                    .ok_or_else(|| {
                        ApiError::Unprocessable(format!(
                            "limit: expected an integer from 1 to {MAX_PAGE}"
                        ))
                    })?
            }
            "status" => {
                status = Some(JobStatus::parse(value).ok_or_else(|| {
                    ApiError::Unprocessable(
                        "status: expected one of pending, running, completed, failed, cancelled"
                            .to_owned(),
                    )
                })?)
            }
            "q" => search = Some(parse_search(value)?),
            "cursor" => {
                cursor = Some(decode_cursor(value).ok_or_else(|| {
                    ApiError::Unprocessable(
                        "cursor: not a cursor this API returned (pass next_cursor as it is)"
                            .to_owned(),
                    )
                })?)
            }
            // Unknown parameters are ignored, as HTTP APIs customarily do.
            _ => {}
        }
    }
    let mut rows = db::jobs::list_views(
        &state.pool,
        &caller.0,
        status,
        search.as_ref(),
        cursor,
        limit + 1,
    )
    .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|(_, c)| encode_cursor(c))
    } else {
        None
    };
    Ok(Json(JobList {
        jobs: rows.iter().map(|(v, _)| JobBody::of(v)).collect(),
        next_cursor: next,
    }))
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "text/csv" => "csv",
        "application/json" => "json",
        _ => "bin",
    }
}

#[utoipa::path(
    get,
    path = "/bd/jobs/{job_id}/assets/{asset_id}",
    operation_id = "getBdJobAsset",
    tag = "bd-jobs",
    summary = "Download a result asset",
    description = "Streams one asset's bytes with the asset's own `Content-Type` (its `mime_type`): `verified_contacts` is `application/json`, `verified_contacts_csv` is `text/csv`. Assets exist once the job has completed.\n\nConditional and partial requests: `If-None-Match` with the asset's `ETag` (or `*`) gets `304`. On an asset that is not JSON (`verified_contacts_csv`), one byte range (`Range: bytes=0-99`, `bytes=100-`, `bytes=-100`) gets `206` with `Content-Range`; a range that starts past the end gets `416` with `Content-Range: bytes */<size>`. Several ranges in one header, a malformed `Range`, or an `If-Range` that is not the current `ETag` get the whole asset with `200` (RFC 9110 lets a server ignore `Range`); so does any `Range` on a JSON asset (`verified_contacts`, `Accept-Ranges: none`), since a slice of a JSON document is not JSON. `HEAD` answers the same headers without the body.",
    params(
        ("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE)),
        ("asset_id" = String, Path, description = super::openapi::ASSET_ID, pattern = "^[a-z0-9_][a-z0-9_-]{0,63}$", max_length = 64, example = "verified_contacts"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX_LENGTH`."),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds (or `*`): when one is the asset's, the answer is `304` without a body."),
        ("If-Range" = Option<String>, Header, description = "An ETag: the `Range` is honoured only if it is the asset's current one."),
    ),
    responses(
        (status = 200, description = "The asset's bytes.", headers(("Content-Length" = u64), ("ETag" = String), ("Content-Disposition" = String), ("X-Content-Type-Options" = String), ("Accept-Ranges" = String)),
            content((Vec<DeliveredContact> = "application/json"), (String = "text/csv"))),
        (status = 206, description = "The requested byte range of the asset.", headers(("Content-Length" = u64), ("ETag" = String), ("Content-Disposition" = String), ("X-Content-Type-Options" = String), ("Accept-Ranges" = String), ("Content-Range" = String))),
        (status = 304, description = "The client's copy is current (its `If-None-Match` holds the asset's ETag). No body.", headers(("ETag" = String))),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 404, response = super::openapi::AssetNotFound),
        (status = 416, description = "The `Range` selects no byte of the asset.", body = super::error::ErrorBody,
            headers(("Content-Range" = String)),
            example = json!({"detail": "range not satisfiable: the asset has 2048 bytes"})),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
/// Streams an asset from storage, never holding more than OpenDAL's chunk in memory. Answers
/// HEAD with the headers alone, `If-None-Match` with 304, and one `Range` on a non-JSON asset
/// with 206 (416 when it selects nothing); see `range` for what is served of other ranges.
pub async fn get_asset(
    State(state): State<AppState>,
    caller: Caller,
    method: Method,
    headers: axum::http::HeaderMap,
    Path((job_id, asset_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = parse_job_id(&job_id)?;
    let asset = AssetId::parse(&asset_id).map_err(|_| ApiError::NotFound("asset not found"))?;
    let row = db::jobs::get_asset(&state.pool, &caller.0, job, &asset)
        .await?
        .ok_or(ApiError::NotFound("asset not found"))?;
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()));
    let header_text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let etag = format!("\"{}\"", row.sha256);
    let len = row.size_bytes.max(0) as u64;

    if range::none_match(header_text(header::IF_NONE_MATCH), &etag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, hv(&etag)?);
        return Ok(resp);
    }
    // A slice of a JSON document is not JSON, and a client told `application/json` will try to
    // parse it: JSON assets are always sent whole (`Accept-Ranges: none`), which RFC 9110 allows.
    // Ranges serve the formats that survive slicing (the CSV), for resumed downloads.
    let ranges = !row.mime_type.starts_with("application/json");
    let selection = if ranges && range::if_range_allows(header_text(header::IF_RANGE), &etag) {
        range::select(header_text(header::RANGE), len)
    } else {
        range::Selection::Full
    };
    let (status, start, end) = match selection {
        range::Selection::Full => (StatusCode::OK, 0, len),
        range::Selection::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        range::Selection::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(len)),
    };
    let body = if method == Method::HEAD || start == end {
        Body::empty()
    } else {
        // The asset is a slice of its job's object (one object holds all of a job's assets).
        let at = row.byte_offset.max(0) as u64;
        Body::from_stream(
            storage::read_range(&state.storage, &row.storage_key, at + start..at + end).await?,
        )
    };
    let filename = format!("{}-{}.{}", asset, job, extension(&row.mime_type));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&row.mime_type)?);
    h.insert(header::CONTENT_LENGTH, hv(&(end - start).to_string())?);
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{}/{len}", end - 1))?,
        );
    }
    h.insert(
        header::ACCEPT_RANGES,
        HeaderValue::from_static(if ranges { "bytes" } else { "none" }),
    );
    h.insert(header::ETAG, hv(&etag)?);
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

/// `HEAD` of an asset: [`get_asset`]'s answer without its body (which `get_asset` skips
/// reading for a HEAD). Its own handler only so that the document lists the operation.
#[utoipa::path(
    head,
    path = "/bd/jobs/{job_id}/assets/{asset_id}",
    operation_id = "headBdJobAsset",
    tag = "bd-jobs",
    summary = "A result asset's headers",
    description = "The headers `GET` would answer (size, ETag, content type, range), without the body and without reading the stored asset.",
    params(
        ("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE)),
        ("asset_id" = String, Path, description = super::openapi::ASSET_ID, pattern = "^[a-z0-9_][a-z0-9_-]{0,63}$", max_length = 64, example = "verified_contacts"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX_LENGTH`."),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds (or `*`): when one is the asset's, the answer is `304` without a body."),
        ("If-Range" = Option<String>, Header, description = "An ETag: the `Range` is honoured only if it is the asset's current one."),
    ),
    responses(
        (status = 200, description = "The asset's bytes. Headers only.", headers(("Content-Length" = u64), ("ETag" = String), ("Content-Disposition" = String), ("X-Content-Type-Options" = String), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested byte range of the asset. Headers only.", headers(("Content-Length" = u64), ("ETag" = String), ("Content-Disposition" = String), ("X-Content-Type-Options" = String), ("Accept-Ranges" = String), ("Content-Range" = String))),
        (status = 304, description = "The client's copy is current (its `If-None-Match` holds the asset's ETag). No body.", headers(("ETag" = String))),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 404, response = super::openapi::AssetNotFound),
        (status = 416, description = "The `Range` selects no byte of the asset.", body = super::error::ErrorBody,
            headers(("Content-Range" = String)),
            example = json!({"detail": "range not satisfiable: the asset has 2048 bytes"})),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn head_asset(
    state: State<AppState>,
    caller: Caller,
    method: Method,
    headers: axum::http::HeaderMap,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    get_asset(state, caller, method, headers, path).await
}

/// Cancels a job. A pending job is cancelled at once (no worker has started it: its result has
/// nothing in it); a running one is flagged, and its worker stops at a stage boundary,
/// keeping what it has done as partial assets. 409 once the job has finished.
#[utoipa::path(
    post,
    path = "/bd/jobs/{job_id}/cancel",
    operation_id = "cancelBdJob",
    tag = "bd-jobs",
    summary = "Cancel a BD job",
    description = "Cancels one of the caller's jobs. A `pending` job is cancelled at once (its result stays empty). A `running` job is flagged: its worker stops at a stage boundary (it looks at the flag at most every quarter of a second; a chunked job's chunks within a quarter of a second) and the job ends `cancelled`, keeping what it had done as assets with `availability: \"partial\"`. A job that finishes before its worker sees the flag ends `completed`. Poll the job for the outcome. 409 once the job is terminal.",
    params(("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE))),
    responses(
        (status = 202, description = "Cancellation accepted; the body is the job as it stands now (already `cancelled` for a job that had not started).", body = JobBody),
        (status = 404, response = super::openapi::JobNotFound),
        (status = 409, description = "The job is already completed, failed or cancelled.", body = super::error::ErrorBody,
            example = json!({"detail": "job is already completed; only pending or running jobs can be cancelled"})),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&job_id)?;
    let view = match read_model::jobs::cancel(&state.pool, &caller.0, id).await? {
        Cancel::NotFound => return Err(ApiError::NotFound("job not found")),
        Cancel::Finished(view) => {
            return Err(ApiError::Conflict(format!(
                "job is already {}; only pending or running jobs can be cancelled",
                view.status.as_str()
            )))
        }
        Cancel::Requested(view) => view,
    };
    state.views.forget(id);
    tracing::info!(job_id = %id, status = view.status.as_str(), "cancellation requested");
    Ok((StatusCode::ACCEPTED, Json(JobBody::of(&view))).into_response())
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

    #[test]
    fn a_cursor_survives_the_round_trip_to_the_microsecond() {
        let c = db::jobs::ListCursor {
            created_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            job_id: Uuid::now_v7(),
        };
        let s = encode_cursor(&c);
        assert_eq!(s.len(), 48);
        assert_eq!(decode_cursor(&s), Some(c));
    }

    #[test]
    fn any_well_formed_cursor_is_a_position_and_others_are_refused() {
        assert!(decode_cursor(&"f".repeat(48)).is_some());
        assert!(decode_cursor(&"0".repeat(48)).is_some());
        assert!(decode_cursor(&"F".repeat(48)).is_none());
        assert!(decode_cursor("abc").is_none());
        assert!(decode_cursor(&"g".repeat(48)).is_none());
    }

    #[test]
    fn an_idempotency_key_is_visible_ascii_of_at_most_255_bytes() {
        let headers = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(
            idempotency_key(&headers("order 1")).unwrap().as_deref(),
            Some("order 1")
        );
        assert!(idempotency_key(&axum::http::HeaderMap::new())
            .unwrap()
            .is_none());
        assert!(idempotency_key(&headers(&"k".repeat(256))).is_err());
        assert!(idempotency_key(&headers("tab\there")).is_err());
    }
}
