//! Geo sites (`geo_nodes`) as the primary keeps them: itself, and each
//! secondary with its selective-sync settings, capacities and keys.
//!
//! A secondary's secret is shown once, when it is registered; at rest it is
//! sealed with AES-256-GCM under the site's key (GitLab encrypts it with
//! `db_key_base`).

use crate::auth::cache::Authenticated;
use crate::auth::keys;
use crate::db::{Arg, Db, DbError, DbRow};
use crate::feed::NodeSettings;
use crate::site::Site;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// Settings of a new secondary: GitLab's `POST /geo_sites` parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub internal_url: Option<String>,
    /// GitLab's API can create a primary; a Geohost primary is the site
    /// itself, so only `false` (or nothing) is accepted.
    #[serde(default)]
    pub primary: Option<bool>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub selective_sync_type: Option<String>,
    /// GitLab's `selective_sync_namespace_ids` (`namespace_ids` too).
    #[serde(default, alias = "selective_sync_namespace_ids")]
    pub namespace_ids: Vec<i64>,
    #[serde(default)]
    pub selective_sync_shards: Vec<String>,
    #[serde(default)]
    pub sync_object_storage: bool,
    #[serde(default)]
    pub files_max_capacity: Option<i32>,
    #[serde(default)]
    pub repos_max_capacity: Option<i32>,
    #[serde(default)]
    pub verification_max_capacity: Option<i32>,
    #[serde(default)]
    pub container_repositories_max_capacity: Option<i32>,
    #[serde(default)]
    pub minimum_reverification_interval: Option<i32>,
}

/// Changes to a site (every field optional): GitLab's `PUT /geo_sites/:id`
/// parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteUpdate {
    pub name: Option<String>,
    pub url: Option<String>,
    /// `""` clears it (`url` is used).
    pub internal_url: Option<String>,
    pub enabled: Option<bool>,
    /// `""` clears selective sync (everything).
    pub selective_sync_type: Option<String>,
    /// GitLab's `selective_sync_namespace_ids` (`namespace_ids` too).
    #[serde(alias = "selective_sync_namespace_ids")]
    pub namespace_ids: Option<Vec<i64>>,
    pub selective_sync_shards: Option<Vec<String>>,
    pub sync_object_storage: Option<bool>,
    pub files_max_capacity: Option<i32>,
    pub repos_max_capacity: Option<i32>,
    pub verification_max_capacity: Option<i32>,
    pub container_repositories_max_capacity: Option<i32>,
    pub minimum_reverification_interval: Option<i32>,
}

/// A new secondary's keys, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub access_key: String,
    pub secret_access_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{0}")]
    Invalid(String),
    #[error("site {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("sealing or opening a secret: {0}")]
    Secret(String),
}

const COLUMNS: &str = "id, name, url, internal_url, \"primary\", enabled, selective_sync_type, \
    selective_sync_shards, sync_object_storage, files_max_capacity, repos_max_capacity, \
    verification_max_capacity, container_repositories_max_capacity, minimum_reverification_interval";

async fn decode(db: &Db, row: &DbRow) -> Result<NodeSettings, DbError> {
    let id = row.i64("id")?;
    let shards: Vec<String> =
        serde_json::from_str(&row.text("selective_sync_shards")?).unwrap_or_default();
    let namespace_ids = db
        .fetch_map(
            "SELECT namespace_id FROM geo_node_namespace_links WHERE geo_node_id = $1 \
             ORDER BY namespace_id",
            &[id.into()],
            |r| r.i64("namespace_id"),
        )
        .await?;
    Ok(NodeSettings {
        id,
        name: row.text("name")?,
        url: row.text("url")?,
        internal_url: row.opt_text("internal_url")?,
        primary: row.bool("primary")?,
        enabled: row.bool("enabled")?,
        selective_sync_type: row.opt_text("selective_sync_type")?,
        namespace_ids,
        selective_sync_shards: shards,
        sync_object_storage: row.bool("sync_object_storage")?,
        files_max_capacity: row.i32("files_max_capacity")?,
        repos_max_capacity: row.i32("repos_max_capacity")?,
        verification_max_capacity: row.i32("verification_max_capacity")?,
        container_repositories_max_capacity: row.i32("container_repositories_max_capacity")?,
        minimum_reverification_interval: row.i32("minimum_reverification_interval")?,
    })
}

