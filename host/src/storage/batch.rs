//! Operations on many small blobs at once: the batch hot path.
//!
//! A small blob costs more in hand-offs than in bytes: one blocking-pool hop
//! to open, stat and read or hash it, another to write it, each a pair of
//! context switches. Here a local store does a whole batch's work in a few
//! blocking tasks (as many as there are cores to use, each taking the next
//! blob from a shared queue, so a large blob does not hold up the rest);
//! an object store runs the same operations concurrently, `parallel` at a
//! time. Memory stays bounded: [`BlobStore::read_small`] reads up to a byte
//! budget per call, and no blob larger than the caller's limit is read.

use super::durable::{Durable, SyncFs};
use super::hash::{hash_file, io_error, open_local, read_whole};
use super::{BlobStore, StorageError, StoreKind, TEMP_DIR, Written, blob_location};
use crate::plugin::BlobPath;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, ObjectStoreExt, PutPayload};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What [`BlobStore::read_small`] found for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmallRead {
    /// The whole blob.
    Whole(Bytes),
    /// The blob is larger than the limit: its size, nothing read.
    TooLarge(u64),
}

/// Blocking tasks for `items` items of work: one per core (at least one),
/// never more than asked or than items.
fn workers(items: usize, parallel: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    items.min(parallel.max(1)).min(cores).max(1)
}

/// Runs `work(i)` for every `i < n` on a few blocking threads, each taking
/// the next index from a shared counter; returns the results in index order.
async fn on_blocking_threads<T, F>(n: usize, parallel: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    if n == 0 {
        return Vec::new();
    }
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers(n, parallel) {
        let (work, next) = (work.clone(), next.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return done;
                }
                done.push((i, work(i)));
            }
        }));
    }
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for task in tasks {
        // A panic in `work` is a bug; surface it where it happened.
        for (i, result) in task.await.expect("a blocking batch task panicked") {
            slots[i] = Some(result);
        }
    }
    slots
        .into_iter()
        .map(|s| s.expect("every index was taken"))
        .collect()
}

/// Runs `work` on the prepared jobs on a few blocking threads
/// ([`on_blocking_threads`]); a job that could not be prepared keeps its
/// error. Results in order.
async fn run_prepared<J, T, F>(
    prepared: Vec<Result<J, StorageError>>,
    parallel: usize,
    work: F,
) -> Vec<Result<T, StorageError>>
where
    J: Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(&J) -> Result<T, StorageError> + Send + Sync + 'static,
{
    let mut results: Vec<Option<Result<T, StorageError>>> = Vec::with_capacity(prepared.len());
    let mut jobs = Vec::new();
    let mut slots = Vec::new();
    for (i, job) in prepared.into_iter().enumerate() {
        match job {
            Ok(job) => {
                jobs.push(job);
                slots.push(i);
                results.push(None);
            }
            Err(error) => results.push(Some(Err(error))),
        }
    }
    let jobs = Arc::new(jobs);
    let done = on_blocking_threads(jobs.len(), parallel, move |k| work(&jobs[k])).await;
    for (i, result) in slots.into_iter().zip(done) {
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.expect("every job has a result"))
        .collect()
}

/// [`BlobStore::read_small`]'s answer as it grows: the reads in order, and
/// the bytes of the whole blobs among them against the budget.
struct SmallReads {
    reads: Vec<Result<SmallRead, StorageError>>,
    total: u64,
    budget: u64,
}

impl SmallReads {
    fn new(budget: u64) -> SmallReads {
        SmallReads {
            reads: Vec::new(),
            total: 0,
            budget,
        }
    }

    /// Adds `read`; whether the budget is now spent (read no more).
    fn push(&mut self, read: Result<SmallRead, StorageError>) -> bool {
        if let Ok(SmallRead::Whole(bytes)) = &read {
            self.total += bytes.len() as u64;
        }
        self.reads.push(read);
        self.total >= self.budget
    }
}

