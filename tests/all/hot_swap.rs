//! Hot swap of type definitions on running sites: Helm v1 → v2 (narrower
//! scope) → v1 under a steady stream of writes, broken components refused
//! while the running version keeps serving, a watched folder, the admin
//! API and the CLI, `diff`, blob path moves, a new type installed at
//! runtime that replicates without a restart and is removed by deleting its
//! file, and upgrades checked against the running version's test vectors.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use crate::support::{fixture_component, fixture_component_path, helm_component};
use geohost::db::ident;
use geohost::primary::sites::NewSite;
use geohost::swap::{self, Outcome, Request};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(180);

/// The type the runtime-install test installs, and its component. The
/// coordinator points these at the npm metadata cache once it is merged.
/// The type installed at runtime on sites that ship only Helm: the shipped
/// npm metadata cache component, dropped into the plugins folder.
const NEW_TYPE: &str = sites::NPM;
fn new_type_component() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/npm-metadata-cache.wasm")
}
/// The writer columns of two records of [`NEW_TYPE`] in `project`.
fn new_type_records(project: i64) -> Vec<serde_json::Map<String, serde_json::Value>> {
    ["left-pad", "@scope/right-pad"]
        .iter()
        .map(|package| {
            let mut columns = serde_json::Map::new();
            columns.insert("project_id".into(), project.into());
            columns.insert("package_name".into(), (*package).into());
            columns
        })
        .collect()
}

fn request(name: &str, source: &str) -> Request {
    Request {
        expect_name: Some(name.into()),
        source: source.into(),
    }
}

/// (record id → (state, verification state, failure)) of a secondary's registry of `name`.
pub(crate) async fn registry(
    site: &TestSite,
    name: &str,
) -> BTreeMap<i64, (i16, i16, Option<String>)> {
    let it = site.site.installed(name).unwrap();
    site.site
        .tracking()
        .unwrap()
        .fetch_all(
            &format!(
                "SELECT {} AS id, state, verification_state, last_sync_failure FROM {}",
                ident(&it.identity.foreign_key()),
                ident(&it.identity.registry_table())
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.i64("id").unwrap(),
                (
                    r.i16("state").unwrap(),
                    r.i16("verification_state").unwrap(),
                    r.opt_text("last_sync_failure").unwrap(),
                ),
            )
        })
        .collect()
}

/// The primary's records of `name`: id → (channel, blob path).
pub(crate) async fn records(primary: &TestSite, name: &str) -> BTreeMap<i64, (String, String)> {
    let it = primary.site.installed(name).unwrap();
    let rows = geohost::primary::records::page(&primary.site.db, &it, 0, 100_000)
        .await
        .unwrap();
    let feed: Vec<geohost::feed::FeedRecord> = rows
        .iter()
        .map(|r| geohost::feed::FeedRecord {
            id: r.id,
            columns: r.columns_json(&it),
            verification_state: r.verification_state,
            verification_checksum: None,
        })
        .collect();
    let paths = it.blob_paths(&feed).await.unwrap();
    feed.iter()
        .zip(paths)
        .map(|(r, p)| {
            (
                r.id,
                (
                    // The Helm channel (types without one: empty).
                    r.columns
                        .get("channel")
                        .and_then(|c| c.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    p.unwrap().as_str().to_string(),
                ),
            )
        })
        .collect()
}

pub(crate) fn sha(path: &std::path::Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(b)))
}

pub(crate) fn blob(site: &TestSite, name: &str, path: &str) -> std::path::PathBuf {
    site.dir.join("blobs").join(name).join(path)
}

/// Whether the secondary holds exactly the records `wanted` says, all
/// synced and verified, byte-identical to the primary's.
pub(crate) async fn follows(
    primary: &TestSite,
    secondary: &TestSite,
    name: &str,
    wanted: impl Fn(&str) -> bool,
) -> bool {
    let records = records(primary, name).await;
    let expected: BTreeSet<i64> = records
        .iter()
        .filter(|(_, (channel, _))| wanted(channel))
        .map(|(id, _)| *id)
        .collect();
    let found = registry(secondary, name).await;
    if found.keys().copied().collect::<BTreeSet<_>>() != expected
        || !found.values().all(|(s, v, _)| *s == 2 && *v == 2)
    {
        return false;
    }
    records.iter().all(|(id, (_, path))| {
        let theirs = sha(&blob(primary, name, path));
        let ours = sha(&blob(secondary, name, path));
        if expected.contains(id) {
            ours.is_some() && ours == theirs
        } else {
            ours.is_none()
        }
    })
}

