//! Several `geohost serve` processes for one secondary, sharing its
//! PostgreSQL tracking database (and main database and blob folder): they
//! share the downloads without taking one record twice, and the claims of
//! a killed worker expire and are taken over.
//!
//! PostgreSQL only: a SQLite tracking database takes one worker process.
//! Duplicate downloads are counted at the primary
//! (`geohost_retrieve_served_total{type,site}`, per requesting secondary).

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use geohost::db::{Db, ident};
use geohost::primary::sites::NewSite;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;
use tempfile::TempDir;

const CONVERGE: Duration = Duration::from_secs(150);
/// `files_max_capacity` of the secondary: downloads per worker at once.
const CAPACITY: i32 = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One secondary run by several worker processes.
struct ScaledSecondary {
    name: String,
    config_path: PathBuf,
    dir: PathBuf,
    tracking_url: String,
    workers: Vec<Option<Child>>,
    _tmp: TempDir,
}

impl ScaledSecondary {
    async fn register(primary: &TestSite, workers_toml: &str) -> ScaledSecondary {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let name = format!("scaled-{port}");
        let url = format!("http://127.0.0.1:{port}");
        let (_, credentials) = geohost::primary::sites::add_secondary(
            &primary.site,
            NewSite {
                name: name.clone(),
                url: url.clone(),
                files_max_capacity: Some(CAPACITY),
                ..Default::default()
            },
        )
        .await
        .expect("secondary registered");
        let fresh = || async {
            geohost::db::testing::fresh_postgres_url()
                .await
                .expect("a PostgreSQL test database")
        };
        let tracking_url = fresh().await;
        let config = format!(
            "[site]\nname = \"{name}\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\nurl = \"{url}\"\n\
             data_dir = {:?}\n[database]\nurl = {:?}\n[tracking_database]\nurl = {:?}\n\
             [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
             [workers]\nidle_poll_ms = 50\nconsistency_interval_secs = 2\n{workers_toml}",
            dir.display().to_string(),
            fresh().await,
            tracking_url,
            primary.url,
            credentials.access_key,
            credentials.secret_access_key,
        );
        let config_path = dir.join("secondary.toml");
        std::fs::write(&config_path, config).unwrap();
        ScaledSecondary {
            name,
            config_path,
            dir,
            tracking_url,
            workers: Vec::new(),
            _tmp: tmp,
        }
    }

