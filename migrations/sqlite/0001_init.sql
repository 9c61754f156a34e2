-- Shared conventions (identical in the PostgreSQL schema, so one set of
-- queries serves both engines): ids are uuid strings, JSON is TEXT,
-- timestamps are BIGINT unix milliseconds.

CREATE TABLE collections (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    embedder    TEXT NOT NULL,
    dimensions  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (tenant, name)
);

CREATE TABLE documents (
    id            TEXT PRIMARY KEY NOT NULL,
    collection_id TEXT NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    tenant        TEXT NOT NULL,
    external_id   TEXT,
    title         TEXT NOT NULL,
    source_name   TEXT,
    media_type    TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    metadata      TEXT NOT NULL,
    acl           TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    failure       TEXT,
    version       BIGINT NOT NULL DEFAULT 1,
    chunk_count   BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX documents_collection_id ON documents (collection_id, id);
CREATE INDEX documents_collection_status ON documents (collection_id, status);
CREATE INDEX documents_collection_content_hash ON documents (collection_id, content_hash);
CREATE INDEX documents_collection_external_id ON documents (collection_id, external_id);

-- document_id and collection_id name the job's subject so that deleting it
-- can cancel the job; no foreign keys, because jobs outlive their subjects.
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL,
    worker        TEXT,
    lease_until   BIGINT,
    run_after     BIGINT NOT NULL,
    error         TEXT,
    document_id   TEXT,
    collection_id TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_document_id ON jobs (document_id);
CREATE INDEX jobs_collection_id ON jobs (collection_id);
