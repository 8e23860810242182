//! The worker's step, driven directly: no broker, no database. The directory is in memory, DNS
//! is the stub nameserver on 127.0.0.1, SMTP is the stub responder on 127.0.0.1.

mod common;

use async_trait::async_trait;
use bdjobs::adapters::broker::DELIVERY_LIMIT;
use bdjobs::adapters::db::DbError;
use bdjobs::adapters::dns::HickoryMailResolver;
use bdjobs::adapters::dns_stub::{StubDns, StubZone};
use bdjobs::adapters::smtp::TcpSmtpProber;
use bdjobs::adapters::smtp_stub::{SmtpPolicy, StubSmtp};
use bdjobs::adapters::Retryable;
use bdjobs::cli::import::{parse, Record};
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::input::{RawContact, RawInput};
use bdjobs::domain::job::{fold, JobStatus, JobView};
use bdjobs::domain::messages::{run_job_command, Event, EventRecord, JobRef, RunJob};
use bdjobs::domain::plan::{plan, Capability, Plan, Request};
use bdjobs::domain::stages::{DirectoryCompany, DirectoryPerson, ExecutionOptions, IcpConfig};
use bdjobs::worker::pipeline::Sources;
use bdjobs::worker::sources::{Directory, StaticDirectory};
use bdjobs::worker::verify::VerifySettings;
use bdjobs::worker::{process_one, Outcome, VecSink};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

fn sample_directory() -> StaticDirectory {
    let path = std::path::Path::new("examples/directory.jsonl");
    let data = include_str!("../examples/directory.jsonl");
    let mut dir = StaticDirectory::default();
    for (_, rec) in parse(path, data).unwrap() {
        match rec.unwrap() {
            Record::Company(c) => dir.companies.push(c),
            Record::Person(p) => dir.people.push(p),
        }
    }
    dir
}

fn job() -> JobRef {
    JobRef {
        job_id: JobId::new(),
        tenant: TenantId::parse("acme").unwrap(),
    }
}

fn demo_run() -> RunJob {
    let body = common::demo_job();
    let input: RawInput = serde_json::from_value(body["input_assets"].clone()).unwrap();
    RunJob {
        plan: plan(Request::Preset("full_pipeline")).unwrap(),
        input: input.validate().unwrap(),
        icp_config: serde_json::from_value::<IcpConfig>(body["icp_config"].clone()).unwrap(),
        execution_options: serde_json::from_value::<ExecutionOptions>(
            body["execution_options"].clone(),
        )
        .unwrap(),
    }
}

async fn sources(dns: &StubDns, directory: Arc<dyn Directory>, smtp_port: Option<u16>) -> Sources {
    let resolver = HickoryMailResolver::new(Some(dns.addr()), Duration::from_millis(800)).unwrap();
    let sources = Sources::new(directory, Arc::new(resolver));
    match smtp_port {
        Some(port) => sources.with_probing(
            Arc::new(TcpSmtpProber::new(
                port,
                "bdjobs.test",
                "probe@bdjobs.test",
                Duration::from_secs(3),
            )),
            // The stubs are on loopback.
            VerifySettings {
                allow_private: true,
                ..VerifySettings::default()
            },
        ),
        None => sources,
    }
}

/// Folds what a run emitted, with a `job.created` in front, into the read model.
fn view_of(job: &JobRef, plan: &Plan, events: &[bdjobs::domain::messages::RawEnvelope]) -> JobView {
    let created = Event::Created(bdjobs::domain::messages::Created {
        webhook_url: None,
        webhook_stages: false,
        preset: plan.preset,
        requested_capabilities: plan.capabilities.clone(),
        warnings: vec![],
        chat_id: None,
        companies: 0,
        contacts: 0,
    })
    .into_envelope(job, bdjobs::domain::messages::Position::ORIGIN, Utc::now());
    let records: Vec<EventRecord> = std::iter::once(&created)
        .chain(events)
        .map(|e| EventRecord::from_raw(e).unwrap())
        .collect();
    fold(&records).unwrap()
}

fn completed(
    events: &[bdjobs::domain::messages::RawEnvelope],
) -> bdjobs::domain::messages::Completed {
    let last = EventRecord::from_raw(events.last().unwrap()).unwrap();
    match last.event {
        Event::Completed(c) => c,
        other => panic!("last event is {other:?}"),
    }
}

