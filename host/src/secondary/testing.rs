//! Test support for the secondary's unit tests: the shipped Helm type,
//! tracking databases with its registry table, and a fake primary that
//! serves the replication feed and the retrieve API from memory.

use super::client::PrimaryClient;
use crate::catalog::InstalledType;
use crate::config::PrimarySection;
use crate::db::testing::test_databases;
use crate::db::{Db, migrate, template};
use crate::feed::{EventPage, FeedEvent, FeedRecord, NodeSettings, RecordPage, TopologySnapshot};
use crate::plugin::{Limits, PluginRuntime, builtin};
use crate::states::VerificationState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// The shipped Helm type (compiled once per test process).
pub fn helm() -> Arc<InstalledType> {
    static HELM: OnceLock<Arc<InstalledType>> = OnceLock::new();
    HELM.get_or_init(|| {
        let runtime = PluginRuntime::new(Limits::default(), None).expect("plugin runtime");
        let component = builtin::by_stem("helm-metadata-cache").expect("the Helm type is shipped");
        Arc::new(InstalledType::new(
            runtime.load(component.bytes).expect("the Helm type loads"),
        ))
    })
    .clone()
}

/// The shipped Helm type and its registry table.
pub fn helm_registry() -> (Arc<InstalledType>, super::registry::Registry) {
    let it = helm();
    let registry = super::registry::Registry::of(&it);
    (it, registry)
}

/// Fresh tracking databases (SQLite, and PostgreSQL when configured),
/// migrated, with the Helm registry table.
pub async fn tracking_databases() -> Vec<(&'static str, Db)> {
    let helm = helm();
    let mut out = Vec::new();
    for (backend, db) in test_databases().await {
        migrate::tracking(&db).await.expect("tracking migrations");
        template::ensure_tracking_tables(&db, &helm.identity)
            .await
            .expect("registry table");
        out.push((backend, db));
    }
    out
}

/// One round of a test, per tracking database: `(backend, db, primary,
/// dir, blobs, downloader)`, a fake primary, a blob store in the temporary
/// folder `dir`, and a downloader from the primary into `db` and `blobs`.
pub type Rig = (
    &'static str,
    Db,
    FakePrimary,
    tempfile::TempDir,
    crate::storage::BlobStore,
    super::sync::Downloader,
);

/// A [`Rig`] for each of the [`tracking_databases`].
pub async fn rigs() -> Vec<Rig> {
    let mut out = Vec::new();
    for (backend, db) in tracking_databases().await {
        let primary = FakePrimary::start().await;
        let (dir, blobs) = blob_store();
        let d = downloader(&primary, &db, &blobs);
        out.push((backend, db, primary, dir, blobs, d));
    }
    out
}

/// One blob on the fake primary.
#[derive(Debug, Clone)]
pub struct FakeBlob {
    pub bytes: Vec<u8>,
    /// Sent as `x-geo-checksum` (when `Some`).
    pub header_checksum: Option<String>,
    /// Answer `FILE_NOT_FOUND` instead of the bytes.
    pub missing: bool,
}

/// What the fake primary holds.
#[derive(Debug, Default)]
pub struct FakeState {
    pub node: Option<NodeSettings>,
    pub topology: TopologySnapshot,
    pub records: BTreeMap<i64, FeedRecord>,
    pub blobs: HashMap<i64, FakeBlob>,
    pub events: Vec<FeedEvent>,
    /// Log ids of events withheld from this secondary (out of its scope):
    /// listed in a page's `withheld`, never served.
    pub withheld: Vec<i64>,
    /// The last event id handed out.
    pub last_event_id: i64,
    /// Requests seen, by path.
    pub hits: HashMap<String, usize>,
    /// Cut every batch answer in the middle of this part (0-based): the
    /// connection breaks there.
    pub cut_batch_at_part: Option<usize>,
    /// Answer `records` with a JSON page that never ends (a hostile primary).
    pub endless_records: bool,
    /// Answer the single retrieve with bytes that never end, without a
    /// `Content-Length`.
    pub endless_blobs: bool,
    /// Bytes of endless answers the fake managed to send.
    pub endless_sent: u64,
    /// Answer the single retrieve with a redirect to this base URL (the
    /// same path, `?redirected=1` added).
    pub redirect_retrieve_to: Option<String>,
}

/// A fake primary for one type, on a loopback port.
#[derive(Clone)]
pub struct FakePrimary {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
}

