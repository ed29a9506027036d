//! Opening, starting and serving a site: the top floor, which the CLI, the
//! demo and the tests call. It connects and migrates the databases, builds
//! the [`Site`] context, brings the types up through the one lifecycle
//! ([`crate::swap::startup`]), then serves the HTTP API and runs the role's
//! workers until shutdown.

use crate::catalog::Catalog;
use crate::config::{Config, Role};
use crate::db::{Db, migrate};
use crate::plugin::PluginRuntime;
use crate::secondary::Secondary;
use crate::site::Site;
use crate::storage::BlobStore;
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Whether a site opened for a one-shot command gets its blob storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blobs {
    /// Open it (serving, and commands that read or write blobs).
    Open,
    /// Leave it closed: a command that touches no blob runs without the
    /// storage's credentials or reachability; a blob operation fails with
    /// an error saying so.
    Closed,
}

/// Opens a site to serve it ([`serve`]): databases (connected and
/// migrated), blob storage, secrets, the plugin runtime, a secondary's
/// state; then its types through the lifecycle, upgrades found while it was
/// down included.
pub async fn open(config: Config) -> anyhow::Result<Arc<Site>> {
    open_site(config, Blobs::Open, true).await
}

/// Opens a site for a one-shot command: as [`open`], but its types come up
/// at their recorded versions only (a component the site has never seen
/// waits for the serving site), and its blob storage only if asked.
pub async fn open_for_command(config: Config, blobs: Blobs) -> anyhow::Result<Arc<Site>> {
    open_site(config, blobs, false).await
}

async fn open_site(config: Config, blobs: Blobs, serving: bool) -> anyhow::Result<Arc<Site>> {
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
    let blobs = match blobs {
        Blobs::Open => {
            BlobStore::open(&config.storage, &config.blob_root()).context("opening blob storage")?
        }
        Blobs::Closed => BlobStore::closed(&config.storage),
    };
    let secrets = crate::auth::secret_box::SecretBox::load_or_create(&config.secrets_key_file())
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
        events: Default::default(),
        shutdown: CancellationToken::new(),
        swaps: Default::default(),
        role_state: Default::default(),
        auth_cache: Default::default(),
        write_group: Default::default(),
    });
    if serving && site.role() == Role::Secondary {
        // What a swap or a diff asks for this site's scope and its
        // primary's records: the secondary whose workers `serve` runs.
        site.role_state.set(Secondary::new(site.clone())?);
    }
    crate::swap::startup(&site, serving)
        .await
        .context("bringing up the replicable types")?;
    if site.role() == Role::Primary {
        crate::primary::sites::ensure_self(&site)
            .await
            .context("registering this primary")?;
    }
    Ok(site)
}

/// Serves the HTTP API on `listener` and runs the role's background
/// duties (each under the site's supervisor, `supervisor.rs`), until
/// [`Site::shutdown`] is cancelled.
pub async fn serve(site: Arc<Site>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    if site.role() == Role::Secondary && site.role_state.get::<Secondary>().is_none() {
        site.role_state.set(Secondary::new(site.clone())?);
    }
    let mut duties = crate::supervisor::Supervisor::new(site.duties.clone(), site.shutdown.clone());
    // SQLite takes one worker process; PostgreSQL any number (leases.rs).
    let single_worker = if site.config.workers.enabled {
        let (db, url) = match site.role() {
            Role::Primary => (&site.db, site.config.database_url()),
            Role::Secondary => (site.tracking()?, site.config.tracking_database_url()),
        };
        crate::leases::SingleProcessLock::for_db(db, &url)?
    } else {
        None
    };
    if site.config.workers.enabled {
        if site.role() == Role::Primary {
            // Writes a crash cut short are settled before any new one:
            // all of them when this process has the database alone.
            let older_than = if single_worker.is_some() {
                std::time::Duration::ZERO
            } else {
                site.temp_max_age()
            };
            crate::primary::journal::recover(&site.db, &site.blobs, older_than)
                .await
                .context("settling the blob writes a crash left")?;
        }
        if single_worker.is_some() {
            // Only this process can use the database: any claim in it was
            // left by a process that died. Given back before the workers
            // start, so they are taken again at once, not after the lease.
            let types = site.catalog.all();
            let released = match site.role() {
                Role::Primary => crate::primary::verify::release_claims(&site.db, &types).await,
                Role::Secondary => {
                    crate::secondary::release_claims(site.tracking()?, &types, None).await
                }
            }
            .context("releasing the claims a dead process left")?;
            if released > 0 {
                tracing::warn!(released, "claims a dead process left released");
            }
        }
        let (blobs, max_age, shutdown) = (
            site.blobs.clone(),
            site.temp_max_age(),
            site.shutdown.clone(),
        );
        let quarantine = std::time::Duration::from_secs(site.config.deletions.quarantine_secs);
        duties.spawn("temp-sweeper", move || {
            crate::storage::sweeper::run(blobs.clone(), max_age, quarantine, shutdown.clone())
        });
        match site.role() {
            Role::Primary => {
                let s = site.clone();
                duties.spawn("verification", move || {
                    crate::primary::verify::run(s.clone())
                });
                let s = site.clone();
                duties.spawn("write-journal", move || {
                    crate::primary::journal::run(s.clone())
                });
            }
            Role::Secondary => {
                let secondary = site
                    .role_state
                    .get::<Secondary>()
                    .context("the secondary is set up above")?;
                let s = secondary.clone();
                duties.spawn("status-report", move || {
                    crate::status::report::run(s.clone())
                });
                crate::secondary::start(secondary, &mut duties)?;
            }
        }
    }
    if site.config.plugins.dir.is_some() {
        let s = site.clone();
        duties.spawn("plugin-watch", move || crate::swap::watch::run(s.clone()));
    }
    tracing::info!(site = site.name(), role = ?site.role(), %address, "serving");
    let router = crate::api::router(site.clone());
    let served = crate::api::serve(listener, router, site.shutdown.clone()).await;
    site.shutdown.cancel();
    duties.join().await;
    drop(single_worker);
    site.role_state.clear();
    served.map_err(Into::into)
}

/// Binds the configured address and serves (see [`serve`]).
pub async fn run(site: Arc<Site>) -> anyhow::Result<()> {
    let listen = site.config.site.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    serve(site, listener).await
}
