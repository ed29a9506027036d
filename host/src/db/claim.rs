//! The verification claim: one statement shape for the primary's
//! `<name>_states` and a secondary's `<name>_registry`.
//!
//! A claim is one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`
//! that moves the chosen rows to verification `started` and stamps
//! `verification_started_at`: GitLab's `verification_pending_batch`, then
//! its `verification_failed_batch` (failed rows whose retry is due), then
//! claims older than the lease (their worker process died). On PostgreSQL
//! the candidates are locked with `FOR UPDATE SKIP LOCKED`, so concurrent
//! claimers never take the same row; on SQLite one writer at a time gives
//! the same guarantee. The outer `WHERE` repeats the candidate condition,
//! so a row that changed between the two is not taken.
//!
//! Bind `$1` = now, `$2` = the batch size, and `$3` = the lease's cut-off
//! when [`VerificationClaim::lease`] is set.

use super::Backend;
use crate::states::sql::*;

/// A verification claim statement of one table.
#[derive(Debug, Clone, Copy)]
pub struct VerificationClaim<'a> {
    /// The quoted table.
    pub table: &'a str,
    /// A condition every candidate also meets (a registry: synced), or `None`.
    pub only: Option<&'a str>,
    /// Whether claims older than the lease (`$3`) are taken over.
    pub lease: bool,
    /// The `RETURNING` list.
    pub returning: &'a str,
}

impl VerificationClaim<'_> {
    /// The statement on `backend`.
    pub fn sql(&self, backend: Backend) -> String {
        let t = self.table;
        let only = self.only.map(|c| format!("{c} AND ")).unwrap_or_default();
        let expired = if self.lease {
            format!(" OR (verification_state = {V_STARTED} AND verification_started_at < $3)")
        } else {
            String::new()
        };
        let lock = backend.skip_locked();
        let returning = self.returning;
        format!(
            "UPDATE {t} SET verification_state = {V_STARTED}, verification_started_at = $1 \
             WHERE id IN (SELECT id FROM {t} \
               WHERE {only}(verification_state = {V_PENDING} \
                 OR (verification_state = {V_FAILED} \
                   AND (verification_retry_at IS NULL OR verification_retry_at <= $1)){expired}) \
               ORDER BY verification_state, verified_at NULLS FIRST, \
                 verification_retry_at NULLS FIRST, id \
               LIMIT $2 {lock}) \
             AND {only}(verification_state IN ({V_PENDING}, {V_FAILED}){expired}) \
             RETURNING {returning}"
        )
    }
}
