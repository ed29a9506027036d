//! [`BlobStore`]: the operations a site performs on its blobs.

use super::durable::{Durable, OsSync, SyncFs};
use super::temp::TempBlob;
use super::{
    BlobMeta, StorageError, StoreKind, TEMP_DIR, Written, blob_location, hash, type_prefix,
};
use crate::config::SyncMethod;
use crate::plugin::BlobPath;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Chunk size when serving a local file ([`BlobStore::get`]).
const SERVE_CHUNK: usize = 256 * 1024;

/// A site's blob storage: one root holding every type's blobs and the
/// temporary objects of downloads in progress.
///
/// Cloning is cheap (one `Arc`); clones share the backend.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    kind: StoreKind,
    /// The local backend itself, for a local store: the fast paths read
    /// files through its own location-to-file mapping.
    local: Option<Local>,
    /// Bytes buffered before a streamed write becomes a multipart upload, and
    /// the size of each part.
    part_size: usize,
    /// Parts of one streamed write in flight at once.
    part_concurrency: usize,
    /// Shown in logs and `Debug`.
    description: String,
    /// On S3, the multipart uploads crashed writers left (`s3_staging.rs`).
    staging: Option<super::s3_staging::S3Staging>,
}

struct Local {
    fs: Arc<LocalFileSystem>,
    root: PathBuf,
    /// Makes writes durable before they return (`durable.rs`).
    sync: Arc<dyn SyncFs>,
    /// How a group of writes is made durable.
    method: SyncMethod,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.inner.description)
            .field("kind", &self.inner.kind)
            .finish()
    }
}

impl std::fmt::Display for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.description)
    }
}

