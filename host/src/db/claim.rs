//! Claims: the one statement shape that hands rows to a worker, for the
//! primary's `<name>_states` and a secondary's `<name>_registry`.
//!
//! A claim is one atomic `UPDATE … WHERE id IN (…) AND <guard> RETURNING`
//! that moves up to `$2` rows to `started` and stamps them. The rows are
//! taken from kinds of candidates in turn (for verification: GitLab's
//! `verification_pending_batch`, then its `verification_failed_batch` of
//! failed rows whose retry is due, then claims older than the lease, whose
//! worker process died), each kind read **in the order of an index that
//! holds it** (`UNION ALL` of one `ORDER BY … LIMIT $2` per kind), so a
//! claim reads a batch's worth of index entries and sorts nothing: it does
//! not get slower as the table grows. (One `ORDER BY` over all the kinds at
//! once sorted every pending row on every claim.) The rows updated are
//! found by id (on SQLite the target is `NOT INDEXED`, on PostgreSQL the
//! ids are an array), since both planners otherwise read the guard's `OR`
//! through the kinds' indexes, every claimable row again on every claim:
//! SQLite as one index scan per branch (`MULTI-INDEX OR`), PostgreSQL as a
//! `BitmapOr` joined to the candidates. On SQLite, which has no
//! statistics to choose by, each kind names its index (`INDEXED BY`); on
//! PostgreSQL the planner picks it, and the candidates are locked with
//! `FOR UPDATE SKIP LOCKED`, so concurrent claimers never take the same
//! row (on SQLite one writer at a time gives the same guarantee). The
//! outer guard repeats the kinds' conditions, so a row that changed in
//! between is not taken.
//!
//! Bind `$1` = now, `$2` = the batch size, and `$3` = the lease's cut-off
//! when the claim takes over expired claims.

use super::template::identifier;
use super::{Arg, Backend, Db, DbError, QuotedIdent, ident, placeholders};
use crate::plugin::TypeIdentity;
use crate::states::sql::*;
use chrono::{DateTime, Utc};
use futures::future::{Fuse, FusedFuture, FutureExt};
use std::time::Duration;

/// One kind of candidate rows.
#[derive(Debug, Clone)]
pub struct Candidates {
    /// The quoted index that holds these rows in `order` (SQLite reads by
    /// it; `None`: SQLite's own choice).
    pub index: Option<QuotedIdent>,
    /// The SQL condition of a candidate.
    pub condition: String,
    /// The order they are taken in (the index's); `None`: any order.
    pub order: Option<String>,
}

impl Candidates {
    /// The first `$2` candidates' ids, locked on PostgreSQL.
    pub fn select_sql(&self, backend: Backend, table: &str) -> String {
        let indexed = match (&self.index, backend) {
            (Some(index), Backend::Sqlite) => format!(" INDEXED BY {index}"),
            _ => String::new(),
        };
        let order = self
            .order
            .as_ref()
            .map(|o| format!(" ORDER BY {o}"))
            .unwrap_or_default();
        format!(
            "SELECT id FROM {table}{indexed} WHERE {}{order} LIMIT $2 {}",
            self.condition,
            backend.skip_locked()
        )
    }
}

/// The claim statement: `UPDATE table SET set` on the first `$2` rows of
/// `kinds` (each kind in its own order, the kinds in turn), returning
/// `returning`.
pub fn claim_sql(
    backend: Backend,
    table: &str,
    set: &str,
    kinds: &[Candidates],
    returning: &str,
) -> String {
    let branches: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            format!(
                "SELECT id FROM ({}) AS kind{i}",
                kind.select_sql(backend, table)
            )
        })
        .collect();
    let guard: Vec<String> = kinds.iter().map(|k| format!("({})", k.condition)).collect();
    // The candidates, found by id (module docs): `NOT INDEXED` still uses
    // the rowid; an array computed first goes to the primary key.
    let candidates = format!("{} LIMIT $2", branches.join(" UNION ALL "));
    let (target, by_id) = match backend {
        Backend::Sqlite => (
            format!("{table} NOT INDEXED"),
            format!("id IN ({candidates})"),
        ),
        Backend::Postgres => (table.to_string(), format!("id = ANY(ARRAY({candidates}))")),
    };
    format!(
        "UPDATE {target} SET {set} WHERE {by_id} AND ({}) RETURNING {returning}",
        guard.join(" OR ")
    )
}

