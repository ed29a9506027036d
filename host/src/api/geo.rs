//! The primary's site-to-site API: GitLab's retrieve endpoint and the
//! replication feed ([`crate::feed`]), all behind `GL-Geo` authentication.
//! Authentication is checked before anything else, so a refused request
//! learns nothing (not even whether the record exists) and gets no byte.

use super::{ApiError, AppState, auth};
use crate::feed::{self, EventPage, FeedRecord, RecordPage, TypeInfo};
use crate::primary::{events, ingest, records, topology};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::time::Duration;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/api/v4/geo/retrieve/{replicable_name}/{replicable_id}",
            get(retrieve),
        )
        .route("/api/v4/geo/node", get(node))
        .route("/api/v4/geo/topology", get(topology))
        .route("/api/v4/geo/types", get(types))
        .route(
            "/api/v4/geo/replication/{replicable_name}/records",
            get(records),
        )
        .route("/api/v4/geo/events", get(events))
        .route(
            "/api/v4/geo/replication/{replicable_name}/search",
            get(search),
        )
        .route(
            "/api/v4/geo/status",
            post(receive_status)
                .layer(axum::extract::DefaultBodyLimit::max(feed::MAX_STATUS_BYTES)),
        )
}

/// `GET /api/v4/geo/retrieve/:replicable_name/:replicable_id`: streams a blob.
async fn retrieve(
    State(site): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The JWT must sign exactly this route; a non-numeric id can match no token.
    let numeric: Option<i64> = id.parse().ok();
    let expected = match numeric {
        Some(id) => feed::retrieve_claim(&name, id),
        None => serde_json::json!({"replicable_name": name, "replicable_id": id}),
    };
    let requester = auth::geo(&site, &headers, &expected).await?;
    let id = numeric.ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let it = site
        .installed(&name)
        .ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let record = records::by_id(&site.db, &it, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let path = ingest::blob_path(&it, id, &record.values)
        .await
        .map_err(ApiError::from)?;
    let (size, stream) = match site.blobs.get(it.name(), &path).await {
        Ok(found) => found,
        Err(error) if error.is_not_found() => {
            return Err(ApiError::FileNotFound(format!(
                "{name} {id} file not found"
            )));
        }
        Err(error) => return Err(ApiError::Internal(error.to_string())),
    };
    crate::metrics::RETRIEVE_SERVED
        .with_label_values(&[it.name(), &requester.name])
        .inc();
    let file_name = path
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or("blob")
        .replace('"', "");
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Geohost's addition: the checksum the primary holds for this record, so
    // the secondary checks the download against the same moment's state.
    // It is kept after a failed verification (the last good one), so a blob
    // corrupted on the primary is never accepted.
    if let Some(checksum) = &record.verification_checksum
        && let Ok(v) = HeaderValue::from_str(&checksum_hex(checksum))
    {
        h.insert("x-geo-checksum", v);
    }
    Ok(response)
}

/// A stored checksum as hex: SHA-256 checksums are stored as bytes; GitLab's
/// object-storage checksums (padded sizes) are valid hex too.
pub fn checksum_hex(stored: &[u8]) -> String {
    hex::encode(stored)
}

/// `GET /api/v4/geo/node`: the calling secondary's own settings.
async fn node(
    State(site): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<feed::NodeSettings>, ApiError> {
    let node = auth::geo(&site, &headers, &feed::feed_claim("node")).await?;
    Ok(Json(node))
}

/// `GET /api/v4/geo/topology`: every namespace and project.
async fn topology(
    State(site): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<feed::TopologySnapshot>, ApiError> {
    auth::geo(&site, &headers, &feed::feed_claim("topology")).await?;
    Ok(Json(topology::snapshot(&site.db).await?))
}

/// `GET /api/v4/geo/types`: the installed types.
async fn types(
    State(site): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TypeInfo>>, ApiError> {
    auth::geo(&site, &headers, &feed::feed_claim("types")).await?;
    Ok(Json(
        site.catalog
            .all()
            .iter()
            .map(|it| TypeInfo {
                name: it.identity.name.clone(),
                version: it.identity.version.clone(),
                sha256: it.plugin.sha256().to_string(),
                title: it.identity.title.clone(),
                title_plural: it.identity.title_plural.clone(),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    after_id: Option<i64>,
    limit: Option<i64>,
    /// Comma-separated ids.
    ids: Option<String>,
}

/// `GET /api/v4/geo/replication/:name/records?after_id&limit` or `?ids=1,2,3`.
async fn records(
    State(site): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RecordsQuery>,
    headers: HeaderMap,
) -> Result<Json<RecordPage>, ApiError> {
    auth::geo(&site, &headers, &feed::records_claim(&name)).await?;
    let it = site
        .installed(&name)
        .ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let found = match &query.ids {
        Some(list) => records::by_ids(&site.db, &it, &id_list(list, 1000)?).await?,
        None => {
            let limit = query.limit.unwrap_or(1000);
            if !(1..=feed::MAX_RECORDS_PER_PAGE).contains(&limit) {
                return Err(ApiError::BadRequest(format!(
                    "limit must be 1 to {}",
                    feed::MAX_RECORDS_PER_PAGE
                )));
            }
            records::page(&site.db, &it, query.after_id.unwrap_or(0), limit).await?
        }
    };
    let max_id = records::max_id(&site.db, &it).await?;
    let records = found
        .iter()
        .map(|r| FeedRecord {
            id: r.id,
            columns: r.columns_json(&it),
            verification_state: r.verification_state,
            verification_checksum: r.verification_checksum.as_deref().map(checksum_hex),
        })
        .collect();
    Ok(Json(RecordPage { records, max_id }))
}

/// A `?ids=` list: comma-separated integers, at most `max`.
fn id_list(list: &str, max: usize) -> Result<Vec<i64>, ApiError> {
    let ids: Vec<i64> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::BadRequest("ids must be comma-separated integers".into()))?;
    if ids.len() > max {
        return Err(ApiError::BadRequest(format!(
            "at most {max} ids per request"
        )));
    }
    Ok(ids)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
    wait_ms: Option<u64>,
    /// Comma-separated log ids: those events, if they exist (the cursor
    /// re-reading the gaps in the ids it saw).
    ids: Option<String>,
}

/// `GET /api/v4/geo/events?after&limit&wait_ms`: events after a cursor,
/// waiting up to `wait_ms` for the first one (long-poll); or
/// `?ids=1,2`: those events that exist.
async fn events(
    State(site): State<AppState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Json<EventPage>, ApiError> {
    auth::geo(&site, &headers, &feed::feed_claim("events")).await?;
    if let Some(list) = &query.ids {
        let ids = id_list(list, feed::MAX_EVENTS_PER_PAGE as usize)?;
        let found = events::by_ids(&site.db, &ids).await?;
        let last = events::last(&site.db).await?;
        return Ok(Json(EventPage {
            events: found,
            last_event_id: last.map(|(id, _)| id),
            last_event_at: last.map(|(_, at)| at),
        }));
    }
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(250);
    if !(1..=feed::MAX_EVENTS_PER_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {}",
            feed::MAX_EVENTS_PER_PAGE
        )));
    }
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(feed::MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut signal = site.events.subscribe();
    loop {
        signal.borrow_and_update();
        let found = events::after(&site.db, after, limit).await?;
        let now = tokio::time::Instant::now();
        if !found.is_empty() || now >= deadline || site.shutdown.is_cancelled() {
            let last = events::last(&site.db).await?;
            return Ok(Json(EventPage {
                events: found,
                last_event_id: last.map(|(id, _)| id),
                last_event_at: last.map(|(_, at)| at),
            }));
        }
        // Woken by a commit in this process, or re-check every second for
        // writers in other processes (the CLI).
        let nap = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = signal.changed() => {}
            _ = tokio::time::sleep(nap) => {}
            _ = site.shutdown.cancelled() => {}
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    keyword: Option<String>,
}

/// `GET /api/v4/geo/replication/:name/search?keyword=`: the ids of the
/// records matching a keyword (GraphQL's `keyword` filter on a secondary).
async fn search(
    State(site): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Result<Json<feed::SearchPage>, ApiError> {
    auth::geo(&site, &headers, &feed::search_claim(&name)).await?;
    let it = site
        .installed(&name)
        .ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let ids = records::search_ids(
        &site.db,
        &it,
        query.keyword.as_deref().unwrap_or(""),
        feed::MAX_SEARCH_IDS,
    )
    .await?;
    Ok(Json(feed::SearchPage { ids }))
}

/// `POST /api/v4/geo/status`: a secondary's status report, kept in
/// `geo_node_statuses` under the site the request is signed by (whatever
/// `geo_node_id` it claims).
async fn receive_status(
    State(site): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::http::StatusCode, ApiError> {
    let node = auth::geo(&site, &headers, &feed::feed_claim("status")).await?;
    let status = match serde_json::from_slice(&body) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return Err(ApiError::BadRequest(
                "the status must be a JSON object".into(),
            ));
        }
    };
    crate::status::store::save(&site.db, node.id, &status).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
