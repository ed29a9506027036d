//! One database API over SQLite (the embedded default) and PostgreSQL (real
//! deployments).
//!
//! Why not `sqlx::Any`: the schema is GitLab's (`timestamptz`, `bytea`,
//! `smallint` on PostgreSQL) and a type's tables are only known at run time
//! (from its plugin's identity), so queries are built as text and values are
//! bound by type. `Any` has no timestamp type; this module is the thin enum
//! over the two pools that `Any` would have been, plus typed arguments
//! ([`Arg`]) and typed reads ([`DbRow`]).
//!
//! SQL is written once with `$1, $2, …` placeholders, which both backends
//! accept. Where the dialects differ (DDL, `FOR UPDATE SKIP LOCKED`),
//! callers branch on [`Backend`].
//!
//! SQLite takes one writer at a time: a [`SqliteDb`] sends every statement
//! that may write to its one writer connection, where writers queue instead
//! of sleeping in SQLite's busy handler, and plain `SELECT`s to parallel
//! reader connections. PostgreSQL keeps one pool.
//!
//! Timestamps: `timestamptz` on PostgreSQL; on SQLite an `INTEGER` of
//! microseconds since the Unix epoch (sortable, exact, and cheap to compare).
//! Callers see `chrono::DateTime<Utc>` either way and never use SQL's own
//! clock functions, so both backends agree on "now".

pub(crate) mod claim;
pub(crate) mod migrate;
mod positional;
pub(crate) mod template;
#[doc(hidden)]
pub mod testing;
mod unsynced;

pub use crate::plugin::identity::QuotedIdent;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{PgPool, Row as _, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use unsynced::{CommitSync, Mode, UnsyncedGuard};

/// Which SQL dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL: concurrent claimers pass
    /// over each other's rows. Empty on SQLite, whose one writer at a time
    /// already keeps two claims apart.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// `FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds
    /// the lock.
    pub fn row_lock(self) -> &'static str {
        match self {
            Backend::Postgres => "FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// Database errors, with the statement that failed where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {0:?} is neither sqlite:… nor postgres://…")]
    BadUrl(String),
    #[error("{context}: {source}")]
    Sqlx {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("column `{column}`: {message}")]
    Decode { column: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl DbError {
    /// A column whose value is not what the caller expects.
    pub fn decode(column: &str, message: impl std::fmt::Display) -> DbError {
        DbError::Decode {
            column: column.into(),
            message: message.to_string(),
        }
    }

    fn sqlx(context: impl Into<String>, source: sqlx::Error) -> DbError {
        DbError::Sqlx {
            context: context.into(),
            source,
        }
    }

    /// Whether the error is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx {
                source: sqlx::Error::Database(e),
                ..
            } => e.is_unique_violation(),
            _ => false,
        }
    }

    /// Whether the error is a foreign-key violation.
    pub fn is_foreign_key_violation(&self) -> bool {
        match self {
            DbError::Sqlx {
                source: sqlx::Error::Database(e),
                ..
            } => e.is_foreign_key_violation(),
            _ => false,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A connection pool to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

/// A SQLite database: **one writer connection**, and reader connections.
///
/// SQLite lets one connection write at a time. With a pool of writers,
/// those that collide wait in SQLite's busy handler, which *sleeps* (1, 2,
/// 5, 10 … ms) and then retries; thousands of such sleeps a second were
/// the largest cost of small-blob sync. So every statement that may write
/// (every [`Db::execute`], [`Db::begin`], a [`Db::fetch_all`] that is not
/// a plain `SELECT` such as `UPDATE … RETURNING`) goes to a pool of one
/// connection, where writers queue without sleeping, and a `SELECT` goes
/// to the readers, which run in parallel with the writer (WAL). The
/// readers are `query_only`: a write sent there by mistake fails at once
/// instead of waiting for the lock. The busy handler stays for writers in
/// other processes (the CLI).
#[derive(Clone, Debug)]
pub struct SqliteDb {
    writer: SqlitePool,
    readers: SqlitePool,
    /// A durable database's unsynced commits ([`Db::begin_unsynced`]);
    /// `None` where no commit waits for stable storage anyway.
    commits: Option<Arc<CommitSync>>,
}

impl SqliteDb {
    /// One pool for reads and writes (tests that hook every connection of
    /// a pool; its writers wait for each other through the busy handler).
    #[cfg(test)]
    pub(crate) fn shared(pool: SqlitePool) -> Db {
        Db::Sqlite(SqliteDb {
            writer: pool.clone(),
            readers: pool,
            commits: None,
        })
    }

    /// The one writer connection's pool (migrations).
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A connection for `sql`: a reader for a plain `SELECT`, else the
    /// writer, its commits synced.
    async fn acquire_for(&self, sql: &str) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        if is_select(sql) {
            return self
                .readers
                .acquire()
                .await
                .map_err(|e| DbError::sqlx("acquiring a reader", e));
        }
        self.acquire_writer(Mode::Synced).await
    }

    /// The writer connection, in `mode`.
    async fn acquire_writer(&self, mode: Mode) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(|e| DbError::sqlx("acquiring the writer", e))?;
        if let Some(commits) = &self.commits {
            commits
                .set_mode(&mut conn, mode)
                .await
                .map_err(|e| DbError::sqlx("setting the writer's synchronous mode", e))?;
        }
        Ok(conn)
    }

    /// A transaction on the writer, its commit in `mode`.
    async fn begin(&self, mode: Mode) -> Result<Tx> {
        // Counted before anything is written.
        let guard = match (&self.commits, mode) {
            (Some(commits), Mode::Unsynced) => Some(commits.open()),
            _ => None,
        };
        // SQLite refuses to change `synchronous` inside a transaction, so
        // the connection is put in `mode` first, then the transaction is
        // begun on it as `Pool::begin_with` does (the same sqlx call).
        let conn = self.acquire_writer(mode).await?;
        let tx = sqlx::Transaction::begin(
            sqlx::pool::MaybePoolConnection::PoolConnection(conn),
            Some(sqlx::SqlSafeStr::into_sql_str("BEGIN IMMEDIATE")),
        )
        .await
        .map_err(|e| DbError::sqlx("BEGIN IMMEDIATE", e))?;
        Ok(Tx::Sqlite(tx, guard))
    }
}

