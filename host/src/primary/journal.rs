//! Blob writes on the primary that can be undone until they commit.
//!
//! Ingest moves a new blob into place before the transaction that points at
//! it commits (a committed record must never lack its blob). An update
//! therefore replaces the old content before it knows whether its commit
//! will succeed; a crash or a failed commit in between would leave the old
//! record pointing at the new content. So, inside the write's transaction
//! and before the blob path is touched, the write leaves durably under the
//! store's `.undo/` (`storage::undo`):
//!
//! 1. a journal: the type, the blob path, whether a blob was there, the new
//!    content's SHA-256, a token;
//! 2. the previous content (a hard link on a local disk, a server-side copy
//!    on S3);
//!
//! and inserts its token into `geo_blob_writes` as committed, in its own
//! transaction: the token becomes visible with the record, or not at all.
//! After the commit the journal and the previous content are removed.
//!
//! A journal still there means the write's fate was never settled (a
//! crash, a connection lost at commit). Whoever finds it settles it with
//! the same table: it inserts the token as *abandoned*, which does nothing
//! if the write committed, and waits for the write's transaction while that
//! is still open (the uncommitted key on PostgreSQL, the write lock on
//! SQLite). An abandoned write is undone: the previous content is put back,
//! or a blob that was new is removed if it still holds that write's
//! content. Undoing is idempotent, so whoever finds an abandoned journal
//! may finish it. Journals are settled:
//!
//! - at start, by the process that holds the site's database alone (SQLite)
//!   all of them, otherwise those older than `storage.temp_max_age_secs`;
//! - by the `write-journal` duty, the same way, all the time;
//! - by the next write to the same blob path, before it keeps anything, so
//!   that an undo never puts back content older than a newer commit.
//!
//! Writes to one record are serialised by its row lock (PostgreSQL) or by
//! the single writer (SQLite) from the row's insert or update to the
//! commit, which is where the journal is taken; within one process, a
//! group commit (`group`) never holds two writes of one record or path.

use crate::db::{Arg, Db, DbError, Tx};
use crate::plugin::BlobPath;
use crate::storage::{BlobStore, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a row of `geo_blob_writes` stays once its journal is gone.
const OUTCOME_RETENTION: Duration = Duration::from_secs(3600);

/// Why a journaled write could not go on.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unreadable journal {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// A journal as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Journal {
    replicable_name: String,
    blob_path: String,
    /// Whether a blob was at the path when the write began.
    had_previous: bool,
    /// SHA-256 of the content the write puts there.
    sha256: String,
    /// The process that wrote it (`leases::worker_id`), for operators.
    worker: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// The key prefix of every journal of one blob path: 16 hex digits of the
/// SHA-256 of `<type>/<path>`.
fn path_key(type_name: &str, path: &BlobPath) -> String {
    let digest = Sha256::digest(format!("{type_name}/{}", path.as_str()));
    hex::encode(&digest[..8])
}

/// A write in progress: its journal is on stable storage.
#[derive(Debug)]
#[must_use = "finish or abandon a pending write"]
pub struct PendingWrite {
    key: String,
    blobs: BlobStore,
}

/// How one journal was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its write had committed: journal and previous content removed.
    Committed,
    /// Its write was abandoned and is undone.
    Undone,
    /// Nothing left to settle (settled meanwhile).
    Gone,
}

impl PendingWrite {
    /// Starts a write, inside its transaction `tx` and after its row was
    /// inserted or updated (which serialises writes of the record), that
    /// will put content with SHA-256 `sha256` at blob `path` of
    /// `type_name`: settles what an unfinished earlier write of that path
    /// left, writes the journal, records the token in `tx` and keeps the
    /// current content, durably.
    pub async fn begin(
        tx: &mut Tx,
        blobs: &BlobStore,
        type_name: &str,
        path: &BlobPath,
        sha256: &str,
    ) -> Result<PendingWrite, JournalError> {
        let mut pending = Self::begin_all(tx, blobs, &[(type_name, path, sha256)]).await?;
        Ok(pending.pop().expect("one pending write per write"))
    }

