//! RabbitMQ through lapin: the topology of one namespace, a publisher that waits for confirms and
//! reconnects on its own, and helpers for consumers.
//!
//! Topology (`NS` = `BDJOBS_NAMESPACE`), all durable:
//! - `NS.commands` (direct) → quorum queue `NS.jobs` (keys `job.run`, `job.run_chunk`), consumed
//!   by workers;
//! - `NS.events` (topic) → quorum queue `NS.projector` (key `job.#`), consumed by projectors;
//! - `NS.dlx` (fanout) → quorum queue `NS.dead`: what the two queues dead-letter, either after
//!   `DELIVERY_LIMIT` redeliveries or because a consumer rejected it as malformed.
//!
//! A broker URL may list several nodes of one cluster (`AMQP_URL=amqp://n1,amqp://n2,...`):
//! [`connect`] tries them in an order shuffled once per process, so the processes of a
//! deployment spread over the nodes, and every new connection (a reconnect after a node was
//! lost included) starts at the node after the last one that answered.

use crate::adapters::Retryable;
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
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
    #[error("invalid AMQP_URL: {0}")]
    Config(String),
    #[error("no broker node answered ({0})")]
    NoNode(String),
}

impl crate::adapters::Retryable for BrokerError {
    /// Everything but an unroutable message can succeed on a later try (after a reconnect).
    fn is_retryable(&self) -> bool {
        !matches!(
            self,
            BrokerError::Unroutable(_) | BrokerError::Config(_) | BrokerError::TooLarge { .. }
        )
    }
}

/// How many nodes a quorum queue is created on (`x-quorum-initial-group-size`): three survive
/// the loss of any one. RabbitMQ uses every node of a smaller cluster, so one node is fine too.
pub const QUORUM_GROUP_SIZE: i64 = 3;

/// How long one node may take to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The node URLs of a broker setting: comma-separated, each `amqp://` or `amqps://`; blanks
/// around commas are ignored. Errors name the bad entry (without its password).
pub fn parse_urls(list: &str) -> Result<Vec<String>, BrokerError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(BrokerError::Config("no node URL given".into()));
    }
    for url in &urls {
        lapin::uri::AMQPUri::from_str(url)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", node_label(url))))?;
    }
    Ok(urls)
}

