//! Site status, GitLab's `GeoNodeStatus` (`ee/app/models/geo_node_status.rb`): what
//! `GET /api/v4/geo_sites/status`, `/metrics` and `geohost status` show.
//!
//! Each site computes its own status live ([`current`]): the per-type
//! counts ([`fields`]), health, the primary's newest event and (on a
//! secondary) the event cursor, version and selective-sync settings. A
//! secondary also sends it to the primary every `workers.status_interval_secs`
//! (`POST /api/v4/geo/status`), which keeps the last report of each site in
//! `geo_node_statuses` ([`store`]) and serves it, marked unhealthy once it
//! is older than [`EXPIRATION_MINUTES`].
//!
//! A status is a JSON object, as GitLab's API returns it, because its field
//! names depend on the installed types.

pub(crate) mod fields;
pub(crate) mod report;
pub mod store;

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::db::{Db, DbError, ident};
use crate::feed::NodeSettings;
use crate::secondary::{ClientError, PrimaryClient};
use crate::site::Site;
use chrono::{DateTime, SecondsFormat, Utc};
use fields::TypeCounts;
use serde_json::{Map, Value, json};

/// A status not updated for this long is outdated, hence unhealthy (GitLab's
/// `GeoNodeStatus::EXPIRATION_IN_MINUTES`).
pub const EXPIRATION_MINUTES: i64 = 60;

/// GitLab's health text of a healthy site.
pub const HEALTHY: &str = "Healthy";

/// The site-level fields exported as Prometheus gauges when they are
/// integers (GitLab's `PROMETHEUS_METRICS` besides the per-type counts).
pub const GAUGE_SITE_FIELDS: [(&str, &str); 5] = [
    ("last_event_id", "Latest event log entry ID"),
    (
        "last_event_timestamp",
        "UNIX timestamp of the latest event log entry",
    ),
    (
        "cursor_last_event_id",
        "Last database event ID processed by the secondary",
    ),
    (
        "cursor_last_event_timestamp",
        "UNIX timestamp of the last event processed by the secondary",
    ),
    (
        "last_successful_status_check_timestamp",
        "UNIX timestamp of the last successful status check",
    ),
];

/// The version this binary reports (`version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision this binary was built from (`revision`), or
/// `unknown`.
pub fn revision() -> &'static str {
    option_env!("GEOHOST_REVISION").unwrap_or("unknown")
}

/// GitLab's `updated_at` form: `2025-05-05T18:26:07.379Z`.
pub fn iso_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// GitLab's `_links` of a site's status, on the site answering at `base_url`.
pub fn links(base_url: &str, node_id: Option<i64>) -> Value {
    let base = base_url.trim_end_matches('/');
    match node_id {
        Some(id) => json!({
            "self": format!("{base}/api/v4/geo_sites/{id}/status"),
            "site": format!("{base}/api/v4/geo_sites/{id}"),
        }),
        None => json!({ "self": null, "site": null }),
    }
}

/// Sets `healthy`, `health` and `health_status` from a health text.
pub fn set_health(status: &mut Map<String, Value>, health: &str) {
    let healthy = health == HEALTHY;
    status.insert("healthy".into(), healthy.into());
    status.insert("health".into(), health.into());
    status.insert(
        "health_status".into(),
        if healthy { "Healthy" } else { "Unhealthy" }.into(),
    );
}

/// The per-type counts of `it` on this site.
pub async fn type_counts(site: &Site, it: &InstalledType) -> Result<TypeCounts, DbError> {
    if !crate::secondary::replication_enabled(&site.db, it).await? {
        return Ok(TypeCounts::disabled(&it.identity));
    }
    match site.role() {
        Role::Primary => {
            let records = site
                .db
                .fetch_one(
                    &format!(
                        "SELECT COUNT(*) AS n FROM {}",
                        ident(&it.identity.table.name)
                    ),
                    &[],
                )
                .await?
                .i64("n")?;
            let states = crate::primary::verify::state_counts(&site.db, it).await?;
            Ok(TypeCounts::primary(&it.identity, records, &states))
        }
        Role::Secondary => {
            let tracking = site.tracking.as_ref().ok_or_else(|| {
                DbError::Invalid("a secondary without a tracking database".into())
            })?;
            let counts = crate::secondary::status_counts(tracking, it).await?;
            Ok(TypeCounts::secondary(&it.identity, &counts))
        }
    }
}

/// The per-type counts of every installed type, by name.
pub async fn all_type_counts(site: &Site) -> Result<Vec<TypeCounts>, DbError> {
    let mut all = Vec::new();
    for it in site.catalog.all() {
        all.push(type_counts(site, &it).await?);
    }
    Ok(all)
}

