//! Real sites for end-to-end tests: a primary and secondaries on loopback
//! ports, on SQLite or PostgreSQL, in temporary folders.

use geohost::config::Config;
use geohost::db::testing::{fresh_postgres_url, fresh_sqlite_url};
use geohost::primary::{ingest, sites, topology};
use geohost::runtime;
use geohost::site::Site;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const HELM: &str = "packages_helm_metadata_cache";
pub const NPM: &str = "packages_npm_metadata_cache";

/// Which database a test's sites use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends to run on: SQLite always; PostgreSQL when the test
/// environment provides one (always in CI).
pub fn backends() -> Vec<Backend> {
    let mut list = vec![Backend::Sqlite];
    if std::env::var("GEOHOST_TEST_POSTGRES_URL").is_ok() {
        list.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok() {
        panic!("CI must set GEOHOST_TEST_POSTGRES_URL (cargo xtask test does)");
    } else {
        eprintln!("note: GEOHOST_TEST_POSTGRES_URL is unset, testing on SQLite only");
    }
    list
}

async fn database_url(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => fresh_sqlite_url(),
        Backend::Postgres => fresh_postgres_url()
            .await
            .expect("a PostgreSQL test database"),
    }
}

/// A running site.
pub struct TestSite {
    pub site: Arc<Site>,
    pub url: String,
    pub dir: PathBuf,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<TempDir>,
    config: String,
    listen: std::net::SocketAddr,
}

impl TestSite {
    /// Stops the site (as a crash would, workers and server at once).
    pub async fn stop(&mut self) {
        self.site.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self.site.db.close().await;
        if let Some(t) = &self.site.tracking {
            t.close().await;
        }
    }

    /// Starts the same site again (same databases, storage and port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = Config::from_toml(&self.config).expect("valid config");
        let site = runtime::open(config).await.expect("site reopens");
        let listener = bind_again(self.listen).await;
        self.task = Some(tokio::spawn(runtime::serve(site.clone(), listener)));
        self.site = site;
    }

    /// Writes this site's configuration to a file (for the CLI).
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.join("site.toml");
        std::fs::write(&path, &self.config).expect("writing the configuration");
        path
    }

    /// The blob of a record on this site, if present.
    pub fn blob_file(&self, path: &str) -> PathBuf {
        self.type_blob_file(HELM, path)
    }

    /// The blob of a record of type `name` on this site, if present.
    pub fn type_blob_file(&self, name: &str, path: &str) -> PathBuf {
        self.dir.join("blobs").join(name).join(path)
    }
}

async fn bind_again(address: std::net::SocketAddr) -> tokio::net::TcpListener {
    let started = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(l) => return l,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("rebinding {address}: {e}"),
        }
    }
}

async fn start(config_text: String, dir: PathBuf, tmp: Option<TempDir>) -> TestSite {
    let config = Config::from_toml(&config_text).expect("valid config");
    let listen = config.site.listen;
    let site = runtime::open(config).await.expect("site opens");
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    let listen = listener.local_addr().unwrap();
    // Rewrite the config with the real port, for restarts.
    let config_text = config_text.replace("127.0.0.1:0", &listen.to_string());
    let task = Some(tokio::spawn(runtime::serve(site.clone(), listener)));
    TestSite {
        site,
        url: format!("http://{listen}"),
        dir,
        task,
        _tmp: tmp,
        config: config_text,
        listen,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a primary.
pub async fn primary(backend: Backend) -> TestSite {
    primary_with(backend, "idle_poll_ms = 50\n").await
}

/// Starts a primary with these `[workers]` settings.
pub async fn primary_with(backend: Backend, workers: &str) -> TestSite {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let config = format!(
        "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:{port}\"\nurl = \"http://127.0.0.1:{port}\"\n\
         data_dir = {:?}\n[database]\nurl = {:?}\n[workers]\n{workers}",
        dir.display().to_string(),
        database_url(backend).await,
    );
    start(config, dir, Some(tmp)).await
}

/// Registers and starts a secondary of `primary` with these settings.
pub async fn secondary(backend: Backend, primary: &TestSite, new: sites::NewSite) -> TestSite {
    secondary_with(
        backend,
        primary,
        new,
        "idle_poll_ms = 50\nconsistency_interval_secs = 2\n",
    )
    .await
}

/// Registers and starts a secondary of `primary` with these settings and
/// these `[workers]` settings.
pub async fn secondary_with(
    backend: Backend,
    primary: &TestSite,
    new: sites::NewSite,
    workers: &str,
) -> TestSite {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (_, credentials) = sites::add_secondary(
        &primary.site,
        sites::NewSite {
            url: url.clone(),
            ..new
        },
    )
    .await
    .expect("secondary registered");
    let config = format!(
        "[site]\nname = \"secondary\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\nurl = \"{url}\"\n\
         data_dir = {:?}\n[database]\nurl = {:?}\n[tracking_database]\nurl = {:?}\n\
         [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
         [workers]\n{workers}",
        dir.display().to_string(),
        database_url(backend).await,
        database_url(backend).await,
        primary.url,
        credentials.access_key,
        credentials.secret_access_key,
    );
    start(config, dir, Some(tmp)).await
}

/// A Helm index body.
pub fn index_yaml(project: i64, channel: &str, version: u32) -> String {
    format!(
        "---\napiVersion: v1\nentries:\n  chart-{project}:\n  - name: chart-{project}\n    version: 1.0.{version}\n    \
         created: '2026-11-28T10:00:00.000000000Z'\n    urls:\n    - charts/chart-{project}-1.0.{version}.tgz\n\
         generated: '2026-11-28T10:00:00.000000000Z'\nserverInfo:\n  contextPath: \"/api/v4/projects/{project}/packages/helm\"\n# {channel}\n"
    )
}

/// Writes a Helm metadata cache on the primary.
pub async fn put_helm(
    primary: &TestSite,
    project: i64,
    channel: &str,
    body: &str,
) -> ingest::WriteOutcome {
    let mut columns = serde_json::Map::new();
    columns.insert("project_id".into(), project.into());
    columns.insert("channel".into(), channel.into());
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
        body.to_string(),
    ))]);
    ingest::upsert(&primary.site, HELM, &columns, stream)
        .await
        .expect("write succeeds")
}

