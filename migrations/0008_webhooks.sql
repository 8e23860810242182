-- Webhooks (issue 16). A tenant's endpoint: where its jobs' outcomes are posted by default and
-- the secret they are signed with (a job's own webhook_url overrides the URL, never the secret).
CREATE TABLE webhook_endpoints (
    tenant      text PRIMARY KEY,
    url         text NOT NULL,
    -- `whsec_` + base64 of the key, as the Standard Webhooks spec writes it; shown once.
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One delivery per job and outcome, written by the projector in the transaction that makes the
-- job terminal (the outbox of webhooks). Keyed by (job_id, event) so that a duplicate or
-- reordered event inserts nothing new; `id` orders a job's deliveries, which go out one at a
-- time in that order. The body is rendered once, so every retry sends the same bytes.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    delivery_id      uuid NOT NULL UNIQUE,
    job_id           uuid NOT NULL,
    tenant           text NOT NULL,
    event            text NOT NULL,
    -- The job's own URL; NULL sends to the tenant's endpoint as it is at send time.
    url              text,
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- pending: to send (or being sent: next_attempt_at is then the lease's end);
    -- delivered: a 2xx came back; failed: retries exhausted or a 4xx (redeliver resets it).
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, event)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id);

-- Every attempt, for GET /bd/jobs/{id}/webhooks and for operators.
CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      uuid NOT NULL,
    -- The attempt's number within its round (a redelivery starts a new round at 1).
    attempt          integer NOT NULL,
    job_id           uuid NOT NULL,
    attempted_at     timestamptz NOT NULL,
    status_code      integer,
    latency_ms       integer NOT NULL,
    error            text,
    next_attempt_at  timestamptz
);
CREATE INDEX webhook_attempts_job ON webhook_attempts (job_id);
