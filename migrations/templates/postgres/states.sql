-- The primary's verification state table of one replicable type (PostgreSQL),
-- GitLab's `<name>_states` (CreatePackagesHelmMetadataCacheStates), one row
-- per model row, deleted with it.
--
-- Placeholders: {{name}} is the replicable name (`packages_helm_metadata_cache`),
-- {{model_table}} its model table (`packages_helm_metadata_caches`). Quoted
-- identifiers longer than PostgreSQL's 63 bytes are shortened when rendered
-- (host/src/db/template.rs, `identifier`).
--
-- verification_state: 0 pending, 1 started, 2 succeeded, 3 failed, 4 disabled.

CREATE TABLE IF NOT EXISTS "{{name}}_states" (
    id bigserial PRIMARY KEY,
    verification_started_at timestamptz,
    verification_retry_at timestamptz,
    verified_at timestamptz,
    "{{name}}_id" bigint NOT NULL REFERENCES "{{model_table}}" (id) ON DELETE CASCADE,
    verification_state smallint DEFAULT 0 NOT NULL,
    verification_retry_count smallint DEFAULT 0 NOT NULL,
    verification_checksum bytea,
    verification_failure text CHECK (char_length(verification_failure) <= 255),
    -- Geohost: SHA-256 of the component that last decided this row (hot swap).
    plugin_sha256 text,
    -- Geohost: the record's blob path, unique: two records of a type never
    -- share a blob (ingest refuses the second; a hot swap moves them).
    blob_path text
);

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_states_on_{{name}}_id"
    ON "{{name}}_states" ("{{name}}_id");

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_states_on_blob_path"
    ON "{{name}}_states" (blob_path);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_on_verification_state"
    ON "{{name}}_states" (verification_state);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_pending_verification"
    ON "{{name}}_states" (verified_at ASC NULLS FIRST)
    WHERE (verification_state = 0);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_failed_verification"
    ON "{{name}}_states" (verification_retry_at ASC NULLS FIRST)
    WHERE (verification_state = 3);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_on_verification_started"
    ON "{{name}}_states" ("{{name}}_id", verification_started_at)
    WHERE (verification_state = 1);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_needs_verification_id"
    ON "{{name}}_states" ("{{name}}_id")
    WHERE ((verification_state = 0) OR (verification_state = 3));