/// A table that GitLab's verification state machine runs on.
#[derive(Debug, Clone)]
pub struct VerificationTable {
    /// The quoted table.
    pub table: QuotedIdent,
    /// What every candidate also meets (a registry row: synced).
    only: String,
    /// The quoted partial index of pending rows by `verified_at`.
    pending_index: QuotedIdent,
    /// The quoted partial index of failed rows by `verification_retry_at`.
    failed_index: QuotedIdent,
    /// The quoted partial index of started rows (claims, taken over when
    /// their lease expired).
    started_index: QuotedIdent,
    /// Whether a claim names its worker in `claimed_by` (a registry).
    owned: bool,
    /// The quoted foreign key (the model record id).
    fk: QuotedIdent,
}

impl VerificationTable {
    /// The primary's `<name>_states` of a type.
    pub fn states(identity: &TypeIdentity) -> VerificationTable {
        let name = &identity.name;
        VerificationTable {
            table: ident(&identity.states_table()),
            only: String::new(),
            pending_index: index(&format!("index_{name}_states_pending_verification")),
            failed_index: index(&format!("index_{name}_states_failed_verification")),
            started_index: index(&format!("index_{name}_states_on_verification_started")),
            owned: false,
            fk: ident(&identity.foreign_key()),
        }
    }

    /// A secondary's `<name>_registry` of a type: only synced rows verify.
    pub fn registry(identity: &TypeIdentity) -> VerificationTable {
        let name = &identity.name;
        VerificationTable {
            table: ident(&identity.registry_table()),
            only: format!("state = {S_SYNCED} AND "),
            pending_index: index(&format!("{name}_registry_pending_verification")),
            failed_index: index(&format!("{name}_registry_failed_verification")),
            started_index: index(&format!("{name}_registry_started_verification")),
            owned: true,
            fk: ident(&identity.foreign_key()),
        }
    }

    /// The verification claim's candidates: pending rows by `verified_at`
    /// (NULLs first), then failed rows whose retry is due by retry time,
    /// then, with `lease`, rows started before `$3`.
    pub fn candidates(&self, lease: bool) -> Vec<Candidates> {
        let only = &self.only;
        let mut kinds = vec![
            Candidates {
                index: Some(self.pending_index.clone()),
                condition: format!("{only}verification_state = {V_PENDING}"),
                order: Some("verified_at NULLS FIRST".into()),
            },
            Candidates {
                index: Some(self.failed_index.clone()),
                condition: format!(
                    "{only}verification_state = {V_FAILED} \
                     AND (verification_retry_at IS NULL OR verification_retry_at <= $1)"
                ),
                order: Some("verification_retry_at NULLS FIRST".into()),
            },
        ];
        if lease {
            kinds.push(Candidates {
                index: Some(self.started_index.clone()),
                condition: format!(
                    "{only}verification_state = {V_STARTED} AND verification_started_at < $3"
                ),
                // Few, and taken over in any order.
                order: None,
            });
        }
        kinds
    }

    /// The verification claim ([`VerificationTable::candidates`]): sets
    /// verification `started` and `verification_started_at = $1`.
    pub fn claim_sql(&self, backend: Backend, lease: bool, returning: &str) -> String {
        claim_sql(
            backend,
            &self.table,
            &format!(
                "verification_state = {V_STARTED}, verification_started_at = $1{}",
                if self.owned {
                    format!(", claimed_by = {}", claimant())
                } else {
                    String::new()
                }
            ),
            &self.candidates(lease),
            returning,
        )
    }
}

