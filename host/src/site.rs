//! A running site: its configuration, databases, blob store, installed types
//! and background workers, in one shared context.
//!
//! [`Site::open`] connects and migrates the databases, loads the shipped
//! types and any extra components from the plugins folder, and creates each
//! type's tables from the template. [`Site::run`] serves the HTTP API and
//! runs the role's workers until shutdown.

use crate::auth::secret_box::SecretBox;
use crate::catalog::{Catalog, InstalledType};
use crate::config::{Config, Role};
use crate::db::{Db, migrate, template};
use crate::plugin::{LoadedType, PluginRuntime, builtin};
use crate::primary::events::EventSignal;
use crate::storage::{BlobStore, StoreKind};
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything a site's handlers and workers share.
pub struct Site {
    pub config: Config,
    /// The site's own database (records, events, sites, tokens).
    pub db: Db,
    /// A secondary's tracking database (registries, event cursor).
    pub tracking: Option<Db>,
    pub blobs: BlobStore,
    pub catalog: Arc<Catalog>,
    pub runtime: PluginRuntime,
    pub secrets: SecretBox,
    /// Wakes long-polling event readers (primary).
    pub events: EventSignal,
    /// Cancelled when the site stops.
    pub shutdown: CancellationToken,
    /// Hot swap: one at a time, and the refusals to report.
    pub swaps: crate::swap::SwapState,
    /// How the background duties are doing (`health.rs`).
    pub duties: crate::health::DutyBoard,
}

impl Site {
    /// Opens a site from its configuration.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Site>> {
        std::fs::create_dir_all(&config.site.data_dir)
            .with_context(|| format!("creating {}", config.site.data_dir.display()))?;
        let max = config.database.max_connections.unwrap_or(16);
        // Its commits are acknowledged to writers: durable when they return.
        let db = Db::connect_durable(&config.database_url(), max)
            .await
            .context("opening the site database")?;
        migrate::main(&db)
            .await
            .context("migrating the site database")?;
        let tracking = match config.site.role {
            Role::Secondary => {
                let max = config.tracking_database.max_connections.unwrap_or(16);
                let tracking = Db::connect_with(&config.tracking_database_url(), max)
                    .await
                    .context("opening the tracking database")?;
                migrate::tracking(&tracking)
                    .await
                    .context("migrating the tracking database")?;
                Some(tracking)
            }
            Role::Primary => None,
        };
        let blobs = BlobStore::open(&config.storage, &config.blob_root())
            .context("opening blob storage")?;
        let secrets = SecretBox::load_or_create(&config.secrets_key_file())
            .context("loading the secrets key")?;
        if let Some(secs) = config.workers.retry_delay_max_secs {
            crate::states::set_retry_delay_max(Some(std::time::Duration::from_secs(secs)));
        }
        let runtime = PluginRuntime::new(config.plugin_limits(), Some(config.plugin_cache_dir()))
            .context("starting the plugin runtime")?;
        let duties = crate::health::DutyBoard::new(&config.site.name);
        let site = Arc::new(Site {
            duties,
            config,
            db,
            tracking,
            blobs,
            catalog: Arc::new(Catalog::new()),
            runtime,
            secrets,
            events: EventSignal::default(),
            shutdown: CancellationToken::new(),
            swaps: Default::default(),
        });
        site.load_types().await?;
        crate::swap::restore(&site)
            .await
            .context("restoring the recorded type versions")?;
        if site.role() == Role::Primary {
            crate::primary::sites::ensure_self(&site)
                .await
                .context("registering this primary")?;
        }
        Ok(site)
    }

    pub fn role(&self) -> Role {
        self.config.site.role
    }

    pub fn name(&self) -> &str {
        &self.config.site.name
    }

    /// The tracking database; only secondaries have one.
    pub fn tracking(&self) -> anyhow::Result<&Db> {
        self.tracking
            .as_ref()
            .context("this site has no tracking database (it is not a secondary)")
    }

    /// GitLab's `file_store` for blobs this site writes: 1 local, 2 object storage.
    pub fn file_store(&self) -> i64 {
        match self.blobs.kind() {
            StoreKind::Local => 1,
            StoreKind::ObjectStorage => 2,
        }
    }

    /// Loads the shipped types (those `plugins.builtin` names, or all), then
    /// the plugins folder's components, and
    /// creates each type's tables.
    async fn load_types(&self) -> anyhow::Result<()> {
        let mut sources: Vec<(String, Vec<u8>)> =
            builtin::selected(self.config.plugins.builtin.as_deref())
                .map_err(anyhow::Error::msg)
                .context("plugins.builtin")?
                .into_iter()
                .map(|b| (format!("shipped {}", b.file), b.bytes.to_vec()))
                .collect();
        if let Some(dir) = &self.config.plugins.dir {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("reading plugins folder {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm"))
                .collect();
            files.sort();
            for path in files {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                sources.push((path.display().to_string(), bytes));
            }
        }
        let shipped = builtin::BUILTIN.len();
        for (index, (source, bytes)) in sources.into_iter().enumerate() {
            let runtime = self.runtime.clone();
            let bytes = Arc::new(bytes);
            let component = bytes.clone();
            let loaded = tokio::task::spawn_blocking(move || runtime.load(&component)).await?;
            let loaded: LoadedType = match loaded {
                Ok(loaded) => loaded,
                // A bad component in the watched folder must not stop the
                // site (it may have been dropped there at runtime and
                // refused): it is reported, as a refused hot swap is.
                Err(error) if index >= shipped => {
                    tracing::warn!(%source, %error, "component in the plugins folder not loaded");
                    continue;
                }
                Err(error) => return Err(error).with_context(|| format!("loading {source}")),
            };
            // A folder component replaces a shipped type of the same name
            // (an upgrade dropped there); `swap::restore` then applies the
            // recorded active version.
            let installed = if index >= shipped {
                self.catalog.replace(loaded).0
            } else {
                self.catalog
                    .install(loaded)
                    .with_context(|| format!("installing {source}"))?
            };
            self.prepare_tables(&installed)
                .await
                .with_context(|| format!("creating tables of {source}"))?;
            // Kept so that a later upgrade can be rolled back to it.
            crate::swap::versions::keep_component(
                &self.config.site.data_dir,
                installed.plugin.sha256(),
                &bytes,
            )
            .with_context(|| format!("keeping {source} for rollback"))?;
            tracing::info!(
                r#type = installed.name(),
                version = %installed.identity.version,
                sha256 = installed.plugin.sha256(),
                compile = ?installed.plugin.timings().outcome,
                "type installed"
            );
        }
        Ok(())
    }

    async fn prepare_tables(&self, installed: &InstalledType) -> anyhow::Result<()> {
        let identity = &installed.identity;
        match self.role() {
            Role::Primary => {
                template::ensure_primary_tables(&self.db, identity).await?;
                crate::primary::verify::backfill_states(&self.db, installed).await?;
            }
            Role::Secondary => template::ensure_tracking_tables(self.tracking()?, identity).await?,
        }
        Ok(())
    }

    /// The installed type called `name`.
    pub fn installed(&self, name: &str) -> Option<Arc<InstalledType>> {
        self.catalog.get(name)
    }
}

