//! Two sites over real HTTP on loopback: selective sync, updates, deletes,
//! corruption on either side, a primary outage and a killed secondary, on
//! SQLite and PostgreSQL.

use crate::sites::{self, HELM, TestSite, eventually};
use geohost::db::ident;
use geohost::primary::sites::NewSite;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(180);

/// (registry id → (state, verification state)) on the secondary.
async fn registries(secondary: &TestSite) -> BTreeMap<i64, (i16, i16)> {
    sites::registry_states_in(secondary.site.tracking().unwrap(), HELM)
        .await
        .unwrap()
}

/// Whether the secondary holds exactly `expected` ids, all synced and verified.
async fn converged(secondary: &TestSite, expected: &[i64]) -> bool {
    let found = registries(secondary).await;
    found.keys().copied().collect::<Vec<_>>() == expected
        && found.values().all(|&(s, v)| s == 2 && v == 2)
}

/// Sets a registry row's columns behind the workers' back (`assignment` is SQL).
async fn set_registry(secondary: &TestSite, assignment: &str, id: i64) {
    let it = secondary.site.installed(HELM).unwrap();
    let sql = format!(
        "UPDATE {} SET {assignment} WHERE {} = $1",
        ident(&it.identity.registry_table()),
        ident(&it.identity.foreign_key())
    );
    secondary
        .site
        .tracking()
        .unwrap()
        .execute(&sql, &[id.into()])
        .await
        .unwrap();
}

fn sha(path: &std::path::Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(b)))
}

