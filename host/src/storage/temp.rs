//! Streamed writes through a temporary object.
//!
//! A download is written to `.tmp/<uuid>` as it arrives ([`TempBlob`]),
//! hashed and counted on the way so that the checksum check needs no second
//! read, then either moved to its blob path in one rename
//! ([`FinishedTemp::promote`]) or deleted ([`FinishedTemp::discard`]). Readers
//! of the blob path see the old content or the new, never a prefix.
//!
//! Memory stays bounded: `object_store`'s [`BufWriter`] buffers up to one
//! part, then switches to a multipart upload with a bounded number of parts
//! in flight, waiting for one to finish before taking more data.

use super::durable::Durable;
use super::{BlobStore, StorageError, Written, blob_location};
use crate::plugin::BlobPath;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path as StorePath;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// A temporary object being written: a download on its way to a blob path
/// (see [`crate::storage`]).
///
/// Dropping it before [`TempBlob::finish`] abandons the write (the local
/// backend removes its staging file; anything left is removed by
/// [`BlobStore::cleanup_temp`]).
pub struct TempBlob {
    store: BlobStore,
    location: StorePath,
    writer: BufWriter,
    hasher: Sha256,
    size: u64,
}

impl std::fmt::Debug for TempBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempBlob")
            .field("location", &self.location.as_ref())
            .field("size", &self.size)
            .finish()
    }
}

impl TempBlob {
    pub(super) fn new(
        store: BlobStore,
        location: StorePath,
        part_size: usize,
        part_concurrency: usize,
    ) -> TempBlob {
        let writer =
            BufWriter::with_capacity(store.object_store().clone(), location.clone(), part_size)
                .with_max_concurrency(part_concurrency);
        TempBlob {
            store,
            location,
            writer,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`. Waits while too many parts are in flight, so a fast
    /// sender cannot make this buffer the whole blob.
    ///
    /// After an error the write cannot continue: drop the `TempBlob`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        self.writer
            .put(chunk)
            .await
            .map_err(|e| StorageError::from_store("write", &self.location, e))
    }

    /// Completes the write: the temporary object now holds every byte
    /// written, on stable storage, and its size and SHA-256 are known.
    pub async fn finish(self) -> Result<FinishedTemp, StorageError> {
        self.complete(true).await
    }

    /// [`finish`](Self::finish) for a write that will be moved into place
    /// with others ([`FinishedTemp::promote_all`]): where the store makes a
    /// group durable with one `syncfs`, the data is left to it, one flush
    /// for the group instead of one per write.
    pub async fn finish_for_group(self) -> Result<FinishedTemp, StorageError> {
        let sync_now = !self.store.syncs_groups_whole();
        self.complete(sync_now).await
    }

    async fn complete(mut self, sync_now: bool) -> Result<FinishedTemp, StorageError> {
        if let Err(source) = self.writer.shutdown().await {
            return Err(StorageError::Io {
                op: "write",
                location: self.location.to_string(),
                source,
            });
        }
        // The data is on stable storage before the object can be renamed to
        // a blob path and a commit can point at it (`durable.rs`).
        if sync_now {
            self.store
                .make_durable(&self.location, Durable::Data)
                .await?;
        }
        let hasher = std::mem::take(&mut self.hasher);
        Ok(FinishedTemp {
            size: self.size,
            sha256_hex: hex::encode(hasher.finalize()),
            data_synced: sync_now,
            store: self.store.clone(),
            location: Some(self.location.clone()),
        })
    }
}

/// A complete temporary object, waiting to be promoted to a blob path or
/// discarded.
///
/// Dropping it without either deletes the temporary object in the
/// background (when inside a Tokio runtime; otherwise
/// [`BlobStore::cleanup_temp`] removes it later).
#[derive(Debug)]
pub struct FinishedTemp {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256_hex: String,
    /// Whether the content is on stable storage yet; if not, it is synced
    /// before the object is moved into place.
    data_synced: bool,
    store: BlobStore,
    /// `None` once promoted or discarded.
    location: Option<StorePath>,
}

impl FinishedTemp {
    /// The size and SHA-256 as a [`Written`].
    pub fn written(&self) -> Written {
        Written {
            size: self.size,
            sha256: self.sha256_hex.clone(),
        }
    }

    /// Moves the object to blob `path` of type `type_name`, replacing any
    /// previous blob there (atomically on a local disk: one rename within
    /// the root).
    pub async fn promote(
        mut self,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<Written, StorageError> {
        let target = blob_location(type_name, path)?;
        let Some(location) = self.location.clone() else {
            unreachable!("a FinishedTemp is consumed by promote or discard");
        };
        if !self.data_synced {
            self.store.make_durable(&location, Durable::Data).await?;
        }
        self.store.rename_location(&location, &target).await?;
        self.location = None;
        tracing::debug!(%target, size = self.size, "download promoted");
        Ok(self.written())
    }

    /// [`promote`](Self::promote) for a group of writes: every object is
    /// moved into place, then the folders they landed in are made durable
    /// together. On an error, the objects not moved yet are dropped (and
    /// deleted); those moved stay where they are, for the caller's undo.
    pub async fn promote_all(
        promotions: Vec<(FinishedTemp, &str, &BlobPath)>,
    ) -> Result<(), StorageError> {
        let Some(store) = promotions.first().map(|(temp, _, _)| temp.store.clone()) else {
            return Ok(());
        };
        let mut targets = Vec::with_capacity(promotions.len());
        for (temp, type_name, path) in &promotions {
            targets.push((blob_location(type_name, path)?, temp.location.clone()));
        }
        // Content first: nothing is moved into place before it is on
        // stable storage (with `syncfs`, one flush for the group's data).
        let unsynced: Vec<StorePath> = promotions
            .iter()
            .filter(|(temp, _, _)| !temp.data_synced)
            .filter_map(|(temp, _, _)| temp.location.clone())
            .collect();
        store.make_durable_all(&unsynced, Durable::Data).await?;
        let renames = promotions.into_iter().zip(&targets).map(
            |((mut temp, _, _), (target, location))| async move {
                let Some(location) = location else {
                    unreachable!("a FinishedTemp is consumed by promote or discard");
                };
                temp.store.rename_unsynced(location, target).await?;
                // Moved: nothing left for `Drop` to delete.
                let _ = temp.location.take();
                Ok::<_, StorageError>(())
            },
        );
        futures::future::try_join_all(renames).await?;
        let placed: Vec<StorePath> = targets.into_iter().map(|(target, _)| target).collect();
        store.make_durable_all(&placed, Durable::Entries).await
    }

    /// Deletes the object.
    pub async fn discard(mut self) -> Result<(), StorageError> {
        if let Some(location) = self.location.take() {
            self.store.delete_location(&location).await?;
        }
        Ok(())
    }
}

impl Drop for FinishedTemp {
    fn drop(&mut self) {
        let Some(location) = self.location.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move {
                if let Err(error) = store.delete_location(&location).await {
                    tracing::warn!(%location, %error, "cannot delete abandoned temporary object");
                }
            });
        }
    }
}
