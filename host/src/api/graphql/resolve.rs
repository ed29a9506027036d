//! What the GraphQL fields read and do, apart from the schema: the current
//! node, registry pages, and the registry mutations.

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::feed::NodeSettings;
use crate::plugin::TypeIdentity;
use crate::secondary::bulk::{self, BulkAction};
use crate::secondary::listing::{self, Cursor, Filter, PageRequest, Sort};
use crate::secondary::{PrimaryClient, Registry, RegistryRow};
use crate::site::Site;
use crate::states::{SyncState, VerificationState};
use async_graphql::Error;
use std::sync::Arc;
use std::time::Duration;

/// GitLab's answer for a registry that does not exist (or may not be seen).
pub const NOT_FOUND: &str = "The resource that you are attempting to access does not exist or you don't have permission to perform this action";

/// How long GraphQL waits for the primary (node settings, keyword search).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(10);

/// The GraphQL names of one type.
#[derive(Debug, Clone)]
pub struct Names {
    /// `PackagesHelmMetadataCacheRegistry`.
    pub type_name: String,
    /// `packagesHelmMetadataCacheRegistries` (a `GeoNode` field).
    pub field: String,
    /// `packagesHelmMetadataCacheId`.
    pub fk_field: String,
    /// `PACKAGES_HELM_METADATA_CACHE_REGISTRY` (`GeoRegistryClass`).
    pub class: String,
    /// `GeoPackagesHelmMetadataCacheRegistryID`: the type of its global ids
    /// (GitLab's `Types::GlobalIDType[Geo::PackagesHelmMetadataCacheRegistry]`).
    pub id_type: String,
}

pub fn names(identity: &TypeIdentity) -> Names {
    let camel = identity.camel_name();
    let mut upper = camel.clone();
    if let Some(first) = upper.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    Names {
        type_name: format!("{upper}Registry"),
        field: format!("{camel}Registries"),
        fk_field: format!("{camel}Id"),
        class: format!("{}_REGISTRY", identity.name.to_ascii_uppercase()),
        id_type: format!("Geo{upper}RegistryID"),
    }
}

/// The type of every registry's global id, whatever its class (GitLab's
/// `Types::GlobalIDType[Geo::BaseRegistry]`).
pub const BASE_REGISTRY_ID: &str = "GeoBaseRegistryID";

/// A registry's global id, GitLab's form:
/// `gid://gitlab/Geo::<Type>/<id>`.
pub fn gid(type_name: &str, id: i64) -> String {
    format!("gid://gitlab/Geo::{type_name}/{id}")
}

/// A site's global id: `gid://gitlab/GeoNode/<id>`.
pub fn node_gid(id: i64) -> String {
    format!("gid://gitlab/GeoNode/{id}")
}

/// Whether `text` is the global id of a registry (of class `type_name`
/// when given): GitLab's form, or the `gid://geo/<Type>/<id>` form earlier
/// Geohost versions gave out. What a `GeoBaseRegistryID` or
/// `Geo<Type>RegistryID` accepts.
pub fn is_registry_gid(text: &str, type_name: Option<&str>) -> bool {
    if !(text.starts_with("gid://gitlab/Geo::") || text.starts_with("gid://geo/")) {
        return false;
    }
    match parse_gid(text) {
        Some((Some(class), id)) if id > 0 && class.ends_with("Registry") => {
            type_name.is_none_or(|t| t == class)
        }
        _ => false,
    }
}

/// Reads a global id (GitLab's `gid://gitlab/Geo::<Type>/<id>`, the
/// earlier `gid://geo/<Type>/<id>`) or a bare number: the type name, if
/// any, and the id.
pub fn parse_gid(text: &str) -> Option<(Option<String>, i64)> {
    let text = text.trim();
    if let Ok(id) = text.parse::<i64>() {
        return Some((None, id));
    }
    let rest = text
        .strip_prefix("gid://geo/")
        .or_else(|| text.strip_prefix("gid://gitlab/"))?;
    let (class, id) = rest.rsplit_once('/')?;
    let class = class.strip_prefix("Geo::").unwrap_or(class);
    Some((Some(class.to_string()), id.parse().ok()?))
}

