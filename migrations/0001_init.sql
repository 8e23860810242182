-- The read model, the event log, the command outbox, assets, API keys.

CREATE TABLE jobs (
    job_id      uuid PRIMARY KEY,
    tenant      text NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- The whole JobView (domain::job) as JSON: the projector folds into it under a row lock.
    view        jsonb NOT NULL
);
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, job_id DESC);
CREATE INDEX jobs_status ON jobs (status) WHERE status IN ('pending', 'running');

-- Every event ever applied, exactly once (message_id), in arrival order (id). Replay folds it.
CREATE TABLE events (
    id           bigserial UNIQUE,
    message_id   uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    tenant       text NOT NULL,
    type         text NOT NULL,
    version      integer NOT NULL,
    attempt      integer NOT NULL,
    seq          bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    envelope     jsonb NOT NULL
);
CREATE INDEX events_job ON events (job_id, attempt, seq);

-- Commands written in the same transaction as their job, published after commit, deleted after
-- the broker confirms. A relay re-publishes rows whose first publish did not confirm.
CREATE TABLE outbox (
    message_id       uuid PRIMARY KEY,
    job_id           uuid NOT NULL,
    routing_key      text NOT NULL,
    body             bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (next_attempt_at);

CREATE TABLE assets (
    job_id       uuid NOT NULL,
    asset_id     text NOT NULL,
    tenant       text NOT NULL,
    storage_key  text NOT NULL,
    mime_type    text NOT NULL,
    size_bytes   bigint NOT NULL,
    sha256       text NOT NULL,
    PRIMARY KEY (job_id, asset_id)
);

CREATE TABLE api_keys (
    key_id        uuid PRIMARY KEY,
    tenant        text NOT NULL,
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
