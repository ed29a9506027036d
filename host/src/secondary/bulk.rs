//! Operator actions on registries: GitLab's `geoRegistriesUpdate` (one row)
//! and `geoRegistriesBulkUpdate` (every row of a type matching a filter).
//!
//! One row ([`resync`], [`reverify`]) goes through the state machine of
//! [`super::registry`]. A bulk action is GitLab's raw `update_all`
//! (GitLab's `ee/app/graphql/mutations/geo/registries/bulk_update.rb`):
//! RESYNC_ALL sets `state = pending` on rows not pending,
//! REVERIFY_ALL sets `verification_state = pending` on rows not pending
//! verification, with no other column touched. It runs in the background
//! in id ranges of [`BATCH_SIZE`] rows, each its own short statement, with
//! `workers.bulk_update_pause_ms` between batches and, as GitLab, a
//! [`PERFORM_IN`] rest after every [`TIME_LIMIT`] of work, so the
//! scheduler's and verifier's writes are never queued behind it (SQLite has
//! one writer at a time).
//!
//! An API bulk action is a job kept in the tracking database
//! (`geo_bulk_jobs`, [`enqueue`]) and run by the secondary's `bulk-jobs`
//! duty in the process holding the singleton duties, which saves its
//! position after every batch: a restart, or the duties moving to another
//! worker process, resumes it after the last batch done (GitLab's jobs live
//! in Sidekiq's Redis queues and survive a restart the same way).

use super::listing::Filter;
use super::registry::{Registry, RegistryRow};
use crate::catalog::{Catalog, InstalledType};
use crate::db::{Arg, Db, DbError};
use crate::states::SyncState;
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

/// One batch: the rows of `it` after registry id `after` that the action
/// and `filter` take, at most [`BATCH_SIZE`], changed. Returns the last
/// registry id of the batch and the rows changed; `None` when none is left.
pub async fn run_batch(
    db: &Db,
    it: &InstalledType,
    action: BulkAction,
    filter: &Filter,
    after: i64,
) -> Result<Option<(i64, u64)>, DbError> {
    let registry = Registry::of(it);
    let (scope, set) = action.scope_and_set();
    let mut args: Vec<Arg> = vec![after.into()];
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
    let Some(high) = high else {
        return Ok(None);
    };
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
    crate::metrics::BULK_UPDATE_BATCHES
        .with_label_values(&[it.name(), action.name()])
        .inc();
    crate::metrics::BULK_UPDATE_ROWS
        .with_label_values(&[it.name(), action.name()])
        .inc_by(n);
    Ok(Some((high, n)))
}

/// The rest before the next batch: `pause`, or [`PERFORM_IN`] after every
/// [`TIME_LIMIT`] of work (`slice` is when the current stretch began).
fn rest(slice: &mut Instant, pause: Duration) -> Duration {
    if slice.elapsed() >= TIME_LIMIT {
        *slice = Instant::now() + PERFORM_IN;
        PERFORM_IN
    } else {
        pause
    }
}

/// Runs a bulk action to the end (or until `cancel`): batch after batch of
/// up to [`BATCH_SIZE`] rows in id order, pausing `pause` between batches.
/// Nothing is kept: the CLI runs it in the foreground; the API's jobs are
/// kept and resumed ([`run_job`]).
pub async fn run(
    db: &Db,
    it: &InstalledType,
    action: BulkAction,
    filter: &Filter,
    pause: Duration,
    cancel: &CancellationToken,
) -> Result<BulkOutcome, DbError> {
    let mut outcome = BulkOutcome::default();
    let mut cursor = 0_i64;
    let mut slice = Instant::now();
    while let Some((high, n)) = run_batch(db, it, action, filter, cursor).await? {
        outcome.batches += 1;
        outcome.rows += n;
        cursor = high;
        tokio::select! {
            _ = tokio::time::sleep(rest(&mut slice, pause)) => {}
            _ = cancel.cancelled() => break,
        }
    }
    Ok(outcome)
}

/// Where a kept job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting, or running in the process that holds the duties.
    Queued,
    Done,
    /// Its type is no longer installed, or a batch failed for good.
    Failed,
}

impl JobState {
    fn as_i16(self) -> i16 {
        match self {
            JobState::Queued => 0,
            JobState::Done => 1,
            JobState::Failed => 2,
        }
    }

    fn from_i16(value: i16) -> JobState {
        match value {
            0 => JobState::Queued,
            1 => JobState::Done,
            _ => JobState::Failed,
        }
    }
}

