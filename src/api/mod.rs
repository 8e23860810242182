//! The API role: a thin axum server over the read model, plus the outbox relay that makes sure
//! every accepted job's command reaches the broker. The server is hyper's HTTP/1.1 connection
//! builder rather than `axum::serve`, for the header-read timeout against slow clients.
//!
//! Routes are declared once, in [`bd_routes`] and [`documented`], through utoipa-axum's
//! `routes!`: the router serves them and the OpenAPI document ([`openapi`]) is generated from
//! them and from the handlers' `#[utoipa::path]` annotations.

pub mod auth;
pub mod console;
pub mod error;
pub mod events;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod range;
pub mod render;
pub mod upload;
pub mod view_cache;

use crate::adapters::broker::Publisher;
use crate::config::ApiLimits;
use crate::read_model::outbox::{self, outbox_relay};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use error::ApiError;
use opendal::Operator;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApiDocument",
    tag = "meta",
    summary = "This OpenAPI document",
    description = "The OpenAPI 3.1 description of this API. No authentication.",
    security(()),
    responses((status = 200, description = "The document.", body = Object))
)]
async fn openapi_document() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi::document().clone(),
    )
}

// The body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(inline)]
    status: Alive,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Alive {
    Ok,
}

// The body of `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(inline)]
    status: Readiness,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "meta",
    summary = "Liveness",
    description = "Answers 200 while the process serves HTTP; checks nothing else. No authentication.",
    security(()),
    responses((status = 200, description = "Alive.", body = Health, example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// Ready when the database answers a query and the broker a channel, each within 2 s.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "meta",
    summary = "Readiness",
    description = "Answers 200 when the database answers a query and the broker opens a channel, each within 2 s; else 503 with `Retry-After: 1`. No authentication.",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = Ready, example = json!({"status": "ready"})),
        (status = 503, description = "The database or the broker is unreachable.", body = error::ErrorBody,
            headers(("Retry-After" = u64)), example = json!({"detail": "database unreachable"})),
    )
)]
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<Ready>, ApiError> {
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
    Ok(Json(Ready {
        status: Readiness::Ready,
    }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The BD endpoints, under `/api/v1`. Every documented route is added through `routes!`,
/// which takes its path, method and description from the handler's `#[utoipa::path]`: a route
/// added here is in the OpenAPI document, and one cannot be added any other way.
pub fn bd_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jobs::list_jobs, jobs::create_job))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::get_result))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(events::job_events))
        .routes(routes!(jobs::job_webhooks))
        // The handler skips storage for a HEAD.
        .routes(routes!(jobs::get_asset, jobs::head_asset))
}

/// Every documented route: the BD endpoints (`bd`, as [`bd_routes`] gives them, perhaps
/// layered) and the public ones, on [`openapi::base`]. The router serves exactly these (plus
/// the web console and the fallbacks), and the OpenAPI document is generated from them.
pub fn documented(bd: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .nest("/api/v1", bd.routes(routes!(openapi_document)))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.guard.limits.max_body_bytes;
    // The capacity limits guard the BD endpoints only: health checks and scrapes must keep
    // answering when the API is saturated, or an orchestrator restarts a busy server.
    let bd = bd_routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        limits::admission,
    ));
    let (api, _) = documented(bd).split_for_parts();
    let app = api
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
    use axum::routing::get;
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
