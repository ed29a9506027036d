//! Several worker processes for one site: who runs the singleton duties,
//! and how a process tells its claims from another's.
//!
//! Work on rows (downloads, verifications) is shared by *claims*: one
//! `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING` that
//! starts the rows and stamps them, so two processes never take the same
//! row ([`crate::secondary::registry`], [`crate::primary::verify`]). The
//! stamp is the claim's lease: a process renews it while it works (a sync
//! every third of `workers.claim_lease_secs`), and a claim whose stamp is
//! older than the lease belongs to a process that died: the next claim
//! takes it over.
//!
//! Some duties must run in one process at a time: the registry consistency
//! pass (backfill and prune), the stuck-row pass, the status report, and on
//! the primary the reverification and timeout passes. Each is a
//! [`DutyLease`]: a row of `geo_leases` held by one process (its
//! [`worker_id`]) until `expires_at`, renewed by each round of the duty.
//! GitLab keeps the same as Redis exclusive leases. The event cursor keeps
//! its own PostgreSQL advisory lock per batch (`secondary::cursor`).
//!
//! SQLite allows one process only ([`SingleProcessLock`]): its database
//! serialises every writer, so a second worker would add nothing but lock
//! waits; there the duties are always the one process's own.
//!
//! A duty's lease lasts [`duty_ttl`] (30 s at most) and is renewed every
//! third of it, so a process that restarts after a crash on PostgreSQL gets
//! the duties back within 30 s. Each secondary process also keeps a
//! heartbeat row (`worker:<worker_id>`, [`heartbeat`]); a process whose
//! death is known ([`take_dead_workers`]: gone from this host, or its
//! heartbeat expired) has its claims on rows released at once (they name
//! it in `claimed_by`), not after the claim lease.

use crate::db::{Backend, Db, DbError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// This process's name in `geo_leases`: host name, process id and a random
/// suffix (a restarted process never inherits a dead one's leases).
pub fn worker_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}:{}:{}", std::process::id(), &random[..8])
    })
}

/// The stamp before which a claim taken at `now` with `lease` has expired.
pub fn expired_before(
    now: chrono::DateTime<chrono::Utc>,
    lease: Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
}

/// How long a singleton duty's lease lasts without renewal: GitLab's 30 s
/// cursor lease, or the claim lease when that is shorter. A restarted
/// process (a new [`worker_id`]) takes over its predecessor's duties after
/// at most this.
pub fn duty_ttl(claim_lease: Duration) -> Duration {
    claim_lease.min(Duration::from_secs(30))
}

/// The `geo_leases` row that says a worker process is alive.
fn liveness(worker: &str) -> String {
    format!("{WORKER_PREFIX}{worker}")
}

const WORKER_PREFIX: &str = "worker:";

/// Says this worker process is alive for `ttl` (its `geo_leases` row
/// `worker:<worker_id>`, renewed with the duty lease). PostgreSQL only:
/// on SQLite one process is all there is.
pub async fn heartbeat(db: &Db, ttl: Duration) -> Result<(), DbError> {
    if db.backend() == Backend::Sqlite {
        return Ok(());
    }
    DutyLease::new(db.clone(), liveness(worker_id()), ttl)
        .try_hold()
        .await
        .map(|_| ())
}

/// Worker processes whose death is known, each returned once: those of
/// this host whose process is gone (at once), and any whose heartbeat
/// expired. Their `worker:` rows are deleted here, so of several workers
/// asking, one gets each dead worker (to release its claims).
pub async fn take_dead_workers(db: &Db) -> Result<Vec<String>, DbError> {
    if db.backend() == Backend::Sqlite {
        return Ok(Vec::new());
    }
    let now = Db::now();
    let rows = db
        .fetch_all(
            "SELECT name, holder, expires_at FROM geo_leases WHERE name LIKE 'worker:%'",
            &[],
        )
        .await?;
    let mut dead = Vec::new();
    for row in rows {
        let (name, holder) = (row.text("name")?, row.text("holder")?);
        if holder == worker_id() || name != liveness(&holder) {
            continue;
        }
        let taken = if holder_is_dead_here(&holder) {
            db.execute(
                "DELETE FROM geo_leases WHERE name = $1 AND holder = $2",
                &[name.into(), holder.clone().into()],
            )
            .await?
        } else if row.ts("expires_at")? < now {
            // Not renewed meanwhile: the delete sees the same expiry.
            db.execute(
                "DELETE FROM geo_leases WHERE name = $1 AND holder = $2 AND expires_at < $3",
                &[name.into(), holder.clone().into(), now.into()],
            )
            .await?
        } else {
            0
        };
        if taken == 1 {
            dead.push(holder);
        }
    }
    Ok(dead)
}

