//! Sites whose blobs live in S3-compatible object storage (a real S3
//! server on loopback: `moto_server`, started by `cargo xtask test`):
//! both sites on S3, a local primary with an S3 secondary, GitLab's
//! `sync_object_storage` switch, and a corrupted object repaired.
//!
//! Skipped with a note when `GEOHOST_TEST_S3_ENDPOINT` is unset (never on
//! CI, where that is a failure).

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use futures::TryStreamExt;
use geohost::plugin::BlobPath;
use geohost::primary::sites::{NewSite, SiteUpdate};
use geohost::secondary::Registry;
use geohost::storage::format_file_size_for_checksum;
use geohost::storage::testing::{s3_endpoint, s3_storage_toml};
use std::collections::BTreeMap;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(120);

/// `[workers]` settings plus an S3 `[storage]` section in a new bucket.
fn on_s3(workers: &str, prefix: &str) -> String {
    let storage = s3_storage_toml(prefix).expect("the S3 test server");
    format!("{workers}{storage}")
}

async fn primary_on_s3(backend: Backend) -> TestSite {
    sites::primary_with(backend, &on_s3("idle_poll_ms = 50\n", "primary")).await
}

async fn secondary_on_s3(backend: Backend, primary: &TestSite, new: NewSite) -> TestSite {
    let workers = "idle_poll_ms = 50\nconsistency_interval_secs = 2\n";
    sites::secondary_with(backend, primary, new, &on_s3(workers, "secondary/one")).await
}

/// A blob's content on a site, read through its store.
async fn blob(site: &TestSite, path: &str) -> Option<Vec<u8>> {
    let path = BlobPath::parse(path).unwrap();
    let (_, stream) = site.site.blobs.get(HELM, &path).await.ok()?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.ok()?;
    Some(chunks.concat())
}

/// Writes `n` records in a new project; returns (id → (blob path, size)).
async fn write_records(primary: &TestSite, n: usize) -> BTreeMap<i64, (String, u64)> {
    let [root, ..] = sites::group_tree(primary).await;
    let project = sites::project(primary, root, "charts").await;
    let mut written = BTreeMap::new();
    for i in 0..n {
        let w = sites::put_helm(
            primary,
            project,
            &format!("ch{i}"),
            &sites::index_yaml(project, "s3", i as u32),
        )
        .await;
        written.insert(w.id, (w.blob_path.clone(), w.size));
    }
    written
}

/// Every expected registry row synced and verified, and no other.
async fn converged(secondary: &TestSite, ids: &[i64]) -> bool {
    let it = secondary.site.installed(HELM).unwrap();
    let Ok(rows) = Registry::of(&it)
        .all(secondary.site.tracking().unwrap())
        .await
    else {
        return false;
    };
    rows.iter().map(|r| r.model_id).collect::<Vec<_>>() == ids
        && rows.iter().all(|r| {
            r.state == geohost::states::SyncState::Synced
                && r.verification_state == geohost::states::VerificationState::Succeeded
        })
}

