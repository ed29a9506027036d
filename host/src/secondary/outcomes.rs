//! A batch's registry outcomes, written together: GitLab's sync and
//! verification transitions ([`super::registry`]) for many rows in one
//! transaction, with one multi-row statement per kind of outcome instead of
//! one statement (or transaction) per row.
//!
//! Each row keeps its own transition, as if it were written alone: a
//! `synced` applies only to a row still `started` (a resync meanwhile wins,
//! and the row is reported superseded); a failure takes the row's own
//! retry count and backoff; a verification result applies only under the
//! claim's stamp. The single-row methods of [`Registry`] are these with one
//! row.

use super::registry::{Registry, VerificationFailure, mismatch_text, verification_pending_set};
use crate::db::{Arg, Db, DbError, placeholders, rows_per_statement, stored_checksum, values_cte};
use crate::states::sql::*;
use crate::states::{self, VerificationState};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// How one row's sync attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Downloaded, checked and in place: `started → synced` (verification
    /// pending when the primary had verified it, else disabled).
    Synced { primary_verified: bool },
    /// GitLab's `failed!`: any → failed, with backoff.
    Failed {
        message: String,
        missing_on_primary: bool,
    },
    /// Given back untouched (shutdown): any → pending.
    Released,
}

/// What [`Registry::record_sync_outcomes`] did, by model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRecorded {
    /// Now synced.
    pub synced: Vec<i64>,
    /// Synced outcomes whose row was no longer `started` (a resync, a
    /// takeover or a delete happened meanwhile): nothing written.
    pub superseded: Vec<i64>,
    /// Now failed.
    pub failed: Vec<i64>,
    /// Now pending.
    pub released: Vec<i64>,
}

/// How one verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationOutcome {
    /// The local checksum (hex) equals the primary's.
    Succeeded(String),
    /// GitLab's registry failure, which also resyncs the row.
    Failed(VerificationFailure),
    /// The primary has nothing to compare with (GitLab's `ready_to_verify?`).
    Disabled,
}

/// What [`Registry::record_verification_outcomes`] changed, by model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerificationRecorded {
    pub succeeded: Vec<i64>,
    pub failed: Vec<i64>,
    pub disabled: Vec<i64>,
}

impl VerificationRecorded {
    /// Rows changed.
    pub fn total(&self) -> usize {
        self.succeeded.len() + self.failed.len() + self.disabled.len()
    }
}

/// Model ids from `RETURNING {fk} AS model_id` rows.
fn model_ids(rows: Vec<crate::db::DbRow>) -> Result<Vec<i64>, DbError> {
    rows.iter().map(|r| r.i64("model_id")).collect()
}

