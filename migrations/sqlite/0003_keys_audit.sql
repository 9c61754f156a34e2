-- API keys and the audit log.
--
-- A key is shown once, when it is made; only the SHA-256 of its secret is
-- kept. tenant NULL is an operator key, valid for the whole server.
-- on_behalf_of is 1 when the key may act for end users (pass their user and
-- groups so that document ACLs apply), else 0.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant       TEXT,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    on_behalf_of BIGINT NOT NULL DEFAULT 0,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant, id);

-- Who did what: one row per write or admin action, whatever its outcome.
-- key_id is NULL for the command line and the configured admin key's id
-- is 'admin'; tenant is the tenant acted on (NULL for server-wide actions).
-- Ids are time ordered, so paging by id is paging by time.

CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY NOT NULL,
    at         BIGINT NOT NULL,
    key_id     TEXT,
    tenant     TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    status     BIGINT NOT NULL
);

CREATE INDEX audit_log_tenant ON audit_log (tenant, id);
