-- The shadow table `bdjobs replay` rebuilds views into before swapping them into `jobs`.
-- Rows belong to one run (run_id), so concurrent replays do not mix; a run deletes its rows
-- when it swaps. Unlogged: it is scratch space that a replay can always recompute.
CREATE UNLOGGED TABLE jobs_rebuild (
    run_id      uuid NOT NULL,
    job_id      uuid NOT NULL,
    tenant      text NOT NULL,
    -- NULL when the job's events fold to no view (no job.created): the job has no row.
    status      text,
    created_at  timestamptz,
    updated_at  timestamptz,
    view        jsonb,
    -- The asset index rows of a completed job (objects are already in storage).
    assets      jsonb NOT NULL DEFAULT '[]',
    built_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, job_id)
);

-- Compaction looks for old progress events; replay and export scan by tenant.
CREATE INDEX events_progress_age ON events (occurred_at) WHERE type = 'job.progress';
CREATE INDEX events_tenant ON events (tenant, id);
