//! The event log consumer (GitLab's Geo log cursor): follow the primary's
//! events so changes reach this secondary in seconds, not at the next
//! consistency pass.
//!
//! The position (the last `geo_event_log` id handled) lives in the
//! tracking database's `event_log_states`, one row, saved after each batch.
//! Batches of 250 events (GitLab's `BATCH_SIZE`) are long-polled with
//! `events?after=<position>&limit=250&wait_ms=…` and handled in order:
//!
//! - `created` / `updated`: if the type is installed, its replication is
//!   enabled and the record (fetched by id, one request per type and batch)
//!   is in this site's scope, its registry row is ensured and set
//!   `pending`, so a download running now cannot mark it synced with old
//!   content. Out of scope: ignored (a row that left the scope is removed by
//!   the consistency pass). A record already gone is ignored (its `deleted`
//!   event follows).
//! - `deleted`, whatever the scope and feature flag: the local blob at the
//!   event's `blob_path` (checked with [`BlobPath::parse`], never used raw)
//!   and the registry row are deleted. GitLab's `uploader_class` is not
//!   needed: a type's blobs live under its own folder.
//! - `checksum_succeeded`: a synced row's verification becomes pending.
//! - anything else (unknown type or event): skipped with a log line.
//!
//! With no saved position (a new secondary) the cursor starts at the
//! primary's newest event, saved before the first consistency pass reads
//! any record ([`start_if_new`]): the pass covers everything before it,
//! and replaying the whole log would resync every record.
//!
//! **Withheld events.** The primary serves a secondary only the records
//! in its scope (`primary/access.rs`): a page names the events of other
//! records by id only (`withheld`). They are not gaps, and the position
//! moves past them.
//!
//! **Gaps.** Event ids come from a sequence (PostgreSQL) and become visible
//! when their transaction commits, which is not in id order: with
//! concurrent writers on the primary, the cursor can pass an id whose
//! transaction commits a moment later. Such an id (a gap in the ids a page
//! jumps over) is kept in `event_log_gaps` and read again at every round
//! (`events?ids=`); its event is handled once it appears. A gap is given up
//! after [`GAP_MAX_AGE`] (GitLab's `EventGapTracking` gives up after an
//! hour too, and retries only after 10 minutes; here the retry is at once,
//! and rounds long-poll at most [`GAP_POLL`] while a gap is younger than
//! [`GAP_FRESH`], so a late commit is followed within about a second). An
//! id that never appears (a rolled-back transaction) costs one small
//! request per round for that hour.
//!
//! Several worker processes may share one PostgreSQL tracking database;
//! only one of them follows the log at a time (a transaction-scoped
//! advisory lock held for the batch, GitLab's `geo_log_cursor_processed`
//! lease). On errors the cursor backs off (1 s, doubling to 30 s) and
//! retries the same batch; it never stops on its own.

