//! The primary's site-to-site API: GitLab's retrieve endpoint and the
//! replication feed ([`crate::feed`]), all behind `GL-Geo` authentication.
//! Authentication is checked before anything else, so a refused request
//! learns nothing (not even whether the record exists) and gets no byte.

use super::{ApiError, AppState, auth};
use crate::blob_batch;
use crate::feed::{self, EventPage, FeedRecord, RecordPage, TypeInfo};
use crate::plugin::BlobPath;
use crate::primary::access::Access;
use crate::primary::{events, ingest, records, topology};
use crate::storage;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/api/v4/geo/retrieve/{replicable_name}/{replicable_id}",
            get(retrieve),
        )
        .route(
            "/api/v4/geo/retrieve/{replicable_name}",
            get(retrieve_batch),
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
    let not_found = || ApiError::NotFound(format!("{name} not found"));
    let record = records::by_id(&site.db, &it, id)
        .await?
        .ok_or_else(not_found)?;
    // Out of the requester's scope: the same answer as a missing record.
    let access = Access::of(&site.db, &requester).await?;
    if access.visible(&it, &[record.to_feed(&it)]).await? != [true] {
        return Err(not_found());
    }
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

/// Bytes read ahead per group of a batch answer: with the channel's two
/// groups in flight, what a batch answer holds in memory whatever its size.
const BATCH_READ_BUDGET: u64 = 1024 * 1024;
/// Most blobs read per group of a batch answer.
const BATCH_READ_GROUP: usize = 64;

/// `GET /api/v4/geo/retrieve/:replicable_name?ids=1,2,3&max_part_bytes=N`:
/// many small blobs of one type in one answer ([`crate::blob_batch`],
/// `docs/batch-retrieve.md`). The JWT `data` names the type and exactly
/// this id list, so a token for one set fetches nothing outside it.
async fn retrieve_batch(
    State(site): State<AppState>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = BatchQuery::parse(query.as_deref().unwrap_or(""));
    // The token must sign exactly this id list; a list that does not parse
    // is signed as the text it is, and refused after authentication.
    let expected = match &query.ids {
        Ok(ids) => blob_batch::batch_claim(&name, ids),
        Err(_) => serde_json::json!({"replicable_name": name, "replicable_ids": query.raw_ids}),
    };
    let requester = auth::geo(&site, &headers, &expected).await?;
    let ids = query.ids.map_err(ApiError::BadRequest)?;
    if let Some(problem) = query.problem {
        return Err(ApiError::BadRequest(problem));
    }
    let max_part = query.max_part_bytes.map_err(ApiError::BadRequest)?;
    let it = site
        .installed(&name)
        .ok_or_else(|| ApiError::NotFound(format!("{name} not found")))?;
    let found = records::by_ids(&site.db, &it, &ids).await?;
    // Out of the requester's scope: a not-found part, as a missing record.
    let access = Access::of(&site.db, &requester).await?;
    let feed: Vec<FeedRecord> = found.iter().map(|r| r.to_feed(&it)).collect();
    let visible = access.visible(&it, &feed).await?;
    let found: Vec<records::Record> = found
        .into_iter()
        .zip(visible)
        .filter_map(|(record, visible)| visible.then_some(record))
        .collect();
    // Isolated per record: a record the plugin traps on fails its own part.
    let paths = records::blob_paths(&it, &found).await?;
    let mut by_id: std::collections::HashMap<i64, (records::Record, Result<BlobPath, String>)> =
        found
            .into_iter()
            .zip(paths)
            .map(|(record, path)| (record.id, (record, path)))
            .collect();
    let work: Vec<(i64, Option<(records::Record, Result<BlobPath, String>)>)> =
        ids.iter().map(|&id| (id, by_id.remove(&id))).collect();
    let (sender, body) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    crate::metrics::RETRIEVE_BATCHES
        .with_label_values(&[it.name(), &requester.name])
        .inc();
    let served = crate::metrics::RETRIEVE_SERVED.with_label_values(&[it.name(), &requester.name]);
    tokio::spawn(answer_batch(
        site.clone(),
        it,
        work,
        max_part,
        sender,
        served,
    ));
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(blob_batch::CONTENT_TYPE),
    );
    Ok(response)
}

