//! GitLab's site status routes (reference §7):
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v4/geo_sites/status` | every site's status (an array) |
//! | `GET /api/v4/geo_sites/:id/status` | one site's status; 404 if it never reported |
//!
//! The primary serves its own status computed now and each secondary's last
//! report; a secondary serves its own. See [`crate::status`].

use super::{AdminRoutes, ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::Value;

pub fn routes() -> AdminRoutes {
    AdminRoutes::new()
        .route("/api/v4/geo_sites/status", get(all))
        .route("/api/v4/geo_sites/{id}/status", get(one))
}

async fn all(State(site): State<AppState>) -> Result<Json<Value>, ApiError> {
    let statuses = crate::status::store::all(&site).await?;
    Ok(Json(Value::Array(
        statuses.into_iter().map(Value::Object).collect(),
    )))
}

async fn one(State(site): State<AppState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    match crate::status::store::by_id(&site, id).await? {
        Some(status) => Ok(Json(Value::Object(status))),
        None => Err(ApiError::NotFound(
            "404 Status for Geo site not found".into(),
        )),
    }
}
