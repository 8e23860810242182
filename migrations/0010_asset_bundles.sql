-- A finished job's assets are stored as one object (issue 18): the JSON and the CSV rendering of
-- the same contacts, one after the other, and the jobs a projector batch finishes together share
-- one object per tenant, so the projector creates and fsyncs one file per batch instead of two
-- per job. Each asset is the slice [byte_offset, byte_offset + size_bytes) of its object.
-- Rows written before this migration name an object of their own, from its first byte.
ALTER TABLE assets ADD COLUMN byte_offset bigint NOT NULL DEFAULT 0 CHECK (byte_offset >= 0);