/// `host:port` of a node URL, for logs: never the credentials.
pub fn node_label(url: &str) -> String {
    match lapin::uri::AMQPUri::from_str(url) {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// The nodes of one broker setting in this process's order, and where the next connection
/// starts.
#[derive(Debug)]
pub struct Nodes {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl Nodes {
    /// The nodes in the given order (tests); [`Nodes::of`] shuffles them.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            next: AtomicUsize::new(0),
        }
    }

    /// The process-wide rotation of `list`, shuffled when first asked for: every connection of
    /// the process to this broker shares one rotation, so a lost node is skipped by all of them.
    pub fn of(list: &str) -> Result<Arc<Nodes>, BrokerError> {
        static ROTATIONS: LazyLock<std::sync::Mutex<HashMap<String, Arc<Nodes>>>> =
            LazyLock::new(Default::default);
        let mut rotations = ROTATIONS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nodes) = rotations.get(list) {
            return Ok(nodes.clone());
        }
        let mut urls = parse_urls(list)?;
        rand::seq::SliceRandom::shuffle(urls.as_mut_slice(), &mut rand::rng());
        let nodes = Arc::new(Nodes::new(urls));
        rotations.insert(list.to_owned(), nodes.clone());
        Ok(nodes)
    }

    /// Every node once, starting where the next connection should: `(index, url)`.
    pub fn rotation(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.next.load(Ordering::Relaxed);
        let n = self.urls.len();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, self.urls[i].as_str())
        })
    }

    /// Records that node `i` answered: the next connection starts at the node after it.
    pub fn answered(&self, i: usize) {
        self.next
            .store((i + 1) % self.urls.len(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
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

    fn quorum_args(&self, dead_letter: bool, group_size: bool) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        if group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(QUORUM_GROUP_SIZE),
            );
        }
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

    /// Declares everything, on channels of its own (idempotent: every role calls it at start
    /// and after a reconnect, on whichever node it reached).
    ///
    /// `x-quorum-initial-group-size` only matters when a queue is created, but RabbitMQ compares
    /// it when a queue is declared again: a queue created without it (by an earlier bdjobs) is
    /// refused with PRECONDITION_FAILED, which closes the channel. Such a queue is declared
    /// again, on a new channel, as it was created.
    pub async fn declare(&self, conn: &Connection) -> Result<(), BrokerError> {
        let channel = conn.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (exchange, kind) in [
            (self.commands_exchange(), ExchangeKind::Direct),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
                .await?;
        }
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
        let mut channel = channel;
        for (queue, exchange, key, dead_letter) in queues {
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            match channel
                .queue_declare(
                    queue.clone().into(),
                    options,
                    self.quorum_args(dead_letter, true),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_precondition_failed(&e) => {
                    tracing::info!(queue, "queue predates its group size; declared as it is");
                    channel = conn.create_channel().await?;
                    channel
                        .queue_declare(
                            queue.clone().into(),
                            options,
                            self.quorum_args(dead_letter, false),
                        )
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
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
        let _ = channel.close(200, "declared".into()).await;
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

/// Whether a channel was closed for a declaration that does not match the existing one.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Connects to the first node of `urls` (one URL or a comma-separated list of a cluster's
/// nodes) that answers, in this process's rotation (see [`Nodes`]), and logs which node it is.
pub async fn connect(urls: &str, name: &str) -> Result<Connection, BrokerError> {
    let nodes = Nodes::of(urls)?;
    let mut failures = Vec::new();
    for (i, url) in nodes.rotation() {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await;
        match attempt {
            Ok(Ok(conn)) => {
                nodes.answered(i);
                tracing::info!(node = %node_label(url), connection = name, "connected to RabbitMQ");
                return Ok(conn);
            }
            Ok(Err(e)) if nodes.len() == 1 => return Err(e.into()),
            Ok(Err(e)) => failures.push(format!("{}: {e}", node_label(url))),
            Err(_) => failures.push(format!(
                "{}: no answer in {CONNECT_TIMEOUT:?}",
                node_label(url)
            )),
        }
    }
    Err(BrokerError::NoNode(failures.join("; ")))
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
    topology.declare(&conn).await?;
    let channel = consumer_channel(&conn, prefetch).await?;
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
        self.topology.declare(&conn).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
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
    fn one_url_is_a_list_of_one_node() {
        let urls = parse_urls("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(urls, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    }

    #[test]
    fn a_comma_separated_list_gives_each_node_with_blanks_trimmed() {
        let urls =
            parse_urls(" amqp://a:1@n1:5672/%2f , amqp://a:1@n2:5673/%2f,,amqps://n3/v ").unwrap();
        assert_eq!(
            urls,
            [
                "amqp://a:1@n1:5672/%2f",
                "amqp://a:1@n2:5673/%2f",
                "amqps://n3/v"
            ]
        );
    }

    #[test]
    fn an_empty_list_or_a_bad_entry_is_an_error_that_hides_passwords() {
        assert!(matches!(parse_urls(" , "), Err(BrokerError::Config(_))));
        let e = parse_urls("amqp://u:secret@n1:5672/%2f,http://u:secret@n2/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("invalid AMQP_URL"), "{e}");
    }

    #[test]
    fn a_node_label_is_host_and_port_without_credentials() {
        assert_eq!(node_label("amqp://u:pw@rabbit-2:5673/%2f"), "rabbit-2:5673");
        assert_eq!(node_label("amqp://rabbit"), "rabbit:5672");
    }

    fn order(nodes: &Nodes) -> Vec<usize> {
        nodes.rotation().map(|(i, _)| i).collect()
    }

    #[test]
    fn the_rotation_tries_every_node_once_starting_after_the_last_that_answered() {
        let nodes = Nodes::new(vec![
            "amqp://a".into(),
            "amqp://b".into(),
            "amqp://c".into(),
        ]);
        assert_eq!(order(&nodes), [0, 1, 2]);
        nodes.answered(0);
        assert_eq!(order(&nodes), [1, 2, 0]);
        // b was lost, c answered the reconnect: the next connection starts at a again.
        nodes.answered(2);
        assert_eq!(order(&nodes), [0, 1, 2]);
    }

    #[test]
    fn a_process_shuffles_a_list_once_and_keeps_its_rotation() {
        let list = "amqp://r1,amqp://r2,amqp://r3,amqp://r4,amqp://r5";
        let a = Nodes::of(list).unwrap();
        let b = Nodes::of(list).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let mut seen: Vec<&str> = a.rotation().map(|(_, u)| u).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            [
                "amqp://r1",
                "amqp://r2",
                "amqp://r3",
                "amqp://r4",
                "amqp://r5"
            ]
        );
    }
}
