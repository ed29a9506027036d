//! A site's configuration: a TOML file, then `GEOHOST_…` environment
//! overrides (figment), with every path defaulting under `data_dir`.
//!
//! ```toml
//! [site]
//! name = "secondary-1"
//! role = "secondary"            # or "primary"
//! listen = "127.0.0.1:3001"
//! url = "http://127.0.0.1:3001"
//! data_dir = "data/secondary-1"
//!
//! [primary]                     # secondaries only: how to reach the primary
//! url = "http://127.0.0.1:3000"
//! access_key = "…"
//! secret_access_key = "…"
//! ```
//!
//! Environment overrides use `__` between section and key, for example
//! `GEOHOST_DATABASE__URL=postgres://…` or `GEOHOST_SITE__LISTEN=0.0.0.0:3000`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether a site owns the records or copies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: SiteSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub tracking_database: DatabaseSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub plugins: PluginSection,
    #[serde(default)]
    pub primary: Option<PrimarySection>,
    #[serde(default)]
    pub secrets: SecretsSection,
    #[serde(default)]
    pub workers: WorkerSection,
    #[serde(default)]
    pub deletions: DeletionSection,
    #[serde(default)]
    pub monitoring: MonitoringSection,
}

/// Who may read the health probes (`/-/health`, `/-/liveness`,
/// `/-/readiness`) without a token: GitLab's `monitoring.ip_whitelist`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    /// Client networks or addresses; loopback by default. An admin token
    /// opens the probes from anywhere.
    #[serde(default)]
    pub ip_whitelist: crate::allow_list::IpAllowList,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: String,
    pub role: Role,
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL other sites and operators reach this site at.
    #[serde(default)]
    pub url: Option<String>,
    /// Folder for everything the site keeps on disk by default.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite:PATH` or `postgres://…`; defaults to a SQLite file in `data_dir`.
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

/// Where a site keeps its blobs: a local folder (default) or an
/// S3-compatible bucket (see `docs/deployment.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `local` (default) or `s3`.
    #[serde(default)]
    pub kind: StorageKind,
    /// Blob root on local disk; defaults to `data_dir/blobs` (`local` only).
    pub path: Option<PathBuf>,
    /// The bucket (`s3` only, required).
    pub bucket: Option<String>,
    /// The S3 endpoint, for S3-compatible services (MinIO, Ceph, moto);
    /// AWS's own when absent.
    pub endpoint: Option<String>,
    /// The region; `us-east-1` when absent.
    pub region: Option<String>,
    /// Access key; `AWS_ACCESS_KEY_ID` when absent.
    pub access_key_id: Option<String>,
    /// Secret key; `AWS_SECRET_ACCESS_KEY` when absent. Prefer
    /// `GEOHOST_STORAGE__SECRET_ACCESS_KEY` to writing it in the file.
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (default false).
    #[serde(default)]
    pub allow_http: bool,
    /// Key prefix inside the bucket, so several sites can share one bucket.
    pub prefix: Option<String>,
    /// The largest blob ingest accepts (bytes); a larger body is refused
    /// with 413 and nothing is kept. Default 1 GiB.
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// A temporary object (an upload or download in progress) untouched
    /// for this long is a crashed writer's leftover and is removed, in
    /// seconds (default one hour; see `storage::sweeper`).
    #[serde(default = "default_temp_max_age_secs")]
    pub temp_max_age_secs: u64,
    /// How a group of writes on local disk is made durable (`local` only;
    /// default `syncfs`, see [`SyncMethod`]).
    pub sync_method: Option<SyncMethod>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            kind: StorageKind::default(),
            path: None,
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            prefix: None,
            max_blob_bytes: default_max_blob_bytes(),
            temp_max_age_secs: default_temp_max_age_secs(),
            sync_method: None,
        }
    }
}

fn default_max_blob_bytes() -> u64 {
    1 << 30
}

fn default_temp_max_age_secs() -> u64 {
    3600
}

/// The backend of a site's blob storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A folder on local (or locally mounted) disk.
    #[default]
    Local,
    /// An S3-compatible bucket (GitLab's object storage, `file_store = 2`).
    S3,
}

