//! `GET /api/v4/geo_sites/current/failures` (and `geo_nodes`): the failed
//! registries of the secondary answering, GitLab's `failure_type`s
//! (`sync` by default, `verification`, `checksum_mismatch`), optionally of
//! one `type` (a replicable name; GitLab's were `repository` and `wiki`).
//! On a primary it is a 403, as in GitLab.

use super::{Family, Pairs, base_url, pagination, param};
use crate::api::{ApiError, AppState};
use crate::config::Role;
use crate::secondary::failures::{self, Failure, FailureType};
use crate::status::iso_time;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

/// One failed registry in the answer: the registry's fields (GitLab's
/// registry entity, snake case), with its type's name and foreign key.
fn entity(failure: &Failure) -> Value {
    let r = &failure.row;
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| at.map(iso_time);
    let mut out = Map::new();
    out.insert("id".into(), r.id.into());
    out.insert(
        "replicable_name".into(),
        failure.replicable_name.clone().into(),
    );
    out.insert(failure.foreign_key.clone(), r.model_id.into());
    for (key, value) in [
        ("model_record_id", json!(r.model_id)),
        ("state", json!(r.state.graphql_name().to_ascii_lowercase())),
        ("retry_count", json!(r.retry_count)),
        ("retry_at", json!(time(r.retry_at))),
        ("last_synced_at", json!(time(r.last_synced_at))),
        ("last_sync_failure", json!(r.last_sync_failure)),
        (
            "verification_state",
            json!(r.verification_state.graphql_name().to_ascii_lowercase()),
        ),
        (
            "verification_retry_count",
            json!(r.verification_retry_count),
        ),
        (
            "verification_retry_at",
            json!(time(r.verification_retry_at)),
        ),
        ("verification_failure", json!(r.verification_failure)),
        ("verified_at", json!(time(r.verified_at))),
        ("checksum_mismatch", json!(r.checksum_mismatch)),
        (
            "verification_checksum_mismatched",
            json!(r.verification_checksum_mismatched),
        ),
        ("created_at", json!(iso_time(r.created_at))),
    ] {
        out.insert(key.into(), value);
    }
    Value::Object(out)
}

pub(super) async fn current(
    family: Family,
    State(site): State<AppState>,
    Query(query): Query<Pairs>,
) -> Result<Response, ApiError> {
    let page = pagination(&query)?;
    let kind = match param(&query, "failure_type") {
        None => FailureType::Sync,
        Some(name) => FailureType::parse(name).ok_or_else(|| {
            ApiError::BadRequest(
                "failure_type does not have a valid value (sync, verification, checksum_mismatch)"
                    .into(),
            )
        })?,
    };
    let types = match param(&query, "type").filter(|t| !t.is_empty()) {
        None => site.catalog.all(),
        Some(name) => vec![site.installed(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "type does not have a valid value: no replicable type named {name:?} is installed"
            ))
        })?],
    };
    let Some(tracking) = site
        .tracking
        .as_ref()
        .filter(|_| site.role() == Role::Secondary)
    else {
        return Err(ApiError::Forbidden(
            "403 Forbidden - Failures can only be requested from a secondary site".into(),
        ));
    };
    let (total, rows) =
        failures::page(tracking, &types, kind, page.offset(), page.per_page).await?;
    Ok(page.respond(
        total,
        rows.iter().map(entity).collect(),
        &base_url(&site),
        family.paths().failures,
        &query,
    ))
}
