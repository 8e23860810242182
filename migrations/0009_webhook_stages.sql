-- A job that asks for its stages (`webhook_stages`) gets one `job.stage` delivery per stage it
-- reaches, so (job_id, event) no longer names one delivery. `delivery_id`, derived from the job
-- and its outcome or stage, stays unique: a repeated transition conflicts on it and queues nothing.
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_job_id_event_key;
