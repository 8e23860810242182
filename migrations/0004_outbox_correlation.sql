-- The correlation id of the request that created a job, published with its command as the AMQP
-- header x-correlation-id (also by the relay, which publishes from this table alone).
ALTER TABLE outbox ADD COLUMN correlation_id text;