/// GitLab's `namespaces` of a status: the selected namespaces, with names
/// when this site holds them (the primary).
pub async fn namespaces_json(db: &Db, ids: &[i64]) -> Result<Value, DbError> {
    use crate::primary::topology::get_namespace;
    let mut out = Vec::new();
    for &id in ids {
        let Some(ns) = get_namespace(db, id).await.map_err(topology_db)? else {
            out.push(json!({ "id": id }));
            continue;
        };
        let mut path = vec![ns.path.clone()];
        let mut parent = ns.parent_id;
        while let Some(p) = parent {
            if path.len() > crate::topology::MAX_DEPTH {
                break;
            }
            match get_namespace(db, p).await.map_err(topology_db)? {
                Some(up) => {
                    path.push(up.path.clone());
                    parent = up.parent_id;
                }
                None => break,
            }
        }
        path.reverse();
        out.push(json!({
            "id": ns.id,
            "name": ns.name,
            "path": ns.path,
            "kind": "group",
            "full_path": path.join("/"),
            "parent_id": ns.parent_id,
        }));
    }
    Ok(Value::Array(out))
}

fn topology_db(e: crate::primary::topology::TopologyError) -> DbError {
    match e {
        crate::primary::topology::TopologyError::Db(d) => d,
        other => DbError::Invalid(other.to_string()),
    }
}

/// The fields every status has, in GitLab's shape, before the site-specific
/// ones are filled in.
fn skeleton(node_id: Option<i64>, counts: &[TypeCounts]) -> Map<String, Value> {
    let mut status = Map::new();
    status.insert("geo_node_id".into(), node_id.into());
    for c in counts {
        c.write(&mut status);
    }
    let now = Db::now();
    status.insert(
        "last_successful_status_check_timestamp".into(),
        now.timestamp().into(),
    );
    status.insert("version".into(), VERSION.into());
    status.insert("revision".into(), revision().into());
    status.insert("updated_at".into(), iso_time(now).into());
    status
}

/// This site's status, computed now. A secondary reads the primary's newest
/// event and its own settings through `client` (its health says so when
/// the primary cannot be read).
pub async fn current(
    site: &Site,
    client: Option<&PrimaryClient>,
) -> Result<Map<String, Value>, DbError> {
    let counts = all_type_counts(site).await?;
    let mut status = match site.role() {
        Role::Primary => primary_status(site, &counts).await,
        Role::Secondary => secondary_status(site, client, counts).await,
    }?;
    status.insert("plugins".into(), plugins_json(site));
    // Geohost's addition: the background duties, and any that keep failing
    // make the site unhealthy (`health.rs`).
    status.insert("duties".into(), json!(site.duties.reports()));
    if let Some(problem) = site.duties.problem() {
        let health = match status.get("health").and_then(Value::as_str) {
            Some(HEALTHY) | None => problem,
            Some(other) => format!("{other}; {problem}"),
        };
        set_health(&mut status, &health);
    }
    if let Some(tracking) = &site.tracking {
        // Geohost's addition: registry removals held for an operator.
        let holds = crate::secondary::guard::holds(tracking).await?;
        status.insert("removal_holds".into(), json!(holds));
    }
    Ok(status)
}

/// Geohost's addition: the running version of each type and the hot swaps
/// that were refused (the running version kept serving).
fn plugins_json(site: &Site) -> Value {
    let types: Vec<Value> = site
        .catalog
        .all()
        .iter()
        .map(|it| json!({"name": it.name(), "version": it.identity.version, "sha256": it.plugin.sha256()}))
        .collect();
    json!({"types": types, "failures": site.swaps.failures()})
}

async fn primary_status(site: &Site, counts: &[TypeCounts]) -> Result<Map<String, Value>, DbError> {
    let own = crate::primary::sites::list(&site.db)
        .await?
        .into_iter()
        .find(|n| n.primary);
    let node_id = own.as_ref().map(|n| n.id);
    let mut status = skeleton(node_id, counts);
    set_health(&mut status, HEALTHY);
    let last = crate::primary::events::last(&site.db).await?;
    status.insert("last_event_id".into(), last.map(|(id, _)| id).into());
    status.insert(
        "last_event_timestamp".into(),
        last.map_or(0, |(_, at)| at.timestamp()).into(),
    );
    status.insert("cursor_last_event_id".into(), Value::Null);
    status.insert("cursor_last_event_timestamp".into(), 0.into());
    status.insert(
        "selective_sync_type".into(),
        own.as_ref()
            .and_then(|n| n.selective_sync_type.clone())
            .into(),
    );
    let namespaces = match &own {
        Some(n) => namespaces_json(&site.db, &n.namespace_ids).await?,
        None => json!([]),
    };
    status.insert("namespaces".into(), namespaces);
    status.insert("_links".into(), links(&site.config.url(), node_id));
    Ok(status)
}

