//! Reading a [`Batch`] column by column, and answering record by record.
//!
//! The host passes a batch as one typed list per column the function asked
//! for (`geohost:replicable@0.2`). A type reads each column once, typed and
//! named ([`Batch::ints`], [`Batch::texts`], …), then answers with one
//! closure per record ([`Batch::paths`], [`Batch::decisions`],
//! [`Batch::derived`]); an `Err` from the closure refuses that record alone.
//!
//! ```ignore
//! fn blob_paths(records: Batch) -> Paths {
//!     let keys = records.texts(0, "object_storage_key");
//!     let files = records.texts(1, "file");
//!     records.paths(|row| Ok([keys.get(row)?.as_str(), files.get(row)?].join("/")))
//! }
//! ```

use crate::{
    Batch, ColumnData, ColumnValues, Decisions, Derived, Paths, RowError, RowResult, Value,
};

/// One typed column of a batch. Reading a record's value fails, naming the
/// column, when the batch lacks the column, holds another type there, or
/// the value is `NULL` (use [`Col::opt`] where `NULL` is allowed).
pub struct Col<'a, E> {
    name: &'a str,
    values: Result<&'a [E], String>,
    /// `nulls[row]`, when the column has any.
    nulls: Option<Vec<bool>>,
}

impl<'a, E> Col<'a, E> {
    /// The value of record `row`.
    pub fn get(&self, row: usize) -> RowResult<&'a E> {
        self.opt(row)?
            .ok_or_else(|| format!("column `{}` is NULL", self.name))
    }

    /// The value of record `row`, `None` for `NULL`.
    pub fn opt(&self, row: usize) -> RowResult<Option<&'a E>> {
        let values: &'a [E] = self.values.as_ref().map_err(Clone::clone)?;
        if self
            .nulls
            .as_ref()
            .is_some_and(|n| n.get(row) == Some(&true))
        {
            return Ok(None);
        }
        values
            .get(row)
            .map(Some)
            .ok_or_else(|| format!("column `{}` has no value for record {row}", self.name))
    }
}