#[tokio::test]
async fn the_demo_job_completes_with_18_contacts_of_which_14_are_verified() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), common::demo_zone())
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(sample_directory()), None).await;
    let (job, run) = (job(), demo_run());
    let sink = VecSink::default();
    let cmd = run_job_command(&job, &run, Utc::now());
    let outcome = process_one(&cmd, 1, &src, &sink, "test").await.unwrap();
    assert_eq!(outcome, Outcome::Completed);
    let events = sink.0.lock().await.clone();
    assert_eq!(events[0].kind, "job.started");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "numbered in order"
    );
    let done = completed(&events);
    assert_eq!(done.summary.delivered_contacts, 18);
    assert_eq!(done.summary.verified_emails, 14);
    assert_eq!(done.summary.companies_processed, 2);
    let view = view_of(&job, &run.plan, &events);
    assert_eq!(view.status, JobStatus::Completed);
    assert!(view
        .warnings
        .iter()
        .any(|w| w.contains("Oldmill") || w.contains("oldmill.example")));
    // The MX cache asks each domain once per job, however many contacts share it.
    let mx_domains = 5; // brightwave, lumen, mailinator, lumen-labs, quietharbor
    assert!(dns.queries() <= mx_domains * 3, "{} queries", dns.queries());
}

fn verify_only(emails: &[&str]) -> RunJob {
    let contacts = emails
        .iter()
        .map(|e| RawContact {
            email: Some((*e).to_owned()),
            ..Default::default()
        })
        .collect();
    RunJob {
        plan: plan(Request::Preset("verify_existing_emails")).unwrap(),
        input: RawInput {
            companies: vec![],
            contacts,
        }
        .validate()
        .unwrap(),
        icp_config: IcpConfig::default(),
        execution_options: ExecutionOptions::default(),
    }
}

#[tokio::test]
async fn the_smtp_probe_rejects_unknown_mailboxes_and_flags_catch_all_servers() {
    let zone = StubZone::new()
        .mx("strict.test", 10, "mx.strict.test")
        .a("mx.strict.test", "127.0.0.1".parse().unwrap());
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
        .await
        .unwrap();
    let smtp = StubSmtp::start(
        "127.0.0.1:0".parse().unwrap(),
        SmtpPolicy::accept_only(["ada@strict.test"]),
    )
    .await
    .unwrap();
    let src = sources(
        &dns,
        Arc::new(StaticDirectory::default()),
        Some(smtp.addr().port()),
    )
    .await;
    let run = verify_only(&["ada@strict.test", "ghost@strict.test"]);
    let sink = VecSink::default();
    let cmd = run_job_command(&job(), &run, Utc::now());
    process_one(&cmd, 1, &src, &sink, "test").await.unwrap();
    let done = completed(&sink.0.lock().await);
    assert_eq!(done.summary.delivered_contacts, 1);
    assert_eq!(done.summary.verified_emails, 1);
    assert_eq!(done.summary.invalid_emails, 1);
    assert!(
        !smtp.commands().iter().any(|c| c.starts_with("DATA")),
        "never sends mail"
    );

    let catch_all = StubSmtp::start("127.0.0.1:0".parse().unwrap(), SmtpPolicy::AcceptAll)
        .await
        .unwrap();
    let src = sources(
        &dns,
        Arc::new(StaticDirectory::default()),
        Some(catch_all.addr().port()),
    )
    .await;
    let sink = VecSink::default();
    let cmd = run_job_command(&job(), &verify_only(&["ghost@strict.test"]), Utc::now());
    process_one(&cmd, 1, &src, &sink, "test").await.unwrap();
    let done = completed(&sink.0.lock().await);
    assert_eq!(
        done.summary.risky_emails, 1,
        "a catch-all acceptance proves nothing"
    );
    assert_eq!(
        done.contacts[0].email_checks.as_ref().unwrap().smtp,
        bdjobs::domain::email::Check::Warn
    );
}

#[tokio::test]
async fn a_plan_without_finalisation_fails_the_job_with_a_clear_message() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), StubZone::new())
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(StaticDirectory::default()), None).await;
    let mut run = verify_only(&["a@b.example"]);
    run.plan.capabilities = vec![Capability::EmailVerify];
    let (job, sink) = (job(), VecSink::default());
    let cmd = run_job_command(&job, &run, Utc::now());
    assert_eq!(
        process_one(&cmd, 1, &src, &sink, "t").await.unwrap(),
        Outcome::Failed
    );
    let view = view_of(&job, &run.plan, &sink.0.lock().await);
    assert_eq!(view.status, JobStatus::Failed);
    assert!(view.error_message.unwrap().contains("deliverable_finalize"));
}

