//! Hot swap: install, upgrade, roll back and remove type definitions while
//! the site runs.
//!
//! A new component goes live only after it passes every check, in order:
//!
//! 1. it loads: a WebAssembly component exporting a compatible
//!    `geohost:replicable` version and importing nothing else, compiled
//!    (through the compile cache), linked, its identity described and
//!    checked ([`crate::plugin::PluginRuntime::load`]);
//! 2. it is the type it claims to replace (`expect_name`: the admin route,
//!    the CLI's `--type`, or the type a watched file provided before) and
//!    keeps that type's model table ([`validate::compatible`]);
//! 3. its own test vectors pass ([`validate::test_vectors`]), and so do the
//!    running version's, but for the records either declares changed
//!    ([`validate::predecessor_vectors`]);
//! 4. its tables can be created or reconciled from the template;
//! 5. over the live records, every blob path it computes is valid.
//!
//! Then, under the site's swap lock: blobs whose path changes are copied
//! to their new path, the catalog entry is replaced atomically (a batch
//! that took the old `Arc` finishes on the old version), the version is
//! recorded active in `plugin_versions` and its bytes kept for rollback,
//! the old copies of moved blobs are deleted, a secondary re-evaluates the
//! type's scope at once (registries of records that left are removed with
//! their blobs, records that entered get registries), and every registry
//! or state row is stamped with the deciding component's SHA-256.
//!
//! A refusal leaves the running version untouched and is reported: in the
//! returned error, in [`SwapState::failures`] (the plugins API and the
//! site status), in `geohost_plugin_swaps_total{type,outcome="refused"}`
//! and as a warning in the log.

pub mod diff;
pub mod effects;
pub mod validate;
pub mod versions;
pub mod watch;

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::plugin::{CompileOutcome, LoadedType};
use crate::site::Site;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A site's hot-swap state: one swap at a time, and the last refusals.
#[derive(Default)]
pub struct SwapState {
    lock: tokio::sync::Mutex<()>,
    failures: Mutex<BTreeMap<String, Failure>>,
}

/// A refused component, as reported until a later version of the same type
/// (or from the same file) goes live.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// The type it claimed to be, when that is known.
    pub name: Option<String>,
    pub version: Option<String>,
    pub sha256: String,
    pub source: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

impl SwapState {
    /// The current refusals, by type name (or source when the component
    /// has none).
    pub fn failures(&self) -> Vec<Failure> {
        self.failures
            .lock()
            .expect("failures")
            .values()
            .cloned()
            .collect()
    }

    fn fail(&self, key: String, failure: Failure) {
        self.failures.lock().expect("failures").insert(key, failure);
    }

    fn clear(&self, keys: &[&str]) {
        let mut failures = self.failures.lock().expect("failures");
        for key in keys {
            failures.remove(*key);
        }
    }
}

