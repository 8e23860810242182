//! `/metrics` in the Prometheus text format (0.0.4), hand-rolled: request latency histograms by
//! route template, and, from a snapshot refreshed at most every [`SNAPSHOT_EVERY`], jobs by
//! status, queue depths, projector lag and events the projector rejected.
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
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

type Labels = (&'static str, String, u16);

/// Request latencies since the process started, and the snapshot of the readings.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<Labels, Histogram>>,
    readings: Snapshot,
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

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn observe(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut map = self.requests.lock().expect("metrics lock");
        let h = map
            .entry((method_label(method), route.to_owned(), status))
            .or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The histograms, in the text format.
    pub fn render_requests(&self, out: &mut String) {
        let map = self.requests.lock().expect("metrics lock").clone();
        out.push_str("# HELP bdjobs_http_request_duration_seconds Time to answer an HTTP request (to the first byte of the body), by route template.\n");
        out.push_str("# TYPE bdjobs_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in &map {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "bdjobs_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "bdjobs_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "bdjobs_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "bdjobs_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
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
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

/// The readings that cost a database query or a broker round trip, in the text format.
async fn read_readings(state: &AppState) -> String {
    let mut out = String::new();
    let mut errors: Vec<&str> = Vec::new();
    let limit = Duration::from_secs(2);

    out.push_str("# HELP bdjobs_jobs Jobs in the read model, by status (all tenants).\n");
    out.push_str("# TYPE bdjobs_jobs gauge\n");
    match tokio::time::timeout(limit, db::jobs::count_by_status(&state.pool)).await {
        Ok(Ok(rows)) => {
            let counts: BTreeMap<String, i64> = rows.into_iter().collect();
            for status in crate::domain::job::JobStatus::ALL {
                let n = counts.get(status.as_str()).copied().unwrap_or(0);
                let _ = writeln!(out, "bdjobs_jobs{{status=\"{}\"}} {n}", status.as_str());
            }
        }
        _ => errors.push("jobs"),
    }

    out.push_str(
        "# HELP bdjobs_queue_messages Messages ready in each of the namespace's queues.\n",
    );
    out.push_str("# TYPE bdjobs_queue_messages gauge\n");
    match tokio::time::timeout(limit, state.publisher.queue_depths()).await {
        Ok(Ok(depths)) => {
            for (queue, n) in depths {
                let _ = writeln!(
                    out,
                    "bdjobs_queue_messages{{queue=\"{}\"}} {n}",
                    escape(&queue)
                );
            }
        }
        _ => errors.push("queues"),
    }

    out.push_str("# HELP bdjobs_projector_lag_seconds Largest delay between an event's occurrence and its application to the read model, over the events applied in the last minute (0 when none were).\n");
    out.push_str("# TYPE bdjobs_projector_lag_seconds gauge\n");
    match tokio::time::timeout(limit, db::jobs::projector_lag_seconds(&state.pool)).await {
        Ok(Ok(lag)) => {
            let _ = writeln!(out, "bdjobs_projector_lag_seconds {lag}");
        }
        _ => errors.push("projector_lag"),
    }

    out.push_str("# HELP bdjobs_projector_rejected_events_total Events the projector could never apply (a permanent database error): each was dead-lettered and failed its job (all tenants).\n");
    out.push_str("# TYPE bdjobs_projector_rejected_events_total counter\n");
    match tokio::time::timeout(limit, db::jobs::rejected_events(&state.pool)).await {
        Ok(Ok(n)) => {
            let _ = writeln!(out, "bdjobs_projector_rejected_events_total {n}");
        }
        _ => errors.push("projector_rejections"),
    }

    out.push_str("# HELP bdjobs_scrape_error Whether reading a scrape-time metric failed (1) on the latest snapshot.\n");
    out.push_str("# TYPE bdjobs_scrape_error gauge\n");
    for source in ["jobs", "queues", "projector_lag", "projector_rejections"] {
        let failed = u8::from(errors.contains(&source));
        let _ = writeln!(out, "bdjobs_scrape_error{{source=\"{source}\"}} {failed}");
    }
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
