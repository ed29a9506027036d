-- Where each type's last complete registry consistency pass ended: the
-- highest record id it read (host/src/secondary/consistency.rs). The site's
-- status counts the in-scope records above it that have no registry row yet,
-- so a missing registry shows as not synced.
CREATE TABLE registry_consistency_marks (
    replicable_name text PRIMARY KEY,
    last_record_id bigint NOT NULL,
    passed_at timestamptz NOT NULL
);