/// The query of a batch retrieve: the ids as parsed (what the token must
/// sign), and what is wrong with the request otherwise (said only after
/// authentication).
struct BatchQuery {
    raw_ids: String,
    /// The ids, if they are integers.
    ids: Result<Vec<i64>, String>,
    max_part_bytes: Result<u64, String>,
    /// A limit or rule the request breaks.
    problem: Option<String>,
}

impl BatchQuery {
    fn parse(query: &str) -> BatchQuery {
        let mut raw_ids = None;
        let mut max = None;
        let mut problem = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "ids" if raw_ids.is_none() => raw_ids = Some(value.into_owned()),
                "max_part_bytes" if max.is_none() => max = Some(value.into_owned()),
                other => problem = Some(format!("unknown or repeated query parameter {other:?}")),
            }
        }
        let ids = match &raw_ids {
            None => Err("ids is required".to_string()),
            Some(list) => list
                .split(',')
                .map(|s| s.trim().parse::<i64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "ids must be comma-separated integers".to_string()),
        };
        if let Ok(ids) = &ids {
            let distinct: std::collections::HashSet<i64> = ids.iter().copied().collect();
            if ids.len() > blob_batch::MAX_BATCH_IDS {
                problem = Some(format!(
                    "at most {} ids per batch retrieve, {} asked",
                    blob_batch::MAX_BATCH_IDS,
                    ids.len()
                ));
            } else if distinct.len() != ids.len() {
                problem = Some("ids must not repeat".into());
            }
        }
        let max_part_bytes = match max {
            None => Ok(blob_batch::DEFAULT_MAX_PART_BYTES),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n <= blob_batch::MAX_PART_BYTES_LIMIT => Ok(n),
                _ => Err(format!(
                    "max_part_bytes must be an integer from 0 to {}",
                    blob_batch::MAX_PART_BYTES_LIMIT
                )),
            },
        };
        BatchQuery {
            raw_ids: raw_ids.unwrap_or_default(),
            ids,
            max_part_bytes,
            problem,
        }
    }
}

