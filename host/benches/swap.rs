//! Hot swap: how long a type version takes to go live, and what re-deciding
//! the scope of a million records costs.
//!
//! - **Swap latency, file appears → new version live**: a primary (SQLite,
//!   no workers) with `RECORDS` Helm records watches its plugins folder
//!   every `WATCH_MS`; Helm v1.1.0 (`fixture-helm-v2.wasm`) and v1.0.0 are
//!   renamed in by turns and the catalog is polled until the new version is
//!   live. *Cold*: the compiled artifact was deleted from the compile cache
//!   first; *cached*: it is there. The swap's own time (validation,
//!   including the path check over the live records, until the `Arc` is
//!   replaced) is printed beside, from `swap::activate` called directly.
//! - **Scope re-evaluation**: process CPU time to decide, in batches of
//!   10,000 as the consistency pass does, the scope of 1,000,000 records
//!   (decoded from feed JSON, then `in-scope`) under the new version, and
//!   the whole diff (old and new version, compared). The registry reads and
//!   writes of a real pass are not included.
//!
//! `cargo bench -p geohost --bench swap`; `GEOHOST_BENCH_SCALE=0.1` for a
//! tenth of the records. Figures are printed, never asserted.

#[path = "common/mod.rs"]
mod common;

use geohost::config::Config;
use geohost::swap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELM: &str = "packages_helm_metadata_cache";
const RECORDS: usize = 1_000;
const WATCH_MS: u64 = 10;
const COLD_RUNS: usize = 3;
const CACHED_RUNS: usize = 5;
const SCOPE_RECORDS: usize = 1_000_000;
const BATCH: usize = 10_000;

fn scale() -> f64 {
    std::env::var("GEOHOST_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn components() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/components")
}

