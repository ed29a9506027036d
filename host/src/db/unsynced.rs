//! Commits that skip the wait for stable storage, on a SQLite database
//! whose commits otherwise make it (`synchronous = FULL`).
//!
//! The primary's database is durable ([`super::Db::connect_durable`]): an
//! acknowledged ingest survives a power cut. Its verification writes need
//! no such promise: a lost claim or result only means the row is verified
//! again, from a blob that cannot have changed meanwhile (a change goes
//! through ingest, whose durable commit syncs the write-ahead log and so
//! every commit before it). Syncing them anyway cost two `fsync`s per
//! verification batch on the one writer connection, where every other
//! writer waited for them.
//!
//! [`super::Db::begin_unsynced`] commits with `synchronous = NORMAL`: the
//! commit is written to the WAL and visible at once, and reaches stable
//! storage with the next synced commit, checkpoint or [`CommitSync::sync`].
//! The writer connection's mode is switched only when the next transaction
//! wants the other one ([`Mode`]), so a run of verification batches pays
//! no switch at all.
//!
//! The one thing such a commit writes that another site keeps is an event:
//! a secondary that read event 100 and then saw the primary lose it would
//! skip a different event 100 written after the restart. So a reader that
//! hands events to another site calls [`CommitSync::sync`] after its read:
//! any commit the read could see had its WAL frames written before it, and
//! one `fdatasync` of the WAL makes them durable. It costs nothing when no
//! unsynced commit happened since the last sync.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst};

/// The writer connection's `synchronous` setting, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// `FULL`, the database's own setting.
    Synced = 0,
    /// `NORMAL`, for [`super::Db::begin_unsynced`].
    Unsynced = 1,
    /// A switch was sent and not seen to finish (its future was dropped):
    /// the next transaction sets its mode whatever it wants.
    Unknown = 2,
}

impl Mode {
    fn pragma(self) -> &'static str {
        match self {
            Mode::Unsynced => "PRAGMA synchronous = NORMAL",
            Mode::Synced | Mode::Unknown => "PRAGMA synchronous = FULL",
        }
    }
}

/// Unsynced commits of one durable SQLite database, and the syncs that
/// make them durable.
#[derive(Debug)]
pub(crate) struct CommitSync {
    /// The database's write-ahead log (`<file>-wal`).
    wal: PathBuf,
    /// The writer connection's [`Mode`].
    mode: AtomicU8,
    /// Unsynced transactions open now.
    open: AtomicU64,
    /// Unsynced transactions whose commit was sent, ever.
    commits_sent: AtomicU64,
    /// `commits_sent` as it was when the last completed sync started.
    synced: AtomicU64,
    /// An unsynced commit was sent and its answer not awaited: it may
    /// still be in the connection's queue after its transaction ended.
    uncertain: AtomicBool,
    /// One sync at a time (those waiting find their commits synced).
    syncing: tokio::sync::Mutex<()>,
}

