//! What a new version changes over the live data, computed and applied:
//! which records enter or leave a secondary's scope, which blob paths
//! change, and which version last decided each registry or state row.

use super::SwapError;
use crate::catalog::{InstalledType, Scope};
use crate::config::Role;
use crate::db::{Db, DbError, ident};
use crate::feed::FeedRecord;
use crate::plugin::BlobPath;
use crate::secondary::Secondary;
use crate::secondary::consistency::{self, Counts};
use crate::site::Site;
use std::collections::HashMap;
use std::sync::Arc;

/// Records read per page from the model table or the primary's feed.
const PAGE: i64 = 10_000;

/// The column of every `<name>_registry` and `<name>_states` row naming the
/// component (SHA-256) that last decided it (in the templates). `NULL`: the
/// active version (the row was created after the last swap, which stamps
/// every row).
pub const DECIDED_BY: &str = "plugin_sha256";

/// The running secondary of `site` (its client of the primary and its
/// scope), as the runtime registered it.
pub fn running_secondary(site: &Site) -> Result<Arc<Secondary>, String> {
    site.role_state
        .get::<Secondary>()
        .ok_or_else(|| "this secondary's workers are not running".to_string())
}

/// Every record of a type as the primary has it: read locally on the
/// primary (from the model table, with the columns `reader` declares), over
/// the replication feed on a secondary.
pub async fn live_records(site: &Site, reader: &InstalledType) -> Result<Vec<FeedRecord>, String> {
    live_records_after(site, reader, 0).await
}

