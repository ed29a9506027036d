//! The two figures that need whole sites: the registry backfill of a new
//! secondary over 1,000,000 records, and the peak memory of each site when
//! the primary and the secondary run as their own `geohost serve`
//! processes (the release binary).
//!
//! `cargo bench -p geohost --bench sites`.
//!
//! - **Backfill**: a primary (SQLite, served on loopback) holds 1,000,000
//!   Helm metadata cache rows (inserted in one SQL statement: the figure is
//!   the secondary's, not ingest's); a fresh secondary (SQLite, workers off)
//!   is opened, which activates its types, and activating a version the
//!   site has not run is one registry consistency pass (the records feed
//!   10,000 at a time, the plugin's scope decisions, bulk inserts); timed
//!   until it holds a pending registry row per record.
//! - **Peak RSS per site**: both sites as `geohost serve` processes;
//!   10,000 × 4 KiB then 20 × 50 MiB written over HTTP (`PUT`, 8 at a
//!   time) while the secondary syncs and verifies them; `VmHWM` of each
//!   process from `/proc/<pid>/status` once all are verified.
//!
//! `GEOHOST_BENCH_SCALE` scales the records and blobs as in the other benches.

#[path = "common/mod.rs"]
mod common;

use common::*;
use geohost::config::Config;
use geohost::db::{Arg, Db};
use geohost::primary::{sites as geo_sites, topology};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BACKFILL_RECORDS: usize = 1_000_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let started = Instant::now();
    let mut table = Table::new(&["measure", "Geohost", ""]);
    if runs("backfill") {
        let records = ((BACKFILL_RECORDS as f64 * scale()).round() as usize).max(10_000);
        let (insert, backfill) = backfill(records).await;
        table.section(&format!(
            "registry backfill of a new secondary, {} records",
            thousands(records)
        ));
        table.row(vec!["time to every registry row".into(), secs(backfill)]);
        table.row(vec![
            "records/s".into(),
            format!("{:.0}", per_sec(records as f64, backfill)),
        ]);
        table.row(vec![
            "(setup: the rows inserted on the primary in)".into(),
            secs(insert),
        ]);
        headline(
            "sites",
            &format!("registry backfill, {} records, time", thousands(records)),
            "s",
            backfill.as_secs_f64(),
            &[],
            false,
        );
    }
    if runs("rss") {
        let peaks = peak_rss_per_site().await;
        table.section("peak RSS per site, separate `geohost serve` processes (VmHWM)");
        for (what, figure) in &peaks.rows {
            table.row(vec![what.clone(), figure.clone()]);
        }
        headline(
            "sites",
            "peak RSS, primary process",
            "MB",
            peaks.primary as f64 / 1e6,
            &[],
            false,
        );
        headline(
            "sites",
            "peak RSS, secondary process",
            "MB",
            peaks.secondary as f64 / 1e6,
            &[],
            false,
        );
    }
    println!("\nGeohost sites: registry backfill and peak memory per site");
    println!("machine: {}", machine());
    println!("SQLite and local disk, release binary, default settings\n");
    table.print();
    println!("\nbench took {:.1} s", started.elapsed().as_secs_f64());
}

/// Inserts `records` rows on a served primary, then times a new secondary's
/// first consistency pass (the one opening it runs). Returns (insert time,
/// backfill time).
async fn backfill(records: usize) -> (Duration, Duration) {
    let primary = primary("enabled = false\n", true).await;
    let project = project(&primary).await;
    let it = primary.site.installed(HELM).expect("the Helm type");
    let table = geohost::db::ident(&it.identity.table.name);
    let watch = Instant::now();
    primary
        .site
        .db
        .execute(
            &format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
                 INSERT INTO {table} (created_at, updated_at, project_id, size, channel, file, object_storage_key) \
                 SELECT 1, 2, $2, 4096, 'c' || n, 'index.yaml', 'key/' || n FROM seq"
            ),
            &[Arg::I64(Some(records as i64)), project.into()],
        )
        .await
        .expect("inserting the records");
    let insert = watch.elapsed();

    // The secondary: registered, opened with its workers off, one pass.
    let tmp = tempfile::TempDir::new().expect("a temporary folder");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let (_, credentials) = geo_sites::add_secondary(
        &primary.site,
        geo_sites::NewSite {
            name: "backfill".into(),
            url: format!("http://127.0.0.1:{port}"),
            ..Default::default()
        },
    )
    .await
    .expect("secondary registered");
    let config = format!(
        "[site]\nname = \"backfill\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\n\
         data_dir = {:?}\n[primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
         [workers]\nenabled = false\n",
        tmp.path().display().to_string(),
        primary.url,
        credentials.access_key,
        credentials.secret_access_key,
    );
    let watch = Instant::now();
    let site = geohost::runtime::open(Config::from_toml(&config).expect("config"))
        .await
        .expect("the secondary opens");
    let secondary = site
        .role_state
        .get::<geohost::secondary::Secondary>()
        .expect("opening a secondary sets its role up");
    // A new secondary's first opening activates its types, and activating
    // a version the site has not run re-evaluates its scope: that is the
    // backfill, already done when `open` returns. A consistency pass runs
    // only if it was not (a second full pass would double the figure).
    let tracking = site.tracking().expect("tracking");
    let count = format!(
        "SELECT COUNT(*) AS n FROM {}",
        geohost::db::ident(&it.identity.registry_table())
    );
    let rows = || async { tracking.fetch_one(&count, &[]).await.ok()?.i64("n").ok() };
    if rows().await != Some(records as i64) {
        secondary
            .consistency_pass()
            .await
            .expect("the consistency pass");
    }
    let backfill = until(
        Duration::from_secs(600),
        Duration::from_millis(50),
        "one registry row per record",
        || async { (rows().await? as usize == records).then(|| watch.elapsed()) },
    )
    .await;
    site.db.close().await;
    tracking.close().await;
    primary.stop().await;
    (insert, backfill)
}

