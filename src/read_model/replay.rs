//! `bdjobs replay`: rebuilds the read model — the `jobs` views and the asset index with the
//! assets' bytes — from the event log, for everything, one tenant or one job.
//!
//! Afterwards every API answer is what folding the log gives: the same JSON the projector
//! produced, the same asset bytes (both come from `domain::job::fold` and
//! `assets::render_assets`, the code the projector runs).
//!
//! # Rebuilding while projectors run
//!
//! A rebuild takes a while; projectors (and the API creating jobs) keep writing meanwhile. The
//! rebuild is therefore done in three steps ([`Rebuild`]):
//!
//! 1. **start**: take the log's high-water mark `H`: the highest `events.id` such that every event
//!    at or below it is committed. `events.id` is a sequence, and a transaction may commit id 7
//!    after another committed id 8, so `max(id)` alone could skip 7 for good; briefly locking
//!    `events` in SHARE mode waits out every inserting transaction first.
//! 2. **build** (no locks, as long as it takes): fold each job's events up to `H` into the shadow
//!    table `jobs_rebuild` (rows tagged with this run's id, so concurrent runs do not mix), and
//!    write each completed job's asset object to storage. Each is written under the job's own
//!    key with the bytes the projector would write for the same winning event, so writing them
//!    early changes nothing a reader can see. (The projector puts the jobs one batch decides
//!    together into one shared object instead; the swap re-points those jobs' rows to their
//!    own objects, with the same bytes, which is why a replay after live projection reports
//!    their assets as changed and a second replay does not.)
//! 3. **swap** (one transaction): lock `events` and then `jobs` in SHARE ROW EXCLUSIVE mode.
//!    Every writer of the read model (the projector's step, the API's job creation) appends to
//!    `events` first and then updates `jobs`, in one transaction; the first lock waits for those
//!    in flight to commit and holds new ones at their insert, so nothing changes under the
//!    swap, and taking the locks in the writers' own order cannot deadlock with them. Readers
//!    are not blocked. Then re-fold from the whole log every job in scope with an event above
//!    `H` — those applied by live projectors during the build — replace their shadow rows, and
//!    upsert the shadow into `jobs` and `assets` (rows already equal are not rewritten); rows in
//!    scope whose events fold to nothing are removed. Commit releases the writers, who continue
//!    on the swapped views.
//!
//! Why upsert rather than `ALTER TABLE ... RENAME`: a scoped replay (`--tenant`, `--job`) must
//! leave other rows alone, and a rename would need an ACCESS EXCLUSIVE lock that blocks readers
//! too. Only the jobs caught up in step 3 pay for a fold under the lock.
//!
//! Compaction may run concurrently: it only deletes events the fold does not need
//! (`domain::retention`), so a shadow built from more events than remain is still exact.

use super::{assets, ReadModelError};
use crate::adapters::db::events::{self as log, Scope, Swapped};
use crate::adapters::db::DbError;
use crate::adapters::progress;
use crate::adapters::storage::StorageError;
use crate::domain::ids::JobId;
use crate::domain::job::fold;
use crate::domain::messages::{DecodeError, EventRecord, RawEnvelope};
use deadpool_postgres::{GenericClient, Pool};
use indicatif::ProgressBar;
use opendal::Operator;
use uuid::Uuid;

/// Jobs folded per round trip during the build.
const BATCH: usize = 200;

/// Batches the build folds at once.
const BATCHES_IN_FLIGHT: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("the event log holds an event this build cannot read: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Claim(#[from] crate::adapters::claims::ClaimError),
}

