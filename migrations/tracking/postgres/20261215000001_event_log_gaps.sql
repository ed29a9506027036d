-- Ids the event cursor passed that had no event yet (host/src/secondary/cursor.rs):
-- a transaction on the primary that took an id and had not committed. They are
-- read again each round until their event appears, and forgotten after an hour
-- (GitLab's `geo:event_log:gaps`).
CREATE TABLE event_log_gaps (
    event_id bigint PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
