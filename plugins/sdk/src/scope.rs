//! GitLab's selective-sync rules, shared by every project-scoped type.
//!
//! A record belongs to a site when its project is selected, by namespace
//! (the namespace or any of its ancestors is selected) or by shard, and, if
//! its blob is in object storage, when the site syncs object storage.

use crate::{site, Batch, Decisions, ProjectColumns, RowResult, SelectiveSync, SyncSettings};
use rustc_hash::FxHashMap;

/// GitLab's `file_store` value for blobs on local disk (`ObjectStorage::Store::LOCAL`).
pub const FILE_STORE_LOCAL: i64 = 1;
/// GitLab's `file_store` value for blobs in object storage (`ObjectStorage::Store::REMOTE`).
pub const FILE_STORE_REMOTE: i64 = 2;

/// A project as the host knows it, borrowed from a [`Projects`] lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Project<'a> {
    /// The namespace (group or user) that owns the project.
    pub namespace_id: i64,
    /// The owning namespace and all its ancestors, nearest first, ending at a root.
    pub namespace_ancestry: &'a [i64],
    /// The project's repository storage shard, for example `default`.
    pub repository_storage: &'a str,
}

/// The projects of a batch, looked up with one host call, each id once.
pub struct Projects {
    columns: ProjectColumns,
    /// Project id → its position in `columns` (the order it was asked in).
    index: FxHashMap<i64, u32>,
}

impl Projects {
    /// Looks up `ids` (repeats are asked once) through [`site::projects`].
    pub fn lookup(ids: impl IntoIterator<Item = i64>) -> Projects {
        let mut projects = Projects::asking();
        let mut unique = Vec::new();
        for id in ids {
            projects.number(id, &mut unique);
        }
        projects.answer(&unique);
        projects
    }

    /// No projects yet: [`Projects::number`] the ids, then [`Projects::answer`].
    fn asking() -> Projects {
        Projects {
            columns: ProjectColumns {
                found: Vec::new(),
                namespace_id: Vec::new(),
                storage: Vec::new(),
                storages: Vec::new(),
                ancestry: Vec::new(),
                ancestry_ends: Vec::new(),
            },
            index: FxHashMap::default(),
        }
    }

    /// `id`'s position among the distinct ids (in the order first seen),
    /// appended to `unique` when new.
    fn number(&mut self, id: i64, unique: &mut Vec<i64>) -> u32 {
        *self.index.entry(id).or_insert_with(|| {
            unique.push(id);
            (unique.len() - 1) as u32
        })
    }

    /// Asks the host for the distinct ids, once.
    fn answer(&mut self, unique: &[i64]) {
        self.columns = site::projects(unique);
    }

    /// Project `id`, `None` if the host does not know it (or it was not asked).
    pub fn get(&self, id: i64) -> Option<Project<'_>> {
        self.at(*self.index.get(&id)? as usize)
    }

    /// The project at `i` in the order asked, `None` if the host does not know it.
    fn at(&self, i: usize) -> Option<Project<'_>> {
        let c = &self.columns;
        if !*c.found.get(i)? {
            return None;
        }
        let start = match i {
            0 => 0,
            _ => *c.ancestry_ends.get(i - 1)? as usize,
        };
        let end = *c.ancestry_ends.get(i)? as usize;
        Some(Project {
            namespace_id: *c.namespace_id.get(i)?,
            namespace_ancestry: c.ancestry.get(start..end)?,
            repository_storage: c.storages.get(*c.storage.get(i)? as usize)?,
        })
    }
}

/// Whether `project` is selected by `settings` (object storage aside).
/// An unknown project (`None`) is never selected.
pub fn project_selected(settings: &SyncSettings, project: Option<Project<'_>>) -> bool {
    let Some(project) = project else { return false };
    match &settings.selective_sync {
        SelectiveSync::Everything => true,
        SelectiveSync::Namespaces(ids) => {
            project.namespace_ancestry.iter().any(|ns| ids.contains(ns))
        }
        SelectiveSync::Shards(shards) => shards.iter().any(|s| s == project.repository_storage),
    }
}

/// Whether a blob with this `file_store` is replicated: object-stored blobs
/// only when the site syncs object storage. `NULL` counts as local.
pub fn file_store_admitted(settings: &SyncSettings, file_store: Option<i64>) -> bool {
    file_store != Some(FILE_STORE_REMOTE) || settings.sync_object_storage
}

