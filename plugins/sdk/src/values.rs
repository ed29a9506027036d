//! Typed access to the values of a [`Row`](crate::Row).

use crate::Value;

/// Reads a row's values by position, with errors that name the column.
pub trait ValueExt {
    /// The integer in this value, or an error naming `column`.
    fn int(&self, column: &str) -> Result<i64, String>;
    /// The text in this value, or an error naming `column`.
    fn text(&self, column: &str) -> Result<&str, String>;
    /// The integer in this value, `None` for `NULL`.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, String>;
}

impl ValueExt for Value {
    fn int(&self, column: &str) -> Result<i64, String> {
        match self {
            Value::Int(v) => Ok(*v),
            other => Err(format!("column `{column}` must be an integer, got {}", kind(other))),
        }
    }

    fn text(&self, column: &str) -> Result<&str, String> {
        match self {
            Value::Text(v) => Ok(v),
            other => Err(format!("column `{column}` must be text, got {}", kind(other))),
        }
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        match self {
            Value::Null => Ok(None),
            other => other.int(column).map(Some),
        }
    }
}

/// The value at `index` of `values`, or an error naming `column`.
pub fn at<'a>(values: &'a [Value], index: usize, column: &str) -> Result<&'a Value, String> {
    values
        .get(index)
        .ok_or_else(|| format!("row is missing column `{column}` (position {index})"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Int(_) => "an integer",
        Value::Text(_) => "text",
        Value::Boolean(_) => "a boolean",
        Value::Timestamp(_) => "a timestamp",
        Value::Binary(_) => "bytes",
    }
}
