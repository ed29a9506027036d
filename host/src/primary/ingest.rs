//! Writes on the primary, as a package registry makes them: create or update
//! a record (by its natural key) with its blob, and delete one.
//!
//! Order of a write, so that no reader ever sees a record without its blob:
//! the body is streamed into a temporary object (hashed and counted on the
//! way, on stable storage when complete), then in one transaction the row
//! and its state are written and the event is logged; the write's journal
//! and the blob's previous content are kept (`journal`); the blob is moved
//! into place, durably, before the commit; the commit makes it all visible
//! at once. A write that fails or is cut short before its commit is undone
//! from its journal: a new blob removed, a replaced one put back.
//!
//! The transactional part runs in a group with the writes that arrive at
//! the same time (`group`): one transaction, a savepoint per write, the
//! syncs and the commit shared.

use super::events;
use super::journal::JournalError;
use super::records::{self, Record};
use crate::catalog::InstalledType;
use crate::db::{Arg, DbError, QuotedIdent, ident, placeholders, value_arg};
use crate::plugin::value::json_to_value;
use crate::plugin::{BlobPath, ColumnSource, PluginError, Row, Value};
use crate::site::Site;
use crate::states::sql::V_PENDING;
use crate::storage::StorageError;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a write was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no replicable type named `{0}` is installed")]
    UnknownType(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Journal(JournalError),
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("the blob is larger than this site's storage.max_blob_bytes ({0} bytes)")]
    TooLarge(u64),
    /// The write's group stopped without answering it (a panic): nothing
    /// of it was committed.
    #[error(
        "the write's group stopped before its commit (nothing of it was committed); write it again"
    )]
    Interrupted,
    /// A failure of the group commit this write was part of
    /// (`primary::group`): every write of the group gets it.
    #[error(transparent)]
    Group(Arc<IngestError>),
}

/// What a write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteOutcome {
    pub id: i64,
    pub created: bool,
    pub size: u64,
    /// SHA-256 of the blob as received (the verifier checks it again from storage).
    pub sha256: String,
    pub blob_path: String,
    pub record: serde_json::Map<String, serde_json::Value>,
}

/// The installed type called `name`, or [`IngestError::UnknownType`].
pub fn installed(site: &Site, name: &str) -> Result<Arc<InstalledType>, IngestError> {
    site.installed(name)
        .ok_or_else(|| IngestError::UnknownType(name.to_string()))
}

