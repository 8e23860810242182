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

/// One run's view of another signal, asked at most once per `every`: a job of a few
/// milliseconds then costs the database the one read its worker makes before starting it
/// ([`Throttled::seeded`]) instead of one per stage boundary. A cancellation is noticed at the
/// first boundary at least `every` after the last look, and once seen it stays seen.
pub struct Throttled {
    inner: std::sync::Arc<dyn CancelSignal>,
    every: std::time::Duration,
    /// Whether a cancel was seen, and when `inner` was last asked.
    state: std::sync::Mutex<(bool, Option<std::time::Instant>)>,
}

impl Throttled {
    /// Asks `inner` at the first check.
    pub fn new(inner: std::sync::Arc<dyn CancelSignal>, every: std::time::Duration) -> Self {
        Self {
            inner,
            every,
            state: std::sync::Mutex::new((false, None)),
        }
    }

    /// As if `inner` had just answered `requested` (the worker read it with the job's status).
    pub fn seeded(self, requested: bool) -> Self {
        *self.state.lock().expect("cancel state") = (requested, Some(std::time::Instant::now()));
        self
    }
}

#[async_trait]
impl CancelSignal for Throttled {
    async fn requested(&self, job: crate::domain::ids::JobId) -> bool {
        {
            let (seen, asked) = *self.state.lock().expect("cancel state");
            if seen || asked.is_some_and(|at| at.elapsed() < self.every) {
                return seen;
            }
        }
        let now = self.inner.requested(job).await;
        let mut state = self.state.lock().expect("cancel state");
        *state = (state.0 || now, Some(std::time::Instant::now()));
        state.0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::JobId;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts the questions; answers `cancel` from the `after`-th on.
    struct Counting {
        asked: AtomicUsize,
        after: usize,
    }

    #[async_trait]
    impl CancelSignal for Counting {
        async fn requested(&self, _: JobId) -> bool {
            self.asked.fetch_add(1, Ordering::SeqCst) + 1 >= self.after
        }
    }

    fn counting(after: usize) -> Arc<Counting> {
        Arc::new(Counting {
            asked: AtomicUsize::new(0),
            after,
        })
    }

    #[tokio::test]
    async fn a_throttled_signal_asks_its_source_at_most_once_per_interval() {
        let job = JobId::new();
        let inner = counting(usize::MAX);
        let signal = Throttled::new(inner.clone(), Duration::from_secs(3600));
        for _ in 0..5 {
            assert!(!signal.requested(job).await);
        }
        assert_eq!(inner.asked.load(Ordering::SeqCst), 1);
        let inner = counting(usize::MAX);
        let signal = Throttled::new(inner.clone(), Duration::ZERO);
        for _ in 0..3 {
            assert!(!signal.requested(job).await);
        }
        assert_eq!(
            inner.asked.load(Ordering::SeqCst),
            3,
            "once the interval has passed"
        );
    }

    #[tokio::test]
    async fn a_seeded_signal_answers_from_the_seed_until_the_interval_passes() {
        let job = JobId::new();
        let inner = counting(1);
        let quiet = Throttled::new(inner.clone(), Duration::from_secs(3600)).seeded(false);
        assert!(!quiet.requested(job).await);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 0);
        let passed = Throttled::new(inner.clone(), Duration::ZERO).seeded(false);
        assert!(
            passed.requested(job).await,
            "the source is asked and says cancel"
        );
        let cancelled =
            Throttled::new(counting(usize::MAX), Duration::from_secs(3600)).seeded(true);
        assert!(cancelled.requested(job).await);
    }

    /// Says cancel once, then forgets it.
    struct Forgetful(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl CancelSignal for Forgetful {
        async fn requested(&self, _: JobId) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_cancel_once_seen_stays_seen() {
        let inner = Arc::new(Forgetful(std::sync::atomic::AtomicBool::new(true)));
        let signal = Throttled::new(inner, Duration::ZERO);
        let job = JobId::new();
        assert!(signal.requested(job).await);
        assert!(signal.requested(job).await, "a run is never un-cancelled");
    }
}
