//! `GET /api/v1/bd/jobs/{job_id}/events`: a job's progress as Server-Sent Events, so a client
//! need not poll.
//!
//! Design: the stream polls the job's row in the read model every [`POLL`] and sends what
//! changed. That is the projector's own output, so the stream shows exactly what `GET job`
//! shows, works with any number of API and projector replicas, needs no extra connection per
//! stream (LISTEN/NOTIFY would hold one) and cannot miss an update between a notification and a
//! read. The cost is one indexed primary-key read per stream per tick.
//!
//! Events, each `data` one JSON object:
//! - `progress`: the job (as `GET /bd/jobs/{job_id}`), first on connect, then on every change;
//! - `warning`: `{"message": ...}` for each warning, those already there first;
//! - `completed`, `failed` or `cancelled`: the job, last; then the server closes the stream.
//!
//! Comments (`: keep-alive`) every 15 s keep proxies from closing an idle stream. On shutdown,
//! and after `BDJOBS_EVENT_STREAM_MAX_SECS`, the stream ends without a terminal event: reconnect
//! (the first `progress` tells the state).

use super::auth::Caller;
use super::error::ApiError;
use super::render::job_json;
use super::AppState;
use crate::adapters::db;
use crate::domain::ids::JobId;
use crate::domain::job::JobView;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

/// The `Retry-After` of a key over its share of streams: streams last long, so asking again at
/// once is pointless.
pub const STREAM_RETRY_AFTER_SECS: u64 = 5;

/// How often a stream reads the job.
pub const POLL: Duration = Duration::from_millis(250);

/// What a stream has sent so far, and what it sends next: a pure step over successive views.
#[derive(Debug, Default)]
pub struct Cursor {
    last: Option<serde_json::Value>,
    warnings_sent: usize,
    done: bool,
}

