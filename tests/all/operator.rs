//! The operator surfaces on a real pair of sites, on SQLite and PostgreSQL:
//! GitLab's site status API, `/metrics`, GraphQL registries and their
//! mutations, and admin authentication on every admin route.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use geohost::db::{Db, ident};
use geohost::primary::sites::NewSite;
use geohost::secondary::Registry;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(crate) const CONVERGE: Duration = Duration::from_secs(90);
const PLURAL: &str = "packages_helm_metadata_caches";
const REGISTRY_TYPE: &str = "PackagesHelmMetadataCacheRegistry";

/// A primary with 12 records (8 in group `a`, 4 in group `b`) and a
/// secondary selecting group `a`, converged, then with one failure on each
/// side set directly in the databases: record `failed_on_primary` (in `b`)
/// failed verification on the primary, record `failed_on_secondary` (in
/// `a`) failed to sync on the secondary.
pub(crate) struct Pair {
    pub primary: TestSite,
    pub secondary: TestSite,
    pub primary_token: String,
    pub secondary_token: String,
    pub primary_id: i64,
    pub secondary_id: i64,
    pub group_a: i64,
    pub in_scope: Vec<i64>,
    pub failed_on_primary: i64,
    pub failed_on_secondary: i64,
}

pub(crate) async fn registry_counts(site: &TestSite) -> geohost::secondary::RegistryCounts {
    let it = site.site.installed(HELM).unwrap();
    geohost::secondary::status_counts(site.site.tracking().unwrap(), &it)
        .await
        .unwrap()
}

pub(crate) async fn populated_pair(backend: Backend, workers: &str) -> Pair {
    let primary = sites::primary(backend).await;
    let [_, a, _, _, b] = sites::group_tree(&primary).await;
    let pa = sites::project(&primary, a, "pa").await;
    let pb = sites::project(&primary, b, "pb").await;
    let mut in_scope = Vec::new();
    for i in 0..8 {
        let channel = if i == 5 {
            "nightly".to_string()
        } else {
            format!("stable-{i}")
        };
        let w = sites::put_helm(&primary, pa, &channel, &sites::index_yaml(pa, &channel, i)).await;
        in_scope.push(w.id);
    }
    let mut out_of_scope = Vec::new();
    for i in 0..4 {
        let channel = format!("other-{i}");
        let w = sites::put_helm(&primary, pb, &channel, &sites::index_yaml(pb, &channel, i)).await;
        out_of_scope.push(w.id);
    }
    let secondary = sites::secondary_with(
        backend,
        &primary,
        NewSite {
            name: "secondary".into(),
            selective_sync_type: Some("namespaces".into()),
            namespace_ids: vec![a],
            ..Default::default()
        },
        workers,
    )
    .await;
    eventually(
        CONVERGE,
        "the 8 selected records synced and verified",
        || async {
            let c = registry_counts(&secondary).await;
            c.registry_count == 8 && c.verified_count == 8
        },
    )
    .await;
    let it = primary.site.installed(HELM).unwrap();
    eventually(CONVERGE, "the 12 records checksummed", || async {
        let states = geohost::primary::verify::state_counts(&primary.site.db, &it)
            .await
            .unwrap();
        states
            .iter()
            .any(|(s, n)| *s == geohost::states::VerificationState::Succeeded && *n == 12)
    })
    .await;

    // An update now that the secondary exists, so the event log is not empty
    // (events are logged only while a secondary is registered).
    let updated = sites::put_helm(&primary, pa, "stable-1", "an update").await;
    assert_eq!(updated.id, in_scope[1]);
    let tracking = secondary.site.tracking().unwrap().clone();
    eventually(CONVERGE, "the update synced and verified", || async {
        let c = registry_counts(&secondary).await;
        let last = geohost::primary::events::last(&primary.site.db)
            .await
            .unwrap();
        let cursor = geohost::secondary::cursor::position(&tracking)
            .await
            .unwrap();
        let states = geohost::primary::verify::state_counts(&primary.site.db, &it)
            .await
            .unwrap();
        c.verified_count == 8
            && last.is_some_and(|(id, _)| cursor == Some(id))
            && states
                .iter()
                .any(|(s, n)| *s == geohost::states::VerificationState::Succeeded && *n == 12)
    })
    .await;

    let later = Db::now() + chrono::Duration::days(30);
    let failed_on_primary = out_of_scope[0];
    primary
        .site
        .db
        .execute(
            &format!(
                "UPDATE {} SET verification_state = 3, verification_failure = 'test', \
                 verification_retry_at = $1 WHERE {} = $2",
                ident(&it.identity.states_table()),
                ident(&it.identity.foreign_key())
            ),
            &[later.into(), failed_on_primary.into()],
        )
        .await
        .unwrap();
    let failed_on_secondary = in_scope[0];
    let registry = Registry::of(&it);
    secondary
        .site
        .tracking()
        .unwrap()
        .execute(
            &format!(
                "UPDATE {} SET state = 3, retry_count = 1, retry_at = $1, \
                 last_sync_failure = 'test failure' WHERE {} = $2",
                registry.table(),
                registry.fk()
            ),
            &[later.into(), failed_on_secondary.into()],
        )
        .await
        .unwrap();

    let nodes = geohost::primary::sites::list(&primary.site.db)
        .await
        .unwrap();
    let primary_id = nodes.iter().find(|n| n.primary).unwrap().id;
    let secondary_id = nodes.iter().find(|n| n.name == "secondary").unwrap().id;
    let (_, primary_token) = geohost::api::auth::create_token(&primary.site.db, "ops")
        .await
        .unwrap();
    let (_, secondary_token) = geohost::api::auth::create_token(&secondary.site.db, "ops")
        .await
        .unwrap();
    Pair {
        primary,
        secondary,
        primary_token,
        secondary_token,
        primary_id,
        secondary_id,
        group_a: a,
        in_scope,
        failed_on_primary,
        failed_on_secondary,
    }
}

