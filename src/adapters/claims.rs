//! Claim checks: a message whose body would be big (a large job's input, a completion's
//! contacts, a chunk's rows) travels as a small envelope naming an object in storage, and the
//! receiver reads the payload back from there. The broker then never carries a bulky payload,
//! whatever the job's size, and no message reaches the publisher's size limit
//! (`BDJOBS_MAX_MESSAGE_BYTES`).
//!
//! Publishers call [`Claims::seal`] (store first, publish after: the object exists before any
//! receiver can see its reference); receivers call [`open`] before decoding.

use super::storage::{self, StorageError};
use crate::domain::messages::{self, RawEnvelope};
use opendal::Operator;
use std::borrow::Cow;

/// The default largest message a process publishes: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The smallest limit accepted: an envelope without its payload must still fit, with room.
pub const MIN_MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("reading a claim-checked payload: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Corrupt(#[from] messages::ClaimError),
}

impl super::Retryable for ClaimError {
    /// A storage outage may pass; a missing or altered object will not.
    fn is_retryable(&self) -> bool {
        match self {
            ClaimError::Storage(e) => e.is_retryable() && !e.is_not_found(),
            ClaimError::Corrupt(_) => false,
        }
    }
}

/// Where a publisher checks out payloads, and above which size it does.
#[derive(Clone)]
pub struct Claims {
    storage: Operator,
    threshold: usize,
}

impl Claims {
    /// Payloads are checked out when the message would exceed a quarter of `max_message_bytes`:
    /// well under the limit, so that the envelope's own fields can never push a message over.
    pub fn new(storage: Operator, max_message_bytes: usize) -> Self {
        Self {
            storage,
            threshold: max_message_bytes.max(MIN_MAX_MESSAGE_BYTES) / 4,
        }
    }

    pub fn storage(&self) -> &Operator {
        &self.storage
    }

    /// The envelope to publish and its body: unchanged when small, otherwise with its payload
    /// stored and replaced by a claim check.
    pub async fn seal(&self, mut raw: RawEnvelope) -> Result<(RawEnvelope, Vec<u8>), StorageError> {
        let body = serde_json::to_vec(&raw).expect("envelopes serialise");
        if body.len() <= self.threshold || raw.payload_ref.is_some() {
            return Ok((raw, body));
        }
        let (key, bytes) = raw.check_out();
        storage::put(&self.storage, &key, bytes).await?;
        let body = serde_json::to_vec(&raw).expect("envelopes serialise");
        Ok((raw, body))
    }
}

/// Puts a claim-checked payload back into its envelope; a no-op for any other envelope.
pub async fn open(storage: &Operator, raw: &mut RawEnvelope) -> Result<(), ClaimError> {
    let Some(check) = &raw.payload_ref else {
        return Ok(());
    };
    let bytes = storage::get(storage, &check.key).await?;
    raw.check_in(&bytes)?;
    Ok(())
}

/// [`open`] for many envelopes; borrows them unchanged when none is claim-checked (the usual
/// case), so that the common path copies nothing.
pub async fn open_all<'a>(
    storage: &Operator,
    raws: &'a [RawEnvelope],
) -> Result<Cow<'a, [RawEnvelope]>, ClaimError> {
    if raws.iter().all(|r| r.payload_ref.is_none()) {
        return Ok(Cow::Borrowed(raws));
    }
    let mut owned = raws.to_vec();
    for raw in &mut owned {
        open(storage, raw).await?;
    }
    Ok(Cow::Owned(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::Retryable;
    use crate::domain::messages::{Event, JobRef, Position, Warning};

    fn warning(len: usize) -> RawEnvelope {
        Event::Warning(Warning {
            message: "w".repeat(len),
        })
        .into_envelope(
            &JobRef::sample(),
            Position { attempt: 1, seq: 1 },
            chrono::Utc::now(),
        )
    }

    #[tokio::test]
    async fn a_big_payload_travels_as_a_reference_and_comes_back_whole() {
        let op = storage::operator("memory://").unwrap();
        let claims = Claims::new(op.clone(), 8192);
        let original = warning(10_000);
        let (sealed, body) = claims.seal(original.clone()).await.unwrap();
        assert!(sealed.payload_ref.is_some());
        assert!(body.len() < 1024, "{} bytes on the wire", body.len());
        let mut received = RawEnvelope::from_slice(&body).unwrap();
        open(&op, &mut received).await.unwrap();
        assert_eq!(received, original);
    }

    #[tokio::test]
    async fn a_small_payload_stays_inline() {
        let claims = Claims::new(storage::operator("memory://").unwrap(), 8192);
        let (sealed, _) = claims.seal(warning(10)).await.unwrap();
        assert!(sealed.payload_ref.is_none());
    }

    #[tokio::test]
    async fn a_reference_to_a_missing_object_is_a_permanent_error() {
        let op = storage::operator("memory://").unwrap();
        let mut raw = warning(10);
        raw.check_out();
        let e = open(&op, &mut raw).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
    }
}