/// One event to send: its name and its JSON data.
pub type Outgoing = (&'static str, serde_json::Value);

impl Cursor {
    /// The events that tell a client who saw the previous views about `view`.
    pub fn step(&mut self, view: &JobView) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let job = job_json(view);
        if self.last.as_ref() != Some(&job) {
            out.push(("progress", job.clone()));
        }
        for w in view.warnings.iter().skip(self.warnings_sent) {
            out.push(("warning", serde_json::json!({ "message": w })));
        }
        self.warnings_sent = self.warnings_sent.max(view.warnings.len());
        if view.status.is_terminal() {
            out.push((view.status.as_str(), job.clone()));
            self.done = true;
        }
        self.last = Some(job);
        out
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

struct Streaming {
    state: AppState,
    tenant: crate::domain::ids::TenantId,
    job: JobId,
    cursor: Cursor,
    first: Option<JobView>,
    // Held for the stream's life: the limits count open streams, not requests.
    _permit: OwnedSemaphorePermit,
    _key_permit: crate::api::limits::KeyPermit,
}

fn to_event((name, data): Outgoing) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

fn job_stream(s: Streaming) -> impl Stream<Item = Result<Event, Infallible>> {
    let max = Duration::from_secs(s.state.guard.limits.event_stream_max_secs.max(1));
    let deadline = tokio::time::Instant::now() + max;
    stream::unfold(Some(s), move |st| async move {
        let mut s = st?;
        loop {
            let view = match s.first.take() {
                Some(v) => Some(v),
                None => {
                    tokio::select! {
                        _ = s.state.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep_until(deadline) => return None,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                    match db::jobs::get_view(&s.state.pool, &s.tenant, s.job).await {
                        Ok(Some(v)) => Some(v),
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: reading the job failed; will retry");
                            None
                        }
                    }
                }
            };
            if let Some(v) = view {
                let events = s.cursor.step(&v);
                if !events.is_empty() {
                    let next = if s.cursor.is_done() { None } else { Some(s) };
                    return Some((events, next));
                }
            }
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(to_event)))
}

/// One event of the stream, for the OpenAPI document (the stream itself is written by axum's
/// `Sse` from [`Cursor::step`]'s output).
#[derive(utoipa::ToSchema)]
#[schema(description = "One event: its name and its JSON data.")]
#[allow(dead_code)] // Never built: a schema of what the stream sends.
pub struct StreamEvent {
    #[schema(inline)]
    event: StreamEventName,
    /// A `Job` for `progress` and the terminal events; `{"message": "..."}` for `warning`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

// The names of the stream's events.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum StreamEventName {
    Progress,
    Warning,
    Completed,
    Failed,
    Cancelled,
}

#[utoipa::path(
    get,
    path = "/bd/jobs/{job_id}/events",
    operation_id = "streamBdJobEvents",
    tag = "bd-jobs",
    summary = "Follow a BD job's progress (Server-Sent Events)",
    description = "A `text/event-stream` (Server-Sent Events) of one of the caller's jobs, so a client need not poll. Each event's `data` is one JSON object:\n- `progress`: the job, as `GET /api/v1/bd/jobs/{job_id}` returns it; sent on connect and on every change;\n- `warning`: `{\"message\": \"...\"}` for each warning (those already raised first, on connect);\n- `completed`, `failed` or `cancelled`: the job, once; then the server closes the stream.\n\nComment lines (`: keep-alive`) come every 15 s. The server reads the job's state every 250 ms and sends what changed. If the stream ends without a terminal event (the server restarting, or the stream open longer than `BDJOBS_EVENT_STREAM_MAX_SECS`, an hour by default), reconnect: the first `progress` event tells the current state.",
    params(("job_id" = Uuid, Path, description = super::openapi::JOB_ID, example = json!(super::openapi::JOB_ID_EXAMPLE))),
    responses(
        (status = 200, description = "The event stream (it ends after the terminal event; earlier only when the server stops or the stream reaches its maximum age).",
            content_type = "text/event-stream", body = StreamEvent,
            example = json!({"event": "warning", "data": "{\"message\":\"1 of 2 companies did not match the ideal-customer profile: acme.example (industry Retail is not in the profile)\"}"})),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 404, response = super::openapi::JobNotFound),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Busy),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let job = Uuid::parse_str(&job_id)
        .map(JobId)
        .map_err(|_| ApiError::NotFound("job not found"))?;
    let view = db::jobs::get_view(&state.pool, &caller.0, job)
        .await?
        .ok_or(ApiError::NotFound("job not found"))?;
    // The key's own share first: a client holding its share is told so (429), and cannot
    // exhaust the process-wide capacity (503) that every other key shares.
    let key_permit = state
        .guard
        .streams_per_key
        .try_acquire(caller.1)
        .ok_or(ApiError::TooManyStreams(STREAM_RETRY_AFTER_SECS))?;
    let permit = state
        .guard
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy("too many open event streams; retry shortly"))?;
    let s = Streaming {
        state,
        tenant: caller.0,
        job,
        cursor: Cursor::default(),
        first: Some(view),
        _permit: permit,
        _key_permit: key_permit,
    };
    Ok(Sse::new(job_stream(s))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{MessageId, TenantId};
    use crate::domain::job::JobStatus;
    use crate::domain::messages::{Created, Event as DomainEvent, EventRecord, Position};
    use crate::domain::plan::Capability;

    fn view() -> JobView {
        JobView::created(&EventRecord {
            message_id: MessageId::new(),
            job_id: JobId::new(),
            tenant: TenantId::parse("acme").unwrap(),
            occurred_at: chrono::Utc::now(),
            position: Position::ORIGIN,
            event: DomainEvent::Created(Created {
                webhook_url: None,
                webhook_stages: false,
                preset: None,
                requested_capabilities: vec![
                    Capability::EmailVerify,
                    Capability::DeliverableFinalize,
                ],
                warnings: vec!["first".into()],
                chat_id: None,
                companies: 0,
                contacts: 1,
            }),
        })
        .unwrap()
    }

    fn names(events: &[Outgoing]) -> Vec<&'static str> {
        events.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn a_new_stream_sends_the_job_then_its_warnings_so_far() {
        let mut c = Cursor::default();
        let out = c.step(&view());
        assert_eq!(names(&out), ["progress", "warning"]);
        assert_eq!(out[1].1, serde_json::json!({"message": "first"}));
    }

    #[test]
    fn an_unchanged_job_sends_nothing_and_a_change_sends_only_what_is_new() {
        let mut v = view();
        let mut c = Cursor::default();
        c.step(&v);
        assert!(c.step(&v).is_empty());
        v.progress_percent = 40;
        v.warnings.push("second".into());
        let out = c.step(&v);
        assert_eq!(names(&out), ["progress", "warning"]);
        assert_eq!(out[0].1["progress_percent"], 40);
        assert_eq!(out[1].1["message"], "second");
    }

    #[test]
    fn a_terminal_job_ends_the_stream_with_its_status_once() {
        let mut v = view();
        let mut c = Cursor::default();
        c.step(&v);
        v.status = JobStatus::Failed;
        v.error_message = Some("boom".into());
        let out = c.step(&v);
        assert_eq!(names(&out), ["progress", "failed"]);
        assert_eq!(out[1].1["error_message"], "boom");
        assert!(c.is_done());
        assert!(c.step(&v).is_empty());
    }
}
