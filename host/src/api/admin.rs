//! The admin API: what operators and package registries call, with an admin
//! token (checked for every route by [`super::auth::require_admin`]).
//! Ingest is primary-only.
//!
//! | route | does |
//! |---|---|
//! | `PUT /api/v4/replicables/:name?<writer columns>` (body: the blob) | create or update a record |
//! | `GET /api/v4/replicables/:name?after_id&limit` | list records |
//! | `GET /api/v4/replicables/:name/:id` | one record |
//! | `DELETE /api/v4/replicables/:name/:id` | delete a record and its blob |
//! | `GET/POST /api/v4/namespaces`, `DELETE /api/v4/namespaces/:id` | groups |
//! | `GET/POST /api/v4/projects`, `DELETE /api/v4/projects/:id` | projects |
//!
//! Sites are [`super::geo_sites`]'.

use super::{AdminRoutes, ApiError, AppState, primary_only};
use crate::plugin::value::{json_to_value, text_to_json};
use crate::primary::{ingest, records, topology};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, put};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use std::collections::HashMap;

/// The admin routes of this module (behind `auth::require_admin`, see
/// [`super::router`]).
pub fn routes() -> AdminRoutes {
    AdminRoutes::new()
        .route("/api/v4/replicables/{name}", put(upsert).get(list_records))
        .route(
            "/api/v4/replicables/{name}/{id}",
            get(get_record).delete(delete_record),
        )
        .route(
            "/api/v4/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route("/api/v4/namespaces/{id}", delete(delete_namespace))
        .route("/api/v4/projects", get(list_projects).post(create_project))
        .route("/api/v4/projects/{id}", delete(delete_project))
}

/// Query-string values typed by the type's columns (`project_id=5` is an
/// integer for a bigint column, text for a text column).
fn typed_columns(
    it: &crate::catalog::InstalledType,
    query: &HashMap<String, String>,
) -> Result<serde_json::Map<String, Json_>, ApiError> {
    let mut columns = serde_json::Map::new();
    for (name, raw) in query {
        let column = it.identity.table.column(name).ok_or_else(|| {
            ApiError::Unprocessable(format!("{} has no column `{name}`", it.identity.table.name))
        })?;
        let json = text_to_json(column, raw).map_err(ApiError::Unprocessable)?;
        // Type and length checks happen here too, with the column's rules.
        json_to_value(column, &json).map_err(ApiError::Unprocessable)?;
        columns.insert(name.clone(), json);
    }
    Ok(columns)
}

async fn upsert(
    State(site): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    primary_only(&site)?;
    let it = ingest::installed(&site, &name)?;
    let columns = typed_columns(&it, &query)?;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let outcome = ingest::upsert(&site, &name, &columns, stream).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after_id: Option<i64>,
    limit: Option<i64>,
}

async fn list_records(
    State(site): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Json_>, ApiError> {
    primary_only(&site)?;
    let it = ingest::installed(&site, &name)?;
    let limit = page.limit.unwrap_or(100).clamp(1, 10_000);
    let found = records::page(&site.db, &it, page.after_id.unwrap_or(0), limit).await?;
    Ok(Json(Json_::Array(
        found.iter().map(|r| record_json(&it, r)).collect(),
    )))
}

fn record_json(it: &crate::catalog::InstalledType, r: &records::Record) -> Json_ {
    json!({
        "id": r.id,
        "columns": r.columns_json(it),
        "verification_state": r.verification_state,
        "verification_checksum": r.verification_checksum.as_deref().map(hex::encode),
    })
}

async fn get_record(
    State(site): State<AppState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<Json_>, ApiError> {
    primary_only(&site)?;
    let it = ingest::installed(&site, &name)?;
    let record = records::by_id(&site.db, &it, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{} {id} not found", it.identity.title)))?;
    Ok(Json(record_json(&it, &record)))
}

async fn delete_record(
    State(site): State<AppState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    primary_only(&site)?;
    ingest::delete(&site, &name, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNamespace {
    name: String,
    path: Option<String>,
    parent_id: Option<i64>,
}

async fn create_namespace(
    State(site): State<AppState>,
    Json(new): Json<NewNamespace>,
) -> Result<impl IntoResponse, ApiError> {
    primary_only(&site)?;
    let path = path_or_default(new.path, &new.name);
    let ns = topology::create_namespace(&site.db, &new.name, &path, new.parent_id).await?;
    Ok((StatusCode::CREATED, Json(ns)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    path: Option<String>,
    namespace_id: i64,
    repository_storage: Option<String>,
}

async fn create_project(
    State(site): State<AppState>,
    Json(new): Json<NewProject>,
) -> Result<impl IntoResponse, ApiError> {
    primary_only(&site)?;
    let storage = new.repository_storage.as_deref().unwrap_or("default");
    let path = path_or_default(new.path, &new.name);
    let project =
        topology::create_project(&site.db, &new.name, &path, new.namespace_id, storage).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// A new namespace's or project's path: the one given, or one made from its name.
fn path_or_default(path: Option<String>, name: &str) -> String {
    path.unwrap_or_else(|| topology::default_path(name))
}

/// The listing (`GET`, from the topology snapshot) and the deletion
/// (`DELETE …/{id}`, primary only) of one kind of topology node.
macro_rules! list_and_delete {
    ($list:ident, $delete:ident, $nodes:ident, $remove:path) => {
        async fn $list(State(site): State<AppState>) -> Result<Json<Json_>, ApiError> {
            let snapshot = topology::snapshot(&site.db).await?;
            Ok(Json(json!(snapshot.$nodes)))
        }

        async fn $delete(
            State(site): State<AppState>,
            Path(id): Path<i64>,
        ) -> Result<StatusCode, ApiError> {
            primary_only(&site)?;
            $remove(&site.db, id).await?;
            Ok(StatusCode::NO_CONTENT)
        }
    };
}

list_and_delete!(
    list_namespaces,
    delete_namespace,
    namespaces,
    topology::delete_namespace
);
list_and_delete!(
    list_projects,
    delete_project,
    projects,
    topology::delete_project
);
