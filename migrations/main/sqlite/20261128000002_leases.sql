-- Leases of the singleton duties (see migrations/*/postgres): one row per
-- duty, held by one process until `expires_at` (µs since the epoch).
CREATE TABLE geo_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