/// Creates or updates the record named by the natural-key columns in
/// `columns` (writer columns, JSON values by name) with the blob `body`.
pub async fn upsert<S, E>(
    site: &Site,
    type_name: &str,
    columns: &serde_json::Map<String, serde_json::Value>,
    body: S,
) -> Result<WriteOutcome, IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let first = installed(site, type_name)?;
    let writer = writer_values(&first, columns)?;
    // A missing project refuses the write before its body is read; the
    // transaction checks again, under a lock (see `write_record`).
    if let Some(project) = project_of(&first, &writer) {
        let found = site
            .db
            .fetch_optional(&project_query(None), &[project.into()])
            .await?;
        project_found(project, found.is_some())?;
    }
    // Derived columns are a pure function of the writer columns: computing
    // them first refuses a bad record (say, an invalid channel) before its
    // body is read. They are used only if the record turns out to be new.
    let derived = derive(&first, &writer).await?;
    // Lengths after derive, so that a type's own rule for an overlong value
    // (Helm: "invalid Helm channel") is the writer's answer.
    for column in first.identity.table.columns_from(ColumnSource::Writer) {
        if let Some(value) = writer.get(&column.name) {
            crate::plugin::check_length(column, value).map_err(IngestError::Invalid)?;
        }
    }
    // Only its hash from here on: a hot swap waits for the old version's
    // holders to drop it, and this write may wait for that swap.
    let first_sha = first.plugin.sha256().to_string();
    drop(first);

    // The blob next, into a temporary object: no transaction is held while
    // the client uploads.
    let mut temp = site.blobs.begin_temp();
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                if let Ok(unfinished) = temp.finish().await {
                    let _ = unfinished.discard().await;
                }
                return Err(IngestError::Body(error.to_string()));
            }
        };
        if temp.size() + chunk.len() as u64 > site.config.storage.max_blob_bytes {
            if let Ok(unfinished) = temp.finish().await {
                let _ = unfinished.discard().await;
            }
            return Err(IngestError::TooLarge(site.config.storage.max_blob_bytes));
        }
        temp.write(chunk).await?;
    }
    // Its group commit makes the content durable (`group.rs`).
    let temp = temp.finish_for_group().await?;
    // Not while a hot swap moves this type's blobs; under the version live
    // once it is done.
    let writing = site.catalog.writing(type_name).await;
    let prepared = async {
        let it = installed(site, type_name)?;
        if it.plugin.sha256() == first_sha {
            return Ok((it, writer, derived));
        }
        let writer = writer_values(&it, columns)?;
        let derived = derive(&it, &writer).await?;
        Ok::<_, IngestError>((it, writer, derived))
    }
    .await;
    let (it, writer, derived) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            if let Err(error) = temp.discard().await {
                tracing::warn!(%error, "could not remove a temporary blob");
            }
            return Err(error);
        }
    };
    // Written with whatever other writes are waiting, in one transaction.
    super::group::submit(
        site,
        super::group::Write {
            writing,
            it,
            writer,
            derived,
            temp,
        },
    )
    .await
}

/// What [`stage`] made of one write in its group's transaction.
pub(super) enum Staged {
    /// Its rows are written; its event, the blob and the commit remain.
    Ready(StagedWrite),
    /// It touches a record or blob path another write of the group
    /// touches: it goes into the next group (its savepoint rolled back).
    Later,
}

/// A write whose rows are in the group's transaction.
pub(super) struct StagedWrite {
    pub id: i64,
    pub created: bool,
    pub values: HashMap<String, Value>,
    pub path: BlobPath,
    /// The blob path the record had, when the write moves it.
    pub old_path: Option<BlobPath>,
}

impl StagedWrite {
    /// The event the write logs: GitLab's `created` or `updated`.
    pub fn event(&self) -> &'static str {
        if self.created {
            events::CREATED
        } else {
            events::UPDATED
        }
    }
}

impl StagedWrite {
    /// What the writer is told once the group committed.
    pub fn outcome(self, it: &InstalledType, written: crate::storage::Written) -> WriteOutcome {
        let record = Record {
            id: self.id,
            values: self.values,
            verification_state: crate::states::VerificationState::Pending,
            verification_checksum: None,
        };
        WriteOutcome {
            id: self.id,
            created: self.created,
            size: written.size,
            sha256: written.sha256,
            blob_path: self.path.to_string(),
            record: record.columns_json(it),
        }
    }
}

