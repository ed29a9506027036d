//! Request authentication: GitLab Geo's site-to-site scheme and admin tokens,
//! backed by the site's database.

use super::ApiError;
use crate::auth::{admin_token, geo_jwt};
use crate::db::{Arg, Db, DbError};
use crate::feed::NodeSettings;
use crate::site::Site;
use axum::http::HeaderMap;

/// Checks a `GL-Geo <access_key>:<JWT>` request whose JWT must sign
/// `expected`. Any failure is a bare 401 (logged with its reason).
pub async fn geo(
    site: &Site,
    headers: &HeaderMap,
    expected: &serde_json::Value,
) -> Result<NodeSettings, ApiError> {
    let deny = |reason: String| {
        tracing::info!(%reason, "Geo request refused");
        ApiError::Unauthorized
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| deny("no Authorization header".into()))?
        .to_str()
        .map_err(|_| deny("Authorization header is not ASCII".into()))?;
    let (access_key, token) = geo_jwt::parse_header(header).map_err(|e| deny(e.to_string()))?;
    let found = crate::primary::sites::authenticate(site, &access_key)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| deny("unknown or disabled access key".into()))?;
    geo_jwt::verify(&token, &found.secret, expected)
        .map_err(|e| deny(format!("site {}: {e}", found.node.name)))?;
    Ok(found.node.clone())
}

/// Checks an admin token (`PRIVATE-TOKEN` or `Authorization: Bearer`).
pub async fn admin(site: &Site, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = admin_token::from_headers(headers)
        .map_err(|e| {
            tracing::info!(reason = %e, "admin request refused");
            ApiError::Unauthorized
        })?
        .ok_or(ApiError::Unauthorized)?;
    if check_token(&site.db, &token).await? {
        Ok(())
    } else {
        tracing::info!("admin request refused: unknown or revoked token");
        Err(ApiError::Unauthorized)
    }
}

/// Creates an admin token; returns the token (shown once) and its id.
pub async fn create_token(db: &Db, name: &str) -> Result<(i64, String), DbError> {
    let token = admin_token::generate();
    let now = Db::now();
    let id = db
        .fetch_one(
            "INSERT INTO admin_tokens (name, token_digest, created_at) VALUES ($1, $2, $3) RETURNING id",
            &[name.into(), admin_token::digest(&token).into(), now.into()],
        )
        .await?
        .i64("id")?;
    Ok((id, token))
}

/// Revokes a token; returns whether one was revoked.
pub async fn revoke_token(db: &Db, id: i64) -> Result<bool, DbError> {
    let n = db
        .execute(
            "UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            &[Db::now().into(), id.into()],
        )
        .await?;
    Ok(n == 1)
}

/// How often a token's `last_used_at` is written at most: polling scripts
/// (`/metrics`, status) must not turn every request into a write.
pub const LAST_USED_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Whether `token` is a live admin token. Notes its use in `last_used_at`,
/// at most once per [`LAST_USED_RESOLUTION`].
pub async fn check_token(db: &Db, token: &str) -> Result<bool, DbError> {
    let digest = admin_token::digest(token);
    let Some(row) = db
        .fetch_optional(
            "SELECT id, last_used_at FROM admin_tokens WHERE token_digest = $1 AND revoked_at IS NULL",
            &[Arg::from(digest)],
        )
        .await?
    else {
        return Ok(false);
    };
    let now = Db::now();
    let stale = row
        .opt_ts("last_used_at")?
        .is_none_or(|at| now - at >= LAST_USED_RESOLUTION);
    if stale {
        // Whichever request of the minute gets here first writes; the
        // condition keeps concurrent ones from writing again.
        db.execute(
            "UPDATE admin_tokens SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at <= $3)",
            &[
                now.into(),
                row.i64("id")?.into(),
                (now - LAST_USED_RESOLUTION).into(),
            ],
        )
        .await?;
    }
    Ok(true)
}

/// Middleware of every admin route: a request without a live admin token
/// gets a bare 401 before any extractor or handler sees it (so a bad body
/// or path answers nothing either).
pub async fn require_admin(
    axum::extract::State(site): axum::extract::State<crate::api::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match admin(&site, request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}
