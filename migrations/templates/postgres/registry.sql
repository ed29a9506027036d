-- A secondary's registry table of one replicable type (PostgreSQL), GitLab's
-- `<name>_registry` (CreatePackagesHelmMetadataCacheRegistry), in the
-- tracking database. It has no foreign key to the model table, which lives in
-- the main database: the host propagates deletions itself.
--
-- Placeholder: {{name}} is the replicable name (`packages_helm_metadata_cache`).
-- Quoted identifiers longer than PostgreSQL's 63 bytes are shortened when
-- rendered (host/src/db/template.rs, `identifier`).
--
-- state: 0 pending, 1 started, 2 synced, 3 failed.
-- verification_state: 0 pending, 1 started, 2 succeeded, 3 failed, 4 disabled.

CREATE TABLE IF NOT EXISTS "{{name}}_registry" (
    id bigserial PRIMARY KEY,
    "{{name}}_id" bigint NOT NULL,
    created_at timestamptz NOT NULL,
    last_synced_at timestamptz,
    retry_at timestamptz,
    verified_at timestamptz,
    verification_started_at timestamptz,
    verification_retry_at timestamptz,
    state smallint DEFAULT 0 NOT NULL,
    verification_state smallint DEFAULT 0 NOT NULL,
    retry_count smallint DEFAULT 0 NOT NULL,
    verification_retry_count smallint DEFAULT 0 NOT NULL,
    checksum_mismatch boolean DEFAULT false NOT NULL,
    verification_checksum bytea,
    verification_checksum_mismatched bytea,
    verification_failure text CHECK (char_length(verification_failure) <= 255),
    last_sync_failure text CHECK (char_length(last_sync_failure) <= 255),
    -- Geohost: SHA-256 of the component that last decided this row (hot swap).
    plugin_sha256 text,
    -- Geohost: the worker process holding the row's sync or verification
    -- claim (`host:pid:random`, leases.rs), so a dead worker's claims are
    -- released as soon as its death is known.
    claimed_by text
);

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_registry_on_{{name}}_id"
    ON "{{name}}_registry" ("{{name}}_id");

CREATE INDEX IF NOT EXISTS "index_{{name}}_registry_on_retry_at"
    ON "{{name}}_registry" (retry_at);

CREATE INDEX IF NOT EXISTS "index_{{name}}_registry_on_state"
    ON "{{name}}_registry" (state);

-- verification_failed_batch
CREATE INDEX IF NOT EXISTS "{{name}}_registry_failed_verification"
    ON "{{name}}_registry" (verification_retry_at NULLS FIRST)
    WHERE ((state = 2) AND (verification_state = 3));

-- needs_verification_count
CREATE INDEX IF NOT EXISTS "{{name}}_registry_needs_verification"
    ON "{{name}}_registry" (verification_state)
    WHERE ((state = 2) AND (verification_state = ANY (ARRAY[0, 3])));

-- verification_pending_batch
CREATE INDEX IF NOT EXISTS "{{name}}_registry_pending_verification"
    ON "{{name}}_registry" (verified_at NULLS FIRST)
    WHERE ((state = 2) AND (verification_state = 0));

-- Geohost: claims of a worker that died, taken over when their lease
-- expired (db/claim.rs). Started rows are only those in flight, so this
-- index stays small; without it the claim walked every synced row.
CREATE INDEX IF NOT EXISTS "{{name}}_registry_started_verification"
    ON "{{name}}_registry" (verification_started_at)
    WHERE ((state = 2) AND (verification_state = 1));
