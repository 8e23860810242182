//! Bearer authentication (RFC 6750): the extractor that turns `Authorization: Bearer dc_...` into
//! the caller's tenant, or a 401.

use super::{error::ApiError, AppState};
use crate::adapters::db::keys;
use crate::domain::ids::TenantId;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};

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
            Some(tenant) => {
                tracing::Span::current().record("tenant", tenant.as_str());
                Ok(Caller(tenant))
            }
            None => Err(ApiError::Unauthorized("invalid token")),
        }
    }
}