    /// Starts one more worker process on its own port and waits until it
    /// listens (so workers do not race to create the site's key file).
    async fn start_worker(&mut self) {
        let index = self.workers.len();
        let port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("worker-{index}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_geohost"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("GEOHOST_SITE__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("geohost starts");
        self.workers.push(Some(child));
        eventually(
            Duration::from_secs(60),
            "the worker to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// SIGKILL, no warning.
    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.workers[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (rows, synced, synced and verified) in the tracking database.
    async fn counts(&self, primary: &TestSite) -> (i64, i64, i64) {
        let it = primary.site.installed(HELM).unwrap();
        let Ok(db) = Db::connect_with(&self.tracking_url, 2).await else {
            return (0, 0, 0);
        };
        let row = db
            .fetch_optional(
                &format!(
                    "SELECT COUNT(*) AS n, \
                       COUNT(CASE WHEN state = 2 THEN 1 END) AS synced, \
                       COUNT(CASE WHEN state = 2 AND verification_state = 2 THEN 1 END) AS verified \
                     FROM {}",
                    ident(&it.identity.registry_table())
                ),
                &[],
            )
            .await
            .ok()
            .flatten();
        db.close().await;
        row.map(|r| {
            (
                r.i64("n").unwrap_or(0),
                r.i64("synced").unwrap_or(0),
                r.i64("verified").unwrap_or(0),
            )
        })
        .unwrap_or((0, 0, 0))
    }

    /// Blobs the primary served to this secondary.
    fn served(&self) -> u64 {
        geohost::metrics::RETRIEVE_SERVED
            .with_label_values(&[HELM, &self.name])
            .get()
    }

    fn logs(&self) -> String {
        (0..self.workers.len())
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("worker-{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "worker {i}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ScaledSecondary {
    fn drop(&mut self) {
        for i in 0..self.workers.len() {
            self.kill(i);
        }
    }
}

/// A primary on PostgreSQL holding `n` verified records.
async fn primary_with_records(n: usize) -> TestSite {
    let primary = sites::primary(Backend::Postgres).await;
    let [root, a, ..] = sites::group_tree(&primary).await;
    let projects = [
        sites::project(&primary, root, "p1").await,
        sites::project(&primary, a, "p2").await,
    ];
    // Eight writers at once: the setup, not what is measured.
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let project = projects[i % 2];
            let primary = &primary;
            async move {
                sites::put_helm(
                    primary,
                    project,
                    &format!("ch{i}"),
                    &sites::index_yaml(project, "scale", i as u32),
                )
                .await;
            }
        })
        .await;
    sites::primary_verified(&primary, n).await;
    primary
}

fn postgres_available() -> bool {
    if sites::backends().contains(&Backend::Postgres) {
        true
    } else {
        eprintln!("note: several workers need PostgreSQL; skipping");
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_sync_each_record_once() {
    if !postgres_available() {
        return;
    }
    const N: i64 = 5_000;
    let started = std::time::Instant::now();
    let primary = primary_with_records(N as usize).await;
    eprintln!(
        "{N} records written and verified in {:?}",
        started.elapsed()
    );
    let mut secondary = ScaledSecondary::register(&primary, "").await;
    for _ in 0..3 {
        secondary.start_worker().await;
    }
    let started = std::time::Instant::now();
    let converged = tokio::time::timeout(CONVERGE, async {
        while secondary.counts(&primary).await != (N, N, N) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    eprintln!(
        "synced and verified by three workers in {:?}",
        started.elapsed()
    );
    assert!(
        converged.is_ok(),
        "not converged: {:?}\n{}",
        secondary.counts(&primary).await,
        secondary.logs()
    );
    // Every record synced once at least; the primary served exactly N blobs:
    // no record was downloaded twice.
    assert_eq!(secondary.served(), N as u64, "{}", secondary.logs());
    // All three took part.
    for i in 0..3 {
        let log = std::fs::read_to_string(secondary.dir.join(format!("worker-{i}.log"))).unwrap();
        assert!(
            log.contains("secondary workers starting"),
            "worker {i}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_claims_are_taken_over() {
    if !postgres_available() {
        return;
    }
    const N: i64 = 2_000;
    let primary = primary_with_records(N as usize).await;
    // A short lease: the killed worker's claims expire within seconds.
    let mut secondary = ScaledSecondary::register(&primary, "claim_lease_secs = 3\n").await;
    for _ in 0..3 {
        secondary.start_worker().await;
    }
    // Mid-run: some rows synced, many to go.
    eventually(CONVERGE, "a tenth of the rows synced", || async {
        secondary.counts(&primary).await.1 >= N / 10
    })
    .await;
    secondary.kill(1);
    let synced_at_kill = secondary.counts(&primary).await.1;
    assert!(synced_at_kill < N, "the run ended before the kill");
    let converged = tokio::time::timeout(CONVERGE, async {
        while secondary.counts(&primary).await != (N, N, N) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "not converged after the kill: {:?}\n{}",
        secondary.counts(&primary).await,
        secondary.logs()
    );
    // Only blobs the killed worker had in flight can have been served
    // twice: at most its claims, its batches in flight and its single
    // downloads.
    let workers = geohost::config::WorkerSection::default();
    let in_flight =
        workers.sync_batches_in_flight as i64 * workers.sync_batch_size + CAPACITY as i64;
    let served = secondary.served();
    assert!(
        served >= N as u64 && served <= (N + in_flight) as u64,
        "served {served} blobs for {N} records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_sqlite_is_refused() {
    let primary = sites::primary(Backend::Sqlite).await;
    let secondary = sites::secondary(
        Backend::Sqlite,
        &primary,
        NewSite {
            name: "secondary".into(),
            ..Default::default()
        },
    )
    .await;
    let config = secondary.write_config();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("GEOHOST_SITE__LISTEN", format!("127.0.0.1:{}", free_port()))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the second worker exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SQLite allows one worker process"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_verifiers_claims_on_the_primary_are_taken_over() {
    for backend in sites::backends() {
        let primary =
            sites::primary_with(backend, "idle_poll_ms = 50\nclaim_lease_secs = 2\n").await;
        let [root, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, root, "p").await;
        for i in 0..5 {
            sites::put_helm(
                &primary,
                project,
                &format!("c{i}"),
                &sites::index_yaml(project, "v", i),
            )
            .await;
        }
        let it = primary.site.installed(HELM).unwrap();
        let states = ident(&it.identity.states_table());
        let succeeded = || async {
            geohost::primary::verify::state_counts(&primary.site.db, &it)
                .await
                .unwrap()
                .contains(&(geohost::states::VerificationState::Succeeded, 5))
        };
        eventually(CONVERGE, "the first verification", succeeded).await;
        // A process claimed every row an hour ago and died (GitLab's 8-hour
        // timeout is far away).
        let claimed_at = Db::now();
        primary
            .site
            .db
            .execute(
                &format!(
                    "UPDATE {states} SET verification_state = 1, verification_started_at = $1"
                ),
                &[(claimed_at - chrono::Duration::hours(1)).into()],
            )
            .await
            .unwrap();
        eventually(CONVERGE, "the claims taken over and verified", || async {
            let rows = primary
                .site
                .db
                .fetch_all(
                    &format!("SELECT verification_state, verified_at FROM {states}"),
                    &[],
                )
                .await
                .unwrap();
            rows.len() == 5
                && rows.iter().all(|r| {
                    r.i16("verification_state").unwrap() == 2
                        && r.opt_ts("verified_at")
                            .unwrap()
                            .is_some_and(|t| t >= claimed_at)
                })
        })
        .await;
    }
}