/// Opens a SQLite database: its writer, then its readers (see [`SqliteDb`]).
/// `busy_timeout` is how long a writer waits for another process's lock.
async fn connect_sqlite(
    url: &str,
    max_connections: u32,
    synchronous: SqliteSynchronous,
    busy_timeout: Duration,
) -> Result<Db> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| DbError::sqlx(format!("parsing {url}"), e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(busy_timeout);
    // The writer first: it creates the file and sets WAL mode, and its one
    // connection stays open.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .map_err(|e| DbError::sqlx(format!("opening {url}"), e))?;
    // Only a database whose commits wait for stable storage has commits
    // that may skip the wait.
    let commits = (matches!(
        synchronous,
        SqliteSynchronous::Full | SqliteSynchronous::Extra
    ) && !options.get_filename().as_os_str().is_empty())
    .then(|| Arc::new(CommitSync::new(options.get_filename().to_path_buf())));
    let readers = SqlitePoolOptions::new()
        .max_connections(max_connections.max(2) - 1)
        .connect_with(options.pragma("query_only", "ON"))
        .await
        .map_err(|e| DbError::sqlx(format!("opening {url} for reading"), e))?;
    Ok(Db::Sqlite(SqliteDb {
        writer,
        readers,
        commits,
    }))
}

/// Whether `sql` is a plain query (`SELECT …`), which cannot write.
fn is_select(sql: &str) -> bool {
    let head = sql.trim_start();
    head.len() >= 6 && head[..6].eq_ignore_ascii_case("select")
}

/// A typed, nullable bind argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    I64(Option<i64>),
    I32(Option<i32>),
    I16(Option<i16>),
    Text(Option<String>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
    Ts(Option<DateTime<Utc>>),
}

/// `From` conversions into [`Arg`], one a line: `type => |v| arg`.
macro_rules! arg_from {
    ($($ty:ty => |$v:ident| $arg:expr),+ $(,)?) => {
        $(impl From<$ty> for Arg {
            fn from($v: $ty) -> Arg {
                $arg
            }
        })+
    };
}

