//! The projector role: consumes events from the broker and hands them, in batches, to the
//! read model's step (`read_model::apply_batch`), acking after its commit; runs the reaper
//! (`read_model::reap_stuck`) beside it. [`run`] is the loop; the step and every write it makes
//! live in `read_model`.

use crate::adapters::broker::{self, BrokerError, Topology};
use crate::adapters::Retryable;
use crate::domain::messages::{EventRecord, RawEnvelope};
use crate::read_model::{apply, apply_batch, reap_stuck, reject, Applied, ReadModelError};
use deadpool_postgres::Pool;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use opendal::Operator;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Applies a batch, retrying with backoff while the failure is retryable (the database is
/// restarting, a connection broke) until it succeeds or shutdown. Holding the deliveries instead
/// of requeueing them keeps a database outage from spending the queue's delivery limit and
/// dead-lettering good events.
pub async fn apply_patiently(
    pool: &Pool,
    storage: &Operator,
    raws: &[RawEnvelope],
    shutdown: &CancellationToken,
) -> Result<Vec<Applied>, ReadModelError> {
    let mut failures = 0u32;
    loop {
        match apply_batch(pool, storage, raws).await {
            Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                failures += 1;
                let wait = broker::backoff(failures);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, ?wait, "could not apply events; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// How long a batch waits for more events after its first one.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Clone)]
pub struct ProjectorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub prefetch: u16,
    pub name: String,
    /// Unfinished jobs idle this long are failed by the reaper.
    pub stuck_after: std::time::Duration,
}

/// The loop: consume, apply, ack after commit; reconnect with backoff; stop on shutdown.
pub async fn run(
    config: ProjectorConfig,
    pool: Pool,
    storage: Operator,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reaper = tokio::spawn(reaper_loop(
        pool.clone(),
        config.stuck_after,
        shutdown.clone(),
    ));
    broker::reconnecting("projector", &shutdown, || {
        consume(&config, &pool, &storage, &shutdown)
    })
    .await;
    let _ = reaper.await;
    tracing::info!("projector stopped");
    Ok(())
}

async fn reaper_loop(pool: Pool, stuck_after: std::time::Duration, shutdown: CancellationToken) {
    // Check a few times per idle period, but not more than once a second.
    let every = (stuck_after / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match reap_stuck(&pool, stuck_after.as_secs_f64()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "reaper failed jobs that made no progress"),
            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
        }
    }
}

async fn consume(
    config: &ProjectorConfig,
    pool: &Pool,
    storage: &Operator,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let (_conn, _channel, mut consumer) = broker::start_consuming(
        &config.amqp_url,
        &config.name,
        &config.topology,
        &config.topology.projector_queue(),
        config.prefetch,
    )
    .await?;
    // The prefetch window is shared by the batches in flight, so that each can fill up.
    let max_batch = (usize::from(config.prefetch) / BATCHES_IN_FLIGHT).max(1);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    // Delivery tags belong to this channel: a reconnection starts a new one, and a new settler.
    let settler = std::sync::Arc::new(Settler::default());
    let tasks = tokio_util::task::TaskTracker::new();
    let ended = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            p = in_flight.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        // Whatever else arrives within a moment joins the batch: a couple of milliseconds of
        // latency buy transactions of hundreds of events instead of a few.
        let mut deliveries = vec![first];
        let linger = tokio::time::Instant::now() + BATCH_LINGER;
        while deliveries.len() < max_batch {
            match consumer.next().now_or_never() {
                Some(d) => deliveries.push(d),
                None => match tokio::time::timeout_at(linger, consumer.next()).await {
                    Ok(d) => deliveries.push(d),
                    Err(_) => break,
                },
            }
        }
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut failed = None;
        for d in deliveries {
            let delivery = match broker::delivery(d) {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            // A claim-checked payload is checked when the batch opens it.
            match RawEnvelope::from_slice(&delivery.data).and_then(|raw| {
                if raw.payload_ref.is_some() {
                    Ok(raw)
                } else {
                    EventRecord::from_raw(&raw).map(|_| raw)
                }
            }) {
                Ok(raw) => {
                    // Batches mix jobs, so each event's correlation id is logged on its own.
                    tracing::debug!(
                        job_id = %raw.job_id,
                        kind = %raw.kind,
                        correlation_id = broker::correlation_id_of(&delivery.properties).as_deref(),
                        "event received"
                    );
                    batch.push((delivery, raw))
                }
                Err(e) => {
                    tracing::error!(error = %e, "dead-lettering a malformed event");
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if batch.is_empty() {
            continue;
        }
        settler.take(batch.iter().map(|(d, _)| d)).await;
        let (pool, storage, shutdown) = (pool.clone(), storage.clone(), shutdown.clone());
        let settler = settler.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = settle_batch(&pool, &storage, &settler, batch, &shutdown).await {
                tracing::warn!(error = %e, "could not settle a batch; the broker will redeliver it");
            }
        });
    };
    // Batches in flight finish (or, on shutdown, go back to the queue) on this connection.
    tasks.close();
    tasks.wait().await;
    ended
}

/// Batches applied at once by one projector: while one waits for its commit, the next is
/// already being read and applied. Safe because the fold converges in any order and every
/// batch takes its locks in the same order.
const BATCHES_IN_FLIGHT: usize = 4;

/// Acknowledges deliveries once their batch has committed, many in one `basic.ack` where it
/// can: at this load a batch holds a few jobs' events, and acking each one cost the broker and
/// the projector a frame per event (issue 18).
///
/// A `multiple` ack settles every unsettled delivery of the channel up to its tag, and batches
/// commit out of order (several are in flight), so it may only reach up to the first delivery
/// still waiting for its batch. The settler holds the waiting deliveries by tag (tags rise in
/// the order the channel delivered them, and a batch is registered before it starts). A batch
/// that commits acks, in one frame, its deliveries below the first one still waiting (everything
/// else below is settled already), and the rest one by one instead of holding them back: held,
/// they would count against the prefetch window until the slow batch commits (a lock wait, a
/// large object to store), and enough of them would stop the projector taking more events.
/// Sends are serialised under the lock: an ack overtaken by a larger one would name a tag the
/// broker no longer knows, which closes the channel.
#[derive(Default)]
struct Settler {
    /// Tag → acker of each delivery whose batch has not settled it yet.
    waiting: tokio::sync::Mutex<std::collections::BTreeMap<u64, lapin::Acker>>,
}

/// How a delivery is settled on its own.
enum Alone {
    /// Back to the queue (shutdown, or a retryable failure of its event alone).
    Requeue,
    /// To the dead-letter queue (its event can never be applied).
    DeadLetter,
}

impl Settler {
    /// Registers the deliveries of a batch, before the batch starts.
    async fn take(&self, batch: impl Iterator<Item = &lapin::message::Delivery>) {
        let mut waiting = self.waiting.lock().await;
        for d in batch {
            waiting.insert(d.delivery_tag, d.acker.clone());
        }
    }

    /// The deliveries' events are committed: ack them.
    async fn committed(&self, tags: &[u64]) -> Result<(), BrokerError> {
        let mut waiting = self.waiting.lock().await;
        let mut ours: Vec<(u64, lapin::Acker)> = tags
            .iter()
            .filter_map(|tag| waiting.remove(tag).map(|acker| (*tag, acker)))
            .collect();
        ours.sort_by_key(|(tag, _)| *tag);
        let first_waiting = waiting.keys().next().copied().unwrap_or(u64::MAX);
        let covered = ours.partition_point(|(tag, _)| *tag < first_waiting);
        if let Some((_, acker)) = ours[..covered].last() {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        for (_, acker) in &ours[covered..] {
            acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }

    /// Settles one delivery by itself.
    async fn alone(&self, d: &lapin::message::Delivery, how: Alone) -> Result<(), BrokerError> {
        let mut waiting = self.waiting.lock().await;
        waiting.remove(&d.delivery_tag);
        match how {
            Alone::Requeue => {
                d.acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?
            }
            Alone::DeadLetter => {
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?
            }
        };
        Ok(())
    }
}

/// Applies one batch and settles its deliveries: acked after the commit, requeued on shutdown,
/// and, if the batch as a whole cannot be applied, retried event by event so that only the
/// event at fault is dead-lettered.
async fn settle_batch(
    pool: &Pool,
    storage: &Operator,
    settler: &Settler,
    batch: Vec<(lapin::message::Delivery, RawEnvelope)>,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let raws: Vec<RawEnvelope> = batch.iter().map(|(_, raw)| raw.clone()).collect();
    let span = tracing::debug_span!("events", count = raws.len());
    match apply_patiently(pool, storage, &raws, shutdown)
        .instrument(span)
        .await
    {
        Ok(_) => {
            let tags: Vec<u64> = batch.iter().map(|(d, _)| d.delivery_tag).collect();
            settler.committed(&tags).await?;
        }
        Err(e) if e.is_retryable() => {
            // Only on shutdown: the events go back to the queue for the next projector.
            for (d, _) in &batch {
                settler.alone(d, Alone::Requeue).await?;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "a batch failed; applying its events one at a time");
            for (d, raw) in &batch {
                let span = tracing::info_span!("event", job_id = %raw.job_id, kind = %raw.kind);
                match apply(pool, storage, raw).instrument(span).await {
                    Ok(_) => settler.committed(&[d.delivery_tag]).await?,
                    Err(e) if e.is_retryable() => settler.alone(d, Alone::Requeue).await?,
                    Err(e) => {
                        if let Err(why) = reject(pool, storage, raw, &e).await {
                            tracing::error!(error = %why, job_id = %raw.job_id, "could not fail the job of an event that cannot be applied; the reaper will");
                        }
                        settler.alone(d, Alone::DeadLetter).await?
                    }
                };
            }
        }
    }
    Ok(())
}
