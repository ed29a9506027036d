//! The failed registries of a secondary, across types: what GitLab's
//! `GET /api/v4/geo_sites/current/failures` lists (there for project
//! registries, here for every installed type's registries).
//!
//! Rows come in (type name, registry id) order, a page at a time by offset,
//! since GitLab's REST lists are offset-paginated.

use super::registry::{Registry, RegistryRow};
use crate::catalog::InstalledType;
use crate::db::{Arg, Db, DbError};
use crate::states::{SyncState, VerificationState};
use std::sync::Arc;

/// GitLab's `failure_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    /// The download failed (`state` failed).
    Sync,
    /// The copy is synced but its verification failed.
    Verification,
    /// The copy's checksum did not match the primary's.
    ChecksumMismatch,
}

impl FailureType {
    /// GitLab's names: `sync`, `verification`, `checksum_mismatch`.
    pub fn parse(name: &str) -> Option<FailureType> {
        match name {
            "sync" => Some(FailureType::Sync),
            "verification" => Some(FailureType::Verification),
            "checksum_mismatch" => Some(FailureType::ChecksumMismatch),
            _ => None,
        }
    }

    /// The `WHERE` condition, binding from `$1`.
    fn condition(self) -> (&'static str, Vec<Arg>) {
        match self {
            FailureType::Sync => ("state = $1", vec![SyncState::Failed.as_i16().into()]),
            FailureType::Verification => (
                "state = $1 AND verification_state = $2",
                vec![
                    SyncState::Synced.as_i16().into(),
                    VerificationState::Failed.as_i16().into(),
                ],
            ),
            FailureType::ChecksumMismatch => ("checksum_mismatch = $1", vec![true.into()]),
        }
    }
}

/// One failed registry.
#[derive(Debug, Clone)]
pub struct Failure {
    pub replicable_name: String,
    /// The registry's foreign-key column (`<name>_id`).
    pub foreign_key: String,
    pub row: RegistryRow,
}

/// The rows of `kind` among `types`' registries (sorted by type name, then
/// registry id): how many there are in all, and the `limit` after `offset`.
pub async fn page(
    db: &Db,
    types: &[Arc<InstalledType>],
    kind: FailureType,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<Failure>), DbError> {
    let mut types: Vec<&Arc<InstalledType>> = types.iter().collect();
    types.sort_by(|a, b| a.name().cmp(b.name()));
    let (condition, args) = kind.condition();
    let mut total = 0;
    let mut skip = offset.max(0);
    let mut out = Vec::new();
    for it in types {
        let registry = Registry::of(it);
        let count = db
            .fetch_one(
                &format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE {condition}",
                    registry.table()
                ),
                &args,
            )
            .await?
            .int("n")?
            .unwrap_or(0);
        total += count;
        let want = limit - out.len() as i64;
        if want <= 0 || skip >= count {
            skip = (skip - count).max(0);
            continue;
        }
        let rows = registry
            .select(
                db,
                &format!(
                    "id IN (SELECT id FROM {} WHERE {condition} ORDER BY id LIMIT {want} OFFSET {skip})",
                    registry.table()
                ),
                &args,
                "id",
                want,
            )
            .await?;
        skip = 0;
        out.extend(rows.into_iter().map(|row| Failure {
            replicable_name: it.name().to_string(),
            foreign_key: it.identity.foreign_key(),
            row,
        }));
    }
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::update;
    use crate::secondary::testing::{helm, tracking_databases};

    #[tokio::test]
    async fn failures_by_kind_across_pages() {
        for (backend, db) in tracking_databases().await {
            let it = helm();
            let registry = Registry::of(&it);
            registry
                .insert_missing(&db, &[1, 2, 3, 4, 5])
                .await
                .unwrap();
            // 1, 2, 4 failed to sync; 3 synced with a failed verification
            // and a checksum mismatch; 5 pending.
            let table = registry.table();
            let failed = "state = 3 WHERE packages_helm_metadata_cache_id IN (1, 2, 4)";
            update(&db, table, failed, &[]).await;
            let mismatch = "state = 2, verification_state = 3, checksum_mismatch = $1 \
                            WHERE packages_helm_metadata_cache_id = 3";
            update(&db, table, mismatch, &[true.into()]).await;
            let types = [it.clone()];
            let model_ids =
                |rows: &[Failure]| -> Vec<i64> { rows.iter().map(|f| f.row.model_id).collect() };

            let (total, rows) = page(&db, &types, FailureType::Sync, 0, 2).await.unwrap();
            assert_eq!((total, model_ids(&rows)), (3, vec![1, 2]), "{backend}");
            let (total, rows) = page(&db, &types, FailureType::Sync, 2, 2).await.unwrap();
            assert_eq!((total, model_ids(&rows)), (3, vec![4]), "{backend}");
            let (_, rows) = page(&db, &types, FailureType::Sync, 3, 2).await.unwrap();
            assert!(rows.is_empty(), "{backend}");
            for kind in [FailureType::Verification, FailureType::ChecksumMismatch] {
                let (total, rows) = page(&db, &types, kind, 0, 20).await.unwrap();
                assert_eq!(
                    (total, model_ids(&rows)),
                    (1, vec![3]),
                    "{backend} {kind:?}"
                );
                assert_eq!(rows[0].replicable_name, "packages_helm_metadata_cache");
                assert_eq!(rows[0].foreign_key, "packages_helm_metadata_cache_id");
            }
        }
    }

    #[test]
    fn gitlabs_failure_type_names() {
        assert_eq!(FailureType::parse("sync"), Some(FailureType::Sync));
        assert_eq!(
            FailureType::parse("verification"),
            Some(FailureType::Verification)
        );
        assert_eq!(
            FailureType::parse("checksum_mismatch"),
            Some(FailureType::ChecksumMismatch)
        );
        assert_eq!(FailureType::parse("repository"), None);
    }
}
