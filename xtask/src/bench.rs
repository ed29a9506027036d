//! `cargo xtask bench`: the benchmarks with their peers, in one command.
//!
//! Installs the peers that are missing (Debian's `rclone`; `sha256sum` and
//! `openssl` come with the base system), then runs every benchmark of the
//! `geohost` package in release mode (`cargo bench -p geohost --bench '*'`): the plugin
//! runtime, primary verification beside `sha256sum` and `openssl`, and
//! secondary sync and write → verified lag beside `rclone` and `cp`, the
//! registry backfill of 1,000,000 records and the peak memory of each site
//! as its own process (`sites`), and one secondary run by 1 and 3 worker
//! processes (`scale_out`, on a PostgreSQL server it starts). Each prints
//! its table; nothing is asserted. Then one summary table of every bench's
//! headline figures with the peers' and the ratios (`bench_summary`, also in
//! `target/bench/summary.md`). Extra arguments go to `cargo bench`;
//! `GEOHOST_BENCH_SCALE=0.1` shrinks the data for a quick run and
//! `GEOHOST_BENCH_ONLY=small,large,lag` picks parts of the site benches.

use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    if let Err(error) = crate::ensure_debian_packages(&["rclone"]) {
        // The sync bench runs without its peer and says so.
        eprintln!("xtask: rclone is not available ({error:#}); the sync bench runs without it");
    }
    let machine = machine();
    eprintln!("xtask: machine: {machine}");
    crate::bench_summary::clear(root)?;
    // The scale-out bench runs its workers on a PostgreSQL tracking database.
    let postgres = crate::postgres::Postgres::start()
        .inspect_err(|error| {
            eprintln!("xtask: no PostgreSQL ({error:#}); the scale_out bench is skipped")
        })
        .ok();
    let mut bench = Command::new("cargo");
    bench.args(["bench", "-p", "geohost"]);
    // Every bench target (not the library's unit tests in bench mode),
    // unless the arguments name some (`cargo xtask bench --bench plugin`).
    if !extra
        .iter()
        .any(|a| a == "--bench" || a.starts_with("--bench="))
    {
        bench.args(["--bench", "*"]);
    }
    bench.args(extra).current_dir(root);
    if let Some(postgres) = &postgres {
        bench.env("GEOHOST_TEST_POSTGRES_URL", &postgres.url);
    }
    let result = crate::run(&mut bench);
    drop(postgres);
    result?;
    crate::bench_summary::print(root, &machine)
}

/// `nproc`, the CPU model and the memory, for the record.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / (1u64 << 20) as f64)
        });
    format!("{cores} cores, {model}, {memory} RAM")
}
