//! Sync throughput of a secondary and write → verified lag, with a primary
//! and a secondary on loopback (SQLite, local disk, one process), beside
//! `rclone copy` of the same files from `rclone serve http` in the same run.
//!
//! `cargo bench -p geohost --bench sync`. For each set (10,000 × 4 KiB,
//! 20 × 50 MiB) a fresh primary takes the blobs through ingest and verifies
//! them; then a fresh secondary starts, and the clock runs from its start
//! (`Site::open`, including the plugin compile) until every registry row is
//! synced, and until every one is verified. rclone copies the same files
//! (hard links of the primary's blobs, in one flat folder: its best case,
//! no directory walk) over loopback HTTP; it checks sizes, not checksums.
//!
//! Then the lag: with a pair running, 100 writes a second for ~20 s on the
//! primary; per record, the time from the write's commit to the moment the
//! secondary's registry row is synced and verified (its `verified_at` when
//! first seen so, polled every 50 ms). Sites run with their default
//! settings (`idle_poll_ms` 500) except `files_max_capacity`
//! ([`FILES_CAPACITY`], rclone's `--transfers`).
//!
//! Figures are printed beside the goals, never asserted.
//! `GEOHOST_BENCH_SCALE=0.1` shrinks the number of blobs and the lag run.

#[path = "common/mod.rs"]
mod common;

use common::*;
use geohost::db::ident;
use geohost::primary::verify;
use geohost::secondary::status_counts;
use geohost::states::VerificationState;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The secondary's `files_max_capacity`, and rclone's `--transfers`.
const FILES_CAPACITY: i32 = 16;

/// [`FILES_CAPACITY`], or `GEOHOST_BENCH_FILES_CAPACITY` (for experiments).
fn files_capacity() -> i32 {
    std::env::var("GEOHOST_BENCH_FILES_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FILES_CAPACITY)
}
const RCLONE: &str = "/usr/bin/rclone";
/// Goals of issue 4.
const GOAL_SMALL_VS_RCLONE_FILES: f64 = 2.0;
const GOAL_LARGE_VS_RCLONE_MB: f64 = 1.5;
const LAG_WRITES_PER_SEC: u64 = 100;
const LAG_SECONDS: f64 = 20.0;
const LAG_SIZE: usize = 4 * KIB;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(run());
}

/// One rclone copy.
struct RcloneRun {
    transfers: Option<u32>,
    wall: Duration,
}

/// What a secondary's initial sync took.
struct SyncRun {
    open: Duration,
    synced: Duration,
    verified: Duration,
    peak_rss: Option<u64>,
}

