//! GitLab's `GeoSite` and `GeoNode` entities (`ee/lib/api/entities/geo_site.rb`,
//! `geo_node.rb`): a site's settings as the REST API shows them.

use super::Family;
use crate::feed::NodeSettings;
use serde_json::{Map, Value, json};

/// Where a site's links point: the answering site's URL, and the admin
/// page's replication view on a secondary (the first installed type's).
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The URL of the site answering (GitLab's `expose_url` base).
    pub base_url: &'a str,
    /// The id of the site answering (`current`).
    pub current_id: Option<i64>,
    /// An installed type's name, for `web_geo_replication_details_url`.
    pub first_type: Option<&'a str>,
}

/// The entity of `node` in `family`'s form: GitLab's fields.
/// `sync_object_storage` and
/// `web_geo_replication_details_url` are a secondary's only, and
/// `clone_protocol` (always `http`) the deprecated `geo_nodes` family's, as
/// in GitLab.
pub fn entity(family: Family, node: &NodeSettings, context: &Context<'_>) -> Value {
    let base = context.base_url.trim_end_matches('/');
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_string(), value);
    };
    put("id", node.id.into());
    put("name", node.name.clone().into());
    put("url", node.url.clone().into());
    put("internal_url", node.internal_url().into());
    put("primary", node.primary.into());
    put("enabled", node.enabled.into());
    put("current", (context.current_id == Some(node.id)).into());
    put("files_max_capacity", node.files_max_capacity.into());
    put("repos_max_capacity", node.repos_max_capacity.into());
    put(
        "verification_max_capacity",
        node.verification_max_capacity.into(),
    );
    put(
        "container_repositories_max_capacity",
        node.container_repositories_max_capacity.into(),
    );
    put("selective_sync_type", json!(node.selective_sync_type));
    put("selective_sync_shards", json!(node.selective_sync_shards));
    put("selective_sync_namespace_ids", json!(node.namespace_ids));
    put(
        "minimum_reverification_interval",
        node.minimum_reverification_interval.into(),
    );
    if !node.primary {
        put("sync_object_storage", node.sync_object_storage.into());
    }
    if family == Family::Nodes {
        put("clone_protocol", "http".into());
    }
    // GitLab links its edit form; Geohost's admin page edits nothing, so
    // this is the page that lists the sites.
    put("web_edit_url", format!("{base}/admin/geo/sites").into());
    if !node.primary {
        let details = match context.first_type {
            Some(name) => format!(
                "{}/admin/geo/replication/{name}",
                node.url.trim_end_matches('/')
            ),
            None => format!("{}/admin/geo/sites", node.url.trim_end_matches('/')),
        };
        put("web_geo_replication_details_url", details.into());
    }
    let root = format!("{base}{}", family.root());
    put(
        "_links",
        json!({
            "self": format!("{root}/{}", node.id),
            "status": format!("{root}/{}/status", node.id),
            "repair": format!("{root}/{}/repair", node.id),
        }),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::node_settings;

    fn keys(value: &Value) -> std::collections::BTreeSet<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn gitlabs_fields() {
        let node = node_settings();
        let context = Context {
            base_url: "http://primary.example.com/",
            current_id: Some(1),
            first_type: Some("packages_helm_metadata_cache"),
        };
        let site = entity(Family::Sites, &node, &context);
        assert_eq!(
            keys(&site),
            std::collections::BTreeSet::from([
                "id",
                "name",
                "url",
                "internal_url",
                "primary",
                "enabled",
                "current",
                "files_max_capacity",
                "repos_max_capacity",
                "verification_max_capacity",
                "container_repositories_max_capacity",
                "selective_sync_type",
                "selective_sync_shards",
                "selective_sync_namespace_ids",
                "minimum_reverification_interval",
                "sync_object_storage",
                "web_edit_url",
                "web_geo_replication_details_url",
                "_links",
            ])
        );
        assert_eq!(site["internal_url"], node.url.as_str());
        assert_eq!(site["current"], false);
        assert_eq!(
            site["_links"]["repair"],
            "http://primary.example.com/api/v4/geo_sites/2/repair"
        );
        assert_eq!(
            site["web_geo_replication_details_url"],
            "http://127.0.0.1:1/admin/geo/replication/packages_helm_metadata_cache"
        );

        let primary = NodeSettings {
            id: 1,
            primary: true,
            internal_url: Some("http://10.0.0.1:3000".into()),
            ..node
        };
        let old = entity(Family::Nodes, &primary, &context);
        assert_eq!(old["clone_protocol"], "http");
        assert_eq!(old["current"], true);
        assert_eq!(old["internal_url"], "http://10.0.0.1:3000");
        assert!(old.get("sync_object_storage").is_none());
        assert!(old.get("web_geo_replication_details_url").is_none());
        assert_eq!(
            old["_links"]["status"],
            "http://primary.example.com/api/v4/geo_nodes/1/status"
        );
    }
}
