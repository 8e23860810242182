//! What one API process accepts before it pushes back: a per-key rate limit (token bucket), a
//! limit on requests in flight, a limit on open event streams, a per-request deadline, and the
//! net that turns any plain-text error a layer produces into the API's `{"detail": ...}` body.

use super::error::ApiError;
use super::AppState;
use crate::config::ApiLimits;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// A token bucket: `rate` tokens a second up to `burst`; a request takes one.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        } else {
            Err(Duration::from_secs(60))
        }
    }

    fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate >= burst as f64
    }
}

/// One bucket per API key, in this process's memory: with N replicas behind a balancer a key
/// gets up to N times the rate, which is the usual trade for needing no shared store.
pub struct RateLimiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// This process's share of the deployment's limits: buckets are per process, so with N API
    /// replicas each allows 1/N of the rate and of the burst (at least one request).
    pub fn for_replica(limits: &ApiLimits) -> Self {
        let replicas = limits.api_replicas.max(1);
        Self::new(
            limits.rate_limit_per_sec / f64::from(replicas),
            limits.rate_limit_burst.div_ceil(replicas),
        )
    }

    /// Counts a request of `key`; `Err(retry_after)` when it is over its rate.
    pub fn check(&self, key: Uuid, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        // Keys are few (one entry per live key that sent a request), but drop the idle ones
        // now and then so the map tracks active keys only.
        if buckets.len() > 10_000 {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| !b.is_full(rate, burst, now));
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(self.rate, self.burst, now)
    }
}

/// Counts what each API key holds open (event streams), so that one key cannot take a shared
/// capacity whole.
pub struct PerKey {
    max: usize,
    open: Mutex<HashMap<Uuid, usize>>,
}

/// One unit a key holds; given back on drop.
pub struct KeyPermit {
    owner: Arc<PerKey>,
    key: Uuid,
}

impl PerKey {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A unit for `key`, or `None` when it already holds its maximum.
    pub fn try_acquire(self: &Arc<Self>, key: Uuid) -> Option<KeyPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(key).or_default();
        if *held >= self.max {
            return None;
        }
        *held += 1;
        Some(KeyPermit {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                // Only keys holding something stay in the map: it is bounded by the open units.
                open.remove(&self.key);
            }
        }
    }
}

/// The shared state of the limits, built once per API process from the configuration.
pub struct Guard {
    pub limits: ApiLimits,
    pub rate: RateLimiter,
    pub in_flight: Arc<Semaphore>,
    pub streams: Arc<Semaphore>,
    pub streams_per_key: Arc<PerKey>,
}

impl Guard {
    pub fn new(limits: &ApiLimits) -> Self {
        Self {
            limits: limits.clone(),
            rate: RateLimiter::for_replica(limits),
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            streams: Arc::new(Semaphore::new(limits.max_event_streams.max(1))),
            streams_per_key: PerKey::new(limits.max_event_streams_per_key),
        }
    }
}

/// Requests in flight beyond the limit get 503 with `Retry-After` at once (queueing them would
/// only make every client wait); each request gets a deadline, after which it gets 503 too.
/// The deadline covers producing the response, not streaming its body, so a download or an
/// event stream is not cut.
pub async fn admission(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.guard.in_flight.clone().try_acquire_owned() else {
        return ApiError::Busy("too many requests in flight; retry shortly").into_response();
    };
    let deadline = Duration::from_secs(state.guard.limits.request_timeout_secs.max(1));
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Busy("the request took too long and was abandoned").into_response(),
    }
}

/// Whatever produced an error response (axum's extractors, a layer), it leaves with the API's
/// error body: a non-JSON 4xx/5xx body is replaced by `{"detail": "<reason>"}`, headers kept.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_ascii_lowercase(),
    };
    let body =
        serde_json::to_vec(&serde_json::json!({ "detail": detail })).expect("a detail serialises");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, body.len().into());
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_refuses_with_the_wait_for_the_next_token() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert!(b.take(2.0, 3, t0).is_ok());
        }
        let wait = b.take(2.0, 3, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn a_bucket_refills_at_its_rate_but_never_above_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2, t0);
        b.take(1.0, 2, t0).unwrap();
        b.take(1.0, 2, t0).unwrap();
        let later = t0 + Duration::from_secs(100);
        assert!(b.take(1.0, 2, later).is_ok());
        assert!(b.take(1.0, 2, later).is_ok());
        assert!(b.take(1.0, 2, later).is_err());
    }

    #[test]
    fn a_key_holds_at_most_its_share_and_gets_it_back_as_units_are_dropped() {
        let per_key = PerKey::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = per_key.try_acquire(a).unwrap();
        let _second = per_key.try_acquire(a).unwrap();
        assert!(
            per_key.try_acquire(a).is_none(),
            "a third stream of one key"
        );
        assert!(
            per_key.try_acquire(b).is_some(),
            "another key is not affected"
        );
        drop(first);
        assert!(per_key.try_acquire(a).is_some());
    }

    #[test]
    fn each_of_three_replicas_allows_a_third_of_the_rate_and_burst() {
        let limits = ApiLimits {
            rate_limit_per_sec: 30.0,
            rate_limit_burst: 9,
            api_replicas: 3,
            ..ApiLimits::DEFAULT
        };
        let limiter = RateLimiter::for_replica(&limits);
        let (key, now) = (Uuid::nil(), Instant::now());
        for _ in 0..3 {
            assert!(limiter.check(key, now).is_ok());
        }
        // A third of 30/s: the next token comes in 100 ms.
        assert_eq!(limiter.check(key, now), Err(Duration::from_millis(100)));
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let limiter = RateLimiter::new(1.0, 1);
        let now = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(limiter.check(a, now).is_ok());
        assert!(limiter.check(a, now).is_err());
        assert!(limiter.check(b, now).is_ok());
    }
}
