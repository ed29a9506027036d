//! GitLab's Geo sites API, in both of the route families GitLab serves:
//! `/api/v4/geo_sites` and the older `/api/v4/geo_nodes` (what python-gitlab's
//! `gl.geonodes` calls). One set of handlers serves both; the family only
//! changes the links and `clone_protocol` ([`entity`]) and the status's
//! `_links`.
//!
//! | route (`geo_sites` or `geo_nodes`) | does | where |
//! |---|---|---|
//! | `GET /` | every site (paginated) | primary |
//! | `POST /` | registers a secondary: the entity and its `credentials` (shown once) | primary |
//! | `GET /:id`, `PUT /:id`, `DELETE /:id` | one site | primary |
//! | `POST /:id/repair` | checks the site's authentication, answers the site | primary |
//! | `GET /status`, `GET /:id/status` | statuses ([`crate::status`]) | both |
//! | `GET /current/failures?type&failure_type` | this secondary's failed registries | secondary |
//!
//! Lists are paginated GitLab's way ([`super::pagination`]).

pub mod entity;
mod failures;

use super::pagination::Pagination;
use super::{AdminRoutes, ApiError, AppState, primary_only};
use crate::primary::sites;
use crate::site::Site;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

/// Which of GitLab's two route families a request came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `/api/v4/geo_sites`.
    Sites,
    /// `/api/v4/geo_nodes` (deprecated in GitLab 16.0, still served).
    Nodes,
}

/// A family's routes (axum's syntax).
struct Paths {
    root: &'static str,
    one: &'static str,
    repair: &'static str,
    status_all: &'static str,
    status_one: &'static str,
    failures: &'static str,
}

const SITES: Paths = Paths {
    root: "/api/v4/geo_sites",
    one: "/api/v4/geo_sites/{id}",
    repair: "/api/v4/geo_sites/{id}/repair",
    status_all: "/api/v4/geo_sites/status",
    status_one: "/api/v4/geo_sites/{id}/status",
    failures: "/api/v4/geo_sites/current/failures",
};

const NODES: Paths = Paths {
    root: "/api/v4/geo_nodes",
    one: "/api/v4/geo_nodes/{id}",
    repair: "/api/v4/geo_nodes/{id}/repair",
    status_all: "/api/v4/geo_nodes/status",
    status_one: "/api/v4/geo_nodes/{id}/status",
    failures: "/api/v4/geo_nodes/current/failures",
};

impl Family {
    fn paths(self) -> &'static Paths {
        match self {
            Family::Sites => &SITES,
            Family::Nodes => &NODES,
        }
    }

    /// `/api/v4/geo_sites` or `/api/v4/geo_nodes`.
    pub fn root(self) -> &'static str {
        self.paths().root
    }

    /// What a missing site is called in a 404.
    fn noun(self) -> &'static str {
        match self {
            Family::Sites => "GeoSite",
            Family::Nodes => "GeoNode",
        }
    }
}

/// The query string as pairs (unknown parameters are ignored, as GitLab's
/// Grape API does).
type Pairs = Vec<(String, String)>;

pub fn routes() -> AdminRoutes {
    family_routes(Family::Sites).merge(family_routes(Family::Nodes))
}

fn family_routes(family: Family) -> AdminRoutes {
    let p = family.paths();
    AdminRoutes::new()
        .route(
            p.root,
            get(move |s: State<AppState>, q: Query<Pairs>| list(family, s, q))
                .post(move |s: State<AppState>, b: Json<sites::NewSite>| create(family, s, b)),
        )
        .route(
            p.one,
            get(move |s: State<AppState>, id: Path<i64>| show(family, s, id))
                .put(
                    move |s: State<AppState>, id: Path<i64>, b: Json<sites::SiteUpdate>| {
                        update(family, s, id, b)
                    },
                )
                .delete(move |s: State<AppState>, id: Path<i64>| remove(family, s, id)),
        )
        .route(
            p.repair,
            post(move |s: State<AppState>, id: Path<i64>| repair(family, s, id)),
        )
        .route(
            p.status_all,
            get(move |s: State<AppState>, q: Query<Pairs>| status_all(family, s, q)),
        )
        .route(
            p.status_one,
            get(move |s: State<AppState>, id: Path<i64>| status_one(family, s, id)),
        )
        .route(
            p.failures,
            get(move |s: State<AppState>, q: Query<Pairs>| failures::current(family, s, q)),
        )
}

/// The value of query parameter `name`, if given.
fn param<'a>(query: &'a Pairs, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `page` and `per_page` from the query (400 when not integers).
fn pagination(query: &Pairs) -> Result<Pagination, ApiError> {
    let int = |name: &str| -> Result<Option<i64>, ApiError> {
        param(query, name)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("{name} is invalid")))
            })
            .transpose()
    };
    Pagination::new(int("page")?, int("per_page")?)
}

/// The links' base: this site's URL.
fn base_url(site: &Site) -> String {
    site.config.url()
}

