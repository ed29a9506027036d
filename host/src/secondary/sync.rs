//! Downloading blobs from the primary: the scheduler (GitLab's
//! `RegistrySyncWorker`) and the downloader (`BlobDownloadService` with
//! `BlobDownloader`).
//!
//! **Scheduler.** At most `files_max_capacity` (the node's setting on the
//! primary) downloads run at once. Free slots are shared round-robin across
//! the types whose replication is enabled; each type's share is *claimed*
//! with one atomic statement that starts the rows (pending rows first, then
//! failed rows whose `retry_at` is due, NULLs first), so two schedulers,
//! even in two processes on one PostgreSQL tracking database, never download
//! the same record. GitLab instead schedules ids and lets the job `start!`
//! them under an 8-hour lease; the claim is both at once. While downloads
//! run, the scheduler claims once a quarter of the slots are free, not each
//! time one frees: a claim costs a statement, a feed request and a plugin
//! call (the claim's blob paths) whatever its size.
//!
//! **Downloader**, for one started row:
//!
//! 1. the record comes from the feed (`records?ids=`, fetched for the whole
//!    claim); the type's plugin gives its blob path (one call for the claim);
//! 2. `GET /api/v4/geo/retrieve/:name/:id`; a non-2xx answer fails the row
//!    ("Non-success HTTP response status code N: …"), with the 4-hour
//!    backoff cap when the primary says `FILE_NOT_FOUND`;
//! 3. the body streams into a temporary object, hashed on the way, and is
//!    aborted as soon as it grows past the record's announced size (its
//!    blob-size column), or past [`MAX_UNDECLARED_BLOB_BYTES`] when the
//!    type has no such column: a primary cannot fill the secondary's disk;
//! 4. its size must equal `Content-Length` when the primary sent one;
//! 5. when the primary has a checksum (the `x-geo-checksum` header, else the
//!    feed record's checksum if its verification succeeded), the download
//!    must match it: SHA-256, or the padded size for a record the primary
//!    keeps in object storage (`file_store = 2`). A mismatch discards the
//!    download: "Downloaded file checksum mismatch";
//! 6. only then the temporary object is renamed to the blob path (atomic on
//!    a local disk), and the row marked synced. If that atomic `synced`
//!    finds the row no longer started, an event asked for a resync during
//!    the download: the file stays, the row is pending and is downloaded
//!    again; or the row is gone (a `deleted` event): the file goes too.
//!
//! Every error marks the row failed ("Error while attempting to sync: …"):
//! a row is never left `started` by this process, except when the process
//! dies (the stuck-sync timeout then fails it). A download interrupted by
//! shutdown puts its row back to pending.

use super::client::{ClientError, PrimaryClient};
use super::registry::{Registry, SyncClaim};
use crate::catalog::InstalledType;
use crate::db::{Db, DbError};
use crate::feed::FeedRecord;
use crate::metrics;
use crate::plugin::BlobPath;
use crate::states::VerificationState;
use crate::storage::{BlobStore, StorageError, format_file_size_for_checksum};
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// GitLab's failure text for a download that does not match the primary's checksum.
pub const CHECKSUM_MISMATCH: &str = "Downloaded file checksum mismatch";
/// The response header carrying the primary's checksum (Geohost's addition).
pub const CHECKSUM_HEADER: &str = "x-geo-checksum";
/// Why a download is bounded by its record's size (in failure texts).
pub(super) const RECORD_SIZE: &str = "the record's size on the primary";
/// Largest download of a record whose size the primary does not announce
/// (its type has no blob-size column): 5 GiB, the largest object an S3
/// secondary can place (a server-side copy), far above any metadata file.
pub const MAX_UNDECLARED_BLOB_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// How one sync attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResult {
    /// Downloaded, checked, in place, and the row is synced.
    Synced { bytes: u64 },
    /// Downloaded and in place, but a resync was asked meanwhile: the row
    /// is pending again.
    Superseded { bytes: u64 },
    /// The row is failed with this text.
    Failed {
        message: String,
        missing_on_primary: bool,
    },
    /// Interrupted by shutdown; the row is pending again.
    Interrupted,
}

impl SyncResult {
    fn label(&self) -> &'static str {
        match self {
            SyncResult::Synced { .. } => "synced",
            SyncResult::Superseded { .. } => "superseded",
            SyncResult::Failed { .. } => "failed",
            SyncResult::Interrupted => "interrupted",
        }
    }
}

/// Why an attempt failed, before it becomes the row's failure text.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    #[error("Non-success HTTP response status code {status}: {message}")]
    Status {
        status: u16,
        message: String,
        missing_on_primary: bool,
    },
    #[error("{CHECKSUM_MISMATCH}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("Downloaded file size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(
        "Downloaded file larger than {limit} bytes ({why}): download aborted after {received} bytes"
    )]
    TooLarge {
        limit: u64,
        received: u64,
        why: &'static str,
    },
    #[error("Error while attempting to sync: {0}")]
    Other(String),
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl From<StorageError> for AttemptError {
    fn from(e: StorageError) -> Self {
        AttemptError::Other(e.to_string())
    }
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        match (&e, e.status()) {
            (ClientError::FileNotFound { message, .. }, Some(status))
            | (ClientError::NotFound { message, .. }, Some(status))
            | (ClientError::Status { message, .. }, Some(status)) => AttemptError::Status {
                status,
                message: message.clone(),
                missing_on_primary: e.is_missing_on_primary(),
            },
            _ => AttemptError::Other(e.to_string()),
        }
    }
}

