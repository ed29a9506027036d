//! GitLab's Helm metadata cache as a Geohost replicable type.
//!
//! A Helm metadata cache is the cached `index.yaml` of one channel of a
//! project's Helm repository (`Packages::Helm::MetadataCache`). Its blob lives
//! at `<object_storage_key>/index.yaml`, where `object_storage_key` is
//! `HashedPath('packages', 'helm', 'metadata_caches', sha256(channel),
//! root_hash: project_id)`, set once when the record is created.

use geohost_plugin_sdk::schema::{column, file_store, text, timestamps, with_default};
use geohost_plugin_sdk::{
    hashed_path, scope, sha256_hex, Batch, ColumnSource, ColumnType, Decisions, Derived, Guest,
    Identity, ModelTable, Paths, SyncSettings, Value,
};

/// The uploader's file name.
pub const FILE_NAME: &str = "index.yaml";

struct HelmMetadataCache;

impl Guest for HelmMetadataCache {
    fn describe() -> Identity {
        let [created_at, updated_at] = timestamps();
        Identity {
            name: "packages_helm_metadata_cache".into(),
            title: "Helm Metadata Cache".into(),
            title_plural: "Helm Metadata Caches".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            mutable: true,
            uploader_class: "Packages::Helm::MetadataCacheUploader".into(),
            table: ModelTable {
                name: "packages_helm_metadata_caches".into(),
                // GitLab's column order (db/docs/packages_helm_metadata_caches.yml).
                columns: vec![
                    created_at,
                    updated_at,
                    column(
                        "last_downloaded_at",
                        ColumnType::Timestamp,
                        true,
                        ColumnSource::Writer,
                    ),
                    column(
                        "project_id",
                        ColumnType::Bigint,
                        false,
                        ColumnSource::Writer,
                    ),
                    column("size", ColumnType::Integer, false, ColumnSource::BlobSize),
                    with_default(
                        column("status", ColumnType::Smallint, false, ColumnSource::Writer),
                        Value::Int(0),
                    ),
                    file_store(),
                    text("channel", 255, ColumnSource::Writer),
                    text("file", 255, ColumnSource::Derived),
                    text("object_storage_key", 255, ColumnSource::Derived),
                ],
                natural_key: vec!["project_id".into(), "channel".into()],
                unique_keys: vec![vec!["object_storage_key".into()]],
            },
            path_columns: vec!["object_storage_key".into(), "file".into()],
            scope_columns: vec!["project_id".into(), "file_store".into()],
        }
    }

    /// Records carry the writer columns: last_downloaded_at, project_id,
    /// status, channel. Answers file, object_storage_key.
    fn derive(records: Batch) -> Derived {
        let project_ids = records.ints(1, "project_id");
        let channels = records.texts(3, "channel");
        records.derived(|row| {
            let project_id = *project_ids.get(row)?;
            let channel = channels.get(row)?;
            check_channel(channel)?;
            Ok(vec![
                Value::Text(FILE_NAME.into()),
                Value::Text(object_storage_key(project_id, channel)),
            ])
        })
    }

    /// Records carry object_storage_key, file.
    fn blob_paths(records: Batch) -> Paths {
        let keys = records.texts(0, "object_storage_key");
        let files = records.texts(1, "file");
        records.paths(|row| Ok([keys.get(row)?.as_str(), files.get(row)?].join("/")))
    }

    /// Records carry project_id, file_store.
    fn in_scope(settings: SyncSettings, records: Batch) -> Decisions {
        scope::project_scope(&settings, &records, 0, Some(1))
    }
}

/// `HashedPath('packages', 'helm', 'metadata_caches', sha256(channel), root_hash: project_id)`.
pub fn object_storage_key(project_id: i64, channel: &str) -> String {
    let channel_hash = sha256_hex(channel.as_bytes());
    hashed_path(
        &project_id.to_string(),
        &["packages", "helm", "metadata_caches", &channel_hash],
    )
}

/// GitLab's `helm_channel_regex`, `\A([a-zA-Z0-9](\.|-|_)?){1,255}(?<!\.|-|_)\z`:
/// letters and digits, each optionally followed by one `.`, `-` or `_`, not
/// ending with a separator; at most 255 characters (the column's bound).
pub fn check_channel(channel: &str) -> Result<(), String> {
    let invalid = |why: &str| {
        Err(format!(
            "invalid Helm channel {channel:?}: {why} (a channel is letters and digits, \
             separated by single '.', '-' or '_', at most 255 characters)"
        ))
    };
    if channel.is_empty() {
        return invalid("it is empty");
    }
    if channel.chars().count() > 255 {
        return invalid("it is longer than 255 characters");
    }
    let mut previous_separator = true; // the first character must be alphanumeric
    for c in channel.chars() {
        let separator = matches!(c, '.' | '-' | '_');
        if !separator && !c.is_ascii_alphanumeric() {
            return invalid(&format!("{c:?} is not allowed"));
        }
        if separator && previous_separator {
            return invalid("a separator must follow a letter or digit");
        }
        previous_separator = separator;
    }
    if previous_separator {
        return invalid("it ends with a separator");
    }
    Ok(())
}

geohost_plugin_sdk::export!(HelmMetadataCache with_types_in geohost_plugin_sdk::bindings);
geohost_plugin_sdk::test_vectors!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rule() {
        for good in ["stable", "a", "v1.2-rc_3", "A9"] {
            assert!(check_channel(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a b",
            "über",
            "a/b",
            &"a".repeat(256),
        ] {
            assert!(check_channel(bad).is_err(), "{bad}");
        }
    }
}
