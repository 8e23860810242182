//! Secrets never reach the logs: a full run (create, follow, list, fetch, download, a refused
//! key, a revoked key) with every log line captured at TRACE level, then a search of the capture
//! for the API key and the Authorization header value. Its own test binary, so that its capturing
//! subscriber is the process's global one.

mod common;

use common::{demo_job, TestApp};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_neither_the_key_nor_the_authorization_header() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let mut res = common::Resources::new("secrets").await;
    // The revoked key below must be refused at once, not after the key cache's 5 s.
    res.config.api.key_cache_secs = 0;
    let app = TestApp::start_with(res, common::demo_zone()).await;
    let key = app.res.key("acme").await;
    let resp = app
        .http
        .post(app.url("/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .header("idempotency-key", "secret-run-1")
        .json(&demo_job())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    let job = job["job_id"].as_str().unwrap().to_owned();
    let outcome = bdjobs::cli::watch::watch(&app.base, &key, &job, false)
        .await
        .unwrap();
    assert_eq!(outcome, bdjobs::cli::watch::Outcome::Completed);
    app.get_json(&key, "/api/v1/bd/jobs").await;
    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job}/result"))
        .await;
    for asset in result["result_assets"].as_array().unwrap() {
        let url = asset["download_url"].as_str().unwrap();
        assert_eq!(app.get(&key, url).await.status(), 200);
    }
    // A key that is almost right, and the same key once revoked: refused, and not logged either.
    let last = if key.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    assert_eq!(app.get(&wrong, "/api/v1/bd/jobs").await.status(), 401);
    app.res
        .pool
        .get()
        .await
        .unwrap()
        .execute("UPDATE api_keys SET revoked_at = now()", &[])
        .await
        .unwrap();
    assert_eq!(app.get(&key, "/api/v1/bd/jobs").await.status(), 401);
    app.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("job created"),
        "the capture holds the run's logs"
    );
    assert!(logs.contains(&job), "the capture holds the run's logs");
    assert!(logs.lines().count() > 100, "TRACE logs of a whole run");
    for secret in [
        key.as_str(),
        &key[3..],
        &format!("Bearer {key}"),
        wrong.as_str(),
    ] {
        let hits = logs.matches(secret).count();
        assert_eq!(hits, 0, "{secret:?} appears {hits} time(s) in the logs");
    }
    assert!(!logs.to_ascii_lowercase().contains("authorization: bearer"));
}
