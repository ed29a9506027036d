//! GitLab's npm metadata cache, the second shipped type (written only with
//! the plugin SDK), end to end on a real pair of sites, on SQLite and
//! PostgreSQL: written through the ingest API, replicated by selective sync,
//! verified, shown under its own names in the site status, `/metrics` and
//! GraphQL, repaired after corruption; chosen with `plugins.builtin`, and
//! installed from a site's plugins folder instead.

use crate::sites::{self, HELM, NPM, TestSite, eventually};
use crate::support::sha256_hex;
use geohost::primary::sites::NewSite;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(120);
const PLURAL: &str = "packages_npm_metadata_caches";

/// GitLab's `object_storage_key` of an npm metadata cache, from first
/// principles: `HashedPath('packages', 'metadata_caches', 'npm',
/// sha256(package_name), root_hash: project_id)`.
fn npm_object_storage_key(project_id: i64, package_name: &str) -> String {
    let h = sha256_hex(project_id.to_string().as_bytes());
    format!(
        "{}/{}/{h}/packages/metadata_caches/npm/{}",
        &h[0..2],
        &h[2..4],
        sha256_hex(package_name.as_bytes())
    )
}

/// `Packages::Npm::MetadataCacheUploader`: the key, then `metadata.json`.
fn npm_blob_path(project_id: i64, package_name: &str) -> String {
    format!(
        "{}/metadata.json",
        npm_object_storage_key(project_id, package_name)
    )
}

/// (record id → (state, verification state)) of type `name` on the secondary.
async fn registries(secondary: &TestSite, name: &str) -> BTreeMap<i64, (i16, i16)> {
    sites::registry_states_in(secondary.site.tracking().unwrap(), name)
        .await
        .unwrap()
}

/// Whether the secondary holds exactly `expected` records of `name`, all
/// synced and verified.
async fn converged(secondary: &TestSite, name: &str, expected: &[i64]) -> bool {
    let found = registries(secondary, name).await;
    found.keys().copied().collect::<Vec<_>>() == expected
        && found.values().all(|&(s, v)| s == 2 && v == 2)
}

async fn get_json(url: &str, token: &str) -> Value {
    let response = reqwest::Client::new()
        .get(url)
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.unwrap()
}

async fn graphql(site: &TestSite, token: &str, query: &str, variables: Value) -> Value {
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/api/graphql", site.url))
        .header("PRIVATE-TOKEN", token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("errors").is_none(), "{query}: {answer:#}");
    answer["data"].clone()
}

/// `PUT /api/v4/replicables/packages_npm_metadata_cache` as a package
/// registry would call it.
async fn put_over_http(
    primary: &TestSite,
    token: &str,
    project: i64,
    package_name: &str,
    body: &str,
) -> reqwest::Response {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v4/replicables/{NPM}", primary.url),
        &[
            ("project_id", project.to_string()),
            ("package_name", package_name.to_string()),
        ],
    )
    .unwrap();
    reqwest::Client::new()
        .put(url)
        .header("PRIVATE-TOKEN", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

const REGISTRIES: &str = r#"{ geoNode { packagesNpmMetadataCacheRegistries {
    nodes { id state verificationState modelRecordId packagesNpmMetadataCacheId verificationChecksum }
} } }"#;

