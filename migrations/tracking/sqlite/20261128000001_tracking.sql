-- The tracking database of a secondary site (SQLite): the same tables as
-- migrations/tracking/postgres, in SQLite's types (see
-- migrations/main/sqlite for the mapping).
--
-- A replicable type's `_registry` table is not here: it is created from the
-- type's identity by the template (host/src/db/template.rs).

-- GitLab's event log cursor: one row, the id of the last geo_event_log row
-- of the main database this secondary has processed.
CREATE TABLE event_log_states (
    event_id INTEGER PRIMARY KEY NOT NULL
);

-- The plugin versions that decided this secondary's registries (the same
-- shape as the main database's plugin_versions).
CREATE TABLE plugin_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    replicable_name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT,
    installed_at INTEGER NOT NULL,
    active BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX index_plugin_versions_on_replicable_name_and_sha256
    ON plugin_versions (replicable_name, sha256);
-- At most one active version per type.
CREATE UNIQUE INDEX index_plugin_versions_on_replicable_name_active
    ON plugin_versions (replicable_name) WHERE active;
