//! `geohost:replicable@0.1`, adapted: the host's rows passed as the 0.1
//! contract's rows of variants (borrowed, not copied), its answers turned
//! into the host's. Types built before 0.2 keep loading unchanged.

use super::bindings::v0_1::geohost::replicable::types as wit;
use super::value::{SettingsView, lower_settings};
use super::{Row, Value};
use crate::topology::ProjectInfo;

/// The rows' values as 0.1 variants, owned here while the call borrows them.
pub struct Rows<'r> {
    ids: Vec<i64>,
    values: Vec<Vec<wit::ValueParam<'r>>>,
}

impl<'r> Rows<'r> {
    pub fn new(rows: &'r [Row]) -> Rows<'r> {
        Rows {
            ids: rows.iter().map(|r| r.id).collect(),
            values: rows
                .iter()
                .map(|r| r.values.iter().map(value_param).collect())
                .collect(),
        }
    }

    /// Runs `f` with the rows borrowed from these values.
    pub fn with_rows<R>(&self, f: impl FnOnce(&[wit::Row<'_>]) -> R) -> R {
        let rows: Vec<wit::Row<'_>> = self
            .ids
            .iter()
            .zip(&self.values)
            .map(|(&id, values)| wit::Row { id, values })
            .collect();
        f(&rows)
    }
}

fn value_param(value: &Value) -> wit::ValueParam<'_> {
    match value {
        Value::Null => wit::ValueParam::Null,
        Value::Int(v) => wit::ValueParam::Int(*v),
        Value::Text(v) => wit::ValueParam::Text(v),
        Value::Boolean(v) => wit::ValueParam::Boolean(*v),
        Value::Timestamp(v) => wit::ValueParam::Timestamp(*v),
        Value::Binary(v) => wit::ValueParam::Binary(v),
    }
}

/// A 0.1 value as the host's.
pub fn value(value: wit::ValueResult) -> Value {
    match value {
        wit::ValueResult::Null => Value::Null,
        wit::ValueResult::Int(v) => Value::Int(v),
        wit::ValueResult::Text(v) => Value::Text(v),
        wit::ValueResult::Boolean(v) => Value::Boolean(v),
        wit::ValueResult::Timestamp(v) => Value::Timestamp(v),
        wit::ValueResult::Binary(v) => Value::Binary(v),
    }
}

/// The settings as the 0.1 contract passes them.
pub fn settings<'s>(view: &'s SettingsView<'_>) -> wit::SyncSettings<'s> {
    lower_settings!(wit, view)
}

/// `site.projects` for 0.1: one optional record per id, from the host's
/// bounded lookup ([`super::HostState`]).
pub fn projects(found: Vec<Option<ProjectInfo>>) -> Vec<Option<wit::Project>> {
    found
        .into_iter()
        .map(|p| {
            p.map(|p| wit::Project {
                id: p.id,
                namespace_id: p.namespace_id,
                namespace_ancestry: p.namespace_ancestry,
                repository_storage: p.repository_storage,
            })
        })
        .collect()
}
