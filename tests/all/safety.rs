//! No plugin and no hot swap can destroy data (issue 14), each with a
//! fixture plugin of its own (plugins/fixtures):
//!
//! - path moves that are not one-to-one onto free paths are refused, and
//!   change nothing; a move under a writer keeps every latest blob;
//! - hostile plugins (millions of project ids in one lookup, the longest
//!   string their memory allows, more answers than rows) fail with an error
//!   naming the bound, the host's peak RSS stays within 64 MiB of its
//!   baseline, and other types keep replicating;
//! - a type cannot take another type's table, or a host table;
//! - a version that puts every record out of scope removes nothing until an
//!   operator confirms; then the blobs are in quarantine, and come back.

use crate::hot_swap::{blob, follows, records, registry, sha};
use crate::lifecycle::{admin, cli, schema, token};
use crate::sites::{self, Backend, HELM, TestSite, eventually};
use crate::support::{fixture_component, fixture_component_path};
use geohost::db::{Backend as DbBackend, Db, ident};
use geohost::primary::sites::{NewSite, SiteUpdate};
use geohost::swap::{self, Outcome, Request, SwapError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(240);

fn request(source: &str) -> Request {
    Request {
        expect_name: Some(HELM.into()),
        source: source.into(),
    }
}

/// Every file under `root` (relative path → SHA-256), the quarantine aside
/// unless `quarantine`.
fn files(root: &Path, quarantine: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            // A file gone between the listing and the read (a temporary
            // object renamed into place meanwhile) is not counted; the blob
            // it became is, at its path.
            if (quarantine || !relative.starts_with(geohost::storage::QUARANTINE_DIR))
                && let Some(sum) = sha(&path)
            {
                out.insert(relative, sum);
            }
        }
    }
    out
}