    /// [`begin`](Self::begin) for a group of writes in one transaction
    /// (`primary::group`), each `(type, path, sha256)` at its own path: one
    /// listing of leftovers, one multi-row insert of the tokens, and the
    /// journals and previous contents made durable together.
    pub async fn begin_all(
        tx: &mut Tx,
        blobs: &BlobStore,
        writes: &[(&str, &BlobPath, &str)],
    ) -> Result<Vec<PendingWrite>, JournalError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let prefixes: Vec<String> = writes
            .iter()
            .map(|(type_name, path, _)| path_key(type_name, path))
            .collect();
        for leftover in blobs.journals("").await? {
            if prefixes
                .iter()
                .any(|prefix| leftover.key.starts_with(prefix.as_str()))
            {
                settle_in(tx, blobs, &leftover.key).await?;
            }
        }
        let had_previous = futures::future::try_join_all(
            writes
                .iter()
                .map(|(type_name, path, _)| blobs.exists(type_name, path)),
        )
        .await?;
        let now = Db::now();
        let mut journals = Vec::with_capacity(writes.len());
        for ((prefix, (type_name, path, sha256)), had_previous) in
            prefixes.iter().zip(writes).zip(&had_previous)
        {
            let journal = Journal {
                replicable_name: type_name.to_string(),
                blob_path: path.as_str().to_string(),
                had_previous: *had_previous,
                sha256: sha256.to_string(),
                worker: crate::leases::worker_id().to_string(),
                created_at: now,
            };
            let key = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
            let bytes = serde_json::to_vec(&journal).expect("a journal serialises");
            journals.push((key, bytes.into()));
        }
        let pending: Vec<PendingWrite> = journals
            .iter()
            .map(|(key, _)| PendingWrite {
                key: key.clone(),
                blobs: blobs.clone(),
            })
            .collect();
        blobs.put_journals(journals).await?;
        // From here each write's fate is its transaction's: a settler
        // waits for it.
        for chunk in pending.chunks(crate::db::rows_per_statement(3)) {
            let mut args: Vec<Arg> = Vec::with_capacity(chunk.len() * 3);
            for write in chunk {
                args.extend([write.key.as_str().into(), true.into(), now.into()]);
            }
            tx.execute(
                &format!(
                    "INSERT INTO geo_blob_writes (token, committed, created_at) VALUES {}",
                    crate::db::value_rows(1, chunk.len(), 3)
                ),
                &args,
            )
            .await?;
        }
        let kept: Vec<(&str, &BlobPath, &str)> = writes
            .iter()
            .zip(&pending)
            .zip(&had_previous)
            .filter(|(_, had_previous)| **had_previous)
            .map(|(((type_name, path, _), write), _)| (*type_name, *path, write.key.as_str()))
            .collect();
        blobs.keep_previous_all(&kept).await?;
        Ok(pending)
    }

    /// After the commit: removes the journal and the previous content.
    /// Left behind (an error), they are removed when settled later.
    pub async fn finish(self) {
        if let Err(error) = self.blobs.forget_undo(&self.key).await {
            tracing::warn!(key = %self.key, %error, "cannot remove a write's journal; it is settled later");
        }
    }

    /// After a failure before or at the commit (roll the transaction back
    /// first): settles the write now, undoing it unless it committed after
    /// all. If the database cannot be reached, the journal stays and is
    /// settled later.
    pub async fn abandon(self, db: &Db) {
        // A few tries: right after a failed commit, sqlx may hand out the
        // same connection before its rollback has run ("non-zero
        // transaction depth").
        let mut last = None;
        for pause in [0, 50, 200, 500] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match settle(db, &self.blobs, &self.key).await {
                Ok(settled) => {
                    tracing::info!(key = %self.key, ?settled, "failed write settled");
                    return;
                }
                Err(error) => last = Some(error),
            }
        }
        if let Some(error) = last {
            tracing::warn!(key = %self.key, %error, "cannot settle a failed write now; it is settled later");
        }
    }
}

/// Settles the write of journal `key` (see the module docs): decides its
/// fate in a transaction of its own, then undoes it if it was abandoned.
pub async fn settle(db: &Db, blobs: &BlobStore, key: &str) -> Result<Settled, JournalError> {
    let Some(journal) = read(blobs, key).await? else {
        return Ok(Settled::Gone);
    };
    let mut tx = db.begin().await?;
    let committed = decide(&mut tx, key).await?;
    tx.commit().await?;
    finish_settling(blobs, key, &journal, committed).await
}

/// [`settle`] inside a write's own transaction (the next write of a path).
async fn settle_in(tx: &mut Tx, blobs: &BlobStore, key: &str) -> Result<Settled, JournalError> {
    let Some(journal) = read(blobs, key).await? else {
        return Ok(Settled::Gone);
    };
    let committed = decide(tx, key).await?;
    finish_settling(blobs, key, &journal, committed).await
}

