-- The main database of every site (PostgreSQL): GitLab's tables for the
-- topology (namespaces, projects), the Geo sites and their status, the event
-- log the primary writes and secondaries read, and Geohost's own tables
-- (admin tokens, feature flags, installed plugin versions).
--
-- A replicable type's model and `_states` tables are not here: they are
-- created from the type's identity by the template (host/src/db/template.rs).
--
-- Timestamps are written by the host (never `now()`), so both backends agree
-- on the clock. Columns are NOT NULL exactly where GitLab's schema or
-- Geohost's design needs them.

CREATE TABLE namespaces (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    path text NOT NULL,
    -- No ON DELETE: deleting a namespace that still has children is refused.
    parent_id bigint REFERENCES namespaces (id),
    created_at timestamptz,
    updated_at timestamptz
);
CREATE INDEX index_namespaces_on_parent_id ON namespaces (parent_id);

CREATE TABLE projects (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    path text NOT NULL,
    -- No ON DELETE: deleting a namespace that still has projects is refused.
    namespace_id bigint NOT NULL REFERENCES namespaces (id),
    repository_storage text NOT NULL DEFAULT 'default',
    created_at timestamptz,
    updated_at timestamptz
);
CREATE INDEX index_projects_on_namespace_id ON projects (namespace_id);
-- Selective sync by shards filters on it.
CREATE INDEX index_projects_on_repository_storage ON projects (repository_storage);

CREATE TABLE geo_nodes (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL,
    internal_url text,
    "primary" boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT true,
    -- NULL: replicate everything.
    selective_sync_type text CHECK (selective_sync_type IN ('namespaces', 'shards')),
    -- A JSON array of shard names (repository_storage values).
    selective_sync_shards text NOT NULL DEFAULT '[]'
        CHECK (json_typeof(selective_sync_shards::json) = 'array'),
    sync_object_storage boolean NOT NULL DEFAULT false,
    files_max_capacity integer NOT NULL DEFAULT 10,
    repos_max_capacity integer NOT NULL DEFAULT 25,
    verification_max_capacity integer NOT NULL DEFAULT 100,
    container_repositories_max_capacity integer NOT NULL DEFAULT 10,
    -- Days; used on the primary only.
    minimum_reverification_interval integer NOT NULL DEFAULT 7
        CHECK (minimum_reverification_interval >= 1),
    access_key text,
    encrypted_secret_access_key bytea,
    encrypted_secret_access_key_iv bytea,
    created_at timestamptz,
    updated_at timestamptz
);
CREATE UNIQUE INDEX index_geo_nodes_on_name ON geo_nodes (name);
CREATE UNIQUE INDEX index_geo_nodes_on_access_key ON geo_nodes (access_key);
CREATE INDEX index_geo_nodes_on_primary ON geo_nodes ("primary");

CREATE TABLE geo_node_namespace_links (
    id bigserial PRIMARY KEY,
    geo_node_id bigint NOT NULL REFERENCES geo_nodes (id) ON DELETE CASCADE,
    namespace_id bigint NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    created_at timestamptz,
    updated_at timestamptz
);
CREATE UNIQUE INDEX index_geo_node_namespace_links_on_geo_node_id_and_namespace_id
    ON geo_node_namespace_links (geo_node_id, namespace_id);
CREATE INDEX index_geo_node_namespace_links_on_namespace_id ON geo_node_namespace_links (namespace_id);

CREATE TABLE geo_node_statuses (
    id bigserial PRIMARY KEY,
    geo_node_id bigint NOT NULL REFERENCES geo_nodes (id) ON DELETE CASCADE,
    status jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz,
    updated_at timestamptz
);
CREATE UNIQUE INDEX index_geo_node_statuses_on_geo_node_id ON geo_node_statuses (geo_node_id);

CREATE TABLE geo_events (
    id bigserial PRIMARY KEY,
    replicable_name varchar(255) NOT NULL,
    event_name varchar(255) NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);

-- Secondaries read it in id order, from the cursor in their tracking
-- database's event_log_states.
CREATE TABLE geo_event_log (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    geo_event_id bigint REFERENCES geo_events (id) ON DELETE CASCADE
);
CREATE INDEX index_geo_event_log_on_geo_event_id ON geo_event_log (geo_event_id);

CREATE TABLE admin_tokens (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    token_digest text NOT NULL,
    created_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX index_admin_tokens_on_token_digest ON admin_tokens (token_digest);

CREATE TABLE feature_flags (
    name text PRIMARY KEY,
    enabled boolean NOT NULL,
    updated_at timestamptz
);

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