impl BlobStore {
    /// The same store, sweeping its S3 staging uploads too (`s3.rs`).
    pub(super) fn with_staging(mut self, staging: super::s3_staging::S3Staging) -> BlobStore {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.staging = Some(staging);
        }
        self
    }

    /// The same local store, making groups of writes durable by `method`
    /// (`durable.rs`). For a store just made, before it is cloned.
    pub fn with_sync_method(mut self, method: SyncMethod) -> BlobStore {
        if let Some(local) = Arc::get_mut(&mut self.inner).and_then(|i| i.local.as_mut()) {
            local.method = method;
        }
        self
    }

    /// Blob storage in the local folder `root`, created if missing. Every
    /// write is on stable storage when it returns (`durable.rs`).
    pub fn local(root: &Path) -> Result<BlobStore, StorageError> {
        BlobStore::local_with(root, |store| store, Arc::new(OsSync))
    }

    /// [`BlobStore::local`] with the writes going through `wrap(store)` and
    /// the syncs through `sync`: the seam the durability tests record the
    /// order of writes, renames and syncs through.
    #[doc(hidden)]
    pub fn local_with(
        root: &Path,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
        sync: Arc<dyn SyncFs>,
    ) -> Result<BlobStore, StorageError> {
        let root_error = |source| StorageError::Root {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(root_error)?;
        let canonical = std::fs::canonicalize(root).map_err(root_error)?;
        let fs = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| root_error(std::io::Error::other(e)))?
            // Remove folders a delete leaves empty, so hashed layouts do not
            // accumulate empty directories. Writers recreate parents as needed.
            .with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        Ok(BlobStore {
            inner: Arc::new(Inner {
                store: wrap(fs.clone()),
                kind: StoreKind::Local,
                description: format!("local:{}", canonical.display()),
                local: Some(Local {
                    fs,
                    root: canonical,
                    sync,
                    method: SyncMethod::default(),
                }),
                // Parts are written in place by blocking writes: no minimum
                // size, so keep memory per download small.
                part_size: 1024 * 1024,
                part_concurrency: 2,
                staging: None,
            }),
        })
    }

    /// Blob storage over any `object_store` backend (an S3 bucket, or
    /// [`object_store::memory::InMemory`] in tests). `store` must already be
    /// scoped to this site's root (for example with
    /// [`object_store::prefix::PrefixStore`]).
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        kind: StoreKind,
        description: impl Into<String>,
    ) -> BlobStore {
        BlobStore {
            inner: Arc::new(Inner {
                store,
                kind,
                local: None,
                // S3 refuses parts under 5 MiB (except the last).
                part_size: 8 * 1024 * 1024,
                part_concurrency: 4,
                description: description.into(),
                staging: None,
            }),
        }
    }

    /// The local backend, for a local store (the batch fast paths).
    pub(super) fn local_fs(&self) -> Option<&Arc<LocalFileSystem>> {
        self.inner.local.as_ref().map(|local| &local.fs)
    }

    /// The local backend's syncs (a local store only).
    pub(super) fn local_sync(&self) -> Arc<dyn SyncFs> {
        let local = self.inner.local.as_ref();
        local.expect("a local store").sync.clone()
    }

    /// Whether a group of writes is made durable by one `syncfs` of a local
    /// root (`durable.rs`), so that its members need not sync one by one.
    pub(super) fn syncs_groups_whole(&self) -> bool {
        self.inner
            .local
            .as_ref()
            .is_some_and(|local| local.method == SyncMethod::Syncfs && cfg!(target_os = "linux"))
    }

    /// What kind of storage this is; it decides the verification checksum.
    pub fn kind(&self) -> StoreKind {
        self.inner.kind
    }

    /// The underlying `object_store`, for callers that need an operation
    /// this wrapper does not offer.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The file a blob is stored in, for a local store (`None` otherwise).
    /// The blob may not exist.
    pub fn local_path(
        &self,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<Option<PathBuf>, StorageError> {
        let location = blob_location(type_name, path)?;
        self.inner
            .local
            .as_ref()
            .map(|local| {
                local
                    .fs
                    .path_to_filesystem(&location)
                    .map_err(|e| StorageError::from_store("locate", &location, e))
            })
            .transpose()
    }

    /// Stores `data` as the blob `path` of type `type_name`, replacing any
    /// previous content atomically.
    pub async fn put_bytes(
        &self,
        type_name: &str,
        path: &BlobPath,
        data: Bytes,
    ) -> Result<Written, StorageError> {
        let location = blob_location(type_name, path)?;
        let written = Written {
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        };
        self.inner
            .store
            .put(&location, PutPayload::from_bytes(data))
            .await
            .map_err(|e| StorageError::from_store("write", &location, e))?;
        self.make_durable(&location, Durable::Both).await?;
        tracing::debug!(%location, size = written.size, "blob stored");
        Ok(written)
    }

    /// Starts a streamed write (a download): the content goes to a new
    /// temporary object, invisible at any blob path until
    /// [`FinishedTemp::promote`](super::FinishedTemp::promote).
    pub fn begin_temp(&self) -> TempBlob {
        let location = super::batch::temp_location();
        TempBlob::new(
            self.clone(),
            location,
            self.inner.part_size,
            self.inner.part_concurrency,
        )
    }

    /// The SHA-256 and size of a stored blob, read as a stream (never the
    /// whole blob in memory).
    pub async fn checksum(
        &self,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<Written, StorageError> {
        let location = blob_location(type_name, path)?;
        if let Some(local) = &self.inner.local {
            // One blocking-pool hop per blob instead of two: thousands of
            // small blobs a second is what verification needs.
            return hash::hash_local(&local.fs, &location).await;
        }
        let result = self
            .inner
            .store
            .get_opts(&location, GetOptions::default())
            .await
            .map_err(|e| StorageError::from_store("read", &location, e))?;
        hash::hash_get_result(&location, result).await
    }

    /// GitLab's verification checksum of a stored blob
    /// (`ee/app/models/concerns/geo/blob_replicator_strategy.rb`): the SHA-256
    /// hex on local storage, the padded size
    /// ([`format_file_size_for_checksum`](super::format_file_size_for_checksum))
    /// on object storage.
    pub async fn geo_checksum(
        &self,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<String, StorageError> {
        match self.inner.kind {
            StoreKind::Local => Ok(self.checksum(type_name, path).await?.sha256),
            StoreKind::ObjectStorage => Ok(super::format_file_size_for_checksum(
                self.size(type_name, path).await?,
            )),
        }
    }

    /// Opens a blob for serving: its size and a stream of its content.
    ///
    /// The size is taken when the blob is opened; on a local disk the open
    /// file keeps its content even if the blob is replaced meanwhile, so the
    /// stream yields exactly `size` bytes unless reading fails.
    ///
    /// A local blob of at most one serving chunk is read whole, in the same
    /// blocking task that opens it: its stream is ready at once, so an HTTP
    /// server sends the headers and the body together. (A body that comes
    /// after the headers in a second small write waits for the client's
    /// delayed ACK when Nagle's algorithm is on: 40 ms a blob on Linux.)
    pub async fn get(
        &self,
        type_name: &str,
        path: &BlobPath,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        let location = blob_location(type_name, path)?;
        if let Some(local) = &self.inner.local {
            return serve_local(&local.fs, &location).await;
        }
        let result = self
            .inner
            .store
            .get_opts(&location, GetOptions::default())
            .await
            .map_err(|e| StorageError::from_store("read", &location, e))?;
        let size = result.range.end - result.range.start;
        let shown = location.to_string();
        let stream = match result.payload {
            GetResultPayload::File(file, _) => {
                use tokio::io::AsyncReadExt;
                let file = tokio::fs::File::from_std(file).take(size);
                tokio_util::io::ReaderStream::with_capacity(file, SERVE_CHUNK)
                    .map_err(move |source| StorageError::Io {
                        op: "read",
                        location: shown.clone(),
                        source,
                    })
                    .boxed()
            }
            GetResultPayload::Stream(stream) => stream
                .map_err(move |e| StorageError::from_store("read", &shown, e))
                .boxed(),
        };
        Ok((size, stream))
    }

    /// A stored blob's size and modification time.
    pub async fn head(&self, type_name: &str, path: &BlobPath) -> Result<BlobMeta, StorageError> {
        let location = blob_location(type_name, path)?;
        self.head_location(&location).await
    }

    pub(super) async fn head_location(
        &self,
        location: &StorePath,
    ) -> Result<BlobMeta, StorageError> {
        let meta = self
            .inner
            .store
            .head(location)
            .await
            .map_err(|e| StorageError::from_store("stat", location, e))?;
        Ok(BlobMeta {
            size: meta.size,
            last_modified: meta.last_modified,
        })
    }

    /// Whether a blob exists.
    pub async fn exists(&self, type_name: &str, path: &BlobPath) -> Result<bool, StorageError> {
        match self.head(type_name, path).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A stored blob's size in bytes.
    pub async fn size(&self, type_name: &str, path: &BlobPath) -> Result<u64, StorageError> {
        Ok(self.head(type_name, path).await?.size)
    }

    /// Deletes a blob. Deleting a blob that does not exist succeeds.
    pub async fn delete(&self, type_name: &str, path: &BlobPath) -> Result<(), StorageError> {
        let location = blob_location(type_name, path)?;
        self.delete_location(&location).await?;
        tracing::debug!(%location, "blob deleted");
        Ok(())
    }

    pub(super) async fn delete_location(&self, location: &StorePath) -> Result<(), StorageError> {
        match self.inner.store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::from_store("delete", location, e)),
        }
    }

    /// Copies blob `from` to `to` within type `type_name`, replacing `to`
    /// (a hot swap that changes blob paths keeps both until it is done).
    pub async fn copy(
        &self,
        type_name: &str,
        from: &BlobPath,
        to: &BlobPath,
    ) -> Result<(), StorageError> {
        let from = blob_location(type_name, from)?;
        let to = blob_location(type_name, to)?;
        self.inner
            .store
            .copy(&from, &to)
            .await
            .map_err(|e| StorageError::from_store("copy", &from, e))?;
        // A local copy is a hard link: the data is the source's, synced
        // when it was written; the new folder entries are not.
        self.make_durable(&to, Durable::Entries).await
    }

    /// Moves blob `from` to `to` within type `type_name`, replacing `to`.
    /// Atomic on a local disk; a copy then a delete on object storage.
    pub async fn rename(
        &self,
        type_name: &str,
        from: &BlobPath,
        to: &BlobPath,
    ) -> Result<(), StorageError> {
        let from = blob_location(type_name, from)?;
        let to = blob_location(type_name, to)?;
        self.rename_location(&from, &to).await
    }

    pub(super) async fn rename_location(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> Result<(), StorageError> {
        self.rename_unsynced(from, to).await?;
        self.make_durable(to, Durable::Entries).await
    }

    /// A rename whose folder entries the caller makes durable
    /// ([`make_durable_all`](Self::make_durable_all)) before relying on it.
    pub(super) async fn rename_unsynced(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> Result<(), StorageError> {
        self.inner
            .store
            .rename(from, to)
            .await
            .map_err(|e| StorageError::from_store("rename", from, e))
    }

    /// On a local store, syncs `location`'s data and/or the folders from
    /// its own up to the root, so that what was just written or renamed
    /// there survives a power cut (`durable.rs`). Nothing to do on object
    /// storage, where an acknowledged write is durable.
    pub(super) async fn make_durable(
        &self,
        location: &StorePath,
        what: Durable,
    ) -> Result<(), StorageError> {
        let Some(local) = &self.inner.local else {
            return Ok(());
        };
        let file = local
            .fs
            .path_to_filesystem(location)
            .map_err(|e| StorageError::from_store("sync", location, e))?;
        let (sync, root) = (local.sync.clone(), local.root.clone());
        sync_blocking(location.to_string(), move || {
            super::durable::sync_path(&*sync, &root, &file, what)
        })
        .await
    }

    /// [`make_durable`](Self::make_durable) for many locations at once, for
    /// a group of writes. With [`SyncMethod::Syncfs`] (where the system has
    /// it) one `syncfs` covers them all; otherwise each file and each
    /// shared folder is synced once, the files' data first, and the syncs
    /// of one kind run side by side.
    pub(super) async fn make_durable_all(
        &self,
        locations: &[StorePath],
        what: Durable,
    ) -> Result<(), StorageError> {
        let Some(local) = &self.inner.local else {
            return Ok(());
        };
        if locations.is_empty() {
            return Ok(());
        }
        if local.method == SyncMethod::Syncfs {
            let (sync, root) = (local.sync.clone(), local.root.clone());
            let whole = sync_blocking(local.root.display().to_string(), move || {
                sync.sync_filesystem(&root)
            })
            .await;
            match whole {
                Err(StorageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::Unsupported => {}
                done => return done,
            }
        }
        // Each path on its own: only now are the files needed.
        let files = locations
            .iter()
            .map(|location| {
                local
                    .fs
                    .path_to_filesystem(location)
                    .map_err(|e| StorageError::from_store("sync", location, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (data, folders) = super::durable::sync_plan(&local.root, &files, what);
        let file_syncs = data.into_iter().map(|path| (path, false));
        let folder_syncs = folders.into_iter().map(|path| (path, true));
        for batch in [file_syncs.collect::<Vec<_>>(), folder_syncs.collect()] {
            let syncs = batch.into_iter().map(|(path, folder)| {
                let sync = local.sync.clone();
                sync_blocking(path.display().to_string(), move || {
                    if folder {
                        sync.sync_dir(&path)
                    } else {
                        sync.sync_file(&path)
                    }
                })
            });
            futures::future::try_join_all(syncs).await?;
        }
        Ok(())
    }

    /// Removes temporary objects last written more than `older_than` ago:
    /// what a crash or a cancelled download left behind, including, on S3,
    /// the incomplete multipart uploads of temporary keys
    /// (`s3_staging.rs`). Returns how many were removed.
    ///
    /// `older_than` must exceed the longest a download may take, or this
    /// races with it; the downloader's stall timeouts bound that.
    pub async fn cleanup_temp(&self, older_than: Duration) -> Result<usize, StorageError> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(std::time::UNIX_EPOCH);
        let removed = match self.inner.local.as_ref().map(|local| &local.root) {
            // The local store hides its own staging files (`<name>#<n>`,
            // left by a multipart write cut short) from listings, so scan
            // the folder itself.
            Some(root) => {
                let dir = root.join(TEMP_DIR);
                tokio::task::spawn_blocking(move || cleanup_local_dir(&dir, cutoff))
                    .await
                    .map_err(|e| StorageError::Io {
                        op: "clean up",
                        location: TEMP_DIR.into(),
                        source: std::io::Error::other(e),
                    })??
            }
            None => {
                let cutoff: chrono::DateTime<chrono::Utc> = cutoff.into();
                let prefix = StorePath::from(TEMP_DIR);
                let stale: Vec<StorePath> = self
                    .inner
                    .store
                    .list(Some(&prefix))
                    .try_filter(|meta| std::future::ready(meta.last_modified < cutoff))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await
                    .map_err(|e| StorageError::from_store("list", &prefix, e))?;
                for location in &stale {
                    self.delete_location(location).await?;
                }
                let aborted = match &self.inner.staging {
                    Some(staging) => staging.sweep(older_than).await?,
                    None => 0,
                };
                stale.len() + aborted
            }
        };
        if removed > 0 {
            tracing::info!(removed, store = %self, "removed leftover temporary objects");
        }
        Ok(removed)
    }

    /// Whether the storage answers, for the readiness probe: the local root
    /// is still a folder we can read, or the bucket answers a listing of
    /// the temporary prefix (one request, usually of nothing).
    pub async fn probe(&self) -> Result<(), StorageError> {
        match self.inner.local.as_ref().map(|local| local.root.clone()) {
            Some(root) => tokio::task::spawn_blocking(move || {
                std::fs::read_dir(&root)
                    .map(drop)
                    .map_err(|source| StorageError::Root { path: root, source })
            })
            .await
            .map_err(|e| StorageError::Io {
                op: "read",
                location: "the storage root".into(),
                source: std::io::Error::other(e),
            })?,
            None => {
                let prefix = StorePath::from(TEMP_DIR);
                self.inner
                    .store
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .map(drop)
                    .map_err(|e| StorageError::from_store("list", &prefix, e))
            }
        }
    }

    /// The paths of every blob of type `type_name`, relative to the type's
    /// folder, sorted. Reads the whole listing into memory: for tests and
    /// small diagnostics, not for iterating a production store.
    pub async fn list_type(&self, type_name: &str) -> Result<Vec<String>, StorageError> {
        let prefix = type_prefix(type_name)?;
        let mut paths: Vec<String> = self
            .inner
            .store
            .list(Some(&prefix))
            .map_ok(|meta| {
                meta.location
                    .prefix_match(&prefix)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| meta.location.to_string())
            })
            .try_collect()
            .await
            .map_err(|e| StorageError::from_store("list", &prefix, e))?;
        paths.sort();
        Ok(paths)
    }
}

/// [`BlobStore::get`] of a local file: open, stat and, for a blob of at
/// most [`SERVE_CHUNK`] bytes, read it, in one blocking task; a larger
/// blob streams from the open file in chunks of [`SERVE_CHUNK`].
async fn serve_local(
    fs: &LocalFileSystem,
    location: &StorePath,
) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
    use super::hash::{io_error, local_file_path, open_local, read_whole};
    let file_path = local_file_path(fs, location)?;
    let shown = location.to_string();
    enum Opened {
        Whole(Bytes),
        Open(std::fs::File, u64),
    }
    let opened = {
        let shown = shown.clone();
        tokio::task::spawn_blocking(move || {
            let (file, size) = open_local(&file_path, &shown)?;
            if size > SERVE_CHUNK as u64 {
                return Ok(Opened::Open(file, size));
            }
            // Exactly the size taken at open, as the streamed case yields.
            Ok(Opened::Whole(read_whole(file, size, &shown)?))
        })
        .await
        .map_err(|e| io_error("read", location.as_ref(), std::io::Error::other(e)))??
    };
    Ok(match opened {
        Opened::Whole(content) => (
            content.len() as u64,
            futures::stream::once(std::future::ready(Ok(content))).boxed(),
        ),
        Opened::Open(file, size) => {
            use tokio::io::AsyncReadExt;
            let file = tokio::fs::File::from_std(file).take(size);
            let stream = tokio_util::io::ReaderStream::with_capacity(file, SERVE_CHUNK)
                .map_err(move |source| StorageError::Io {
                    op: "read",
                    location: shown.clone(),
                    source,
                })
                .boxed();
            (size, stream)
        }
    })
}

/// Removes files in `dir` (not recursive: temporary objects are flat)
/// modified before `cutoff`.
fn cleanup_local_dir(dir: &Path, cutoff: std::time::SystemTime) -> Result<usize, StorageError> {
    let io_error = |op, source| StorageError::Io {
        op,
        location: TEMP_DIR.into(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("list", e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", e))?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("stat", e)),
        };
        if !meta.is_file() || meta.modified().map_or(true, |m| m >= cutoff) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("delete", e)),
        }
    }
    Ok(removed)
}

/// Runs a sync on the blocking pool; its error names `location`.
async fn sync_blocking(
    location: String,
    sync: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(sync)
        .await
        .map_err(std::io::Error::other)
        .and_then(|done| done)
        .map_err(|source| StorageError::Io {
            op: "sync",
            location,
            source,
        })
}
