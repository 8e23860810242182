//! What one API process accepts before it pushes back: a per-key rate limit (GCRA, from
//! `governor`), a limit on requests in flight, a limit on open event streams, a per-request
//! deadline, and the net that turns any plain-text error a layer produces into the API's
//! `{"detail": ...}` body.

use super::error::ApiError;
use super::AppState;
use crate::config::ApiLimits;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// What a client is told to wait when the rate is zero (or not a number): the budget never
/// refills, so there is no honest wait; a minute keeps well-behaved clients from hammering.
const NO_REFILL_WAIT: Duration = Duration::from_secs(60);

/// The longest refill period a quota gets: a rate below one a year is as good as none, and
/// `governor` counts in u64 nanoseconds.
const LONGEST_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// `rate` requests a second up to `burst` at once, as a `governor` quota. A rate of zero, a
/// negative one or NaN lets one burst through and never refills it.
pub fn quota(rate: f64, burst: u32) -> Quota {
    let period = if rate > 0.0 {
        Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(LONGEST_PERIOD)
            .clamp(Duration::from_nanos(1), LONGEST_PERIOD)
    } else {
        LONGEST_PERIOD
    };
    Quota::with_period(period)
        .expect("a period of at least a nanosecond")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"))
}

/// One budget for the whole process (the unknown-token lookups), on `governor`'s clock or a fake
/// one in tests.
pub struct Budget<C: Clock = DefaultClock> {
    rate: f64,
    limiter: governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl Budget {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Budget<C> {
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Self {
        Self {
            rate,
            limiter: governor::RateLimiter::direct_with_clock(quota(rate, burst), clock.clone()),
            clock,
        }
    }

    /// Takes one unit, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| retry_after(self.rate, not_until.wait_time_from(self.clock.now())))
    }
}

fn retry_after(rate: f64, wait: Duration) -> Duration {
    if rate > 0.0 {
        wait
    } else {
        NO_REFILL_WAIT
    }
}

/// One budget per API key, in this process's memory, which is the usual trade for needing no
/// shared store: with N replicas behind a balancer a key gets up to N times the rate, unless the
/// deployment says N (`BDJOBS_API_REPLICAS`, [`RateLimiter::for_replica`]).
pub struct RateLimiter<C: Clock = DefaultClock> {
    rate: f64,
    limiter:
        governor::RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    calls: AtomicU64,
}

/// Past this many keys the limiter forgets the ones whose budget is full again.
const TRACKED_KEYS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }

    /// This process's share of the deployment's limits: budgets are per process, so with N API
    /// replicas each allows 1/N of the rate and of the burst (at least one request).
    pub fn for_replica(limits: &ApiLimits) -> Self {
        Self::for_replica_with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Self {
        Self {
            rate,
            limiter: governor::RateLimiter::new(
                quota(rate, burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
            calls: AtomicU64::new(0),
        }
    }

    pub fn for_replica_with_clock(limits: &ApiLimits, clock: C) -> Self {
        let replicas = limits.api_replicas.max(1);
        Self::with_clock(
            limits.rate_limit_per_sec / f64::from(replicas),
            limits.rate_limit_burst.div_ceil(replicas),
            clock,
        )
    }

    /// Counts a request of `key`; `Err(retry_after)` when it is over its rate.
    pub fn check(&self, key: Uuid) -> Result<(), Duration> {
        let outcome = self.limiter.check_key(&key).map_err(|not_until| {
            retry_after(self.rate, not_until.wait_time_from(self.clock.now()))
        });
        // Keys are few (one entry per live key that sent a request), but drop the idle ones
        // now and then so the map tracks active keys only. Counting the map visits every shard,
        // so only one call in 1024 does it.
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if calls % 1024 == 1023 && self.limiter.len() > TRACKED_KEYS {
            self.limiter.retain_recent();
        }
        outcome
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

    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_key_gets_its_burst_then_is_refused_with_the_wait_for_the_next_request() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(2.0, 3, clock.clone());
        let key = Uuid::new_v4();
        for _ in 0..3 {
            assert!(limiter.check(key).is_ok());
        }
        assert_eq!(limiter.check(key), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(200));
        assert_eq!(limiter.check(key), Err(Duration::from_millis(300)));
    }

    #[test]
    fn a_budget_refills_at_its_rate_but_never_above_its_burst() {
        let clock = FakeRelativeClock::default();
        let budget = Budget::with_clock(1.0, 2, clock.clone());
        budget.take().unwrap();
        budget.take().unwrap();
        clock.advance(Duration::from_secs(100));
        assert!(budget.take().is_ok());
        assert!(budget.take().is_ok());
        assert!(budget.take().is_err());
    }

    #[test]
    fn a_zero_rate_lets_one_burst_through_and_asks_for_a_minute_after() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(0.0, 2, clock.clone());
        let key = Uuid::new_v4();
        assert!(limiter.check(key).is_ok());
        assert!(limiter.check(key).is_ok());
        clock.advance(Duration::from_secs(3600));
        assert_eq!(limiter.check(key), Err(NO_REFILL_WAIT));
    }

    #[test]
    fn a_rate_below_one_a_second_spaces_requests_by_its_period() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(0.01, 1, clock.clone());
        let key = Uuid::new_v4();
        assert!(limiter.check(key).is_ok());
        assert_eq!(limiter.check(key), Err(Duration::from_secs(100)));
        clock.advance(Duration::from_secs(100));
        assert!(limiter.check(key).is_ok());
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
        let limiter = RateLimiter::for_replica_with_clock(&limits, FakeRelativeClock::default());
        let key = Uuid::nil();
        for _ in 0..3 {
            assert!(limiter.check(key).is_ok());
        }
        // A third of 30/s: the next request is allowed in 100 ms.
        assert_eq!(limiter.check(key), Err(Duration::from_millis(100)));
    }

    #[test]
    fn each_key_has_its_own_budget() {
        let limiter = RateLimiter::with_clock(1.0, 1, FakeRelativeClock::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
    }
}
