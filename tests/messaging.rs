//! The messaging guarantees against the real broker and database: a command survives a failed
//! publish (outbox), a malformed message is dead-lettered without blocking the queue, and several
//! copies of every role share the work without losing or doubling any of it.

mod common;

use bdjobs::adapters::broker::{Outgoing, Publisher, RUN_JOB_KEY};
use bdjobs::api::{self, AppState};
use bdjobs::app;
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::job::JobStatus;
use common::{Resources, TestApp};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn small_job(i: usize) -> Value {
    json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": [
            {"full_name": format!("Person {i}"), "email": format!("p{i}@lumen.example")},
            {"full_name": "Sales", "email": "sales@brightwave.example"}
        ]}
    })
}

async fn wait_in_db(res: &Resources, tenant: &str, job: JobId) -> JobStatus {
    let tenant = TenantId::parse(tenant).unwrap();
    let started = Instant::now();
    loop {
        let view = bdjobs::adapters::db::jobs::get_view(&res.pool, &tenant, job)
            .await
            .unwrap()
            .unwrap();
        if view.status.is_terminal() {
            return view.status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job {job} stuck at {:?}",
            view.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outbox_rows(res: &Resources) -> i64 {
    res.pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// Confirmed commands leave the outbox in batches, well before the relay's grace period (5 s)
/// would make it publish them again; and stopping the API deletes what it still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_commands_leave_the_outbox_without_waiting_for_the_relay() {
    let res = Resources::new("outbox_gone").await;
    let key = res.key("acme").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let api = {
        let (config, pool, shutdown) = (res.config.clone(), res.pool.clone(), shutdown.clone());
        tokio::spawn(async move { app::run_api(&config, pool, listener, shutdown).await })
    };
    let http = reqwest::Client::new();
    let posts = (0..40).map(|i| {
        http.post(format!("{base}/api/v1/bd/jobs"))
            .bearer_auth(&key)
            .json(&small_job(i))
            .send()
    });
    for resp in futures::future::join_all(posts).await {
        assert_eq!(resp.unwrap().status(), 202);
    }
    let started = Instant::now();
    while outbox_rows(&res).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{} rows still in the outbox",
            outbox_rows(&res).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let resp = http
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .json(&small_job(41))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    shutdown.cancel();
    api.await.unwrap().unwrap();
    assert_eq!(outbox_rows(&res).await, 0, "deleted before the API stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_while_the_broker_is_unreachable_is_published_by_the_outbox_relay() {
    let res = Resources::new("outbox").await;
    let key = res.key("acme").await;
    // An API whose broker address answers nothing.
    let dead_broker = Arc::new(Publisher::new(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "test-dead",
        res.topology(),
    ));
    let state = AppState::new(
        res.pool.clone(),
        bdjobs::adapters::storage::operator(&res.config.assets_location()).unwrap(),
        dead_broker,
        &res.config.api,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });

    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .json(&small_job(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "accepted although the broker is down");
    let created: Value = resp.json().await.unwrap();
    let job = JobId(created["job_id"].as_str().unwrap().parse().unwrap());
    assert_eq!(
        outbox_rows(&res).await,
        1,
        "the command waits in the outbox"
    );

    let good = Publisher::new(&res.config.amqp_url, "test-relay", res.topology());
    assert_eq!(
        bdjobs::read_model::outbox::relay_once(&res.pool, &good, 0.0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(outbox_rows(&res).await, 0);

    let (_dns, config) = common::with_demo_dns(&res).await;
    let shutdown = CancellationToken::new();
    let w = tokio::spawn({
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        async move { app::run_worker(&c, p, s).await }
    });
    let p = tokio::spawn({
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        async move { app::run_projector(&c, p, s).await }
    });
    assert_eq!(wait_in_db(&res, "acme", job).await, JobStatus::Completed);
    shutdown.cancel();
    w.await.unwrap().unwrap();
    p.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_command_is_dead_lettered_and_the_queue_keeps_moving() {
    let app = TestApp::start("poison").await;
    let key = app.res.key("acme").await;
    let publisher = Publisher::new(&app.res.config.amqp_url, "test-poison", app.res.topology());
    let exchange = app.res.topology().commands_exchange();
    for (i, body) in [
        &b"not json at all"[..],
        br#"{"type":"job.run","version":99}"#,
    ]
    .iter()
    .enumerate()
    {
        publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: RUN_JOB_KEY,
                message_id: &format!("poison-{i}"),
                kind: "job.run",
                body,
                correlation_id: None,
            })
            .await
            .unwrap();
    }
    let created: Value = app
        .post_job(&key, &small_job(2))
        .await
        .json()
        .await
        .unwrap();
    let last = app
        .wait(&key, created["job_id"].as_str().unwrap())
        .await
        .pop()
        .unwrap();
    assert_eq!(last["status"], "completed");

    let conn = bdjobs::adapters::broker::connect(&app.res.config.amqp_url, "test-inspect")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let started = Instant::now();
    loop {
        let q = ch
            .queue_declare(
                app.res.topology().dead_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        if q.message_count() == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} dead-lettered",
            q.message_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_every_role_share_the_work_and_every_job_completes_once() {
    let app = TestApp::start("scale").await;
    let key = app.res.key("acme").await;
    // A second API, worker and projector on the same database and namespace.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base2 = format!("http://{}", listener.local_addr().unwrap());
    let shutdown2 = CancellationToken::new();
    let second = tokio::spawn({
        let (mut c, p, s) = (
            app.res.config.clone(),
            app.res.pool.clone(),
            shutdown2.clone(),
        );
        c.dns_nameserver = Some(app.dns.addr());
        async move { app::run_all(&c, p, listener, s).await }
    });

    let jobs = 30;
    let mut ids = Vec::new();
    for i in 0..jobs {
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            base2.clone()
        };
        let resp = app
            .http
            .post(format!("{base}/api/v1/bd/jobs"))
            .bearer_auth(&key)
            .json(&small_job(i))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        ids.push(v["job_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let last = app.wait(&key, id).await.pop().unwrap();
        assert_eq!(last["status"], "completed");
        let result = app
            .get_json(&key, &format!("/api/v1/bd/jobs/{id}/result"))
            .await;
        assert_eq!(result["summary"]["delivered_contacts"], 2, "{result}");
        assert_eq!(result["summary"]["verified_emails"], 1);
    }
    // Exactly one terminal event per job: no job ran to completion twice.
    let client = app.res.pool.get().await.unwrap();
    let doubled: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT job_id FROM events WHERE type = 'job.completed'
             GROUP BY job_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0);
    let completed: i64 = client
        .query_one("SELECT count(*) FROM jobs WHERE status = 'completed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, jobs as i64);
    drop(client);
    shutdown2.cancel();
    second.await.unwrap().unwrap();
    app.stop().await;
}

fn bdjobs_cli(res: &Resources, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args(args)
        .env("DATABASE_URL", &res.config.database_url)
        .env("AMQP_URL", &res.config.amqp_url)
        .env("BDJOBS_NAMESPACE", &res.config.namespace)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "bdjobs {args:?} failed: {stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_is_listed_and_redriven_to_completion() {
    let res = Resources::new("dlq").await;
    let (base, shutdown) = common::api_only(&res).await;
    let key = res.key("acme").await;
    let created = common::create_job(&base, &key, &small_job(3)).await;
    let job_id = created["job_id"].as_str().unwrap().to_owned();

    // Take the command off the jobs queue and reject it, as a consumer does with a bad message.
    let conn = bdjobs::adapters::broker::connect(&res.config.amqp_url, "test-dlq")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let started = Instant::now();
    let msg = loop {
        if let Some(m) = ch
            .basic_get(
                res.topology().jobs_queue().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no command published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    msg.delivery
        .acker
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let (stdout, _) = bdjobs_cli(&res, &["dlq", "list"]);
    let line = stdout
        .lines()
        .find(|l| l.contains(&job_id))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("job.run") && line.contains("rejected"),
        "{line}"
    );
    // Listing leaves it there.
    let (again, _) = bdjobs_cli(&res, &["dlq", "list"]);
    assert!(again.contains(&job_id));

    let (stdout, _) = bdjobs_cli(&res, &["dlq", "redrive"]);
    assert!(stdout.contains("republished 1 message(s)"), "{stdout}");
    let (empty, _) = bdjobs_cli(&res, &["dlq", "list"]);
    assert!(!empty.contains(&job_id));

    let (_dns, config) = common::with_demo_dns(&res).await;
    let worker = tokio::spawn({
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        async move {
            app::run_all(
                &c,
                p,
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                s,
            )
            .await
        }
    });
    let job = JobId(job_id.parse().unwrap());
    assert_eq!(wait_in_db(&res, "acme", job).await, JobStatus::Completed);
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_created_before_the_group_size_existed_are_declared_as_they_are() {
    use lapin::types::{AMQPValue, LongString};
    let res = Resources::new("m_groupsize").await;
    let topology = res.topology();
    let conn = bdjobs::adapters::broker::connect(&res.config.amqp_url, "test-old-queue")
        .await
        .unwrap();
    // The jobs queue as an earlier bdjobs created it: quorum, delivery limit, dead letters,
    // and no x-quorum-initial-group-size.
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(bdjobs::adapters::broker::DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(topology.dead_letter_exchange())),
    );
    ch.queue_declare(
        topology.jobs_queue().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    // Twice: the fallback must not leave a closed channel behind for the next declaration.
    topology
        .declare(&conn)
        .await
        .expect("declared over the old queue");
    topology.declare(&conn).await.expect("declared again");
    // And the topology works: a command published to the old queue arrives.
    let publisher = Publisher::new(&res.config.amqp_url, "test-old-queue", topology.clone());
    publisher
        .publish(Outgoing {
            exchange: &topology.commands_exchange(),
            routing_key: RUN_JOB_KEY,
            message_id: &uuid::Uuid::new_v4().to_string(),
            kind: RUN_JOB_KEY,
            body: b"{}",
            correlation_id: None,
        })
        .await
        .expect("routed to the old queue");
    let depths = publisher.queue_depths().await.unwrap();
    assert_eq!(depths[0], (topology.jobs_queue(), 1));
    let _ = conn.close(200, "done".into()).await;
}
