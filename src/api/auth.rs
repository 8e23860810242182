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
/// trip per request. An entry lives `ttl`: a revoked key keeps working at most that long.
///
/// Tokens that match no key are remembered too, as unknown, for the same `ttl`, so a client
/// repeating a wrong or revoked token costs a SHA-256 and a map lookup, not a query. Both maps
/// are bounded (they start over past [`KEY_CACHE_MAX`] entries), and lookups of tokens in
/// neither map (the only ones that reach the database) share a token bucket: a flood of distinct
/// made-up tokens gets 429 before it gets near the database.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (keys::KeyOwner, Instant)>>,
    unknown: Mutex<HashMap<Vec<u8>, Instant>>,
    misses: Mutex<super::limits::Bucket>,
}

/// Past this many keys (or unknown tokens) a map starts over rather than grow.
const KEY_CACHE_MAX: usize = 10_000;

/// Database lookups of tokens the cache does not know, per second and in a burst, for the whole
/// process: far above what new keys and cache expiry need, far below what a flood would cost.
pub const MISS_RATE_PER_SEC: f64 = 200.0;
pub const MISS_BURST: u32 = 400;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            misses: Mutex::new(super::limits::Bucket::full(MISS_BURST, Instant::now())),
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

    fn is_known_unknown(&self, hash: &[u8], now: Instant) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        unknown
            .get(hash)
            .is_some_and(|at| now.duration_since(*at) < self.ttl)
    }

    fn put_unknown(&self, hash: Vec<u8>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if unknown.len() >= KEY_CACHE_MAX {
            unknown.clear();
        }
        unknown.insert(hash, now);
    }

    /// Takes a database lookup from the shared bucket, or says how long until one is free.
    fn take_miss(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(MISS_RATE_PER_SEC, MISS_BURST, now)
    }

    /// The key's owner, from the cache or the database.
    pub async fn authenticate(
        &self,
        pool: &deadpool_postgres::Pool,
        secret: &str,
    ) -> Result<Lookup, crate::adapters::db::DbError> {
        let hash = keys::hash_key(secret);
        let now = Instant::now();
        if let Some(owner) = self.get(&hash, now) {
            return Ok(Lookup::Known(owner));
        }
        if self.is_known_unknown(&hash, now) {
            return Ok(Lookup::Unknown);
        }
        if let Err(wait) = self.take_miss(now) {
            return Ok(Lookup::Throttled(wait));
        }
        match keys::authenticate_hash(pool, &hash).await? {
            Some(owner) => {
                self.put(hash, owner.clone(), now);
                Ok(Lookup::Known(owner))
            }
            None => {
                self.put_unknown(hash, now);
                Ok(Lookup::Unknown)
            }
        }
    }
}

/// What a token turned out to be.
#[derive(Debug)]
pub enum Lookup {
    Known(keys::KeyOwner),
    /// No key, or a revoked one.
    Unknown,
    /// Not looked up: too many unknown tokens are being tried; retry after this long.
    Throttled(Duration),
}

/// The authenticated caller: its tenant and the id of the key it used.
pub struct Caller(pub TenantId, pub uuid::Uuid);

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
            Lookup::Throttled(wait) => Err(ApiError::TooManyRequests(
                wait.as_secs_f64().ceil().max(1.0) as u64,
            )),
            Lookup::Known(owner) => {
                tracing::Span::current().record("tenant", owner.tenant.as_str());
                if let Err(wait) = state.guard.rate.check(owner.key_id, Instant::now()) {
                    return Err(ApiError::TooManyRequests(
                        wait.as_secs_f64().ceil().max(1.0) as u64,
                    ));
                }
                Ok(Caller(owner.tenant, owner.key_id))
            }
            Lookup::Unknown => Err(ApiError::Unauthorized("invalid token")),
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
    fn an_unknown_token_is_remembered_as_unknown_for_the_time_to_live() {
        let cache = KeyCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        cache.put_unknown(b"guess".to_vec(), t0);
        assert!(cache.is_known_unknown(b"guess", t0 + Duration::from_secs(4)));
        assert!(!cache.is_known_unknown(b"guess", t0 + Duration::from_secs(5)));
        assert!(!cache.is_known_unknown(b"other", t0));
    }

    #[test]
    fn the_unknown_token_cache_is_bounded() {
        let cache = KeyCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..(KEY_CACHE_MAX + 10) {
            cache.put_unknown(i.to_le_bytes().to_vec(), t0);
        }
        assert!(cache.unknown.lock().unwrap().len() <= KEY_CACHE_MAX);
    }

    #[test]
    fn lookups_of_uncached_tokens_share_a_bucket() {
        let cache = KeyCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..MISS_BURST {
            assert!(cache.take_miss(t0).is_ok());
        }
        assert!(cache.take_miss(t0).is_err(), "past the burst");
        assert!(cache.take_miss(t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_zero_time_to_live_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.put(b"h".to_vec(), owner(), t0);
        assert!(cache.get(b"h", t0).is_none());
        cache.put_unknown(b"u".to_vec(), t0);
        assert!(!cache.is_known_unknown(b"u", t0));
    }
}
