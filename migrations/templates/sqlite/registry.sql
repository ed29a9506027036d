-- A secondary's registry table of one replicable type (SQLite): the same
-- table as templates/postgres/registry.sql, in SQLite's types (timestamps are
-- INTEGER microseconds since the Unix epoch, bytea is BLOB). No foreign key:
-- the model table lives in the main database.
--
-- Placeholder: {{name}} is the replicable name. Quoted identifiers longer
-- than 63 bytes are shortened as on PostgreSQL, so an index has the same name
-- on both backends.
--
-- SQLite's indexed columns take no NULLS FIRST; an ascending SQLite index
-- already sorts NULLs first, which is what GitLab's `NULLS FIRST` asks for.
-- SQLite has no `= ANY (ARRAY[...])`; `IN (0, 3)` is the same condition.
--
-- state: 0 pending, 1 started, 2 synced, 3 failed.
-- verification_state: 0 pending, 1 started, 2 succeeded, 3 failed, 4 disabled.

CREATE TABLE IF NOT EXISTS "{{name}}_registry" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "{{name}}_id" INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_synced_at INTEGER,
    retry_at INTEGER,
    verified_at INTEGER,
    verification_started_at INTEGER,
    verification_retry_at INTEGER,
    state INTEGER DEFAULT 0 NOT NULL,
    verification_state INTEGER DEFAULT 0 NOT NULL,
    retry_count INTEGER DEFAULT 0 NOT NULL,
    verification_retry_count INTEGER DEFAULT 0 NOT NULL,
    checksum_mismatch BOOLEAN DEFAULT false NOT NULL,
    verification_checksum BLOB,
    verification_checksum_mismatched BLOB,
    verification_failure TEXT CHECK (length(verification_failure) <= 255),
    last_sync_failure TEXT CHECK (length(last_sync_failure) <= 255),
    -- Geohost: SHA-256 of the component that last decided this row (hot swap).
    plugin_sha256 TEXT,
    -- Geohost: the worker process holding the row's sync or verification
    -- claim (`host:pid:random`, leases.rs), so a dead worker's claims are
    -- released as soon as its death is known.
    claimed_by TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS "index_{{name}}_registry_on_{{name}}_id"
    ON "{{name}}_registry" ("{{name}}_id");

CREATE INDEX IF NOT EXISTS "index_{{name}}_registry_on_retry_at"
    ON "{{name}}_registry" (retry_at);

CREATE INDEX IF NOT EXISTS "index_{{name}}_registry_on_state"
    ON "{{name}}_registry" (state);

-- verification_failed_batch
CREATE INDEX IF NOT EXISTS "{{name}}_registry_failed_verification"
    ON "{{name}}_registry" (verification_retry_at ASC)
    WHERE ((state = 2) AND (verification_state = 3));

-- needs_verification_count
CREATE INDEX IF NOT EXISTS "{{name}}_registry_needs_verification"
    ON "{{name}}_registry" (verification_state)
    WHERE ((state = 2) AND (verification_state IN (0, 3)));

-- verification_pending_batch
CREATE INDEX IF NOT EXISTS "{{name}}_registry_pending_verification"
    ON "{{name}}_registry" (verified_at ASC)
    WHERE ((state = 2) AND (verification_state = 0));

-- Geohost: claims of a worker that died, taken over when their lease
-- expired (db/claim.rs). Started rows are only those in flight, so this
-- index stays small; without it the claim walked every synced row.
CREATE INDEX IF NOT EXISTS "{{name}}_registry_started_verification"
    ON "{{name}}_registry" (verification_started_at)
    WHERE ((state = 2) AND (verification_state = 1));
