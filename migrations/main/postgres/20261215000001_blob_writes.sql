-- The outcome of each blob write on the primary (host/src/primary/journal.rs):
-- a write's transaction inserts its token as committed; whoever finds the
-- write's journal after a crash inserts it as abandoned if it is not there.
-- The primary key decides which came first. Rows are removed an hour
-- after their journal is gone.
CREATE TABLE geo_blob_writes (
    token varchar(128) PRIMARY KEY,
    committed boolean NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_geo_blob_writes_on_created_at ON geo_blob_writes (created_at);
