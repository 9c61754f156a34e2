-- Jobs submitted through the job API (training and the like) report to
-- their owner: how far they got, the step they are on, the checkpoint a
-- retry resumes from, what they produced, and whether the owner asked them
-- to stop. Internal jobs (ingest) have no tenant and are not listed.

ALTER TABLE jobs ADD COLUMN tenant TEXT COLLATE "C";
ALTER TABLE jobs ADD COLUMN progress DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN step TEXT;
ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
ALTER TABLE jobs ADD COLUMN artifacts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;

CREATE INDEX jobs_tenant_id ON jobs (tenant, id);

-- One value per (metric, step): a retried step overwrites its old value.
CREATE TABLE job_metrics (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    step   BIGINT NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    at     BIGINT NOT NULL,
    PRIMARY KEY (job_id, name, step)
);

CREATE TABLE job_logs (
    id      BIGSERIAL PRIMARY KEY,
    job_id  TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    message TEXT NOT NULL
);

CREATE INDEX job_logs_job_id ON job_logs (job_id, id);
