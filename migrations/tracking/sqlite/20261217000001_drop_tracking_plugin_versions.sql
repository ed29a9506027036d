-- The tracking database's copy of plugin_versions was never written: a
-- secondary records its type versions in its main database, like a primary
-- (swap/versions.rs). The name stays reserved for types (swap/owners.rs
-- reads every migration's CREATE TABLE).
DROP TABLE IF EXISTS plugin_versions;
