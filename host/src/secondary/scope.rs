//! Feed records as a type's plugin sees them: typed column values, scope
//! decisions and blob paths.
//!
//! Why here: the consistency pass, the event cursor, the downloader and the
//! verifier all turn [`FeedRecord`]s (JSON columns) into plugin rows the same
//! way, and plugin calls are CPU-bound, so they run on a blocking thread.
//! The secondary never names a type's columns: which columns decide scope or
//! path comes from the type's identity.

use crate::catalog::InstalledType;
use crate::feed::FeedRecord;
use crate::plugin::fixture::json_to_value;
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
pub enum ScopeError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("plugin task failed: {0}")]
    Task(String),
}

/// The record's model columns as typed values, checked against the
/// identity (a column the feed omits is `NULL`).
pub fn record_values(
    it: &InstalledType,
    record: &FeedRecord,
) -> Result<HashMap<String, Value>, String> {
    let mut values = HashMap::with_capacity(it.columns().len());
    for column in it.columns() {
        let json = record
            .columns
            .get(&column.name)
            .unwrap_or(&serde_json::Value::Null);
        values.insert(column.name.clone(), json_to_value(column, json)?);
    }
    Ok(values)
}

/// Whether the primary keeps the record's file in object storage
/// (`file_store = 2`): its checksum is then the padded size, not SHA-256.
pub fn is_object_stored(it: &InstalledType, record: &FeedRecord) -> bool {
    it.column_for(ColumnSource::FileStore)
        .and_then(|c| record.columns.get(&c.name))
        .and_then(serde_json::Value::as_i64)
        == Some(FILE_STORE_REMOTE)
}

/// Rows of `columns` for each record; records whose values do not decode
/// get their error instead.
fn rows(
    it: &InstalledType,
    records: &[FeedRecord],
    columns: fn(&InstalledType, i64, &HashMap<String, Value>) -> Row,
) -> Vec<Result<Row, String>> {
    records
        .iter()
        .map(|r| record_values(it, r).map(|values| columns(it, r.id, &values)))
        .collect()
}

/// Most failed plugin calls one batch may spend isolating poisoned records
/// ([`per_record`]); past it, the batch fails as a whole.
pub const ISOLATION_FAILED_CALLS: usize = 32;

/// Runs `call` on the decodable rows (on a blocking thread) and puts each
/// answer back in its record's place.
///
/// A trap, the deadline or the memory cap fails a whole call, so one
/// poisoned record would fail every record of its batch, and a batch that
/// is retried as it is (the event cursor's, the consistency pass's) would
/// fail forever and hold back every other record (found by the fault
/// suite). So a failed call is split in halves, each tried alone, down to
/// single records: a record whose own call fails gets that error, the
/// others their answers. A plugin that fails on everything would make that
/// search cost a call per record, so after [`ISOLATION_FAILED_CALLS`]
/// failed calls the batch fails as it did before.
async fn per_record<T: Send + 'static>(
    rows: Vec<Result<Row, String>>,
    call: impl Fn(&[Row]) -> Result<Vec<Result<T, String>>, PluginError> + Send + 'static,
) -> Result<Vec<Result<T, String>>, ScopeError> {
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
        .map_err(|e| ScopeError::Task(e.to_string()))??
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
            let isolating = matches!(
                error,
                PluginError::Trap { .. } | PluginError::Timeout { .. }
            );
            if !isolating || *failures > ISOLATION_FAILED_CALLS {
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

/// The type's scope decision for each record (`Ok(true)`: this secondary
/// replicates it), in order.
pub async fn in_scope(
    it: &Arc<InstalledType>,
    scope: &Scope,
    records: &[FeedRecord],
) -> Result<Vec<Result<bool, String>>, ScopeError> {
    let rows = rows(it, records, InstalledType::scope_row);
    let plugin = it.plugin.clone();
    let settings = scope.settings.clone();
    let topology = scope.topology.clone();
    per_record(rows, move |rows| {
        plugin.in_scope(&settings, topology.clone(), rows)
    })
    .await
}

/// The type's blob path for each record, in order.
pub async fn blob_paths(
    it: &Arc<InstalledType>,
    records: &[FeedRecord],
) -> Result<Vec<Result<BlobPath, String>>, ScopeError> {
    let rows = rows(it, records, InstalledType::path_row);
    let plugin = it.plugin.clone();
    per_record(rows, move |rows| plugin.blob_paths(rows)).await
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