/// Every row of `table`, each column as text, in id order.
async fn rows(db: &Db, table: &str) -> Vec<String> {
    let sql = match db.backend() {
        DbBackend::Postgres => {
            "SELECT column_name::text AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
        DbBackend::Sqlite => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
    };
    let columns: Vec<String> = db
        .fetch_all(sql, &[table.into()])
        .await
        .unwrap()
        .iter()
        .map(|r| r.text("name").unwrap())
        .collect();
    let list: Vec<String> = columns
        .iter()
        .map(|c| match db.backend() {
            DbBackend::Postgres => format!("COALESCE(CAST({} AS TEXT), 'NULL')", ident(c)),
            DbBackend::Sqlite => format!("quote({})", ident(c)),
        })
        .collect();
    let sql = format!(
        "SELECT {} AS line FROM {} ORDER BY id",
        list.join(" || '|' || "),
        ident(table)
    );
    db.fetch_all(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.text("line").unwrap())
        .collect()
}

/// What a site holds of Helm: its tables' rows and its blobs.
async fn helm_state(site: &TestSite) -> (Vec<String>, BTreeMap<String, String>) {
    let it = site.site.installed(HELM).unwrap();
    let mut all = Vec::new();
    match site.site.tracking.as_ref() {
        Some(tracking) => all.extend(rows(tracking, &it.identity.registry_table()).await),
        None => {
            all.extend(rows(&site.site.db, &it.identity.table.name).await);
            all.extend(rows(&site.site.db, &it.identity.states_table()).await);
        }
    }
    (all, files(&site.dir.join("blobs"), true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_swaps_that_are_not_one_to_one_are_refused_and_change_nothing() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
        )
        .await;
        for channel in ["a", "b", "c"] {
            sites::put_helm(&primary, project, channel, channel).await;
        }
        eventually(CONVERGE, "replicated", || {
            follows(&primary, &secondary, HELM, |_| true)
        })
        .await;
        let before = [helm_state(&primary).await, helm_state(&secondary).await];
        let cases = [
            // Records a and b exchange their paths.
            ("helm-swap-paths", "record"),
            // Every record at one path.
            ("helm-one-path", "would both be at `shared/index.yaml`"),
        ];
        for (fixture, clash) in cases {
            for site in [&primary, &secondary] {
                let error = swap::activate(&site.site, fixture_component(fixture), request("test"))
                    .await
                    .unwrap_err();
                let SwapError::Refused(message) = &error else {
                    panic!("{backend:?} {fixture}: {error:?}");
                };
                assert!(message.contains("not one-to-one"), "{message}");
                assert!(message.contains(clash), "{message}");
                assert_eq!(site.site.installed(HELM).unwrap().identity.version, "1.0.0");
            }
            let after = [helm_state(&primary).await, helm_state(&secondary).await];
            assert_eq!(
                after, before,
                "{backend:?} {fixture}: rows or blobs changed"
            );
        }
    }
}

/// A writer that updates and creates Helm records, remembering the latest
/// acknowledged body of each (project, channel).
struct Writer {
    stop: Arc<AtomicBool>,
    latest: Arc<Mutex<BTreeMap<(i64, String), String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(primary: &TestSite, project: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(Mutex::new(BTreeMap::new()));
        let site = primary.site.clone();
        let (flag, seen) = (stop.clone(), latest.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                // A new channel every third write, otherwise an update.
                let channel = if n % 3 == 1 {
                    format!("c{n}")
                } else {
                    format!("c{}", 1 + 3 * (n % 7).min(n / 3))
                };
                let body = format!("{channel} write {n}");
                let mut columns = serde_json::Map::new();
                columns.insert("project_id".into(), project.into());
                columns.insert("channel".into(), channel.clone().into());
                let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                    body.clone(),
                ))]);
                geohost::primary::ingest::upsert(&site, HELM, &columns, stream)
                    .await
                    .expect("writes succeed (they wait while blobs move)");
                seen.lock().unwrap().insert((project, channel), body);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { stop, latest, task }
    }

    fn writes(&self) -> usize {
        self.latest.lock().unwrap().len()
    }

    async fn stop(self) -> BTreeMap<(i64, String), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.latest.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_move_under_writes_leaves_every_latest_blob_at_its_new_path() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
        )
        .await;
        let writer = Writer::start(&primary, project);
        eventually(CONVERGE, "some records written", || async {
            writer.writes() >= 10
        })
        .await;
        // Helm 2.0.0 moves every blob under `v2/`, on both sites, while
        // records are updated and created.
        for site in [&primary, &secondary] {
            let report = swap::activate(
                &site.site,
                fixture_component("helm-path-v2"),
                request("test"),
            )
            .await
            .unwrap();
            assert_eq!(report.outcome, Outcome::Upgraded, "{backend:?}");
            if site.site.role() == geohost::config::Role::Primary {
                // Writes waited while the blobs moved: nothing to repair.
                assert!(report.warnings.is_empty(), "{backend:?}: {report:?}");
            }
        }
        let before = writer.writes();
        eventually(CONVERGE, "more records written", || async {
            writer.writes() >= before + 10
        })
        .await;
        let latest = writer.stop().await;

        // The primary: each record's blob is its latest body, at its v2 path,
        // which its state row records; no blob is left anywhere else.
        let records = records(&primary, HELM).await;
        assert_eq!(records.len(), latest.len(), "{backend:?}");
        let it = primary.site.installed(HELM).unwrap();
        let recorded: BTreeMap<i64, String> = primary
            .site
            .db
            .fetch_all(
                &format!(
                    "SELECT {} AS id, blob_path FROM {}",
                    ident(&it.identity.foreign_key()),
                    ident(&it.identity.states_table())
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.i64("id").unwrap(), r.text("blob_path").unwrap()))
            .collect();
        let mut expected = BTreeMap::new();
        for (id, (channel, path)) in &records {
            assert!(path.starts_with("v2/"), "{path}");
            assert_eq!(recorded.get(id), Some(path), "{backend:?} record {id}");
            let body = &latest[&(project, channel.clone())];
            let file = blob(&primary, HELM, path);
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                *body,
                "{backend:?} {path}"
            );
            expected.insert(format!("{HELM}/{path}"), sha(&file).unwrap());
        }
        let found: BTreeMap<String, String> = files(&primary.dir.join("blobs"), true)
            .into_iter()
            .filter(|(f, _)| f.starts_with(HELM))
            .collect();
        assert_eq!(found, expected, "{backend:?}: no old path remains");

        // The secondary follows: the same blobs at the new paths, and none
        // at an old one.
        eventually(CONVERGE, "the secondary follows", || async {
            let theirs: BTreeMap<String, String> = files(&secondary.dir.join("blobs"), false)
                .into_iter()
                .filter(|(f, _)| f.starts_with(HELM))
                .collect();
            theirs == expected && follows(&primary, &secondary, HELM, |_| true).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_cannot_take_another_types_table_or_a_host_table() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        sites::put_helm(&primary, project, "stable", "one").await;
        let token = token(&primary).await;
        let it = primary.site.installed(HELM).unwrap();
        let verified = format!(
            "SELECT COUNT(*) AS n FROM {} WHERE verification_state = 2",
            ident(&it.identity.states_table())
        );
        eventually(CONVERGE, "the record verified", || async {
            primary
                .site
                .db
                .fetch_one(&verified, &[])
                .await
                .unwrap()
                .i64("n")
                .unwrap()
                == 1
        })
        .await;
        let before = (schema(&primary.site.db).await, helm_state(&primary).await);
        let cases = [
            (
                "table-thief",
                "belongs to type `packages_helm_metadata_cache`",
            ),
            ("leases-table", "`geo_leases` is one of Geohost's own"),
        ];
        for (fixture, reason) in cases {
            let (status, r) = admin(
                &primary,
                &token,
                reqwest::Method::POST,
                "/api/v4/geo/plugins",
                fixture_component(fixture),
            )
            .await;
            assert_eq!(status, 422, "{backend:?} {fixture}: {r}");
            let message = r["message"].as_str().unwrap();
            assert!(message.contains(reason), "{fixture}: {message}");
            let after = (schema(&primary.site.db).await, helm_state(&primary).await);
            assert_eq!(after, before, "{backend:?} {fixture}: something changed");
        }
        // Still Helm's once Helm is removed: the owner is recorded.
        swap::remove(&primary.site, HELM, true).await.unwrap();
        let (status, r) = admin(
            &primary,
            &token,
            reqwest::Method::POST,
            "/api/v4/geo/plugins",
            fixture_component("table-thief"),
        )
        .await;
        assert_eq!(status, 422, "{backend:?}: {r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("recorded on this site"),
            "{r}"
        );
        assert_eq!(schema(&primary.site.db).await, before.0, "{backend:?}");
    }
}