/// A writer that creates records, one every 15 ms, until stopped or every
/// (project, channel) is written. It creates rather than updates: an update
/// racing a download or a verification is repaired by a resync, which
/// would hide a sync error the swap caused.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn start(primary: &TestSite, projects: Vec<i64>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let site = primary.site.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            for &project in &projects {
                for channel in ["stable", "beta", "dev"] {
                    if flag.load(Ordering::Relaxed) {
                        return n;
                    }
                    let mut columns = serde_json::Map::new();
                    columns.insert("project_id".into(), project.into());
                    columns.insert("channel".into(), channel.into());
                    let body = sites::index_yaml(project, channel, n as u32);
                    let stream =
                        futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
                    geohost::primary::ingest::upsert(&site, HELM, &columns, stream)
                        .await
                        .expect("writes keep working during swaps");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
            n
        });
        Writer { stop, task }
    }

    fn running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Counts registry rows that failed (a sync error) while `watch` runs.
fn failure_watch(secondary: &TestSite) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let site = secondary.site.clone();
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Some(it) = site.installed(HELM) {
                let rows = site
                    .tracking()
                    .unwrap()
                    .fetch_all(
                        &format!(
                            "SELECT last_sync_failure FROM {} WHERE state = 3",
                            ident(&it.identity.registry_table())
                        ),
                        &[],
                    )
                    .await
                    .unwrap();
                failures.extend(
                    rows.iter()
                        .map(|r| r.opt_text("last_sync_failure").unwrap().unwrap_or_default()),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        failures
    });
    (stop, task)
}

