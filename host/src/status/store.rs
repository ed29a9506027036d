//! The primary's copy of each secondary's last status report
//! (`geo_node_statuses`: `jsonb` on PostgreSQL, JSON text on SQLite), and
//! the statuses the primary serves.
//!
//! What a secondary reports is kept as sent; when serving it the primary
//! sets what it knows better: the site's id, selective-sync settings and
//! namespaces (from `geo_nodes`), `updated_at` (when the report arrived),
//! `_links` (its own URL), and the health of an outdated report.

use super::fields::TypeCounts;
use super::{EXPIRATION_MINUTES, iso_time, links, namespaces_json, set_health};
use crate::config::Role;
use crate::db::{Backend, Db, DbError};
use crate::feed::NodeSettings;
use crate::site::Site;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Stores (replaces) the status report of site `node_id`.
pub async fn save(db: &Db, node_id: i64, status: &Map<String, Value>) -> Result<(), DbError> {
    let text = Value::Object(status.clone()).to_string();
    let value = match db.backend() {
        Backend::Postgres => "$2::jsonb",
        Backend::Sqlite => "$2",
    };
    db.execute(
        &format!(
            "INSERT INTO geo_node_statuses (geo_node_id, status, created_at, updated_at) \
             VALUES ($1, {value}, $3, $3) \
             ON CONFLICT (geo_node_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at"
        ),
        &[node_id.into(), text.into(), Db::now().into()],
    )
    .await?;
    Ok(())
}

/// The last report of site `node_id` and when it arrived.
pub async fn load(
    db: &Db,
    node_id: i64,
) -> Result<Option<(Map<String, Value>, DateTime<Utc>)>, DbError> {
    let status = match db.backend() {
        Backend::Postgres => "status::text",
        Backend::Sqlite => "status",
    };
    let Some(row) = db
        .fetch_optional(
            &format!("SELECT {status} AS status, updated_at FROM geo_node_statuses WHERE geo_node_id = $1"),
            &[node_id.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let text = row.text("status")?;
    let map = match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(DbError::decode("status", "not a JSON object"));
        }
    };
    Ok(Some((map, row.ts("updated_at")?)))
}

/// A stored report as the primary serves it.
pub async fn decorate(
    site: &Site,
    node: &NodeSettings,
    mut status: Map<String, Value>,
    received: DateTime<Utc>,
) -> Result<Map<String, Value>, DbError> {
    status.insert("geo_node_id".into(), node.id.into());
    status.insert(
        "selective_sync_type".into(),
        node.selective_sync_type.clone().into(),
    );
    status.insert(
        "namespaces".into(),
        namespaces_json(&site.db, &node.namespace_ids).await?,
    );
    status.insert("updated_at".into(), iso_time(received).into());
    status.insert("_links".into(), links(&site.config.url(), Some(node.id)));
    // A type installed here but not reported by the site: GitLab's nulls.
    for it in site.catalog.all() {
        let plural = it.identity.plural_name();
        if !status.contains_key(&format!("{plural}_count")) {
            TypeCounts::disabled(&it.identity).write(&mut status);
        }
    }
    if outdated(received) {
        set_health(
            &mut status,
            &format!("Status has not been updated in the past {EXPIRATION_MINUTES} minutes"),
        );
    }
    Ok(status)
}

/// Whether a report received at `received` is outdated now.
pub fn outdated(received: DateTime<Utc>) -> bool {
    Db::now() - received > chrono::Duration::minutes(EXPIRATION_MINUTES)
}

/// Every status this site serves, by site id: on the primary its own and
/// each secondary's last report (a secondary that never reported is left
/// out, as in GitLab); on a secondary only its own.
pub async fn all(site: &Site) -> Result<Vec<Map<String, Value>>, DbError> {
    match site.role() {
        Role::Secondary => Ok(vec![super::own(site).await?]),
        Role::Primary => {
            let mut out = Vec::new();
            let mut nodes = crate::primary::sites::list(&site.db).await?;
            nodes.sort_by_key(|n| n.id);
            for node in &nodes {
                if node.primary {
                    out.push(super::own(site).await?);
                } else if let Some((status, received)) = load(&site.db, node.id).await? {
                    out.push(decorate(site, node, status, received).await?);
                }
            }
            Ok(out)
        }
    }
}

/// The status of site `id` (the `/api/v4/geo_sites/:id/status` route).
pub async fn by_id(site: &Site, id: i64) -> Result<Option<Map<String, Value>>, DbError> {
    match site.role() {
        Role::Primary => {
            let Some(node) = crate::primary::sites::get(&site.db, id).await? else {
                return Ok(None);
            };
            if node.primary {
                return super::own(site).await.map(Some);
            }
            match load(&site.db, node.id).await? {
                Some((status, received)) => {
                    Ok(Some(decorate(site, &node, status, received).await?))
                }
                None => Ok(None),
            }
        }
        Role::Secondary => {
            let status = super::own(site).await?;
            Ok((status.get("geo_node_id").and_then(Value::as_i64) == Some(id)).then_some(status))
        }
    }
}
