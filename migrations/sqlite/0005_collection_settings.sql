-- Per-collection defaults (retrieval, prompt) and the index layout chosen at
-- creation, as a JSON object; '{}' means the server's configured defaults.
ALTER TABLE collections ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
