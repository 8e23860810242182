//! Hostile and unusual input over the real API, broker and database (issue 13): every request
//! gets an answer, every accepted job ends, and what one client holds is bounded.

mod common;

use bdjobs::adapters::broker::{Outgoing, Publisher};
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::messages::{Completed, Event, JobRef, Position};
use bdjobs::domain::stages::DeliveredContact;
use bdjobs::projector::{self, ProjectorConfig};
use common::{api_only, Resources, TestApp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internationalised_domain_is_accepted_and_bad_text_gets_a_422_naming_it() {
    let app = TestApp::start("idn").await;
    let key = app.res.key("acme").await;

    // Used to panic in the handler: the client saw its connection dropped.
    let resp = app
        .post_job(
            &key,
            &json!({"preset": "full_pipeline", "input_assets": {"companies": [
                {"domain": "日本語.jp"}, {"domain": "éééé.example"}
            ]}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let job = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = app.wait(&key, &job).await.pop().unwrap();
    assert_eq!(last["status"], "completed", "{last}");

    let refused = [
        (
            json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
                {"email": "ada@acme.example"}, {"email": "b@acme.example", "first_name": "A\u{0}da"}
            ]}}),
            "input_assets.contacts[1].first_name: contains the control character U+0000",
        ),
        (
            json!({"preset": "full_pipeline", "input_assets": {"companies": [
                {"domain": "acme.example", "industry": "Soft\u{85}ware"}
            ]}}),
            "input_assets.companies[0].industry: contains the control character U+0085",
        ),
        (
            json!({"preset": "full_pipeline",
                   "input_assets": {"companies": [{"domain": "acme.example"}]},
                   "icp_config": {"icp_gate": "apply", "keywords": vec!["saas"; 101]}}),
            "icp_config.keywords: 101 items; at most 100 are accepted",
        ),
        (
            json!({"preset": "full_pipeline",
                   "input_assets": {"companies": [{"domain": "acme.example"}]},
                   "execution_options": {"target_titles": vec!["CTO"; 1000]}}),
            "execution_options.target_titles: 1000 items",
        ),
    ];
    for (body, detail) in refused {
        let resp = app.post_job(&key, &body).await;
        assert_eq!(resp.status(), 422, "{detail}");
        let got = resp.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(got.contains(detail), "{got}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_share_of_event_streams_gets_429_and_other_keys_still_stream() {
    let mut res = Resources::new("streams").await;
    res.config.api.max_event_streams_per_key = 2;
    let (base, shutdown) = api_only(&res).await;
    let (greedy, other) = (res.key("acme").await, res.key("acme").await);
    let body = json!({"preset": "verify_existing_emails",
                      "input_assets": {"contacts": [{"email": "ada@acme.example"}]}});
    let job = common::create_job(&base, &greedy, &body).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let open = |key: &str| {
        http.get(format!("{base}/api/v1/bd/jobs/{job}/events"))
            .bearer_auth(key)
            .send()
    };
    // The job stays pending (no worker), so these streams stay open while held.
    let held = [open(&greedy).await.unwrap(), open(&greedy).await.unwrap()];
    assert!(held.iter().all(|r| r.status() == 200));
    let refused = open(&greedy).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .contains("event streams"));
    assert_eq!(open(&other).await.unwrap().status(), 200, "another key");
    drop(held);
    // A closed stream gives its unit back (once the server notices the client left).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = open(&greedy).await.unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the key's streams were never given back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_fails_its_job_is_dead_lettered_and_counted() {
    let res = Resources::new("reject").await;
    let (base, api) = api_only(&res).await;
    let key = res.key("acme").await;
    let body = json!({"preset": "verify_existing_emails",
                      "input_assets": {"contacts": [{"email": "ada@acme.example"}]}});
    let job_id = common::create_job(&base, &key, &body).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = tokio::spawn(projector::run(
        ProjectorConfig {
            amqp_url: res.config.amqp_url.clone(),
            topology: res.topology(),
            prefetch: 16,
            name: "test-projector".to_owned(),
            stuck_after: Duration::from_secs(3600),
        },
        res.pool.clone(),
        bdjobs::adapters::storage::operator(&res.config.assets_location()).unwrap(),
        shutdown.clone(),
    ));

    // What a worker would have sent before the API refused control characters: jsonb cannot
    // hold \u0000, so Postgres refuses the event every time.
    let job = JobRef {
        job_id: JobId(job_id.parse().unwrap()),
        tenant: TenantId::parse("acme").unwrap(),
    };
    let completed = Event::Completed(Completed {
        summary: Default::default(),
        contacts: vec![DeliveredContact {
            first_name: Some("A\u{0}da".to_owned()),
            email: Some("ada@acme.example".to_owned()),
            source: "input".to_owned(),
            ..Default::default()
        }],
    })
    .into_envelope(&job, Position { attempt: 1, seq: 1 }, chrono::Utc::now());
    let publisher = Publisher::new(&res.config.amqp_url, "test-events", res.topology());
    let id = completed.message_id.to_string();
    publisher
        .publish(Outgoing {
            exchange: &res.topology().events_exchange(),
            routing_key: "job.completed",
            message_id: &id,
            kind: "job.completed",
            body: &serde_json::to_vec(&completed).unwrap(),
            correlation_id: None,
        })
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let view = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{job_id}")).await;
        if view["status"] != "pending" {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the job was never failed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["status"], "failed", "{view}");
    let error = view["error_message"].as_str().unwrap();
    assert!(error.contains("result could not be recorded"), "{error}");
    assert!(error.contains("(reference E-"), "{error}");
    for internal in ["jsonb", "Unicode", "\\u0000", "22P05", "database"] {
        assert!(!error.contains(internal), "{internal} leaked: {error}");
    }

    let dead = bdjobs::cli::dlq::list(&res.config.amqp_url, &res.topology(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id, id);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bdjobs_projector_rejected_events_total 1"),
        "{metrics}"
    );
    shutdown.cancel();
    projector.await.unwrap().unwrap();
    api.cancel();
}