/// Writes a batch answer into `sender`: one part per id in order, read in
/// groups of at most [`BATCH_READ_BUDGET`] bytes, then the end mark. Stops
/// when the client goes away.
async fn answer_batch(
    site: AppState,
    it: std::sync::Arc<crate::catalog::InstalledType>,
    work: Vec<(i64, Option<(records::Record, Result<BlobPath, String>)>)>,
    max_part: u64,
    mut sender: futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
    served: prometheus::IntCounter,
) {
    use futures::SinkExt;
    use storage::SmallRead;
    let name = it.name().to_string();
    let mut encoder = blob_batch::Encoder::default();
    let mut at = 0;
    while at < work.len() {
        let mut frame = bytes::BytesMut::new();
        let (id, found) = &work[at];
        match found {
            // No record, or no path: its part, alone.
            None | Some((_, Err(_))) => {
                let header = match found {
                    Some((_, Err(error))) => blob_batch::PartHeader::failed(
                        *id,
                        blob_batch::PartStatus::Error,
                        format!("blob path: {error}"),
                    ),
                    _ => blob_batch::PartHeader::failed(
                        *id,
                        blob_batch::PartStatus::NotFound,
                        format!("{name} not found"),
                    ),
                };
                for piece in encoder.part(&header, None) {
                    frame.extend_from_slice(&piece);
                }
                at += 1;
            }
            // The run of records with a path from here, read together (up
            // to the byte budget: the rest waits for the next group).
            Some((_, Ok(_))) => {
                let group: Vec<(i64, &records::Record, BlobPath)> = work[at..]
                    .iter()
                    .take(BATCH_READ_GROUP)
                    .map_while(|(id, found)| match found {
                        Some((record, Ok(path))) => Some((*id, record, path.clone())),
                        _ => None,
                    })
                    .collect();
                let paths: Vec<BlobPath> = group.iter().map(|(_, _, p)| p.clone()).collect();
                let reads = site
                    .blobs
                    .read_small(&name, &paths, max_part, BATCH_READ_BUDGET)
                    .await;
                at += reads.len();
                for ((id, record, _), read) in group.into_iter().zip(reads) {
                    let (header, bytes) = match read {
                        Ok(SmallRead::Whole(bytes)) => {
                            served.inc();
                            let checksum =
                                record.verification_checksum.as_deref().map(checksum_hex);
                            (
                                blob_batch::PartHeader::ok(id, bytes.len() as u64, checksum),
                                Some(bytes),
                            )
                        }
                        Ok(SmallRead::TooLarge(size)) => {
                            (blob_batch::PartHeader::too_large(id, size), None)
                        }
                        Err(error) if error.is_not_found() => (
                            blob_batch::PartHeader::failed(
                                id,
                                blob_batch::PartStatus::Missing,
                                format!("{name} {id} file not found"),
                            ),
                            None,
                        ),
                        Err(error) => (
                            blob_batch::PartHeader::failed(
                                id,
                                blob_batch::PartStatus::Error,
                                error.to_string(),
                            ),
                            None,
                        ),
                    };
                    for piece in encoder.part(&header, bytes) {
                        frame.extend_from_slice(&piece);
                    }
                }
            }
        }
        if sender.send(Ok(frame.freeze())).await.is_err() {
            return; // the client went away
        }
    }
    let _ = sender.send(Ok(encoder.end())).await;
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
    let requester = auth::geo(&site, &headers, &feed::records_claim(&name)).await?;
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
    let records: Vec<FeedRecord> = found.iter().map(|r| r.to_feed(&it)).collect();
    // `?ids=`: out of the requester's scope, omitted as a missing record.
    // A page is served whole: the consistency pass needs the columns of a
    // record that left the scope to find and remove its local copy
    // (`docs/decisions.md`, "Least access").
    let records = match query.ids {
        Some(_) => {
            Access::of(&site.db, &requester)
                .await?
                .filter(&it, records)
                .await?
        }
        None => records,
    };
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
    let requester = auth::geo(&site, &headers, &feed::feed_claim("events")).await?;
    if let Some(list) = &query.ids {
        let ids = id_list(list, feed::MAX_EVENTS_PER_PAGE as usize)?;
        let found = events::by_ids(&site.db, &ids).await?;
        return event_page(&site, &requester, found).await.map(Json);
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
            return event_page(&site, &requester, found).await.map(Json);
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

/// A page of `found` events as `requester` may see it: the events of
/// records out of its scope withheld (named by id only, so its cursor
/// passes them and its gap tracking does not wait for them; see
/// `docs/decisions.md`, "Least access").
async fn event_page(
    site: &AppState,
    requester: &feed::NodeSettings,
    mut found: Vec<feed::FeedEvent>,
) -> Result<EventPage, ApiError> {
    let withheld = Access::of(&site.db, requester)
        .await?
        .withheld_events(site, &found)
        .await?;
    found.retain(|e| withheld.binary_search(&e.id).is_err());
    let last = events::last(&site.db).await?;
    // The secondary keeps these ids (its cursor): the commits that wrote
    // them must survive a power cut, including verification's unsynced
    // ones (`Db::begin_unsynced`).
    site.db.sync_commits_seen().await?;
    Ok(EventPage {
        events: found,
        withheld,
        last_event_id: last.map(|(id, _)| id),
        last_event_at: last.map(|(_, at)| at),
    })
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
