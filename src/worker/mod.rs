//! The worker role: consumes `job.run` commands, runs the planned stages, and publishes the
//! job's events with confirms before it acknowledges the command.
//!
//! [`process_one`] is the step (tests drive it with an in-memory sink); [`run`] is the loop that
//! adds consuming, acknowledging, reconnecting and shutdown.

pub mod pipeline;
pub mod sources;

use crate::adapters::broker::{self, BrokerError, Outgoing, Publisher, Topology};
use crate::adapters::db::{self, DbError};
use crate::domain::ids::JobId;
use crate::domain::messages::{
    Command, Event, Failed, JobRef, Position, Progress, RawEnvelope, Started, Warning,
};
use crate::domain::plan::Capability;
use async_trait::async_trait;
use chrono::Utc;
use deadpool_postgres::Pool;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use pipeline::Sources;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A dependency is down; another attempt may succeed.
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The job cannot succeed however often it is tried.
    #[error("{0}")]
    Fatal(String),
}

impl WorkerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Database(e) => e.is_retryable(),
            WorkerError::Broker(e) => e.is_retryable(),
            WorkerError::Fatal(_) => false,
        }
    }
}

/// Where a worker's events go: the broker in production, a vector in tests.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError>;
}

/// Publishes events to `NS.events` with the event type as routing key.
pub struct BrokerSink(pub Arc<Publisher>);

#[async_trait]
impl EventSink for BrokerSink {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(&event).expect("envelopes serialise");
        let exchange = self.0.topology().events_exchange();
        self.0
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &event.kind,
                message_id: &event.message_id.to_string(),
                kind: &event.kind,
                body: &body,
            })
            .await
    }
}

/// Collects events in memory.
#[derive(Default)]
pub struct VecSink(pub tokio::sync::Mutex<Vec<RawEnvelope>>);

#[async_trait]
impl EventSink for VecSink {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError> {
        self.0.lock().await.push(event);
        Ok(())
    }
}

/// Numbers a run's events and turns stage progress into percentages.
pub struct Reporter<'a> {
    job: JobRef,
    attempt: u32,
    seq: u64,
    sink: &'a dyn EventSink,
    stage: Capability,
    index: usize,
    stages: usize,
}

impl<'a> Reporter<'a> {
    pub fn new(job: JobRef, attempt: u32, sink: &'a dyn EventSink) -> Self {
        Self {
            job,
            attempt,
            seq: 0,
            sink,
            stage: Capability::DeliverableFinalize,
            index: 0,
            stages: 1,
        }
    }

    pub async fn emit(&mut self, event: Event) -> Result<(), BrokerError> {
        self.seq += 1;
        let at = Position {
            attempt: self.attempt,
            seq: self.seq,
        };
        self.sink
            .emit(event.into_envelope(&self.job, at, Utc::now()))
            .await
    }

    fn enter(&mut self, stage: Capability, index: usize, stages: usize) {
        self.stage = stage;
        self.index = index;
        self.stages = stages.max(1);
    }

    fn percent(&self, fraction: f64) -> u8 {
        let p = (self.index as f64 + fraction.clamp(0.0, 1.0)) * 100.0 / self.stages as f64;
        (p.floor() as u8).min(99)
    }

    async fn progress(
        &mut self,
        fraction: f64,
        message: String,
        items: Option<(usize, usize)>,
    ) -> Result<(), BrokerError> {
        let percent = self.percent(fraction);
        self.emit(Event::Progress(Progress {
            stage: self.stage,
            percent,
            message,
            done: items.map(|(done, _)| done as u64),
            total: items.map(|(_, total)| total as u64),
        }))
        .await
    }

    pub async fn stage(&mut self, message: String) -> Result<(), BrokerError> {
        self.progress(0.0, message, None).await
    }

    /// Reports item `done` of `total`, about ten times per stage rather than once per item.
    pub async fn item(&mut self, done: usize, total: usize, what: &str) -> Result<(), BrokerError> {
        let step = (total / 10).max(1);
        if !done.is_multiple_of(step) && done != total {
            return Ok(());
        }
        self.progress(
            done as f64 / total.max(1) as f64,
            format!("{what} ({done}/{total})..."),
            Some((done, total)),
        )
        .await
    }

    pub async fn warn(&mut self, message: String) -> Result<(), BrokerError> {
        self.emit(Event::Warning(Warning { message })).await
    }
}

/// What became of one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    /// The job was already finished (a duplicate or a late redelivery): nothing was run.
    Skipped,
}

