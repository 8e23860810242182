//! `bdjobs dlq list` and `bdjobs dlq redrive`: inspect the dead-letter queue and send its messages
//! back where they came from.
//!
//! A message lands in `NS.dead` when a consumer rejected it as malformed or when its queue's
//! delivery limit ran out. Redriving republishes it (with a confirm) to the exchange that feeds
//! its original queue, then removes it from `NS.dead`; a message that is still malformed simply
//! comes back, so a redrive can do no harm beyond one more trip.

use crate::adapters::broker::{self, BrokerError, Outgoing, Publisher, Topology, RUN_JOB_KEY};
use crate::adapters::progress;
use crate::domain::messages::RawEnvelope;
use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use std::process::ExitCode;

/// One dead message, as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadMessage {
    pub message_id: String,
    pub kind: String,
    pub job_id: Option<String>,
    /// The queue it was dead-lettered from.
    pub queue: Option<String>,
    /// `rejected` (malformed), `delivery_limit`, ...
    pub reason: Option<String>,
    pub bytes: usize,
}

fn header(props: &lapin::BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn describe(delivery: &lapin::message::Delivery) -> DeadMessage {
    let props = &delivery.properties;
    let envelope = RawEnvelope::from_slice(&delivery.data).ok();
    DeadMessage {
        message_id: props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        kind: props
            .kind()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .or_else(|| envelope.as_ref().map(|e| e.kind.clone()))
            .unwrap_or_default(),
        job_id: envelope.map(|e| e.job_id.to_string()),
        queue: header(props, "x-first-death-queue"),
        reason: header(props, "x-first-death-reason"),
        bytes: delivery.data.len(),
    }
}

/// Reads up to `limit` dead messages without removing any of them.
pub async fn list(
    amqp_url: &str,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadMessage>, BrokerError> {
    let conn = broker::connect(amqp_url, "bdjobs-dlq").await?;
    topology.declare(&conn).await?;
    let channel = conn.create_channel().await?;
    let mut held = Vec::new();
    while held.len() < limit {
        match channel
            .basic_get(
                topology.dead_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            Some(msg) => held.push(msg.delivery),
            None => break,
        }
    }
    let out = held.iter().map(describe).collect();
    // Holding every message until the end keeps each one from being read twice; releasing them
    // puts them all back.
    broker::release(&held).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Where a dead message goes back to: the exchange and routing key that feed its original queue.
fn origin<'a>(topology: &Topology, msg: &'a DeadMessage) -> Option<(String, &'a str)> {
    let queue = msg.queue.as_deref()?;
    if queue == topology.jobs_queue() {
        Some((topology.commands_exchange(), RUN_JOB_KEY))
    } else if queue == topology.projector_queue() && msg.kind.starts_with("job.") {
        Some((topology.events_exchange(), msg.kind.as_str()))
    } else {
        None
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    pub republished: usize,
    /// Messages with no known origin (published to the dead-letter exchange by hand): left in place.
    pub left: usize,
}

/// Republishes up to `limit` dead messages to their origin, each removed only after its
/// republish is confirmed. `on_each` is called after every message (for a progress bar).
pub async fn redrive(
    amqp_url: &str,
    topology: &Topology,
    limit: usize,
    mut on_each: impl FnMut(&DeadMessage),
) -> Result<Redriven, BrokerError> {
    let conn = broker::connect(amqp_url, "bdjobs-dlq").await?;
    topology.declare(&conn).await?;
    let channel = conn.create_channel().await?;
    let publisher = Publisher::new(amqp_url, "bdjobs-dlq-redrive", topology.clone());
    let mut done = Redriven::default();
    let mut skipped = Vec::new();
    while done.republished + done.left < limit {
        let Some(msg) = channel
            .basic_get(
                topology.dead_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let d = msg.delivery;
        let info = describe(&d);
        match origin(topology, &info) {
            Some((exchange, key)) => {
                let correlation = broker::correlation_id_of(&d.properties);
                publisher
                    .publish(Outgoing {
                        exchange: &exchange,
                        routing_key: key,
                        message_id: &info.message_id,
                        kind: &info.kind,
                        body: &d.data,
                        correlation_id: correlation.as_deref(),
                    })
                    .await?;
                d.acker.ack(BasicAckOptions::default()).await?;
                done.republished += 1;
            }
            None => {
                done.left += 1;
                skipped.push(d);
            }
        }
        on_each(&info);
    }
    broker::release(&skipped).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(done)
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List dead messages (they stay in the queue).
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Republish dead messages to the queue they came from, oldest first.
    Redrive {
        /// Re-drive at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

pub async fn run(config: &crate::config::Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let topology = crate::app::topology(config);
    match command {
        DlqCommand::List { limit } => {
            let dead = list(&config.amqp_url, &topology, limit)
                .await
                .context("could not read the dead-letter queue")?;
            println!(
                "{:<38} {:<14} {:<38} {:<22} {:<16} BYTES",
                "MESSAGE", "TYPE", "JOB", "FROM", "REASON"
            );
            for m in &dead {
                println!(
                    "{:<38} {:<14} {:<38} {:<22} {:<16} {}",
                    m.message_id,
                    m.kind,
                    m.job_id.as_deref().unwrap_or("-"),
                    m.queue.as_deref().unwrap_or("-"),
                    m.reason.as_deref().unwrap_or("-"),
                    m.bytes
                );
            }
            eprintln!("{} dead message(s) shown", dead.len());
        }
        DlqCommand::Redrive { limit } => {
            let bar = progress::spinner("re-driving dead messages");
            let done = redrive(&config.amqp_url, &topology, limit, |_| bar.inc(1))
                .await
                .context("re-drive failed")?;
            bar.finish_and_clear();
            println!(
                "republished {} message(s); left {} with no known origin",
                done.republished, done.left
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
