-- Idempotency-Key on POST /api/v1/bd/jobs: a repeated request with the same key from the same
-- tenant gets the first request's job and 202 body back instead of a second job.

CREATE TABLE idempotency_keys (
    tenant        text NOT NULL,
    key           text NOT NULL,
    -- SHA-256 of the request body as sent: the same key with another body is refused.
    request_hash  bytea NOT NULL,
    job_id        uuid NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
