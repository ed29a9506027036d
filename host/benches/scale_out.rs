//! `scale_out`: one secondary run by 1, then by 3 `geohost serve` worker
//! processes sharing its PostgreSQL tracking database, syncing the same
//! records from the same primary (small blobs, where the per-record cost
//! of one process is the limit). Prints files/s from the first worker's
//! start until every registry row is synced, and verified, and how many
//! blobs the primary served (duplicates would show here). Nothing is
//! asserted.
//!
//! Needs PostgreSQL: `GEOHOST_TEST_POSTGRES_URL` (an admin URL; `cargo xtask
//! bench` starts a server and sets it). The primary runs in this process
//! (SQLite, local disk); the workers are the release `geohost` binary.
//! `GEOHOST_BENCH_SCALE` scales the 5,000 records;
//! `GEOHOST_BENCH_FILES_CAPACITY` sets `files_max_capacity` (default 16).

#[path = "common/mod.rs"]
mod common;

use common::{BenchSite, BlobSet, KIB, Table};
use geohost::db::{Db, ident};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Run {
    workers: usize,
    synced: Duration,
    verified: Duration,
    served: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (synced, synced and verified) rows of the registry.
async fn counts(db: &Db, table: &str) -> (i64, i64) {
    let row = db
        .fetch_one(
            &format!(
                "SELECT COUNT(CASE WHEN state = 2 THEN 1 END) AS synced, \
                   COUNT(CASE WHEN state = 2 AND verification_state = 2 THEN 1 END) AS verified \
                 FROM {table}"
            ),
            &[],
        )
        .await;
    match row {
        Ok(r) => (r.i64("synced").unwrap_or(0), r.i64("verified").unwrap_or(0)),
        Err(_) => (0, 0),
    }
}

async fn sync_with(primary: &BenchSite, workers: usize, n: i64, capacity: i32) -> Run {
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let name = format!("scale-{workers}-{port}");
    let url = format!("http://127.0.0.1:{port}");
    let (_, credentials) = geohost::primary::sites::add_secondary(
        &primary.site,
        geohost::primary::sites::NewSite {
            name: name.clone(),
            url: url.clone(),
            files_max_capacity: Some(capacity),
            ..Default::default()
        },
    )
    .await
    .expect("secondary registered");
    let fresh = || async {
        geohost::db::testing::fresh_postgres_url()
            .await
            .expect("a PostgreSQL database")
    };
    let tracking_url = fresh().await;
    let config = format!(
        "[site]\nname = \"{name}\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\nurl = \"{url}\"\n\
         data_dir = {:?}\n[database]\nurl = {:?}\n[tracking_database]\nurl = {:?}\n\
         [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n",
        dir.display().to_string(),
        fresh().await,
        tracking_url,
        primary.url,
        credentials.access_key,
        credentials.secret_access_key,
    );
    let config_path = dir.join("secondary.toml");
    std::fs::write(&config_path, config).unwrap();
    let it = primary.site.installed(common::HELM).unwrap();
    let table = ident(&it.identity.registry_table());

    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..workers {
        let worker_port = if i == 0 { port } else { free_port() };
        let log = std::fs::File::create(dir.join(format!("worker-{i}.log"))).unwrap();
        children.push(
            Command::new(env!("CARGO_BIN_EXE_geohost"))
                .args(["serve", "--config"])
                .arg(&config_path)
                .env("GEOHOST_SITE__LISTEN", format!("127.0.0.1:{worker_port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("geohost starts"),
        );
        // The first creates the site's key file; the others start once it listens.
        if i == 0 {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let tracking = Db::connect_with(&tracking_url, 2).await.unwrap();
    let mut synced = None;
    let verified = loop {
        let (s, v) = counts(&tracking, &table).await;
        if synced.is_none() && s == n {
            synced = Some(started.elapsed());
        }
        if v == n {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no convergence: {s} synced, {v} verified of {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tracking.close().await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Run {
        workers,
        synced: synced.unwrap_or(verified),
        verified,
        served: geohost::metrics::RETRIEVE_SERVED
            .with_label_values(&[common::HELM, &name])
            .get(),
    }
}

fn main() {
    if std::env::var(geohost::db::testing::POSTGRES_URL_VAR).is_err() {
        println!(
            "scale_out: {} is unset; this bench needs PostgreSQL (cargo xtask bench starts one)",
            geohost::db::testing::POSTGRES_URL_VAR
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let set = BlobSet {
            label: "small",
            count: ((5_000.0 * common::scale()).round() as usize).max(1),
            size: 4 * KIB,
        };
        let capacity: i32 = std::env::var("GEOHOST_BENCH_FILES_CAPACITY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        let primary = common::primary("idle_poll_ms = 50\n", true).await;
        let project = common::project(&primary).await;
        let (_, wrote) = common::write_set(&primary, project, set).await;
        let it = primary.site.installed(common::HELM).unwrap();
        let n = set.count as i64;
        let started = Instant::now();
        while !geohost::primary::verify::state_counts(&primary.site.db, &it)
            .await
            .unwrap()
            .iter()
            .any(|&(s, c)| s == geohost::states::VerificationState::Succeeded && c == n)
        {
            assert!(started.elapsed() < Duration::from_secs(600));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "scale_out: {} written in {}; files_max_capacity {capacity} per worker",
            set.describe(),
            common::secs(wrote)
        );
        let mut runs = Vec::new();
        for workers in [1, 3] {
            runs.push(sync_with(&primary, workers, n, capacity).await);
        }
        let mut table = Table::new(&[
            "workers",
            "files/s to synced",
            "files/s to verified",
            "time synced / verified",
            "blobs served",
            "vs 1 worker",
        ]);
        let base = runs[0].verified.as_secs_f64();
        for run in &runs {
            table.row(vec![
                run.workers.to_string(),
                common::files_rate(set.count, run.synced),
                common::files_rate(set.count, run.verified),
                format!(
                    "{} / {}",
                    common::secs(run.synced),
                    common::secs(run.verified)
                ),
                common::thousands(run.served as usize),
                format!("{:.2}×", base / run.verified.as_secs_f64()),
            ]);
        }
        println!("\nscale_out — {} ({})", set.describe(), common::machine());
        table.print();
        primary.stop().await;
    });
}