/// A bulk action kept in `geo_bulk_jobs` (GraphQL's
/// `geoRegistriesBulkUpdate`): it survives a restart and resumes after the
/// last batch done.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkJob {
    pub id: i64,
    pub replicable_name: String,
    pub action: BulkAction,
    pub filter: Filter,
    /// The last registry id of the last batch done.
    pub last_registry_id: i64,
    pub batches: i64,
    pub rows: i64,
    pub state: JobState,
    pub error: Option<String>,
}

/// Keeps a new job; the `bulk-jobs` duty runs it.
pub async fn enqueue(
    db: &Db,
    replicable_name: &str,
    action: BulkAction,
    filter: &Filter,
) -> Result<i64, DbError> {
    let filter = serde_json::to_string(filter).expect("a filter serialises");
    let now = Db::now();
    let cast = match db.backend() {
        crate::db::Backend::Postgres => "::jsonb",
        crate::db::Backend::Sqlite => "",
    };
    db.fetch_one(
        &format!(
            "INSERT INTO geo_bulk_jobs (replicable_name, action, filter, created_at, updated_at) \
             VALUES ($1, $2, $3{cast}, $4, $4) RETURNING id"
        ),
        &[
            replicable_name.into(),
            action.name().into(),
            filter.into(),
            now.into(),
        ],
    )
    .await?
    .i64("id")
}

/// Every kept job, newest first (at most `limit`).
pub async fn jobs(db: &Db, limit: i64) -> Result<Vec<BulkJob>, DbError> {
    select_jobs(db, "TRUE ORDER BY id DESC LIMIT $1", &[limit.into()]).await
}

/// The oldest queued job.
pub async fn next_job(db: &Db) -> Result<Option<BulkJob>, DbError> {
    Ok(select_jobs(db, "state = 0 ORDER BY id LIMIT 1", &[])
        .await?
        .pop())
}

async fn select_jobs(db: &Db, condition: &str, args: &[Arg]) -> Result<Vec<BulkJob>, DbError> {
    let filter = match db.backend() {
        crate::db::Backend::Postgres => "filter::text",
        crate::db::Backend::Sqlite => "filter",
    };
    let rows = db
        .fetch_all(
            &format!(
                "SELECT id, replicable_name, action, {filter} AS filter, last_registry_id, batches, \
                 rows_changed, state, error FROM geo_bulk_jobs WHERE {condition}"
            ),
            args,
        )
        .await?;
    rows.iter()
        .map(|row| {
            let decode = |column: &str, message: String| DbError::Decode {
                column: column.into(),
                message,
            };
            let action = row.text("action")?;
            Ok(BulkJob {
                id: row.i64("id")?,
                replicable_name: row.text("replicable_name")?,
                action: BulkAction::parse(&action)
                    .ok_or_else(|| decode("action", format!("unknown action {action:?}")))?,
                filter: serde_json::from_str(&row.text("filter")?)
                    .map_err(|e| decode("filter", e.to_string()))?,
                last_registry_id: row.i64("last_registry_id")?,
                batches: row.i64("batches")?,
                rows: row.i64("rows_changed")?,
                state: JobState::from_i16(row.i16("state")?),
                error: row.opt_text("error")?,
            })
        })
        .collect()
}

async fn end_job(db: &Db, id: i64, state: JobState, error: Option<String>) -> Result<(), DbError> {
    let now = Db::now();
    db.execute(
        "UPDATE geo_bulk_jobs SET state = $2, error = $3, updated_at = $4, finished_at = $4 WHERE id = $1",
        &[id.into(), state.as_i16().into(), error.into(), now.into()],
    )
    .await?;
    Ok(())
}

