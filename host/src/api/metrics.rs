//! `GET /metrics`: Prometheus text exposition.
//!
//! Two parts, one page:
//! - GitLab's Geo gauges (`ee/app/models/geo_node_status.rb`), computed from the databases at
//!   scrape time: for each type the ten `geo_<plural>…` counts, and the
//!   event ids and timestamps, labelled `name` and `url` (both the site's
//!   name, as GitLab does). The primary exports its own and each
//!   secondary's last reported status; a secondary its own.
//! - The engine's own counters and histograms ([`crate::metrics`]) and
//!   GitLab's `geo_status_failed_total`; and, from each secondary's status,
//!   `geohost_registry_removals_held{name,url,type}` (removals waiting for
//!   an operator, `secondary/guard.rs`).

use super::{AdminRoutes, ApiError, AppState};
use crate::config::Role;
use crate::status::fields::{COUNT_FIELDS, TypeCounts, gauge_name};
use crate::status::{GAUGE_SITE_FIELDS, store};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub fn routes() -> AdminRoutes {
    AdminRoutes::new().route("/metrics", get(metrics))
}

/// One site's status, as gauge values.
struct Labelled {
    name: String,
    status: Map<String, Value>,
}

async fn metrics(State(site): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut sites = vec![Labelled {
        name: site.name().to_string(),
        status: crate::status::own(&site).await?,
    }];
    if site.role() == Role::Primary {
        for node in crate::primary::sites::list(&site.db).await? {
            if node.primary {
                continue;
            }
            if let Some((status, _)) = store::load(&site.db, node.id).await? {
                sites.push(Labelled {
                    name: node.name.clone(),
                    status,
                });
            }
        }
    }
    let plurals: Vec<(String, String)> = site
        .catalog
        .all()
        .iter()
        .map(|it| {
            (
                it.identity.plural_name().to_string(),
                it.identity.title_plural.clone(),
            )
        })
        .collect();
    let text = render(&sites, &plurals).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// The page: the Geo gauges of `sites`, then the process's metrics.
fn render(sites: &[Labelled], plurals: &[(String, String)]) -> prometheus::Result<String> {
    // gauge name → (help, [(site, value)])
    let mut gauges: BTreeMap<String, (String, Vec<(&str, i64)>)> = BTreeMap::new();
    for labelled in sites {
        for (plural, title) in plurals {
            let counts = TypeCounts::read(plural, &labelled.status);
            for (field, value) in counts.present() {
                let suffix = &field[plural.len()..];
                let help = COUNT_FIELDS
                    .iter()
                    .find(|(s, _)| *s == suffix)
                    .map_or("", |(_, h)| h);
                gauges
                    .entry(gauge_name(&field))
                    .or_insert_with(|| (format!("{title}: {help}"), Vec::new()))
                    .1
                    .push((&labelled.name, value));
            }
        }
        for (field, help) in GAUGE_SITE_FIELDS {
            if let Some(value) = labelled.status.get(field).and_then(Value::as_i64) {
                gauges
                    .entry(gauge_name(field))
                    .or_insert_with(|| (help.to_string(), Vec::new()))
                    .1
                    .push((&labelled.name, value));
            }
        }
    }
    let registry = Registry::new();
    let held = IntGaugeVec::new(
        Opts::new(
            "geohost_registry_removals_held",
            "Registry removals a secondary holds for an operator's confirmation \
             (more than deletions.max_removal_share of a type's registries)",
        ),
        &["name", "url", "type"],
    )?;
    for labelled in sites {
        for hold in labelled
            .status
            .get("removal_holds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = &labelled.name;
            let kind = hold["replicable_name"].as_str().unwrap_or_default();
            let removals = hold["removals"].as_i64().unwrap_or_default();
            held.with_label_values(&[name, name, kind]).set(removals);
        }
    }
    registry.register(Box::new(held))?;
    for (name, (help, values)) in gauges {
        let gauge = IntGaugeVec::new(Opts::new(name, help), &["name", "url"])?;
        for (site, value) in values {
            gauge.with_label_values(&[site, site]).set(value);
        }
        registry.register(Box::new(gauge))?;
    }
    crate::metrics::init();
    let mut families = registry.gather();
    families.extend(crate::metrics::REGISTRY.gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
