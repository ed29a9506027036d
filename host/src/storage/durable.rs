//! Durability on local disk: a blob is on stable storage before any
//! database commit points at it.
//!
//! `object_store`'s local store writes through the page cache and renames
//! without syncing, so after a power cut a file renamed into place can come
//! back empty, or the rename can be undone, behind a record that was
//! committed. The host therefore syncs, through [`SyncFs`]:
//!
//! - a temporary object's data once its write is complete
//!   ([`TempBlob::finish`](super::TempBlob::finish)), before it can be
//!   renamed anywhere;
//! - after a rename, copy or put into place, the folder holding the target
//!   and every folder above it up to the storage root (a rename may have
//!   created some of them, and a new folder is only durable once its own
//!   parent is synced).
//!
//! Only then does the write return, and only then do callers commit
//! (`primary::ingest`, `secondary::sync`). A group of writes (a secondary's
//! batch of small blobs, the primary's group commit) is made durable by one
//! [`SyncFs::sync_filesystem`] (`syncfs`) instead, unless
//! `storage.sync_method = "fsync"` or the system has no such call; its
//! cost and its caveat are in `docs/decisions.md`. `object_store`'s `with_fsync`
//! makes the same calls inside the crate; the host makes them itself so
//! that the order of writes, syncs, renames and commits can be recorded and
//! checked (the storage tests wrap [`SyncFs`] and the object store).
//!
//! On object storage a write is durable once the service acknowledges it
//! (S3's contract), so there is nothing to sync; `docs/decisions.md` states
//! the guarantee of each backend.

use std::path::{Path, PathBuf};

/// Makes files and folders durable. [`OsSync`] is the real one; tests wrap
/// it to record the order of syncs.
pub trait SyncFs: Send + Sync + std::fmt::Debug + 'static {
    /// Flushes a file's data to stable storage, with the metadata reading
    /// it back needs (`fdatasync`).
    fn sync_file(&self, path: &Path) -> std::io::Result<()>;
    /// Flushes a folder's entries to stable storage (`fsync` on the folder).
    fn sync_dir(&self, path: &Path) -> std::io::Result<()>;

    /// Flushes everything written to the file system holding `root`, data
    /// and folders alike (`syncfs`), for a group of writes: one flush of the
    /// device instead of one per file and folder. `Unsupported` where the
    /// system has no such call; the caller then syncs each path.
    fn sync_filesystem(&self, _root: &Path) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// A fast path wrote the new file `file` itself, not through the object
    /// store (`storage/batch.rs`). Only a recording needs to know.
    fn wrote(&self, _file: &Path) {}

    /// A fast path renamed `from` to `to` itself (see [`SyncFs::wrote`]).
    fn renamed(&self, _from: &Path, _to: &Path) {}
}

/// `fsync(2)` through [`std::fs::File::sync_all`].
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSync;

impl SyncFs for OsSync {
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        // `fdatasync`: the data and what reading it back needs (the size),
        // not the times.
        std::fs::File::open(path)?.sync_data()
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        // Opening a folder read-only and syncing it is how POSIX makes its
        // entries durable; Linux and the BSDs allow it.
        std::fs::File::open(path)?.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn sync_filesystem(&self, root: &Path) -> std::io::Result<()> {
        // Since Linux 5.8 `syncfs` reports a write-back error of the file
        // system that happened since the descriptor was opened, as `fsync`
        // does for a file.
        let root = std::fs::File::open(root)?;
        rustix::fs::syncfs(&root).map_err(std::io::Error::from)
    }
}

/// What of a written path to make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durable {
    /// The file's content (a write that is not in place yet).
    Data,
    /// The folder entries from the file's folder up to the root (a rename
    /// or a hard link of content that is durable already).
    Entries,
    /// Both (a write in place).
    Both,
}

