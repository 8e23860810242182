//! The worker role: consumes `job.run` commands, runs the planned stages, and publishes the
//! job's events with confirms before it acknowledges the command.
//!
//! [`process_one`] is the step (tests drive it with an in-memory sink); [`run`] is the loop that
//! adds consuming, acknowledging, reconnecting and shutdown.

pub mod pipeline;
pub mod sources;

use crate::adapters::broker::{self, BrokerError, Confirm, Outgoing, Publisher, Topology};
use crate::adapters::db::{self, DbError};
use crate::adapters::Retryable;
use crate::domain::ids::JobId;
use crate::domain::messages::{
    Cancelled, Command, Event, Failed, JobRef, Position, Progress, RawEnvelope, Started, Warning,
};
use crate::domain::plan::Capability;
use async_trait::async_trait;
use chrono::Utc;
use deadpool_postgres::Pool;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use pipeline::{Ending, Sources};
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

impl crate::adapters::Retryable for WorkerError {
    fn is_retryable(&self) -> bool {
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

    /// Emits an event of the job with this correlation id; sinks with nowhere to put it ignore it.
    async fn emit_correlated(
        &self,
        event: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let _ = correlation_id;
        self.emit(event).await
    }

    /// Sends an event and returns its confirm still to come, so that a run can keep several in
    /// flight. Sinks that deliver synchronously are done at once.
    async fn emit_deferred(
        &self,
        event: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        self.emit_correlated(event, correlation_id).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

/// Publishes events to `NS.events` with the event type as routing key.
pub struct BrokerSink(pub Arc<Publisher>);

#[async_trait]
impl EventSink for BrokerSink {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError> {
        self.emit_correlated(event, None).await
    }

    async fn emit_correlated(
        &self,
        event: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.emit_deferred(event, correlation_id).await?.await
    }

    async fn emit_deferred(
        &self,
        event: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        let body = serde_json::to_vec(&event).expect("envelopes serialise");
        let exchange = self.0.topology().events_exchange();
        self.0
            .publish_deferred(Outgoing {
                exchange: &exchange,
                routing_key: &event.kind,
                message_id: &event.message_id.to_string(),
                kind: &event.kind,
                body: &body,
                correlation_id,
            })
            .await
    }
}

/// A sink that tags every event with the correlation id of the command being run.
pub struct Correlated<'a> {
    pub sink: &'a dyn EventSink,
    pub correlation_id: Option<String>,
}

#[async_trait]
impl EventSink for Correlated<'_> {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError> {
        self.sink
            .emit_correlated(event, self.correlation_id.as_deref())
            .await
    }

    async fn emit_deferred(
        &self,
        event: RawEnvelope,
        _: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        self.sink
            .emit_deferred(event, self.correlation_id.as_deref())
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
///
/// Progress is sampled: at most one `job.progress` per `progress_every`, the latest report
/// winning, and none at all for a run that ends sooner. A short job then costs the broker and the
/// projector three messages (its command, `job.started`, its outcome) instead of one per stage
/// and item, and nobody could have watched its percentages anyway. Warnings and outcomes are
/// never held back.
pub struct Reporter<'a> {
    job: JobRef,
    attempt: u32,
    seq: u64,
    sink: &'a dyn EventSink,
    /// Confirms of events sent but not yet settled.
    pending: Vec<Confirm>,
    stage: Capability,
    index: usize,
    stages: usize,
    progress_every: std::time::Duration,
    /// When the run's last progress (or its start) was sent.
    progress_sent: std::time::Instant,
}

impl<'a> Reporter<'a> {
    /// A reporter that sends every progress report (see [`Reporter::sampling`]).
    pub fn new(job: JobRef, attempt: u32, sink: &'a dyn EventSink) -> Self {
        Self {
            job,
            attempt,
            seq: 0,
            sink,
            pending: Vec::new(),
            stage: Capability::DeliverableFinalize,
            index: 0,
            stages: 1,
            progress_every: std::time::Duration::ZERO,
            progress_sent: std::time::Instant::now(),
        }
    }

