//! Column values and rows as the host handles them: the WIT types
//! themselves (so a batch is lowered into the guest without a copy in between),
//! with the helpers the host needs.

pub use super::bindings::geohost::replicable::types::{Row, SelectiveSync, SyncSettings, Value};
use super::{Column, ColumnType};

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
    super::check_value(column, &value)?;
    Ok(value)
}
