//! The per-type table template: a type's tables follow one template, so a new
//! type's tables are created from its plugin's identity without a hand-written
//! migration.
//!
//! Each replicable type has three tables:
//!
//! - its **model table** (main database), generated from
//!   [`TypeIdentity::table`]: a `id` primary key, then the declared columns in
//!   order, with a unique index for the natural key and for each unique key
//!   ([`ensure_primary_tables`]);
//! - on the primary, **`<name>_states`** (main database), GitLab's
//!   verification state table, one row per model row, deleted with it
//!   ([`states_table_ddl`], from `migrations/templates/*/states.sql`);
//! - on a secondary, **`<name>_registry`** (tracking database), GitLab's
//!   registry table, with no foreign key since the model table lives in the
//!   other database ([`registry_table_ddl`], from
//!   `migrations/templates/*/registry.sql`).
//!
//! The two fixed tables are plain SQL files with `{{name}}` (the replicable
//! name) and `{{model_table}}` placeholders, embedded with `include_str!` and
//! rendered here; they reproduce GitLab's migrations column for column and
//! index for index.
//!
//! **Identifier length.** PostgreSQL silently truncates identifiers longer
//! than 63 bytes, and two long names sharing their first 63 bytes would then
//! collide. Every identifier the template produces goes through
//! [`identifier`]: one longer than 63 bytes becomes its first 54 bytes, `_`,
//! and the first 8 hex digits of the SHA-256 of the whole name (63 bytes, the
//! same on every run and on both backends). GitLab's own Helm registry index,
//! `index_packages_helm_metadata_cache_registry_on_packages_helm_metadata_cache_id`,
//! is 78 bytes; its Geohost name is
//! `index_packages_helm_metadata_cache_registry_on_package_e04e240b`.
//!
//! **Evolving a model table.** [`ensure_primary_tables`] creates missing
//! tables and indexes (`IF NOT EXISTS`). When the model table exists, its
//! columns are read from the catalog and compared with the identity: a column
//! the identity adds is added with `ALTER TABLE … ADD COLUMN` when it is
//! nullable or has a default; anything else that differs (a new `NOT NULL`
//! column without a default, a changed type, nullability or presence of a
//! default, a dropped `NOT NULL` column without a default) is refused with
//! [`DbError::Invalid`] naming the table and the column. Data is never
//! dropped or rewritten. SQLite stores `bigint`, `integer`, `smallint` and
//! timestamps all as `INTEGER`, so a change among those is not seen there;
//! default *values* and text limits are not compared.

use super::{Backend, Db, DbError, QuotedIdent, Result, Tx, ident};
use crate::plugin::{Column, ColumnType, TypeIdentity, Value};
use sha2::{Digest, Sha256};

const POSTGRES_STATES: &str = include_str!("../../../migrations/templates/postgres/states.sql");
const POSTGRES_REGISTRY: &str = include_str!("../../../migrations/templates/postgres/registry.sql");
const SQLITE_STATES: &str = include_str!("../../../migrations/templates/sqlite/states.sql");
const SQLITE_REGISTRY: &str = include_str!("../../../migrations/templates/sqlite/registry.sql");

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// How many bytes of a shortened identifier are kept before `_<hash>`.
const SHORTENED_PREFIX_LEN: usize = 54;

/// `name` if it fits PostgreSQL's 63 bytes; otherwise its first 54 bytes,
/// `_`, and 8 hex digits of its SHA-256, so long names stay distinct and
/// deterministic.
pub fn identifier(name: &str) -> String {
    if name.len() <= MAX_IDENTIFIER_LEN {
        return name.to_string();
    }
    let mut cut = SHORTENED_PREFIX_LEN;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{}_{}", &name[..cut], &digest[..8])
}

/// The SQL type of a model column on `backend`.
pub fn sql_type(backend: Backend, column_type: ColumnType) -> &'static str {
    match (backend, column_type) {
        (Backend::Postgres, ColumnType::Bigint) => "bigint",
        (Backend::Postgres, ColumnType::Integer) => "integer",
        (Backend::Postgres, ColumnType::Smallint) => "smallint",
        (Backend::Postgres, ColumnType::Text) => "text",
        (Backend::Postgres, ColumnType::Boolean) => "boolean",
        (Backend::Postgres, ColumnType::Timestamp) => "timestamptz",
        (Backend::Postgres, ColumnType::Binary) => "bytea",
        (Backend::Sqlite, ColumnType::Bigint | ColumnType::Integer | ColumnType::Smallint) => {
            "INTEGER"
        }
        (Backend::Sqlite, ColumnType::Text) => "TEXT",
        (Backend::Sqlite, ColumnType::Boolean) => "BOOLEAN",
        // Microseconds since the Unix epoch, like every timestamp on SQLite.
        (Backend::Sqlite, ColumnType::Timestamp) => "INTEGER",
        (Backend::Sqlite, ColumnType::Binary) => "BLOB",
    }
}

/// The type name the catalog reports for a column created as `column_type`
/// (`information_schema.columns.data_type`, `pragma_table_info.type`).
fn catalog_type(backend: Backend, column_type: ColumnType) -> &'static str {
    match (backend, column_type) {
        (Backend::Postgres, ColumnType::Timestamp) => "timestamp with time zone",
        _ => sql_type(backend, column_type),
    }
}

/// A default value as a SQL literal. Text is quoted so no value can end the
/// literal: on PostgreSQL as an escape string (`E'…'`, which means the same
/// whatever `standard_conforming_strings` says), on SQLite with `''`.
fn literal(backend: Backend, value: &Value) -> String {
    match (backend, value) {
        (_, Value::Null) => "NULL".into(),
        (_, Value::Int(v)) => v.to_string(),
        (_, Value::Boolean(v)) => v.to_string(),
        (Backend::Postgres, Value::Text(v)) => {
            format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
        }
        (Backend::Sqlite, Value::Text(v)) => format!("'{}'", v.replace('\'', "''")),
        // Exact for every microsecond, with no date formatting to get wrong.
        (Backend::Postgres, Value::Timestamp(us)) => {
            format!("(TIMESTAMPTZ 'epoch' + {us} * INTERVAL '1 microsecond')")
        }
        (Backend::Sqlite, Value::Timestamp(us)) => us.to_string(),
        (Backend::Postgres, Value::Binary(v)) => format!("decode('{}', 'hex')", hex::encode(v)),
        (Backend::Sqlite, Value::Binary(v)) => format!("X'{}'", hex::encode(v)),
    }
}

