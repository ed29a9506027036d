//! `geohost:replicable@0.2`: host rows in as column batches, answers out as
//! one result per row.
//!
//! A batch is built by borrowing: each column is a typed list of the rows'
//! values (`&str` for text), so lowering it into the guest is the only copy.
//! A `NULL` is listed in the column's `nulls` with a placeholder in its
//! place. A value that does not fit its column's type (which the host's own
//! decoding never produces) refuses that row before the call: the type sees
//! a placeholder and the row gets the host's error.

use super::bindings::v0_2::geohost::replicable::{site, types as wit};
use super::value::{SettingsView, lower_settings};
use super::{BlobPath, PathError};
use super::{Column, ColumnType, Value};
use crate::plugin::Row;
use crate::topology::ProjectLookup;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{ComponentType, Lift, WasmList};

/// One column's values, borrowed from the rows.
enum Data<'r> {
    Int(Vec<i64>),
    Text(Vec<&'r str>),
    Boolean(Vec<bool>),
    Timestamp(Vec<i64>),
    Binary(Vec<&'r [u8]>),
}

/// The columns of a batch, owned here while the call borrows them.
pub struct Columns<'r> {
    ids: Vec<i64>,
    data: Vec<(Data<'r>, Vec<u32>)>,
    /// Rows refused before the call (rarely any), by position, with why;
    /// in row order, one entry per row at most.
    refused: Vec<(usize, String)>,
}

impl<'r> Columns<'r> {
    /// The columns `columns` (in that order) of `rows`, whose values come
    /// in the same order. Column by column, each in one typed pass over
    /// the rows.
    pub fn new(columns: &[&Column], rows: &'r [Row]) -> Columns<'r> {
        let mut refused: Vec<(usize, String)> = Vec::new();
        let data = columns
            .iter()
            .enumerate()
            .map(|(c, column)| {
                let mut nulls = Vec::new();
                // A value not of the column's type: `NULL`, or the row is
                // refused.
                let mut odd = |row: usize, value: &Value| match value {
                    Value::Null => nulls.push(row as u32),
                    other => refused.push((
                        row,
                        format!(
                            "column `{}` is {:?}, got {}",
                            column.name,
                            column.column_type,
                            other.kind()
                        ),
                    )),
                };
                let values = match column.column_type {
                    ColumnType::Bigint | ColumnType::Integer | ColumnType::Smallint => {
                        Data::Int(typed(rows, c, 0, &mut odd, |v| match v {
                            Value::Int(x) => Some(*x),
                            _ => None,
                        }))
                    }
                    ColumnType::Text => Data::Text(typed(rows, c, "", &mut odd, |v| match v {
                        Value::Text(x) => Some(x.as_str()),
                        _ => None,
                    })),
                    ColumnType::Boolean => {
                        Data::Boolean(typed(rows, c, false, &mut odd, |v| match v {
                            Value::Boolean(x) => Some(*x),
                            _ => None,
                        }))
                    }
                    ColumnType::Timestamp => {
                        Data::Timestamp(typed(rows, c, 0, &mut odd, |v| match v {
                            Value::Timestamp(x) => Some(*x),
                            _ => None,
                        }))
                    }
                    ColumnType::Binary => {
                        Data::Binary(typed(rows, c, &[][..], &mut odd, |v| match v {
                            Value::Binary(x) => Some(x.as_slice()),
                            _ => None,
                        }))
                    }
                };
                (values, nulls)
            })
            .collect();
        // One refusal per row, its first column's (the sort is stable).
        refused.sort_by_key(|(row, _)| *row);
        refused.dedup_by_key(|(row, _)| *row);
        Columns {
            ids: rows.iter().map(|r| r.id).collect(),
            data,
            refused,
        }
    }

    /// Runs `f` with the batch borrowed from these columns.
    pub fn with_batch<R>(&self, f: impl FnOnce(wit::Batch<'_>) -> R) -> R {
        let columns: Vec<wit::ColumnDataParam<'_>> = self
            .data
            .iter()
            .map(|(data, nulls)| wit::ColumnDataParam {
                values: match data {
                    Data::Int(v) => wit::ColumnValuesParam::Int(v),
                    Data::Text(v) => wit::ColumnValuesParam::Text(v),
                    Data::Boolean(v) => wit::ColumnValuesParam::Boolean(v),
                    Data::Timestamp(v) => wit::ColumnValuesParam::Timestamp(v),
                    Data::Binary(v) => wit::ColumnValuesParam::Binary(v),
                },
                nulls,
            })
            .collect();
        f(wit::Batch {
            ids: &self.ids,
            columns: &columns,
        })
    }

    /// Runs `f` with the batch packed (0.2.1's `packed` functions): each
    /// text or binary column as its values' bytes end to end and their
    /// ends. `None` (without calling `f`) when a column's bytes do not fit
    /// the `u32` ends; the caller then passes the batch unpacked.
    pub fn with_packed_batch<R>(&self, f: impl FnOnce(wit::PackedBatch<'_>) -> R) -> Option<R> {
        let packed: Vec<(Vec<u8>, Vec<u32>)> = self
            .data
            .iter()
            .map(|(data, _)| match data {
                Data::Text(v) => pack(v.iter().map(|s| s.as_bytes())),
                Data::Binary(v) => pack(v.iter().copied()),
                Data::Int(_) | Data::Boolean(_) | Data::Timestamp(_) => Some(Default::default()),
            })
            .collect::<Option<_>>()?;
        let columns: Vec<wit::PackedColumn<'_>> = self
            .data
            .iter()
            .zip(&packed)
            .map(|((data, nulls), packed)| {
                let (bytes, ends) = packed;
                let text = || wit::PackedTextParam { bytes, ends };
                wit::PackedColumn {
                    values: match data {
                        Data::Int(v) => wit::PackedValues::Int(v),
                        Data::Text(_) => wit::PackedValues::Text(text()),
                        Data::Boolean(v) => wit::PackedValues::Boolean(v),
                        Data::Timestamp(v) => wit::PackedValues::Timestamp(v),
                        Data::Binary(_) => wit::PackedValues::Binary(text()),
                    },
                    nulls,
                }
            })
            .collect();
        Some(f(wit::PackedBatch {
            ids: &self.ids,
            columns: &columns,
        }))
    }

    /// One result per row: the type's `values` and `errors`, with the rows
    /// refused before the call taking the host's error. `Err`: the answer
    /// names a row the batch does not have.
    pub fn answers<T>(
        &self,
        values: Vec<T>,
        errors: Vec<wit::RowError>,
    ) -> Result<Vec<Result<T, String>>, String> {
        let mut answers: Vec<Result<T, String>> = values.into_iter().map(Ok).collect();
        for error in errors {
            let slot = answers.get_mut(error.row as usize).ok_or_else(|| {
                format!(
                    "it refused record {} of a batch of {}",
                    error.row,
                    self.ids.len()
                )
            })?;
            *slot = Err(error.message);
        }
        for (row, why) in &self.refused {
            if let Some(answer) = answers.get_mut(*row) {
                *answer = Err(why.clone());
            }
        }
        Ok(answers)
    }
}

/// Column `c` of `rows` as `T`s: `placeholder` (and a call of `odd`) for
/// a value `as_t` does not take, or a row without the column.
fn typed<'r, T: Copy>(
    rows: &'r [Row],
    c: usize,
    placeholder: T,
    odd: &mut impl FnMut(usize, &'r Value),
    as_t: impl Fn(&'r Value) -> Option<T>,
) -> Vec<T> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let value = row.values.get(c).unwrap_or(&Value::Null);
            as_t(value).unwrap_or_else(|| {
                odd(i, value);
                placeholder
            })
        })
        .collect()
}

/// `values` end to end, and where each ends; `None` past `u32::MAX` bytes.
fn pack<'v>(
    values: impl ExactSizeIterator<Item = &'v [u8]> + Clone,
) -> Option<(Vec<u8>, Vec<u32>)> {
    let total: usize = values.clone().map(<[u8]>::len).sum();
    u32::try_from(total).ok()?;
    let mut bytes = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(values.len());
    for value in values {
        bytes.extend_from_slice(value);
        ends.push(bytes.len() as u32);
    }
    Some((bytes, ends))
}

/// 0.2.1's `packed-paths` as a type answers them, the text left in the
/// guest's memory until [`PackedTextInGuest::paths`] copies it once into
/// the host (lifting still charges the call's hostcall fuel for every
/// byte).
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct PackedPathsInGuest {
    pub paths: PackedTextInGuest,
    pub errors: Vec<wit::RowError>,
}

/// 0.2.1's `packed-text`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct PackedTextInGuest {
    pub bytes: WasmList<u8>,
    pub ends: WasmList<u32>,
}

