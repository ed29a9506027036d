-- Guarded deletions on a secondary (host/src/secondary/guard.rs): per type,
-- the selective-sync settings its last consistency pass applied (a pass
-- under other settings follows an operator's change on the primary), and
-- the removals a pass held because they exceeded
-- `deletions.max_removal_share` of the type's registries, until an
-- operator confirms them.
CREATE TABLE geo_removal_guards (
    replicable_name text PRIMARY KEY,
    applied_scope text,
    held_removals bigint,
    held_registries bigint,
    held_cause text,
    held_by text,
    held_at timestamptz,
    confirmed_removals bigint,
    confirmed_at timestamptz
);
