//! GitLab's npm metadata cache as a Geohost replicable type.
//!
//! An npm metadata cache is the cached package metadata document (the JSON
//! an npm client fetches for `GET /<package_name>`) of one package of a
//! project (`Packages::Npm::MetadataCache`). Its blob lives at
//! `<object_storage_key>/metadata.json` (`Packages::Npm::MetadataCacheUploader`:
//! `store_dir` is the key, the file name is fixed), where
//! `object_storage_key` is `HashedPath('packages', 'metadata_caches', 'npm',
//! sha256(package_name), root_hash: project_id)`, set once when the record
//! is created.
//!
//! Written only with `geohost-plugin-sdk`: the model table comes from
//! [`schema`](geohost_plugin_sdk::schema), the key from
//! [`hashed_path`](geohost_plugin_sdk::hashed_path), the selective-sync rule
//! from [`scope`](geohost_plugin_sdk::scope).

use geohost_plugin_sdk::schema::{column, file_store, text, timestamps, with_default};
use geohost_plugin_sdk::{
    hashed_path, scope, sha256_hex, Batch, ColumnSource, ColumnType, Decisions, Derived, Guest,
    Identity, ModelTable, Paths, RowResult, SyncSettings, Value,
};

/// The uploader's file name (`Packages::Npm::MetadataCacheUploader::FILENAME`).
pub const FILE_NAME: &str = "metadata.json";

/// Positions of the writer columns in a `derive` batch (table order).
mod writer {
    pub const PROJECT_ID: usize = 1;
    pub const PACKAGE_NAME: usize = 2;
}

struct NpmMetadataCache;

impl Guest for NpmMetadataCache {
    fn describe() -> Identity {
        let [created_at, updated_at] = timestamps();
        Identity {
            name: "packages_npm_metadata_cache".into(),
            title: "npm Metadata Cache".into(),
            title_plural: "npm Metadata Caches".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // The cache is rewritten whenever a package version is published or removed.
            mutable: true,
            uploader_class: "Packages::Npm::MetadataCacheUploader".into(),
            table: ModelTable {
                name: "packages_npm_metadata_caches".into(),
                // GitLab's column order (db/structure.sql); `status` was added last.
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
                    file_store(),
                    column("size", ColumnType::Integer, false, ColumnSource::BlobSize),
                    text("file", 255, ColumnSource::Derived),
                    // GitLab puts no length limit on package_name.
                    column(
                        "package_name",
                        ColumnType::Text,
                        false,
                        ColumnSource::Writer,
                    ),
                    text("object_storage_key", 255, ColumnSource::Derived),
                    with_default(
                        column("status", ColumnType::Smallint, false, ColumnSource::Writer),
                        Value::Int(0),
                    ),
                ],
                // index_npm_metadata_caches_on_package_name_project_id_unique
                natural_key: vec!["package_name".into(), "project_id".into()],
                // index_packages_npm_metadata_caches_on_object_storage_key
                unique_keys: vec![vec!["object_storage_key".into()]],
            },
            path_columns: vec!["object_storage_key".into(), "file".into()],
            scope_columns: vec!["project_id".into(), "file_store".into()],
        }
    }

    /// Records carry the writer columns: last_downloaded_at, project_id,
    /// package_name, status.
    fn derive(records: Batch) -> Derived {
        let project_ids = records.ints(writer::PROJECT_ID, "project_id");
        let names = records.texts(writer::PACKAGE_NAME, "package_name");
        records.derived(|row| derive_one(*project_ids.get(row)?, names.get(row)?))
    }

    /// Records carry object_storage_key, file.
    fn blob_paths(records: Batch) -> Paths {
        let keys = records.texts(0, "object_storage_key");
        let files = records.texts(1, "file");
        records.paths(|row| Ok([keys.get(row)?.as_str(), files.get(row)?].join("/")))
    }

    /// Records carry project_id, file_store: GitLab's project-scoped rule.
    fn in_scope(settings: SyncSettings, records: Batch) -> Decisions {
        scope::project_scope(&settings, &records, 0, Some(1))
    }
}

/// The derived columns (file, object_storage_key) of one new record.
fn derive_one(project_id: i64, package_name: &str) -> RowResult<Vec<Value>> {
    check_package_name(package_name)?;
    Ok(vec![
        Value::Text(FILE_NAME.into()),
        Value::Text(object_storage_key(project_id, package_name)),
    ])
}

