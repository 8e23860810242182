//! The broker's raw limit, measured with lapin alone: persistent messages published with
//! confirms (a window of them in flight) while consumers take and acknowledge them one by one,
//! through the same quorum queues the application uses.

use crate::env::Env;
use anyhow::Context;
use bdjobs::adapters::broker::{self, RUN_JOB_KEY};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::{Duration, Instant};

/// One message to publish.
pub struct Msg {
    pub routing_key: String,
    pub message_id: String,
    pub kind: String,
    pub body: Vec<u8>,
}

pub async fn confirm_channel(conn: &lapin::Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes every message as the application does (persistent, mandatory, confirmed), keeping
/// up to `window` confirms outstanding.
pub async fn publish_windowed(
    ch: &Channel,
    exchange: &str,
    msgs: impl IntoIterator<Item = Msg>,
    window: usize,
) -> anyhow::Result<usize> {
    let mut pending = FuturesUnordered::new();
    let mut n = 0;
    let check = |c: Result<Confirmation, lapin::Error>| -> anyhow::Result<()> {
        match c? {
            Confirmation::Ack(None) => Ok(()),
            other => anyhow::bail!("publish not confirmed: {other:?}"),
        }
    };
    for m in msgs {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(m.message_id.into())
            .with_type(m.kind.into());
        let confirm = ch
            .basic_publish(
                exchange.to_owned().into(),
                m.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &m.body,
                props,
            )
            .await?;
        pending.push(confirm);
        n += 1;
        if pending.len() >= window {
            check(pending.next().await.expect("pending confirm"))?;
        }
    }
    while let Some(c) = pending.next().await {
        check(c)?;
    }
    Ok(n)
}

/// Consumes and acknowledges `n` messages from `queue`, one ack each.
async fn consume_n(ch: Channel, queue: String, n: usize) -> anyhow::Result<()> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("no delivery for 60 s")?
            .context("consumer closed")??;
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Moves `jobs * per_job` messages of `body_len` bytes through the namespace's queues in the
/// application's proportions (one command per job to the jobs queue, the rest to the projector
/// queue), and returns how long it took from the first publish to the last ack.
pub async fn publish_and_consume(
    env: &Env,
    jobs: usize,
    per_job: usize,
    body_len: usize,
    window: usize,
    prefetch: u16,
) -> anyhow::Result<Duration> {
    env.declare().await?;
    let topo = env.topology();
    let conn = broker::connect(&env.config.amqp_url, "bench-raw").await?;
    let body = vec![b'x'; body_len];
    let events_per_job = per_job.saturating_sub(1);
    let mut consumers = Vec::new();
    for (queue, n) in [
        (topo.jobs_queue(), jobs),
        (topo.projector_queue(), jobs * events_per_job),
    ] {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        consumers.push(tokio::spawn(consume_n(ch, queue, n)));
    }
    let started = Instant::now();
    let commands = {
        let ch = confirm_channel(&conn).await?;
        let exchange = topo.commands_exchange();
        let body = body.clone();
        tokio::spawn(async move {
            publish_windowed(
                &ch,
                &exchange,
                (0..jobs).map(|_| Msg {
                    routing_key: RUN_JOB_KEY.to_owned(),
                    message_id: uuid::Uuid::new_v4().to_string(),
                    kind: "job.run".to_owned(),
                    body: body.clone(),
                }),
                window,
            )
            .await
        })
    };
    let events = {
        let ch = confirm_channel(&conn).await?;
        let exchange = topo.events_exchange();
        tokio::spawn(async move {
            publish_windowed(
                &ch,
                &exchange,
                (0..jobs * events_per_job).map(|_| Msg {
                    routing_key: "job.progress".to_owned(),
                    message_id: uuid::Uuid::new_v4().to_string(),
                    kind: "job.progress".to_owned(),
                    body: body.clone(),
                }),
                window,
            )
            .await
        })
    };
    commands.await??;
    events.await??;
    for c in consumers {
        c.await??;
    }
    let took = started.elapsed();
    conn.close(200, "done".into()).await?;
    Ok(took)
}