impl BlobStore {
    /// Reads blobs of `type_name` whole, in order, those of at most `max`
    /// bytes; a larger one is [`SmallRead::TooLarge`] and is not read.
    /// Stops after the first blob that brings the bytes read to `budget`
    /// or more: the answer may be a prefix of `paths` (never empty).
    pub async fn read_small(
        &self,
        type_name: &str,
        paths: &[BlobPath],
        max: u64,
        budget: u64,
    ) -> Vec<Result<SmallRead, StorageError>> {
        if let Some(fs) = self.local_fs() {
            let files = local_files(fs, type_name, paths);
            // One blocking task: reading small files is cheaper than the
            // hand-offs between several.
            return tokio::task::spawn_blocking(move || {
                let mut answer = SmallReads::new(budget);
                for file in files {
                    if answer.push(file.and_then(|(file, shown)| read_local(&file, &shown, max))) {
                        break;
                    }
                }
                answer.reads
            })
            .await
            .unwrap_or_else(|e| vec![Err(io_error("read", type_name, std::io::Error::other(e)))]);
        }
        let locations: Vec<Result<StorePath, StorageError>> =
            paths.iter().map(|p| blob_location(type_name, p)).collect();
        let mut answer = SmallReads::new(budget);
        let mut reads = futures::stream::iter(locations)
            .map(|location| async move {
                let location = location?;
                self.read_object_small(&location, max).await
            })
            .buffered(8);
        while let Some(read) = reads.next().await {
            if answer.push(read) {
                break;
            }
        }
        answer.reads
    }

    /// An object of at most `max` bytes, whole, from an object store.
    async fn read_object_small(
        &self,
        location: &StorePath,
        max: u64,
    ) -> Result<SmallRead, StorageError> {
        let result = self
            .object_store()
            .get_opts(location, GetOptions::default())
            .await
            .map_err(|e| StorageError::from_store("read", location, e))?;
        let size = result.meta.size;
        if size > max {
            return Ok(SmallRead::TooLarge(size));
        }
        let bytes = result
            .bytes()
            .await
            .map_err(|e| StorageError::from_store("read", location, e))?;
        Ok(SmallRead::Whole(bytes))
    }

    /// The SHA-256 and size of each blob of `type_name`, in order, at most
    /// `parallel` at a time (see the [module docs](self)).
    pub async fn checksums(
        &self,
        type_name: &str,
        paths: &[BlobPath],
        parallel: usize,
    ) -> Vec<Result<Written, StorageError>> {
        if let Some(fs) = self.local_fs() {
            return run_prepared(
                local_files(fs, type_name, paths),
                parallel,
                |(file, shown)| {
                    let (handle, size) = open_local(file, shown)?;
                    hash_file(handle, 0, size).map_err(|e| io_error("read", shown, e))
                },
            )
            .await;
        }
        each_path(paths, parallel, |path| async move {
            self.checksum(type_name, &path).await
        })
        .await
    }

    /// GitLab's verification checksum of each blob of `type_name`, in
    /// order: SHA-256 hex on local storage, the padded size on object
    /// storage (as [`BlobStore::geo_checksum`]).
    pub async fn geo_checksums(
        &self,
        type_name: &str,
        paths: &[BlobPath],
        parallel: usize,
    ) -> Vec<Result<String, StorageError>> {
        match self.kind() {
            StoreKind::Local => self
                .checksums(type_name, paths, parallel)
                .await
                .into_iter()
                .map(|r| r.map(|w| w.sha256))
                .collect(),
            StoreKind::ObjectStorage => {
                each_path(paths, parallel, |path| async move {
                    Ok(super::format_file_size_for_checksum(
                        self.size(type_name, &path).await?,
                    ))
                })
                .await
            }
        }
    }

