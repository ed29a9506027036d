//! The installed replicable types of a site.
//!
//! The catalog maps replicable names to loaded plugins. Readers take a
//! snapshot (`Arc`) and keep it for a whole batch, so a batch always runs on
//! one version of a type even if the catalog changes meanwhile. Calls to a
//! type ([`calls`]) and the site's hot-swap state ([`swaps`]) live beside it.

mod calls;
mod swaps;

pub use calls::{CallError, FILE_STORE_REMOTE, ISOLATION_FAILED_CALLS, Scope};
pub use swaps::{Failure, FolderTypes, SwapState};

use crate::plugin::{Column, ColumnSource, LoadedType, Row, TypeIdentity, Value};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One installed type, with the column positions the host uses often.
#[derive(Debug)]
pub struct InstalledType {
    pub plugin: LoadedType,
    pub identity: Arc<TypeIdentity>,
}

impl InstalledType {
    pub fn new(plugin: LoadedType) -> InstalledType {
        InstalledType {
            identity: plugin.identity_arc(),
            plugin,
        }
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }

    pub fn columns(&self) -> &[Column] {
        &self.identity.table.columns
    }

    /// The column with this source (blob size, file store, timestamps).
    pub fn column_for(&self, source: ColumnSource) -> Option<&Column> {
        self.identity.table.column_for(source)
    }

    /// A row of the named columns, taken from `values` (missing: `NULL`).
    pub fn row(&self, id: i64, names: &[String], values: &HashMap<String, Value>) -> Row {
        Row {
            id,
            values: names
                .iter()
                .map(|n| values.get(n).cloned().unwrap_or(Value::Null))
                .collect(),
        }
    }

    /// The path-columns row of a record.
    pub fn path_row(&self, id: i64, values: &HashMap<String, Value>) -> Row {
        self.row(id, &self.identity.path_columns, values)
    }

    /// The scope-columns row of a record.
    pub fn scope_row(&self, id: i64, values: &HashMap<String, Value>) -> Row {
        self.row(id, &self.identity.scope_columns, values)
    }

    /// Names of the writer columns, in table order (what `derive` receives).
    pub fn writer_columns(&self) -> Vec<String> {
        self.identity
            .table
            .columns_from(ColumnSource::Writer)
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Why a type could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a type named `{0}` is already installed")]
    Duplicate(String),
}

/// The installed types, swappable as a whole.
#[derive(Default)]
pub struct Catalog {
    types: ArcSwap<BTreeMap<String, Arc<InstalledType>>>,
    /// Per type: writes hold it shared, a hot swap that moves the type's
    /// blobs holds it exclusively (see [`Catalog::writing`]).
    gates: std::sync::Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Installs a new type; a second type with the same name is refused.
    pub fn install(&self, plugin: LoadedType) -> Result<Arc<InstalledType>, CatalogError> {
        let installed = Arc::new(InstalledType::new(plugin));
        let mut result = Ok(installed.clone());
        self.types.rcu(|current| {
            let mut next = (**current).clone();
            if next.contains_key(installed.name()) {
                result = Err(CatalogError::Duplicate(installed.name().to_string()));
            } else {
                result = Ok(installed.clone());
                next.insert(installed.name().to_string(), installed.clone());
            }
            next
        });
        result
    }

    /// Puts `plugin` in place of the installed type of the same name (or
    /// adds it), atomically: batches that loaded the old snapshot finish on
    /// the old version. Returns the type it replaced.
    pub fn replace(&self, plugin: LoadedType) -> (Arc<InstalledType>, Option<Arc<InstalledType>>) {
        let installed = Arc::new(InstalledType::new(plugin));
        let previous = self.types.rcu(|current| {
            let mut next = (**current).clone();
            next.insert(installed.name().to_string(), installed.clone());
            next
        });
        let old = previous.get(installed.name()).cloned();
        (installed, old)
    }

    /// Takes a type out of the catalog; workers stop calling it from their
    /// next batch on.
    pub fn remove(&self, name: &str) -> Option<Arc<InstalledType>> {
        let previous = self.types.rcu(|current| {
            let mut next = (**current).clone();
            next.remove(name);
            next
        });
        previous.get(name).cloned()
    }

    fn gate(&self, name: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.gates
            .lock()
            .expect("gates")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Held by a write to type `name` (a record and its blob): waits while
    /// a hot swap moves the type's blobs, so a write lands entirely before
    /// the move or entirely after it, under the new version.
    pub async fn writing(&self, name: &str) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.gate(name).read_owned().await
    }

    /// Held by a hot swap while it moves type `name`'s blobs: waits for the
    /// writes in progress, and holds new ones back.
    pub async fn moving(&self, name: &str) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate(name).write_owned().await
    }

    pub fn get(&self, name: &str) -> Option<Arc<InstalledType>> {
        self.types.load().get(name).cloned()
    }

    /// Every installed type, by name.
    pub fn all(&self) -> Vec<Arc<InstalledType>> {
        self.types.load().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.types.load().keys().cloned().collect()
    }
}
