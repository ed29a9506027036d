-- Guarded deletions on a secondary (see migrations/tracking/postgres);
-- times are µs since the epoch.
CREATE TABLE geo_removal_guards (
    replicable_name TEXT PRIMARY KEY NOT NULL,
    applied_scope TEXT,
    held_removals INTEGER,
    held_registries INTEGER,
    held_cause TEXT,
    held_by TEXT,
    held_at INTEGER,
    confirmed_removals INTEGER,
    confirmed_at INTEGER
);
