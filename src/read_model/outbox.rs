//! The outbox after the job's transaction: forgetting rows once their command is on the broker
//! ([`Published`]), and the relay that publishes the rows whose publish did not confirm
//! ([`outbox_relay`]). The API process runs both; the rows themselves are written with the job
//! (`adapters::db::jobs::insert_job`), and every statement lives in `adapters::db::jobs`.
//!
//! Forgetting rows: A job's command is written to the
//! outbox in the job's creating transaction and published at once; the row then only has to go.
//! Deleting it in a transaction of its own would cost every POST a second commit (a WAL flush),
//! so confirmed ids are handed to one task that deletes them many to a statement.
//!
//! Nothing is lost if a delete never happens (a crash, a failed statement): the relay
//! publishes rows older than its grace period again, and workers skip a command whose job has
//! already finished. Ids are handed over with `try_send`, so a full queue falls back to the
//! old one-row delete rather than slowing requests.

use crate::adapters::broker::{Outgoing, Publisher};
use crate::adapters::db;
use crate::domain::messages::RunJob;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Ids one delete statement takes at most.
const BATCH: usize = 1024;

/// Ids waiting before requests delete their own row.
const QUEUE: usize = 8192;

/// Where the API hands the ids of confirmed commands.
#[derive(Clone)]
pub struct Published(mpsc::Sender<Uuid>);

impl Published {
    /// The handle, and the task that deletes: it ends once every handle is dropped and the ids
    /// already handed over are deleted.
    pub fn start(pool: Pool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), tokio::spawn(forget_published(pool, rx)))
    }

    /// Hands over the id of a command the broker confirmed; deletes its row here and now when
    /// the task is behind.
    pub async fn confirmed(&self, pool: &Pool, message_id: Uuid) {
        if self.0.try_send(message_id).is_ok() {
            return;
        }
        if let Err(e) = db::jobs::delete_outbox_rows(pool, &[message_id]).await {
            tracing::warn!(error = %e, "published, but the outbox row stays for the relay");
        }
    }
}

/// How long the first id of a batch waits for others. A row only has to go before the relay's
/// grace period (5 s) ends; at a few hundred jobs a second this makes one delete of dozens of
/// rows out of what would be a delete per job.
const LINGER: Duration = Duration::from_millis(250);

async fn forget_published(pool: Pool, mut rx: mpsc::Receiver<Uuid>) {
    let mut ids = Vec::with_capacity(BATCH);
    // While one delete runs, the next batch gathers in the channel.
    while rx.recv_many(&mut ids, BATCH).await > 0 {
        let until = tokio::time::Instant::now() + LINGER;
        while ids.len() < BATCH {
            let room = BATCH - ids.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut ids, room)).await {
                // Every handle dropped (shutdown): delete what came and end.
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Err(e) = db::jobs::delete_outbox_rows(&pool, &ids).await {
            tracing::warn!(error = %e, rows = ids.len(), "could not delete published outbox rows; the relay will publish them again");
        }
        ids.clear();
    }
}

/// Publishes outbox rows whose fast-path publish did not confirm (broker down at the time,
/// process killed between commit and publish). Any number of API replicas can run it: rows are
/// locked with SKIP LOCKED while being published.
pub async fn outbox_relay(pool: Pool, publisher: Arc<Publisher>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match relay_once(&pool, &publisher, 5.0).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "outbox relay published pending commands"),
            Err(e) => tracing::warn!(error = %e, "outbox relay pass failed"),
        }
    }
}

/// One pass of the relay: returns how many commands it published.
pub async fn relay_once(
    pool: &Pool,
    publisher: &Publisher,
    grace_secs: f64,
) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = db::jobs::due_outbox(&tx, grace_secs, 100).await?;
    let exchange = publisher.topology().commands_exchange();
    let mut published = 0;
    for row in rows {
        let id = row.message_id.to_string();
        match publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &row.routing_key,
                message_id: &id,
                kind: RunJob::TYPE,
                body: &row.body,
                correlation_id: row.correlation_id.as_deref(),
            })
            .await
        {
            Ok(()) => {
                db::jobs::delete_outbox_row(&tx, row.message_id).await?;
                published += 1;
            }
            Err(e) => {
                db::jobs::postpone_outbox_row(&tx, row.message_id).await?;
                tracing::warn!(error = %e, "outbox publish failed");
                break;
            }
        }
    }
    tx.commit().await?;
    Ok(published)
}