impl PackedTextInGuest {
    /// The answered paths, read from `store`'s memory, each checked
    /// ([`BlobPath::parse_shared`]) and all sharing one copy of the text.
    /// `Err`: as [`split_text`].
    pub fn paths<T: 'static>(
        &self,
        store: &Store<T>,
    ) -> Result<Vec<Result<BlobPath, PathError>>, String> {
        let (text, ranges) =
            split_text(self.bytes.as_le_slice(store), self.ends.as_le_slice(store))?;
        Ok(BlobPath::parse_shared(Arc::from(text), &ranges))
    }
}

/// Text answered packed (0.2.1): the text, and each value's range in it.
/// `Err`: the ends do not split the bytes into UTF-8 values (ascending,
/// each at a character boundary, the last at the end).
pub fn split_text<'b>(bytes: &'b [u8], ends: &[u32]) -> Result<(&'b str, Vec<(u32, u32)>), String> {
    let all = std::str::from_utf8(bytes).map_err(|e| format!("packed text is not UTF-8: {e}"))?;
    let mut start = 0u32;
    let mut ranges = Vec::with_capacity(ends.len());
    for &end in ends {
        if !(start <= end && all.is_char_boundary(end as usize)) {
            return Err(format!(
                "packed text's ends are not ascending value boundaries within {} bytes \
                 (value {} ends at {end})",
                all.len(),
                ranges.len()
            ));
        }
        ranges.push((start, end));
        start = end;
    }
    if start as usize != all.len() {
        return Err(format!(
            "packed text has {} bytes after its last value",
            all.len() - start as usize
        ));
    }
    Ok((all, ranges))
}

