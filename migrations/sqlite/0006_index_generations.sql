-- A collection's searchable vectors live in index generation
-- `index_generation`, built with `embedder`. A reindex builds generation
-- `pending_generation` with `pending_embedder` beside it (ingestion writes
-- to both meanwhile) and swaps the columns when it is done.
ALTER TABLE collections ADD COLUMN index_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE collections ADD COLUMN pending_generation BIGINT;
ALTER TABLE collections ADD COLUMN pending_embedder TEXT;
ALTER TABLE collections ADD COLUMN pending_dimensions BIGINT;
ALTER TABLE collections ADD COLUMN reindex_job TEXT;
