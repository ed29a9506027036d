//! The HTTP API of a site (axum).
//!
//! - [`geo`]: what secondaries call on the primary, authenticated the
//!   GitLab Geo way (`GL-Geo <access_key>:<JWT>`): the retrieve API and the
//!   replication feed ([`crate::feed`]).
//! - [`admin`]: what operators and package registries call, with an admin
//!   token: ingest, namespaces and projects.
//! - [`geo_sites`]: GitLab's Geo sites API, in both route families
//!   (`/api/v4/geo_sites`, `/api/v4/geo_nodes`): sites, their status, a
//!   secondary's failures.
//! - [`probes`]: `/-/health`, `/-/liveness`, `/-/readiness`, for load
//!   balancers and Kubernetes (an address allow-list, not a token).
//! - [`metrics`]: `/metrics`, Prometheus text.
//! - [`graphql`]: `/api/graphql`, GitLab's Geo registries and mutations.
//! - [`admin_page`]: `/admin/geo/…`, the admin web page (a shell without
//!   data; its script calls the admin routes with the token).
//!
//! Every route of [`admin`], [`geo_sites`], [`metrics`], [`graphql`] and
//! [`plugins`] is an admin route ([`AdminRoutes`]): the admin-token check
//! ([`auth::require_admin`]) runs before anything else. The admin page's
//! shell is public (it holds no data); the probes answer the allow-listed
//! networks, or an admin token.
//!
//! Every error is JSON `{"message": …}` with a 4xx or 5xx status; a failed
//! authentication is always a bare 401, whatever failed.

pub(crate) mod admin;
pub(crate) mod admin_page;
pub mod auth;
pub(crate) mod geo;
pub(crate) mod geo_sites;
pub(crate) mod graphql;
pub(crate) mod metrics;
pub(crate) mod pagination;
pub(crate) mod plugins;
pub(crate) mod probes;
pub(crate) mod rejection;

use crate::site::Site;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// The application state handlers receive.
pub type AppState = Arc<Site>;

/// Routes that need an admin token; [`router`] puts them behind
/// [`auth::require_admin`], and [`admin_route_paths`] lists them.
pub struct AdminRoutes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Default for AdminRoutes {
    fn default() -> Self {
        AdminRoutes::new()
    }
}

impl AdminRoutes {
    pub fn new() -> AdminRoutes {
        AdminRoutes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    /// Adds an admin route (axum's path syntax, `{param}`).
    pub fn route(
        mut self,
        path: &'static str,
        methods: axum::routing::MethodRouter<AppState>,
    ) -> AdminRoutes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    pub fn merge(mut self, other: AdminRoutes) -> AdminRoutes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }
}

fn admin_routes() -> AdminRoutes {
    admin::routes()
        .merge(geo_sites::routes())
        .merge(metrics::routes())
        .merge(graphql::routes())
        .merge(plugins::routes())
}

/// The path of every admin route (`/api/v4/geo_sites/{id}` style), as the
/// router has them: what the tests check anonymous requests against.
pub fn admin_route_paths() -> Vec<&'static str> {
    admin_routes().paths
}

/// Refuses a write (or a read of what only the primary holds) on a
/// secondary.
pub(crate) fn primary_only(site: &Site) -> Result<(), ApiError> {
    if site.role() == crate::config::Role::Primary {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "this is a secondary site: write on the primary".into(),
        ))
    }
}

/// The largest JSON request body (admin routes, GraphQL): 1 MiB.
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;

/// The whole router of a site.
pub fn router(site: Arc<Site>) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            site.clone(),
            auth::require_admin,
        ));
    Router::new()
        .merge(geo::routes())
        .merge(probes::routes(site.clone()))
        .merge(admin_page::routes())
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // JSON bodies (admin, GraphQL) are small; ingest streams its body
        // under `storage.max_blob_bytes` instead.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::from_fn(rejection::json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(site)
}

/// An API error: status and message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("401 Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// GitLab's missing-file answer: 404 with `geo_code: FILE_NOT_FOUND`.
    #[error("{0}")]
    FileNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"message": "401 Unauthorized"}),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"message": m})),
            ApiError::FileNotFound(m) => (
                StatusCode::NOT_FOUND,
                json!({"message": m, "geo_code": "FILE_NOT_FOUND"}),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"message": m})),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({"message": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"message": m})),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, json!({"message": m})),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, json!({"message": m})),
            ApiError::Internal(m) => {
                tracing::error!(message = %m, "internal error answering a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"message": "500 Internal Server Error"}),
                )
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::primary::access::AccessError> for ApiError {
    fn from(e: crate::primary::access::AccessError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::catalog::CallError> for ApiError {
    fn from(e: crate::catalog::CallError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::primary::ingest::IngestError> for ApiError {
    fn from(e: crate::primary::ingest::IngestError) -> Self {
        use crate::primary::ingest::IngestError as E;
        match e {
            E::UnknownType(_) | E::NotFound(_) => ApiError::NotFound(e.to_string()),
            E::Invalid(m) => ApiError::Unprocessable(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Body(m) => ApiError::BadRequest(m),
            E::TooLarge(_) => ApiError::TooLarge(e.to_string()),
            E::Plugin(p) => ApiError::Unprocessable(p.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::primary::topology::TopologyError> for ApiError {
    fn from(e: crate::primary::topology::TopologyError) -> Self {
        use crate::primary::topology::TopologyError as E;
        match e {
            E::Invalid(m) => ApiError::Unprocessable(m),
            E::NotFound(m) => ApiError::NotFound(format!("{m} not found")),
            E::Db(d) => d.into(),
        }
    }
}

impl From<crate::primary::sites::SiteError> for ApiError {
    fn from(e: crate::primary::sites::SiteError) -> Self {
        use crate::primary::sites::SiteError as E;
        match e {
            E::Invalid(m) => ApiError::Unprocessable(m),
            E::NotFound(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled. Handlers
/// see the client's address (`ConnectInfo<SocketAddr>`: the probes'
/// allow-list).
///
/// Nagle's algorithm is off: a small answer (a blob, a feed page) written
/// after its headers would otherwise wait up to 40 ms for the client's
/// delayed ACK.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