/// The step: runs one decoded command to its terminal event. A retryable error is returned
/// (the caller requeues the command) unless this is the last allowed attempt, in which case the
/// job is failed with the error as its message.
pub async fn process_one(
    command: &RawEnvelope,
    attempt: u32,
    sources: &Sources,
    sink: &dyn EventSink,
    worker_name: &str,
) -> Result<Outcome, WorkerError> {
    let Command::RunJob(run) = command
        .decode_command()
        .map_err(|e| WorkerError::Fatal(e.to_string()))?;
    let job = JobRef {
        job_id: command.job_id,
        tenant: command.tenant.clone(),
    };
    let mut r = Reporter::new(job, attempt, sink);
    r.emit(Event::Started(Started {
        worker: worker_name.to_owned(),
    }))
    .await?;
    match pipeline::run_stages(&run, sources, &mut r).await {
        Ok(done) => {
            r.emit(Event::Completed(done)).await?;
            Ok(Outcome::Completed)
        }
        Err(e) if e.is_retryable() && (attempt as i64) < broker::DELIVERY_LIMIT => Err(e),
        Err(e) => {
            let stage = Some(r.stage);
            r.emit(Event::Failed(Failed {
                error: format!("{} failed: {e}", r.stage),
                stage,
            }))
            .await?;
            Ok(Outcome::Failed)
        }
    }
}

/// Settings of the worker loop.
#[derive(Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// Jobs run at once by this process (also the channel's prefetch).
    pub concurrency: u16,
    pub name: String,
}

/// The loop: consume, run, publish, ack; reconnect with backoff when the broker goes away; on
/// shutdown stop taking work and let in-flight jobs finish.
pub async fn run(
    config: WorkerConfig,
    sources: Sources,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Arc::new(Publisher::new(
        &config.amqp_url,
        &format!("{}-events", config.name),
        config.topology.clone(),
    ));
    let sink: Arc<dyn EventSink> = Arc::new(BrokerSink(publisher));
    let mut failures = 0u32;
    let tasks = tokio_util::task::TaskTracker::new();
    while !shutdown.is_cancelled() {
        let session = consume(&config, &sources, &sink, &pool, &tasks, &shutdown);
        match session.await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let wait = broker::backoff(failures);
                tracing::warn!(error = %e, ?wait, "worker lost the broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tasks.close();
    tasks.wait().await;
    tracing::info!("worker stopped");
    Ok(())
}

async fn consume(
    config: &WorkerConfig,
    sources: &Sources,
    sink: &Arc<dyn EventSink>,
    pool: &Pool,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let conn = broker::connect(&config.amqp_url, &config.name).await?;
    let channel = broker::consumer_channel(&conn, config.concurrency).await?;
    config.topology.declare(&channel).await?;
    let mut consumer = channel
        .basic_consume(
            config.topology.jobs_queue().into(),
            config.name.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.topology.jobs_queue(), "worker consuming");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(BrokerError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                )))
            }
        };
        let sources = sources.clone();
        let sink = sink.clone();
        let pool = pool.clone();
        let name = config.name.clone();
        tasks.spawn(async move {
            handle(delivery, &sources, sink.as_ref(), &pool, &name).await;
        });
    }
}

/// Whether the read model already shows the job terminal. A database that cannot answer means
/// "run it": a duplicate run is harmless, a skipped one is not.
async fn is_finished(pool: &Pool, job: JobId) -> bool {
    matches!(db::jobs::status(pool, job).await, Ok(Some(s)) if s.is_terminal())
}

async fn handle(
    delivery: lapin::message::Delivery,
    sources: &Sources,
    sink: &dyn EventSink,
    pool: &Pool,
    name: &str,
) {
    let attempt = broker::attempt_of(&delivery.properties);
    let command =
        match RawEnvelope::from_slice(&delivery.data).and_then(|c| c.decode_command().map(|_| c)) {
            Ok(c) => c,
            Err(e) => {
                // Malformed: to the dead-letter queue, once, without blocking the queue behind it.
                tracing::error!(error = %e, "dead-lettering a malformed command");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
    let span =
        tracing::info_span!("job", job_id = %command.job_id, tenant = %command.tenant, attempt);
    async {
        if is_finished(pool, command.job_id).await {
            tracing::info!("job already finished; acknowledging the command without running it");
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        }
        let started = std::time::Instant::now();
        match process_one(&command, attempt, sources, sink, name).await {
            Ok(outcome) => {
                tracing::info!(
                    ?outcome,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job processed"
                );
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "job attempt failed; requeueing");
                // A short pause so a dependency that is down is not hammered by redeliveries.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }
    .instrument(span)
    .await
}
