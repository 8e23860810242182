//! One job followed across roles: the correlation id the API takes from (or makes for) a POST
//! travels as the `x-correlation-id` AMQP header on the job's `job.run` command, on every event
//! the worker publishes for it, and back to the client in the response.

mod common;

use bdjobs::adapters::broker::{self, Publisher, RUN_JOB_KEY};
use bdjobs::api::{self, AppState};
use bdjobs::domain::messages::RawEnvelope;
use common::{Resources, TestApp};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn small_job() -> Value {
    json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": [
            {"full_name": "Ada Lovelace", "email": "ada@lumen.example"},
            {"full_name": "Sales", "email": "sales@brightwave.example"}
        ]}
    })
}

/// A private queue that receives a copy of every command and every event of a namespace.
struct Tap {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Tap {
    async fn new(res: &Resources) -> Self {
        let conn = broker::connect(&res.config.amqp_url, "test-tap")
            .await
            .unwrap();
        let topology = res.topology();
        topology.declare(&conn).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let queue = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for (exchange, key) in [
            (topology.commands_exchange(), RUN_JOB_KEY),
            (topology.events_exchange(), "job.#"),
        ] {
            ch.queue_bind(
                queue.name().clone(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        let consumer = ch
            .basic_consume(
                queue.name().clone(),
                "test-tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            consumer,
        }
    }

    /// `(type, correlation id)` of every message of `job_id` until one of type `until`.
    async fn messages_of(&mut self, job_id: &str, until: &str) -> Vec<(String, Option<String>)> {
        let mut seen = Vec::new();
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(60), self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("no {until} for job {job_id}; saw {seen:?}"))
                .expect("the tap's consumer ended")
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let message = RawEnvelope::from_slice(&delivery.data).unwrap();
            if message.job_id.to_string() != job_id {
                continue;
            }
            seen.push((
                message.kind.clone(),
                broker::correlation_id_of(&delivery.properties),
            ));
            if message.kind == until {
                return seen;
            }
        }
    }
}

fn assert_all_carry(messages: &[(String, Option<String>)], id: &str) {
    let kinds: Vec<&str> = messages.iter().map(|(k, _)| k.as_str()).collect();
    for kind in ["job.run", "job.started", "job.progress", "job.completed"] {
        assert!(kinds.contains(&kind), "no {kind} among {kinds:?}");
    }
    for (kind, correlation) in messages {
        assert_eq!(correlation.as_deref(), Some(id), "{kind} in {messages:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_correlation_id_is_on_every_event_of_its_job_and_returned_to_the_client() {
    // Every progress report is sent, so that progress events are among those checked.
    let mut res = Resources::new("corr").await;
    res.config.progress_every_ms = 0;
    let app = TestApp::start_with(res, common::demo_zone()).await;
    let key = app.res.key("acme").await;
    let mut tap = Tap::new(&app.res).await;

    // The client's own id is kept.
    let given = format!("client-trace-{}", uuid::Uuid::new_v4().simple());
    let resp = app
        .http
        .post(app.url("/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .header("X-Correlation-Id", &given)
        .json(&small_job())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-correlation-id"], given.as_str());
    let job: Value = resp.json().await.unwrap();
    let messages = tap
        .messages_of(job["job_id"].as_str().unwrap(), "job.completed")
        .await;
    assert_all_carry(&messages, &given);

    // Without one, the API makes one up, returns it, and the job's messages carry it.
    let resp = app.post_job(&key, &small_job()).await;
    assert_eq!(resp.status(), 202);
    let made = resp.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(made, given);
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    let job: Value = resp.json().await.unwrap();
    let messages = tap
        .messages_of(job["job_id"].as_str().unwrap(), "job.completed")
        .await;
    assert_all_carry(&messages, &made);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_published_by_the_outbox_relay_keeps_its_correlation_id() {
    let res = Resources::new("corrrelay").await;
    let key = res.key("acme").await;
    let mut tap = Tap::new(&res).await;
    // An API whose broker answers nothing: the command stays in the outbox.
    let state = AppState::new(
        res.pool.clone(),
        res.config.storage().unwrap(),
        Arc::new(Publisher::new(
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "test-dead",
            res.topology(),
        )),
        &res.config.api,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .header("X-Request-Id", "req-relay-1")
        .json(&small_job())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-correlation-id"], "req-relay-1");
    let job: Value = resp.json().await.unwrap();

    let good = Publisher::new(&res.config.amqp_url, "test-relay", res.topology());
    assert_eq!(
        bdjobs::read_model::outbox::relay_once(&res.pool, &good, 0.0)
            .await
            .unwrap(),
        1
    );
    let messages = tap
        .messages_of(job["job_id"].as_str().unwrap(), "job.run")
        .await;
    assert_eq!(
        messages,
        [("job.run".to_owned(), Some("req-relay-1".to_owned()))]
    );
}
