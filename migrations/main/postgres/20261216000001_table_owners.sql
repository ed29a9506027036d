-- Which type owns each table and index its template created
-- (host/src/swap/owners.rs): a type whose tables or derived names are
-- another type's, or the host's, is refused.
CREATE TABLE geo_table_owners (
    name text PRIMARY KEY,
    replicable_name text NOT NULL
);
