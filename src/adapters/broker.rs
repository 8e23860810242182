//! RabbitMQ through lapin: the topology of one namespace, a publisher that waits for confirms and
//! reconnects on its own, and helpers for consumers.
//!
//! Topology (`NS` = `BDJOBS_NAMESPACE`), all durable:
//! - `NS.commands` (direct) → quorum queue `NS.jobs` (keys `job.run`, `job.run_chunk`), consumed
//!   by workers;
//! - `NS.events` (topic) → quorum queue `NS.projector` (key `job.#`), consumed by projectors;
//! - `NS.dlx` (fanout) → quorum queue `NS.dead`: what the two queues dead-letter, either after
//!   `DELIVERY_LIMIT` redeliveries or because a consumer rejected it as malformed.

use crate::adapters::Retryable;
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use tokio::sync::Mutex;

/// How many times a quorum queue redelivers a message before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message (nack) for {0}")]
    Nacked(String),
    #[error("no queue is bound for routing key {0}")]
    Unroutable(String),
    #[error("broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// A claim-checked payload could not be stored or read back; storage may come back.
    #[error("object storage for a claim-checked payload: {0}")]
    ClaimStore(String),
    /// Refused before sending: the broker would close the channel on it, and no later try
    /// could succeed. Bulky payloads go through object storage instead (claim checks).
    #[error("a {kind} message of {size} bytes exceeds the {limit}-byte message limit")]
    TooLarge {
        kind: String,
        size: usize,
        limit: usize,
    },
}

impl crate::adapters::Retryable for BrokerError {
    /// Everything but an unroutable message can succeed on a later try (after a reconnect).
    fn is_retryable(&self) -> bool {
        !matches!(
            self,
            BrokerError::Unroutable(_) | BrokerError::TooLarge { .. }
        )
    }
}

/// The names of one namespace's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
}