    /// Sends a progress report only when `every` has passed since the last one (or since the
    /// run started); the reports in between are dropped, the next one sent carrying the latest.
    pub fn sampling(mut self, every: std::time::Duration) -> Self {
        self.progress_every = every;
        self
    }

    pub async fn emit(&mut self, event: Event) -> Result<(), BrokerError> {
        self.seq += 1;
        let at = Position {
            attempt: self.attempt,
            seq: self.seq,
        };
        let confirm = self
            .sink
            .emit_deferred(event.into_envelope(&self.job, at, Utc::now()), None)
            .await?;
        self.pending.push(confirm);
        Ok(())
    }

    /// Waits for the broker to confirm every event sent so far. A run's command is acknowledged
    /// only after this succeeds for its terminal event.
    pub async fn settle(&mut self) -> Result<(), BrokerError> {
        futures::future::try_join_all(self.pending.drain(..)).await?;
        Ok(())
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
        let now = std::time::Instant::now();
        if now.duration_since(self.progress_sent) < self.progress_every {
            return Ok(());
        }
        self.progress_sent = now;
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
    /// Stopped at a stage boundary on a client's request, keeping partial results.
    Cancelled,
    /// The job was already finished (a duplicate or a late redelivery): nothing was run.
    Skipped,
}

/// The step: runs one decoded command to its terminal event.
///
/// A retryable error (a dependency down) is returned so that the caller requeues the command,
/// unless this is the last attempt the queue allows, in which case the job fails with the error
/// as its message. An attempt beyond that limit means earlier ones died without a word (a worker
/// killed mid-job, again and again): the job fails instead of taking another worker down.
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
    let mut r = Reporter::new(job, attempt, sink).sampling(sources.progress_every);
    if attempt as i64 > broker::DELIVERY_LIMIT {
        r.emit(Event::Failed(Failed {
            error: format!(
                "gave up after {} attempts that ended without a result",
                attempt - 1
            ),
            stage: None,
        }))
        .await?;
        r.settle().await?;
        return Ok(Outcome::Failed);
    }
    r.emit(Event::Started(Started {
        worker: worker_name.to_owned(),
    }))
    .await?;
    let run_result = tokio::time::timeout(
        sources.job_timeout,
        pipeline::run_stages(&run, command.job_id, sources, &mut r),
    )
    .await;
    let failure = match run_result {
        Ok(Ok(Ending::Completed(done))) => {
            r.emit(Event::Completed(done)).await?;
            r.settle().await?;
            return Ok(Outcome::Completed);
        }
        Ok(Ok(Ending::Cancelled(partial))) => {
            r.emit(Event::Cancelled(Cancelled {
                reason: "cancelled by the client".to_owned(),
                partial: Some(partial),
            }))
            .await?;
            r.settle().await?;
            return Ok(Outcome::Cancelled);
        }
        Ok(Err(e)) if e.is_retryable() && (attempt as i64) < broker::DELIVERY_LIMIT => {
            return Err(e)
        }
        Ok(Err(e)) => failure_message(r.stage, &e),
        Err(_) => format!(
            "the job did not finish within {} s (stopped during {})",
            sources.job_timeout.as_secs(),
            r.stage
        ),
    };
    let stage = Some(r.stage);
    r.emit(Event::Failed(Failed {
        error: failure,
        stage,
    }))
    .await?;
    r.settle().await?;
    Ok(Outcome::Failed)
}

/// The `error_message` of a job that failed on `e`: the tenant reads it, so a dependency's
/// error (a database or pool message, with host names, SQL states, constraint names) stays in the
/// log, under a reference the message names.
fn failure_message(stage: Capability, e: &WorkerError) -> String {
    let what = match e {
        // Our own words about the job (a malformed plan), meant for the client.
        WorkerError::Fatal(why) => return format!("{stage} failed: {why}"),
        WorkerError::Database(_) => "the database",
        WorkerError::Broker(_) => "the message broker",
    };
    let reference = crate::domain::ids::ErrorRef::new();
    tracing::error!(error = %e, %reference, %stage, "job failed on a dependency");
    format!(
        "{stage} failed: {what} could not be used to finish the job (reference {reference}); \
retry the job, and quote the reference if it fails again"
    )
}

/// Settings of the worker loop.
#[derive(Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// Jobs run at once by this process (also the channel's prefetch).
    pub concurrency: u16,
    pub name: String,
    /// On shutdown, how long in-flight jobs may take to finish before the process leaves them
    /// to the broker (which redelivers them to another worker).
    pub shutdown_grace: Duration,
}

