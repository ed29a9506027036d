//! `geohost plugin test`: run a type over fixture data, print one JSON object
//! per record.
//!
//! The fixture file:
//!
//! ```json
//! {"scope": {"selective_sync_type": "namespaces", "namespace_ids": [1],
//!            "shards": [], "sync_object_storage": false},
//!  "namespaces": [{"id": 1, "parent_id": null}],
//!  "projects": [{"id": 10, "namespace_id": 1, "repository_storage": "default"}],
//!  "records": [{"id": 1, "project_id": 10, "channel": "stable", "file_store": 1}]}
//! ```
//!
//! Each record gives model columns by name. Derived columns it omits are
//! computed with the type's `derive`, as the primary does on create; omitted
//! writer columns take their default (or `NULL`). The answer per record is
//! `{"id", "path", "in_scope"}` or `{"id", "error"}`. A record may also carry
//! `expect`, what its answer must be, and `changed`, why that answer differs
//! from earlier versions' (a test vector, see [`super::vectors`]).

use super::value::json_to_value;
use super::{Column, ColumnSource, LoadedType, Row, SelectiveSync, SyncSettings, Value};
use crate::topology::{NamespaceNode, ProjectNode, Topology};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub scope: ScopeSpec,
    #[serde(default)]
    pub namespaces: Vec<NamespaceNode>,
    #[serde(default)]
    pub projects: Vec<ProjectNode>,
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A site's selective-sync settings, as GitLab's API spells them.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ScopeSpec {
    pub selective_sync_type: Option<String>,
    pub namespace_ids: Vec<i64>,
    pub shards: Vec<String>,
    pub sync_object_storage: bool,
}

impl ScopeSpec {
    /// The settings a type sees. In namespaces mode the type receives the
    /// selected namespaces and checks ancestry itself.
    pub fn to_settings(&self) -> Result<SyncSettings, String> {
        let selective_sync = match self.selective_sync_type.as_deref() {
            None | Some("") => SelectiveSync::Everything,
            Some("namespaces") => SelectiveSync::Namespaces(self.namespace_ids.clone()),
            Some("shards") => SelectiveSync::Shards(self.shards.clone()),
            Some(other) => {
                return Err(format!(
                    "selective_sync_type {other:?} is not one of \"namespaces\", \"shards\" or null"
                ));
            }
        };
        Ok(SyncSettings {
            selective_sync,
            sync_object_storage: self.sync_object_storage,
        })
    }
}

/// A record with every column filled: its id and values by name.
type Prepared = (i64, HashMap<String, Value>);
/// A record refused before the type saw it: its id (as given) and why.
type Refused = (serde_json::Value, String);

/// Runs `loaded` over the fixture: one JSON value per record, in order.
pub fn run(loaded: &LoadedType, fixture: &Fixture) -> anyhow::Result<Vec<serde_json::Value>> {
    let settings = fixture.scope.to_settings().map_err(anyhow::Error::msg)?;
    let topology = Arc::new(Topology::new(
        fixture.namespaces.clone(),
        fixture.projects.clone(),
    ));
    let identity = loaded.identity();
    let table = &identity.table;

    // Every record's full column list, derived columns computed where missing.
    let mut full: Vec<Result<Prepared, Refused>> = Vec::new();
    let mut to_derive = Vec::new();
    for (index, record) in fixture.records.iter().enumerate() {
        let id = record.get("id").cloned().unwrap_or(json!(index + 1));
        match record_values(table.columns.as_slice(), record) {
            Ok(values) => {
                let numeric = id.as_i64().unwrap_or(index as i64 + 1);
                let needs_derive = table
                    .columns_from(ColumnSource::Derived)
                    .any(|c| !record.contains_key(&c.name));
                if needs_derive {
                    to_derive.push(full.len());
                }
                full.push(Ok((numeric, values)));
            }
            Err(error) => full.push(Err((id, error))),
        }
    }
    if !to_derive.is_empty() {
        let rows: Vec<Row> = to_derive
            .iter()
            .map(|&i| {
                let (id, values) = full[i].as_ref().expect("only Ok rows are derived");
                row_of(*id, values, table.columns_from(ColumnSource::Writer))
            })
            .collect();
        let answers = loaded.derive(&rows)?;
        for (&i, answer) in to_derive.iter().zip(answers) {
            let (id, mut values) = full[i].clone().expect("only Ok rows are derived");
            match answer {
                Ok(derived) => {
                    for (column, value) in table.columns_from(ColumnSource::Derived).zip(derived) {
                        values.entry(column.name.clone()).or_insert(value);
                    }
                    full[i] = Ok((id, values));
                }
                Err(error) => full[i] = Err((json!(id), error)),
            }
        }
    }

    // Lengths are checked once derive has had its say, as on the primary.
    for entry in full.iter_mut() {
        if let Ok((id, values)) = entry
            && let Err(error) = table.columns.iter().try_for_each(|c| {
                values
                    .get(&c.name)
                    .map_or(Ok(()), |value| super::check_length(c, value))
            })
        {
            *entry = Err((json!(*id), error));
        }
    }
    let ok: Vec<usize> = (0..full.len()).filter(|&i| full[i].is_ok()).collect();
    let column_refs = |names: &[String]| -> Vec<&Column> {
        names
            .iter()
            .map(|n| table.column(n).expect("checked identity"))
            .collect()
    };
    let path_columns = column_refs(&identity.path_columns);
    let scope_columns = column_refs(&identity.scope_columns);
    let rows_for = |columns: &[&Column]| -> Vec<Row> {
        ok.iter()
            .map(|&i| {
                let (id, values) = full[i].as_ref().expect("filtered");
                row_of(*id, values, columns.iter().copied())
            })
            .collect()
    };
    let paths = loaded.blob_paths(&rows_for(&path_columns))?;
    let scopes = loaded.in_scope(&settings, topology, &rows_for(&scope_columns))?;

    let mut answers: Vec<serde_json::Value> = full
        .iter()
        .map(|entry| match entry {
            Err((id, error)) => json!({"id": id, "error": error}),
            Ok(_) => serde_json::Value::Null,
        })
        .collect();
    for ((&i, path), scope) in ok.iter().zip(paths).zip(scopes) {
        let id = full[i].as_ref().expect("filtered").0;
        answers[i] = match (path, scope) {
            (Ok(path), Ok(in_scope)) => {
                json!({"id": id, "path": path.as_str(), "in_scope": in_scope})
            }
            (Err(error), _) | (_, Err(error)) => json!({"id": id, "error": error}),
        };
    }
    Ok(answers)
}

fn row_of<'a>(
    id: i64,
    values: &HashMap<String, Value>,
    columns: impl Iterator<Item = &'a Column>,
) -> Row {
    Row {
        id,
        values: columns
            .map(|c| values.get(&c.name).cloned().unwrap_or(Value::Null))
            .collect(),
    }
}

/// The record's columns as typed values; missing columns take their default.
fn record_values(
    columns: &[Column],
    record: &serde_json::Map<String, serde_json::Value>,
) -> Result<HashMap<String, Value>, String> {
    for key in record.keys() {
        let vector_key = ["id", "expect", "changed"].contains(&key.as_str());
        if !vector_key && !columns.iter().any(|c| &c.name == key) {
            return Err(format!("unknown column `{key}`"));
        }
    }
    let mut values = HashMap::new();
    for column in columns {
        let value = match record.get(&column.name) {
            Some(json) => json_to_value(column, json)?,
            None if column.source == ColumnSource::Derived => continue,
            None => column.default_value.clone().unwrap_or(Value::Null),
        };
        values.insert(column.name.clone(), value);
    }
    Ok(values)
}
