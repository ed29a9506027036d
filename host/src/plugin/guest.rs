//! One linked component, whichever contract version it was built against:
//! instantiation and the four calls, each in the host's own types.

use super::bindings::v0_2::exports::geohost::replicable::{packed, replicable};
use super::bindings::v0_2::geohost::replicable::types as wit;
use super::bindings::{v0_1, v0_2};
use super::value::SettingsView;
use super::world::Contract;
use super::world::WIT_PACKAGE;
use super::{
    BlobPath, Column, ColumnSource, ColumnType, HostState, ModelTable, PathError, Row,
    SyncSettings, TypeIdentity, Value,
};
use super::{adapt_v0_1, columns};
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Instance, InstancePre, Lift, Lower,
};

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
    V0_2 {
        pre: InstancePre<HostState>,
        exports: Arc<Exports0_2>,
    },
}

/// Where a 0.2 component's functions are, looked up once at load. A call
/// types only the function it calls (a fresh instance per call, so a
/// typed handle cannot be kept); `describe`, the first call of every
/// load, types them all, so a component with a function of the wrong
/// shape is refused at load.
pub struct Exports0_2 {
    replicable: replicable::GuestIndices,
    derive: ComponentExportIndex,
    blob_paths: ComponentExportIndex,
    in_scope: ComponentExportIndex,
    /// 0.2.1's `packed` (absent from 0.2.0 builds and the plain world).
    packed: Option<Packed>,
}

struct Packed {
    indices: packed::GuestIndices,
    blob_paths: ComponentExportIndex,
    in_scope: ComponentExportIndex,
}

impl Exports0_2 {
    fn new(pre: &InstancePre<HostState>) -> wasmtime::Result<Exports0_2> {
        let function = |interface: &str, name: &str| {
            let component = pre.component();
            let index = component
                .get_export_index(None, interface)
                .ok_or_else(|| wasmtime::format_err!("no exported instance named `{interface}`"))?;
            component
                .get_export_index(Some(&index), name)
                .ok_or_else(|| wasmtime::format_err!("`{interface}` does not export `{name}`"))
        };
        let replicable_at = format!("{WIT_PACKAGE}/replicable@{VERSION}");
        let packed = match packed::GuestIndices::new(pre) {
            Ok(indices) => {
                let packed_at = format!("{WIT_PACKAGE}/packed@{VERSION}");
                Some(Packed {
                    indices,
                    blob_paths: function(&packed_at, "blob-paths")?,
                    in_scope: function(&packed_at, "in-scope")?,
                })
            }
            Err(_) => None,
        };
        Ok(Exports0_2 {
            replicable: replicable::GuestIndices::new(pre)?,
            derive: function(&replicable_at, "derive")?,
            blob_paths: function(&replicable_at, "blob-paths")?,
            in_scope: function(&replicable_at, "in-scope")?,
            packed,
        })
    }
}

/// The contract version the 0.2 bindings were generated from; exports of
/// any 0.2.x are found by it (semver).
const VERSION: &str = "0.2.1";

/// A live instance.
pub enum Guest<'p> {
    V0_1(v0_1::ReplicableType),
    V0_2 {
        instance: Instance,
        exports: &'p Exports0_2,
    },
}

impl GuestPre {
    pub fn new(contract: Contract, pre: InstancePre<HostState>) -> wasmtime::Result<GuestPre> {
        Ok(match contract {
            Contract::V0_1 => GuestPre::V0_1(v0_1::ReplicableTypePre::new(pre)?),
            Contract::V0_2 => GuestPre::V0_2 {
                exports: Arc::new(Exports0_2::new(&pre)?),
                pre,
            },
        })
    }

    /// Whether calls pass batches packed (0.2.1's `packed` export).
    pub fn packed(&self) -> bool {
        matches!(self, GuestPre::V0_2 { exports, .. } if exports.packed.is_some())
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Guest<'_>> {
        Ok(match self {
            GuestPre::V0_1(pre) => Guest::V0_1(pre.instantiate(store)?),
            GuestPre::V0_2 { pre, exports } => Guest::V0_2 {
                instance: pre.instantiate(store)?,
                exports,
            },
        })
    }
}