impl crate::adapters::Retryable for ReplayError {
    fn is_retryable(&self) -> bool {
        match self {
            ReplayError::Database(e) => e.is_retryable(),
            ReplayError::Storage(e) => e.is_retryable(),
            ReplayError::Decode(_) => false,
            ReplayError::Claim(e) => e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for ReplayError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReplayError::Database(e.into())
    }
}

impl From<ReadModelError> for ReplayError {
    fn from(e: ReadModelError) -> Self {
        match e {
            ReadModelError::Malformed(e) => ReplayError::Decode(e),
            ReadModelError::Database(e) => ReplayError::Database(e),
            ReadModelError::Storage(e) => ReplayError::Storage(e),
            ReadModelError::Claim(e) => ReplayError::Claim(e),
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Jobs whose events were folded (including those caught up at the swap).
    pub jobs: u64,
    /// Jobs that received events while the rebuild ran, re-folded under the swap's lock.
    pub caught_up: u64,
    pub swapped: Swapped,
}

/// One rebuild in progress; see the module documentation for the three steps.
pub struct Rebuild {
    run: Uuid,
    scope: Scope,
    high_water: i64,
    jobs: Vec<JobId>,
}

/// Folds one job's events and renders its assets (not yet stored).
fn rebuild_job(
    events: &[RawEnvelope],
) -> Result<Option<(log::ShadowRow<'_>, Option<assets::RenderedAssets>)>, ReplayError> {
    let records = events
        .iter()
        .map(EventRecord::from_raw)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = events.first() else {
        return Ok(None);
    };
    let view = fold(&records);
    let rendered = view.as_ref().and_then(|view| {
        let winner = assets::winner(view, &records)?;
        assets::render_assets(view, assets::deliverable_of(&winner.event)?)
    });
    let assets = rendered
        .iter()
        .flat_map(|r| &r.assets)
        .map(|(_, id, row)| (id.as_str().to_owned(), row.clone()))
        .collect();
    let row = log::ShadowRow {
        job: first.job_id,
        tenant: &first.tenant,
        view,
        assets,
    };
    Ok(Some((row, rendered)))
}

/// Rebuilds many jobs into the run's shadow: their objects written concurrently first (the
/// shadow names only stored objects), then one statement for all their rows.
async fn rebuild_jobs(
    client: &impl GenericClient,
    storage: &Operator,
    run: Uuid,
    events: &[RawEnvelope],
) -> Result<usize, ReplayError> {
    // Events recorded with a claim check instead of their payload (the log keeps payloads
    // inline, but a log written otherwise replays all the same) are read back first.
    let opened = crate::adapters::claims::open_all(storage, events).await?;
    let events = &*opened;
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    for job_events in by_job(events) {
        if let Some((row, rendered)) = rebuild_job(job_events)? {
            rows.push(row);
            objects.extend(rendered);
        }
    }
    assets::put_assets(storage, &objects).await?;
    log::put_shadows(client, run, &rows).await?;
    Ok(rows.len())
}

/// Splits a run of events ordered by job into one slice per job.
fn by_job(events: &[RawEnvelope]) -> impl Iterator<Item = &[RawEnvelope]> {
    events.chunk_by(|a, b| a.job_id == b.job_id)
}

impl Rebuild {
    /// Step 1: fixes the high-water mark and lists the jobs to fold.
    pub async fn start(pool: &Pool, scope: Scope) -> Result<Self, ReplayError> {
        let mut client = pool.get().await.map_err(DbError::from)?;
        log::prune_shadow(&client).await?;
        let high_water = log::high_water_mark(&mut client).await?;
        let jobs = log::jobs_in_log(&client, &scope, high_water).await?;
        Ok(Self {
            run: Uuid::now_v7(),
            scope,
            high_water,
            jobs,
        })
    }

    /// How many jobs the build folds.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Step 2: folds every job into the shadow table; `bar` advances one per job.
    pub async fn build(
        &self,
        pool: &Pool,
        storage: &Operator,
        bar: &ProgressBar,
    ) -> Result<(), ReplayError> {
        use futures::stream::{StreamExt, TryStreamExt};
        // A few batches at once, each on its own connection: while one waits for Postgres,
        // another folds and renders.
        futures::stream::iter(self.jobs.chunks(BATCH))
            .map(|batch| async move {
                let client = pool.get().await.map_err(DbError::from)?;
                let events = log::events_of_jobs(&client, batch, self.high_water).await?;
                let n = rebuild_jobs(&client, storage, self.run, &events).await?;
                bar.inc(n as u64);
                Ok::<_, ReplayError>(())
            })
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Step 3: catches up with events recorded since the start and swaps, in one transaction.
    pub async fn swap(self, pool: &Pool, storage: &Operator) -> Result<ReplayReport, ReplayError> {
        let mut client = pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await?;
        tx.batch_execute(
            "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
             LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;",
        )
        .await?;
        let late = log::jobs_after(&tx, &self.scope, self.high_water).await?;
        let events = log::events_of_jobs(&tx, &late, i64::MAX).await?;
        rebuild_jobs(&tx, storage, self.run, &events).await?;
        let swapped = log::swap_shadow(&tx, self.run, &self.scope).await?;
        tx.commit().await?;
        let caught_up = late.len() as u64;
        let new_jobs = late.iter().filter(|j| !self.jobs.contains(j)).count() as u64;
        Ok(ReplayReport {
            jobs: self.jobs.len() as u64 + new_jobs,
            caught_up,
            swapped,
        })
    }

    /// Abandons the run, removing its shadow rows.
    pub async fn abandon(self, pool: &Pool) -> Result<(), ReplayError> {
        let client = pool.get().await.map_err(DbError::from)?;
        log::drop_shadow(&client, self.run).await?;
        Ok(())
    }
}

/// The whole replay, with a progress bar on stderr when `show_progress`.
pub async fn replay(
    pool: &Pool,
    storage: &Operator,
    scope: Scope,
    show_progress: bool,
) -> Result<ReplayReport, ReplayError> {
    let rebuild = Rebuild::start(pool, scope).await?;
    let bar = progress::bar(
        show_progress,
        rebuild.jobs() as u64,
        "{spinner} replaying [{bar:40}] {pos}/{len} jobs ({per_sec}, {eta} left)",
    );
    if let Err(e) = rebuild.build(pool, storage, &bar).await {
        bar.abandon();
        // Best effort: a shadow left behind is pruned by a later run anyway.
        let _ = rebuild.abandon(pool).await;
        return Err(e);
    }
    bar.set_message("swapping");
    let report = rebuild.swap(pool, storage).await;
    bar.finish_and_clear();
    report
}