impl Registry {
    /// Writes a batch of sync outcomes (by model id) in one transaction.
    pub async fn record_sync_outcomes(
        &self,
        db: &Db,
        outcomes: &[(i64, SyncOutcome)],
    ) -> Result<SyncRecorded, DbError> {
        let (t, fk) = (self.table(), self.fk());
        let mut recorded = SyncRecorded::default();
        if outcomes.is_empty() {
            return Ok(recorded);
        }
        let mut verified = Vec::new();
        let mut unverified = Vec::new();
        let mut failed: HashMap<i64, (&str, bool)> = HashMap::new();
        let mut released = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                SyncOutcome::Synced {
                    primary_verified: true,
                } => verified.push(*id),
                SyncOutcome::Synced {
                    primary_verified: false,
                } => unverified.push(*id),
                SyncOutcome::Failed {
                    message,
                    missing_on_primary,
                } => {
                    failed.insert(*id, (message.as_str(), *missing_on_primary));
                }
                SyncOutcome::Released => released.push(*id),
            }
        }
        let mut tx = db.begin().await?;
        let chunk = rows_per_statement(1);
        // `before_synced` + `save!` (GitLab saves these whatever the state),
        // then `mark_synced_atomically` with `after_synced` in the same
        // statement, so that no verifier sees a synced row with a stale
        // verification state.
        let all_synced: Vec<i64> = verified.iter().chain(&unverified).copied().collect();
        let by_id = self.by_model_id(db.backend());
        for ids in all_synced.chunks(chunk) {
            tx.execute(
                &format!(
                    "UPDATE {t} SET retry_count = 0, last_sync_failure = NULL, retry_at = NULL \
                     WHERE {fk} IN ({})",
                    placeholders(1, ids.len())
                ),
                &ids.iter().map(|&id| Arg::from(id)).collect::<Vec<_>>(),
            )
            .await?;
        }
        for (group, after_synced) in [
            (&verified, verification_pending_set()),
            (&unverified, format!("verification_state = {V_DISABLED}")),
        ] {
            for ids in group.chunks(chunk) {
                let rows = tx
                    .fetch_all(
                        &format!(
                            "UPDATE {by_id} SET state = {S_SYNCED}, {after_synced} \
                             WHERE {fk} IN ({}) AND state = {S_STARTED} RETURNING {fk} AS model_id",
                            placeholders(1, ids.len())
                        ),
                        &ids.iter().map(|&id| Arg::from(id)).collect::<Vec<_>>(),
                    )
                    .await?;
                recorded.synced.extend(model_ids(rows)?);
            }
        }
        let won: std::collections::HashSet<i64> = recorded.synced.iter().copied().collect();
        recorded.superseded = all_synced
            .iter()
            .copied()
            .filter(|id| !won.contains(id))
            .collect();

        // GitLab's `failed!`: each row's own retry count and backoff.
        let failed_ids: Vec<i64> = failed.keys().copied().collect();
        let now = Db::now();
        let lock = tx.backend().row_lock();
        for ids in failed_ids.chunks(chunk) {
            let rows = tx
                .fetch_all(
                    &format!(
                        "SELECT {fk} AS model_id, retry_count FROM {t} WHERE {fk} IN ({}) {lock}",
                        placeholders(1, ids.len())
                    ),
                    &ids.iter().map(|&id| Arg::from(id)).collect::<Vec<_>>(),
                )
                .await?;
            let columns = ["fk", "retry_count", "retry_at", "message"];
            let mut args = Vec::new();
            let mut n = 0;
            for row in &rows {
                let id = row.i64("model_id")?;
                let (message, missing) = failed[&id];
                let count = row.int("retry_count")?.unwrap_or(0).saturating_add(1);
                let cap = missing.then_some(states::MISSING_ON_PRIMARY_CAP);
                args.extend([
                    Arg::from(id),
                    small(count),
                    Arg::from(states::next_retry_time(now, count, cap)),
                    Arg::from(states::failure_text(message)),
                ]);
                recorded.failed.push(id);
                n += 1;
            }
            if n == 0 {
                continue;
            }
            tx.execute(
                &format!(
                    "WITH {v} UPDATE {t} SET state = {S_FAILED}, retry_count = v.retry_count, \
                     retry_at = v.retry_at, last_sync_failure = v.message FROM v WHERE {t}.{fk} = v.fk",
                    v = values_cte("v", &columns, 1, n)
                ),
                &args,
            )
            .await?;
        }

        // GitLab's `pending!`: any → pending, verification disabled.
        for ids in released.chunks(chunk) {
            let rows = tx
                .fetch_all(
                    &format!(
                        "UPDATE {t} SET state = {S_PENDING}, retry_at = NULL, retry_count = 0, \
                         verification_state = {V_DISABLED} WHERE {fk} IN ({}) RETURNING {fk} AS model_id",
                        placeholders(1, ids.len())
                    ),
                    &ids.iter().map(|&id| Arg::from(id)).collect::<Vec<_>>(),
                )
                .await?;
            recorded.released.extend(model_ids(rows)?);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Writes a batch of verification outcomes in one transaction. Each row
    /// is `(model id, the claim's stamp, outcome)`: with a stamp, the
    /// outcome applies only while that claim holds (a resync or a newer
    /// claim meanwhile wins); without, from any state.
    pub async fn record_verification_outcomes(
        &self,
        db: &Db,
        outcomes: &[(i64, Option<DateTime<Utc>>, VerificationOutcome)],
    ) -> Result<VerificationRecorded, DbError> {
        let (t, fk) = (self.table(), self.fk());
        let mut recorded = VerificationRecorded::default();
        if outcomes.is_empty() {
            return Ok(recorded);
        }
        let now = Db::now();
        let mut tx = db.begin().await?;
        let claimed = format!(
            "{t}.verification_state = {V_STARTED} AND {t}.verification_started_at = v.started_at"
        );

        let succeeded: Vec<(i64, Option<DateTime<Utc>>, &String)> = outcomes
            .iter()
            .filter_map(|(id, stamp, o)| match o {
                VerificationOutcome::Succeeded(checksum) => Some((*id, *stamp, checksum)),
                _ => None,
            })
            .collect();
        let columns = ["fk", "checksum", "started_at", "fenced"];
        for chunk in succeeded.chunks(rows_per_statement(columns.len())) {
            let mut args: Vec<Arg> = vec![now.into()];
            for (id, stamp, checksum) in chunk {
                args.extend([
                    Arg::from(*id),
                    Arg::from(stored_checksum(checksum)),
                    Arg::from(*stamp),
                    Arg::from(stamp.is_some()),
                ]);
            }
            let rows = tx
                .fetch_all(
                    &format!(
                        "WITH {v} UPDATE {t} SET verification_state = {V_SUCCEEDED}, \
                         verification_checksum = v.checksum, verified_at = $1, \
                         verification_retry_count = 0, verification_retry_at = NULL, \
                         verification_failure = NULL, checksum_mismatch = false, \
                         verification_checksum_mismatched = NULL \
                         FROM v WHERE {t}.{fk} = v.fk AND (NOT v.fenced OR ({claimed})) \
                         RETURNING {t}.{fk} AS model_id",
                        v = values_cte("v", &columns, 2, chunk.len())
                    ),
                    &args,
                )
                .await?;
            recorded.succeeded.extend(model_ids(rows)?);
        }

        let disabled: Vec<(i64, Option<DateTime<Utc>>)> = outcomes
            .iter()
            .filter(|(_, _, o)| *o == VerificationOutcome::Disabled)
            .map(|(id, stamp, _)| (*id, *stamp))
            .collect();
        let columns = ["fk", "started_at", "fenced"];
        for chunk in disabled.chunks(rows_per_statement(columns.len())) {
            let mut args: Vec<Arg> = Vec::new();
            for (id, stamp) in chunk {
                args.extend([
                    Arg::from(*id),
                    Arg::from(*stamp),
                    Arg::from(stamp.is_some()),
                ]);
            }
            let rows = tx
                .fetch_all(
                    &format!(
                        "WITH {v} UPDATE {t} SET verification_state = {V_DISABLED} \
                         FROM v WHERE {t}.{fk} = v.fk AND (NOT v.fenced OR ({claimed})) \
                         RETURNING {t}.{fk} AS model_id",
                        v = values_cte("v", &columns, 1, chunk.len())
                    ),
                    &args,
                )
                .await?;
            recorded.disabled.extend(model_ids(rows)?);
        }

        // Failures: each row's own count and registry id (in the mismatch
        // text), read under the row lock, and a resync.
        let failures: HashMap<i64, (Option<DateTime<Utc>>, &VerificationFailure)> = outcomes
            .iter()
            .filter_map(|(id, stamp, o)| match o {
                VerificationOutcome::Failed(failure) => Some((*id, (*stamp, failure))),
                _ => None,
            })
            .collect();
        let ids: Vec<i64> = failures.keys().copied().collect();
        let lock = tx.backend().row_lock();
        let columns = [
            "fk",
            "checksum",
            "failure",
            "count",
            "verification_retry_at",
            "retry_at",
            "sync_failure",
            "mismatch",
        ];
        for ids in ids.chunks(rows_per_statement(columns.len())) {
            let rows = tx
                .fetch_all(
                    &format!(
                        "SELECT id, {fk} AS model_id, verification_retry_count, verification_state, \
                         verification_started_at FROM {t} WHERE {fk} IN ({}) {lock}",
                        placeholders(1, ids.len())
                    ),
                    &ids.iter().map(|&id| Arg::from(id)).collect::<Vec<_>>(),
                )
                .await?;
            let mut args: Vec<Arg> = vec![now.into()];
            let mut n = 0;
            for row in &rows {
                let id = row.i64("model_id")?;
                let (stamp, failure) = failures[&id];
                if let Some(started_at) = stamp {
                    let state = VerificationState::try_from(row.i16("verification_state")?);
                    let still_claimed = state == Ok(VerificationState::Started)
                        && row.opt_ts("verification_started_at")? == Some(started_at);
                    if !still_claimed {
                        continue;
                    }
                }
                let count = row
                    .int("verification_retry_count")?
                    .unwrap_or(0)
                    .saturating_add(1);
                let (text, checksum, mismatch) = match failure {
                    VerificationFailure::Mismatch {
                        checksum,
                        primary_checksum,
                    } => (
                        mismatch_text(checksum, primary_checksum, row.i64("id")?),
                        Some(stored_checksum(checksum)),
                        true,
                    ),
                    VerificationFailure::Error(message) => (message.clone(), None, false),
                };
                let text = states::failure_text(&text);
                args.extend([
                    Arg::from(id),
                    Arg::Bytes(checksum),
                    Arg::from(text.clone()),
                    small(count),
                    Arg::from(states::next_retry_time(now, count, None)),
                    // The sync `failed` event adds one to `verification_retry_count - 1`.
                    Arg::from(states::next_retry_time(now, count, None)),
                    Arg::from(states::failure_text(&format!(
                        "Verification failed with: {text}"
                    ))),
                    Arg::from(mismatch),
                ]);
                recorded.failed.push(id);
                n += 1;
            }
            if n == 0 {
                continue;
            }
            tx.execute(
                &format!(
                    "WITH {v} UPDATE {t} SET verification_state = {V_FAILED}, \
                     verification_checksum = v.checksum, verification_failure = v.failure, \
                     verification_retry_count = v.count, \
                     verification_retry_at = v.verification_retry_at, verified_at = $1, \
                     state = {S_FAILED}, retry_count = v.count, retry_at = v.retry_at, \
                     last_sync_failure = v.sync_failure, \
                     checksum_mismatch = CASE WHEN v.mismatch THEN true ELSE checksum_mismatch END, \
                     verification_checksum_mismatched = CASE WHEN v.mismatch THEN v.checksum \
                       ELSE verification_checksum_mismatched END \
                     FROM v WHERE {t}.{fk} = v.fk",
                    v = values_cte("v", &columns, 2, n)
                ),
                &args,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }
}

/// A count as a `smallint` argument, capped.
fn small(n: i64) -> Arg {
    Arg::I16(Some(n.clamp(0, i16::MAX as i64) as i16))
}