/// `derive`'s columns as one row of values per record. `Err`: a column
/// whose length is not the batch's.
pub fn derived_rows(
    columns: Vec<wit::ColumnDataResult>,
    rows: usize,
) -> Result<Vec<Vec<Value>>, String> {
    let mut out: Vec<Vec<Value>> = (0..rows)
        .map(|_| Vec::with_capacity(columns.len()))
        .collect();
    for (c, column) in columns.into_iter().enumerate() {
        let values: Vec<Value> = match column.values {
            wit::ColumnValuesResult::Int(v) => v.into_iter().map(Value::Int).collect(),
            wit::ColumnValuesResult::Text(v) => v.into_iter().map(Value::Text).collect(),
            wit::ColumnValuesResult::Boolean(v) => v.into_iter().map(Value::Boolean).collect(),
            wit::ColumnValuesResult::Timestamp(v) => v.into_iter().map(Value::Timestamp).collect(),
            wit::ColumnValuesResult::Binary(v) => v.into_iter().map(Value::Binary).collect(),
        };
        if values.len() != rows {
            return Err(format!(
                "derived column {} has {} values for {rows} records",
                c + 1,
                values.len()
            ));
        }
        for (row, value) in out.iter_mut().zip(values) {
            row.push(value);
        }
        for null in column.nulls {
            let slot = out
                .get_mut(null as usize)
                .and_then(|row| row.get_mut(c))
                .ok_or_else(|| {
                    format!(
                        "derived column {} has a NULL at record {null} of {rows}",
                        c + 1
                    )
                })?;
            *slot = Value::Null;
        }
    }
    Ok(out)
}

/// The settings as the 0.2 contract passes them.
pub fn settings<'s>(view: &'s SettingsView<'_>) -> wit::SyncSettings<'s> {
    lower_settings!(wit, view)
}

/// `site.projects` for 0.2: the answers of the host's bounded lookup
/// ([`super::HostState`]) written as columns as they come, repository
/// storages named once each.
pub struct ProjectColumns(site::ProjectColumns);

impl ProjectColumns {
    /// Room for `ids` answers.
    pub fn with_capacity(ids: usize) -> ProjectColumns {
        ProjectColumns(site::ProjectColumns {
            found: Vec::with_capacity(ids),
            namespace_id: Vec::with_capacity(ids),
            storage: Vec::with_capacity(ids),
            storages: Vec::new(),
            ancestry: Vec::with_capacity(ids * 4),
            ancestry_ends: Vec::with_capacity(ids),
        })
    }

    /// The answer for `id` (unknown without a lookup).
    pub fn push(&mut self, lookup: Option<&dyn ProjectLookup>, id: i64) {
        let out = &mut self.0;
        match lookup.and_then(|l| l.project_into(id, &mut out.ancestry)) {
            Some((namespace_id, repository_storage)) => {
                let storage = match out.storages.iter().position(|s| *s == repository_storage) {
                    Some(index) => index,
                    None => {
                        out.storages.push(repository_storage.into_owned());
                        out.storages.len() - 1
                    }
                };
                out.found.push(true);
                out.namespace_id.push(namespace_id);
                out.storage.push(storage as u32);
            }
            None => {
                out.found.push(false);
                out.namespace_id.push(0);
                out.storage.push(0);
            }
        }
        out.ancestry_ends.push(out.ancestry.len() as u32);
    }

