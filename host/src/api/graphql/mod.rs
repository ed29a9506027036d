//! `POST /api/graphql`: GitLab's Geo GraphQL (its
//! `ee/app/graphql/resolvers/geo/registries_resolver.rb`), with
//! async-graphql's dynamic schema built from the installed types, since the
//! host names no type.
//!
//! ```graphql
//! query {
//!   geoNode {                                   # this site (or geoNode(name: …))
//!     packagesHelmMetadataCacheRegistries(      # <camelName>Registries, per type
//!       ids: [GeoPackagesHelmMetadataCacheRegistryID!], replicationState: ReplicationStateEnum,
//!       verificationState: VerificationStateEnum, keyword: String,
//!       sort: GeoRegistrySort, first: Int, after: String, last: Int, before: String
//!     ) { count(limit: 1000) nodes { id state verificationState packagesHelmMetadataCacheId … } pageInfo { … } }
//!     registries(replicableName: "packages_helm_metadata_cache", …) { … }  # any type
//!   }
//!   geoReplicableTypes { name namePlural title titlePlural graphqlFieldName … }
//! }
//! mutation {
//!   geoRegistriesUpdate(input: {registryId: "gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/1", action: RESYNC}) {
//!     registry { ... on PackagesHelmMetadataCacheRegistry { state } } errors
//!   }
//!   geoRegistriesBulkUpdate(input: {registryClass: PACKAGES_HELM_METADATA_CACHE_REGISTRY, action: REVERIFY_ALL}) {
//!     registryClass errors
//!   }
//! }
//! ```
//!
//! Registries live in a secondary's tracking database: on the primary, and
//! for any site but the one answering, the lists are empty (GitLab's
//! `geo_node_is_current?`). Ids are GitLab's global ids,
//! `gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/1`, typed as GitLab
//! types them: `GeoBaseRegistryID` for the mutations' `registryId` and
//! `ids`, one `Geo<Type>RegistryID` per type for its list's `ids`. Both
//! also take the form earlier versions gave out
//! (`gid://geo/PackagesHelmMetadataCacheRegistry/1`). `keyword` asks the
//! primary which records match ([`crate::primary::records::search_ids`])
//! and keeps their registries. `count(limit:)` is GitLab's
//! `LimitedCountableConnectionType`: up to `limit` (1000 by default),
//! `limit + 1` beyond.
//!
//! Additions: `geoReplicableTypes` (the installed types and their GraphQL
//! names, what GitLab renders into its admin page).
//!
//! Deliberate differences: `geoNode(name:)` on a secondary knows only
//! itself, and its `id` and settings come from the primary (the last ones
//! read while the primary cannot be reached; `id` is an error before the
//! first read); `selectiveSyncNamespaces` has names only on the primary (a
//! secondary keeps none); every registry type also implements the
//! `GeoRegistry` interface (with `replicableName`), which the generic
//! `registries` field returns.

mod resolve;
mod schema;

use super::{AdminRoutes, AppState};
use crate::site::Site;
use async_graphql::dynamic::Schema;
use async_graphql_axum::GraphQLResponse;
use axum::extract::State;
use axum::routing::post;
use std::sync::{Arc, Mutex};

/// The schema, rebuilt when the installed types change, and what this
/// site last read of its own settings.
#[derive(Default)]
struct SchemaCache {
    built: Mutex<Option<(Vec<String>, Schema)>>,
    node: Arc<resolve::NodeMemory>,
}

impl SchemaCache {
    fn get(&self, site: &Site) -> Result<Schema, String> {
        let key: Vec<String> = site
            .catalog
            .all()
            .iter()
            .map(|it| format!("{}@{}", it.name(), it.plugin.sha256()))
            .collect();
        let mut built = self.built.lock().expect("schema cache");
        if let Some((k, schema)) = built.as_ref()
            && *k == key
        {
            return Ok(schema.clone());
        }
        let schema = schema::build(&site.catalog.all()).map_err(|e| e.to_string())?;
        *built = Some((key, schema.clone()));
        Ok(schema)
    }
}

pub fn routes() -> AdminRoutes {
    let cache = Arc::new(SchemaCache::default());
    AdminRoutes::new().route(
        "/api/graphql",
        post(
            move |State(site): State<AppState>, body: axum::body::Bytes| {
                let cache = cache.clone();
                async move {
                    let request = parse_request(&body)?;
                    Ok::<_, super::ApiError>(execute(site, &cache, request).await)
                }
            },
        ),
    )
}

/// A GraphQL request from a JSON body. The body is read through axum's
/// `Bytes` extractor, so the router's JSON body limit applies (413 beyond
/// it); a body that is not `{"query": …}` is a 400 with the reason.
fn parse_request(body: &[u8]) -> Result<async_graphql::Request, super::ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        super::ApiError::BadRequest(format!(
            "the body must be a GraphQL request, JSON {{\"query\": …}}: {error}"
        ))
    })
}

async fn execute(
    site: AppState,
    cache: &SchemaCache,
    request: async_graphql::Request,
) -> GraphQLResponse {
    match cache.get(&site) {
        Ok(schema) => schema
            .execute(request.data(site).data(cache.node.clone()))
            .await
            .into(),
        Err(error) => {
            tracing::error!(%error, "cannot build the GraphQL schema");
            async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
                format!("cannot build the GraphQL schema: {error}"),
                None,
            )])
            .into()
        }
    }
}