async fn assert_identical(
    primary: &TestSite,
    secondary: &TestSite,
    written: &BTreeMap<i64, (String, u64)>,
) {
    for (id, (path, _)) in written {
        let ours = blob(secondary, path).await;
        assert!(ours.is_some(), "record {id}: blob missing on the secondary");
        assert_eq!(ours, blob(primary, path).await, "record {id}: blob differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sites_on_s3_replicate_and_verify_by_padded_size() {
    if s3_endpoint().is_none() {
        return;
    }
    for backend in sites::backends() {
        let primary = primary_on_s3(backend).await;
        let written = write_records(&primary, 12).await;
        let secondary = secondary_on_s3(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                sync_object_storage: true,
                ..Default::default()
            },
        )
        .await;
        let ids: Vec<i64> = written.keys().copied().collect();
        eventually(CONVERGE, "all synced and verified", || {
            converged(&secondary, &ids)
        })
        .await;
        assert_identical(&primary, &secondary, &written).await;

        // Object storage on both sides: GitLab's checksum is the padded size,
        // stored as the primary's and the secondary's verification checksum;
        // the records say `file_store = 2`.
        let it = secondary.site.installed(HELM).unwrap();
        let tracking = secondary.site.tracking().unwrap();
        for (id, (_, size)) in &written {
            let row = Registry::of(&it).get(tracking, *id).await.unwrap().unwrap();
            assert_eq!(
                row.verification_checksum.as_deref(),
                Some(format_file_size_for_checksum(*size).as_str()),
                "{backend:?}: record {id}"
            );
        }
        let file_stores = primary
            .site
            .db
            .fetch_all(
                &format!(
                    "SELECT file_store FROM {}",
                    geohost::db::ident(&it.identity.table.name)
                ),
                &[],
            )
            .await
            .unwrap();
        assert!(
            file_stores
                .iter()
                .all(|r| r.int("file_store").unwrap() == Some(2))
        );
        // A truncated object changes the padded size: found and resynced.
        let registry = Registry::of(&it);
        let (&victim, (path, _)) = written.iter().next().unwrap();
        let good = blob(&secondary, path).await.unwrap();
        let blob_path = BlobPath::parse(path).unwrap();
        secondary
            .site
            .blobs
            .put_bytes(HELM, &blob_path, bytes::Bytes::copy_from_slice(&good[1..]))
            .await
            .unwrap();
        assert!(
            registry
                .verification_pending(tracking, victim)
                .await
                .unwrap()
        );
        eventually(CONVERGE, "the size mismatch to be found", || async {
            let row = registry.get(tracking, victim).await.unwrap().unwrap();
            row.checksum_mismatch && row.state == geohost::states::SyncState::Failed
        })
        .await;
        tracking
            .execute(
                &format!(
                    "UPDATE {} SET retry_at = NULL WHERE {} = $1 AND state = 3",
                    geohost::db::ident(&it.identity.registry_table()),
                    geohost::db::ident(&it.identity.foreign_key())
                ),
                &[victim.into()],
            )
            .await
            .unwrap();
        eventually(CONVERGE, "the object resynced", || {
            converged(&secondary, &ids)
        })
        .await;
        assert_eq!(blob(&secondary, path).await, Some(good), "{backend:?}");
        // Nothing is left at temporary keys.
        assert_eq!(
            secondary
                .site
                .blobs
                .cleanup_temp(Duration::ZERO)
                .await
                .unwrap(),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_primary_replicates_to_an_s3_secondary_which_repairs_a_corrupt_object() {
    if s3_endpoint().is_none() {
        return;
    }
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let written = write_records(&primary, 10).await;
        let secondary = secondary_on_s3(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                ..Default::default()
            },
        )
        .await;
        let ids: Vec<i64> = written.keys().copied().collect();
        eventually(CONVERGE, "all synced and verified", || {
            converged(&secondary, &ids)
        })
        .await;
        assert_identical(&primary, &secondary, &written).await;

        // The records are local on the primary: the S3 copy is checked by
        // SHA-256, so a same-size corruption is found.
        let it = secondary.site.installed(HELM).unwrap();
        let tracking = secondary.site.tracking().unwrap().clone();
        let registry = Registry::of(&it);
        let (&victim, (path, _)) = written.iter().nth(3).unwrap();
        let good = blob(&secondary, path).await.unwrap();
        let mut bad = good.clone();
        bad[0] ^= 0xff;
        let blob_path = BlobPath::parse(path).unwrap();
        secondary
            .site
            .blobs
            .put_bytes(HELM, &blob_path, bytes::Bytes::from(bad))
            .await
            .unwrap();
        let before = registry.get(&tracking, victim).await.unwrap().unwrap();
        assert!(
            registry
                .verification_pending(&tracking, victim)
                .await
                .unwrap()
        );
        // Found: GitLab's mismatch, and a resync (backed off 16–74 s).
        eventually(CONVERGE, "the mismatch to be found", || async {
            let row = registry.get(&tracking, victim).await.unwrap().unwrap();
            row.checksum_mismatch
                && row
                    .last_sync_failure
                    .is_some_and(|f| f.starts_with("Verification failed with: "))
        })
        .await;
        // Skip the backoff rather than wait for it.
        tracking
            .execute(
                &format!(
                    "UPDATE {} SET retry_at = NULL WHERE {} = $1 AND state = 3",
                    geohost::db::ident(&it.identity.registry_table()),
                    geohost::db::ident(&it.identity.foreign_key())
                ),
                &[victim.into()],
            )
            .await
            .unwrap();
        eventually(CONVERGE, "the corrupt object resynced", || async {
            let row = registry.get(&tracking, victim).await.unwrap().unwrap();
            row.last_synced_at > before.last_synced_at && converged(&secondary, &ids).await
        })
        .await;
        assert_eq!(blob(&secondary, path).await, Some(good), "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_stored_records_wait_for_sync_object_storage() {
    if s3_endpoint().is_none() {
        return;
    }
    // One backend is enough: the rule is the type's scope decision.
    let backend = *sites::backends().last().unwrap();
    let primary = primary_on_s3(backend).await;
    let written = write_records(&primary, 6).await;
    let secondary = sites::secondary(
        backend,
        &primary,
        NewSite {
            name: "secondary".into(),
            sync_object_storage: false,
            ..Default::default()
        },
    )
    .await;
    // GitLab's `object_storage_scope`: no registry row for a file in
    // object storage while the secondary does not sync object storage.
    let s = geohost::secondary::Secondary::new(secondary.site.clone()).unwrap();
    s.refresh_node().await.unwrap();
    let counts = s.consistency_pass().await.unwrap();
    assert_eq!(counts.created, 0);
    let it = secondary.site.installed(HELM).unwrap();
    let tracking = secondary.site.tracking().unwrap();
    assert!(Registry::of(&it).all(tracking).await.unwrap().is_empty());

    // Turned on: they are replicated (to local disk, checked by padded size).
    let id = geohost::primary::sites::list(&primary.site.db)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "secondary")
        .unwrap()
        .id;
    geohost::primary::sites::update(
        &primary.site,
        id,
        SiteUpdate {
            sync_object_storage: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ids: Vec<i64> = written.keys().copied().collect();
    eventually(CONVERGE, "all synced and verified", || {
        converged(&secondary, &ids)
    })
    .await;
    assert_identical(&primary, &secondary, &written).await;
}
