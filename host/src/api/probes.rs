//! Health probes as GitLab serves them, for load balancers and Kubernetes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /-/health` | `200 GitLab OK`, plain text (the words load balancers set up for GitLab look for): the process answers |
//! | `GET /-/liveness` | `200 {"status":"ok"}`: the process is alive |
//! | `GET /-/readiness` | `200 {"status":"ok", "<name>_check":[{"status":"ok"}], …}` or `503` with `"status":"failed"` and the failing check's `message` |
//!
//! Readiness runs every check at once, each under [`CHECK_TIMEOUT`]:
//! `master_check` (the site is not shutting down), `db_check` (the main
//! database), `tracking_db_check` (a secondary's tracking database),
//! `blob_storage_check` (the blob store answers) and `types_check` (at
//! least one type is installed and each one's table answers). GitLab runs
//! only `master_check` unless `?all=1`; Geohost's checks are cheap and what
//! a load balancer needs to know, so it runs them all (`?all` is accepted).
//!
//! As GitLab's `monitoring.ip_whitelist`, the probes answer a client from an
//! allowed network ([`crate::config::MonitoringSection`], loopback by
//! default) without a token; anyone else gets a 404, unless they send an
//! admin token.

use super::AppState;
use crate::config::Role;
use crate::site::Site;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe routes, behind the allow-list.
pub fn routes(site: AppState) -> Router<AppState> {
    Router::new()
        .route("/-/health", get(health))
        .route("/-/liveness", get(liveness))
        .route("/-/readiness", get(readiness))
        .route_layer(axum::middleware::from_fn_with_state(site, allowed_client))
}

/// Lets through a client from an allowed network, or one with an admin
/// token; anyone else gets GitLab's answer, a plain 404.
async fn allowed_client(State(site): State<AppState>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let allowed = peer.is_some_and(|ip| site.config.monitoring.ip_whitelist.allows(ip));
    if allowed || super::auth::admin(&site, request.headers()).await.is_ok() {
        next.run(request).await
    } else {
        tracing::debug!(
            ?peer,
            "probe refused: client not in monitoring.ip_whitelist"
        );
        // The answer of a route that does not exist: nothing tells a
        // stranger that the probes are there.
        super::ApiError::NotFound("no such route".into()).into_response()
    }
}

async fn health() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        "GitLab OK",
    )
        .into_response()
}

async fn liveness() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// One check's outcome: `Err` carries the message.
type Outcome = Result<(), String>;

/// Runs `check` under [`CHECK_TIMEOUT`].
async fn timed(check: impl Future<Output = Outcome>) -> Outcome {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

async fn database(db: &crate::db::Db) -> Outcome {
    db.fetch_one("SELECT 1 AS one", &[])
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn types(site: &Site) -> Outcome {
    let installed = site.catalog.all();
    if installed.is_empty() {
        return Err("no replicable type is installed".into());
    }
    for it in &installed {
        let (db, table) = match site.role() {
            Role::Primary => (&site.db, it.identity.table.name.clone()),
            Role::Secondary => (
                site.tracking.as_ref().ok_or("no tracking database")?,
                it.identity.registry_table(),
            ),
        };
        db.fetch_optional(
            &format!("SELECT 1 AS one FROM {} LIMIT 1", crate::db::ident(&table)),
            &[],
        )
        .await
        .map_err(|e| format!("{}: {e}", it.name()))?;
    }
    Ok(())
}

/// Every check, by GitLab's `<name>_check` key, in a fixed order.
async fn checks(site: &Site) -> Vec<(&'static str, Outcome)> {
    let master = async {
        if site.shutdown.is_cancelled() {
            Err("the site is shutting down".to_string())
        } else {
            Ok(())
        }
    };
    let tracking = async {
        match &site.tracking {
            Some(tracking) => Some(timed(database(tracking)).await),
            None => None,
        }
    };
    let (master, db, tracking, blobs, types) = tokio::join!(
        master,
        timed(database(&site.db)),
        tracking,
        timed(async { site.blobs.probe().await.map_err(|e| e.to_string()) }),
        timed(types(site)),
    );
    let mut out = vec![("master_check", master), ("db_check", db)];
    if let Some(tracking) = tracking {
        out.push(("tracking_db_check", tracking));
    }
    out.push(("blob_storage_check", blobs));
    out.push(("types_check", types));
    out
}

async fn readiness(State(site): State<AppState>) -> Response {
    let results = checks(&site).await;
    let ok = results.iter().all(|(_, outcome)| outcome.is_ok());
    let mut body = Map::new();
    body.insert("status".into(), if ok { "ok" } else { "failed" }.into());
    for (name, outcome) in results {
        let entry = match outcome {
            Ok(()) => json!({ "status": "ok" }),
            Err(message) => {
                tracing::warn!(check = name, %message, "readiness check failed");
                json!({ "status": "failed", "message": message })
            }
        };
        body.insert(name.into(), json!([entry]));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Value::Object(body))).into_response()
}