/// The SHA-256 hex of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Node settings replicating everything, GitLab's default capacities.
pub fn node_settings() -> NodeSettings {
    NodeSettings {
        id: 2,
        name: "secondary".into(),
        url: "http://127.0.0.1:1".into(),
        internal_url: None,
        primary: false,
        enabled: true,
        selective_sync_type: None,
        namespace_ids: vec![],
        selective_sync_shards: vec![],
        sync_object_storage: false,
        files_max_capacity: 10,
        repos_max_capacity: 25,
        container_repositories_max_capacity: 10,
        verification_max_capacity: 100,
        minimum_reverification_interval: 7,
    }
}

/// A Helm record of project `project_id` with `bytes` as its blob.
pub fn helm_record(
    id: i64,
    project_id: i64,
    file_store: i64,
    checksum: Option<String>,
) -> FeedRecord {
    let columns = json!({
        "created_at": "2026-11-28T10:00:00.000000Z",
        "updated_at": "2026-11-28T10:00:00.000000Z",
        "last_downloaded_at": null,
        "project_id": project_id,
        "size": 0,
        "status": 0,
        "file_store": file_store,
        "channel": format!("channel{id}"),
        "file": "index.yaml",
        "object_storage_key": format!("{:02x}/{:02x}/key{id}", id % 256, project_id % 256),
    });
    FeedRecord {
        id,
        columns: columns.as_object().expect("an object").clone(),
        verification_state: if checksum.is_some() {
            VerificationState::Succeeded
        } else {
            VerificationState::Pending
        },
        verification_checksum: checksum,
    }
}

impl FakePrimary {
    /// Starts a fake primary (every route answers without checking the JWT).
    pub async fn start() -> FakePrimary {
        FakePrimary::start_on("127.0.0.1").await
    }

    /// [`FakePrimary::start`] on another loopback address (`127.0.0.2`…).
    pub async fn start_on(ip: &str) -> FakePrimary {
        let state = Arc::new(Mutex::new(FakeState {
            node: Some(node_settings()),
            ..FakeState::default()
        }));
        let router = axum::Router::new()
            .route("/api/v4/geo/node", get(node))
            .route("/api/v4/geo/topology", get(topology))
            .route("/api/v4/geo/replication/{name}/records", get(records))
            .route("/api/v4/geo/events", get(events))
            .route("/api/v4/geo/retrieve/{name}/{id}", get(retrieve))
            .route("/api/v4/geo/retrieve/{name}", get(retrieve_batch))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakePrimary {
            url: format!("http://{address}"),
            state,
        }
    }

    /// A client of this primary.
    pub fn client(&self) -> PrimaryClient {
        PrimaryClient::new(&PrimarySection {
            url: self.url.clone(),
            access_key: "key".into(),
            secret_access_key: "secret".into(),
            ca_file: None,
        })
        .expect("a client")
    }

    /// Adds a record with its blob; `verified`: the primary has its checksum
    /// (in the feed and in the `x-geo-checksum` header).
    pub fn add(&self, id: i64, project_id: i64, bytes: &[u8], verified: bool) -> FeedRecord {
        let checksum = verified.then(|| sha256(bytes));
        let mut record = helm_record(id, project_id, 1, checksum.clone());
        record.columns.insert("size".into(), bytes.len().into());
        let mut state = self.state.lock().unwrap();
        state.records.insert(id, record.clone());
        state.blobs.insert(
            id,
            FakeBlob {
                bytes: bytes.to_vec(),
                header_checksum: checksum,
                missing: false,
            },
        );
        record
    }

    /// Appends an event to the log; returns its id.
    pub fn event(&self, event_name: &str, model_record_id: i64, extra: serde_json::Value) -> i64 {
        let mut state = self.state.lock().unwrap();
        // Ids never repeat, even when a test hides an event (a transaction
        // not committed yet).
        state.last_event_id += 1;
        let id = state.last_event_id;
        let mut payload = json!({"model_record_id": model_record_id, "correlation_id": "c"});
        if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
            payload.extend(extra.clone());
        }
        state.events.push(FeedEvent {
            id,
            replicable_name: helm().name().to_string(),
            event_name: event_name.into(),
            payload,
            created_at: chrono::Utc::now(),
        });
        id
    }

    /// Takes events `ids` out of the feed, as if their transactions had
    /// not committed yet; [`FakePrimary::commit`] puts them back.
    pub fn uncommit(&self, ids: &[i64]) -> Vec<FeedEvent> {
        self.with(|s| {
            let (taken, kept): (Vec<_>, _) = s.events.drain(..).partition(|e| ids.contains(&e.id));
            assert_eq!(taken.len(), ids.len(), "events {ids:?} are in the feed");
            s.events = kept;
            taken
        })
    }

    /// Puts `events` (from [`FakePrimary::uncommit`]) back in the feed.
    pub fn commit(&self, events: Vec<FeedEvent>) {
        self.with(|s| {
            s.events.extend(events);
            s.events.sort_by_key(|e| e.id);
        })
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn hits(&self, path: &str) -> usize {
        self.with(|s| s.hits.get(path).copied().unwrap_or(0))
    }
}

