//! The plugins admin API: hot swap of type definitions ([`crate::swap`]).
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v4/geo/plugins` | installed types, every recorded version, current refusals |
//! | `POST /api/v4/geo/plugins` (body: a component) | install a new type or a new version of the type it names |
//! | `PUT /api/v4/geo/plugins/:name` (body: a component) | install a new version of `:name` (refused if it is another type) |
//! | `POST /api/v4/geo/plugins/:name/rollback` | go back to the version active before |
//! | `DELETE /api/v4/geo/plugins/:name?force=true` | stop replicating `:name` (data kept) |
//! | `POST /api/v4/geo/plugins/diff` (body: a component) | what it would change over the live data |
//!
//! A refused component is a 422 with the reason; the running version keeps
//! serving.

use super::{AdminRoutes, ApiError, AppState};
use crate::swap::{self, SwapError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> AdminRoutes {
    AdminRoutes::new()
        .route("/api/v4/geo/plugins", get(list).post(install_any))
        .route("/api/v4/geo/plugins/diff", post(diff))
        .route(
            "/api/v4/geo/plugins/{name}",
            put(install_named).delete(remove),
        )
        .route("/api/v4/geo/plugins/{name}/rollback", post(rollback))
}

impl From<SwapError> for ApiError {
    fn from(e: SwapError) -> Self {
        match e {
            SwapError::Refused(_) => ApiError::Unprocessable(e.to_string()),
            SwapError::UnknownType(_) => ApiError::NotFound(e.to_string()),
            SwapError::Conflict(m) => ApiError::Conflict(m),
            SwapError::Internal(m) => ApiError::Internal(m),
        }
    }
}

async fn list(State(site): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (types, failures) = swap::list(&site).await?;
    Ok(Json(json!({"types": types, "failures": failures})))
}

fn body_bytes(body: Bytes) -> Result<Vec<u8>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "send the component (.wasm) as the request body".into(),
        ));
    }
    Ok(body.to_vec())
}

async fn install_any(
    State(site): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    install(site, None, body).await
}

async fn install_named(
    State(site): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    install(site, Some(name), body).await
}

async fn install(
    site: AppState,
    expect_name: Option<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let bytes = body_bytes(body)?;
    let report = swap::activate(
        &site,
        bytes,
        swap::Request {
            expect_name,
            source: "api".into(),
        },
    )
    .await?;
    let status = match report.outcome {
        swap::Outcome::Installed => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(report)))
}

async fn rollback(
    State(site): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(swap::rollback(&site, &name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(site): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(swap::remove(&site, &name, query.force).await?))
}

async fn diff(State(site): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let bytes = body_bytes(body)?;
    Ok(Json(swap::diff::diff(&site, bytes).await?))
}