/// `HashedPath('packages', 'metadata_caches', 'npm', sha256(package_name), root_hash: project_id)`.
pub fn object_storage_key(project_id: i64, package_name: &str) -> String {
    let name_hash = sha256_hex(package_name.as_bytes());
    hashed_path(
        &project_id.to_string(),
        &["packages", "metadata_caches", "npm", &name_hash],
    )
}

/// GitLab's two rules for an npm package name, together:
/// `npm_package_name_regex`, `\A(?:@(NAMESPACE_FORMAT_REGEX)/)?[-+._a-zA-Z0-9]+\z`,
/// and `package_name_regex`, whose last segment admits no `+`. So: an
/// optional `@scope/`, where the scope is a GitLab namespace path (letters,
/// digits, `_`, `-`, `.`; not starting with `-`, not ending with `.`,
/// `.git` or `.atom`; at most 256 characters), then a name of letters,
/// digits, `-`, `.` and `_`.
pub fn check_package_name(name: &str) -> Result<(), String> {
    let invalid = |why: &str| {
        Err(format!(
            "invalid npm package name {name:?}: {why} (a name is an optional @scope/ and \
             letters, digits, '-', '.' or '_')"
        ))
    };
    let bare = match name.strip_prefix('@') {
        Some(scoped) => {
            let Some((scope, bare)) = scoped.split_once('/') else {
                return invalid("a scoped name needs '/' after the scope");
            };
            if let Err(why) = check_scope(scope) {
                return invalid(&why);
            }
            bare
        }
        None => name,
    };
    if bare.is_empty() {
        return invalid("the name is empty");
    }
    if let Some(c) = bare
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return invalid(&format!("{c:?} is not allowed in the name"));
    }
    Ok(())
}

/// GitLab's `NAMESPACE_FORMAT_REGEX`: one of `[a-zA-Z0-9_]`, or a start of
/// `[a-zA-Z0-9_.]`, up to 254 of `[a-zA-Z0-9_.-]` and an end of
/// `[a-zA-Z0-9_-]`; never ending with `.git` or `.atom`.
fn check_scope(scope: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let chars: Vec<char> = scope.chars().collect();
    let ok = match chars.as_slice() {
        [] => return Err("the scope is empty".into()),
        [only] => word(*only),
        [first, middle @ .., last] => {
            chars.len() <= 256
                && (word(*first) || *first == '.')
                && middle.iter().all(|&c| word(c) || c == '.' || c == '-')
                && (word(*last) || *last == '-')
        }
    };
    if !ok {
        return Err(format!(
            "scope {scope:?} is not a namespace path (letters, digits, '_', '-', '.'; \
             not starting with '-', not ending with '.'; at most 256 characters)"
        ));
    }
    if scope.ends_with(".git") || scope.ends_with(".atom") {
        return Err(format!("scope {scope:?} ends with .git or .atom"));
    }
    Ok(())
}

geohost_plugin_sdk::export!(NpmMetadataCache with_types_in geohost_plugin_sdk::bindings);
geohost_plugin_sdk::test_vectors!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_rule() {
        for good in [
            "left-pad",
            "@babel/core",
            "@my_group.sub/pkg.js",
            "a",
            "@a/b",
            "lodash.merge",
            "UPPER_case-1.2",
        ] {
            assert!(check_package_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "@",
            "@scope",
            "@scope/",
            "@/pkg",
            "@-scope/pkg",
            "@scope./pkg",
            "@scope.git/pkg",
            "@scope.atom/pkg",
            "a+b",
            "a/b",
            "a b",
            "über",
            "@a/b/c",
        ] {
            assert!(check_package_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_follows_gitlabs_hashed_path() {
        // sha256("1") = 6b86b273…, sha256("left-pad") = the name's hash.
        let key = object_storage_key(1, "left-pad");
        let name_hash = sha256_hex(b"left-pad");
        assert_eq!(
            key,
            format!(
                "6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b/\
                 packages/metadata_caches/npm/{name_hash}"
            )
        );
    }

    #[test]
    fn derive_gives_file_then_key() {
        assert_eq!(
            derive_one(7, "@s/p").unwrap(),
            vec![
                Value::Text(FILE_NAME.into()),
                Value::Text(object_storage_key(7, "@s/p"))
            ]
        );
        assert!(derive_one(7, "a b").unwrap_err().contains("\"a b\""));
    }
}
