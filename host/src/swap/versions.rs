//! The record of every installed version of every type (`plugin_versions`,
//! main database) and the component bytes kept for rollback
//! (`data_dir/plugins-versions/<sha256>.wasm`).

use crate::db::{Arg, Db, DbError};
use crate::plugin::LoadedType;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// One recorded version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionRow {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub wit_version: Option<String>,
    pub source: Option<String>,
    pub installed_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub last_validation_error: Option<String>,
}

const COLUMNS: &str = "id, replicable_name, version, sha256, wit_version, source, installed_at, \
                       activated_at, active, last_validation_error";

fn decode(row: &crate::db::DbRow) -> Result<VersionRow, DbError> {
    Ok(VersionRow {
        id: row.i64("id")?,
        name: row.text("replicable_name")?,
        version: row.text("version")?,
        sha256: row.text("sha256")?,
        wit_version: row.opt_text("wit_version")?,
        source: row.opt_text("source")?,
        installed_at: row.ts("installed_at")?,
        activated_at: row.opt_ts("activated_at")?,
        active: row.bool("active")?,
        last_validation_error: row.opt_text("last_validation_error")?,
    })
}

/// Every recorded version, by type then id.
pub async fn list(db: &Db) -> Result<Vec<VersionRow>, DbError> {
    db.fetch_map(
        &format!("SELECT {COLUMNS} FROM plugin_versions ORDER BY replicable_name, id"),
        &[],
        decode,
    )
    .await
}

/// The versions of one type, oldest first.
pub async fn of_type(db: &Db, name: &str) -> Result<Vec<VersionRow>, DbError> {
    db.fetch_map(
        &format!("SELECT {COLUMNS} FROM plugin_versions WHERE replicable_name = $1 ORDER BY id"),
        &[name.into()],
        decode,
    )
    .await
}

/// The SHA-256 of the recorded active version of `name`, if any.
pub async fn active_sha256(db: &Db, name: &str) -> Result<Option<String>, DbError> {
    db.fetch_optional(
        "SELECT sha256 FROM plugin_versions WHERE replicable_name = $1 AND active",
        &[name.into()],
    )
    .await?
    .map(|row| row.text("sha256"))
    .transpose()
}

/// What is recorded of a version.
pub struct NewVersion<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub wit_version: &'a str,
    pub source: &'a str,
}

impl<'a> NewVersion<'a> {
    /// The record of `loaded`, which came from `source`.
    pub fn of(loaded: &'a LoadedType, source: &'a str) -> NewVersion<'a> {
        NewVersion {
            name: loaded.name(),
            version: &loaded.identity().version,
            sha256: loaded.sha256(),
            wit_version: loaded.wit_version(),
            source,
        }
    }

    /// The `INSERT` of this version into `plugin_versions`, installed at
    /// `installed_at`, with the `more` columns and their values.
    fn insert(&self, installed_at: DateTime<Utc>, more: [(&str, Arg); 2]) -> (String, Vec<Arg>) {
        let mut columns = vec![
            "replicable_name",
            "version",
            "sha256",
            "wit_version",
            "source",
            "installed_at",
        ];
        let mut args: Vec<Arg> = vec![
            self.name.into(),
            self.version.into(),
            self.sha256.into(),
            self.wit_version.into(),
            self.source.into(),
            installed_at.into(),
        ];
        for (column, value) in more {
            columns.push(column);
            args.push(value);
        }
        let sql = format!(
            "INSERT INTO plugin_versions ({}) VALUES ({})",
            columns.join(", "),
            crate::db::placeholders(1, args.len())
        );
        (sql, args)
    }
}

