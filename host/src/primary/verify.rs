//! Verification on the primary: checksum every blob into `<name>_states`.
//!
//! Rows are claimed in batches with one atomic `UPDATE … RETURNING`: on
//! PostgreSQL the candidate rows are locked with `FOR UPDATE SKIP LOCKED`,
//! so concurrent verifiers (threads or processes) never take the same row;
//! on SQLite the single writer serialises the statement, which gives the
//! same guarantee. A claim stamps `verification_started_at`; the result is
//! written only if that stamp is unchanged, so an update of the record
//! during checksumming (which resets the row to pending) wins.
//!
//! Checksums (GitLab's `ee/app/models/concerns/geo/blob_replicator_strategy.rb`):
//! SHA-256 hex of a local blob,
//! streamed; the padded decimal size for object storage. Pending rows go
//! first, then failed rows whose retry is due; failures back off with
//! GitLab's `next_retry_time`; `started` rows older than the timeout fail;
//! succeeded rows older than the site's minimum reverification interval go
//! back to pending.
//!
//! Deliberate difference from GitLab: a failed verification keeps the last
//! good checksum instead of clearing it, and a re-verification whose
//! checksum differs from it fails ("the blob changed on disk"). Secondaries
//! compare downloads with that checksum, so a blob corrupted on the primary
//! after checksumming is never accepted; a legitimate update goes through
//! ingest, which clears the checksum first.
//!
//! Several primary processes may share the database: a claim whose stamp is
//! older than `workers.claim_lease_secs` belongs to a process that died and
//! is taken over (the stamp then changes, so a merely slow process cannot
//! write its late result), and the timeout and reverification passes run in
//! one process at a time (`crate::leases`).
//!
//! GitLab claims 10 rows per job; Geohost claims `workers.verification_batch`
//! (100 by default) and writes a batch's results in one transaction, which
//! is what lets small blobs verify at tens of thousands a second.

use super::events;
use super::records;
use crate::catalog::InstalledType;
use crate::db::{Arg, Backend, Db, DbError, ident};
use crate::site::Site;
use crate::states::{self, VerificationState};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A claimed row.
#[derive(Debug, Clone)]
struct Claim {
    id: i64,
    started_at: DateTime<Utc>,
    retry_count: i64,
    /// The checksum stored by the last successful verification, if any.
    previous: Option<Vec<u8>>,
}

/// One verification result.
#[derive(Debug)]
enum Outcome {
    Succeeded(String),
    Failed(String),
}

/// A checksum as stored: GitLab's `sha_attribute` packs the hex string
/// into bytes (SHA-256 hex and the padded object-storage size are both hex).
pub fn stored_form(checksum: &str) -> Vec<u8> {
    hex::decode(checksum).unwrap_or_else(|_| checksum.as_bytes().to_vec())
}

/// Inserts the missing state rows of a type (records that predate it).
pub async fn backfill_states(db: &Db, it: &InstalledType) -> Result<u64, DbError> {
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let model = ident(&it.identity.table.name);
    db.execute(
        &format!(
            "INSERT INTO {states} ({fk}) SELECT m.id FROM {model} m \
             WHERE NOT EXISTS (SELECT 1 FROM {states} s WHERE s.{fk} = m.id)"
        ),
        &[],
    )
    .await
}