arg_from! {
    i64 => |v| Arg::I64(Some(v)),
    i32 => |v| Arg::I32(Some(v)),
    i16 => |v| Arg::I16(Some(v)),
    bool => |v| Arg::Bool(Some(v)),
    &str => |v| Arg::Text(Some(v.to_string())),
    String => |v| Arg::Text(Some(v)),
    Option<String> => |v| Arg::Text(v),
    Option<i64> => |v| Arg::I64(v),
    DateTime<Utc> => |v| Arg::Ts(Some(v)),
    Option<DateTime<Utc>> => |v| Arg::Ts(v),
    Vec<u8> => |v| Arg::Bytes(Some(v)),
    Option<Vec<u8>> => |v| Arg::Bytes(v),
}

fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `args` (owned [`Arg`]s) to `query` in order; `$ts` says how a
/// timestamp is bound.
macro_rules! bind_args {
    ($query:ident, $args:expr, |$v:ident| $ts:expr) => {{
        for arg in $args {
            $query = match arg {
                Arg::I64(v) => $query.bind(v),
                Arg::I32(v) => $query.bind(v),
                Arg::I16(v) => $query.bind(v),
                Arg::Text(v) => $query.bind(v),
                Arg::Bool(v) => $query.bind(v),
                Arg::Bytes(v) => $query.bind(v),
                Arg::Ts($v) => $query.bind($ts),
            };
        }
        $query
    }};
}

/// A SQLite statement with its arguments bound: numbered parameters as
/// positional ones ([`positional`]), timestamps as microseconds since the
/// epoch.
fn sqlite_query(sql: &str, args: &[Arg]) -> SqliteQuery<'static> {
    // A rewritten statement's arguments are already owned copies.
    let (sql, args) =
        positional::rewrite(sql, args).unwrap_or_else(|| (sql.to_owned(), args.to_vec()));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    bind_args!(query, args, |v| v.map(micros))
}

fn bind_pg<'q>(mut query: PgQuery<'q>, args: &[Arg]) -> PgQuery<'q> {
    bind_args!(query, args.iter().cloned(), |v| v)
}

enum Executor<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Executor<'_> {
    async fn fetch_all(self, sql: &str, args: &[Arg]) -> Result<Vec<DbRow>> {
        match self {
            Executor::Sqlite(c) => sqlite_query(sql, args)
                .fetch_all(&mut *c)
                .await
                .map(|rows| rows.into_iter().map(DbRow::Sqlite).collect()),
            Executor::Postgres(c) => {
                bind_pg(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), args)
                    .fetch_all(&mut *c)
                    .await
                    .map(|rows| rows.into_iter().map(DbRow::Postgres).collect())
            }
        }
        .map_err(|e| DbError::sqlx(short(sql), e))
    }

    async fn execute(self, sql: &str, args: &[Arg]) -> Result<u64> {
        match self {
            Executor::Sqlite(c) => sqlite_query(sql, args)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
            Executor::Postgres(c) => {
                bind_pg(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), args)
                    .execute(&mut *c)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
        .map_err(|e| DbError::sqlx(short(sql), e))
    }
}

/// The first line of a statement, for error messages.
fn short(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or("").trim();
    line.chars().take(120).collect()
}

impl Db {
    /// Connects to `sqlite:PATH` (created if missing; WAL, foreign keys on) or
    /// `postgres://…`.
    pub async fn connect(url: &str) -> Result<Db> {
        Self::connect_with(url, 16).await
    }

