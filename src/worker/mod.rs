//! The worker role: consumes `job.run` commands, runs the planned stages, and publishes the
//! job's events with confirms before it acknowledges the command. A job above the chunk size is
//! split into `job.run_chunk` commands instead; each chunk is run, recorded, and the last to land
//! assembles the deliverable (docs/messaging.md, "Big jobs in chunks"). Bulky messages travel as
//! claim checks through the asset store.
//!
//! [`process_one`] is the step (tests drive it with an in-memory sink); [`run`] is the loop that
//! adds consuming, acknowledging, reconnecting and shutdown.

pub mod pipeline;
pub mod sources;
pub mod verify;

use crate::adapters::broker::{self, BrokerError, Confirm, Outgoing, Publisher, Topology};
use crate::adapters::claims::{self, ClaimError, Claims};
use crate::adapters::db::{self, DbError};
use crate::adapters::Retryable;
use crate::domain::chunks::{self, ChunkReport};
use crate::domain::ids::{JobId, MessageId};
use crate::domain::messages::{
    run_chunk_command, Cancelled, ChunkCompleted, ChunkOf, Command, Completed, Event, EventRecord,
    Failed, JobRef, Position, Progress, RawEnvelope, RunChunk, RunJob, Started, Warning,
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
    /// Something another role has yet to do (a projector to record a chunk's report); a later
    /// delivery will find it done.
    #[error("{0}")]
    NotYet(String),
}

impl crate::adapters::Retryable for WorkerError {
    fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Database(e) => e.is_retryable(),
            WorkerError::Broker(e) => e.is_retryable(),
            WorkerError::Fatal(_) => false,
            WorkerError::NotYet(_) => true,
        }
    }
}

impl WorkerError {
    /// A claim-checked payload that cannot be read: retryable while storage may come back.
    pub fn from_claim(e: ClaimError) -> Self {
        if e.is_retryable() {
            WorkerError::Broker(BrokerError::ClaimStore(e.to_string()))
        } else {
            WorkerError::Fatal(e.to_string())
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

    /// Sends a command (a chunk of a split job) to the workers; sinks without a broker keep it
    /// with the events.
    async fn command_deferred(
        &self,
        command: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        self.emit_deferred(command, correlation_id).await
    }
}

/// Publishes events to `NS.events` with the event type as routing key, and commands to
/// `NS.commands`; a message too big for the broker travels as a claim check.
pub struct BrokerSink {
    pub publisher: Arc<Publisher>,
    pub claims: Claims,
}

impl BrokerSink {
    async fn publish(
        &self,
        exchange: String,
        message: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        let (message, body) = self
            .claims
            .seal(message)
            .await
            .map_err(|e| BrokerError::ClaimStore(e.to_string()))?;
        self.publisher
            .publish_deferred(Outgoing {
                exchange: &exchange,
                routing_key: &message.kind,
                message_id: &message.message_id.to_string(),
                kind: &message.kind,
                body: &body,
                correlation_id,
            })
            .await
    }
}

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
        let exchange = self.publisher.topology().events_exchange();
        self.publish(exchange, event, correlation_id).await
    }

    async fn command_deferred(
        &self,
        command: RawEnvelope,
        correlation_id: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        let exchange = self.publisher.topology().commands_exchange();
        self.publish(exchange, command, correlation_id).await
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

    async fn command_deferred(
        &self,
        command: RawEnvelope,
        _: Option<&str>,
    ) -> Result<Confirm, BrokerError> {
        self.sink
            .command_deferred(command, self.correlation_id.as_deref())
            .await
    }
}

/// Collects events (and commands) in memory.
#[derive(Default)]
pub struct VecSink(pub tokio::sync::Mutex<Vec<RawEnvelope>>);

#[async_trait]
impl EventSink for VecSink {
    async fn emit(&self, event: RawEnvelope) -> Result<(), BrokerError> {
        self.0.lock().await.push(event);
        Ok(())
    }
}

/// The chunk reports a [`VecSink`] collected stand for the event log: in tests a report is
/// "recorded" as soon as it is emitted.
#[async_trait]
impl sources::ChunkLog for VecSink {
    async fn reports(&self, job: JobId) -> Result<Vec<RawEnvelope>, WorkerError> {
        Ok(self
            .0
            .lock()
            .await
            .iter()
            .filter(|e| e.job_id == job && e.kind == "job.chunk_completed")
            .cloned()
            .collect())
    }
}

/// When a run last showed signs of life: every progress report beats it, sent or sampled away.
/// The no-progress timeout watches it from beside the run.
#[derive(Clone)]
pub struct Heartbeat {
    start: tokio::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Heartbeat {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: Arc::default(),
        }
    }

