-- Bulk resync and reverify jobs (GraphQL's geoRegistriesBulkUpdate,
-- host/src/secondary/bulk.rs), kept so that a restart resumes them: the
-- job's filter (JSON), the last registry id done, what it changed.
-- `state`: 0 queued or running, 1 done, 2 failed.
CREATE TABLE geo_bulk_jobs (
    id bigserial PRIMARY KEY,
    replicable_name text NOT NULL,
    action text NOT NULL,
    filter jsonb NOT NULL,
    last_registry_id bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    rows_changed bigint NOT NULL DEFAULT 0,
    state smallint NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX index_geo_bulk_jobs_on_state ON geo_bulk_jobs (state, id);