/// Makes `v` the one active version of its type (recording it if new), in
/// one transaction. A version already active stays as recorded (when and
/// from where it went live).
pub async fn activate(db: &Db, v: &NewVersion<'_>) -> Result<(), DbError> {
    if active_sha256(db, v.name).await?.as_deref() == Some(v.sha256) {
        return Ok(());
    }
    let now = Db::now();
    let mut tx = db.begin().await?;
    tx.execute(
        "UPDATE plugin_versions SET active = $1 WHERE replicable_name = $2 AND active",
        &[false.into(), v.name.into()],
    )
    .await?;
    let updated = tx
        .execute(
            "UPDATE plugin_versions SET active = $1, activated_at = $2, source = $3, \
             last_validation_error = NULL WHERE replicable_name = $4 AND sha256 = $5",
            &[
                true.into(),
                now.into(),
                v.source.into(),
                v.name.into(),
                v.sha256.into(),
            ],
        )
        .await?;
    if updated == 0 {
        let (sql, args) = v.insert(now, [("activated_at", now.into()), ("active", true.into())]);
        tx.execute(&sql, &args).await?;
    }
    tx.commit().await
}

/// Records a refused version (inactive) with its validation error.
pub async fn record_refusal(db: &Db, v: &NewVersion<'_>, error: &str) -> Result<(), DbError> {
    let updated = db
        .execute(
            "UPDATE plugin_versions SET last_validation_error = $1 \
             WHERE replicable_name = $2 AND sha256 = $3",
            &[error.into(), v.name.into(), v.sha256.into()],
        )
        .await?;
    if updated == 0 {
        let (sql, args) = v.insert(
            Db::now(),
            [
                ("active", false.into()),
                ("last_validation_error", error.into()),
            ],
        );
        db.execute(&sql, &args).await?;
    }
    Ok(())
}

/// Marks every version of `name` inactive (the type was removed).
pub async fn deactivate(db: &Db, name: &str) -> Result<u64, DbError> {
    db.execute(
        "UPDATE plugin_versions SET active = $1 WHERE replicable_name = $2 AND active",
        &[Arg::from(false), name.into()],
    )
    .await
}

/// Where the bytes of version `sha256` are kept.
pub fn component_path(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir
        .join("plugins-versions")
        .join(format!("{sha256}.wasm"))
}

/// Keeps a version's component bytes (written atomically, once).
pub fn keep_component(data_dir: &Path, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = component_path(data_dir, sha256);
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}

/// The kept bytes of version `sha256`, if any.
pub fn kept_component(data_dir: &Path, sha256: &str) -> Option<Vec<u8>> {
    std::fs::read(component_path(data_dir, sha256)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrate;
    use crate::db::testing::test_databases;

    fn v<'a>(version: &'a str, sha256: &'a str) -> NewVersion<'a> {
        NewVersion {
            name: "t",
            version,
            sha256,
            wit_version: "0.1.0",
            source: "test",
        }
    }

    #[tokio::test]
    async fn one_active_version_and_refusals_are_recorded() {
        for (backend, db) in test_databases().await {
            migrate::main(&db).await.unwrap();
            activate(&db, &v("1.0.0", "a")).await.unwrap();
            activate(&db, &v("1.1.0", "b")).await.unwrap();
            record_refusal(&db, &v("1.2.0", "c"), "broken")
                .await
                .unwrap();
            record_refusal(&db, &v("1.2.0", "c"), "still broken")
                .await
                .unwrap();
            // Back to a: recorded once, active again.
            activate(&db, &v("1.0.0", "a")).await.unwrap();
            let rows = of_type(&db, "t").await.unwrap();
            let summary: Vec<(&str, bool, Option<&str>)> = rows
                .iter()
                .map(|r| {
                    (
                        r.sha256.as_str(),
                        r.active,
                        r.last_validation_error.as_deref(),
                    )
                })
                .collect();
            assert_eq!(
                summary,
                [
                    ("a", true, None),
                    ("b", false, None),
                    ("c", false, Some("still broken"))
                ],
                "{backend}"
            );
            assert!(rows[2].activated_at.is_none());
            assert_eq!(deactivate(&db, "t").await.unwrap(), 1);
            assert!(of_type(&db, "t").await.unwrap().iter().all(|r| !r.active));
        }
    }

    #[test]
    fn kept_components_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(kept_component(dir.path(), "abc").is_none());
        keep_component(dir.path(), "abc", b"bytes").unwrap();
        keep_component(dir.path(), "abc", b"other").unwrap(); // kept once
        assert_eq!(kept_component(dir.path(), "abc").unwrap(), b"bytes");
    }
}