    fn beat(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Resolves once no beat came for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// Chunk `i`'s events are numbered from `(i + 1) × CHUNK_SEQ_STRIDE`, so that the reports of
/// chunks running at once on several workers keep apart, in chunk order (warnings are listed in
/// position order).
pub const CHUNK_SEQ_STRIDE: u64 = 1_000_000_000;

/// The longest one delivery may be held: under RabbitMQ's default 30-minute
/// `consumer_timeout`, past which the broker closes the channel and redelivers the command.
pub const MAX_DELIVERY: Duration = Duration::from_secs(25 * 60);

/// How often a running chunk checks whether its job was cancelled, and the least time between
/// two checks of a run at its stage boundaries (`sources::Throttled`).
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// How long a chunk waits for a projector to record its report before it leaves the rest to a
/// redelivery.
const RECORD_WAIT: Duration = Duration::from_secs(30);

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
    heartbeat: Heartbeat,
    /// A chunk's run sends no progress events: its job's progress is the count of chunks done.
    quiet: bool,
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
            heartbeat: Heartbeat::new(),
            quiet: false,
        }
    }

    /// A reporter for chunk `index`: quiet, numbered apart from the other chunks.
    pub fn in_chunk(mut self, index: u32) -> Self {
        self.seq = (u64::from(index) + 1) * CHUNK_SEQ_STRIDE;
        self.quiet = true;
        self
    }

    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Sends a progress report only when `every` has passed since the last one (or since the
    /// run started); the reports in between are dropped, the next one sent carrying the latest.
    pub fn sampling(mut self, every: std::time::Duration) -> Self {
        self.progress_every = every;
        self
    }

    pub async fn emit(&mut self, event: Event) -> Result<(), BrokerError> {
        self.emit_id(event).await.map(|_| ())
    }

    /// [`Reporter::emit`], returning the message id the event went out with.
    pub async fn emit_id(&mut self, event: Event) -> Result<MessageId, BrokerError> {
        self.seq += 1;
        self.heartbeat.beat();
        let at = Position {
            attempt: self.attempt,
            seq: self.seq,
        };
        let envelope = event.into_envelope(&self.job, at, Utc::now());
        let id = envelope.message_id;
        let confirm = self.sink.emit_deferred(envelope, None).await?;
        self.pending.push(confirm);
        Ok(id)
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
        self.heartbeat.beat();
        let now = std::time::Instant::now();
        if self.quiet || now.duration_since(self.progress_sent) < self.progress_every {
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
        self.heartbeat.beat();
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
    /// Stopped on a client's request, keeping partial results.
    Cancelled,
    /// The job was already finished (a duplicate or a late redelivery): nothing was run.
    Skipped,
    /// A big job was split: its chunks are on their way to the workers.
    Split,
    /// One chunk is done and recorded; other chunks are still to land.
    ChunkDone,
}

/// Why a run stopped before its stages ended.
enum Stop {
    NoProgress,
    TooLong,
    Cancelled,
}

/// Races a run against the no-progress timeout and the delivery ceiling (and, for chunks, the
/// cancel watch).
async fn guarded<T>(
    run: impl std::future::Future<Output = T>,
    heartbeat: Heartbeat,
    no_progress: Duration,
    watch_cancel: Option<(&dyn sources::CancelSignal, JobId)>,
) -> Result<T, Stop> {
    let cancel = async {
        match watch_cancel {
            Some((signal, job)) => loop {
                if signal.requested(job).await {
                    return;
                }
                tokio::time::sleep(CANCEL_POLL).await;
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = run => Ok(done),
        _ = heartbeat.stalled(no_progress) => Err(Stop::NoProgress),
        _ = tokio::time::sleep(MAX_DELIVERY) => Err(Stop::TooLong),
        _ = cancel => Err(Stop::Cancelled),
    }
}

fn stop_message(stop: &Stop, sources: &Sources, stage: Capability) -> String {
    match stop {
        Stop::NoProgress => format!(
            "the job made no progress for {:?} (stopped during {stage})",
            sources.job_timeout
        ),
        Stop::TooLong => format!(
            "one run of {stage} took longer than {} min, the most one delivery may last; lower BDJOBS_CHUNK_SIZE",
            MAX_DELIVERY.as_secs() / 60
        ),
        Stop::Cancelled => "cancelled by the client".to_owned(),
    }
}

/// The step: runs one decoded command to its terminal event (or, for a big job, to its split,
/// and for a chunk, to its recorded report).
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
    let decoded = command
        .decode_command()
        .map_err(|e| WorkerError::Fatal(e.to_string()))?;
    let job = JobRef {
        job_id: command.job_id,
        tenant: command.tenant.clone(),
    };
    let mut r = Reporter::new(job.clone(), attempt, sink).sampling(sources.progress_every);
    if let Command::RunChunk(c) = &decoded {
        r = r.in_chunk(c.chunk.index);
    }
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
    let run = match decoded {
        Command::RunChunk(chunk) => return run_chunk(&chunk, attempt, sources, r).await,
        Command::RunJob(run) if chunks::records(&run.input) > sources.chunk_size => {
            return split(&job, run, sources, sink, r, worker_name).await
        }
        Command::RunJob(run) => run,
    };
    r.emit(Event::Started(Started {
        worker: worker_name.to_owned(),
    }))
    .await?;
    let heartbeat = r.heartbeat();
    let run_result = guarded(
        pipeline::run_stages(&run, command.job_id, sources, &mut r),
        heartbeat,
        sources.job_timeout,
        None,
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
        Err(stop) => stop_message(&stop, sources, r.stage),
    };
    fail(&mut r, failure).await
}

async fn fail(r: &mut Reporter<'_>, error: String) -> Result<Outcome, WorkerError> {
    let stage = Some(r.stage);
    r.emit(Event::Failed(Failed { error, stage })).await?;
    r.settle().await?;
    Ok(Outcome::Failed)
}

/// Splits a big job into chunks and hands them to the workers. Deterministic, so that a split
/// redone after a crash sends the same chunks again; a chunk sent twice is run once and reported
/// once or, if two workers race, twice with either report usable.
async fn split(
    job: &JobRef,
    run: RunJob,
    sources: &Sources,
    sink: &dyn EventSink,
    mut r: Reporter<'_>,
    worker_name: &str,
) -> Result<Outcome, WorkerError> {
    let parts = chunks::split(&run.input, sources.chunk_size);
    let count = parts.len() as u32;
    r.emit(Event::Started(Started {
        worker: worker_name.to_owned(),
    }))
    .await?;
    r.emit(Event::Progress(Progress {
        stage: run.plan.capabilities[0],
        percent: 0,
        message: format!(
            "Split into {count} chunks of up to {} records...",
            sources.chunk_size
        ),
        done: Some(0),
        total: Some(u64::from(count)),
    }))
    .await?;
    let mut confirms = Vec::with_capacity(parts.len());
    for (index, input) in parts.into_iter().enumerate() {
        let chunk = RunChunk {
            run: RunJob {
                plan: run.plan.clone(),
                input,
                icp_config: run.icp_config.clone(),
                execution_options: run.execution_options.clone(),
            },
            chunk: ChunkOf {
                index: index as u32,
                count,
            },
        };
        let command = run_chunk_command(job, &chunk, Utc::now());
        confirms.push(sink.command_deferred(command, None).await?);
    }
    futures::future::try_join_all(confirms).await?;
    r.settle().await?;
    Ok(Outcome::Split)
}

/// The recorded chunk reports of a job, decoded.
async fn chunk_records(sources: &Sources, job: JobId) -> Result<Vec<EventRecord>, WorkerError> {
    sources
        .chunk_log
        .reports(job)
        .await?
        .iter()
        .map(|raw| EventRecord::from_raw(raw).map_err(|e| WorkerError::Fatal(e.to_string())))
        .collect()
}

fn reports_of(records: &[EventRecord]) -> Vec<ChunkReport<'_>> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::ChunkCompleted(done) => Some(ChunkReport {
                position: r.position,
                message_id: r.message_id,
                done,
            }),
            _ => None,
        })
        .collect()
}

