//! The namespace tree and the projects in it, as a type's scope decisions see
//! them through the `site.projects` import.
//!
//! Both sites build one: the primary from its own tables, a secondary from
//! the primary's replication feed.

use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;

/// A namespace (group or user), with its parent for nested groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceNode {
    pub id: i64,
    pub parent_id: Option<i64>,
}

/// A project: its namespace and repository storage shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectNode {
    pub id: i64,
    pub namespace_id: i64,
    #[serde(default = "default_shard")]
    pub repository_storage: String,
}

fn default_shard() -> String {
    "default".into()
}

/// A project as a type sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectInfo {
    pub id: i64,
    pub namespace_id: i64,
    /// The owning namespace and its ancestors, nearest first.
    pub namespace_ancestry: Vec<i64>,
    pub repository_storage: String,
}

/// Answers a type's project lookups.
pub trait ProjectLookup: Send + Sync {
    fn project(&self, id: i64) -> Option<ProjectInfo>;

    /// What [`ProjectLookup::project`] answers, without a [`ProjectInfo`]:
    /// the namespace and repository storage, with the namespace ancestry
    /// (nearest first) appended to `ancestry`. The host's `site.projects`
    /// asks this for every id of a lookup.
    fn project_into(&self, id: i64, ancestry: &mut Vec<i64>) -> Option<(i64, Cow<'_, str>)> {
        let info = self.project(id)?;
        ancestry.extend(&info.namespace_ancestry);
        Some((info.namespace_id, Cow::Owned(info.repository_storage)))
    }
}

/// An in-memory snapshot of namespaces and projects.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    // Fx, not SipHash: every `site.projects` lookup of a type walks these
    // (a few lookups per record), the keys are the primary's own ids.
    parents: HashMap<i64, Option<i64>, FxBuildHasher>,
    projects: HashMap<i64, ProjectNode, FxBuildHasher>,
}

/// Deepest namespace nesting followed; deeper (or cyclic) chains are cut.
pub const MAX_DEPTH: usize = 64;

impl Topology {
    pub fn new(
        namespaces: impl IntoIterator<Item = NamespaceNode>,
        projects: impl IntoIterator<Item = ProjectNode>,
    ) -> Topology {
        Topology {
            parents: namespaces
                .into_iter()
                .map(|n| (n.id, n.parent_id))
                .collect(),
            projects: projects.into_iter().map(|p| (p.id, p)).collect(),
        }
    }

    /// `namespace` and its ancestors, nearest first.
    pub fn ancestry(&self, namespace: i64) -> Vec<i64> {
        let mut chain = Vec::new();
        self.ancestry_into(namespace, &mut chain);
        chain
    }

    /// [`Topology::ancestry`] appended to `out`.
    fn ancestry_into(&self, namespace: i64, out: &mut Vec<i64>) {
        let start = out.len();
        out.push(namespace);
        let mut current = namespace;
        while let Some(Some(parent)) = self.parents.get(&current) {
            let chain = &out[start..];
            if chain.len() >= MAX_DEPTH || chain.contains(parent) {
                break;
            }
            out.push(*parent);
            current = *parent;
        }
    }

    /// `roots` and every namespace below them (GitLab's descendants CTE).
    pub fn with_descendants(&self, roots: &[i64]) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .parents
            .keys()
            .copied()
            .filter(|ns| self.ancestry(*ns).iter().any(|a| roots.contains(a)))
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn namespace_count(&self) -> usize {
        self.parents.len()
    }

    pub fn project_count(&self) -> usize {
        self.projects.len()
    }

    pub fn projects(&self) -> impl Iterator<Item = &ProjectNode> {
        self.projects.values()
    }
}

impl ProjectLookup for Topology {
    fn project(&self, id: i64) -> Option<ProjectInfo> {
        let node = self.projects.get(&id)?;
        Some(ProjectInfo {
            id,
            namespace_id: node.namespace_id,
            namespace_ancestry: self.ancestry(node.namespace_id),
            repository_storage: node.repository_storage.clone(),
        })
    }

    fn project_into(&self, id: i64, ancestry: &mut Vec<i64>) -> Option<(i64, Cow<'_, str>)> {
        let node = self.projects.get(&id)?;
        self.ancestry_into(node.namespace_id, ancestry);
        Some((node.namespace_id, Cow::Borrowed(&node.repository_storage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Topology {
        // 1 ─ 2 ─ 3, and 4 alone; projects 10 in 3, 11 in 4.
        Topology::new(
            [(1, None), (2, Some(1)), (3, Some(2)), (4, None)]
                .map(|(id, parent_id)| NamespaceNode { id, parent_id }),
            [(10, 3), (11, 4)].map(|(id, namespace_id)| ProjectNode {
                id,
                namespace_id,
                repository_storage: "default".into(),
            }),
        )
    }

    #[test]
    fn ancestry_is_nearest_first() {
        assert_eq!(
            tree().project(10).unwrap().namespace_ancestry,
            vec![3, 2, 1]
        );
        assert_eq!(tree().project(99), None);
    }

    #[test]
    fn project_into_appends_what_project_answers() {
        let (tree, mut ancestry) = (tree(), vec![99]);
        let (namespace, storage) = tree.project_into(10, &mut ancestry).unwrap();
        assert_eq!((namespace, &*storage), (3, "default"));
        assert_eq!(ancestry, [99, 3, 2, 1]);
        assert_eq!(tree.project_into(12, &mut ancestry), None);
        assert_eq!(ancestry, [99, 3, 2, 1]);
    }

    #[test]
    fn descendants_include_the_roots() {
        assert_eq!(tree().with_descendants(&[2]), vec![2, 3]);
    }

    #[test]
    fn cycles_do_not_hang() {
        let t = Topology::new(
            [(1, Some(2)), (2, Some(1))].map(|(id, parent_id)| NamespaceNode { id, parent_id }),
            [],
        );
        assert_eq!(t.ancestry(1), vec![1, 2]);
    }
}