/// The whole decision for records that carry a project id in column
/// `project_index` and a `file_store` in column `file_store_index` (if the
/// type has one), looking the batch's projects up with one host call.
pub fn project_scope(
    settings: &SyncSettings,
    records: &Batch,
    project_index: usize,
    file_store_index: Option<usize>,
) -> Decisions {
    let project_ids = records.ints(project_index, "project_id");
    let file_stores = file_store_index.map(|i| records.ints(i, "file_store"));
    // Each row's project, numbered among the batch's distinct projects,
    // which are asked for with one host call.
    let mut projects = Projects::asking();
    projects.index.reserve(records.len());
    let mut unique = Vec::new();
    let of_row: Vec<Option<u32>> = (0..records.len())
        .map(|row| {
            let id = *project_ids.get(row).ok()?;
            Some(projects.number(id, &mut unique))
        })
        .collect();
    projects.answer(&unique);
    // Each project's selection, decided once; unknown projects are out of
    // scope even when everything is selected.
    let selected: Vec<bool> = (0..unique.len())
        .map(|i| project_selected(settings, projects.at(i)))
        .collect();
    records.decisions(|row| {
        project_ids.get(row)?;
        let file_store = file_store_of(file_stores.as_ref(), row)?;
        let project = of_row[row].is_some_and(|i| selected[i as usize]);
        Ok(file_store_admitted(settings, file_store) && project)
    })
}

/// The decision for a type whose records belong to no project (instance-wide
/// blobs): every record is selected, object storage aside. Records carry a
/// `file_store` in column `file_store_index`, or `None` for a type without one.
pub fn instance_scope(
    settings: &SyncSettings,
    records: &Batch,
    file_store_index: Option<usize>,
) -> Decisions {
    let file_stores = file_store_index.map(|i| records.ints(i, "file_store"));
    records.decisions(|row| {
        Ok(file_store_admitted(
            settings,
            file_store_of(file_stores.as_ref(), row)?,
        ))
    })
}

fn file_store_of(
    column: Option<&crate::batch::Col<'_, i64>>,
    row: usize,
) -> RowResult<Option<i64>> {
    match column {
        Some(c) => Ok(c.opt(row)?.copied()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColumnData, ColumnValues};

    fn settings(selective_sync: SelectiveSync, sync_object_storage: bool) -> SyncSettings {
        SyncSettings {
            selective_sync,
            sync_object_storage,
        }
    }

    fn project<'a>(ancestry: &'a [i64], storage: &'a str) -> Project<'a> {
        Project {
            namespace_id: ancestry[0],
            namespace_ancestry: ancestry,
            repository_storage: storage,
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
            assert_eq!(project_selected(&s, Some(p)), expected, "{selected:?}");
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
        assert!(project_selected(&by(&["default", "gitaly-2"]), Some(p)));
        assert!(!project_selected(&by(&["default"]), Some(p)));
    }

    #[test]
    fn unknown_projects_are_never_selected() {
        assert!(!project_selected(
            &settings(SelectiveSync::Everything, true),
            None
        ));
        assert!(project_selected(
            &settings(SelectiveSync::Everything, false),
            Some(project(&[1], "default"))
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
    fn instance_scope_checks_the_file_store_of_each_record() {
        let off = settings(SelectiveSync::Namespaces(vec![]), false);
        let records = Batch {
            ids: vec![1, 2, 3],
            columns: vec![ColumnData {
                values: ColumnValues::Int(vec![FILE_STORE_LOCAL, FILE_STORE_REMOTE, 0]),
                nulls: vec![2],
            }],
        };
        let answers = instance_scope(&off, &records, Some(0));
        assert_eq!(answers.in_scope, [true, false, true]);
        assert!(answers.errors.is_empty());
        let texts = Batch {
            ids: vec![1],
            columns: vec![ColumnData {
                values: ColumnValues::Text(vec!["2".into()]),
                nulls: vec![],
            }],
        };
        let answers = instance_scope(&off, &texts, Some(0));
        assert!(answers.errors[0].message.contains("file_store"));
        let answers = instance_scope(&off, &texts, Some(3));
        assert!(answers.errors[0].message.contains("missing column"));
        assert_eq!(instance_scope(&off, &records, None).in_scope, [true; 3]);
    }

    #[test]
    fn projects_are_read_from_the_columns() {
        let columns = ProjectColumns {
            found: vec![true, false, true],
            namespace_id: vec![3, 0, 5],
            storage: vec![1, 0, 0],
            storages: vec!["default".into(), "gitaly-2".into()],
            ancestry: vec![3, 2, 1, 5],
            ancestry_ends: vec![3, 3, 4],
        };
        let projects = Projects {
            columns,
            index: [(10, 0), (20, 1), (30, 2)].into_iter().collect(),
        };
        assert_eq!(projects.get(10), Some(project(&[3, 2, 1], "gitaly-2")));
        assert_eq!(projects.get(20), None);
        assert_eq!(projects.get(30), Some(project(&[5], "default")));
        assert_eq!(projects.get(99), None);
    }
}