/// A directory whose database is down.
struct DownDirectory;

#[async_trait]
impl Directory for DownDirectory {
    async fn companies(&self, _: &[String]) -> Result<Vec<DirectoryCompany>, DbError> {
        Err(DbError::Pool(deadpool_postgres::PoolError::Closed))
    }
    async fn people(&self, _: &[String]) -> Result<Vec<DirectoryPerson>, DbError> {
        Err(DbError::Pool(deadpool_postgres::PoolError::Closed))
    }
}

#[tokio::test]
async fn a_dependency_outage_is_retried_until_the_last_attempt_then_fails_the_job() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), StubZone::new())
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(DownDirectory), None).await;
    let run = demo_run();
    let job = job();
    let cmd = run_job_command(&job, &run, Utc::now());
    let err = process_one(&cmd, 1, &src, &VecSink::default(), "t")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let sink = VecSink::default();
    let last = DELIVERY_LIMIT as u32;
    assert_eq!(
        process_one(&cmd, last, &src, &sink, "t").await.unwrap(),
        Outcome::Failed
    );
    let view = view_of(&job, &run.plan, &sink.0.lock().await);
    assert_eq!(view.status, JobStatus::Failed);
    let error = view.error_message.unwrap();
    assert!(error.starts_with("qualification failed"), "{error}");
    // The pool's own words stay in the log: the tenant gets a reason and a reference.
    assert!(
        !error.contains("pool") && !error.contains("closed"),
        "{error}"
    );
    assert!(error.contains("(reference E-"), "{error}");
}

#[tokio::test]
async fn a_job_that_makes_no_progress_for_its_timeout_fails_and_names_the_stage() {
    let zone = StubZone::new().slow("hang.test");
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(StaticDirectory::default()), None)
        .await
        .with_job_timeout(Duration::from_millis(300));
    let (job, sink) = (job(), VecSink::default());
    let run = verify_only(&["a@hang.test"]);
    let cmd = run_job_command(&job, &run, Utc::now());
    assert_eq!(
        process_one(&cmd, 1, &src, &sink, "t").await.unwrap(),
        Outcome::Failed
    );
    let view = view_of(&job, &run.plan, &sink.0.lock().await);
    let error = view.error_message.unwrap();
    assert!(error.contains("made no progress for 300ms"), "{error}");
    assert!(error.contains("email_verify"), "{error}");
}

#[tokio::test]
async fn a_command_redelivered_past_the_limit_fails_without_running() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), StubZone::new())
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(StaticDirectory::default()), None).await;
    let (job, sink) = (job(), VecSink::default());
    let run = verify_only(&["a@b.example"]);
    let cmd = run_job_command(&job, &run, Utc::now());
    let attempt = DELIVERY_LIMIT as u32 + 1;
    assert_eq!(
        process_one(&cmd, attempt, &src, &sink, "t").await.unwrap(),
        Outcome::Failed
    );
    let events = sink.0.lock().await;
    assert_eq!(events.len(), 1, "nothing ran");
    let view = view_of(&job, &run.plan, &events);
    assert!(view
        .error_message
        .unwrap()
        .contains("gave up after 5 attempts"));
    assert_eq!(dns.queries(), 0);
}

/// Cancels as soon as it is first asked.
struct CancelNow;

#[async_trait]
impl bdjobs::worker::sources::CancelSignal for CancelNow {
    async fn requested(&self, _: JobId) -> bool {
        true
    }
}

#[tokio::test]
async fn a_cancelled_job_stops_at_a_stage_boundary_and_keeps_partial_results() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), common::demo_zone())
        .await
        .unwrap();
    let src = sources(&dns, Arc::new(sample_directory()), None)
        .await
        .with_cancel(Arc::new(CancelNow));
    let (job, sink) = (job(), VecSink::default());
    let run = demo_run();
    let cmd = run_job_command(&job, &run, Utc::now());
    assert_eq!(
        process_one(&cmd, 1, &src, &sink, "t").await.unwrap(),
        Outcome::Cancelled
    );
    let view = view_of(&job, &run.plan, &sink.0.lock().await);
    assert_eq!(view.status, JobStatus::Cancelled);
    let result = view.result.expect("partial result");
    assert!(result.assets.iter().all(|a| a.availability == "partial"));
    // Stopped before the first stage: only the client's own contacts, unverified.
    assert_eq!(result.summary.verified_emails, 0);
    assert_eq!(dns.queries(), 0);
}

