//! Reading a type's model table (with its verification state) generically,
//! from the columns the type's identity declares.

use crate::catalog::{CallError, InstalledType};
use crate::db::{Arg, Db, DbError, DbRow, Tx, ident, placeholders};
use crate::plugin::{BlobPath, Value};
use crate::states::VerificationState;
use std::collections::HashMap;

/// One record of a type's model table.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: i64,
    /// Every model column by name.
    pub values: HashMap<String, Value>,
    /// The verification state on this (primary) site.
    pub verification_state: VerificationState,
    pub verification_checksum: Option<Vec<u8>>,
}

impl Record {
    /// The record's columns as JSON (the feed's shape).
    pub fn columns_json(&self, it: &InstalledType) -> serde_json::Map<String, serde_json::Value> {
        it.columns()
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    self.values
                        .get(&c.name)
                        .map(Value::to_json)
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The record as the feed serves it.
    pub fn to_feed(&self, it: &InstalledType) -> crate::feed::FeedRecord {
        crate::feed::FeedRecord {
            id: self.id,
            columns: self.columns_json(it),
            verification_state: self.verification_state,
            // SHA-256 checksums are stored as bytes; GitLab's object-storage
            // checksums (padded sizes) are valid hex too.
            verification_checksum: self.verification_checksum.as_deref().map(hex::encode),
        }
    }

    pub fn int(&self, column: &str) -> Option<i64> {
        self.values.get(column).and_then(Value::as_int)
    }
}

/// The names the state's columns are selected under: a leading `_` is no
/// name a type may give a model column, so a type's own
/// `verification_state` column is never taken for the host's.
const STATE: &str = "_s_verification_state";
const CHECKSUM: &str = "_s_verification_checksum";

/// `SELECT` list: the model's `id`, its columns (prefixed `m.`), and the
/// state (under [`STATE`] and [`CHECKSUM`]).
pub fn select_list(it: &InstalledType) -> String {
    let mut list = String::from("m.id");
    for column in it.columns() {
        list.push_str(", m.");
        list.push_str(&ident(&column.name));
    }
    list.push_str(&format!(
        ", s.verification_state AS {STATE}, s.verification_checksum AS {CHECKSUM}"
    ));
    list
}

/// `FROM` clause joining the model table with its state table.
pub fn from_clause(it: &InstalledType) -> String {
    format!(
        "{} m LEFT JOIN {} s ON s.{} = m.id",
        ident(&it.identity.table.name),
        ident(&it.identity.states_table()),
        ident(&it.identity.foreign_key())
    )
}

/// Decodes a row selected with [`select_list`].
pub fn decode(it: &InstalledType, row: &DbRow) -> Result<Record, DbError> {
    let mut values = HashMap::with_capacity(it.columns().len());
    for column in it.columns() {
        values.insert(
            column.name.clone(),
            row.value(&column.name, column.column_type)?,
        );
    }
    let state = row.int(STATE)?.unwrap_or(0) as i16;
    Ok(Record {
        id: row.i64("id")?,
        values,
        verification_state: VerificationState::try_from(state)
            .map_err(|e| DbError::decode(STATE, e))?,
        verification_checksum: row.opt_bytes(CHECKSUM)?,
    })
}

/// The type's blob path for each record, in order; a record the type
/// traps on gets its own error (`InstalledType::blob_paths_of_rows`).
pub async fn blob_paths(
    it: &InstalledType,
    records: &[Record],
) -> Result<Vec<Result<BlobPath, String>>, CallError> {
    let rows = records
        .iter()
        .map(|r| Ok(it.path_row(r.id, &r.values)))
        .collect();
    it.blob_paths_of_rows(rows).await
}

/// One record by id.
pub async fn by_id(db: &Db, it: &InstalledType, id: i64) -> Result<Option<Record>, DbError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE m.id = $1",
        select_list(it),
        from_clause(it)
    );
    match db.fetch_optional(&sql, &[Arg::from(id)]).await? {
        Some(row) => Ok(Some(decode(it, &row)?)),
        None => Ok(None),
    }
}

/// Records by ids (any order in, id order out; unknown ids are skipped).
pub async fn by_ids(db: &Db, it: &InstalledType, ids: &[i64]) -> Result<Vec<Record>, DbError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {} FROM {} WHERE m.id IN ({}) ORDER BY m.id",
            select_list(it),
            from_clause(it),
            placeholders(1, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(|&id| Arg::from(id)).collect();
        for row in db.fetch_all(&sql, &args).await? {
            out.push(decode(it, &row)?);
        }
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// Up to `limit` records with `id > after_id`, in id order.
pub async fn page(
    db: &Db,
    it: &InstalledType,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Record>, DbError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE m.id > $1 ORDER BY m.id LIMIT $2",
        select_list(it),
        from_clause(it)
    );
    db.fetch_map(&sql, &[Arg::from(after_id), Arg::from(limit)], |row| {
        decode(it, row)
    })
    .await
}

/// The highest id in the model table.
pub async fn max_id(db: &Db, it: &InstalledType) -> Result<Option<i64>, DbError> {
    let sql = format!(
        "SELECT MAX(id) AS max_id FROM {}",
        ident(&it.identity.table.name)
    );
    db.fetch_one(&sql, &[]).await?.opt_i64("max_id")
}

/// The record with this natural key, inside a transaction.
pub async fn by_natural_key(
    tx: &mut Tx,
    it: &InstalledType,
    key: &[(String, Arg)],
) -> Result<Option<Record>, DbError> {
    let conditions: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("m.{} = ${}", ident(name), i + 1))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        select_list(it),
        from_clause(it),
        conditions.join(" AND ")
    );
    let args: Vec<Arg> = key.iter().map(|(_, a)| a.clone()).collect();
    match tx.fetch_optional(&sql, &args).await? {
        Some(row) => Ok(Some(decode(it, &row)?)),
        None => Ok(None),
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The ids of the first `limit` records matching `keyword`, in id order: a
/// text column contains it (case-insensitive), or, when the keyword is an
/// integer, the id or an integer column equals it. Geohost's stand-in for
/// GitLab's per-model `search` (the host knows no type's search rules).
pub async fn search_ids(
    db: &Db,
    it: &InstalledType,
    keyword: &str,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    use crate::plugin::ColumnType as T;
    let keyword = keyword.trim();
    if keyword.is_empty() {
        return Ok(Vec::new());
    }
    let mut conditions = Vec::new();
    let mut args = vec![Arg::from(format!(
        "%{}%",
        like_escape(&keyword.to_lowercase())
    ))];
    for column in it.columns() {
        if column.column_type == T::Text {
            conditions.push(format!(
                "LOWER({}) LIKE $1 ESCAPE '\\'",
                ident(&column.name)
            ));
        }
    }
    if let Ok(number) = keyword.parse::<i64>() {
        args.push(number.into());
        conditions.push("id = $2".to_string());
        for column in it.columns() {
            if matches!(column.column_type, T::Bigint | T::Integer | T::Smallint) {
                conditions.push(format!("{} = $2", ident(&column.name)));
            }
        }
    }
    if conditions.is_empty() {
        return Ok(Vec::new());
    }
    args.push(limit.into());
    let sql = format!(
        "SELECT id FROM {} WHERE {} ORDER BY id LIMIT ${}",
        ident(&it.identity.table.name),
        conditions.join(" OR "),
        args.len()
    );
    db.fetch_map(&sql, &args, |row| row.i64("id")).await
}
