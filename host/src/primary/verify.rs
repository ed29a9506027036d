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
//! A claim returns each row's `blob_path`, which ingest writes with the
//! record and a swap's moves rewrite, so a batch hashes straight from its
//! claim: only a row without a usable path (written before the column
//! existed) reads its record and asks the type, as GitLab's replicator asks
//! the model's uploader.
//!
//! Claims and results commit unsynced ([`Db::begin_unsynced`]): on a
//! SQLite primary they do not wait for the disk, since a claim or result
//! lost to a power cut is only work done again on the same blob; the event
//! feed syncs the log before it serves the events they wrote
//! (`docs/decisions.md`, "Durability"). An empty claim rolls back, so an
//! idle verifier leaves the feed nothing to sync.
//!
//! GitLab claims 10 rows per job; Geohost claims `workers.verification_batch`
//! (100 by default) and writes a batch's results in one transaction, which
//! is what lets small blobs verify at tens of thousands a second. Two
//! batches of a type run at once ([`verify_round`]), so one batch's
//! database writes overlap the next one's reading and hashing.

use super::events;
use super::records;
use crate::catalog::InstalledType;
use crate::db::{Arg, Db, DbError, claim, ident, rows_per_statement, stored_checksum, values_cte};
use crate::plugin::BlobPath;
use crate::site::Site;
use crate::states::sql::*;
use crate::states::{self, VerificationState};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
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
    /// The blob path the row holds (written by ingest and by a swap's
    /// moves); `None` for a row written before the column existed.
    blob_path: Option<String>,
}