/// The admin API's answer to a GraphQL request (data or errors).
async fn graphql(site: &TestSite, token: &str, query: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}/api/graphql", site.url))
        .header("PRIVATE-TOKEN", token)
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The blobs at records' paths, and in the quarantine, of Helm on `site`.
fn helm_blobs(site: &TestSite) -> (usize, usize) {
    let all = files(&site.dir.join("blobs"), true);
    let at_paths = all.keys().filter(|f| f.starts_with(HELM)).count();
    let quarantined = all
        .keys()
        .filter(|f| f.starts_with(geohost::storage::QUARANTINE_DIR))
        .count();
    (at_paths, quarantined)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_puts_everything_out_of_scope_removes_nothing_until_confirmed() {
    // One backend: the guard's SQL runs on both in its unit test.
    let backend = *sites::backends().last().unwrap();
    let primary = sites::primary(backend).await;
    let [_, a, _, _, b] = sites::group_tree(&primary).await;
    let (pa, pb) = (
        sites::project(&primary, a, "pa").await,
        sites::project(&primary, b, "pb").await,
    );
    let secondary = sites::secondary(
        backend,
        &primary,
        NewSite {
            name: "s".into(),
            ..Default::default()
        },
    )
    .await;
    for i in 0..1_000 {
        let project = if i % 2 == 0 { pa } else { pb };
        sites::put_helm(&primary, project, &format!("c{i}"), &format!("index {i}")).await;
    }
    eventually(CONVERGE, "1,000 registries synced", || {
        follows(&primary, &secondary, HELM, |_| true)
    })
    .await;
    assert_eq!(registry(&secondary, HELM).await.len(), 1_000);

    // Helm 1.4.0 puts every record out of scope: held, nothing removed.
    let token = token(&secondary).await;
    let (status, report) = admin(
        &secondary,
        &token,
        reqwest::Method::PUT,
        &format!("/api/v4/geo/plugins/{HELM}"),
        fixture_component("helm-nothing-in-scope"),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["registries_held"], 1_000, "{report}");
    assert_eq!(report["registries_removed"], 0, "{report}");
    tokio::time::sleep(Duration::from_secs(6)).await; // a few periodic passes
    assert_eq!(registry(&secondary, HELM).await.len(), 1_000);
    assert_eq!(helm_blobs(&secondary), (1_000, 0));
    // Said in the status (which the admin page shows), the metric and the log.
    let own = reqwest::Client::new()
        .get(format!("{}/api/v4/geo_sites/status", secondary.url))
        .header("PRIVATE-TOKEN", &token)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let holds = &own[0]["removal_holds"];
    assert_eq!(holds[0]["replicable_name"], HELM, "{own}");
    assert_eq!(holds[0]["removals"], 1_000, "{own}");
    assert_eq!(holds[0]["registries"], 1_000, "{own}");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", secondary.url))
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
            .any(|l| l.starts_with("geohost_registry_removals_held{")
                && l.contains(HELM)
                && l.ends_with(" 1000")),
        "{metrics}"
    );

    // Confirmed through GraphQL: the removals happen, into the quarantine.
    let answer = graphql(
        &secondary,
        &token,
        "mutation { geoRegistriesConfirmRemovals(input: \
         {registryClass: PACKAGES_HELM_METADATA_CACHE_REGISTRY}) { removals errors } }",
    )
    .await;
    assert_eq!(
        answer["data"]["geoRegistriesConfirmRemovals"],
        serde_json::json!({"removals": 1000, "errors": []}),
        "{answer}"
    );
    eventually(CONVERGE, "the removals made", || async {
        registry(&secondary, HELM).await.is_empty() && helm_blobs(&secondary) == (0, 1_000)
    })
    .await;

    // `geohost registry restore` brings them back, byte-identical.
    let config = secondary.write_config();
    let (ok, out, err) = cli(&["registry", "restore", "-c", config.to_str().unwrap(), HELM]);
    assert!(ok, "{err}");
    assert!(out.contains("Restored 1000"), "{out}");
    let records = records(&primary, HELM).await;
    for (_, path) in records.values() {
        let theirs = sha(&blob(&primary, HELM, path));
        assert_eq!(sha(&blob(&secondary, HELM, path)), theirs, "{path}");
    }
    assert_eq!(helm_blobs(&secondary), (1_000, 0));

    // Rolled back: the registries come back.
    swap::rollback(&secondary.site, HELM).await.unwrap();
    eventually(CONVERGE, "back in sync", || {
        follows(&primary, &secondary, HELM, |_| true)
    })
    .await;

    // A selective-sync change on the primary confirms itself: namespace a
    // only, and half the registries go without an operator.
    let id = geohost::primary::sites::list(&primary.site.db)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "s")
        .unwrap()
        .id;
    geohost::primary::sites::update(
        &primary.site,
        id,
        SiteUpdate {
            selective_sync_type: Some("namespaces".into()),
            namespace_ids: Some(vec![a]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let in_a: Vec<String> = (0..1_000).step_by(2).map(|i| format!("c{i}")).collect();
    eventually(CONVERGE, "namespace b's registries removed", || {
        follows(&primary, &secondary, HELM, |channel| {
            in_a.iter().any(|c| c == channel)
        })
    })
    .await;
    let tracking = secondary.site.tracking().unwrap();
    assert!(
        geohost::secondary::guard::holds(tracking)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The peak resident set of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_stop_at_their_bounds_and_other_types_keep_replicating() {
    // The hostile types, and what their records ask for: as many project
    // ids, string bytes or answers as a 16 MiB memory cap allows (two
    // calls may run at once: the event cursor's and a consistency pass's).
    // A 0.2 decision is one byte (0.1's was a result of about 12), so
    // many-answers asks for 2,000,000 of them to pass the hostcall fuel.
    const HOSTILE: [(&str, &str, u64); 3] = [
        ("projects-flood", "fixture_projects_flood", 1_700_000),
        ("huge-string", "fixture_huge_string", 13_000_000),
        ("many-answers", "fixture_many_answers", 2_000_000),
    ];
    let backend = Backend::Sqlite;
    let primary = sites::primary(backend).await;
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    for (fixture, _, _) in HOSTILE {
        let request = Request {
            expect_name: None,
            source: "test".into(),
        };
        swap::activate(&primary.site, fixture_component(fixture), request)
            .await
            .unwrap();
    }
    // The secondary runs as its own process (its peak RSS is its own), with
    // the hostile types in its plugins folder and a 16 MiB memory cap.
    let folder = tempfile::tempdir().unwrap();
    for (fixture, _, _) in HOSTILE {
        std::fs::copy(
            fixture_component_path(fixture),
            folder.path().join(format!("{fixture}.wasm")),
        )
        .unwrap();
    }
    let secondary = sites::SecondaryProcess::start_with(
        backend,
        &primary,
        &format!(
            "[plugins]\nmemory_mib = 16\ndir = {:?}\n",
            folder.path().display().to_string()
        ),
    )
    .await;
    let pid = secondary.pid().unwrap();
    let synced = async |n: usize| {
        let Ok(db) = Db::connect_with(secondary.tracking_url(), 2).await else {
            return false;
        };
        let states = sites::registry_states_in(&db, HELM)
            .await
            .unwrap_or_default();
        db.close().await;
        states.len() == n && states.values().all(|s| *s == (2, 2))
    };
    for i in 0..3 {
        sites::put_helm(&primary, project, &format!("before{i}"), "index").await;
    }
    eventually(CONVERGE, "Helm replicated", || synced(3)).await;
    let baseline = peak_rss(pid);

    // Records of the hostile types: the secondary decides their scope.
    for (_, name, size) in HOSTILE {
        for i in 0..2 {
            let mut columns = serde_json::Map::new();
            columns.insert("project_id".into(), project.into());
            columns.insert("file".into(), format!("{size}-{i}").into());
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("x"))]);
            geohost::primary::ingest::upsert(&primary.site, name, &columns, body)
                .await
                .unwrap();
        }
    }
    // Each call fails with an error naming the bound it went past.
    let bounds = [
        ("fixture_projects_flood", "bytes handed to the host"),
        ("fixture_huge_string", "bytes handed to the host"),
        ("fixture_many_answers", "bytes handed to the host"),
    ];
    eventually(CONVERGE, "the hostile calls stopped and logged", || async {
        let log = secondary.log();
        bounds.iter().all(|(name, bound)| {
            log.lines()
                .any(|l| l.contains(name) && l.contains(bound) && l.contains("plugin call failed"))
        })
    })
    .await;
    // More passes over them, then Helm still replicates.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..3 {
        sites::put_helm(&primary, project, &format!("after{i}"), "index").await;
    }
    eventually(CONVERGE, "Helm still replicated", || synced(6)).await;
    let peak = peak_rss(pid);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "secondary peak RSS: baseline {} MiB, after the hostile calls {} MiB (+{} KiB)",
        baseline >> 20,
        peak >> 20,
        growth >> 10
    );
    assert!(
        growth < 64 << 20,
        "the host's peak RSS grew by {} MiB over its baseline",
        growth >> 20
    );
    // None of the hostile records got a registry.
    let db = Db::connect_with(secondary.tracking_url(), 2).await.unwrap();
    for (_, name, _) in HOSTILE {
        let rows = sites::registry_states_in(&db, name).await.unwrap();
        assert!(rows.is_empty(), "{name}: {rows:?}");
    }
    db.close().await;
}
