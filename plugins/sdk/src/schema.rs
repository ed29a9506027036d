//! Short constructors for the columns of a model table.

use crate::{Column, ColumnSource, ColumnType, Value};

/// A column with no default and no length bound.
pub fn column(name: &str, column_type: ColumnType, nullable: bool, source: ColumnSource) -> Column {
    Column {
        name: name.to_string(),
        column_type,
        nullable,
        default_value: None,
        max_length: None,
        source,
    }
}

/// A `NOT NULL` text column of at most `max_length` characters.
pub fn text(name: &str, max_length: u32, source: ColumnSource) -> Column {
    Column {
        max_length: Some(max_length),
        ..column(name, ColumnType::Text, false, source)
    }
}

/// Sets a column's default value.
pub fn with_default(mut column: Column, value: Value) -> Column {
    column.default_value = Some(value);
    column
}

/// GitLab's `created_at` and `updated_at` pair, set by the host.
pub fn timestamps() -> [Column; 2] {
    [
        column(
            "created_at",
            ColumnType::Timestamp,
            false,
            ColumnSource::CreatedAt,
        ),
        column(
            "updated_at",
            ColumnType::Timestamp,
            false,
            ColumnSource::UpdatedAt,
        ),
    ]
}

/// GitLab's `file_store` column: 1 local (the default), 2 object storage.
pub fn file_store() -> Column {
    with_default(
        column(
            "file_store",
            ColumnType::Integer,
            true,
            ColumnSource::FileStore,
        ),
        Value::Int(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_columns() {
        let [created, updated] = timestamps();
        assert_eq!(
            (created.name.as_str(), created.source),
            ("created_at", ColumnSource::CreatedAt)
        );
        assert_eq!(
            (updated.name.as_str(), updated.source),
            ("updated_at", ColumnSource::UpdatedAt)
        );
        let store = file_store();
        assert_eq!(store.default_value, Some(Value::Int(1)));
        assert!(store.nullable);
        let key = text("object_storage_key", 255, ColumnSource::Derived);
        assert_eq!((key.max_length, key.nullable), (Some(255), false));
    }
}
