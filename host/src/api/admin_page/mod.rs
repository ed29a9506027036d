//! The admin web page: GitLab's *Admin > Geo > Sites* and *Replication
//! details*, served by the host.
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/geo` | redirect to `/admin/geo/sites` |
//! | `GET /admin/geo/sites` | the page, Sites view |
//! | `GET /admin/geo/replication/{name}` | the page, Replication details of a type |
//! | `GET /admin/geo/assets/{file}` | its script and style sheet |
//!
//! The page is plain HTML, CSS and a JavaScript module embedded in the
//! binary (no build step). The shell carries no data, so it needs no token:
//! the browser asks for the admin token once (kept in `sessionStorage`) and
//! the script reads only the public admin APIs with it
//! (`/api/v4/geo_sites/status`, `/api/v4/geo_sites`, `/api/graphql`), which
//! check it as for any other client. A strict Content-Security-Policy lets
//! the page load only its own assets and talk only to its own site.

use super::AppState;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The page's Content-Security-Policy: its own script, style and API only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/admin/geo",
            get(|| async { Redirect::to("/admin/geo/sites") }),
        )
        .route("/admin/geo/sites", get(page))
        .route("/admin/geo/replication/{name}", get(page))
        .route("/admin/geo/assets/{file}", get(asset))
}

fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary: revalidate every time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn page() -> Response {
    with_headers("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => with_headers("text/javascript; charset=utf-8", APP_JS),
        "app.css" => with_headers("text/css; charset=utf-8", APP_CSS),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_carries_no_data_and_loads_only_its_assets() {
        // Every script and style sheet the shell names is one we serve.
        for needle in [
            r#"src="/admin/geo/assets/app.js""#,
            r#"href="/admin/geo/assets/app.css""#,
        ] {
            assert!(INDEX_HTML.contains(needle), "{needle}");
        }
        assert!(
            !INDEX_HTML.contains("<style"),
            "inline styles break the CSP"
        );
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline scripts break the CSP"
        );
        // The token goes in a header, never in a URL.
        assert!(APP_JS.contains("PRIVATE-TOKEN"));
        assert!(!APP_JS.contains("private_token="));
    }
}