/// An npm metadata document body (what GitLab caches for `GET /<name>`).
pub fn npm_metadata(package_name: &str, version: u32) -> String {
    serde_json::json!({
        "name": package_name,
        "dist-tags": {"latest": format!("1.0.{version}")},
        "versions": {format!("1.0.{version}"): {
            "name": package_name,
            "version": format!("1.0.{version}"),
            "dist": {"tarball": format!("http://example.invalid/{package_name}/-/pkg-1.0.{version}.tgz")},
        }},
    })
    .to_string()
}

/// Writes an npm metadata cache on the primary.
pub async fn put_npm(
    primary: &TestSite,
    project: i64,
    package_name: &str,
    body: &str,
) -> ingest::WriteOutcome {
    let mut columns = serde_json::Map::new();
    columns.insert("project_id".into(), project.into());
    columns.insert("package_name".into(), package_name.into());
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
        body.to_string(),
    ))]);
    ingest::upsert(&primary.site, NPM, &columns, stream)
        .await
        .expect("write succeeds")
}

/// Record id → (state, verification state) of every registry row of type
/// `name` in the tracking database `db`.
pub async fn registry_states_in(
    db: &geohost::db::Db,
    name: &str,
) -> Result<std::collections::BTreeMap<i64, (i16, i16)>, geohost::db::DbError> {
    use geohost::db::ident;
    let rows = db
        .fetch_all(
            &format!(
                "SELECT {} AS id, state, verification_state FROM {}",
                ident(&format!("{name}_id")),
                ident(&format!("{name}_registry"))
            ),
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.i64("id")?,
                (r.i16("state")?, r.i16("verification_state")?),
            ))
        })
        .collect()
}

/// A group tree: root → (a → (a1, a2), b); returns (root, a, a1, a2, b).
pub async fn group_tree(primary: &TestSite) -> [i64; 5] {
    let db = &primary.site.db;
    let root = topology::create_namespace(db, "root", "root", None)
        .await
        .unwrap()
        .id;
    let a = topology::create_namespace(db, "a", "a", Some(root))
        .await
        .unwrap()
        .id;
    let a1 = topology::create_namespace(db, "a1", "a1", Some(a))
        .await
        .unwrap()
        .id;
    let a2 = topology::create_namespace(db, "a2", "a2", Some(a))
        .await
        .unwrap()
        .id;
    let b = topology::create_namespace(db, "b", "b", Some(root))
        .await
        .unwrap()
        .id;
    [root, a, a1, a2, b]
}

pub async fn project(primary: &TestSite, namespace: i64, name: &str) -> i64 {
    topology::create_project(&primary.site.db, name, name, namespace, "default")
        .await
        .unwrap()
        .id
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// A secondary running as a separate `geohost serve` process, so a test can
/// SIGKILL it.
pub struct SecondaryProcess {
    pub dir: PathBuf,
    config_path: PathBuf,
    tracking_url: String,
    child: Option<std::process::Child>,
    _tmp: TempDir,
}

impl SecondaryProcess {
    pub async fn start(backend: Backend, primary: &TestSite) -> SecondaryProcess {
        Self::start_with(backend, primary, "").await
    }

    /// Starts one with `extra` appended to its configuration (after its
    /// `[workers]` section: more worker settings, or other sections).
    pub async fn start_with(backend: Backend, primary: &TestSite, extra: &str) -> SecondaryProcess {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let (_, credentials) = sites::add_secondary(
            &primary.site,
            sites::NewSite {
                name: format!("killable-{port}"),
                url: url.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("secondary registered");
        let tracking_url = database_url(backend).await;
        let config = format!(
            "[site]\nname = \"killable\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\nurl = \"{url}\"\n\
             data_dir = {:?}\n[database]\nurl = {:?}\n[tracking_database]\nurl = {:?}\n\
             [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
             [workers]\nidle_poll_ms = 50\nconsistency_interval_secs = 2\nsync_timeout_secs = 4\nverification_timeout_secs = 4\n{extra}",
            dir.display().to_string(),
            database_url(backend).await,
            tracking_url,
            primary.url,
            credentials.access_key,
            credentials.secret_access_key,
        );
        let config_path = dir.join("secondary.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut process = SecondaryProcess {
            dir,
            config_path,
            tracking_url,
            child: None,
            _tmp: tmp,
        };
        process.restart();
        process
    }

    /// Starts the process (again).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("geohost starts");
        self.child = Some(child);
    }

    /// Its tracking database.
    pub fn tracking_url(&self) -> &str {
        &self.tracking_url
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (state, verification state) of every registry row.
    pub async fn registry_states(&self, primary: &TestSite) -> Vec<(i16, i16)> {
        let it = primary.site.installed(HELM).unwrap();
        let Ok(db) = geohost::db::Db::connect_with(&self.tracking_url, 2).await else {
            return vec![];
        };
        let rows = db
            .fetch_all(
                &format!(
                    "SELECT state, verification_state FROM {}",
                    geohost::db::ident(&it.identity.registry_table())
                ),
                &[],
            )
            .await
            .unwrap_or_default();
        db.close().await;
        rows.iter()
            .map(|r| {
                (
                    r.i16("state").unwrap(),
                    r.i16("verification_state").unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for SecondaryProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