type Shared = State<Arc<Mutex<FakeState>>>;

fn hit(state: &Mutex<FakeState>, path: &str) {
    *state
        .lock()
        .unwrap()
        .hits
        .entry(path.to_string())
        .or_default() += 1;
}

async fn node(State(state): Shared) -> Json<NodeSettings> {
    hit(&state, "node");
    Json(state.lock().unwrap().node.clone().expect("node settings"))
}

async fn topology(State(state): Shared) -> Json<TopologySnapshot> {
    hit(&state, "topology");
    Json(state.lock().unwrap().topology.clone())
}

/// A body that never ends (no `Content-Length`): `start`, then `unit`
/// repeated in 64 KiB chunks, counting the bytes sent into `endless_sent`.
fn endless(state: Arc<Mutex<FakeState>>, start: &'static [u8], unit: &[u8]) -> Response {
    let mut chunk = Vec::new();
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(unit);
    }
    let chunk = bytes::Bytes::from(chunk);
    let body = futures::stream::once(async move { bytes::Bytes::from_static(start) })
        .chain(futures::stream::repeat(chunk))
        .map(move |chunk| {
            state.lock().unwrap().endless_sent += chunk.len() as u64;
            Ok::<_, std::convert::Infallible>(chunk)
        });
    axum::body::Body::from_stream(body).into_response()
}

/// A JSON page that never ends: `{"records":[` then records forever.
fn endless_page(state: Arc<Mutex<FakeState>>) -> Response {
    let mut record = serde_json::to_vec(&helm_record(1, 1, 1, None)).expect("json");
    record.push(b',');
    endless(state, b"{\"records\":[", &record)
}

async fn records(
    State(state): Shared,
    Path(_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    hit(&state, "records");
    if state.lock().unwrap().endless_records {
        return endless_page(state.clone());
    }
    let state = state.lock().unwrap();
    let records: Vec<FeedRecord> = match query.get("ids") {
        Some(ids) => ids
            .split(',')
            .filter_map(|id| id.parse::<i64>().ok())
            .filter_map(|id| state.records.get(&id).cloned())
            .collect(),
        None => {
            let after: i64 = query
                .get("after_id")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let limit: usize = query
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            state
                .records
                .range(after + 1..)
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect()
        }
    };
    Json(RecordPage {
        records,
        max_id: state.records.keys().next_back().copied(),
    })
    .into_response()
}

async fn events(
    State(state): Shared,
    Query(query): Query<HashMap<String, String>>,
) -> Json<EventPage> {
    hit(&state, "events");
    let after: i64 = query.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let ids: Option<Vec<i64>> = query
        .get("ids")
        .map(|list| list.split(',').filter_map(|v| v.parse().ok()).collect());
    let state = state.lock().unwrap();
    let last = state.events.last();
    let page: Vec<&FeedEvent> = state
        .events
        .iter()
        .filter(|e| match &ids {
            Some(ids) => ids.contains(&e.id),
            None => e.id > after,
        })
        .take(limit)
        .collect();
    let (withheld, served): (Vec<&FeedEvent>, Vec<&FeedEvent>) = page
        .into_iter()
        .partition(|e| state.withheld.contains(&e.id));
    Json(EventPage {
        withheld: withheld.iter().map(|e| e.id).collect(),
        events: served.into_iter().cloned().collect(),
        last_event_id: last.map(|e| e.id),
        last_event_at: last.map(|e| e.created_at),
    })
}

async fn retrieve(
    State(state): Shared,
    Path((name, id)): Path<(String, i64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    hit(&state, "retrieve");
    let redirect = state.lock().unwrap().redirect_retrieve_to.clone();
    if let Some(base) = redirect.filter(|_| !query.contains_key("redirected")) {
        let location = format!("{base}/api/v4/geo/retrieve/{name}/{id}?redirected=1");
        return axum::response::Redirect::temporary(&location).into_response();
    }
    if state.lock().unwrap().endless_blobs {
        return endless(state.clone(), b"", b"entries: {}\n");
    }
    let blob = state.lock().unwrap().blobs.get(&id).cloned();
    match blob {
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "not found"}))).into_response(),
        Some(blob) if blob.missing => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("{id} file not found"), "geo_code": "FILE_NOT_FOUND"})),
        )
            .into_response(),
        Some(blob) => {
            let mut response = blob.bytes.into_response();
            if let Some(checksum) = blob.header_checksum
                && let Ok(value) = HeaderValue::from_str(&checksum)
            {
                response
                    .headers_mut()
                    .insert(super::sync::CHECKSUM_HEADER, value);
            }
            response
        }
    }
}