impl CommitSync {
    pub(crate) fn new(database: PathBuf) -> CommitSync {
        let mut wal = database.into_os_string();
        wal.push("-wal");
        CommitSync {
            wal: wal.into(),
            mode: AtomicU8::new(Mode::Synced as u8),
            open: AtomicU64::new(0),
            commits_sent: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            uncertain: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// Puts the writer connection `conn` (held by the caller) in `want`
    /// mode, unless it is known to be in it already.
    pub(crate) async fn set_mode(
        &self,
        conn: &mut sqlx::SqliteConnection,
        want: Mode,
    ) -> Result<(), sqlx::Error> {
        if self.mode.load(SeqCst) == want as u8 {
            return Ok(());
        }
        // Unknown until the switch is seen done: a dropped future leaves
        // the next holder to switch again.
        self.mode.store(Mode::Unknown as u8, SeqCst);
        sqlx::query(want.pragma()).execute(conn).await?;
        self.mode.store(want as u8, SeqCst);
        Ok(())
    }

    /// Counts an unsynced transaction open until its guard drops.
    pub(crate) fn open(self: &std::sync::Arc<Self>) -> UnsyncedGuard {
        self.open.fetch_add(1, SeqCst);
        UnsyncedGuard {
            commits: self.clone(),
            commit_sent: false,
            answered: false,
        }
    }

    /// Whether a commit visible to a read that has finished may not be on
    /// stable storage yet.
    fn pending(&self) -> bool {
        self.uncertain.load(SeqCst)
            || self.open.load(SeqCst) > 0
            || self.commits_sent.load(SeqCst) > self.synced.load(SeqCst)
    }

    /// Makes every commit that a read finished before this call could see
    /// durable: one `fdatasync` of the WAL if an unsynced commit may be
    /// among them, nothing otherwise; returns whether it synced. `barrier`
    /// runs a statement on the writer connection, which waits for a commit
    /// still in its queue.
    pub(crate) async fn sync<F>(&self, barrier: F) -> std::io::Result<bool>
    where
        F: std::future::Future<Output = Result<(), sqlx::Error>>,
    {
        if !self.pending() {
            return Ok(false);
        }
        let _one = self.syncing.lock().await;
        // A sync that ran while this one waited may have covered it.
        if !self.pending() {
            return Ok(false);
        }
        if self.uncertain.load(SeqCst) {
            barrier.await.map_err(std::io::Error::other)?;
            self.uncertain.store(false, SeqCst);
        }
        let sent = self.commits_sent.load(SeqCst);
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || sync_file(&wal))
            .await
            .map_err(std::io::Error::other)??;
        self.synced.fetch_max(sent, SeqCst);
        crate::metrics::SQLITE_WAL_SYNCS.inc();
        Ok(true)
    }
}

/// `fdatasync` of `path`; a file that is not there (no WAL yet, or an
/// in-memory database) has nothing to sync.
fn sync_file(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// One unsynced transaction, counted from its start until it has ended
/// (public only as part of [`super::Tx`]; nothing outside can make one).
#[derive(Debug)]
pub struct UnsyncedGuard {
    commits: std::sync::Arc<CommitSync>,
    commit_sent: bool,
    answered: bool,
}

impl UnsyncedGuard {
    /// The transaction's commit is about to be sent.
    pub(crate) fn commit_sent(&mut self) {
        self.commit_sent = true;
    }

    /// The commit was answered (or failed).
    pub(crate) fn commit_answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for UnsyncedGuard {
    fn drop(&mut self) {
        if self.commit_sent && !self.answered {
            // Dropped while its commit was on the way: it may land later.
            self.commits.uncertain.store(true, SeqCst);
        }
        // Counted as sent before no longer open: a read that sees it not
        // open sees it sent, and syncs unless a later sync covered it. A
        // transaction never committed left nothing to see.
        if self.commit_sent {
            self.commits.commits_sent.fetch_add(1, SeqCst);
        }
        self.commits.open.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn commits() -> (tempfile::TempDir, Arc<CommitSync>) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("site.db");
        std::fs::write(dir.path().join("site.db-wal"), b"frames").unwrap();
        (dir, Arc::new(CommitSync::new(db)))
    }

    async fn no_barrier() -> Result<(), sqlx::Error> {
        panic!("no commit was left uncertain")
    }

    #[tokio::test]
    async fn a_sync_runs_only_after_unsynced_commits() {
        let (_dir, commits) = commits();
        assert!(!commits.pending(), "nothing unsynced yet");
        let mut guard = commits.open();
        assert!(commits.pending(), "an open unsynced transaction may commit");
        guard.commit_sent();
        guard.commit_answered();
        drop(guard);
        assert!(commits.pending(), "its commit is not synced yet");
        assert!(
            commits.sync(no_barrier()).await.unwrap(),
            "the WAL was synced"
        );
        assert!(!commits.pending(), "the sync covered it");
        assert!(
            !commits.sync(no_barrier()).await.unwrap(),
            "nothing to sync"
        );
    }

    #[tokio::test]
    async fn a_commit_dropped_on_its_way_waits_for_the_connection() {
        let (_dir, commits) = commits();
        let mut guard = commits.open();
        guard.commit_sent();
        drop(guard);
        let barrier_ran = Arc::new(AtomicBool::new(false));
        let ran = barrier_ran.clone();
        let synced = commits
            .sync(async move {
                ran.store(true, SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        assert!(synced);
        assert!(barrier_ran.load(SeqCst), "the barrier ran before the sync");
        assert!(!commits.pending());
    }

    #[tokio::test]
    async fn a_transaction_rolled_back_needs_no_sync() {
        let (_dir, commits) = commits();
        drop(commits.open());
        assert!(!commits.pending());
        assert!(!commits.sync(no_barrier()).await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_wal_has_nothing_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let commits = Arc::new(CommitSync::new(dir.path().join("none.db")));
        let mut guard = commits.open();
        guard.commit_sent();
        guard.commit_answered();
        drop(guard);
        assert!(commits.sync(no_barrier()).await.unwrap());
        assert!(!commits.pending());
    }
}
