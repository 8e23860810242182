//! `/metrics` in the Prometheus text format (0.0.4), encoded by `prometheus-client`: request
//! latency histograms by route template, and, from a snapshot refreshed at most every
//! [`SNAPSHOT_EVERY`], jobs by status, queue depths, projector lag and events the projector
//! rejected.
//!
//! The endpoint needs no key and sits outside the request limits (a saturated server must still
//! be observable), so what a scrape costs is bounded instead: however often it is called, the
//! database and the broker are asked at most once per [`SNAPSHOT_EVERY`], by one scrape at a
//! time, and the others get the snapshot.
//!
//! Labels stay bounded: the route is axum's matched template (`/api/v1/bd/jobs/{job_id}`), never
//! the raw path (`unmatched` for a path no route serves), the method is one of the standard ones
//! or `other`, and the status is the code the API answered.

use super::AppState;
use crate::adapters::db;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

type Requests = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Request latencies since the process started, and the snapshot of the readings.
pub struct Metrics {
    registry: Registry,
    requests: Requests,
    readings: Snapshot,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Requests::new_with_constructor(latency_histogram);
        let mut registry = Registry::default();
        // prometheus-client ends every help text with a full stop: none here.
        registry.register(
            "bdjobs_http_request_duration_seconds",
            "Time to answer an HTTP request (to the first byte of the body), by route template",
            requests.clone(),
        );
        Self {
            registry,
            requests,
            readings: Snapshot::default(),
        }
    }
}

/// How old the readings of a scrape may be: Prometheus scrapes every 15 s or more, so a scraper
/// never notices, and a flood of scrapes costs the database one set of queries per period.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// A text computed at most once per period, concurrent callers waiting for the one computation
/// rather than each starting their own.
pub struct Snapshot {
    every: Duration,
    cached: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(SNAPSHOT_EVERY)
    }
}

impl Snapshot {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The snapshot taken at or after `now - every`, or a new one from `read`.
    pub async fn get<F, Fut>(&self, now: Instant, read: F) -> String
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let mut cached = self.cached.lock().await;
        if let Some((at, text)) = cached.as_ref() {
            if now.saturating_duration_since(*at) < self.every {
                return text.clone();
            }
        }
        let text = read().await;
        *cached = Some((now, text.clone()));
        text
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub fn observe(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.to_owned(),
            status,
        };
        self.requests
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The histograms, in the text format.
    pub fn render_requests(&self, out: &mut String) {
        prometheus_text::encode(out, &self.registry).expect("writing to a String cannot fail");
    }
}

/// Times every request under its route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    state
        .metrics
        .observe(&method, &route, resp.status().as_u16(), started.elapsed());
    resp
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    summary = "Prometheus metrics",
    description = "Prometheus text format 0.0.4: `bdjobs_http_request_duration_seconds` (histogram by method, route template and status), `bdjobs_jobs` (jobs by status, all accounts), `bdjobs_queue_messages` (messages ready per queue), `bdjobs_projector_lag_seconds` (the largest delay between an event's occurrence and its application over the last minute), `bdjobs_scrape_error` (which of the scrape-time readings failed). No authentication: serve it on an address only your monitoring reaches.",
    security(()),
    responses((status = 200, description = "The metrics.", content_type = "text/plain", body = String))
)]
/// Each scrape-time reading may fail on its own (the broker down, say) without hiding the rest;
/// `bdjobs_scrape_error` says which did.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    state.metrics.render_requests(&mut out);
    let readings = state
        .metrics
        .readings
        .get(Instant::now(), || read_readings(&state))
        .await;
    out.push_str(&readings);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
        )],
        out,
    )
        .into_response()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// The readings that cost a database query or a broker round trip, in the text format. A reading
