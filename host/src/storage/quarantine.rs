//! Guarded deletions: a blob a secondary removes (its record left the
//! site's scope, was pruned, or was deleted on the primary) is moved to
//! `<root>/.quarantine/<type>/<unix seconds>/<blob path>` instead of being
//! deleted, kept for the site's quarantine delay (`[deletions]
//! quarantine_secs`, a day by default), then purged by the sweeper.
//! `geohost registry restore` moves a type's quarantined blobs back.
//!
//! The time is in the key, not taken from the object's modification time:
//! a rename keeps a local file's time, and a blob written a year ago must
//! still get its full delay.

use super::{BlobStore, StorageError, blob_location, check_type_name};
use crate::plugin::BlobPath;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The folder, under the storage root, that holds quarantined blobs. No
/// replicable name can collide with it: those start with a letter.
pub const QUARANTINE_DIR: &str = ".quarantine";

/// What restoring a type's quarantined blobs did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// Blobs moved back to their path.
    pub restored: u64,
    /// Blobs left in quarantine because their path holds a blob again.
    pub kept: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `.quarantine/<type>/<secs>/<path>`.
fn quarantine_location(
    type_name: &str,
    secs: u64,
    path: &BlobPath,
) -> Result<StorePath, StorageError> {
    check_type_name(type_name)?;
    Ok(StorePath::from(format!(
        "{QUARANTINE_DIR}/{type_name}/{secs}/{}",
        path.as_str()
    )))
}

/// A quarantined object's type, time and blob path, from its location.
fn parse(location: &StorePath) -> Option<(String, u64, String)> {
    let mut parts = location.parts();
    if parts.next()?.as_ref() != QUARANTINE_DIR {
        return None;
    }
    let type_name = parts.next()?.as_ref().to_string();
    let secs = parts.next()?.as_ref().parse().ok()?;
    let path: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
    (!path.is_empty()).then(|| (type_name, secs, path.join("/")))
}

impl BlobStore {
    /// Moves a blob into quarantine (see the [module docs](self)). Returns
    /// whether there was a blob to move.
    pub async fn quarantine(&self, type_name: &str, path: &BlobPath) -> Result<bool, StorageError> {
        let from = blob_location(type_name, path)?;
        let to = quarantine_location(type_name, now_secs(), path)?;
        match self.rename_location(&from, &to).await {
            Ok(()) => {
                tracing::debug!(location = %from, "blob quarantined");
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every quarantined object: (type, time, blob path) → location.
    async fn quarantined(
        &self,
        type_name: Option<&str>,
    ) -> Result<Vec<(String, u64, String, StorePath)>, StorageError> {
        let prefix = match type_name {
            Some(name) => {
                check_type_name(name)?;
                StorePath::from(format!("{QUARANTINE_DIR}/{name}"))
            }
            None => StorePath::from(QUARANTINE_DIR),
        };
        let found: Vec<StorePath> = self
            .object_store()
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| StorageError::from_store("list", &prefix, e))?;
        Ok(found
            .into_iter()
            .filter_map(|location| {
                parse(&location).map(|(name, secs, path)| (name, secs, path, location))
            })
            .collect())
    }

    /// How many blobs of `type_name` are in quarantine.
    pub async fn quarantined_count(&self, type_name: &str) -> Result<u64, StorageError> {
        Ok(self.quarantined(Some(type_name)).await?.len() as u64)
    }

    /// Moves `type_name`'s quarantined blobs back to their paths (the
    /// latest copy of each path); a path that holds a blob again keeps it,
    /// and the quarantined copy stays until it is purged.
    pub async fn restore_quarantined(&self, type_name: &str) -> Result<Restored, StorageError> {
        let mut latest: BTreeMap<String, (u64, StorePath)> = BTreeMap::new();
        for (_, secs, path, location) in self.quarantined(Some(type_name)).await? {
            if latest.get(&path).is_none_or(|(t, _)| *t < secs) {
                latest.insert(path, (secs, location));
            }
        }
        let mut done = Restored::default();
        for (path, (_, location)) in latest {
            let Ok(blob_path) = BlobPath::parse(&path) else {
                continue; // not a blob path: nothing Geohost quarantined
            };
            if self.exists(type_name, &blob_path).await? {
                done.kept += 1;
                continue;
            }
            let to = blob_location(type_name, &blob_path)?;
            self.rename_location(&location, &to).await?;
            done.restored += 1;
        }
        if done.restored > 0 {
            tracing::info!(
                r#type = type_name,
                restored = done.restored,
                kept = done.kept,
                "quarantined blobs restored"
            );
        }
        Ok(done)
    }

    /// Deletes quarantined blobs older than `delay`. Returns how many.
    pub async fn purge_quarantine(&self, delay: Duration) -> Result<usize, StorageError> {
        let cutoff = now_secs().saturating_sub(delay.as_secs());
        let mut purged = 0;
        for (_, secs, _, location) in self.quarantined(None).await? {
            if secs < cutoff || (delay.is_zero() && secs <= cutoff) {
                self.delete_location(&location).await?;
                purged += 1;
            }
        }
        if purged > 0 {
            tracing::info!(purged, store = %self, "quarantined blobs purged");
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> BlobPath {
        BlobPath::parse(p).unwrap()
    }

    #[tokio::test]
    async fn quarantined_blobs_come_back_byte_identical_until_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let (a, b) = (path("aa/bb/index.yaml"), path("cc/index.yaml"));
        store
            .put_bytes("t", &a, b"first".to_vec().into())
            .await
            .unwrap();
        store
            .put_bytes("t", &b, b"second".to_vec().into())
            .await
            .unwrap();
        assert!(store.quarantine("t", &a).await.unwrap());
        assert!(store.quarantine("t", &b).await.unwrap());
        assert!(
            !store.quarantine("t", &a).await.unwrap(),
            "nothing left to move"
        );
        assert!(store.list_type("t").await.unwrap().is_empty());
        assert_eq!(store.quarantined_count("t").await.unwrap(), 2);

        // A path that holds a blob again keeps it.
        store
            .put_bytes("t", &b, b"newer".to_vec().into())
            .await
            .unwrap();
        let done = store.restore_quarantined("t").await.unwrap();
        assert_eq!(
            done,
            Restored {
                restored: 1,
                kept: 1
            }
        );
        let read = |p: BlobPath| {
            let store = store.clone();
            async move {
                let (_, body) = store.get("t", &p).await.unwrap();
                let chunks: Vec<bytes::Bytes> = body.try_collect().await.unwrap();
                chunks.concat()
            }
        };
        assert_eq!(read(a.clone()).await, b"first");
        assert_eq!(read(b.clone()).await, b"newer");

        // Purged after the delay only.
        assert_eq!(
            store
                .purge_quarantine(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.quarantined_count("t").await.unwrap(), 1);
        assert_eq!(store.purge_quarantine(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(store.quarantined_count("t").await.unwrap(), 0);
    }

    #[test]
    fn locations_carry_type_time_and_path() {
        let location = quarantine_location("t", 42, &path("a/b.yaml")).unwrap();
        assert_eq!(location.as_ref(), ".quarantine/t/42/a/b.yaml");
        assert_eq!(parse(&location), Some(("t".into(), 42, "a/b.yaml".into())));
        assert_eq!(parse(&StorePath::from("t/a")), None);
    }
}