/// Why the primary could not be read, as a health text.
fn primary_health(error: &ClientError) -> String {
    match error {
        ClientError::Unauthorized { .. } => {
            "The primary refused this site's credentials (401): check [primary] access_key and secret_access_key".into()
        }
        other => format!("Cannot reach the primary: {other}"),
    }
}

/// Adds to each type's count the records in this secondary's scope that
/// have no registry row yet (`consistency::missing_registries`), so that a
/// missing registry shows as not synced. A type that cannot be checked now
/// keeps its registry count (logged).
async fn add_missing(
    site: &Site,
    tracking: &Db,
    client: &PrimaryClient,
    node: &NodeSettings,
    counts: &mut [TypeCounts],
) {
    let Ok(settings) = node.scope().to_settings() else {
        return;
    };
    let mut topology = None;
    for it in site.catalog.all() {
        let Some(type_counts) = counts
            .iter_mut()
            .find(|c| c.plural == it.identity.plural_name() && c.registry.is_some())
        else {
            continue;
        };
        match crate::secondary::consistency::missing_registries(
            client,
            tracking,
            &it,
            &settings,
            &mut topology,
        )
        .await
        {
            Ok(missing) => type_counts.add_missing(missing),
            Err(error) => {
                tracing::warn!(r#type = it.name(), %error, "cannot count the records without a registry")
            }
        }
    }
}

async fn secondary_status(
    site: &Site,
    client: Option<&PrimaryClient>,
    mut counts: Vec<TypeCounts>,
) -> Result<Map<String, Value>, DbError> {
    let tracking = site
        .tracking
        .as_ref()
        .ok_or_else(|| DbError::Invalid("a secondary without a tracking database".into()))?;
    let cursor = crate::secondary::cursor::position(tracking).await?;
    let mut problem: Option<String> = None;
    let (mut node, mut last, mut cursor_at): (Option<NodeSettings>, _, _) = (None, None, None);
    match client {
        None => problem = Some("This secondary has no [primary] section".into()),
        Some(client) => {
            match client.node().await {
                Ok(n) => node = Some(n),
                Err(e) => problem = Some(primary_health(&e)),
            }
            if problem.is_none() {
                match client.events(0, 1, 0).await {
                    Ok(page) => last = page.last_event_id.zip(page.last_event_at),
                    Err(e) => problem = Some(primary_health(&e)),
                }
            }
            if let (None, Some(position)) = (&problem, cursor)
                && position > 0
            {
                match client.events(position - 1, 1, 0).await {
                    Ok(page) => {
                        cursor_at = page
                            .events
                            .first()
                            .filter(|e| e.id == position)
                            .map(|e| e.created_at)
                    }
                    Err(e) => problem = Some(primary_health(&e)),
                }
            }
        }
    }
    if let (Some(client), Some(node), None) = (client, &node, &problem) {
        add_missing(site, tracking, client, node, &mut counts).await;
    }
    let node_id = node.as_ref().map(|n| n.id);
    let mut status = skeleton(node_id, &counts);
    set_health(&mut status, problem.as_deref().unwrap_or(HEALTHY));
    status.insert("last_event_id".into(), last.map(|(id, _)| id).into());
    status.insert(
        "last_event_timestamp".into(),
        last.map_or(0, |(_, at)| at.timestamp()).into(),
    );
    status.insert("cursor_last_event_id".into(), cursor.into());
    status.insert(
        "cursor_last_event_timestamp".into(),
        cursor_at.map_or(0, |at| at.timestamp()).into(),
    );
    status.insert(
        "selective_sync_type".into(),
        node.as_ref()
            .and_then(|n| n.selective_sync_type.clone())
            .into(),
    );
    let namespaces: Vec<Value> = node
        .as_ref()
        .map(|n| {
            n.namespace_ids
                .iter()
                .map(|id| json!({ "id": id }))
                .collect()
        })
        .unwrap_or_default();
    status.insert("namespaces".into(), Value::Array(namespaces));
    status.insert("_links".into(), links(&site.config.url(), node_id));
    Ok(status)
}

/// How long the API's status waits for the primary.
const OWN_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// This site's status as served by its own API (a secondary reads the
/// primary with a client built from its configuration).
pub async fn own(site: &Site) -> Result<Map<String, Value>, DbError> {
    let client = match &site.config.primary {
        Some(primary) if site.role() == Role::Secondary => {
            PrimaryClient::with_timeout(primary, OWN_STATUS_TIMEOUT).ok()
        }
        _ => None,
    };
    current(site, client.as_ref()).await
}