/// The entity of each of `nodes` on this (primary) site.
async fn entities(
    family: Family,
    site: &Site,
    nodes: &[crate::feed::NodeSettings],
) -> Result<Vec<Value>, ApiError> {
    let base = base_url(site);
    let current_id = nodes.iter().find(|n| n.primary).map(|n| n.id);
    let mut types: Vec<String> = site
        .catalog
        .all()
        .iter()
        .map(|it| it.name().to_string())
        .collect();
    types.sort();
    let context = entity::Context {
        base_url: &base,
        current_id,
        first_type: types.first().map(String::as_str),
    };
    Ok(nodes
        .iter()
        .map(|n| entity::entity(family, n, &context))
        .collect())
}

/// The entity of `node` (which must be in the list: `current` needs the
/// primary's id, among the others).
async fn one_entity(
    family: Family,
    site: &Site,
    node: &crate::feed::NodeSettings,
) -> Result<Value, ApiError> {
    let all = sites::list(&site.db).await?;
    let position = all
        .iter()
        .position(|n| n.id == node.id)
        .ok_or_else(|| not_found(family))?;
    Ok(entities(family, site, &all).await?.swap_remove(position))
}

fn not_found(family: Family) -> ApiError {
    ApiError::NotFound(format!("404 {} Not Found", family.noun()))
}

async fn list(
    family: Family,
    State(site): State<AppState>,
    Query(query): Query<Pairs>,
) -> Result<Response, ApiError> {
    primary_only(&site)?;
    let page = pagination(&query)?;
    let nodes = sites::list(&site.db).await?;
    let total = nodes.len() as i64;
    let items = entities(family, &site, &nodes).await?;
    Ok(page.respond(
        total,
        page.slice(items),
        &base_url(&site),
        family.root(),
        &query,
    ))
}

async fn show(
    family: Family,
    State(site): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    primary_only(&site)?;
    let node = sites::get(&site.db, id)
        .await?
        .ok_or_else(|| not_found(family))?;
    Ok(Json(one_entity(family, &site, &node).await?))
}

async fn create(
    family: Family,
    State(site): State<AppState>,
    Json(new): Json<sites::NewSite>,
) -> Result<impl IntoResponse, ApiError> {
    primary_only(&site)?;
    let (node, credentials) = sites::add_secondary(&site, new).await?;
    let mut answer = one_entity(family, &site, &node).await?;
    // Not in GitLab's entity: a Geohost secondary is given its keys, once.
    if let Value::Object(fields) = &mut answer {
        fields.insert("credentials".into(), json!(credentials));
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

async fn update(
    family: Family,
    State(site): State<AppState>,
    Path(id): Path<i64>,
    Json(change): Json<sites::SiteUpdate>,
) -> Result<Json<Value>, ApiError> {
    primary_only(&site)?;
    let node = sites::update(&site, id, change)
        .await
        .map_err(|e| missing_as(family, e))?;
    Ok(Json(one_entity(family, &site, &node).await?))
}

async fn remove(
    family: Family,
    State(site): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    primary_only(&site)?;
    sites::remove(&site, id)
        .await
        .map_err(|e| missing_as(family, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// GitLab answers the repaired site's status; its API documentation (and
/// python-gitlab, which refreshes the object from the answer) the site.
/// Geohost answers the site: see `docs/decisions.md`.
async fn repair(
    family: Family,
    State(site): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    primary_only(&site)?;
    let node = sites::repair(&site, id)
        .await
        .map_err(|e| missing_as(family, e))?;
    Ok(Json(one_entity(family, &site, &node).await?))
}

/// A missing site as the family's 404.
fn missing_as(family: Family, error: sites::SiteError) -> ApiError {
    match error {
        sites::SiteError::NotFound(what) if what.parse::<i64>().is_ok() => not_found(family),
        other => other.into(),
    }
}

/// A status as `family` shows it: `geo_nodes` links its status to
/// `…/geo_nodes/:id` under `node` (GitLab's `GeoNodeStatus` entity) and
/// keeps `repositories_count`, `projects_count`'s old name.
fn in_family(family: Family, base: &str, mut status: Map<String, Value>) -> Value {
    if family == Family::Nodes {
        let id = status.get("geo_node_id").and_then(Value::as_i64);
        let links = match id {
            Some(id) => {
                let root = format!("{}{}", base.trim_end_matches('/'), family.root());
                json!({
                    "self": format!("{root}/{id}/status"),
                    "node": format!("{root}/{id}"),
                })
            }
            None => json!({ "self": null, "node": null }),
        };
        if let Some(projects) = status.get("projects_count").cloned() {
            status.insert("repositories_count".into(), projects);
        }
        status.insert("_links".into(), links);
    }
    Value::Object(status)
}

async fn status_all(
    family: Family,
    State(site): State<AppState>,
    Query(query): Query<Pairs>,
) -> Result<Response, ApiError> {
    let page = pagination(&query)?;
    let base = base_url(&site);
    let statuses = crate::status::store::all(&site).await?;
    let total = statuses.len() as i64;
    let items = page
        .slice(statuses)
        .into_iter()
        .map(|s| in_family(family, &base, s))
        .collect();
    Ok(page.respond(total, items, &base, family.paths().status_all, &query))
}

async fn status_one(
    family: Family,
    State(site): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    match crate::status::store::by_id(&site, id).await? {
        Some(status) => Ok(Json(in_family(family, &base_url(&site), status))),
        None => Err(ApiError::NotFound(match family {
            Family::Sites => "404 Status for Geo site not found".into(),
            Family::Nodes => "404 Status for Geo node not found".into(),
        })),
    }
}