/// Claims up to `limit` rows due for verification, and rows whose claim
/// is older than `lease` (their worker process died; the stamp fences the
/// late result of a process that is only slow).
async fn claim(
    db: &Db,
    it: &InstalledType,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claim>, DbError> {
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let lock = match db.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let now = Db::now();
    let expired = "(verification_state = 1 AND verification_started_at < $3)";
    let sql = format!(
        "UPDATE {states} SET verification_state = 1, verification_started_at = $1 \
         WHERE id IN (SELECT id FROM {states} \
           WHERE verification_state = 0 \
              OR (verification_state = 3 AND (verification_retry_at IS NULL OR verification_retry_at <= $1)) \
              OR {expired} \
           ORDER BY verification_state, verified_at NULLS FIRST, verification_retry_at NULLS FIRST \
           LIMIT $2 {lock}) \
         AND (verification_state IN (0, 3) OR {expired}) \
         RETURNING {fk} AS id, verification_started_at, verification_retry_count, verification_checksum"
    );
    let cutoff = crate::leases::expired_before(now, lease);
    db.fetch_all(&sql, &[now.into(), limit.into(), cutoff.into()])
        .await?
        .iter()
        .map(|row| {
            Ok(Claim {
                id: row.i64("id")?,
                started_at: row.ts("verification_started_at")?,
                retry_count: row.int("verification_retry_count")?.unwrap_or(0),
                previous: row.opt_bytes("verification_checksum")?,
            })
        })
        .collect()
}

/// Verifies one batch of one type. Returns how many rows it handled.
pub async fn verify_batch(
    site: &Site,
    it: &Arc<InstalledType>,
    limit: i64,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let claims = claim(&site.db, it, limit, site.config.claim_lease()).await?;
    if claims.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = claims.iter().map(|c| c.id).collect();
    let found = records::by_ids(&site.db, it, &ids).await?;
    // Isolated per record: a record the plugin traps on fails its own
    // verification, not its batch's.
    let rows = found
        .iter()
        .map(|r| Ok(it.path_row(r.id, &r.values)))
        .collect();
    let paths = it.blob_paths_of_rows(rows).await?;
    let by_id: std::collections::HashMap<i64, _> = found.iter().map(|r| r.id).zip(paths).collect();

    let started = std::time::Instant::now();
    let outcomes: Vec<(Claim, Outcome)> = futures::stream::iter(claims)
        .map(|claim| {
            let path = by_id.get(&claim.id).cloned();
            async move {
                let outcome = match path {
                    None => Outcome::Failed("File is not checksummable: the record is gone".into()),
                    Some(Err(error)) => Outcome::Failed(format!("Error during verification: {error}")),
                    Some(Ok(path)) => match site.blobs.geo_checksum(it.name(), &path).await {
                        Ok(checksum) => match &claim.previous {
                            // Ingest clears the checksum when it writes a blob, so a
                            // different checksum here means the blob changed behind
                            // Geohost's back: corruption, not an update.
                            Some(previous) if *previous != stored_form(&checksum) => Outcome::Failed(format!(
                                "Checksum mismatch: the blob changed on disk since it was checksummed \
                                 (stored {}, now {checksum})",
                                hex::encode(previous)
                            )),
                            _ => Outcome::Succeeded(checksum),
                        },
                        Err(error) if error.is_not_found() => {
                            Outcome::Failed("File is not checksummable: the file does not exist".into())
                        }
                        Err(error) => Outcome::Failed(format!("Error during verification: {error}")),
                    },
                };
                (claim, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    crate::metrics::VERIFY_SECONDS
        .with_label_values(&[it.name(), "primary"])
        .observe(started.elapsed().as_secs_f64());

    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let now = Db::now();
    let mut tx = site.db.begin().await?;
    let mut published = false;
    for (claim, outcome) in &outcomes {
        match outcome {
            Outcome::Succeeded(checksum) => {
                let checksum = stored_form(checksum);
                let changed = tx
                    .execute(
                        &format!(
                            "UPDATE {states} SET verification_state = 2, verification_checksum = $1, \
                             verified_at = $2, verification_failure = NULL, verification_retry_count = 0, \
                             verification_retry_at = NULL \
                             WHERE {fk} = $3 AND verification_state = 1 AND verification_started_at = $4"
                        ),
                        &[checksum.into(), now.into(), claim.id.into(), claim.started_at.into()],
                    )
                    .await?;
                if changed == 1 {
                    published |= events::publish(
                        &mut tx,
                        it.name(),
                        events::CHECKSUM_SUCCEEDED,
                        events::payload(claim.id),
                    )
                    .await?;
                }
            }
            Outcome::Failed(message) => {
                tracing::warn!(r#type = it.name(), id = claim.id, %message, "primary verification failed");
                let retry_count = claim.retry_count + 1;
                tx.execute(
                    &format!(
                        "UPDATE {states} SET verification_state = 3, verification_failure = $1, \
                         verification_retry_count = $2, \
                         verification_retry_at = $3, verified_at = $4 \
                         WHERE {fk} = $5 AND verification_state = 1 AND verification_started_at = $6"
                    ),
                    &[
                        states::failure_text(message).into(),
                        Arg::I16(Some(retry_count.min(i16::MAX as i64) as i16)),
                        states::next_retry_time(now, retry_count, None).into(),
                        now.into(),
                        claim.id.into(),
                        claim.started_at.into(),
                    ],
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    if published {
        site.events.notify();
    }
    Ok(outcomes.len())
}

/// Fails `started` rows older than `timeout` (GitLab's VerificationTimeoutWorker).
pub async fn fail_stuck(db: &Db, it: &InstalledType, timeout: Duration) -> Result<u64, DbError> {
    let states = ident(&it.identity.states_table());
    let now = Db::now();
    let cutoff = crate::leases::expired_before(now, timeout);
    let hours = timeout.as_secs() / 3600;
    let message = if hours >= 1 && timeout.as_secs().is_multiple_of(3600) {
        format!("Verification timed out after {hours} hours")
    } else {
        format!("Verification timed out after {} seconds", timeout.as_secs())
    };
    db.execute(
        &format!(
            "UPDATE {states} SET verification_state = 3, verification_failure = $1, \
             verification_retry_count = verification_retry_count + 1, verification_retry_at = $2, verified_at = $3 \
             WHERE verification_state = 1 AND verification_started_at < $4"
        ),
        &[message.into(), states::next_retry_time(now, 1, None).into(), now.into(), cutoff.into()],
    )
    .await
}

/// Sends succeeded rows verified before `interval_days` ago back to pending
/// (GitLab's ReverificationBatchWorker, 1,000 at a time).
///
/// The date arithmetic is checked: an interval reaching before 1970 (the
/// bound is checked when it is set, but a database may hold anything)
/// makes nothing due, where it used to panic the verification worker at
/// every restart.
pub async fn reverify_due(db: &Db, it: &InstalledType, interval_days: i64) -> Result<u64, DbError> {
    let states = ident(&it.identity.states_table());
    let days = u64::try_from(interval_days.max(1)).unwrap_or(1);
    let interval = Duration::from_secs(days.saturating_mul(86_400));
    let cutoff = crate::leases::expired_before(Db::now(), interval);
    db.execute(
        &format!(
            "UPDATE {states} SET verification_state = 0, verification_retry_count = 0, \
             verification_retry_at = NULL, verification_failure = NULL \
             WHERE id IN (SELECT id FROM {states} WHERE verification_state = 2 AND verified_at < $1 \
             ORDER BY verified_at LIMIT 1000)"
        ),
        &[cutoff.into()],
    )
    .await
}

/// Counts of a type's verification states on the primary.
pub async fn state_counts(
    db: &Db,
    it: &InstalledType,
) -> Result<Vec<(VerificationState, i64)>, DbError> {
    let states = ident(&it.identity.states_table());
    let rows = db
        .fetch_all(
            &format!("SELECT verification_state AS s, COUNT(*) AS n FROM {states} GROUP BY verification_state"),
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let state =
                VerificationState::try_from(r.int("s")?.unwrap_or(0) as i16).map_err(|e| {
                    DbError::Decode {
                        column: "verification_state".into(),
                        message: e.to_string(),
                    }
                })?;
            Ok((state, r.i64("n")?))
        })
        .collect()
}

/// The primary's verification worker: runs until the site shuts down.
pub async fn run(site: Arc<Site>) {
    let idle = Duration::from_millis(site.config.workers.idle_poll_ms);
    let batch = site.config.workers.verification_batch.max(1);
    let stuck_timeout = Duration::from_secs(site.config.workers.verification_timeout_secs);
    let mut last_housekeeping = std::time::Instant::now() - Duration::from_secs(3600);
    // Several primary processes may verify together; one at a time runs
    // the timeout and reverification passes.
    let housekeeping = crate::leases::DutyLease::new(
        site.db.clone(),
        "primary_verification_housekeeping",
        crate::leases::duty_ttl(site.config.claim_lease()),
    );
    loop {
        if site.shutdown.is_cancelled() {
            return;
        }
        let types = site.catalog.all();
        let capacity = super::sites::own_capacity(&site).await.unwrap_or(100) as usize;
        let per_type = (capacity / types.len().max(1)).max(1);
        // As often as the stuck timeout needs (the secondary does the same),
        // and only in the process holding the housekeeping lease.
        if last_housekeeping.elapsed() > Duration::from_secs(60).min(stuck_timeout / 2)
            && housekeeping.hold().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot take the housekeeping lease");
                false
            })
        {
            last_housekeeping = std::time::Instant::now();
            let interval = super::sites::own_reverification_days(&site)
                .await
                .unwrap_or(7);
            for it in &types {
                if let Err(error) = fail_stuck(&site.db, it, stuck_timeout).await {
                    tracing::warn!(r#type = it.name(), %error, "verification timeout pass failed");
                }
                if let Err(error) = reverify_due(&site.db, it, interval).await {
                    tracing::warn!(r#type = it.name(), %error, "reverification pass failed");
                }
            }
        }
        let mut worked = 0;
        let mut failed = false;
        for it in &types {
            match verify_batch(&site, it, batch, per_type).await {
                Ok(n) => worked += n,
                Err(error) => {
                    failed = true;
                    let error = format!("{error:#}");
                    tracing::warn!(r#type = it.name(), %error, "verification batch failed");
                    crate::health::round_failed(&error);
                }
            }
        }
        if !failed {
            crate::health::round_ok();
        }
        if worked == 0 {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = site.shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin once set `minimum_reverification_interval` to 2^31 − 1
    /// days: the cutoff date overflowed and the verification worker
    /// panicked, again after every restart.
    #[tokio::test]
    async fn huge_intervals_and_timeouts_do_not_panic() {
        let helm = crate::secondary::testing::helm();
        for (backend, db) in crate::db::testing::test_databases().await {
            crate::db::migrate::main(&db).await.unwrap();
            crate::db::template::ensure_primary_tables(&db, &helm.identity)
                .await
                .unwrap();
            for days in [1, i64::from(i32::MAX), i64::MAX, -5] {
                reverify_due(&db, &helm, days)
                    .await
                    .unwrap_or_else(|e| panic!("{backend}, {days} days: {e}"));
            }
            fail_stuck(&db, &helm, Duration::MAX).await.unwrap();
            fail_stuck(&db, &helm, Duration::from_secs(u64::MAX / 1000))
                .await
                .unwrap();
        }
    }
}