/// The routing key of `job.run` commands.
pub const RUN_JOB_KEY: &str = crate::domain::messages::kinds::RUN;
/// Chunks of a split job go to the same queue as whole jobs: any worker runs either.
pub const RUN_CHUNK_KEY: &str = crate::domain::messages::kinds::RUN_CHUNK;

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.namespace)
    }
    pub fn projector_queue(&self) -> String {
        format!("{}.projector", self.namespace)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    fn quorum_args(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        if dead_letter {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(self.dead_letter_exchange())),
            );
        }
        args
    }

    /// Declares everything (idempotent: every role calls it at start and after a reconnect).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.commands_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queues = [
            (
                self.jobs_queue(),
                self.commands_exchange(),
                RUN_JOB_KEY,
                true,
            ),
            (
                self.jobs_queue(),
                self.commands_exchange(),
                RUN_CHUNK_KEY,
                true,
            ),
            (
                self.projector_queue(),
                self.events_exchange(),
                "job.#",
                true,
            ),
            (self.dead_queue(), self.dead_letter_exchange(), "", false),
        ];
        for (queue, exchange, key, dead_letter) in queues {
            channel
                .queue_declare(
                    queue.clone().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    self.quorum_args(dead_letter),
                )
                .await?;
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Removes the namespace's queues and exchanges (tests call it so the broker does not
    /// collect their quorum queues).
    pub async fn delete(&self, channel: &Channel) -> Result<(), BrokerError> {
        for q in [self.jobs_queue(), self.projector_queue(), self.dead_queue()] {
            channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [
            self.commands_exchange(),
            self.events_exchange(),
            self.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let mut props = ConnectionProperties::default();
    props = props.with_connection_name(LongString::from(name.to_owned()));
    Ok(Connection::connect(url, props).await?)
}

/// A channel with `prefetch` unacknowledged deliveries at most.
pub async fn consumer_channel(conn: &Connection, prefetch: u16) -> Result<Channel, BrokerError> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    Ok(ch)
}

/// Connects, declares the topology and starts consuming `queue` with at most `prefetch`
/// unacknowledged deliveries. The connection is returned too: it must outlive the consumer.
pub async fn start_consuming(
    url: &str,
    name: &str,
    topology: &Topology,
    queue: &str,
    prefetch: u16,
) -> Result<(Connection, Channel, lapin::Consumer), BrokerError> {
    let conn = connect(url, name).await?;
    let channel = consumer_channel(&conn, prefetch).await?;
    topology.declare(&channel).await?;
    let consumer = channel
        .basic_consume(
            queue.to_owned().into(),
            name.to_owned().into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue, "consuming");
    Ok((conn, channel, consumer))
}

/// A consumer stream's next item as a delivery, or the error that ends the session (the
/// stream ends only when the connection is gone).
pub fn delivery(
    next: Option<Result<lapin::message::Delivery, lapin::Error>>,
) -> Result<lapin::message::Delivery, BrokerError> {
    match next {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(e.into()),
        None => Err(BrokerError::Amqp(lapin::Error::from(
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
        ))),
    }
}

/// Returns held deliveries to their queue.
pub async fn release(deliveries: &[lapin::message::Delivery]) -> Result<(), BrokerError> {
    for d in deliveries {
        d.acker
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Which attempt a delivery is: quorum queues count earlier deliveries in `x-delivery-count`.
pub fn attempt_of(props: &BasicProperties) -> u32 {
    let count = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n),
            AMQPValue::LongInt(n) => Some(n as i64),
            AMQPValue::ShortInt(n) => Some(n as i64),
            AMQPValue::LongUInt(n) => Some(n as i64),
            _ => None,
        })
        .unwrap_or(0);
    (count.max(0) as u32).saturating_add(1)
}

/// The AMQP header that carries a job's correlation id: set by the API on `job.run`, copied by
/// the worker onto every event of that job, so that one job can be followed across roles' logs.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id a delivery carries, if any.
pub fn correlation_id_of(props: &BasicProperties) -> Option<String> {
    match props.headers().as_ref()?.inner().get(CORRELATION_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub body: &'a [u8],
    /// Sent as the [`CORRELATION_HEADER`] header when present.
    pub correlation_id: Option<&'a str>,
}

/// Publishes persistent messages and waits for the broker's confirm. Holds one connection and
/// confirm channel, made on first use and made again after any failure, so that a broker
/// restart costs the callers one failed publish each, not a restart of the process.
pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    state: Mutex<Option<(Connection, Channel)>>,
    confirm_timeout: Duration,
    max_message_bytes: usize,
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            state: Mutex::new(None),
            confirm_timeout: Duration::from_secs(15),
            max_message_bytes: crate::adapters::claims::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The largest body this publisher sends (`BDJOBS_MAX_MESSAGE_BYTES`); a larger one is
    /// refused with [`BrokerError::TooLarge`] before it reaches the broker.
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut state = self.state.lock().await;
        if let Some((conn, ch)) = state.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let conn = connect(&self.url, &self.name).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare(&ch).await?;
        *state = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn reset(&self) {
        *self.state.lock().await = None;
    }

    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), BrokerError> {
        let result = match self.send(&msg).await {
            Ok(confirm) => settle(confirm, self.confirm_timeout, msg.routing_key.to_owned()).await,
            Err(e) => Err(e),
        };
        if matches!(&result, Err(e) if e.is_retryable()) {
            self.reset().await;
        }
        result
    }

    /// Publishes without waiting for the broker's confirm; the returned future waits for it.
    /// Lets a producer put several messages in flight and settle them together, while still
    /// counting none as sent until its confirm arrives. (A broken channel is noticed, and
    /// replaced, by the next publish.)
    pub async fn publish_deferred(&self, msg: Outgoing<'_>) -> Result<Confirm, BrokerError> {
        match self.send(&msg).await {
            Ok(confirm) => Ok(Box::pin(settle(
                confirm,
                self.confirm_timeout,
                msg.routing_key.to_owned(),
            ))),
            Err(e) => {
                if e.is_retryable() {
                    self.reset().await;
                }
                Err(e)
            }
        }
    }

    async fn send(&self, msg: &Outgoing<'_>) -> Result<lapin::PublisherConfirm, BrokerError> {
        check_size(msg, self.max_message_bytes)?;
        let ch = self.channel().await?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(msg.message_id.to_owned().into())
            .with_type(msg.kind.to_owned().into());
        if let Some(id) = msg.correlation_id {
            let mut headers = FieldTable::default();
            headers.insert(
                CORRELATION_HEADER.into(),
                AMQPValue::LongString(LongString::from(id.to_owned())),
            );
            props = props.with_headers(headers);
        }
        Ok(ch
            .basic_publish(
                msg.exchange.to_owned().into(),
                msg.routing_key.to_owned().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                msg.body,
                props,
            )
            .await?)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the broker answers: the publisher's connection and channel are (re)made if
    /// needed. For readiness probes; the caller bounds the wait.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let result = self.channel().await.map(|_| ());
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    /// Messages ready in each of the namespace's queues (jobs, projector, dead), by passive
    /// declaration on a short-lived channel of the publisher's connection (a passive declare of
    /// a missing queue closes its channel, which must not be the publishing one).
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, BrokerError> {
        self.channel().await?;
        let conn_channel = {
            let state = self.state.lock().await;
            let (conn, _) = state.as_ref().ok_or_else(|| {
                BrokerError::Amqp(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
                )
            })?;
            conn.create_channel().await?
        };
        let mut out = Vec::new();
        for q in [
            self.topology.jobs_queue(),
            self.topology.projector_queue(),
            self.topology.dead_queue(),
        ] {
            let declared = conn_channel
                .queue_declare(
                    q.clone().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            out.push((q, declared.message_count()));
        }
        let _ = conn_channel.close(200, "done".into()).await;
        Ok(out)
    }
}

fn check_size(msg: &Outgoing<'_>, limit: usize) -> Result<(), BrokerError> {
    if msg.body.len() > limit {
        return Err(BrokerError::TooLarge {
            kind: msg.kind.to_owned(),
            size: msg.body.len(),
            limit,
        });
    }
    Ok(())
}

/// The broker's confirm of one publish, still to come.
pub type Confirm =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BrokerError>> + Send>>;

async fn settle(
    confirm: lapin::PublisherConfirm,
    timeout: Duration,
    routing_key: String,
) -> Result<(), BrokerError> {
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| BrokerError::ConfirmTimeout(timeout))??;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key)),
        Confirmation::Nack(_) => Err(BrokerError::Nacked(routing_key)),
    }
}

/// The reconnect loop of the consuming roles: runs `session` (connect, declare, consume until
/// shutdown or until the connection fails) again and again, [`backoff`] apart, until a session
/// ends cleanly or `shutdown` is cancelled. The roles reconnect themselves rather than rely on
/// lapin's recovery, so that each new session declares the topology again.
pub async fn reconnecting<F, Fut>(
    role: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match session().await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let wait = backoff(failures);
                tracing::warn!(error = %e, ?wait, "{role} lost the broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
}

/// Exponential backoff for reconnect loops: 100 ms doubling to 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_the_limit_is_refused_for_good_before_it_is_sent() {
        let body = vec![b'x'; 2048];
        let msg = Outgoing {
            exchange: "x",
            routing_key: "job.completed",
            message_id: "m",
            kind: "job.completed",
            body: &body,
            correlation_id: None,
        };
        assert!(check_size(&msg, 2048).is_ok());
        let e = check_size(&msg, 2047).unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("2048 bytes"), "{e}");
    }
}
