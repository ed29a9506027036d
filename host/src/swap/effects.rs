//! What a new version changes over the live data, computed and applied:
//! which records enter or leave a secondary's scope, which blob paths
//! change, and which version last decided each registry or state row.

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::db::{Backend, Db, DbError, ident};
use crate::feed::FeedRecord;
use crate::plugin::BlobPath;
use crate::secondary::consistency::{self, Counts};
use crate::secondary::scope::{self, Scope};
use crate::site::Site;
use std::sync::Arc;

/// Records read per page from the model table or the primary's feed.
const PAGE: i64 = 10_000;

/// The column of every `<name>_registry` and `<name>_states` row naming the
/// component (SHA-256) that last decided it. `NULL`: the active version
/// (the row was created after the last swap, which stamps every row).
pub const DECIDED_BY: &str = "plugin_sha256";

/// Every record of type `it` as the primary has it: read locally on the
/// primary, over the replication feed on a secondary.
pub async fn live_records(site: &Arc<Site>, it: &InstalledType) -> Result<Vec<FeedRecord>, String> {
    let mut out = Vec::new();
    let mut after = 0;
    match site.role() {
        Role::Primary => loop {
            let page = crate::primary::records::page(&site.db, it, after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as i64 >= PAGE;
            out.extend(page.iter().map(|r| FeedRecord {
                id: r.id,
                columns: r.columns_json(it),
                verification_state: r.verification_state,
                verification_checksum: r.verification_checksum.as_ref().map(hex::encode),
            }));
            if !full {
                break;
            }
        },
        Role::Secondary => {
            let client = client(site)?;
            loop {
                let page = client
                    .records_after(it.name(), after, PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = page.records.last() else {
                    break;
                };
                after = last.id;
                let full = page.records.len() as i64 >= PAGE;
                out.extend(page.records);
                if !full {
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn client(site: &Site) -> Result<crate::secondary::PrimaryClient, String> {
    let primary = site
        .config
        .primary
        .as_ref()
        .ok_or("a secondary needs a [primary] section")?;
    crate::secondary::PrimaryClient::new(primary).map_err(|e| e.to_string())
}

/// A blob that moves: record id, old path, new path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub id: i64,
    pub from: BlobPath,
    pub to: BlobPath,
}

/// How a new version's paths compare with the installed one's.
#[derive(Debug, Default)]
pub struct PathPlan {
    pub moves: Vec<Move>,
    /// Records whose new path is refused (escapes the root, empty, …).
    pub invalid: Vec<(i64, String)>,
    pub unchanged: usize,
}

/// The paths of `records` under `old` and `new`.
pub async fn plan_paths(
    old: &Arc<InstalledType>,
    new: &Arc<InstalledType>,
    records: &[FeedRecord],
) -> Result<PathPlan, String> {
    let before = scope::blob_paths(old, records)
        .await
        .map_err(|e| e.to_string())?;
    let after = scope::blob_paths(new, records)
        .await
        .map_err(|e| e.to_string())?;
    let mut plan = PathPlan::default();
    for ((record, from), to) in records.iter().zip(before).zip(after) {
        match (from, to) {
            (_, Err(error)) => plan.invalid.push((record.id, error)),
            // A record the old version could not place has no blob to move.
            (Err(_), Ok(_)) => {}
            (Ok(from), Ok(to)) if from == to => plan.unchanged += 1,
            (Ok(from), Ok(to)) => plan.moves.push(Move {
                id: record.id,
                from,
                to,
            }),
        }
    }
    Ok(plan)
}

/// Copies each moving blob that exists to its new path (the old copy stays
/// until [`remove_old`]), so the record has a blob under either version.
/// Returns how many were copied.
pub async fn copy_to_new(site: &Site, name: &str, moves: &[Move]) -> Result<u64, String> {
    let mut copied = 0;
    for m in moves {
        let present = site
            .blobs
            .exists(name, &m.from)
            .await
            .map_err(|e| e.to_string())?;
        if present {
            site.blobs
                .copy(name, &m.from, &m.to)
                .await
                .map_err(|e| format!("copying the blob of record {}: {e}", m.id))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Deletes the old copies of moved blobs (once the new version is live).
pub async fn remove_old(site: &Site, name: &str, moves: &[Move]) {
    let targets: std::collections::HashSet<&BlobPath> = moves.iter().map(|m| &m.to).collect();
    for m in moves {
        if targets.contains(&m.from) {
            continue; // another record's new blob lives there
        }
        if let Err(error) = site.blobs.delete(name, &m.from).await {
            tracing::warn!(r#type = name, id = m.id, %error, "could not delete a moved blob's old copy");
        }
    }
}

/// The scope decisions of `records` under `old` and `new`: the ids that
/// enter and that leave the scope.
pub async fn scope_changes(
    old: &Arc<InstalledType>,
    new: &Arc<InstalledType>,
    scope: &Scope,
    records: &[FeedRecord],
) -> Result<(Vec<i64>, Vec<i64>), String> {
    let before = scope::in_scope(old, scope, records)
        .await
        .map_err(|e| e.to_string())?;
    let after = scope::in_scope(new, scope, records)
        .await
        .map_err(|e| e.to_string())?;
    let (mut enter, mut leave) = (Vec::new(), Vec::new());
    for ((record, b), a) in records.iter().zip(before).zip(after) {
        match (b, a) {
            (Ok(false) | Err(_), Ok(true)) => enter.push(record.id),
            (Ok(true), Ok(false)) => leave.push(record.id),
            _ => {}
        }
    }
    Ok((enter, leave))
}

/// This secondary's scope, read from the primary now.
pub async fn secondary_scope(
    site: &Arc<Site>,
) -> Result<(crate::secondary::PrimaryClient, Scope), String> {
    let secondary = crate::secondary::Secondary::new(site.clone()).map_err(|e| format!("{e:#}"))?;
    let view = secondary
        .refresh_topology()
        .await
        .map_err(|e| format!("reading this site's scope from the primary: {e}"))?;
    let scope = view
        .scope
        .clone()
        .ok_or("this site's selective-sync settings are unusable")?;
    Ok((secondary.client.clone(), scope))
}

/// Makes a secondary's registry of `it` follow its scope now: a consistency
/// pass of that type (rows created for records that entered, rows and
/// blobs of records that left removed).
pub async fn reevaluate_scope(site: &Arc<Site>, it: &Arc<InstalledType>) -> Result<Counts, String> {
    let (client, scope) = secondary_scope(site).await?;
    let tracking = site.tracking().map_err(|e| format!("{e:#}"))?;
    consistency::check_type(&client, tracking, &site.blobs, it, &scope)
        .await
        .map_err(|e| e.to_string())
}

/// The table whose rows a version decides on this site.
pub fn decided_table(site: &Site, it: &InstalledType) -> (Db, String) {
    match site.role() {
        Role::Primary => (site.db.clone(), it.identity.states_table()),
        Role::Secondary => (
            site.tracking
                .clone()
                .expect("a secondary has a tracking database"),
            it.identity.registry_table(),
        ),
    }
}

/// Adds [`DECIDED_BY`] to `table` if it lacks it (tables created before
/// hot swap existed).
pub async fn ensure_decided_by(db: &Db, table: &str) -> Result<(), DbError> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "SELECT 1 AS found FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
        }
        Backend::Sqlite => "SELECT 1 AS found FROM pragma_table_info($1) WHERE name = $2",
    };
    if db
        .fetch_optional(sql, &[table.into(), DECIDED_BY.into()])
        .await?
        .is_some()
    {
        return Ok(());
    }
    let add = match db.backend() {
        Backend::Postgres => "ADD COLUMN IF NOT EXISTS",
        Backend::Sqlite => "ADD COLUMN",
    };
    match db
        .execute(
            &format!("ALTER TABLE {} {add} {DECIDED_BY} TEXT", ident(table)),
            &[],
        )
        .await
    {
        Ok(_) => Ok(()),
        // Another process added it meanwhile (SQLite has no IF NOT EXISTS).
        Err(e) if e.to_string().contains("duplicate column") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records that version `sha256` decided every row of `table`.
pub async fn stamp(db: &Db, table: &str, sha256: &str) -> Result<u64, DbError> {
    db.execute(
        &format!(
            "UPDATE {} SET {DECIDED_BY} = $1 WHERE {DECIDED_BY} IS NULL OR {DECIDED_BY} <> $1",
            ident(table)
        ),
        &[sha256.into()],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::test_databases;

    #[tokio::test]
    async fn the_decided_by_column_is_added_once_and_stamped() {
        for (backend, db) in test_databases().await {
            db.execute("CREATE TABLE t_registry (id BIGINT PRIMARY KEY)", &[])
                .await
                .unwrap();
            db.execute("INSERT INTO t_registry (id) VALUES (1), (2)", &[])
                .await
                .unwrap();
            ensure_decided_by(&db, "t_registry").await.unwrap();
            ensure_decided_by(&db, "t_registry").await.unwrap();
            assert_eq!(
                stamp(&db, "t_registry", "aa").await.unwrap(),
                2,
                "{backend}"
            );
            assert_eq!(
                stamp(&db, "t_registry", "aa").await.unwrap(),
                0,
                "{backend}"
            );
            assert_eq!(
                stamp(&db, "t_registry", "bb").await.unwrap(),
                2,
                "{backend}"
            );
        }
    }
}
