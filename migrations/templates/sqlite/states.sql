-- The primary's verification state table of one replicable type (SQLite):
-- the same table as templates/postgres/states.sql, in SQLite's types
-- (timestamps are INTEGER microseconds since the Unix epoch, bytea is BLOB).
--
-- Placeholders: {{name}} is the replicable name, {{model_table}} its model
-- table. Quoted identifiers longer than 63 bytes are shortened as on
-- PostgreSQL, so an index has the same name on both backends.
--
-- SQLite's indexed columns take no NULLS FIRST; an ascending SQLite index
-- already sorts NULLs first, which is what GitLab's `ASC NULLS FIRST` asks for.
--
-- verification_state: 0 pending, 1 started, 2 succeeded, 3 failed, 4 disabled.

CREATE TABLE IF NOT EXISTS "{{name}}_states" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    verification_started_at INTEGER,
    verification_retry_at INTEGER,
    verified_at INTEGER,
    "{{name}}_id" INTEGER NOT NULL REFERENCES "{{model_table}}" (id) ON DELETE CASCADE,
    verification_state INTEGER DEFAULT 0 NOT NULL,
    verification_retry_count INTEGER DEFAULT 0 NOT NULL,
    verification_checksum BLOB,
    verification_failure TEXT CHECK (length(verification_failure) <= 255),
    -- Geohost: SHA-256 of the component that last decided this row (hot swap).
    plugin_sha256 TEXT,
    -- Geohost: the record's blob path, unique: two records of a type never
    -- share a blob (ingest refuses the second; a hot swap moves them).
    blob_path TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_states_on_{{name}}_id"
    ON "{{name}}_states" ("{{name}}_id");

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_states_on_blob_path"
    ON "{{name}}_states" (blob_path);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_on_verification_state"
    ON "{{name}}_states" (verification_state);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_pending_verification"
    ON "{{name}}_states" (verified_at ASC)
    WHERE (verification_state = 0);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_failed_verification"
    ON "{{name}}_states" (verification_retry_at ASC)
    WHERE (verification_state = 3);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_on_verification_started"
    ON "{{name}}_states" ("{{name}}_id", verification_started_at)
    WHERE (verification_state = 1);

CREATE INDEX IF NOT EXISTS "index_{{name}}_states_needs_verification_id"
    ON "{{name}}_states" ("{{name}}_id")
    WHERE ((verification_state = 0) OR (verification_state = 3));
