//! `cargo xtask test`: everything the test suite needs, then the suite.

use crate::postgres::Postgres;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    // Plugins first: the host embeds plugins/dist, and the tests load the
    // fixtures. `--check` proves plugins/dist is what the source builds.
    crate::plugins::build_all(root, true)?;
    // The guests' unit tests (SDK, shipped types), on this machine.
    crate::plugins::unit_tests(root)?;
    // `promtool check metrics` (Debian ships it in `prometheus`) validates
    // the `/metrics` page; without it the tests check it with their own parser.
    if let Err(error) = crate::ensure_debian_packages(&["prometheus"]) {
        eprintln!("xtask: {error:#}; /metrics is checked without promtool");
    }
    // The admin page's browser test drives Debian's headless Chromium.
    let chromedriver = browser()?;
    let postgres = Postgres::start()?;
    eprintln!("xtask: PostgreSQL at {}", postgres.url);
    let moto = crate::moto::Moto::start(root)?;
    eprintln!("xtask: S3 (moto) at {}", moto.endpoint);
    // GitLab's own clients (python-gitlab, gql), which tests drive against
    // real sites: one venv, pinned versions.
    let clients = crate::venv::with_requirements(
        &root.join("target").join("clients-venv"),
        &root.join("tests").join("clients").join("requirements.txt"),
    )?;

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
        .env("GEOHOST_TEST_S3_ENDPOINT", &moto.endpoint)
        .env("GEOHOST_TEST_PYTHON", &clients);
    if let Some(path) = &chromedriver {
        // Set, it makes a missing browser a test failure rather than a skip.
        cmd.env("GEOHOST_TEST_CHROMEDRIVER", path)
            .env("GEOHOST_TEST_CHROMIUM", "/usr/bin/chromium");
    }
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

/// Installs `chromium` and `chromium-driver` (Debian): chromedriver's path.
/// In CI a failure is an error; elsewhere the browser test skips.
fn browser() -> Result<Option<&'static str>> {
    match crate::ensure_debian_packages(&["chromium", "chromium-driver"]) {
        Ok(()) => Ok(Some("/usr/bin/chromedriver")),
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("xtask: {error:#}; the browser test will be skipped");
            Ok(None)
        }
        Err(error) => Err(error.context("installing the browser for the admin page test")),
    }
}
