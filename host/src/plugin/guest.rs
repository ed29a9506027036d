//! One linked component, whichever contract version it was built against:
//! instantiation and the four calls, each in the host's own types.

use super::bindings::{v0_1, v0_2};
use super::value::SettingsView;
use super::world::Contract;
use super::{
    Column, ColumnSource, ColumnType, HostState, ModelTable, Row, SyncSettings, TypeIdentity, Value,
};
use super::{adapt_v0_1, columns};
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// The host's identity from either version's (the records are the same in
/// both; only their Rust types differ).
macro_rules! identity_from_wit {
    ($version:ident, $raw:expr, $value:path) => {{
        use $version::geohost::replicable::types as wit;
        let raw = $raw;
        TypeIdentity {
            name: raw.name,
            title: raw.title,
            title_plural: raw.title_plural,
            version: raw.version,
            mutable: raw.mutable,
            uploader_class: raw.uploader_class,
            table: ModelTable {
                name: raw.table.name,
                columns: raw
                    .table
                    .columns
                    .into_iter()
                    .map(|c| Column {
                        name: c.name,
                        column_type: match c.column_type {
                            wit::ColumnType::Bigint => ColumnType::Bigint,
                            wit::ColumnType::Integer => ColumnType::Integer,
                            wit::ColumnType::Smallint => ColumnType::Smallint,
                            wit::ColumnType::Text => ColumnType::Text,
                            wit::ColumnType::Boolean => ColumnType::Boolean,
                            wit::ColumnType::Timestamp => ColumnType::Timestamp,
                            wit::ColumnType::Binary => ColumnType::Binary,
                        },
                        nullable: c.nullable,
                        default_value: c.default_value.map($value),
                        max_length: c.max_length,
                        source: match c.source {
                            wit::ColumnSource::Writer => ColumnSource::Writer,
                            wit::ColumnSource::Derived => ColumnSource::Derived,
                            wit::ColumnSource::BlobSize => ColumnSource::BlobSize,
                            wit::ColumnSource::FileStore => ColumnSource::FileStore,
                            wit::ColumnSource::CreatedAt => ColumnSource::CreatedAt,
                            wit::ColumnSource::UpdatedAt => ColumnSource::UpdatedAt,
                        },
                    })
                    .collect(),
                natural_key: raw.table.natural_key,
                unique_keys: raw.table.unique_keys,
            },
            path_columns: raw.path_columns,
            scope_columns: raw.scope_columns,
        }
    }};
}

/// A call's answers, one per row: `Err(String)` for a malformed answer (a
/// refusal of a row the batch does not have, a short derived column).
pub type Answers<T> = Result<Vec<Result<T, String>>, String>;

/// A pre-linked component, ready to instantiate.
#[derive(Clone)]
pub enum GuestPre {
    V0_1(v0_1::ReplicableTypePre<HostState>),
    V0_2(v0_2::ReplicableTypePre<HostState>),
}

/// A live instance.
pub enum Guest {
    V0_1(v0_1::ReplicableType),
    V0_2(v0_2::ReplicableType),
}

