//! Column values, rows and sync settings as the host handles them.
//!
//! These are the host's own types, independent of any version of the WIT
//! contract: a type built against `geohost:replicable@0.2` receives them as
//! columns ([`super::columns`]), one built against `0.1` as rows
//! ([`super::adapt_v0_1`]). Both borrow from them, so nothing is copied
//! before it is lowered into the guest.

use super::{Column, ColumnType};

/// One column value. Timestamps are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// Any of the integer column types.
    Int(i64),
    /// A `text` column.
    Text(String),
    /// A `boolean` column.
    Boolean(bool),
    /// A `timestamp` column, in microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// A `binary` column.
    Binary(Vec<u8>),
}

/// A record as the host passes it to a type: its id (0 for a record not
/// stored yet) and the values of the columns the called function asks for,
/// in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub values: Vec<Value>,
}

/// Which records a site replicates, as GitLab's selective sync says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectiveSync {
    /// Every record.
    Everything,
    /// Records of projects in these namespaces or any of their descendants.
    Namespaces(Vec<i64>),
    /// Records of projects on these repository storage shards.
    Shards(Vec<String>),
}

/// A site's replication settings, as a type sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    pub selective_sync: SelectiveSync,
    /// Whether records whose blob is in object storage (`file_store` 2) are replicated.
    pub sync_object_storage: bool,
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Text(_) => "text",
            Value::Boolean(_) => "boolean",
            Value::Timestamp(_) => "timestamp",
            Value::Binary(_) => "binary",
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }

    /// The value as plain JSON (timestamps as RFC 3339, bytes as hex).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Int(v) => (*v).into(),
            Value::Text(v) => v.clone().into(),
            Value::Boolean(v) => (*v).into(),
            Value::Timestamp(v) => chrono::DateTime::from_timestamp_micros(*v)
                .map(|t| {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                        .into()
                })
                .unwrap_or(serde_json::Value::Null),
            Value::Binary(v) => hex::encode(v).into(),
        }
    }
}

/// Serializes an optional [`Value`] as plain JSON (for identities shown to operators).
pub fn serialize_opt_value<S: serde::Serializer>(
    value: &Option<Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    value.as_ref().map(Value::to_json).serialize(serializer)
}

impl SyncSettings {
    /// Replicate everything, object storage included.
    pub fn everything() -> SyncSettings {
        SyncSettings {
            selective_sync: SelectiveSync::Everything,
            sync_object_storage: true,
        }
    }
}

/// A [`SyncSettings`] with its shard names borrowed as `&str`, as every
/// contract version lowers them (see [`lower_settings`]).
pub struct SettingsView<'s> {
    pub settings: &'s SyncSettings,
    pub shards: Vec<&'s str>,
}

impl<'s> SettingsView<'s> {
    pub fn new(settings: &'s SyncSettings) -> SettingsView<'s> {
        let shards = match &settings.selective_sync {
            SelectiveSync::Shards(shards) => shards.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        SettingsView { settings, shards }
    }
}

/// A [`SettingsView`] as the sync settings of bindings module `$wit` (the
/// record is the same in every contract version; its Rust type is not).
macro_rules! lower_settings {
    ($wit:ident, $view:expr) => {{
        let view = $view;
        $wit::SyncSettings {
            selective_sync: match &view.settings.selective_sync {
                $crate::plugin::SelectiveSync::Everything => $wit::SelectiveSync::Everything,
                $crate::plugin::SelectiveSync::Namespaces(ids) => {
                    $wit::SelectiveSync::Namespaces(ids)
                }
                $crate::plugin::SelectiveSync::Shards(_) => {
                    $wit::SelectiveSync::Shards(&view.shards)
                }
            },
            sync_object_storage: view.settings.sync_object_storage,
        }
    }};
}
pub(crate) use lower_settings;

/// A value given as text (a query string, a command-line `name=value`) as
/// the JSON that [`json_to_value`] expects for `column`'s type.
pub fn text_to_json(column: &Column, raw: &str) -> Result<serde_json::Value, String> {
    let name = &column.name;
    Ok(match column.column_type {
        ColumnType::Bigint | ColumnType::Integer | ColumnType::Smallint => raw
            .parse::<i64>()
            .map(serde_json::Value::from)
            .map_err(|_| format!("column `{name}` must be an integer"))?,
        ColumnType::Boolean => raw
            .parse::<bool>()
            .map(serde_json::Value::from)
            .map_err(|_| format!("column `{name}` must be true or false"))?,
        _ => serde_json::Value::from(raw),
    })
}

/// A JSON value as a column value of `column`'s type.
pub fn json_to_value(column: &Column, json: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let wrong = || {
        format!(
            "column `{}` ({:?}) cannot hold {json}",
            column.name, column.column_type
        )
    };
    let value = match (column.column_type, json) {
        (_, J::Null) => Value::Null,
        (ColumnType::Bigint | ColumnType::Integer | ColumnType::Smallint, J::Number(n)) => {
            Value::Int(n.as_i64().ok_or_else(wrong)?)
        }
        (ColumnType::Text, J::String(s)) => Value::Text(s.clone()),
        (ColumnType::Boolean, J::Bool(b)) => Value::Boolean(*b),
        (ColumnType::Timestamp, J::String(s)) => Value::Timestamp(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| wrong())?
                .timestamp_micros(),
        ),
        (ColumnType::Timestamp, J::Number(n)) => Value::Timestamp(n.as_i64().ok_or_else(wrong)?),
        (ColumnType::Binary, J::String(s)) => Value::Binary(hex::decode(s).map_err(|_| wrong())?),
        _ => return Err(wrong()),
    };
    super::check_type(column, &value)?;
    Ok(value)
}
