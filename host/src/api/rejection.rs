//! Every error answer is JSON: axum's own rejections (a malformed or
//! mistyped JSON body, a missing content type, a bad query string or path
//! segment, a body over the limit, a method the route lacks) are plain
//! text or empty; [`json_errors`] rewrites them as the API's
//! `{"message": …}`, keeping their status and headers.
//!
//! A 413 also says `Connection: close`: the request's body was not read
//! to its end, so the connection cannot carry another request, and a
//! client that pools connections must not send its next one there.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// The longest rejection text kept (axum's are a line or two).
const MAX_MESSAGE_BYTES: usize = 4096;

/// Middleware: a 4xx or 5xx answer that is not JSON becomes
/// `{"message": <its text, or the status's reason>}`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        )
    } else {
        text
    };
    let body = serde_json::json!({ "message": message }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