/// A `GeoNode`.
#[derive(Debug, Clone)]
pub struct NodeValue {
    /// Its settings as the primary holds them (`None`: a secondary that
    /// cannot reach its primary).
    pub settings: Option<NodeSettings>,
    pub name: String,
    pub url: String,
    pub primary: bool,
    /// Whether it is the site answering (only its registries are listed).
    pub current: bool,
}

/// One registry row of a type.
#[derive(Debug, Clone)]
pub struct RegistryValue {
    pub type_name: String,
    pub replicable_name: String,
    pub row: RegistryRow,
    pub cursor: String,
}

/// A page of registries.
#[derive(Debug, Clone, Default)]
pub struct ConnectionValue {
    pub nodes: Vec<RegistryValue>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
    /// What `count` counts (`None`: nothing, as on the primary).
    pub count: Option<CountQuery>,
}

/// GitLab's default and largest `count(limit:)`
/// (`LimitedCountableConnectionType::COUNT_LIMIT`).
pub const COUNT_LIMIT: i64 = 1000;

/// The rows a connection's `count` field counts, run only when asked for.
#[derive(Debug, Clone)]
pub struct CountQuery {
    pub db: crate::db::Db,
    pub registry: Registry,
    pub filter: Filter,
}

impl ConnectionValue {
    /// GitLab's `count(limit:)` (`LimitedCountableConnectionType`): the rows
    /// matching the filters, whatever the page, up to `limit`; `limit + 1`
    /// when there are more. `limit` is 1 to [`COUNT_LIMIT`].
    pub async fn count(&self, limit: i64) -> Result<i64, Error> {
        if !(1..=COUNT_LIMIT).contains(&limit) {
            return Err(Error::new(format!(
                "limit must be greater than 0 and less than or equal to {COUNT_LIMIT}"
            )));
        }
        let Some(q) = &self.count else {
            return Ok(0);
        };
        let mut args = Vec::new();
        let conditions = q.filter.conditions(&q.registry, &mut args);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM {} WHERE {conditions} LIMIT {}) AS limited",
            q.registry.table(),
            limit + 1
        );
        let row = q.db.fetch_one(&sql, &args).await.map_err(internal)?;
        Ok(row.int("n").map_err(internal)?.unwrap_or(0))
    }
}

/// A replicable type as the admin page needs it (GitLab's
/// `replicable_types` helper, here an API): its names and titles.
#[derive(Debug, Clone)]
pub struct ReplicableTypeValue {
    pub name: String,
    pub name_plural: String,
    pub title: String,
    pub title_plural: String,
    pub names: Names,
}

/// The installed types, by name.
pub fn replicable_types(site: &Site) -> Vec<ReplicableTypeValue> {
    let mut types: Vec<ReplicableTypeValue> = site
        .catalog
        .all()
        .iter()
        .map(|it| ReplicableTypeValue {
            name: it.identity.name.clone(),
            name_plural: it.identity.plural_name().to_string(),
            title: it.identity.title.clone(),
            title_plural: it.identity.title_plural.clone(),
            names: names(&it.identity),
        })
        .collect();
    types.sort_by(|a, b| a.name.cmp(&b.name));
    types
}

/// `geoRegistriesUpdate`'s payload.
#[derive(Debug, Clone)]
pub struct UpdatePayload {
    pub client_mutation_id: Option<String>,
    pub errors: Vec<String>,
    pub registry: Option<RegistryValue>,
}

/// `geoRegistriesBulkUpdate`'s payload.
#[derive(Debug, Clone)]
pub struct BulkPayload {
    pub client_mutation_id: Option<String>,
    pub errors: Vec<String>,
    pub registry_class: Option<String>,
}

fn internal(error: impl std::fmt::Display) -> Error {
    tracing::error!(%error, "GraphQL request failed");
    Error::new(format!("internal error: {error}"))
}

fn client(site: &Site) -> Option<PrimaryClient> {
    PrimaryClient::with_timeout(site.config.primary.as_ref()?, PRIMARY_TIMEOUT).ok()
}

/// The last settings a secondary read from its primary (one per router,
/// so per site), so that `GeoNode.id` and its settings stay known while the
/// primary cannot be reached.
#[derive(Debug, Default)]
pub struct NodeMemory(std::sync::Mutex<Option<NodeSettings>>);

impl NodeMemory {
    fn remember(&self, settings: &NodeSettings) {
        *self.0.lock().expect("node memory") = Some(settings.clone());
    }

