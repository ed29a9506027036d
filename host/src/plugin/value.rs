//! Column values and rows as the host handles them: the WIT types
//! themselves (so a batch is lowered into the guest without a copy in between),
//! with the helpers the host needs.

pub use super::bindings::geohost::replicable::types::{Row, SelectiveSync, SyncSettings, Value};

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
