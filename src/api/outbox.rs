//! Forgetting outbox rows once their command is on the broker. A job's command is written to the
//! outbox in the job's creating transaction and published at once; the row then only has to go.
//! Deleting it in a transaction of its own would cost every POST a second commit (a WAL flush),
//! so confirmed ids are handed to one task that deletes them many to a statement.
//!
//! Nothing is lost if a delete never happens (a crash, a failed statement): the relay
//! publishes rows older than its grace period again, and workers skip a command whose job has
//! already finished. Ids are handed over with `try_send`, so a full queue falls back to the
//! old one-row delete rather than slowing requests.

use crate::adapters::db;
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
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

async fn forget_published(pool: Pool, mut rx: mpsc::Receiver<Uuid>) {
    let mut ids = Vec::with_capacity(BATCH);
    // While one delete runs, the next batch gathers in the channel.
    while rx.recv_many(&mut ids, BATCH).await > 0 {
        if let Err(e) = db::jobs::delete_outbox_rows(&pool, &ids).await {
            tracing::warn!(error = %e, rows = ids.len(), "could not delete published outbox rows; the relay will publish them again");
        }
        ids.clear();
    }
}