    fn recall(&self) -> Option<NodeSettings> {
        self.0.lock().expect("node memory").clone()
    }
}

/// `geoNode(name:)`: the named site, or the one answering.
pub async fn geo_node(
    site: &Site,
    memory: &NodeMemory,
    name: Option<&str>,
) -> Result<Option<NodeValue>, Error> {
    match site.role() {
        Role::Primary => {
            let nodes = crate::primary::sites::list(&site.db)
                .await
                .map_err(internal)?;
            let found = nodes.into_iter().find(|n| match name {
                Some(name) => n.name == name,
                None => n.primary,
            });
            Ok(found.map(|n| NodeValue {
                name: n.name.clone(),
                url: n.url.clone(),
                primary: n.primary,
                current: n.primary,
                settings: Some(n),
            }))
        }
        Role::Secondary => {
            if name.is_some_and(|name| name != site.name()) {
                return Ok(None);
            }
            let settings = match client(site) {
                Some(client) => match client.node().await {
                    Ok(node) => {
                        memory.remember(&node);
                        Some(node)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "geoNode: cannot read this site's settings from the primary");
                        memory.recall()
                    }
                },
                None => memory.recall(),
            };
            Ok(Some(NodeValue {
                name: site.name().to_string(),
                url: settings
                    .as_ref()
                    .map_or_else(|| site.config.url(), |s| s.url.clone()),
                primary: false,
                current: true,
                settings,
            }))
        }
    }
}

/// A namespace of `GeoNode.selectiveSyncNamespaces` (GitLab's `Namespace`).
#[derive(Debug, Clone)]
pub struct NamespaceValue {
    pub id: i64,
    /// `None` on a secondary, which keeps no namespace names.
    pub name: Option<String>,
    pub path: Option<String>,
    pub full_path: Option<String>,
    pub full_name: Option<String>,
}

/// The namespaces `node` selects, with their names where this site holds
/// them (the primary).
pub async fn selective_sync_namespaces(
    site: &Site,
    node: &NodeValue,
) -> Result<Vec<NamespaceValue>, Error> {
    let Some(settings) = &node.settings else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for &id in &settings.namespace_ids {
        let mut value = NamespaceValue {
            id,
            name: None,
            path: None,
            full_path: None,
            full_name: None,
        };
        if site.role() == Role::Primary {
            let mut names = Vec::new();
            let mut paths = Vec::new();
            let mut next = Some(id);
            while let Some(current) = next {
                if paths.len() > crate::topology::MAX_DEPTH {
                    break;
                }
                let Some(ns) = crate::primary::topology::get_namespace(&site.db, current)
                    .await
                    .map_err(internal)?
                else {
                    break;
                };
                names.push(ns.name.clone());
                paths.push(ns.path.clone());
                if current == id {
                    value.name = Some(ns.name);
                    value.path = Some(ns.path);
                }
                next = ns.parent_id;
            }
            if value.name.is_some() {
                names.reverse();
                paths.reverse();
                value.full_name = Some(names.join(" / "));
                value.full_path = Some(paths.join("/"));
            }
        }
        out.push(value);
    }
    Ok(out)
}

/// The arguments of a registries field.
#[derive(Debug, Clone, Default)]
pub struct ListArgs {
    pub ids: Option<Vec<String>>,
    pub replication_state: Option<String>,
    pub verification_state: Option<String>,
    pub keyword: Option<String>,
    pub sort: Option<String>,
    pub first: Option<i64>,
    pub after: Option<String>,
    pub last: Option<i64>,
    pub before: Option<String>,
}

pub fn sync_state(name: &str) -> Option<SyncState> {
    SyncState::ALL
        .into_iter()
        .find(|s| sync_state_name(*s) == name)
}

pub fn sync_state_name(state: SyncState) -> &'static str {
    match state {
        SyncState::Pending => "PENDING",
        SyncState::Started => "STARTED",
        SyncState::Synced => "SYNCED",
        SyncState::Failed => "FAILED",
    }
}

pub fn verification_state(name: &str) -> Option<VerificationState> {
    VerificationState::ALL
        .into_iter()
        .find(|s| verification_state_name(*s) == name)
}

