//! A type's identity, checked: what the host derives its tables, routes,
//! metric names and flags from.
//!
//! Architecture invariant: the host learns everything specific to a type from
//! a [`TypeIdentity`]; no host code names a type.

use super::value::Value;
use std::collections::HashSet;

/// SQL column types a model table may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Bigint,
    Integer,
    Smallint,
    Text,
    Boolean,
    Timestamp,
    Binary,
}

impl ColumnType {
    /// Whether `value` fits this column type (`NULL` aside).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (ColumnType::Bigint, Value::Int(_)) => true,
            (ColumnType::Integer, Value::Int(v)) => i32::try_from(*v).is_ok(),
            (ColumnType::Smallint, Value::Int(v)) => i16::try_from(*v).is_ok(),
            (ColumnType::Text, Value::Text(_)) => true,
            (ColumnType::Boolean, Value::Boolean(_)) => true,
            (ColumnType::Timestamp, Value::Timestamp(_)) => true,
            (ColumnType::Binary, Value::Binary(_)) => true,
            _ => false,
        }
    }
}

/// Who fills a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnSource {
    Writer,
    Derived,
    BlobSize,
    FileStore,
    CreatedAt,
    UpdatedAt,
}

/// One column of a model table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub column_type: ColumnType,
    pub nullable: bool,
    #[serde(serialize_with = "super::value::serialize_opt_value")]
    pub default_value: Option<Value>,
    pub max_length: Option<u32>,
    pub source: ColumnSource,
}

/// The model table of a type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelTable {
    pub name: String,
    pub columns: Vec<Column>,
    pub natural_key: Vec<String>,
    pub unique_keys: Vec<Vec<String>>,
}

impl ModelTable {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Columns filled from `source`, in table order.
    pub fn columns_from(&self, source: ColumnSource) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(move |c| c.source == source)
    }

    /// The single column with this source, if the type has one.
    pub fn column_for(&self, source: ColumnSource) -> Option<&Column> {
        self.columns_from(source).next()
    }
}

/// A type's identity, as checked by [`TypeIdentity::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeIdentity {
    pub name: String,
    pub title: String,
    pub title_plural: String,
    pub version: String,
    pub mutable: bool,
    pub uploader_class: String,
    pub table: ModelTable,
    pub path_columns: Vec<String>,
    pub scope_columns: Vec<String>,
}

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid type identity: {0}")]
pub struct IdentityError(pub String);

/// Longest replicable name: `index_<name>_registry_on_<name>_id`-style index
/// names are shortened by the template, but table names must stay within
/// PostgreSQL's 63 bytes.
pub const MAX_NAME_LEN: usize = 50;

