//! The read model's one writer: everything that changes the event log (`events`), the job
//! views (`jobs`), the asset index (`assets`) with the asset objects, the outbox and the webhook
//! deliveries goes
//! through this module. The roles call it and never each other:
//!
//! - [`apply`]: the step that appends events to the log and folds them into the views
//!   ([`apply::apply_batch`], used by the projector and by `events import`), the append of an
//!   event born in-process ([`apply::append_and_fold`]: the API's cancellation, the reaper's
//!   failure), the reaper ([`apply::reap_stuck`]) and the fate of an event the database refuses
//!   for good ([`apply::reject`]: counted, and its job failed with a reference);
//! - [`jobs`]: the API's writes, creating a job with its outbox row and cancelling one;
//! - [`assets`]: rendering a finished job's assets and storing them with their index rows;
//! - [`outbox`]: forgetting published commands and relaying the ones whose publish did not
//!   confirm (the API process runs both);
//! - [`replay`]: rebuilding views, index and assets from the log. Its core lives here rather
//!   than in `cli/` because it writes the same tables under the same locking rules as the step;
//!   `cli/replay.rs` only prints;
//! - [`event_log`]: exporting, importing (through the step) and compacting the log;
//! - [`webhooks`]: queuing a job's webhook delivery in the transaction that makes it terminal.
//!
//! SQL stays in `adapters::db`; this module decides what is written and in which transaction.
//! Idempotency: an event whose message id is already in the log is skipped inside the same
//! transaction that would have applied it, so redeliveries and competing projectors change
//! nothing. Ordering: the fold in `domain::job` converges whatever order events arrive in.

pub mod apply;
pub mod assets;
pub mod event_log;
pub mod jobs;
pub mod outbox;
pub mod replay;
pub mod webhooks;

pub use apply::{append_and_fold, apply, apply_batch, reap_stuck, reject, Applied};

use crate::adapters::db::DbError;
use crate::adapters::storage::StorageError;
use crate::domain::messages::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    #[error("malformed event: {0}")]
    Malformed(#[from] DecodeError),
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Claim(#[from] crate::adapters::claims::ClaimError),
}

impl crate::adapters::Retryable for ReadModelError {
    fn is_retryable(&self) -> bool {
        match self {
            ReadModelError::Malformed(_) => false,
            ReadModelError::Database(e) => e.is_retryable(),
            ReadModelError::Storage(e) => e.is_retryable(),
            ReadModelError::Claim(e) => e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for ReadModelError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReadModelError::Database(e.into())
    }
}
