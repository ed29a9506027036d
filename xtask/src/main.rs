//! Geohost's build tasks, run as `cargo xtask <task>`.
//!
//! - `plugins [--check] [-p NAME]...`: build every plugin under `plugins/`
//!   (or those named) for `wasm32-unknown-unknown`, and the Python types under
//!   `plugins/python/` with componentize-py; write the shipped types to
//!   `plugins/dist/` (others to `plugins/target/components/`), each carrying
//!   its `vectors.json`. `--check` fails if `plugins/dist/` is not what the
//!   current source builds. `--help` says more.
//! - `test`: install and start what the tests need (the wasm toolchain,
//!   PostgreSQL, an S3 server (moto, in `target/moto-venv`)), build the plugins, and run the whole test suite on SQLite
//!   and PostgreSQL.
//! - `bench`: install the benchmarks' peers (rclone) and run every
//!   benchmark in release mode, printing their tables (see BENCHMARKS.md).
//!
//! The wasm toolchain: a machine with rustup's `wasm32-unknown-unknown`
//! target uses it. Where rustup cannot download it, Debian's `rustc-web`
//! compiler builds the standard library from source (`-Zbuild-std`) and
//! rustup's own `rust-lld` links (see docs/building-plugins.md).

mod bench;
mod bench_summary;
mod moto;
mod plugins;
mod postgres;
mod python;
mod test;
mod venv;
mod wasi_stub;

use anyhow::{Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    match args.first().map(String::as_str) {
        Some("plugins") => match plugins::Options::parse(&args[1..])? {
            Some(options) => plugins::build(&root, &options),
            None => {
                print!("{}", plugins::USAGE);
                Ok(())
            }
        },
        Some("test") => test::run(&root, &args[1..]),
        Some("bench") => bench::run(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 plugins [--check] [-p NAME]…  build the plugin components (plugins --help)\n  \
                 test [ARGS…]                 install services, build plugins, run all tests\n  \
                 bench [ARGS…]                install peers (rclone), run all benchmarks (release)\n"
            );
            bail!("unknown task {:?}", args.first());
        }
    }
}

/// The repository root (the parent of `xtask/`). `cargo run` gives the
/// manifest folder at run time; the one compiled in is only the fallback,
/// since a binary built from another checkout into the same target folder
/// (the guide test's copy) is fresh for cargo here too and would name that
/// checkout.
fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// Runs a command, failing with its command line if it fails.
fn run(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd.status()?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

/// Whether we run as root (and may install Debian packages).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages that are missing (as root), or explains how to.
fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !std::process::Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(std::process::Command::new("apt-get").args(["update", "-qq"]))?;
    run(std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
