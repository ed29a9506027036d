//! A type's registry table (`<name>_registry`, tracking database) and
//! GitLab's two state machines over it, as SQL.
//!
//! Why SQL and not load-modify-save: several worker *processes* may share
//! one PostgreSQL tracking database, so every transition is one statement
//! (or one transaction holding the row lock) whose `WHERE` clause is the
//! transition's "from" states. A transition that no longer applies changes
//! nothing and reports `false`; nothing is overwritten blindly.
//!
//! Every transition is keyed by the model record id (the registry's foreign
//! key, GitLab's `MODEL_FOREIGN_KEY`), as GitLab's `mark_synced_atomically`
//! is. States cross this module's boundary only as [`SyncState`] and
//! [`VerificationState`]; their numbers appear only inside SQL text.
//!
//! The transitions (GitLab's `ee/app/models/concerns/geo/replicable_registry.rb`,
//! `verification_state_definition.rb`, `verifiable_registry.rb`):
//!
//! | function | from → to | side effects |
//! |---|---|---|
//! | [`Registry::start`], [`Registry::claim_sync`] | pending, synced, failed → started | `last_synced_at = now` |
//! | [`Registry::synced`] | started → synced (atomic) | retry fields cleared; verification pending if the primary verified, else disabled |
//! | [`Registry::failed`] | any → failed | `retry_count + 1`, `retry_at` backed off (4 h cap when missing on primary), failure text |
//! | [`Registry::pending`] | any → pending | `retry_at = NULL`, `retry_count = 0`, verification disabled |
//! | [`Registry::resync`] | synced, failed → pending | as `pending` |
//! | [`Registry::verification_pending`] | any → verification pending | clears the verification failure fields (from failed: only the text) |
//! | [`Registry::claim_verification`] | synced and (pending, or failed and due) → started | `verification_started_at = now` |
//! | [`Registry::verification_succeeded`] | started (same claim) → succeeded | checksum, `verified_at`, failure fields cleared |
//! | [`Registry::verification_failed`] | any → failed | backoff, and a **resync**: sync state failed with "Verification failed with: …" |
//! | [`Registry::verification_disabled`] | any → disabled | none |
//!
//! Deliberate differences from GitLab are listed in the [parent module](super).

use super::outcomes::{SyncOutcome, VerificationOutcome};
use crate::catalog::InstalledType;
use crate::db::{
    Arg, Backend, Db, DbError, DbRow, QuotedIdent, claim, ident, placeholders, value_rows,
};
use crate::plugin::TypeIdentity;
use crate::states::sql::*;
use crate::states::{self, SyncState, VerificationState};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Rows per bulk `INSERT` or `DELETE` statement (well under SQLite's and
/// PostgreSQL's bind limits).
const CHUNK: usize = 500;

/// GitLab's message when a registry's checksum differs from the primary's.
pub const MISMATCH_MESSAGE: &str = "Checksum does not match the primary checksum";

/// One registry row, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRow {
    pub id: i64,
    /// The model record id (`<name>_id`).
    pub model_id: i64,
    pub created_at: DateTime<Utc>,
    pub last_synced_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
    pub verification_started_at: Option<DateTime<Utc>>,
    pub verification_retry_at: Option<DateTime<Utc>>,
    pub state: SyncState,
    pub verification_state: VerificationState,
    pub retry_count: i64,
    pub verification_retry_count: i64,
    pub checksum_mismatch: bool,
    /// Lowercase hex.
    pub verification_checksum: Option<String>,
    /// Lowercase hex: the *local* checksum that did not match (GitLab's rule).
    pub verification_checksum_mismatched: Option<String>,
    pub verification_failure: Option<String>,
    pub last_sync_failure: Option<String>,
}

/// A registry row as the consistency pass compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRow {
    pub model_id: i64,
    pub state: SyncState,
    pub verification_state: VerificationState,
    pub created_at: DateTime<Utc>,
}

/// A row claimed for download (now `started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncClaim {
    pub model_id: i64,
    /// The retry count before this attempt (0 for a pending row).
    pub retry_count: i64,
}

/// A row claimed for verification (now verification `started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerificationClaim {
    /// The registry row id (GitLab's `registry_id` in mismatch messages).
    pub registry_id: i64,
    pub model_id: i64,
    /// The claim's stamp: results are written only while it is unchanged.
    pub started_at: DateTime<Utc>,
}

/// Why a verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationFailure {
    /// The local checksum differs from the primary's (GitLab's
    /// `verification_failed_due_to_mismatch!`).
    Mismatch {
        /// The local checksum (hex).
        checksum: String,
        /// The primary's checksum (hex).
        primary_checksum: String,
    },
    /// No checksum could be computed (GitLab's
    /// `verification_failed_with_message!`): the text is stored as is.
    Error(String),
}

/// GitLab's secondary status counts of one type (`ee/app/models/geo_node_status.rb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryCounts {
    /// Every registry row (`_registry_count`, also `_count`).
    pub registry_count: i64,
    /// State synced (`_synced_count`).
    pub synced_count: i64,
    /// State failed (`_failed_count`).
    pub failed_count: i64,
    /// Synced and verification succeeded (`_verified_count`).
    pub verified_count: i64,
    /// Synced and verification failed (`_verification_failed_count`).
    pub verification_failed_count: i64,
    /// Synced and verification not disabled (`_verification_total_count`).
    pub verification_total_count: i64,
    /// State pending (not a GitLab field; for operators and tests).
    pub pending_count: i64,
    /// State started (not a GitLab field; for operators and tests).
    pub started_count: i64,
}

/// The registry table of one type.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Quoted table name.
    table: QuotedIdent,
    /// Quoted foreign-key column.
    fk: QuotedIdent,
    /// The quoted index on `state` (pending rows in id order).
    state_index: QuotedIdent,
    /// The quoted unique index on the foreign key.
    fk_index: QuotedIdent,
    /// The table as the verification claim sees it.
    verification: claim::VerificationTable,
}

fn sync_state(row: &DbRow, column: &str) -> Result<SyncState, DbError> {
    SyncState::try_from(row.i16(column)?).map_err(|e| DbError::decode(column, e))
}

fn verification_state(row: &DbRow, column: &str) -> Result<VerificationState, DbError> {
    VerificationState::try_from(row.i16(column)?).map_err(|e| DbError::decode(column, e))
}

/// "8 hours" for whole hours, else "N seconds" (timeout messages).
pub fn duration_text(timeout: Duration) -> String {
    let secs = timeout.as_secs();
    match secs {
        3600 => "1 hour".into(),
        s if s >= 3600 && s % 3600 == 0 => format!("{} hours", s / 3600),
        1 => "1 second".into(),
        s => format!("{s} seconds"),
    }
}

/// GitLab's mismatch failure text: the message, then the details hash as
/// Ruby prints it.
pub fn mismatch_text(checksum: &str, primary_checksum: &str, registry_id: i64) -> String {
    format!(
        "{MISMATCH_MESSAGE} {{checksum: {checksum:?}, primary_checksum: {primary_checksum:?}, registry_id: {registry_id}}}"
    )
}

/// The `SET` list of GitLab's `verification_pending` transition: from any
/// state but failed, `clear_verification_failure_fields!` (retry count and
/// time, failure, and on a registry `checksum_mismatch` and
/// `verification_checksum_mismatched`); from failed, only the failure text,
/// so resyncs caused by verification failures keep backing off.
pub(super) fn verification_pending_set() -> String {
    format!(
        "verification_state = {V_PENDING}, \
         verification_failure = NULL, \
         verification_retry_count = CASE WHEN verification_state = {V_FAILED} \
             THEN verification_retry_count ELSE 0 END, \
         verification_retry_at = CASE WHEN verification_state = {V_FAILED} \
             THEN verification_retry_at ELSE NULL END, \
         checksum_mismatch = CASE WHEN verification_state = {V_FAILED} \
             THEN checksum_mismatch ELSE false END, \
         verification_checksum_mismatched = CASE WHEN verification_state = {V_FAILED} \
             THEN verification_checksum_mismatched ELSE NULL END"
    )
}

