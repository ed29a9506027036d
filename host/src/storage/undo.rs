//! What a write that replaces a blob keeps so that it can be undone:
//! objects under `<root>/.undo/`, named by a key the caller chooses.
//!
//! - `<key>.previous`: the blob's content before the write (on a local disk
//!   a hard link, so nothing is copied; on S3 a server-side copy);
//! - `<key>.journal`: what the write is doing (the caller's JSON), written
//!   before the blob is touched.
//!
//! Both are durable when the call returns. The caller (`primary::journal`)
//! decides from its database whether the write committed, then either
//! forgets them or puts the previous content back. The storage layer knows
//! nothing of databases.

use super::durable::Durable;
use super::{BlobStore, StorageError, blob_location};
use crate::plugin::BlobPath;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};

/// The folder, under the storage root, of what writes keep to be undone.
/// No replicable name can collide with it: those start with a letter.
pub const UNDO_DIR: &str = ".undo";

const PREVIOUS: &str = "previous";
const JOURNAL: &str = "journal";

fn undo_location(key: &str, what: &str) -> Result<StorePath, StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(StorageError::InvalidPath {
            location: format!("{UNDO_DIR}/{key}"),
            reason: "an undo key is 1 to 128 ASCII letters, digits, `-` or `_`".into(),
        });
    }
    Ok(StorePath::from_iter([
        UNDO_DIR.to_string(),
        format!("{key}.{what}"),
    ]))
}

/// A journal entry found under `.undo/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The key it was written under.
    pub key: String,
    /// When it was written.
    pub written_at: DateTime<Utc>,
}

impl BlobStore {
    /// Keeps the current content of blob `path` of type `type_name` as
    /// `<key>.previous`, durably. Returns `false` if there is no such blob.
    pub async fn keep_previous(
        &self,
        type_name: &str,
        path: &BlobPath,
        key: &str,
    ) -> Result<bool, StorageError> {
        let kept = self.keep_previous_all(&[(type_name, path, key)]).await?;
        Ok(kept[0])
    }

    /// [`keep_previous`](Self::keep_previous) for a group of writes
    /// (`(type, path, key)` each): all are kept, then made durable together.
    pub async fn keep_previous_all(
        &self,
        blobs: &[(&str, &BlobPath, &str)],
    ) -> Result<Vec<bool>, StorageError> {
        let mut moves = Vec::with_capacity(blobs.len());
        for (type_name, path, key) in blobs {
            moves.push((
                blob_location(type_name, path)?,
                undo_location(key, PREVIOUS)?,
            ));
        }
        let copies = moves.iter().map(|(from, to)| async move {
            match self.object_store().copy(from, to).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(StorageError::from_store("keep", from, e)),
            }
        });
        let kept = futures::future::try_join_all(copies).await?;
        let made: Vec<StorePath> = moves
            .into_iter()
            .zip(&kept)
            .filter(|(_, kept)| **kept)
            .map(|((_, to), _)| to)
            .collect();
        self.make_durable_all(&made, Durable::Entries).await?;
        Ok(kept)
    }

    /// Writes `<key>.journal` with `content`, durably.
    pub async fn put_journal(&self, key: &str, content: Bytes) -> Result<(), StorageError> {
        self.put_journals(vec![(key.to_string(), content)]).await
    }

    /// [`put_journal`](Self::put_journal) for a group of writes: all are
    /// written, then made durable together.
    pub async fn put_journals(&self, journals: Vec<(String, Bytes)>) -> Result<(), StorageError> {
        let mut locations = Vec::with_capacity(journals.len());
        for (key, _) in &journals {
            locations.push(undo_location(key, JOURNAL)?);
        }
        let writes = locations
            .iter()
            .zip(journals)
            .map(|(location, (_, content))| async move {
                self.object_store()
                    .put(location, PutPayload::from_bytes(content))
                    .await
                    .map_err(|e| StorageError::from_store("write", location, e))
            });
        futures::future::try_join_all(writes).await?;
        self.make_durable_all(&locations, Durable::Both).await
    }

    /// Reads `<key>.journal`.
    pub async fn read_journal(&self, key: &str) -> Result<Bytes, StorageError> {
        let location = undo_location(key, JOURNAL)?;
        let result = self
            .object_store()
            .get(&location)
            .await
            .map_err(|e| StorageError::from_store("read", &location, e))?;
        result
            .bytes()
            .await
            .map_err(|e| StorageError::from_store("read", &location, e))
    }

    /// Puts `<key>.previous` back at blob `path` of type `type_name`
    /// (replacing what is there), durably. [`StorageError::NotFound`] if
    /// nothing was kept under `key`.
    pub async fn restore_previous(
        &self,
        key: &str,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<(), StorageError> {
        let from = undo_location(key, PREVIOUS)?;
        let to = blob_location(type_name, path)?;
        self.rename_location(&from, &to).await
    }

    /// Deletes what was kept under `key` (the previous content, then the
    /// journal, so that a journal never outlives nothing).
    pub async fn forget_undo(&self, key: &str) -> Result<(), StorageError> {
        self.delete_location(&undo_location(key, PREVIOUS)?).await?;
        self.delete_location(&undo_location(key, JOURNAL)?).await
    }

    /// The journals whose key starts with `prefix`, oldest first.
    pub async fn journals(&self, prefix: &str) -> Result<Vec<JournalEntry>, StorageError> {
        let folder = StorePath::from(UNDO_DIR);
        let suffix = format!(".{JOURNAL}");
        let mut found: Vec<JournalEntry> = self
            .object_store()
            .list(Some(&folder))
            .try_filter_map(|meta| {
                let key = meta
                    .location
                    .filename()
                    .and_then(|name| name.strip_suffix(suffix.as_str()))
                    .filter(|key| key.starts_with(prefix))
                    .map(|key| JournalEntry {
                        key: key.to_string(),
                        written_at: meta.last_modified,
                    });
                std::future::ready(Ok(key))
            })
            .try_collect()
            .await
            .map_err(|e| StorageError::from_store("list", &folder, e))?;
        found.sort_by(|a, b| (a.written_at, &a.key).cmp(&(b.written_at, &b.key)));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn previous_content_is_kept_restored_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let path = BlobPath::parse("a/b/index.yaml").unwrap();
        assert!(!store.keep_previous("t", &path, "k1").await.unwrap());
        store
            .put_bytes("t", &path, Bytes::from_static(b"old"))
            .await
            .unwrap();
        assert!(store.keep_previous("t", &path, "k1").await.unwrap());
        store
            .put_journal("k1", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        store
            .put_bytes("t", &path, Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(store.journals("k").await.unwrap().pop().unwrap().key, "k1");
        assert!(store.journals("x").await.unwrap().is_empty());
        assert_eq!(&store.read_journal("k1").await.unwrap()[..], b"{}");
        store.restore_previous("k1", "t", &path).await.unwrap();
        let (_, body) = store.get("t", &path).await.unwrap();
        let body: Vec<Bytes> = body.try_collect().await.unwrap();
        assert_eq!(body.concat(), b"old");
        assert!(
            store
                .restore_previous("k1", "t", &path)
                .await
                .unwrap_err()
                .is_not_found()
        );
        store.forget_undo("k1").await.unwrap();
        assert!(store.journals("").await.unwrap().is_empty());
        assert!(store.forget_undo("../x").await.is_err());
    }
}
