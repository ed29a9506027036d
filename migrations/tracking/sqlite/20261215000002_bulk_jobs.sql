-- Bulk resync and reverify jobs (GraphQL's geoRegistriesBulkUpdate,
-- host/src/secondary/bulk.rs), kept so that a restart resumes them: the
-- job's filter (JSON), the last registry id done, what it changed.
-- `state`: 0 queued or running, 1 done, 2 failed. Times in µs since the epoch.
CREATE TABLE geo_bulk_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    replicable_name TEXT NOT NULL,
    action TEXT NOT NULL,
    filter TEXT NOT NULL CHECK (json_valid(filter)),
    last_registry_id INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    rows_changed INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX index_geo_bulk_jobs_on_state ON geo_bulk_jobs (state, id);
