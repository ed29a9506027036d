//! The static schema: plain SQL migrations, embedded with `sqlx::migrate!`
//! and applied by sqlx (which records them in `_sqlx_migrations` and skips
//! those already applied, so running them again is a no-op).
//!
//! A site has two databases, each with its own migrations, one folder per
//! backend:
//!
//! - the **main** database (`migrations/main/{sqlite,postgres}`): namespaces,
//!   projects, Geo sites and their status, the event log, admin tokens,
//!   feature flags, plugin versions;
//! - on a secondary, the **tracking** database
//!   (`migrations/tracking/{sqlite,postgres}`): the event log cursor
//!   (`event_log_states`) and the plugin versions that decided its registries.
//!
//! The tables of each replicable type are not migrations: they come from the
//! type's identity ([`super::template`]).
//!
//! Adding a migration: a new file `<YYYYMMDDhhmmss>_<what>.sql` in both
//! backends' folders of that database. Never edit an applied one (sqlx checks
//! their checksums). The migrations are embedded at compile time: a new file
//! is picked up on the next build of the host.

use super::{Backend, Db, DbError, Result};
use sqlx::migrate::Migrator;

static MAIN_SQLITE: Migrator = sqlx::migrate!("../migrations/main/sqlite");
static MAIN_POSTGRES: Migrator = sqlx::migrate!("../migrations/main/postgres");
static TRACKING_SQLITE: Migrator = sqlx::migrate!("../migrations/tracking/sqlite");
static TRACKING_POSTGRES: Migrator = sqlx::migrate!("../migrations/tracking/postgres");

/// Brings a site's main database up to date.
pub async fn main(db: &Db) -> Result<()> {
    refuse_other_kind(db, "event_log_states", "a tracking database", "main").await?;
    run(db, &MAIN_SQLITE, &MAIN_POSTGRES).await
}

/// Brings a secondary's tracking database up to date.
pub async fn tracking(db: &Db) -> Result<()> {
    refuse_other_kind(db, "geo_nodes", "a main database", "tracking").await?;
    run(db, &TRACKING_SQLITE, &TRACKING_POSTGRES).await
}

async fn run(db: &Db, sqlite: &Migrator, postgres: &Migrator) -> Result<()> {
    match db {
        Db::Sqlite(db) => sqlite.run(db.writer()).await?,
        Db::Postgres(pool) => postgres.run(pool).await?,
    }
    Ok(())
}

/// Every table and index the host's migrations create (main and tracking
/// databases, both backends), and sqlx's own `_sqlx_migrations`: names no
/// type may use. Derived from the migrations themselves, so a new
/// migration's tables are reserved as soon as it exists.
pub fn host_objects() -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = [
        &MAIN_SQLITE,
        &MAIN_POSTGRES,
        &TRACKING_SQLITE,
        &TRACKING_POSTGRES,
    ]
    .iter()
    .flat_map(|m| m.iter())
    .flat_map(|migration| super::template::created_objects(migration.sql.as_str()))
    .collect();
    names.insert("_sqlx_migrations".into());
    names
}

/// Refuses to migrate a database that holds the other kind's tables (the
/// main and tracking databases configured as the same one).
async fn refuse_other_kind(db: &Db, marker: &str, other: &str, wanted: &str) -> Result<()> {
    if table_exists(db, marker).await? {
        return Err(DbError::Invalid(format!(
            "this database has table `{marker}`, so it is {other}; it cannot also be the {wanted} database"
        )));
    }
    Ok(())
}