async fn run() {
    let started = Instant::now();
    let mut table = Table::new(&[
        "measure",
        "Geohost",
        "rclone",
        "Geohost / rclone",
        "goal",
        "",
    ]);
    let mut notes = Vec::new();
    let rclone_present = have(RCLONE);
    for set in blob_sets().into_iter().filter(|s| runs(s.label)) {
        let primary = primary("", true).await;
        let project = project(&primary).await;
        let (written, write_time) = write_set(&primary, project, set).await;
        let verified_on_primary = primary_verified(&primary, set.count).await;
        notes.push(format!(
            "{}: written through ingest in {}, verified on the primary {} later",
            set.describe(),
            secs(write_time),
            secs(verified_on_primary)
        ));

        let rclone = if rclone_present {
            let transfers: &[Option<u32>] = if set.label == "small" {
                &[None, Some(FILES_CAPACITY as u32)]
            } else {
                &[Some(FILES_CAPACITY as u32)]
            };
            rclone_runs(&primary, &written, transfers)
        } else {
            Vec::new()
        };

        let cp = have("cp").then(|| cp_run(&primary));

        let ours = geohost_sync(&primary, &written, set).await;
        primary.stop().await;

        let bytes = set.bytes();
        table.section(&format!("{} ({})", set.describe(), mb(bytes)));
        let files_goal = set.label == "small";
        for (what, time) in [("synced", ours.synced), ("verified", ours.verified)] {
            let ours_files = per_sec(set.count as f64, time);
            let ours_mb = per_sec(bytes as f64, time) / 1e6;
            // The best rclone run is the peer.
            let best = rclone.iter().min_by_key(|r| r.wall);
            let rclone_files = best.map(|r| per_sec(set.count as f64, r.wall));
            let rclone_mb = best.map(|r| per_sec(bytes as f64, r.wall) / 1e6);
            let check = |ours: f64, theirs: Option<f64>, goal: f64, applies: bool| {
                if !applies || what != "synced" {
                    return (String::new(), String::new());
                }
                match theirs {
                    Some(t) => (format!("≥ {goal}× rclone"), verdict(ours >= goal * t)),
                    None => (format!("≥ {goal}× rclone"), "no rclone".into()),
                }
            };
            let (goal, met) = check(
                ours_files,
                rclone_files,
                GOAL_SMALL_VS_RCLONE_FILES,
                files_goal,
            );
            table.row(vec![
                format!("files/s, start → all {what}"),
                format!("{ours_files:.0}"),
                rclone_files.map_or("n/a".into(), |f| format!("{f:.0}")),
                rclone_files.map_or("n/a".into(), |f| ratio(ours_files, f)),
                goal,
                met,
            ]);
            let (goal, met) = check(ours_mb, rclone_mb, GOAL_LARGE_VS_RCLONE_MB, !files_goal);
            table.row(vec![
                format!("MB/s, start → all {what}"),
                format!("{ours_mb:.0}"),
                rclone_mb.map_or("n/a".into(), |f| format!("{f:.0}")),
                rclone_mb.map_or("n/a".into(), |f| ratio(ours_mb, f)),
                goal,
                met,
            ]);
        }
        table.row(vec![
            "time to all synced / verified".into(),
            format!("{} / {}", secs(ours.synced), secs(ours.verified)),
        ]);
        table.row(vec![
            "  of which the secondary's Site::open".into(),
            secs(ours.open),
        ]);
        {
            let best = rclone.iter().min_by_key(|r| r.wall).map(|r| r.wall);
            let peers = |per: &dyn Fn(Duration) -> f64| {
                let mut list = Vec::new();
                if let Some(w) = best {
                    list.push(("rclone", per(w)));
                }
                if let Some(w) = cp {
                    list.push(("cp", per(w)));
                }
                list
            };
            let files = |d: Duration| per_sec(set.count as f64, d);
            let mbs = |d: Duration| per_sec(bytes as f64, d) / 1e6;
            let what = format!("sync {}", set.describe());
            headline(
                "sync",
                &format!("{what}, files/s to all synced"),
                "files/s",
                files(ours.synced),
                &peers(&files),
                true,
            );
            headline(
                "sync",
                &format!("{what}, MB/s to all synced"),
                "MB/s",
                mbs(ours.synced),
                &peers(&mbs),
                true,
            );
            headline(
                "sync",
                &format!("{what}, MB/s to all verified"),
                "MB/s",
                mbs(ours.verified),
                &peers(&mbs),
                true,
            );
        }
        if let Some(wall) = cp {
            table.row(vec![
                "cp -r of the primary's blob tree (local disk, no network)".into(),
                String::new(),
                format!("{} · {}", files_rate(set.count, wall), mb_rate(bytes, wall)),
            ]);
        }
        for r in &rclone {
            table.row(vec![
                format!(
                    "rclone copy, --transfers {}",
                    r.transfers.map_or("4 (default)".into(), |t| t.to_string())
                ),
                String::new(),
                format!(
                    "{} · {}",
                    files_rate(set.count, r.wall),
                    mb_rate(bytes, r.wall)
                ),
            ]);
        }
        if let Some(peak) = ours.peak_rss {
            table.row(vec![
                "peak RSS during the sync (both sites, one process)".into(),
                mb(peak),
            ]);
        }
    }

    if runs("lag") {
        lag_table(&mut table, lag_run().await);
    }

    println!("\nGeohost secondary sync over loopback HTTP");
    println!("machine: {}", machine());
    println!(
        "primary and secondary in one process, SQLite and local disk, default settings \
         but files_max_capacity = {}; rclone {}: `rclone copy --http-url … :http: DST` \
         from `rclone serve http --read-only` over hard links of the primary's blobs in one flat folder",
        files_capacity(),
        if rclone_present {
            rclone_version()
        } else {
            "not installed (Debian `rclone`; `cargo xtask bench` installs it)".into()
        }
    );
    println!();
    table.print();
    println!();
    for note in notes {
        println!("{note}");
    }
    println!(
        "peak RSS of the bench process (getrusage): {}; bench took {:.1} s",
        mb(peak_rss()),
        started.elapsed().as_secs_f64()
    );
}