/// Every site, primary first.
pub async fn list(db: &Db) -> Result<Vec<NodeSettings>, DbError> {
    let rows = db
        .fetch_all(
            &format!("SELECT {COLUMNS} FROM geo_nodes ORDER BY \"primary\" DESC, id"),
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(decode(db, row).await?);
    }
    Ok(out)
}

pub async fn get(db: &Db, id: i64) -> Result<Option<NodeSettings>, DbError> {
    match db
        .fetch_optional(
            &format!("SELECT {COLUMNS} FROM geo_nodes WHERE id = $1"),
            &[id.into()],
        )
        .await?
    {
        Some(row) => Ok(Some(decode(db, &row).await?)),
        None => Ok(None),
    }
}

/// Registers (or refreshes) this primary's own row.
pub async fn ensure_self(site: &Site) -> Result<NodeSettings, SiteError> {
    let now = Db::now();
    let url = site.config.url();
    let name = site.name().to_string();
    let existing = site
        .db
        .fetch_optional(
            "SELECT id FROM geo_nodes WHERE \"primary\" = $1",
            &[true.into()],
        )
        .await?;
    let id = match existing {
        Some(row) => {
            let id = row.i64("id")?;
            site.db
                .execute(
                    "UPDATE geo_nodes SET name = $1, url = $2, updated_at = $3 WHERE id = $4",
                    &[name.clone().into(), url.into(), now.into(), id.into()],
                )
                .await?;
            id
        }
        None => site
            .db
            .fetch_one(
                "INSERT INTO geo_nodes (name, url, \"primary\", enabled, created_at, updated_at) \
                 VALUES ($1, $2, $3, $3, $4, $4) RETURNING id",
                &[name.clone().into(), url.into(), true.into(), now.into()],
            )
            .await?
            .i64("id")?,
    };
    get(&site.db, id).await?.ok_or(SiteError::NotFound(name))
}

fn check_scope(kind: &Option<String>) -> Result<Option<String>, SiteError> {
    match kind.as_deref() {
        None | Some("") => Ok(None),
        Some("namespaces") | Some("shards") => Ok(kind.clone()),
        Some(other) => Err(SiteError::Invalid(format!(
            "selective_sync_type {other:?} is not one of \"namespaces\", \"shards\" or empty"
        ))),
    }
}

/// The bounds of `files_max_capacity` and `verification_max_capacity`
/// (checked by the API, with a 422, and by the CLI).
pub const CAPACITY_BOUNDS: RangeInclusive<i32> = 1..=10_000;
/// The bounds of GitLab's repository capacities (`repos_max_capacity`,
/// `container_repositories_max_capacity`), which may be 0 as there.
pub const REPOSITORY_CAPACITY_BOUNDS: RangeInclusive<i32> = 0..=10_000;
/// The bounds of `minimum_reverification_interval`, in days: GitLab's
/// minimum of one day, and at most ten years (GitLab sets no maximum; a
/// larger value meant "never" and overflowed the date arithmetic).
pub const REVERIFICATION_DAYS_BOUNDS: RangeInclusive<i32> = 1..=3_650;

/// Refuses a setting outside its bounds, naming them.
fn check_bound(
    what: &str,
    value: Option<i32>,
    bounds: RangeInclusive<i32>,
    unit: &str,
) -> Result<(), SiteError> {
    match value {
        Some(v) if !bounds.contains(&v) => Err(SiteError::Invalid(format!(
            "{what} must be between {} and {}{unit}, not {v}",
            bounds.start(),
            bounds.end()
        ))),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), SiteError> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(SiteError::Invalid(
            "name must be 1 to 255 characters".into(),
        ));
    }
    Ok(())
}

fn check_url(what: &str, url: &str) -> Result<(), SiteError> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 255 {
        Ok(())
    } else {
        Err(SiteError::Invalid(format!(
            "{what} {url:?} must be http:// or https://, at most 255 characters"
        )))
    }
}

