//! Bearer authentication (RFC 6750): the extractor that turns `Authorization: Bearer dc_...` into
//! the caller's tenant, or a 401; and the per-key rate limit (429), counted once a key is known,
//! so the limiter holds one bucket per real key whatever strangers send.

use super::{error::ApiError, AppState};
use crate::adapters::db::keys;
use crate::domain::ids::TenantId;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use std::time::Instant;

/// The authenticated caller.
pub struct Caller(pub TenantId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized(
                "expected Authorization: Bearer <token>",
            ));
        }
        let token = token.trim();
        if !token.starts_with(keys::KEY_PREFIX) || token.len() > 256 {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        match keys::authenticate(&state.pool, token).await? {
            Some(owner) => {
                tracing::Span::current().record("tenant", owner.tenant.as_str());
                if let Err(wait) = state.guard.rate.check(owner.key_id, Instant::now()) {
                    return Err(ApiError::TooManyRequests(
                        wait.as_secs_f64().ceil().max(1.0) as u64,
                    ));
                }
                Ok(Caller(owner.tenant))
            }
            None => Err(ApiError::Unauthorized("invalid token")),
        }
    }
}