struct Peaks {
    primary: u64,
    secondary: u64,
    rows: Vec<(String, String)>,
}

async fn peak_rss_per_site() -> Peaks {
    let primary_dir = tempfile::TempDir::new().expect("folder");
    let secondary_dir = tempfile::TempDir::new().expect("folder");
    let (pp, sp) = (port(), port());
    let primary_url = format!("http://127.0.0.1:{pp}");
    let primary_config = format!(
        "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:{pp}\"\n\
         url = \"{primary_url}\"\ndata_dir = {:?}\n",
        primary_dir.path().display().to_string()
    );
    // Set up in this process (token, project, the secondary), then serve
    // from the binary.
    let site = geohost::runtime::open(Config::from_toml(&primary_config).expect("config"))
        .await
        .expect("primary opens");
    let (_, token) = geohost::api::auth::create_token(&site.db, "bench")
        .await
        .expect("token");
    let group = topology::create_namespace(&site.db, "bench", "bench", None)
        .await
        .expect("namespace")
        .id;
    let project = topology::create_project(&site.db, "bench", "bench", group, "default")
        .await
        .expect("project")
        .id;
    let (_, credentials) = geo_sites::add_secondary(
        &site,
        geo_sites::NewSite {
            name: "secondary".into(),
            url: format!("http://127.0.0.1:{sp}"),
            files_max_capacity: Some(16),
            ..Default::default()
        },
    )
    .await
    .expect("secondary registered");
    site.db.close().await;
    drop(site);
    let secondary_config = format!(
        "[site]\nname = \"secondary\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{sp}\"\n\
         url = \"http://127.0.0.1:{sp}\"\ndata_dir = {:?}\n\
         [primary]\nurl = \"{primary_url}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n",
        secondary_dir.path().display().to_string(),
        credentials.access_key,
        credentials.secret_access_key,
    );
    let write_config = |dir: &Path, text: &str| -> PathBuf {
        let path = dir.join("site.toml");
        std::fs::write(&path, text).expect("config file");
        path
    };
    let primary_process = Process::start(
        &write_config(primary_dir.path(), &primary_config),
        &primary_dir.path().join("log"),
    );
    let secondary_process = Process::start(
        &write_config(secondary_dir.path(), &secondary_config),
        &secondary_dir.path().join("log"),
    );
    wait_listening(&format!("127.0.0.1:{pp}")).await;
    wait_listening(&format!("127.0.0.1:{sp}")).await;
    let tracking = Db::connect_with(
        &format!(
            "sqlite:{}",
            secondary_dir.path().join("tracking.sqlite").display()
        ),
        1,
    )
    .await
    .expect("the secondary's tracking database");

    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut total = 0usize;
    for set in blob_sets() {
        let watch = Instant::now();
        let bodies: Vec<(usize, bytes::Bytes)> = (0..set.count)
            .map(|n| {
                (
                    total + n,
                    bytes::Bytes::from(random_bytes(7_000_000 + (total + n) as u64, set.size)),
                )
            })
            .collect();
        let writes = futures::stream::iter(bodies)
            .map(|(n, body)| {
                let client = client.clone();
                let url = format!(
                    "{primary_url}/api/v4/replicables/{HELM}?project_id={project}&channel=rss-{n}"
                );
                let token = token.clone();
                async move {
                    let answer = client
                        .put(url)
                        .header("PRIVATE-TOKEN", token)
                        .body(body)
                        .send()
                        .await
                        .expect("a write");
                    assert!(
                        answer.status().is_success(),
                        "write refused: {}",
                        answer.status()
                    );
                }
            })
            .buffer_unordered(8);
        use futures::StreamExt;
        writes.collect::<Vec<()>>().await;
        total += set.count;
        let registry = geohost::db::ident(&format!("{HELM}_registry"));
        until(Duration::from_secs(900), Duration::from_millis(200), "the secondary's copy", || async {
            let n = tracking
                .fetch_one(
                    &format!("SELECT COUNT(*) AS n FROM {registry} WHERE state = 2 AND verification_state = 2"),
                    &[],
                )
                .await
                .ok()?
                .i64("n")
                .ok()?;
            (n as usize == total).then_some(())
        })
        .await;
        rows.push((
            format!(
                "{}: written over HTTP, synced and verified in",
                set.describe()
            ),
            secs(watch.elapsed()),
        ));
        rows.push((
            "  peak RSS so far: primary / secondary".to_string(),
            format!(
                "{} / {}",
                mb(primary_process.peak_rss()),
                mb(secondary_process.peak_rss())
            ),
        ));
    }
    tracking.close().await;
    let peaks = Peaks {
        primary: primary_process.peak_rss(),
        secondary: secondary_process.peak_rss(),
        rows,
    };
    drop(secondary_process);
    drop(primary_process);
    peaks
}