/// Calls the function at `index` of `instance`, typed as `P -> R`.
fn call<P, R>(
    store: &mut Store<HostState>,
    instance: &Instance,
    index: &ComponentExportIndex,
    params: P,
) -> wasmtime::Result<R>
where
    P: ComponentNamedList + Lower,
    (R,): ComponentNamedList + Lift,
{
    let function = instance.get_typed_func::<P, (R,)>(&mut *store, index)?;
    let (answer,) = function.call(&mut *store, params)?;
    Ok(answer)
}

impl Guest<'_> {
    /// The identity as described (not yet checked).
    pub fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<TypeIdentity> {
        Ok(match self {
            Guest::V0_1(g) => {
                let raw = g.geohost_replicable_replicable().call_describe(store)?;
                identity_from_wit!(v0_1, raw, adapt_v0_1::value)
            }
            Guest::V0_2 { instance, exports } => {
                // Types every function (see [`Exports0_2`]).
                let replicable = exports.replicable.load(&mut *store, instance)?;
                if let Some(packed) = &exports.packed {
                    packed.indices.load(&mut *store, instance)?;
                }
                let raw = replicable.call_describe(store)?;
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
            Guest::V0_2 { instance, exports } => {
                let batch = columns::Columns::new(columns, rows);
                let derived: wit::Derived =
                    batch.with_batch(|batch| call(store, instance, &exports.derive, (batch,)))?;
                let values = match columns::derived_rows(derived.columns, rows.len()) {
                    Ok(values) => values,
                    Err(error) => return Ok(Err(error)),
                };
                Ok(batch.answers(values, derived.errors))
            }
        }
    }

    /// `blob-paths` of rows carrying `columns`, each path checked.
    pub fn blob_paths(
        &self,
        store: &mut Store<HostState>,
        columns: &[&Column],
        rows: &[Row],
    ) -> wasmtime::Result<Answers<Result<BlobPath, PathError>>> {
        let parse = |answers: Answers<String>| {
            answers.map(|answers| {
                answers
                    .into_iter()
                    .map(|answer| answer.map(BlobPath::parse_owned))
                    .collect()
            })
        };
        match self {
            Guest::V0_1(g) => {
                let rows = adapt_v0_1::Rows::new(rows);
                Ok(parse(Ok(rows.with_rows(|rows| {
                    g.geohost_replicable_replicable()
                        .call_blob_paths(&mut *store, rows)
                })?)))
            }
            Guest::V0_2 { instance, exports } => {
                let batch = columns::Columns::new(columns, rows);
                if let Some(packed) = &exports.packed
                    && let Some(answer) =
                        batch.with_packed_batch(|b| call(store, instance, &packed.blob_paths, (b,)))
                {
                    let answer: columns::PackedPathsInGuest = answer?;
                    return Ok(match answer.paths.paths(store) {
                        Ok(paths) => batch.answers(paths, answer.errors),
                        Err(error) => Err(format!("paths: {error}")),
                    });
                }
                let paths: wit::Paths =
                    batch.with_batch(|b| call(store, instance, &exports.blob_paths, (b,)))?;
                Ok(parse(batch.answers(paths.paths, paths.errors)))
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
            Guest::V0_2 { instance, exports } => {
                let batch = columns::Columns::new(columns, rows);
                let settings = SettingsView::new(settings);
                let settings = columns::settings(&settings);
                let packed = exports.packed.as_ref().and_then(|packed| {
                    batch.with_packed_batch(|b| {
                        call(store, instance, &packed.in_scope, (settings.clone(), b))
                    })
                });
                let decisions: wit::Decisions = match packed {
                    Some(decisions) => decisions?,
                    None => batch
                        .with_batch(|b| call(store, instance, &exports.in_scope, (settings, b)))?,
                };
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
