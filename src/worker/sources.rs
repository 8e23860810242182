//! Where the pipeline gets its facts. Each source is a small trait so that a commercial data
//! provider, or a fake in a test, can stand in without touching the pipeline.

use crate::adapters::db::{self, DbError};
use crate::adapters::Retryable;
use crate::domain::stages::{DirectoryCompany, DirectoryPerson};
use async_trait::async_trait;
use deadpool_postgres::Pool;

/// Companies and people by domain.
#[async_trait]
pub trait Directory: Send + Sync {
    async fn companies(&self, domains: &[String]) -> Result<Vec<DirectoryCompany>, DbError>;
    async fn people(&self, domains: &[String]) -> Result<Vec<DirectoryPerson>, DbError>;
}

/// The directory imported into Postgres with `bdjobs directory import`.
pub struct PgDirectory(pub Pool);

#[async_trait]
impl Directory for PgDirectory {
    async fn companies(&self, domains: &[String]) -> Result<Vec<DirectoryCompany>, DbError> {
        db::directory::companies(&self.0, domains).await
    }
    async fn people(&self, domains: &[String]) -> Result<Vec<DirectoryPerson>, DbError> {
        db::directory::people(&self.0, domains).await
    }
}

/// A fixed in-memory directory, for tests and for embedding.
#[derive(Default, Clone)]
pub struct StaticDirectory {
    pub companies: Vec<DirectoryCompany>,
    pub people: Vec<DirectoryPerson>,
}

#[async_trait]
impl Directory for StaticDirectory {
    async fn companies(&self, domains: &[String]) -> Result<Vec<DirectoryCompany>, DbError> {
        Ok(self
            .companies
            .iter()
            .filter(|c| domains.contains(&c.domain))
            .cloned()
            .collect())
    }
    async fn people(&self, domains: &[String]) -> Result<Vec<DirectoryPerson>, DbError> {
        Ok(self
            .people
            .iter()
            .filter(|p| domains.contains(&p.company_domain))
            .cloned()
            .collect())
    }
}

/// Whether a client asked to cancel a job. Checked at every stage boundary.
#[async_trait]
pub trait CancelSignal: Send + Sync {
    async fn requested(&self, job: crate::domain::ids::JobId) -> bool;
}

/// Reads the flag the API sets in the `jobs` table. A database that cannot answer means "not
/// cancelled": the check runs again at the next stage.
pub struct PgCancelSignal(pub Pool);

#[async_trait]
impl CancelSignal for PgCancelSignal {
    async fn requested(&self, job: crate::domain::ids::JobId) -> bool {
        db::jobs::cancel_requested(&self.0, job)
            .await
            .unwrap_or(false)
    }
}

/// Never cancels (jobs run where no one can ask).
pub struct NeverCancel;

#[async_trait]
impl CancelSignal for NeverCancel {
    async fn requested(&self, _: crate::domain::ids::JobId) -> bool {
        false
    }
}

/// The `job.chunk_completed` reports of a job recorded so far, payloads included.
#[async_trait]
pub trait ChunkLog: Send + Sync {
    async fn reports(
        &self,
        job: crate::domain::ids::JobId,
    ) -> Result<Vec<crate::domain::messages::RawEnvelope>, super::WorkerError>;
}

/// The event log in Postgres: a report is there once a projector applied it. The log keeps
/// payloads inline, but a claim check met there is opened from storage all the same.
pub struct PgChunkLog {
    pub pool: Pool,
    pub storage: opendal::Operator,
}

#[async_trait]
impl ChunkLog for PgChunkLog {
    async fn reports(
        &self,
        job: crate::domain::ids::JobId,
    ) -> Result<Vec<crate::domain::messages::RawEnvelope>, super::WorkerError> {
        let mut reports = db::jobs::chunk_reports(&self.pool, job).await?;
        for r in &mut reports {
            crate::adapters::claims::open(&self.storage, r)
                .await
                .map_err(super::WorkerError::from_claim)?;
        }
        Ok(reports)
    }
}

/// No log: no chunk is ever done (for runs that never split).
pub struct NoChunkLog;

#[async_trait]
impl ChunkLog for NoChunkLog {
    async fn reports(
        &self,
        _: crate::domain::ids::JobId,
    ) -> Result<Vec<crate::domain::messages::RawEnvelope>, super::WorkerError> {
        Ok(Vec::new())
    }
}

/// Retries a directory whose database is briefly away (a restart, a failover) with backoff, for
/// up to `patience`, so that such an outage delays jobs instead of spending their delivery
/// attempts.
pub struct Patient<D> {
    pub inner: D,
    pub patience: std::time::Duration,
}

impl<D> Patient<D> {
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut failures = 0u32;
        loop {
            match call().await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "directory unavailable; retrying");
                    tokio::time::sleep(crate::adapters::broker::backoff(failures)).await;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl<D: Directory> Directory for Patient<D> {
    async fn companies(&self, domains: &[String]) -> Result<Vec<DirectoryCompany>, DbError> {
        self.retry(|| self.inner.companies(domains)).await
    }
    async fn people(&self, domains: &[String]) -> Result<Vec<DirectoryPerson>, DbError> {
        self.retry(|| self.inner.people(domains)).await
    }
}
