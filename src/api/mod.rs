//! The API role: a thin axum server over the read model, plus the outbox relay that makes sure
//! every accepted job's command reaches the broker.

pub mod auth;
pub mod error;
pub mod jobs;

use crate::adapters::broker::{Outgoing, Publisher};
use crate::adapters::db;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
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

/// Largest accepted request body: 10,000 records fit comfortably.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub storage: Operator,
    pub publisher: Arc<Publisher>,
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

async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = state
        .pool
        .get()
        .await
        .map_err(|_| ApiError::Unavailable("database unreachable"))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|_| ApiError::Unavailable("database unreachable"))?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/bd/jobs", post(jobs::create_job))
        .route("/bd/jobs/{job_id}", get(jobs::get_job))
        .route("/bd/jobs/{job_id}/result", get(jobs::get_result))
        .route("/bd/jobs/{job_id}/cancel", post(jobs::cancel_job))
        .route("/bd/jobs/{job_id}/assets/{asset_id}", get(jobs::get_asset))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<_>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), tenant = tracing::field::Empty)
                },
            ),
        )
        .with_state(state)
}

/// Serves until `shutdown`, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let relay = tokio::spawn(outbox_relay(
        state.pool.clone(),
        state.publisher.clone(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    let _ = relay.await;
    tracing::info!("api stopped");
    Ok(())
}

/// Publishes outbox rows whose fast-path publish did not confirm (broker down at the time,
/// process killed between commit and publish). Any number of API replicas can run it: rows are
/// locked with SKIP LOCKED while being published.
pub async fn outbox_relay(pool: Pool, publisher: Arc<Publisher>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match relay_once(&pool, &publisher, 5.0).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "outbox relay published pending commands"),
            Err(e) => tracing::warn!(error = %e, "outbox relay pass failed"),
        }
    }
}

/// One pass of the relay: returns how many commands it published.
pub async fn relay_once(
    pool: &Pool,
    publisher: &Publisher,
    grace_secs: f64,
) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = db::jobs::due_outbox(&tx, grace_secs, 100).await?;
    let exchange = publisher.topology().commands_exchange();
    let mut published = 0;
    for row in rows {
        let id = row.message_id.to_string();
        match publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &row.routing_key,
                message_id: &id,
                kind: "job.run",
                body: &row.body,
                correlation_id: row.correlation_id.as_deref(),
            })
            .await
        {
            Ok(()) => {
                tx.execute(
                    "DELETE FROM outbox WHERE message_id = $1",
                    &[&row.message_id],
                )
                .await?;
                published += 1;
            }
            Err(e) => {
                tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1,
                     next_attempt_at = now() + make_interval(secs => least(60, power(2, attempts)))
                     WHERE message_id = $1",
                    &[&row.message_id],
                )
                .await?;
                tracing::warn!(error = %e, "outbox publish failed");
                break;
            }
        }
    }
    tx.commit().await?;
    Ok(published)
}
