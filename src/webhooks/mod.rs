//! The webhook dispatcher role (`bdjobs webhooks`, also inside `bdjobs all`): it sends the
//! deliveries the projector queued when jobs ended (`read_model::webhooks`), signed per the
//! Standard Webhooks spec, and records every attempt.
//!
//! The step ([`Dispatcher::step`]) claims due deliveries with a lease (`FOR UPDATE SKIP
//! LOCKED`, then `next_attempt_at` moved past the attempt's timeout), sends them, and records
//! each attempt with what follows: delivered, a retry at a time from `domain::webhooks`'
//! schedule (a `Retry-After` honoured), or given up. The loop ([`run`]) repeats it.
//!
//! Delivery is at least once: a dispatcher killed between sending and recording leaves the
//! lease to expire, and the delivery goes again under the same `webhook-id`, by which receivers
//! deduplicate. Ordered per job: only a job's oldest pending delivery is ever claimed. Any
//! number of dispatchers may run.

use crate::adapters::db::webhooks::{self as rows, After, Attempt, Claimed};
use crate::adapters::db::DbError;
use crate::adapters::webhook_http::{WebhookClient, WebhookError};
use crate::adapters::Retryable;
use crate::domain::webhooks::{self as rules, Schedule, Verdict};
use deadpool_postgres::Pool;
use futures::stream::{self, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The dispatcher's settings.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// One attempt's bound.
    pub timeout: Duration,
    pub allow_private: bool,
    pub schedule: Schedule,
    /// Deliveries claimed (and sent concurrently) per step.
    pub batch: usize,
    /// Pause between steps that found nothing to do.
    pub idle: Duration,
}

impl DispatcherConfig {
    /// How long a claim holds a delivery: the attempt's timeout with room to record it, after
    /// which a dispatcher that died mid-attempt is presumed dead.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }
}

pub struct Dispatcher {
    pool: Pool,
    client: WebhookClient,
    config: DispatcherConfig,
}

impl Dispatcher {
    pub fn new(pool: Pool, config: DispatcherConfig) -> Result<Self, WebhookError> {
        Ok(Self {
            client: WebhookClient::new(config.timeout, config.allow_private)?,
            pool,
            config,
        })
    }

    /// The step: claims due deliveries, sends them at once, records each attempt. Returns how
    /// many it sent.
    pub async fn step(&self) -> Result<usize, DbError> {
        let claimed = rows::claim_due(
            &self.pool,
            i64::try_from(self.config.batch).unwrap_or(i64::MAX),
            self.config.lease(),
        )
        .await?;
        let n = claimed.len();
        let results: Vec<Result<(), DbError>> = stream::iter(claimed)
            .map(|c| self.deliver(c))
            .buffer_unordered(self.config.batch.max(1))
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(n)
    }

    /// One attempt of one delivery, and its record.
    async fn deliver(&self, c: Claimed) -> Result<(), DbError> {
        let msg_id = rules::msg_id(c.delivery_id);
        let attempted_at = chrono::Utc::now();
        let (result, latency) = match rules::secret_key(&c.secret) {
            Ok(key) => {
                let timestamp = attempted_at.timestamp();
                let signature = rules::sign(&key, &msg_id, timestamp, c.body.as_bytes());
                let headers = [
                    ("webhook-id", msg_id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ];
                self.client.post(&c.url, &headers, c.body).await
            }
            Err(why) => (Err(WebhookError::Refused(why)), Duration::ZERO),
        };
        let failed = u32::try_from(c.attempts).unwrap_or(0) + 1;
        let (status, verdict, retry_after, error) = match &result {
            Ok(answer) => (
                Some(answer.status),
                rules::verdict(Some(answer.status)),
                answer
                    .retry_after
                    .as_deref()
                    .and_then(|v| rules::retry_after(v, chrono::Utc::now())),
                None,
            ),
            Err(e) => (
                None,
                if e.is_retryable() {
                    Verdict::Retry
                } else {
                    Verdict::GiveUp
                },
                None,
                Some(e.to_string()),
            ),
        };
        let after = match verdict {
            Verdict::Delivered => After::Delivered,
            Verdict::GiveUp => After::Failed,
            Verdict::Retry => {
                match self
                    .config
                    .schedule
                    .next_wait(failed, rand::random::<f64>(), retry_after)
                {
                    Some(wait) => After::RetryAt(
                        chrono::Utc::now()
                            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                    ),
                    None => After::Failed,
                }
            }
        };
        match after {
            After::Delivered => {
                tracing::debug!(job_id = %c.job_id, %msg_id, event = %c.event, "webhook delivered")
            }
            After::RetryAt(at) => {
                tracing::info!(job_id = %c.job_id, %msg_id, status, error, next_attempt_at = %at, "webhook attempt failed; will retry")
            }
            After::Failed => {
                tracing::warn!(job_id = %c.job_id, %msg_id, status, error, "webhook given up; `bdjobs webhooks redeliver` sends it again")
            }
        }
        rows::record_attempt(
            &self.pool,
            &Attempt {
                delivery_id: c.delivery_id,
                job_id: c.job_id,
                attempted_at,
                status_code: status,
                latency_ms: i32::try_from(latency.as_millis()).unwrap_or(i32::MAX),
                error: error.as_deref(),
                after,
            },
        )
        .await
    }
}

/// The loop: steps until `shutdown`; a full batch is followed at once by the next, an empty
/// one by a pause; database trouble is logged and waited out.
pub async fn run(dispatcher: Dispatcher, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut trouble = Duration::from_millis(200);
    loop {
        let pause = match dispatcher.step().await {
            Ok(n) if n >= dispatcher.config.batch => Duration::ZERO,
            Ok(_) => {
                trouble = Duration::from_millis(200);
                dispatcher.config.idle
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher: database trouble; retrying");
                trouble = (trouble * 2).min(Duration::from_secs(10));
                trouble
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
