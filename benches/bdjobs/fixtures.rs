//! Jobs and their event streams made the way the system makes them: `job.created` and the view
//! as the API writes them (`db::jobs::create_job`), the rest from the worker's step
//! (`worker::process_one` into a `VecSink`) with the stub DNS.

use crate::env::TENANT;
use bdjobs::adapters::broker::RUN_JOB_KEY;
use bdjobs::adapters::db;
use bdjobs::adapters::dns::HickoryMailResolver;
use bdjobs::adapters::dns_stub::StubDns;
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::input::{RawContact, RawInput};
use bdjobs::domain::job::JobView;
use bdjobs::domain::messages::{
    run_job_command, Created, Event, EventRecord, JobRef, Position, RawEnvelope, RunJob,
};
use bdjobs::domain::plan::{plan, Request};
use bdjobs::worker::pipeline::Sources;
use bdjobs::worker::sources::StaticDirectory;
use bdjobs::worker::{process_one, VecSink};
use chrono::Utc;
use deadpool_postgres::Pool;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

pub struct Recorded {
    pub job: JobRef,
    pub created: RawEnvelope,
    pub view: JobView,
    pub command: RawEnvelope,
    /// What the worker emitted, in order.
    pub events: Vec<RawEnvelope>,
}

/// The same small job the end-to-end clients post.
fn run_of(i: usize) -> RunJob {
    let body = crate::client::job_body(i);
    let contacts: Vec<RawContact> =
        serde_json::from_value(body["input_assets"]["contacts"].clone()).expect("contacts");
    RunJob {
        plan: plan(Request::Preset("verify_existing_emails")).expect("preset"),
        input: RawInput {
            companies: vec![],
            contacts,
        }
        .validate()
        .expect("valid input"),
        icp_config: Default::default(),
        execution_options: Default::default(),
    }
}

pub fn sources(dns: &StubDns) -> anyhow::Result<Sources> {
    Ok(Sources::new(
        Arc::new(StaticDirectory::default()),
        Arc::new(HickoryMailResolver::new(
            Some(dns.addr()),
            Duration::from_secs(2),
        )?),
    ))
}

/// Job `i`, run through the worker's step; not stored anywhere.
pub async fn record(i: usize, sources: &Sources) -> anyhow::Result<Recorded> {
    let job = JobRef {
        job_id: JobId::new(),
        tenant: TenantId::parse(TENANT)?,
    };
    let run = run_of(i);
    let created = Event::Created(Created {
        webhook_url: None,
        webhook_stages: false,
        preset: run.plan.preset,
        requested_capabilities: run.plan.capabilities.clone(),
        warnings: vec![],
        chat_id: None,
        companies: 0,
        contacts: run.input.contacts.len(),
    })
    .into_envelope(&job, Position::ORIGIN, Utc::now());
    let view = JobView::created(&EventRecord::from_raw(&created)?).expect("a created view");
    let command = run_job_command(&job, &run, Utc::now());
    let sink = VecSink::default();
    process_one(&command, 1, sources, &sink, "bench").await?;
    let events = sink.0.lock().await.clone();
    Ok(Recorded {
        job,
        created,
        view,
        command,
        events,
    })
}

/// `n` jobs created in the database as the API creates them (pending, with their `job.created`),
/// each with the events its run produced, which nobody has applied yet.
pub async fn record_jobs(
    pool: &Pool,
    sources: &Sources,
    n: usize,
) -> anyhow::Result<Vec<Recorded>> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let r = record(i, sources).await?;
            let job = db::jobs::NewJob {
                created: &r.created,
                view: &r.view,
                command: &r.command,
                routing_key: RUN_JOB_KEY,
                correlation_id: None,
            };
            db::jobs::create_job(pool, &job).await?;
            Ok::<_, anyhow::Error>(r)
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