    pub fn finish(self) -> site::ProjectColumns {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::ColumnSource;

    fn column(name: &str, column_type: ColumnType) -> Column {
        Column {
            name: name.into(),
            column_type,
            nullable: true,
            default_value: None,
            max_length: None,
            source: ColumnSource::Writer,
        }
    }

    #[test]
    fn rows_become_typed_columns_with_nulls_and_refusals() {
        let (id, text) = (
            column("project_id", ColumnType::Bigint),
            column("name", ColumnType::Text),
        );
        let rows = vec![
            Row {
                id: 1,
                values: vec![Value::Int(10), Value::Text("a".into())],
            },
            Row {
                id: 2,
                values: vec![Value::Null, Value::Text("b".into())],
            },
            Row {
                id: 3,
                values: vec![Value::Text("x".into()), Value::Null],
            },
            Row {
                id: 4,
                values: vec![Value::Int(40)],
            },
        ];
        let columns = Columns::new(&[&id, &text], &rows);
        columns.with_batch(|batch| {
            assert_eq!(batch.ids, [1, 2, 3, 4]);
            let wit::ColumnValuesParam::Int(ints) = batch.columns[0].values else {
                panic!()
            };
            assert_eq!(ints, [10, 0, 0, 40]);
            assert_eq!(batch.columns[0].nulls, [1]);
            let wit::ColumnValuesParam::Text(texts) = batch.columns[1].values else {
                panic!()
            };
            assert_eq!(texts, ["a", "b", "", ""]);
            assert_eq!(batch.columns[1].nulls, [2, 3]);
        });
        let answers = columns
            .answers(
                vec!["p1", "p2", "p3", "p4"],
                vec![wit::RowError {
                    row: 1,
                    message: "bad".into(),
                }],
            )
            .unwrap();
        assert_eq!(answers[0], Ok("p1"));
        assert_eq!(answers[1], Err("bad".into()));
        assert!(
            answers[2]
                .as_ref()
                .unwrap_err()
                .contains("`project_id` is Bigint, got text")
        );
        assert_eq!(answers[3], Ok("p4"));
        let error = columns
            .answers(
                vec![true; 4],
                vec![wit::RowError {
                    row: 4,
                    message: "x".into(),
                }],
            )
            .unwrap_err();
        assert!(error.contains("record 4 of a batch of 4"), "{error}");
    }

    #[test]
    fn text_is_packed_and_answers_unpacked() {
        let text = column("name", ColumnType::Text);
        let rows: Vec<Row> = ["ab", "", "é"]
            .iter()
            .enumerate()
            .map(|(i, v)| Row {
                id: i as i64,
                values: vec![Value::Text(v.to_string())],
            })
            .collect();
        let columns = Columns::new(&[&text], &rows);
        columns
            .with_packed_batch(|batch| {
                let wit::PackedValues::Text(packed) = &batch.columns[0].values else {
                    panic!()
                };
                assert_eq!(
                    (packed.bytes, packed.ends),
                    ("abé".as_bytes(), &[2, 2, 4][..])
                );
            })
            .unwrap();
        let unpack = |bytes, ends| {
            split_text(bytes, ends).map(|(text, ranges)| {
                let values: Vec<&str> = ranges
                    .iter()
                    .map(|&(start, end)| &text[start as usize..end as usize])
                    .collect();
                values
            })
        };
        assert_eq!(
            unpack("abé".as_bytes(), &[2, 2, 4]).unwrap(),
            ["ab", "", "é"]
        );
        assert_eq!(unpack(b"", &[]).unwrap(), Vec::<&str>::new());
        for (bytes, ends, why) in [
            ("abé".as_bytes(), &[2, 3, 4][..], "boundaries"),
            ("ab".as_bytes(), &[1, 3], "boundaries"),
            ("ab".as_bytes(), &[2, 1], "boundaries"),
            ("abc".as_bytes(), &[2], "1 bytes after"),
            (&[0xff, b'a'][..], &[2], "not UTF-8"),
        ] {
            let error = unpack(bytes, ends).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn derived_columns_become_rows() {
        let columns = vec![
            wit::ColumnDataResult {
                values: wit::ColumnValuesResult::Text(vec!["f".into(), "".into()]),
                nulls: vec![1],
            },
            wit::ColumnDataResult {
                values: wit::ColumnValuesResult::Int(vec![7, 8]),
                nulls: vec![],
            },
        ];
        assert_eq!(
            derived_rows(columns, 2).unwrap(),
            [
                vec![Value::Text("f".into()), Value::Int(7)],
                vec![Value::Null, Value::Int(8)]
            ]
        );
        let short = vec![wit::ColumnDataResult {
            values: wit::ColumnValuesResult::Int(vec![1]),
            nulls: vec![],
        }];
        assert!(
            derived_rows(short, 2)
                .unwrap_err()
                .contains("1 values for 2 records")
        );
    }
}