/// Syncs `file`'s data and/or every folder from the one holding it up to
/// `root`, inclusive (blocking).
pub(super) fn sync_path(
    sync: &dyn SyncFs,
    root: &Path,
    file: &Path,
    what: Durable,
) -> std::io::Result<()> {
    if what != Durable::Entries {
        sync.sync_file(file)?;
    }
    if what == Durable::Data {
        return Ok(());
    }
    for dir in file.ancestors().skip(1) {
        if !dir.starts_with(root) {
            break;
        }
        sync.sync_dir(dir)?;
        if dir == root {
            break;
        }
    }
    Ok(())
}

/// The syncs that make every one of `files` durable as [`sync_path`]
/// would, each made once: the files' data (unless `what` is
/// [`Durable::Entries`]) and, unless it is [`Durable::Data`], every folder
/// from theirs up to `root`. A group of writes (`primary::group`) syncs a
/// shared folder once instead of once per file.
pub(super) fn sync_plan(
    root: &Path,
    files: &[PathBuf],
    what: Durable,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let data = if what == Durable::Entries {
        Vec::new()
    } else {
        files.to_vec()
    };
    let mut folders = std::collections::BTreeSet::new();
    if what != Durable::Data {
        for file in files {
            for dir in file.ancestors().skip(1) {
                if !dir.starts_with(root) || !folders.insert(dir.to_path_buf()) {
                    break;
                }
                if dir == root {
                    break;
                }
            }
        }
    }
    (data, folders.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<String>>);

    impl Log {
        fn note(&self, what: &str, path: &Path) -> std::io::Result<()> {
            let line = format!("{what} {}", path.display());
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    impl SyncFs for Log {
        fn sync_file(&self, path: &Path) -> std::io::Result<()> {
            self.note("file", path)
        }
        fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
            self.note("dir", path)
        }
    }

    #[test]
    fn syncs_the_file_then_every_folder_up_to_the_root() {
        let log = Log::default();
        sync_path(
            &log,
            Path::new("/r"),
            Path::new("/r/t/a/b/f"),
            Durable::Both,
        )
        .unwrap();
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "file /r/t/a/b/f",
                "dir /r/t/a/b",
                "dir /r/t/a",
                "dir /r/t",
                "dir /r"
            ]
        );
        let log = Log::default();
        sync_path(&log, Path::new("/r"), Path::new("/r/f"), Durable::Entries).unwrap();
        assert_eq!(*log.0.lock().unwrap(), ["dir /r"]);
        let log = Log::default();
        sync_path(&log, Path::new("/r"), Path::new("/r/f"), Durable::Data).unwrap();
        assert_eq!(*log.0.lock().unwrap(), ["file /r/f"]);
    }

    #[test]
    fn a_plan_syncs_each_shared_folder_once() {
        let files = [PathBuf::from("/r/t/a/f"), PathBuf::from("/r/t/b/g")];
        let (data, folders) = sync_plan(Path::new("/r"), &files, Durable::Both);
        assert_eq!(data, files);
        assert_eq!(
            folders,
            ["/r", "/r/t", "/r/t/a", "/r/t/b"].map(PathBuf::from)
        );
        let (data, folders) = sync_plan(Path::new("/r"), &files, Durable::Entries);
        assert!(data.is_empty());
        assert_eq!(folders.len(), 4);
        let (data, folders) = sync_plan(Path::new("/r"), &files, Durable::Data);
        assert_eq!((data.len(), folders.len()), (2, 0));
    }

    #[test]
    fn the_real_sync_works_on_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/f");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"x").unwrap();
        sync_path(&OsSync, dir.path(), &file, Durable::Both).unwrap();
        assert!(OsSync.sync_file(&dir.path().join("missing")).is_err());
        let whole = OsSync.sync_filesystem(dir.path());
        if cfg!(target_os = "linux") {
            whole.unwrap();
        } else {
            assert_eq!(whole.unwrap_err().kind(), std::io::ErrorKind::Unsupported);
        }
    }
}