/// Runs one chunk unless it is already recorded, records its report, and, when it turns out to
/// be the last chunk to land, assembles the job's deliverable. The command is acknowledged only
/// after all that, so a crash anywhere redoes at most this chunk.
async fn run_chunk(
    chunk: &RunChunk,
    attempt: u32,
    sources: &Sources,
    mut r: Reporter<'_>,
) -> Result<Outcome, WorkerError> {
    let job = r.job.job_id;
    let ChunkOf { index, count } = chunk.chunk;
    let recorded = chunk_records(sources, job).await?;
    if !chunks::done_indices(&reports_of(&recorded)).contains(&index) {
        if sources.cancel.requested(job).await {
            return cancel_chunked(sources, &mut r, job).await;
        }
        let heartbeat = r.heartbeat();
        let result = guarded(
            pipeline::run_chunk_stages(&chunk.run, chunk.chunk, sources, &mut r),
            heartbeat,
            sources.job_timeout,
            Some((sources.cancel.as_ref(), job)),
        )
        .await;
        let done = match result {
            Ok(Ok(done)) => done,
            Ok(Err(e)) if e.is_retryable() && (attempt as i64) < broker::DELIVERY_LIMIT => {
                return Err(e)
            }
            Ok(Err(e)) => {
                let message = failure_message(r.stage, &e);
                return fail(&mut r, message).await;
            }
            Err(Stop::Cancelled) => return cancel_chunked(sources, &mut r, job).await,
            Err(stop) => {
                let message = stop_message(&stop, sources, r.stage);
                return fail(&mut r, message).await;
            }
        };
        let id = r.emit_id(Event::ChunkCompleted(done)).await?;
        r.settle().await?;
        wait_until_recorded(sources, job, id).await?;
    }
    let recorded = chunk_records(sources, job).await?;
    let reports = reports_of(&recorded);
    let Some(all) = chunks::complete_set(&reports, count) else {
        return Ok(Outcome::ChunkDone);
    };
    // Every worker whose chunk lands after the others' sees the set complete; each assembles
    // the same rows, and the fold keeps the first completion.
    r.enter(Capability::DeliverableFinalize, 0, 1);
    let done = pipeline::finalize(&all, &mut r).await?;
    r.emit(Event::Completed(done)).await?;
    r.settle().await?;
    Ok(Outcome::Completed)
}