/// The rows of one write, inside its group's transaction `tx` (in a
/// savepoint the caller rolls back on an error): the record inserted or
/// updated, its state pending verification (the group logs the events of
/// all its writes together, `group.rs`). `taken`
/// says whether another write of the group already has a record id or a
/// blob path; such a write is [`Staged::Later`].
pub(super) async fn stage(
    tx: &mut crate::db::Tx,
    it: &Arc<InstalledType>,
    writer: &HashMap<String, Value>,
    derived: &HashMap<String, Value>,
    written: &crate::storage::Written,
    file_store: i64,
    taken: impl Fn(Option<i64>, Option<&BlobPath>) -> bool,
) -> Result<Staged, IngestError> {
    if let Some(project) = project_of(it, writer) {
        let found = tx
            .fetch_optional(&project_query(Some(tx.backend())), &[project.into()])
            .await?;
        project_found(project, found.is_some())?;
    }
    let key: Vec<(String, Arg)> = it
        .identity
        .table
        .natural_key
        .iter()
        .map(|name| {
            let column = it.identity.table.column(name).expect("checked identity");
            Ok((name.clone(), value_arg(&writer[name], column.column_type)?))
        })
        .collect::<Result<_, DbError>>()?;
    let existing = records::by_natural_key(tx, it, &key).await?;
    let now = crate::db::Db::now();
    let now_value = Value::Timestamp(now.timestamp_micros());

    let (mut values, created, old_path) = match &existing {
        None => {
            let mut values = writer.clone();
            values.extend(derived.clone());
            (values, true, None)
        }
        Some(record) => {
            if !it.identity.mutable {
                return Err(IngestError::Conflict(format!(
                    "{} {} exists and {} are immutable",
                    it.identity.title, record.id, it.identity.title_plural
                )));
            }
            let old_path = blob_path(it, record.id, &record.values).await.ok();
            if taken(Some(record.id), old_path.as_ref()) {
                return Ok(Staged::Later);
            }
            let mut values = record.values.clone();
            values.extend(writer.clone());
            (values, false, old_path)
        }
    };
    for column in it.columns() {
        let value = match column.source {
            ColumnSource::BlobSize => Value::Int(written.size as i64),
            ColumnSource::FileStore => Value::Int(file_store),
            ColumnSource::UpdatedAt => now_value.clone(),
            ColumnSource::CreatedAt if created => now_value.clone(),
            _ => continue,
        };
        values.insert(column.name.clone(), value);
    }
    for column in it.columns() {
        crate::plugin::check_value(column, values.get(&column.name).unwrap_or(&Value::Null))
            .map_err(IngestError::Invalid)?;
    }
    let id = existing.as_ref().map(|r| r.id).unwrap_or(0);
    let path = blob_path(it, id, &values).await?;
    if taken(None, Some(&path)) {
        return Ok(Staged::Later);
    }

    let id = match &existing {
        None => insert_row(tx, it, &values).await.map_err(|error| {
            let title = &it.identity.title;
            conflict(error, || {
                format!("a {title} with these unique columns exists already")
            })
        })?,
        Some(record) => {
            update_row(tx, it, record.id, &values).await?;
            record.id
        }
    };
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let written_state = if created {
        tx.execute(
            &format!("INSERT INTO {states} ({fk}, blob_path) VALUES ($1, $2)"),
            &[id.into(), path.as_str().into()],
        )
        .await
    } else {
        // GitLab's `verification_pending`: the blob changed, its checksum is void.
        tx.execute(
            &format!(
                "UPDATE {states} SET verification_state = {V_PENDING}, verification_checksum = NULL, \
                 verification_started_at = NULL, verification_retry_count = 0, \
                 verification_retry_at = NULL, verification_failure = NULL, blob_path = $2 \
                 WHERE {fk} = $1"
            ),
            &[id.into(), path.as_str().into()],
        )
        .await
    };
    // Two records never share a blob: deleting one would delete the other's.
    written_state.map_err(|error| {
        let title = &it.identity.title;
        conflict(error, || {
            format!("another {title} already has blob path `{path}`; each record needs its own")
        })
    })?;
    Ok(Staged::Ready(StagedWrite {
        id,
        created,
        values,
        old_path: old_path.filter(|old| *old != path),
        path,
    }))
}