/// One verification result.
#[derive(Debug)]
enum Outcome {
    Succeeded(String),
    Failed(String),
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

/// Gives back every verification claim of every type (verification
/// pending, nothing else changed): at the start of the one process a
/// SQLite database allows, where any claim was left by a process that
/// died. Returns how many rows it gave back.
pub async fn release_claims(db: &Db, types: &[Arc<InstalledType>]) -> Result<u64, DbError> {
    let mut released = 0;
    for it in types {
        let states = ident(&it.identity.states_table());
        released += db
            .execute(
                &format!(
                    "UPDATE {states} SET verification_state = {V_PENDING} \
                     WHERE verification_state = {V_STARTED}"
                ),
                &[],
            )
            .await?;
    }
    Ok(released)
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
    let fk = ident(&it.identity.foreign_key());
    let now = Db::now();
    let sql = claim::VerificationTable::states(&it.identity).claim_sql(
        db.backend(),
        true,
        &format!(
            "{fk} AS id, verification_started_at, verification_retry_count, \
             verification_checksum, blob_path"
        ),
    );
    let cutoff = crate::leases::expired_before(now, lease);
    // A claim lost to a power cut leaves its rows pending: unsynced.
    let mut tx = db.begin_unsynced().await?;
    let claims = tx
        .fetch_map(&sql, &[now.into(), limit.into(), cutoff.into()], |row| {
            Ok(Claim {
                id: row.i64("id")?,
                started_at: row.ts("verification_started_at")?,
                retry_count: row.int("verification_retry_count")?.unwrap_or(0),
                previous: row.opt_bytes("verification_checksum")?,
                blob_path: row.opt_text("blob_path")?,
            })
        })
        .await?;
    if claims.is_empty() {
        // Nothing changed: no commit for the event feed to sync.
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(claims)
}

/// Batches of one type in flight at once: while one batch reads and
/// hashes its blobs, another's claim or results go through the database
/// writer (one at a time on SQLite), so neither waits for the other.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Verifies batches of `it` ([`verify_batch`]), [`BATCHES_IN_FLIGHT`] at a
/// time, until a batch finds fewer rows than `limit` or `max_batches` have
/// started. Returns how many rows it handled; the first failed batch's
/// error once every batch in flight has finished (none is cut short, so
/// no claim is left behind).
pub async fn verify_round(
    site: &Site,
    it: &Arc<InstalledType>,
    limit: i64,
    concurrency: usize,
    max_batches: usize,
) -> anyhow::Result<usize> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    let mut started = 0;
    while started < max_batches.min(BATCHES_IN_FLIGHT) {
        in_flight.push(verify_batch(site, it, limit, concurrency));
        started += 1;
    }
    let (mut handled, mut first_error, mut drained) = (0, None, false);
    while let Some(result) = in_flight.next().await {
        match result {
            Ok(n) => {
                handled += n;
                drained |= (n as i64) < limit;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
        let more = !drained && first_error.is_none() && !site.shutdown.is_cancelled();
        if more && started < max_batches {
            in_flight.push(verify_batch(site, it, limit, concurrency));
            started += 1;
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(handled),
    }
}

/// The blob path of each claimed record that still exists: the one its
/// states row holds, so a batch of rows that all hold one reads no record
/// and calls no plugin; for the others (rows written before the column
/// existed, or holding a path that no longer passes the path rules), the
/// type's answer for the record, asked in one call. A record the plugin
/// traps on gets its own error, which fails its own verification only.
async fn blob_paths(
    site: &Site,
    it: &InstalledType,
    claims: &[Claim],
) -> anyhow::Result<HashMap<i64, Result<BlobPath, String>>> {
    let mut paths = HashMap::with_capacity(claims.len());
    let mut ask = Vec::new();
    for claim in claims {
        match claim.blob_path.as_deref().map(BlobPath::parse) {
            Some(Ok(path)) => {
                paths.insert(claim.id, Ok(path));
            }
            _ => ask.push(claim.id),
        }
    }
    if !ask.is_empty() {
        let found = records::by_ids(&site.db, it, &ask).await?;
        let answers = records::blob_paths(it, &found).await?;
        paths.extend(found.iter().map(|r| r.id).zip(answers));
    }
    Ok(paths)
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
    // One claim statement stamps its rows alike; renewed while the batch
    // runs (a third of the lease), so a long batch is not taken over.
    let work = async {
        let by_id = blob_paths(site, it, &claims).await?;
        let started = std::time::Instant::now();
        // Every blob of the batch hashed in a few blocking tasks, not one hop each.
        let mut paths = Vec::new();
        let mut hashed = Vec::new();
        for (i, claim) in claims.iter().enumerate() {
            if let Some(Ok(path)) = by_id.get(&claim.id) {
                paths.push(path.clone());
                hashed.push(i);
            }
        }
        let mut sums: Vec<Option<Result<String, crate::storage::StorageError>>> =
            claims.iter().map(|_| None).collect();
        for (i, sum) in hashed.into_iter().zip(
            site.blobs
                .geo_checksums(it.name(), &paths, concurrency)
                .await,
        ) {
            sums[i] = Some(sum);
        }
        anyhow::Ok((by_id, sums, started))
    };
    let (done, stamp) = claim::VerificationTable::states(&it.identity)
        .renewing(
            &site.db,
            &ids,
            claims[0].started_at,
            Some(site.config.claim_lease() / 3),
            work,
        )
        .await;
    let (by_id, sums, started) = done?;
    let claims = claims.into_iter().map(|claim| Claim {
        started_at: stamp,
        ..claim
    });
    let outcomes: Vec<(Claim, Outcome)> = claims
        .zip(sums)
        .map(|(claim, sum)| {
            let outcome = match (by_id.get(&claim.id), sum) {
                (None, _) => {
                    Outcome::Failed("File is not checksummable: the record is gone".into())
                }
                (Some(Err(error)), _) => {
                    Outcome::Failed(format!("Error during verification: {error}"))
                }
                (Some(Ok(_)), Some(Ok(checksum))) => match &claim.previous {
                    // Ingest clears the checksum when it writes a blob, so a
                    // different checksum here means the blob changed behind
                    // Geohost's back: corruption, not an update.
                    Some(previous) if *previous != stored_checksum(&checksum) => {
                        Outcome::Failed(format!(
                            "Checksum mismatch: the blob changed on disk since it was checksummed \
                         (stored {}, now {checksum})",
                            hex::encode(previous)
                        ))
                    }
                    _ => Outcome::Succeeded(checksum),
                },
                (Some(Ok(_)), Some(Err(error))) if error.is_not_found() => {
                    Outcome::Failed("File is not checksummable: the file does not exist".into())
                }
                (Some(Ok(_)), Some(Err(error))) => {
                    Outcome::Failed(format!("Error during verification: {error}"))
                }
                (Some(Ok(_)), None) => unreachable!("every blob with a path was hashed"),
            };
            (claim, outcome)
        })
        .collect();
    crate::metrics::VERIFY_SECONDS
        .with_label_values(&[it.name(), "primary"])
        .observe(started.elapsed().as_secs_f64());

    let published = record_outcomes(site, it, &outcomes).await?;
    if published > 0 {
        site.events.notify();
    }
    Ok(outcomes.len())
}

/// Writes a batch's results in one transaction, with one multi-row
/// statement per kind of result (results only under the claim's stamp:
/// an update of the record meanwhile wins), and one `checksum_succeeded`
/// event per success. Returns how many events it published.
async fn record_outcomes(
    site: &Site,
    it: &InstalledType,
    outcomes: &[(Claim, Outcome)],
) -> Result<usize, DbError> {
    let states = ident(&it.identity.states_table());
    let fk = ident(&it.identity.foreign_key());
    let now = Db::now();
    let mut succeeded: Vec<(&Claim, &String)> = Vec::new();
    let mut failed: Vec<(&Claim, &String)> = Vec::new();
    for (claim, outcome) in outcomes {
        match outcome {
            Outcome::Succeeded(checksum) => succeeded.push((claim, checksum)),
            Outcome::Failed(message) => {
                tracing::warn!(r#type = it.name(), id = claim.id, %message, "primary verification failed");
                failed.push((claim, message));
            }
        }
    }
    // Unsynced: a result lost to a power cut is hashed again from the same
    // blob; its events reach secondaries only once synced (`api/geo.rs`).
    let mut tx = site.db.begin_unsynced().await?;
    let mut verified: Vec<i64> = Vec::new();
    let columns = ["fk", "checksum", "started_at"];
    for chunk in succeeded.chunks(rows_per_statement(columns.len())) {
        let mut args: Vec<Arg> = vec![now.into()];
        for (claim, checksum) in chunk {
            args.extend([
                Arg::from(claim.id),
                Arg::from(stored_checksum(checksum)),
                Arg::from(claim.started_at),
            ]);
        }
        let sql = format!(
            "WITH {v} UPDATE {states} SET verification_state = {V_SUCCEEDED}, \
             verification_checksum = v.checksum, verified_at = $1, verification_failure = NULL, \
             verification_retry_count = 0, verification_retry_at = NULL \
             FROM v WHERE {states}.{fk} = v.fk AND {states}.verification_state = {V_STARTED} \
             AND {states}.verification_started_at = v.started_at RETURNING {states}.{fk} AS id",
            v = values_cte("v", &columns, 2, chunk.len()),
        );
        for row in tx.fetch_all(&sql, &args).await? {
            verified.push(row.i64("id")?);
        }
    }
    let columns = ["fk", "message", "retry_count", "retry_at", "started_at"];
    for chunk in failed.chunks(rows_per_statement(columns.len())) {
        let mut args: Vec<Arg> = vec![now.into()];
        for (claim, message) in chunk {
            let retry_count = claim.retry_count + 1;
            args.extend([
                Arg::from(claim.id),
                Arg::from(states::failure_text(message)),
                Arg::I16(Some(retry_count.min(i16::MAX as i64) as i16)),
                Arg::from(states::next_retry_time(now, retry_count, None)),
                Arg::from(claim.started_at),
            ]);
        }
        tx.execute(
            &format!(
                "WITH {v} UPDATE {states} SET verification_state = {V_FAILED}, \
                 verification_failure = v.message, verification_retry_count = v.retry_count, \
                 verification_retry_at = v.retry_at, verified_at = $1 \
                 FROM v WHERE {states}.{fk} = v.fk AND {states}.verification_state = {V_STARTED} \
                 AND {states}.verification_started_at = v.started_at",
                v = values_cte("v", &columns, 2, chunk.len()),
            ),
            &args,
        )
        .await?;
    }
    verified.sort_unstable();
    let payloads: Vec<serde_json::Value> = verified.iter().map(|&id| events::payload(id)).collect();
    let published =
        events::publish_many(&mut tx, it.name(), events::CHECKSUM_SUCCEEDED, &payloads).await?;
    tx.commit().await?;
    Ok(published)
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
            "UPDATE {states} SET verification_state = {V_FAILED}, verification_failure = $1, \
             verification_retry_count = verification_retry_count + 1, verification_retry_at = $2, verified_at = $3 \
             WHERE verification_state = {V_STARTED} AND verification_started_at < $4"
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
            "UPDATE {states} SET verification_state = {V_PENDING}, verification_retry_count = 0, \
             verification_retry_at = NULL, verification_failure = NULL \
             WHERE id IN (SELECT id FROM {states} WHERE verification_state = {V_SUCCEEDED} AND verified_at < $1 \
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
            let state = VerificationState::try_from(r.int("s")?.unwrap_or(0) as i16)
                .map_err(|e| DbError::decode("verification_state", e))?;
            Ok((state, r.i64("n")?))
        })
        .collect()
}

/// Batches a type gets per round of the worker before the next type's
/// turn (and the housekeeping check).
const BATCHES_PER_ROUND: usize = 10;

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
            match verify_round(&site, it, batch, per_type, BATCHES_PER_ROUND).await {
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
            // A write in this process wakes the verifier at once: a batch
            // is whatever is due then, it never waits to fill.
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = site.events.written() => {}
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