const COLUMNS: &str = "id, created_at, last_synced_at, retry_at, verified_at, \
     verification_started_at, verification_retry_at, state, verification_state, retry_count, \
     verification_retry_count, checksum_mismatch, verification_checksum, \
     verification_checksum_mismatched, verification_failure, last_sync_failure";

impl Registry {
    /// The registry of the type `identity` describes.
    pub fn new(identity: &TypeIdentity) -> Registry {
        Registry {
            table: ident(&identity.registry_table()),
            fk: ident(&identity.foreign_key()),
            state_index: claim::index(&format!("index_{}_registry_on_state", identity.name)),
            fk_index: claim::index(&format!(
                "index_{name}_registry_on_{name}_id",
                name = identity.name
            )),
            verification: claim::VerificationTable::registry(identity),
        }
    }

    /// The registry of an installed type.
    pub fn of(it: &InstalledType) -> Registry {
        Registry::new(&it.identity)
    }

    fn decode(&self, row: &DbRow) -> Result<RegistryRow, DbError> {
        Ok(RegistryRow {
            id: row.i64("id")?,
            model_id: row.i64("model_id")?,
            created_at: row.ts("created_at")?,
            last_synced_at: row.opt_ts("last_synced_at")?,
            retry_at: row.opt_ts("retry_at")?,
            verified_at: row.opt_ts("verified_at")?,
            verification_started_at: row.opt_ts("verification_started_at")?,
            verification_retry_at: row.opt_ts("verification_retry_at")?,
            state: sync_state(row, "state")?,
            verification_state: verification_state(row, "verification_state")?,
            retry_count: row.int("retry_count")?.unwrap_or(0),
            verification_retry_count: row.int("verification_retry_count")?.unwrap_or(0),
            checksum_mismatch: row.bool("checksum_mismatch")?,
            verification_checksum: row.opt_bytes("verification_checksum")?.map(hex::encode),
            verification_checksum_mismatched: row
                .opt_bytes("verification_checksum_mismatched")?
                .map(hex::encode),
            verification_failure: row.opt_text("verification_failure")?,
            last_sync_failure: row.opt_text("last_sync_failure")?,
        })
    }

    /// The quoted table name (for queries built elsewhere, such as
    /// [`super::listing`] and [`super::bulk`]).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The table for a statement that names its rows by model id (`fk IN
    /// (…)`) and also a state: read through the unique index on the model
    /// id. SQLite, which has no statistics, would otherwise take the
    /// `state` index and walk every row in that state (every synced row,
    /// say) to find a batch's.
    pub fn by_model_id(&self, backend: Backend) -> String {
        match backend {
            Backend::Sqlite => format!("{} INDEXED BY {}", self.table, self.fk_index),
            Backend::Postgres => self.table.to_string(),
        }
    }

    /// The quoted foreign-key column.
    pub fn fk(&self) -> &str {
        &self.fk
    }