/// Why a swap did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Validation failed: the running version keeps serving.
    #[error("refused: {0}")]
    Refused(String),
    #[error("no type named `{0}` is installed")]
    UnknownType(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::db::DbError> for SwapError {
    fn from(e: crate::db::DbError) -> Self {
        SwapError::Internal(e.to_string())
    }
}

/// What a swap did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A type that was not installed is now.
    Installed,
    /// Another version of an installed type replaced it.
    Upgraded,
    /// The version active before the current one replaced it (`rollback`).
    RolledBack,
    /// The component is the running version already.
    Unchanged,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Upgraded => "upgraded",
            Outcome::RolledBack => "rolled_back",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The report of a swap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapReport {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub wit_version: String,
    pub outcome: Outcome,
    /// The version it replaced.
    pub previous_version: Option<String>,
    pub previous_sha256: Option<String>,
    pub compile: CompileOutcome,
    /// Its own test vectors that passed.
    pub test_vectors: usize,
    /// The replaced version's test vectors it met (those not declared changed).
    pub predecessor_vectors: usize,
    /// Registries created and removed by the immediate scope re-evaluation
    /// (secondary).
    pub registries_created: u64,
    pub registries_removed: u64,
    /// Blobs copied to a new path (and their old copy removed).
    pub blobs_moved: u64,
    /// Whether every batch running on the old version had finished before
    /// the effects were applied (see [`DRAIN_LIMIT`]).
    pub drained: bool,
    /// What could not be applied at once (the periodic passes retry it).
    pub warnings: Vec<String>,
    /// From the start of validation until the new version is live.
    #[serde(serialize_with = "serialize_ms")]
    pub swap_time: Duration,
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// How an install was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The type the component must be (an upgrade of it, or its first install).
    pub expect_name: Option<String>,
    /// Where the component came from (a file, `api`, `rollback`), for the record.
    pub source: String,
}

/// Validates `bytes` and, if every check passes, makes it the live version
/// of its type; see the [module docs](self).
pub async fn install(
    site: &Arc<Site>,
    bytes: Vec<u8>,
    request: Request,
) -> Result<SwapReport, SwapError> {
    let _one_at_a_time = site.swaps.lock.lock().await;
    let started = Instant::now();
    let raw_sha = hex::encode(Sha256::digest(&bytes));
    let runtime = site.runtime.clone();
    let loaded = {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || runtime.load(&bytes))
            .await
            .map_err(|e| SwapError::Internal(e.to_string()))?
    };
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            let key = request
                .expect_name
                .clone()
                .unwrap_or_else(|| request.source.clone());
            let failure = Failure {
                name: request.expect_name.clone(),
                version: None,
                sha256: raw_sha,
                source: request.source.clone(),
                error: error.to_string(),
                at: crate::db::Db::now(),
            };
            return Err(refuse(site, key, failure, None).await);
        }
    };
    let result = validate_and_swap(site, &bytes, loaded.clone(), &request, started).await;
    match result {
        Ok(report) => {
            site.swaps
                .clear(&[report.name.as_str(), request.source.as_str()]);
            crate::metrics::plugin_swap(&report.name, report.outcome.label());
            tracing::info!(
                r#type = %report.name,
                version = %report.version,
                sha256 = %report.sha256,
                outcome = report.outcome.label(),
                previous = ?report.previous_version,
                registries_created = report.registries_created,
                registries_removed = report.registries_removed,
                blobs_moved = report.blobs_moved,
                swap_ms = report.swap_time.as_secs_f64() * 1000.0,
                source = %request.source,
                "type version live"
            );
            Ok(report)
        }
        Err(SwapError::Refused(error)) => {
            let failure = Failure {
                name: Some(loaded.name().to_string()),
                version: Some(loaded.identity().version.clone()),
                sha256: loaded.sha256().to_string(),
                source: request.source.clone(),
                error,
                at: crate::db::Db::now(),
            };
            let key = request
                .expect_name
                .clone()
                .unwrap_or_else(|| loaded.name().to_string());
            Err(refuse(site, key, failure, Some(&loaded)).await)
        }
        Err(other) => Err(other),
    }
}

/// Reports a refusal everywhere and returns it as an error.
async fn refuse(
    site: &Site,
    key: String,
    failure: Failure,
    loaded: Option<&LoadedType>,
) -> SwapError {
    let label = failure.name.clone().unwrap_or_else(|| "unknown".into());
    crate::metrics::plugin_swap(&label, "refused");
    tracing::warn!(
        r#type = %label,
        version = ?failure.version,
        sha256 = %failure.sha256,
        source = %failure.source,
        error = %failure.error,
        "type version refused; the running version keeps serving"
    );
    if let Some(loaded) = loaded {
        let v = versions::NewVersion {
            name: loaded.name(),
            version: &loaded.identity().version,
            sha256: loaded.sha256(),
            wit_version: loaded.wit_version(),
            source: &failure.source,
        };
        if let Err(error) = versions::record_refusal(&site.db, &v, &failure.error).await {
            tracing::warn!(%error, "could not record the refused version");
        }
    }
    let error = SwapError::Refused(failure.error.clone());
    site.swaps.fail(key, failure);
    error
}

