//! Small blobs in batches: the secondary's hot path.
//!
//! The shipped types' blobs are small metadata files, so small-blob
//! throughput is the main job's throughput, and per blob the costs were
//! all hand-offs: a claim, a feed request, a plugin call, a retrieve, two
//! blocking-pool hops and two transactions. Here the unit of work is a
//! batch:
//!
//! 1. **claim** up to `workers.sync_batch_size` rows of a type in one
//!    statement (pending first, then failed rows whose retry is due, as
//!    [`Registry::claim_sync_leased`]); whatever is due now: a batch never
//!    waits to fill;
//! 2. read their records from the feed (one request) and ask the type's
//!    plugin for their blob paths (one call);
//! 3. blobs of at most `workers.sync_batch_max_blob_bytes` (by the record's
//!    size column, when the type has one) come in **one batch retrieve**
//!    (`docs/batch-retrieve.md`); larger ones, and any the primary answers
//!    `too_large`, are downloaded one per request by the per-blob
//!    downloader ([`Downloader::sync_started`]), `files_max_capacity` at a
//!    time across all batches;
//! 4. each part is checked against the primary's checksum (the part's, or
//!    the feed record's when verified) **before** it is written; a good
//!    one is written to a temporary object and renamed to its blob path,
//!    several per blocking task ([`BlobStore::place_small`]);
//! 5. the batch's outcomes are **committed in one transaction**
//!    ([`Registry::record_sync_outcomes`]), each row keeping GitLab's
//!    transition: `started → synced` only if still started (a resync
//!    meanwhile wins: superseded), a failure with its own backoff (4 h cap
//!    for a file missing on the primary).
//!
//! `workers.sync_batches_in_flight` batches run at once, so the next
//! batch's requests overlap this one's writes. One bad record fails alone:
//! a missing file, a mismatch, a refused path is that part's outcome. A
//! broken answer (cut short, malformed) fails the records it did not
//! deliver; shutdown puts them back to pending.

use super::outcomes::{SyncOutcome, SyncRecorded};
use super::registry::{Registry, SyncClaim};
use super::sync::{
    AttemptError, CHECKSUM_MISMATCH, Downloader, Held, RECORD_SIZE, Renewal, claim_paths,
};
use crate::blob_batch::{self, PartStatus};
use crate::catalog::InstalledType;
use crate::feed::FeedRecord;
use crate::metrics;
use crate::plugin::BlobPath;
use crate::states::VerificationState;
use crate::storage::format_file_size_for_checksum;
use bytes::Bytes;
use futures::FutureExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bytes of checked blobs gathered before they are written together.
const PLACE_BYTES: usize = 1024 * 1024;
/// Most blobs written together.
const PLACE_BLOBS: usize = 64;

/// How a secondary batches its downloads (`[workers]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Blobs of at most this size come in batch retrieves.
    pub max_blob_bytes: u64,
    /// Rows per batch.
    pub size: i64,
    /// Batches at once.
    pub in_flight: usize,
}

impl BatchSettings {
    /// The settings of `workers`; `None` when batching is off
    /// (`sync_batch_max_blob_bytes = 0`).
    pub fn of(workers: &crate::config::WorkerSection) -> Option<BatchSettings> {
        (workers.sync_batch_max_blob_bytes > 0).then(|| BatchSettings {
            max_blob_bytes: workers.sync_batch_max_blob_bytes,
            size: workers
                .sync_batch_size
                .clamp(1, blob_batch::MAX_BATCH_IDS as i64),
            in_flight: workers.sync_batches_in_flight.max(1),
        })
    }
}

/// A claimed row on its way through a batch.
struct Row {
    model_id: i64,
    record: FeedRecord,
    path: BlobPath,
    /// The record's size as the primary announced it: a larger part fails.
    declared: Option<u64>,
}

