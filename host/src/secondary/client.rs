//! The secondary's HTTP client for its primary: one method per route of the
//! replication feed ([`crate::feed`]) plus GitLab's retrieve API.
//!
//! Why one small client: every request must be signed afresh (the JWT lives
//! 60 s and names exactly the resource asked for), and the callers need to
//! tell failures apart: an unreachable primary is retried with backoff, a
//! 401 means this site's keys are wrong, and a 404 with `geo_code:
//! FILE_NOT_FOUND` means the primary lost the file (GitLab then backs off up
//! to 4 hours instead of 1).
//!
//! Like GitLab's `BlobDownloader`, connect and read timeouts are 60 s.
//!
//! The primary is not trusted to be well-behaved (a compromised or broken
//! primary must not exhaust the secondary):
//! - redirects are followed only within the primary's origin (same scheme,
//!   host and port), at most [`MAX_REDIRECTS`] of them: the primary never
//!   redirects (it streams object-stored blobs itself), so a redirect can
//!   only come from a proxy in front of it, and one elsewhere would carry
//!   the download, or the site's token, off to another host;
//! - a JSON answer is read up to [`MAX_JSON_BYTES`], an error body up to
//!   [`MAX_ERROR_BODY_BYTES`]; blobs are bounded by their record's size by
//!   the downloaders ([`super::sync`], [`super::batch`]);
//! - TLS is rustls with the platform's roots, plus the private CA in
//!   `[primary] ca_file` when set.

use crate::auth::geo_jwt;
use crate::blob_batch;
use crate::config::PrimarySection;
use crate::feed::{
    self, EventPage, FeedEvent, FeedRecord, NodeSettings, RecordPage, TopologySnapshot, TypeInfo,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// GitLab's connect, write and read timeouts for Geo transfers.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Most ids in one `records?ids=` request (the primary's limit).
pub const MAX_IDS_PER_REQUEST: usize = 1000;
/// Largest JSON answer read from the primary (feed pages, records, node
/// settings, topology…). The largest legitimate answer is a topology of a
/// very large instance or a page of 1,000 records with long column values,
/// a few MiB; 32 MiB leaves room for growth while a hostile or broken
/// primary cannot make the secondary buffer without end.
pub const MAX_JSON_BYTES: u64 = 32 * 1024 * 1024;
/// Largest error body read (GitLab's `{"message", "geo_code"}`).
pub const MAX_ERROR_BODY_BYTES: u64 = 16 * 1024;
/// Most redirects followed for one request (all within the primary's origin).
pub const MAX_REDIRECTS: usize = 5;

/// Why a request to the primary failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, DNS, timeout, or the connection broke.
    #[error("the primary is unreachable ({url}): {message}")]
    Unreachable { url: String, message: String },
    /// 401: the primary refused this site's access key or token.
    #[error("the primary refused this site's credentials (401) for {url}")]
    Unauthorized { url: String },
    /// 404 with `geo_code: FILE_NOT_FOUND`: the record exists but its file
    /// is missing on the primary.
    #[error("404 from {url}: {message}")]
    FileNotFound { url: String, message: String },
    /// Any other 404 (unknown record or type).
    #[error("404 from {url}: {message}")]
    NotFound { url: String, message: String },
    /// Any other non-2xx answer.
    #[error("{status} from {url}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// A 2xx answer that is not what the route promises.
    #[error("unreadable answer from {url}: {message}")]
    Decode { url: String, message: String },
    /// An answer larger than its limit: reading stopped there.
    #[error("answer larger than {limit} bytes ({what}), reading stopped: {url}")]
    TooLarge {
        url: String,
        limit: u64,
        what: &'static str,
    },
    /// A redirect the client refused to follow.
    #[error("redirect refused ({message}) from {url}")]
    Redirect { url: String, message: String },
    /// The client could not be built or the request not signed.
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// Whether the primary is missing the file (GitLab's `primary_missing_file`).
    pub fn is_missing_on_primary(&self) -> bool {
        matches!(self, ClientError::FileNotFound { .. })
    }

    /// Whether the primary could not be reached (worth retrying soon).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// The HTTP status, for answers that had one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Unauthorized { .. } => Some(401),
            ClientError::FileNotFound { .. } | ClientError::NotFound { .. } => Some(404),
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A signed client of one primary.
#[derive(Clone)]
pub struct PrimaryClient {
    http: reqwest::Client,
    base: String,
    access_key: String,
    secret: String,
}

impl std::fmt::Debug for PrimaryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryClient")
            .field("base", &self.base)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A failed request: a refused redirect, or an unreachable primary (the
/// message carries the whole chain of causes, such as a TLS certificate
/// error).
fn unreachable(url: &str, error: &reqwest::Error) -> ClientError {
    let mut message = error.to_string();
    let mut innermost = None;
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        innermost = Some(inner.to_string());
        source = inner.source();
    }
    let url = url.to_string();
    match innermost {
        // The policy's own reason.
        Some(message) if error.is_redirect() => ClientError::Redirect { url, message },
        _ => ClientError::Unreachable { url, message },
    }
}

/// Follows a redirect only to the origin of the primary's URL (scheme,
/// host and port), at most [`MAX_REDIRECTS`] times.
fn redirect_policy(base: &str) -> Result<reqwest::redirect::Policy, ClientError> {
    let origin = reqwest::Url::parse(base)
        .map_err(|e| ClientError::Setup(format!("[primary] url {base:?}: {e}")))?
        .origin();
    Ok(reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            attempt.error(error)
        } else if attempt.url().origin() != origin {
            let error = format!(
                "off the primary's origin {}: {}",
                origin.ascii_serialization(),
                attempt.url()
            );
            attempt.error(error)
        } else {
            attempt.follow()
        }
    }))
}