async fn read(blobs: &BlobStore, key: &str) -> Result<Option<Journal>, JournalError> {
    let bytes = match blobs.read_journal(key).await {
        Ok(bytes) => bytes,
        Err(error) if error.is_not_found() => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })
}

/// Whether the write of `key` committed: abandons it unless it did (and
/// waits for its transaction if it is still open).
async fn decide(tx: &mut Tx, key: &str) -> Result<bool, DbError> {
    tx.execute(
        "INSERT INTO geo_blob_writes (token, committed, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (token) DO NOTHING",
        &[key.into(), false.into(), Db::now().into()],
    )
    .await?;
    tx.fetch_one(
        "SELECT committed FROM geo_blob_writes WHERE token = $1",
        &[Arg::from(key)],
    )
    .await?
    .bool("committed")
}

async fn finish_settling(
    blobs: &BlobStore,
    key: &str,
    journal: &Journal,
    committed: bool,
) -> Result<Settled, JournalError> {
    if committed {
        blobs.forget_undo(key).await?;
        return Ok(Settled::Committed);
    }
    let path = BlobPath::parse(&journal.blob_path).map_err(|e| JournalError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    let name = &journal.replicable_name;
    if journal.had_previous {
        match blobs.restore_previous(key, name, &path).await {
            // Not kept (the write never got that far), or put back already.
            Err(error) if error.is_not_found() => {}
            other => other?,
        }
    } else {
        // Only the abandoned write's own content goes: a later write may
        // have placed another there.
        match blobs.checksum(name, &path).await {
            Ok(found) if found.sha256 == journal.sha256 => blobs.delete(name, &path).await?,
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error.into()),
        }
    }
    blobs.forget_undo(key).await?;
    tracing::warn!(
        r#type = %journal.replicable_name,
        path = %journal.blob_path,
        writer = %journal.worker,
        restored_previous = journal.had_previous,
        "an unfinished blob write was undone"
    );
    Ok(Settled::Undone)
}

/// What a recovery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub committed: usize,
    pub undone: usize,
    /// Journals that could not be settled now (logged; tried again later).
    pub failed: usize,
}

/// Settles every journal written more than `older_than` ago, then removes
/// the outcomes of writes settled more than an hour ago.
pub async fn recover(
    db: &Db,
    blobs: &BlobStore,
    older_than: Duration,
) -> Result<Recovered, JournalError> {
    let cutoff = crate::leases::expired_before(Db::now(), older_than);
    let journals = blobs.journals("").await?;
    let mut done = Recovered::default();
    for entry in journals.iter().filter(|j| j.written_at <= cutoff) {
        match settle(db, blobs, &entry.key).await {
            Ok(Settled::Committed) => done.committed += 1,
            Ok(Settled::Undone) => done.undone += 1,
            Ok(Settled::Gone) => {}
            Err(error) => {
                done.failed += 1;
                tracing::warn!(key = %entry.key, %error, "cannot settle a blob write's journal");
            }
        }
    }
    // Outcomes are needed only while their journal exists.
    let before = crate::leases::expired_before(Db::now(), OUTCOME_RETENTION);
    let mut args: Vec<Arg> = vec![before.into()];
    let keep: Vec<String> = journals
        .iter()
        .take(1000)
        .map(|j| {
            args.push(j.key.as_str().into());
            format!("${}", args.len())
        })
        .collect();
    if journals.len() <= 1000 {
        let unless = if keep.is_empty() {
            String::new()
        } else {
            format!(" AND token NOT IN ({})", keep.join(", "))
        };
        db.execute(
            &format!("DELETE FROM geo_blob_writes WHERE created_at < $1{unless}"),
            &args,
        )
        .await?;
    }
    if done.committed + done.undone + done.failed > 0 {
        tracing::info!(
            committed = done.committed,
            undone = done.undone,
            failed = done.failed,
            "blob write journals settled"
        );
    }
    Ok(done)
}

/// The write-journal duty: settles the journals of writes cut short (older
/// than `storage.temp_max_age_secs`) for as long as the site runs, at the
/// temporary-object sweeper's pace.
pub async fn run(site: std::sync::Arc<crate::site::Site>) {
    let max_age = site.temp_max_age();
    let every = (max_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match recover(&site.db, &site.blobs, max_age).await {
            Ok(done) if done.failed == 0 => crate::health::round_ok(),
            Ok(done) => crate::health::round_failed(&format!(
                "{} blob write journals could not be settled",
                done.failed
            )),
            Err(error) => {
                tracing::warn!(%error, "cannot settle blob write journals");
                crate::health::round_failed(&error);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = site.shutdown.cancelled() => return,
        }
    }
}