impl Site {
    /// Serves the HTTP API on `listener` and runs the role's background
    /// workers, until [`Site::shutdown`] is cancelled.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        let mut duties =
            crate::supervisor::Supervisor::new(self.duties.clone(), self.shutdown.clone());
        // SQLite takes one worker process; PostgreSQL any number (leases.rs).
        let single_worker = if self.config.workers.enabled {
            let (db, url) = match self.role() {
                Role::Primary => (&self.db, self.config.database_url()),
                Role::Secondary => (self.tracking()?, self.config.tracking_database_url()),
            };
            crate::leases::SingleProcessLock::for_db(db, &url)?
        } else {
            None
        };
        if self.config.workers.enabled {
            if self.role() == Role::Primary {
                // Writes a crash cut short are settled before any new one:
                // all of them when this process has the database alone.
                let older_than = if single_worker.is_some() {
                    std::time::Duration::ZERO
                } else {
                    self.temp_max_age()
                };
                crate::primary::journal::recover(&self.db, &self.blobs, older_than)
                    .await
                    .context("settling the blob writes a crash left")?;
            }
            let (blobs, max_age, shutdown) = (
                self.blobs.clone(),
                self.temp_max_age(),
                self.shutdown.clone(),
            );
            duties.spawn("temp-sweeper", move || {
                crate::storage::sweeper::run(blobs.clone(), max_age, shutdown.clone())
            });
            match self.role() {
                Role::Primary => {
                    let site = self.clone();
                    duties.spawn("verification", move || {
                        crate::primary::verify::run(site.clone())
                    });
                    let site = self.clone();
                    duties.spawn("write-journal", move || {
                        crate::primary::journal::run(site.clone())
                    });
                }
                Role::Secondary => crate::secondary::start(self.clone(), &mut duties)?,
            }
        }
        if self.config.plugins.dir.is_some() {
            let site = self.clone();
            duties.spawn("plugin-watch", move || {
                crate::swap::watch::run(site.clone())
            });
        }
        tracing::info!(site = self.name(), role = ?self.role(), %address, "serving");
        let router = crate::api::router(self.clone());
        let served = crate::api::serve(listener, router, self.shutdown.clone()).await;
        self.shutdown.cancel();
        duties.join().await;
        drop(single_worker);
        served.map_err(Into::into)
    }

    /// How long a temporary object (or a write's journal) may stay
    /// untouched before it counts as a crash's leftover.
    pub fn temp_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.storage.temp_max_age_secs)
    }

    /// Binds the configured address and serves (see [`Site::serve`]).
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let listen = self.config.site.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        self.serve(listener).await
    }
}
