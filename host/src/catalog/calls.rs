//! Calls to an installed type, as every role makes them: records (feed or
//! model rows) turned into plugin rows, the call run on a blocking thread,
//! and a trapping batch bisected so that one poisoned record fails alone.
//!
//! The primary (ingest, verification, swap plans) and the secondary
//! (consistency, events, downloads, verification) call a type through these
//! methods; none of them names a type's columns: which columns decide scope
//! or path comes from the type's identity.

use super::InstalledType;
use crate::feed::FeedRecord;
use crate::plugin::value::json_to_value;
use crate::plugin::{BlobPath, ColumnSource, PluginError, Row, SyncSettings, Value};
use crate::topology::Topology;
use std::collections::HashMap;
use std::sync::Arc;

/// GitLab's `file_store` value for a file in object storage.
pub const FILE_STORE_REMOTE: i64 = 2;

/// What a secondary replicates: its selective-sync settings (from the
/// primary's `GET /api/v4/geo/node`) and the namespace tree they refer to.
#[derive(Debug, Clone)]
pub struct Scope {
    pub settings: SyncSettings,
    pub topology: Arc<Topology>,
}

/// A plugin call that could not run at all (as opposed to one record's error).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("plugin task failed: {0}")]
    Task(String),
}

/// Most failed plugin calls one batch may spend isolating poisoned records;
/// past it, the batch fails as a whole.
pub const ISOLATION_FAILED_CALLS: usize = 32;

impl InstalledType {
    /// A record's model columns as typed values, checked against the
    /// identity. A column the record does not carry takes its default (or
    /// `NULL`): a version that adds a column sees the live records as they
    /// will be once the column exists.
    pub fn values_of(&self, record: &FeedRecord) -> Result<HashMap<String, Value>, String> {
        let mut values = HashMap::with_capacity(self.columns().len());
        for column in self.columns() {
            let value = match record.columns.get(&column.name) {
                Some(json) => json_to_value(column, json)?,
                None => column.default_value.clone().unwrap_or(Value::Null),
            };
            values.insert(column.name.clone(), value);
        }
        Ok(values)
    }

    /// Whether the primary keeps the record's file in object storage
    /// (`file_store = 2`): its checksum is then the padded size, not SHA-256.
    pub fn is_object_stored(&self, record: &FeedRecord) -> bool {
        self.column_for(ColumnSource::FileStore)
            .and_then(|c| record.columns.get(&c.name))
            .and_then(serde_json::Value::as_i64)
            == Some(FILE_STORE_REMOTE)
    }

    /// Rows of `columns` for each record; records whose values do not decode
    /// get their error instead.
    fn rows_of(
        &self,
        records: &[FeedRecord],
        columns: fn(&InstalledType, i64, &HashMap<String, Value>) -> Row,
    ) -> Vec<Result<Row, String>> {
        records
            .iter()
            .map(|r| self.values_of(r).map(|values| columns(self, r.id, &values)))
            .collect()
    }

    /// The type's scope decision for each record (`Ok(true)`: a site with
    /// `scope` replicates it), in order.
    pub async fn in_scope(
        &self,
        scope: &Scope,
        records: &[FeedRecord],
    ) -> Result<Vec<Result<bool, String>>, CallError> {
        let rows = self.rows_of(records, InstalledType::scope_row);
        let plugin = self.plugin.clone();
        let settings = scope.settings.clone();
        let topology = scope.topology.clone();
        per_record(rows, move |rows| {
            plugin.in_scope(&settings, topology.clone(), rows)
        })
        .await
    }

    /// The type's blob path for each record, in order.
    pub async fn blob_paths(
        &self,
        records: &[FeedRecord],
    ) -> Result<Vec<Result<BlobPath, String>>, CallError> {
        self.blob_paths_of_rows(self.rows_of(records, InstalledType::path_row))
            .await
    }

    /// The blob path of each row of path columns (or the row's own error),
    /// in order.
    pub async fn blob_paths_of_rows(
        &self,
        rows: Vec<Result<Row, String>>,
    ) -> Result<Vec<Result<BlobPath, String>>, CallError> {
        let plugin = self.plugin.clone();
        per_record(rows, move |rows| plugin.blob_paths(rows)).await
    }
}