async fn pair(backend: Backend, projects: usize) -> (TestSite, TestSite, Vec<i64>) {
    let primary = sites::primary(backend).await;
    let [_, a, a1, ..] = sites::group_tree(&primary).await;
    let mut ids = Vec::new();
    for i in 0..projects {
        ids.push(sites::project(&primary, [a, a1][i % 2], &format!("p{i}")).await);
    }
    let projects = ids;
    let secondary = sites::secondary(
        backend,
        &primary,
        NewSite {
            name: "s".into(),
            ..Default::default()
        },
    )
    .await;
    (primary, secondary, projects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_v1_v2_v1_under_writes_follows_the_scope_and_loses_nothing() {
    let v2 = fixture_component("helm-v2");
    for backend in sites::backends() {
        let (primary, secondary, projects) = pair(backend, 100).await;
        let v1_sha = secondary
            .site
            .installed(HELM)
            .unwrap()
            .plugin
            .sha256()
            .to_string();
        let writer = Writer::start(&primary, projects.clone());
        let (watch_stop, watch) = failure_watch(&secondary);
        // Records replicated, a beta one among the synced: rows being
        // downloaded are left to the periodic pass, so the swap below has
        // an idle beta row to remove at once.
        eventually(CONVERGE, "the first records replicated", || async {
            let found = registry(&secondary, HELM).await;
            let records = records(&primary, HELM).await;
            found.len() >= 10
                && found.iter().any(|(id, (state, _, _))| {
                    *state == 2 && records.get(id).is_some_and(|(c, _)| c == "beta")
                })
        })
        .await;

        // v2 leaves channel beta out: re-evaluated at once on the
        // secondary, where removing more than a tenth of the registries
        // waits for an operator's confirmation (guarded deletions). A
        // narrowing version goes to the secondary first: the primary
        // serves a secondary only what its own version puts in scope
        // (least access), so the other order fails the secondary's
        // downloads of beta records until it swaps too.
        for site in [&secondary, &primary] {
            let report = swap::activate(&site.site, v2.clone(), request(HELM, "test"))
                .await
                .unwrap();
            assert_eq!(report.outcome, Outcome::Upgraded, "{backend:?}");
            assert_eq!(report.version, "1.1.0");
            assert_eq!(report.previous_version.as_deref(), Some("1.0.0"));
            if site.site.role() == geohost::config::Role::Secondary {
                // Decided at once, not at the next periodic pass.
                assert!(
                    report.registries_removed + report.registries_held > 0,
                    "{backend:?}: {report:?}"
                );
            }
        }
        let tracking = secondary.site.tracking().unwrap();
        if geohost::secondary::guard::confirm(tracking, HELM)
            .await
            .unwrap()
            .is_some()
        {
            secondary
                .site
                .role_state
                .get::<geohost::secondary::Secondary>()
                .unwrap()
                .request_pass();
        }
        let v2_sha = secondary
            .site
            .installed(HELM)
            .unwrap()
            .plugin
            .sha256()
            .to_string();
        assert_ne!(v1_sha, v2_sha);
        eventually(CONVERGE, "beta registries and blobs removed", || async {
            let records = records(&primary, HELM).await;
            let found = registry(&secondary, HELM).await;
            records.iter().all(|(id, (channel, path))| {
                (channel == "beta") != found.contains_key(id)
                    && (channel != "beta" || !blob(&secondary, HELM, path).exists())
            })
        })
        .await;

        // Back to v1: beta comes back.
        for site in [&primary, &secondary] {
            let report = swap::rollback(&site.site, HELM).await.unwrap();
            assert_eq!(report.version, "1.0.0", "{backend:?}");
            assert_eq!(report.outcome, Outcome::RolledBack);
            assert_eq!(report.previous_version.as_deref(), Some("1.1.0"));
            assert_eq!(report.sha256, v1_sha);
            if site.site.role() == geohost::config::Role::Secondary {
                assert!(report.registries_created > 0, "{backend:?}: {report:?}");
            }
        }
        assert!(
            writer.running(),
            "the swaps happened while records were written"
        );
        eventually(CONVERGE, "beta registries back", || async {
            let found = registry(&secondary, HELM).await;
            let records = records(&primary, HELM).await;
            records.iter().any(|(_, (c, _))| c == "beta")
                && records.keys().all(|id| found.contains_key(id))
        })
        .await;

        let writes = writer.stop().await;
        eventually(
            CONVERGE,
            "everything synced, verified and identical",
            || follows(&primary, &secondary, HELM, |_| true),
        )
        .await;
        watch_stop.store(true, Ordering::Relaxed);
        let failures = watch.await.unwrap();
        assert!(
            failures.is_empty(),
            "{backend:?}: sync errors during the swaps: {failures:?}"
        );
        assert!(writes >= 10, "the writer wrote ({writes} writes)");

        // Every version recorded; the rows say who decided them.
        for site in [&primary, &secondary] {
            let versions = swap::versions::of_type(&site.site.db, HELM).await.unwrap();
            let summary: Vec<(String, bool)> = versions
                .iter()
                .map(|v| (v.version.clone(), v.active))
                .collect();
            assert_eq!(
                summary,
                [("1.0.0".to_string(), true), ("1.1.0".to_string(), false)]
            );
            assert!(
                versions
                    .iter()
                    .all(|v| v.installed_at <= geohost::db::Db::now())
            );
        }
        let it = secondary.site.installed(HELM).unwrap();
        let stamped = secondary
            .site
            .tracking()
            .unwrap()
            .fetch_all(
                &format!(
                    "SELECT DISTINCT {} AS sha FROM {}",
                    swap::effects::DECIDED_BY,
                    ident(&it.identity.registry_table())
                ),
                &[],
            )
            .await
            .unwrap();
        let shas: Vec<Option<String>> =
            stamped.iter().map(|r| r.opt_text("sha").unwrap()).collect();
        assert!(
            shas.iter()
                .all(|s| s.is_none() || s.as_deref() == Some(v1_sha.as_str())),
            "{shas:?}"
        );
        assert!(shas.contains(&Some(v1_sha.clone())));
    }
}

/// Installs `bytes` as a new version of Helm through the admin API.
async fn put_plugin(site: &TestSite, token: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/api/v4/geo/plugins/{HELM}", site.url))
        .header("PRIVATE-TOKEN", token)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get_json(site: &TestSite, token: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}{path}", site.url))
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_components_are_refused_and_the_running_version_keeps_serving() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        sites::put_helm(&primary, project, "stable", "one").await;
        let (_, token) = geohost::api::auth::create_token(&primary.site.db, "ops")
            .await
            .unwrap();
        let running = primary
            .site
            .installed(HELM)
            .unwrap()
            .plugin
            .sha256()
            .to_string();
        let cases: [(&str, Vec<u8>, &str); 6] = [
            (
                "not wasm",
                b"#!/bin/sh\necho not a component\n".to_vec(),
                "not a WebAssembly",
            ),
            (
                "wrong WIT version",
                fixture_component("wrong-wit-version"),
                "geohost:replicable@9.0.0",
            ),
            (
                "a different type's name",
                fixture_component("helm-copy"),
                "not `packages_helm_metadata_cache`",
            ),
            (
                "a trap in identity",
                fixture_component("helm-identity-trap"),
                "`describe` failed",
            ),
            (
                "a path rule escaping the root",
                fixture_component("helm-escape"),
                "invalid blob path",
            ),
            (
                "failing shipped test vectors",
                fixture_component("helm-bad-vectors"),
                "test vectors fail",
            ),
        ];
        for (i, (what, bytes, reason)) in cases.into_iter().enumerate() {
            let (status, body) = put_plugin(&primary, &token, bytes).await;
            assert_eq!(status, 422, "{backend:?} {what}: {body}");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(reason), "{backend:?} {what}: {message}");
            // The running version keeps serving: same component, writes work.
            assert_eq!(
                primary.site.installed(HELM).unwrap().plugin.sha256(),
                running,
                "{what}"
            );
            let w = sites::put_helm(&primary, project, &format!("c{i}"), "body").await;
            assert_eq!(
                w.blob_path,
                crate::support::helm_blob_path(project, &format!("c{i}"))
            );
            // Reported in the API listing and the site status.
            let listing = get_json(&primary, &token, "/api/v4/geo/plugins").await;
            let failures = listing["failures"].as_array().unwrap();
            assert!(
                failures
                    .iter()
                    .any(|f| f["error"].as_str().unwrap().contains(reason)),
                "{what}: {listing}"
            );
            let status = get_json(&primary, &token, "/api/v4/geo_sites/status").await;
            let own = &status.as_array().unwrap()[0];
            assert!(
                own["plugins"]["failures"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["error"].as_str().unwrap().contains(reason)),
                "{what}: {own}"
            );
        }
        let metrics = reqwest::Client::new()
            .get(format!("{}/metrics", primary.url))
            .header("PRIVATE-TOKEN", &token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("geohost_plugin_swaps_total{")
                    && l.contains("outcome=\"refused\"")
                    && l.contains(HELM)),
            "{metrics}"
        );
        // Refusals of a named type are recorded (inactive, with the error).
        let versions = swap::versions::of_type(&primary.site.db, HELM)
            .await
            .unwrap();
        assert!(versions.iter().any(|v| {
            !v.active
                && v.last_validation_error
                    .as_deref()
                    .is_some_and(|e| e.contains("invalid blob path"))
        }));
        assert_eq!(versions.iter().filter(|v| v.active).count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_breaking_the_running_versions_vectors_is_refused_unless_declared() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let running = primary
            .site
            .installed(HELM)
            .unwrap()
            .plugin
            .sha256()
            .to_string();
        // Helm 3.0.0 moves every blob under v3/ and says nothing of it: the
        // shipped Helm's vectors (its vectors.json, embedded) catch it.
        let error = swap::activate(
            &primary.site,
            fixture_component("helm-path-undeclared"),
            request(HELM, "test"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("of the running version 1.0.0's 8 test vectors fail (record 1: path"),
            "{backend:?}: {error}"
        );
        assert!(error.contains("\"changed\""), "{error}");
        assert_eq!(
            primary.site.installed(HELM).unwrap().plugin.sha256(),
            running,
            "the running version keeps serving"
        );
        // Helm 2.0.0 moves them under v2/ and declares it in its vectors.json.
        let report = swap::activate(
            &primary.site,
            fixture_component("helm-path-v2"),
            request(HELM, "test"),
        )
        .await
        .unwrap();
        assert_eq!(report.version, "2.0.0");
        assert_eq!(report.test_vectors, 8);
        assert_eq!(
            report.predecessor_vectors, 4,
            "records 5 to 8 of 1.0.0 hold: {report:?}"
        );
        // And back: 2.0.0's declarations hold for the rollback too.
        let report = swap::rollback(&primary.site, HELM).await.unwrap();
        assert_eq!(
            (report.version.as_str(), report.outcome),
            ("1.0.0", Outcome::RolledBack)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_counts_scope_and_path_changes_over_live_data() {
    for backend in sites::backends() {
        let (primary, secondary, projects) = pair(backend, 4).await;
        for project in &projects {
            for channel in ["stable", "beta"] {
                sites::put_helm(&primary, *project, channel, "x").await;
            }
        }
        eventually(CONVERGE, "replicated", || {
            follows(&primary, &secondary, HELM, |_| true)
        })
        .await;
        let d = swap::diff::diff(&secondary.site, fixture_component("helm-v2"))
            .await
            .unwrap();
        assert_eq!((d.records, d.path_changes), (8, 0), "{backend:?}");
        assert_eq!((d.scopes[0].enter, d.scopes[0].leave), (0, 4));
        let beta: BTreeSet<i64> = records(&primary, HELM)
            .await
            .into_iter()
            .filter(|(_, (c, _))| c == "beta")
            .map(|(id, _)| id)
            .collect();
        assert!(
            d.scopes[0]
                .leave_examples
                .iter()
                .all(|id| beta.contains(id))
        );
        // On the primary: per secondary, and the path rule's change.
        let d = swap::diff::diff(&primary.site, fixture_component("helm-path-v2"))
            .await
            .unwrap();
        assert_eq!(d.path_changes, 8);
        assert_eq!(d.scopes.len(), 1);
        assert_eq!((d.scopes[0].enter, d.scopes[0].leave), (0, 0));
        let example = &d.path_examples[0];
        assert_eq!(example.to, format!("v2/{}", example.from));
        let d = swap::diff::diff(&primary.site, fixture_component("helm-escape"))
            .await
            .unwrap();
        assert_eq!(d.invalid_paths, 8);
        // Nothing changed.
        assert_eq!(
            swap::versions::of_type(&primary.site.db, HELM)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_rule_change_moves_blobs_on_both_sites() {
    let v2 = fixture_component("helm-path-v2");
    for backend in sites::backends() {
        let (primary, secondary, projects) = pair(backend, 4).await;
        for project in &projects {
            sites::put_helm(&primary, *project, "stable", "x").await;
        }
        eventually(CONVERGE, "replicated", || {
            follows(&primary, &secondary, HELM, |_| true)
        })
        .await;
        let before = records(&primary, HELM).await;
        for site in [&primary, &secondary] {
            let report = swap::activate(&site.site, v2.clone(), request(HELM, "test"))
                .await
                .unwrap();
            assert_eq!(report.blobs_moved, 4, "{backend:?}");
        }
        let after = records(&primary, HELM).await;
        for (id, (_, path)) in &after {
            assert_eq!(path, &format!("v2/{}", before[id].1));
            for site in [&primary, &secondary] {
                assert!(blob(site, HELM, path).exists(), "{backend:?}: {path}");
                assert!(!blob(site, HELM, &before[id].1).exists());
            }
        }
        // Replication goes on with the new paths, and verification agrees.
        sites::put_helm(&primary, projects[0], "dev", "y").await;
        for site in [&primary, &secondary] {
            swap::rollback(&site.site, HELM).await.unwrap();
        }
        eventually(CONVERGE, "replicated after moving back", || {
            follows(&primary, &secondary, HELM, |_| true)
        })
        .await;
    }
}

fn plugins_dir_settings(dir: &std::path::Path) -> String {
    plugins_dir_settings_every(dir, 2)
}

/// [`plugins_dir_settings`] with a consistency pass every `secs`.
fn plugins_dir_settings_every(dir: &std::path::Path, secs: u64) -> String {
    format!(
        "idle_poll_ms = 50\nconsistency_interval_secs = {secs}\n[plugins]\ndir = {:?}\nwatch_interval_ms = 100\nbuiltin = [\"helm-metadata-cache\"]\n",
        dir.display().to_string()
    )
}

/// A primary and its secondary `s`, each watching a plugins folder of its
/// own (the secondary's consistency pass every `secs`), and a project.
struct WatchedSites {
    primary_dir: tempfile::TempDir,
    secondary_dir: tempfile::TempDir,
    primary: TestSite,
    secondary: TestSite,
    project: i64,
}

async fn watched_sites(backend: Backend, secs: u64) -> WatchedSites {
    let primary_dir = tempfile::tempdir().unwrap();
    let secondary_dir = tempfile::tempdir().unwrap();
    let primary = sites::primary_with(backend, &plugins_dir_settings(primary_dir.path())).await;
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    let secondary = sites::secondary_with(
        backend,
        &primary,
        NewSite {
            name: "s".into(),
            ..Default::default()
        },
        &plugins_dir_settings_every(secondary_dir.path(), secs),
    )
    .await;
    WatchedSites {
        primary_dir,
        secondary_dir,
        primary,
        secondary,
        project,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_folder_installs_upgrades_and_a_new_type_that_replicates() {
    for backend in sites::backends() {
        let WatchedSites {
            primary_dir,
            secondary_dir,
            primary,
            secondary,
            project,
        } = watched_sites(backend, 2).await;

        // A half-written file is refused and reported; once complete it goes live.
        let v2 = fixture_component("helm-v2");
        let file = primary_dir.path().join("helm.wasm");
        std::fs::write(&file, &v2[..v2.len() / 2]).unwrap();
        eventually(CONVERGE, "the partial file reported", || async {
            primary
                .site
                .swaps
                .failures()
                .iter()
                .any(|f| f.source == file.display().to_string())
        })
        .await;
        assert_eq!(
            primary.site.installed(HELM).unwrap().identity.version,
            "1.0.0"
        );
        std::fs::write(&file, &v2).unwrap();
        // Live, and the refusal of the partial file no longer reported.
        eventually(CONVERGE, "v2 live from the folder", || async {
            primary.site.installed(HELM).unwrap().identity.version == "1.1.0"
                && primary.site.swaps.failures().is_empty()
        })
        .await;
        // Another type written over the file that provides Helm is refused.
        std::fs::write(&file, std::fs::read(new_type_component()).unwrap()).unwrap();
        eventually(CONVERGE, "the other type refused", || async {
            primary
                .site
                .swaps
                .failures()
                .iter()
                .any(|f| f.error.contains("not `packages_helm_metadata_cache`"))
        })
        .await;
        assert!(primary.site.installed(NEW_TYPE).is_none());
        assert_eq!(
            primary.site.installed(HELM).unwrap().identity.version,
            "1.1.0"
        );

        // A new type, dropped (renamed in) on both sites, replicates without a restart.
        for dir in [primary_dir.path(), secondary_dir.path()] {
            let tmp = dir.join(".new.wasm.part");
            std::fs::copy(new_type_component(), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("new-type.wasm")).unwrap();
        }
        eventually(CONVERGE, "the new type installed on both sites", || async {
            primary.site.installed(NEW_TYPE).is_some()
                && secondary.site.installed(NEW_TYPE).is_some()
        })
        .await;
        for (i, columns) in new_type_records(project).into_iter().enumerate() {
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                format!("new type record {i}"),
            ))]);
            geohost::primary::ingest::upsert(&primary.site, NEW_TYPE, &columns, stream)
                .await
                .unwrap();
        }
        eventually(CONVERGE, "the new type replicated", || {
            follows(&primary, &secondary, NEW_TYPE, |_| true)
        })
        .await;

        // Deleting the file removes the type from both sites without a
        // restart, through the admin API's removal: its data is kept.
        let synced = registry(&secondary, NEW_TYPE).await.len();
        for dir in [primary_dir.path(), secondary_dir.path()] {
            std::fs::remove_file(dir.join("new-type.wasm")).unwrap();
        }
        eventually(CONVERGE, "the new type removed from both sites", || async {
            let mut removed = true;
            for site in [&primary, &secondary] {
                let (listed, _) = swap::list(&site.site).await.unwrap();
                let listed = listed.iter().find(|t| t.name == NEW_TYPE).unwrap();
                removed &= !listed.installed && listed.versions.iter().all(|v| !v.active);
            }
            removed
        })
        .await;
        let kept = secondary
            .site
            .tracking()
            .unwrap()
            .fetch_one(
                "SELECT COUNT(*) AS n FROM packages_npm_metadata_cache_registry",
                &[],
            )
            .await
            .unwrap()
            .i64("n")
            .unwrap();
        assert_eq!(kept as usize, synced, "registries kept");
        // Helm, provided by the file still there, is untouched.
        assert_eq!(
            primary.site.installed(HELM).unwrap().identity.version,
            "1.1.0"
        );
        // Putting the file back installs it again, with its data.
        std::fs::copy(
            new_type_component(),
            primary_dir.path().join("new-type.wasm"),
        )
        .unwrap();
        eventually(CONVERGE, "the new type back on the primary", || async {
            primary.site.installed(NEW_TYPE).is_some()
        })
        .await;
        assert_eq!(records(&primary, NEW_TYPE).await.len(), 2);
    }
}

/// The primary's newest event id, once it has at least `at_least`.
async fn newest_event(primary: &TestSite, at_least: i64) -> i64 {
    let newest = || async {
        primary
            .site
            .db
            .fetch_one("SELECT COALESCE(MAX(id), 0) AS n FROM geo_event_log", &[])
            .await
            .unwrap()
            .i64("n")
            .unwrap()
    };
    eventually(CONVERGE, "the primary's events", || async {
        newest().await >= at_least
    })
    .await;
    newest().await
}

/// The guide's tour, where `geohost status` (a one-shot command, which
/// brings the site's types up as it opens it) ran before the running
/// secondary's watcher took the new file, and recorded the type's version
/// first. The watcher's install then looked like a restart restoring that
/// version and skipped the scope re-evaluation; the records whose events
/// the cursor had skipped (the type was not installed yet) waited for the
/// periodic consistency pass. Here that pass is an hour away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_type_a_command_recorded_first_is_backfilled_when_the_running_secondary_installs_it()
{
    let WatchedSites {
        primary_dir,
        secondary_dir,
        primary,
        secondary,
        project,
    } = watched_sites(Backend::Sqlite, 3600).await;

    // The type on the primary, and records whose events the secondary's
    // cursor passes while the type is not installed there.
    std::fs::copy(new_type_component(), primary_dir.path().join("new.wasm")).unwrap();
    eventually(CONVERGE, "the new type on the primary", || async {
        primary.site.installed(NEW_TYPE).is_some()
    })
    .await;
    for columns in new_type_records(project) {
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
            "{}".to_string(),
        ))]);
        geohost::primary::ingest::upsert(&primary.site, NEW_TYPE, &columns, stream)
            .await
            .unwrap();
    }
    // Two `created` and two `checksum_succeeded`.
    let newest = newest_event(&primary, 4).await;
    let tracking = secondary.site.tracking().unwrap().clone();
    eventually(
        CONVERGE,
        "the secondary's cursor past the events",
        || async {
            geohost::secondary::cursor::position(&tracking)
                .await
                .unwrap()
                .is_some_and(|p| p >= newest)
        },
    )
    .await;

    // A one-shot command on the secondary finds the component first (in a
    // folder of its own here, so the watcher cannot win the race).
    let staging = tempfile::tempdir().unwrap();
    std::fs::copy(new_type_component(), staging.path().join("new.wasm")).unwrap();
    let config = std::fs::read_to_string(secondary.write_config())
        .unwrap()
        .replace(
            &format!("{:?}", secondary_dir.path().display().to_string()),
            &format!("{:?}", staging.path().display().to_string()),
        );
    let command_config = secondary.dir.join("command.toml");
    std::fs::write(&command_config, config).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(["status", "-c"])
        .arg(&command_config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(
        geohost::swap::versions::active_sha256(&secondary.site.db, NEW_TYPE)
            .await
            .unwrap()
            .is_some(),
        "the command recorded the type's version"
    );
    assert!(secondary.site.installed(NEW_TYPE).is_none());

    // The running secondary's watcher installs it: the records are
    // registered and replicate now, not at the next periodic pass.
    std::fs::copy(new_type_component(), secondary_dir.path().join("new.wasm")).unwrap();
    eventually(
        Duration::from_secs(60),
        "the records replicated",
        || async {
            secondary.site.installed(NEW_TYPE).is_some()
                && follows(&primary, &secondary, NEW_TYPE, |_| true).await
        },
    )
    .await;
}

/// A component that lands in the plugins folder after startup read it but
/// before the watcher's first look is installed like any new file (the
/// watcher took every file present then as handled by startup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_dropped_while_the_site_starts_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:0\"\n\
         url = \"http://127.0.0.1:1\"\ndata_dir = {:?}\n[workers]\n{}",
        data.path().display().to_string(),
        plugins_dir_settings(dir.path()),
    );
    let site = geohost::runtime::open(geohost::config::Config::from_toml(&config).unwrap())
        .await
        .unwrap();
    assert!(site.installed(NEW_TYPE).is_none());
    // Startup is over; the watcher has not started yet.
    std::fs::copy(new_type_component(), dir.path().join("new.wasm")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::spawn(geohost::runtime::serve(site.clone(), listener));
    eventually(
        Duration::from_secs(60),
        "the component installed",
        || async { site.installed(NEW_TYPE).is_some() },
    )
    .await;
    site.shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_installs_diffs_rolls_back_and_removes() {
    let backend = Backend::Sqlite;
    let primary = sites::primary(backend).await;
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    sites::put_helm(&primary, project, "beta", "x").await;
    let (_, token) = geohost::api::auth::create_token(&primary.site.db, "ops")
        .await
        .unwrap();
    let config = primary.write_config();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
            .arg("plugin")
            .args(args)
            .arg("-c")
            .arg(&config)
            .env("GEOHOST_TOKEN", &token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let v2 = fixture_component_path("helm-v2");
    let v2 = v2.to_str().unwrap();
    let (ok, out, err) = cli(&["list"]);
    assert!(ok, "{err}");
    assert!(out.contains(HELM) && out.contains("1.0.0"), "{out}");
    let (ok, out, err) = cli(&["diff", v2]);
    assert!(ok, "{err}");
    assert!(out.contains("1.0.0 → 1.1.0"), "{out}");
    assert!(out.contains("blob paths that change: 0"), "{out}");
    let (ok, out, err) = cli(&["install", v2, "--type", HELM]);
    assert!(ok, "{err}");
    assert!(out.contains("upgraded") && out.contains("1.1.0"), "{out}");
    assert_eq!(
        primary.site.installed(HELM).unwrap().identity.version,
        "1.1.0"
    );
    let escape = fixture_component_path("helm-escape");
    let (ok, _, err) = cli(&["install", escape.to_str().unwrap()]);
    assert!(!ok && err.contains("invalid blob path"), "{err}");
    assert_eq!(
        primary.site.installed(HELM).unwrap().identity.version,
        "1.1.0"
    );
    let (ok, out, err) = cli(&["rollback", HELM]);
    assert!(ok, "{err}");
    assert!(
        out.contains("rolled back from 1.1.0 to 1.0.0") && !out.contains("upgraded"),
        "{out}"
    );
    let (ok, _, err) = cli(&["remove", HELM]);
    assert!(!ok && err.contains("force"), "{err}");
    let (ok, out, err) = cli(&["remove", HELM, "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(primary.site.installed(HELM).is_none());
    // Installing it again resumes with the data kept.
    let (ok, out, err) = cli(&[
        "install",
        crate::support::fixture_component_path("helm-v2")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{err}\n{out}");
    assert_eq!(records(&primary, HELM).await.len(), 1);
    let _ = helm_component();
}