/// Every in-scope blob on the secondary is byte-identical to the primary's.
fn assert_identical(
    primary: &TestSite,
    secondary: &TestSite,
    paths: &BTreeMap<i64, String>,
    ids: &[i64],
) {
    for id in ids {
        let path = &paths[id];
        let theirs = sha(&primary.blob_file(path));
        let ours = sha(&secondary.blob_file(path));
        assert!(ours.is_some(), "record {id}: blob missing on the secondary");
        assert_eq!(ours, theirs, "record {id}: blob differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_sync_replicates_exactly_the_selected_groups() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        // A 3-level tree: root → a → (a1, a2), root → b; a second root c.
        let [root, a, a1, a2, b] = sites::group_tree(&primary).await;
        let c = geohost::primary::topology::create_namespace(&primary.site.db, "c", "c", None)
            .await
            .unwrap()
            .id;
        let namespaces = [
            root, a, a1, a2, b, c, a1, a2, b, c, a, root, a1, a2, b, c, a1, a2, b, c,
        ];
        let mut projects = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            projects.push((sites::project(&primary, *ns, &format!("p{i}")).await, *ns));
        }
        let mut paths = BTreeMap::new();
        let mut in_scope = Vec::new();
        for i in 0..500 {
            let (project, ns) = projects[i % projects.len()];
            let w = sites::put_helm(
                &primary,
                project,
                &format!("ch{i}"),
                &sites::index_yaml(project, "x", i as u32),
            )
            .await;
            paths.insert(w.id, w.blob_path.clone());
            // Selected: group a (with a1, a2) and group c.
            if [a, a1, a2, c].contains(&ns) {
                in_scope.push(w.id);
            }
        }
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                selective_sync_type: Some("namespaces".into()),
                namespace_ids: vec![a, c],
                ..Default::default()
            },
        )
        .await;
        eventually(CONVERGE, "the selected records synced and verified", || {
            converged(&secondary, &in_scope)
        })
        .await;
        assert_identical(&primary, &secondary, &paths, &in_scope);
        let stored = secondary.site.blobs.list_type(HELM).await.unwrap();
        assert_eq!(
            stored.len(),
            in_scope.len(),
            "{backend:?}: no blob outside the scope"
        );
        let _ = b;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletes_and_corruption_on_either_side() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let mut paths = BTreeMap::new();
        let mut ids = Vec::new();
        for i in 0..6 {
            let w = sites::put_helm(
                &primary,
                project,
                &format!("c{i}"),
                &sites::index_yaml(project, "c", 1),
            )
            .await;
            paths.insert(w.id, w.blob_path.clone());
            ids.push(w.id);
        }
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
        )
        .await;
        eventually(CONVERGE, "initial sync", || converged(&secondary, &ids)).await;

        // An update on the primary reaches the secondary.
        let updated = sites::index_yaml(project, "c", 2);
        sites::put_helm(&primary, project, "c0", &updated).await;
        let file = secondary.blob_file(&paths[&ids[0]]);
        eventually(CONVERGE, "the update", || async {
            std::fs::read_to_string(&file).ok().as_deref() == Some(updated.as_str())
                && converged(&secondary, &ids).await
        })
        .await;

        // A delete removes the blob and the registry.
        geohost::primary::ingest::delete(&primary.site, HELM, ids[1])
            .await
            .unwrap();
        let gone = secondary.blob_file(&paths[&ids[1]]);
        let remaining: Vec<i64> = ids.iter().copied().filter(|id| *id != ids[1]).collect();
        eventually(CONVERGE, "the delete", || async {
            !gone.exists() && converged(&secondary, &remaining).await
        })
        .await;

        // A blob corrupted on the secondary is detected and repaired.
        let victim = secondary.blob_file(&paths[&ids[2]]);
        let good = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, b"corrupted").unwrap();
        set_registry(&secondary, "verification_state = 0", ids[2]).await;
        eventually(CONVERGE, "the repair", || async {
            std::fs::read(&victim).ok() == Some(good.clone())
                && converged(&secondary, &remaining).await
        })
        .await;

        // A blob corrupted on the primary after checksumming is never accepted.
        let source = primary.blob_file(&paths[&ids[3]]);
        let kept = std::fs::read(secondary.blob_file(&paths[&ids[3]])).unwrap();
        std::fs::write(&source, b"rotten on the primary").unwrap();
        set_registry(&secondary, "state = 0", ids[3]).await;
        eventually(CONVERGE, "the failed download", || async {
            registries(&secondary).await.get(&ids[3]).map(|s| s.0) == Some(3)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = std::fs::read(secondary.blob_file(&paths[&ids[3]])).unwrap();
        assert_eq!(
            held, kept,
            "{backend:?}: the corrupted primary blob was not accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secondary_converges_after_the_primary_goes_down() {
    for backend in sites::backends() {
        let mut primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let mut ids = Vec::new();
        for i in 0..150 {
            ids.push(
                sites::put_helm(&primary, project, &format!("c{i}"), &"x".repeat(20_000 + i))
                    .await
                    .id,
            );
        }
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
        )
        .await;
        eventually(CONVERGE, "some progress", || async {
            registries(&secondary)
                .await
                .values()
                .filter(|s| s.0 == 2)
                .count()
                > 5
        })
        .await;
        primary.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        primary.restart().await;
        eventually(
            Duration::from_secs(180),
            "convergence after the outage",
            || converged(&secondary, &ids),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_secondary_converges_and_never_shows_a_partial_blob() {
    for backend in sites::backends() {
        killed_secondary_converges(backend).await;
    }
}

async fn killed_secondary_converges(backend: sites::Backend) {
    let primary = sites::primary(backend).await;
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    let mut expected = BTreeMap::new();
    let mut ids = Vec::new();
    for i in 0..120 {
        let body = format!("{i}:").repeat(60_000);
        let w = sites::put_helm(&primary, project, &format!("c{i}"), &body).await;
        expected.insert(
            w.blob_path.clone(),
            hex::encode(Sha256::digest(body.as_bytes())),
        );
        ids.push(w.id);
    }
    let mut process = sites::SecondaryProcess::start(backend, &primary).await;
    let root = process.dir.join("blobs").join(HELM);
    // Watch the blob paths: every file visible there is whole.
    let watcher = {
        let root = root.clone();
        let expected = expected.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut checked = 0usize;
            while started.elapsed() < Duration::from_secs(20) {
                for (path, sum) in &expected {
                    if let Some(found) = sha(&root.join(path)) {
                        assert_eq!(&found, sum, "a partial or foreign blob at {path}");
                        checked += 1;
                    }
                }
            }
            checked
        })
    };
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        process.kill();
        process.restart();
    }
    let started = std::time::Instant::now();
    loop {
        let counts = process.registry_states(&primary).await;
        if counts.len() == ids.len() && counts.iter().all(|&(s, v)| s == 2 && v == 2) {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let log = std::fs::read_to_string(process.dir.join("log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.trim_start().starts_with("at ") && !l.contains(": 0x"))
                .take(12)
                .collect();
            let mut summary = std::collections::BTreeMap::new();
            for c in &counts {
                *summary.entry(*c).or_insert(0) += 1;
            }
            panic!(
                "no convergence after SIGKILLs: {} registries, states {summary:?}\n{}",
                counts.len(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(watcher.await.unwrap() > 0, "the watcher saw blobs");
    for (path, sum) in &expected {
        assert_eq!(sha(&root.join(path)).as_ref(), Some(sum), "{path}");
    }
    process.kill();
}

/// Least access (issue 15): the secondary's own credentials fetch nothing
/// outside its selective sync. A record out of scope answers as a missing
/// one from the single and the batch retrieve and from the records feed by
/// id, and the event feed withholds its events (by id only, so they are no
/// gaps): the secondary still syncs everything in scope, with no gap left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_fetches_nothing_outside_its_scope() {
    use geohost::blob_batch::PartStatus;
    use geohost::secondary::PrimaryClient;
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, _, _, b] = sites::group_tree(&primary).await;
        let inside = sites::project(&primary, a, "inside").await;
        let outside = sites::project(&primary, b, "outside").await;
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                selective_sync_type: Some("namespaces".into()),
                namespace_ids: vec![a],
                ..Default::default()
            },
        )
        .await;
        // Written after the secondary exists, interleaved: in-scope records
        // reach it through the event feed, between withheld events.
        let (mut ids_in, mut ids_out) = (Vec::new(), Vec::new());
        for i in 0..12u32 {
            for (project, ids) in [(inside, &mut ids_in), (outside, &mut ids_out)] {
                let w = sites::put_helm(
                    &primary,
                    project,
                    &format!("ch{i}"),
                    &sites::index_yaml(project, "x", i),
                )
                .await;
                ids.push(w.id);
            }
        }
        eventually(CONVERGE, "the records in scope synced and verified", || {
            converged(&secondary, &ids_in)
        })
        .await;
        let tracking = secondary.site.tracking().unwrap();
        assert!(
            geohost::secondary::cursor::gaps(tracking)
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}: withheld events are no gaps"
        );

        let client = PrimaryClient::new(secondary.site.config.primary.as_ref().unwrap()).unwrap();
        let (id_in, id_out) = (ids_in[0], ids_out[0]);
        // Single retrieve: the same 404 as a record that does not exist.
        assert!(client.retrieve(HELM, id_in).await.is_ok(), "{backend:?}");
        let refused = client.retrieve(HELM, id_out).await.unwrap_err();
        let missing = client.retrieve(HELM, 999_999).await.unwrap_err();
        assert_eq!(refused.status(), Some(404), "{backend:?}: {refused}");
        let body = |e: &geohost::secondary::ClientError| match e {
            geohost::secondary::ClientError::NotFound { message, .. } => message.clone(),
            other => panic!("not a plain 404: {other}"),
        };
        assert_eq!(body(&refused), body(&missing), "{backend:?}");
        // Batch retrieve: a not-found part, as a missing record's.
        let mut answer = client
            .retrieve_batch(HELM, &[id_out, id_in, 999_999], 1 << 20)
            .await
            .unwrap();
        let mut statuses = Vec::new();
        while let Some(part) = answer.next_part().await.unwrap() {
            statuses.push((part.header.id, part.header.status, part.header.message));
        }
        assert_eq!(
            statuses,
            [
                (
                    id_out,
                    PartStatus::NotFound,
                    Some(format!("{HELM} not found"))
                ),
                (id_in, PartStatus::Ok, None),
                (
                    999_999,
                    PartStatus::NotFound,
                    Some(format!("{HELM} not found"))
                ),
            ],
            "{backend:?}"
        );
        // The records feed by id: omitted, as a missing record.
        let by_ids = client
            .records_by_ids(HELM, &[id_in, id_out, 999_999])
            .await
            .unwrap();
        assert_eq!(by_ids.iter().map(|r| r.id).collect::<Vec<_>>(), [id_in]);
        // The event feed: the out-of-scope records' events withheld.
        let events = client.events(0, 1000, 0).await.unwrap();
        let about = |e: &geohost::feed::FeedEvent| e.payload["model_record_id"].as_i64();
        assert!(
            events
                .events
                .iter()
                .all(|e| !ids_out.contains(&about(e).unwrap())),
            "{backend:?}"
        );
        assert!(events.withheld.len() >= ids_out.len(), "{backend:?}");
        let (again, withheld) = client.events_by_ids(&events.withheld).await.unwrap();
        assert!(again.is_empty(), "{backend:?}: events?ids= withholds too");
        assert_eq!(withheld, events.withheld, "{backend:?}");
        let _ = b;
    }
}
