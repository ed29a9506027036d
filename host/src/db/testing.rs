//! Fresh databases for tests, on every backend that is available.
//!
//! ```ignore
//! for (backend, db) in geohost::db::testing::test_databases().await {
//!     geohost::db::migrate::main(&db).await.unwrap();
//!     // … assertions, with `backend` in their messages
//! }
//! ```
//!
//! SQLite is always there: a new file in a new temporary folder. PostgreSQL
//! is used when `GEOHOST_TEST_POSTGRES_URL` holds an admin URL (for example
//! `postgres://postgres@127.0.0.1:54329/postgres`, as `cargo xtask test` sets
//! it): each call creates a new database `geohost_test_<random>` on that
//! server. Without the variable, the tests run on SQLite only, with a loud
//! note; on CI (`CI` set) that is a failure instead, so a misconfigured CI
//! cannot skip PostgreSQL unnoticed.
//!
//! Nothing is dropped when a test ends (the returned [`Db`] has nowhere to
//! hold a guard): PostgreSQL test servers are thrown away whole, and each
//! SQLite folder is named after the test process and removed by a later
//! test process once that process has exited.
//!
//! Hidden from the docs: tests only. It is an ordinary module (not
//! `cfg(test)`) so the integration tests under `tests/` can use it, and it
//! needs nothing outside the host's normal dependencies.

use super::{Arg, Db};
use std::path::PathBuf;
use std::sync::Once;

/// The variable holding the PostgreSQL admin URL.
pub const POSTGRES_URL_VAR: &str = "GEOHOST_TEST_POSTGRES_URL";

/// Prefix of the temporary folders holding the SQLite test databases.
const SQLITE_DIR_PREFIX: &str = "geohost-test-";

/// Pool size of a test database: enough for the concurrency tests, small
/// enough for parallel tests to stay under PostgreSQL's 100 connections.
const TEST_POOL_SIZE: u32 = 8;

/// A fresh database per available backend: `("sqlite", …)` always, then
/// `("postgres", …)` when `GEOHOST_TEST_POSTGRES_URL` is set. No migration is
/// applied.
///
/// # Panics
///
/// If a database cannot be created, or if `GEOHOST_TEST_POSTGRES_URL` is
/// unset while `CI` is set.
pub async fn test_databases() -> Vec<(&'static str, Db)> {
    let sqlite = fresh_sqlite_url();
    let mut databases = vec![("sqlite", connect(&sqlite).await)];
    if let Some(url) = fresh_postgres_url().await {
        databases.push(("postgres", connect(&url).await));
    }
    databases
}

/// The URL of a new, empty SQLite database file (`sqlite:/tmp/…/geohost.sqlite`).
pub fn fresh_sqlite_url() -> String {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(remove_stale_sqlite_dirs);
    let dir = std::env::temp_dir().join(format!(
        "{SQLITE_DIR_PREFIX}{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    format!("sqlite:{}", dir.join("geohost.sqlite").display())
}

/// The URL of a new, empty PostgreSQL database on the server of
/// `GEOHOST_TEST_POSTGRES_URL`, or `None` when the variable is unset.
///
/// # Panics
///
/// If the server refuses to create the database, or if the variable is unset
/// while `CI` is set.
pub async fn fresh_postgres_url() -> Option<String> {
    let admin = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            postgres_missing();
            return None;
        }
    };
    let name = format!("geohost_test_{}", uuid::Uuid::new_v4().simple());
    let server = Db::connect_with(&admin, 1)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}: cannot connect to {admin}: {e}"));
    server
        .execute_script(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}: cannot create database {name}: {e}"));
    server.close().await;
    Some(with_database(&admin, &name))
}

async fn connect(url: &str) -> Db {
    Db::connect_with(url, TEST_POOL_SIZE)
        .await
        .unwrap_or_else(|e| panic!("opening test database {url}: {e}"))
}

/// Fails on CI, otherwise says (once per process) that PostgreSQL is skipped.
fn postgres_missing() {
    let ci = std::env::var("CI")
        .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
    if ci {
        panic!(
            "{POSTGRES_URL_VAR} is not set, but CI is: the PostgreSQL half of the database tests \
             would be skipped. Run `cargo xtask test`, or set {POSTGRES_URL_VAR} to an admin URL."
        );
    }
    static NOTE: Once = Once::new();
    NOTE.call_once(|| {
        // Straight to the process's stderr: the test harness captures `eprintln!`.
        let note = format!(
            "\n\
             ************************************************************************\n\
             NOTE: {POSTGRES_URL_VAR} is not set: database tests run on SQLite ONLY.\n\
             PostgreSQL is NOT tested. Run `cargo xtask test`, or start a server and\n\
             set {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:PORT/postgres\n\
             ************************************************************************\n"
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    });
}

/// `url` with its database name replaced by `database` (query kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Removes the SQLite folders of test processes that have exited. Linux
/// only (it asks `/proc` whether a process is alive); elsewhere they stay in
/// the temporary folder.
fn remove_stale_sqlite_dirs() {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SQLITE_DIR_PREFIX))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `UPDATE {table} SET {change}` with `args` (a test arranging its
/// rows); a failure fails the test, naming the statement. Returns the
/// number of rows changed.
pub async fn update(db: &Db, table: impl std::fmt::Display, change: &str, args: &[Arg]) -> u64 {
    let sql = format!("UPDATE {table} SET {change}");
    db.execute(&sql, args)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/t",
            ),
            (
                "postgres://u:p@h/postgres?sslmode=disable",
                "postgres://u:p@h/t?sslmode=disable",
            ),
            ("postgresql://h:1", "postgresql://h:1/t"),
            (
                "postgres://h?application_name=x",
                "postgres://h/t?application_name=x",
            ),
        ];
        for (admin, expected) in cases {
            assert_eq!(with_database(admin, "t"), expected);
        }
    }

    #[tokio::test]
    async fn test_databases_are_fresh_and_separate() {
        let first = test_databases().await;
        let second = test_databases().await;
        assert_eq!(first[0].0, "sqlite");
        for ((backend, a), (_, b)) in first.iter().zip(&second) {
            a.execute_script("CREATE TABLE only_here (x INTEGER)")
                .await
                .unwrap();
            let sql = match a.backend() {
                super::super::Backend::Postgres => {
                    "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'only_here'"
                }
                super::super::Backend::Sqlite => {
                    "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'only_here'"
                }
            };
            assert_eq!(
                b.fetch_one(sql, &[]).await.unwrap().i64("n").unwrap(),
                0,
                "{backend}"
            );
        }
    }
}