pub fn verification_state_name(state: VerificationState) -> &'static str {
    match state {
        VerificationState::Pending => "PENDING",
        VerificationState::Started => "STARTED",
        VerificationState::Succeeded => "SUCCEEDED",
        VerificationState::Failed => "FAILED",
        VerificationState::Disabled => "DISABLED",
    }
}

fn registry_ids(ids: &[String]) -> Result<Vec<i64>, Error> {
    ids.iter()
        .map(|text| {
            parse_gid(text)
                .map(|(_, id)| id)
                .ok_or_else(|| Error::new(format!("{text:?} is not a valid ID")))
        })
        .collect()
}

/// The registries a list or a bulk action selects by its `ids`,
/// `replicationState` and `verificationState` arguments.
fn filter(
    ids: Option<&[String]>,
    replication_state: Option<&str>,
    verification_state_name: Option<&str>,
) -> Result<Filter, Error> {
    Ok(Filter {
        ids: ids.map(registry_ids).transpose()?,
        state: replication_state
            .map(|name| sync_state(name).ok_or_else(|| Error::new("invalid replicationState")))
            .transpose()?,
        verification_state: verification_state_name
            .map(|name| {
                verification_state(name).ok_or_else(|| Error::new("invalid verificationState"))
            })
            .transpose()?,
        ..Filter::default()
    })
}

fn installed(site: &Site, replicable_name: &str) -> Result<Arc<InstalledType>, Error> {
    site.installed(replicable_name).ok_or_else(|| {
        Error::new(format!(
            "no replicable type named {replicable_name:?} is installed"
        ))
    })
}

/// One page of `replicable_name`'s registries on `node`.
pub async fn list(
    site: &Site,
    node: &NodeValue,
    replicable_name: &str,
    args: ListArgs,
) -> Result<ConnectionValue, Error> {
    let it = installed(site, replicable_name)?;
    let Some(tracking) = site.tracking.as_ref().filter(|_| node.current) else {
        return Ok(ConnectionValue::default());
    };
    let mut filter = filter(
        args.ids.as_deref(),
        args.replication_state.as_deref(),
        args.verification_state.as_deref(),
    )?;
    if let Some(keyword) = args.keyword.as_deref().filter(|k| !k.trim().is_empty()) {
        let client =
            client(site).ok_or_else(|| Error::new("this site cannot reach its primary"))?;
        let ids = client
            .search(it.name(), keyword)
            .await
            .map_err(|e| Error::new(format!("keyword search on the primary failed: {e}")))?;
        filter.model_ids = Some(ids);
    }
    let sort = match &args.sort {
        Some(name) => Sort::parse(name).ok_or_else(|| Error::new("invalid sort"))?,
        None => Sort::default(),
    };
    let cursor = |text: &Option<String>| -> Result<Option<Cursor>, Error> {
        text.as_deref()
            .map(|t| Cursor::decode(t).ok_or_else(|| Error::new(format!("invalid cursor {t:?}"))))
            .transpose()
    };
    let request = PageRequest {
        first: args.first,
        after: cursor(&args.after)?,
        last: args.last,
        before: cursor(&args.before)?,
    };
    let registry = Registry::of(&it);
    let page = listing::page(tracking, &registry, &filter, sort, &request)
        .await
        .map_err(|e| match e {
            listing::ListError::Invalid(m) => Error::new(m),
            listing::ListError::Db(d) => internal(d),
        })?;
    let type_name = names(&it.identity).type_name;
    Ok(ConnectionValue {
        nodes: page
            .rows
            .into_iter()
            .map(|(cursor, row)| RegistryValue {
                type_name: type_name.clone(),
                replicable_name: it.name().to_string(),
                row,
                cursor: cursor.encode(),
            })
            .collect(),
        has_next_page: page.has_next_page,
        has_previous_page: page.has_previous_page,
        count: Some(CountQuery {
            db: tracking.clone(),
            registry,
            filter,
        }),
    })
}

/// The installed type whose registry type or class is `name`.
fn by_class(site: &Site, name: &str) -> Option<Arc<InstalledType>> {
    site.catalog.all().into_iter().find(|it| {
        let n = names(&it.identity);
        n.type_name == name || n.class == name
    })
}