/// The CA certificates of `[primary] ca_file`.
fn private_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let setup = |message: String| {
        ClientError::Setup(format!("[primary] ca_file {}: {message}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| setup(e.to_string()))?;
    if certificates.is_empty() {
        return Err(setup("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// Reads `response`'s body, at most `limit` bytes: `Ok(Err(read))` if the
/// body is longer (`read`: its first `limit` bytes; the rest is never read).
async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Result<bytes::Bytes, bytes::Bytes>, reqwest::Error> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit as usize - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(Err(body.freeze()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}

impl PrimaryClient {
    /// A client of the primary in a secondary's `[primary]` section.
    pub fn new(primary: &PrimarySection) -> Result<PrimaryClient, ClientError> {
        PrimaryClient::with_timeout(primary, TIMEOUT)
    }

    /// Like [`PrimaryClient::new`] with shorter connect and read timeouts,
    /// for answers an operator waits for (status, GraphQL).
    pub fn with_timeout(
        primary: &PrimarySection,
        timeout: Duration,
    ) -> Result<PrimaryClient, ClientError> {
        if primary.secret_access_key.is_empty() {
            return Err(ClientError::Setup(
                "[primary] secret_access_key is empty".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .redirect(redirect_policy(&primary.url)?)
            .user_agent(concat!("geohost/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &primary.ca_file {
            builder = builder.tls_certs_merge(private_roots(path)?);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(format!("building the HTTP client: {e}")))?;
        Ok(PrimaryClient {
            http,
            base: primary.url.trim_end_matches('/').to_string(),
            access_key: primary.access_key.clone(),
            secret: primary.secret_access_key.clone(),
        })
    }

    /// The primary's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn authorization(&self, claim: &serde_json::Value) -> Result<String, ClientError> {
        geo_jwt::try_sign(&self.access_key, &self.secret, claim)
            .map_err(|e| ClientError::Setup(format!("signing the request: {e}")))
    }

    /// Sends a signed GET; returns the response if its status is 2xx.
    async fn send(
        &self,
        path_and_query: &str,
        claim: &serde_json::Value,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let response = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.authorization(claim)?)
            .header("X-Sendfile-Type", "X-Sendfile")
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        check_status(&url, response).await
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        claim: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let response = self.send(path_and_query, claim).await?;
        let url = response.url().to_string();
        let body = read_bounded(response, MAX_JSON_BYTES)
            .await
            .map_err(|e| unreachable(&url, &e))?
            .map_err(|_| ClientError::TooLarge {
                url: url.clone(),
                limit: MAX_JSON_BYTES,
                what: "the limit for JSON answers",
            })?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    /// `GET /api/v4/geo/node`: this secondary's settings on the primary.
    pub async fn node(&self) -> Result<NodeSettings, ClientError> {
        self.get_json("/api/v4/geo/node", &feed::feed_claim("node"))
            .await
    }

    /// `GET /api/v4/geo/topology`: every namespace and project.
    pub async fn topology(&self) -> Result<TopologySnapshot, ClientError> {
        self.get_json("/api/v4/geo/topology", &feed::feed_claim("topology"))
            .await
    }

    /// `GET /api/v4/geo/types`: the types installed on the primary.
    pub async fn types(&self) -> Result<Vec<TypeInfo>, ClientError> {
        self.get_json("/api/v4/geo/types", &feed::feed_claim("types"))
            .await
    }

    /// `GET …/records?after_id&limit`: up to `limit` records with id above
    /// `after_id`, in id order, and the model table's highest id.
    pub async fn records_after(
        &self,
        name: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<RecordPage, ClientError> {
        let limit = limit.clamp(1, feed::MAX_RECORDS_PER_PAGE);
        self.get_json(
            &format!("/api/v4/geo/replication/{name}/records?after_id={after_id}&limit={limit}"),
            &feed::records_claim(name),
        )
        .await
    }

    /// `GET …/records?ids=`: the records among `ids` that exist (any number
    /// of ids: sent [`MAX_IDS_PER_REQUEST`] at a time), in id order.
    pub async fn records_by_ids(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<FeedRecord>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let page: RecordPage = self
                .get_json(
                    &format!(
                        "/api/v4/geo/replication/{name}/records?ids={}",
                        list.join(",")
                    ),
                    &feed::records_claim(name),
                )
                .await?;
            out.extend(page.records);
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// `GET /api/v4/geo/events?after&limit&wait_ms`: events after the cursor,
    /// waiting up to `wait_ms` for the first (long-poll).
    pub async fn events(
        &self,
        after: i64,
        limit: i64,
        wait_ms: u64,
    ) -> Result<EventPage, ClientError> {
        let limit = limit.clamp(1, feed::MAX_EVENTS_PER_PAGE);
        let wait_ms = wait_ms.min(feed::MAX_WAIT_MS);
        self.get_json(
            &format!("/api/v4/geo/events?after={after}&limit={limit}&wait_ms={wait_ms}"),
            &feed::feed_claim("events"),
        )
        .await
    }

    /// `GET /api/v4/geo/events?ids=`: the events with these log ids that
    /// exist now (the gaps the cursor re-reads), in id order, and the ids
    /// of those the primary withholds (out of this site's scope).
    pub async fn events_by_ids(
        &self,
        ids: &[i64],
    ) -> Result<(Vec<FeedEvent>, Vec<i64>), ClientError> {
        let mut out = Vec::new();
        let mut withheld = Vec::new();
        for chunk in ids.chunks(feed::MAX_EVENTS_PER_PAGE as usize) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let page: EventPage = self
                .get_json(
                    &format!("/api/v4/geo/events?ids={}", list.join(",")),
                    &feed::feed_claim("events"),
                )
                .await?;
            out.extend(page.events);
            withheld.extend(page.withheld);
        }
        out.sort_by_key(|e| e.id);
        withheld.sort_unstable();
        Ok((out, withheld))
    }

    /// `GET …/search?keyword=`: the ids of the records matching `keyword`
    /// (at most [`feed::MAX_SEARCH_IDS`]).
    pub async fn search(&self, name: &str, keyword: &str) -> Result<Vec<i64>, ClientError> {
        let page: feed::SearchPage = self
            .get_json(
                &format!(
                    "/api/v4/geo/replication/{name}/search?keyword={}",
                    encode_query(keyword)
                ),
                &feed::search_claim(name),
            )
            .await?;
        Ok(page.ids)
    }

    /// `POST /api/v4/geo/status`: reports this site's status.
    pub async fn post_status(
        &self,
        status: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ClientError> {
        let url = format!("{}/api/v4/geo/status", self.base);
        let response = self
            .http
            .post(&url)
            .header(
                reqwest::header::AUTHORIZATION,
                self.authorization(&feed::feed_claim("status"))?,
            )
            .json(status)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        check_status(&url, response).await.map(drop)
    }

    /// `GET /api/v4/geo/retrieve/:name/:id`: the blob, as a 2xx response
    /// whose body the caller streams (and bounds: the record's size).
    pub async fn retrieve(&self, name: &str, id: i64) -> Result<reqwest::Response, ClientError> {
        self.send(
            &format!("/api/v4/geo/retrieve/{name}/{id}"),
            &feed::retrieve_claim(name, id),
        )
        .await
    }
}

/// A batch answer being read, part by part.
pub type BatchAnswer =
    blob_batch::Decoder<futures::stream::BoxStream<'static, Result<bytes::Bytes, reqwest::Error>>>;

impl PrimaryClient {
    /// `GET /api/v4/geo/retrieve/:name?ids=…&max_part_bytes=…`: many blobs
    /// of one type in one answer ([`blob_batch`]), read part by part. At
    /// most [`blob_batch::MAX_BATCH_IDS`] ids; the token binds exactly this
    /// list.
    pub async fn retrieve_batch(
        &self,
        name: &str,
        ids: &[i64],
        max_part_bytes: u64,
    ) -> Result<BatchAnswer, ClientError> {
        use futures::StreamExt;
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let response = self
            .send(
                &format!(
                    "/api/v4/geo/retrieve/{name}?ids={}&max_part_bytes={max_part_bytes}",
                    list.join(",")
                ),
                &blob_batch::batch_claim(name, ids),
            )
            .await?;
        Ok(blob_batch::Decoder::new(
            response.bytes_stream().boxed(),
            max_part_bytes,
        ))
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters
/// stay as they are).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Passes a 2xx response through; maps anything else to a [`ClientError`],
/// reading GitLab's JSON error body (`message`, `geo_code`) when there is one.
async fn check_status(
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = url.to_string();
    if status == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized { url });
    }
    // Error bodies are small JSON; cap what is read from a misbehaving peer.
    let body = match read_bounded(response, MAX_ERROR_BODY_BYTES).await {
        Ok(Ok(body) | Err(body)) => body,
        Err(_) => bytes::Bytes::new(),
    };
    let body = &body[..];
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| {
            m.as_str()
                .map(str::to_string)
                .or_else(|| Some(m.to_string()))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    let geo_code = json
        .as_ref()
        .and_then(|j| j.get("geo_code"))
        .and_then(|c| c.as_str());
    Err(match (status, geo_code) {
        (StatusCode::NOT_FOUND, Some("FILE_NOT_FOUND")) => {
            ClientError::FileNotFound { url, message }
        }
        (StatusCode::NOT_FOUND, _) => ClientError::NotFound { url, message },
        _ => ClientError::Status {
            url,
            status: status.as_u16(),
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode as Code};
    use axum::routing::get;
    use serde_json::json;

    const KEY: &str = "access-key";
    const SECRET: &str = "secret-access-key-secret-access-key-0000";

    fn checked(headers: &HeaderMap, expected: serde_json::Value) -> Result<(), Code> {
        let header = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(Code::UNAUTHORIZED)?;
        let (key, token) = geo_jwt::parse_header(header).map_err(|_| Code::UNAUTHORIZED)?;
        if key != KEY {
            return Err(Code::UNAUTHORIZED);
        }
        geo_jwt::verify(&token, SECRET, &expected).map_err(|_| Code::UNAUTHORIZED)
    }

    /// A fake primary answering each kind of failure.
    async fn fake_primary() -> String {
        let router = axum::Router::new()
            .route(
                "/api/v4/geo/types",
                get(|headers: HeaderMap| async move {
                    checked(&headers, feed::feed_claim("types"))?;
                    Ok::<_, Code>(Json(json!([{"name": "t", "version": "1.0.0", "sha256": "x",
                        "title": "T", "title_plural": "Ts"}])))
                }),
            )
            .route(
                "/api/v4/geo/retrieve/{name}/{id}",
                get(
                    |axum::extract::Path((name, id)): axum::extract::Path<(String, i64)>,
                     headers: HeaderMap| async move {
                        checked(&headers, feed::retrieve_claim(&name, id))
                            .map_err(|c| (c, Json(json!({"message": "401 Unauthorized"}))))?;
                        match id {
                            1 => Ok("blob".to_string()),
                            2 => Err((
                                Code::NOT_FOUND,
                                Json(json!({"message": "t 2 file not found", "geo_code": "FILE_NOT_FOUND"})),
                            )),
                            3 => Err((Code::NOT_FOUND, Json(json!({"message": "t not found"})))),
                            _ => Err((Code::SERVICE_UNAVAILABLE, Json(json!({"message": "busy"})))),
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}/")
    }

    fn client(url: &str, secret: &str) -> PrimaryClient {
        PrimaryClient::new(&PrimarySection {
            url: url.into(),
            access_key: KEY.into(),
            secret_access_key: secret.into(),
            ca_file: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn signs_requests_and_sorts_failures() {
        let url = fake_primary().await;
        let primary = client(&url, SECRET);
        assert_eq!(primary.types().await.unwrap()[0].name, "t");
        let ok = primary.retrieve("t", 1).await.unwrap();
        assert_eq!(ok.text().await.unwrap(), "blob");

        let missing = primary.retrieve("t", 2).await.unwrap_err();
        assert!(missing.is_missing_on_primary(), "{missing}");
        assert!(
            missing.to_string().contains("t 2 file not found"),
            "{missing}"
        );
        let unknown = primary.retrieve("t", 3).await.unwrap_err();
        assert!(matches!(unknown, ClientError::NotFound { .. }), "{unknown}");
        assert!(!unknown.is_missing_on_primary());
        let busy = primary.retrieve("t", 4).await.unwrap_err();
        assert_eq!(busy.status(), Some(503), "{busy}");

        let wrong = client(&url, "another-secret");
        assert!(matches!(
            wrong.types().await.unwrap_err(),
            ClientError::Unauthorized { .. }
        ));
        assert!(matches!(
            wrong.retrieve("t", 1).await.unwrap_err(),
            ClientError::Unauthorized { .. }
        ));
    }

    /// A redirect loop within the primary's origin stops after
    /// [`MAX_REDIRECTS`]; an error body is read only up to its cap; a
    /// `ca_file` that cannot be read is refused when the client is built.
    #[tokio::test]
    async fn redirects_error_bodies_and_ca_files_are_bounded() {
        let router = axum::Router::new()
            .route(
                "/api/v4/geo/node",
                get(|| async { axum::response::Redirect::temporary("/api/v4/geo/node") }),
            )
            .route(
                "/api/v4/geo/topology",
                get(|| async { (Code::INTERNAL_SERVER_ERROR, "e".repeat(4 << 20)) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let primary = client(&format!("http://{address}"), SECRET);

        let looping = primary.node().await.unwrap_err();
        assert!(matches!(looping, ClientError::Redirect { .. }), "{looping}");
        assert!(
            looping.to_string().contains("more than 5 redirects"),
            "{looping}"
        );
        let error = primary.topology().await.unwrap_err();
        assert_eq!(error.status(), Some(500));
        assert!(error.to_string().len() < 400, "{error}");

        let missing = PrimaryClient::new(&PrimarySection {
            url: format!("http://{address}"),
            access_key: KEY.into(),
            secret_access_key: SECRET.into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
        })
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("[primary] ca_file /nonexistent/ca.pem: "),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn an_absent_primary_is_unreachable() {
        // Bind then drop a listener: nothing answers on that port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = client(&format!("http://{address}"), SECRET)
            .node()
            .await
            .unwrap_err();
        assert!(error.is_unreachable(), "{error}");
    }
}