fn lag_table(table: &mut Table, lag: Lag) {
    table.section(&format!(
        "write → verified lag, {} writes/s of {} for {:.0} s ({} records)",
        LAG_WRITES_PER_SEC,
        "4 KiB",
        lag.seconds,
        thousands(lag.lags.len())
    ));
    let mut lags = lag.lags.clone();
    lags.sort_unstable();
    let pick = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
    let what = format!("write → verified lag at {LAG_WRITES_PER_SEC} writes/s");
    headline(
        "sync",
        &format!("{what}, p50"),
        "s",
        pick(0.50).as_secs_f64(),
        &[],
        false,
    );
    headline(
        "sync",
        &format!("{what}, p99"),
        "s",
        pick(0.99).as_secs_f64(),
        &[],
        false,
    );
    table.row(vec!["p50".into(), secs(pick(0.50))]);
    table.row(vec!["p90".into(), secs(pick(0.90))]);
    table.row(vec!["p99".into(), secs(pick(0.99))]);
    table.row(vec!["max".into(), secs(pick(1.0))]);
    table.row(vec![
        "writes achieved".into(),
        format!("{:.1}/s", lag.achieved_rate),
    ]);
    if let Some(peak) = lag.peak_rss {
        table.row(vec![
            "peak RSS during the lag run (both sites, one process)".into(),
            mb(peak),
        ]);
    }
}

/// Waits until the primary has verified `count` rows; returns how long.
async fn primary_verified(primary: &BenchSite, count: usize) -> Duration {
    let it = primary.site.installed(HELM).expect("the Helm type");
    let started = Instant::now();
    until(
        Duration::from_secs(300),
        Duration::from_millis(20),
        "the primary's verification",
        || async {
            let counts = verify::state_counts(&primary.site.db, &it).await.ok()?;
            counts
                .iter()
                .any(|(s, n)| *s == VerificationState::Succeeded && *n as usize == count)
                .then_some(())
        },
    )
    .await;
    started.elapsed()
}

/// Starts a secondary and waits for everything to be synced, then verified.
async fn geohost_sync(primary: &BenchSite, written: &[Written], set: BlobSet) -> SyncRun {
    let reset = reset_peak_rss();
    let started = Instant::now();
    let secondary = secondary(primary, files_capacity()).await;
    let open = started.elapsed();
    let it = secondary.site.installed(HELM).expect("the Helm type");
    let tracking = secondary.site.tracking().expect("tracking").clone();
    let limit = Duration::from_secs(600);
    // Counting is a scan of the registry: often enough, not so often that it
    // competes with the sync for the tracking database.
    let every = Duration::from_millis(100);
    let count = set.count as i64;
    let synced = until(limit, every, "the secondary's sync", || async {
        let c = status_counts(&tracking, &it).await.ok()?;
        (c.synced_count == count).then(|| started.elapsed())
    })
    .await;
    let verified = until(limit, every, "the secondary's verification", || async {
        let c = status_counts(&tracking, &it).await.ok()?;
        (c.verified_count == count).then(|| started.elapsed())
    })
    .await;
    let peak_rss = if reset { peak_rss_since_reset() } else { None };
    // Every file is where the primary has it, with the same size.
    let (primary_root, secondary_root) = (primary.blob_root(), secondary.blob_root());
    for w in written {
        let relative = w.file.strip_prefix(&primary_root).expect("under the root");
        let copy = secondary_root.join(relative);
        let size = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size, set.size as u64, "{} copied", copy.display());
    }
    secondary.stop().await;
    SyncRun {
        open,
        synced,
        verified,
        peak_rss,
    }
}

