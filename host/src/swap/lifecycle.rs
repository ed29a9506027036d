//! One home for a type's lifecycle: [`activate`] takes a component and where
//! it came from, and does, in order:
//!
//! 1. **load**: compile (through the cache), link, describe, check the
//!    identity ([`crate::plugin::PluginRuntime::load`]), on a blocking thread;
//! 2. **validate everything, changing nothing** ([`check`]): the type it
//!    must be, its model table kept, its tables' names free and its model
//!    table reconcilable with the identity (a dry run of the template), the
//!    test vectors it carries and those of the running version it replaces
//!    (but for the records either declares `changed`), and over every live
//!    record a valid blob path that no other record has;
//! 3. **prepare its tables** from the templates, which carry every column
//!    the host uses;
//! 4. **go live**: move blobs whose path changes, replace the catalog entry,
//!    record the version (`plugin_versions`) and keep its bytes for
//!    rollback; then re-evaluate a secondary's scope and stamp the rows the
//!    version decides.
//!
//! Startup ([`startup`]), the watched folder, the admin API (and the CLI,
//! which calls it), upgrade, rollback and restore all go through
//! [`activate`]; nothing else loads a component into the catalog or
//! prepares a type's tables. A refusal at step 1 or 2 leaves tables, blobs
//! and rows exactly as they were, and is reported: in the returned error,
//! in the site's [`SwapState`](crate::catalog::SwapState) (plugins API and
//! status), in `geohost_plugin_swaps_total{outcome="refused"}`, in the log
//! and in `plugin_versions.last_validation_error`.

use super::effects;
use super::{Outcome, Request, SwapError, SwapReport, drain, validate, versions};
use crate::catalog::{Failure, FolderTypes, InstalledType};
use crate::config::Role;
use crate::plugin::{LoadError, LoadedType, builtin};
use crate::site::Site;
use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a swap keeps trying to end the moves of records that are
/// changing (their copies match neither each other nor a checksum yet).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Validates `bytes` and, if every check passes, makes it the live version
/// of its type; see the [module docs](self).
pub async fn activate(
    site: &Arc<Site>,
    bytes: Vec<u8>,
    request: Request,
) -> Result<SwapReport, SwapError> {
    let _one_at_a_time = site.swaps.one_at_a_time().await;
    let loaded = load(site, bytes.clone()).await?;
    activate_loaded(site, &bytes, loaded, &request, Phase::Running).await
}

/// When a version goes live: while the site starts, or once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// [`startup`]: a secondary's workers have not started, and their first
    /// consistency pass follows.
    Startup,
    /// The watched folder, the admin API, a rollback: the site's workers
    /// run, and its event cursor skipped the events of a type it did not
    /// have.
    Running,
}

/// Loads a component on a blocking thread.
async fn load(site: &Site, bytes: Vec<u8>) -> Result<Result<LoadedType, LoadError>, SwapError> {
    let runtime = site.runtime.clone();
    tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| SwapError::Internal(e.to_string()))
}

/// [`activate`] once the component is loaded (or refused by the loader);
/// the caller holds the swap lock.
async fn activate_loaded(
    site: &Arc<Site>,
    bytes: &[u8],
    loaded: Result<LoadedType, LoadError>,
    request: &Request,
    phase: Phase,
) -> Result<SwapReport, SwapError> {
    let started = Instant::now();
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
                sha256: hex::encode(Sha256::digest(bytes)),
                source: request.source.clone(),
                error: error.to_string(),
                at: crate::db::Db::now(),
            };
            return Err(refuse(site, key, failure, None).await);
        }
    };
    let checked = check(site, &loaded, request).await;
    let result = match checked {
        Ok(plan) => go_live(site, bytes, &loaded, plan, request, phase, started).await,
        Err(error) => Err(error),
    };
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
        let v = versions::NewVersion::of(loaded, &failure.source);
        if let Err(error) = versions::record_refusal(&site.db, &v, &failure.error).await {
            tracing::warn!(%error, "could not record the refused version");
        }
    }
    let error = SwapError::Refused(failure.error.clone());
    site.swaps.fail(key, failure);
    error
}

