//! The projector's step against the real Postgres: idempotent, order-insensitive, and the event
//! log it keeps is enough to rebuild the read model.

mod common;

use bdjobs::adapters::broker::RUN_JOB_KEY;
use bdjobs::adapters::db;
use bdjobs::adapters::storage;
use bdjobs::adapters::Retryable;
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::input::{RawContact, RawInput};
use bdjobs::domain::job::{fold, JobStatus, JobView};
use bdjobs::domain::messages::{
    run_job_command, Created, Event, EventRecord, JobRef, Position, RawEnvelope, RunJob,
};
use bdjobs::domain::plan::{plan, Request};
use bdjobs::read_model::{apply, Applied};
use bdjobs::worker::pipeline::Sources;
use bdjobs::worker::sources::StaticDirectory;
use bdjobs::worker::{process_one, VecSink};
use chrono::Utc;
use common::Resources;
use std::sync::Arc;

/// Creates a job the way the API does and runs it through the worker's step; returns its
/// `job.created` event and what the worker emitted.
async fn recorded_job(res: &Resources) -> (JobRef, RawEnvelope, Vec<RawEnvelope>) {
    let job = JobRef {
        job_id: JobId::new(),
        tenant: TenantId::parse("acme").unwrap(),
    };
    let run = RunJob {
        plan: plan(Request::Preset("verify_existing_emails")).unwrap(),
        input: RawInput {
            companies: vec![],
            contacts: [
                "ada@lumen.example",
                "info@lumen.example",
                "x@quietharbor.test",
            ]
            .iter()
            .map(|e| RawContact {
                email: Some((*e).into()),
                ..Default::default()
            })
            .collect(),
        }
        .validate()
        .unwrap(),
        icp_config: Default::default(),
        execution_options: Default::default(),
    };
    let created = Event::Created(Created {
        webhook_url: None,
        webhook_stages: false,
        preset: run.plan.preset,
        requested_capabilities: run.plan.capabilities.clone(),
        warnings: vec![],
        chat_id: None,
        companies: 0,
        contacts: 3,
    })
    .into_envelope(&job, Position::ORIGIN, Utc::now());
    let view = JobView::created(&EventRecord::from_raw(&created).unwrap()).unwrap();
    let cmd = run_job_command(&job, &run, Utc::now());
    let new_job = db::jobs::NewJob {
        created: &created,
        view: &view,
        command: &cmd,
        routing_key: RUN_JOB_KEY,
        correlation_id: None,
    };
    db::jobs::create_job(&res.pool, &new_job).await.unwrap();
    let dns = bdjobs::adapters::dns_stub::StubDns::start(
        "127.0.0.1:0".parse().unwrap(),
        common::demo_zone(),
    )
    .await
    .unwrap();
    let sources = Sources::new(
        Arc::new(StaticDirectory::default()),
        Arc::new(
            bdjobs::adapters::dns::HickoryMailResolver::new(
                Some(dns.addr()),
                std::time::Duration::from_secs(1),
            )
            .unwrap(),
        ),
    );
    let sink = VecSink::default();
    process_one(&cmd, 1, &sources, &sink, "t").await.unwrap();
    let events = sink.0.lock().await.clone();
    (job, created, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_events_twice_and_out_of_order_gives_the_same_read_model() {
    let res = Resources::new("proj").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let (job, created, events) = recorded_job(&res).await;

    // Reverse order, each twice: the worst a broker can do.
    let mut deliveries: Vec<&RawEnvelope> = events.iter().rev().collect();
    deliveries.extend(events.iter());
    let mut results = Vec::new();
    for e in &deliveries {
        results.push(apply(&res.pool, &store, e).await.unwrap());
    }
    let duplicates = results.iter().filter(|r| **r == Applied::Duplicate).count();
    assert_eq!(duplicates, events.len(), "each second copy is recognised");

    let stored = db::jobs::get_view(&res.pool, &job.tenant, job.job_id)
        .await
        .unwrap()
        .unwrap();
    let records: Vec<EventRecord> = std::iter::once(&created)
        .chain(&events)
        .map(|e| EventRecord::from_raw(e).unwrap())
        .collect();
    let expected = fold(&records).unwrap();
    assert_eq!(stored, expected);
    assert_eq!(stored.status, JobStatus::Completed);
    let summary = &stored.result.as_ref().unwrap().summary;
    assert_eq!(
        (summary.delivered_contacts, summary.verified_emails),
        (2, 1)
    );

    // The log holds each event exactly once, and it rebuilds the same view.
    let logged = {
        let client = res.pool.get().await.unwrap();
        db::jobs::events_of_job(&client, job.job_id).await.unwrap()
    };
    assert_eq!(logged.len(), events.len() + 1);
    let rebuilt = fold(
        &logged
            .iter()
            .map(|e| EventRecord::from_raw(e).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(rebuilt, expected);

    // The asset was written once per id, and its bytes match the index.
    let asset = db::jobs::get_asset(
        &res.pool,
        &job.tenant,
        job.job_id,
        &bdjobs::domain::ids::AssetId::parse("verified_contacts").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let at = asset.byte_offset as u64;
    let bytes = storage::get_range(&store, &asset.storage_key, at..at + asset.size_bytes as u64)
        .await
        .unwrap();
    assert_eq!(bytes.len() as i64, asset.size_bytes);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(rows.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_job_whose_creation_arrives_last_are_folded_when_it_arrives() {
    let res = Resources::new("orphan").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let (job, created, events) = recorded_job(&res).await;
    // Simulate a job created by another service: no view row yet.
    res.pool
        .get()
        .await
        .unwrap()
        .execute("DELETE FROM jobs WHERE job_id = $1", &[&job.job_id.0])
        .await
        .unwrap();
    res.pool
        .get()
        .await
        .unwrap()
        .execute("DELETE FROM events WHERE job_id = $1", &[&job.job_id.0])
        .await
        .unwrap();
    for e in &events {
        assert_eq!(apply(&res.pool, &store, e).await.unwrap(), Applied::Orphan);
    }
    assert_eq!(
        apply(&res.pool, &store, &created).await.unwrap(),
        Applied::Changed
    );
    let view = db::jobs::get_view(&res.pool, &job.tenant, job.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert!(db::jobs::get_asset(
        &res.pool,
        &job.tenant,
        job.job_id,
        &bdjobs::domain::ids::AssetId::parse("verified_contacts_csv").unwrap()
    )
    .await
    .unwrap()
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_is_refused_without_touching_the_model() {
    let res = Resources::new("badevt").await;
    let store = storage::operator("memory://").unwrap();
    let (_, _, events) = recorded_job(&res).await;
    let mut bad = events[0].clone();
    bad.kind = "job.exploded".into();
    let err = apply(&res.pool, &store, &bad).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("job.exploded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_with_repeats_inside_them_give_the_same_read_model() {
    let res = Resources::new("batch").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(recorded_job(&res).await);
    }
    // Two "projectors" each take every event of every job, in opposite orders, with repeats.
    let all: Vec<RawEnvelope> = jobs.iter().flat_map(|(_, _, e)| e.clone()).collect();
    let mut forward = all.clone();
    forward.extend(all.iter().take(4).cloned());
    let backward: Vec<RawEnvelope> = all.iter().rev().cloned().collect();
    let (a, b) = tokio::join!(
        bdjobs::read_model::apply_batch(&res.pool, &store, &forward),
        bdjobs::read_model::apply_batch(&res.pool, &store, &backward),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let fresh = a
        .iter()
        .chain(&b)
        .filter(|r| **r != Applied::Duplicate)
        .count();
    assert_eq!(
        fresh,
        all.len(),
        "each event applied exactly once across both batches"
    );
    for (job, created, events) in &jobs {
        let stored = db::jobs::get_view(&res.pool, &job.tenant, job.job_id)
            .await
            .unwrap()
            .unwrap();
        let records: Vec<EventRecord> = std::iter::once(created)
            .chain(events)
            .map(|e| EventRecord::from_raw(e).unwrap())
            .collect();
        assert_eq!(stored, fold(&records).unwrap());
        assert_eq!(stored.status, JobStatus::Completed);
    }
}

/// Publishes an event to the projector's exchange with a confirm.
async fn publish_event(
    publisher: &bdjobs::adapters::broker::Publisher,
    res: &Resources,
    raw: &RawEnvelope,
) {
    let id = raw.message_id.to_string();
    publisher
        .publish(bdjobs::adapters::broker::Outgoing {
            exchange: &res.topology().events_exchange(),
            routing_key: &raw.kind,
            message_id: &id,
            kind: &raw.kind,
            body: &serde_json::to_vec(raw).unwrap(),
            correlation_id: None,
        })
        .await
        .unwrap();
}

/// The message ids of the events logged so far.
async fn logged(res: &Resources) -> std::collections::HashSet<uuid::Uuid> {
    res.pool
        .get()
        .await
        .unwrap()
        .query("SELECT message_id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How many consumers the queue has (0 while it does not exist yet).
async fn consumers(conn: &lapin::Connection, queue: &str) -> u32 {
    // A passive declare of a queue not yet declared closes its channel: a fresh one each time.
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map(|q| q.consumer_count())
        .unwrap_or(0)
}

/// The projector acks many deliveries in one frame (`multiple`), and batches commit out of
/// order. A batch stuck behind a row lock must keep its delivery unacknowledged however many
/// later batches commit meanwhile: when the projector then dies, the broker hands the event
/// to the next consumer. Acking each batch's last delivery with `multiple` (the tempting
/// shortcut) would cover the stuck one and lose it. And the later batches must not wait for it
/// either: more of them than the prefetch window all commit, which they could not if their
/// acks were held back behind the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_has_not_committed_is_never_covered_by_a_later_batchs_ack() {
    use lapin::options::BasicGetOptions;
    use std::time::{Duration, Instant};

    let res = Resources::new("acks").await;
    // Job A exists, and this test holds its row locked, as a slow transaction would.
    let job_a = JobRef {
        job_id: JobId::new(),
        tenant: TenantId::parse("acme").unwrap(),
    };
    let created = Event::Created(Created {
        webhook_url: None,
        webhook_stages: false,
        preset: None,
        requested_capabilities: vec![bdjobs::domain::plan::Capability::EmailVerify],
        warnings: vec![],
        chat_id: None,
        companies: 0,
        contacts: 1,
    })
    .into_envelope(&job_a, Position::ORIGIN, Utc::now());
    let store = storage::operator("memory://").unwrap();
    apply(&res.pool, &store, &created).await.unwrap();
    let mut locker = res.pool.get().await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE",
        &[&job_a.job_id.0],
    )
    .await
    .unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = tokio::spawn(bdjobs::projector::run(
        bdjobs::projector::ProjectorConfig {
            amqp_url: res.config.amqp_url.clone(),
            topology: res.topology(),
            prefetch: 16,
            name: "test-projector".to_owned(),
            stuck_after: Duration::from_secs(3600),
        },
        res.pool.clone(),
        store.clone(),
        shutdown.clone(),
    ));
    let conn = lapin::Connection::connect(&res.config.amqp_url, Default::default())
        .await
        .unwrap();
    let queue = res.topology().projector_queue();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumers(&conn, &queue).await == 0 {
        assert!(Instant::now() < deadline, "the projector never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = conn.create_channel().await.unwrap();

    // A's event: its batch waits for the lock.
    let publisher = bdjobs::adapters::broker::Publisher::new(
        &res.config.amqp_url,
        "test-events",
        res.topology(),
    );
    let stuck = Event::Started(bdjobs::domain::messages::Started { worker: "w".into() })
        .into_envelope(&job_a, Position { attempt: 1, seq: 0 }, Utc::now());
    publish_event(&publisher, &res, &stuck).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Later events of other jobs: their batches commit while A's waits.
    let mut later = Vec::new();
    for _ in 0..40 {
        let other = JobRef {
            job_id: JobId::new(),
            tenant: TenantId::parse("acme").unwrap(),
        };
        let raw = Event::Started(bdjobs::domain::messages::Started { worker: "w".into() })
            .into_envelope(&other, Position { attempt: 1, seq: 0 }, Utc::now());
        publish_event(&publisher, &res, &raw).await;
        later.push(raw.message_id.0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = logged(&res).await;
        if later.iter().all(|id| seen.contains(id)) {
            assert!(!seen.contains(&stuck.message_id.0), "A's batch committed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the later batches never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for any ack the commits made to reach the broker, then the projector dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    projector.abort();
    let _ = projector.await;

    // The broker still holds A's event: it was never acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = Vec::new();
    'found: loop {
        while let Some(m) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let raw: RawEnvelope = serde_json::from_slice(&m.delivery.data).unwrap();
            back.push(raw.message_id.0);
            if raw.message_id == stuck.message_id {
                break 'found;
            }
        }
        assert!(
            Instant::now() < deadline,
            "A's event was acknowledged before its batch committed (back in the queue: {back:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.rollback().await.unwrap();
    shutdown.cancel();
}
