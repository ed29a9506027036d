//! Blob storage: where a site keeps the files it replicates, over
//! [`object_store`].
//!
//! Each site stores every blob under one root. A type's blobs live at
//! `<root>/<replicable_name>/<blob path>`, the blob path being whatever the
//! type's plugin computed and the host checked ([`BlobPath`]). Temporary
//! objects (downloads in progress) live at `<root>/.tmp/<uuid>`: the same
//! store, so moving a finished download into place is a rename, which on a
//! local disk is atomic.
//!
//! Why a wrapper and not `object_store` directly:
//!
//! - **Readers never see a partial blob.** Every write goes to a temporary
//!   object first ([`TempBlob`]) or is a single atomic put
//!   ([`BlobStore::put_bytes`]); only a finished, hashed object is renamed to
//!   its final path ([`FinishedTemp::promote`]). A crash leaves at most a
//!   leftover under `.tmp/`, which [`BlobStore::cleanup_temp`] removes.
//! - **Checksums are streamed and fast.** Verification hashes every blob a
//!   site holds, so [`BlobStore::checksum`] never holds a blob in memory and,
//!   for a file on local disk, reads it with large blocking reads instead of
//!   `object_store`'s default 8 KiB chunks (see `hash.rs`).
//! - **A missing blob is its own error.** [`StorageError::NotFound`] lets the
//!   primary answer GitLab's `FILE_NOT_FOUND` and the secondary tell "the
//!   primary lost the file" from "the disk failed".
//!
//! The backend is a `dyn ObjectStore`: a local directory
//! ([`BlobStore::local`]) or an S3-compatible bucket ([`BlobStore::s3`],
//! `s3.rs`), chosen by the site's `[storage]` section ([`BlobStore::open`]).
//! On S3 a download goes to a temporary key and is promoted by a
//! server-side copy, so the final key never holds a partial object. The kind matters for
//! verification: GitLab checksums a local file with SHA-256 but an object in
//! object storage by its size ([`format_file_size_for_checksum`],
//! [`BlobStore::geo_checksum`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), geohost::storage::StorageError> {
//! use geohost::plugin::BlobPath;
//! use geohost::storage::BlobStore;
//!
//! let store = BlobStore::local(std::path::Path::new("/var/lib/geohost/blobs"))?;
//! let path = BlobPath::parse("6b/86/6b86b273/index.yaml").unwrap();
//! let mut temp = store.begin_temp();
//! temp.write(bytes::Bytes::from_static(b"apiVersion: v1\n")).await?;
//! let finished = temp.finish().await?;
//! let written = finished.promote("packages_helm_metadata_cache", &path).await?;
//! assert_eq!(written.sha256, store.checksum("packages_helm_metadata_cache", &path).await?.sha256);
//! # Ok(()) }
//! ```

mod closed;
pub mod durable;
mod hash;
mod quarantine;
#[cfg(test)]
mod recording;
mod s3;
mod s3_staging;
mod store;
pub(crate) mod sweeper;
mod temp;
#[doc(hidden)]
pub mod testing;
mod undo;

pub use quarantine::{QUARANTINE_DIR, Restored};
pub use s3::S3Settings;
pub use store::BlobStore;
pub use temp::{FinishedTemp, TempBlob};
pub use undo::{JournalEntry, UNDO_DIR};

use crate::plugin::BlobPath;
use chrono::{DateTime, Utc};
use object_store::path::Path as StorePath;

/// Name of the folder, under the storage root, that holds temporary objects.
/// No replicable name can collide with it: those start with a letter.
pub const TEMP_DIR: &str = ".tmp";

/// A blob as stored: its size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// A stored blob's metadata, without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// When the blob was last written.
    pub last_modified: DateTime<Utc>,
}

/// What kind of storage backs a [`BlobStore`]; it decides GitLab's
/// verification checksum (GitLab's
/// `ee/app/models/concerns/geo/blob_replicator_strategy.rb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Files on a local (or locally mounted) disk: checksum is SHA-256.
    Local,
    /// An object storage service such as S3: checksum is the padded size.
    ObjectStorage,
}