/// The capacities of a site: GitLab's four, checked alike. Geohost uses
/// `files_max_capacity` (downloads) and `verification_max_capacity`; the
/// repository ones are kept for GitLab's clients, and may be 0 as there.
fn check_capacities(
    files: Option<i32>,
    repos: Option<i32>,
    verification: Option<i32>,
    container_repositories: Option<i32>,
) -> Result<(), SiteError> {
    for (what, value, bounds) in [
        ("files_max_capacity", files, CAPACITY_BOUNDS),
        ("repos_max_capacity", repos, REPOSITORY_CAPACITY_BOUNDS),
        ("verification_max_capacity", verification, CAPACITY_BOUNDS),
        (
            "container_repositories_max_capacity",
            container_repositories,
            REPOSITORY_CAPACITY_BOUNDS,
        ),
    ] {
        check_bound(what, value, bounds, "")?;
    }
    Ok(())
}

fn check_reverification_interval(days: Option<i32>) -> Result<(), SiteError> {
    check_bound(
        "minimum_reverification_interval",
        days,
        REVERIFICATION_DAYS_BOUNDS,
        " days",
    )
}

/// A unique-name violation as the API says it.
fn name_taken(name: &str) -> impl Fn(DbError) -> SiteError + '_ {
    move |e| {
        if e.is_unique_violation() {
            SiteError::Invalid(format!("a site named {name:?} exists already"))
        } else {
            SiteError::from(e)
        }
    }
}

/// Registers a secondary; returns its settings and its keys (shown once).
pub async fn add_secondary(
    site: &Site,
    new: NewSite,
) -> Result<(NodeSettings, Credentials), SiteError> {
    check_name(&new.name)?;
    check_url("url", &new.url)?;
    if let Some(url) = new.internal_url.as_deref().filter(|u| !u.is_empty()) {
        check_url("internal_url", url)?;
    }
    if new.primary == Some(true) {
        return Err(SiteError::Invalid(
            "a site can be added as a secondary only: the primary is the site answering".into(),
        ));
    }
    let kind = check_scope(&new.selective_sync_type)?;
    check_capacities(
        new.files_max_capacity,
        new.repos_max_capacity,
        new.verification_max_capacity,
        new.container_repositories_max_capacity,
    )?;
    check_reverification_interval(new.minimum_reverification_interval)?;
    let credentials = Credentials {
        access_key: keys::generate_access_key(),
        secret_access_key: keys::generate_secret(),
    };
    let (sealed, iv) = site
        .secrets
        .seal(&credentials.secret_access_key)
        .map_err(|e| SiteError::Secret(e.to_string()))?;
    let now = Db::now();
    let mut tx = site.db.begin().await?;
    let id = tx
        .fetch_one(
            "INSERT INTO geo_nodes (name, url, internal_url, \"primary\", enabled, selective_sync_type, \
             selective_sync_shards, sync_object_storage, files_max_capacity, repos_max_capacity, \
             verification_max_capacity, container_repositories_max_capacity, \
             minimum_reverification_interval, access_key, encrypted_secret_access_key, \
             encrypted_secret_access_key_iv, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17) \
             RETURNING id",
            &[
                new.name.clone().into(),
                new.url.clone().into(),
                Arg::Text(new.internal_url.clone().filter(|u| !u.is_empty())),
                false.into(),
                new.enabled.unwrap_or(true).into(),
                Arg::Text(kind),
                serde_json::to_string(&new.selective_sync_shards).unwrap_or_else(|_| "[]".into()).into(),
                new.sync_object_storage.into(),
                new.files_max_capacity.unwrap_or(10).into(),
                new.repos_max_capacity.unwrap_or(25).into(),
                new.verification_max_capacity.unwrap_or(100).into(),
                new.container_repositories_max_capacity.unwrap_or(10).into(),
                new.minimum_reverification_interval.unwrap_or(7).into(),
                credentials.access_key.clone().into(),
                sealed.into(),
                iv.into(),
                now.into(),
            ],
        )
        .await
        .map_err(name_taken(&new.name))?
        .i64("id")?;
    for ns in &new.namespace_ids {
        link_namespace(&mut tx, id, *ns).await?;
    }
    tx.commit().await?;
    let settings = get(&site.db, id)
        .await?
        .ok_or_else(|| SiteError::NotFound(id.to_string()))?;
    tracing::info!(site = %settings.name, id, "secondary registered");
    Ok((settings, credentials))
}