/// How a group of writes to a local blob root (a secondary's batch of
/// downloads, the primary's group commit) is made durable before it is
/// committed. A single write always syncs its own file and folders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// One `syncfs(2)` of the blob root's file system for the whole group
    /// (Linux; elsewhere as `fsync`). It also writes out whatever else is
    /// waiting on that file system: give the blob root a file system of
    /// its own, or choose `fsync` (PostgreSQL's `recovery_init_sync_method`
    /// makes the same trade).
    #[default]
    Syncfs,
    /// `fsync` each file and each folder of the group, side by side.
    Fsync,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// Extra type components (`*.wasm`) loaded beside the shipped ones.
    pub dir: Option<PathBuf>,
    /// The shipped types this site installs, by file stem (for example
    /// `["helm-metadata-cache"]`); unset installs every shipped type, `[]` none.
    #[serde(default)]
    pub builtin: Option<Vec<String>>,
    /// Compiled-component cache; defaults to `data_dir/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Budget of one plugin call (a batch), in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// How often `dir` is polled for new or changed components (hot swap).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
}

fn default_watch_interval_ms() -> u64 {
    1000
}

impl Default for PluginSection {
    fn default() -> Self {
        PluginSection {
            dir: None,
            builtin: None,
            cache_dir: None,
            call_timeout_ms: default_call_timeout_ms(),
            memory_mib: default_memory_mib(),
            watch_interval_ms: default_watch_interval_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimarySection {
    /// The primary's URL (its internal URL, in GitLab's terms).
    pub url: String,
    pub access_key: String,
    pub secret_access_key: String,
    /// PEM file of one or more CA certificates trusted for the primary's
    /// HTTPS, besides the system's roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// 32-byte key (64 hex characters) sealing secrets at rest; defaults to
    /// `data_dir/secrets.key`, created on first start.
    pub key_file: Option<PathBuf>,
}

/// Background work tuning. Defaults follow GitLab where it has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// A `started` sync older than this fails ("Sync timed out"), in seconds (GitLab: 8 h).
    #[serde(default = "default_stuck_secs")]
    pub sync_timeout_secs: u64,
    /// A `started` verification older than this fails, in seconds (GitLab: 8 h).
    #[serde(default = "default_stuck_secs")]
    pub verification_timeout_secs: u64,
    /// Pause between scheduler rounds when idle, in milliseconds.
    #[serde(default = "default_idle_ms")]
    pub idle_poll_ms: u64,
    /// Registry consistency pass interval, in seconds (GitLab: every minute).
    #[serde(default = "default_consistency_secs")]
    pub consistency_interval_secs: u64,
    /// Rows claimed per verification batch.
    #[serde(default = "default_verification_batch")]
    pub verification_batch: i64,
    /// Whether this process runs the background workers (API-only processes set false).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often a secondary computes its status and reports it to the
    /// primary, in seconds (GitLab's `Geo::MetricsUpdateWorker`: every minute).
    #[serde(default = "default_status_secs")]
    pub status_interval_secs: u64,
    /// Pause between two batches of 1,000 rows of a bulk resync or
    /// reverification, in milliseconds, so that sync and verification
    /// writes get their turn.
    #[serde(default = "default_bulk_pause_ms")]
    pub bulk_update_pause_ms: u64,
    /// How long a claimed sync or verification, and a singleton duty's
    /// lease, stay with a worker process without renewal, in seconds
    /// (30). A process renews its syncs, verification batches and duties
    /// every third of it; the claims of a process that died are released
    /// as soon as its death is known (at startup on SQLite; on PostgreSQL
    /// when its process is gone from this host or its heartbeat expires)
    /// and taken over at the latest once the lease passes
    /// (`host/src/leases.rs`).
    #[serde(default = "default_claim_lease_secs")]
    pub claim_lease_secs: u64,
    /// The longest wait before a failed sync or verification is retried, in
    /// seconds; unset: GitLab's schedule (`n⁴ + 15 + rand(30)·(n+1)` s,
    /// capped at one hour). For small sites and tests that must see
    /// failures heal within seconds. Per process.
    #[serde(default)]
    pub retry_delay_max_secs: Option<u64>,
    /// A secondary fetches blobs of at most this many bytes through batch
    /// retrieves, many in one request (`docs/batch-retrieve.md`), and larger
    /// ones one per request. 0: every blob one per request (the per-blob
    /// path). At most 16 MiB.
    #[serde(default = "default_sync_batch_max_blob_bytes")]
    pub sync_batch_max_blob_bytes: u64,
    /// Rows a secondary claims for one batch retrieve (at most 1,000).
    #[serde(default = "default_sync_batch_size")]
    pub sync_batch_size: i64,
    /// Batch retrieves a secondary runs at once. The blobs too large for a
    /// batch are downloaded `files_max_capacity` at a time (GitLab's
    /// setting, on the primary).
    #[serde(default = "default_sync_batches_in_flight")]
    pub sync_batches_in_flight: usize,
}

/// Guarded deletions on a secondary (`storage/quarantine.rs`,
/// `secondary/guard.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionSection {
    /// How long a removed blob stays in the quarantine before it is purged,
    /// in seconds (a day by default).
    #[serde(default = "default_quarantine_secs")]
    pub quarantine_secs: u64,
    /// The share of a type's registries (0 to 1) that one consistency pass
    /// or swap may remove without an operator's confirmation; a pass that
    /// would remove more pauses its removals (10% by default).
    #[serde(default = "default_max_removal_share")]
    pub max_removal_share: f64,
}

impl Default for DeletionSection {
    fn default() -> Self {
        DeletionSection {
            quarantine_secs: default_quarantine_secs(),
            max_removal_share: default_max_removal_share(),
        }
    }
}

fn default_quarantine_secs() -> u64 {
    24 * 3600
}
fn default_max_removal_share() -> f64 {
    0.10
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            sync_timeout_secs: default_stuck_secs(),
            verification_timeout_secs: default_stuck_secs(),
            idle_poll_ms: default_idle_ms(),
            consistency_interval_secs: default_consistency_secs(),
            verification_batch: default_verification_batch(),
            enabled: true,
            status_interval_secs: default_status_secs(),
            bulk_update_pause_ms: default_bulk_pause_ms(),
            claim_lease_secs: default_claim_lease_secs(),
            retry_delay_max_secs: None,
            sync_batch_max_blob_bytes: default_sync_batch_max_blob_bytes(),
            sync_batch_size: default_sync_batch_size(),
            sync_batches_in_flight: default_sync_batches_in_flight(),
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:3000".parse().expect("valid address")
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_call_timeout_ms() -> u64 {
    2_000
}
fn default_memory_mib() -> usize {
    64
}
fn default_stuck_secs() -> u64 {
    8 * 3600
}
fn default_idle_ms() -> u64 {
    500
}
fn default_consistency_secs() -> u64 {
    60
}
fn default_verification_batch() -> i64 {
    100
}
fn default_status_secs() -> u64 {
    60
}
fn default_bulk_pause_ms() -> u64 {
    100
}
/// 30 s: a claim left by a process that died without its death being
/// seen (another host's worker) is taken over within half a minute; a
/// live process renews every 10 s, a verification batch included.
fn default_claim_lease_secs() -> u64 {
    30
}
fn default_sync_batch_max_blob_bytes() -> u64 {
    crate::blob_batch::DEFAULT_MAX_PART_BYTES
}
fn default_sync_batch_size() -> i64 {
    200
}
fn default_sync_batches_in_flight() -> usize {
    4
}
fn default_true() -> bool {
    true
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (if given) and the `GEOHOST_…` environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        use figment::Figment;
        use figment::providers::{Env, Format, Toml};
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "configuration file {} not found",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            // Only `GEOHOST_SECTION__KEY` variables are settings; others such as
            // GEOHOST_CONFIG or GEOHOST_LOG_FORMAT belong to the command line.
            .merge(
                Env::prefixed("GEOHOST_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.check()?;
        Ok(config)
    }

    /// Parses TOML text (tests, the demo).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.site.name.trim().is_empty() {
            return Err(ConfigError::Invalid("site.name is empty".into()));
        }
        const DAY: i128 = 86_400;
        const YEAR: i128 = 365 * DAY;
        let w = &self.workers;
        let n = |v: u64| Some(i128::from(v));
        let bounds: [(&str, Option<i128>, i128, i128); 13] = [
            ("workers.sync_timeout_secs", n(w.sync_timeout_secs), 1, YEAR),
            (
                "workers.verification_timeout_secs",
                n(w.verification_timeout_secs),
                1,
                YEAR,
            ),
            ("workers.idle_poll_ms", n(w.idle_poll_ms), 1, 60_000),
            (
                "workers.consistency_interval_secs",
                n(w.consistency_interval_secs),
                1,
                DAY,
            ),
            (
                "workers.status_interval_secs",
                n(w.status_interval_secs),
                1,
                DAY,
            ),
            (
                "workers.bulk_update_pause_ms",
                n(w.bulk_update_pause_ms),
                0,
                60_000,
            ),
            ("workers.claim_lease_secs", n(w.claim_lease_secs), 1, DAY),
            (
                "workers.retry_delay_max_secs",
                w.retry_delay_max_secs.map(i128::from),
                1,
                7 * DAY,
            ),
            (
                "storage.temp_max_age_secs",
                n(self.storage.temp_max_age_secs),
                1,
                YEAR,
            ),
            (
                "workers.verification_batch",
                Some(w.verification_batch.into()),
                1,
                10_000,
            ),
            (
                "workers.sync_batch_max_blob_bytes",
                n(w.sync_batch_max_blob_bytes),
                0,
                crate::blob_batch::MAX_PART_BYTES_LIMIT.into(),
            ),
            (
                "workers.sync_batch_size",
                Some(w.sync_batch_size.into()),
                1,
                crate::blob_batch::MAX_BATCH_IDS as i128,
            ),
            (
                "workers.sync_batches_in_flight",
                Some(w.sync_batches_in_flight as i128),
                1,
                64,
            ),
        ];
        for (name, value, min, max) in bounds {
            if let Some(value) = value
                && !(min..=max).contains(&value)
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be between {min} and {max}, not {value}"
                )));
            }
        }
        if self.site.role == Role::Secondary && self.primary.is_none() {
            return Err(ConfigError::Invalid(
                "a secondary needs a [primary] section (url, access_key, secret_access_key): \
                 register it on the primary with `geohost site add`"
                    .into(),
            ));
        }
        let share = self.deletions.max_removal_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::Invalid(format!(
                "deletions.max_removal_share is a share of a type's registries, from 0 to 1; got {share}"
            )));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        self.site
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.site.listen))
    }

    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.site.data_dir.join("main.sqlite")))
    }

    pub fn tracking_database_url(&self) -> String {
        self.tracking_database
            .url
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.site.data_dir.join("tracking.sqlite")))
    }

    pub fn blob_root(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.site.data_dir.join("blobs"))
    }

    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.plugins
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.site.data_dir.join("plugin-cache"))
    }

    pub fn secrets_key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.site.data_dir.join("secrets.key"))
    }

    /// `workers.claim_lease_secs` as a duration (at least one second).
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.workers.claim_lease_secs.max(1))
    }

    pub fn plugin_limits(&self) -> crate::plugin::Limits {
        crate::plugin::Limits {
            call_timeout: Duration::from_millis(self.plugins.call_timeout_ms),
            memory_bytes: self.plugins.memory_mib << 20,
            ..crate::plugin::Limits::default()
        }
    }
}

