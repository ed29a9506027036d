//! `cargo xtask test`: everything the test suite needs, then the suite.

use crate::postgres::Postgres;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    // Plugins first: the host embeds plugins/dist, and the tests load the
    // fixtures. `--check` proves plugins/dist is what the source builds.
    crate::plugins::build_all(root, true)?;
    // `promtool check metrics` (Debian ships it in `prometheus`) validates
    // the `/metrics` page; without it the tests check it with their own parser.
    if let Err(error) = crate::ensure_debian_packages(&["prometheus"]) {
        eprintln!("xtask: {error:#}; /metrics is checked without promtool");
    }
    let postgres = Postgres::start()?;
    eprintln!("xtask: PostgreSQL at {}", postgres.url);
    let moto = crate::moto::Moto::start(root)?;
    eprintln!("xtask: S3 (moto) at {}", moto.endpoint);

    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = Command::new("cargo");
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(extra)
        .current_dir(root)
        .env("GEOHOST_TEST_POSTGRES_URL", &postgres.url)
        .env("GEOHOST_TEST_S3_ENDPOINT", &moto.endpoint);
    let result = crate::run(&mut cmd);
    if nextest && result.is_ok() {
        // Doc tests are not run by nextest.
        crate::run(
            Command::new("cargo")
                .args(["test", "--workspace", "--doc"])
                .current_dir(root)
                .env("GEOHOST_TEST_S3_ENDPOINT", &moto.endpoint),
        )?;
    }
    drop(moto);
    drop(postgres);
    result
}
