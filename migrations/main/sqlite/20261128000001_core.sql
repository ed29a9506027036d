-- The main database of every site (SQLite): the same tables as
-- migrations/main/postgres, in SQLite's types:
--   bigserial    -> INTEGER PRIMARY KEY AUTOINCREMENT (ids never reused)
--   timestamptz  -> INTEGER, microseconds since the Unix epoch (UTC)
--   bytea        -> BLOB
--   jsonb        -> TEXT, checked with json_valid()
--   varchar(255) -> TEXT with a length CHECK
-- Foreign keys need `PRAGMA foreign_keys = ON`, which Db::connect sets.

CREATE TABLE namespaces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    -- No ON DELETE: deleting a namespace that still has children is refused.
    parent_id INTEGER REFERENCES namespaces (id),
    created_at INTEGER,
    updated_at INTEGER
);
CREATE INDEX index_namespaces_on_parent_id ON namespaces (parent_id);

CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    -- No ON DELETE: deleting a namespace that still has projects is refused.
    namespace_id INTEGER NOT NULL REFERENCES namespaces (id),
    repository_storage TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER,
    updated_at INTEGER
);
CREATE INDEX index_projects_on_namespace_id ON projects (namespace_id);
-- Selective sync by shards filters on it.
CREATE INDEX index_projects_on_repository_storage ON projects (repository_storage);

CREATE TABLE geo_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    internal_url TEXT,
    "primary" BOOLEAN NOT NULL DEFAULT false,
    enabled BOOLEAN NOT NULL DEFAULT true,
    -- NULL: replicate everything.
    selective_sync_type TEXT CHECK (selective_sync_type IN ('namespaces', 'shards')),
    -- A JSON array of shard names (repository_storage values).
    selective_sync_shards TEXT NOT NULL DEFAULT '[]'
        CHECK (json_valid(selective_sync_shards) AND json_type(selective_sync_shards) = 'array'),
    sync_object_storage BOOLEAN NOT NULL DEFAULT false,
    files_max_capacity INTEGER NOT NULL DEFAULT 10,
    repos_max_capacity INTEGER NOT NULL DEFAULT 25,
    verification_max_capacity INTEGER NOT NULL DEFAULT 100,
    container_repositories_max_capacity INTEGER NOT NULL DEFAULT 10,
    -- Days; used on the primary only.
    minimum_reverification_interval INTEGER NOT NULL DEFAULT 7
        CHECK (minimum_reverification_interval >= 1),
    access_key TEXT,
    encrypted_secret_access_key BLOB,
    encrypted_secret_access_key_iv BLOB,
    created_at INTEGER,
    updated_at INTEGER
);
CREATE UNIQUE INDEX index_geo_nodes_on_name ON geo_nodes (name);
CREATE UNIQUE INDEX index_geo_nodes_on_access_key ON geo_nodes (access_key);
CREATE INDEX index_geo_nodes_on_primary ON geo_nodes ("primary");

CREATE TABLE geo_node_namespace_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    geo_node_id INTEGER NOT NULL REFERENCES geo_nodes (id) ON DELETE CASCADE,
    namespace_id INTEGER NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    created_at INTEGER,
    updated_at INTEGER
);
CREATE UNIQUE INDEX index_geo_node_namespace_links_on_geo_node_id_and_namespace_id
    ON geo_node_namespace_links (geo_node_id, namespace_id);
CREATE INDEX index_geo_node_namespace_links_on_namespace_id ON geo_node_namespace_links (namespace_id);

CREATE TABLE geo_node_statuses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    geo_node_id INTEGER NOT NULL REFERENCES geo_nodes (id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(status)),
    created_at INTEGER,
    updated_at INTEGER
);
CREATE UNIQUE INDEX index_geo_node_statuses_on_geo_node_id ON geo_node_statuses (geo_node_id);

CREATE TABLE geo_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    replicable_name TEXT NOT NULL CHECK (length(replicable_name) <= 255),
    event_name TEXT NOT NULL CHECK (length(event_name) <= 255),
    payload TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    created_at INTEGER NOT NULL
);

-- Secondaries read it in id order, from the cursor in their tracking
-- database's event_log_states.
CREATE TABLE geo_event_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    geo_event_id INTEGER REFERENCES geo_events (id) ON DELETE CASCADE
);
CREATE INDEX index_geo_event_log_on_geo_event_id ON geo_event_log (geo_event_id);

CREATE TABLE admin_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    token_digest TEXT NOT NULL,
    created_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX index_admin_tokens_on_token_digest ON admin_tokens (token_digest);

CREATE TABLE feature_flags (
    name TEXT PRIMARY KEY NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at INTEGER
);

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