/// that failed leaves its metric out rather than report a made-up value.
async fn read_readings(state: &AppState) -> String {
    let mut registry = Registry::default();
    let mut errors: Vec<&str> = Vec::new();
    let limit = Duration::from_secs(2);

    let jobs = Family::<StatusLabel, Gauge>::default();
    match tokio::time::timeout(limit, db::jobs::count_by_status(&state.pool)).await {
        Ok(Ok(rows)) => {
            let counts: BTreeMap<String, i64> = rows.into_iter().collect();
            for status in crate::domain::job::JobStatus::ALL {
                let n = counts.get(status.as_str()).copied().unwrap_or(0);
                jobs.get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n);
            }
        }
        _ => errors.push("jobs"),
    }
    registry.register(
        "bdjobs_jobs",
        "Jobs in the read model, by status (all tenants)",
        jobs,
    );

    let queues = Family::<QueueLabel, Gauge>::default();
    match tokio::time::timeout(limit, state.publisher.queue_depths()).await {
        Ok(Ok(depths)) => {
            for (queue, n) in depths {
                queues
                    .get_or_create(&QueueLabel { queue })
                    .set(i64::from(n));
            }
        }
        _ => errors.push("queues"),
    }
    registry.register(
        "bdjobs_queue_messages",
        "Messages ready in each of the namespace's queues",
        queues,
    );

    match tokio::time::timeout(limit, db::jobs::projector_lag_seconds(&state.pool)).await {
        Ok(Ok(lag)) => {
            let gauge = Gauge::<f64, AtomicU64>::default();
            gauge.set(lag);
            registry.register(
                "bdjobs_projector_lag_seconds",
                "Largest delay between an event's occurrence and its application to the read model, over the events applied in the last minute (0 when none were)",
                gauge,
            );
        }
        _ => errors.push("projector_lag"),
    }

    match tokio::time::timeout(limit, db::jobs::rejected_events(&state.pool)).await {
        Ok(Ok(n)) => {
            // The count lives in the database (it survives restarts and spans the replicas),
            // so the counter is a constant read back, not one this process increments.
            registry.register(
                "bdjobs_projector_rejected_events",
                "Events the projector could never apply (a permanent database error): each was dead-lettered and failed its job (all tenants)",
                ConstCounter::new(u64::try_from(n).unwrap_or(0)),
            );
        }
        _ => errors.push("projector_rejections"),
    }

    let scrape_errors = Family::<SourceLabel, Gauge>::default();
    for source in ["jobs", "queues", "projector_lag", "projector_rejections"] {
        scrape_errors
            .get_or_create(&SourceLabel { source })
            .set(i64::from(errors.contains(&source)));
    }
    registry.register(
        "bdjobs_scrape_error",
        "Whether reading a scrape-time metric failed (1) on the latest snapshot",
        scrape_errors,
    );

    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_every_bucket_at_or_above_its_latency() {
        let m = Metrics::default();
        m.observe(
            &Method::GET,
            "/api/v1/bd/jobs/{job_id}",
            200,
            Duration::from_millis(30),
        );
        let mut out = String::new();
        m.render_requests(&mut out);
        let line = |le: &str| {
            format!("bdjobs_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/api/v1/bd/jobs/{{job_id}}\",status=\"200\",le=\"{le}\"}}")
        };
        assert!(out.contains(&format!("{} 0", line("0.025"))), "{out}");
        assert!(out.contains(&format!("{} 1", line("0.05"))), "{out}");
        assert!(out.contains(&format!("{} 1", line("+Inf"))), "{out}");
    }

    #[test]
    fn the_histogram_is_described_once_with_one_full_stop_and_its_type() {
        let m = Metrics::default();
        m.observe(&Method::POST, "/api/v1/bd/jobs", 202, Duration::ZERO);
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(out.contains("# HELP bdjobs_http_request_duration_seconds Time to answer an HTTP request (to the first byte of the body), by route template.\n# TYPE bdjobs_http_request_duration_seconds histogram\n"), "{out}");
        assert!(out.contains("bdjobs_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/bd/jobs\",status=\"202\"} 1\n"), "{out}");
    }

    #[tokio::test]
    async fn scrapes_within_the_period_share_one_reading_of_the_database_and_broker() {
        let snapshot = Snapshot::new(Duration::from_secs(5));
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let read = || async {
            let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            format!("reading {n}")
        };
        let t0 = Instant::now();
        assert_eq!(snapshot.get(t0, read).await, "reading 1");
        for later in [0, 1, 4] {
            let at = t0 + Duration::from_secs(later);
            assert_eq!(snapshot.get(at, read).await, "reading 1", "{later} s later");
        }
        assert_eq!(
            snapshot.get(t0 + Duration::from_secs(5), read).await,
            "reading 2"
        );
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn an_unusual_method_is_counted_as_other() {
        let m = Metrics::default();
        m.observe(
            &Method::from_bytes(b"BREW").unwrap(),
            "unmatched",
            404,
            Duration::ZERO,
        );
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(
            out.contains("method=\"other\",route=\"unmatched\",status=\"404\""),
            "{out}"
        );
    }
}
