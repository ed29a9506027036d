//! GitLab's own clients, written by others, against a real primary and
//! secondary: python-gitlab over both REST route families (`geo_nodes`,
//! `geo_sites`), and python-gitlab's GraphQL client (gql), which validates
//! every document against the schema it introspects. They run from the venv
//! `cargo xtask test` makes (`tests/clients/`), through
//! `tests/clients/geo_clients.py`.

use crate::operator::{self, CONVERGE, PAIR_WORKERS, Pair};
use crate::sites::{self, HELM, eventually};
use crate::support::{clients_python, run_clients};
use geohost::db::Db;
use geohost::secondary::Registry;
use serde_json::json;

const REGISTRY_TYPE: &str = "PackagesHelmMetadataCacheRegistry";

fn env_of(p: &Pair) -> Vec<(&'static str, String)> {
    vec![
        ("GEOHOST_PRIMARY_URL", p.primary.url.clone()),
        ("GEOHOST_PRIMARY_TOKEN", p.primary_token.clone()),
        ("GEOHOST_SECONDARY_URL", p.secondary.url.clone()),
        ("GEOHOST_SECONDARY_TOKEN", p.secondary_token.clone()),
        ("GEOHOST_SECONDARY_ID", p.secondary_id.to_string()),
    ]
}

/// Record `record`'s registry on the secondary: synced, but its
/// verification failed (and is not retried for a month).
async fn fail_verification(p: &Pair, record: i64) {
    let it = p.secondary.site.installed(HELM).unwrap();
    let registry = Registry::of(&it);
    p.secondary
        .site
        .tracking()
        .unwrap()
        .execute(
            &format!(
                "UPDATE {} SET verification_state = 3, verification_failure = 'test mismatch', \
                 checksum_mismatch = $1, verification_retry_at = $2 WHERE {} = $3",
                registry.table(),
                registry.fk()
            ),
            &[
                true.into(),
                (Db::now() + chrono::Duration::days(30)).into(),
                record.into(),
            ],
        )
        .await
        .unwrap();
}