impl VerificationTable {
    /// Renews a batch's verification claims: the rows of `model_ids` still
    /// started under `stamp` get a new stamp, returned. One transaction, so
    /// the batch's rows keep one stamp. (The stamp is also the fence of the
    /// batch's results: they are written with the stamp the claims hold.)
    pub async fn renew(
        &self,
        db: &Db,
        model_ids: &[i64],
        stamp: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, DbError> {
        let now = Db::now();
        let mut tx = db.begin().await?;
        for chunk in model_ids.chunks(RENEW_CHUNK) {
            let sql = format!(
                "UPDATE {t} SET verification_started_at = $1 \
                 WHERE verification_state = {V_STARTED} AND verification_started_at = $2 \
                 AND {fk} IN ({})",
                placeholders(3, chunk.len()),
                t = self.table,
                fk = self.fk
            );
            let mut args: Vec<Arg> = vec![now.into(), stamp.into()];
            args.extend(chunk.iter().map(|&id| Arg::from(id)));
            tx.execute(&sql, &args).await?;
        }
        tx.commit().await?;
        Ok(now)
    }

    /// Runs a verification batch's `work` while renewing its claims (the
    /// rows of `model_ids`, stamped `stamp`) every `every` (`None`: never),
    /// so a batch that outlasts the claim lease is not taken over. Returns
    /// the work's output and the stamp the claims hold now. A renewal that
    /// fails is logged and tried again at the next tick.
    pub async fn renewing<T>(
        &self,
        db: &Db,
        model_ids: &[i64],
        mut stamp: DateTime<Utc>,
        every: Option<Duration>,
        work: impl Future<Output = T>,
    ) -> (T, DateTime<Utc>) {
        let Some(every) = every.filter(|e| !e.is_zero()) else {
            return (work.await, stamp);
        };
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A renewal runs beside the work, never instead of it: the work may
        // hold the one writer connection (SQLite) across an await, and a
        // renewal waiting for that connection while the work is not polled
        // would wait forever.
        let mut renewal = std::pin::pin!(Fuse::terminated());
        loop {
            tokio::select! {
                out = &mut work => {
                    if !renewal.is_terminated() {
                        stamp = self.renewed(renewal.await, stamp);
                    }
                    return (out, stamp);
                }
                _ = tick.tick(), if renewal.is_terminated() => {
                    renewal.set(self.renew(db, model_ids, stamp).fuse());
                }
                result = &mut renewal, if !renewal.is_terminated() => {
                    stamp = self.renewed(result, stamp);
                }
            }
        }
    }

    /// The stamp after a renewal: the new one, or (logged) the old one.
    fn renewed(
        &self,
        result: Result<DateTime<Utc>, DbError>,
        stamp: DateTime<Utc>,
    ) -> DateTime<Utc> {
        result.unwrap_or_else(|error| {
            tracing::warn!(table = %self.table, %error, "cannot renew verification claims");
            stamp
        })
    }
}

/// Rows per renewal statement.
const RENEW_CHUNK: usize = 500;

/// This process's [`crate::leases::worker_id`] as an SQL literal, for a
/// claim's `claimed_by` (host, process id and hex: nothing to escape, but
/// quotes are doubled all the same).
pub fn claimant() -> String {
    format!("'{}'", crate::leases::worker_id().replace('\'', "''"))
}

/// An index name as the templates create it (shortened past 63 bytes), quoted.
pub fn index(name: &str) -> QuotedIdent {
    ident(&identifier(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{
        Arg, Db, template,
        testing::{test_databases, update},
    };
    use crate::secondary::registry::Registry;
    use crate::secondary::testing::{helm, tracking_databases};

    const ROWS: i64 = 20_000;

    /// The plan of `select` (one kind's candidates): its lines.
    async fn plan(db: &Db, select: &str) -> Vec<String> {
        let now = Arg::from(Db::now());
        let args = [now.clone(), Arg::from(100_i64), now];
        let (explain, column) = match db.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN", "detail"),
            Backend::Postgres => ("EXPLAIN", "QUERY PLAN"),
        };
        // Only the binds the statement names.
        let used = (1..=3)
            .filter(|n| select.contains(&format!("${n}")))
            .count();
        db.fetch_all(&format!("{explain} {select}"), &args[..used.max(2)])
            .await
            .unwrap()
            .iter()
            .map(|row| row.text(column).unwrap())
            .collect()
    }

    /// The kind is read through an index in its order (on SQLite, the one
    /// it names; PostgreSQL picks one): no sort.
    async fn assert_index_ordered(db: &Db, table: &str, kind: &Candidates, what: &str) {
        let lines = plan(db, &kind.select_sql(db.backend(), table)).await;
        let text = lines.join("\n");
        let index = match db.backend() {
            Backend::Sqlite => kind.index.as_deref().unwrap().trim_matches('"'),
            Backend::Postgres => "Index Scan",
        };
        assert!(text.contains(index), "{what}: not by {index}:\n{text}");
        let sorted = match db.backend() {
            Backend::Sqlite => text.contains("TEMP B-TREE"),
            Backend::Postgres => lines.iter().any(|l| l.contains("Sort")),
        };
        assert!(!sorted, "{what}: sorts its candidates:\n{text}");
    }

    /// PostgreSQL's statistics, as autovacuum keeps them (SQLite has none
    /// and is told the index).
    async fn analyze(db: &Db) {
        if db.backend() == Backend::Postgres {
            db.execute_script("ANALYZE").await.unwrap();
        }
    }

    /// Renewal ticks while the work holds SQLite's one writer connection
    /// (a statement in flight) never stop the work: both finish.
    #[tokio::test]
    async fn renewing_never_waits_for_a_writer_the_work_holds() {
        let it = helm();
        let registry = Registry::of(&it);
        for (backend, db) in tracking_databases().await {
            registry.insert_missing(&db, &[1]).await.unwrap();
            let bump = format!(
                "UPDATE {} SET retry_count = retry_count + 1",
                registry.table()
            );
            let work = async {
                for _ in 0..200 {
                    db.execute(&bump, &[]).await.unwrap();
                }
            };
            let every = Some(Duration::from_millis(1));
            let table = registry.verification_table();
            let renewing = table.renewing(&db, &[1], Db::now(), every, work);
            tokio::time::timeout(Duration::from_secs(60), renewing)
                .await
                .unwrap_or_else(|_| panic!("{backend}: the work and its renewals deadlocked"));
        }
    }

    #[tokio::test]
    async fn claims_read_pending_rows_through_an_index_in_its_order() {
        let it = helm();
        // The primary's states table, 20,000 records: a tenth verified, a
        // fifth failed and due.
        for (backend, db) in test_databases().await {
            template::ensure_primary_tables(&db, &it.identity)
                .await
                .unwrap();
            let model = ident(&it.identity.table.name);
            db.execute(
                &format!(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS}) \
                     INSERT INTO {model} (created_at, updated_at, project_id, size, file_store, \
                       channel, file, object_storage_key) \
                     SELECT $1, $1, 1, 1, 1, 'c' || x, 'index.yaml', 'k' || x FROM c"
                ),
                &[Db::now().into()],
            )
            .await
            .unwrap();
            crate::primary::verify::backfill_states(&db, &it)
                .await
                .unwrap();
            let states = VerificationTable::states(&it.identity);
            let succeeded = format!("verification_state = {V_SUCCEEDED} WHERE id % 10 = 0");
            update(&db, &states.table, &succeeded, &[]).await;
            let failed = format!(
                "verification_state = {V_FAILED}, verification_retry_at = $1 WHERE id % 5 = 1"
            );
            update(&db, &states.table, &failed, &[Db::now().into()]).await;
            analyze(&db).await;
            let kinds = states.candidates(true);
            assert_index_ordered(&db, &states.table, &kinds[0], &format!("{backend} pending"))
                .await;
            assert_index_ordered(&db, &states.table, &kinds[1], &format!("{backend} failed")).await;
            assert_claim_by_id(&db, &states.table, &kinds, &format!("{backend} states")).await;
        }
        // A secondary's registry: 20,000 rows, a fifth synced, half of
        // those failed verification and due.
        for (backend, db) in tracking_databases().await {
            let registry = Registry::of(&it);
            let ids: Vec<i64> = (1..=ROWS).collect();
            registry.insert_missing(&db, &ids).await.unwrap();
            let synced = format!("state = {S_SYNCED} WHERE id % 5 = 0");
            update(&db, registry.table(), &synced, &[]).await;
            let failed = format!(
                "verification_state = {V_FAILED}, verification_retry_at = $1 WHERE id % 10 = 0"
            );
            update(&db, registry.table(), &failed, &[Db::now().into()]).await;
            analyze(&db).await;
            let table = registry.table();
            let sync = registry.sync_candidates(true);
            assert_index_ordered(&db, table, &sync[0], &format!("{backend} sync")).await;
            let verification = registry.verification_candidates(true);
            assert_index_ordered(
                &db,
                table,
                &verification[0],
                &format!("{backend} pending verification"),
            )
            .await;
            assert_index_ordered(
                &db,
                table,
                &verification[1],
                &format!("{backend} failed verification"),
            )
            .await;
            assert_claim_by_id(&db, table, &sync, &format!("{backend} sync")).await;
            let what = format!("{backend} registry verification");
            assert_claim_by_id(&db, table, &verification, &what).await;
        }
    }

