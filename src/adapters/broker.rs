//! RabbitMQ through lapin: the topology of one namespace, a publisher that waits for confirms and
//! reconnects on its own, and helpers for consumers.
//!
//! Topology (`NS` = `BDJOBS_NAMESPACE`), all durable:
//! - `NS.commands` (direct) → quorum queue `NS.jobs` (key `job.run`), consumed by workers;
//! - `NS.events` (topic) → quorum queue `NS.projector` (key `job.#`), consumed by projectors;
//! - `NS.dlx` (fanout) → quorum queue `NS.dead`: what the two queues dead-letter, either after
//!   `DELIVERY_LIMIT` redeliveries or because a consumer rejected it as malformed.

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
}

impl BrokerError {
    /// Everything but an unroutable message can succeed on a later try (after a reconnect).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BrokerError::Unroutable(_))
    }
}

/// The names of one namespace's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
}

pub const RUN_JOB_KEY: &str = "job.run";

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

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub body: &'a [u8],
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
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            state: Mutex::new(None),
            confirm_timeout: Duration::from_secs(15),
        }
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
        let result = self.publish_once(&msg).await;
        if matches!(&result, Err(e) if e.is_retryable()) {
            self.reset().await;
        }
        result
    }

    async fn publish_once(&self, msg: &Outgoing<'_>) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(msg.message_id.to_owned().into())
            .with_type(msg.kind.to_owned().into());
        let confirm = ch
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
            .await?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(self.confirm_timeout))??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(msg.routing_key.to_owned())),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(msg.routing_key.to_owned())),
        }
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

/// Exponential backoff for reconnect loops: 100 ms doubling to 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)).min(5_000))
}
