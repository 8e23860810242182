//! The lifecycle beyond the happy path, over HTTP: cancelling pending and running jobs, and the
//! reaper that fails a job nothing is working on.

mod common;

use common::{api_only, Resources, TestApp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn one_contact() -> Value {
    json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [{"email": "ada@lumen.example"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_job_is_cancelled_at_once_and_a_second_cancel_conflicts() {
    let res = Resources::new("cancelp").await;
    let (base, shutdown) = api_only(&res).await;
    let key = res.key("acme").await;
    let http = reqwest::Client::new();
    let created = common::create_job(&base, &key, &one_contact()).await;
    let job_id = created["job_id"].as_str().unwrap();
    let cancel = format!("{base}/api/v1/bd/jobs/{job_id}/cancel");

    let other = res.key("someone-else").await;
    let resp = http.post(&cancel).bearer_auth(&other).send().await.unwrap();
    assert_eq!(resp.status(), 404, "another tenant cannot cancel it");

    let resp = http.post(&cancel).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(job["completed_at"].is_string());

    let resp = http.post(&cancel).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("already cancelled"));

    let result = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{job_id}/result")).await;
    assert_eq!(result["status"], "cancelled");
    assert!(result["result_id"].is_null());
    assert_eq!(result["result_assets"], json!([]));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_stops_at_the_next_stage_and_keeps_partial_assets() {
    // Three domains whose nameserver never answers make email_verify take seconds.
    let zone = common::demo_zone()
        .slow("slow-a.test")
        .slow("slow-b.test")
        .slow("slow-c.test");
    let app = TestApp::start_with(Resources::new("cancelr").await, zone).await;
    let key = app.res.key("acme").await;
    let body = json!({
        "requested_capabilities": ["email_verify", "linkedin_enrich"],
        "input_assets": {"contacts": [
            {"full_name": "Ada", "email": "ada@lumen.example"},
            {"full_name": "A", "email": "a@slow-a.test"},
            {"full_name": "B", "email": "b@slow-b.test"},
            {"full_name": "C", "email": "c@slow-c.test"}
        ]}
    });
    let created: Value = app.post_job(&key, &body).await.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let job = app
            .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}"))
            .await;
        if job["status"] == "running" {
            break;
        }
        assert_eq!(job["status"], "pending");
        assert!(started.elapsed() < Duration::from_secs(20), "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/bd/jobs/{job_id}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let last = app.wait(&key, &job_id).await.pop().unwrap();
    assert_eq!(last["status"], "cancelled", "{last}");
    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    let assets = result["result_assets"].as_array().unwrap();
    assert_eq!(assets.len(), 2);
    assert!(assets.iter().all(|a| a["availability"] == "partial"));
    // email_verify finished before the stop: its work is in the partial deliverable.
    assert_eq!(result["summary"]["verified_emails"], 1);
    let rows: Vec<Value> = app
        .get(&key, assets[0]["download_url"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_fails_a_job_that_nothing_works_on() {
    let mut res = Resources::new("reaper").await;
    res.config.stuck_after_secs = 1;
    let (base, shutdown) = api_only(&res).await;
    let key = res.key("acme").await;
    let created = common::create_job(&base, &key, &one_contact()).await;
    let job_id = created["job_id"].as_str().unwrap();
    // A projector (whose reaper runs every second) but no worker: the job is never started.
    let projector = tokio::spawn({
        let (c, p, s) = (res.config.clone(), res.pool.clone(), shutdown.clone());
        async move { bdjobs::app::run_projector(&c, p, s).await }
    });
    let started = Instant::now();
    let job = loop {
        let job = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{job_id}")).await;
        if job["status"] != "pending" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "failed");
    assert!(job["error_message"]
        .as_str()
        .unwrap()
        .contains("made no progress"));
    shutdown.cancel();
    projector.await.unwrap().unwrap();
}