/// Waits until a projector has recorded the report `id`: only then can this worker tell
/// whether its chunk was the last (each worker checks after its own report is recorded, so the
/// one recorded last sees every other).
async fn wait_until_recorded(
    sources: &Sources,
    job: JobId,
    id: MessageId,
) -> Result<(), WorkerError> {
    let deadline = tokio::time::Instant::now() + RECORD_WAIT;
    loop {
        let reports = sources.chunk_log.reports(job).await?;
        if reports.iter().any(|r| r.message_id == id) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WorkerError::NotYet(format!(
                "the chunk's report was not recorded within {} s",
                RECORD_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends a chunked job on a client's cancellation, delivering the chunks done so far.
async fn cancel_chunked(
    sources: &Sources,
    r: &mut Reporter<'_>,
    job: JobId,
) -> Result<Outcome, WorkerError> {
    let recorded = chunk_records(sources, job).await?;
    let reports = reports_of(&recorded);
    let done: Vec<&ChunkCompleted> = chunks::earliest_each(&reports).into_values().collect();
    let partial: Completed = chunks::assemble(&done).0;
    r.emit(Event::Cancelled(Cancelled {
        reason: "cancelled by the client".to_owned(),
        partial: Some(partial),
    }))
    .await?;
    r.settle().await?;
    Ok(Outcome::Cancelled)
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
        WorkerError::NotYet(_) => "the event log",
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
    /// Where claim-checked payloads are stored and read (the asset store).
    pub storage: opendal::Operator,
    /// The largest message this worker publishes (`BDJOBS_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
}

/// The loop: consume, run, publish, ack; reconnect with backoff when the broker goes away; on
/// shutdown stop taking work and let in-flight jobs finish within the grace period.
pub async fn run(
    config: WorkerConfig,
    sources: Sources,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Arc::new(
        Publisher::new(
            &config.amqp_url,
            &format!("{}-events", config.name),
            config.topology.clone(),
        )
        .with_max_message_bytes(config.max_message_bytes),
    );
    let sink: Arc<dyn EventSink> = Arc::new(BrokerSink {
        publisher,
        claims: Claims::new(config.storage.clone(), config.max_message_bytes),
    });
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
        let storage = config.storage.clone();
        tasks.spawn(async move {
            handle(delivery, &sources, sink.as_ref(), &pool, &storage, &name).await;
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
/// Whether the read model already shows the job terminal, and otherwise the cancel signal the
/// run is to watch, seeded with what the same read said about a cancellation. A database that
/// cannot answer means "run it" (a duplicate run is harmless, a skipped one is not), and the run
/// asks again at its first check.
async fn run_state(
    pool: &Pool,
    job: JobId,
    cancel: &Arc<dyn sources::CancelSignal>,
) -> Option<sources::Throttled> {
    let signal = sources::Throttled::new(cancel.clone(), CANCEL_POLL);
    match db::jobs::run_state(pool, job).await {
        Ok(Some((status, _))) if status.is_terminal() => None,
        Ok(Some((_, cancelled))) => Some(signal.seeded(cancelled)),
        _ => Some(signal),
    }
}

/// Gives a delivery back to the queue after a short pause, so that a dependency that is down
/// is not hammered by redeliveries.
async fn requeue_after_pause(delivery: &lapin::message::Delivery) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

/// Malformed: to the dead-letter queue, once, without blocking the queue behind it.
async fn dead_letter(delivery: &lapin::message::Delivery, error: &str) {
    tracing::error!(error, "dead-lettering a malformed command");
    let _ = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await;
}

async fn handle(
    delivery: lapin::message::Delivery,
    sources: &Sources,
    sink: &dyn EventSink,
    pool: &Pool,
    storage: &opendal::Operator,
    name: &str,
) {
    let attempt = broker::attempt_of(&delivery.properties);
    let mut command = match RawEnvelope::from_slice(&delivery.data) {
        Ok(c) => c,
        Err(e) => return dead_letter(&delivery, &e.to_string()).await,
    };
    if let Err(e) = claims::open(storage, &mut command).await {
        if e.is_retryable() {
            tracing::warn!(error = %e, "could not read the command's payload; requeueing");
            return requeue_after_pause(&delivery).await;
        }
        return dead_letter(&delivery, &e.to_string()).await;
    }
    if let Err(e) = command.decode_command() {
        return dead_letter(&delivery, &e.to_string()).await;
    }
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
        let Some(cancel) = run_state(pool, command.job_id, &sources.cancel).await else {
            tracing::info!("job already finished; acknowledging the command without running it");
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        };
        let sources = &sources.clone().with_cancel(Arc::new(cancel));
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
                requeue_after_pause(&delivery).await;
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
    async fn a_run_that_keeps_reporting_outlives_the_no_progress_timeout() {
        let sink = VecSink::default();
        let mut r = Reporter::new(job(), 1, &sink).in_chunk(0);
        let heartbeat = r.heartbeat();
        // Reports every 20 ms for 3 s, against a 2 s timeout: only the reporting keeps it alive.
        let run = async {
            let end = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut i = 0;
            while tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
                i += 1;
                r.item(i, 1000, "Verifying").await.unwrap();
            }
            "done"
        };
        let outcome = guarded(run, heartbeat, Duration::from_secs(2), None).await;
        assert!(matches!(outcome, Ok("done")));
        assert!(sink.0.lock().await.is_empty(), "a chunk sends no progress");
    }

    #[tokio::test]
    async fn a_run_that_stops_reporting_is_stopped_for_no_progress() {
        let sink = VecSink::default();
        let mut r = Reporter::new(job(), 1, &sink);
        let heartbeat = r.heartbeat();
        let run = async {
            r.item(1, 20, "Verifying").await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        };
        let outcome = guarded(run, heartbeat, Duration::from_millis(300), None).await;
        assert!(matches!(outcome, Err(Stop::NoProgress)));
    }

    #[tokio::test]
    async fn a_cancel_stops_a_watched_run_without_waiting_for_it() {
        struct Cancelled;
        #[async_trait]
        impl sources::CancelSignal for Cancelled {
            async fn requested(&self, _: JobId) -> bool {
                true
            }
        }
        let run = tokio::time::sleep(Duration::from_secs(3600));
        let outcome = guarded(
            run,
            Heartbeat::new(),
            Duration::from_secs(7200),
            Some((&Cancelled, JobId::new())),
        )
        .await;
        assert!(matches!(outcome, Err(Stop::Cancelled)));
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
