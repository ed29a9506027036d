-- Which type owns each table and index its template created (see
-- migrations/main/postgres).
CREATE TABLE geo_table_owners (
    name TEXT PRIMARY KEY NOT NULL,
    replicable_name TEXT NOT NULL
);
