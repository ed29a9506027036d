//! Streaming SHA-256 of a stored object, fast on local disk.
//!
//! `object_store` hands a local file back as an open [`std::fs::File`]
//! ([`GetResultPayload::File`]) and, asked for a stream, reads it 8 KiB at a
//! time with one blocking-pool hop per chunk: several times slower than the
//! hash itself. Verification hashes every blob a site holds, so here a local
//! file is read on one blocking thread with large reads straight into the
//! hasher, and a remote object's stream is hashed as it arrives. Neither
//! holds the whole blob in memory.

use super::{StorageError, Written};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetResult, GetResultPayload};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};

/// Largest single read when hashing a local file. Large enough that the
/// per-read cost vanishes next to hashing, small enough to stay in L2.
const READ_BLOCK: usize = 256 * 1024;

/// Hashes the object `result` (fetched from `location`) to the end.
pub(super) async fn hash_get_result(
    location: &StorePath,
    result: GetResult,
) -> Result<Written, StorageError> {
    let range = result.range.clone();
    match result.payload {
        GetResultPayload::File(file, _path) => {
            let shown = location.to_string();
            tokio::task::spawn_blocking(move || {
                hash_file(file, range.start, range.end - range.start)
            })
            .await
            .map_err(|e| StorageError::Io {
                op: "hash",
                location: shown.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| StorageError::Io {
                op: "read",
                location: shown,
                source,
            })
        }
        GetResultPayload::Stream(mut stream) => {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::from_store("read", location, e))?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok(Written {
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        }
    }
}

/// Hashes the file behind `location` of the local store `fs`: open, stat,
/// read and hash in a single blocking task.
pub(super) async fn hash_local(
    fs: &LocalFileSystem,
    location: &StorePath,
) -> Result<Written, StorageError> {
    let file_path = local_file_path(fs, location)?;
    let shown = location.to_string();
    tokio::task::spawn_blocking(move || {
        let (file, size) = open_local(&file_path, &shown)?;
        hash_file(file, 0, size).map_err(|e| io_error("read", &shown, e))
    })
    .await
    .map_err(|e| io_error("hash", location.as_ref(), std::io::Error::other(e)))?
}

/// The file behind `location` of the local store `fs`, by `object_store`'s
/// own mapping, so it is the file `get` would open.
pub(super) fn local_file_path(
    fs: &LocalFileSystem,
    location: &StorePath,
) -> Result<std::path::PathBuf, StorageError> {
    fs.path_to_filesystem(location)
        .map_err(|e| StorageError::from_store("read", location, e))
}

/// Opens a local blob file and takes its size (blocking). A missing file
/// or a folder is [`StorageError::NotFound`]; `shown` names it in errors.
pub(super) fn open_local(
    path: &std::path::Path,
    shown: &str,
) -> Result<(std::fs::File, u64), StorageError> {
    let not_found = || StorageError::NotFound {
        location: shown.to_string(),
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(io_error("open", shown, e)),
    };
    let meta = file.metadata().map_err(|e| io_error("stat", shown, e))?;
    if meta.is_dir() {
        return Err(not_found());
    }
    Ok((file, meta.len()))
}

/// Reads exactly `size` bytes of an open local blob (blocking): an error if
/// the file shrank while read.
pub(super) fn read_whole(
    file: std::fs::File,
    size: u64,
    shown: &str,
) -> Result<bytes::Bytes, StorageError> {
    let mut content = Vec::with_capacity(size as usize);
    file.take(size)
        .read_to_end(&mut content)
        .map_err(|e| io_error("read", shown, e))?;
    if content.len() as u64 != size {
        let short = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the file shrank to {} of {size} bytes while read",
                content.len()
            ),
        );
        return Err(io_error("read", shown, short));
    }
    Ok(bytes::Bytes::from(content))
}

/// A local I/O error of `op` on `location`.
pub(super) fn io_error(op: &'static str, location: &str, source: std::io::Error) -> StorageError {
    StorageError::Io {
        op,
        location: location.to_string(),
        source,
    }
}

/// Reads `len` bytes of `file` from `start` and hashes them (blocking).
///
/// Stops early at end of file: the size returned is what was hashed.
pub(super) fn hash_file(mut file: std::fs::File, start: u64, len: u64) -> std::io::Result<Written> {
    if start != 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let block = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .clamp(1, READ_BLOCK);
    let mut buffer = vec![0u8; block];
    let mut hasher = Sha256::new();
    let mut remaining = len;
    let mut size = 0u64;
    while remaining > 0 {
        let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(block);
        let read = match file.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..read]);
        size += read as u64;
        remaining -= read as u64;
    }
    Ok(Written {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}