/// What validation decided: what goes live and what it moves.
struct Plan {
    outcome: Outcome,
    previous_version: Option<String>,
    previous_sha256: Option<String>,
    test_vectors: usize,
    predecessor_vectors: usize,
    /// The component is the recorded active version of its type (a
    /// restart, a site coming back to what it ran, or a version another
    /// process of the site recorded): it was checked over the live records
    /// when it went live, and every record written since got its path from
    /// it. Whether it also decided this site's rows depends on the
    /// [`Phase`] (see [`go_live`]).
    restored: bool,
}

/// Step 2: every check, before anything is changed.
async fn check(
    site: &Arc<Site>,
    loaded: &LoadedType,
    request: &Request,
) -> Result<Plan, SwapError> {
    let refused = SwapError::Refused;
    let name = loaded.name();
    if let Some(expected) = &request.expect_name
        && expected != name
    {
        return Err(refused(format!(
            "the component is type `{name}`, not `{expected}`"
        )));
    }
    let current = site.catalog.get(name);
    let mut plan = Plan {
        outcome: Outcome::Installed,
        previous_version: current.as_ref().map(|c| c.identity.version.clone()),
        previous_sha256: current.as_ref().map(|c| c.plugin.sha256().to_string()),
        test_vectors: 0,
        predecessor_vectors: 0,
        restored: false,
    };
    if let Some(current) = &current {
        if current.plugin.sha256() == loaded.sha256() {
            plan.outcome = Outcome::Unchanged;
            return Ok(plan);
        }
        validate::compatible(current, loaded).map_err(refused)?;
        plan.outcome = Outcome::Upgraded;
    }
    validate::tables(site, loaded.identity())
        .await
        .map_err(refused)?;
    (plan.test_vectors, plan.predecessor_vectors) = {
        let loaded = loaded.clone();
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
    // A version recorded active was checked over the live records when it
    // went live, and every record written since got its path from it.
    plan.restored = versions::active_sha256(&site.db, name)
        .await?
        .is_some_and(|sha| sha == loaded.sha256());
    Ok(plan)
}

/// Steps 3 and 4, once [`check`] passed.
async fn go_live(
    site: &Arc<Site>,
    bytes: &[u8],
    loaded: &LoadedType,
    plan: Plan,
    request: &Request,
    phase: Phase,
    started: Instant,
) -> Result<SwapReport, SwapError> {
    let name = loaded.name().to_string();
    let mut report = SwapReport {
        name: name.clone(),
        version: loaded.identity().version.clone(),
        sha256: loaded.sha256().to_string(),
        wit_version: loaded.wit_version().to_string(),
        outcome: plan.outcome,
        previous_version: plan.previous_version,
        previous_sha256: plan.previous_sha256,
        compile: loaded.timings().outcome,
        test_vectors: plan.test_vectors,
        predecessor_vectors: plan.predecessor_vectors,
        registries_created: 0,
        registries_removed: 0,
        registries_held: 0,
        blobs_moved: 0,
        drained: true,
        warnings: Vec::new(),
        swap_time: Duration::ZERO,
    };
    if report.outcome == Outcome::Unchanged {
        record_active(site, bytes, loaded, &request.source).await?;
        report.swap_time = started.elapsed();
        return Ok(report);
    }
    let new = InstalledType::new(loaded.clone());
    // On a primary, writes to the type wait from here until its blobs have
    // moved: the paths are planned over every record as it stands, and a
    // record written afterwards gets the new version's path.
    let gate = match (site.role(), &report.outcome) {
        (Role::Primary, Outcome::Upgraded) => Some(site.catalog.moving(&name).await),
        _ => None,
    };
    // The last check, still changing nothing: every live record's new
    // path (a version recorded active was checked when it went live, and
    // every record written since got its path from it).
    // The running version's calls (not its `Arc`, which would keep the
    // swap from draining), for the records a secondary downloads meanwhile.
    let old_version = site
        .catalog
        .get(&name)
        .map(|current| InstalledType::new(current.plugin.clone()));
    let (mut moves, planned_up_to) = if plan.restored {
        (Vec::new(), 0)
    } else {
        let paths = effects::check_paths(site, old_version.as_ref(), &new).await?;
        (paths.moves, paths.last_id)
    };
    prepare_tables(site, &new)
        .await
        .map_err(|e| SwapError::Refused(format!("its tables cannot be prepared: {e}")))?;
    super::owners::record(&site.db, &new.identity).await?;
    effects::copy_to_new(site, &name, &moves)
        .await
        .map_err(SwapError::Internal)?;

    // Live.
    let (installed, old) = site.catalog.replace(loaded.clone());
    report.swap_time = started.elapsed();
    record_active(site, bytes, loaded, &request.source).await?;
    if site.role() == Role::Primary {
        if !moves.is_empty() {
            effects::record_paths(&site.db, &installed, &moves).await?;
        }
        if let Err(error) = effects::backfill_blob_paths(&site.db, &installed).await {
            report
                .warnings
                .push(format!("blob paths of older records not recorded: {error}"));
        }
    }
    // Batches that took the old version (a cursor round, a consistency
    // pass, a download) finish on it; what they did is then brought in
    // line with the new version below.
    if let Some(old) = old {
        report.drained = drain(old).await;
        if !report.drained {
            report.warnings.push(format!(
                "the old version was still in use after {:?}; the periodic passes \
                 correct what it decides from now on",
                super::DRAIN_LIMIT
            ));
        }
    }
    // A secondary's downloads went on: records created since the plan may
    // have landed at their old path.
    if let (Role::Secondary, Some(old_version)) = (site.role(), &old_version)
        && !plan.restored
    {
        match effects::late_moves(site, old_version, &installed, planned_up_to).await {
            Ok(late) => moves.extend(late),
            Err(error) => report.warnings.push(format!(
                "records created during the swap not checked: {error}"
            )),
        }
    }
    // An old copy goes only once its new copy is checked; a record that is
    // changing is tried again for a while.
    let settle = Instant::now() + SETTLE_LIMIT;
    loop {
        let (moved, deferred, warnings) = effects::finish_moves(site, &installed, &moves).await;
        report.blobs_moved += moved;
        report.warnings.extend(warnings);
        if deferred.is_empty() || Instant::now() >= settle {
            if !deferred.is_empty() {
                report.warnings.push(format!(
                    "{} moved blobs keep their old copy: their new copy does not match the \
                     record's checksum yet (records {:?}…)",
                    deferred.len(),
                    deferred.iter().take(5).map(|m| m.id).collect::<Vec<_>>()
                ));
            }
            break;
        }
        moves = deferred;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(gate);
    // A restart that brings back the recorded version: it decided the rows
    // when it went live, and a secondary's first consistency pass follows.
    // Not so for a version recorded by another process (a one-shot command
    // such as `geohost status`, which brings the types up as it opens the
    // site, or another worker) that enters a running site's catalog: this
    // site's cursor skipped the type's events until now, so a secondary
    // re-evaluates its scope (which registers those records) all the same.
    if plan.restored && phase == Phase::Startup {
        return Ok(report);
    }
    if site.role() == Role::Secondary {
        match effects::reevaluate_scope(site, &installed).await {
            Ok(None) => {}
            Ok(Some(counts)) => {
                report.registries_created = counts.created;
                report.registries_removed = counts.deleted;
                report.registries_held = counts.held;
                crate::metrics::plugin_scope_changes(&name, counts.created, counts.deleted);
                if counts.held > 0 {
                    report.warnings.push(format!(
                        "{} registry removals are held: more than the allowed share of the \
                         type's registries would go; nothing is removed until an operator \
                         confirms (`geohost registry confirm-removals {name}`)",
                        counts.held
                    ));
                }
            }
            Err(error) => report.warnings.push(format!(
                "scope not re-evaluated now (the periodic pass will): {error}"
            )),
        }
    }
    if let Err(error) = effects::stamp(site, &installed).await {
        report
            .warnings
            .push(format!("rows not stamped with the version: {error}"));
    }
    for warning in &report.warnings {
        tracing::warn!(r#type = %name, %warning, "hot swap");
    }
    Ok(report)
}

async fn record_active(
    site: &Site,
    bytes: &[u8],
    loaded: &LoadedType,
    source: &str,
) -> Result<(), SwapError> {
    versions::keep_component(&site.config.site.data_dir, loaded.sha256(), bytes)
        .map_err(|e| SwapError::Internal(format!("keeping the component for rollback: {e}")))?;
    versions::activate(&site.db, &versions::NewVersion::of(loaded, source)).await?;
    Ok(())
}

/// Step 3: creates or reconciles a type's tables from the templates (the
/// model and `<name>_states` tables on a primary, `<name>_registry` on a
/// secondary), and gives a primary's records their missing state rows.
async fn prepare_tables(site: &Site, it: &InstalledType) -> Result<(), String> {
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
    Ok(())
}

/// Activates a component found at startup; `false` if it was refused (and
/// reported). Another failure (a database error, the primary unreachable)
/// stops the site when `essential` (the type's base version), and is
/// logged otherwise (an upgrade, tried again at the next start or when its
/// file changes).
async fn activate_at_startup(
    site: &Arc<Site>,
    name: &str,
    found: Found,
    essential: bool,
) -> anyhow::Result<bool> {
    let request = Request {
        expect_name: Some(name.to_string()),
        source: found.source.clone(),
    };
    match activate_loaded(site, &found.bytes, found.loaded, &request, Phase::Startup).await {
        Ok(report) => {
            tracing::info!(
                r#type = %report.name,
                version = %report.version,
                sha256 = %report.sha256,
                compile = ?report.compile,
                source = %request.source,
                "type installed"
            );
            Ok(true)
        }
        Err(SwapError::Refused(_)) => Ok(false),
        Err(error) if essential => {
            Err(error).with_context(|| format!("activating {}", request.source))
        }
        Err(error) => {
            tracing::warn!(r#type = name, source = %request.source, %error, "upgrade not activated at startup; it is tried again at the next start or when its file changes");
            Ok(false)
        }
    }
}

/// A component found at startup.
struct Found {
    source: String,
    bytes: Vec<u8>,
    loaded: Result<LoadedType, LoadError>,
}

/// Brings a site's types up at startup, through [`activate`] like any
/// other change. The recorded state wins: a type with a recorded active
/// version runs that version (found among the shipped and folder
/// components, or its kept component in `data_dir/plugins-versions/`), so
/// an upgrade, a rollback or an API install survives a restart; a type
/// whose versions are all inactive was removed and stays out; a type never
/// recorded starts from its shipped component (or its first folder one).
/// Then each component of the type this site has never seen (no recorded
/// version has its hash: dropped into the folder, or shipped by a new
/// build, while the site was down) is activated as an upgrade, with every
/// check. A component that fails to load or validate is reported as refused
/// and the site starts without it (a shipped one that does not load is a
/// broken build and stops the site). With `upgrades` off (a one-shot
/// command), the never-seen components wait for the serving site. What
/// startup found in the plugins folder is kept for the folder watcher.
pub async fn startup(site: &Arc<Site>, upgrades: bool) -> anyhow::Result<()> {
    let _one_at_a_time = site.swaps.one_at_a_time().await;
    let shipped = builtin::selected(site.config.plugins.builtin.as_deref())
        .map_err(anyhow::Error::msg)
        .context("plugins.builtin")?;
    let mut found = Vec::new();
    for b in shipped {
        let bytes = b.bytes.to_vec();
        let loaded = load(site, bytes.clone()).await?;
        if let Err(error) = &loaded {
            anyhow::bail!("loading shipped {}: {error}", b.file);
        }
        found.push(Found {
            source: format!("shipped {}", b.file),
            bytes,
            loaded,
        });
    }
    let mut folder = FolderTypes::new();
    if let Some(dir) = site.config.plugins.dir.clone() {
        let files = tokio::task::spawn_blocking(move || super::watch::read_components(&dir))
            .await?
            .context("reading the plugins folder")?;
        for (path, bytes) in files {
            let loaded = load(site, bytes.clone()).await?;
            let name = loaded.as_ref().ok().map(|l| l.name().to_string());
            folder.insert(path.clone(), (hex::encode(Sha256::digest(&bytes)), name));
            found.push(Found {
                source: path.display().to_string(),
                bytes,
                loaded,
            });
        }
    }

    let recorded = versions::list(&site.db).await?;
    // The candidates of each type, the preferred last (folder after shipped).
    let mut by_name: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for f in found {
        match &f.loaded {
            Ok(loaded) => by_name
                .entry(loaded.name().to_string())
                .or_default()
                .push(f),
            // Refused before its type is known: reported, never installed.
            Err(_) => {
                let request = Request {
                    expect_name: None,
                    source: f.source.clone(),
                };
                let _ = activate_loaded(site, &f.bytes, f.loaded, &request, Phase::Startup).await;
            }
        }
    }
    for v in &recorded {
        by_name.entry(v.name.clone()).or_default();
    }

    for (name, mut candidates) in by_name {
        let rows: Vec<_> = recorded.iter().filter(|v| v.name == name).collect();
        if rows.iter().all(|v| !v.active) && rows.iter().any(|v| v.activated_at.is_some()) {
            tracing::info!(r#type = %name, "type stays removed (no active version recorded)");
            continue;
        }
        let sha_of = |f: &Found| f.loaded.as_ref().map(|l| l.sha256().to_string()).ok();
        // The base: the recorded active version (found at startup, or its
        // kept component); for a type never recorded, its first component
        // (shipped before folder).
        let base = match rows.iter().find(|v| v.active) {
            Some(v) => match candidates
                .iter()
                .position(|f| sha_of(f).as_deref() == Some(v.sha256.as_str()))
            {
                Some(i) => Some(candidates.remove(i)),
                None => match versions::kept_component(&site.config.site.data_dir, &v.sha256) {
                    Some(bytes) => Some(Found {
                        source: format!("kept version {}", v.version),
                        loaded: load(site, bytes.clone()).await?,
                        bytes,
                    }),
                    None => {
                        tracing::warn!(r#type = %name, sha256 = %v.sha256, "the recorded active version is no longer kept");
                        None
                    }
                },
            },
            None if candidates.is_empty() => None,
            None => Some(candidates.remove(0)),
        };
        // Then every component this site has never seen (an upgrade dropped
        // into the folder, or shipped with a new build while it was down),
        // as an upgrade: validated over the live data like any other.
        let never_seen =
            |f: &Found| sha_of(f).is_some_and(|sha| !rows.iter().any(|v| v.sha256 == sha));
        let (mut new, known): (Vec<Found>, Vec<Found>) =
            candidates.into_iter().partition(|f| never_seen(f));
        if !upgrades && base.is_some() {
            new.clear(); // they wait for the serving site
        }
        let mut live = false;
        if let Some(base) = base {
            live = activate_at_startup(site, &name, base, true).await?;
        }
        for found in new {
            let essential = !live;
            live |= activate_at_startup(site, &name, found, essential).await?;
        }
        // Nothing live (the recorded version no longer loads): the most
        // preferred component found at startup runs.
        for found in known.into_iter().rev() {
            if live {
                break;
            }
            live = activate_at_startup(site, &name, found, true).await?;
        }
    }
    site.swaps.set_startup_folder(folder);
    Ok(())
}
