-- Ids the event cursor passed that had no event yet (host/src/secondary/cursor.rs):
-- a transaction on the primary that took an id and had not committed. They are
-- read again each round until their event appears, and forgotten after an hour
-- (GitLab's `geo:event_log:gaps`). `seen_at` in µs since the epoch.
CREATE TABLE event_log_gaps (
    event_id INTEGER PRIMARY KEY NOT NULL,
    seen_at INTEGER NOT NULL
);