/// Downloads blobs for started registry rows; cheap to clone.
#[derive(Clone, Debug)]
pub struct Downloader {
    pub client: PrimaryClient,
    pub tracking: Db,
    pub blobs: BlobStore,
    /// Cancelled on shutdown: downloads in flight stop and release their rows.
    pub cancel: CancellationToken,
    /// The claim lease (`workers.claim_lease_secs`): the scheduler renews
    /// its claims every third of it and takes over `started` rows whose
    /// claim is older (their process died). `None`: no takeover; such rows
    /// wait for the stuck-sync timeout.
    pub lease: Option<std::time::Duration>,
    /// Wakes this site's verifier when rows become due.
    pub wakes: Arc<super::Wakes>,
}

impl Downloader {
    /// Starts and syncs one record now, whatever its retry time (for
    /// operators, tests and the demo). `None` if the row does not exist or
    /// is already started.
    pub async fn sync_now(
        &self,
        it: &Arc<InstalledType>,
        model_id: i64,
    ) -> Result<Option<SyncResult>, DbError> {
        let registry = Registry::of(it);
        if !registry.start(&self.tracking, model_id).await? {
            return Ok(None);
        }
        let record = match self.client.records_by_ids(it.name(), &[model_id]).await {
            Ok(mut records) => records.pop(),
            Err(error) => {
                let message = AttemptError::from(error).to_string();
                registry
                    .failed(&self.tracking, model_id, &message, false)
                    .await?;
                return Ok(Some(SyncResult::Failed {
                    message,
                    missing_on_primary: false,
                }));
            }
        };
        Ok(Some(self.sync_started(it, model_id, record).await))
    }

    /// Syncs a row this process has started, given its feed record (`None`:
    /// the primary has no such record), and records the outcome in the
    /// registry. Never leaves the row started, even if the attempt panics.
    pub async fn sync_started(
        &self,
        it: &Arc<InstalledType>,
        model_id: i64,
        record: Option<FeedRecord>,
    ) -> SyncResult {
        self.sync_claimed(it, model_id, record, None).await
    }