impl TypeIdentity {
    /// Checks a type's self-description: names are SQL-safe identifiers, the
    /// columns the host fills exist at most once with a fitting type, and
    /// every column list names real columns.
    pub fn check(self) -> Result<TypeIdentity, IdentityError> {
        let err = |m: String| Err(IdentityError(m));
        check_identifier("name", &self.name)?;
        if self.name.len() > MAX_NAME_LEN {
            return err(format!(
                "name {:?} is longer than {MAX_NAME_LEN} bytes",
                self.name
            ));
        }
        for (what, text) in [
            ("title", &self.title),
            ("title-plural", &self.title_plural),
            ("uploader-class", &self.uploader_class),
        ] {
            if text.trim().is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
                return err(format!(
                    "{what} must be 1 to 200 printable characters, got {text:?}"
                ));
            }
        }
        if !is_semver(&self.version) {
            return err(format!(
                "version {:?} is not MAJOR.MINOR.PATCH",
                self.version
            ));
        }
        let table = &self.table;
        check_identifier("table name", &table.name)?;
        if table.name.len() > MAX_NAME_LEN + 10 {
            return err(format!("table name {:?} is too long", table.name));
        }
        // The host's own tables, and other types', are refused when the
        // type is installed (`swap/owners.rs`, from the migrations and the
        // recorded owners); these are the names the host derives.
        if table.name.ends_with("_registry")
            || table.name.ends_with("_states")
            || table.name == self.name
        {
            return err(format!("table name {:?} is reserved", table.name));
        }
        if table.columns.is_empty() {
            return err("the model table has no columns".into());
        }
        let mut names = HashSet::new();
        for column in &table.columns {
            check_identifier("column name", &column.name)?;
            if column.name == "id" {
                return err("column `id` is the host's primary key; do not declare it".into());
            }
            if !names.insert(column.name.as_str()) {
                return err(format!("column `{}` is declared twice", column.name));
            }
            if column.max_length.is_some() && column.column_type != ColumnType::Text {
                return err(format!(
                    "column `{}`: max-length applies to text only",
                    column.name
                ));
            }
            if let Some(default) = &column.default_value
                && !column.column_type.accepts(default)
            {
                return err(format!(
                    "column `{}`: default {} does not fit {:?}",
                    column.name,
                    default.kind(),
                    column.column_type
                ));
            }
            let expected: &[ColumnType] = match column.source {
                ColumnSource::BlobSize => &[ColumnType::Integer, ColumnType::Bigint],
                ColumnSource::FileStore => &[ColumnType::Integer, ColumnType::Smallint],
                ColumnSource::CreatedAt | ColumnSource::UpdatedAt => &[ColumnType::Timestamp],
                ColumnSource::Writer | ColumnSource::Derived => &[],
            };
            if !expected.is_empty() && !expected.contains(&column.column_type) {
                return err(format!(
                    "column `{}` ({:?}) must be one of {expected:?}",
                    column.name, column.source
                ));
            }
        }
        for source in [
            ColumnSource::BlobSize,
            ColumnSource::FileStore,
            ColumnSource::CreatedAt,
            ColumnSource::UpdatedAt,
        ] {
            if table.columns_from(source).count() > 1 {
                return err(format!("more than one {source:?} column"));
            }
        }
        if table.natural_key.is_empty() {
            return err("the natural key is empty".into());
        }
        for key in &table.natural_key {
            match table.column(key) {
                Some(c) if c.source == ColumnSource::Writer => {}
                Some(_) => {
                    return err(format!("natural key column `{key}` is not a writer column"));
                }
                None => return err(format!("natural key names unknown column `{key}`")),
            }
        }
        let lists = table.unique_keys.iter().map(|k| ("unique key", k)).chain([
            ("path-columns", &self.path_columns),
            ("scope-columns", &self.scope_columns),
        ]);
        for (what, list) in lists {
            if list.is_empty() && what != "scope-columns" {
                return err(format!("{what} is empty"));
            }
            if let Some(unknown) = list.iter().find(|c| table.column(c).is_none()) {
                return err(format!("{what} names unknown column `{unknown}`"));
            }
        }
        Ok(self)
    }

    /// GitLab's plural replicable name, used in status fields and metrics
    /// (`packages_helm_metadata_caches`): the model table's name.
    pub fn plural_name(&self) -> &str {
        &self.table.name
    }

    /// `<name>_registry`, the secondary's tracking table.
    pub fn registry_table(&self) -> String {
        format!("{}_registry", self.name)
    }

    /// `<name>_states`, the primary's verification state table.
    pub fn states_table(&self) -> String {
        format!("{}_states", self.name)
    }

    /// `<name>_id`, the foreign key to the model table.
    pub fn foreign_key(&self) -> String {
        format!("{}_id", self.name)
    }

    /// `geo_<name>_replication`, the type's feature flag.
    pub fn feature_flag(&self) -> String {
        format!("geo_{}_replication", self.name)
    }

    /// The camel-cased name GraphQL uses (`packagesHelmMetadataCache`).
    pub fn camel_name(&self) -> String {
        let mut out = String::with_capacity(self.name.len());
        let mut upper = false;
        for c in self.name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.extend(c.to_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Positions of `names` in the table's columns.
    pub fn positions(&self, names: &[String]) -> Vec<usize> {
        names
            .iter()
            .map(|n| {
                self.table
                    .columns
                    .iter()
                    .position(|c| &c.name == n)
                    .expect("checked")
            })
            .collect()
    }
}

/// A quoted SQL identifier (`"name"`). Its one constructor applies the
/// identity check's rule for names (`[a-z][a-z0-9_]*`, at most 63 bytes),
/// in release builds too, so no name reaches SQL without it; what the
/// check refuses cannot be quoted into a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotedIdent(String);

impl QuotedIdent {
    /// Quotes `name` if the identity check accepts it.
    pub fn new(name: &str) -> Result<QuotedIdent, IdentityError> {
        check_identifier("SQL identifier", name)?;
        Ok(QuotedIdent(format!("\"{name}\"")))
    }

    /// The quoted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QuotedIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for QuotedIdent {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for QuotedIdent {
    fn borrow(&self) -> &str {
        &self.0
    }
}

fn check_identifier(what: &str, name: &str) -> Result<(), IdentityError> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(IdentityError(format!(
            "{what} {name:?} must be lowercase ASCII letters, digits and `_`, starting with a letter"
        )))
    }
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checked_names_are_quoted() {
        assert_eq!(QuotedIdent::new("helm_2").unwrap().as_str(), "\"helm_2\"");
        for hostile in ["a\"b", "A", "1a", "", "a b", "a;drop", &"a".repeat(64)] {
            let error = QuotedIdent::new(hostile).unwrap_err().to_string();
            assert!(error.contains("SQL identifier"), "{hostile:?}: {error}");
        }
    }

    #[test]
    #[should_panic(expected = "a name reached SQL unchecked")]
    fn an_unchecked_name_never_reaches_sql() {
        let _ = crate::db::ident("x\" OR 1=1 --");
    }

    pub(crate) fn sample() -> TypeIdentity {
        let col = |name: &str, t, source| Column {
            name: name.into(),
            column_type: t,
            nullable: false,
            default_value: None,
            max_length: None,
            source,
        };
        TypeIdentity {
            name: "widget_file".into(),
            title: "Widget File".into(),
            title_plural: "Widget Files".into(),
            version: "1.0.0".into(),
            mutable: false,
            uploader_class: "WidgetUploader".into(),
            table: ModelTable {
                name: "widget_files".into(),
                columns: vec![
                    col("created_at", ColumnType::Timestamp, ColumnSource::CreatedAt),
                    col("project_id", ColumnType::Bigint, ColumnSource::Writer),
                    col("file", ColumnType::Text, ColumnSource::Writer),
                    col("size", ColumnType::Bigint, ColumnSource::BlobSize),
                ],
                natural_key: vec!["project_id".into(), "file".into()],
                unique_keys: vec![],
            },
            path_columns: vec!["file".into()],
            scope_columns: vec!["project_id".into()],
        }
    }

    #[test]
    fn accepts_a_sane_identity_and_names_its_tables() {
        let id = sample().check().unwrap();
        assert_eq!(id.registry_table(), "widget_file_registry");
        assert_eq!(id.states_table(), "widget_file_states");
        assert_eq!(id.foreign_key(), "widget_file_id");
        assert_eq!(id.feature_flag(), "geo_widget_file_replication");
        assert_eq!(id.camel_name(), "widgetFile");
    }

    #[test]
    fn refuses_bad_identities() {
        let cases: Vec<(&str, Box<dyn Fn(&mut TypeIdentity)>)> = vec![
            (
                "must be lowercase",
                Box::new(|i| i.name = "Bad-Name".into()),
            ),
            (
                "must be lowercase",
                Box::new(|i| i.name = "x; DROP TABLE".into()),
            ),
            ("reserved", Box::new(|i| i.table.name = "x_registry".into())),
            (
                "primary key",
                Box::new(|i| i.table.columns[1].name = "id".into()),
            ),
            (
                "declared twice",
                Box::new(|i| i.table.columns[2].name = "project_id".into()),
            ),
            (
                "unknown column",
                Box::new(|i| i.path_columns = vec!["nope".into()]),
            ),
            ("MAJOR.MINOR.PATCH", Box::new(|i| i.version = "one".into())),
            ("title", Box::new(|i| i.title = "".into())),
            (
                "natural key is empty",
                Box::new(|i| i.table.natural_key.clear()),
            ),
            (
                "must be one of",
                Box::new(|i| i.table.columns[3].column_type = ColumnType::Text),
            ),
        ];
        for (expected, mutate) in cases {
            let mut id = sample();
            mutate(&mut id);
            let error = id.check().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
        }
    }
}