async fn link_namespace(
    tx: &mut crate::db::Tx,
    node: i64,
    namespace: i64,
) -> Result<(), SiteError> {
    let now = Db::now();
    tx.execute(
        "INSERT INTO geo_node_namespace_links (geo_node_id, namespace_id, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        &[node.into(), namespace.into(), now.into()],
    )
    .await
    .map_err(|e| {
        if e.is_foreign_key_violation() {
            SiteError::NotFound(format!("namespace {namespace}"))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Changes a site's settings.
pub async fn update(site: &Site, id: i64, change: SiteUpdate) -> Result<NodeSettings, SiteError> {
    get(&site.db, id)
        .await?
        .ok_or_else(|| SiteError::NotFound(id.to_string()))?;
    if let Some(name) = &change.name {
        check_name(name)?;
    }
    if let Some(url) = &change.url {
        check_url("url", url)?;
    }
    if let Some(url) = change.internal_url.as_deref().filter(|u| !u.is_empty()) {
        check_url("internal_url", url)?;
    }
    check_capacities(
        change.files_max_capacity,
        change.repos_max_capacity,
        change.verification_max_capacity,
        change.container_repositories_max_capacity,
    )?;
    check_reverification_interval(change.minimum_reverification_interval)?;
    let now = Db::now();
    let mut tx = site.db.begin().await?;
    let mut sets: Vec<(&str, Arg)> = Vec::new();
    if let Some(name) = &change.name {
        sets.push(("name", name.clone().into()));
    }
    if let Some(url) = change.url {
        sets.push(("url", url.into()));
    }
    if let Some(url) = change.internal_url {
        sets.push((
            "internal_url",
            Arg::Text(Some(url).filter(|u| !u.is_empty())),
        ));
    }
    if let Some(enabled) = change.enabled {
        sets.push(("enabled", enabled.into()));
    }
    if change.selective_sync_type.is_some() {
        sets.push((
            "selective_sync_type",
            Arg::Text(check_scope(&change.selective_sync_type)?),
        ));
    }
    if let Some(shards) = &change.selective_sync_shards {
        sets.push((
            "selective_sync_shards",
            serde_json::to_string(shards).unwrap_or_default().into(),
        ));
    }
    if let Some(v) = change.sync_object_storage {
        sets.push(("sync_object_storage", v.into()));
    }
    for (column, value) in [
        ("files_max_capacity", change.files_max_capacity),
        ("repos_max_capacity", change.repos_max_capacity),
        (
            "verification_max_capacity",
            change.verification_max_capacity,
        ),
        (
            "container_repositories_max_capacity",
            change.container_repositories_max_capacity,
        ),
        (
            "minimum_reverification_interval",
            change.minimum_reverification_interval,
        ),
    ] {
        if let Some(v) = value {
            sets.push((column, v.into()));
        }
    }
    sets.push(("updated_at", now.into()));
    let assignments: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("\"{c}\" = ${}", i + 2))
        .collect();
    let mut args = vec![Arg::from(id)];
    args.extend(sets.into_iter().map(|(_, a)| a));
    tx.execute(
        &format!(
            "UPDATE geo_nodes SET {} WHERE id = $1",
            assignments.join(", ")
        ),
        &args,
    )
    .await
    .map_err(name_taken(change.name.as_deref().unwrap_or_default()))?;
    if let Some(namespaces) = change.namespace_ids {
        tx.execute(
            "DELETE FROM geo_node_namespace_links WHERE geo_node_id = $1",
            &[id.into()],
        )
        .await?;
        for ns in namespaces {
            link_namespace(&mut tx, id, ns).await?;
        }
    }
    tx.commit().await?;
    site.auth_cache.clear();
    get(&site.db, id)
        .await?
        .ok_or_else(|| SiteError::NotFound(id.to_string()))
}

/// GitLab's "repair" of a site's authentication: Geohost has no OAuth
/// application to recreate, so it checks what authenticates the site: the
/// primary's own row is refreshed from its configuration (name, url), and a
/// secondary's sealed secret must open under this site's secrets key. A
/// secret that does not (the key file was replaced) cannot be recovered:
/// that is an [`SiteError::Invalid`] saying to register the site again.
pub async fn repair(site: &Site, id: i64) -> Result<NodeSettings, SiteError> {
    let node = get(&site.db, id)
        .await?
        .ok_or_else(|| SiteError::NotFound(id.to_string()))?;
    if node.primary {
        return ensure_self(site).await;
    }
    let row = site
        .db
        .fetch_one(
            "SELECT access_key, encrypted_secret_access_key, encrypted_secret_access_key_iv \
             FROM geo_nodes WHERE id = $1",
            &[id.into()],
        )
        .await?;
    let unusable = |why: &str| {
        SiteError::Invalid(format!(
            "site {:?} cannot be repaired: {why}; remove it and register it again \
             (`geohost site add`), then give the secondary its new [primary] keys",
            node.name
        ))
    };
    let (Some(_), Some(sealed), Some(iv)) = (
        row.opt_text("access_key")?,
        row.opt_bytes("encrypted_secret_access_key")?,
        row.opt_bytes("encrypted_secret_access_key_iv")?,
    ) else {
        return Err(unusable("it has no Geo keys"));
    };
    site.secrets.open(&sealed, &iv).map_err(|_| {
        unusable(
            "its secret does not open with this site's secrets key (was secrets.key replaced?)",
        )
    })?;
    Ok(node)
}

/// Removes a secondary.
pub async fn remove(site: &Site, id: i64) -> Result<(), SiteError> {
    let removed = site
        .db
        .execute(
            "DELETE FROM geo_nodes WHERE id = $1 AND \"primary\" = $2",
            &[id.into(), false.into()],
        )
        .await?;
    if removed == 0 {
        return Err(match get(&site.db, id).await? {
            Some(node) if node.primary => SiteError::Invalid(format!(
                "site {:?} is this primary: only secondaries are removed",
                node.name
            )),
            _ => SiteError::NotFound(id.to_string()),
        });
    }
    site.auth_cache.clear();
    Ok(())
}

/// The enabled secondary with this access key, and its secret, remembered
/// for [`crate::auth::cache::AUTH_CACHE_TTL`] ([`crate::auth::cache::AuthCache`]).
pub async fn authenticate(
    site: &Site,
    access_key: &str,
) -> Result<Option<std::sync::Arc<Authenticated>>, SiteError> {
    if let Some(found) = site.auth_cache.get(access_key) {
        return Ok(Some(found));
    }
    let Some((node, secret)) = lookup(site, access_key).await? else {
        return Ok(None);
    };
    let found = std::sync::Arc::new(Authenticated { node, secret });
    site.auth_cache.put(access_key, found.clone());
    Ok(Some(found))
}

/// The enabled secondary with this access key, and its secret, read now.
async fn lookup(
    site: &Site,
    access_key: &str,
) -> Result<Option<(NodeSettings, String)>, SiteError> {
    let row = site
        .db
        .fetch_optional(
            &format!(
                "SELECT {COLUMNS}, encrypted_secret_access_key, encrypted_secret_access_key_iv \
                 FROM geo_nodes WHERE access_key = $1 AND enabled = $2"
            ),
            &[access_key.into(), true.into()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (Some(sealed), Some(iv)) = (
        row.opt_bytes("encrypted_secret_access_key")?,
        row.opt_bytes("encrypted_secret_access_key_iv")?,
    ) else {
        return Ok(None);
    };
    let secret = site
        .secrets
        .open(&sealed, &iv)
        .map_err(|e| SiteError::Secret(e.to_string()))?;
    Ok(Some((decode(&site.db, &row).await?, secret)))
}

async fn own_row(site: &Site) -> Result<Option<DbRow>, DbError> {
    site.db
        .fetch_optional(
            "SELECT verification_max_capacity, minimum_reverification_interval FROM geo_nodes WHERE \"primary\" = $1",
            &[true.into()],
        )
        .await
}

/// The primary's verification capacity.
pub async fn own_capacity(site: &Site) -> Result<i32, DbError> {
    Ok(match own_row(site).await? {
        Some(row) => row.i32("verification_max_capacity")?,
        None => 100,
    })
}

/// The primary's minimum reverification interval, in days.
pub async fn own_reverification_days(site: &Site) -> Result<i64, DbError> {
    Ok(match own_row(site).await? {
        Some(row) => row.i32("minimum_reverification_interval")? as i64,
        None => 7,
    })
}