impl GuestPre {
    pub fn new(contract: Contract, pre: InstancePre<HostState>) -> wasmtime::Result<GuestPre> {
        Ok(match contract {
            Contract::V0_1 => GuestPre::V0_1(v0_1::ReplicableTypePre::new(pre)?),
            Contract::V0_2 => GuestPre::V0_2(v0_2::ReplicableTypePre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Guest> {
        Ok(match self {
            GuestPre::V0_1(pre) => Guest::V0_1(pre.instantiate(store)?),
            GuestPre::V0_2(pre) => Guest::V0_2(pre.instantiate(store)?),
        })
    }
}

impl Guest {
    /// The identity as described (not yet checked).
    pub fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<TypeIdentity> {
        Ok(match self {
            Guest::V0_1(g) => {
                let raw = g.geohost_replicable_replicable().call_describe(store)?;
                identity_from_wit!(v0_1, raw, adapt_v0_1::value)
            }
            Guest::V0_2(g) => {
                let raw = g.geohost_replicable_replicable().call_describe(store)?;
                identity_from_wit!(v0_2, raw, value_v0_2)
            }
        })
    }

    /// `derive` of rows carrying `columns`.
    pub fn derive(
        &self,
        store: &mut Store<HostState>,
        columns: &[&Column],
        rows: &[Row],
    ) -> wasmtime::Result<Answers<Vec<Value>>> {
        match self {
            Guest::V0_1(g) => {
                let rows = adapt_v0_1::Rows::new(rows);
                let answers = rows.with_rows(|rows| {
                    g.geohost_replicable_replicable()
                        .call_derive(&mut *store, rows)
                })?;
                Ok(Ok(answers
                    .into_iter()
                    .map(|a| a.map(|values| values.into_iter().map(adapt_v0_1::value).collect()))
                    .collect()))
            }
            Guest::V0_2(g) => {
                let batch = columns::Columns::new(columns, rows);
                let derived = batch.with_batch(|batch| {
                    g.geohost_replicable_replicable()
                        .call_derive(&mut *store, batch)
                })?;
                let values = match columns::derived_rows(derived.columns, rows.len()) {
                    Ok(values) => values,
                    Err(error) => return Ok(Err(error)),
                };
                Ok(batch.answers(values, derived.errors))
            }
        }
    }

    /// `blob-paths` of rows carrying `columns`.
    pub fn blob_paths(
        &self,
        store: &mut Store<HostState>,
        columns: &[&Column],
        rows: &[Row],
    ) -> wasmtime::Result<Answers<String>> {
        match self {
            Guest::V0_1(g) => {
                let rows = adapt_v0_1::Rows::new(rows);
                Ok(Ok(rows.with_rows(|rows| {
                    g.geohost_replicable_replicable()
                        .call_blob_paths(&mut *store, rows)
                })?))
            }
            Guest::V0_2(g) => {
                let batch = columns::Columns::new(columns, rows);
                let paths = batch.with_batch(|batch| {
                    g.geohost_replicable_replicable()
                        .call_blob_paths(&mut *store, batch)
                })?;
                Ok(batch.answers(paths.paths, paths.errors))
            }
        }
    }

    /// `in-scope` of rows carrying `columns`.
    pub fn in_scope(
        &self,
        store: &mut Store<HostState>,
        settings: &SyncSettings,
        columns: &[&Column],
        rows: &[Row],
    ) -> wasmtime::Result<Answers<bool>> {
        match self {
            Guest::V0_1(g) => {
                let rows = adapt_v0_1::Rows::new(rows);
                let settings = SettingsView::new(settings);
                Ok(Ok(rows.with_rows(|rows| {
                    g.geohost_replicable_replicable().call_in_scope(
                        &mut *store,
                        adapt_v0_1::settings(&settings),
                        rows,
                    )
                })?))
            }
            Guest::V0_2(g) => {
                let batch = columns::Columns::new(columns, rows);
                let settings = SettingsView::new(settings);
                let decisions = batch.with_batch(|batch| {
                    g.geohost_replicable_replicable().call_in_scope(
                        &mut *store,
                        columns::settings(&settings),
                        batch,
                    )
                })?;
                Ok(batch.answers(decisions.in_scope, decisions.errors))
            }
        }
    }
}

fn value_v0_2(value: v0_2::geohost::replicable::types::Value) -> Value {
    use v0_2::geohost::replicable::types::Value as W;
    match value {
        W::Null => Value::Null,
        W::Int(v) => Value::Int(v),
        W::Text(v) => Value::Text(v),
        W::Boolean(v) => Value::Boolean(v),
        W::Timestamp(v) => Value::Timestamp(v),
        W::Binary(v) => Value::Binary(v),
    }
}
