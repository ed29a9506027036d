-- Leases of the singleton duties when several worker processes share this
-- database (host/src/leases.rs): one row per duty, held by one process
-- until `expires_at` unless renewed. GitLab keeps these as Redis exclusive
-- leases (`geo_log_cursor_processed`, the consistency worker's lease).
CREATE TABLE geo_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