    /// Like [`Db::connect`], with at most `max_connections` pooled connections.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Db> {
        Self::open(url, max_connections, SqliteSynchronous::Normal).await
    }

    /// Like [`Db::connect_with`], but a SQLite commit is on stable storage
    /// when it returns (`synchronous = FULL`: the WAL is synced at each
    /// commit). For a database whose commits are acknowledged to writers
    /// (the primary's ingest; `docs/decisions.md`, durability). With the
    /// default `NORMAL`, the last commits before a power cut may roll back.
    /// PostgreSQL's commits are durable unless its server is told otherwise.
    pub async fn connect_durable(url: &str, max_connections: u32) -> Result<Db> {
        Self::open(url, max_connections, SqliteSynchronous::Full).await
    }

    async fn open(url: &str, max_connections: u32, synchronous: SqliteSynchronous) -> Result<Db> {
        if url.starts_with("sqlite:") {
            connect_sqlite(url, max_connections, synchronous, Duration::from_secs(30)).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| DbError::sqlx("parsing the PostgreSQL URL", e))?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(|e| DbError::sqlx("connecting to PostgreSQL", e))?;
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::BadUrl(url.to_string()))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// A pooled connection, for the one statement `sql`.
    async fn acquire(&self, sql: &str) -> Result<PooledConnection> {
        match self {
            Db::Sqlite(db) => db.acquire_for(sql).await.map(PooledConnection::Sqlite),
            Db::Postgres(pool) => pool
                .acquire()
                .await
                .map(PooledConnection::Postgres)
                .map_err(|e| DbError::sqlx("acquiring", e)),
        }
    }

    /// Runs a statement; returns the number of rows it changed.
    pub async fn execute(&self, sql: &str, args: &[Arg]) -> Result<u64> {
        self.acquire(sql).await?.executor().execute(sql, args).await
    }

    /// Runs a query; returns every row.
    pub async fn fetch_all(&self, sql: &str, args: &[Arg]) -> Result<Vec<DbRow>> {
        self.acquire(sql)
            .await?
            .executor()
            .fetch_all(sql, args)
            .await
    }

    /// Runs a query; returns its rows, each decoded by `decode` (the first
    /// error wins).
    pub async fn fetch_map<T, F>(&self, sql: &str, args: &[Arg], decode: F) -> Result<Vec<T>>
    where
        F: FnMut(&DbRow) -> Result<T>,
    {
        decode_all(self.fetch_all(sql, args).await?, decode)
    }

    /// Runs a query; returns its first row, if any.
    pub async fn fetch_optional(&self, sql: &str, args: &[Arg]) -> Result<Option<DbRow>> {
        Ok(self.fetch_all(sql, args).await?.into_iter().next())
    }

    /// Runs a query that must return a row.
    pub async fn fetch_one(&self, sql: &str, args: &[Arg]) -> Result<DbRow> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or_else(|| DbError::sqlx(short(sql), sqlx::Error::RowNotFound))
    }

    /// Runs several statements separated by `;` (DDL), without arguments.
    pub async fn execute_script(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(db) => {
                let mut conn = db.acquire_writer(Mode::Synced).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
            }
            Db::Postgres(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .map(|_| ()),
        }
        .map_err(|e| DbError::sqlx(short(sql), e))
    }

    /// Starts a transaction. On SQLite it holds the one writer connection
    /// and takes the write lock up front (`BEGIN IMMEDIATE`): while it is
    /// open, every other writer of this [`Db`] waits for it, so code
    /// holding a transaction must not wait for another write of the same
    /// database.
    pub async fn begin(&self) -> Result<Tx> {
        match self {
            Db::Sqlite(db) => db.begin(Mode::Synced).await,
            Db::Postgres(pool) => pool
                .begin()
                .await
                .map(Tx::Postgres)
                .map_err(|e| DbError::sqlx("BEGIN", e)),
        }
    }

    /// Like [`Db::begin`], for work that can be done again: on a durable
    /// SQLite database ([`Db::connect_durable`]) its commit does not wait
    /// for stable storage (`synchronous = NORMAL` for this transaction), so
    /// a power cut may roll it back, never a commit after it. The primary's
    /// verification claims and results (a lost one means a blob is hashed
    /// again). A reader that hands what such a commit wrote to another
    /// site calls [`Db::sync_commits_seen`] first. On PostgreSQL and on a
    /// database that is not durable anyway, the same as [`Db::begin`].
    pub async fn begin_unsynced(&self) -> Result<Tx> {
        match self {
            Db::Sqlite(db) => db.begin(Mode::Unsynced).await,
            Db::Postgres(_) => self.begin().await,
        }
    }

    /// Makes every commit that a read finished before this call could see
    /// durable: after an unsynced commit ([`Db::begin_unsynced`]), one
    /// `fdatasync` of SQLite's write-ahead log; otherwise nothing. For
    /// readers whose answer another site keeps (the event feed). Returns
    /// whether it synced.
    pub async fn sync_commits_seen(&self) -> Result<bool> {
        let Db::Sqlite(db) = self else {
            return Ok(false);
        };
        let Some(commits) = &db.commits else {
            return Ok(false);
        };
        // A statement on the writer runs after any commit still queued on it.
        let barrier = async {
            let mut conn = db.writer.acquire().await?;
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map(|_| ())
        };
        commits
            .sync(barrier)
            .await
            .map_err(|e| DbError::Invalid(format!("syncing the SQLite write-ahead log: {e}")))
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(db) => {
                db.readers.close().await;
                db.writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// SQL for "now" bound as an argument: both backends compare against
    /// the host's clock, never the database's.
    pub fn now() -> DateTime<Utc> {
        Utc::now()
    }
}

/// A connection taken from a pool, returned when dropped.
enum PooledConnection {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl PooledConnection {
    fn executor(&mut self) -> Executor<'_> {
        match self {
            PooledConnection::Sqlite(c) => Executor::Sqlite(c),
            PooledConnection::Postgres(c) => Executor::Postgres(c),
        }
    }
}

/// An open transaction; dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    /// With the guard of an unsynced transaction ([`Db::begin_unsynced`]).
    Sqlite(
        sqlx::Transaction<'static, sqlx::Sqlite>,
        Option<UnsyncedGuard>,
    ),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(..) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    fn executor(&mut self) -> Executor<'_> {
        match self {
            Tx::Sqlite(tx, _) => Executor::Sqlite(&mut *tx),
            Tx::Postgres(tx) => Executor::Postgres(&mut *tx),
        }
    }

    pub async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64> {
        self.executor().execute(sql, args).await
    }

    pub async fn fetch_all(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<DbRow>> {
        self.executor().fetch_all(sql, args).await
    }

    /// [`Db::fetch_map`] in this transaction.
    pub async fn fetch_map<T, F>(&mut self, sql: &str, args: &[Arg], f: F) -> Result<Vec<T>>
    where
        F: FnMut(&DbRow) -> Result<T>,
    {
        decode_all(self.fetch_all(sql, args).await?, f)
    }

    pub async fn fetch_optional(&mut self, sql: &str, args: &[Arg]) -> Result<Option<DbRow>> {
        Ok(self.fetch_all(sql, args).await?.into_iter().next())
    }

    pub async fn fetch_one(&mut self, sql: &str, args: &[Arg]) -> Result<DbRow> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or_else(|| DbError::sqlx(short(sql), sqlx::Error::RowNotFound))
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx, mut guard) => {
                if let Some(guard) = &mut guard {
                    guard.commit_sent();
                }
                let result = tx.commit().await;
                if let Some(guard) = &mut guard {
                    guard.commit_answered();
                }
                result
            }
            Tx::Postgres(tx) => tx.commit().await,
        }
        .map_err(|e| DbError::sqlx("COMMIT", e))
    }

    /// Rolls back now. (A dropped transaction is rolled back only when its
    /// connection is next used, and on SQLite holds the write lock until
    /// then.)
    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx, _) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        }
        .map_err(|e| DbError::sqlx("ROLLBACK", e))
    }
}