#[tokio::test]
async fn a_job_run_in_chunks_delivers_what_it_delivers_in_one_piece() {
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), common::demo_zone())
        .await
        .unwrap();
    let whole = sources(&dns, Arc::new(sample_directory()), None).await;
    let log = Arc::new(VecSink::default());
    // One record a chunk: every domain of the demo job runs on its own.
    let chunked = whole.clone().with_chunks(1, log.clone());
    let (job, run) = (job(), demo_run());
    let cmd = run_job_command(&job, &run, Utc::now());

    let one_piece = VecSink::default();
    assert_eq!(
        process_one(&cmd, 1, &whole, &one_piece, "t").await.unwrap(),
        Outcome::Completed
    );
    let expected = completed(&one_piece.0.lock().await);

    assert_eq!(
        process_one(&cmd, 1, &chunked, log.as_ref(), "t")
            .await
            .unwrap(),
        Outcome::Split
    );
    let chunks: Vec<_> = log
        .0
        .lock()
        .await
        .iter()
        .filter(|e| e.kind == "job.run_chunk")
        .cloned()
        .collect();
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    // Last chunk first, and the first one delivered twice (a redelivery after a crash).
    let mut outcomes = Vec::new();
    for c in chunks.iter().rev() {
        outcomes.push(
            process_one(c, 1, &chunked, log.as_ref(), "t")
                .await
                .unwrap(),
        );
    }
    let reports = |events: &[bdjobs::domain::messages::RawEnvelope]| {
        events
            .iter()
            .filter(|e| e.kind == "job.chunk_completed")
            .count()
    };
    let before = reports(&log.0.lock().await);
    process_one(&chunks[0], 2, &chunked, log.as_ref(), "t")
        .await
        .unwrap();
    assert_eq!(
        reports(&log.0.lock().await),
        before,
        "a recorded chunk is not run again"
    );
    assert_eq!(outcomes.pop(), Some(Outcome::Completed));
    assert!(
        outcomes.iter().all(|o| *o == Outcome::ChunkDone),
        "{outcomes:?}"
    );

    let events = log.0.lock().await.clone();
    let done: Vec<_> = events
        .iter()
        .filter_map(|e| match EventRecord::from_raw(e).ok()?.event {
            Event::Completed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(done[0], expected, "assembled like the job run whole");
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| e.kind != "job.run_chunk")
        .collect();
    let view = view_of(&job, &run.plan, &events);
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.chunks_done.len(), chunks.len());
}

#[tokio::test]
async fn verification_progress_says_how_many_addresses_are_checked() {
    // 40 ms a reply, so the stage lasts long enough for the 250 ms progress tick.
    let zone = StubZone::new()
        .mx("slow.test", 10, "mx.slow.test")
        .a("mx.slow.test", "127.0.0.1".parse().unwrap());
    let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
        .await
        .unwrap();
    let smtp = bdjobs::adapters::smtp_stub::StubSmtp::start_with(
        "127.0.0.1:0".parse().unwrap(),
        bdjobs::adapters::smtp_stub::HostBehaviour::new(SmtpPolicy::accept_only(["ada@slow.test"]))
            .latency(Duration::from_millis(40)),
    )
    .await
    .unwrap();
    let src = sources(
        &dns,
        Arc::new(StaticDirectory::default()),
        Some(smtp.addr().port()),
    )
    .await
    .with_progress_every(Duration::ZERO);
    let run = verify_only(&["ada@slow.test", "bo@slow.test", "cy@slow.test"]);
    let sink = VecSink::default();
    let cmd = run_job_command(&job(), &run, Utc::now());
    process_one(&cmd, 1, &src, &sink, "test").await.unwrap();
    let events = sink.0.lock().await.clone();
    let messages: Vec<String> = events
        .iter()
        .filter_map(|e| match EventRecord::from_raw(e).unwrap().event {
            Event::Progress(p) => Some(p.message),
            _ => None,
        })
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m == "Verifying emails: 3 of 3 checked"),
        "{messages:?}"
    );
    let done = completed(&events);
    assert_eq!(done.summary.verified_emails, 1);
    assert_eq!(done.summary.invalid_emails, 2);
}