/// The column's default, if it has one other than `NULL`.
fn effective_default(column: &Column) -> Option<&Value> {
    column
        .default_value
        .as_ref()
        .filter(|v| !matches!(v, Value::Null))
}

/// One column's definition, as in `CREATE TABLE` and `ADD COLUMN`.
fn column_definition(backend: Backend, column: &Column) -> String {
    let name = ident(&column.name);
    let mut def = format!("{name} {}", sql_type(backend, column.column_type));
    if !column.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(value) = effective_default(column) {
        def.push_str(" DEFAULT ");
        def.push_str(&literal(backend, value));
    }
    if let Some(max) = column.max_length {
        let length = match backend {
            Backend::Postgres => "char_length",
            Backend::Sqlite => "length",
        };
        def.push_str(&format!(" CHECK ({length}({name}) <= {max})"));
    }
    def
}

/// The model table's statements: `CREATE TABLE`, then one unique index for
/// the natural key and one for each unique key.
fn model_statements(backend: Backend, identity: &TypeIdentity) -> Vec<String> {
    let table = &identity.table;
    let id = match backend {
        Backend::Postgres => "\"id\" bigserial PRIMARY KEY",
        // AUTOINCREMENT: an id is never reused after a delete.
        Backend::Sqlite => "\"id\" INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    let mut definitions = vec![id.to_string()];
    definitions.extend(table.columns.iter().map(|c| column_definition(backend, c)));
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\n    {}\n)",
        ident(&table.name),
        definitions.join(",\n    ")
    )];
    let mut keys: Vec<&Vec<String>> = vec![&table.natural_key];
    for key in &table.unique_keys {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for key in keys {
        let name = identifier(&format!("index_{}_on_{}", table.name, key.join("_and_")));
        let columns: Vec<QuotedIdent> = key.iter().map(|c| ident(c)).collect();
        statements.push(format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})",
            ident(&name),
            ident(&table.name),
            columns.join(", ")
        ));
    }
    statements
}

/// The DDL of a type's model table on `backend`: `CREATE TABLE IF NOT EXISTS`
/// with an `id` primary key and the identity's columns in order (types,
/// `NOT NULL`, defaults, text limits as `CHECK`s), then its unique indexes,
/// named like GitLab's (`index_<table>_on_<col>_and_<col>`).
#[cfg(test)]
fn model_table_ddl(backend: Backend, identity: &TypeIdentity) -> String {
    script(&model_statements(backend, identity))
}

/// The DDL of a type's `<name>_states` table on `backend` (GitLab's
/// `Create<Model>States` migration), rendered from
/// `migrations/templates/<backend>/states.sql`.
pub fn states_table_ddl(backend: Backend, identity: &TypeIdentity) -> String {
    let template = match backend {
        Backend::Postgres => POSTGRES_STATES,
        Backend::Sqlite => SQLITE_STATES,
    };
    render(template, identity)
}

/// The DDL of a type's `<name>_registry` table on `backend` (GitLab's
/// `Create<Model>Registry` migration), rendered from
/// `migrations/templates/<backend>/registry.sql`.
pub fn registry_table_ddl(backend: Backend, identity: &TypeIdentity) -> String {
    let template = match backend {
        Backend::Postgres => POSTGRES_REGISTRY,
        Backend::Sqlite => SQLITE_REGISTRY,
    };
    render(template, identity)
}

/// Every table and index a type's templates create on either site (its
/// model table and `<name>_states` on a primary, `<name>_registry` on a
/// secondary), as the database names them: the names that belong to the
/// type (`swap/owners.rs`).
pub fn type_objects(identity: &TypeIdentity) -> std::collections::BTreeSet<String> {
    let backend = Backend::Postgres; // identifiers are the same on both
    let mut sql = model_statements(backend, identity).join(";\n");
    sql.push_str(";\n");
    sql.push_str(&states_table_ddl(backend, identity));
    sql.push_str(&registry_table_ddl(backend, identity));
    created_objects(&sql).into_iter().collect()
}

/// The names of the tables and indexes `sql` creates (`CREATE [UNIQUE]
/// TABLE|INDEX [IF NOT EXISTS] <name>`), unquoted. `--` comments are
/// skipped.
pub fn created_objects(sql: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let mut names = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if !word.eq_ignore_ascii_case("create") {
            continue;
        }
        let mut rest = words[i + 1..].iter().copied();
        let mut next = rest.next();
        if next.is_some_and(|w| w.eq_ignore_ascii_case("unique")) {
            next = rest.next();
        }
        if !next.is_some_and(|w| w.eq_ignore_ascii_case("table") || w.eq_ignore_ascii_case("index"))
        {
            continue;
        }
        let mut name = rest.next();
        if name.is_some_and(|w| w.eq_ignore_ascii_case("if")) {
            rest.next(); // NOT
            rest.next(); // EXISTS
            name = rest.next();
        }
        if let Some(name) = name {
            names.push(name.trim_matches('"').to_string());
        }
    }
    names
}

/// Fills a template's placeholders, then shortens its quoted identifiers.
fn render(template: &str, identity: &TypeIdentity) -> String {
    let text = template
        .replace("{{name}}", &identity.name)
        .replace("{{model_table}}", &identity.table.name);
    debug_assert!(
        !text.contains("{{"),
        "a template placeholder was left unfilled"
    );
    shorten_quoted_identifiers(&text)
}