/// The loop: consume, run, publish, ack; reconnect with backoff when the broker goes away; on
/// shutdown stop taking work and let in-flight jobs finish within the grace period.
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
    broker::reconnecting("worker", &shutdown, || {
        consume(&config, &sources, &sink, &pool, &shutdown)
    })
    .await;
    tracing::info!("worker stopped");
    Ok(())
}

/// One connection's worth of consuming. In-flight jobs belong to the connection (their acks go
/// through its channel), so it stays open until they finish or the grace period ends.
async fn consume(
    config: &WorkerConfig,
    sources: &Sources,
    sink: &Arc<dyn EventSink>,
    pool: &Pool,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let (conn, channel, mut consumer) = broker::start_consuming(
        &config.amqp_url,
        &config.name,
        &config.topology,
        &config.topology.jobs_queue(),
        config.concurrency,
    )
    .await?;
    let tasks = tokio_util::task::TaskTracker::new();
    let ended = loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match broker::delivery(delivery) {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        let sources = sources.clone();
        let sink = sink.clone();
        let pool = pool.clone();
        let name = config.name.clone();
        tasks.spawn(async move {
            handle(delivery, &sources, sink.as_ref(), &pool, &name).await;
        });
    };
    if ended.is_ok() {
        // Stop deliveries first, so nothing new starts while the running jobs finish.
        let _ = channel
            .basic_cancel(
                config.name.clone().into(),
                lapin::options::BasicCancelOptions::default(),
            )
            .await;
    }
    tasks.close();
    if tokio::time::timeout(config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.shutdown_grace,
            "jobs still running at the end of the grace period; the broker will redeliver them"
        );
    }
    let _ = conn.close(200, "bdjobs worker stopping".into()).await;
    ended
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
    let correlation_id = broker::correlation_id_of(&delivery.properties);
    let span = tracing::info_span!(
        "job",
        job_id = %command.job_id,
        tenant = %command.tenant,
        attempt,
        correlation_id = correlation_id.as_deref()
    );
    let sink = Correlated {
        sink,
        correlation_id,
    };
    let sink = &sink;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRef {
        JobRef::sample()
    }

    async fn kinds(sink: &VecSink) -> Vec<String> {
        sink.0.lock().await.iter().map(|e| e.kind.clone()).collect()
    }

    #[tokio::test]
    async fn a_run_shorter_than_the_sampling_interval_sends_no_progress_but_every_warning() {
        let sink = VecSink::default();
        let mut r = Reporter::new(job(), 1, &sink).sampling(Duration::from_secs(3600));
        r.stage("Verifying emails...".into()).await.unwrap();
        r.item(1, 2, "Verifying").await.unwrap();
        r.warn("one address is malformed".into()).await.unwrap();
        r.item(2, 2, "Verifying").await.unwrap();
        r.settle().await.unwrap();
        assert_eq!(kinds(&sink).await, ["job.warning"]);
    }

    #[tokio::test]
    async fn without_sampling_every_progress_report_is_sent_in_order() {
        let sink = VecSink::default();
        let mut r = Reporter::new(job(), 1, &sink);
        r.stage("Verifying emails...".into()).await.unwrap();
        r.item(1, 1, "Verifying").await.unwrap();
        let events = sink.0.lock().await.clone();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2],
            "positions are consecutive"
        );
    }

    #[tokio::test]
    async fn a_report_after_the_interval_is_sent_with_the_latest_figures() {
        let sink = VecSink::default();
        let mut r = Reporter::new(job(), 1, &sink).sampling(Duration::from_millis(20));
        r.item(1, 4, "Verifying").await.unwrap();
        r.item(2, 4, "Verifying").await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        r.item(3, 4, "Verifying").await.unwrap();
        let events = sink.0.lock().await.clone();
        assert_eq!(events.len(), 1, "only the report after the interval");
        assert_eq!(events[0].payload["done"], 3);
    }
}