/// The batch scheduler: runs until `downloader.cancel` is cancelled, then
/// waits for the batches in flight to record their outcomes.
///
/// `types` gives, each round, the types whose replication is enabled and
/// `files_max_capacity` (the blobs too large for a batch downloaded at
/// once); `idle` is the pause when there is nothing to do, cut short by
/// `downloader.wakes.sync`.
pub async fn run_batch_scheduler<F, Fut>(
    downloader: Downloader,
    settings: BatchSettings,
    mut types: F,
    idle: Duration,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<(Vec<Arc<InstalledType>>, usize)>>,
{
    let mut in_flight = tokio::task::JoinSet::new();
    let held = Held::default();
    let mut renewal = Renewal::of(&downloader);
    let mut large = (0, Arc::new(Semaphore::new(1)));
    let mut round = 0usize;
    while !downloader.cancel.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        renewal.when_due(&held, &downloader.tracking).await;
        let mut claimed_all = false;
        if let Some((enabled, capacity)) = types().await {
            if large.0 != capacity {
                // Batches in flight keep the slots they started with.
                large = (capacity, Arc::new(Semaphore::new(capacity.max(1))));
            }
            // Claim for each free batch slot, the types in turn; stop once
            // every type came back empty.
            let mut empty_in_a_row = 0;
            while in_flight.len() < settings.in_flight && empty_in_a_row < enabled.len() {
                round = round.wrapping_add(1);
                let it = &enabled[round % enabled.len()];
                let registry = Registry::of(it);
                match registry
                    .claim_sync_leased(&downloader.tracking, settings.size, downloader.lease)
                    .await
                {
                    Ok(claims) if claims.is_empty() => empty_in_a_row += 1,
                    Ok(claims) => {
                        empty_in_a_row = 0;
                        for claim in &claims {
                            held.add(it, claim.model_id);
                        }
                        in_flight.spawn(sync_batch(
                            downloader.clone(),
                            it.clone(),
                            claims,
                            settings,
                            large.1.clone(),
                            held.clone(),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(r#type = it.name(), %error, "cannot claim rows to sync");
                        empty_in_a_row += 1;
                    }
                }
            }
            claimed_all = in_flight.len() >= settings.in_flight;
        }
        let pause = renewal.pause(idle);
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = downloader.wakes.sync.notified(), if !claimed_all => {}
            _ = tokio::time::sleep(pause) => {}
            _ = downloader.cancel.cancelled() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Claims one batch of `it` and syncs it now, whatever else runs (for
/// operators' tools and tests). Returns how many rows it claimed.
pub async fn sync_one_batch(
    downloader: &Downloader,
    it: &Arc<InstalledType>,
    settings: BatchSettings,
) -> Result<usize, crate::db::DbError> {
    let claims = Registry::of(it)
        .claim_sync_leased(&downloader.tracking, settings.size, downloader.lease)
        .await?;
    let claimed = claims.len();
    let held = Held::default();
    for claim in &claims {
        held.add(it, claim.model_id);
    }
    if claimed > 0 {
        sync_batch(
            downloader.clone(),
            it.clone(),
            claims,
            settings,
            Arc::new(Semaphore::new(4)),
            held,
        )
        .await;
    }
    Ok(claimed)
}

/// Syncs one claimed batch of `it` and records its outcomes; the rows are
/// never left started (but by a crash, which the claim lease covers).
async fn sync_batch(
    downloader: Downloader,
    it: Arc<InstalledType>,
    claims: Vec<SyncClaim>,
    settings: BatchSettings,
    large_slots: Arc<Semaphore>,
    held: Held,
) {
    let started = Instant::now();
    let ids: Vec<i64> = claims.iter().map(|c| c.model_id).collect();
    let work = std::panic::AssertUnwindSafe(fetch_batch(&downloader, &it, &ids, settings))
        .catch_unwind()
        .await;
    let Fetched {
        mut outcomes,
        large,
        bytes,
        placed,
    } = match work {
        Ok(fetched) => fetched,
        Err(_) => Fetched::all_failed(&ids, "the download task panicked"),
    };
    // Rows the batch did not answer (a bug): failed rather than left started.
    let answered: std::collections::HashSet<i64> = outcomes
        .iter()
        .map(|(id, _)| *id)
        .chain(large.iter().map(|(id, _, _)| *id))
        .collect();
    for id in &ids {
        if !answered.contains(id) {
            outcomes.push((
                *id,
                failed(AttemptError::Other(
                    "the batch gave no answer for it".into(),
                )),
            ));
        }
    }
    record(&downloader, &it, &outcomes, &placed, bytes, started).await;
    for (id, _) in &outcomes {
        held.remove(&it, *id);
    }

    // Blobs too large for a batch: one per request, as before.
    let mut downloads = tokio::task::JoinSet::new();
    for (id, record, path) in large {
        let (downloader, it, held, slots) = (
            downloader.clone(),
            it.clone(),
            held.clone(),
            large_slots.clone(),
        );
        downloads.spawn(async move {
            let _slot = slots.acquire_owned().await;
            downloader.sync_claimed(&it, id, record, path).await;
            held.remove(&it, id);
        });
    }
    while downloads.join_next().await.is_some() {}
}

/// What fetching a batch gave: outcomes of the rows it handled, the rows
/// to download one by one, and the bytes received.
struct Fetched {
    outcomes: Vec<(i64, SyncOutcome)>,
    /// `(model id, record, path)`: `None`s are for the downloader to report.
    large: Vec<(i64, Option<FeedRecord>, Option<Result<BlobPath, String>>)>,
    bytes: u64,
    /// Where each blob placed went.
    placed: HashMap<i64, BlobPath>,
}

impl Fetched {
    fn all_failed(ids: &[i64], message: &str) -> Fetched {
        Fetched {
            outcomes: ids
                .iter()
                .map(|&id| (id, failed(AttemptError::Other(message.into()))))
                .collect(),
            large: Vec::new(),
            bytes: 0,
            placed: HashMap::new(),
        }
    }
}

/// A failed attempt as an outcome (GitLab's texts, as the per-blob path).
fn failed(error: AttemptError) -> SyncOutcome {
    let missing_on_primary = matches!(
        error,
        AttemptError::Status {
            missing_on_primary: true,
            ..
        }
    );
    SyncOutcome::Failed {
        message: error.to_string(),
        missing_on_primary,
    }
}

/// Reads the records and paths of a claimed batch, fetches its small blobs
/// in batch retrieves, checks and places them.
async fn fetch_batch(
    downloader: &Downloader,
    it: &Arc<InstalledType>,
    ids: &[i64],
    settings: BatchSettings,
) -> Fetched {
    let records = tokio::select! {
        records = downloader.client.records_by_ids(it.name(), ids) => records,
        _ = downloader.cancel.cancelled() => {
            return Fetched {
                outcomes: ids.iter().map(|&id| (id, SyncOutcome::Released)).collect(),
                large: Vec::new(),
                bytes: 0,
                placed: HashMap::new(),
            };
        }
    };
    let records = match records {
        Ok(records) => records,
        Err(error) => {
            let message = AttemptError::from(error).to_string();
            tracing::warn!(r#type = it.name(), claimed = ids.len(), %message, "cannot read the claimed records");
            return Fetched::all_failed(ids, &message);
        }
    };
    let mut by_id: HashMap<i64, FeedRecord> = records.into_iter().map(|r| (r.id, r)).collect();
    let rows: Vec<(SyncClaim, Option<FeedRecord>)> = ids
        .iter()
        .map(|&id| {
            (
                SyncClaim {
                    model_id: id,
                    retry_count: 0,
                },
                by_id.remove(&id),
            )
        })
        .collect();
    let mut paths = claim_paths(it, &rows).await;
    let mut fetched = Fetched {
        outcomes: Vec::new(),
        large: Vec::new(),
        bytes: 0,
        placed: HashMap::new(),
    };
    let mut small = Vec::new();
    for (claim, record) in rows {
        let id = claim.model_id;
        let Some(record) = record else {
            fetched.outcomes.push((
                id,
                failed(AttemptError::Other(format!(
                    "{} {id} not found on the primary",
                    it.identity.title
                ))),
            ));
            continue;
        };
        let declared = it.declared_size(&record);
        match paths.remove(&id) {
            Some(Ok(path)) if declared.is_none_or(|size| size <= settings.max_blob_bytes) => small
                .push(Row {
                    model_id: id,
                    record,
                    path,
                    declared,
                }),
            // Large, or a path the plugin call did not give: the per-blob
            // downloader asks again and reports.
            path => fetched.large.push((id, Some(record), path)),
        }
    }
    for chunk in small.chunks(blob_batch::MAX_BATCH_IDS) {
        retrieve(downloader, it, chunk, settings.max_blob_bytes, &mut fetched).await;
    }
    fetched
}

/// One batch retrieve of `rows`: every row ends in `fetched` (an outcome,
/// or the large list).
async fn retrieve(
    downloader: &Downloader,
    it: &Arc<InstalledType>,
    rows: &[Row],
    max_part: u64,
    fetched: &mut Fetched,
) {
    let ids: Vec<i64> = rows.iter().map(|r| r.model_id).collect();
    let mut waiting: HashMap<i64, &Row> = rows.iter().map(|r| (r.model_id, r)).collect();
    let mut placing = Placing::default();
    let answer = tokio::select! {
        answer = downloader.client.retrieve_batch(it.name(), &ids, max_part) => answer,
        _ = downloader.cancel.cancelled() => {
            fetched.outcomes.extend(ids.iter().map(|&id| (id, SyncOutcome::Released)));
            return;
        }
    };
    let mut answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let error = AttemptError::from(error);
            tracing::warn!(r#type = it.name(), rows = ids.len(), %error, "batch retrieve failed");
            let message = error.to_string();
            let missing_on_primary = false;
            fetched.outcomes.extend(ids.iter().map(|&id| {
                (
                    id,
                    SyncOutcome::Failed {
                        message: message.clone(),
                        missing_on_primary,
                    },
                )
            }));
            return;
        }
    };
    let bytes_metric = metrics::SYNC_BYTES.with_label_values(&[it.name()]);
    // Why the rest of the answer was lost, if it was.
    let lost: Option<SyncOutcome> = loop {
        let part = tokio::select! {
            part = answer.next_part() => part,
            _ = downloader.cancel.cancelled() => break Some(SyncOutcome::Released),
        };
        let part = match part {
            Ok(Some(part)) => part,
            Ok(None) => break None,
            Err(error) => {
                tracing::warn!(r#type = it.name(), %error, "batch answer broken");
                break Some(failed(AttemptError::Other(error.to_string())));
            }
        };
        let id = part.header.id;
        let Some(row) = waiting.remove(&id) else {
            let error = format!("the batch answer holds record {id}, not asked for or twice");
            break Some(failed(AttemptError::Other(error)));
        };
        let status_error = |status: u16, missing_on_primary: bool| {
            failed(AttemptError::Status {
                status,
                message: part.header.message.clone().unwrap_or_default(),
                missing_on_primary,
            })
        };
        match part.header.status {
            PartStatus::Ok => {
                fetched.bytes += part.bytes.len() as u64;
                bytes_metric.inc_by(part.bytes.len() as u64);
                // The decoder held at most `max_part` bytes for it.
                let sent = part.bytes.len() as u64;
                let checked = match row.declared {
                    Some(limit) if sent > limit => Err(AttemptError::TooLarge {
                        limit,
                        received: sent,
                        why: RECORD_SIZE,
                    }),
                    _ => check(it, row, part.header.checksum.as_deref(), &part.bytes),
                };
                match checked {
                    Ok(primary_verified) => {
                        placing.push(row, part.bytes, primary_verified);
                        if placing.full() {
                            placing.place(downloader, it, fetched).await;
                        }
                    }
                    Err(error) => fetched.outcomes.push((id, failed(error))),
                }
            }
            PartStatus::Missing => fetched.outcomes.push((id, status_error(404, true))),
            PartStatus::NotFound => fetched.outcomes.push((id, status_error(404, false))),
            PartStatus::Error => fetched.outcomes.push((id, status_error(500, false))),
            PartStatus::TooLarge => {
                fetched
                    .large
                    .push((id, Some(row.record.clone()), Some(Ok(row.path.clone()))))
            }
        }
    };
    placing.place(downloader, it, fetched).await;
    // Rows the answer did not deliver.
    let undelivered = lost.unwrap_or_else(|| {
        failed(AttemptError::Other(
            "the primary's batch answer left this record out".into(),
        ))
    });
    let mut left: Vec<i64> = waiting.into_keys().collect();
    left.sort_unstable();
    fetched
        .outcomes
        .extend(left.into_iter().map(|id| (id, undelivered.clone())));
}

/// Checks a part against the primary's checksum (the part's, else the feed
/// record's when the primary verified it): SHA-256, or the padded size for
/// a record the primary keeps in object storage. Returns whether the
/// primary had a checksum.
fn check(
    it: &InstalledType,
    row: &Row,
    part_checksum: Option<&str>,
    bytes: &Bytes,
) -> Result<bool, AttemptError> {
    let expected = part_checksum
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| {
            (row.record.verification_state == VerificationState::Succeeded)
                .then(|| row.record.verification_checksum.clone())
                .flatten()
        });
    let Some(expected) = expected else {
        return Ok(false);
    };
    let actual = if it.is_object_stored(&row.record) {
        format_file_size_for_checksum(bytes.len() as u64)
    } else {
        hex::encode(Sha256::digest(bytes))
    };
    if !actual.eq_ignore_ascii_case(&expected) {
        tracing::warn!(
            r#type = it.name(), id = row.model_id, %expected, %actual, "{CHECKSUM_MISMATCH}"
        );
        return Err(AttemptError::ChecksumMismatch { expected, actual });
    }
    Ok(true)
}

/// Checked blobs waiting to be written together.
#[derive(Default)]
struct Placing {
    blobs: Vec<(i64, BlobPath, Bytes, bool)>,
    bytes: usize,
}

impl Placing {
    fn push(&mut self, row: &Row, bytes: Bytes, primary_verified: bool) {
        self.bytes += bytes.len();
        self.blobs
            .push((row.model_id, row.path.clone(), bytes, primary_verified));
    }

    fn full(&self) -> bool {
        self.bytes >= PLACE_BYTES || self.blobs.len() >= PLACE_BLOBS
    }

    /// Writes the gathered blobs (temporary object, then rename) and adds
    /// their outcomes.
    async fn place(&mut self, downloader: &Downloader, it: &InstalledType, fetched: &mut Fetched) {
        if self.blobs.is_empty() {
            return;
        }
        let blobs = std::mem::take(&mut self.blobs);
        self.bytes = 0;
        let writes: Vec<(BlobPath, Bytes)> = blobs
            .iter()
            .map(|(_, path, bytes, _)| (path.clone(), bytes.clone()))
            .collect();
        let placed = downloader.blobs.place_small(it.name(), writes).await;
        for ((id, path, _, primary_verified), result) in blobs.into_iter().zip(placed) {
            let outcome = match result {
                Ok(()) => {
                    fetched.placed.insert(id, path);
                    SyncOutcome::Synced { primary_verified }
                }
                Err(error) => failed(AttemptError::from(error)),
            };
            fetched.outcomes.push((id, outcome));
        }
    }
}

/// Commits a batch's outcomes in one transaction, then what follows them:
/// a superseded row's blob handled as the per-blob path does, the
/// verification of rows synced before the primary had a checksum caught
/// up, the verifier woken, the metrics.
async fn record(
    downloader: &Downloader,
    it: &InstalledType,
    outcomes: &[(i64, SyncOutcome)],
    placed: &HashMap<i64, BlobPath>,
    bytes: u64,
    started: Instant,
) {
    if outcomes.is_empty() {
        return;
    }
    let registry = Registry::of(it);
    let recorded = match registry
        .record_sync_outcomes(&downloader.tracking, outcomes)
        .await
    {
        Ok(recorded) => recorded,
        Err(error) => {
            tracing::error!(
                r#type = it.name(), rows = outcomes.len(), %error,
                "cannot record a batch's outcomes; its claims will be taken over when their lease ends"
            );
            return;
        }
    };
    let SyncRecorded {
        synced,
        superseded,
        failed,
        released,
    } = &recorded;
    let unverified: Vec<i64> = outcomes
        .iter()
        .filter(|(id, o)| {
            *o == SyncOutcome::Synced {
                primary_verified: false,
            } && synced.contains(id)
        })
        .map(|(id, _)| *id)
        .collect();
    if synced.len() > unverified.len() {
        downloader.wakes.verification.notify_one();
    }
    downloader
        .catch_up_verifications(&registry, it, &unverified)
        .await;
    for (id, outcome) in outcomes {
        if superseded.contains(id)
            && let Some(path) = placed.get(id)
        {
            // The blob is in place for a row that changed meanwhile.
            downloader.superseded(&registry, it, *id, path).await;
        }
        if let SyncOutcome::Failed {
            message,
            missing_on_primary,
        } = outcome
        {
            tracing::warn!(r#type = it.name(), id, %message, missing_on_primary, "sync failed");
        }
    }
    let per_row = started.elapsed().as_secs_f64();
    for (label, n) in [
        ("synced", synced.len()),
        ("superseded", superseded.len()),
        ("failed", failed.len()),
        ("interrupted", released.len()),
    ] {
        let histogram = metrics::SYNC_SECONDS.with_label_values(&[it.name(), label]);
        for _ in 0..n {
            histogram.observe(per_row);
        }
    }
    tracing::debug!(
        r#type = it.name(),
        synced = synced.len(),
        superseded = superseded.len(),
        failed = failed.len(),
        released = released.len(),
        bytes,
        "batch recorded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::{FakeState, helm, helm_registry, rigs, stored};
    use crate::states::SyncState;

    const SETTINGS: BatchSettings = BatchSettings {
        max_blob_bytes: 64,
        size: 100,
        in_flight: 2,
    };

    /// Claims every pending row and syncs them as one batch.
    async fn run_one_batch(d: &Downloader) -> usize {
        let it = helm();
        let claims = Registry::of(&it)
            .claim_sync(&d.tracking, 100)
            .await
            .unwrap();
        let n = claims.len();
        sync_batch(
            d.clone(),
            it,
            claims,
            SETTINGS,
            Arc::new(Semaphore::new(4)),
            Held::default(),
        )
        .await;
        n
    }

    /// A part larger than its record's announced size fails that record
    /// (the decoder held at most `max_part_bytes` of it); the rest of the
    /// batch syncs.
    #[tokio::test]
    async fn a_part_larger_than_its_record_fails_alone() {
        let (_, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            let liar = primary.add(1, 10, b"entries: 1\n", false);
            primary.with(|s| s.blobs.get_mut(&1).unwrap().bytes = vec![b'x'; 60]);
            let honest = primary.add(2, 10, b"entries: 2\n", true);
            registry.insert_missing(&db, &[1, 2]).await.unwrap();
            assert_eq!(run_one_batch(&d).await, 2, "{backend}");
            assert_eq!(primary.hits("retrieve_batch"), 1, "{backend}");
            let row = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(row.state, SyncState::Failed, "{backend}");
            let failure = row.last_sync_failure.unwrap_or_default();
            assert!(
                failure.contains("larger than 11 bytes (the record's size on the primary)"),
                "{backend}: {failure}"
            );
            assert_eq!(stored(&blobs, &liar).await, None, "{backend}");
            let row = registry.get(&db, 2).await.unwrap().unwrap();
            assert_eq!(row.state, SyncState::Synced, "{backend}");
            assert!(stored(&blobs, &honest).await.is_some(), "{backend}");
        }
    }

    #[tokio::test]
    async fn each_record_of_a_batch_ends_as_it_would_alone() {
        let (_, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            let good = primary.add(1, 10, b"apiVersion: v1\n", true);
            let unverified = primary.add(2, 10, b"entries: {}\n", false);
            let missing = primary.add(3, 10, b"lost", true);
            primary.with(|s| s.blobs.get_mut(&3).unwrap().missing = true);
            // Corrupted on the primary after it was checksummed.
            let corrupted = primary.add(4, 10, b"good bytes", true);
            primary.with(|s| s.blobs.get_mut(&4).unwrap().bytes = b"evil bytes".to_vec());
            // Deleted on the primary: the registry row is still there.
            primary.add(5, 10, b"gone", true);
            primary.with(|s| s.records.remove(&5));
            // Larger than the threshold: declared by its size column, and
            // declared small but large on the primary (it answers
            // `too_large`; the single download then refuses it past the
            // declared size).
            let big = vec![b'x'; 200];
            let size_column = |id, size: i64| {
                let set = |s: &mut FakeState| {
                    let columns = &mut s.records.get_mut(&id).unwrap().columns;
                    columns.insert("size".into(), size.into());
                };
                primary.with(set);
            };
            let declared = primary.add(6, 10, &big, true);
            size_column(6, 200);
            let grown = primary.add(7, 10, &big, true);
            size_column(7, 30);
            registry
                .insert_missing(&db, &[1, 2, 3, 4, 5, 6, 7])
                .await
                .unwrap();

            assert_eq!(run_one_batch(&d).await, 7, "{backend}");
            assert_eq!(
                primary.hits("retrieve_batch"),
                1,
                "{backend}: one batch retrieve"
            );
            assert_eq!(
                primary.hits("retrieve"),
                2,
                "{backend}: the two large blobs alone"
            );

            let row = |id| {
                let registry = registry.clone();
                let db = db.clone();
                async move { registry.get(&db, id).await.unwrap().unwrap() }
            };
            for (id, record, bytes) in [
                (1, &good, &b"apiVersion: v1\n"[..]),
                (6, &declared, &big[..]),
            ] {
                let r = row(id).await;
                assert_eq!(
                    (r.state, r.verification_state),
                    (SyncState::Synced, crate::states::VerificationState::Pending),
                    "{backend} {id}"
                );
                assert_eq!(
                    stored(&blobs, record).await.as_deref(),
                    Some(bytes),
                    "{backend} {id}"
                );
            }
            let r = row(2).await;
            assert_eq!(
                (r.state, r.verification_state),
                (
                    SyncState::Synced,
                    crate::states::VerificationState::Disabled
                ),
                "{backend}: synced before the primary verified"
            );
            assert!(stored(&blobs, &unverified).await.is_some());

            let r = row(3).await;
            assert_eq!(r.state, SyncState::Failed, "{backend}");
            assert_eq!(
                r.last_sync_failure.as_deref(),
                Some("Non-success HTTP response status code 404: 3 file not found"),
                "{backend}"
            );
            assert_eq!(r.retry_count, 1);
            assert!(stored(&blobs, &missing).await.is_none());

            let r = row(4).await;
            assert_eq!(
                (r.state, r.last_sync_failure.as_deref()),
                (SyncState::Failed, Some(CHECKSUM_MISMATCH)),
                "{backend}"
            );
            assert!(
                stored(&blobs, &corrupted).await.is_none(),
                "{backend}: never placed"
            );

            let r = row(5).await;
            assert_eq!(r.state, SyncState::Failed, "{backend}");
            assert!(
                r.last_sync_failure
                    .as_deref()
                    .unwrap()
                    .ends_with("5 not found on the primary"),
                "{backend}: {:?}",
                r.last_sync_failure
            );
            let r = row(7).await;
            assert_eq!(r.state, SyncState::Failed, "{backend}");
            let failure = r.last_sync_failure.unwrap_or_default();
            assert!(
                failure.starts_with("Downloaded file larger than 30 bytes"),
                "{backend}: {failure}"
            );
            assert!(stored(&blobs, &grown).await.is_none(), "{backend}");
            // Nothing is left in the temporary folder.
            assert_eq!(blobs.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn a_resync_during_the_batch_wins_and_shutdown_releases_the_rows() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, _, d) in rigs().await {
            primary.add(1, 10, b"one", true);
            primary.add(2, 10, b"two", true);
            registry.insert_missing(&db, &[1, 2]).await.unwrap();
            let claims = registry.claim_sync(&db, 10).await.unwrap();
            // An `updated` event during the batch: row 1 pending again.
            registry.pending(&db, 1).await.unwrap();
            sync_batch(
                d.clone(),
                it.clone(),
                claims,
                SETTINGS,
                Arc::new(Semaphore::new(1)),
                Held::default(),
            )
            .await;
            let one = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(one.state, SyncState::Pending, "{backend}: the resync won");
            let two = registry.get(&db, 2).await.unwrap().unwrap();
            assert_eq!(two.state, SyncState::Synced, "{backend}");

            // Shutdown before the answer: every row is pending again.
            primary.add(3, 10, b"three", true);
            registry.insert_missing(&db, &[3]).await.unwrap();
            let stopped = Downloader {
                cancel: {
                    let cancel = tokio_util::sync::CancellationToken::new();
                    cancel.cancel();
                    cancel
                },
                ..d.clone()
            };
            assert_eq!(run_one_batch(&stopped).await, 2, "{backend}: rows 1 and 3");
            for id in [1, 3] {
                let row = registry.get(&db, id).await.unwrap().unwrap();
                assert_eq!(row.state, SyncState::Pending, "{backend} {id}");
            }
        }
    }

    #[tokio::test]
    async fn a_broken_answer_fails_the_records_it_did_not_deliver() {
        let (_, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            for id in 1..=3 {
                primary.add(id, 10, format!("blob {id}").as_bytes(), true);
            }
            registry.insert_missing(&db, &[1, 2, 3]).await.unwrap();
            // The connection breaks in the middle of the second part.
            primary.with(|s| s.cut_batch_at_part = Some(1));
            run_one_batch(&d).await;
            let one = registry.get(&db, 1).await.unwrap().unwrap();
            assert_eq!(one.state, SyncState::Synced, "{backend}: delivered whole");
            for id in [2, 3] {
                let row = registry.get(&db, id).await.unwrap().unwrap();
                assert_eq!(row.state, SyncState::Failed, "{backend} {id}");
                assert_eq!(
                    row.last_sync_failure.as_deref(),
                    Some(
                        "Error while attempting to sync: the batch answer ended before its end mark"
                    ),
                    "{backend} {id}"
                );
            }
            assert_eq!(blobs.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
        }
    }
}
