-- The tracking database of a secondary site (PostgreSQL), GitLab's "Geo
-- tracking database": separate from the main database, so it has no foreign
-- key into it.
--
-- A replicable type's `_registry` table is not here: it is created from the
-- type's identity by the template (host/src/db/template.rs).

-- GitLab's event log cursor: one row, the id of the last geo_event_log row
-- of the main database this secondary has processed.
CREATE TABLE event_log_states (
    event_id bigint PRIMARY KEY
);

-- The plugin versions that decided this secondary's registries (the same
-- shape as the main database's plugin_versions).
CREATE TABLE plugin_versions (
    id bigserial PRIMARY KEY,
    replicable_name text NOT NULL,
    version text NOT NULL,
    sha256 text NOT NULL,
    source text,
    installed_at timestamptz NOT NULL,
    active boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX index_plugin_versions_on_replicable_name_and_sha256
    ON plugin_versions (replicable_name, sha256);
-- At most one active version per type.
CREATE UNIQUE INDEX index_plugin_versions_on_replicable_name_active
    ON plugin_versions (replicable_name) WHERE active;