macro_rules! accessor {
    ($(#[$doc:meta])* $method:ident, $variant:ident, $element:ty, $what:literal) => {
        $(#[$doc])*
        pub fn $method<'a>(&'a self, index: usize, name: &'a str) -> Col<'a, $element> {
            self.column(index, name, $what, |values| match values {
                ColumnValues::$variant(v) => Some(v.as_slice()),
                _ => None,
            })
        }
    };
}

impl Batch {
    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    accessor!(
        /// Column `index` (named `name` in errors) of an integer column.
        ints, Int, i64, "integers"
    );
    accessor!(
        /// Column `index` of a text column.
        texts, Text, String, "text"
    );
    accessor!(
        /// Column `index` of a boolean column.
        booleans, Boolean, bool, "booleans"
    );
    accessor!(
        /// Column `index` of a timestamp column (µs since the Unix epoch).
        timestamps, Timestamp, i64, "timestamps"
    );
    accessor!(
        /// Column `index` of a binary column.
        binaries, Binary, Vec<u8>, "bytes"
    );

    fn column<'a, E>(
        &'a self,
        index: usize,
        name: &'a str,
        what: &str,
        typed: impl FnOnce(&'a ColumnValues) -> Option<&'a [E]>,
    ) -> Col<'a, E> {
        let Some(ColumnData { values, nulls }) = self.columns.get(index) else {
            return Col {
                name,
                values: Err(format!(
                    "the batch is missing column `{name}` (position {index})"
                )),
                nulls: None,
            };
        };
        let values = typed(values)
            .ok_or_else(|| format!("column `{name}` must hold {what}, got {}", kind(values)));
        let nulls = (!nulls.is_empty()).then(|| {
            let mut flags = vec![false; self.len()];
            for &n in nulls {
                if let Some(flag) = flags.get_mut(n as usize) {
                    *flag = true;
                }
            }
            flags
        });
        Col {
            name,
            values,
            nulls,
        }
    }

    /// `blob-paths`' answer: `path(row)` for each record.
    pub fn paths(&self, mut path: impl FnMut(usize) -> RowResult<String>) -> Paths {
        let mut errors = Vec::new();
        let paths = (0..self.len())
            .map(|row| path(row).unwrap_or_else(|e| refuse(&mut errors, row, e, String::new())))
            .collect();
        Paths { paths, errors }
    }

    /// `in-scope`'s answer: `decide(row)` for each record.
    pub fn decisions(&self, mut decide: impl FnMut(usize) -> RowResult<bool>) -> Decisions {
        let mut errors = Vec::new();
        let in_scope = (0..self.len())
            .map(|row| decide(row).unwrap_or_else(|e| refuse(&mut errors, row, e, false)))
            .collect();
        Decisions { in_scope, errors }
    }

    /// `derive`'s answer: the derived columns of each record, in table order
    /// (`Value::Null` for `NULL`). Each column's type is that of its first
    /// non-null value; a record whose value has another type is refused.
    pub fn derived(&self, mut derive: impl FnMut(usize) -> RowResult<Vec<Value>>) -> Derived {
        let mut errors = Vec::new();
        let rows: Vec<Option<Vec<Value>>> = (0..self.len())
            .map(|row| match derive(row) {
                Ok(values) => Some(values),
                Err(e) => refuse(&mut errors, row, e, None),
            })
            .collect();
        let width = rows.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let mut columns: Vec<ColumnData> = (0..width)
            .map(|c| {
                let first = rows
                    .iter()
                    .flatten()
                    .filter_map(|r| r.get(c))
                    .find(|v| !matches!(v, Value::Null));
                ColumnData {
                    values: empty_like(first),
                    nulls: Vec::new(),
                }
            })
            .collect();
        for (row, values) in rows.into_iter().enumerate() {
            let Some(values) = values else {
                for column in &mut columns {
                    push_placeholder(column, row);
                }
                continue;
            };
            if values.len() != width {
                errors.push(RowError {
                    row: row as u32,
                    message: format!("derive gave {} values, other records {width}", values.len()),
                });
            }
            for (c, column) in columns.iter_mut().enumerate() {
                match values.get(c).cloned().unwrap_or(Value::Null) {
                    Value::Null => push_placeholder(column, row),
                    value => {
                        if let Err(e) = push(&mut column.values, value) {
                            errors.push(RowError {
                                row: row as u32,
                                message: format!("derived column {}: {e}", c + 1),
                            });
                            push_placeholder(column, row);
                        }
                    }
                }
            }
        }
        errors.sort_by_key(|e| e.row);
        errors.dedup_by_key(|e| e.row);
        Derived { columns, errors }
    }
}

fn refuse<T>(errors: &mut Vec<RowError>, row: usize, message: String, placeholder: T) -> T {
    errors.push(RowError {
        row: row as u32,
        message,
    });
    placeholder
}

fn kind(values: &ColumnValues) -> &'static str {
    match values {
        ColumnValues::Int(_) => "integers",
        ColumnValues::Text(_) => "text",
        ColumnValues::Boolean(_) => "booleans",
        ColumnValues::Timestamp(_) => "timestamps",
        ColumnValues::Binary(_) => "bytes",
    }
}

fn empty_like(value: Option<&Value>) -> ColumnValues {
    match value {
        Some(Value::Text(_)) => ColumnValues::Text(Vec::new()),
        Some(Value::Boolean(_)) => ColumnValues::Boolean(Vec::new()),
        Some(Value::Timestamp(_)) => ColumnValues::Timestamp(Vec::new()),
        Some(Value::Binary(_)) => ColumnValues::Binary(Vec::new()),
        Some(Value::Int(_)) | Some(Value::Null) | None => ColumnValues::Int(Vec::new()),
    }
}

