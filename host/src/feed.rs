//! The replication feed: what a primary tells its secondaries, as JSON.
//!
//! GitLab secondaries read a streaming replica of the primary's database.
//! Geohost sites share no database, so the primary serves the same facts
//! over HTTP, read-only and authenticated like the retrieve API
//! (`GL-Geo <access_key>:<JWT>`, with the JWT `data` claim naming the
//! resource). This module holds the wire types and routes, shared by the
//! primary's handlers and the secondary's client, so the two cannot drift.
//!
//! | route | answer | JWT `data` |
//! |---|---|---|
//! | `GET /api/v4/geo/node` | [`NodeSettings`] of the caller | `{"feed":"node"}` |
//! | `GET /api/v4/geo/topology` | [`TopologySnapshot`] | `{"feed":"topology"}` |
//! | `GET /api/v4/geo/types` | `[`[`TypeInfo`]`]` | `{"feed":"types"}` |
//! | `GET /api/v4/geo/replication/:name/records?after_id&limit` or `?ids=1,2` | [`RecordPage`] | `{"feed":"records","replicable_name":name}` |
//! | `GET /api/v4/geo/events?after&limit&wait_ms` (long-poll) or `?ids=1,2` (those that exist) | [`EventPage`] | `{"feed":"events"}` |
//! | `GET /api/v4/geo/retrieve/:name/:id` | the blob | `{"replicable_name":name,"replicable_id":id}` |
//! | `GET /api/v4/geo/replication/:name/search?keyword=` | [`SearchPage`] | `{"feed":"search","replicable_name":name}` |
//! | `POST /api/v4/geo/status` (body: the secondary's status) | `204` | `{"feed":"status"}` |

use crate::plugin::fixture::ScopeSpec;
use crate::states::VerificationState;
use crate::topology::{NamespaceNode, ProjectNode};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most records in one [`RecordPage`].
pub const MAX_RECORDS_PER_PAGE: i64 = 10_000;
/// Most events in one [`EventPage`].
pub const MAX_EVENTS_PER_PAGE: i64 = 1_000;
/// Longest long-poll wait.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most ids a keyword search answers (GitLab keeps the first 1,000 ids of
/// `model.search(keyword)`).
pub const MAX_SEARCH_IDS: i64 = 1_000;
/// Largest status report a secondary may send, in bytes.
pub const MAX_STATUS_BYTES: usize = 1 << 20;

/// The JWT `data` claim for a feed resource.
pub fn feed_claim(resource: &str) -> serde_json::Value {
    json!({ "feed": resource })
}

/// The JWT `data` claim for the records of one type.
pub fn records_claim(replicable_name: &str) -> serde_json::Value {
    json!({ "feed": "records", "replicable_name": replicable_name })
}

/// The JWT `data` claim for a keyword search over the records of one type.
pub fn search_claim(replicable_name: &str) -> serde_json::Value {
    json!({ "feed": "search", "replicable_name": replicable_name })
}

/// The JWT `data` claim of GitLab's retrieve API.
pub fn retrieve_claim(replicable_name: &str, replicable_id: i64) -> serde_json::Value {
    json!({ "replicable_name": replicable_name, "replicable_id": replicable_id })
}

/// A site's settings as the primary holds them (`geo_nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    pub id: i64,
    pub name: String,
    pub url: String,
    /// GitLab's `internal_url`: the address other sites use for this one
    /// (`None`: `url`).
    #[serde(default)]
    pub internal_url: Option<String>,
    pub primary: bool,
    pub enabled: bool,
    /// `null` (everything), `"namespaces"` or `"shards"`.
    pub selective_sync_type: Option<String>,
    pub namespace_ids: Vec<i64>,
    pub selective_sync_shards: Vec<String>,
    pub sync_object_storage: bool,
    pub files_max_capacity: i32,
    /// GitLab's repository and container-repository capacities: kept and
    /// served as GitLab does; Geohost replicates no repositories.
    #[serde(default = "default_repos_max_capacity")]
    pub repos_max_capacity: i32,
    #[serde(default = "default_container_repositories_max_capacity")]
    pub container_repositories_max_capacity: i32,
    pub verification_max_capacity: i32,
    pub minimum_reverification_interval: i32,
}

fn default_repos_max_capacity() -> i32 {
    25
}

fn default_container_repositories_max_capacity() -> i32 {
    10
}

impl NodeSettings {
    /// GitLab's `internal_url`: the one set, else `url`.
    pub fn internal_url(&self) -> &str {
        self.internal_url.as_deref().unwrap_or(&self.url)
    }

    /// The selective-sync settings types decide with.
    pub fn scope(&self) -> ScopeSpec {
        ScopeSpec {
            selective_sync_type: self.selective_sync_type.clone(),
            namespace_ids: self.namespace_ids.clone(),
            shards: self.selective_sync_shards.clone(),
            sync_object_storage: self.sync_object_storage,
        }
    }
}

/// Every namespace and project, for scope decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySnapshot {
    pub namespaces: Vec<NamespaceNode>,
    pub projects: Vec<ProjectNode>,
}

/// A type installed on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    pub name: String,
    pub version: String,
    /// SHA-256 of the component binary.
    pub sha256: String,
    pub title: String,
    pub title_plural: String,
}

/// One model record with its verification state on the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    pub id: i64,
    /// Every model column by name (timestamps RFC 3339, bytes hex).
    pub columns: serde_json::Map<String, serde_json::Value>,
    pub verification_state: VerificationState,
    /// Lowercase hex: the checksum of the last successful verification. It
    /// survives a later failed verification (so a corrupted primary blob is
    /// never accepted) and is cleared when the record's blob is rewritten.
    pub verification_checksum: Option<String>,
}

/// Records in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPage {
    pub records: Vec<FeedRecord>,
    /// The highest id in the model table (for a consistency pass's range).
    pub max_id: Option<i64>,
}

/// One event of the primary's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// `geo_event_log.id`: the cursor position.
    pub id: i64,
    pub replicable_name: String,
    /// `created`, `updated`, `deleted` or `checksum_succeeded`.
    pub event_name: String,
    pub payload: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Events after a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<FeedEvent>,
    /// The log ids of events the page covers but withholds from this
    /// secondary (records out of its selective-sync scope), in order: they
    /// are not gaps, and the cursor moves past them (Geohost's; absent from
    /// a page with none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<i64>,
    /// The newest event id in the log (for lag), if any.
    pub last_event_id: Option<i64>,
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The ids of the records matching a keyword (GraphQL's `keyword` filter):
/// at most [`MAX_SEARCH_IDS`], in id order. A record matches when one of
/// its text columns contains the keyword (case-insensitive), or, for a
/// keyword that is an integer, when its id or an integer column equals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    pub ids: Vec<i64>,
}