/// The `geohost_sync_capacity` the secondary's scheduler applies.
async fn capacity_in_use(p: &Pair) -> Option<f64> {
    let text = operator::get(&format!("{}/metrics", p.secondary.url), &p.secondary_token)
        .await
        .text()
        .await
        .unwrap();
    operator::parse_exposition(&text)
        .get("geohost_sync_capacity{site=\"secondary\"}")
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gitlab_drives_both_route_families() {
    let Some(python) = clients_python() else {
        return;
    };
    for backend in sites::backends() {
        for (family, capacity) in [("geo_nodes", 3), ("geo_sites", 4)] {
            let mut p = operator::populated_pair(backend, PAIR_WORKERS).await;
            let what = format!("{backend:?} {family}");
            fail_verification(&p, p.in_scope[2]).await;
            // The secondary has reported its converged status to the primary.
            eventually(CONVERGE, "the secondary's status report", || async {
                geohost::status::store::by_id(&p.primary.site, p.secondary_id)
                    .await
                    .unwrap()
                    .is_some_and(|s| s["packages_helm_metadata_caches_registry_count"] == 8)
            })
            .await;
            // The metric is the process's: wait for this secondary's value.
            eventually(CONVERGE, "the default capacity in use", || async {
                capacity_in_use(&p).await == Some(10.0)
            })
            .await;

            let mut env = env_of(&p);
            env.push(("GEOHOST_FILES_MAX_CAPACITY", capacity.to_string()));
            let out = run_clients(&python, &["rest", family], &env);
            let root = |id: i64| format!("{}/api/v4/{family}/{id}", p.primary.url);

            // list: both sites, GitLab's entity, primary first.
            let list = out["list"].as_array().unwrap();
            let ids: Vec<i64> = list.iter().map(|s| s["id"].as_i64().unwrap()).collect();
            assert_eq!(ids, [p.primary_id, p.secondary_id], "{what}");
            let (primary, secondary) = (&list[0], &list[1]);
            assert_eq!(primary["primary"], true, "{what}");
            assert_eq!(primary["current"], true, "{what}");
            assert_eq!(secondary["current"], false, "{what}");
            assert_eq!(secondary["url"], p.secondary.url.as_str(), "{what}");
            assert_eq!(secondary["internal_url"], p.secondary.url.as_str());
            assert_eq!(secondary["selective_sync_type"], "namespaces");
            assert_eq!(
                secondary["selective_sync_namespace_ids"],
                json!([p.group_a])
            );
            assert_eq!(secondary["files_max_capacity"], 10);
            assert_eq!(secondary["repos_max_capacity"], 25);
            assert_eq!(secondary["container_repositories_max_capacity"], 10);
            assert_eq!(secondary["sync_object_storage"], false);
            assert!(primary.get("sync_object_storage").is_none(), "{what}");
            assert_eq!(
                secondary["_links"],
                json!({
                    "self": root(p.secondary_id),
                    "status": format!("{}/status", root(p.secondary_id)),
                    "repair": format!("{}/repair", root(p.secondary_id)),
                }),
                "{what}"
            );
            assert_eq!(
                secondary.get("clone_protocol").is_some(),
                family == "geo_nodes",
                "{what}: clone_protocol is the old family's"
            );
            assert_eq!(
                out["list_one_a_page"],
                json!([p.primary_id, p.secondary_id]),
                "{what}: python-gitlab follows the Link header page by page"
            );
            assert_eq!(out["list_first_page"], json!([p.primary_id]), "{what}");

            // get, and a missing one.
            assert_eq!(&out["get"], secondary, "{what}");
            assert_eq!(out["get_missing"]["error"], 404, "{what}");

            // status: every site's, and one.
            let reported: Vec<i64> = out["status_all"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["geo_node_id"].as_i64().unwrap())
                .collect();
            assert_eq!(reported, [p.primary_id, p.secondary_id], "{what}");
            let one = &out["status_one"];
            assert_eq!(one["geo_node_id"], p.secondary_id, "{what}");
            assert_eq!(
                one["packages_helm_metadata_caches_registry_count"], 8,
                "{one:#}"
            );
            let link_key = if family == "geo_nodes" {
                "node"
            } else {
                "site"
            };
            assert_eq!(
                one["_links"],
                json!({
                    "self": format!("{}/status", root(p.secondary_id)),
                    link_key: root(p.secondary_id),
                }),
                "{what}"
            );

            // current failures, on the secondary.
            let failures = out["failures"].as_array().unwrap();
            assert_eq!(failures.len(), 1, "{what}: {failures:?}");
            assert_eq!(failures[0]["replicable_name"], HELM);
            assert_eq!(
                failures[0]["packages_helm_metadata_cache_id"],
                p.failed_on_secondary
            );
            assert_eq!(failures[0]["state"], "failed");
            assert_eq!(failures[0]["last_sync_failure"], "test failure");
            let verification = out["failures_verification"].as_array().unwrap();
            assert_eq!(verification.len(), 1, "{what}: {verification:?}");
            assert_eq!(verification[0]["model_record_id"], p.in_scope[2]);
            assert_eq!(verification[0]["verification_failure"], "test mismatch");
            assert_eq!(verification[0]["checksum_mismatch"], true);
            assert_eq!(out["failures_bad_type"]["error"], 400, "{what}");
            assert_eq!(out["failures_on_primary"]["error"], 403, "{what}");

            // .save(): the new capacity on the primary, then in use by the
            // secondary's scheduler.
            assert_eq!(out["saved"]["files_max_capacity"], capacity, "{what}");
            assert_eq!(out["after_save"]["files_max_capacity"], capacity);
            let node = geohost::primary::sites::get(&p.primary.site.db, p.secondary_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(node.files_max_capacity, capacity);
            eventually(CONVERGE, "the secondary using the new capacity", || async {
                capacity_in_use(&p).await == Some(capacity as f64)
            })
            .await;

            // repair: the site answers, as it was.
            assert_eq!(out["repaired"]["id"], p.secondary_id, "{what}");
            assert_eq!(out["repaired"]["files_max_capacity"], capacity);
            assert_eq!(out["repair_missing"]["error"], 404, "{what}");

            // delete.
            let out = run_clients(&python, &["delete", family], &env_of(&p));
            assert_eq!(out["get_after_delete"]["error"], 404, "{what}");
            assert_eq!(out["remaining"], json!([p.primary_id]), "{what}");
            assert!(
                geohost::primary::sites::get(&p.primary.site.db, p.secondary_id)
                    .await
                    .unwrap()
                    .is_none(),
                "{what}: deleted"
            );
            p.secondary.stop().await;
            p.primary.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_client_validates_gitlabs_types_and_ids_round_trip() {
    let Some(python) = clients_python() else {
        return;
    };
    for backend in sites::backends() {
        let p = operator::populated_pair(backend, PAIR_WORKERS).await;
        let it = p.secondary.site.installed(HELM).unwrap();
        let registry = Registry::of(&it);
        let tracking = p.secondary.site.tracking().unwrap().clone();
        let mut rows = registry.all(&tracking).await.unwrap();
        rows.sort_by_key(|r| r.id);
        let t0 = Db::now();
        let gid = |id: i64| format!("gid://gitlab/Geo::{REGISTRY_TYPE}/{id}");
        // Resync the failed registry; reverify two synced ones.
        let failed = rows
            .iter()
            .position(|r| r.model_id == p.failed_on_secondary)
            .unwrap();
        let reverified: Vec<usize> = (0..rows.len()).filter(|&i| i != failed).take(2).collect();
        let mut env = env_of(&p);
        env.push(("GEOHOST_RESYNC_ID", gid(rows[failed].id)));
        env.push((
            "GEOHOST_REVERIFY_IDS",
            reverified
                .iter()
                .map(|&i| gid(rows[i].id))
                .collect::<Vec<_>>()
                .join(","),
        ));

        let out = run_clients(&python, &["graphql"], &env);
        let what = format!("{backend:?}");

        // The types, as the client introspected them: GitLab's names.
        let schema = &out["schema"];
        for scalar in [
            "GeoBaseRegistryID",
            "GeoPackagesHelmMetadataCacheRegistryID",
            "GeoPackagesNpmMetadataCacheRegistryID",
        ] {
            assert!(
                schema["scalars"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(scalar)),
                "{what}: {scalar} in {schema}"
            );
        }
        assert_eq!(
            schema["list_ids"],
            "[GeoPackagesHelmMetadataCacheRegistryID!]"
        );
        assert_eq!(schema["registry_id"], "GeoBaseRegistryID!");
        assert_eq!(schema["bulk_ids"], "[GeoBaseRegistryID!]");
        assert_eq!(schema["count"], "Int!");
        assert_eq!(schema["count_limit"], "Int");
        assert_eq!(schema["count_limit_default"], "1000");
        assert_eq!(schema["node_id"], "ID!");
        assert_eq!(schema["selective_sync_namespaces"], "NamespaceConnection");

        // GitLab's admin page query, its variables typed as GitLab's.
        let node = &out["list"]["geoNode"];
        assert_eq!(
            node["id"],
            format!("gid://gitlab/GeoNode/{}", p.secondary_id),
            "{what}"
        );
        assert_eq!(node["internalUrl"], p.secondary.url.as_str());
        assert_eq!(node["reposMaxCapacity"], 25);
        assert_eq!(node["containerRepositoriesMaxCapacity"], 10);
        assert_eq!(node["selectiveSyncType"], "namespaces");
        assert_eq!(
            node["selectiveSyncNamespaces"]["nodes"],
            json!([{"id": format!("gid://gitlab/Group/{}", p.group_a)}])
        );
        let connection = &node["packagesHelmMetadataCacheRegistries"];
        assert_eq!(connection["count"], 8, "{what}");
        assert_eq!(
            connection["limited"], 3,
            "{what}: limit + 1 beyond the limit"
        );
        assert_eq!(connection["pageInfo"]["hasNextPage"], false);
        let ids: Vec<String> = connection["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = rows.iter().map(|r| gid(r.id)).collect();
        assert_eq!(ids, expected, "{what}: GitLab's global ids, by id");

        // The ids round-trip: as a typed variable they select their rows,
        // and the mutations take them.
        let reverified_ids: Vec<&String> = reverified.iter().map(|&i| &expected[i]).collect();
        assert_eq!(out["by_ids"], json!(reverified_ids), "{what}");
        let update = &out["update"];
        assert_eq!(update["errors"], json!([]), "{what}");
        assert_eq!(update["registry"]["id"], expected[failed].as_str());
        assert_eq!(update["registry"]["modelRecordId"], p.failed_on_secondary);
        let bulk = &out["bulk"];
        assert_eq!(bulk["errors"], json!([]), "{what}");
        assert_eq!(
            bulk["registryClass"],
            "PACKAGES_HELM_METADATA_CACHE_REGISTRY"
        );

        // And they did what they say: the failed registry resynced, the two
        // reverified, no other row touched.
        eventually(CONVERGE, "the resync and the reverifications", || async {
            let now = registry.all(&tracking).await.unwrap();
            let row = |id: i64| now.iter().find(|r| r.id == id).unwrap().clone();
            let resynced = row(rows[failed].id);
            resynced.state == geohost::states::SyncState::Synced
                && resynced.verification_state == geohost::states::VerificationState::Succeeded
                && reverified.iter().all(|&i| {
                    row(rows[i].id).verified_at.is_some_and(|at| at > t0)
                        && row(rows[i].id).verification_state
                            == geohost::states::VerificationState::Succeeded
                })
        })
        .await;
        let now = registry.all(&tracking).await.unwrap();
        for (i, row) in rows.iter().enumerate() {
            if i == failed || reverified.contains(&i) {
                continue;
            }
            let after = now.iter().find(|r| r.id == row.id).unwrap();
            assert_eq!(after.verified_at, row.verified_at, "{what}: row {}", row.id);
        }

        // The client refuses a document typed otherwise than GitLab types
        // it, before sending it; the server refuses an id of another class.
        let mistyped = out["mistyped"].as_str().unwrap();
        assert!(
            mistyped.contains("[ID!]")
                && mistyped.contains("[GeoPackagesHelmMetadataCacheRegistryID!]"),
            "{what}: {mistyped}"
        );
        let foreign = out["foreign_id"].as_str().unwrap();
        assert!(
            foreign != "accepted" && foreign.contains("GeoBaseRegistryID"),
            "{what}: {foreign}"
        );
    }
}
