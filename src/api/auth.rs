//! Bearer authentication (RFC 6750): the extractor that turns `Authorization: Bearer dc_...` into
//! the caller's tenant, or a 401; and the per-key rate limit (429), counted once a key is known,
//! so the limiter holds one bucket per real key whatever strangers send.

use super::{error::ApiError, AppState};
use crate::adapters::db::keys;
use crate::domain::ids::TenantId;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys this process checked recently, by hash, so that a busy client costs no database round
/// trip per request. An entry lives `ttl`: a revoked key keeps working at most that long. Only
/// keys that exist are kept, so strangers' guesses cannot grow it; it is bounded anyway.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (keys::KeyOwner, Instant)>>,
}

/// Past this many keys the cache starts over rather than grow.
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &[u8], now: Instant) -> Option<keys::KeyOwner> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(owner, _)| owner.clone())
    }

    fn put(&self, hash: Vec<u8>, owner: keys::KeyOwner, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (owner, now));
    }

    /// The key's owner, from the cache or the database.
    pub async fn authenticate(
        &self,
        pool: &deadpool_postgres::Pool,
        secret: &str,
    ) -> Result<Option<keys::KeyOwner>, crate::adapters::db::DbError> {
        let hash = keys::hash_key(secret);
        let now = Instant::now();
        if let Some(owner) = self.get(&hash, now) {
            return Ok(Some(owner));
        }
        let owner = keys::authenticate_hash(pool, &hash).await?;
        if let Some(o) = &owner {
            self.put(hash, o.clone(), now);
        }
        Ok(owner)
    }
}

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
        match state.keys.authenticate(&state.pool, token).await? {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> keys::KeyOwner {
        keys::KeyOwner {
            key_id: uuid::Uuid::nil(),
            tenant: TenantId::parse("acme").unwrap(),
        }
    }

    #[test]
    fn a_cached_key_expires_after_its_time_to_live() {
        let cache = KeyCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        cache.put(b"h".to_vec(), owner(), t0);
        assert!(cache.get(b"h", t0 + Duration::from_secs(4)).is_some());
        assert!(cache.get(b"h", t0 + Duration::from_secs(5)).is_none());
        assert!(cache.get(b"other", t0).is_none());
    }

    #[test]
    fn a_zero_time_to_live_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.put(b"h".to_vec(), owner(), t0);
        assert!(cache.get(b"h", t0).is_none());
    }
}
