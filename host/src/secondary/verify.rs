//! Verification on a secondary: recompute each synced blob's checksum and
//! compare it with the primary's (GitLab's `VerifiableRegistry`).
//!
//! Why the secondary checks again after a checked download: disks rot and
//! files get touched; and the primary's checksum may arrive after the
//! download (the primary verifies asynchronously, then publishes
//! `checksum_succeeded`, which sets the registry's verification pending).
//!
//! A batch claims synced rows due for verification (verification pending,
//! or failed with its retry time due) with one atomic statement, reads the
//! primary's records for the batch (`records?ids=`), and for each row:
//!
//! - the primary's record is gone or not verification-succeeded → the row's
//!   verification is disabled (GitLab's `ready_to_verify?`);
//! - the local checksum (SHA-256, or the padded size for a record the
//!   primary keeps in object storage) equals the primary's → succeeded;
//! - it differs → failed with GitLab's message ("Checksum does not match the
//!   primary checksum {checksum: …, primary_checksum: …, registry_id: …}"),
//!   `checksum_mismatch` set, the local checksum kept, and the row resynced;
//! - the file is missing or unreadable → failed ("Error during
//!   verification: …") and resynced.
//!
//! Results are written only while the claim holds, so a resync during the
//! checksum wins. If the primary cannot be read, the batch's claims are
//! released (verification pending again, nothing else changed): an
//! unreachable primary is not the blob's fault, and GitLab, which reads the
//! primary's checksum from its database replica, has no such case.

use super::client::PrimaryClient;
use super::outcomes::VerificationOutcome;
use super::registry::{Registry, VerificationClaim, VerificationFailure};
use crate::catalog::InstalledType;
use crate::db::{Db, DbError};
use crate::feed::FeedRecord;
use crate::metrics;
use crate::plugin::BlobPath;
use crate::states::VerificationState;
use crate::storage::{BlobStore, format_file_size_for_checksum};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub succeeded: usize,
    pub failed: usize,
    pub disabled: usize,
    /// Claims whose result was dropped because the row changed meanwhile.
    pub superseded: usize,
}

impl BatchCounts {
    /// Rows handled.
    pub fn total(&self) -> usize {
        self.succeeded + self.failed + self.disabled + self.superseded
    }
}