/// The batch retrieve, with the real wire format ([`crate::blob_batch`]).
async fn retrieve_batch(
    State(state): Shared,
    Path(_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    use crate::blob_batch::{Encoder, PartHeader, PartStatus};
    hit(&state, "retrieve_batch");
    let ids: Vec<i64> = query
        .get("ids")
        .map(|ids| ids.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default();
    let max: u64 = query
        .get("max_part_bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::blob_batch::DEFAULT_MAX_PART_BYTES);
    let state = state.lock().unwrap();
    let mut encoder = Encoder::default();
    let mut body = Vec::new();
    for (n, id) in ids.into_iter().enumerate() {
        let (header, bytes) = match state.blobs.get(&id) {
            None => (
                PartHeader::failed(id, PartStatus::NotFound, "not found"),
                None,
            ),
            Some(blob) if blob.missing => (
                PartHeader::failed(id, PartStatus::Missing, format!("{id} file not found")),
                None,
            ),
            Some(blob) if blob.bytes.len() as u64 > max => {
                (PartHeader::too_large(id, blob.bytes.len() as u64), None)
            }
            Some(blob) => (
                PartHeader::ok(id, blob.bytes.len() as u64, blob.header_checksum.clone()),
                Some(bytes::Bytes::from(blob.bytes.clone())),
            ),
        };
        let frame: Vec<u8> = encoder.part(&header, bytes).concat();
        if state.cut_batch_at_part == Some(n) {
            body.extend_from_slice(&frame[..frame.len() / 2]);
            return body.into_response();
        }
        body.extend_from_slice(&frame);
    }
    body.extend_from_slice(&encoder.end());
    body.into_response()
}

/// A downloader of `primary` into `tracking` and `blobs`, without lease.
pub fn downloader(
    primary: &FakePrimary,
    tracking: &Db,
    blobs: &crate::storage::BlobStore,
) -> super::sync::Downloader {
    super::sync::Downloader {
        client: primary.client(),
        tracking: tracking.clone(),
        blobs: blobs.clone(),
        cancel: Default::default(),
        lease: None,
        wakes: Default::default(),
    }
}

/// A client of a primary that is not there (nothing listens on port 9).
pub fn unreachable_primary() -> PrimaryClient {
    PrimaryClient::new(&PrimarySection {
        url: "http://127.0.0.1:9".into(),
        access_key: "k".into(),
        secret_access_key: "s".into(),
        ca_file: None,
    })
    .unwrap()
}

/// `it`'s blob path for `record`.
pub async fn blob_path(it: &InstalledType, record: &FeedRecord) -> crate::plugin::BlobPath {
    it.blob_paths(std::slice::from_ref(record))
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

/// The blob of a Helm `record` in `blobs`, if there is one.
pub async fn stored(blobs: &crate::storage::BlobStore, record: &FeedRecord) -> Option<Vec<u8>> {
    let it = helm();
    let path = blob_path(&it, record).await;
    match blobs
        .read_small(it.name(), &[path], u64::MAX, u64::MAX)
        .await
        .pop()?
        .ok()?
    {
        crate::storage::SmallRead::Whole(bytes) => Some(bytes.to_vec()),
        crate::storage::SmallRead::TooLarge(_) => None,
    }
}

/// A blob store in a new temporary folder (kept alive by the returned guard).
pub fn blob_store() -> (tempfile::TempDir, crate::storage::BlobStore) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = crate::storage::BlobStore::local(dir.path()).expect("a blob store");
    (dir, store)
}