/// A singleton duty's lease (a row of `geo_leases`).
#[derive(Debug, Clone)]
pub struct DutyLease {
    db: Db,
    name: String,
    ttl: Duration,
}

impl DutyLease {
    /// The lease `name` in `db`, held for `ttl` at each [`DutyLease::hold`].
    pub fn new(db: Db, name: impl Into<String>, ttl: Duration) -> DutyLease {
        DutyLease {
            db,
            name: name.into(),
            ttl,
        }
    }

    /// Takes the lease, or renews it if this process holds it. `false`
    /// while another live process holds it. Always `true` on SQLite, which
    /// takes one worker process ([`SingleProcessLock`]), so a restarted
    /// process never waits for its predecessor's lease.
    pub async fn hold(&self) -> Result<bool, DbError> {
        if self.db.backend() == Backend::Sqlite {
            return Ok(true);
        }
        if self.try_hold().await? {
            return Ok(true);
        }
        // Held by a process of this host that is gone (a crash, then a
        // restart): no need to wait for its lease to expire.
        if let Some(holder) = self.holder().await?
            && holder_is_dead_here(&holder)
        {
            self.db
                .execute(
                    "DELETE FROM geo_leases WHERE name = $1 AND holder = $2",
                    &[self.name.clone().into(), holder.clone().into()],
                )
                .await?;
            tracing::info!(lease = %self.name, %holder, "lease of a dead process on this host taken over");
            return self.try_hold().await;
        }
        Ok(false)
    }