/// Runs a kept job from where it stands, saving its progress after each
/// batch, until `cancel` or while `go_on()` holds (this process keeps
/// the duties). Its type is looked up in `catalog` for each batch (a job
/// must not hold an installed type across its pauses: a hot swap waits for
/// those). Returns the job as it stands when it stops.
pub async fn run_job(
    db: &Db,
    catalog: &Catalog,
    mut job: BulkJob,
    pause: Duration,
    cancel: &CancellationToken,
    go_on: impl Fn() -> bool,
) -> Result<BulkJob, DbError> {
    let mut slice = Instant::now();
    while go_on() && !cancel.is_cancelled() {
        let Some(it) = catalog.get(&job.replicable_name) else {
            let error = format!("type {} is not installed", job.replicable_name);
            end_job(db, job.id, JobState::Failed, Some(error.clone())).await?;
            job.state = JobState::Failed;
            job.error = Some(error);
            break;
        };
        let batch = run_batch(db, &it, job.action, &job.filter, job.last_registry_id).await?;
        drop(it);
        let Some((high, n)) = batch else {
            end_job(db, job.id, JobState::Done, None).await?;
            job.state = JobState::Done;
            tracing::info!(
                job = job.id,
                r#type = %job.replicable_name,
                action = job.action.name(),
                batches = job.batches,
                rows = job.rows,
                "bulk registry update done"
            );
            break;
        };
        job.last_registry_id = high;
        job.batches += 1;
        job.rows += n as i64;
        db.execute(
            "UPDATE geo_bulk_jobs SET last_registry_id = $2, batches = $3, rows_changed = $4, \
             updated_at = $5 WHERE id = $1",
            &[
                job.id.into(),
                high.into(),
                job.batches.into(),
                job.rows.into(),
                Db::now().into(),
            ],
        )
        .await?;
        tokio::select! {
            _ = tokio::time::sleep(rest(&mut slice, pause)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    if job.state == JobState::Queued {
        tracing::info!(
            job = job.id,
            batches = job.batches,
            "bulk registry update paused; it resumes where it stopped"
        );
    }
    Ok(job)
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
    on_one(db, it, registry_id, async |registry, row| {
        if matches!(row.state, SyncState::Synced | SyncState::Failed) {
            registry.resync(db, row.model_id).await?;
        }
        Ok(())
    })
    .await
}

/// GitLab's REVERIFY of one registry (`verify_async`): verification pending.
/// Returns the row afterwards.
pub async fn reverify(
    db: &Db,
    it: &InstalledType,
    registry_id: i64,
) -> Result<Option<RegistryRow>, DbError> {
    on_one(db, it, registry_id, async |registry, row| {
        registry.verification_pending(db, row.model_id).await?;
        Ok(())
    })
    .await
}

/// Runs `action` on registry `registry_id` of `it`, if there is one; the
/// row afterwards.
async fn on_one(
    db: &Db,
    it: &InstalledType,
    registry_id: i64,
    action: impl AsyncFnOnce(&Registry, &RegistryRow) -> Result<(), DbError>,
) -> Result<Option<RegistryRow>, DbError> {
    let registry = Registry::of(it);
    let Some(row) = registry.by_registry_id(db, registry_id).await? else {
        return Ok(None);
    };
    action(&registry, &row).await?;
    registry.by_registry_id(db, registry_id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::{helm, tracking_databases};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_kept_job_stops_between_batches_and_resumes_where_it_stopped() {
        let it = helm();
        let catalog = Catalog::new();
        catalog.install(it.plugin.clone()).unwrap();
        let registry = Registry::of(&it);
        for (backend, db) in tracking_databases().await {
            let ids: Vec<i64> = (1..=2_500).collect();
            registry.insert_missing(&db, &ids).await.unwrap();
            db.execute(
                &format!(
                    "UPDATE {} SET state = 2, verification_state = 2",
                    registry.table()
                ),
                &[],
            )
            .await
            .unwrap();
            let filter = Filter::default();
            let id = enqueue(&db, it.name(), BulkAction::ReverifyAll, &filter)
                .await
                .unwrap();
            let job = next_job(&db).await.unwrap().unwrap();
            assert_eq!((job.id, job.state, job.batches), (id, JobState::Queued, 0));

            // Stopped after two batches (the process lost the duties).
            let batches = AtomicUsize::new(0);
            let cancel = CancellationToken::new();
            let go_on = || batches.fetch_add(1, Ordering::SeqCst) < 2;
            let job = run_job(&db, &catalog, job, Duration::ZERO, &cancel, go_on)
                .await
                .unwrap();
            assert_eq!(
                (job.state, job.batches, job.rows),
                (JobState::Queued, 2, 2_000)
            );

            // The next holder resumes it from the row kept.
            let job = next_job(&db).await.unwrap().unwrap();
            assert_eq!(job.last_registry_id, 2_000, "{backend}");
            let job = run_job(&db, &catalog, job, Duration::ZERO, &cancel, || true)
                .await
                .unwrap();
            assert_eq!(
                (job.state, job.batches, job.rows),
                (JobState::Done, 3, 2_500)
            );
            assert!(next_job(&db).await.unwrap().is_none());
            let pending = db
                .fetch_one(
                    &format!(
                        "SELECT COUNT(*) AS n FROM {} WHERE verification_state = 0",
                        registry.table()
                    ),
                    &[],
                )
                .await
                .unwrap()
                .i64("n")
                .unwrap();
            assert_eq!(pending, 2_500, "{backend}");
            assert_eq!(jobs(&db, 10).await.unwrap()[0].state, JobState::Done);

            // A job whose type went away fails, saying why.
            enqueue(&db, "gone_type", BulkAction::ResyncAll, &filter)
                .await
                .unwrap();
            let job = next_job(&db).await.unwrap().unwrap();
            let job = run_job(&db, &catalog, job, Duration::ZERO, &cancel, || true)
                .await
                .unwrap();
            assert_eq!(job.state, JobState::Failed);
            assert!(job.error.unwrap().contains("not installed"));
        }
    }
}