use super::client::{ClientError, PrimaryClient};
use super::registry::Registry;
use crate::catalog::InstalledType;
use crate::catalog::Scope;
use crate::db::{Backend, Db, DbError, Tx};
use crate::feed::{EventPage, FeedEvent, FeedRecord};
use crate::plugin::BlobPath;
use crate::storage::BlobStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Events per batch (GitLab's log cursor `BATCH_SIZE`).
pub const BATCH_SIZE: i64 = 250;
/// How long one long-poll waits for the first event.
pub const LONG_POLL: Duration = Duration::from_secs(10);
/// First pause after an error.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause after repeated errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a gap in the event ids is read again before it is given up.
pub const GAP_MAX_AGE: Duration = Duration::from_secs(3600);
/// While a gap is younger than this, rounds long-poll at most [`GAP_POLL`].
pub const GAP_FRESH: Duration = Duration::from_secs(60);
/// The longest long-poll while a fresh gap waits.
pub const GAP_POLL: Duration = Duration::from_secs(1);
/// Most gaps kept at once (the lowest ids go first).
pub const MAX_GAPS: usize = 10_000;
/// The PostgreSQL advisory lock key of the cursor lease ("geo_cur").
const LEASE_KEY: i64 = 0x0067_656f_5f63_7572;

pub const CREATED: &str = "created";
pub const UPDATED: &str = "updated";
pub const DELETED: &str = "deleted";
pub const CHECKSUM_SUCCEEDED: &str = "checksum_succeeded";

/// Why a batch could not be handled (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("reading the primary: {0}")]
    Client(#[from] ClientError),
    #[error("tracking database: {0}")]
    Db(#[from] DbError),
    #[error("deciding scope: {0}")]
    Scope(#[from] crate::catalog::CallError),
}

/// What a batch did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Registry rows created or set pending by `created`/`updated`.
    pub pending: usize,
    /// `created`/`updated` events of records out of scope, gone, or of a
    /// type whose replication is disabled.
    pub ignored: usize,
    /// Registry rows (or blobs) removed by `deleted`.
    pub deleted: usize,
    /// Rows set verification pending by `checksum_succeeded`.
    pub verification_pending: usize,
    /// Events skipped: unknown type or event, or an unusable payload.
    pub skipped: usize,
}

/// What handling a batch needs.
pub struct EventContext<'a> {
    pub client: &'a PrimaryClient,
    pub tracking: &'a Db,
    pub blobs: &'a BlobStore,
    /// Woken when events make rows pending or due for verification.
    pub wakes: Option<&'a super::Wakes>,
}

/// Installed types by name, with whether their replication is enabled.
/// Taken once a round's events have arrived, never across its long poll:
/// a held version would keep a hot swap from draining.
pub type Types = HashMap<String, (Arc<InstalledType>, bool)>;

fn model_id(event: &FeedEvent) -> Option<i64> {
    event
        .payload
        .get("model_record_id")
        .and_then(serde_json::Value::as_i64)
}

/// Handles `events` in order; see the [module docs](self).
///
/// `scope` is this site's scope as last read, `None` while its settings are
/// unusable (`created`/`updated` events are then ignored; the consistency
/// pass catches up once they are fixed). Records it puts out of scope are
/// decided again with `refresh()` (a newly read topology), at most once per
/// batch: a type may put records of projects it does not know yet out of
/// scope, and the project may be newer than the last topology read.
///
/// An error means the batch must be retried (handling is idempotent).
pub async fn handle_events(
    cx: &EventContext<'_>,
    types: &Types,
    scope: Option<&Scope>,
    refresh: impl AsyncFnOnce() -> Option<Scope>,
    events: &[FeedEvent],
) -> Result<EventCounts, CursorError> {
    // Scope decisions for every created/updated record, one request and one
    // plugin call per type.
    let mut wanted: HashMap<&str, Vec<i64>> = HashMap::new();
    for event in events {
        if matches!(event.event_name.as_str(), CREATED | UPDATED)
            && let Some((_, true)) = types.get(&event.replicable_name)
            && let Some(id) = model_id(event)
        {
            wanted
                .entry(event.replicable_name.as_str())
                .or_default()
                .push(id);
        }
    }
    let mut decisions: HashMap<(&str, i64), Result<bool, String>> = HashMap::new();
    let mut rejected: Vec<(&str, Vec<FeedRecord>)> = Vec::new();
    if !wanted.is_empty() && scope.is_none() {
        // Without usable settings nothing can be scoped (the consistency
        // pass cannot either); it catches up once they are fixed.
        tracing::warn!("selective-sync settings unusable; created/updated events ignored");
    }
    if let Some(scope) = scope {
        for (name, mut ids) in wanted {
            let (it, _) = &types[name];
            ids.sort_unstable();
            ids.dedup();
            let records = cx.client.records_by_ids(name, &ids).await?;
            let answers = it.in_scope(scope, &records).await?;
            let mut out = Vec::new();
            for (record, answer) in records.into_iter().zip(answers) {
                if answer == Ok(false) {
                    out.push(record.clone());
                }
                decisions.insert((name, record.id), answer);
            }
            if !out.is_empty() {
                rejected.push((name, out));
            }
        }
    }
    if !rejected.is_empty()
        && let Some(fresh) = refresh().await
    {
        for (name, records) in rejected {
            let (it, _) = &types[name];
            let answers = it.in_scope(&fresh, &records).await?;
            for (record, answer) in records.iter().zip(answers) {
                decisions.insert((name, record.id), answer);
            }
        }
    }

    // The registry changes, in event order; consecutive events asking the
    // same change of one type are written as one statement per 500 rows
    // (at 1,000 writes/s a statement per event kept the cursor behind the
    // log: a commit each, on SQLite an fsync each).
    let mut counts = EventCounts::default();
    let mut run = Run::default();
    for event in events {
        let name = event.replicable_name.as_str();
        let Some((it, enabled)) = types.get(name) else {
            tracing::info!(event_id = event.id, r#type = name, event = %event.event_name, "event of a type not installed here; skipped");
            counts.skipped += 1;
            continue;
        };
        let Some(id) = model_id(event) else {
            tracing::warn!(event_id = event.id, r#type = name, payload = %event.payload, "event without a model_record_id; skipped");
            counts.skipped += 1;
            continue;
        };
        let change = match event.event_name.as_str() {
            CREATED | UPDATED => {
                if !enabled {
                    counts.ignored += 1;
                    continue;
                }
                match decisions.get(&(name, id)) {
                    Some(Ok(true)) => Change::Pending,
                    Some(Ok(false)) | None => {
                        counts.ignored += 1;
                        continue;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(event_id = event.id, r#type = name, id, %error, "scope decision failed; event ignored");
                        counts.ignored += 1;
                        continue;
                    }
                }
            }
            DELETED => {
                // The changes of the events before it are written first
                // (a run of deletions stays one run); the blob goes now,
                // its row with the run.
                run.push(cx.tracking, &mut counts, it, Change::Delete, id)
                    .await?;
                let path = event
                    .payload
                    .get("blob_path")
                    .and_then(serde_json::Value::as_str);
                match path.map(BlobPath::parse) {
                    Some(Ok(path)) => {
                        if let Err(error) = cx.blobs.quarantine(name, &path).await {
                            tracing::warn!(event_id = event.id, r#type = name, id, %error, "cannot quarantine the blob of a deleted record");
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(event_id = event.id, r#type = name, id, %error, "deleted event with an unusable blob_path; blob left alone")
                    }
                    None => {
                        tracing::warn!(
                            event_id = event.id,
                            r#type = name,
                            id,
                            "deleted event without blob_path; blob left alone"
                        )
                    }
                }
                continue;
            }
            CHECKSUM_SUCCEEDED => Change::VerificationPending,
            other => {
                tracing::info!(
                    event_id = event.id,
                    r#type = name,
                    event = other,
                    "unknown event; skipped"
                );
                counts.skipped += 1;
                continue;
            }
        };
        run.push(cx.tracking, &mut counts, it, change, id).await?;
    }
    run.flush(cx.tracking, &mut counts).await?;
    Ok(counts)
}

/// What an event asks of its registry row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// `created`/`updated` in scope: the row exists and is pending.
    Pending,
    /// `deleted`: the row goes (its blob went when the event was read).
    Delete,
    /// `checksum_succeeded`: a synced row's verification is pending.
    VerificationPending,
}

/// Consecutive events of one type asking the same [`Change`], written
/// together when the next event asks something else.
#[derive(Default)]
struct Run {
    current: Option<(Arc<InstalledType>, Change)>,
    ids: Vec<i64>,
}

impl Run {
    async fn push(
        &mut self,
        tracking: &Db,
        counts: &mut EventCounts,
        it: &Arc<InstalledType>,
        change: Change,
        id: i64,
    ) -> Result<(), DbError> {
        let same = self
            .current
            .as_ref()
            .is_some_and(|(now, c)| Arc::ptr_eq(now, it) && *c == change);
        if !same {
            self.flush(tracking, counts).await?;
            self.current = Some((it.clone(), change));
        }
        self.ids.push(id);
        Ok(())
    }

    async fn flush(&mut self, tracking: &Db, counts: &mut EventCounts) -> Result<(), DbError> {
        let Some((it, change)) = self.current.take() else {
            return Ok(());
        };
        let mut ids = std::mem::take(&mut self.ids);
        let events = ids.len();
        ids.sort_unstable();
        ids.dedup();
        let registry = Registry::of(&it);
        match change {
            Change::Pending => {
                registry.insert_missing(tracking, &ids).await?;
                registry.pending_many(tracking, &ids).await?;
                counts.pending += events;
            }
            Change::Delete => {
                registry.delete(tracking, &ids).await?;
                counts.deleted += events;
            }
            Change::VerificationPending => {
                counts.verification_pending += registry
                    .verification_pending_if_synced_many(tracking, &ids)
                    .await? as usize;
            }
        }
        Ok(())
    }
}

/// The saved position: the last event id handled, if any.
pub async fn position(tracking: &Db) -> Result<Option<i64>, DbError> {
    tracking
        .fetch_one(
            "SELECT MAX(event_id) AS event_id FROM event_log_states",
            &[],
        )
        .await?
        .opt_i64("event_id")
}

/// The saved position; a new secondary's first one is the primary's newest
/// event, saved unless one was saved meanwhile.
///
/// The consistency pass calls this before it reads the primary's records
/// (see `Secondary::consistency_pass`): the cursor then starts no later than
/// the records the pass saw, so an update committed after that read is
/// always followed. Starting at the newest event whenever the cursor first
/// runs skipped the updates between the pass's read and the cursor's start
/// (when the primary was slow to answer the cursor), and those records
/// stayed synced and verified with their old content (found by the fault
/// suite).
pub async fn start_if_new(tracking: &Db, client: &PrimaryClient) -> Result<i64, CursorError> {
    if let Some(position) = position(tracking).await? {
        return Ok(position);
    }
    let newest = client.events(0, 1, 0).await?.last_event_id.unwrap_or(0);
    tracking
        .execute(
            "INSERT INTO event_log_states (event_id) SELECT $1 \
             WHERE NOT EXISTS (SELECT 1 FROM event_log_states)",
            &[newest.into()],
        )
        .await?;
    let position = position(tracking).await?.unwrap_or(newest);
    tracing::info!(
        event_id = position,
        "no event cursor yet: starting at the primary's newest event"
    );
    Ok(position)
}

/// Saves the position (one row) inside `tx`.
pub async fn save_position(tx: &mut Tx, event_id: i64) -> Result<(), DbError> {
    tx.execute("DELETE FROM event_log_states", &[]).await?;
    tx.execute(
        "INSERT INTO event_log_states (event_id) VALUES ($1)",
        &[event_id.into()],
    )
    .await?;
    Ok(())
}

/// The ids the cursor passed without an event (see the module docs), with
/// when each was first seen, lowest first.
pub async fn gaps(tracking: &Db) -> Result<Vec<(i64, chrono::DateTime<chrono::Utc>)>, DbError> {
    tracking
        .fetch_map(
            "SELECT event_id, seen_at FROM event_log_gaps ORDER BY event_id",
            &[],
            |row| Ok((row.i64("event_id")?, row.ts("seen_at")?)),
        )
        .await
}

/// The log ids a page covers, in order: its events' and those it withholds
/// (records out of this site's scope, which are not gaps).
pub fn page_ids(page: &EventPage) -> Vec<i64> {
    let mut ids: Vec<i64> = page.events.iter().map(|e| e.id).collect();
    ids.extend(&page.withheld);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The ids between `position` and the ids a page covers (in order) that
/// the page skips.
pub fn new_gaps(position: i64, ids: &[i64]) -> Vec<i64> {
    let mut out = Vec::new();
    let mut previous = position;
    for &id in ids {
        if id > previous {
            out.extend((previous + 1)..id);
            previous = id;
        }
    }
    out
}

/// Records the round's changes to the gaps inside `tx`: `filled` found,
/// `fresh` ones seen, and those older than [`GAP_MAX_AGE`] given up.
async fn save_gaps(
    tx: &mut Tx,
    tracked: &[(i64, chrono::DateTime<chrono::Utc>)],
    filled: &[i64],
    fresh: &[i64],
) -> Result<usize, DbError> {
    let now = Db::now();
    for chunk in filled.chunks(500) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let args: Vec<crate::db::Arg> = chunk.iter().map(|&id| id.into()).collect();
        tx.execute(
            &format!(
                "DELETE FROM event_log_gaps WHERE event_id IN ({})",
                list.join(", ")
            ),
            &args,
        )
        .await?;
    }
    // Keep at most MAX_GAPS: the newest ids are the likeliest to fill.
    let kept = tracked.len().saturating_sub(filled.len());
    let room = MAX_GAPS.saturating_sub(kept);
    let dropped = fresh.len().saturating_sub(room);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "too many gaps in the event ids to track; the lowest are given up (the consistency pass covers them)"
        );
    }
    for chunk in fresh[dropped..].chunks(500) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, $1)", i + 2))
            .collect();
        let mut args: Vec<crate::db::Arg> = vec![now.into()];
        args.extend(chunk.iter().map(|&id| crate::db::Arg::from(id)));
        tx.execute(
            &format!(
                "INSERT INTO event_log_gaps (event_id, seen_at) VALUES {} ON CONFLICT (event_id) DO NOTHING",
                rows.join(", ")
            ),
            &args,
        )
        .await?;
    }
    let expired = tx
        .execute(
            "DELETE FROM event_log_gaps WHERE seen_at < $1",
            &[crate::leases::expired_before(now, GAP_MAX_AGE).into()],
        )
        .await?;
    if expired > 0 {
        tracing::warn!(
            ids = expired,
            "gaps in the event ids never filled within an hour; given up (a rolled-back write, or the consistency pass covers it)"
        );
    }
    Ok(kept + fresh.len() - dropped - expired as usize)
}

/// Seconds between the primary's newest event and the newest handled one.
fn lag_seconds(page: &EventPage, position: i64) -> f64 {
    match (page.events.last(), page.last_event_at) {
        (Some(event), Some(newest)) => {
            (newest - event.created_at).num_milliseconds().max(0) as f64 / 1000.0
        }
        (None, _) if page.last_event_id.is_none_or(|last| last <= position) => 0.0,
        _ => crate::metrics::REPLICATION_LAG.get(),
    }
}

/// How one round went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Handled this many events (0: the long-poll ended empty).
    Handled(usize),
    /// Another process follows the log now.
    Leased,
    /// Shutting down.
    Stopped,
}

/// One round: take the lease (PostgreSQL), read the position, long-poll up
/// to `wait` for a batch, handle it (with `scope` and `refresh`, as
/// [`handle_events`]), save the position.
pub async fn round(
    cx: &EventContext<'_>,
    types: impl AsyncFnOnce() -> Types,
    scope: Option<&Scope>,
    refresh: impl AsyncFnOnce() -> Option<Scope>,
    wait: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Round, CursorError> {
    let tracking = cx.tracking;
    let mut lease = None;
    if tracking.backend() == Backend::Postgres {
        let mut tx = tracking.begin().await?;
        let locked = tx
            .fetch_one(
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                &[LEASE_KEY.into()],
            )
            .await?
            .bool("locked")?;
        if !locked {
            tx.commit().await?;
            return Ok(Round::Leased);
        }
        lease = Some(tx);
    }
    let outcome = follow(cx, types, scope, refresh, wait, cancel, lease.as_mut()).await;
    // End the lease's transaction on every path: a dropped sqlx transaction
    // is only rolled back when its connection is next used, and would hold
    // the lock until then.
    if let Some(tx) = lease {
        tx.commit().await?;
    }
    outcome
}

/// The body of [`round`], under the lease (if any), which also saves the
/// position.
#[allow(clippy::too_many_arguments)]
async fn follow(
    cx: &EventContext<'_>,
    types: impl AsyncFnOnce() -> Types,
    scope: Option<&Scope>,
    refresh: impl AsyncFnOnce() -> Option<Scope>,
    wait: Duration,
    cancel: &tokio_util::sync::CancellationToken,
    lease: Option<&mut Tx>,
) -> Result<Round, CursorError> {
    let tracking = cx.tracking;
    let position = start_if_new(tracking, cx.client).await?;
    let tracked = gaps(tracking).await?;
    let fresh_before = crate::leases::expired_before(Db::now(), GAP_FRESH);
    let wait = if tracked.iter().any(|(_, seen)| *seen > fresh_before) {
        wait.min(GAP_POLL)
    } else {
        wait
    };
    let page = tokio::select! {
        page = cx.client.events(position, BATCH_SIZE, wait.as_millis() as u64) => page?,
        _ = cancel.cancelled() => return Ok(Round::Stopped),
    };
    // The gaps' events that have appeared since, before the page's: they
    // are older.
    let tracked_ids: Vec<i64> = tracked.iter().map(|(id, _)| *id).collect();
    let (mut events, withheld) = if tracked_ids.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        cx.client.events_by_ids(&tracked_ids).await?
    };
    events.retain(|e| tracked_ids.binary_search(&e.id).is_ok());
    // A gap's event withheld (out of this site's scope) is filled too.
    let mut filled: Vec<i64> = events.iter().map(|e| e.id).collect();
    filled.extend(
        withheld
            .into_iter()
            .filter(|id| tracked_ids.binary_search(id).is_ok()),
    );
    if !filled.is_empty() {
        tracing::info!(
            events = filled.len(),
            "events of earlier gaps in the ids appeared; handled"
        );
    }
    let covered = page_ids(&page);
    let fresh = new_gaps(position, &covered);
    events.extend(page.events.iter().cloned());
    let counts = handle_events(cx, &types().await, scope, refresh, &events).await?;
    if let Some(wakes) = cx.wakes {
        if counts.pending > 0 {
            wakes.sync.notify_one();
        }
        if counts.verification_pending > 0 {
            wakes.verification.notify_one();
        }
    }
    // Past withheld events too, or a page ending in them is read again.
    let new_position = covered.last().map_or(position, |&id| id.max(position));
    let tracked_now = match lease {
        Some(tx) => {
            save_position(tx, new_position).await?;
            save_gaps(tx, &tracked, &filled, &fresh).await?
        }
        None => {
            let mut tx = tracking.begin().await?;
            save_position(&mut tx, new_position).await?;
            let tracked_now = save_gaps(&mut tx, &tracked, &filled, &fresh).await?;
            tx.commit().await?;
            tracked_now
        }
    };
    crate::metrics::EVENT_GAPS.set(tracked_now as i64);
    crate::metrics::REPLICATION_LAG.set(lag_seconds(&page, new_position));
    if !page.events.is_empty() {
        tracing::debug!(
            from = position,
            to = new_position,
            pending = counts.pending,
            deleted = counts.deleted,
            verification_pending = counts.verification_pending,
            ignored = counts.ignored,
            skipped = counts.skipped,
            "events handled"
        );
    }
    Ok(Round::Handled(events.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{SelectiveSync, SyncSettings};
    use crate::secondary::testing::{blob_path, helm, helm_registry, rigs};
    use crate::states::{SyncState, VerificationState};
    use crate::topology::{NamespaceNode, ProjectNode, Topology};
    use serde_json::json;
    use std::cell::Cell;

    fn scope(projects: &[(i64, i64)]) -> Scope {
        let namespaces =
            [(1, None), (2, None)].map(|(id, parent_id)| NamespaceNode { id, parent_id });
        let projects = projects.iter().map(|&(id, namespace_id)| ProjectNode {
            id,
            namespace_id,
            repository_storage: "default".into(),
        });
        Scope {
            settings: SyncSettings {
                selective_sync: SelectiveSync::Namespaces(vec![1]),
                sync_object_storage: false,
            },
            topology: Arc::new(Topology::new(namespaces, projects)),
        }
    }

    /// Rows `ids` of `registry`, started and synced (without the
    /// primary's checksum).
    async fn synced(registry: &Registry, db: &Db, ids: &[i64]) {
        for &id in ids {
            registry.start(db, id).await.unwrap();
            registry.synced(db, id, false).await.unwrap();
        }
    }

    /// The event context of a test rig's downloader: its primary, tracking
    /// database and blob store.
    fn context(d: &crate::secondary::sync::Downloader) -> EventContext<'_> {
        EventContext {
            client: &d.client,
            tracking: &d.tracking,
            blobs: &d.blobs,
            wakes: None,
        }
    }

    fn types(enabled: bool) -> HashMap<String, (Arc<InstalledType>, bool)> {
        let it = helm();
        HashMap::from([(it.name().to_string(), (it, enabled))])
    }

    #[tokio::test]
    async fn events_are_handled_in_order_and_by_kind() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            primary.add(1, 10, b"one", true);
            primary.add(2, 11, b"two", true);
            primary.add(3, 12, b"three", true); // project 12 is newer than the cached topology
            let doomed = primary.add(5, 10, b"five", true);
            let doomed_path = blob_path(&it, &doomed).await;
            blobs
                .put_bytes(it.name(), &doomed_path, bytes::Bytes::from_static(b"five"))
                .await
                .unwrap();
            registry
                .insert_missing(&db, &[1, 5, 6, 7, 8])
                .await
                .unwrap();
            synced(&registry, &db, &[1, 7]).await;

            for (name, id, extra) in [
                (CREATED, 1, json!({})),
                (CREATED, 2, json!({})),
                (CREATED, 3, json!({})),
                (UPDATED, 1, json!({})),
                (
                    DELETED,
                    5,
                    json!({"blob_path": doomed_path.as_str(), "uploader_class": "X"}),
                ),
                (DELETED, 6, json!({"blob_path": "../../etc/passwd"})),
                (CHECKSUM_SUCCEEDED, 7, json!({})),
                (CHECKSUM_SUCCEEDED, 8, json!({})),
                ("renamed", 1, json!({})),
            ] {
                primary.event(name, id, extra);
            }
            let mut events = primary.with(|s| s.events.clone());
            let mut foreign = events[0].clone();
            foreign.replicable_name = "package_file".into();
            events.push(foreign);

            let cx = context(&d);
            let enabled = types(true);
            let cached = scope(&[(10, 1), (11, 2)]);
            let refreshes = Cell::new(0);
            let refresh = async || {
                refreshes.set(refreshes.get() + 1);
                Some(scope(&[(10, 1), (11, 2), (12, 1)]))
            };
            let counts = handle_events(&cx, &enabled, Some(&cached), refresh, &events)
                .await
                .unwrap();
            assert_eq!(
                counts,
                EventCounts {
                    pending: 3,
                    ignored: 1,
                    deleted: 2,
                    verification_pending: 1,
                    skipped: 2
                },
                "{backend}"
            );
            assert_eq!(
                refreshes.get(),
                1,
                "{backend}: one topology refresh per batch"
            );

            let one = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(
                (one.state, one.verification_state),
                (SyncState::Pending, VerificationState::Disabled)
            );
            assert_eq!(
                registry.get(&db, 3).await.unwrap().unwrap().state,
                SyncState::Pending,
                "{backend}"
            );
            assert!(
                registry.get(&db, 2).await.unwrap().is_none(),
                "{backend}: out of scope"
            );
            assert!(registry.get(&db, 5).await.unwrap().is_none(), "{backend}");
            assert!(registry.get(&db, 6).await.unwrap().is_none(), "{backend}");
            assert!(
                !blobs.exists(it.name(), &doomed_path).await.unwrap(),
                "{backend}: blob deleted"
            );
            assert_eq!(
                registry
                    .get(&db, 7)
                    .await
                    .unwrap()
                    .unwrap()
                    .verification_state,
                VerificationState::Pending
            );
            assert_eq!(
                registry.get(&db, 8).await.unwrap().unwrap().state,
                SyncState::Pending
            );

            // Replication disabled: created/updated ignored, deletes still applied.
            let enabled = types(false);
            registry.insert_missing(&db, &[9]).await.unwrap();
            let later = [
                primary.event(CREATED, 2, json!({})),
                primary.event(DELETED, 9, json!({"blob_path": "a/b"})),
            ];
            let events: Vec<FeedEvent> = primary.with(|s| {
                s.events
                    .iter()
                    .filter(|e| later.contains(&e.id))
                    .cloned()
                    .collect()
            });
            let counts = handle_events(&cx, &enabled, Some(&cached), async || None, &events)
                .await
                .unwrap();
            assert_eq!((counts.ignored, counts.deleted), (1, 1), "{backend}");
            assert!(registry.get(&db, 9).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn runs_of_events_keep_their_order() {
        let (_, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            for id in 1..=6 {
                primary.add(id, 10, b"x", true);
            }
            registry.insert_missing(&db, &[1, 2, 3]).await.unwrap();
            synced(&registry, &db, &[1, 2, 3]).await;
            // A run of creations (4 twice), checksums of synced rows, an
            // update that must win over the checksum before it, a record
            // created and deleted in the same page, a checksum after an
            // update (which finds the row pending and changes nothing).
            for (name, id, extra) in [
                (CREATED, 4, json!({})),
                (CREATED, 5, json!({})),
                (UPDATED, 4, json!({})),
                (CHECKSUM_SUCCEEDED, 1, json!({})),
                (CHECKSUM_SUCCEEDED, 2, json!({})),
                (UPDATED, 2, json!({})),
                (CREATED, 6, json!({})),
                (DELETED, 6, json!({"blob_path": "a/b"})),
                (UPDATED, 3, json!({})),
                (CHECKSUM_SUCCEEDED, 3, json!({})),
            ] {
                primary.event(name, id, extra);
            }
            let events = primary.with(|s| s.events.clone());
            let cx = context(&d);
            let counts = handle_events(
                &cx,
                &types(true),
                Some(&scope(&[(10, 1)])),
                async || None,
                &events,
            )
            .await
            .unwrap();
            assert_eq!(
                counts,
                EventCounts {
                    pending: 6,
                    ignored: 0,
                    deleted: 1,
                    verification_pending: 2,
                    skipped: 0
                },
                "{backend}"
            );
            let state = async |id| {
                registry
                    .get(&db, id)
                    .await
                    .unwrap()
                    .map(|r| (r.state, r.verification_state))
            };
            use SyncState::*;
            use VerificationState::{Disabled, Pending as VPending};
            assert_eq!(state(1).await, Some((Synced, VPending)), "{backend}");
            assert_eq!(state(2).await, Some((Pending, Disabled)), "{backend}");
            assert_eq!(state(3).await, Some((Pending, Disabled)), "{backend}");
            assert_eq!(state(4).await, Some((Pending, Disabled)), "{backend}");
            assert_eq!(state(5).await, Some((Pending, Disabled)), "{backend}");
            assert_eq!(state(6).await, None, "{backend}");
        }
    }

    #[test]
    fn gaps_are_the_ids_a_page_skips() {
        let event = |id| FeedEvent {
            id,
            replicable_name: "t".into(),
            event_name: CREATED.into(),
            payload: json!({}),
            created_at: Db::now(),
        };
        let ids = |events: &[FeedEvent], withheld: &[i64]| {
            page_ids(&EventPage {
                events: events.to_vec(),
                withheld: withheld.to_vec(),
                last_event_id: None,
                last_event_at: None,
            })
        };
        assert_eq!(
            new_gaps(3, &ids(&[event(4), event(5)], &[])),
            Vec::<i64>::new()
        );
        assert_eq!(new_gaps(3, &ids(&[event(6), event(8)], &[])), [4, 5, 7]);
        assert_eq!(new_gaps(0, &[]), Vec::<i64>::new());
        // Withheld events (out of scope) are not gaps.
        assert_eq!(new_gaps(3, &ids(&[event(6), event(8)], &[4, 7])), [5]);
    }

    #[tokio::test]
    async fn rounds_keep_the_position_and_take_the_lease() {
        for (backend, db, primary, _dir, _, d) in rigs().await {
            for id in 1..=3 {
                primary.event(CHECKSUM_SUCCEEDED, id, json!({}));
            }
            let cx = context(&d);
            let enabled = types(true);
            let cancel = tokio_util::sync::CancellationToken::new();
            let cached = scope(&[(10, 1)]);
            // One round with these types and scope, without waiting.
            let go = async || {
                let types = async || enabled.clone();
                round(
                    &cx,
                    types,
                    Some(&cached),
                    async || None,
                    Duration::ZERO,
                    &cancel,
                )
                .await
                .unwrap()
            };

            // A new cursor starts at the primary's newest event.
            assert_eq!(position(&db).await.unwrap(), None);
            let first = go().await;
            assert_eq!(first, Round::Handled(0), "{backend}");
            assert_eq!(position(&db).await.unwrap(), Some(3), "{backend}");

            primary.add(1, 10, b"one", true);
            primary.event(CREATED, 1, json!({}));
            primary.event(UPDATED, 1, json!({}));
            let second = go().await;
            assert_eq!(second, Round::Handled(2), "{backend}");
            assert_eq!(position(&db).await.unwrap(), Some(5), "{backend}");
            assert!(Registry::of(&helm()).get(&db, 1).await.unwrap().is_some());
            let rows = db
                .fetch_one("SELECT COUNT(*) AS n FROM event_log_states", &[])
                .await
                .unwrap();
            assert_eq!(rows.i64("n").unwrap(), 1, "{backend}: one cursor row");

            // An id whose transaction has not committed yet is passed, kept
            // as a gap, and handled once its event appears.
            primary.add(2, 10, b"two", true);
            let late = primary.event(CREATED, 2, json!({}));
            let hidden = primary.uncommit(&[late]);
            primary.event(UPDATED, 1, json!({}));
            let round_three = go().await;
            assert_eq!(round_three, Round::Handled(1), "{backend}");
            assert_eq!(position(&db).await.unwrap(), Some(late + 1), "{backend}");
            let tracked = gaps(&db).await.unwrap();
            assert_eq!(tracked.iter().map(|g| g.0).collect::<Vec<_>>(), [late]);
            assert!(Registry::of(&helm()).get(&db, 2).await.unwrap().is_none());
            primary.commit(hidden);
            let round_four = go().await;
            assert_eq!(round_four, Round::Handled(1), "{backend}: the late event");
            assert!(gaps(&db).await.unwrap().is_empty(), "{backend}");
            assert!(Registry::of(&helm()).get(&db, 2).await.unwrap().is_some());
            // A gap older than GAP_MAX_AGE is given up.
            db.execute(
                "INSERT INTO event_log_gaps (event_id, seen_at) VALUES ($1, $2)",
                &[
                    1_000_000_i64.into(),
                    crate::leases::expired_before(Db::now(), GAP_MAX_AGE * 2).into(),
                ],
            )
            .await
            .unwrap();
            go().await;
            assert!(gaps(&db).await.unwrap().is_empty(), "{backend}");

            // Events the primary withholds (records out of this site's
            // scope) are not gaps, even at the end of a page, and a gap
            // whose event turns out withheld is filled.
            let before = position(&db).await.unwrap().unwrap();
            let gap = primary.event(UPDATED, 1, json!({}));
            let hidden = primary.uncommit(&[gap]);
            let kept = primary.event(UPDATED, 1, json!({}));
            let last = primary.event(UPDATED, 1, json!({}));
            primary.with(|s| s.withheld.extend([kept, last]));
            let withheld = go().await;
            assert_eq!(withheld, Round::Handled(0), "{backend}");
            assert_eq!(position(&db).await.unwrap(), Some(last), "{backend}");
            assert_eq!(
                gaps(&db)
                    .await
                    .unwrap()
                    .iter()
                    .map(|g| g.0)
                    .collect::<Vec<_>>(),
                [gap],
                "{backend}: only the uncommitted id is a gap (from {before})"
            );
            primary.commit(hidden);
            primary.with(|s| s.withheld.push(gap));
            go().await;
            assert!(gaps(&db).await.unwrap().is_empty(), "{backend}: filled");
            primary.with(|s| s.withheld.clear());

            if db.backend() == Backend::Postgres {
                // Another process holds the cursor: this one waits its turn.
                let mut other = db.begin().await.unwrap();
                other
                    .execute("SELECT pg_advisory_xact_lock($1)", &[LEASE_KEY.into()])
                    .await
                    .unwrap();
                let leased = go().await;
                assert_eq!(leased, Round::Leased, "{backend}");
                other.commit().await.unwrap();
                primary.event(CREATED, 1, json!({}));
                let third = go().await;
                assert_eq!(third, Round::Handled(1), "{backend}");
            }
        }
    }
}
