//! The fault-injection suite: a primary and a secondary as real
//! `geohost serve` processes on loopback, faults injected between and
//! under them, then the proof that nothing was lost once they heal.
//!
//! Scenarios (each with a seeded RNG; the seed is printed, and
//! `GEOHOST_FAULT_SEED=N` replays one):
//!
//! - `proxy`: the secondary reaches the primary through [`proxy::FaultProxy`]
//!   (5xx answers, resets, stalls, truncated bodies, flipped bytes) while
//!   records are written;
//! - `sigkill`: SIGKILL of the primary or the secondary at random points
//!   while records are written and synced (`GEOHOST_FAULT_KILLS`, ≥ 20);
//! - `sigkill-batch`: SIGKILL of either site while the secondary catches
//!   up on 120 small records in batches, half of them synced; a watcher
//!   reads every file at a blob path all along (none may be partial);
//! - `disk-full`: the secondary's blob root is a 4 MiB tmpfs, filled up;
//!   then space is freed (root only; skipped with a note otherwise);
//! - `postgres-restart`: both sites on a PostgreSQL server of the suite's
//!   own ([`postgres::OwnPostgres`]), restarted mid-run;
//! - `plugin-faults`: see [`plugin`].
//! - `out-of-order`: on PostgreSQL, primary transactions held open so that
//!   event ids commit out of order, with no consistency pass after the
//!   start: every change must come through the event feed.
//! - `claims-recovery-sqlite`, `claims-recovery-postgres`: see [`recovery`].
//!
//! After each scenario heals, every record the primary acknowledged must be
//! on the primary with that content and checksum, and on the secondary
//! synced, verified and byte-identical; the registry holds no other row and
//! the blob roots hold no other file (no temporary, staging or foreign
//! file). The suite prints one table (scenario, iterations, faults,
//! converged, time to converge, lost) and writes it to
//! `target/tmp/fault-suite.md`; a failed invariant fails the test.

mod postgres;
mod proxy;
mod recovery;

use crate::sites::HELM;
use crate::support::{helm_blob_path, sha256_hex};
use geohost::config::Config;
use geohost::primary::{sites as geo_sites, topology};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a healed pair may take to converge before the suite gives up.
const CONVERGE_LIMIT: Duration = Duration::from_secs(90);
/// Workers tuned so that failures heal within seconds (retries after at most
/// 1 s, stuck rows after 3 s, a crashed writer's temporary object removed
/// after 6 s).
const WORKERS: &str = "idle_poll_ms = 50\nconsistency_interval_secs = 2\n\
    sync_timeout_secs = 3\nverification_timeout_secs = 3\nretry_delay_max_secs = 1\n\
    status_interval_secs = 3600\n[storage]\ntemp_max_age_secs = 6\n";

/// One row of the suite's table.
#[derive(Debug, Clone)]
pub struct Outcome {
    scenario: String,
    iterations: usize,
    faults: String,
    converged: bool,
    converge_times: Vec<Duration>,
    lost: usize,
    note: String,
    /// Not run here (why is in `note`).
    skipped: bool,
}

fn seed() -> u64 {
    std::env::var("GEOHOST_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A `geohost serve` process.
pub struct SiteProcess {
    what: &'static str,
    pub dir: PathBuf,
    pub url: String,
    listen: String,
    config_path: PathBuf,
    child: Option<Child>,
}

impl SiteProcess {
    fn new(what: &'static str, dir: &Path, port: u16, config: &str) -> SiteProcess {
        let config_path = dir.join(format!("{what}.toml"));
        std::fs::write(&config_path, config).unwrap();
        SiteProcess {
            what,
            dir: dir.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            listen: format!("127.0.0.1:{port}"),
            config_path,
            child: None,
        }
    }

    /// Starts the process and waits until it answers.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.what)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_geohost"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("geohost starts");
        self.child = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(&self.listen).await.is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited at start ({status}); see {}",
                    self.what,
                    self.log_path().display()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not start listening",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Something answered; make sure it is this process (another test's
        // site could hold the port if ours failed to bind it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(died) = self.death_note() {
            panic!("{died}");
        }
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `None` while the process runs; otherwise why it is gone: its exit
    /// status and the end of its log (the folder is deleted with the test,
    /// so this is the only trace a CI run keeps).
    pub fn death_note(&mut self) -> Option<String> {
        if self.alive() {
            return None;
        }
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .map_or("not running".to_string(), |s| s.to_string());
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        Some(format!(
            "the {} died ({status}); its log ends:\n{tail}",
            self.what
        ))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.what))
    }

    pub fn blob_root(&self) -> PathBuf {
        self.dir.join("blobs")
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where a pair keeps its databases.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    /// `None`: SQLite files in each data folder.
    pub primary: Option<String>,
    pub secondary: Option<String>,
    pub tracking: Option<String>,
    /// More configuration for both sites (TOML sections).
    pub extra_config: String,
    /// More `[workers]` settings for both sites (TOML lines).
    pub workers: String,
}

fn database_sections(main: &Option<String>, tracking: Option<&Option<String>>) -> String {
    let mut text = String::new();
    if let Some(url) = main {
        text.push_str(&format!("[database]\nurl = {url:?}\n"));
    }
    if let Some(Some(url)) = tracking {
        text.push_str(&format!("[tracking_database]\nurl = {url:?}\n"));
    }
    text
}