/// CPU time of the whole process (user + system).
fn process_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let v2 = std::fs::read(components().join("fixture-helm-v2.wasm"))
        .expect("fixture-helm-v2.wasm; run `cargo xtask plugins` first");
    let v1 = geohost::plugin::builtin::by_stem("helm-metadata-cache")
        .expect("shipped Helm")
        .bytes
        .to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let config = Config::from_toml(&format!(
        "[site]\nname = \"bench\"\nrole = \"primary\"\ndata_dir = {:?}\n[workers]\nenabled = false\n\
         [plugins]\ndir = {:?}\nwatch_interval_ms = {WATCH_MS}\n",
        tmp.path().join("data").display().to_string(),
        plugins.display().to_string()
    ))
    .unwrap();
    let site = geohost::runtime::open(config).await.unwrap();
    let ns = geohost::primary::topology::create_namespace(&site.db, "g", "g", None)
        .await
        .unwrap()
        .id;
    let project = geohost::primary::topology::create_project(&site.db, "p", "p", ns, "default")
        .await
        .unwrap()
        .id;
    let records = ((RECORDS as f64 * scale()) as usize).max(10);
    for i in 0..records {
        let mut columns = serde_json::Map::new();
        columns.insert("project_id".into(), project.into());
        columns.insert("channel".into(), format!("c{i}").into());
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(format!(
            "index {i}"
        )))]);
        geohost::primary::ingest::upsert(&site, HELM, &columns, body)
            .await
            .unwrap();
    }
    let watcher = tokio::spawn(swap::watch::run(site.clone()));
    let cache = site.config.plugin_cache_dir();
    let sha_of = |bytes: &[u8]| site.runtime.load(bytes).unwrap().sha256().to_string();
    let (v1_sha, v2_sha) = (sha_of(&v1), sha_of(&v2));
    let forget = |sha: &str| {
        for entry in std::fs::read_dir(&cache).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with(sha) {
                std::fs::remove_file(path).unwrap();
            }
        }
    };
    let drop_in = |bytes: &[u8], n: usize| {
        let part = plugins.join(format!(".part-{n}"));
        std::fs::write(&part, bytes).unwrap();
        std::fs::rename(&part, plugins.join("helm.wasm")).unwrap();
    };
    let live = |sha: &str| {
        site.installed(HELM)
            .is_some_and(|it| it.plugin.sha256() == sha)
    };
    let mut n = 0;
    let mut file_cold = Vec::new();
    let mut file_cached = Vec::new();
    for run in 0..COLD_RUNS + CACHED_RUNS {
        let cold = run < COLD_RUNS;
        if cold {
            forget(&v2_sha);
        }
        n += 1;
        let started = Instant::now();
        drop_in(&v2, n);
        while !live(&v2_sha) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = started.elapsed();
        if cold {
            file_cold.push(took)
        } else {
            file_cached.push(took)
        }
        n += 1;
        drop_in(&v1, n);
        while !live(&v1_sha) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    site.shutdown.cancel();
    let _ = watcher.await;

    // The swap alone (API path), cold and cached.
    let mut direct_cold = Vec::new();
    let mut direct_cached = Vec::new();
    for run in 0..COLD_RUNS + CACHED_RUNS {
        let cold = run < COLD_RUNS;
        if cold {
            forget(&v2_sha);
        }
        let request = || swap::Request {
            expect_name: Some(HELM.into()),
            source: "bench".into(),
        };
        let report = swap::activate(&site, v2.clone(), request()).await.unwrap();
        if cold {
            direct_cold.push(report.swap_time)
        } else {
            direct_cached.push(report.swap_time)
        }
        swap::activate(&site, v1.clone(), request()).await.unwrap();
    }

    // Scope re-evaluation over a million records.
    let scope_records = ((SCOPE_RECORDS as f64 * scale()) as usize).max(BATCH);
    let (scope, feed) = common::scope_world(scope_records);
    let old = site.installed(HELM).unwrap();
    let new = Arc::new(geohost::catalog::InstalledType::new(
        site.runtime.load(&v2).unwrap(),
    ));
    let (cpu, wall) = (process_cpu(), Instant::now());
    let mut kept = 0usize;
    for chunk in feed.chunks(BATCH) {
        let decisions = new.in_scope(&scope, chunk).await.unwrap();
        kept += decisions.iter().filter(|d| matches!(d, Ok(true))).count();
    }
    let (eval_cpu, eval_wall) = (process_cpu() - cpu, wall.elapsed());
    let (cpu, wall) = (process_cpu(), Instant::now());
    let (mut enter, mut leave) = (0, 0);
    for chunk in feed.chunks(BATCH) {
        let (e, l) = swap::effects::scope_changes(&old, &new, &scope, chunk)
            .await
            .unwrap();
        enter += e.len();
        leave += l.len();
    }
    let (diff_cpu, diff_wall) = (process_cpu() - cpu, wall.elapsed());

    println!(
        "\nHot swap (cargo bench -p geohost --bench swap), scale {}",
        scale()
    );
    println!("| measure | cold compile | cached compile |");
    println!("|---|--:|--:|");
    println!(
        "| file appears → new version live ({records} live records, watch every {WATCH_MS} ms), median | {} | {} |",
        ms(median(file_cold.clone())),
        ms(median(file_cached.clone()))
    );
    println!(
        "| swap alone (`swap::activate`: validate, path check, replace), median | {} | {} |",
        ms(median(direct_cold)),
        ms(median(direct_cached))
    );
    println!("runs: cold {file_cold:?}, cached {file_cached:?}");
    println!(
        "\n| scope re-evaluation over {scope_records} records (batches of {BATCH}) | CPU | wall |"
    );
    println!("|---|--:|--:|");
    println!(
        "| new version's decisions ({kept} in scope) | {} | {} |",
        ms(eval_cpu),
        ms(eval_wall)
    );
    println!(
        "| diff: old and new decisions compared ({enter} enter, {leave} leave) | {} | {} |",
        ms(diff_cpu),
        ms(diff_wall)
    );
}
