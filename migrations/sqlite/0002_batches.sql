-- Bulk uploads. A batch records what one upload request did; its documents
-- point back to it, so its progress is counted from the documents table.
-- The row is written when the request ends, with its final counts.

CREATE TABLE batches (
    id            TEXT PRIMARY KEY NOT NULL,
    collection_id TEXT NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    tenant        TEXT NOT NULL,
    accepted      BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    rejected      BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE INDEX batches_collection_id ON batches (collection_id);

-- The batch that queued the document's current version (NULL for single
-- uploads). No foreign key: documents are tagged before their batch row is
-- written at the end of the request.
ALTER TABLE documents ADD COLUMN batch_id TEXT;

CREATE INDEX documents_batch_id_status ON documents (batch_id, status);