    /// The whole claim statement (every kind, the lease's included) reads
    /// the rows it updates by id, and each kind's candidates through the
    /// index the kind names: nothing in it walks a large share of the table,
    /// so a claim costs the same at 20,000 rows as at 20. (SQLite planned the
    /// guard's `OR` as a scan of the `state` index once per branch, and the
    /// registry's expired verification claims through the same index: every
    /// synced row, on every claim.)
    async fn assert_claim_by_id(db: &Db, table: &str, kinds: &[Candidates], what: &str) {
        let sql = claim_sql(
            db.backend(),
            table,
            "verification_started_at = $1",
            kinds,
            "id",
        );
        let lines = plan(db, &sql).await;
        let text = lines.join("\n");
        let name = table.trim_matches('"');
        match db.backend() {
            Backend::Sqlite => {
                assert!(!text.contains("MULTI-INDEX OR"), "{what}: {text}");
                let by_id = format!("SEARCH {name} USING INTEGER PRIMARY KEY (rowid=?)");
                assert!(text.contains(&by_id), "{what}: not by id:\n{text}");
                for line in lines.iter().filter(|l| l.contains(&format!(" {name} "))) {
                    let own = kinds.iter().filter_map(|k| k.index.as_deref());
                    let allowed = line.contains("INTEGER PRIMARY KEY")
                        || own.map(|i| i.trim_matches('"')).any(|i| line.contains(i));
                    assert!(allowed, "{what}: {line}\n{text}");
                }
            }
            Backend::Postgres => {
                assert!(!text.contains("Seq Scan"), "{what}: {text}");
                // The guard's branches as one bitmap of every claimable
                // row, joined to the candidates: the same walk.
                assert!(!text.contains("BitmapOr"), "{what}: {text}");
                let by_id = format!("Index Scan using {name}_pkey");
                assert!(text.contains(&by_id), "{what}: not by id:\n{text}");
            }
        }
    }

    #[test]
    fn a_claim_takes_the_kinds_in_turn_and_guards_each() {
        let kinds = [
            Candidates {
                index: Some(ident("i")),
                condition: "a = 0".into(),
                order: Some("x".into()),
            },
            Candidates {
                index: None,
                condition: "a = 3".into(),
                order: None,
            },
        ];
        assert_eq!(
            claim_sql(Backend::Sqlite, "\"t\"", "a = 1", &kinds, "id"),
            "UPDATE \"t\" NOT INDEXED SET a = 1 WHERE id IN (\
             SELECT id FROM (SELECT id FROM \"t\" INDEXED BY \"i\" WHERE a = 0 ORDER BY x LIMIT $2 ) AS kind0 \
             UNION ALL SELECT id FROM (SELECT id FROM \"t\" WHERE a = 3 LIMIT $2 ) AS kind1 LIMIT $2) \
             AND ((a = 0) OR (a = 3)) RETURNING id"
        );
        assert!(
            claim_sql(Backend::Postgres, "\"t\"", "a = 1", &kinds, "id")
                .contains("ORDER BY x LIMIT $2 FOR UPDATE SKIP LOCKED) AS kind0")
        );
    }
}