    async fn try_hold(&self) -> Result<bool, DbError> {
        let now = Db::now();
        let expires = chrono::Duration::from_std(self.ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        // One statement on both backends: insert, or take over when held by
        // this process or expired. A row another process holds is left as
        // is, and no row is changed.
        let changed = self
            .db
            .execute(
                "INSERT INTO geo_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE geo_leases.holder = excluded.holder OR geo_leases.expires_at < $4",
                &[
                    self.name.clone().into(),
                    worker_id().into(),
                    expires.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Gives the lease up (on shutdown), if this process holds it.
    pub async fn release(&self) -> Result<(), DbError> {
        if self.db.backend() == Backend::Sqlite {
            return Ok(());
        }
        self.db
            .execute(
                "DELETE FROM geo_leases WHERE name = $1 AND holder = $2",
                &[self.name.clone().into(), worker_id().into()],
            )
            .await?;
        Ok(())
    }

    /// The current holder, if the lease is held and not expired.
    pub async fn holder(&self) -> Result<Option<String>, DbError> {
        let row = self
            .db
            .fetch_optional(
                "SELECT holder FROM geo_leases WHERE name = $1 AND expires_at >= $2",
                &[self.name.clone().into(), Db::now().into()],
            )
            .await?;
        row.map(|r| r.text("holder")).transpose()
    }
}

/// Whether `holder` (a [`worker_id`]) names a process of this host that no
/// longer runs (Linux: no `/proc/<pid>`).
fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = worker_id().split(':');
    let Some(our_host) = parts.next() else {
        return false;
    };
    let mut theirs = holder.split(':');
    let (Some(host), Some(pid)) = (theirs.next(), theirs.next()) else {
        return false;
    };
    host == our_host
        && holder != worker_id()
        && pid.parse::<u32>().is_ok()
        && Path::new("/proc/self").exists()
        && !Path::new("/proc").join(pid).exists()
}

/// Why a worker process may not start.
#[derive(Debug, thiserror::Error)]
pub enum SingleProcessError {
    #[error(
        "another geohost worker uses the SQLite database {0}: SQLite allows one worker process; \
         run several workers on a PostgreSQL tracking database (see docs/deployment.md)"
    )]
    Busy(PathBuf),
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock a worker process holds on a SQLite database's file
/// (`<database>.worker-lock`), released by the operating system when the
/// process ends, even by SIGKILL.
#[derive(Debug)]
pub struct SingleProcessLock {
    _file: std::fs::File,
}

impl SingleProcessLock {
    /// Locks the SQLite database behind `db` for this process; `None` for
    /// PostgreSQL, where any number of workers may share the database.
    pub fn for_db(db: &Db, url: &str) -> Result<Option<SingleProcessLock>, SingleProcessError> {
        if db.backend() != Backend::Sqlite {
            return Ok(None);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" {
            return Ok(None);
        }
        SingleProcessLock::lock(Path::new(path)).map(Some)
    }

    fn lock(database: &Path) -> Result<SingleProcessLock, SingleProcessError> {
        let mut name = database.as_os_str().to_owned();
        name.push(".worker-lock");
        let path = PathBuf::from(name);
        let io = |source| SingleProcessError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(SingleProcessLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(SingleProcessError::Busy(database.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::test_databases;

    #[tokio::test]
    async fn dead_workers_are_known_once_live_ones_never() {
        for (backend, db) in test_databases().await {
            crate::db::migrate::tracking(&db).await.unwrap();
            if db.backend() == Backend::Sqlite {
                assert!(take_dead_workers(&db).await.unwrap().is_empty());
                continue;
            }
            heartbeat(&db, Duration::from_secs(30)).await.unwrap();
            let host = worker_id().split(':').next().unwrap().to_string();
            let gone = format!("{host}:4000000000:gone");
            let expired = "elsewhere:1:late".to_string();
            let live = "elsewhere:2:live".to_string();
            let now = Db::now();
            for (holder, expires) in [
                (&gone, now + chrono::Duration::seconds(30)),
                (&expired, now - chrono::Duration::seconds(1)),
                (&live, now + chrono::Duration::seconds(30)),
            ] {
                db.execute(
                    "INSERT INTO geo_leases (name, holder, expires_at) VALUES ($1, $2, $3)",
                    &[
                        liveness(holder).into(),
                        holder.clone().into(),
                        expires.into(),
                    ],
                )
                .await
                .unwrap();
            }
            let mut dead = take_dead_workers(&db).await.unwrap();
            dead.sort();
            let mut expected = vec![expired, gone];
            expected.sort();
            assert_eq!(dead, expected, "{backend}");
            assert!(
                take_dead_workers(&db).await.unwrap().is_empty(),
                "{backend}: once"
            );
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_leases_are_taken_over() {
        for (backend, db) in test_databases().await {
            crate::db::migrate::tracking(&db).await.unwrap();
            let lease = DutyLease::new(db.clone(), "consistency", Duration::from_secs(60));
            assert!(lease.hold().await.unwrap(), "{backend}");
            if db.backend() == Backend::Sqlite {
                // One process: the duties are always its own.
                continue;
            }
            assert!(lease.hold().await.unwrap(), "{backend}: renewed");
            assert_eq!(lease.holder().await.unwrap().as_deref(), Some(worker_id()));

            // Another live process holds it: not taken.
            db.execute(
                "UPDATE geo_leases SET holder = 'other:1:x' WHERE name = 'consistency'",
                &[],
            )
            .await
            .unwrap();
            assert!(!lease.hold().await.unwrap(), "{backend}");
            lease.release().await.unwrap();
            assert_eq!(lease.holder().await.unwrap().as_deref(), Some("other:1:x"));

            // A process of this host that is gone: taken over at once.
            let host = worker_id().split(':').next().unwrap().to_string();
            db.execute(
                "UPDATE geo_leases SET holder = $1 WHERE name = 'consistency'",
                &[format!("{host}:4000000000:dead").into()],
            )
            .await
            .unwrap();
            assert!(lease.hold().await.unwrap(), "{backend}");
            db.execute(
                "UPDATE geo_leases SET holder = 'other:1:x' WHERE name = 'consistency'",
                &[],
            )
            .await
            .unwrap();

            // It died: its lease expires and is taken over.
            db.execute(
                "UPDATE geo_leases SET expires_at = $1 WHERE name = 'consistency'",
                &[(Db::now() - chrono::Duration::seconds(1)).into()],
            )
            .await
            .unwrap();
            assert_eq!(lease.holder().await.unwrap(), None);
            assert!(lease.hold().await.unwrap(), "{backend}");
            lease.release().await.unwrap();
            assert_eq!(lease.holder().await.unwrap(), None, "{backend}");
        }
    }

    #[test]
    fn a_sqlite_database_takes_one_worker_process() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("tracking.sqlite");
        let first = SingleProcessLock::lock(&database).unwrap();
        // A second open file description conflicts as another process would.
        let error = SingleProcessLock::lock(&database).unwrap_err().to_string();
        assert!(error.contains("allows one worker process"), "{error}");
        drop(first);
        SingleProcessLock::lock(&database).unwrap();
    }
}