/// A primary and a secondary, as processes; records written over HTTP.
pub struct Pair {
    pub primary: SiteProcess,
    pub secondary: SiteProcess,
    token: String,
    pub projects: Vec<i64>,
    /// Every acknowledged write: (project, channel) → SHA-256 of its content.
    pub acked: BTreeMap<(i64, String), String>,
    /// Files of other types the blob roots may hold (relative to them).
    pub other_files: BTreeSet<PathBuf>,
    client: reqwest::Client,
    _primary_dir: TempDir,
    _secondary_dir: TempDir,
}

impl Pair {
    /// Sets up both sites (the secondary replicating everything, reaching
    /// the primary at `via(primary_url)`) and starts them.
    pub async fn start(databases: Databases, via: Option<&str>) -> Pair {
        let mut pair = Pair::prepare(databases, via, |_| {}).await;
        pair.primary.start().await;
        pair.secondary.start().await;
        pair
    }

    /// Sets up both sites without starting them; `before` runs on the
    /// secondary's data folder first (to mount its blob root, say).
    pub async fn prepare(
        databases: Databases,
        via: Option<&str>,
        before: impl FnOnce(&Path),
    ) -> Pair {
        let primary_dir = TempDir::new().unwrap();
        let secondary_dir = TempDir::new().unwrap();
        let (primary_port, secondary_port) = (free_port(), free_port());
        let primary_url = format!("http://127.0.0.1:{primary_port}");
        let secondary_url = format!("http://127.0.0.1:{secondary_port}");
        let primary_config = format!(
            "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:{primary_port}\"\n\
             url = \"{primary_url}\"\ndata_dir = {:?}\n{}[workers]\n{}{WORKERS}{}",
            primary_dir.path().display().to_string(),
            database_sections(&databases.primary, None),
            databases.workers,
            databases.extra_config,
        );
        // Set up the primary in this process: a token, a project, the secondary.
        let site = geohost::runtime::open(Config::from_toml(&primary_config).unwrap())
            .await
            .expect("the primary opens");
        let (_, token) = geohost::api::auth::create_token(&site.db, "faults")
            .await
            .unwrap();
        let group = topology::create_namespace(&site.db, "g", "g", None)
            .await
            .unwrap()
            .id;
        let mut projects = Vec::new();
        for name in ["p1", "p2"] {
            projects.push(
                topology::create_project(&site.db, name, name, group, "default")
                    .await
                    .unwrap()
                    .id,
            );
        }
        // The plugin scenario's poisoned projects exist too: a record's
        // project must (GitLab's foreign key).
        let mut last = projects[1];
        while last < POISONED_PROJECTS[2] {
            let name = format!("filler{last}");
            last = topology::create_project(&site.db, &name, &name, group, "default")
                .await
                .unwrap()
                .id;
        }
        let (_, credentials) = geo_sites::add_secondary(
            &site,
            geo_sites::NewSite {
                name: "secondary".into(),
                url: secondary_url.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        site.db.close().await;
        drop(site);
        before(secondary_dir.path());
        let secondary_config = format!(
            "[site]\nname = \"secondary\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{secondary_port}\"\n\
             url = \"{secondary_url}\"\ndata_dir = {:?}\n{}\
             [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n[workers]\n{}{WORKERS}{}",
            secondary_dir.path().display().to_string(),
            database_sections(&databases.secondary, Some(&databases.tracking)),
            via.unwrap_or(&primary_url),
            credentials.access_key,
            credentials.secret_access_key,
            databases.workers,
            databases.extra_config,
        );
        Pair {
            primary: SiteProcess::new("primary", primary_dir.path(), primary_port, &primary_config),
            secondary: SiteProcess::new(
                "secondary",
                secondary_dir.path(),
                secondary_port,
                &secondary_config,
            ),
            token,
            projects,
            acked: BTreeMap::new(),
            other_files: BTreeSet::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            _primary_dir: primary_dir,
            _secondary_dir: secondary_dir,
        }
    }

    /// The scenario's row of the table: the records lost, and a note if a
    /// site died.
    async fn outcome(
        &mut self,
        scenario: &str,
        iterations: usize,
        faults: String,
        times: Vec<Result<Duration, String>>,
    ) -> Outcome {
        let lost = self.lost().await;
        let note = self.death_note().unwrap_or_default();
        outcome(scenario, iterations, faults, times, lost, note)
    }

    /// `None` while both sites run; otherwise which died and how.
    pub fn death_note(&mut self) -> Option<String> {
        let notes: Vec<String> = [self.primary.death_note(), self.secondary.death_note()]
            .into_iter()
            .flatten()
            .collect();
        (!notes.is_empty()).then(|| notes.join("\n"))
    }

    /// Rewrites one setting of the secondary's configuration.
    pub fn set_secondary_setting(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.secondary.config_path).unwrap();
        assert!(
            text.contains(from),
            "{from} is not in the secondary's configuration"
        );
        std::fs::write(&self.secondary.config_path, text.replace(from, to)).unwrap();
    }

    /// Rewrites the secondary's primary URL (to put a proxy between them).
    pub fn primary_url_of_secondary(&self, url: &str) {
        let text = std::fs::read_to_string(&self.secondary.config_path).unwrap();
        let text = text.replace(&self.primary.url, url);
        std::fs::write(&self.secondary.config_path, text).unwrap();
    }

    /// One write, retried until the primary acknowledges it (it may be down).
    pub async fn write(&mut self, project: i64, channel: &str, content: Vec<u8>) {
        let sha = write_until_acked(
            &self.client,
            &self.primary.url,
            &self.token,
            HELM,
            &helm_query(project, channel),
            content,
        )
        .await;
        self.acked.insert((project, channel.to_string()), sha);
    }

    /// A writer for a background task.
    pub fn writer(&self) -> Writer {
        Writer {
            client: self.client.clone(),
            url: self.primary.url.clone(),
            token: self.token.clone(),
        }
    }

    /// Polls [`Pair::check`] until it holds; returns how long it took, or
    /// the last failure.
    pub async fn converge(&self) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            match self.check().await {
                Ok(()) => return Ok(started.elapsed()),
                Err(why) if started.elapsed() > CONVERGE_LIMIT => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The invariants (see the module's documentation).
    pub async fn check(&self) -> Result<(), String> {
        let records = self.primary_records().await?;
        let mut expected_files = self.other_files.clone();
        let mut ids = BTreeSet::new();
        for ((project, channel), sha) in &self.acked {
            let Some(record) = records.get(&(*project, channel.clone())) else {
                return Err(format!(
                    "record ({project}, {channel}) is not on the primary"
                ));
            };
            if record.checksum.as_deref() != Some(sha.as_str()) {
                return Err(format!(
                    "record {} on the primary: checksum {:?}, acknowledged {sha}",
                    record.id, record.checksum
                ));
            }
        }
        let registry = self.registry(HELM).await?;

        for ((project, channel), record) in &records {
            let Some(checksum) = &record.checksum else {
                return Err(format!("record {} not verified on the primary", record.id));
            };
            let relative = PathBuf::from(HELM).join(helm_blob_path(*project, channel));
            for (side, root) in [
                ("primary", self.primary.blob_root()),
                ("secondary", self.secondary.blob_root()),
            ] {
                let bytes = std::fs::read(root.join(&relative))
                    .map_err(|e| format!("record {} on the {side}: {e}", record.id))?;
                if &sha256_hex(&bytes) != checksum {
                    return Err(format!(
                        "record {} on the {side}: content differs (registry {:?})",
                        record.id,
                        registry.get(&record.id)
                    ));
                }
            }
            expected_files.insert(relative);
            ids.insert(record.id);
        }
        let registered: BTreeSet<i64> = registry.keys().copied().collect();
        if registered != ids {
            return Err(format!(
                "registry ids differ from the primary's records: {} rows, {} records",
                registered.len(),
                ids.len()
            ));
        }
        if let Some((id, states)) = registry.iter().find(|(_, s)| **s != (2, 2)) {
            return Err(format!(
                "registry of record {id}: (state, verification) {states:?}"
            ));
        }
        for (side, root) in [
            ("primary", self.primary.blob_root()),
            ("secondary", self.secondary.blob_root()),
        ] {
            // The secondary's quarantine holds the blobs of records it
            // removed, until their delay passes (storage/quarantine.rs).
            let found: BTreeSet<PathBuf> = files_under(&root)
                .into_iter()
                .filter(|f| !f.starts_with(geohost::storage::QUARANTINE_DIR))
                .collect();
            if let Some(extra) = found.difference(&expected_files).next() {
                return Err(format!(
                    "{side}: unexpected file {}",
                    root.join(extra).display()
                ));
            }
        }
        Ok(())
    }

    /// Registry rows of Helm synced on the secondary (0 while it cannot be read).
    pub async fn synced_count(&self) -> usize {
        self.registry(HELM)
            .await
            .map(|rows| rows.values().filter(|(state, _)| *state == 2).count())
            .unwrap_or(0)
    }

    /// The acknowledged records that are not, or not identical, on both sites.
    pub async fn lost(&self) -> usize {
        let records = self.primary_records().await.unwrap_or_default();
        self.acked
            .iter()
            .filter(|((project, channel), sha)| {
                let on_primary = records
                    .get(&(*project, channel.clone()))
                    .is_some_and(|r| r.checksum.as_deref() == Some(sha.as_str()));
                let relative = PathBuf::from(HELM).join(helm_blob_path(*project, channel));
                let on_secondary = std::fs::read(self.secondary.blob_root().join(relative))
                    .is_ok_and(|b| &sha256_hex(&b) == *sha);
                !(on_primary && on_secondary)
            })
            .count()
    }

    async fn primary_records(&self) -> Result<BTreeMap<(i64, String), PrimaryRecord>, String> {
        let answer = self
            .client
            .get(format!(
                "{}/api/v4/replicables/{HELM}?limit=10000",
                self.primary.url
            ))
            .header("PRIVATE-TOKEN", &self.token)
            .send()
            .await
            .map_err(|e| format!("listing the primary's records: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!(
                "listing the primary's records: {}",
                answer.status()
            ));
        }
        let list: Vec<serde_json::Value> = answer.json().await.map_err(|e| e.to_string())?;
        Ok(list
            .iter()
            .map(|r| {
                let key = (
                    r["columns"]["project_id"].as_i64().unwrap(),
                    r["columns"]["channel"].as_str().unwrap().to_string(),
                );
                let record = PrimaryRecord {
                    id: r["id"].as_i64().unwrap(),
                    checksum: r["verification_checksum"].as_str().map(str::to_string),
                };
                (key, record)
            })
            .collect())
    }

    /// The plugin scenario's type: `good` files synced, verified and
    /// identical; `poisoned` ones never synced, their blobs only on the
    /// primary.
    async fn check_poisoned_type(
        &self,
        good: &BTreeMap<String, String>,
        poisoned: &BTreeSet<String>,
    ) -> Result<(), String> {
        let answer = self
            .client
            .get(format!(
                "{}/api/v4/replicables/{POISONED_TYPE}?limit=10000",
                self.primary.url
            ))
            .header("PRIVATE-TOKEN", &self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let list: Vec<serde_json::Value> = answer.json().await.map_err(|e| e.to_string())?;
        let ids: BTreeMap<String, i64> = list
            .iter()
            .map(|r| {
                (
                    r["columns"]["file"].as_str().unwrap_or("").to_string(),
                    r["id"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        let registry = self.registry(POISONED_TYPE).await?;
        for (file, sha) in good {
            let id = ids
                .get(file)
                .ok_or(format!("{file} is not on the primary"))?;
            if registry.get(id) != Some(&(2, 2)) {
                return Err(format!(
                    "{POISONED_TYPE} {id}: registry {:?}",
                    registry.get(id)
                ));
            }
            let path = PathBuf::from(POISONED_TYPE).join("files").join(file);
            let copy = std::fs::read(self.secondary.blob_root().join(&path))
                .map_err(|e| format!("{file}: {e}"))?;
            if &sha256_hex(&copy) != sha {
                return Err(format!("{file} differs on the secondary"));
            }
        }
        for file in poisoned {
            let id = ids
                .get(file)
                .ok_or(format!("{file} is not on the primary"))?;
            if registry.get(id).is_some_and(|s| s.0 == 2) {
                return Err(format!("poisoned {file} was synced"));
            }
            let path = PathBuf::from(POISONED_TYPE).join("files").join(file);
            if self.secondary.blob_root().join(path).exists() {
                return Err(format!("poisoned {file} is on the secondary"));
            }
        }
        Ok(())
    }

    /// How many registry rows of the secondary have failed to sync.
    async fn registry_failures(&self) -> Result<usize, String> {
        let text = std::fs::read_to_string(&self.secondary.config_path).unwrap();
        let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
        let db = geohost::db::Db::connect_with(&config.tracking_database_url(), 1)
            .await
            .map_err(|e| e.to_string())?;
        let n = db
            .fetch_one(
                &format!(
                    "SELECT COUNT(*) AS n FROM {HELM}_registry WHERE state = 3 OR retry_count > 0"
                ),
                &[],
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.i64("n").map_err(|e| e.to_string()));
        db.close().await;
        Ok(n? as usize)
    }

    /// Registry rows of type `name` on the secondary: record id → (state,
    /// verification state).
    async fn registry(&self, name: &str) -> Result<BTreeMap<i64, (i16, i16)>, String> {
        let text = std::fs::read_to_string(&self.secondary.config_path).unwrap();
        let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
        let db = geohost::db::Db::connect_with(&config.tracking_database_url(), 1)
            .await
            .map_err(|e| format!("tracking database: {e}"))?;
        let registry = crate::sites::registry_states_in(&db, name)
            .await
            .map_err(|e| format!("registry: {e}"));
        db.close().await;
        registry
    }
}

#[derive(Debug, Clone)]
struct PrimaryRecord {
    id: i64,
    checksum: Option<String>,
}

/// Writes to the primary from a background task.
#[derive(Clone)]
pub struct Writer {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Writer {
    /// A write of any type, `query` its writer columns; retried until acknowledged.
    pub async fn write_query(&self, type_name: &str, query: &str, content: Vec<u8>) -> String {
        write_until_acked(
            &self.client,
            &self.url,
            &self.token,
            type_name,
            query,
            content,
        )
        .await
    }

    /// One write, retried until acknowledged; returns the content's SHA-256.
    pub async fn write(&self, project: i64, channel: &str, content: Vec<u8>) -> String {
        self.write_query(HELM, &helm_query(project, channel), content)
            .await
    }
}

/// The writer columns of a Helm record, as ingest's query string.
fn helm_query(project: i64, channel: &str) -> String {
    format!("project_id={project}&channel={channel}")
}

/// A write of type `type_name` (`query`: its writer columns), retried
/// until acknowledged; returns the content's SHA-256.
async fn write_until_acked(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    type_name: &str,
    query: &str,
    content: Vec<u8>,
) -> String {
    let sha = sha256_hex(&content);
    let started = Instant::now();
    loop {
        let answer = client
            .put(format!("{url}/api/v4/replicables/{type_name}?{query}"))
            .header("PRIVATE-TOKEN", token)
            .body(content.clone())
            .send()
            .await;
        match answer {
            Ok(a) if a.status().is_success() => return sha,
            Ok(a) if a.status().is_client_error() => {
                panic!(
                    "write refused: {} {}",
                    a.status(),
                    a.text().await.unwrap_or_default()
                )
            }
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the primary never acknowledged a write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Helm index of about `size` bytes, different for each `version`.
pub fn content(project: i64, channel: &str, version: u64, size: usize) -> Vec<u8> {
    let mut text = crate::sites::index_yaml(project, channel, version as u32);
    let mut line = 0;
    while text.len() < size {
        text.push_str(&format!(
            "# padding {version} {line} ................................\n"
        ));
        line += 1;
    }
    text.into_bytes()
}

/// Every file under `root`, relative to it.
pub fn files_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                found.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// A size for a record: mostly small, sometimes 256 KiB (so that downloads
/// are in flight when a fault hits).
fn record_size(rng: &mut StdRng) -> usize {
    if rng.random_bool(0.2) {
        256 * 1024
    } else {
        2 * 1024 + rng.random_range(0..8 * 1024)
    }
}

fn outcome(
    scenario: &str,
    iterations: usize,
    faults: String,
    times: Vec<Result<Duration, String>>,
    lost: usize,
    note: String,
) -> Outcome {
    let failures: Vec<String> = times.iter().filter_map(|t| t.clone().err()).collect();
    Outcome {
        scenario: scenario.into(),
        iterations,
        faults,
        converged: failures.is_empty(),
        converge_times: times.into_iter().filter_map(Result::ok).collect(),
        lost,
        note: if failures.is_empty() {
            note
        } else {
            format!("{note} not converged: {}", failures.join("; "))
        },
        skipped: false,
    }
}

/// `proxy`: faults between the sites while records are written, then heal.
async fn proxy_scenario(seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pair = Pair::prepare(Databases::default(), None, |_| {}).await;
    let proxy = proxy::FaultProxy::start(&pair.primary.url, seed).await;
    pair.primary_url_of_secondary(&proxy.url);
    pair.primary.start().await;
    pair.secondary.start().await;
    let rounds = 3;
    let mut times = Vec::new();
    for round in 0..rounds {
        proxy.set(proxy::Faults {
            reset: 0.08,
            error_5xx: 0.08,
            stall: 0.05,
            truncate: 0.08,
            flip: 0.25,
        });
        for i in 0..15u64 {
            let project = pair.projects[rng.random_range(0..2)];
            let channel = format!("c{}", rng.random_range(0..25));
            let size = record_size(&mut rng);
            pair.write(
                project,
                &channel,
                content(project, &channel, round * 100 + i, size),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.set(proxy::Faults::NONE);
        times.push(pair.converge().await);
    }
    if times.iter().any(Result::is_err)
        && let Ok(to) = std::env::var("GEOHOST_FAULT_KEEP")
    {
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&pair.primary.dir)
            .arg(format!("{to}/primary"))
            .status();
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&pair.secondary.dir)
            .arg(format!("{to}/secondary"))
            .status();
    }
    let injected = proxy.injected();
    let died = pair.death_note();
    let lost = pair.lost().await;
    outcome(
        "proxy: 5xx, resets, stalls, truncated, flipped",
        rounds as usize,
        injected
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        times,
        lost,
        died.unwrap_or_default(),
    )
}

/// `sigkill`: SIGKILL either site at random points.
async fn sigkill_scenario(seed: u64, iterations: usize) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5151);
    let mut pair = Pair::start(Databases::default(), None).await;
    let mut times = Vec::new();
    let mut kills = BTreeMap::<&str, usize>::new();
    for iteration in 0..iterations {
        // A burst of writes in the background, a kill in the middle of it.
        let writer = pair.writer();
        let mut burst = Vec::new();
        for i in 0..6u64 {
            let project = pair.projects[rng.random_range(0..2)];
            let channel = format!("c{}", rng.random_range(0..40));
            let size = record_size(&mut rng);
            burst.push((
                project,
                channel.clone(),
                content(project, &channel, iteration as u64 * 10 + i, size),
            ));
        }
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            for (project, channel, body) in burst {
                let sha = writer.write(project, &channel, body).await;
                acked.push(((project, channel), sha));
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1200))).await;
        let victim = if rng.random_bool(0.5) {
            "primary"
        } else {
            "secondary"
        };
        *kills.entry(victim).or_default() += 1;
        let site = if victim == "primary" {
            &mut pair.primary
        } else {
            &mut pair.secondary
        };
        site.kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        site.start().await;
        for (key, sha) in task.await.unwrap() {
            pair.acked.insert(key, sha);
        }
        times.push(pair.converge().await);
    }
    let lost = pair.lost().await;
    outcome(
        "sigkill: either site, random points",
        iterations,
        kills
            .iter()
            .map(|(k, v)| format!("{k} killed {v}×"))
            .collect::<Vec<_>>()
            .join(", "),
        times,
        lost,
        String::new(),
    )
}

/// `sigkill-batch`: SIGKILL of either site while the secondary catches up
/// on many small records in batches (claimed, fetched, being written, not
/// yet committed), then heal. A watcher reads every file at a blob path of
/// the secondary all along: each must be a whole, acknowledged blob.
async fn sigkill_batch_scenario(seed: u64, iterations: usize) -> Outcome {
    use std::sync::{Arc, Mutex};
    let mut rng = StdRng::seed_from_u64(seed ^ 0xba7c);
    let mut pair = Pair::start(
        Databases {
            // Small batches, several in flight: a kill finds some in each phase.
            workers: "sync_batch_size = 20\nsync_batches_in_flight = 3\n".into(),
            ..Databases::default()
        },
        None,
    )
    .await;
    // Blob path (under the secondary's root) → the acknowledged content's SHA-256.
    let expected: Arc<Mutex<BTreeMap<PathBuf, String>>> = Default::default();
    let violations: Arc<Mutex<Vec<String>>> = Default::default();
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (expected, violations, watching) =
            (expected.clone(), violations.clone(), watching.clone());
        let root = pair.secondary.blob_root();
        tokio::task::spawn_blocking(move || {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                for relative in files_under(&root) {
                    if relative.starts_with(geohost::storage::TEMP_DIR) {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(root.join(&relative)) else {
                        continue; // removed meanwhile
                    };
                    let want = expected.lock().unwrap().get(&relative).cloned();
                    if want.as_deref() != Some(sha256_hex(&bytes).as_str()) {
                        violations.lock().unwrap().push(format!(
                            "{} ({} bytes) is not an acknowledged blob",
                            relative.display(),
                            bytes.len()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut times = Vec::new();
    let mut kills = BTreeMap::<&str, usize>::new();
    let mut mid_batch = 0;
    for iteration in 0..iterations {
        // The secondary is down while the records are written, so that it
        // catches up on all of them in batches when it starts.
        pair.secondary.kill();
        let n = 120;
        for i in 0..n {
            let project = pair.projects[i % 2];
            let channel = format!("b{iteration}-{i}");
            let body = content(project, &channel, i as u64, rng.random_range(1024..8192));
            let relative = PathBuf::from(HELM).join(helm_blob_path(project, &channel));
            expected.lock().unwrap().insert(relative, sha256_hex(&body));
            pair.write(project, &channel, body).await;
        }
        pair.secondary.start().await;
        // Kill once some of this iteration's rows are synced and some not.
        let started = Instant::now();
        loop {
            let synced = pair.synced_count().await;
            let total = pair.acked.len();
            if synced + n > total && synced < total {
                mid_batch += 1;
                break;
            }
            if synced >= total || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = if iteration % 2 == 0 || rng.random_bool(0.3) {
            "secondary"
        } else {
            "primary"
        };
        *kills.entry(victim).or_default() += 1;
        let site = if victim == "primary" {
            &mut pair.primary
        } else {
            &mut pair.secondary
        };
        site.kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        site.start().await;
        times.push(pair.converge().await);
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let lost = pair.lost().await;
    let violations = violations.lock().unwrap().clone();
    outcome(
        "sigkill-batch: either site, mid-batch",
        iterations,
        format!(
            "{}; {mid_batch} of {iterations} with the batch half-synced",
            kills
                .iter()
                .map(|(k, v)| format!("{k} killed {v}×"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        times,
        lost,
        violations
            .first()
            .map(|v| {
                format!(
                    "{} partial or foreign files seen, first: {v}",
                    violations.len()
                )
            })
            .unwrap_or_default(),
    )
}

fn skipped(scenario: &str, why: String) -> Outcome {
    eprintln!("fault suite: {scenario} skipped: {why}");
    Outcome {
        scenario: scenario.into(),
        iterations: 0,
        faults: "–".into(),
        converged: true,
        converge_times: Vec::new(),
        lost: 0,
        note: format!("skipped: {why}"),
        skipped: true,
    }
}

/// A tmpfs mounted for a scenario, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status})"));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file; returns its path and size.
fn fill(dir: &Path) -> (PathBuf, u64) {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    (path, written)
}

/// `disk-full`: the secondary's blob root is a small tmpfs, filled; then
/// space comes back.
async fn disk_full_scenario(seed: u64) -> Outcome {
    const NAME: &str = "disk-full: secondary's blob root (4 MiB tmpfs)";
    if !postgres::is_root() {
        return skipped(NAME, "mounting a tmpfs needs root".into());
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd15c);
    let mut mount = Err(String::new());
    let mut pair = Pair::prepare(Databases::default(), None, |dir| {
        mount = Tmpfs::mount(&dir.join("blobs"), "4m");
    })
    .await;
    let _mount = match mount {
        Ok(m) => m,
        Err(why) => return skipped(NAME, why),
    };
    pair.primary.start().await;
    pair.secondary.start().await;
    let rounds = 2;
    let mut times = Vec::new();
    let mut failures_seen = 0;
    for round in 0..rounds {
        let (filler, size) = fill(&pair.secondary.blob_root());
        for i in 0..10u64 {
            let project = pair.projects[rng.random_range(0..2)];
            let channel = format!("c{}", rng.random_range(0..12));
            let size = if i % 3 == 0 { 256 * 1024 } else { 8 * 1024 };
            pair.write(
                project,
                &channel,
                content(project, &channel, round * 100 + i, size),
            )
            .await;
        }
        // Let the secondary hit the full disk.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let failed = pair.registry_failures().await.unwrap_or(0);
            if failed > 0 {
                failures_seen += failed;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = size;
        std::fs::remove_file(&filler).unwrap();
        times.push(pair.converge().await);
    }
    let lost = pair.lost().await;
    let died = pair.death_note();
    outcome(
        NAME,
        rounds as usize,
        format!("disk filled {rounds}×, {failures_seen} failed syncs seen"),
        times,
        lost,
        if let Some(died) = died {
            died
        } else if failures_seen == 0 {
            "the full disk caused no failure (did the fill work?)".into()
        } else {
            String::new()
        },
    )
}

/// `postgres-restart`: both sites on the suite's own PostgreSQL server,
/// restarted while records are written and synced.
async fn postgres_restart_scenario(seed: u64) -> Outcome {
    const NAME: &str = "postgres-restart: both sites' server, mid-run";
    let pg = match tokio::task::spawn_blocking(postgres::OwnPostgres::start)
        .await
        .unwrap()
    {
        Ok(pg) => std::sync::Arc::new(pg),
        Err(why) => {
            if std::env::var("CI").is_ok() {
                panic!("CI must have PostgreSQL ({why})");
            }
            return skipped(NAME, why);
        }
    };
    let databases = Databases {
        primary: Some(pg.database().await),
        secondary: Some(pg.database().await),
        tracking: Some(pg.database().await),
        ..Databases::default()
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9a9a);
    let mut pair = Pair::start(databases, None).await;
    let rounds = 3;
    let mut times = Vec::new();
    for round in 0..rounds {
        let writer = pair.writer();
        let mut burst = Vec::new();
        for i in 0..8u64 {
            let project = pair.projects[rng.random_range(0..2)];
            let channel = format!("c{}", rng.random_range(0..30));
            let size = record_size(&mut rng);
            burst.push((
                project,
                channel.clone(),
                content(project, &channel, round * 100 + i, size),
            ));
        }
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            for (project, channel, body) in burst {
                let sha = writer.write(project, &channel, body).await;
                acked.push(((project, channel), sha));
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
        let server = pg.clone();
        tokio::task::spawn_blocking(move || server.restart())
            .await
            .unwrap()
            .expect("PostgreSQL restarts");
        for (key, sha) in task.await.unwrap() {
            pair.acked.insert(key, sha);
        }
        times.push(pair.converge().await);
    }
    pair.outcome(NAME, rounds as usize, format!("{rounds} restarts"), times)
        .await
}

/// `out-of-order`: on PostgreSQL, event ids come from a sequence and
/// become visible at commit. A trigger on the primary holds every tenth
/// event's transaction open 0.5–1.5 s while six writers write at once, so
/// commits come out of id order and the cursor passes ids committed later;
/// the secondary's consistency pass runs only at its start, so every
/// change must arrive through the event feed (its gap tracking).
async fn out_of_order_scenario(seed: u64) -> Outcome {
    const NAME: &str = "out-of-order: PostgreSQL commits out of id order, no consistency pass";
    let Some(primary_db) = geohost::db::testing::fresh_postgres_url().await else {
        if std::env::var("CI").is_ok() {
            panic!("CI must have PostgreSQL");
        }
        return skipped(NAME, "GEOHOST_TEST_POSTGRES_URL is unset".into());
    };
    let databases = Databases {
        primary: Some(primary_db.clone()),
        secondary: geohost::db::testing::fresh_postgres_url().await,
        tracking: geohost::db::testing::fresh_postgres_url().await,
        extra_config: String::new(),
        workers: String::new(),
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0d0d);
    let mut pair = Pair::prepare(databases, None, |_| {}).await;
    pair.set_secondary_setting(
        "consistency_interval_secs = 2",
        "consistency_interval_secs = 3600",
    );
    let db = geohost::db::Db::connect(&primary_db).await.unwrap();
    db.execute_script(
        "CREATE FUNCTION hold_some_commits() RETURNS trigger AS $$ BEGIN \
           IF NEW.id % 10 = 0 THEN PERFORM pg_sleep(0.5 + random()); END IF; \
           RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER hold_some_commits AFTER INSERT ON geo_event_log \
           FOR EACH ROW EXECUTE FUNCTION hold_some_commits()",
    )
    .await
    .unwrap();
    pair.primary.start().await;
    pair.secondary.start().await;
    let rounds = 3;
    let mut times = Vec::new();
    for round in 0..rounds {
        let mut writers = Vec::new();
        for w in 0..6u64 {
            let writer = pair.writer();
            let mut burst = Vec::new();
            for i in 0..8u64 {
                let project = pair.projects[rng.random_range(0..2)];
                // Each writer its own records: one record's writes are
                // acknowledged in the order they commit.
                let channel = format!("w{w}c{}", rng.random_range(0..7));
                let version = round * 1000 + w * 100 + i;
                burst.push((
                    project,
                    channel.clone(),
                    content(project, &channel, version, 2048),
                ));
            }
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for (project, channel, body) in burst {
                    let sha = writer.write(project, &channel, body).await;
                    acked.push(((project, channel), sha));
                }
                acked
            }));
        }
        for writer in writers {
            for (key, sha) in writer.await.unwrap() {
                pair.acked.insert(key, sha);
            }
        }
        times.push(pair.converge().await);
    }
    let held = db
        .fetch_one(
            "SELECT COUNT(*) AS n FROM geo_event_log WHERE id % 10 = 0",
            &[],
        )
        .await
        .unwrap()
        .i64("n")
        .unwrap();
    db.close().await;
    let faults = format!("{held} transactions held open 0.5–1.5 s, 6 writers at once");
    pair.outcome(NAME, rounds as usize, faults, times).await
}

/// The fixture type of the plugin scenario, and its poisoned projects.
const POISONED_TYPE: &str = "fixture_poisoned_scope";
const POISONED_PROJECTS: [i64; 3] = [13, 14, 15];

/// `plugin-faults`: a second type whose scope decision traps, spins or
/// allocates without bound on some records (`fixture-poisoned-scope`). The
/// secondary must keep serving: every Helm record and every good record of
/// the fixture type converges; the poisoned ones never sync.
async fn plugin_scenario(seed: u64) -> Outcome {
    const NAME: &str = "plugin-faults: scope traps, spins, allocates on some records";
    let component = crate::support::fixture_component_path("poisoned-scope");
    if !component.exists() {
        let why = format!("{} is missing (cargo xtask plugins)", component.display());
        if std::env::var("CI").is_ok() {
            panic!("{why}");
        }
        return skipped(NAME, why);
    }
    let plugins = TempDir::new().unwrap();
    std::fs::copy(
        &component,
        plugins.path().join("fixture-poisoned-scope.wasm"),
    )
    .unwrap();
    let extra_config = format!(
        "[plugins]\ndir = {:?}\ncall_timeout_ms = 300\nmemory_mib = 16\n",
        plugins.path().display().to_string()
    );
    let mut pair = Pair::start(
        Databases {
            extra_config,
            ..Default::default()
        },
        None,
    )
    .await;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9015);
    let writer = pair.writer();
    let mut good: BTreeMap<String, String> = BTreeMap::new();
    let mut poisoned: BTreeSet<String> = BTreeSet::new();
    let rounds = 3;
    let mut times = Vec::new();
    for round in 0..rounds {
        for i in 0..12u64 {
            let project = pair.projects[rng.random_range(0..2)];
            let channel = format!("c{}", rng.random_range(0..20));
            pair.write(
                project,
                &channel,
                content(project, &channel, round * 100 + i, 4096),
            )
            .await;
            let file = format!("f{round}-{i}");
            let bad = rng.random_bool(0.25);
            let owner = if bad {
                POISONED_PROJECTS[rng.random_range(0..3)]
            } else {
                project
            };
            let body = content(owner, &file, round * 100 + i, 2048);
            let sha = writer
                .write_query(
                    POISONED_TYPE,
                    &format!("project_id={owner}&file={file}"),
                    body,
                )
                .await;
            if bad {
                poisoned.insert(file);
            } else {
                good.insert(file, sha);
            }
        }
        pair.other_files = good
            .keys()
            .map(|f| PathBuf::from(POISONED_TYPE).join("files").join(f))
            .chain(
                poisoned
                    .iter()
                    .map(|f| PathBuf::from(POISONED_TYPE).join("files").join(f)),
            )
            .collect();
        let started = Instant::now();
        let result = loop {
            // The poisoned records' blobs are on the primary only: the
            // secondary's root must not hold them.
            let check = match pair.check_poisoned_type(&good, &poisoned).await {
                Ok(()) => pair.check().await.map_err(|e| {
                    e.replace(
                        "unexpected file",
                        "unexpected file (or a poisoned blob missing on the primary)",
                    )
                }),
                Err(e) => Err(e),
            };
            match check {
                Ok(()) => break Ok(started.elapsed()),
                Err(why) if started.elapsed() > CONVERGE_LIMIT => break Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        times.push(result);
    }
    let lost = pair.lost().await;
    let died = pair.death_note();
    outcome(
        NAME,
        rounds as usize,
        format!(
            "{} poisoned records of {}",
            poisoned.len(),
            poisoned.len() + good.len()
        ),
        times,
        lost,
        died.unwrap_or_default(),
    )
}

fn print_table(outcomes: &[Outcome], seed: u64) -> String {
    let mut text = format!(
        "fault suite, seed {seed} (GEOHOST_FAULT_SEED={seed} replays it)\n\n\
         | scenario | iterations | faults injected | converged | time to converge (median / max) | lost |\n\
         |---|--:|---|---|--:|--:|\n"
    );
    for o in outcomes {
        let mut times = o.converge_times.clone();
        times.sort();
        let median = times.get(times.len() / 2).copied();
        let max = times.last().copied();
        let show = |d: Option<Duration>| {
            d.map_or("–".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} |\n",
            o.scenario,
            o.iterations,
            o.faults,
            if o.converged { "yes" } else { "**no**" },
            show(median),
            show(max),
            o.lost
        ));
    }
    for o in outcomes.iter().filter(|o| !o.note.is_empty()) {
        text.push_str(&format!("\n{}: {}", o.scenario, o.note));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_heal_and_nothing_is_lost() {
    let seed = seed();
    eprintln!("fault suite seed: {seed} (GEOHOST_FAULT_SEED={seed} replays it)");
    let only = std::env::var("GEOHOST_FAULT_ONLY").unwrap_or_default();
    let runs = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let kills = std::env::var("GEOHOST_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize)
        .max(1);
    // The scenarios are independent (their own sites, ports, folders and
    // servers) and mostly wait: run them at once, report in this order.
    let maybe =
        |on: bool,
         scenario: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>| async move {
            if on { Some(scenario.await) } else { None }
        };
    let (proxy, sigkill, batch, plugin, disk, pg, order, recovery_sqlite, recovery_pg) = tokio::join!(
        maybe(runs("proxy"), Box::pin(proxy_scenario(seed))),
        maybe(runs("sigkill"), Box::pin(sigkill_scenario(seed, kills))),
        maybe(
            runs("sigkill-batch"),
            Box::pin(sigkill_batch_scenario(seed, 6))
        ),
        maybe(runs("plugin-faults"), Box::pin(plugin_scenario(seed))),
        maybe(runs("disk-full"), Box::pin(disk_full_scenario(seed))),
        maybe(
            runs("postgres-restart"),
            Box::pin(postgres_restart_scenario(seed))
        ),
        maybe(runs("out-of-order"), Box::pin(out_of_order_scenario(seed))),
        maybe(
            runs("claims-recovery-sqlite"),
            Box::pin(recovery::scenario(false))
        ),
        maybe(
            runs("claims-recovery-postgres"),
            Box::pin(recovery::scenario(true))
        ),
    );
    let outcomes: Vec<Outcome> = [
        proxy,
        sigkill,
        batch,
        plugin,
        disk,
        pg,
        order,
        recovery_sqlite,
        recovery_pg,
    ]
    .into_iter()
    .flatten()
    .collect();
    let table = print_table(&outcomes, seed);
    println!("{table}");
    eprintln!("{table}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-suite.md"),
        &table,
    );
    for o in &outcomes {
        assert!(
            o.skipped || (o.converged && o.lost == 0 && o.note.is_empty()),
            "{}: {}",
            o.scenario,
            o.note
        );
    }
}
