-- Events the projector could never apply (a permanent database error, such as jsonb refusing a
-- NUL): one row each, written when the event is dead-lettered and its job failed. The row ties
-- the reference quoted in the job's error_message to the event; /metrics counts the rows.
CREATE TABLE projector_rejections (
    message_id   uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    tenant       text NOT NULL,
    type         text NOT NULL,
    reference    text NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);