/// Every row decoded by `decode` (the first error wins).
fn decode_all<T>(rows: Vec<DbRow>, decode: impl FnMut(&DbRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(decode).collect()
}

/// One result row, read by column name with the type the caller expects.
pub enum DbRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

macro_rules! getter {
    ($name:ident, $ty:ty) => {
        pub fn $name(&self, column: &str) -> Result<$ty> {
            match self {
                DbRow::Sqlite(r) => r.try_get::<$ty, _>(column),
                DbRow::Postgres(r) => r.try_get::<$ty, _>(column),
            }
            .map_err(|e| DbError::decode(column, e))
        }
    };
}

impl DbRow {
    getter!(i64, i64);
    getter!(opt_i64, Option<i64>);
    getter!(text, String);
    getter!(opt_text, Option<String>);
    getter!(bool, bool);
    getter!(opt_bytes, Option<Vec<u8>>);

    /// A `smallint` column (state machines).
    pub fn i16(&self, column: &str) -> Result<i16> {
        match self {
            DbRow::Sqlite(r) => r.try_get::<i64, _>(column).map(|v| v as i16),
            DbRow::Postgres(r) => r.try_get::<i16, _>(column),
        }
        .map_err(|e| DbError::decode(column, e))
    }

    /// An `integer` column.
    pub fn i32(&self, column: &str) -> Result<i32> {
        match self {
            DbRow::Sqlite(r) => r.try_get::<i64, _>(column).map(|v| v as i32),
            DbRow::Postgres(r) => r.try_get::<i32, _>(column),
        }
        .map_err(|e| DbError::decode(column, e))
    }

    /// Any integer column (`smallint`, `integer`, `bigint`) as `i64`.
    pub fn int(&self, column: &str) -> Result<Option<i64>> {
        match self {
            DbRow::Sqlite(r) => r.try_get::<Option<i64>, _>(column),
            DbRow::Postgres(r) => r
                .try_get::<Option<i64>, _>(column)
                .or_else(|_| {
                    r.try_get::<Option<i32>, _>(column)
                        .map(|v| v.map(i64::from))
                })
                .or_else(|_| {
                    r.try_get::<Option<i16>, _>(column)
                        .map(|v| v.map(i64::from))
                }),
        }
        .map_err(|e| DbError::decode(column, e))
    }

    pub fn opt_ts(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        match self {
            DbRow::Sqlite(r) => r
                .try_get::<Option<i64>, _>(column)
                .map(|v| v.map(from_micros)),
            DbRow::Postgres(r) => r.try_get::<Option<DateTime<Utc>>, _>(column),
        }
        .map_err(|e| DbError::decode(column, e))
    }

    pub fn ts(&self, column: &str) -> Result<DateTime<Utc>> {
        self.opt_ts(column)?
            .ok_or_else(|| DbError::decode(column, "unexpected NULL"))
    }

    /// A column of a type's model table, as the plugin value of `column_type`.
    pub fn value(
        &self,
        column: &str,
        column_type: crate::plugin::ColumnType,
    ) -> Result<crate::plugin::Value> {
        use crate::plugin::{ColumnType as T, Value};
        Ok(match column_type {
            T::Bigint | T::Integer | T::Smallint => {
                self.int(column)?.map_or(Value::Null, Value::Int)
            }
            T::Text => self.opt_text(column)?.map_or(Value::Null, Value::Text),
            T::Boolean => self.opt_bool(column)?.map_or(Value::Null, Value::Boolean),
            T::Timestamp => self
                .opt_ts(column)?
                .map_or(Value::Null, |t| Value::Timestamp(t.timestamp_micros())),
            T::Binary => self.opt_bytes(column)?.map_or(Value::Null, Value::Binary),
        })
    }

    pub fn opt_bool(&self, column: &str) -> Result<Option<bool>> {
        match self {
            DbRow::Sqlite(r) => r.try_get::<Option<bool>, _>(column),
            DbRow::Postgres(r) => r.try_get::<Option<bool>, _>(column),
        }
        .map_err(|e| DbError::decode(column, e))
    }
}

/// A plugin value as a bind argument for a column of `column_type`.
pub fn value_arg(
    value: &crate::plugin::Value,
    column_type: crate::plugin::ColumnType,
) -> Result<Arg> {
    use crate::plugin::{ColumnType as T, Value};
    let mismatch = || {
        DbError::Invalid(format!(
            "{} value for a {column_type:?} column",
            value.kind()
        ))
    };
    Ok(match (column_type, value) {
        (T::Bigint, Value::Int(v)) => Arg::I64(Some(*v)),
        (T::Integer, Value::Int(v)) => Arg::I32(Some(i32::try_from(*v).map_err(|_| mismatch())?)),
        (T::Smallint, Value::Int(v)) => Arg::I16(Some(i16::try_from(*v).map_err(|_| mismatch())?)),
        (T::Text, Value::Text(v)) => Arg::Text(Some(v.clone())),
        (T::Boolean, Value::Boolean(v)) => Arg::Bool(Some(*v)),
        (T::Timestamp, Value::Timestamp(v)) => Arg::Ts(Some(from_micros(*v))),
        (T::Binary, Value::Binary(v)) => Arg::Bytes(Some(v.clone())),
        (T::Bigint, Value::Null) => Arg::I64(None),
        (T::Integer, Value::Null) => Arg::I32(None),
        (T::Smallint, Value::Null) => Arg::I16(None),
        (T::Text, Value::Null) => Arg::Text(None),
        (T::Boolean, Value::Null) => Arg::Bool(None),
        (T::Timestamp, Value::Null) => Arg::Ts(None),
        (T::Binary, Value::Null) => Arg::Bytes(None),
        _ => return Err(mismatch()),
    })
}

/// `count` placeholders from `$first`: `$1, $2, $3`, the list of an `IN (…)`.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` tuples of `width` placeholders from `$first`, for a multi-row
/// `VALUES`: `value_rows(1, 2, 2)` is `($1, $2), ($3, $4)`.
pub fn value_rows(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(first + row * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A common table expression of bound rows, for one multi-row statement
/// with per-row values (`WITH … UPDATE t SET … FROM name WHERE …`, on
/// both backends): `name(a, b) AS (VALUES ($first, …), …)`.
pub fn values_cte(name: &str, columns: &[&str], first: usize, rows: usize) -> String {
    format!(
        "{name}({}) AS (VALUES {})",
        columns.join(", "),
        value_rows(first, rows, columns.len())
    )
}

/// Most rows in one multi-row statement of `width` bound values each
/// (well under SQLite's 32,766 and PostgreSQL's 65,535 bind limits).
pub fn rows_per_statement(width: usize) -> usize {
    (30_000 / width.max(1)).min(1000)
}

/// A checksum as stored (`bytea`): GitLab's `sha_attribute` packs the hex
/// string into bytes (SHA-256 hex and the padded object-storage size are
/// both hex). Text that is not hex (never produced here) is kept verbatim.
pub fn stored_checksum(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap_or_else(|_| hex_text.as_bytes().to_vec())
}

/// Quotes a name for SQL: a [`QuotedIdent`], which only the identity
/// check's rule makes. The names quoted here come from checked identities
/// (types') or the host's own tables, so a refusal is a bug in the host and
/// panics with the name, in release builds too: it never reaches SQL.
pub fn ident(name: &str) -> QuotedIdent {
    QuotedIdent::new(name).unwrap_or_else(|error| panic!("{error} (a name reached SQL unchecked)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_lists_and_value_rows() {
        assert_eq!(placeholders(1, 3), "$1, $2, $3");
        assert_eq!(placeholders(4, 1), "$4");
        assert_eq!(placeholders(2, 0), "");
        assert_eq!(value_rows(1, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(value_rows(3, 1, 3), "($3, $4, $5)");
        assert_eq!(
            values_cte("v", &["a", "b"], 2, 2),
            "v(a, b) AS (VALUES ($2, $3), ($4, $5))"
        );
    }

    /// Writers of one SQLite database never collide: with the busy handler
    /// off (a collision would fail at once with "database is locked"),
    /// many concurrent transactions, single writes and `UPDATE … RETURNING`
    /// all succeed beside concurrent reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_writers_queue_on_one_connection_and_readers_run_beside() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("w.db").display());
        let db = connect_sqlite(&url, 16, SqliteSynchronous::Normal, Duration::ZERO)
            .await
            .unwrap();
        db.execute_script("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64_i64 {
            let db = db.clone();
            tasks.spawn(async move {
                let mut tx = db.begin().await?;
                tx.execute("INSERT INTO t (id, n) VALUES ($1, 0)", &[i.into()])
                    .await?;
                tx.commit().await?;
                db.execute("UPDATE t SET n = n + 1 WHERE id = $1", &[i.into()])
                    .await?;
                let back = db
                    .fetch_one(
                        "UPDATE t SET n = n + 1 WHERE id = $1 RETURNING n",
                        &[i.into()],
                    )
                    .await?;
                assert_eq!(back.i64("n")?, 2);
                db.fetch_all("SELECT COUNT(*) AS c FROM t", &[]).await?;
                Ok::<_, DbError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let total = db
            .fetch_one("SELECT SUM(n) AS s FROM t", &[])
            .await
            .unwrap();
        assert_eq!(total.int("s").unwrap(), Some(128));
        // A write sent to a reader fails at once rather than waiting.
        let Db::Sqlite(sqlite) = &db else {
            unreachable!()
        };
        let mut reader = sqlite.readers.acquire().await.unwrap();
        let refused = Executor::Sqlite(&mut reader)
            .execute("INSERT INTO t (id, n) VALUES (1000, 0)", &[])
            .await;
        assert!(refused.is_err());
    }

    #[test]
    fn only_plain_selects_go_to_the_readers() {
        for (sql, select) in [
            ("SELECT 1", true),
            ("  select id FROM t", true),
            ("UPDATE t SET n = 1 RETURNING n", false),
            ("WITH x AS (SELECT 1) UPDATE t SET n = 1", false),
            ("INSERT INTO t VALUES (1) RETURNING id", false),
            ("sel", false),
        ] {
            assert_eq!(is_select(sql), select, "{sql}");
        }
    }

    #[test]
    fn checksums_are_stored_as_the_bytes_of_their_hex() {
        assert_eq!(stored_checksum("00ff"), vec![0, 255]);
        assert_eq!(stored_checksum("not hex"), b"not hex".to_vec());
    }

    /// The writer's `synchronous` setting as a statement in `tx` sees it.
    async fn synchronous(tx: &mut Tx) -> i64 {
        tx.fetch_one("PRAGMA synchronous", &[])
            .await
            .unwrap()
            .i64("synchronous")
            .unwrap()
    }

    /// A durable SQLite database in `dir` with a table `t (id)`.
    async fn durable_db(dir: &std::path::Path) -> Db {
        let url = format!("sqlite:{}", dir.join("d.db").display());
        let db = Db::connect_durable(&url, 4).await.unwrap();
        db.execute_script("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        db
    }

    /// On a durable database an unsynced transaction commits with
    /// `synchronous = NORMAL` (1), and every other write after it is back
    /// to `FULL` (2): a transaction, a single statement, a script, also
    /// after an unsynced transaction dropped unfinished. A database that
    /// is not durable keeps its own `NORMAL` throughout.
    #[tokio::test]
    async fn unsynced_commits_leave_every_other_write_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = durable_db(dir.path()).await;
        let mut tx = db.begin().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 2, "a durable database syncs");
        tx.commit().await.unwrap();

        let mut tx = db.begin_unsynced().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 1, "an unsynced commit");
        tx.execute("INSERT INTO t (id) VALUES (1)", &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 2, "the next transaction syncs");
        tx.commit().await.unwrap();

        drop(db.begin_unsynced().await.unwrap());
        let back = db.fetch_one("PRAGMA synchronous", &[]).await.unwrap();
        assert_eq!(back.i64("synchronous").unwrap(), 2, "a single write syncs");
        let mut tx = db.begin_unsynced().await.unwrap();
        tx.execute("INSERT INTO t (id) VALUES (2)", &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        db.execute_script("CREATE TABLE u (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 2, "after a script");
        tx.rollback().await.unwrap();

        let url = format!("sqlite:{}", dir.path().join("n.db").display());
        let normal = Db::connect_with(&url, 4).await.unwrap();
        let mut tx = normal.begin_unsynced().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 1);
        tx.commit().await.unwrap();
        let mut tx = normal.begin().await.unwrap();
        assert_eq!(synchronous(&mut tx).await, 1, "NORMAL is its own setting");
        tx.commit().await.unwrap();
    }

    /// What an unsynced commit wrote is synced once, by the first reader
    /// that asks after it; a reader with nothing unsynced to cover syncs
    /// nothing; synced commits never need it.
    #[tokio::test]
    async fn readers_sync_the_log_once_after_unsynced_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = durable_db(dir.path()).await;
        db.execute("INSERT INTO t (id) VALUES (1)", &[])
            .await
            .unwrap();
        assert!(
            !db.sync_commits_seen().await.unwrap(),
            "a synced commit needs no sync"
        );
        let mut tx = db.begin_unsynced().await.unwrap();
        tx.execute("INSERT INTO t (id) VALUES (2)", &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(
            db.sync_commits_seen().await.unwrap(),
            "one sync for the unsynced commit"
        );
        assert!(
            !db.sync_commits_seen().await.unwrap(),
            "nothing new to sync"
        );
    }
}