const UPDATE: &str = r#"mutation($id: GeoBaseRegistryID!, $action: GeoRegistryAction!) {
    geoRegistriesUpdate(input: {registryId: $id, action: $action}) {
      errors registry { ... on PackagesNpmMetadataCacheRegistry { id modelRecordId } } } }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_metadata_caches_replicate_verify_and_report_under_their_own_names() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, _, _, b] = sites::group_tree(&primary).await;
        let pa = sites::project(&primary, a, "pa").await;
        let pb = sites::project(&primary, b, "pb").await;
        let (_, primary_token) = geohost::api::auth::create_token(&primary.site.db, "ops")
            .await
            .unwrap();

        // Through the HTTP ingest API: a scoped name, GitLab's key and file.
        let scoped = "@scope/left-pad";
        let response = put_over_http(
            &primary,
            &primary_token,
            pa,
            scoped,
            &sites::npm_metadata(scoped, 1),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let written: Value = response.json().await.unwrap();
        assert_eq!(written["blob_path"], npm_blob_path(pa, scoped));
        assert_eq!(written["record"]["file"], "metadata.json");
        assert_eq!(
            written["record"]["object_storage_key"],
            npm_object_storage_key(pa, scoped)
        );
        assert_eq!(written["record"]["package_name"], scoped);
        let mut in_scope = vec![written["id"].as_i64().unwrap()];
        let mut paths = BTreeMap::from([(in_scope[0], npm_blob_path(pa, scoped))]);

        // A name GitLab refuses is refused before anything is written.
        for bad in ["no spaces", "@scope", "a+b"] {
            let response = put_over_http(&primary, &primary_token, pa, bad, "{}").await;
            assert!(response.status().is_client_error(), "{bad:?} accepted");
            let message: Value = response.json().await.unwrap();
            let message = message["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("invalid npm package name {bad:?}")),
                "{bad}: {message}"
            );
        }
        let listed = get_json(
            &format!("{}/api/v4/replicables/{NPM}", primary.url),
            &primary_token,
        )
        .await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

        for i in 0..5 {
            let name = format!("pkg-{i}");
            let w = sites::put_npm(&primary, pa, &name, &sites::npm_metadata(&name, i)).await;
            assert_eq!(w.blob_path, npm_blob_path(pa, &name));
            paths.insert(w.id, w.blob_path);
            in_scope.push(w.id);
        }
        for i in 0..3 {
            let name = format!("other-{i}");
            sites::put_npm(&primary, pb, &name, &sites::npm_metadata(&name, i)).await;
        }
        // A Helm record beside them: the two types are counted apart.
        let helm = sites::put_helm(&primary, pa, "stable", &sites::index_yaml(pa, "stable", 1))
            .await
            .id;

        let secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                selective_sync_type: Some("namespaces".into()),
                namespace_ids: vec![a],
                ..Default::default()
            },
            "idle_poll_ms = 50\nconsistency_interval_secs = 2\nstatus_interval_secs = 1\n",
        )
        .await;
        eventually(
            CONVERGE,
            "the selected npm records synced and verified",
            || converged(&secondary, NPM, &in_scope),
        )
        .await;
        let helm_ids = [helm];
        eventually(CONVERGE, "the Helm record synced and verified", || {
            converged(&secondary, HELM, &helm_ids)
        })
        .await;
        for (id, path) in &paths {
            let theirs = std::fs::read(primary.type_blob_file(NPM, path)).unwrap();
            let ours = std::fs::read(secondary.type_blob_file(NPM, path))
                .unwrap_or_else(|e| panic!("{backend:?}: record {id}: {e}"));
            assert_eq!(ours, theirs, "{backend:?}: record {id}");
        }
        let stored = secondary.site.blobs.list_type(NPM).await.unwrap();
        assert_eq!(
            stored.len(),
            in_scope.len(),
            "{backend:?}: no blob outside the scope"
        );

        // Site status: GitLab's fields under the npm plural, on both sites.
        let nodes = geohost::primary::sites::list(&primary.site.db)
            .await
            .unwrap();
        let secondary_id = nodes.iter().find(|n| n.name == "secondary").unwrap().id;
        let primary_id = nodes.iter().find(|n| n.primary).unwrap().id;
        let status_url = format!("{}/api/v4/geo_sites/status", primary.url);
        eventually(CONVERGE, "the secondary's npm status report", || async {
            let s = of_site(&status_url, &primary_token, secondary_id).await;
            s[format!("{PLURAL}_verified_count")] == 6
        })
        .await;
        let statuses = get_json(&status_url, &primary_token).await;
        let of = |id: i64| {
            statuses
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["geo_node_id"] == id)
                .unwrap()
                .clone()
        };
        let (p, s) = (of(primary_id), of(secondary_id));
        for (field, value) in [
            ("_count", json!(9)),
            ("_checksum_total_count", json!(9)),
            ("_registry_count", Value::Null),
        ] {
            assert_eq!(
                p[format!("{PLURAL}{field}")],
                value,
                "{backend:?} primary {field}"
            );
        }
        eventually(
            CONVERGE,
            "the primary checksummed every npm record",
            || async {
                let p = of_site(&status_url, &primary_token, primary_id).await;
                p[format!("{PLURAL}_checksummed_count")] == 9
            },
        )
        .await;
        for (field, value) in [
            ("_count", json!(6)),
            ("_registry_count", json!(6)),
            ("_synced_count", json!(6)),
            ("_failed_count", json!(0)),
            ("_verification_total_count", json!(6)),
            ("_verified_count", json!(6)),
            ("_verification_failed_count", json!(0)),
            ("_synced_in_percentage", json!("100.00%")),
            ("_verified_in_percentage", json!("100.00%")),
            ("_checksummed_count", Value::Null),
        ] {
            assert_eq!(
                s[format!("{PLURAL}{field}")],
                value,
                "{backend:?} secondary {field}"
            );
        }
        assert_eq!(s["packages_helm_metadata_caches_registry_count"], 1);

        // /metrics: GitLab's gauges under the npm plural.
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", primary.url))
            .header("PRIVATE-TOKEN", &primary_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for suffix in ["", "_checksum_total", "_checksummed"] {
            let sample = format!("geo_{PLURAL}{suffix}{{name=\"primary\",url=\"primary\"}} 9");
            assert!(text.lines().any(|l| l == sample), "{sample}\n{text}");
        }
        for (suffix, value) in [
            ("_synced", 6),
            ("_registry", 6),
            ("_verified", 6),
            ("_failed", 0),
        ] {
            let sample =
                format!("geo_{PLURAL}{suffix}{{name=\"secondary\",url=\"secondary\"}} {value}");
            assert!(text.lines().any(|l| l == sample), "{sample}\n{text}");
        }
        assert!(text.contains(&format!("# TYPE geo_{PLURAL}_synced gauge")));

        // GraphQL: the type's own registries field and foreign key.
        let (_, secondary_token) = geohost::api::auth::create_token(&secondary.site.db, "ops")
            .await
            .unwrap();
        let data = graphql(&secondary, &secondary_token, REGISTRIES, json!({})).await;
        let nodes = data["geoNode"]["packagesNpmMetadataCacheRegistries"]["nodes"]
            .as_array()
            .unwrap()
            .clone();
        let mut listed: Vec<i64> = nodes
            .iter()
            .map(|n| {
                // GitLab's `ID!`: the record id as a string.
                n["packagesNpmMetadataCacheId"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .collect();
        listed.sort_unstable();
        assert_eq!(listed, in_scope, "{backend:?}");
        for node in &nodes {
            assert_eq!(node["state"], "SYNCED", "{node}");
            assert_eq!(node["verificationState"], "SUCCEEDED", "{node}");
            let id = node["modelRecordId"].as_i64().unwrap();
            assert_eq!(node["packagesNpmMetadataCacheId"], id.to_string());
            let bytes = std::fs::read(primary.type_blob_file(NPM, &paths[&id])).unwrap();
            assert_eq!(node["verificationChecksum"], sha256_hex(&bytes), "{node}");
        }

        // A blob corrupted on the secondary: REVERIFY finds it, RESYNC repairs it.
        let victim_node = nodes
            .iter()
            .find(|n| n["modelRecordId"] == in_scope[2])
            .unwrap();
        let victim = secondary.type_blob_file(NPM, &paths[&in_scope[2]]);
        let good = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, b"{\"corrupted\": true}").unwrap();
        let answer = graphql(
            &secondary,
            &secondary_token,
            UPDATE,
            json!({"id": victim_node["id"], "action": "REVERIFY"}),
        )
        .await;
        assert_eq!(answer["geoRegistriesUpdate"]["errors"], json!([]));
        assert_eq!(
            answer["geoRegistriesUpdate"]["registry"]["modelRecordId"],
            in_scope[2]
        );
        // The mismatch is found; the operator resyncs instead of waiting for
        // the retry (GitLab's schedule: 15 s and more).
        eventually(CONVERGE, "the corruption found", || async {
            registries(&secondary, NPM)
                .await
                .get(&in_scope[2])
                .is_some_and(|&(s, v)| s == 3 || v == 3)
        })
        .await;
        let answer = graphql(
            &secondary,
            &secondary_token,
            UPDATE,
            json!({"id": victim_node["id"], "action": "RESYNC"}),
        )
        .await;
        assert_eq!(answer["geoRegistriesUpdate"]["errors"], json!([]));
        eventually(CONVERGE, "the corrupted npm blob repaired", || async {
            std::fs::read(&victim).ok().as_deref() == Some(good.as_slice())
                && converged(&secondary, NPM, &in_scope).await
        })
        .await;
    }
}

async fn of_site(status_url: &str, token: &str, id: i64) -> Value {
    let statuses = get_json(status_url, token).await;
    statuses
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["geo_node_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_builtin_chooses_the_shipped_types_a_site_installs() {
    let backend = sites::Backend::Sqlite;
    // Only Helm: npm is not installed, has no tables and no status fields.
    let primary = sites::primary_with(
        backend,
        "idle_poll_ms = 50\n[plugins]\nbuiltin = [\"helm-metadata-cache\"]\n",
    )
    .await;
    assert!(primary.site.installed(HELM).is_some());
    assert!(primary.site.installed(NPM).is_none());
    let (_, token) = geohost::api::auth::create_token(&primary.site.db, "ops")
        .await
        .unwrap();
    let response = put_over_http(&primary, &token, 1, "left-pad", "{}").await;
    assert!(response.status().is_client_error());
    let statuses = get_json(&format!("{}/api/v4/geo_sites/status", primary.url), &token).await;
    let fields: Vec<&String> = statuses[0].as_object().unwrap().keys().collect();
    assert!(fields.iter().any(|f| f.starts_with("packages_helm_")));
    assert!(
        !fields.iter().any(|f| f.starts_with("packages_npm_")),
        "{fields:?}"
    );

    // Unset: every shipped type.
    let all = sites::primary(backend).await;
    assert!(all.site.installed(HELM).is_some() && all.site.installed(NPM).is_some());

    // A name that is not shipped stops the site with the shipped list.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[site]\nname = \"p\"\nrole = \"primary\"\ndata_dir = {:?}\n\
         [plugins]\nbuiltin = [\"packages_npm_metadata_cache\"]\n",
        dir.path().display().to_string()
    );
    let config = geohost::config::Config::from_toml(&config).unwrap();
    let error = match geohost::runtime::open(config).await {
        Ok(_) => panic!("an unknown shipped type was accepted"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("plugins.builtin")
            && error.contains("\"packages_npm_metadata_cache\" is not a shipped type")
            && error.contains("helm-metadata-cache, npm-metadata-cache"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_dropped_into_the_plugins_folder_replicates() {
    // The guide's install-at-startup path: both sites ship only Helm, and
    // load npm from their plugins folder.
    let component = geohost::plugin::builtin::by_stem("npm-metadata-cache")
        .unwrap()
        .bytes;
    for backend in sites::backends() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("npm-metadata-cache.wasm"), component).unwrap();
        let plugins = format!(
            "[plugins]\nbuiltin = [\"helm-metadata-cache\"]\ndir = {:?}\n",
            folder.path().display().to_string()
        );
        let primary = sites::primary_with(backend, &format!("idle_poll_ms = 50\n{plugins}")).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let mut ids = Vec::new();
        for name in ["left-pad", "@scope/right-pad"] {
            let w = sites::put_npm(&primary, project, name, &sites::npm_metadata(name, 1)).await;
            assert_eq!(w.blob_path, npm_blob_path(project, name));
            ids.push(w.id);
        }
        ids.sort_unstable();
        let secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
            &format!("idle_poll_ms = 50\nconsistency_interval_secs = 2\n{plugins}"),
        )
        .await;
        assert!(secondary.site.installed(NPM).is_some());
        eventually(CONVERGE, "the npm records from the plugins folder", || {
            converged(&secondary, NPM, &ids)
        })
        .await;
        let path = npm_blob_path(project, "@scope/right-pad");
        assert_eq!(
            std::fs::read(secondary.type_blob_file(NPM, &path)).unwrap(),
            std::fs::read(primary.type_blob_file(NPM, &path)).unwrap(),
            "{backend:?}"
        );
    }
}