/// `geoRegistriesUpdate`: RESYNC or REVERIFY one registry.
pub async fn update(
    site: &Site,
    registry_id: &str,
    action: &str,
    registry_class: Option<&str>,
) -> Result<RegistryValue, Error> {
    let (class, id) = parse_gid(registry_id).ok_or_else(|| Error::new(NOT_FOUND))?;
    let it = class
        .as_deref()
        .or(registry_class)
        .and_then(|c| by_class(site, c))
        .ok_or_else(|| Error::new(NOT_FOUND))?;
    let tracking = site
        .tracking
        .as_ref()
        .ok_or_else(|| Error::new(NOT_FOUND))?;
    let row = match action {
        "RESYNC" => bulk::resync(tracking, &it, id).await,
        "REVERIFY" => bulk::reverify(tracking, &it, id).await,
        other => return Err(Error::new(format!("unknown action {other}"))),
    }
    .map_err(internal)?
    .ok_or_else(|| Error::new(NOT_FOUND))?;
    let type_name = names(&it.identity).type_name;
    Ok(RegistryValue {
        cursor: Cursor {
            id: row.id,
            at: None,
        }
        .encode(),
        type_name,
        replicable_name: it.name().to_string(),
        row,
    })
}

/// The filter of a bulk action.
#[derive(Debug, Clone, Default)]
pub struct BulkArgs {
    pub ids: Option<Vec<String>>,
    pub replication_state: Option<String>,
    pub verification_state: Option<String>,
}

/// `geoRegistriesBulkUpdate`: starts RESYNC_ALL or REVERIFY_ALL in the
/// background; the payload answers at once.
pub async fn bulk_update(
    site: &Arc<Site>,
    registry_class: &str,
    action: &str,
    args: BulkArgs,
) -> Result<BulkPayload, Error> {
    let it = by_class(site, registry_class)
        .ok_or_else(|| Error::new(format!("unknown registry class {registry_class}")))?;
    let action = BulkAction::parse(action).ok_or_else(|| Error::new("invalid action"))?;
    let Some(tracking) = site.tracking.clone() else {
        return Ok(BulkPayload {
            client_mutation_id: None,
            errors: vec![
                "Registries exist on secondary sites only: run this on a secondary".into(),
            ],
            registry_class: None,
        });
    };
    let filter = filter(
        args.ids.as_deref(),
        args.replication_state.as_deref(),
        args.verification_state.as_deref(),
    )?;
    // Kept, and run by the `bulk-jobs` duty: a restart resumes it.
    bulk::enqueue(&tracking, it.name(), action, &filter)
        .await
        .map_err(|e| Error::new(e.to_string()))?;
    Ok(BulkPayload {
        client_mutation_id: None,
        errors: Vec::new(),
        registry_class: Some(registry_class.to_string()),
    })
}

/// `geoRegistriesConfirmRemovals` (Geohost's): confirms the registry
/// removals held for a type (`secondary/guard.rs`) and asks the running
/// secondary for a consistency pass, which makes them.
pub async fn confirm_removals(
    site: &Arc<Site>,
    registry_class: &str,
) -> Result<ConfirmPayload, Error> {
    let it = by_class(site, registry_class)
        .ok_or_else(|| Error::new(format!("unknown registry class {registry_class}")))?;
    let mut payload = ConfirmPayload {
        registry_class: Some(registry_class.to_string()),
        ..ConfirmPayload::default()
    };
    let Some(tracking) = site.tracking.clone() else {
        payload
            .errors
            .push("Registries exist on secondary sites only: run this on a secondary".into());
        return Ok(payload);
    };
    match crate::secondary::guard::confirm(&tracking, it.name())
        .await
        .map_err(internal)?
    {
        Some(hold) => {
            payload.removals = Some(hold.removals);
            if let Some(secondary) = site.role_state.get::<crate::secondary::Secondary>() {
                secondary.request_pass();
            }
        }
        None => payload
            .errors
            .push(format!("No removals of {} are held", it.name())),
    }
    Ok(payload)
}

/// The answer of `geoRegistriesConfirmRemovals`.
#[derive(Debug, Clone, Default)]
pub struct ConfirmPayload {
    pub client_mutation_id: Option<String>,
    pub errors: Vec<String>,
    pub registry_class: Option<String>,
    /// The removals confirmed (the next pass makes up to that many).
    pub removals: Option<i64>,
}
