//! Hot swap: install, upgrade, roll back and remove type definitions while
//! the site runs.
//!
//! Every version goes live through [`lifecycle::activate`] (validate
//! everything, then prepare tables, move blobs, replace the catalog entry,
//! record the version); see [`lifecycle`] for the order and what a refusal
//! reports. Here: the reports and errors, rollback, removal and listing.

pub mod diff;
pub mod effects;
pub(crate) mod lifecycle;
pub(crate) mod owners;
pub(crate) mod validate;
pub mod versions;
pub mod watch;

pub use lifecycle::{activate, startup};

use crate::catalog::{Failure, InstalledType};
use crate::config::Role;
use crate::plugin::CompileOutcome;
use crate::site::Site;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub(crate) fn label(&self) -> &'static str {
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
    /// Registry removals the re-evaluation held for an operator's
    /// confirmation (more than `deletions.max_removal_share`).
    pub registries_held: u64,
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

/// How long a swap waits for batches running on the old version (a
/// cursor round long-polls for up to 10 s).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// Waits until nothing but the caller holds `old` (every batch that took it
/// has finished), at most [`DRAIN_LIMIT`]. Returns whether it drained.
pub(crate) async fn drain(old: Arc<InstalledType>) -> bool {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while Arc::strong_count(&old) > 1 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
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
    let mut report = activate(
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
    let _one_at_a_time = site.swaps.one_at_a_time().await;
    let current = site
        .catalog
        .get(name)
        .ok_or_else(|| SwapError::UnknownType(name.into()))?;
    if !force {
        let (db, table) = match site.role() {
            Role::Primary => (site.db.clone(), current.identity.table.name.clone()),
            Role::Secondary => effects::decided_table(site, &current)?,
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