    /// [`Downloader::sync_started`], with the record's blob path when the
    /// caller computed it already (the scheduler asks the plugin once per
    /// claim, not once per record).
    pub(super) async fn sync_claimed(
        &self,
        it: &Arc<InstalledType>,
        model_id: i64,
        record: Option<FeedRecord>,
        path: Option<Result<BlobPath, String>>,
    ) -> SyncResult {
        let started = Instant::now();
        let attempt = std::panic::AssertUnwindSafe(self.attempt(it, model_id, record, path))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(AttemptError::Other("the download task panicked".into())));
        let registry = Registry::of(it);
        let db = &self.tracking;
        let result = match attempt {
            Ok((bytes, primary_verified, path)) => {
                match registry.synced(db, model_id, primary_verified).await {
                    Ok(true) => {
                        if primary_verified {
                            self.wakes.verification.notify_one();
                        } else {
                            self.catch_up_verification(&registry, it, model_id).await;
                        }
                        SyncResult::Synced { bytes }
                    }
                    Ok(false) => {
                        self.superseded(&registry, it, model_id, &path).await;
                        SyncResult::Superseded { bytes }
                    }
                    Err(error) => {
                        self.fail(
                            &registry,
                            it,
                            model_id,
                            AttemptError::Other(error.to_string()),
                        )
                        .await
                    }
                }
            }
            Err(AttemptError::Interrupted) => {
                if let Err(error) = registry.pending(db, model_id).await {
                    tracing::warn!(r#type = it.name(), id = model_id, %error, "cannot release an interrupted sync");
                }
                SyncResult::Interrupted
            }
            Err(error) => self.fail(&registry, it, model_id, error).await,
        };
        metrics::SYNC_SECONDS
            .with_label_values(&[it.name(), result.label()])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// A row synced before the primary had a checksum waits, verification
    /// disabled, for the primary's `checksum_succeeded` event. If the
    /// primary verified during the download, the cursor may have handled
    /// that event while the row was still `started`, when it changes
    /// nothing: the row would then never be verified. So once the row is
    /// synced, ask the primary again: a checksum found now sets the
    /// verification pending, and an event committed after this read finds
    /// the row synced. If the primary cannot be read, the verification is
    /// set pending all the same: the verifier asks the primary itself (and
    /// disables it again if the primary has no checksum yet); leaving it
    /// disabled would lose the event for good (found by the fault suite:
    /// a download corrupted on the way, accepted for want of a checksum,
    /// was never verified).
    async fn catch_up_verification(&self, registry: &Registry, it: &InstalledType, model_id: i64) {
        self.catch_up_verifications(registry, it, &[model_id]).await
    }

    /// [`Downloader::catch_up_verification`] of many rows, with one read
    /// of the primary and one statement.
    pub(super) async fn catch_up_verifications(
        &self,
        registry: &Registry,
        it: &InstalledType,
        model_ids: &[i64],
    ) {
        if model_ids.is_empty() {
            return;
        }
        let verified: Vec<i64> = match self.client.records_by_ids(it.name(), model_ids).await {
            Ok(records) => records
                .into_iter()
                .filter(|r| {
                    r.verification_state == VerificationState::Succeeded
                        && r.verification_checksum.is_some()
                })
                .map(|r| r.id)
                .filter(|id| model_ids.contains(id))
                .collect(),
            Err(error) => {
                tracing::warn!(
                    r#type = it.name(), rows = model_ids.len(), %error,
                    "cannot re-read the primary's checksums after the sync; the verifier will"
                );
                model_ids.to_vec()
            }
        };
        match registry
            .verification_pending_if_synced_many(&self.tracking, &verified)
            .await
        {
            Ok(n) if n > 0 => self.wakes.verification.notify_one(),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(r#type = it.name(), %error, "cannot set the verification pending")
            }
        }
    }

    /// The row left `started` during the download. Pending again (an event
    /// asked for a resync): the file stays and is replaced by the next
    /// download. Synced by another download: resynced (see below). Gone (a
    /// `deleted` event): the file just placed belongs to no record any
    /// more, so it goes too.
    pub(super) async fn superseded(
        &self,
        registry: &Registry,
        it: &InstalledType,
        model_id: i64,
        path: &BlobPath,
    ) {
        match registry.get(&self.tracking, model_id).await {
            Ok(Some(row)) if row.state == crate::states::SyncState::Synced => {
                // Another download finished while this one ran (this one
                // outlived its claim: the stuck-row pass failed it, and a
                // retry won). This one's file has just replaced that
                // download's, and may be older: resync, or the registry
                // would call a stale file synced and verified (found by the
                // fault suite, a stalled download overwriting a newer one).
                tracing::warn!(
                    r#type = it.name(),
                    id = model_id,
                    "a download outlived its claim and replaced a newer copy; resyncing"
                );
                if let Err(error) = registry.pending(&self.tracking, model_id).await {
                    tracing::warn!(r#type = it.name(), id = model_id, %error, "cannot resync");
                }
            }
            Ok(Some(_)) => {
                tracing::info!(
                    r#type = it.name(),
                    id = model_id,
                    "resync requested during the download"
                )
            }
            Ok(None) => {
                tracing::info!(
                    r#type = it.name(),
                    id = model_id,
                    "record deleted during the download; blob removed"
                );
                if let Err(error) = self.blobs.quarantine(it.name(), path).await {
                    tracing::warn!(r#type = it.name(), id = model_id, %error, "cannot quarantine the blob of a deleted record");
                }
            }
            Err(error) => {
                tracing::warn!(r#type = it.name(), id = model_id, %error, "cannot read the registry row")
            }
        }
    }

    async fn fail(
        &self,
        registry: &Registry,
        it: &InstalledType,
        model_id: i64,
        error: AttemptError,
    ) -> SyncResult {
        let missing_on_primary = matches!(
            error,
            AttemptError::Status {
                missing_on_primary: true,
                ..
            }
        );
        let message = error.to_string();
        match &error {
            AttemptError::ChecksumMismatch { expected, actual } => tracing::warn!(
                r#type = it.name(), id = model_id, %expected, %actual, "{CHECKSUM_MISMATCH}"
            ),
            _ => {
                tracing::warn!(r#type = it.name(), id = model_id, %message, missing_on_primary, "sync failed")
            }
        }
        if let Err(db_error) = registry
            .failed(&self.tracking, model_id, &message, missing_on_primary)
            .await
        {
            tracing::error!(
                r#type = it.name(), id = model_id, error = %db_error,
                "cannot record a failed sync; the stuck-sync timeout will fail the row"
            );
        }
        SyncResult::Failed {
            message,
            missing_on_primary,
        }
    }

    /// Downloads, checks and places the blob. Returns its size, whether the
    /// primary had verified it, and where it was placed.
    async fn attempt(
        &self,
        it: &Arc<InstalledType>,
        model_id: i64,
        record: Option<FeedRecord>,
        path: Option<Result<BlobPath, String>>,
    ) -> Result<(u64, bool, BlobPath), AttemptError> {
        let record = record.ok_or_else(|| {
            AttemptError::Other(format!(
                "{} {model_id} not found on the primary",
                it.identity.title
            ))
        })?;
        let path = match path {
            Some(path) => path,
            None => it
                .blob_paths(std::slice::from_ref(&record))
                .await
                .map_err(|e| AttemptError::Other(e.to_string()))?
                .pop()
                .unwrap_or_else(|| Err("no blob path".into())),
        }
        .map_err(|e| AttemptError::Other(format!("blob path: {e}")))?;

        let response = tokio::select! {
            response = self.client.retrieve(it.name(), model_id) => response?,
            _ = self.cancel.cancelled() => return Err(AttemptError::Interrupted),
        };
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        };
        let content_length =
            header(reqwest::header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        let primary_checksum = header(CHECKSUM_HEADER)
            .filter(|v| !v.is_empty())
            .or_else(|| {
                (record.verification_state == VerificationState::Succeeded)
                    .then(|| record.verification_checksum.clone())
                    .flatten()
            });

        let (limit, why) = match it.declared_size(&record) {
            Some(size) => (size, RECORD_SIZE),
            None => (
                MAX_UNDECLARED_BLOB_BYTES,
                "the limit for a blob of unknown size",
            ),
        };
        let too_large = |received| AttemptError::TooLarge {
            limit,
            received,
            why,
        };
        if let Some(announced) = content_length.filter(|&n| n > limit) {
            return Err(too_large(announced));
        }
        let bytes_metric = metrics::SYNC_BYTES.with_label_values(&[it.name()]);
        let mut temp = self.blobs.begin_temp();
        let mut body = response.bytes_stream();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = self.cancel.cancelled() => return Err(AttemptError::Interrupted),
            };
            let Some(chunk) = chunk else { break };
            let chunk =
                chunk.map_err(|e| AttemptError::Other(format!("reading the download: {e}")))?;
            bytes_metric.inc_by(chunk.len() as u64);
            let received = temp.size() + chunk.len() as u64;
            if received > limit {
                // Dropping the body closes the connection; dropping the
                // temporary object removes what was written.
                return Err(too_large(received));
            }
            temp.write(chunk).await?;
        }
        let finished = temp.finish().await?;

        if let Some(expected) = content_length
            && expected != finished.size
        {
            let actual = finished.size;
            discard(finished).await;
            return Err(AttemptError::SizeMismatch { expected, actual });
        }
        if let Some(expected) = &primary_checksum {
            let actual = if it.is_object_stored(&record) {
                format_file_size_for_checksum(finished.size)
            } else {
                finished.sha256_hex.clone()
            };
            if !actual.eq_ignore_ascii_case(expected) {
                discard(finished).await;
                return Err(AttemptError::ChecksumMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let written = finished.promote(it.name(), &path).await?;
        tracing::debug!(
            r#type = it.name(),
            id = model_id,
            size = written.size,
            path = path.as_str(),
            "blob synced"
        );
        Ok((written.size, primary_checksum.is_some(), path))
    }
}

async fn discard(finished: crate::storage::FinishedTemp) {
    if let Err(error) = finished.discard().await {
        tracing::warn!(%error, "cannot delete a rejected download");
    }
}

/// Claims up to `limit` rows of `it` and fetches their feed records. The
/// rows are started; the caller must sync each one (with
/// [`Downloader::sync_started`]). If the records cannot be fetched, the
/// rows are failed at once and nothing is returned.
pub async fn claim(
    downloader: &Downloader,
    it: &Arc<InstalledType>,
    limit: i64,
) -> Result<Vec<(SyncClaim, Option<FeedRecord>)>, DbError> {
    let registry = Registry::of(it);
    let claims = registry
        .claim_sync_leased(&downloader.tracking, limit, downloader.lease)
        .await?;
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = claims.iter().map(|c| c.model_id).collect();
    match downloader.client.records_by_ids(it.name(), &ids).await {
        Ok(records) => {
            let mut by_id: HashMap<i64, FeedRecord> =
                records.into_iter().map(|r| (r.id, r)).collect();
            Ok(claims
                .into_iter()
                .map(|c| (c, by_id.remove(&c.model_id)))
                .collect())
        }
        Err(error) => {
            let message = AttemptError::from(error).to_string();
            tracing::warn!(r#type = it.name(), claimed = claims.len(), %message, "cannot read the claimed records");
            for claim in claims {
                registry
                    .failed(&downloader.tracking, claim.model_id, &message, false)
                    .await?;
            }
            Ok(Vec::new())
        }
    }
}

/// The blob paths of claimed rows' records, by model id, from one plugin
/// call. A row missing from the answer (no record, or the call failed) gets
/// its path asked again by its own download, which then reports the error.
pub(super) async fn claim_paths(
    it: &Arc<InstalledType>,
    rows: &[(SyncClaim, Option<FeedRecord>)],
) -> HashMap<i64, Result<BlobPath, String>> {
    let records: Vec<FeedRecord> = rows.iter().filter_map(|(_, r)| r.clone()).collect();
    if records.is_empty() {
        return HashMap::new();
    }
    match it.blob_paths(&records).await {
        Ok(paths) if paths.len() == records.len() => {
            records.iter().map(|r| r.id).zip(paths).collect()
        }
        Ok(_) => HashMap::new(),
        Err(error) => {
            tracing::debug!(r#type = it.name(), %error, "blob paths of a claim; asked again per record");
            HashMap::new()
        }
    }
}

/// The scheduler: runs until `downloader.cancel` is cancelled, then waits
/// for the downloads in flight to release their rows.
///
/// `types` gives, each round, the types whose replication is enabled and the
/// capacity (`files_max_capacity`); `idle` is the pause when there is
/// nothing to do.
pub async fn run_scheduler<F, Fut>(downloader: Downloader, mut types: F, idle: std::time::Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<(Vec<Arc<InstalledType>>, usize)>>,
{
    let mut in_flight = tokio::task::JoinSet::new();
    let mut round = 0usize;
    let held = Held::default();
    let mut renewal = Renewal::of(&downloader);
    while !downloader.cancel.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        renewal.when_due(&held, &downloader.tracking).await;
        let mut claimed = 0;
        let mut free = 0;
        if let Some((enabled, capacity)) = types().await {
            free = capacity.max(1).saturating_sub(in_flight.len());
            // A claim costs a statement and a feed request whatever its
            // size: while downloads run, claim once a quarter of the slots
            // are free rather than each time one frees.
            let group = (capacity / 4).max(1);
            if free > 0 && (free >= group || in_flight.is_empty()) && !enabled.is_empty() {
                round = round.wrapping_add(1);
                let n = enabled.len();
                let mut remaining = free;
                for i in 0..n {
                    if remaining == 0 {
                        break;
                    }
                    let it = &enabled[(round + i) % n];
                    let share = remaining.div_ceil(n - i);
                    match claim(&downloader, it, share as i64).await {
                        Ok(rows) => {
                            remaining -= rows.len().min(remaining);
                            claimed += rows.len();
                            let mut paths = claim_paths(it, &rows).await;
                            for (row, record) in rows {
                                let downloader = downloader.clone();
                                let it = it.clone();
                                let path = paths.remove(&row.model_id);
                                let held = held.clone();
                                held.add(&it, row.model_id);
                                in_flight.spawn(async move {
                                    downloader
                                        .sync_claimed(&it, row.model_id, record, path)
                                        .await;
                                    held.remove(&it, row.model_id);
                                });
                            }
                        }
                        Err(error) => {
                            tracing::warn!(r#type = it.name(), %error, "cannot claim rows to sync")
                        }
                    }
                }
            }
        }
        if claimed > 0 && claimed >= free {
            // Every slot filled: the next round waits for one to free.
            continue;
        }
        // Nothing (more) to claim: wait for a download to end or work to
        // appear (or for the next renewal of the claims).
        let pause = renewal.pause(idle);
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = downloader.wakes.sync.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = downloader.cancel.cancelled() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// When a scheduler renews the claims it holds: every third of the
/// downloader's lease (never without one).
pub(super) struct Renewal {
    every: Option<std::time::Duration>,
    at: Instant,
}

impl Renewal {
    pub(super) fn of(downloader: &Downloader) -> Renewal {
        Renewal {
            every: downloader.lease.map(|lease| lease / 3),
            at: Instant::now(),
        }
    }

    /// Renews `held` if a third of the lease has passed since last time.
    pub(super) async fn when_due(&mut self, held: &Held, tracking: &Db) {
        if let Some(every) = self.every
            && self.at.elapsed() >= every
        {
            held.renew(tracking).await;
            self.at = Instant::now();
        }
    }

    /// `idle`, shortened so that an idle wait never delays a renewal.
    pub(super) fn pause(&self, idle: std::time::Duration) -> std::time::Duration {
        self.every.map_or(idle, |every| idle.min(every))
    }
}

/// The rows this scheduler's downloads hold, by type, for renewing their
/// claims. It keeps each type's registry table, not its installed version:
/// holding the version would keep a hot swap from draining (`swap::drain`).
#[derive(Clone, Default)]
pub(super) struct Held(Arc<std::sync::Mutex<HashMap<String, (Registry, Vec<i64>)>>>);

impl Held {
    pub(super) fn add(&self, it: &InstalledType, model_id: i64) {
        let mut held = self.0.lock().expect("held claims");
        held.entry(it.name().to_string())
            .or_insert_with(|| (Registry::of(it), Vec::new()))
            .1
            .push(model_id);
    }

    pub(super) fn remove(&self, it: &InstalledType, model_id: i64) {
        let mut held = self.0.lock().expect("held claims");
        if let Some((_, ids)) = held.get_mut(it.name()) {
            ids.retain(|&id| id != model_id);
            if ids.is_empty() {
                held.remove(it.name());
            }
        }
    }

    /// Renews every held claim (`last_synced_at = now`).
    pub(super) async fn renew(&self, tracking: &Db) {
        let snapshot: Vec<(String, Registry, Vec<i64>)> = self
            .0
            .lock()
            .expect("held claims")
            .iter()
            .map(|(name, (registry, ids))| (name.clone(), registry.clone(), ids.clone()))
            .collect();
        for (name, registry, ids) in snapshot {
            match registry.renew_syncs(tracking, &ids).await {
                Ok(renewed) => {
                    tracing::debug!(r#type = %name, held = ids.len(), renewed, "sync claims renewed")
                }
                Err(error) => {
                    tracing::warn!(r#type = %name, %error, "cannot renew the sync claims")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::{
        FakePrimary, helm_registry, rigs, sha256, stored, unreachable_primary,
    };
    use crate::states::SyncState;

    #[tokio::test]
    async fn downloads_check_and_place_the_blob() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            let verified = primary.add(1, 10, b"apiVersion: v1\n", true);
            let unverified = primary.add(2, 10, b"entries: {}\n", false);
            registry.insert_missing(&db, &[1, 2]).await.unwrap();

            assert_eq!(
                d.sync_now(&it, 1).await.unwrap(),
                Some(SyncResult::Synced { bytes: 15 }),
                "{backend}"
            );
            assert_eq!(
                stored(&blobs, &verified).await.as_deref(),
                Some(&b"apiVersion: v1\n"[..])
            );
            let row = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(
                (row.state, row.verification_state),
                (SyncState::Synced, VerificationState::Pending)
            );

            // The primary has not verified it yet: synced, verification disabled.
            assert_eq!(
                d.sync_now(&it, 2).await.unwrap(),
                Some(SyncResult::Synced { bytes: 12 }),
                "{backend}"
            );
            assert_eq!(
                stored(&blobs, &unverified).await.as_deref(),
                Some(&b"entries: {}\n"[..])
            );
            let row = registry.get(&db, 2).await.unwrap().unwrap();
            assert_eq!(
                row.verification_state,
                VerificationState::Disabled,
                "{backend}"
            );
            // A started row is not synced twice at once.
            registry.start(&db, 2).await.unwrap();
            assert_eq!(d.sync_now(&it, 2).await.unwrap(), None, "{backend}");
        }
    }

    /// A hostile primary: a blob larger than its record (announced by
    /// `Content-Length`, or streamed without end), a JSON answer without
    /// end, a redirect to another host. Each download fails with a clear
    /// failure after a bounded read, and the next record syncs.
    #[tokio::test]
    async fn a_hostile_primary_cannot_make_a_download_unbounded() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, dir, _, d) in rigs().await {
            let elsewhere = FakePrimary::start_on("127.0.0.2").await;
            for id in 1..=6 {
                primary.add(id, 10, format!("entries: {id}\n").as_bytes(), true);
                elsewhere.add(id, 10, format!("entries: {id}\n").as_bytes(), true);
            }
            registry
                .insert_missing(&db, &[1, 2, 3, 4, 5, 6])
                .await
                .unwrap();
            let fails = async |id: i64, needle: &str| {
                let result = d.sync_now(&it, id).await.unwrap().unwrap();
                assert!(
                    matches!(&result, SyncResult::Failed { message, .. } if message.contains(needle)),
                    "{backend}: record {id}: {result:?}"
                );
                let row = registry.get(&db, id).await.unwrap().unwrap();
                assert_eq!(row.state, SyncState::Failed, "{backend}");
                let failure = row.last_sync_failure.unwrap_or_default();
                assert!(failure.contains(needle), "{backend}: {failure}");
                failure
            };
            let synced = async |id: i64| {
                let result = d.sync_now(&it, id).await.unwrap().unwrap();
                assert!(
                    matches!(result, SyncResult::Synced { .. }),
                    "{backend}: record {id}: {result:?}"
                );
            };

            // Larger than the record, announced by Content-Length: refused
            // before a byte is read.
            primary.with(|s| {
                s.blobs.get_mut(&1).unwrap().bytes = vec![b'x'; 70 * 1024];
            });
            let failure = fails(1, "larger than 11 bytes (the record's size on the primary)").await;
            assert!(
                failure.contains(&format!("after {} bytes", 70 * 1024)),
                "{failure}"
            );
            // Streamed without end: aborted past the record's size. What
            // the fake primary manages to send is what the kernel's socket
            // buffers hold, then it stops.
            let buffers = socket_buffers();
            primary.with(|s| s.endless_blobs = true);
            fails(2, "larger than 11 bytes").await;
            primary.with(|s| s.endless_blobs = false);
            let sent = stopped_sending(&primary).await;
            assert!(sent <= buffers, "{backend}: {sent} bytes sent");
            eprintln!("{backend}: the endless blob: {sent} bytes sent");
            // Nothing was placed nor left behind.
            let leftovers = std::fs::read_dir(dir.path().join(crate::storage::TEMP_DIR))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(leftovers, 0, "{backend}");

            // A JSON answer without end stops at the cap.
            let cap = super::super::client::MAX_JSON_BYTES;
            primary.with(|s| s.endless_records = true);
            fails(3, &format!("larger than {cap} bytes")).await;
            primary.with(|s| s.endless_records = false);
            let sent = stopped_sending(&primary).await;
            assert!(sent <= cap + buffers, "{backend}: {sent} bytes sent");
            eprintln!("{backend}: the endless JSON answer: {sent} bytes sent");

            // A redirect off the primary's origin is not followed…
            primary.with(|s| s.redirect_retrieve_to = Some(elsewhere.url.clone()));
            fails(4, "off the primary's origin").await;
            assert_eq!(elsewhere.hits("retrieve"), 0, "{backend}: never asked");
            // …one within it is.
            primary.with(|s| s.redirect_retrieve_to = Some(primary.url.clone()));
            synced(5).await;
            primary.with(|s| s.redirect_retrieve_to = None);

            // The site keeps working.
            synced(6).await;
        }
    }

    /// The most a loopback connection's kernel buffers can hold (the
    /// receiver's and the sender's maxima), 40 MiB if unknown.
    fn socket_buffers() -> u64 {
        let max = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()?
                .split_whitespace()
                .nth(2)?
                .parse::<u64>()
                .ok()
        };
        match (max("tcp_rmem"), max("tcp_wmem")) {
            (Some(r), Some(w)) => r + w,
            _ => 40 << 20,
        }
    }

    /// Waits until the fake primary's endless answer stops growing; returns
    /// the bytes it sent (and resets the count).
    async fn stopped_sending(primary: &FakePrimary) -> u64 {
        let mut sent = primary.with(|s| s.endless_sent);
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = primary.with(|s| s.endless_sent);
            if now == sent {
                return primary.with(|s| std::mem::take(&mut s.endless_sent));
            }
            sent = now;
        }
        panic!("the endless answer is still being read: {sent} bytes sent");
    }

    #[tokio::test]
    async fn a_checksum_mismatch_discards_the_download() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, dir, blobs, d) in rigs().await {
            // The header's checksum is not the content's.
            let header = primary.add(1, 10, b"good", true);
            primary.with(|s| s.blobs.get_mut(&1).unwrap().bytes = b"evil".to_vec());
            // No header: the feed record's checksum is used.
            let feed = primary.add(2, 10, b"good", true);
            primary.with(|s| {
                let blob = s.blobs.get_mut(&2).unwrap();
                blob.header_checksum = None;
                blob.bytes = b"evil".to_vec();
            });
            registry.insert_missing(&db, &[1, 2]).await.unwrap();
            for (id, record) in [(1, &header), (2, &feed)] {
                let result = d.sync_now(&it, id).await.unwrap().unwrap();
                assert_eq!(
                    result,
                    SyncResult::Failed {
                        message: CHECKSUM_MISMATCH.into(),
                        missing_on_primary: false
                    },
                    "{backend}"
                );
                assert_eq!(
                    stored(&blobs, record).await,
                    None,
                    "{backend}: nothing placed"
                );
                let row = registry.get(&db, id).await.unwrap().unwrap();
                assert_eq!(
                    (row.state, row.retry_count),
                    (SyncState::Failed, 1),
                    "{backend}"
                );
                assert_eq!(row.last_sync_failure.as_deref(), Some(CHECKSUM_MISMATCH));
            }
            // The rejected downloads are gone from the temporary folder.
            let leftovers = std::fs::read_dir(dir.path().join(crate::storage::TEMP_DIR))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(leftovers, 0, "{backend}");
        }
    }

    #[tokio::test]
    async fn failures_are_recorded_and_never_leave_a_row_started() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            primary.add(1, 10, b"x", true);
            primary.with(|s| s.blobs.get_mut(&1).unwrap().missing = true);
            primary.add(2, 10, b"y", true);
            primary.with(|s| s.blobs.remove(&2));
            registry.insert_missing(&db, &[1, 2, 3]).await.unwrap();

            let Some(SyncResult::Failed {
                message,
                missing_on_primary,
            }) = d.sync_now(&it, 1).await.unwrap()
            else {
                panic!("{backend}: expected a failure");
            };
            assert!(missing_on_primary, "{backend}");
            assert_eq!(
                message, "Non-success HTTP response status code 404: 1 file not found",
                "{backend}"
            );

            let Some(SyncResult::Failed {
                missing_on_primary, ..
            }) = d.sync_now(&it, 2).await.unwrap()
            else {
                panic!("{backend}: expected a failure");
            };
            assert!(
                !missing_on_primary,
                "{backend}: a plain 404 is not a missing file"
            );

            // The record is gone from the primary.
            let Some(SyncResult::Failed { message, .. }) = d.sync_now(&it, 3).await.unwrap() else {
                panic!("{backend}: expected a failure");
            };
            assert!(
                message.starts_with("Error while attempting to sync: "),
                "{backend}: {message}"
            );

            // An unreachable primary.
            let gone = Downloader {
                client: unreachable_primary(),
                ..d.clone()
            };
            registry.pending(&db, 3).await.unwrap();
            let Some(SyncResult::Failed { message, .. }) = gone.sync_now(&it, 3).await.unwrap()
            else {
                panic!("{backend}: expected a failure");
            };
            assert!(message.contains("unreachable"), "{backend}: {message}");
            for row in registry.all(&db).await.unwrap() {
                assert_eq!(row.state, SyncState::Failed, "{backend}: {row:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_resync_during_the_download_wins() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            let record = primary.add(1, 10, b"v1", true);
            registry.insert_missing(&db, &[1]).await.unwrap();
            let claimed = claim(&d, &it, 10).await.unwrap();
            assert_eq!(claimed.len(), 1);
            // An `updated` event arrives while the download runs.
            registry.pending(&db, 1).await.unwrap();
            let (row, record_seen) = claimed.into_iter().next().unwrap();
            assert_eq!(record_seen.as_ref(), Some(&record));
            let result = d.sync_started(&it, row.model_id, record_seen).await;
            assert_eq!(result, SyncResult::Superseded { bytes: 2 }, "{backend}");
            assert_eq!(
                registry.get(&db, 1).await.unwrap().unwrap().state,
                SyncState::Pending
            );
            assert_eq!(
                stored(&blobs, &record).await.as_deref(),
                Some(&b"v1"[..]),
                "{backend}: the file stays"
            );

            // A `deleted` event during the download: the file goes too.
            let gone = primary.add(2, 10, b"v2", true);
            registry.insert_missing(&db, &[2]).await.unwrap();
            let (row, record_seen) = claim(&d, &it, 10).await.unwrap().pop().unwrap();
            registry.delete(&db, &[2]).await.unwrap();
            let result = d.sync_started(&it, row.model_id, record_seen).await;
            assert_eq!(result, SyncResult::Superseded { bytes: 2 }, "{backend}");
            assert_eq!(
                stored(&blobs, &gone).await,
                None,
                "{backend}: no orphan file"
            );
        }
    }

    #[tokio::test]
    async fn a_checksum_that_comes_during_the_download_is_not_lost() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            primary.add(1, 10, b"v1", false);
            registry.insert_missing(&db, &[1]).await.unwrap();
            let (row, record_seen) = claim(&d, &it, 10).await.unwrap().pop().unwrap();
            // The primary verifies while the download runs; its
            // `checksum_succeeded` event finds the row started and changes
            // nothing.
            primary.with(|s| {
                let record = s.records.get_mut(&1).unwrap();
                record.verification_state = VerificationState::Succeeded;
                record.verification_checksum = Some(sha256(b"v1"));
            });
            assert!(
                !registry
                    .verification_pending_if_synced(&db, 1)
                    .await
                    .unwrap()
            );
            let result = d.sync_started(&it, row.model_id, record_seen).await;
            assert_eq!(result, SyncResult::Synced { bytes: 2 }, "{backend}");
            let row = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(
                (row.state, row.verification_state),
                (SyncState::Synced, VerificationState::Pending),
                "{backend}: the verification waits for nothing"
            );

            // A primary still without a checksum: verification disabled,
            // until the event.
            primary.add(2, 10, b"v2", false);
            registry.insert_missing(&db, &[2]).await.unwrap();
            assert_eq!(
                d.sync_now(&it, 2).await.unwrap(),
                Some(SyncResult::Synced { bytes: 2 }),
                "{backend}"
            );
            let row = registry.get(&db, 2).await.unwrap().unwrap();
            assert_eq!(
                row.verification_state,
                VerificationState::Disabled,
                "{backend}"
            );
        }
    }

    #[tokio::test]
    async fn object_stored_records_are_checked_by_padded_size() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            for (id, checksum) in [(1, "0123"), (2, "0124")] {
                let mut record =
                    crate::secondary::testing::helm_record(id, 10, 2, Some(checksum.into()));
                record.verification_state = VerificationState::Succeeded;
                record.columns.insert("size".into(), 123.into());
                primary.with(|s| {
                    s.records.insert(id, record);
                    s.blobs.insert(
                        id,
                        crate::secondary::testing::FakeBlob {
                            bytes: vec![7; 123],
                            header_checksum: None,
                            missing: false,
                        },
                    );
                });
            }
            registry.insert_missing(&db, &[1, 2]).await.unwrap();
            assert_eq!(
                d.sync_now(&it, 1).await.unwrap(),
                Some(SyncResult::Synced { bytes: 123 }),
                "{backend}"
            );
            assert!(
                matches!(
                    d.sync_now(&it, 2).await.unwrap(),
                    Some(SyncResult::Failed { .. })
                ),
                "{backend}: the size differs from the primary's"
            );
            assert_ne!(sha256(&[7; 123]), "0123");
        }
    }

    #[tokio::test]
    async fn the_scheduler_drains_the_queue_within_capacity() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            let ids: Vec<i64> = (1..=40).collect();
            for &id in &ids {
                primary.add(id, 10, format!("blob {id}").as_bytes(), id % 2 == 0);
            }
            registry.insert_missing(&db, &ids).await.unwrap();
            let types = {
                let it = it.clone();
                move || {
                    let it = it.clone();
                    async move { Some((vec![it], 3usize)) }
                }
            };
            let scheduler = tokio::spawn(run_scheduler(
                d.clone(),
                types,
                std::time::Duration::from_millis(20),
            ));
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let counts = registry.counts(&db).await.unwrap();
                assert!(counts.started_count <= 3, "{backend}: {counts:?}");
                if counts.synced_count == 40 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{backend}: not converged: {counts:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            d.cancel.cancel();
            scheduler.await.unwrap();
            assert_eq!(
                primary.hits("retrieve"),
                40,
                "{backend}: each record downloaded once"
            );
        }
    }
}
