-- A client's request to cancel a running job. Set by the API; read by workers at every stage
-- boundary. Not part of the view: it matters only while the job runs.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
