//! Namespaces (groups, nested) and projects on the primary: what selective
//! sync selects by.

use crate::db::{Arg, Db, DbError};
use crate::topology::{NamespaceNode, ProjectNode, Topology};
use serde::{Deserialize, Serialize};

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub parent_id: Option<i64>,
}

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub namespace_id: i64,
    pub repository_storage: String,
}

/// Why a namespace or project change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn check_name(what: &str, value: &str) -> Result<(), TopologyError> {
    if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        return Err(TopologyError::Invalid(format!(
            "{what} must be 1 to 255 printable characters"
        )));
    }
    Ok(())
}

/// GitLab's path rule (`Gitlab::PathRegex`): ASCII letters, digits, `_`,
/// `-` and `.`, starting with a letter, digit or `_`, not ending in `.`,
/// `.git` or `.atom`. A path names a URL segment: `..`, `/` or a NUL never
/// gets in.
fn check_path(value: &str) -> Result<(), TopologyError> {
    let valid = !value.is_empty()
        && value.len() <= 255
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && !value.ends_with('.')
        && !value.ends_with(".git")
        && !value.ends_with(".atom");
    if valid {
        Ok(())
    } else {
        Err(TopologyError::Invalid(format!(
            "path {value:?} can contain only letters, digits, '_', '-' and '.', \
             cannot start with '-' or '.', nor end in '.', '.git' or '.atom'"
        )))
    }
}

/// The path a namespace or project gets when only its name is given: the
/// name in lowercase, every character GitLab's path rule refuses a `-`.
pub fn default_path(name: &str) -> String {
    let path: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let path = path.trim_start_matches(['-', '.']).trim_end_matches('.');
    if path.is_empty() {
        "_".to_string()
    } else {
        path.to_string()
    }
}

pub async fn create_namespace(
    db: &Db,
    name: &str,
    path: &str,
    parent_id: Option<i64>,
) -> Result<Namespace, TopologyError> {
    check_name("name", name)?;
    check_path(path)?;
    if let Some(parent) = parent_id
        && get_namespace(db, parent).await?.is_none()
    {
        return Err(TopologyError::NotFound(format!(
            "parent namespace {parent}"
        )));
    }
    let now = Db::now();
    let id = db
        .fetch_one(
            "INSERT INTO namespaces (name, path, parent_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) RETURNING id",
            &[name.into(), path.into(), Arg::I64(parent_id), now.into()],
        )
        .await?
        .i64("id")?;
    Ok(Namespace {
        id,
        name: name.into(),
        path: path.into(),
        parent_id,
    })
}

pub async fn get_namespace(db: &Db, id: i64) -> Result<Option<Namespace>, TopologyError> {
    let row = db
        .fetch_optional(
            "SELECT id, name, path, parent_id FROM namespaces WHERE id = $1",
            &[id.into()],
        )
        .await?;
    Ok(row
        .map(|r| -> Result<_, DbError> {
            Ok(Namespace {
                id: r.i64("id")?,
                name: r.text("name")?,
                path: r.text("path")?,
                parent_id: r.opt_i64("parent_id")?,
            })
        })
        .transpose()?)
}

/// Deletes an empty namespace (no child namespaces, no projects).
pub async fn delete_namespace(db: &Db, id: i64) -> Result<(), TopologyError> {
    let children = db
        .fetch_one(
            "SELECT (SELECT COUNT(*) FROM namespaces WHERE parent_id = $1) + (SELECT COUNT(*) FROM projects WHERE namespace_id = $1) AS n",
            &[id.into()],
        )
        .await?
        .i64("n")?;
    if children > 0 {
        return Err(TopologyError::Invalid(format!(
            "namespace {id} still has child namespaces or projects"
        )));
    }
    delete(db, "namespaces", "namespace", id).await
}

pub async fn create_project(
    db: &Db,
    name: &str,
    path: &str,
    namespace_id: i64,
    repository_storage: &str,
) -> Result<Project, TopologyError> {
    check_name("name", name)?;
    check_path(path)?;
    check_name("repository_storage", repository_storage)?;
    if get_namespace(db, namespace_id).await?.is_none() {
        return Err(TopologyError::NotFound(format!("namespace {namespace_id}")));
    }
    let now = Db::now();
    let id = db
        .fetch_one(
            "INSERT INTO projects (name, path, namespace_id, repository_storage, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
            &[name.into(), path.into(), namespace_id.into(), repository_storage.into(), now.into()],
        )
        .await?
        .i64("id")?;
    Ok(Project {
        id,
        name: name.into(),
        path: path.into(),
        namespace_id,
        repository_storage: repository_storage.into(),
    })
}

pub async fn get_project(db: &Db, id: i64) -> Result<Option<Project>, TopologyError> {
    let row = db
        .fetch_optional(
            "SELECT id, name, path, namespace_id, repository_storage FROM projects WHERE id = $1",
            &[id.into()],
        )
        .await?;
    Ok(row
        .map(|r| -> Result<_, DbError> {
            Ok(Project {
                id: r.i64("id")?,
                name: r.text("name")?,
                path: r.text("path")?,
                namespace_id: r.i64("namespace_id")?,
                repository_storage: r.text("repository_storage")?,
            })
        })
        .transpose()?)
}

pub async fn delete_project(db: &Db, id: i64) -> Result<(), TopologyError> {
    delete(db, "projects", "project", id).await
}

/// Deletes row `id` of `table`; a `what` that is not there is not found.
async fn delete(db: &Db, table: &str, what: &str, id: i64) -> Result<(), TopologyError> {
    let deleted = db
        .execute(&format!("DELETE FROM {table} WHERE id = $1"), &[id.into()])
        .await?;
    if deleted == 0 {
        return Err(TopologyError::NotFound(format!("{what} {id}")));
    }
    Ok(())
}

/// Every namespace and project.
pub async fn snapshot(db: &Db) -> Result<crate::feed::TopologySnapshot, DbError> {
    let namespaces = db
        .fetch_map(
            "SELECT id, parent_id FROM namespaces ORDER BY id",
            &[],
            |r| {
                Ok(NamespaceNode {
                    id: r.i64("id")?,
                    parent_id: r.opt_i64("parent_id")?,
                })
            },
        )
        .await?;
    let projects = db
        .fetch_map(
            "SELECT id, namespace_id, repository_storage FROM projects ORDER BY id",
            &[],
            |r| {
                Ok(ProjectNode {
                    id: r.i64("id")?,
                    namespace_id: r.i64("namespace_id")?,
                    repository_storage: r.text("repository_storage")?,
                })
            },
        )
        .await?;
    Ok(crate::feed::TopologySnapshot {
        namespaces,
        projects,
    })
}

/// The topology as a lookup for scope decisions.
pub async fn load(db: &Db) -> Result<Topology, DbError> {
    let snapshot = snapshot(db).await?;
    Ok(Topology::new(snapshot.namespaces, snapshot.projects))
}