/// Runs `call` on the decodable rows (on a blocking thread) and puts each
/// answer back in its record's place.
///
/// A trap, the deadline or the memory cap fails a whole call, so one
/// poisoned record would fail every record of its batch, and a batch that
/// is retried as it is (the event cursor's, the consistency pass's, the
/// primary's verification) would fail forever and hold back every other
/// record (found by the fault suite). So a failed call is split in halves,
/// each tried alone, down to single records: a record whose own call fails
/// gets that error, the others their answers. A plugin that fails on
/// everything would make that search cost a call per record, so after
/// [`ISOLATION_FAILED_CALLS`] failed calls the batch fails as it did before.
async fn per_record<T: Send + 'static>(
    rows: Vec<Result<Row, String>>,
    call: impl Fn(&[Row]) -> Result<Vec<Result<T, String>>, PluginError> + Send + 'static,
) -> Result<Vec<Result<T, String>>, CallError> {
    let good: Vec<Row> = rows
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let answers = if good.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || {
            let mut failures = 0;
            isolate(&good, &call, &mut failures)
        })
        .await
        .map_err(|e| CallError::Task(e.to_string()))??
    };
    let mut answers = answers.into_iter();
    Ok(rows
        .into_iter()
        .map(|row| match row {
            Ok(_) => answers
                .next()
                .unwrap_or_else(|| Err("the plugin gave no answer".into())),
            Err(error) => Err(error),
        })
        .collect())
}

/// [`per_record`]'s search: `call` on `rows`, or on each half after a
/// failure, counting failed calls in `failures`.
fn isolate<T>(
    rows: &[Row],
    call: &dyn Fn(&[Row]) -> Result<Vec<Result<T, String>>, PluginError>,
    failures: &mut usize,
) -> Result<Vec<Result<T, String>>, PluginError> {
    match call(rows) {
        Ok(answers) => Ok(answers),
        Err(error) => {
            *failures += 1;
            if !error.is_isolable() || *failures > ISOLATION_FAILED_CALLS {
                return Err(error);
            }
            if rows.len() == 1 {
                tracing::warn!(id = rows[0].id, %error, "the plugin fails on this record alone");
                return Ok(vec![Err(format!(
                    "the plugin failed on this record: {error}"
                ))]);
            }
            let (left, right) = rows.split_at(rows.len() / 2);
            let mut answers = isolate(left, call, failures)?;
            answers.extend(isolate(right, call, failures)?);
            Ok(answers)
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: i64) -> Vec<Row> {
        (1..=n).map(|id| Row { id, values: vec![] }).collect()
    }

    /// A plugin call that traps whenever its batch holds a poisoned id.
    fn call(
        poisoned: &'static [i64],
    ) -> impl Fn(&[Row]) -> Result<Vec<Result<i64, String>>, PluginError> {
        move |rows: &[Row]| {
            if rows.iter().any(|r| poisoned.contains(&r.id)) {
                Err(PluginError::Trap {
                    plugin: "t".into(),
                    message: "unreachable".into(),
                })
            } else {
                Ok(rows.iter().map(|r| Ok(r.id * 10)).collect())
            }
        }
    }

    #[test]
    fn a_poisoned_record_fails_alone() {
        let mut failures = 0;
        let answers = isolate(&rows(100), &call(&[37, 80]), &mut failures).unwrap();
        assert_eq!(answers.len(), 100);
        for (i, answer) in answers.iter().enumerate() {
            let id = i as i64 + 1;
            if id == 37 || id == 80 {
                assert!(answer.as_ref().unwrap_err().contains("unreachable"), "{id}");
            } else {
                assert_eq!(answer, &Ok(id * 10));
            }
        }
        assert!(failures <= ISOLATION_FAILED_CALLS);
    }

    #[test]
    fn a_plugin_failing_on_everything_fails_the_batch_after_the_budget() {
        let all: &'static [i64] = Box::leak((1..=10_000).collect::<Vec<i64>>().into_boxed_slice());
        let mut failures = 0;
        let result = isolate(&rows(10_000), &call(all), &mut failures);
        assert!(matches!(result, Err(PluginError::Trap { .. })));
        assert_eq!(failures, ISOLATION_FAILED_CALLS + 1);
    }

    #[test]
    fn other_errors_are_not_searched() {
        let mut failures = 0;
        let result = isolate(
            &rows(8),
            &|_: &[Row]| -> Result<Vec<Result<i64, String>>, PluginError> {
                Err(PluginError::Instantiate {
                    plugin: "t".into(),
                    message: "no".into(),
                })
            },
            &mut failures,
        );
        assert!(matches!(result, Err(PluginError::Instantiate { .. })));
        assert_eq!(failures, 1);
    }
}
