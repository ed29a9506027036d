//! GitLab's selective-sync rules, shared by every project-scoped type.
//!
//! A record belongs to a site when its project is selected, by namespace
//! (the namespace or any of its ancestors is selected) or by shard, and, if
//! its blob is in object storage, when the site syncs object storage.

use crate::values::{at, ValueExt};
use crate::{site, Project, Row, RowResult, SelectiveSync, SyncSettings};

/// GitLab's `file_store` value for blobs on local disk (`ObjectStorage::Store::LOCAL`).
pub const FILE_STORE_LOCAL: i64 = 1;
/// GitLab's `file_store` value for blobs in object storage (`ObjectStorage::Store::REMOTE`).
pub const FILE_STORE_REMOTE: i64 = 2;

/// Whether `project` is selected by `settings` (object storage aside).
/// An unknown project (`None`) is never selected.
pub fn project_selected(settings: &SyncSettings, project: Option<&Project>) -> bool {
    let Some(project) = project else { return false };
    match &settings.selective_sync {
        SelectiveSync::Everything => true,
        SelectiveSync::Namespaces(ids) => {
            project.namespace_ancestry.iter().any(|ns| ids.contains(ns))
        }
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
            Ok(file_store_admitted(settings, file_store)
                && project_selected(settings, project.as_ref()))
        })
        .collect()
}

/// The decision for a type whose records belong to no project (instance-wide
/// blobs): every record is selected, object storage aside. Rows carry a
/// `file_store` at `file_store_index`, or `None` for a type without one.
pub fn instance_scope(
    settings: &SyncSettings,
    rows: &[Row],
    file_store_index: Option<usize>,
) -> Vec<RowResult<bool>> {
    rows.iter()
        .map(|row| {
            let file_store = match file_store_index {
                Some(i) => at(&row.values, i, "file_store")?.opt_int("file_store")?,
                None => None,
            };
            Ok(file_store_admitted(settings, file_store))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn settings(selective_sync: SelectiveSync, sync_object_storage: bool) -> SyncSettings {
        SyncSettings {
            selective_sync,
            sync_object_storage,
        }
    }

    fn project(ancestry: &[i64], storage: &str) -> Project {
        Project {
            id: 10,
            namespace_id: ancestry[0],
            namespace_ancestry: ancestry.to_vec(),
            repository_storage: storage.into(),
        }
    }

    #[test]
    fn namespaces_select_their_descendants_only() {
        // Project in 3, whose ancestors are 2 and the root 1.
        let p = project(&[3, 2, 1], "default");
        for (selected, expected) in [
            (vec![1], true),
            (vec![2], true),
            (vec![3], true),
            (vec![4], false),
            (vec![], false),
        ] {
            let s = settings(SelectiveSync::Namespaces(selected.clone()), false);
            assert_eq!(project_selected(&s, Some(&p)), expected, "{selected:?}");
        }
    }

    #[test]
    fn shards_select_by_repository_storage() {
        let p = project(&[1], "gitaly-2");
        let by = |shards: &[&str]| {
            settings(
                SelectiveSync::Shards(shards.iter().map(|s| s.to_string()).collect()),
                false,
            )
        };
        assert!(project_selected(&by(&["default", "gitaly-2"]), Some(&p)));
        assert!(!project_selected(&by(&["default"]), Some(&p)));
    }

    #[test]
    fn unknown_projects_are_never_selected() {
        assert!(!project_selected(
            &settings(SelectiveSync::Everything, true),
            None
        ));
        assert!(project_selected(
            &settings(SelectiveSync::Everything, false),
            Some(&project(&[1], "default"))
        ));
    }

    #[test]
    fn object_storage_only_with_sync_object_storage() {
        let off = settings(SelectiveSync::Everything, false);
        let on = settings(SelectiveSync::Everything, true);
        assert!(file_store_admitted(&off, Some(FILE_STORE_LOCAL)));
        assert!(file_store_admitted(&off, None));
        assert!(!file_store_admitted(&off, Some(FILE_STORE_REMOTE)));
        assert!(file_store_admitted(&on, Some(FILE_STORE_REMOTE)));
    }

    #[test]
    fn instance_scope_checks_the_file_store_of_each_row() {
        let off = settings(SelectiveSync::Namespaces(vec![]), false);
        let rows = [
            Row {
                id: 1,
                values: vec![Value::Int(FILE_STORE_LOCAL)],
            },
            Row {
                id: 2,
                values: vec![Value::Int(FILE_STORE_REMOTE)],
            },
            Row {
                id: 3,
                values: vec![Value::Text("2".into())],
            },
            Row {
                id: 4,
                values: vec![],
            },
        ];
        let answers = instance_scope(&off, &rows, Some(0));
        assert_eq!(answers[0], Ok(true));
        assert_eq!(answers[1], Ok(false));
        assert!(answers[2].as_ref().unwrap_err().contains("file_store"));
        assert!(answers[3].as_ref().unwrap_err().contains("missing column"));
        assert_eq!(instance_scope(&off, &rows, None), vec![Ok(true); 4]);
    }
}