    /// Places whole blobs of `type_name`: each is written to a new
    /// temporary object, then renamed to its path (replacing what was
    /// there), so its path never holds a partial blob. The caller has
    /// checked the bytes. Results in order; a blob is `Ok` only once it is
    /// on stable storage, so the caller may commit that it is there.
    ///
    /// On local disk the blobs placed are made durable together, after
    /// their renames (one `syncfs`, see `durable.rs`): a rename that a
    /// power cut keeps without its data leaves a partial file at a path
    /// whose registry still says it is being synced, and the next attempt
    /// replaces it (the secondary's registry, not the blob path, says what
    /// is there; `docs/decisions.md`).
    pub async fn place_small(
        &self,
        type_name: &str,
        blobs: Vec<(BlobPath, Bytes)>,
    ) -> Vec<Result<(), StorageError>> {
        let targets: Vec<Result<StorePath, StorageError>> = blobs
            .iter()
            .map(|(p, _)| blob_location(type_name, p))
            .collect();
        if let Some(fs) = self.local_fs() {
            // Where each blob lands, to make the batch durable below.
            let landing: Vec<Option<StorePath>> =
                targets.iter().map(|t| t.as_ref().ok().cloned()).collect();
            let jobs: Vec<
                Result<(std::path::PathBuf, std::path::PathBuf, String, Bytes), StorageError>,
            > = targets
                .into_iter()
                .zip(blobs)
                .map(|(target, (_, bytes))| {
                    let target = target?;
                    let temp = temp_location();
                    let to_file = |l: &StorePath| {
                        fs.path_to_filesystem(l)
                            .map_err(|e| StorageError::from_store("write", l, e))
                    };
                    Ok((
                        to_file(&temp)?,
                        to_file(&target)?,
                        target.to_string(),
                        bytes,
                    ))
                })
                .collect();
            let sync = self.local_sync();
            let mut placed = run_prepared(jobs, 2, move |(temp, target, shown, bytes)| {
                place_local(&*sync, temp, target, shown, bytes)
            })
            .await;
            let done: Vec<StorePath> = placed
                .iter()
                .zip(landing)
                .filter(|(result, _)| result.is_ok())
                .filter_map(|(_, target)| target)
                .collect();
            if let Err(error) = self.make_durable_all(&done, Durable::Both).await {
                // In place, but not known to be on stable storage: each
                // fails, and its registry row is retried.
                tracing::warn!(%error, blobs = done.len(), "cannot make a batch of blobs durable");
                let reason = error.to_string();
                for (result, target) in placed.iter_mut().filter(|r| r.is_ok()).zip(&done) {
                    *result = Err(StorageError::Io {
                        op: "sync",
                        location: target.to_string(),
                        source: std::io::Error::other(reason.clone()),
                    });
                }
            }
            return placed;
        }
        futures::stream::iter(targets.into_iter().zip(blobs))
            .map(|(target, (_, bytes))| async move {
                let target = target?;
                let temp = temp_location();
                self.object_store()
                    .put(&temp, PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| StorageError::from_store("write", &temp, e))?;
                let placed = self.rename_location(&temp, &target).await;
                if placed.is_err() {
                    let _ = self.delete_location(&temp).await;
                }
                placed
            })
            .buffered(8)
            .collect()
            .await
    }
}

/// A new temporary object's location (`.tmp/<uuid>`).
pub(super) fn temp_location() -> StorePath {
    StorePath::from_iter([TEMP_DIR.to_string(), uuid::Uuid::new_v4().to_string()])
}

/// Opens a local blob and reads it whole if it has at most `max` bytes
/// (blocking).
fn read_local(file: &std::path::Path, shown: &str, max: u64) -> Result<SmallRead, StorageError> {
    let (handle, size) = open_local(file, shown)?;
    if size > max {
        return Ok(SmallRead::TooLarge(size));
    }
    Ok(SmallRead::Whole(read_whole(handle, size, shown)?))
}

/// The files of blobs of `type_name` in the local store `fs`, each with
/// its location as shown in errors.
fn local_files(
    fs: &object_store::local::LocalFileSystem,
    type_name: &str,
    paths: &[BlobPath],
) -> Vec<Result<(std::path::PathBuf, String), StorageError>> {
    paths
        .iter()
        .map(|p| {
            let location = blob_location(type_name, p)?;
            let file = fs
                .path_to_filesystem(&location)
                .map_err(|e| StorageError::from_store("read", &location, e))?;
            Ok((file, location.to_string()))
        })
        .collect()
}

/// `each(path)` for every path, `parallel` at a time, results in order.
/// (Owned paths: a closure over borrowed ones is not general enough for a
/// `Send` future.)
async fn each_path<T, F, Fut>(paths: &[BlobPath], parallel: usize, each: F) -> Vec<T>
where
    F: Fn(BlobPath) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures::stream::iter(paths.to_vec())
        .map(each)
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// Writes `bytes` to the new file `temp`, then renames it to `target`,
/// creating `target`'s folders if needed (blocking). The temporary file
/// is removed if the rename fails.
fn place_local(
    sync: &dyn SyncFs,
    temp: &std::path::Path,
    target: &std::path::Path,
    shown: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    use std::io::Write;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .or_else(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(e);
                }
                // The temporary folder is made on first use.
                std::fs::create_dir_all(temp.parent().expect("a temporary file has a folder"))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(temp)
            })?;
        file.write_all(bytes)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(temp);
        return Err(io_error("write", shown, e));
    }
    sync.wrote(temp);
    let renamed = std::fs::rename(temp, target).or_else(|e| {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(target.parent().expect("a blob file has a folder"))?;
        std::fs::rename(temp, target)
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(temp);
        return Err(io_error("rename", shown, e));
    }
    sync.renamed(temp, target);
    Ok(())
}
