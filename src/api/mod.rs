//! The API role: a thin axum server over the read model, plus the outbox relay that makes sure
//! every accepted job's command reaches the broker. The server is hyper's HTTP/1.1 connection
//! builder rather than `axum::serve`, for the header-read timeout against slow clients.

pub mod auth;
pub mod console;
pub mod error;
pub mod events;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod range;
pub mod render;
pub mod upload;
pub mod view_cache;

use crate::adapters::broker::Publisher;
use crate::config::ApiLimits;
use crate::read_model::outbox::{self, outbox_relay};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use error::ApiError;
use opendal::Operator;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The OpenAPI 3 document of this API (hand-written; a test checks it against the router).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Default largest request body: 10,000 records fit comfortably. `BDJOBS_MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES: usize = ApiLimits::DEFAULT.max_body_bytes;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub storage: Operator,
    pub publisher: Arc<Publisher>,
    pub guard: Arc<limits::Guard>,
    pub metrics: Arc<metrics::Metrics>,
    pub keys: Arc<auth::KeyCache>,
    pub views: Arc<view_cache::ViewCache>,
    pub published: outbox::Published,
    /// The task behind `published`, awaited by `serve` on shutdown so that no delete is lost.
    published_task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Cancelled when the server stops: ends open event streams, which would otherwise hold
    /// graceful shutdown until their jobs finish.
    pub shutdown: CancellationToken,
    /// Whether a job's `webhook_url` may name an internal address or use `http://`
    /// (`BDJOBS_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_allow_private: bool,
}

impl AppState {
    pub fn new(
        pool: Pool,
        storage: Operator,
        publisher: Arc<Publisher>,
        limits: &ApiLimits,
    ) -> Self {
        let (published, task) = outbox::Published::start(pool.clone());
        Self {
            published_task: Arc::new(std::sync::Mutex::new(Some(task))),
            pool,
            storage,
            publisher,
            guard: Arc::new(limits::Guard::new(limits)),
            metrics: Arc::new(metrics::Metrics::default()),
            keys: Arc::new(auth::KeyCache::new(std::time::Duration::from_secs(
                limits.key_cache_secs,
            ))),
            views: Arc::new(view_cache::ViewCache::new(Duration::from_millis(
                limits.view_cache_ms,
            ))),
            published,
            shutdown: CancellationToken::new(),
            webhook_allow_private: false,
        }
    }

    pub fn with_webhook_allow_private(mut self, allow: bool) -> Self {
        self.webhook_allow_private = allow;
        self
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers a query and the broker a channel, each within 2 s.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = Duration::from_secs(2);
    let database = async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    if !matches!(tokio::time::timeout(limit, database).await, Ok(Some(_))) {
        return Err(ApiError::Unavailable("database unreachable"));
    }
    if !matches!(
        tokio::time::timeout(limit, state.publisher.ping()).await,
        Ok(Ok(()))
    ) {
        return Err(ApiError::Unavailable("broker unreachable"));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.guard.limits.max_body_bytes;
    // The capacity limits guard the BD endpoints only: health checks and scrapes must keep
    // answering when the API is saturated, or an orchestrator restarts a busy server.
    let bd = Router::new()
        .route("/bd/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/bd/jobs/{job_id}", get(jobs::get_job))
        .route("/bd/jobs/{job_id}/result", get(jobs::get_result))
        .route("/bd/jobs/{job_id}/cancel", post(jobs::cancel_job))
        .route("/bd/jobs/{job_id}/events", get(events::job_events))
        .route("/bd/jobs/{job_id}/webhooks", get(jobs::job_webhooks))
        // `get` answers HEAD too (axum drops the body); the handler skips storage for it.
        .route("/bd/jobs/{job_id}/assets/{asset_id}", get(jobs::get_asset))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::admission,
        ));
    let v1 = bd.route("/openapi.json", get(openapi));
    let app = Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost first: the body limit, the panic net (so a panic still passes through the
        // JSON-error net and is timed as a 500), the JSON-error net over everything, then timing
        // (which sees the final status).
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(jobs::BodyLimit(body_limit)))
        .layer(catch_panic())
        .layer(axum::middleware::from_fn(limits::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state);
    traced(app)
}

/// Turns a panic in a handler into a 500 with the API's error body and one log line, instead
/// of a dropped connection. The line is logged inside the request's span ([`traced`]), so it
/// carries the request's `correlation_id`, which the client also gets back as
/// `X-Correlation-Id`.
pub fn catch_panic() -> tower_http::catch_panic::CatchPanicLayer<fn(PanicPayload) -> Response> {
    tower_http::catch_panic::CatchPanicLayer::custom(panic_response as fn(PanicPayload) -> Response)
}

/// What a panic carries.
pub type PanicPayload = Box<dyn std::any::Any + Send + 'static>;

fn panic_response(payload: PanicPayload) -> Response {
    let what = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "a request handler panicked; answered 500");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// The outermost layers: every request gets a correlation id (the client's usable
/// `X-Correlation-Id` or `X-Request-Id`, else a new one), its span carries it, and the response
/// returns it, so any answer (a 500 above all) can be found in the logs.
pub fn traced(app: Router) -> Router {
    app.layer(
        tower_http::trace::TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<_>| {
                let correlation_id = req
                    .headers()
                    .get(jobs::CORRELATION_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                // The path, never the headers: the Authorization header stays out of logs.
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), correlation_id, tenant = tracing::field::Empty)
            },
        ),
    )
    .layer(axum::middleware::from_fn(correlate))
}

/// Settles a request's correlation id before anything logs it: the one `jobs::correlation_id`
/// picks is written back into the request (so the span and a job created by it share it) and
/// put on the response.
async fn correlate(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = jobs::correlation_id(req.headers());
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        req.headers_mut().insert(jobs::CORRELATION_ID, v.clone());
    }
    let mut resp = next.run(req).await;
    if let Some(v) = value {
        resp.headers_mut().entry(jobs::CORRELATION_ID).or_insert(v);
    }
    resp
}

/// How long in-flight requests get to finish after shutdown is asked.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves until `shutdown`, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let relay = tokio::spawn(outbox_relay(
        state.pool.clone(),
        state.publisher.clone(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let header_timeout = Duration::from_secs(state.guard.limits.header_read_timeout_secs.max(1));
    let streams = state.shutdown.clone();
    let published = state
        .published_task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    streams.cancel();
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after {DRAIN:?}; closing them");
    }
    shutdown.cancel();
    let _ = relay.await;
    // The last handle goes with the router: the task deletes what it holds, then ends.
    drop(app);
    if let Some(task) = published {
        if tokio::time::timeout(DRAIN, task).await.is_err() {
            tracing::warn!(
                "published outbox rows were not all deleted; the relay will publish them again"
            );
        }
    }
    tracing::info!("api stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_a_detail_and_logs_the_correlation_id() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = traced(
            Router::new()
                .route(
                    "/boom",
                    get(|| async {
                        panic!("slice index starts at 8 but ends inside a character");
                        #[allow(unreachable_code)]
                        ""
                    }),
                )
                .layer(catch_panic()),
        );
        let req = axum::http::Request::get("/boom")
            .header("x-correlation-id", "req-panic-42")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["x-correlation-id"], "req-panic-42");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"detail": "internal server error"}));
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|l| l.contains("a request handler panicked"))
            .unwrap_or_else(|| panic!("no log line for the panic in {logs}"));
        assert!(line.contains("req-panic-42"), "{line}");
        assert!(line.contains("ends inside a character"), "{line}");
    }
}