fn rclone_version() -> String {
    Command::new(RCLONE)
        .arg("version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("rclone ").to_string())
        })
        .unwrap_or_default()
}

fn rclone(args: &[&str]) -> Command {
    let mut cmd = Command::new(RCLONE);
    cmd.args(args)
        // Debian's rclone fails with the machine's AWS_CA_BUNDLE; no config file.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .stdin(Stdio::null());
    cmd
}

/// Kills the server when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves hard links of the written blobs over HTTP with rclone and copies
/// them with rclone, once per `--transfers` setting.
fn rclone_runs(
    primary: &BenchSite,
    written: &[Written],
    transfers: &[Option<u32>],
) -> Vec<RcloneRun> {
    let source = primary.dir.join("rclone-source");
    std::fs::create_dir_all(&source).expect("rclone source folder");
    for w in written {
        std::fs::hard_link(&w.file, source.join(format!("{}.yaml", w.id)))
            .expect("hard link of a blob");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let _server = Server(
        rclone(&["serve", "http"])
            .arg(&source)
            .args(["--addr", &address, "--read-only"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rclone serve http starts"),
    );
    let ready = Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "rclone serve http did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://{address}");
    transfers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let target = primary.dir.join(format!("rclone-copy-{i}"));
            let mut cmd = rclone(&["copy", "--http-url", &url, ":http:"]);
            cmd.arg(&target);
            if let Some(t) = t {
                cmd.args(["--transfers", &t.to_string()]);
            }
            let watch = Stopwatch::start();
            let status = cmd.status().expect("rclone copy runs");
            let wall = watch.stop().wall;
            assert!(status.success(), "rclone copy failed");
            let copied = std::fs::read_dir(&target).map_or(0, |d| d.count());
            assert_eq!(copied, written.len(), "rclone copied every file");
            remove(&target);
            RcloneRun {
                transfers: *t,
                wall,
            }
        })
        .collect()
}

/// `cp -r` of the primary's blob tree (the same files, GitLab's hashed
/// layout) to a new folder on the same disk: the floor of a local copy.
fn cp_run(primary: &BenchSite) -> Duration {
    let target = primary.dir.join("cp-copy");
    let watch = Stopwatch::start();
    let status = Command::new("cp")
        .arg("-r")
        .arg(primary.blob_root())
        .arg(&target)
        .status()
        .expect("cp runs");
    let wall = watch.stop().wall;
    assert!(status.success(), "cp failed");
    remove(&target);
    wall
}

fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_dir_all(path) {
        eprintln!("cannot remove {}: {error}", path.display());
    }
}

struct Lag {
    lags: Vec<Duration>,
    seconds: f64,
    achieved_rate: f64,
    peak_rss: Option<u64>,
}

