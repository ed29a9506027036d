//! Blob storage in an S3-compatible bucket (`[storage] kind = "s3"`),
//! through `object_store`'s `AmazonS3`.
//!
//! Layout: the same as on disk, under the configured key prefix:
//! `<prefix>/<replicable name>/<blob path>` for blobs and
//! `<prefix>/.tmp/<uuid>` for downloads in progress.
//!
//! **No partial object is ever visible at a blob's key.** A download is
//! written to its temporary key (one `PUT`, or a multipart upload in 8 MiB
//! parts for a larger blob, which S3 makes visible only when completed), and
//! promoted by a server-side `CopyObject` to the final key, then the
//! temporary key is deleted. A copy is atomic on S3: readers of the final
//! key see the old object or the new one. A crash between the copy and the
//! delete leaves only a temporary object, removed by
//! [`BlobStore::cleanup_temp`] an hour later; an upload cut short leaves
//! an incomplete multipart upload, aborted by the same sweep
//! (`s3_staging.rs`). `CopyObject` is limited to
//! 5 GiB objects by AWS, which is far above any package-metadata blob.
//!
//! Checksums follow GitLab: an object-stored blob's verification checksum is
//! its padded size ([`StoreKind::ObjectStorage`]); a secondary comparing
//! with a primary on local disk still hashes the object (see
//! `secondary::verify`).

use super::{BlobStore, StorageError, StoreKind};
use crate::config::StorageSection;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use std::sync::Arc;

/// The settings of an S3 store, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Settings {
    /// The S3 settings of a `[storage]` section; credentials missing from
    /// it come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn from_section(section: &StorageSection) -> Result<S3Settings, StorageError> {
        let invalid = |m: &str| StorageError::Settings(m.to_string());
        let bucket = section
            .bucket
            .clone()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| invalid("[storage] kind = \"s3\" needs a bucket"))?;
        if section.path.is_some() {
            return Err(invalid(
                "[storage] path is for kind = \"local\"; an S3 store takes bucket and prefix",
            ));
        }
        if section.sync_method.is_some() {
            return Err(invalid(
                "[storage] sync_method is for kind = \"local\"; S3 makes a write durable when it acknowledges it",
            ));
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access_key_id = section
            .access_key_id
            .clone()
            .or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret_access_key = section
            .secret_access_key
            .clone()
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(invalid(
                "[storage] needs both access_key_id and secret_access_key, or neither",
            ));
        }
        if let Some(endpoint) = &section.endpoint
            && endpoint.starts_with("http://")
            && !section.allow_http
        {
            return Err(invalid(
                "[storage] endpoint is plain http://: set allow_http = true to use it",
            ));
        }
        Ok(S3Settings {
            bucket,
            endpoint: section.endpoint.clone(),
            region: section.region.clone().unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key,
            allow_http: section.allow_http,
            prefix: section
                .prefix
                .as_deref()
                .unwrap_or("")
                .trim_matches('/')
                .to_string(),
        })
    }
}

impl BlobStore {
    /// Blob storage in an S3-compatible bucket, under `settings.prefix`.
    /// Nothing is contacted here: a wrong endpoint or credentials show at
    /// the first operation.
    pub fn s3(settings: &S3Settings) -> Result<BlobStore, StorageError> {
        // Built from the settings alone (not `from_env`): the machine's
        // `AWS_*` variables (a CA bundle, a profile) must not change which
        // service or credentials a site uses.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        if let (Some(key), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| {
            StorageError::Settings(format!("cannot use bucket {}: {e}", settings.bucket))
        })?;
        let description = format!(
            "s3://{}/{}{}",
            settings.bucket,
            settings.prefix,
            settings
                .endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        );
        let staging = super::s3_staging::S3Staging::new(s3.clone(), settings);
        let store: Arc<dyn object_store::ObjectStore> = if settings.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, settings.prefix.as_str()))
        };
        Ok(
            BlobStore::from_object_store(store, StoreKind::ObjectStorage, description)
                .with_staging(staging),
        )
    }

    /// The blob store of a `[storage]` section, not opened: every operation
    /// fails, saying so (a command that touches no blob). Its kind is the
    /// section's, so `file_store` reads right.
    pub fn closed(section: &StorageSection) -> BlobStore {
        use crate::config::StorageKind;
        let kind = match section.kind {
            StorageKind::Local => StoreKind::Local,
            StorageKind::S3 => StoreKind::ObjectStorage,
        };
        BlobStore::from_object_store(
            Arc::new(super::closed::Closed),
            kind,
            "closed (not opened by this command)",
        )
    }

    /// The blob store a `[storage]` section describes; a local store
    /// defaults to `default_root`.
    pub fn open(
        section: &StorageSection,
        default_root: &std::path::Path,
    ) -> Result<BlobStore, StorageError> {
        use crate::config::StorageKind;
        match section.kind {
            StorageKind::Local => {
                let stray = [
                    ("bucket", section.bucket.is_some()),
                    ("endpoint", section.endpoint.is_some()),
                    ("prefix", section.prefix.is_some()),
                ];
                if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(StorageError::Settings(format!(
                        "[storage] {key} is for kind = \"s3\"; this store is local"
                    )));
                }
                BlobStore::local(section.path.as_deref().unwrap_or(default_root))
                    .map(|store| store.with_sync_method(section.sync_method.unwrap_or_default()))
            }
            StorageKind::S3 => BlobStore::s3(&S3Settings::from_section(section)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageKind;

    fn section() -> StorageSection {
        StorageSection {
            kind: StorageKind::S3,
            bucket: Some("blobs".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            prefix: Some("/site-a/".into()),
            ..StorageSection::default()
        }
    }

    #[test]
    fn settings_are_checked() {
        let ok = S3Settings::from_section(&section()).unwrap();
        assert_eq!(ok.prefix, "site-a");
        assert_eq!(ok.region, "us-east-1");
        let store = BlobStore::s3(&ok).unwrap();
        assert_eq!(store.kind(), StoreKind::ObjectStorage);
        assert_eq!(store.to_string(), "s3://blobs/site-a at http://127.0.0.1:9");

        let cases: [(fn(&mut StorageSection), &str); 5] = [
            (|s| s.bucket = None, "needs a bucket"),
            (|s| s.allow_http = false, "allow_http"),
            (|s| s.secret_access_key = None, "both access_key_id"),
            (|s| s.path = Some("/x".into()), "path is for kind"),
            (
                |s| s.sync_method = Some(crate::config::SyncMethod::Fsync),
                "sync_method is for kind",
            ),
        ];
        for (change, message) in cases {
            let mut s = section();
            change(&mut s);
            if s.secret_access_key.is_none() && std::env::var("AWS_SECRET_ACCESS_KEY").is_ok() {
                continue;
            }
            let error = S3Settings::from_section(&s).unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
        }
    }

    #[test]
    fn a_local_store_refuses_s3_keys() {
        let dir = tempfile::tempdir().unwrap();
        let section = StorageSection {
            bucket: Some("b".into()),
            ..StorageSection::default()
        };
        let error = BlobStore::open(&section, dir.path()).unwrap_err();
        assert!(error.to_string().contains("bucket is for kind"), "{error}");
        let store = BlobStore::open(&StorageSection::default(), dir.path()).unwrap();
        assert_eq!(store.kind(), StoreKind::Local);
    }
}
