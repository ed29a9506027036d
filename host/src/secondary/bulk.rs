//! Operator actions on registries: GitLab's `geoRegistriesUpdate` (one row)
//! and `geoRegistriesBulkUpdate` (every row of a type matching a filter).
//!
//! One row ([`resync`], [`reverify`]) goes through the state machine of
//! [`super::registry`]. A bulk action is GitLab's raw `update_all`
//! (reference §8): RESYNC_ALL sets `state = pending` on rows not pending,
//! REVERIFY_ALL sets `verification_state = pending` on rows not pending
//! verification, with no other column touched. It runs in the background
//! in id ranges of [`BATCH_SIZE`] rows, each its own short statement, with
//! `workers.bulk_update_pause_ms` between batches and, as GitLab, a
//! [`PERFORM_IN`] rest after every [`TIME_LIMIT`] of work, so the
//! scheduler's and verifier's writes are never queued behind it (SQLite has
//! one writer at a time).

use super::listing::Filter;
use super::registry::{Registry, RegistryRow};
use crate::catalog::InstalledType;
use crate::db::{Arg, Db, DbError};
use crate::states::SyncState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rows per batch (GitLab's `BaseBatchBulkUpdateService::BATCH_SIZE`).
pub const BATCH_SIZE: i64 = 1_000;
/// Work before a rest (GitLab's `TIME_LIMIT`).
pub const TIME_LIMIT: Duration = Duration::from_secs(20);
/// The rest (GitLab re-enqueues the job `PERFORM_IN` later).
pub const PERFORM_IN: Duration = Duration::from_secs(10);

/// A bulk action (GitLab's `GeoRegistriesBulkAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    ResyncAll,
    ReverifyAll,
}

impl BulkAction {
    pub fn parse(name: &str) -> Option<BulkAction> {
        match name {
            "RESYNC_ALL" => Some(BulkAction::ResyncAll),
            "REVERIFY_ALL" => Some(BulkAction::ReverifyAll),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BulkAction::ResyncAll => "RESYNC_ALL",
            BulkAction::ReverifyAll => "REVERIFY_ALL",
        }
    }

    /// The rows it changes, and how.
    fn scope_and_set(self) -> (String, String) {
        use crate::states::sql::{S_PENDING, V_PENDING};
        match self {
            BulkAction::ResyncAll => (
                format!("state <> {S_PENDING}"),
                format!("state = {S_PENDING}"),
            ),
            BulkAction::ReverifyAll => (
                format!("verification_state <> {V_PENDING}"),
                format!("verification_state = {V_PENDING}"),
            ),
        }
    }
}

/// What a bulk action did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    pub batches: u64,
    pub rows: u64,
}

/// Runs a bulk action to the end (or until `cancel`): batch after batch of
/// up to [`BATCH_SIZE`] rows in id order, pausing `pause` between batches.
pub async fn run(
    db: &Db,
    it: &InstalledType,
    action: BulkAction,
    filter: &Filter,
    pause: Duration,
    cancel: &CancellationToken,
) -> Result<BulkOutcome, DbError> {
    let registry = Registry::of(it);
    let (scope, set) = action.scope_and_set();
    let batches =
        crate::metrics::BULK_UPDATE_BATCHES.with_label_values(&[it.name(), action.name()]);
    let changed = crate::metrics::BULK_UPDATE_ROWS.with_label_values(&[it.name(), action.name()]);
    let mut outcome = BulkOutcome::default();
    let mut cursor = 0_i64;
    let mut slice = Instant::now();
    loop {
        let mut args: Vec<Arg> = vec![cursor.into()];
        let conditions = filter.conditions(&registry, &mut args);
        let where_ = format!("id > $1 AND {scope} AND {conditions}");
        let high = db
            .fetch_one(
                &format!(
                    "SELECT MAX(id) AS high FROM (SELECT id FROM {t} WHERE {where_} ORDER BY id LIMIT {BATCH_SIZE}) batch",
                    t = registry.table()
                ),
                &args,
            )
            .await?
            .opt_i64("high")?;
        let Some(high) = high else { break };
        args.push(high.into());
        let n = db
            .execute(
                &format!(
                    "UPDATE {t} SET {set} WHERE {where_} AND id <= ${}",
                    args.len(),
                    t = registry.table()
                ),
                &args,
            )
            .await?;
        outcome.batches += 1;
        outcome.rows += n;
        batches.inc();
        changed.inc_by(n);
        cursor = high;
        let rest = if slice.elapsed() >= TIME_LIMIT {
            slice = Instant::now() + PERFORM_IN;
            PERFORM_IN
        } else {
            pause
        };
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = cancel.cancelled() => break,
        }
    }
    Ok(outcome)
}

/// Starts a bulk action in the background; it logs how it ended.
pub fn spawn(
    db: Db,
    it: Arc<InstalledType>,
    action: BulkAction,
    filter: Filter,
    pause: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        match run(&db, &it, action, &filter, pause, &cancel).await {
            Ok(outcome) => tracing::info!(
                r#type = it.name(),
                action = action.name(),
                batches = outcome.batches,
                rows = outcome.rows,
                took = ?started.elapsed(),
                "bulk registry update done"
            ),
            Err(error) => tracing::error!(
                r#type = it.name(),
                action = action.name(),
                %error,
                "bulk registry update failed"
            ),
        }
    })
}

/// GitLab's RESYNC of one registry (`enqueue_sync`): a synced or failed row
/// goes back to pending (retry fields cleared, verification disabled) and
/// the scheduler takes it; a pending or started one is already queued or
/// running and stays as it is. Returns the row afterwards.
pub async fn resync(
    db: &Db,
    it: &InstalledType,
    registry_id: i64,
) -> Result<Option<RegistryRow>, DbError> {
    let registry = Registry::of(it);
    let Some(row) = registry.by_registry_id(db, registry_id).await? else {
        return Ok(None);
    };
    if matches!(row.state, SyncState::Synced | SyncState::Failed) {
        registry.resync(db, row.model_id).await?;
    }
    registry.by_registry_id(db, registry_id).await
}

/// GitLab's REVERIFY of one registry (`verify_async`): verification pending.
/// Returns the row afterwards.
pub async fn reverify(
    db: &Db,
    it: &InstalledType,
    registry_id: i64,
) -> Result<Option<RegistryRow>, DbError> {
    let registry = Registry::of(it);
    let Some(row) = registry.by_registry_id(db, registry_id).await? else {
        return Ok(None);
    };
    registry.verification_pending(db, row.model_id).await?;
    registry.by_registry_id(db, registry_id).await
}