pub(crate) const PAIR_WORKERS: &str =
    "idle_poll_ms = 50\nconsistency_interval_secs = 2\nstatus_interval_secs = 1\n";

pub(crate) async fn get(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn get_json(url: &str, token: &str) -> Value {
    let response = get(url, token).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.unwrap()
}

/// The status of site `id` in a `/geo_sites/status` array.
fn status_of(list: &Value, id: i64) -> Option<&Value> {
    list.as_array()?.iter().find(|s| s["geo_node_id"] == id)
}

/// The twelve per-type fields of a status.
fn type_fields(status: &Value) -> BTreeMap<String, Value> {
    status
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(PLURAL))
        .map(|(k, v)| (k[PLURAL.len()..].to_string(), v.clone()))
        .collect()
}

fn expected_fields(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

const SITE_FIELDS: [&str; 15] = [
    "geo_node_id",
    "healthy",
    "health",
    "health_status",
    "last_event_id",
    "last_event_timestamp",
    "cursor_last_event_id",
    "cursor_last_event_timestamp",
    "selective_sync_type",
    "namespaces",
    "version",
    "revision",
    "updated_at",
    "last_successful_status_check_timestamp",
    "_links",
];

fn primary_fields() -> BTreeMap<String, Value> {
    expected_fields(&[
        ("_count", json!(12)),
        ("_checksum_total_count", json!(12)),
        ("_checksummed_count", json!(11)),
        ("_checksum_failed_count", json!(1)),
        ("_synced_count", Value::Null),
        ("_failed_count", Value::Null),
        ("_registry_count", Value::Null),
        ("_verification_total_count", Value::Null),
        ("_verified_count", Value::Null),
        ("_verification_failed_count", Value::Null),
        ("_synced_in_percentage", json!("0.00%")),
        ("_verified_in_percentage", json!("0.00%")),
    ])
}

fn secondary_fields() -> BTreeMap<String, Value> {
    expected_fields(&[
        ("_count", json!(8)),
        ("_checksum_total_count", Value::Null),
        ("_checksummed_count", Value::Null),
        ("_checksum_failed_count", Value::Null),
        ("_synced_count", json!(7)),
        ("_failed_count", json!(1)),
        ("_registry_count", json!(8)),
        ("_verification_total_count", json!(7)),
        ("_verified_count", json!(7)),
        ("_verification_failed_count", json!(0)),
        ("_synced_in_percentage", json!("87.50%")),
        ("_verified_in_percentage", json!("87.50%")),
    ])
}

/// Checks the site fields every status carries.
fn check_site_fields(status: &Value, what: &str) {
    for field in SITE_FIELDS {
        assert!(
            status.get(field).is_some(),
            "{what}: no `{field}` in {status:#}"
        );
    }
    assert_eq!(status["healthy"], true, "{what}: {status:#}");
    assert_eq!(status["health"], "Healthy", "{what}");
    assert_eq!(status["health_status"], "Healthy", "{what}");
    assert_eq!(status["version"], geohost::status::VERSION, "{what}");
    assert_eq!(status["revision"], geohost::status::revision(), "{what}");
    let updated = chrono::DateTime::parse_from_rfc3339(status["updated_at"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{what}: updated_at: {e}"));
    assert!(
        (chrono::Utc::now() - updated.to_utc()).num_seconds().abs() < 120,
        "{what}"
    );
    let checked = status["last_successful_status_check_timestamp"]
        .as_i64()
        .unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - checked).abs() < 120,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_status_carries_gitlabs_fields_on_both_sites() {
    for backend in sites::backends() {
        let mut p = populated_pair(backend, PAIR_WORKERS).await;
        let (last_id, last_at) = geohost::primary::events::last(&p.primary.site.db)
            .await
            .unwrap()
            .unwrap();
        let list_url = format!("{}/api/v4/geo_sites/status", p.primary.url);

        // The primary serves itself (live) and the secondary's last report.
        let mut list = Value::Null;
        let started = Instant::now();
        while started.elapsed() < CONVERGE {
            list = get_json(&list_url, &p.primary_token).await;
            if status_of(&list, p.secondary_id).is_some_and(|s| {
                type_fields(s) == secondary_fields() && s["cursor_last_event_id"] == last_id
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(list.as_array().unwrap().len(), 2, "{backend:?}: {list:#}");
        let primary = status_of(&list, p.primary_id).unwrap();
        let secondary = status_of(&list, p.secondary_id).unwrap();
        assert_eq!(type_fields(primary), primary_fields(), "{backend:?}");
        assert_eq!(type_fields(secondary), secondary_fields(), "{backend:?}");
        check_site_fields(primary, "primary");
        check_site_fields(secondary, "secondary");
        for status in [primary, secondary] {
            assert_eq!(status["last_event_id"], last_id, "{backend:?}");
            assert_eq!(
                status["last_event_timestamp"],
                last_at.timestamp(),
                "{backend:?}"
            );
        }
        assert_eq!(primary["cursor_last_event_id"], Value::Null);
        assert_eq!(primary["cursor_last_event_timestamp"], 0);
        assert_eq!(secondary["cursor_last_event_id"], last_id);
        assert_eq!(
            secondary["cursor_last_event_timestamp"],
            last_at.timestamp()
        );
        assert_eq!(primary["selective_sync_type"], Value::Null);
        assert_eq!(primary["namespaces"], json!([]));
        assert_eq!(secondary["selective_sync_type"], "namespaces");
        assert_eq!(
            secondary["namespaces"],
            json!([{"id": p.group_a, "name": "a", "path": "a", "kind": "group",
                    "full_path": "root/a", "parent_id": secondary["namespaces"][0]["parent_id"]}])
        );
        assert!(secondary["namespaces"][0]["parent_id"].is_i64());
        for (status, id) in [(primary, p.primary_id), (secondary, p.secondary_id)] {
            assert_eq!(
                status["_links"],
                json!({
                    "self": format!("{}/api/v4/geo_sites/{id}/status", p.primary.url),
                    "site": format!("{}/api/v4/geo_sites/{id}", p.primary.url),
                })
            );
        }

        // One site's status; an unknown site, and a site that never reported.
        let one = get_json(
            &format!(
                "{}/api/v4/geo_sites/{}/status",
                p.primary.url, p.secondary_id
            ),
            &p.primary_token,
        )
        .await;
        assert_eq!(type_fields(&one), secondary_fields());
        let (silent, _) = geohost::primary::sites::add_secondary(
            &p.primary.site,
            NewSite {
                name: "silent".into(),
                url: "http://127.0.0.1:9".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for id in [silent.id, 999] {
            let response = get(
                &format!("{}/api/v4/geo_sites/{id}/status", p.primary.url),
                &p.primary_token,
            )
            .await;
            assert_eq!(
                response.status(),
                StatusCode::NOT_FOUND,
                "{backend:?} site {id}"
            );
        }
        let list = get_json(&list_url, &p.primary_token).await;
        assert_eq!(
            list.as_array().unwrap().len(),
            2,
            "a site that never reported is left out"
        );

        // The secondary serves its own status, computed now.
        let own = get_json(
            &format!("{}/api/v4/geo_sites/status", p.secondary.url),
            &p.secondary_token,
        )
        .await;
        assert_eq!(own.as_array().unwrap().len(), 1);
        let own = &own[0];
        assert_eq!(own["geo_node_id"], p.secondary_id);
        assert_eq!(type_fields(own), secondary_fields(), "{backend:?}");
        check_site_fields(own, "secondary, own");
        assert_eq!(own["cursor_last_event_id"], last_id);
        assert_eq!(
            own["_links"]["self"],
            format!(
                "{}/api/v4/geo_sites/{}/status",
                p.secondary.url, p.secondary_id
            )
        );
        let by_id = get_json(
            &format!(
                "{}/api/v4/geo_sites/{}/status",
                p.secondary.url, p.secondary_id
            ),
            &p.secondary_token,
        )
        .await;
        assert_eq!(type_fields(&by_id), secondary_fields());

        // A report older than 60 minutes is outdated: unhealthy.
        p.secondary.stop().await;
        p.primary
            .site
            .db
            .execute(
                "UPDATE geo_node_statuses SET updated_at = $1 WHERE geo_node_id = $2",
                &[
                    (Db::now() - chrono::Duration::minutes(61)).into(),
                    p.secondary_id.into(),
                ],
            )
            .await
            .unwrap();
        let list = get_json(&list_url, &p.primary_token).await;
        let stale = status_of(&list, p.secondary_id).unwrap();
        assert_eq!(stale["healthy"], false, "{backend:?}");
        assert_eq!(stale["health_status"], "Unhealthy");
        assert_eq!(
            stale["health"],
            "Status has not been updated in the past 60 minutes"
        );
        assert_eq!(
            type_fields(stale),
            secondary_fields(),
            "the counts stay as reported"
        );
        let _ = (p.in_scope, p.failed_on_primary, p.failed_on_secondary);
    }
}

/// `name{labels}` → value, from Prometheus text.
pub(crate) fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(key.to_string(), value);
    }
    samples
}

/// Checks Prometheus text with `promtool check metrics` where Debian's
/// `prometheus` package is installed. Its only complaint may be GitLab's
/// gauge names ending in `_total` (e.g. `geo_…_checksum_total`).
fn promtool_check(text: &str) -> bool {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        eprintln!("note: /usr/bin/promtool is missing; /metrics checked by the test's own parser");
        return false;
    }
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        // Lint problems only: each must be a GitLab gauge's `_total` name.
        Some(3) => {
            for line in report.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    line.starts_with("geo_")
                        && line.ends_with("non-counter metrics should not have \"_total\" suffix"),
                    "promtool: {line}\n{text}"
                );
            }
        }
        other => panic!("promtool check metrics failed ({other:?}): {report}\n{text}"),
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_gitlabs_gauges() {
    for backend in sites::backends() {
        let mut p = populated_pair(backend, PAIR_WORKERS).await;
        let (last_id, _) = geohost::primary::events::last(&p.primary.site.db)
            .await
            .unwrap()
            .unwrap();
        let url = format!("{}/metrics", p.primary.url);
        let gauge = |name: &str, site: &str| format!("{name}{{name=\"{site}\",url=\"{site}\"}}");
        let mut samples = BTreeMap::new();
        let mut text = String::new();
        let started = Instant::now();
        while started.elapsed() < CONVERGE {
            let response = get(&url, &p.primary_token).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain; version=0.0.4")
            );
            text = response.text().await.unwrap();
            samples = parse_exposition(&text);
            // The secondary's report with the failure, once its cursor has
            // saved a position (after its first long-poll).
            if samples.get(&gauge(&format!("geo_{PLURAL}_failed"), "secondary")) == Some(&1.0)
                && samples.get(&gauge("geo_cursor_last_event_id", "secondary"))
                    == Some(&(last_id as f64))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        promtool_check(&text);
        let expect = |name: &str, site: &str, value: Option<f64>| {
            assert_eq!(
                samples
                    .get(&gauge(&format!("geo_{PLURAL}{name}"), site))
                    .copied(),
                value,
                "{backend:?}: geo_{PLURAL}{name} of {site}\n{text}"
            );
        };
        for (name, value) in [
            ("", 12.0),
            ("_checksum_total", 12.0),
            ("_checksummed", 11.0),
            ("_checksum_failed", 1.0),
        ] {
            expect(name, "primary", Some(value));
            if !name.is_empty() {
                expect(name, "secondary", None);
            }
        }
        for (name, value) in [
            ("", 8.0),
            ("_synced", 7.0),
            ("_failed", 1.0),
            ("_registry", 8.0),
            ("_verification_total", 7.0),
            ("_verified", 7.0),
            ("_verification_failed", 0.0),
        ] {
            expect(name, "secondary", Some(value));
            if !name.is_empty() {
                expect(name, "primary", None);
            }
        }
        assert_eq!(
            samples.get(&gauge("geo_last_event_id", "primary")),
            Some(&(last_id as f64))
        );
        assert_eq!(
            samples.get(&gauge("geo_cursor_last_event_id", "secondary")),
            Some(&(last_id as f64))
        );
        assert!(text.contains("# TYPE geo_packages_helm_metadata_caches gauge"));
        // The engine's own metrics (the sites run in this process).
        for family in [
            "# TYPE geohost_sync_duration_seconds histogram",
            "# TYPE geohost_verification_duration_seconds histogram",
            "# TYPE geohost_plugin_call_duration_seconds histogram",
            "# TYPE geohost_sync_bytes_total counter",
            "# TYPE geohost_replication_lag_seconds gauge",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        assert!(
            samples.keys().any(|k| k
                .starts_with("geohost_sync_bytes_total{type=\"packages_helm_metadata_cache\"}")),
            "{text}"
        );

        // The secondary exports its own gauges; a report the primary does not
        // take counts in GitLab's geo_status_failed_total.
        let secondary_url = format!("{}/metrics", p.secondary.url);
        let own = parse_exposition(
            &get(&secondary_url, &p.secondary_token)
                .await
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(
            own.get(&gauge(&format!("geo_{PLURAL}_registry"), "secondary")),
            Some(&8.0)
        );
        assert_eq!(
            own.get(&gauge(&format!("geo_{PLURAL}_checksummed"), "primary")),
            None
        );
        p.primary.stop().await;
        let failed = gauge("geo_status_failed_total", "secondary");
        eventually(
            Duration::from_secs(30),
            "geo_status_failed_total",
            || async {
                let text = get(&secondary_url, &p.secondary_token)
                    .await
                    .text()
                    .await
                    .unwrap();
                parse_exposition(&text)
                    .get(&failed)
                    .is_some_and(|n| *n >= 1.0)
            },
        )
        .await;
        let text = get(&secondary_url, &p.secondary_token)
            .await
            .text()
            .await
            .unwrap();
        promtool_check(&text);
    }
}

async fn graphql(site: &TestSite, token: &str, query: &str, variables: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/api/graphql", site.url))
        .header("PRIVATE-TOKEN", token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// `data` of a GraphQL answer, which must have no errors.
async fn graphql_ok(site: &TestSite, token: &str, query: &str, variables: Value) -> Value {
    let answer = graphql(site, token, query, variables).await;
    assert!(answer.get("errors").is_none(), "{query}: {answer:#}");
    answer["data"].clone()
}

const LIST: &str = r#"
query($first: Int, $after: String, $last: Int, $before: String, $sort: GeoRegistrySort,
      $state: ReplicationStateEnum, $vstate: VerificationStateEnum, $ids: [GeoPackagesHelmMetadataCacheRegistryID!],
      $keyword: String) {
  geoNode {
    name
    primary
    packagesHelmMetadataCacheRegistries(first: $first, after: $after, last: $last, before: $before,
        sort: $sort, replicationState: $state, verificationState: $vstate, ids: $ids, keyword: $keyword) {
      nodes {
        id state retryCount lastSyncFailure retryAt lastSyncedAt verifiedAt verificationRetryAt
        createdAt checksumMismatch verificationChecksum verificationChecksumMismatched
        verificationFailure verificationStartedAt verificationRetryCount verificationState
        modelRecordId missingOnPrimary packagesHelmMetadataCacheId
      }
      edges { cursor node { id } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}"#;

/// The model record ids of a registries answer.
fn record_ids(data: &Value) -> Vec<i64> {
    data["geoNode"]["packagesHelmMetadataCacheRegistries"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["modelRecordId"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_registries_filter_sort_page_and_mutate() {
    for backend in sites::backends() {
        let p = populated_pair(backend, PAIR_WORKERS).await;
        let (s, token) = (&p.secondary, p.secondary_token.as_str());
        let it = s.site.installed(HELM).unwrap();
        let registry = Registry::of(&it);
        let tracking = s.site.tracking().unwrap().clone();
        let rows = registry.all(&tracking).await.unwrap();
        let by_id: Vec<i64> = {
            let mut r = rows.clone();
            r.sort_by_key(|r| r.id);
            r.iter().map(|r| r.model_id).collect()
        };

        // Every field, GitLab's way, for the failed registry.
        let data = graphql_ok(s, token, LIST, json!({"state": "FAILED"})).await;
        assert_eq!(data["geoNode"]["name"], "secondary");
        assert_eq!(data["geoNode"]["primary"], false);
        let failed_row = rows
            .iter()
            .find(|r| r.model_id == p.failed_on_secondary)
            .unwrap();
        let node = &data["geoNode"]["packagesHelmMetadataCacheRegistries"]["nodes"][0];
        let secs = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        assert_eq!(
            node,
            &json!({
                "id": format!("gid://gitlab/Geo::{REGISTRY_TYPE}/{}", failed_row.id),
                "state": "FAILED",
                "retryCount": 1,
                "lastSyncFailure": "test failure",
                "retryAt": secs(failed_row.retry_at),
                "lastSyncedAt": secs(failed_row.last_synced_at),
                "verifiedAt": secs(failed_row.verified_at),
                "verificationRetryAt": null,
                "createdAt": secs(Some(failed_row.created_at)),
                "checksumMismatch": false,
                "verificationChecksum": failed_row.verification_checksum,
                "verificationChecksumMismatched": null,
                "verificationFailure": null,
                "verificationStartedAt": secs(failed_row.verification_started_at),
                "verificationRetryCount": 0,
                "verificationState": "SUCCEEDED",
                "modelRecordId": p.failed_on_secondary,
                "missingOnPrimary": null,
                "packagesHelmMetadataCacheId": p.failed_on_secondary.to_string(),
            }),
            "{backend:?}"
        );
        assert_eq!(record_ids(&data), [p.failed_on_secondary]);

        // Filters: states, ids, keyword (matched on the primary).
        let data = graphql_ok(
            s,
            token,
            LIST,
            json!({"vstate": "SUCCEEDED", "state": "SYNCED"}),
        )
        .await;
        assert_eq!(record_ids(&data).len(), 7, "{backend:?}");
        // The form earlier versions gave out is still accepted.
        let two: Vec<String> = rows[..2]
            .iter()
            .map(|r| format!("gid://geo/{REGISTRY_TYPE}/{}", r.id))
            .collect();
        let data = graphql_ok(s, token, LIST, json!({"ids": two})).await;
        let mut got = record_ids(&data);
        got.sort();
        let mut want: Vec<i64> = rows[..2].iter().map(|r| r.model_id).collect();
        want.sort();
        assert_eq!(got, want, "{backend:?}");
        let gitlab_form = format!("gid://gitlab/Geo::{REGISTRY_TYPE}/{}", rows[0].id);
        let data = graphql_ok(s, token, LIST, json!({"ids": [gitlab_form]})).await;
        assert_eq!(record_ids(&data), [rows[0].model_id]);
        let data = graphql_ok(s, token, LIST, json!({"keyword": "NIGHT"})).await;
        assert_eq!(record_ids(&data), [p.in_scope[5]], "{backend:?}: keyword");
        let data = graphql_ok(s, token, LIST, json!({"keyword": "other"})).await;
        assert_eq!(
            record_ids(&data),
            Vec::<i64>::new(),
            "out-of-scope records have no registry"
        );
        let data = graphql_ok(
            s,
            token,
            LIST,
            json!({"keyword": "stable", "state": "FAILED"}),
        )
        .await;
        assert_eq!(record_ids(&data), [p.failed_on_secondary]);

        // Sorts.
        let data = graphql_ok(s, token, LIST, json!({})).await;
        assert_eq!(record_ids(&data), by_id, "{backend:?}: ID_ASC by default");
        let data = graphql_ok(s, token, LIST, json!({"sort": "ID_DESC"})).await;
        assert_eq!(
            record_ids(&data),
            by_id.iter().rev().copied().collect::<Vec<_>>()
        );
        for (sort, key) in [
            ("VERIFIED_AT_ASC", "verified"),
            ("VERIFIED_AT_DESC", "verified"),
            ("LAST_SYNCED_AT_ASC", "synced"),
            ("LAST_SYNCED_AT_DESC", "synced"),
        ] {
            let mut expected = rows.clone();
            expected.sort_by_key(|r| {
                let at = if key == "verified" {
                    r.verified_at
                } else {
                    r.last_synced_at
                };
                (at.is_none(), at, r.id)
            });
            if sort.ends_with("DESC") {
                expected.reverse();
            }
            let data = graphql_ok(s, token, LIST, json!({"sort": sort})).await;
            assert_eq!(
                record_ids(&data),
                expected.iter().map(|r| r.model_id).collect::<Vec<_>>(),
                "{backend:?}: {sort}"
            );

            // Pages of 3 forward, then of 3 backward, give the same order.
            let mut forward = Vec::new();
            let mut after = Value::Null;
            loop {
                let data = graphql_ok(
                    s,
                    token,
                    LIST,
                    json!({"sort": sort, "first": 3, "after": after}),
                )
                .await;
                forward.extend(record_ids(&data));
                let info = &data["geoNode"]["packagesHelmMetadataCacheRegistries"]["pageInfo"];
                assert_eq!(info["hasPreviousPage"], !after.is_null());
                if info["hasNextPage"] == false {
                    break;
                }
                after = info["endCursor"].clone();
            }
            assert_eq!(
                forward,
                record_ids(&graphql_ok(s, token, LIST, json!({"sort": sort})).await)
            );
            let mut backward = Vec::new();
            let mut before = Value::Null;
            loop {
                let data = graphql_ok(
                    s,
                    token,
                    LIST,
                    json!({"sort": sort, "last": 3, "before": before}),
                )
                .await;
                let mut page = record_ids(&data);
                page.extend(backward);
                backward = page;
                let info = &data["geoNode"]["packagesHelmMetadataCacheRegistries"]["pageInfo"];
                if info["hasPreviousPage"] == false {
                    break;
                }
                before = info["startCursor"].clone();
            }
            assert_eq!(backward, forward, "{backend:?}: {sort} backward");
        }
        // Edges carry the cursors pageInfo reports.
        let data = graphql_ok(s, token, LIST, json!({"first": 2})).await;
        let list = &data["geoNode"]["packagesHelmMetadataCacheRegistries"];
        assert_eq!(list["edges"][1]["cursor"], list["pageInfo"]["endCursor"]);
        assert_eq!(list["edges"][0]["node"]["id"], list["nodes"][0]["id"]);
        let bad = graphql(s, token, LIST, json!({"after": "not a cursor"})).await;
        assert!(
            bad["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("invalid cursor")
        );

        // The generic field reaches any installed type by name.
        let generic = graphql_ok(
            s,
            token,
            r#"query($name: String!) { geoNode { registries(replicableName: $name, first: 50) {
                nodes { __typename id modelRecordId replicableName state } } } }"#,
            json!({"name": HELM}),
        )
        .await;
        let nodes = generic["geoNode"]["registries"]["nodes"]
            .as_array()
            .unwrap();
        assert_eq!(nodes.len(), 8);
        assert!(
            nodes
                .iter()
                .all(|n| n["__typename"] == REGISTRY_TYPE && n["replicableName"] == HELM)
        );
        let unknown = graphql(
            s,
            token,
            r#"{ geoNode { registries(replicableName: "nope") { nodes { id } } } }"#,
            json!({}),
        )
        .await;
        assert!(
            unknown["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("nope")
        );

        // On the primary the lists are empty (registries live on secondaries).
        let on_primary = graphql_ok(&p.primary, &p.primary_token, LIST, json!({})).await;
        assert_eq!(on_primary["geoNode"]["primary"], true);
        assert_eq!(record_ids(&on_primary), Vec::<i64>::new());
        let other = graphql_ok(
            &p.primary,
            &p.primary_token,
            r#"{ geoNode(name: "secondary") { name primary packagesHelmMetadataCacheRegistries { nodes { id } } } }"#,
            json!({}),
        )
        .await;
        assert_eq!(other["geoNode"]["name"], "secondary");
        assert_eq!(
            other["geoNode"]["packagesHelmMetadataCacheRegistries"]["nodes"],
            json!([])
        );

        // Single mutations.
        const UPDATE: &str = r#"mutation($id: GeoBaseRegistryID!, $action: GeoRegistryAction!) {
            geoRegistriesUpdate(input: {registryId: $id, action: $action, clientMutationId: "m1"}) {
              clientMutationId errors registry { ... on PackagesHelmMetadataCacheRegistry { id modelRecordId } } } }"#;
        let target = rows
            .iter()
            .find(|r| r.model_id == p.in_scope[3])
            .unwrap()
            .clone();
        let gid = format!("gid://gitlab/Geo::{REGISTRY_TYPE}/{}", target.id);
        let answer = graphql_ok(s, token, UPDATE, json!({"id": gid, "action": "RESYNC"})).await;
        let payload = &answer["geoRegistriesUpdate"];
        assert_eq!(payload["clientMutationId"], "m1");
        assert_eq!(payload["errors"], json!([]));
        assert_eq!(payload["registry"]["modelRecordId"], target.model_id);
        eventually(CONVERGE, "the resync", || async {
            let now = registry
                .get(&tracking, target.model_id)
                .await
                .unwrap()
                .unwrap();
            now.last_synced_at > target.last_synced_at
                && now.state == geohost::states::SyncState::Synced
                && now.verification_state == geohost::states::VerificationState::Succeeded
        })
        .await;
        let before = registry
            .get(&tracking, target.model_id)
            .await
            .unwrap()
            .unwrap();
        graphql_ok(s, token, UPDATE, json!({"id": gid, "action": "REVERIFY"})).await;
        eventually(CONVERGE, "the reverification", || async {
            let now = registry
                .get(&tracking, target.model_id)
                .await
                .unwrap()
                .unwrap();
            now.verified_at > before.verified_at
                && now.verification_state == geohost::states::VerificationState::Succeeded
        })
        .await;
        let missing = graphql(
            s,
            token,
            UPDATE,
            json!({"id": format!("gid://gitlab/Geo::{REGISTRY_TYPE}/999999"), "action": "RESYNC"}),
        )
        .await;
        assert!(
            missing["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{missing:#}"
        );
        let on_primary = graphql(
            &p.primary,
            &p.primary_token,
            UPDATE,
            json!({"id": gid, "action": "RESYNC"}),
        )
        .await;
        assert!(
            on_primary["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("does not exist")
        );

        // Bulk mutations: every synced registry reverified, then every
        // registry resynced.
        const BULK: &str = r#"mutation($action: GeoRegistriesBulkAction!, $state: ReplicationStateEnum) {
            geoRegistriesBulkUpdate(input: {registryClass: PACKAGES_HELM_METADATA_CACHE_REGISTRY,
                                            action: $action, replicationState: $state}) {
              registryClass errors } }"#;
        let t0 = Db::now();
        let answer = graphql_ok(
            s,
            token,
            BULK,
            json!({"action": "REVERIFY_ALL", "state": "SYNCED"}),
        )
        .await;
        assert_eq!(
            answer["geoRegistriesBulkUpdate"],
            json!({"registryClass": "PACKAGES_HELM_METADATA_CACHE_REGISTRY", "errors": []})
        );
        eventually(CONVERGE, "the bulk reverification", || async {
            let rows = registry.all(&tracking).await.unwrap();
            rows.iter()
                .filter(|r| r.state == geohost::states::SyncState::Synced)
                .all(|r| r.verified_at.is_some_and(|at| at > t0))
        })
        .await;
        let failed_before = registry
            .get(&tracking, p.failed_on_secondary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            failed_before.state,
            geohost::states::SyncState::Failed,
            "the filter kept it out"
        );
        let t1 = Db::now();
        graphql_ok(s, token, BULK, json!({"action": "RESYNC_ALL"})).await;
        eventually(CONVERGE, "the bulk resync", || async {
            let rows = registry.all(&tracking).await.unwrap();
            rows.len() == 8
                && rows.iter().all(|r| {
                    r.state == geohost::states::SyncState::Synced
                        && r.last_synced_at.is_some_and(|at| at > t1)
                })
        })
        .await;
        let on_primary = graphql_ok(
            &p.primary,
            &p.primary_token,
            BULK,
            json!({"action": "RESYNC_ALL"}),
        )
        .await;
        assert_eq!(
            on_primary["geoRegistriesBulkUpdate"]["registryClass"],
            Value::Null
        );
        assert_eq!(
            on_primary["geoRegistriesBulkUpdate"]["errors"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_update_of_10000_registries_runs_in_batches_without_stalling_sync() {
    const FAKE: i64 = 10_000;
    const FIRST_FAKE: i64 = 1_000_000;
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        for i in 0..3 {
            sites::put_helm(&primary, project, &format!("c{i}"), "v1").await;
        }
        // No consistency pass after the first: it would prune the registry
        // rows of records the primary does not have.
        let secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                ..Default::default()
            },
            "idle_poll_ms = 50\nconsistency_interval_secs = 3600\nbulk_update_pause_ms = 500\n",
        )
        .await;
        eventually(CONVERGE, "the first records synced", || async {
            registry_counts(&secondary).await.verified_count == 3
        })
        .await;

        // 10,000 registries failed to sync long ago and not due before
        // next month, so sync leaves them alone.
        let it = secondary.site.installed(HELM).unwrap();
        let registry = Registry::of(&it);
        let tracking = secondary.site.tracking().unwrap().clone();
        let inserted = Instant::now();
        let later = Db::now() + chrono::Duration::days(30);
        let mut tx = tracking.begin().await.unwrap();
        for chunk in (FIRST_FAKE..FIRST_FAKE + FAKE)
            .collect::<Vec<_>>()
            .chunks(500)
        {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, $1, 3, 4, 1, $2)", i + 3))
                .collect();
            let mut args = vec![Db::now().into(), later.into()];
            args.extend(chunk.iter().map(|&id| geohost::db::Arg::from(id)));
            tx.execute(
                &format!(
                    "INSERT INTO {} ({}, created_at, state, verification_state, retry_count, retry_at) VALUES {}",
                    registry.table(),
                    registry.fk(),
                    values.join(", ")
                ),
                &args,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        eprintln!(
            "{backend:?}: {FAKE} registry rows inserted in {:?}",
            inserted.elapsed()
        );
        let reverified = format!(
            "SELECT COUNT(*) AS n FROM {} WHERE {} >= {FIRST_FAKE} AND verification_state = 0",
            registry.table(),
            registry.fk()
        );
        let count = || async {
            tracking
                .fetch_one(&reverified, &[])
                .await
                .unwrap()
                .i64("n")
                .unwrap()
        };

        // REVERIFY_ALL of the failed registries, from GraphQL.
        let (_, token) = geohost::api::auth::create_token(&secondary.site.db, "ops")
            .await
            .unwrap();
        let batches = geohost::metrics::BULK_UPDATE_BATCHES
            .with_label_values(&[HELM, "REVERIFY_ALL"])
            .get();
        let started = Instant::now();
        let answer = graphql_ok(
            &secondary,
            &token,
            r#"mutation { geoRegistriesBulkUpdate(input: {registryClass: PACKAGES_HELM_METADATA_CACHE_REGISTRY,
                 action: REVERIFY_ALL, replicationState: FAILED}) { registryClass errors } }"#,
            json!({}),
        )
        .await;
        assert_eq!(answer["geoRegistriesBulkUpdate"]["errors"], json!([]));

        // Meanwhile new records are written on the primary: they sync while
        // the bulk update is still going.
        let mut new_ids = Vec::new();
        for i in 0..3 {
            new_ids.push(
                sites::put_helm(&primary, project, &format!("new{i}"), "fresh")
                    .await
                    .id,
            );
        }
        let mut seen = Vec::new();
        let mut synced_at: Option<(Duration, i64)> = None;
        let deadline = Instant::now() + CONVERGE;
        loop {
            assert!(
                Instant::now() < deadline,
                "{backend:?}: the bulk update did not end: {seen:?}"
            );
            let n = count().await;
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            if synced_at.is_none() {
                let mut all = true;
                for id in &new_ids {
                    let row = registry.get(&tracking, *id).await.unwrap();
                    all &= row.is_some_and(|r| r.state == geohost::states::SyncState::Synced);
                }
                if all {
                    synced_at = Some((started.elapsed(), n));
                }
            }
            if n == FAKE && synced_at.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let took = started.elapsed();
        let (synced_after, reverified_then) = synced_at.unwrap();
        eprintln!(
            "{backend:?}: bulk of {FAKE} in {took:?}; counts seen {seen:?}; new records synced after \
             {synced_after:?}, when {reverified_then} rows were done"
        );
        assert!(
            reverified_then < FAKE,
            "{backend:?}: the new records synced only after the bulk update ended"
        );
        // Batches of 1,000 rows: the counts moved in steps of 1,000.
        let steps: Vec<i64> = seen
            .iter()
            .copied()
            .filter(|n| *n > 0 && *n < FAKE)
            .collect();
        assert!(
            steps.len() >= 3,
            "{backend:?}: too few intermediate counts: {seen:?}"
        );
        assert!(
            steps.iter().all(|n| n % 1_000 == 0),
            "{backend:?}: {seen:?}"
        );
        let ran = geohost::metrics::BULK_UPDATE_BATCHES
            .with_label_values(&[HELM, "REVERIFY_ALL"])
            .get()
            - batches;
        assert!(ran >= 10, "{backend:?}: {ran} batches");
        // The synced registries were outside the filter.
        let c = registry_counts(&secondary).await;
        assert_eq!(c.synced_count, 6, "{backend:?}");
        assert_eq!(c.failed_count, FAKE, "{backend:?}");
    }
}

/// Requests every admin route with `method` and the given extra header.
async fn send(
    method: &reqwest::Method,
    url: &str,
    header: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method.clone(), url)
        .header("content-type", "application/json")
        .body("{not json");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_anonymous_malformed_and_revoked_tokens() {
    let paths = geohost::api::admin_route_paths();
    for expected in [
        "/metrics",
        "/api/graphql",
        "/api/v4/geo_sites/status",
        "/api/v4/geo_sites/{id}/status",
        "/api/v4/geo_sites",
        "/api/v4/replicables/{name}",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} is not an admin route: {paths:?}"
        );
    }
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                ..Default::default()
            },
        )
        .await;
        for site in [&primary, &secondary] {
            let db = &site.site.db;
            let (revoked_id, revoked) = geohost::api::auth::create_token(db, "old").await.unwrap();
            assert!(
                geohost::api::auth::revoke_token(db, revoked_id)
                    .await
                    .unwrap()
            );
            let (_, live) = geohost::api::auth::create_token(db, "live").await.unwrap();
            let unknown = format!(
                "{}abcdefghijklmnopqrstuvwxyz012345",
                geohost::auth::admin_token::PREFIX
            );
            let refused: Vec<(&str, Option<(&str, String)>)> = vec![
                ("anonymous", None),
                (
                    "malformed bearer",
                    Some(("authorization", format!("Basic {live}"))),
                ),
                (
                    "empty bearer",
                    Some(("authorization", "Bearer ".to_string())),
                ),
                (
                    "two tokens in one header",
                    Some(("private-token", format!("{live} {live}"))),
                ),
                ("unknown token", Some(("private-token", unknown))),
                ("revoked token", Some(("private-token", revoked.clone()))),
                (
                    "revoked bearer",
                    Some(("authorization", format!("Bearer {revoked}"))),
                ),
            ];
            let mut checked = 0;
            for path in &paths {
                let url = format!(
                    "{}{}",
                    site.url,
                    path.replace("{id}", "1").replace("{name}", HELM)
                );
                // The methods the route answers, from a 405's `Allow` header
                // (only a live token gets even that far).
                let patch = reqwest::Method::from_bytes(b"PATCH").unwrap();
                let anonymous = send(&patch, &url, None).await;
                assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{url}");
                let probe = send(&patch, &url, Some(("private-token", &live))).await;
                assert_eq!(probe.status(), StatusCode::METHOD_NOT_ALLOWED, "{url}");
                let allow = probe.headers()["allow"].to_str().unwrap().to_string();
                for method in allow.split(',').map(str::trim).filter(|m| *m != "HEAD") {
                    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    for (what, header) in &refused {
                        let header = header.as_ref().map(|(n, v)| (*n, v.as_str()));
                        let response = send(&method, &url, header).await;
                        assert_eq!(
                            response.status(),
                            StatusCode::UNAUTHORIZED,
                            "{backend:?} {method} {url}: {what}"
                        );
                        assert_eq!(
                            response.json::<Value>().await.unwrap(),
                            json!({"message": "401 Unauthorized"}),
                            "{method} {url}: {what}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 100, "{checked} requests checked");

            // The live token gets through; its use is noted once a minute at most.
            for path in ["/metrics", "/api/v4/geo_sites/status"] {
                let response = get(&format!("{}{path}", site.url), &live).await;
                assert_eq!(response.status(), StatusCode::OK, "{backend:?} {path}");
            }
            let last_used = || async {
                db.fetch_one(
                    "SELECT last_used_at FROM admin_tokens WHERE name = 'live'",
                    &[],
                )
                .await
                .unwrap()
                .opt_ts("last_used_at")
                .unwrap()
            };
            let first = last_used().await;
            assert!(first.is_some());
            get(&format!("{}/metrics", site.url), &live).await;
            assert_eq!(last_used().await, first, "no write within the minute");
        }
    }
}

/// Runs the `geohost` binary; returns its standard output.
fn geohost(args: &[&str], config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("geohost runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "geohost {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_gitlabs_status_and_resyncs_registries() {
    for backend in sites::backends() {
        let p = populated_pair(backend, PAIR_WORKERS).await;
        let (last_id, _) = geohost::primary::events::last(&p.primary.site.db)
            .await
            .unwrap()
            .unwrap();
        let tracking = p.secondary.site.tracking().unwrap().clone();
        eventually(CONVERGE, "the cursor at the newest event", || async {
            geohost::secondary::cursor::position(&tracking)
                .await
                .unwrap()
                == Some(last_id)
        })
        .await;

        let text = geohost(&["status"], &p.secondary.write_config());
        for line in [
            "Geo Site Information".to_string(),
            "Name: secondary".into(),
            "Geo Role: Secondary".into(),
            "Health Status: Healthy".into(),
            "Sync Settings: Selective (namespaces)".into(),
            format!("Last event ID seen from primary: {last_id} ("),
            format!("Last event ID processed: {last_id} ("),
            "Cursor lag: 0 events, 0 seconds".into(),
            "Helm Metadata Caches replicated: failed 1 / succeeded 7 / total 8 (87%)".into(),
            "Helm Metadata Caches verified: succeeded 7 / total 8 (87%)".into(),
        ] {
            assert!(text.contains(&line), "{backend:?}: {line:?} not in\n{text}");
        }
        let text = geohost(&["status"], &p.primary.write_config());
        for line in [
            "Geo Role: Primary",
            "Sync Settings: Full",
            "Helm Metadata Caches checksummed: failed 1 / succeeded 11 / total 12 (91%)",
        ] {
            assert!(text.contains(line), "{backend:?}: {line:?} not in\n{text}");
        }

        // Resync the failed registry by its record id; reverify them all.
        let config = p.secondary.write_config();
        let record = p.failed_on_secondary.to_string();
        let text = geohost(&["registry", "resync", HELM, &record, "--record"], &config);
        assert!(text.contains("state Pending"), "{text}");
        let it = p.secondary.site.installed(HELM).unwrap();
        eventually(
            CONVERGE,
            "the failed registry synced and verified again",
            || async { registry_counts(&p.secondary).await.verified_count == 8 },
        )
        .await;
        let t0 = Db::now();
        let text = geohost(&["registry", "reverify", HELM, "--all"], &config);
        assert!(
            text.contains("REVERIFY_ALL: 8 registries changed in 1 batches."),
            "{text}"
        );
        eventually(CONVERGE, "every registry verified again", || async {
            Registry::of(&it)
                .all(&tracking)
                .await
                .unwrap()
                .iter()
                .all(|r| r.verified_at.is_some_and(|at| at > t0))
        })
        .await;
    }
}
