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
    /// The text in this value, `None` for `NULL`.
    fn opt_text(&self, column: &str) -> Result<Option<&str>, String>;
    /// The boolean in this value, or an error naming `column`.
    fn boolean(&self, column: &str) -> Result<bool, String>;
}

impl ValueExt for Value {
    fn int(&self, column: &str) -> Result<i64, String> {
        match self {
            Value::Int(v) => Ok(*v),
            other => Err(format!(
                "column `{column}` must be an integer, got {}",
                kind(other)
            )),
        }
    }

    fn text(&self, column: &str) -> Result<&str, String> {
        match self {
            Value::Text(v) => Ok(v),
            other => Err(format!(
                "column `{column}` must be text, got {}",
                kind(other)
            )),
        }
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        match self {
            Value::Null => Ok(None),
            other => other.int(column).map(Some),
        }
    }

    fn opt_text(&self, column: &str) -> Result<Option<&str>, String> {
        match self {
            Value::Null => Ok(None),
            other => other.text(column).map(Some),
        }
    }

    fn boolean(&self, column: &str) -> Result<bool, String> {
        match self {
            Value::Boolean(v) => Ok(*v),
            other => Err(format!(
                "column `{column}` must be a boolean, got {}",
                kind(other)
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads_name_the_column_on_error() {
        assert_eq!(Value::Int(7).int("project_id"), Ok(7));
        assert_eq!(Value::Text("a".into()).text("name"), Ok("a"));
        assert_eq!(Value::Null.opt_int("file_store"), Ok(None));
        assert_eq!(Value::Null.opt_text("name"), Ok(None));
        assert_eq!(Value::Boolean(true).boolean("flag"), Ok(true));
        assert_eq!(
            Value::Text("7".into()).int("project_id"),
            Err("column `project_id` must be an integer, got text".into())
        );
        assert!(Value::Int(1)
            .opt_text("name")
            .unwrap_err()
            .contains("`name`"));
    }

    #[test]
    fn missing_positions_name_the_column() {
        let values = [Value::Int(1)];
        assert!(at(&values, 0, "a").is_ok());
        assert_eq!(
            at(&values, 1, "file").unwrap_err(),
            "row is missing column `file` (position 1)"
        );
    }
}