/// Why a storage operation failed.
///
/// Messages name the blob (`<replicable_name>/<blob path>`), never file
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The blob (or temporary object) does not exist. The primary answers
    /// this with GitLab's `FILE_NOT_FOUND`.
    #[error("blob {location} not found")]
    NotFound {
        /// Where the blob was looked for, relative to the storage root.
        location: String,
    },
    /// A replicable name that cannot be a storage folder.
    #[error(
        "replicable name {0:?} cannot name a storage folder: it must be lowercase ASCII letters, digits and `_`, starting with a letter, at most 63 bytes"
    )]
    InvalidTypeName(String),
    /// A blob path the backend refuses even though [`BlobPath`] accepted it
    /// (for example a local file name ending in `#<digits>`, which
    /// `object_store` reserves for its staging files).
    #[error("blob path {location} cannot be stored: {reason}")]
    InvalidPath {
        /// The refused location, relative to the storage root.
        location: String,
        /// What the backend said.
        reason: String,
    },
    /// The `[storage]` settings cannot describe a store.
    #[error("{0}")]
    Settings(String),
    /// The local storage root could not be created or opened.
    #[error("cannot use {} as blob storage root: {source}", path.display())]
    Root {
        /// The configured root.
        path: std::path::PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// Any other backend failure, with the operation and location.
    #[error("cannot {op} {location}: {source}")]
    Backend {
        /// What was attempted (`read`, `write`, `rename`, ...).
        op: &'static str,
        /// The location, relative to the storage root.
        location: String,
        /// What `object_store` reported.
        #[source]
        source: object_store::Error,
    },
    /// An I/O failure outside `object_store` (reading a local file while
    /// hashing or serving it, scanning the temporary folder).
    #[error("cannot {op} {location}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The location, relative to the storage root.
        location: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Maps an `object_store` error for `op` on `location`, keeping "not
    /// found" and "invalid path" distinct.
    pub(crate) fn from_store(
        op: &'static str,
        location: impl std::fmt::Display,
        source: object_store::Error,
    ) -> StorageError {
        let location = location.to_string();
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { location },
            object_store::Error::InvalidPath { source } => StorageError::InvalidPath {
                location,
                reason: source.to_string(),
            },
            source => StorageError::Backend {
                op,
                location,
                source,
            },
        }
    }
}

/// GitLab's checksum of a blob in object storage: its size in decimal, with a
/// leading `0` when the number of digits is odd, so that the string is valid
/// hex and fits the `verification_checksum` bytea column (GitLab's
/// `format_file_size_for_checksum`, `ee/app/models/concerns/geo/blob_replicator_strategy.rb`).
///
/// ```
/// use geohost::storage::format_file_size_for_checksum;
/// assert_eq!(format_file_size_for_checksum(123), "0123");
/// assert_eq!(format_file_size_for_checksum(1024), "1024");
/// ```
pub fn format_file_size_for_checksum(size: u64) -> String {
    let digits = size.to_string();
    if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    }
}

/// Checks a replicable name used as a storage folder: the same rule as the
/// plugin identity's SQL identifiers, so it can never be `.tmp`, empty, or
/// contain a separator.
fn check_type_name(type_name: &str) -> Result<(), StorageError> {
    let ok = !type_name.is_empty()
        && type_name.len() <= 63
        && type_name.starts_with(|c: char| c.is_ascii_lowercase())
        && type_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidTypeName(
            type_name.chars().take(80).collect(),
        ))
    }
}

/// The store location of `path` for type `type_name`:
/// `<type_name>/<blob path>`.
fn blob_location(type_name: &str, path: &BlobPath) -> Result<StorePath, StorageError> {
    check_type_name(type_name)?;
    let joined = format!("{type_name}/{}", path.as_str());
    // `BlobPath` already refuses everything `Path::parse` refuses (empty,
    // `.`/`..` segments, control characters), so this keeps the blob path
    // byte for byte; an error would mean the two rules drifted apart.
    let location = StorePath::parse(&joined).map_err(|e| StorageError::InvalidPath {
        location: joined.clone(),
        reason: e.to_string(),
    })?;
    // The local backend keeps its staging files next to the target as
    // `<name>#<n>` and hides such names; refuse them on every backend so
    // that stores stay interchangeable.
    if let Some((_, suffix)) = path
        .as_str()
        .rsplit('/')
        .next()
        .and_then(|f| f.rsplit_once('#'))
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(StorageError::InvalidPath {
            location: joined,
            reason: "a file name ending in `#<digits>` is reserved for staging files".into(),
        });
    }
    Ok(location)
}

/// The store location of the folder holding all of `type_name`'s blobs.
fn type_prefix(type_name: &str) -> Result<StorePath, StorageError> {
    check_type_name(type_name)?;
    Ok(StorePath::from(type_name))
}

#[cfg(test)]
mod tests;
