//! GitLab's selective-sync rules, shared by every project-scoped type.
//!
//! A record belongs to a site when its project is selected, by namespace
//! (the namespace or any of its ancestors is selected) or by shard, and, if
//! its blob is in object storage, when the site syncs object storage.

use crate::{site, Project, Row, RowResult, SelectiveSync, SyncSettings};
use crate::values::{at, ValueExt};

/// GitLab's `file_store` value for blobs in object storage.
pub const FILE_STORE_REMOTE: i64 = 2;

/// Whether `project` is selected by `settings` (object storage aside).
/// An unknown project (`None`) is never selected.
pub fn project_selected(settings: &SyncSettings, project: Option<&Project>) -> bool {
    let Some(project) = project else { return false };
    match &settings.selective_sync {
        SelectiveSync::Everything => true,
        SelectiveSync::Namespaces(ids) => project
            .namespace_ancestry
            .iter()
            .any(|ns| ids.contains(ns)),
        SelectiveSync::Shards(shards) => shards.iter().any(|s| *s == project.repository_storage),
    }
}

/// Whether a blob with this `file_store` is replicated: object-stored blobs
/// only when the site syncs object storage. `NULL` counts as local.
pub fn file_store_admitted(settings: &SyncSettings, file_store: Option<i64>) -> bool {
    file_store != Some(FILE_STORE_REMOTE) || settings.sync_object_storage
}

/// The whole decision for rows that carry a project id at `project_index` and
/// a `file_store` at `file_store_index` (if the type has one), looking all the
/// batch's projects up with one host call.
pub fn project_scope(
    settings: &SyncSettings,
    rows: &[Row],
    project_index: usize,
    file_store_index: Option<usize>,
) -> Vec<RowResult<bool>> {
    let ids: Vec<RowResult<i64>> = rows
        .iter()
        .map(|row| at(&row.values, project_index, "project_id")?.int("project_id"))
        .collect();
    let lookup: Vec<i64> = ids.iter().map(|id| *id.as_ref().unwrap_or(&0)).collect();
    // Unknown projects are out of scope even when everything is selected.
    let projects = site::projects(&lookup);
    rows.iter()
        .zip(ids)
        .zip(projects)
        .map(|((row, id), project)| {
            id?;
            let file_store = match file_store_index {
                Some(i) => at(&row.values, i, "file_store")?.opt_int("file_store")?,
                None => None,
            };
            Ok(file_store_admitted(settings, file_store) && project_selected(settings, project.as_ref()))
        })
        .collect()
}