    /// Rows matching `conditions` (SQL over the registry's columns, with
    /// `args` as `$1…`), in `order`, at most `limit`.
    pub async fn select(
        &self,
        db: &Db,
        conditions: &str,
        args: &[Arg],
        order: &str,
        limit: i64,
    ) -> Result<Vec<RegistryRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS}, {fk} AS model_id FROM {t} WHERE {conditions} ORDER BY {order} LIMIT {limit}",
            t = self.table,
            fk = self.fk,
            limit = limit.max(0)
        );
        db.fetch_map(&sql, args, |row| self.decode(row)).await
    }

    /// The registry row with this registry id (not model id).
    pub async fn by_registry_id(&self, db: &Db, id: i64) -> Result<Option<RegistryRow>, DbError> {
        Ok(self
            .select(db, "id = $1", &[id.into()], "id", 1)
            .await?
            .pop())
    }

    /// The registry row of model record `model_id`.
    pub async fn get(&self, db: &Db, model_id: i64) -> Result<Option<RegistryRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS}, {fk} AS model_id FROM {t} WHERE {fk} = $1",
            t = self.table,
            fk = self.fk
        );
        db.fetch_optional(&sql, &[model_id.into()])
            .await?
            .map(|row| self.decode(&row))
            .transpose()
    }

    /// Every registry row, by model id (tests, diagnostics).
    pub async fn all(&self, db: &Db) -> Result<Vec<RegistryRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS}, {fk} AS model_id FROM {t} ORDER BY {fk}",
            t = self.table,
            fk = self.fk
        );
        db.fetch_map(&sql, &[], |row| self.decode(row)).await
    }

    /// Registry rows whose model id is in `low..=high` (`high` `None`: no
    /// upper bound), by model id.
    pub async fn in_range(
        &self,
        db: &Db,
        low: i64,
        high: Option<i64>,
    ) -> Result<Vec<RangeRow>, DbError> {
        let (t, fk) = (&self.table, &self.fk);
        let sql = format!(
            "SELECT {fk} AS model_id, state, verification_state, created_at FROM {t} \
             WHERE {fk} >= $1 AND {fk} <= $2 ORDER BY {fk}"
        );
        db.fetch_map(
            &sql,
            &[low.into(), high.unwrap_or(i64::MAX).into()],
            |row| {
                Ok(RangeRow {
                    model_id: row.i64("model_id")?,
                    state: sync_state(row, "state")?,
                    verification_state: verification_state(row, "verification_state")?,
                    created_at: row.ts("created_at")?,
                })
            },
        )
        .await
    }

    /// Inserts a pending row for each model id that has none (GitLab's
    /// bulk insert of the consistency worker). Returns how many were new.
    pub async fn insert_missing(&self, db: &Db, model_ids: &[i64]) -> Result<u64, DbError> {
        let now = Db::now();
        let mut inserted = 0;
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO {t} ({fk}, created_at) VALUES {values} ON CONFLICT ({fk}) DO NOTHING",
                t = self.table,
                fk = self.fk,
                values = value_rows(1, chunk.len(), 2)
            );
            let args: Vec<Arg> = chunk
                .iter()
                .flat_map(|&id| [Arg::from(id), Arg::from(now)])
                .collect();
            inserted += db.execute(&sql, &args).await?;
        }
        Ok(inserted)
    }

    /// Deletes the rows of these model ids. Returns how many went.
    pub async fn delete(&self, db: &Db, model_ids: &[i64]) -> Result<u64, DbError> {
        let mut deleted = 0;
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM {t} WHERE {fk} IN ({})",
                placeholders(1, chunk.len()),
                t = self.table,
                fk = self.fk
            );
            let args: Vec<Arg> = chunk.iter().map(|&id| Arg::from(id)).collect();
            deleted += db.execute(&sql, &args).await?;
        }
        Ok(deleted)
    }

    /// Deletes the rows of these model ids that are not `started` (a
    /// download in flight keeps its row until it ends). Returns the model
    /// ids whose rows went.
    pub async fn delete_idle(&self, db: &Db, model_ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let mut deleted = Vec::new();
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM {t} WHERE {fk} IN ({}) AND state <> {S_STARTED} RETURNING {fk} AS model_id",
                placeholders(1, chunk.len()),
                t = self.table,
                fk = self.fk
            );
            let args: Vec<Arg> = chunk.iter().map(|&id| Arg::from(id)).collect();
            for row in db.fetch_all(&sql, &args).await? {
                deleted.push(row.i64("model_id")?);
            }
        }
        Ok(deleted)
    }

    /// GitLab's `start`: pending, synced or failed → started, with
    /// `last_synced_at = now`. Returns whether it started (never from
    /// started: a sync in progress elsewhere keeps its row).
    pub async fn start(&self, db: &Db, model_id: i64) -> Result<bool, DbError> {
        let sql = format!(
            "UPDATE {t} SET state = {S_STARTED}, last_synced_at = $1, claimed_by = {me} WHERE {fk} = $2 AND state IN ({S_PENDING}, {S_SYNCED}, {S_FAILED})",
            t = self.table,
            fk = self.fk,
            me = claim::claimant()
        );
        Ok(db
            .execute(&sql, &[Db::now().into(), model_id.into()])
            .await?
            == 1)
    }

    /// Claims up to `limit` rows for download, atomically starting them:
    /// pending rows first, then failed rows whose `retry_at` is due (NULLs
    /// first). Two claimers never get the same row (PostgreSQL: `FOR UPDATE
    /// SKIP LOCKED`; SQLite: one writer at a time).
    pub async fn claim_sync(&self, db: &Db, limit: i64) -> Result<Vec<SyncClaim>, DbError> {
        self.claim_sync_leased(db, limit, None).await
    }

    /// [`Registry::claim_sync`], also taking over `started` rows whose
    /// claim is older than `lease`: their worker process died (a live one
    /// renews its claims with [`Registry::renew_syncs`]). `last_synced_at`
    /// is the claim's stamp.
    pub async fn claim_sync_leased(
        &self,
        db: &Db,
        limit: i64,
        lease: Option<Duration>,
    ) -> Result<Vec<SyncClaim>, DbError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let now = Db::now();
        let kinds = self.sync_candidates(lease.is_some());
        let sql = claim::claim_sql(
            db.backend(),
            &self.table,
            &format!(
                "state = {S_STARTED}, last_synced_at = $1, claimed_by = {}",
                claim::claimant()
            ),
            &kinds,
            &format!("{} AS model_id, retry_count", self.fk),
        );
        let mut args: Vec<Arg> = vec![now.into(), limit.into()];
        if let Some(lease) = lease {
            args.push(crate::leases::expired_before(now, lease).into());
        }
        db.fetch_map(&sql, &args, |row| {
            Ok(SyncClaim {
                model_id: row.i64("model_id")?,
                retry_count: row.int("retry_count")?.unwrap_or(0),
            })
        })
        .await
    }

    /// The sync claim's candidates: pending rows by id, then failed rows
    /// whose retry is due by retry time, then, with `lease`, rows started
    /// before `$3` (see [`claim`]).
    pub fn sync_candidates(&self, lease: bool) -> Vec<claim::Candidates> {
        let mut kinds = vec![
            // Pending rows by id: the `state` index holds them in that order.
            claim::Candidates {
                index: Some(self.state_index.clone()),
                condition: format!("state = {S_PENDING}"),
                order: Some("id".into()),
            },
            // Failed rows whose retry is due (few: sorting them is cheap).
            claim::Candidates {
                index: Some(self.state_index.clone()),
                condition: format!("state = {S_FAILED} AND (retry_at IS NULL OR retry_at <= $1)"),
                order: Some("retry_at NULLS FIRST, id".into()),
            },
        ];
        if lease {
            // Started rows: only those in flight.
            kinds.push(claim::Candidates {
                index: Some(self.state_index.clone()),
                condition: format!("state = {S_STARTED} AND last_synced_at < $3"),
                order: None,
            });
        }
        kinds
    }

    /// The table as the verification claim sees it (to renew claims).
    pub fn verification_table(&self) -> &claim::VerificationTable {
        &self.verification
    }

    /// The verification claim's candidates (see [`claim`]).
    pub fn verification_candidates(&self, lease: bool) -> Vec<claim::Candidates> {
        self.verification.candidates(lease)
    }

    /// Gives back the claims a dead worker process left: its started syncs
    /// become pending (GitLab's `pending` transition: retry fields cleared,
    /// verification disabled) and its started verifications verification
    /// pending, as [`Registry::release_verification`] does. `worker`: the
    /// dead process's [`crate::leases::worker_id`]; `None`: every claim (a
    /// SQLite database at startup, which only this process can use).
    /// Returns how many rows it gave back.
    pub async fn release_claims(&self, db: &Db, worker: Option<&str>) -> Result<u64, DbError> {
        let (whose, args): (&str, Vec<Arg>) = match worker {
            Some(worker) => (" AND claimed_by = $1", vec![worker.into()]),
            None => ("", Vec::new()),
        };
        let syncs = format!(
            "UPDATE {t} SET state = {S_PENDING}, retry_at = NULL, retry_count = 0, \
             verification_state = {V_DISABLED}, claimed_by = NULL WHERE state = {S_STARTED}{whose}",
            t = self.table
        );
        let verifications = format!(
            "UPDATE {t} SET verification_state = {V_PENDING}, claimed_by = NULL \
             WHERE verification_state = {V_STARTED}{whose}",
            t = self.table
        );
        Ok(db.execute(&syncs, &args).await? + db.execute(&verifications, &args).await?)
    }

    /// Renews the claims of syncs this process is running: `last_synced_at
    /// = now` on those rows still `started`. Returns how many it renewed.
    pub async fn renew_syncs(&self, db: &Db, model_ids: &[i64]) -> Result<u64, DbError> {
        let mut renewed = 0;
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {t} SET last_synced_at = $1 WHERE state = {S_STARTED} AND {fk} IN ({})",
                placeholders(2, chunk.len()),
                t = self.by_model_id(db.backend()),
                fk = self.fk
            );
            let mut args: Vec<Arg> = vec![Db::now().into()];
            args.extend(chunk.iter().map(|&id| Arg::from(id)));
            renewed += db.execute(&sql, &args).await?;
        }
        Ok(renewed)
    }

    /// GitLab's `synced!`: clears the retry fields, then moves started →
    /// synced atomically (`UPDATE … SET state = 2 WHERE fk = $1 AND state =
    /// 1`). Returns `false` when the row is no longer started (a resync set
    /// it pending during the download): the caller must not treat the
    /// record as synced. On success runs `after_synced`: verification
    /// pending when the primary's record is verified (`primary_verified`),
    /// else disabled.
    pub async fn synced(
        &self,
        db: &Db,
        model_id: i64,
        primary_verified: bool,
    ) -> Result<bool, DbError> {
        let recorded = self
            .record_sync_outcomes(db, &[(model_id, SyncOutcome::Synced { primary_verified })])
            .await?;
        Ok(recorded.synced == [model_id])
    }

    /// GitLab's `failed!(message:, missing_on_primary:)`: any → failed,
    /// `retry_count + 1`, `retry_at = next_retry_time(retry_count, 4 h if
    /// missing on primary)`, `last_sync_failure` cut to 255 characters.
    /// Returns whether the row exists.
    pub async fn failed(
        &self,
        db: &Db,
        model_id: i64,
        message: &str,
        missing_on_primary: bool,
    ) -> Result<bool, DbError> {
        let outcome = SyncOutcome::Failed {
            message: message.to_string(),
            missing_on_primary,
        };
        let recorded = self
            .record_sync_outcomes(db, &[(model_id, outcome)])
            .await?;
        Ok(recorded.failed == [model_id])
    }

    /// GitLab's `pending!`: any → pending, `retry_at = NULL`,
    /// `retry_count = 0`, verification disabled (`before_pending`). A sync
    /// running now can then no longer mark the row synced. Returns whether
    /// the row exists.
    pub async fn pending(&self, db: &Db, model_id: i64) -> Result<bool, DbError> {
        Ok(self.pending_many(db, &[model_id]).await? == 1)
    }

    /// [`Registry::pending`] of many rows, in one statement per 500.
    /// Returns how many rows it changed.
    pub async fn pending_many(&self, db: &Db, model_ids: &[i64]) -> Result<u64, DbError> {
        let from = format!("state IN ({S_PENDING}, {S_STARTED}, {S_SYNCED}, {S_FAILED})");
        self.to_pending(db, model_ids, &from).await
    }

    /// GitLab's `resync`: synced or failed → pending, as [`Registry::pending`].
    pub async fn resync(&self, db: &Db, model_id: i64) -> Result<bool, DbError> {
        let from = format!("state IN ({S_SYNCED}, {S_FAILED})");
        Ok(self.to_pending(db, &[model_id], &from).await? == 1)
    }

    async fn to_pending(&self, db: &Db, model_ids: &[i64], from: &str) -> Result<u64, DbError> {
        let mut changed = 0;
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {t} SET state = {S_PENDING}, retry_at = NULL, retry_count = 0, verification_state = {V_DISABLED} \
                 WHERE {fk} IN ({ids}) AND {from}",
                t = self.by_model_id(db.backend()),
                fk = self.fk,
                ids = placeholders(1, chunk.len()),
            );
            let args: Vec<Arg> = chunk.iter().map(|&id| Arg::from(id)).collect();
            changed += db.execute(&sql, &args).await?;
        }
        Ok(changed)
    }

    /// GitLab's `fail_sync_timeouts`: started rows whose attempt began more
    /// than `timeout` ago become failed, "Sync timed out after …",
    /// `retry_count = 1`, `retry_at = next_retry_time(1)`.
    pub async fn fail_stuck_syncs(&self, db: &Db, timeout: Duration) -> Result<u64, DbError> {
        let now = Db::now();
        let cutoff = crate::leases::expired_before(now, timeout);
        let sql = format!(
            "UPDATE {t} SET state = {S_FAILED}, last_sync_failure = $1, retry_count = 1, retry_at = $2 \
             WHERE state = {S_STARTED} AND last_synced_at < $3",
            t = self.table
        );
        db.execute(
            &sql,
            &[
                format!("Sync timed out after {}", duration_text(timeout)).into(),
                states::next_retry_time(now, 1, None).into(),
                cutoff.into(),
            ],
        )
        .await
    }

    /// GitLab's `verification_pending!` (any → pending). Returns whether
    /// the row exists.
    pub async fn verification_pending(&self, db: &Db, model_id: i64) -> Result<bool, DbError> {
        let sql = format!(
            "UPDATE {t} SET {set} WHERE {fk} = $1",
            t = self.table,
            fk = self.fk,
            set = verification_pending_set()
        );
        Ok(db.execute(&sql, &[model_id.into()]).await? == 1)
    }

    /// The `checksum_succeeded` event: verification pending, but only for a
    /// synced row (GitLab's `consume_event_checksum_succeeded`). Returns
    /// whether it changed a row.
    pub async fn verification_pending_if_synced(
        &self,
        db: &Db,
        model_id: i64,
    ) -> Result<bool, DbError> {
        Ok(self
            .verification_pending_if_synced_many(db, &[model_id])
            .await?
            == 1)
    }

    /// [`Registry::verification_pending_if_synced`] of many rows, in one
    /// statement per 500. Returns how many it changed.
    pub async fn verification_pending_if_synced_many(
        &self,
        db: &Db,
        model_ids: &[i64],
    ) -> Result<u64, DbError> {
        let mut changed = 0;
        for chunk in model_ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {t} SET {set} WHERE {fk} IN ({ids}) AND state = {S_SYNCED}",
                t = self.by_model_id(db.backend()),
                fk = self.fk,
                set = verification_pending_set(),
                ids = placeholders(1, chunk.len()),
            );
            let args: Vec<Arg> = chunk.iter().map(|&id| Arg::from(id)).collect();
            changed += db.execute(&sql, &args).await?;
        }
        Ok(changed)
    }

    /// GitLab's `verification_disabled!` (any → disabled). With `claim`,
    /// only while that verification claim still holds.
    pub async fn verification_disabled(
        &self,
        db: &Db,
        model_id: i64,
        claim: Option<DateTime<Utc>>,
    ) -> Result<bool, DbError> {
        let recorded = self
            .record_verification_outcomes(db, &[(model_id, claim, VerificationOutcome::Disabled)])
            .await?;
        Ok(recorded.disabled == [model_id])
    }

    /// Claims up to `limit` synced rows due for verification, atomically
    /// starting them: verification pending first (by `verified_at`, NULLs
    /// first), then failed with `verification_retry_at` due. Safe with
    /// concurrent claimers, as [`Registry::claim_sync`].
    pub async fn claim_verification(
        &self,
        db: &Db,
        limit: i64,
    ) -> Result<Vec<VerificationClaim>, DbError> {
        self.claim_verification_leased(db, limit, None).await
    }

    /// [`Registry::claim_verification`], also taking over verifications
    /// started more than `lease` ago (their process died). The claim's
    /// stamp, `verification_started_at`, fences results: the process that
    /// lost the claim can no longer write its result.
    pub async fn claim_verification_leased(
        &self,
        db: &Db,
        limit: i64,
        lease: Option<Duration>,
    ) -> Result<Vec<VerificationClaim>, DbError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let now = Db::now();
        let sql = self.verification.claim_sql(
            db.backend(),
            lease.is_some(),
            &format!("id, {} AS model_id, verification_started_at", self.fk),
        );
        let mut args: Vec<Arg> = vec![now.into(), limit.into()];
        if let Some(lease) = lease {
            args.push(crate::leases::expired_before(now, lease).into());
        }
        db.fetch_map(&sql, &args, |row| {
            Ok(VerificationClaim {
                registry_id: row.i64("id")?,
                model_id: row.i64("model_id")?,
                started_at: row.ts("verification_started_at")?,
            })
        })
        .await
    }

    /// Gives a verification claim back untouched (verification pending,
    /// nothing else changed): for a batch that could not run, such as when
    /// the primary's checksums cannot be read. Not a GitLab transition.
    pub async fn release_verification(
        &self,
        db: &Db,
        model_id: i64,
        started_at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let sql = format!(
            "UPDATE {t} SET verification_state = {V_PENDING} \
             WHERE {fk} = $1 AND verification_state = {V_STARTED} AND verification_started_at = $2",
            t = self.table,
            fk = self.fk
        );
        Ok(db
            .execute(&sql, &[model_id.into(), started_at.into()])
            .await?
            == 1)
    }

    /// GitLab's `verification_succeeded` with a checksum (hex): only from
    /// started, and only if the claim stamped `started_at` still holds (a
    /// resync or a newer claim meanwhile wins). Clears the failure fields.
    pub async fn verification_succeeded(
        &self,
        db: &Db,
        model_id: i64,
        checksum: &str,
        started_at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let outcome = VerificationOutcome::Succeeded(checksum.to_string());
        let recorded = self
            .record_verification_outcomes(db, &[(model_id, Some(started_at), outcome)])
            .await?;
        Ok(recorded.succeeded == [model_id])
    }

    /// A verification failure, GitLab's registry rule
    /// (`ee/app/models/concerns/geo/replicable_registry.rb`): the
    /// base `before_verification_failed` (`verification_retry_count + 1`,
    /// `verification_retry_at` backed off, `verified_at = now`), the
    /// failure text and checksum (the local one on a mismatch, with
    /// `checksum_mismatch = true` and `verification_checksum_mismatched =`
    /// the local checksum; `NULL` on an error), **and a resync**: sync state
    /// failed, `retry_count = verification_retry_count`, `retry_at` backed
    /// off from it, `last_sync_failure = "Verification failed with: …"`.
    ///
    /// With `claim`, applies only while that claim holds. Returns whether
    /// it changed the row.
    pub async fn verification_failed(
        &self,
        db: &Db,
        model_id: i64,
        failure: &VerificationFailure,
        claim: Option<DateTime<Utc>>,
    ) -> Result<bool, DbError> {
        let outcome = VerificationOutcome::Failed(failure.clone());
        let recorded = self
            .record_verification_outcomes(db, &[(model_id, claim, outcome)])
            .await?;
        Ok(recorded.failed == [model_id])
    }

    /// GitLab's verification timeout: rows whose verification started more
    /// than `timeout` ago fail "Verification timed out after …", which on a
    /// secondary also resyncs them. Returns how many failed.
    pub async fn fail_stuck_verifications(
        &self,
        db: &Db,
        timeout: Duration,
    ) -> Result<u64, DbError> {
        let cutoff = crate::leases::expired_before(Db::now(), timeout);
        let sql = format!(
            "SELECT {fk} AS model_id, verification_started_at FROM {t} \
             WHERE verification_state = {V_STARTED} AND verification_started_at < $1 LIMIT 1000",
            t = self.table,
            fk = self.fk
        );
        let failure = VerificationFailure::Error(format!(
            "Verification timed out after {}",
            duration_text(timeout)
        ));
        let mut failed = 0;
        for row in db.fetch_all(&sql, &[cutoff.into()]).await? {
            let model_id = row.i64("model_id")?;
            let started_at = row.opt_ts("verification_started_at")?;
            if self
                .verification_failed(db, model_id, &failure, started_at)
                .await?
            {
                failed += 1;
            }
        }
        Ok(failed)
    }

    /// GitLab's secondary counts of this registry (`ee/app/models/geo_node_status.rb`).
    pub async fn counts(&self, db: &Db) -> Result<RegistryCounts, DbError> {
        let sql = format!(
            "SELECT COUNT(*) AS registry, \
             COALESCE(SUM(CASE WHEN state = {S_PENDING} THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN state = {S_STARTED} THEN 1 ELSE 0 END), 0) AS started, \
             COALESCE(SUM(CASE WHEN state = {S_SYNCED} THEN 1 ELSE 0 END), 0) AS synced, \
             COALESCE(SUM(CASE WHEN state = {S_FAILED} THEN 1 ELSE 0 END), 0) AS failed, \
             COALESCE(SUM(CASE WHEN state = {S_SYNCED} AND verification_state = {V_SUCCEEDED} THEN 1 ELSE 0 END), 0) AS verified, \
             COALESCE(SUM(CASE WHEN state = {S_SYNCED} AND verification_state = {V_FAILED} THEN 1 ELSE 0 END), 0) AS verification_failed, \
             COALESCE(SUM(CASE WHEN state = {S_SYNCED} AND verification_state <> {V_DISABLED} THEN 1 ELSE 0 END), 0) AS verification_total \
             FROM {t}",
            t = self.table
        );
        let row = db.fetch_one(&sql, &[]).await?;
        let n = |c: &str| -> Result<i64, DbError> { Ok(row.int(c)?.unwrap_or(0)) };
        Ok(RegistryCounts {
            registry_count: n("registry")?,
            synced_count: n("synced")?,
            failed_count: n("failed")?,
            verified_count: n("verified")?,
            verification_failed_count: n("verification_failed")?,
            verification_total_count: n("verification_total")?,
            pending_count: n("pending")?,
            started_count: n("started")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::{helm, tracking_databases};
    use std::collections::HashSet;

    fn registry() -> Registry {
        Registry::of(&helm())
    }

    async fn row(db: &Db, id: i64) -> RegistryRow {
        registry()
            .get(db, id)
            .await
            .unwrap()
            .expect("a registry row")
    }

    /// Sets columns of a row directly (to age timestamps or set counts).
    async fn set(db: &Db, id: i64, assignments: &str, args: Vec<Arg>) {
        let r = registry();
        let n = args.len();
        let sql = format!(
            "UPDATE {} SET {assignments} WHERE {} = ${}",
            r.table,
            r.fk,
            n + 1
        );
        let mut args = args;
        args.push(id.into());
        assert_eq!(db.execute(&sql, &args).await.unwrap(), 1);
    }

    fn within(t: Option<DateTime<Utc>>, low: chrono::Duration, high: chrono::Duration) -> bool {
        let t = t.expect("a time") - Utc::now();
        // A second of slack for the time the test itself takes.
        t >= low - chrono::Duration::seconds(1) && t <= high
    }

    #[tokio::test]
    async fn start_does_not_fire_from_started() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            assert_eq!(
                r.insert_missing(&db, &[1, 2]).await.unwrap(),
                2,
                "{backend}"
            );
            assert_eq!(
                r.insert_missing(&db, &[1, 2, 3]).await.unwrap(),
                1,
                "{backend}"
            );
            let fresh = row(&db, 1).await;
            assert_eq!(
                (fresh.state, fresh.verification_state),
                (SyncState::Pending, VerificationState::Pending)
            );
            assert_eq!(fresh.last_synced_at, None);

            assert!(r.start(&db, 1).await.unwrap(), "{backend}");
            assert!(!r.start(&db, 1).await.unwrap(), "{backend}: started twice");
            let started = row(&db, 1).await;
            assert_eq!(started.state, SyncState::Started, "{backend}");
            assert!(started.last_synced_at.is_some(), "{backend}");
            assert!(!r.start(&db, 99).await.unwrap(), "{backend}: no such row");

            // From synced and failed it starts again.
            assert!(r.synced(&db, 1, false).await.unwrap());
            assert!(r.start(&db, 1).await.unwrap(), "{backend}: from synced");
            r.failed(&db, 1, "boom", false).await.unwrap();
            assert!(r.start(&db, 1).await.unwrap(), "{backend}: from failed");

            // A started row is never deleted by the consistency pass.
            assert_eq!(
                r.delete_idle(&db, &[1, 2]).await.unwrap(),
                vec![2],
                "{backend}"
            );
            assert_eq!(r.delete(&db, &[1, 3]).await.unwrap(), 2, "{backend}");
            assert!(r.all(&db).await.unwrap().is_empty(), "{backend}");
        }
    }

    #[tokio::test]
    async fn synced_is_atomic_and_loses_to_a_resync() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2, 3]).await.unwrap();

            // A resync (an `updated` event) during the download wins.
            assert!(r.start(&db, 1).await.unwrap());
            assert!(r.pending(&db, 1).await.unwrap());
            assert!(!r.synced(&db, 1, true).await.unwrap(), "{backend}");
            let lost = row(&db, 1).await;
            assert_eq!(lost.state, SyncState::Pending, "{backend}");
            assert_eq!(
                lost.verification_state,
                VerificationState::Disabled,
                "{backend}"
            );

            // after_synced: verification pending when the primary verified it, else disabled.
            r.start(&db, 2).await.unwrap();
            r.failed(&db, 2, "first try", false).await.unwrap();
            r.start(&db, 2).await.unwrap();
            assert!(r.synced(&db, 2, true).await.unwrap(), "{backend}");
            let synced = row(&db, 2).await;
            assert_eq!(
                (synced.state, synced.verification_state),
                (SyncState::Synced, VerificationState::Pending)
            );
            assert_eq!(
                (
                    synced.retry_count,
                    synced.retry_at,
                    synced.last_sync_failure
                ),
                (0, None, None)
            );
            r.start(&db, 3).await.unwrap();
            assert!(r.synced(&db, 3, false).await.unwrap());
            assert_eq!(
                row(&db, 3).await.verification_state,
                VerificationState::Disabled,
                "{backend}"
            );

            // resync: only from synced or failed; pending: from anything.
            assert!(
                !r.resync(&db, 1).await.unwrap(),
                "{backend}: resync from pending"
            );
            assert!(r.resync(&db, 2).await.unwrap(), "{backend}");
            let resynced = row(&db, 2).await;
            assert_eq!(
                (resynced.state, resynced.verification_state),
                (SyncState::Pending, VerificationState::Disabled)
            );
            r.start(&db, 2).await.unwrap();
            assert!(
                !r.resync(&db, 2).await.unwrap(),
                "{backend}: resync from started"
            );
        }
    }

    #[tokio::test]
    async fn failures_back_off_and_cap_at_four_hours_when_missing_on_primary() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2]).await.unwrap();
            r.start(&db, 1).await.unwrap();
            assert!(
                r.failed(&db, 1, "Error while attempting to sync: boom", false)
                    .await
                    .unwrap()
            );
            let first = row(&db, 1).await;
            assert_eq!(
                (first.state, first.retry_count),
                (SyncState::Failed, 1),
                "{backend}"
            );
            assert_eq!(
                first.last_sync_failure.as_deref(),
                Some("Error while attempting to sync: boom")
            );
            assert!(
                within(
                    first.retry_at,
                    chrono::Duration::seconds(16),
                    chrono::Duration::seconds(74)
                ),
                "{backend}: {:?}",
                first.retry_at
            );
            r.failed(&db, 1, &"x".repeat(400), false).await.unwrap();
            let second = row(&db, 1).await;
            assert_eq!(second.retry_count, 2, "{backend}");
            assert_eq!(
                second.last_sync_failure.unwrap().chars().count(),
                255,
                "{backend}"
            );

            // Past n = 8 the delay is capped: 1 h + delay(1), or 4 h + delay(1)
            // for a file missing on the primary.
            set(&db, 1, "retry_count = $1", vec![Arg::I16(Some(20))]).await;
            r.failed(&db, 1, "again", false).await.unwrap();
            let capped = row(&db, 1).await;
            assert_eq!(capped.retry_count, 21);
            let hour = chrono::Duration::hours(1);
            assert!(
                within(
                    capped.retry_at,
                    hour + chrono::Duration::seconds(16),
                    hour + chrono::Duration::seconds(74)
                ),
                "{backend}: {:?}",
                capped.retry_at
            );
            r.failed(
                &db,
                1,
                "Non-success HTTP response status code 404: gone",
                true,
            )
            .await
            .unwrap();
            let four = chrono::Duration::hours(4);
            assert!(
                within(
                    row(&db, 1).await.retry_at,
                    four + chrono::Duration::seconds(16),
                    four + chrono::Duration::seconds(74)
                ),
                "{backend}"
            );
            // Missing on primary with few retries: the ordinary schedule.
            r.failed(&db, 2, "missing", true).await.unwrap();
            assert!(
                within(
                    row(&db, 2).await.retry_at,
                    chrono::Duration::seconds(16),
                    chrono::Duration::seconds(74)
                ),
                "{backend}"
            );
            assert!(!r.failed(&db, 99, "no row", false).await.unwrap());
        }
    }

    #[tokio::test]
    async fn expired_claims_are_taken_over_and_renewed_ones_are_not() {
        let r = registry();
        let lease = Duration::from_secs(60);
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2, 3]).await.unwrap();
            let claimed = r.claim_sync_leased(&db, 3, Some(lease)).await.unwrap();
            assert_eq!(claimed.len(), 3, "{backend}");
            // Live claims are not taken, with or without a lease.
            assert!(
                r.claim_sync_leased(&db, 3, Some(lease))
                    .await
                    .unwrap()
                    .is_empty()
            );
            // 1 and 2 were claimed by a process that died two minutes ago;
            // 2 is renewed by a live one.
            let old = Utc::now() - chrono::Duration::seconds(120);
            for id in [1, 2] {
                set(&db, id, "last_synced_at = $1", vec![old.into()]).await;
            }
            assert_eq!(r.renew_syncs(&db, &[2, 99]).await.unwrap(), 1, "{backend}");
            assert!(
                r.claim_sync(&db, 3).await.unwrap().is_empty(),
                "{backend}: no lease, no takeover"
            );
            let taken = r.claim_sync_leased(&db, 3, Some(lease)).await.unwrap();
            assert_eq!(
                taken.iter().map(|c| c.model_id).collect::<Vec<_>>(),
                vec![1],
                "{backend}"
            );
            assert!(within(
                row(&db, 1).await.last_synced_at,
                chrono::Duration::seconds(-5),
                chrono::Duration::seconds(5)
            ));

            // Verification: the stamp is the lease, and it fences results.
            r.synced(&db, 1, true).await.unwrap();
            let first = r
                .claim_verification_leased(&db, 5, Some(lease))
                .await
                .unwrap()[0];
            assert!(
                r.claim_verification_leased(&db, 5, Some(lease))
                    .await
                    .unwrap()
                    .is_empty()
            );
            let old = first.started_at - chrono::Duration::seconds(120);
            set(&db, 1, "verification_started_at = $1", vec![old.into()]).await;
            let second = r
                .claim_verification_leased(&db, 5, Some(lease))
                .await
                .unwrap();
            assert_eq!(second.len(), 1, "{backend}");
            assert!(
                !r.verification_succeeded(&db, 1, "00", old).await.unwrap(),
                "{backend}: the lost claim writes nothing"
            );
            assert!(
                r.verification_succeeded(&db, 1, "00", second[0].started_at)
                    .await
                    .unwrap(),
                "{backend}"
            );
        }
    }

    #[tokio::test]
    async fn a_dead_workers_claims_are_released_and_a_renewed_batch_is_not_taken_over() {
        let r = registry();
        let lease = Duration::from_secs(60);
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2, 3, 4]).await.unwrap();
            // Claims name this process.
            let claimed = r.claim_sync_leased(&db, 2, Some(lease)).await.unwrap();
            assert_eq!(claimed.len(), 2, "{backend}");
            let me = crate::leases::worker_id();
            let owner = |id: i64| {
                let db = db.clone();
                let sql = format!("SELECT claimed_by FROM {} WHERE {} = $1", r.table, r.fk);
                async move {
                    db.fetch_one(&sql, &[id.into()])
                        .await
                        .unwrap()
                        .opt_text("claimed_by")
                        .unwrap()
                }
            };
            assert_eq!(owner(1).await.as_deref(), Some(me), "{backend}");
            // Row 1's sync and row 3's verification were a dead worker's.
            set(&db, 1, "claimed_by = 'other:1:dead'", vec![]).await;
            assert!(r.start(&db, 3).await.unwrap());
            assert!(r.synced(&db, 3, true).await.unwrap());
            assert_eq!(r.claim_verification(&db, 5).await.unwrap().len(), 1);
            set(&db, 3, "claimed_by = 'other:1:dead'", vec![]).await;
            set(&db, 1, "retry_count = 2", vec![]).await;
            assert_eq!(
                r.release_claims(&db, Some("other:1:dead")).await.unwrap(),
                2,
                "{backend}"
            );
            let one = row(&db, 1).await;
            assert_eq!(
                (one.state, one.retry_count),
                (SyncState::Pending, 0),
                "{backend}: GitLab's pending transition"
            );
            assert_eq!(
                row(&db, 3).await.verification_state,
                VerificationState::Pending,
                "{backend}"
            );
            assert_eq!(
                row(&db, 2).await.state,
                SyncState::Started,
                "{backend}: live claim kept"
            );
            // At a SQLite startup: every claim.
            assert_eq!(r.release_claims(&db, None).await.unwrap(), 1, "{backend}");
            assert_eq!(row(&db, 2).await.state, SyncState::Pending, "{backend}");

            // A verification batch renewed while it runs outlasts the lease.
            assert!(r.start(&db, 4).await.unwrap());
            assert!(r.synced(&db, 4, true).await.unwrap());
            let claims = r.claim_verification(&db, 5).await.unwrap();
            let ids: Vec<i64> = claims.iter().map(|c| c.model_id).collect();
            let old = claims[0].started_at - chrono::Duration::seconds(120);
            for id in &ids {
                set(&db, *id, "verification_started_at = $1", vec![old.into()]).await;
            }
            let table = r.verification_table();
            let (taken, stamp) = table
                .renewing(&db, &ids, old, Some(Duration::from_millis(20)), async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    r.claim_verification_leased(&db, 5, Some(lease))
                        .await
                        .unwrap()
                })
                .await;
            assert!(
                taken.is_empty(),
                "{backend}: renewed claims are not taken over"
            );
            assert!(stamp > old, "{backend}");
            assert!(
                r.verification_succeeded(&db, ids[0], "00", stamp)
                    .await
                    .unwrap(),
                "{backend}: the result is written under the renewed stamp"
            );
        }
    }

    #[tokio::test]
    async fn claims_take_pending_then_due_failures() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2, 3, 4, 5]).await.unwrap();
            // 1: synced; 2: failed, due; 3: failed, not due; 4, 5: pending.
            for id in [1, 2, 3] {
                r.start(&db, id).await.unwrap();
            }
            r.synced(&db, 1, false).await.unwrap();
            r.failed(&db, 2, "a", false).await.unwrap();
            r.failed(&db, 3, "b", false).await.unwrap();
            set(
                &db,
                2,
                "retry_at = $1",
                vec![(Utc::now() - chrono::Duration::seconds(5)).into()],
            )
            .await;

            let first: Vec<i64> = r
                .claim_sync(&db, 2)
                .await
                .unwrap()
                .iter()
                .map(|c| c.model_id)
                .collect();
            let mut first_sorted = first.clone();
            first_sorted.sort_unstable();
            assert_eq!(first_sorted, vec![4, 5], "{backend}: pending first");
            let second = r.claim_sync(&db, 10).await.unwrap();
            assert_eq!(second.len(), 1, "{backend}");
            assert_eq!(
                (second[0].model_id, second[0].retry_count),
                (2, 1),
                "{backend}"
            );
            assert!(r.claim_sync(&db, 10).await.unwrap().is_empty(), "{backend}");
            assert_eq!(row(&db, 4).await.state, SyncState::Started);
        }
    }

    #[tokio::test]
    async fn mismatches_keep_the_local_checksum_and_resync() {
        let r = registry();
        let local = "aa".repeat(32);
        let primary = "bb".repeat(32);
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[7]).await.unwrap();
            r.start(&db, 7).await.unwrap();
            r.synced(&db, 7, true).await.unwrap();
            // Not synced rows are never claimed for verification.
            r.insert_missing(&db, &[8]).await.unwrap();

            let claims = r.claim_verification(&db, 10).await.unwrap();
            assert_eq!(claims.len(), 1, "{backend}");
            let claim = claims[0];
            assert_eq!(claim.model_id, 7);
            assert_eq!(
                row(&db, 7).await.verification_state,
                VerificationState::Started
            );
            let mismatch = VerificationFailure::Mismatch {
                checksum: local.clone(),
                primary_checksum: primary.clone(),
            };
            assert!(
                r.verification_failed(&db, 7, &mismatch, Some(claim.started_at))
                    .await
                    .unwrap(),
                "{backend}"
            );

            let failed = row(&db, 7).await;
            let text = format!(
                "Checksum does not match the primary checksum {{checksum: \"{local}\", primary_checksum: \"{primary}\", registry_id: {}}}",
                claim.registry_id
            );
            assert_eq!(
                failed.verification_state,
                VerificationState::Failed,
                "{backend}"
            );
            assert_eq!(
                failed.verification_failure.as_deref(),
                Some(text.as_str()),
                "{backend}"
            );
            assert!(failed.checksum_mismatch, "{backend}");
            // GitLab stores the LOCAL checksum as the mismatched one.
            assert_eq!(
                failed.verification_checksum_mismatched.as_deref(),
                Some(local.as_str()),
                "{backend}"
            );
            assert_eq!(
                failed.verification_checksum.as_deref(),
                Some(local.as_str()),
                "{backend}"
            );
            assert_eq!(failed.verification_retry_count, 1);
            assert!(failed.verified_at.is_some());
            assert!(within(
                failed.verification_retry_at,
                chrono::Duration::seconds(16),
                chrono::Duration::seconds(74)
            ));
            // ...and resynced: sync failed, backing off by the verification retry count.
            assert_eq!(failed.state, SyncState::Failed, "{backend}");
            assert_eq!(failed.retry_count, 1, "{backend}");
            assert_eq!(
                failed.last_sync_failure.as_deref(),
                Some(states::failure_text(&format!("Verification failed with: {text}")).as_str()),
                "{backend}"
            );
            assert!(within(
                failed.retry_at,
                chrono::Duration::seconds(16),
                chrono::Duration::seconds(74)
            ));

            // The resync: due, claimed, synced; verification pending again, but
            // failed → pending keeps the retry count and the mismatch record.
            set(
                &db,
                7,
                "retry_at = $1",
                vec![(Utc::now() - chrono::Duration::seconds(1)).into()],
            )
            .await;
            assert_eq!(r.claim_sync(&db, 10).await.unwrap().len(), 2, "{backend}"); // 7 and the pending 8
            assert!(r.synced(&db, 7, true).await.unwrap());
            let resynced = row(&db, 7).await;
            assert_eq!(
                resynced.verification_state,
                VerificationState::Pending,
                "{backend}"
            );
            assert_eq!(resynced.verification_failure, None);
            assert_eq!(resynced.verification_retry_count, 1, "{backend}");
            assert!(resynced.checksum_mismatch, "{backend}");

            // A stale claim cannot write; the current one can, and clears the failure fields.
            let claim = r.claim_verification(&db, 10).await.unwrap()[0];
            let stale = claim.started_at - chrono::Duration::seconds(1);
            assert!(
                !r.verification_succeeded(&db, 7, &local, stale)
                    .await
                    .unwrap(),
                "{backend}"
            );
            assert!(
                !r.verification_failed(&db, 7, &mismatch, Some(stale))
                    .await
                    .unwrap(),
                "{backend}"
            );
            assert!(
                r.verification_succeeded(&db, 7, &primary, claim.started_at)
                    .await
                    .unwrap(),
                "{backend}"
            );
            let verified = row(&db, 7).await;
            assert_eq!(verified.verification_state, VerificationState::Succeeded);
            assert_eq!(
                verified.verification_checksum.as_deref(),
                Some(primary.as_str())
            );
            assert!(!verified.checksum_mismatch);
            assert_eq!(verified.verification_checksum_mismatched, None);
            assert_eq!(
                (
                    verified.verification_retry_count,
                    verified.verification_retry_at
                ),
                (0, None)
            );
            // Succeeded only from started.
            assert!(
                !r.verification_succeeded(&db, 7, &primary, claim.started_at)
                    .await
                    .unwrap()
            );

            // A plain error keeps no checksum and also resyncs.
            r.verification_pending(&db, 7).await.unwrap();
            let claim = r.claim_verification(&db, 10).await.unwrap()[0];
            let error = VerificationFailure::Error(
                "Error during verification: File is not checksummable".into(),
            );
            assert!(
                r.verification_failed(&db, 7, &error, Some(claim.started_at))
                    .await
                    .unwrap()
            );
            let errored = row(&db, 7).await;
            assert_eq!(errored.verification_checksum, None, "{backend}");
            assert!(!errored.checksum_mismatch, "{backend}");
            assert_eq!(
                errored.last_sync_failure.as_deref(),
                Some(
                    "Verification failed with: Error during verification: File is not checksummable"
                )
            );
            assert_eq!(errored.state, SyncState::Failed);
        }
    }

    #[tokio::test]
    async fn checksum_events_and_disabling_respect_the_state() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2]).await.unwrap();
            r.start(&db, 1).await.unwrap();
            r.synced(&db, 1, false).await.unwrap();
            assert!(
                !r.verification_pending_if_synced(&db, 2).await.unwrap(),
                "{backend}: not synced"
            );
            assert!(
                r.verification_pending_if_synced(&db, 1).await.unwrap(),
                "{backend}"
            );
            let claim = r.claim_verification(&db, 10).await.unwrap()[0];
            assert!(
                !r.verification_disabled(
                    &db,
                    1,
                    Some(claim.started_at - chrono::Duration::seconds(1))
                )
                .await
                .unwrap()
            );
            assert!(
                r.verification_disabled(&db, 1, Some(claim.started_at))
                    .await
                    .unwrap(),
                "{backend}"
            );
            assert_eq!(
                row(&db, 1).await.verification_state,
                VerificationState::Disabled
            );
            // Releasing a claim leaves everything else alone.
            r.verification_pending(&db, 1).await.unwrap();
            let claim = r.claim_verification(&db, 10).await.unwrap()[0];
            assert!(
                r.release_verification(&db, 1, claim.started_at)
                    .await
                    .unwrap(),
                "{backend}"
            );
            assert_eq!(
                row(&db, 1).await.verification_state,
                VerificationState::Pending
            );
        }
    }

    #[tokio::test]
    async fn stuck_rows_time_out() {
        let r = registry();
        let timeout = Duration::from_secs(8 * 3600);
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &[1, 2, 3]).await.unwrap();
            r.start(&db, 1).await.unwrap();
            r.start(&db, 2).await.unwrap();
            set(
                &db,
                1,
                "last_synced_at = $1",
                vec![(Utc::now() - chrono::Duration::hours(9)).into()],
            )
            .await;
            assert_eq!(
                r.fail_stuck_syncs(&db, timeout).await.unwrap(),
                1,
                "{backend}"
            );
            let stuck = row(&db, 1).await;
            assert_eq!(
                (stuck.state, stuck.retry_count),
                (SyncState::Failed, 1),
                "{backend}"
            );
            assert_eq!(
                stuck.last_sync_failure.as_deref(),
                Some("Sync timed out after 8 hours")
            );
            assert!(within(
                stuck.retry_at,
                chrono::Duration::seconds(16),
                chrono::Duration::seconds(74)
            ));
            assert_eq!(
                row(&db, 2).await.state,
                SyncState::Started,
                "{backend}: recent start kept"
            );

            r.start(&db, 3).await.unwrap();
            r.synced(&db, 3, true).await.unwrap();
            r.claim_verification(&db, 10).await.unwrap();
            set(
                &db,
                3,
                "verification_started_at = $1",
                vec![(Utc::now() - chrono::Duration::hours(9)).into()],
            )
            .await;
            assert_eq!(
                r.fail_stuck_verifications(&db, timeout).await.unwrap(),
                1,
                "{backend}"
            );
            let stuck = row(&db, 3).await;
            assert_eq!(stuck.verification_state, VerificationState::Failed);
            assert_eq!(
                stuck.verification_failure.as_deref(),
                Some("Verification timed out after 8 hours")
            );
            assert_eq!(
                (stuck.state, stuck.retry_count),
                (SyncState::Failed, 1),
                "{backend}: resynced"
            );
        }
    }

    #[tokio::test]
    async fn counts_follow_gitlab() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            assert_eq!(
                r.counts(&db).await.unwrap(),
                RegistryCounts::default(),
                "{backend}"
            );
            r.insert_missing(&db, &[1, 2, 3, 4, 5]).await.unwrap();
            for id in [1, 2, 3, 4] {
                r.start(&db, id).await.unwrap();
            }
            r.synced(&db, 1, true).await.unwrap(); // verification pending
            r.synced(&db, 2, false).await.unwrap(); // disabled
            r.synced(&db, 3, true).await.unwrap();
            let claim = r.claim_verification(&db, 10).await.unwrap();
            for c in claim {
                if c.model_id == 3 {
                    r.verification_succeeded(&db, 3, "00", c.started_at)
                        .await
                        .unwrap();
                } else {
                    r.release_verification(&db, c.model_id, c.started_at)
                        .await
                        .unwrap();
                }
            }
            r.failed(&db, 4, "x", false).await.unwrap();
            let counts = r.counts(&db).await.unwrap();
            assert_eq!(
                counts,
                RegistryCounts {
                    registry_count: 5,
                    synced_count: 3,
                    failed_count: 1,
                    verified_count: 1,
                    verification_failed_count: 0,
                    verification_total_count: 2,
                    pending_count: 1,
                    started_count: 0,
                },
                "{backend}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_never_overlap() {
        let r = registry();
        for (backend, db) in tracking_databases().await {
            let ids: Vec<i64> = (1..=300).collect();
            r.insert_missing(&db, &ids).await.unwrap();
            // Two claimers on separate connections, as two worker processes would be.
            let claimer = |db: Db| {
                let r = r.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let claims = r.claim_sync(&db, 7).await.unwrap();
                        if claims.is_empty() {
                            return mine;
                        }
                        mine.extend(claims.into_iter().map(|c| c.model_id));
                        tokio::task::yield_now().await;
                    }
                })
            };

            let (a, b) = tokio::join!(claimer(db.clone()), claimer(db.clone()));
            let (a, b) = (a.unwrap(), b.unwrap());
            let all: HashSet<i64> = a.iter().chain(&b).copied().collect();
            assert_eq!(a.len() + b.len(), 300, "{backend}: a row was claimed twice");
            assert_eq!(all.len(), 300, "{backend}");
            assert!(
                !a.is_empty() && !b.is_empty(),
                "{backend}: both claimers worked ({} / {})",
                a.len(),
                b.len()
            );

            // The same for verification claims.
            for id in &ids {
                r.synced(&db, *id, true).await.unwrap();
            }
            let vclaimer = |db: Db| {
                let r = r.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let claims = r.claim_verification(&db, 7).await.unwrap();
                        if claims.is_empty() {
                            return mine;
                        }
                        mine.extend(claims.into_iter().map(|c| c.model_id));
                        tokio::task::yield_now().await;
                    }
                })
            };
            let (a, b) = tokio::join!(vclaimer(db.clone()), vclaimer(db.clone()));
            let (a, b) = (a.unwrap(), b.unwrap());
            let all: HashSet<i64> = a.iter().chain(&b).copied().collect();
            assert_eq!((a.len() + b.len(), all.len()), (300, 300), "{backend}");
        }
    }
}