/// A running pair; writes at [`LAG_WRITES_PER_SEC`] and measures, per
/// record, the commit → synced-and-verified time.
async fn lag_run() -> Lag {
    let seconds = (LAG_SECONDS * scale().min(1.0)).max(5.0);
    let primary = primary("", true).await;
    let project = project(&primary).await;
    let secondary = secondary(&primary, files_capacity()).await;
    let it = secondary.site.installed(HELM).expect("the Helm type");
    let tracking = secondary.site.tracking().expect("tracking").clone();
    let registry = ident(&it.identity.registry_table());
    let fk = ident(&it.identity.foreign_key());

    // Warm up: one record all the way, so that every worker is running.
    let first = write_one(&primary, project, 0, LAG_SIZE).await;
    let verified_sql = format!(
        "SELECT {fk} AS id, verified_at FROM {registry} \
         WHERE state = 2 AND verification_state = 2 AND {fk} >= $1"
    );
    until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        "the warm-up record",
        || async {
            let rows = tracking
                .fetch_all(&verified_sql, &[first.id.into()])
                .await
                .ok()?;
            (!rows.is_empty()).then_some(())
        },
    )
    .await;

    let reset = reset_peak_rss();
    let total = (seconds * LAG_WRITES_PER_SEC as f64) as usize;
    // Writer: one record every 10 ms, each stamped when its write returned.
    let writer = {
        let primary = WriterSite(primary.site.clone());
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval(Duration::from_micros(1_000_000 / LAG_WRITES_PER_SEC));
            let started = Instant::now();
            let mut stamps = Vec::with_capacity(total);
            for n in 1..=total {
                ticks.tick().await;
                let id = primary.write(project, n).await;
                stamps.push((id, chrono::Utc::now()));
            }
            (stamps, started.elapsed())
        })
    };
    // Watcher: the first time each row is seen synced and verified, its verified_at.
    let mut seen: HashMap<i64, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut low = first.id + 1;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    while seen.len() < total {
        if Instant::now() > deadline {
            let rows = tracking
                .fetch_all(
                    &format!(
                        "SELECT state, verification_state, COUNT(*) AS n, MIN({fk}) AS low, \
                         MAX(last_sync_failure) AS f, MAX(verification_failure) AS vf \
                         FROM {registry} GROUP BY state, verification_state"
                    ),
                    &[],
                )
                .await
                .expect("registry counts");
            for r in rows {
                eprintln!(
                    "state {:?} verification {:?}: {:?} rows from {:?} ({:?} / {:?})",
                    r.int("state"),
                    r.int("verification_state"),
                    r.int("n"),
                    r.int("low"),
                    r.opt_text("f"),
                    r.opt_text("vf")
                );
            }
            panic!(
                "{} of {total} records not verified in time",
                total - seen.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rows = match tracking.fetch_all(&verified_sql, &[low.into()]).await {
            Ok(rows) => rows,
            Err(error) => panic!("polling the registry: {error}"),
        };
        for row in rows {
            let id = row.i64("id").expect("id");
            let at = row.ts("verified_at").expect("verified_at");
            seen.entry(id).or_insert(at);
        }
        while seen.contains_key(&low) {
            low += 1;
        }
    }
    let (stamps, writing) = writer.await.expect("writer");
    let peak_rss = if reset { peak_rss_since_reset() } else { None };
    let lags = stamps
        .iter()
        .map(|(id, at)| {
            let verified = seen[id];
            (verified - *at).to_std().unwrap_or_default()
        })
        .collect();
    secondary.stop().await;
    primary.stop().await;
    Lag {
        lags,
        seconds,
        achieved_rate: per_sec(total as f64, writing),
        peak_rss,
    }
}

/// Enough of a primary to write from a spawned task.
struct WriterSite(std::sync::Arc<geohost::site::Site>);

impl WriterSite {
    async fn write(&self, project: i64, n: usize) -> i64 {
        let mut columns = serde_json::Map::new();
        columns.insert("project_id".into(), project.into());
        columns.insert("channel".into(), format!("lag-{n}").into());
        let data = bytes::Bytes::from(random_bytes(1_000_000 + n as u64, LAG_SIZE));
        geohost::primary::ingest::upsert(
            &self.0,
            HELM,
            &columns,
            futures::stream::iter([Ok::<_, std::io::Error>(data)]),
        )
        .await
        .expect("ingest write")
        .id
    }
}