/// Applies [`identifier`] to every `"quoted"` identifier. The templates quote
/// exactly the identifiers built from placeholders, and no comment or literal
/// in them holds a `"`.
fn shorten_quoted_identifiers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        if i % 2 == 1 {
            out.push_str(&identifier(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The statements of a rendered template: `--` comments removed, split at
/// `;`. (The templates hold no `;` or `--` inside a literal.)
fn template_statements(text: &str) -> Vec<String> {
    let code: Vec<&str> = text
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
fn script(statements: &[String]) -> String {
    statements
        .iter()
        .map(|s| format!("{s};\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates the primary's tables of a type in the main database: the model
/// table and `<name>_states`, with their indexes. Idempotent. If the model
/// table exists, columns the identity adds are added when they can be (see
/// the module documentation); otherwise nothing changes and the error names
/// the table and column.
pub async fn ensure_primary_tables(db: &Db, identity: &TypeIdentity) -> Result<()> {
    let backend = db.backend();
    let mut tx = begin_ddl(db).await?;
    let existing = existing_columns(&mut tx, &identity.table.name).await?;
    let mut statements = if existing.is_empty() {
        Vec::new()
    } else {
        reconcile(backend, identity, &existing)?
    };
    statements.extend(model_statements(backend, identity));
    for statement in &statements {
        tx.execute(statement, &[]).await?;
    }
    let states = template_statements(&states_table_ddl(backend, identity));
    run_host_template(
        &mut tx,
        &identity.states_table(),
        &states,
        ADDED_STATES_COLUMNS,
    )
    .await?;
    tx.commit().await
}

/// Checks, changing nothing, that [`ensure_primary_tables`] would accept
/// `identity`: the model table, if it exists, can follow the identity.
pub async fn check_primary_tables(db: &Db, identity: &TypeIdentity) -> Result<()> {
    let mut tx = db.begin().await?;
    let existing = existing_columns(&mut tx, &identity.table.name).await?;
    if !existing.is_empty() {
        reconcile(db.backend(), identity, &existing)?;
    }
    Ok(()) // the transaction rolls back: it only read the catalog
}

/// The column names of `table`, in order; empty if there is no such table.
pub async fn table_columns(db: &Db, table: &str) -> Result<Vec<String>> {
    let mut tx = db.begin().await?;
    Ok(existing_columns(&mut tx, table)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect())
}

/// Creates a secondary's `<name>_registry` table, with its indexes, in the
/// tracking database. Idempotent.
pub async fn ensure_tracking_tables(db: &Db, identity: &TypeIdentity) -> Result<()> {
    let mut tx = begin_ddl(db).await?;
    let statements = template_statements(&registry_table_ddl(db.backend(), identity));
    run_host_template(
        &mut tx,
        &identity.registry_table(),
        &statements,
        ADDED_REGISTRY_COLUMNS,
    )
    .await?;
    tx.commit().await
}

/// Columns the states template gained after a table could first have been
/// created (the template's own definition of each): a table made by an
/// earlier Geohost gets them before the template's indexes are created.
/// Checked against the templates by a test.
const ADDED_STATES_COLUMNS: &[(&str, &str)] = &[("plugin_sha256", "TEXT"), ("blob_path", "TEXT")];

/// The same for the registry template.
const ADDED_REGISTRY_COLUMNS: &[(&str, &str)] =
    &[("plugin_sha256", "TEXT"), ("claimed_by", "TEXT")];

/// Runs a host table's template (its `CREATE TABLE` first, then indexes),
/// adding to a table an earlier Geohost created the columns the template
/// has gained since (`added`), inside the DDL transaction.
async fn run_host_template(
    tx: &mut Tx,
    table: &str,
    statements: &[String],
    added: &[(&str, &str)],
) -> Result<()> {
    let Some((create, rest)) = statements.split_first() else {
        return Ok(());
    };
    tx.execute(create, &[]).await?;
    let existing = existing_columns(tx, table).await?;
    for (column, sql_type) in added {
        if !existing.iter().any(|c| c.name == *column) {
            tx.execute(
                &format!(
                    "ALTER TABLE {} ADD COLUMN {column} {sql_type}",
                    ident(table)
                ),
                &[],
            )
            .await?;
        }
    }
    for statement in rest {
        tx.execute(statement, &[]).await?;
    }
    Ok(())
}

/// A transaction for DDL. On PostgreSQL, a transaction-level advisory lock
/// serializes hosts creating tables at the same time (two concurrent
/// `CREATE TABLE IF NOT EXISTS` can both try to create), and the "already
/// exists, skipping" notices are silenced; on SQLite, `BEGIN IMMEDIATE`
/// already serializes writers.
async fn begin_ddl(db: &Db) -> Result<Tx> {
    /// Arbitrary, fixed: the key of Geohost's DDL lock.
    const DDL_LOCK: i64 = 0x6765_6f68_6f73_7401;
    let mut tx = db.begin().await?;
    if tx.backend() == Backend::Postgres {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[DDL_LOCK.into()])
            .await?;
        tx.execute("SET LOCAL client_min_messages TO warning", &[])
            .await?;
    }
    Ok(tx)
}

/// A column as the catalog describes it.
#[derive(Debug)]
struct ExistingColumn {
    name: String,
    sql_type: String,
    not_null: bool,
    has_default: bool,
}

/// The columns of `table`, in order; empty if there is no such table.
async fn existing_columns(tx: &mut Tx, table: &str) -> Result<Vec<ExistingColumn>> {
    let sql = match tx.backend() {
        Backend::Postgres => {
            "SELECT column_name::text AS name, data_type::text AS sql_type, \
             (is_nullable = 'NO') AS not_null, (column_default IS NOT NULL) AS has_default \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position"
        }
        Backend::Sqlite => {
            "SELECT name, type AS sql_type, \"notnull\" AS not_null, \
             (dflt_value IS NOT NULL) AS has_default \
             FROM pragma_table_info($1) ORDER BY cid"
        }
    };
    tx.fetch_map(sql, &[table.into()], |row| {
        Ok(ExistingColumn {
            name: row.text("name")?,
            sql_type: row.text("sql_type")?,
            not_null: row.bool("not_null")?,
            has_default: row.bool("has_default")?,
        })
    })
    .await
}

/// Compares an existing model table with the identity: the `ALTER TABLE`
/// statements that add the identity's new columns, or why the table cannot
/// follow the identity.
fn reconcile(
    backend: Backend,
    identity: &TypeIdentity,
    existing: &[ExistingColumn],
) -> Result<Vec<String>> {
    let table = &identity.table.name;
    let refuse = |column: &str, why: String| {
        Err(DbError::Invalid(format!(
            "table `{table}`, column `{column}`: {why}; Geohost never drops or rewrites a column \
             (change the type's identity, or migrate the table by hand)"
        )))
    };
    let mut statements = Vec::new();
    for column in &identity.table.columns {
        let has_default = effective_default(column).is_some();
        let Some(found) = existing.iter().find(|c| c.name == column.name) else {
            if !column.nullable && !has_default {
                return refuse(
                    &column.name,
                    "the identity adds it as NOT NULL without a default, so the table's \
                     existing rows would have no value for it"
                        .into(),
                );
            }
            let add_column = match backend {
                Backend::Postgres => "ADD COLUMN IF NOT EXISTS",
                Backend::Sqlite => "ADD COLUMN",
            };
            statements.push(format!(
                "ALTER TABLE {} {add_column} {}",
                ident(table),
                column_definition(backend, column)
            ));
            continue;
        };
        let expected = catalog_type(backend, column.column_type);
        if !found.sql_type.eq_ignore_ascii_case(expected) {
            return refuse(
                &column.name,
                format!(
                    "the identity declares it {:?} ({expected}), the table has {}",
                    column.column_type, found.sql_type
                ),
            );
        }
        if found.not_null == column.nullable {
            let says = |not_null: bool| if not_null { "NOT NULL" } else { "nullable" };
            return refuse(
                &column.name,
                format!(
                    "the identity declares it {}, the table has it {}",
                    says(!column.nullable),
                    says(found.not_null)
                ),
            );
        }
        if found.has_default != has_default {
            let says = |has: bool| if has { "a default" } else { "no default" };
            return refuse(
                &column.name,
                format!(
                    "the identity declares {}, the table has {}",
                    says(has_default),
                    says(found.has_default)
                ),
            );
        }
    }
    for found in existing {
        let declared = found.name == "id" || identity.table.column(&found.name).is_some();
        if !declared && found.not_null && !found.has_default {
            return refuse(
                &found.name,
                "the identity no longer declares it, but it is NOT NULL without a default, \
                 so new rows could not be inserted"
                    .into(),
            );
        }
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::test_databases;
    use crate::db::{Arg, DbRow};
    use crate::plugin::{ColumnSource, Limits, PluginRuntime, builtin};
    use chrono::{DateTime, Utc};
    use std::sync::OnceLock;

    /// The shipped Helm type's identity (compiled once per test process).
    fn helm() -> TypeIdentity {
        static HELM: OnceLock<TypeIdentity> = OnceLock::new();
        HELM.get_or_init(|| {
            let runtime = PluginRuntime::new(Limits::default(), None).expect("plugin runtime");
            let component =
                builtin::by_stem("helm-metadata-cache").expect("the Helm type is shipped");
            runtime
                .load(component.bytes)
                .expect("the Helm type loads")
                .identity()
                .clone()
        })
        .clone()
    }

    const HELM_STATES_INDEXES: &[&str] = &[
        "index_packages_helm_metadata_cache_states_failed_verification",
        "index_packages_helm_metadata_cache_states_needs_verification_id",
        "index_packages_helm_metadata_cache_states_on_blob_path",
        "index_packages_helm_metadata_cache_states_on_packages__b9505ae0",
        "index_packages_helm_metadata_cache_states_on_verificat_095133f0",
        "index_packages_helm_metadata_cache_states_on_verification_state",
        "index_packages_helm_metadata_cache_states_pending_verification",
    ];

    const HELM_REGISTRY_INDEXES: &[&str] = &[
        "index_packages_helm_metadata_cache_registry_on_package_e04e240b",
        "index_packages_helm_metadata_cache_registry_on_retry_at",
        "index_packages_helm_metadata_cache_registry_on_state",
        "packages_helm_metadata_cache_registry_failed_verification",
        "packages_helm_metadata_cache_registry_needs_verification",
        "packages_helm_metadata_cache_registry_pending_verification",
        // Geohost's own: expired verification claims (db/claim.rs).
        "packages_helm_metadata_cache_registry_started_verification",
    ];

    const HELM_MODEL_INDEXES: &[&str] = &[
        "index_packages_helm_metadata_caches_on_object_storage_key",
        "index_packages_helm_metadata_caches_on_project_id_and_channel",
    ];

    fn ts(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(us).unwrap()
    }

    /// Inserts a Helm model row; returns its id.
    async fn insert_cache(db: &Db, project_id: i64, channel: &str) -> Result<i64> {
        let key = format!(
            "{project_id}/{}",
            hex::encode(Sha256::digest(channel.as_bytes()))
        );
        let row = db
            .fetch_one(
                "INSERT INTO packages_helm_metadata_caches \
                 (created_at, updated_at, project_id, size, channel, file, object_storage_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    ts(1).into(),
                    ts(2).into(),
                    project_id.into(),
                    Arg::I32(Some(10)),
                    channel.into(),
                    "index.yaml".into(),
                    key.into(),
                ],
            )
            .await?;
        row.i64("id")
    }

    async fn count(db: &Db, table: &str) -> i64 {
        db.fetch_one(&format!("SELECT COUNT(*) AS n FROM {}", ident(table)), &[])
            .await
            .unwrap()
            .i64("n")
            .unwrap()
    }

    /// (name, catalog type, NOT NULL, default text) of each column.
    async fn columns(db: &Db, table: &str) -> Vec<(String, String, bool, Option<String>)> {
        let sql = match db.backend() {
            Backend::Postgres => {
                "SELECT column_name::text AS name, data_type::text AS t, (is_nullable = 'NO') AS nn, \
                 column_default::text AS d FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
            }
            Backend::Sqlite => {
                "SELECT name, type AS t, \"notnull\" AS nn, dflt_value AS d FROM pragma_table_info($1) ORDER BY cid"
            }
        };
        let rows = db.fetch_all(sql, &[table.into()]).await.unwrap();
        rows.iter()
            .map(|r: &DbRow| {
                (
                    r.text("name").unwrap(),
                    r.text("t").unwrap(),
                    r.bool("nn").unwrap(),
                    r.opt_text("d").unwrap(),
                )
            })
            .collect()
    }

    /// (name, definition) of each index of `table`, by name.
    async fn indexes(db: &Db, table: &str) -> Vec<(String, String)> {
        let sql = match db.backend() {
            Backend::Postgres => {
                "SELECT indexname::text AS name, indexdef AS def FROM pg_indexes \
                 WHERE schemaname = current_schema() AND tablename = $1 AND indexname NOT LIKE '%_pkey'"
            }
            Backend::Sqlite => {
                "SELECT name, sql AS def FROM sqlite_master WHERE type = 'index' AND tbl_name = $1"
            }
        };
        let rows = db.fetch_all(sql, &[table.into()]).await.unwrap();
        let mut indexes: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.text("name").unwrap(), r.text("def").unwrap()))
            .collect();
        // Byte order, whatever the server's collation.
        indexes.sort();
        indexes
    }

    fn def<'a>(indexes: &'a [(String, String)], name: &str) -> &'a str {
        &indexes
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no index {name}"))
            .1
    }

    fn assert_contains(haystack: &str, needle: &str) {
        assert!(
            haystack.contains(needle),
            "expected {needle:?} in {haystack:?}"
        );
    }

    #[test]
    fn long_identifiers_are_shortened_deterministically() {
        let short = "index_packages_helm_metadata_caches_on_object_storage_key";
        assert_eq!(identifier(short), short);
        let exact = "a".repeat(63);
        assert_eq!(identifier(&exact), exact);
        let long = "index_packages_helm_metadata_cache_registry_on_packages_helm_metadata_cache_id";
        assert_eq!(long.len(), 78);
        let shortened = identifier(long);
        assert_eq!(shortened.len(), MAX_IDENTIFIER_LEN);
        assert_eq!(shortened, identifier(long));
        assert_eq!(&shortened[..54], &long[..54]);
        let digest = hex::encode(Sha256::digest(long.as_bytes()));
        assert_eq!(shortened[55..], digest[..8]);
        // Two names sharing their first 63 bytes stay distinct.
        let (a, b) = (
            format!("{}_one", "x".repeat(63)),
            format!("{}_two", "x".repeat(63)),
        );
        assert_ne!(identifier(&a), identifier(&b));
    }

    #[test]
    fn templates_render_with_every_placeholder_filled() {
        let helm = helm();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for (template, text) in [
                ("states", states_table_ddl(backend, &helm)),
                ("registry", registry_table_ddl(backend, &helm)),
                ("model", model_table_ddl(backend, &helm)),
            ] {
                assert!(!text.contains("{{"), "{backend:?} {template}: {text}");
                for quoted in text.split('"').skip(1).step_by(2) {
                    assert!(
                        quoted.len() <= MAX_IDENTIFIER_LEN,
                        "{backend:?} {template}: {quoted}"
                    );
                }
            }
        }
        for template in [
            POSTGRES_STATES,
            POSTGRES_REGISTRY,
            SQLITE_STATES,
            SQLITE_REGISTRY,
        ] {
            assert_eq!(template.matches('"').count() % 2, 0);
        }
    }

    #[test]
    fn defaults_are_rendered_as_safe_literals() {
        let pg = Backend::Postgres;
        let sqlite = Backend::Sqlite;
        assert_eq!(
            literal(pg, &Value::Text("it's \\'; DROP".into())),
            "E'it''s \\\\''; DROP'"
        );
        assert_eq!(literal(sqlite, &Value::Text("it's".into())), "'it''s'");
        assert_eq!(literal(pg, &Value::Int(-5)), "-5");
        assert_eq!(literal(sqlite, &Value::Boolean(true)), "true");
        assert_eq!(
            literal(pg, &Value::Binary(vec![0, 255])),
            "decode('00ff', 'hex')"
        );
        assert_eq!(literal(sqlite, &Value::Binary(vec![0, 255])), "X'00ff'");
        assert_eq!(literal(sqlite, &Value::Timestamp(42)), "42");
    }

    #[tokio::test]
    async fn text_defaults_round_trip() {
        let mut identity = helm();
        let text = "quote ' backslash \\ semicolon ; dash -- \"double\" ' ; DROP TABLE x; --";
        identity.table.columns.push(Column {
            name: "note".into(),
            column_type: ColumnType::Text,
            nullable: false,
            default_value: Some(Value::Text(text.into())),
            max_length: Some(255),
            source: ColumnSource::Writer,
        });
        identity.table.columns.push(Column {
            name: "seen_at".into(),
            column_type: ColumnType::Timestamp,
            nullable: true,
            default_value: Some(Value::Timestamp(1_700_000_000_123_456)),
            max_length: None,
            source: ColumnSource::Writer,
        });
        identity.table.columns.push(Column {
            name: "blob".into(),
            column_type: ColumnType::Binary,
            nullable: true,
            default_value: Some(Value::Binary(vec![1, 2, 255])),
            max_length: None,
            source: ColumnSource::Writer,
        });
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &identity).await.unwrap();
            let id = insert_cache(&db, 1, "stable").await.unwrap();
            let row = db
                .fetch_one(
                    "SELECT note, seen_at, blob FROM packages_helm_metadata_caches WHERE id = $1",
                    &[id.into()],
                )
                .await
                .unwrap();
            assert_eq!(row.text("note").unwrap(), text, "{backend}");
            assert_eq!(
                row.opt_ts("seen_at").unwrap(),
                Some(ts(1_700_000_000_123_456)),
                "{backend}"
            );
            assert_eq!(
                row.opt_bytes("blob").unwrap(),
                Some(vec![1, 2, 255]),
                "{backend}"
            );
        }
    }

    #[tokio::test]
    async fn tables_of_an_earlier_geohost_gain_the_columns_the_templates_added() {
        let helm = helm();
        let templates: [(
            fn(Backend, &TypeIdentity) -> String,
            String,
            &[(&str, &str)],
        ); 2] = [
            (states_table_ddl, helm.states_table(), ADDED_STATES_COLUMNS),
            (
                registry_table_ddl,
                helm.registry_table(),
                ADDED_REGISTRY_COLUMNS,
            ),
        ];
        for (ddl, _, added) in &templates {
            for backend in [Backend::Postgres, Backend::Sqlite] {
                let create = &template_statements(&ddl(backend, &helm))[0];
                for (name, _) in *added {
                    assert!(create.contains(&format!("\n    {name} ")), "{create}");
                }
            }
        }
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &helm).await.unwrap();
            ensure_tracking_tables(&db, &helm).await.unwrap();
            // As an earlier Geohost made them: without the added columns
            // (and the indexes over them).
            db.execute(
                &format!(
                    "DROP INDEX {}",
                    ident(&identifier(&format!(
                        "index_{}_states_on_blob_path",
                        helm.name
                    )))
                ),
                &[],
            )
            .await
            .unwrap();
            for (_, table, added) in &templates {
                for (name, _) in *added {
                    db.execute(
                        &format!("ALTER TABLE {} DROP COLUMN {name}", ident(table)),
                        &[],
                    )
                    .await
                    .unwrap();
                }
            }
            ensure_primary_tables(&db, &helm).await.unwrap();
            ensure_tracking_tables(&db, &helm).await.unwrap();
            for (_, table, added) in &templates {
                let columns = table_columns(&db, table).await.unwrap();
                for (name, _) in *added {
                    assert!(columns.iter().any(|c| c == name), "{backend} {table}");
                }
            }
        }
    }

    #[tokio::test]
    async fn helm_tables_follow_gitlab() {
        let helm = helm();
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &helm).await.unwrap();
            ensure_tracking_tables(&db, &helm).await.unwrap();
            let pg = db.backend() == Backend::Postgres;
            // `id` is NOT NULL on both, but SQLite's pragma reports an INTEGER
            // PRIMARY KEY (the rowid) as nullable: hence `("id", bigint, pg)`.
            let (bigint, int, small, text, boolean, time, bytes) = if pg {
                (
                    "bigint",
                    "integer",
                    "smallint",
                    "text",
                    "boolean",
                    "timestamp with time zone",
                    "bytea",
                )
            } else {
                (
                    "INTEGER", "INTEGER", "INTEGER", "TEXT", "BOOLEAN", "INTEGER", "BLOB",
                )
            };
            let shape =
                |cols: Vec<(String, String, bool, Option<String>)>| -> Vec<(String, String, bool)> {
                    cols.into_iter().map(|(n, t, nn, _)| (n, t, nn)).collect()
                };
            let expect = |cols: &[(&str, &str, bool)]| -> Vec<(String, String, bool)> {
                cols.iter()
                    .map(|(n, t, nn)| (n.to_string(), t.to_string(), *nn))
                    .collect()
            };

            // The model table: GitLab's packages_helm_metadata_caches.
            let model = columns(&db, "packages_helm_metadata_caches").await;
            assert_eq!(
                shape(model.clone()),
                expect(&[
                    ("id", bigint, pg),
                    ("created_at", time, true),
                    ("updated_at", time, true),
                    ("last_downloaded_at", time, false),
                    ("project_id", bigint, true),
                    ("size", int, true),
                    ("status", small, true),
                    ("file_store", int, false),
                    ("channel", text, true),
                    ("file", text, true),
                    ("object_storage_key", text, true),
                ]),
                "{backend}"
            );
            let default_of = |cols: &[(String, String, bool, Option<String>)], name: &str| {
                cols.iter().find(|c| c.0 == name).unwrap().3.clone()
            };
            assert_eq!(
                default_of(&model, "status").as_deref(),
                Some("0"),
                "{backend}"
            );
            assert_eq!(
                default_of(&model, "file_store").as_deref(),
                Some("1"),
                "{backend}"
            );
            let model_indexes = indexes(&db, "packages_helm_metadata_caches").await;
            let names: Vec<&str> = model_indexes.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, HELM_MODEL_INDEXES, "{backend}");
            for (_, def) in &model_indexes {
                assert_contains(def, "CREATE UNIQUE INDEX");
            }
            let unique = def(
                &model_indexes,
                "index_packages_helm_metadata_caches_on_project_id_and_channel",
            );
            assert_contains(
                unique,
                if pg {
                    "(project_id, channel)"
                } else {
                    "(\"project_id\", \"channel\")"
                },
            );

            // The states table.
            let states = columns(&db, "packages_helm_metadata_cache_states").await;
            assert_eq!(
                shape(states.clone()),
                expect(&[
                    ("id", bigint, pg),
                    ("verification_started_at", time, false),
                    ("verification_retry_at", time, false),
                    ("verified_at", time, false),
                    ("packages_helm_metadata_cache_id", bigint, true),
                    ("verification_state", small, true),
                    ("verification_retry_count", small, true),
                    ("verification_checksum", bytes, false),
                    ("verification_failure", text, false),
                    ("plugin_sha256", text, false),
                    ("blob_path", text, false),
                ]),
                "{backend}"
            );
            assert_eq!(
                default_of(&states, "verification_state").as_deref(),
                Some("0")
            );
            assert_eq!(
                default_of(&states, "verification_retry_count").as_deref(),
                Some("0")
            );
            let state_indexes = indexes(&db, "packages_helm_metadata_cache_states").await;
            let names: Vec<&str> = state_indexes.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, HELM_STATES_INDEXES, "{backend}");
            let fk = identifier(
                "index_packages_helm_metadata_cache_states_on_packages_helm_metadata_cache_id",
            );
            assert_contains(def(&state_indexes, &fk), "CREATE UNIQUE INDEX");
            let by_state =
                identifier("index_packages_helm_metadata_cache_states_on_verification_state");
            assert_contains(def(&state_indexes, &by_state), "(verification_state)");
            let pending =
                identifier("index_packages_helm_metadata_cache_states_pending_verification");
            let failed = "index_packages_helm_metadata_cache_states_failed_verification";
            let started =
                identifier("index_packages_helm_metadata_cache_states_on_verification_started");
            let needs = "index_packages_helm_metadata_cache_states_needs_verification_id";
            if pg {
                assert_contains(
                    def(&state_indexes, &pending),
                    "(verified_at NULLS FIRST) WHERE (verification_state = 0)",
                );
                assert_contains(
                    def(&state_indexes, failed),
                    "(verification_retry_at NULLS FIRST) WHERE (verification_state = 3)",
                );
                assert_contains(
                    def(&state_indexes, &started),
                    "(packages_helm_metadata_cache_id, verification_started_at) WHERE (verification_state = 1)",
                );
                assert_contains(
                    def(&state_indexes, needs),
                    "(packages_helm_metadata_cache_id) WHERE ((verification_state = 0) OR (verification_state = 3))",
                );
            } else {
                assert_contains(
                    def(&state_indexes, &pending),
                    "(verified_at ASC)\n    WHERE (verification_state = 0)",
                );
                assert_contains(
                    def(&state_indexes, failed),
                    "(verification_retry_at ASC)\n    WHERE (verification_state = 3)",
                );
                assert_contains(
                    def(&state_indexes, &started),
                    "(\"packages_helm_metadata_cache_id\", verification_started_at)\n    WHERE (verification_state = 1)",
                );
                assert_contains(
                    def(&state_indexes, needs),
                    "WHERE ((verification_state = 0) OR (verification_state = 3))",
                );
            }

            // The registry table.
            let registry = columns(&db, "packages_helm_metadata_cache_registry").await;
            assert_eq!(
                shape(registry.clone()),
                expect(&[
                    ("id", bigint, pg),
                    ("packages_helm_metadata_cache_id", bigint, true),
                    ("created_at", time, true),
                    ("last_synced_at", time, false),
                    ("retry_at", time, false),
                    ("verified_at", time, false),
                    ("verification_started_at", time, false),
                    ("verification_retry_at", time, false),
                    ("state", small, true),
                    ("verification_state", small, true),
                    ("retry_count", small, true),
                    ("verification_retry_count", small, true),
                    ("checksum_mismatch", boolean, true),
                    ("verification_checksum", bytes, false),
                    ("verification_checksum_mismatched", bytes, false),
                    ("verification_failure", text, false),
                    ("last_sync_failure", text, false),
                    ("plugin_sha256", text, false),
                    ("claimed_by", text, false),
                ]),
                "{backend}"
            );
            for column in [
                "state",
                "verification_state",
                "retry_count",
                "verification_retry_count",
            ] {
                assert_eq!(
                    default_of(&registry, column).as_deref(),
                    Some("0"),
                    "{backend} {column}"
                );
            }
            assert_eq!(
                default_of(&registry, "checksum_mismatch").as_deref(),
                Some("false"),
                "{backend}"
            );
            let registry_indexes = indexes(&db, "packages_helm_metadata_cache_registry").await;
            let names: Vec<&str> = registry_indexes.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, HELM_REGISTRY_INDEXES, "{backend}");
            let fk = identifier(
                "index_packages_helm_metadata_cache_registry_on_packages_helm_metadata_cache_id",
            );
            assert_contains(def(&registry_indexes, &fk), "CREATE UNIQUE INDEX");
            let failed = "packages_helm_metadata_cache_registry_failed_verification";
            let needs = "packages_helm_metadata_cache_registry_needs_verification";
            let pending = "packages_helm_metadata_cache_registry_pending_verification";
            if pg {
                assert_contains(
                    def(&registry_indexes, failed),
                    "(verification_retry_at NULLS FIRST) WHERE ((state = 2) AND (verification_state = 3))",
                );
                assert_contains(
                    def(&registry_indexes, needs),
                    "(verification_state) WHERE ((state = 2) AND (verification_state = ANY (ARRAY[0, 3])))",
                );
                assert_contains(
                    def(&registry_indexes, pending),
                    "(verified_at NULLS FIRST) WHERE ((state = 2) AND (verification_state = 0))",
                );
            } else {
                assert_contains(
                    def(&registry_indexes, failed),
                    "WHERE ((state = 2) AND (verification_state = 3))",
                );
                assert_contains(
                    def(&registry_indexes, needs),
                    "WHERE ((state = 2) AND (verification_state IN (0, 3)))",
                );
                assert_contains(
                    def(&registry_indexes, pending),
                    "WHERE ((state = 2) AND (verification_state = 0))",
                );
            }
            let started = "packages_helm_metadata_cache_registry_started_verification";
            assert_contains(def(&registry_indexes, started), "(verification_started_at)");
            assert_contains(
                def(&registry_indexes, started),
                "WHERE ((state = 2) AND (verification_state = 1))",
            );
        }
    }

    #[tokio::test]
    async fn helm_tables_enforce_their_constraints() {
        let helm = helm();
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &helm).await.unwrap();
            ensure_tracking_tables(&db, &helm).await.unwrap();

            // Unique (project_id, channel), and unique object_storage_key.
            let id = insert_cache(&db, 1, "stable").await.unwrap();
            let error = insert_cache(&db, 1, "stable").await.unwrap_err();
            assert!(error.is_unique_violation(), "{backend}: {error}");
            insert_cache(&db, 2, "stable").await.unwrap();

            // Text limits.
            let long = "a".repeat(256);
            let error = insert_cache(&db, 3, &long).await.unwrap_err();
            assert!(
                error.to_string().to_lowercase().contains("check"),
                "{backend}: {error}"
            );
            insert_cache(&db, 3, &"a".repeat(255)).await.unwrap();
            let insert_state = "INSERT INTO packages_helm_metadata_cache_states \
                                (packages_helm_metadata_cache_id, verification_failure) VALUES ($1, $2)";
            assert!(
                db.execute(insert_state, &[id.into(), long.clone().into()])
                    .await
                    .is_err(),
                "{backend}"
            );
            let insert_registry = "INSERT INTO packages_helm_metadata_cache_registry \
                                   (packages_helm_metadata_cache_id, created_at, last_sync_failure) \
                                   VALUES ($1, $2, $3)";
            assert!(
                db.execute(insert_registry, &[id.into(), ts(1).into(), long.into()])
                    .await
                    .is_err(),
                "{backend}"
            );

            // A state row needs its model row, and goes with it.
            db.execute(insert_state, &[id.into(), "boom".into()])
                .await
                .unwrap();
            let error = db
                .execute(insert_state, &[id.into(), Arg::Text(None)])
                .await
                .unwrap_err();
            assert!(error.is_unique_violation(), "{backend}: {error}");
            let error = db
                .execute(insert_state, &[999_999_i64.into(), Arg::Text(None)])
                .await
                .unwrap_err();
            assert!(error.is_foreign_key_violation(), "{backend}: {error}");
            let row = db
                .fetch_one(
                    "SELECT verification_state, verification_retry_count FROM packages_helm_metadata_cache_states",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(
                (
                    row.i16("verification_state").unwrap(),
                    row.i16("verification_retry_count").unwrap()
                ),
                (0, 0)
            );
            db.execute(
                "DELETE FROM packages_helm_metadata_caches WHERE id = $1",
                &[id.into()],
            )
            .await
            .unwrap();
            assert_eq!(
                count(&db, "packages_helm_metadata_cache_states").await,
                0,
                "{backend}"
            );

            // The registry has no foreign key, one row per model id, and GitLab's defaults.
            db.execute(insert_registry, &[id.into(), ts(1).into(), Arg::Text(None)])
                .await
                .unwrap();
            let error = db
                .execute(insert_registry, &[id.into(), ts(1).into(), Arg::Text(None)])
                .await
                .unwrap_err();
            assert!(error.is_unique_violation(), "{backend}: {error}");
            let row = db
                .fetch_one("SELECT state, retry_count, checksum_mismatch FROM packages_helm_metadata_cache_registry", &[])
                .await
                .unwrap();
            assert_eq!(row.i16("state").unwrap(), 0);
            assert_eq!(row.i16("retry_count").unwrap(), 0);
            assert!(!row.bool("checksum_mismatch").unwrap());
        }
    }

    #[tokio::test]
    async fn ensuring_is_idempotent() {
        let helm = helm();
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &helm).await.unwrap();
            ensure_tracking_tables(&db, &helm).await.unwrap();
            let id = insert_cache(&db, 1, "stable").await.unwrap();
            let before = (
                indexes(&db, "packages_helm_metadata_caches").await,
                indexes(&db, "packages_helm_metadata_cache_states").await,
                indexes(&db, "packages_helm_metadata_cache_registry").await,
                columns(&db, "packages_helm_metadata_caches").await,
            );
            for _ in 0..2 {
                ensure_primary_tables(&db, &helm).await.unwrap();
                ensure_tracking_tables(&db, &helm).await.unwrap();
            }
            let after = (
                indexes(&db, "packages_helm_metadata_caches").await,
                indexes(&db, "packages_helm_metadata_cache_states").await,
                indexes(&db, "packages_helm_metadata_cache_registry").await,
                columns(&db, "packages_helm_metadata_caches").await,
            );
            assert_eq!(before, after, "{backend}");
            assert_eq!(
                count(&db, "packages_helm_metadata_caches").await,
                1,
                "{backend}"
            );
            // Concurrent ensures wait for each other instead of failing.
            let (a, b) = tokio::join!(
                ensure_primary_tables(&db, &helm),
                ensure_primary_tables(&db, &helm)
            );
            a.unwrap();
            b.unwrap();
            db.execute(
                "DELETE FROM packages_helm_metadata_caches WHERE id = $1",
                &[id.into()],
            )
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn concurrent_first_ensures_both_succeed() {
        let helm = helm();
        for (backend, db) in test_databases().await {
            let (a, b) = tokio::join!(
                ensure_primary_tables(&db, &helm),
                ensure_primary_tables(&db, &helm)
            );
            a.unwrap_or_else(|e| panic!("{backend}: {e}"));
            b.unwrap_or_else(|e| panic!("{backend}: {e}"));
            let (a, b) = tokio::join!(
                ensure_tracking_tables(&db, &helm),
                ensure_tracking_tables(&db, &helm)
            );
            a.unwrap_or_else(|e| panic!("{backend}: {e}"));
            b.unwrap_or_else(|e| panic!("{backend}: {e}"));
        }
    }

    #[tokio::test]
    async fn model_tables_gain_addable_columns_and_refuse_the_rest() {
        let helm = helm();
        let mut grown = helm.clone();
        grown.table.columns.push(Column {
            name: "last_checked_at".into(),
            column_type: ColumnType::Timestamp,
            nullable: true,
            default_value: None,
            max_length: None,
            source: ColumnSource::Writer,
        });
        grown.table.columns.push(Column {
            name: "attempts".into(),
            column_type: ColumnType::Integer,
            nullable: false,
            default_value: Some(Value::Int(3)),
            max_length: None,
            source: ColumnSource::Writer,
        });
        grown.table.columns.push(Column {
            name: "label".into(),
            column_type: ColumnType::Text,
            nullable: true,
            default_value: None,
            max_length: Some(10),
            source: ColumnSource::Writer,
        });
        for (backend, db) in test_databases().await {
            ensure_primary_tables(&db, &helm).await.unwrap();
            let id = insert_cache(&db, 1, "stable").await.unwrap();

            ensure_primary_tables(&db, &grown).await.unwrap();
            let names: Vec<String> = columns(&db, "packages_helm_metadata_caches")
                .await
                .into_iter()
                .map(|c| c.0)
                .collect();
            assert_eq!(
                names[names.len() - 3..],
                ["last_checked_at", "attempts", "label"],
                "{backend}"
            );
            let row = db
                .fetch_one(
                    "SELECT channel, last_checked_at, attempts FROM packages_helm_metadata_caches WHERE id = $1",
                    &[id.into()],
                )
                .await
                .unwrap();
            assert_eq!(row.text("channel").unwrap(), "stable");
            assert_eq!(row.opt_ts("last_checked_at").unwrap(), None);
            assert_eq!(row.i32("attempts").unwrap(), 3);
            let error = db
                .execute(
                    "UPDATE packages_helm_metadata_caches SET label = $1 WHERE id = $2",
                    &["12345678901".into(), id.into()],
                )
                .await
                .unwrap_err();
            assert!(
                error.to_string().to_lowercase().contains("check"),
                "{backend}: {error}"
            );
            // Idempotent once grown; the old identity still fits (extra columns are kept).
            ensure_primary_tables(&db, &grown).await.unwrap();
            ensure_primary_tables(&db, &helm).await.unwrap();

            let refusals: Vec<(&str, Box<dyn Fn(&mut TypeIdentity)>)> = vec![
                (
                    "`status`: the identity declares no default, the table has a default",
                    Box::new(|i| {
                        i.table
                            .columns
                            .iter_mut()
                            .find(|c| c.name == "status")
                            .unwrap()
                            .default_value = None
                    }),
                ),
                (
                    "`size`: the identity declares it Bigint (bigint), the table has",
                    Box::new(|i| {
                        i.table
                            .columns
                            .iter_mut()
                            .find(|c| c.name == "size")
                            .unwrap()
                            .column_type = ColumnType::Bigint
                    }),
                ),
                (
                    "`channel`: the identity declares it Integer",
                    Box::new(|i| {
                        let c = i
                            .table
                            .columns
                            .iter_mut()
                            .find(|c| c.name == "channel")
                            .unwrap();
                        c.column_type = ColumnType::Integer;
                        c.max_length = None;
                    }),
                ),
                (
                    "`project_id`: the identity declares it nullable, the table has it NOT NULL",
                    Box::new(|i| {
                        i.table
                            .columns
                            .iter_mut()
                            .find(|c| c.name == "project_id")
                            .unwrap()
                            .nullable = true
                    }),
                ),
                (
                    "`mirror_id`: the identity adds it as NOT NULL without a default",
                    Box::new(|i| {
                        i.table.columns.push(Column {
                            name: "mirror_id".into(),
                            column_type: ColumnType::Bigint,
                            nullable: false,
                            default_value: None,
                            max_length: None,
                            source: ColumnSource::Writer,
                        })
                    }),
                ),
                (
                    "`size`: the identity no longer declares it",
                    Box::new(|i| i.table.columns.retain(|c| c.name != "size")),
                ),
            ];
            for (expected, change) in refusals {
                let mut identity = grown.clone();
                // A new addable column alongside: it must not be added when the whole is refused.
                identity.table.columns.push(Column {
                    name: "never_added".into(),
                    column_type: ColumnType::Text,
                    nullable: true,
                    default_value: None,
                    max_length: None,
                    source: ColumnSource::Writer,
                });
                change(&mut identity);
                if backend == "sqlite" && expected.contains("Bigint") {
                    // SQLite stores every integer type as INTEGER: nothing to see.
                    continue;
                }
                let error = ensure_primary_tables(&db, &identity).await.unwrap_err();
                assert!(matches!(error, DbError::Invalid(_)), "{backend}: {error}");
                let message = error.to_string();
                assert_contains(&message, "table `packages_helm_metadata_caches`");
                assert_contains(&message, expected);
                let names: Vec<String> = columns(&db, "packages_helm_metadata_caches")
                    .await
                    .into_iter()
                    .map(|c| c.0)
                    .collect();
                assert!(
                    !names.contains(&"never_added".to_string()),
                    "{backend}: {expected}"
                );
            }
        }
    }
}