/// [`live_records`] with ids above `after`.
async fn live_records_after(
    site: &Site,
    reader: &InstalledType,
    mut after: i64,
) -> Result<Vec<FeedRecord>, String> {
    let mut out = Vec::new();
    match site.role() {
        Role::Primary => loop {
            let page = crate::primary::records::page(&site.db, reader, after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as i64 >= PAGE;
            out.extend(page.iter().map(|r| FeedRecord {
                id: r.id,
                columns: r.columns_json(reader),
                verification_state: r.verification_state,
                verification_checksum: r.verification_checksum.as_ref().map(hex::encode),
            }));
            if !full {
                break;
            }
        },
        Role::Secondary => {
            let secondary = running_secondary(site)?;
            loop {
                let page = secondary
                    .client
                    .records_after(reader.name(), after, PAGE)
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

/// The records a new version `new` must place, read before any change:
/// with the running version's columns when there is one; otherwise, when
/// the type's table already holds rows (a type installed again, or one
/// whose recorded version is not what runs), with the columns of `new`
/// that the table has. On a secondary, the primary's records, when this
/// site holds any registry of the type.
async fn records_to_place(
    site: &Site,
    current: Option<&InstalledType>,
    new: &InstalledType,
) -> Result<Vec<FeedRecord>, String> {
    if let Some(current) = current {
        return live_records(site, current).await;
    }
    let table = match site.role() {
        Role::Primary => new.identity.table.name.clone(),
        Role::Secondary => new.identity.registry_table(),
    };
    let db = site.decided_db().map_err(|e| format!("{e:#}"))?;
    let columns = crate::db::template::table_columns(db, &table)
        .await
        .map_err(|e| e.to_string())?;
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    match site.role() {
        Role::Primary => {
            let mut identity = (*new.identity).clone();
            identity.table.columns.retain(|c| columns.contains(&c.name));
            let reader = InstalledType {
                plugin: new.plugin.clone(),
                identity: Arc::new(identity),
            };
            live_records(site, &reader).await
        }
        // Not serving (startup): the consistency pass places the records.
        Role::Secondary if site.role_state.get::<Secondary>().is_none() => Ok(Vec::new()),
        Role::Secondary => {
            let rows = db
                .fetch_one(&format!("SELECT COUNT(*) AS n FROM {}", ident(&table)), &[])
                .await
                .map_err(|e| e.to_string())?
                .i64("n")
                .map_err(|e| e.to_string())?;
            if rows == 0 {
                return Ok(Vec::new());
            }
            live_records(site, new).await
        }
    }
}

/// Validates the blob paths of `new` over every live record, changing
/// nothing: each must be a valid path, and together they must map records
/// one-to-one onto paths no other record has now. Returns the blobs that
/// move (from the running version's paths).
pub async fn check_paths(
    site: &Site,
    current: Option<&InstalledType>,
    new: &InstalledType,
) -> Result<PathPlan, SwapError> {
    let records = records_to_place(site, current, new)
        .await
        .map_err(|e| SwapError::Internal(format!("reading the live records: {e}")))?;
    let plan = plan_paths(current, new, &records)
        .await
        .map_err(|e| SwapError::Refused(format!("computing its blob paths failed: {e}")))?;
    if let Some((id, error)) = plan.invalid.first() {
        return Err(SwapError::Refused(format!(
            "{} of {} live records would get an invalid blob path (record {id}: {error})",
            plan.invalid.len(),
            records.len()
        )));
    }
    if let Some(clash) = plan.clashes.first() {
        return Err(SwapError::Refused(format!(
            "its blob paths are not one-to-one over the live records: {} of {} records would \
             take a path another record has ({clash})",
            plan.clashes.len(),
            records.len()
        )));
    }
    Ok(plan)
}

/// A blob that moves: record id, old path, new path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub id: i64,
    pub from: BlobPath,
    pub to: BlobPath,
    /// Whether the record's checksum is GitLab's object-storage one (the
    /// size) rather than SHA-256.
    pub object_stored: bool,
}

/// How a new version's paths compare with the installed one's.
#[derive(Debug, Default)]
pub struct PathPlan {
    pub moves: Vec<Move>,
    /// Records whose new path is refused (escapes the root, empty, …).
    pub invalid: Vec<(i64, String)>,
    /// Records whose new path another record has (under the new version,
    /// or under the running one), described for the operator.
    pub clashes: Vec<String>,
    pub unchanged: usize,
    /// The highest record id planned.
    pub last_id: i64,
}

/// The paths of `records` under `old` (the running version, if any) and
/// `new`, and the paths `new` would give two records, or give one record
/// while another record keeps it under `old`.
pub async fn plan_paths(
    old: Option<&InstalledType>,
    new: &InstalledType,
    records: &[FeedRecord],
) -> Result<PathPlan, String> {
    let before = match old {
        Some(old) => old.blob_paths(records).await.map_err(|e| e.to_string())?,
        None => vec![Err("no running version".to_string()); records.len()],
    };
    let after = new.blob_paths(records).await.map_err(|e| e.to_string())?;
    let mut plan = PathPlan {
        last_id: records.iter().map(|r| r.id).max().unwrap_or(0),
        ..PathPlan::default()
    };
    let held: HashMap<&BlobPath, i64> = records
        .iter()
        .zip(&before)
        .filter_map(|(r, path)| path.as_ref().ok().map(|p| (p, r.id)))
        .collect();
    let mut taken: HashMap<&BlobPath, i64> = HashMap::new();
    for ((record, from), to) in records.iter().zip(&before).zip(&after) {
        let to = match to {
            Ok(to) => to,
            Err(error) => {
                plan.invalid.push((record.id, error.clone()));
                continue;
            }
        };
        if let Some(other) = taken.insert(to, record.id) {
            plan.clashes.push(format!(
                "records {other} and {} would both be at `{to}`",
                record.id
            ));
        } else if let Some(&other) = held.get(to).filter(|&&other| other != record.id) {
            plan.clashes.push(format!(
                "record {} would move to `{to}`, where record {other} is now",
                record.id
            ));
        }
        match from {
            // A record the old version could not place has no blob to move.
            Err(_) => {}
            Ok(from) if from == to => plan.unchanged += 1,
            Ok(from) => plan.moves.push(Move {
                id: record.id,
                from: from.clone(),
                to: to.clone(),
                object_stored: new.is_object_stored(record),
            }),
        }
    }
    Ok(plan)
}

/// Copies each moving blob that exists to its new path (the old copy stays
/// until [`finish_moves`]), so the record has a blob under either version.
/// On a failure, the copies made are removed (no record uses their paths)
/// and the error is returned.
pub async fn copy_to_new(site: &Site, name: &str, moves: &[Move]) -> Result<u64, String> {
    let mut copied: Vec<&Move> = Vec::new();
    let mut result = Ok(());
    for m in moves {
        let step = async {
            if site.blobs.exists(name, &m.from).await? {
                site.blobs.copy(name, &m.from, &m.to).await?;
                return Ok(true);
            }
            Ok::<_, crate::storage::StorageError>(false)
        };
        match step.await {
            Ok(true) => copied.push(m),
            Ok(false) => {}
            Err(e) => {
                result = Err(format!("copying the blob of record {}: {e}", m.id));
                break;
            }
        }
    }
    if let Err(error) = result {
        for m in copied {
            let _ = site.blobs.delete(name, &m.to).await;
        }
        return Err(error);
    }
    Ok(copied.len() as u64)
}

/// The checksum of a stored blob in the form `m`'s record keeps it (hex).
async fn checksum_of(
    site: &Site,
    name: &str,
    path: &BlobPath,
    object_stored: bool,
) -> Result<Option<String>, crate::storage::StorageError> {
    match site.blobs.checksum(name, path).await {
        Ok(written) if object_stored => Ok(Some(crate::storage::format_file_size_for_checksum(
            written.size,
        ))),
        Ok(written) => Ok(Some(written.sha256)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The verification checksum (hex, as stored) of each moved record that
/// has one now: read from the states table on a primary, from the
/// primary's feed on a secondary. A record updated since the plan has its
/// new checksum, or none until it is verified again.
async fn current_checksums(
    site: &Site,
    it: &InstalledType,
    moves: &[Move],
) -> Result<HashMap<i64, String>, String> {
    let ids: Vec<i64> = moves.iter().map(|m| m.id).collect();
    let verified = |state, checksum: Option<String>| {
        (state == crate::states::VerificationState::Succeeded)
            .then_some(checksum)
            .flatten()
    };
    let mut out = HashMap::new();
    match site.role() {
        Role::Primary => {
            for r in crate::primary::records::by_ids(&site.db, it, &ids)
                .await
                .map_err(|e| e.to_string())?
            {
                let checksum = r.verification_checksum.as_ref().map(hex::encode);
                if let Some(checksum) = verified(r.verification_state, checksum) {
                    out.insert(r.id, checksum);
                }
            }
        }
        Role::Secondary => {
            let secondary = running_secondary(site)?;
            for r in secondary
                .client
                .records_by_ids(it.name(), &ids)
                .await
                .map_err(|e| e.to_string())?
            {
                if let Some(checksum) = verified(r.verification_state, r.verification_checksum) {
                    out.insert(r.id, checksum);
                }
            }
        }
    }
    Ok(out)
}

/// Ends the moves once the new version is live. The reference is the
/// record's checksum as it is now (or, for a record not verified yet, the
/// old copy's): a new copy that matches it lets the old copy go; an old
/// copy that matches it while the new one does not (a download finished
/// under the old version after the copy) is copied again first. A move
/// whose copies match neither (the record is changing) is returned as
/// deferred: the caller tries again once the record has settled. Returns
/// the moves ended (old copy deleted), the deferred ones, and warnings.
pub async fn finish_moves(
    site: &Site,
    it: &InstalledType,
    moves: &[Move],
) -> (u64, Vec<Move>, Vec<String>) {
    let name = it.name();
    let mut done = 0;
    let mut deferred = Vec::new();
    let mut warnings = Vec::new();
    if moves.is_empty() {
        return (0, deferred, warnings);
    }
    let checksums = match current_checksums(site, it, moves).await {
        Ok(checksums) => checksums,
        Err(error) => {
            warnings.push(format!("the records' checksums could not be read: {error}"));
            return (0, moves.to_vec(), warnings);
        }
    };
    for m in moves {
        let result = async {
            let Some(old) = checksum_of(site, name, &m.from, m.object_stored).await? else {
                return Ok(true); // nothing at the old path: nothing to delete
            };
            let new = checksum_of(site, name, &m.to, m.object_stored).await?;
            let expected = match checksums.get(&m.id) {
                Some(checksum) => checksum.as_str(),
                // Not verified: the old copy is the reference, unless the
                // new path already holds something else (a download under
                // the new version, of content the primary has not checked).
                None if new.as_ref().is_some_and(|n| *n != old) => return Ok(false),
                None => old.as_str(),
            };
            if new.as_deref() != Some(expected) {
                if old != expected {
                    return Ok(false); // neither copy is the record's content yet
                }
                site.blobs.copy(name, &m.from, &m.to).await?;
                if checksum_of(site, name, &m.to, m.object_stored)
                    .await?
                    .as_deref()
                    != Some(expected)
                {
                    return Ok(false);
                }
            }
            site.blobs.delete(name, &m.from).await?;
            Ok::<_, crate::storage::StorageError>(true)
        }
        .await;
        match result {
            Ok(true) => done += 1,
            Ok(false) => deferred.push(m.clone()),
            Err(error) => warnings.push(format!("moving the blob of record {}: {error}", m.id)),
        }
    }
    (done, deferred, warnings)
}

/// Records the new blob path of each moved record in `<name>_states`
/// (primary), in one transaction.
pub async fn record_paths(db: &Db, it: &InstalledType, moves: &[Move]) -> Result<(), DbError> {
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let mut tx = db.begin().await?;
    for m in moves {
        tx.execute(
            &format!("UPDATE {states} SET blob_path = $1 WHERE {fk} = $2"),
            &[m.to.as_str().into(), m.id.into()],
        )
        .await?;
    }
    tx.commit().await
}

/// Gives every state row without a blob path (records written before the
/// column existed) its record's path under `it` (primary). Two records
/// with one path keep the first's; the other is logged and stays without.
pub async fn backfill_blob_paths(db: &Db, it: &InstalledType) -> Result<u64, String> {
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let mut filled = 0;
    let mut after = 0;
    loop {
        let ids: Vec<i64> = db
            .fetch_all(
                &format!(
                    "SELECT {fk} AS id FROM {states} WHERE blob_path IS NULL AND {fk} > $1 \
                     ORDER BY {fk} LIMIT 1000"
                ),
                &[after.into()],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|row| row.i64("id"))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let Some(&last) = ids.last() else {
            return Ok(filled);
        };
        after = last;
        let records = crate::primary::records::by_ids(db, it, &ids)
            .await
            .map_err(|e| e.to_string())?;
        let paths = crate::primary::records::blob_paths(it, &records)
            .await
            .map_err(|e| e.to_string())?;
        for (record, path) in records.iter().zip(paths) {
            let Ok(path) = path else { continue };
            let written = db
                .execute(
                    &format!(
                        "UPDATE {states} SET blob_path = $1 WHERE {fk} = $2 AND blob_path IS NULL"
                    ),
                    &[path.as_str().into(), record.id.into()],
                )
                .await;
            match written {
                Ok(n) => filled += n,
                Err(e) if e.is_unique_violation() => tracing::error!(
                    r#type = it.name(),
                    id = record.id,
                    path = %path,
                    "this record's blob path is another record's: deleting either would delete \
                     the other's blob; change one of them"
                ),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// On a secondary, the moves of records above `after` (the last one
/// planned): downloads go on during a swap, so a record the primary
/// created meanwhile may have landed at its old version's path. Read once
/// the old version has drained.
pub async fn late_moves(
    site: &Site,
    old: &InstalledType,
    new: &InstalledType,
    after: i64,
) -> Result<Vec<Move>, String> {
    let records = live_records_after(site, new, after).await?;
    Ok(plan_paths(Some(old), new, &records).await?.moves)
}

/// The scope decisions of `records` under `old` and `new`: the ids that
/// enter and that leave the scope.
pub async fn scope_changes(
    old: &InstalledType,
    new: &InstalledType,
    scope: &Scope,
    records: &[FeedRecord],
) -> Result<(Vec<i64>, Vec<i64>), String> {
    let before = old
        .in_scope(scope, records)
        .await
        .map_err(|e| e.to_string())?;
    let after = new
        .in_scope(scope, records)
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

/// This secondary's scope, with the topology read from the primary now,
/// asked of the running secondary.
pub async fn secondary_scope(site: &Site) -> Result<(Arc<Secondary>, Scope), String> {
    let secondary = running_secondary(site)?;
    let view = secondary
        .refresh_topology()
        .await
        .map_err(|e| format!("reading this site's scope from the primary: {e}"))?;
    let scope = view
        .scope
        .clone()
        .ok_or("this site's selective-sync settings are unusable")?;
    Ok((secondary, scope))
}

/// Makes a secondary's registry of `it` follow its scope now: a consistency
/// pass of that type (rows created for records that entered, rows and
/// blobs of records that left removed). `None` when the site is not
/// serving (startup): its workers' first pass does it.
pub async fn reevaluate_scope(
    site: &Site,
    it: &Arc<InstalledType>,
) -> Result<Option<Counts>, String> {
    if site.role_state.get::<Secondary>().is_none() {
        return Ok(None);
    }
    let (secondary, scope) = secondary_scope(site).await?;
    consistency::check_type(
        &secondary.client,
        &secondary.tracking,
        &site.blobs,
        it,
        &scope,
        secondary.guard(crate::secondary::guard::Cause::Swap),
    )
    .await
    .map(Some)
    .map_err(|e| e.to_string())
}

/// The table whose rows a version decides on this site, and its database.
pub fn decided_table(site: &Site, it: &InstalledType) -> Result<(Db, String), DbError> {
    let db = site
        .decided_db()
        .map_err(|e| DbError::Invalid(format!("{e:#}")))?;
    let table = match site.role() {
        Role::Primary => it.identity.states_table(),
        Role::Secondary => it.identity.registry_table(),
    };
    Ok((db.clone(), table))
}

/// Records that version `it` decided every row of its decided table.
pub async fn stamp(site: &Site, it: &InstalledType) -> Result<u64, DbError> {
    let (db, table) = decided_table(site, it)?;
    stamp_table(&db, &table, it.plugin.sha256()).await
}

async fn stamp_table(db: &Db, table: &str, sha256: &str) -> Result<u64, DbError> {
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
    async fn stamping_counts_the_rows_another_version_decided() {
        for (backend, db) in test_databases().await {
            db.execute(
                "CREATE TABLE t_registry (id BIGINT PRIMARY KEY, plugin_sha256 TEXT)",
                &[],
            )
            .await
            .unwrap();
            db.execute("INSERT INTO t_registry (id) VALUES (1), (2)", &[])
                .await
                .unwrap();
            let stamp = async |sha| stamp_table(&db, "t_registry", sha).await.unwrap();
            assert_eq!(stamp("aa").await, 2, "{backend}");
            assert_eq!(stamp("aa").await, 0, "{backend}");
            assert_eq!(stamp("bb").await, 2, "{backend}");
        }
    }
}
