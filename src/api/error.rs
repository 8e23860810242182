//! The one error type of the HTTP API. Every error body is `{"detail": "..."}`; a 5xx never
//! carries internals (they go to the log, with the request's span).

use crate::adapters::Retryable;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Input that fails validation, one problem per entry (each naming its JSON path, or its
    /// file's line and column): 422 with the problems joined in `detail` and listed in
    /// `problems`, so that a form can show them one per line.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{0}")]
    Unavailable(&'static str),
    /// Over a capacity limit (requests in flight, event streams) or past the request deadline.
    #[error("{0}")]
    Busy(&'static str),
    #[error("request body too large (at most {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("rate limit exceeded for this API key; retry after {0} s")]
    TooManyRequests(u64),
    /// The key holds as many event streams as one key may; 429 with `Retry-After`.
    #[error("this API key already holds as many open event streams as one key may; close one or retry after {0} s")]
    TooManyStreams(u64),
    /// A Range that selects no byte of a representation of this many bytes.
    #[error("range not satisfiable: the asset has {0} bytes")]
    RangeNotSatisfiable(u64),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::adapters::db::DbError> for ApiError {
    /// Trouble a retry can cure (the database unreachable, out of connections, a serialization
    /// conflict) is 503 with `Retry-After`; anything else is a 500.
    fn from(e: crate::adapters::db::DbError) -> Self {
        if e.is_retryable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable("database unavailable; retry shortly")
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<crate::read_model::ReadModelError> for ApiError {
    /// A database error keeps its meaning (503 when a retry can cure it); the rest is a 500.
    fn from(e: crate::read_model::ReadModelError) -> Self {
        match e {
            crate::read_model::ReadModelError::Database(e) => e.into(),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl From<crate::adapters::storage::StorageError> for ApiError {
    fn from(e: crate::adapters::storage::StorageError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) | ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) | ApiError::TooManyStreams(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error, description = "The body of every error response.")]
pub struct ErrorBody {
    /// Human-readable description of the problem.
    pub detail: String,
    /// Present on a 422 for invalid input: each problem on its own, naming its JSON path
    /// (`input_assets.contacts[3].email`) or, for an uploaded file, its line and column
    /// (`contacts.csv line 5, column company_domain`). `detail` joins them with `; `.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<String>)]
    pub problems: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let problems = match self {
            ApiError::Invalid(ref problems) => Some(problems.clone()),
            _ => None,
        };
        let mut resp = (status, Json(ErrorBody { detail, problems })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let headers = resp.headers_mut();
        match &self {
            ApiError::TooManyRequests(secs) | ApiError::TooManyStreams(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::RangeNotSatisfiable(len) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}