async fn validate_and_swap(
    site: &Arc<Site>,
    bytes: &[u8],
    loaded: LoadedType,
    request: &Request,
    started: Instant,
) -> Result<SwapReport, SwapError> {
    let refused = |m: String| SwapError::Refused(m);
    let name = loaded.name().to_string();
    if let Some(expected) = &request.expect_name
        && expected != &name
    {
        return Err(refused(format!(
            "the component is type `{name}`, not `{expected}`"
        )));
    }
    let current = site.catalog.get(&name);
    let mut report = SwapReport {
        name: name.clone(),
        version: loaded.identity().version.clone(),
        sha256: loaded.sha256().to_string(),
        wit_version: loaded.wit_version().to_string(),
        outcome: Outcome::Installed,
        previous_version: current.as_ref().map(|c| c.identity.version.clone()),
        previous_sha256: current.as_ref().map(|c| c.plugin.sha256().to_string()),
        compile: loaded.timings().outcome,
        test_vectors: 0,
        predecessor_vectors: 0,
        registries_created: 0,
        registries_removed: 0,
        blobs_moved: 0,
        drained: true,
        warnings: Vec::new(),
        swap_time: Duration::ZERO,
    };
    if let Some(current) = &current {
        if current.plugin.sha256() == loaded.sha256() {
            report.outcome = Outcome::Unchanged;
            record_active(site, bytes, &loaded, &request.source).await?;
            report.swap_time = started.elapsed();
            return Ok(report);
        }
        validate::compatible(current, &loaded).map_err(refused)?;
        report.outcome = Outcome::Upgraded;
    }
    (report.test_vectors, report.predecessor_vectors) = {
        let loaded = loaded.clone();
        let current = current.clone();
        tokio::task::spawn_blocking(move || {
            let own = validate::test_vectors(&loaded)?;
            let predecessor = match &current {
                Some(current) => validate::predecessor_vectors(current, &loaded)?,
                None => 0,
            };
            Ok::<_, String>((own, predecessor))
        })
        .await
        .map_err(|e| SwapError::Internal(e.to_string()))?
        .map_err(refused)?
    };
    let new = Arc::new(InstalledType::new(loaded.clone()));
    prepare_tables(site, &new)
        .await
        .map_err(|e| refused(format!("its tables cannot be prepared: {e}")))?;

    // Blob paths over the live records.
    let mut moves = Vec::new();
    if let Some(current) = &current {
        let records = effects::live_records(site, current)
            .await
            .map_err(|e| SwapError::Internal(format!("reading the live records: {e}")))?;
        let plan = effects::plan_paths(current, &new, &records)
            .await
            .map_err(|e| refused(format!("computing its blob paths failed: {e}")))?;
        if let Some((id, error)) = plan.invalid.first() {
            return Err(refused(format!(
                "{} of {} live records would get an invalid blob path (record {id}: {error})",
                plan.invalid.len(),
                records.len()
            )));
        }
        moves = plan.moves;
        effects::copy_to_new(site, &name, &moves)
            .await
            .map_err(SwapError::Internal)?;
    }

    // Live.
    drop(current); // held only by running batches from now on (see `drain`)
    let (installed, old) = site.catalog.replace(loaded.clone());
    report.swap_time = started.elapsed();
    record_active(site, bytes, &loaded, &request.source).await?;
    // Batches that took the old version (a cursor round, a consistency
    // pass, a download, a write) finish on it; what they did is then
    // brought in line with the new version below.
    if let Some(old) = old {
        report.drained = drain(old).await;
        if !report.drained {
            report.warnings.push(format!(
                "the old version was still in use after {DRAIN_LIMIT:?}; the periodic passes \
                 correct what it decides from now on"
            ));
        }
    }

    // Blobs written under the old version while the copies were made.
    if !moves.is_empty() {
        match effects::copy_to_new(site, &name, &missing_targets(site, &name, &moves).await).await {
            Ok(_) => {}
            Err(e) => report.warnings.push(e),
        }
        effects::remove_old(site, &name, &moves).await;
        report.blobs_moved = moves.len() as u64;
    }
    if site.role() == Role::Secondary {
        match effects::reevaluate_scope(site, &installed).await {
            Ok(counts) => {
                report.registries_created = counts.created;
                report.registries_removed = counts.deleted;
                crate::metrics::plugin_scope_changes(&name, counts.created, counts.deleted);
            }
            Err(error) => report.warnings.push(format!(
                "scope not re-evaluated now (the periodic pass will): {error}"
            )),
        }
    }
    let (db, table) = effects::decided_table(site, &installed);
    if let Err(error) = effects::stamp(&db, &table, installed.plugin.sha256()).await {
        report
            .warnings
            .push(format!("rows not stamped with the version: {error}"));
    }
    for warning in &report.warnings {
        tracing::warn!(r#type = %name, %warning, "hot swap");
    }
    Ok(report)
}

/// How long a swap waits for batches running on the old version (a
/// cursor round long-polls for up to 10 s).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// Waits until nothing but the caller holds `old` (every batch that took it
/// has finished), at most [`DRAIN_LIMIT`]. Returns whether it drained.
async fn drain(old: Arc<InstalledType>) -> bool {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while Arc::strong_count(&old) > 1 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The moves whose new path has no blob while the old one has.
async fn missing_targets(site: &Site, name: &str, moves: &[effects::Move]) -> Vec<effects::Move> {
    let mut out = Vec::new();
    for m in moves {
        if !site.blobs.exists(name, &m.to).await.unwrap_or(true) {
            out.push(m.clone());
        }
    }
    out
}

async fn record_active(
    site: &Site,
    bytes: &[u8],
    loaded: &LoadedType,
    source: &str,
) -> Result<(), SwapError> {
    versions::keep_component(&site.config.site.data_dir, loaded.sha256(), bytes)
        .map_err(|e| SwapError::Internal(format!("keeping the component for rollback: {e}")))?;
    versions::activate(
        &site.db,
        &versions::NewVersion {
            name: loaded.name(),
            version: &loaded.identity().version,
            sha256: loaded.sha256(),
            wit_version: loaded.wit_version(),
            source,
        },
    )
    .await?;
    Ok(())
}

/// Creates or reconciles a type's tables (and the decided-by column).
pub async fn prepare_tables(site: &Site, it: &InstalledType) -> Result<(), String> {
    let identity = &it.identity;
    match site.role() {
        Role::Primary => {
            crate::db::template::ensure_primary_tables(&site.db, identity)
                .await
                .map_err(|e| e.to_string())?;
            crate::primary::verify::backfill_states(&site.db, it)
                .await
                .map_err(|e| e.to_string())?;
        }
        Role::Secondary => {
            let tracking = site.tracking().map_err(|e| format!("{e:#}"))?;
            crate::db::template::ensure_tracking_tables(tracking, identity)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let (db, table) = effects::decided_table(site, it);
    effects::ensure_decided_by(&db, &table)
        .await
        .map_err(|e| e.to_string())
}

/// Goes back to the version of `name` that was active before the current
/// one (its kept component), validated like any install.
pub async fn rollback(site: &Arc<Site>, name: &str) -> Result<SwapReport, SwapError> {
    // Only the hash: holding the `Arc` would keep the swap from draining.
    let current = site
        .catalog
        .get(name)
        .ok_or_else(|| SwapError::UnknownType(name.into()))?
        .plugin
        .sha256()
        .to_string();
    let history = versions::of_type(&site.db, name).await?;
    let previous = history
        .iter()
        .filter(|v| v.sha256 != current && v.activated_at.is_some())
        .max_by_key(|v| (v.activated_at, v.id))
        .ok_or_else(|| {
            SwapError::Conflict(format!("`{name}` has no earlier version to roll back to"))
        })?;
    let bytes = versions::kept_component(&site.config.site.data_dir, &previous.sha256).ok_or_else(
        || {
            SwapError::Conflict(format!(
                "the component of `{name}` {} ({}) is no longer kept",
                previous.version, previous.sha256
            ))
        },
    )?;
    let mut report = install(
        site,
        bytes,
        Request {
            expect_name: Some(name.into()),
            source: format!("rollback to {}", previous.version),
        },
    )
    .await?;
    if report.outcome == Outcome::Upgraded {
        report.outcome = Outcome::RolledBack;
    }
    Ok(report)
}

/// What removing a type did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Stops replicating type `name`: it leaves the catalog (workers stop
/// calling it from their next batch), every version is marked inactive.
/// Its tables, records, registries and blobs are kept, so installing it
/// again resumes where it stopped. Removing a type that still has records
/// (primary) or registries (secondary) needs `force`.
pub async fn remove(site: &Arc<Site>, name: &str, force: bool) -> Result<Removal, SwapError> {
    let _one_at_a_time = site.swaps.lock.lock().await;
    let current = site
        .catalog
        .get(name)
        .ok_or_else(|| SwapError::UnknownType(name.into()))?;
    if !force {
        let (db, table) = match site.role() {
            Role::Primary => (site.db.clone(), current.identity.table.name.clone()),
            Role::Secondary => effects::decided_table(site, &current),
        };
        let rows = db
            .fetch_one(
                &format!("SELECT COUNT(*) AS n FROM {}", crate::db::ident(&table)),
                &[],
            )
            .await?
            .i64("n")?;
        if rows > 0 {
            return Err(SwapError::Conflict(format!(
                "`{name}` has {rows} rows in `{table}`; removing it stops their replication \
                 (the data is kept): pass force to remove it anyway"
            )));
        }
    }
    site.catalog.remove(name);
    versions::deactivate(&site.db, name).await?;
    crate::metrics::plugin_swap(name, "removed");
    tracing::warn!(r#type = name, version = %current.identity.version, "type removed; its data is kept");
    Ok(Removal {
        name: name.into(),
        version: current.identity.version.clone(),
        sha256: current.plugin.sha256().into(),
    })
}

/// After the shipped and folder types are loaded at startup: the recorded
/// state wins. A type whose recorded active version is another kept
/// component runs that version (an upgrade or rollback survives a
/// restart); a type whose versions are all inactive was removed and stays
/// out; any other loaded type has its version recorded active.
pub async fn restore(site: &Arc<Site>) -> anyhow::Result<()> {
    let recorded = versions::list(&site.db).await?;
    for it in site.catalog.all() {
        let name = it.name().to_string();
        let rows: Vec<_> = recorded.iter().filter(|v| v.name == name).collect();
        let active = rows.iter().find(|v| v.active);
        match active {
            None if !rows.is_empty() && rows.iter().any(|v| v.activated_at.is_some()) => {
                site.catalog.remove(&name);
                tracing::info!(r#type = %name, "type stays removed (no active version recorded)");
            }
            Some(v) if v.sha256 != it.plugin.sha256() => {
                match versions::kept_component(&site.config.site.data_dir, &v.sha256) {
                    Some(bytes) => {
                        let runtime = site.runtime.clone();
                        let loaded =
                            tokio::task::spawn_blocking(move || runtime.load(&bytes)).await?;
                        match loaded {
                            Ok(loaded) if loaded.name() == name => {
                                tracing::info!(r#type = %name, version = %loaded.identity().version, "running the recorded active version");
                                let (installed, _) = site.catalog.replace(loaded);
                                prepare_tables(site, &installed)
                                    .await
                                    .map_err(anyhow::Error::msg)?;
                            }
                            Ok(_) | Err(_) => {
                                tracing::warn!(r#type = %name, sha256 = %v.sha256, "the recorded active version does not load; running the one found at startup");
                                record_loaded(site, &it, "startup").await?;
                            }
                        }
                    }
                    None => record_loaded(site, &it, "startup").await?,
                }
            }
            Some(_) => {}
            None => record_loaded(site, &it, "startup").await?,
        }
    }
    for it in site.catalog.all() {
        let (db, table) = effects::decided_table(site, &it);
        effects::ensure_decided_by(&db, &table).await?;
    }
    Ok(())
}

async fn record_loaded(site: &Site, it: &InstalledType, source: &str) -> anyhow::Result<()> {
    versions::activate(
        &site.db,
        &versions::NewVersion {
            name: it.name(),
            version: &it.identity.version,
            sha256: it.plugin.sha256(),
            wit_version: it.plugin.wit_version(),
            source,
        },
    )
    .await?;
    Ok(())
}

/// One row of the plugins listing: the running version and its history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TypeListing {
    pub name: String,
    pub installed: bool,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub versions: Vec<versions::VersionRow>,
}

/// Every type this site knows: installed ones and recorded ones.
pub async fn list(site: &Site) -> Result<(Vec<TypeListing>, Vec<Failure>), SwapError> {
    let recorded = versions::list(&site.db).await?;
    let mut by_name: BTreeMap<String, TypeListing> = BTreeMap::new();
    for it in site.catalog.all() {
        by_name.insert(
            it.name().to_string(),
            TypeListing {
                name: it.name().to_string(),
                installed: true,
                version: Some(it.identity.version.clone()),
                sha256: Some(it.plugin.sha256().to_string()),
                versions: Vec::new(),
            },
        );
    }
    for v in recorded {
        by_name
            .entry(v.name.clone())
            .or_insert_with(|| TypeListing {
                name: v.name.clone(),
                installed: false,
                version: None,
                sha256: None,
                versions: Vec::new(),
            })
            .versions
            .push(v);
    }
    Ok((by_name.into_values().collect(), site.swaps.failures()))
}