/// `sqlite:` URL of a file path.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secondary_needs_its_primary() {
        let err = Config::from_toml("[site]\nname='s'\nrole='secondary'\n").unwrap_err();
        assert!(err.to_string().contains("[primary]"), "{err}");
    }

    #[test]
    fn paths_default_under_data_dir() {
        let c = Config::from_toml("[site]\nname='p'\nrole='primary'\ndata_dir='/tmp/x'\n").unwrap();
        assert_eq!(c.database_url(), "sqlite:/tmp/x/main.sqlite");
        assert_eq!(c.blob_root(), PathBuf::from("/tmp/x/blobs"));
        assert_eq!(c.url(), "http://127.0.0.1:3000");
    }

    #[test]
    fn worker_settings_have_bounds() {
        let with = |workers: &str| {
            Config::from_toml(&format!(
                "[site]\nname = 'p'\nrole = 'primary'\n[workers]\n{workers}\n"
            ))
        };
        assert!(with("sync_timeout_secs = 3").is_ok());
        let error = with("sync_timeout_secs = 9999999999999")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("workers.sync_timeout_secs must be between 1 and 31536000"),
            "{error}"
        );
        let error = with("verification_batch = -1").unwrap_err().to_string();
        assert!(error.contains("not -1"), "{error}");
        assert!(with("claim_lease_secs = 0").is_err());
    }

    #[test]
    fn the_sync_method_is_syncfs_or_fsync() {
        let with = |storage: &str| {
            Config::from_toml(&format!(
                "[site]\nname = 'p'\nrole = 'primary'\n[storage]\n{storage}\n"
            ))
        };
        assert_eq!(with("").unwrap().storage.sync_method, None);
        let fsync = with("sync_method = 'fsync'").unwrap();
        assert_eq!(fsync.storage.sync_method, Some(SyncMethod::Fsync));
        let error = with("sync_method = 'never'").unwrap_err().to_string();
        assert!(
            error.contains("syncfs") && error.contains("fsync"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("[site]\nname='p'\nrole='primary'\nlisten_on='x'\n").is_err());
    }
}