/// Whether `table` exists (in the current schema, on PostgreSQL).
pub(crate) async fn table_exists(db: &Db, table: &str) -> Result<bool> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "SELECT 1 AS found FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        Backend::Sqlite => {
            "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = $1"
        }
    };
    Ok(db.fetch_optional(sql, &[table.into()]).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Arg;
    use crate::db::testing::test_databases;
    use chrono::DateTime;

    const MAIN_TABLES: &[&str] = &[
        "admin_tokens",
        "feature_flags",
        "geo_blob_writes",
        "geo_event_log",
        "geo_events",
        "geo_leases",
        "geo_node_namespace_links",
        "geo_node_statuses",
        "geo_nodes",
        "geo_table_owners",
        "namespaces",
        "plugin_versions",
        "projects",
    ];

    async fn tables(db: &Db) -> Vec<String> {
        let sql = match db.backend() {
            Backend::Postgres => {
                "SELECT table_name::text AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1"
            }
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY 1"
            }
        };
        db.fetch_all(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.text("name").unwrap())
            .collect()
    }

    fn ts(us: i64) -> DateTime<chrono::Utc> {
        DateTime::from_timestamp_micros(us).unwrap()
    }

    #[tokio::test]
    async fn migrations_apply_twice() {
        for ((backend, db), (_, tracking_db)) in test_databases()
            .await
            .into_iter()
            .zip(test_databases().await)
        {
            main(&db).await.unwrap_or_else(|e| panic!("{backend}: {e}"));
            main(&db).await.unwrap_or_else(|e| panic!("{backend}: {e}"));
            assert_eq!(tables(&db).await, MAIN_TABLES, "{backend}");

            tracking(&tracking_db)
                .await
                .unwrap_or_else(|e| panic!("{backend}: {e}"));
            tracking(&tracking_db)
                .await
                .unwrap_or_else(|e| panic!("{backend}: {e}"));
            assert_eq!(
                tables(&tracking_db).await,
                [
                    "event_log_gaps",
                    "event_log_states",
                    "geo_bulk_jobs",
                    "geo_leases",
                    "geo_removal_guards",
                    "registry_consistency_marks"
                ],
                "{backend}"
            );

            // One database cannot be both.
            let error = tracking(&db).await.unwrap_err().to_string();
            assert!(error.contains("main database"), "{backend}: {error}");
            let error = main(&tracking_db).await.unwrap_err().to_string();
            assert!(error.contains("tracking database"), "{backend}: {error}");
        }
    }

    #[tokio::test]
    async fn main_schema_enforces_its_rules() {
        for (backend, db) in test_databases().await {
            main(&db).await.unwrap();
            let insert_namespace =
                "INSERT INTO namespaces (name, path, parent_id) VALUES ($1, $1, $2) RETURNING id";
            let parent = db
                .fetch_one(insert_namespace, &["group".into(), Arg::I64(None)])
                .await
                .unwrap();
            let parent = parent.i64("id").unwrap();
            let child = db
                .fetch_one(insert_namespace, &["sub".into(), parent.into()])
                .await
                .unwrap();
            let child = child.i64("id").unwrap();
            let project = db
                .fetch_one(
                    "INSERT INTO projects (name, path, namespace_id) VALUES ('p', 'p', $1) \
                     RETURNING id, repository_storage",
                    &[child.into()],
                )
                .await
                .unwrap();
            assert_eq!(project.text("repository_storage").unwrap(), "default");

            // A namespace with children or projects cannot be deleted.
            let delete = "DELETE FROM namespaces WHERE id = $1";
            let error = db.execute(delete, &[parent.into()]).await.unwrap_err();
            assert!(error.is_foreign_key_violation(), "{backend}: {error}");
            let error = db.execute(delete, &[child.into()]).await.unwrap_err();
            assert!(error.is_foreign_key_violation(), "{backend}: {error}");
            db.execute("DELETE FROM projects", &[]).await.unwrap();
            db.execute(delete, &[child.into()]).await.unwrap();

            // Ids are never reused after a delete.
            let again = db
                .fetch_one(insert_namespace, &["sub".into(), parent.into()])
                .await
                .unwrap();
            assert_eq!(again.i64("id").unwrap(), child + 1, "{backend}");

            // Geo sites: GitLab's defaults and checks.
            let node = db
                .fetch_one(
                    "INSERT INTO geo_nodes (name, url) VALUES ('secondary', 'http://s') RETURNING *",
                    &[],
                )
                .await
                .unwrap();
            assert!(!node.bool("primary").unwrap());
            assert!(node.bool("enabled").unwrap());
            assert!(!node.bool("sync_object_storage").unwrap());
            assert_eq!(node.opt_text("selective_sync_type").unwrap(), None);
            assert_eq!(node.text("selective_sync_shards").unwrap(), "[]");
            for (column, value) in [
                ("files_max_capacity", 10),
                ("repos_max_capacity", 25),
                ("verification_max_capacity", 100),
                ("container_repositories_max_capacity", 10),
                ("minimum_reverification_interval", 7),
            ] {
                assert_eq!(node.i32(column).unwrap(), value, "{backend} {column}");
            }
            let node_id = node.i64("id").unwrap();
            for (sql, what) in [
                (
                    "INSERT INTO geo_nodes (name, url) VALUES ('secondary', 'http://t')",
                    "unique name",
                ),
                (
                    "UPDATE geo_nodes SET minimum_reverification_interval = 0",
                    "interval >= 1",
                ),
                (
                    "UPDATE geo_nodes SET selective_sync_type = 'groups'",
                    "sync type",
                ),
                (
                    "UPDATE geo_nodes SET selective_sync_shards = '{\"a\": 1}'",
                    "shards array",
                ),
            ] {
                assert!(db.execute(sql, &[]).await.is_err(), "{backend}: {what}");
            }
            db.execute(
                "UPDATE geo_nodes SET selective_sync_type = 'shards', selective_sync_shards = '[\"default\"]'",
                &[],
            )
            .await
            .unwrap();
            db.execute(
                "INSERT INTO geo_node_namespace_links (geo_node_id, namespace_id) VALUES ($1, $2)",
                &[node_id.into(), parent.into()],
            )
            .await
            .unwrap();
            db.execute(
                "INSERT INTO geo_node_statuses (geo_node_id) VALUES ($1)",
                &[node_id.into()],
            )
            .await
            .unwrap();
            db.execute("DELETE FROM geo_nodes WHERE id = $1", &[node_id.into()])
                .await
                .unwrap();
            for table in ["geo_node_namespace_links", "geo_node_statuses"] {
                let n = db
                    .fetch_one(&format!("SELECT COUNT(*) AS n FROM {table}"), &[])
                    .await
                    .unwrap();
                assert_eq!(n.i64("n").unwrap(), 0, "{backend}: {table} cascades");
            }

            // The event log goes with its events.
            let event = db
                .fetch_one(
                    "INSERT INTO geo_events (replicable_name, event_name, created_at) VALUES ('t', 'created', $1) \
                     RETURNING id",
                    &[ts(1).into()],
                )
                .await
                .unwrap()
                .i64("id")
                .unwrap();
            db.execute(
                "INSERT INTO geo_event_log (created_at, geo_event_id) VALUES ($1, $2)",
                &[ts(1).into(), event.into()],
            )
            .await
            .unwrap();
            db.execute("DELETE FROM geo_events", &[]).await.unwrap();
            let n = db
                .fetch_one("SELECT COUNT(*) AS n FROM geo_event_log", &[])
                .await
                .unwrap();
            assert_eq!(n.i64("n").unwrap(), 0, "{backend}");
            let long = "x".repeat(256);
            let error = db
                .execute(
                    "INSERT INTO geo_events (replicable_name, event_name, created_at) VALUES ($1, 'created', $2)",
                    &[long.into(), ts(1).into()],
                )
                .await;
            assert!(error.is_err(), "{backend}: replicable_name is varchar(255)");

            // One active plugin version per type; a version is recorded once.
            let insert_version = "INSERT INTO plugin_versions (replicable_name, version, sha256, installed_at, active) \
                                  VALUES ('t', $1, $2, $3, $4)";
            // (version, sha256, installed_at, active, accepted): a second
            // active version is refused, and so is a version recorded again.
            for (version, sha256, at, active, accepted) in [
                ("1.0.0", "aa", 1, true, true),
                ("1.0.1", "bb", 2, false, true),
                ("1.0.2", "cc", 3, true, false),
                ("1.0.0", "aa", 3, false, false),
            ] {
                let args = [version.into(), sha256.into(), ts(at).into(), active.into()];
                let inserted = db.execute(insert_version, &args).await;
                if accepted {
                    inserted.unwrap();
                } else {
                    let error = inserted.unwrap_err();
                    assert!(error.is_unique_violation(), "{backend}: {error}");
                }
            }

            // Admin tokens are found by a unique digest.
            let insert_token =
                "INSERT INTO admin_tokens (name, token_digest, created_at) VALUES ('a', 'd', $1)";
            db.execute(insert_token, &[ts(1).into()]).await.unwrap();
            let error = db.execute(insert_token, &[ts(1).into()]).await.unwrap_err();
            assert!(error.is_unique_violation(), "{backend}: {error}");
        }
    }
}