/// Deletes a record and its blob; logs a `deleted` event carrying the blob
/// path and the uploader class, as GitLab does.
pub async fn delete(site: &Site, type_name: &str, id: i64) -> Result<Record, IngestError> {
    let _writing = site.catalog.writing(type_name).await;
    let it = installed(site, type_name)?;
    let record = records::by_id(&site.db, &it, id)
        .await?
        .ok_or_else(|| IngestError::NotFound(format!("{} {id}", it.identity.title)))?;
    let path = blob_path(&it, id, &record.values).await?;
    let mut tx = site.db.begin().await?;
    let deleted = tx
        .execute(
            &format!(
                "DELETE FROM {} WHERE id = $1",
                ident(&it.identity.table.name)
            ),
            &[id.into()],
        )
        .await?;
    if deleted == 0 {
        return Err(IngestError::NotFound(format!("{} {id}", it.identity.title)));
    }
    let mut payload = events::payload(id);
    payload["uploader_class"] = it.identity.uploader_class.clone().into();
    payload["blob_path"] = path.to_string().into();
    let published = events::publish(&mut tx, it.name(), events::DELETED, payload).await?;
    tx.commit().await?;
    if published {
        site.events.notify();
    }
    site.blobs.delete(it.name(), &path).await?;
    tracing::info!(r#type = it.name(), id, "record deleted");
    Ok(record)
}

pub(super) fn journal_error(error: JournalError) -> IngestError {
    match error {
        JournalError::Storage(e) => IngestError::Storage(e),
        JournalError::Db(e) => IngestError::Db(e),
        other => IngestError::Journal(other),
    }
}

/// Resolves a record id from natural-key columns.
pub async fn find_by_key(
    site: &Site,
    type_name: &str,
    columns: &serde_json::Map<String, serde_json::Value>,
) -> Result<Record, IngestError> {
    let it = installed(site, type_name)?;
    let mut key = Vec::new();
    for name in &it.identity.table.natural_key {
        let column = it.identity.table.column(name).expect("checked identity");
        let json = columns
            .get(name)
            .ok_or_else(|| IngestError::Invalid(format!("missing key column `{name}`")))?;
        let value = json_to_value(column, json).map_err(IngestError::Invalid)?;
        key.push((name.clone(), value_arg(&value, column.column_type)?));
    }
    let mut tx = site.db.begin().await?;
    let found = records::by_natural_key(&mut tx, &it, &key).await?;
    tx.commit().await?;
    found.ok_or_else(|| IngestError::NotFound(format!("{} with that key", it.identity.title)))
}

/// The writer column that names a record's project: GitLab's
/// `belongs_to :project` (`project_id`, a foreign key to `projects`).
pub const PROJECT_COLUMN: &str = "project_id";

/// The project a record belongs to: its `project_id` writer column, if the
/// type has one and it is set.
fn project_of(it: &InstalledType, writer: &HashMap<String, Value>) -> Option<i64> {
    let column = it.identity.table.column(PROJECT_COLUMN)?;
    if column.source != ColumnSource::Writer {
        return None;
    }
    match writer.get(PROJECT_COLUMN) {
        Some(Value::Int(id)) => Some(*id),
        _ => None,
    }
}

/// The query finding a project by id. Inside a write's transaction
/// (`locking` on its backend) the row is share-locked on PostgreSQL until
/// the transaction ends, so a concurrent delete of the project waits for
/// the write; SQLite has a single writer.
fn project_query(locking: Option<crate::db::Backend>) -> String {
    let lock = match locking {
        Some(crate::db::Backend::Postgres) => " FOR KEY SHARE",
        _ => "",
    };
    format!("SELECT id FROM projects WHERE id = $1{lock}")
}

/// Refuses a record of a project that does not exist, as GitLab's foreign
/// key does (422, naming the project).
fn project_found(project: i64, found: bool) -> Result<(), IngestError> {
    if found {
        Ok(())
    } else {
        Err(IngestError::Invalid(format!(
            "project {project} does not exist"
        )))
    }
}

/// The writer columns of a request, typed and checked; missing ones take
/// their default, and a missing required column is an error.
fn writer_values(
    it: &InstalledType,
    columns: &serde_json::Map<String, serde_json::Value>,
) -> Result<HashMap<String, Value>, IngestError> {
    for name in columns.keys() {
        match it.identity.table.column(name) {
            Some(c) if c.source == ColumnSource::Writer => {}
            Some(c) => {
                return Err(IngestError::Invalid(format!(
                    "column `{name}` is set by {}, not by the writer",
                    if c.source == ColumnSource::Derived {
                        "the type"
                    } else {
                        "the host"
                    }
                )));
            }
            None => {
                return Err(IngestError::Invalid(format!(
                    "{} has no column `{name}`",
                    it.identity.table.name
                )));
            }
        }
    }
    let mut values = HashMap::new();
    for column in it.identity.table.columns_from(ColumnSource::Writer) {
        let value = match columns.get(&column.name) {
            Some(json) => json_to_value(column, json).map_err(IngestError::Invalid)?,
            None => match &column.default_value {
                Some(default) => default.clone(),
                None if column.nullable => Value::Null,
                None => {
                    return Err(IngestError::Invalid(format!(
                        "missing column `{}`",
                        column.name
                    )));
                }
            },
        };
        values.insert(column.name.clone(), value);
    }
    Ok(values)
}

/// Runs the type's `derive` for one new record.
async fn derive(
    it: &Arc<InstalledType>,
    writer: &HashMap<String, Value>,
) -> Result<HashMap<String, Value>, IngestError> {
    let row = it.row(0, &it.writer_columns(), writer);
    let plugin = it.plugin.clone();
    let mut answers = tokio::task::spawn_blocking(move || plugin.derive(&[row]))
        .await
        .map_err(|e| IngestError::Invalid(format!("plugin task failed: {e}")))??;
    let derived = answers
        .pop()
        .expect("one answer per row")
        .map_err(IngestError::Invalid)?;
    Ok(it
        .identity
        .table
        .columns_from(ColumnSource::Derived)
        .map(|c| c.name.clone())
        .zip(derived)
        .collect())
}

/// The type's blob path for a record.
pub async fn blob_path(
    it: &InstalledType,
    id: i64,
    values: &HashMap<String, Value>,
) -> Result<BlobPath, IngestError> {
    let row: Row = it.path_row(id, values);
    let plugin = it.plugin.clone();
    let mut answers = tokio::task::spawn_blocking(move || plugin.blob_paths(&[row]))
        .await
        .map_err(|e| IngestError::Invalid(format!("plugin task failed: {e}")))??;
    answers
        .pop()
        .expect("one answer per row")
        .map_err(IngestError::Invalid)
}

async fn insert_row(
    tx: &mut crate::db::Tx,
    it: &InstalledType,
    values: &HashMap<String, Value>,
) -> Result<i64, DbError> {
    let columns = it.columns();
    let names: Vec<QuotedIdent> = columns.iter().map(|c| ident(&c.name)).collect();
    let args = columns
        .iter()
        .map(|c| value_arg(values.get(&c.name).unwrap_or(&Value::Null), c.column_type))
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) RETURNING id",
        ident(&it.identity.table.name),
        names.join(", "),
        placeholders(1, columns.len())
    );
    tx.fetch_one(&sql, &args).await?.i64("id")
}

/// Updates every column but the derived ones (read-only after creation)
/// and `created_at`.
async fn update_row(
    tx: &mut crate::db::Tx,
    it: &InstalledType,
    id: i64,
    values: &HashMap<String, Value>,
) -> Result<(), DbError> {
    let columns: Vec<_> = it
        .columns()
        .iter()
        .filter(|c| !matches!(c.source, ColumnSource::Derived | ColumnSource::CreatedAt))
        .collect();
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", ident(&c.name), i + 2))
        .collect();
    let mut args = vec![Arg::from(id)];
    for column in &columns {
        args.push(value_arg(
            values.get(&column.name).unwrap_or(&Value::Null),
            column.column_type,
        )?);
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE id = $1",
        ident(&it.identity.table.name),
        sets.join(", ")
    );
    tx.execute(&sql, &args).await?;
    Ok(())
}

/// `error`, or, when it is a unique violation, the conflict `message` says.
fn conflict(error: DbError, message: impl FnOnce() -> String) -> IngestError {
    if error.is_unique_violation() {
        IngestError::Conflict(message())
    } else {
        error.into()
    }
}