fn push(values: &mut ColumnValues, value: Value) -> Result<(), String> {
    match (values, value) {
        (ColumnValues::Int(v), Value::Int(x)) => v.push(x),
        (ColumnValues::Text(v), Value::Text(x)) => v.push(x),
        (ColumnValues::Boolean(v), Value::Boolean(x)) => v.push(x),
        (ColumnValues::Timestamp(v), Value::Timestamp(x)) => v.push(x),
        (ColumnValues::Binary(v), Value::Binary(x)) => v.push(x),
        (values, _) => {
            return Err(format!(
                "other records hold {} in this column",
                kind(values)
            ))
        }
    }
    Ok(())
}

fn push_placeholder(column: &mut ColumnData, row: usize) {
    column.nulls.push(row as u32);
    match &mut column.values {
        ColumnValues::Int(v) | ColumnValues::Timestamp(v) => v.push(0),
        ColumnValues::Text(v) => v.push(String::new()),
        ColumnValues::Boolean(v) => v.push(false),
        ColumnValues::Binary(v) => v.push(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            ids: vec![1, 2, 3],
            columns: vec![
                ColumnData {
                    values: ColumnValues::Int(vec![10, 0, 30]),
                    nulls: vec![1],
                },
                ColumnData {
                    values: ColumnValues::Text(vec!["a".into(), "b".into(), "c".into()]),
                    nulls: vec![],
                },
            ],
        }
    }

    #[test]
    fn typed_columns_name_themselves_in_errors() {
        let b = batch();
        let ids = b.ints(0, "project_id");
        assert_eq!(ids.get(0), Ok(&10));
        assert_eq!(ids.opt(1), Ok(None));
        assert_eq!(ids.get(1), Err("column `project_id` is NULL".into()));
        assert_eq!(b.texts(1, "name").get(2).map(String::as_str), Ok("c"));
        assert_eq!(
            b.texts(0, "project_id").get(0).unwrap_err(),
            "column `project_id` must hold text, got integers"
        );
        assert_eq!(
            b.ints(5, "file_store").get(0).unwrap_err(),
            "the batch is missing column `file_store` (position 5)"
        );
    }

    #[test]
    fn answers_carry_refusals_apart() {
        let b = batch();
        let names = b.texts(1, "name");
        let paths = b.paths(|row| {
            let name = names.get(row)?;
            if name == "b" {
                return Err("no b".into());
            }
            Ok(format!("x/{name}"))
        });
        assert_eq!(paths.paths, ["x/a", "", "x/c"]);
        assert_eq!(paths.errors.len(), 1);
        assert_eq!(
            (paths.errors[0].row, paths.errors[0].message.as_str()),
            (1, "no b")
        );
        let decisions = b.decisions(|row| b.ints(0, "project_id").get(row).map(|&p| p > 20));
        assert_eq!(decisions.in_scope, [false, false, true]);
        assert_eq!(decisions.errors[0].row, 1);
    }

    #[test]
    fn derived_rows_become_typed_columns() {
        let b = batch();
        let derived = b.derived(|row| match row {
            0 => Ok(vec![Value::Text("f".into()), Value::Int(1)]),
            1 => Err("refused".into()),
            _ => Ok(vec![Value::Null, Value::Text("oops".into())]),
        });
        assert_eq!(derived.columns.len(), 2);
        assert_eq!(
            derived.columns[0].values,
            ColumnValues::Text(vec!["f".into(), String::new(), String::new()])
        );
        assert_eq!(derived.columns[0].nulls, [1, 2]);
        assert_eq!(derived.columns[1].values, ColumnValues::Int(vec![1, 0, 0]));
        let rows: Vec<u32> = derived.errors.iter().map(|e| e.row).collect();
        assert_eq!(rows, [1, 2]);
        assert!(derived.errors[1].message.contains("derived column 2"));
    }
}