/// Why a batch could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tracking database: {0}")]
    Db(#[from] DbError),
    #[error("reading the primary's checksums: {0}")]
    Client(#[from] super::client::ClientError),
    #[error("computing blob paths: {0}")]
    Scope(#[from] crate::catalog::CallError),
}

/// The checksum GitLab's `calculate_checksum` gives the local copy:
/// SHA-256 hex, or the padded size when the primary keeps the file in
/// object storage (the rule follows the record, as in GitLab, where the
/// secondary's model row is the primary's).
pub async fn local_checksum(
    blobs: &BlobStore,
    type_name: &str,
    path: &BlobPath,
    object_stored: bool,
) -> Result<String, crate::storage::StorageError> {
    if object_stored {
        Ok(format_file_size_for_checksum(
            blobs.size(type_name, path).await?,
        ))
    } else {
        Ok(blobs.checksum(type_name, path).await?.sha256)
    }
}

/// The local checksums of a batch's blobs, in order (see
/// [`local_checksum`]): the SHA-256s in a few blocking tasks, the sizes of
/// records the primary keeps in object storage from the store's metadata.
async fn local_checksums(
    blobs: &BlobStore,
    type_name: &str,
    blobs_of: &[(BlobPath, bool)],
    parallel: usize,
) -> Vec<Result<String, crate::storage::StorageError>> {
    let hashed: Vec<BlobPath> = blobs_of
        .iter()
        .filter(|(_, object_stored)| !object_stored)
        .map(|(path, _)| path.clone())
        .collect();
    let mut sums = blobs
        .checksums(type_name, &hashed, parallel)
        .await
        .into_iter();
    let sized: Vec<BlobPath> = blobs_of
        .iter()
        .filter(|(_, object_stored)| *object_stored)
        .map(|(path, _)| path.clone())
        .collect();
    let mut sizes = futures::stream::iter(sized)
        .map(|path| async move { local_checksum(blobs, type_name, &path, true).await })
        .buffered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter();
    let mut out = Vec::with_capacity(blobs_of.len());
    for (_, object_stored) in blobs_of {
        let next = if *object_stored {
            sizes.next()
        } else {
            sums.next().map(|sum| sum.map(|w| w.sha256))
        };
        out.push(next.expect("one checksum per blob"));
    }
    out
}

/// A row's outcome from the primary's record, its path and the local
/// checksum (`None` when nothing was hashed).
fn outcome(
    record: Option<&FeedRecord>,
    path: Option<&Result<BlobPath, String>>,
    local: Option<Result<String, crate::storage::StorageError>>,
) -> VerificationOutcome {
    let Some(record) = record else {
        return VerificationOutcome::Disabled;
    };
    let primary = match (&record.verification_state, &record.verification_checksum) {
        (VerificationState::Succeeded, Some(checksum)) => checksum.to_ascii_lowercase(),
        _ => return VerificationOutcome::Disabled,
    };
    match (path, local) {
        (Some(Err(error)), _) => VerificationOutcome::Failed(VerificationFailure::Error(format!(
            "Error during verification: blob path: {error}"
        ))),
        (None, _) | (_, None) => VerificationOutcome::Disabled,
        (Some(Ok(_)), Some(Ok(local))) if local.eq_ignore_ascii_case(&primary) => {
            VerificationOutcome::Succeeded(local)
        }
        (Some(Ok(_)), Some(Ok(local))) => {
            VerificationOutcome::Failed(VerificationFailure::Mismatch {
                checksum: local,
                primary_checksum: primary,
            })
        }
        (Some(Ok(_)), Some(Err(error))) if error.is_not_found() => {
            VerificationOutcome::Failed(VerificationFailure::Error(
                "Error during verification: File is not checksummable".into(),
            ))
        }
        (Some(Ok(_)), Some(Err(error))) => VerificationOutcome::Failed(VerificationFailure::Error(
            format!("Error during verification: {error}"),
        )),
    }
}

/// Verifies one batch of up to `limit` rows of `it`, `concurrency` blobs at
/// a time (see the [module docs](self)), also taking over verifications
/// whose claim is older than `lease` (their worker process died).
pub async fn verify_batch_leased(
    client: &PrimaryClient,
    tracking: &Db,
    blobs: &BlobStore,
    it: &Arc<InstalledType>,
    limit: i64,
    concurrency: usize,
    lease: Option<std::time::Duration>,
) -> Result<BatchCounts, VerifyError> {
    let registry = Registry::of(it);
    let claims = registry
        .claim_verification_leased(tracking, limit, lease)
        .await?;
    if claims.is_empty() {
        return Ok(BatchCounts::default());
    }
    let started = std::time::Instant::now();
    let ids: Vec<i64> = claims.iter().map(|c| c.model_id).collect();
    // One claim statement stamps its rows alike; renewed while the batch
    // runs (a third of the lease), so a long batch is not taken over.
    let work = async {
        let records = client.records_by_ids(it.name(), &ids).await?;
        let paths = it.blob_paths(&records).await?;
        let by_id: HashMap<i64, (FeedRecord, Result<BlobPath, String>)> = records
            .into_iter()
            .zip(paths)
            .map(|(record, path)| (record.id, (record, path)))
            .collect();
        // Only rows the primary has a checksum for are hashed.
        let mut to_hash = Vec::new();
        let mut hashed_rows = Vec::new();
        for (i, claim) in claims.iter().enumerate() {
            if let Some((record, Ok(path))) = by_id.get(&claim.model_id)
                && record.verification_state == VerificationState::Succeeded
                && record.verification_checksum.is_some()
            {
                to_hash.push((path.clone(), it.is_object_stored(record)));
                hashed_rows.push(i);
            }
        }
        let mut locals: Vec<Option<Result<String, crate::storage::StorageError>>> =
            claims.iter().map(|_| None).collect();
        for (i, local) in hashed_rows
            .into_iter()
            .zip(local_checksums(blobs, it.name(), &to_hash, concurrency).await)
        {
            locals[i] = Some(local);
        }
        Ok::<_, VerifyError>((by_id, locals))
    };
    let (done, stamp) = registry
        .verification_table()
        .renewing(
            tracking,
            &ids,
            claims[0].started_at,
            lease.map(|l| l / 3),
            work,
        )
        .await;
    let (by_id, locals) = match done {
        Ok(done) => done,
        Err(error) => {
            release(&registry, tracking, &claims, stamp).await;
            return Err(error);
        }
    };
    let outcomes: Vec<(
        i64,
        Option<chrono::DateTime<chrono::Utc>>,
        VerificationOutcome,
    )> = claims
        .iter()
        .zip(locals)
        .map(|(claim, local)| {
            let found = by_id.get(&claim.model_id);
            let outcome = outcome(found.map(|(r, _)| r), found.map(|(_, p)| p), local);
            if let VerificationOutcome::Failed(failure) = &outcome {
                tracing::warn!(
                    r#type = it.name(),
                    id = claim.model_id,
                    registry_id = claim.registry_id,
                    failure = ?failure,
                    "verification failed; resyncing"
                );
            }
            (claim.model_id, Some(stamp), outcome)
        })
        .collect();
    metrics::VERIFY_SECONDS
        .with_label_values(&[it.name(), "secondary"])
        .observe(started.elapsed().as_secs_f64());

    let recorded = registry
        .record_verification_outcomes(tracking, &outcomes)
        .await?;
    Ok(BatchCounts {
        succeeded: recorded.succeeded.len(),
        failed: recorded.failed.len(),
        disabled: recorded.disabled.len(),
        superseded: outcomes.len() - recorded.total(),
    })
}

/// Puts claims back to verification pending, changing nothing else.
async fn release(
    registry: &Registry,
    tracking: &Db,
    claims: &[VerificationClaim],
    stamp: chrono::DateTime<chrono::Utc>,
) {
    for claim in claims {
        if let Err(error) = registry
            .release_verification(tracking, claim.model_id, stamp)
            .await
        {
            tracing::warn!(id = claim.model_id, %error, "cannot release a verification claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::sync::SyncResult;
    use crate::secondary::testing::{helm_registry, rigs, sha256, unreachable_primary};
    use crate::states::SyncState;

    #[tokio::test]
    async fn verification_compares_with_the_primary_and_resyncs_on_failure() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, downloader) in rigs().await {
            let client = downloader.client.clone();
            let verify = async |client: &PrimaryClient| {
                verify_batch_leased(client, &db, &blobs, &it, 100, 4, None).await
            };
            let row = async |id| registry.get(&db, id).await.unwrap().unwrap();
            let mut records = Vec::new();
            for id in 1..=5 {
                records.push(primary.add(id, 10, format!("index {id}").as_bytes(), id != 5));
            }
            registry
                .insert_missing(&db, &[1, 2, 3, 4, 5])
                .await
                .unwrap();
            for id in 1..=5 {
                assert!(matches!(
                    downloader.sync_now(&it, id).await.unwrap(),
                    Some(SyncResult::Synced { .. })
                ));
            }

            let counts = verify(&client).await.unwrap();
            assert_eq!(
                counts,
                BatchCounts {
                    succeeded: 4,
                    ..BatchCounts::default()
                },
                "{backend}"
            );
            let one = row(1).await;
            assert_eq!(one.verification_state, VerificationState::Succeeded);
            assert_eq!(one.verification_checksum, Some(sha256(b"index 1")));
            assert_eq!(row(5).await.verification_state, VerificationState::Disabled);
            // Nothing left to verify.
            assert_eq!(verify(&client).await.unwrap().total(), 0);

            // 1 rots, 2 disappears, 3 is no longer verified on the primary.
            let paths = it.blob_paths(&records).await.unwrap();
            let path = |i: usize| paths[i].clone().unwrap();
            blobs
                .put_bytes(it.name(), &path(0), bytes::Bytes::from_static(b"rotten"))
                .await
                .unwrap();
            blobs.delete(it.name(), &path(1)).await.unwrap();
            primary.with(|s| {
                let r = s.records.get_mut(&3).unwrap();
                r.verification_state = VerificationState::Pending;
                r.verification_checksum = None;
            });
            for id in [1, 2, 3] {
                registry.verification_pending(&db, id).await.unwrap();
            }
            let counts = verify(&client).await.unwrap();
            assert_eq!(
                counts,
                BatchCounts {
                    failed: 2,
                    disabled: 1,
                    ..BatchCounts::default()
                },
                "{backend}"
            );

            let rotten = row(1).await;
            assert_eq!(
                rotten.verification_state,
                VerificationState::Failed,
                "{backend}"
            );
            assert!(rotten.checksum_mismatch);
            assert_eq!(
                rotten.verification_checksum_mismatched,
                Some(sha256(b"rotten"))
            );
            assert!(
                rotten
                    .verification_failure
                    .as_deref()
                    .unwrap()
                    .starts_with("Checksum does not match the primary checksum {checksum: "),
                "{backend}"
            );
            assert_eq!(rotten.state, SyncState::Failed, "{backend}: resynced");
            let missing = row(2).await;
            assert_eq!(
                missing.verification_failure.as_deref(),
                Some("Error during verification: File is not checksummable")
            );
            assert_eq!(missing.state, SyncState::Failed, "{backend}: resynced");
            assert_eq!(row(3).await.verification_state, VerificationState::Disabled);

            // The resync repairs the rotten copy; verification then succeeds.
            for id in [1, 2] {
                registry.pending(&db, id).await.unwrap();
                downloader.sync_now(&it, id).await.unwrap();
            }
            assert_eq!(verify(&client).await.unwrap().succeeded, 2, "{backend}");
            let repaired = row(1).await;
            assert_eq!(
                repaired.verification_state,
                VerificationState::Succeeded,
                "{backend}"
            );
            assert!(!repaired.checksum_mismatch);

            // An unreachable primary releases the claims untouched.
            registry.verification_pending(&db, 4).await.unwrap();
            let gone = unreachable_primary();
            assert!(verify(&gone).await.is_err(), "{backend}");
            let released = row(4).await;
            assert_eq!(
                (released.state, released.verification_state),
                (SyncState::Synced, VerificationState::Pending)
            );
        }
    }
}
