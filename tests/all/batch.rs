//! The batch hot path end to end (issue 13): many small blobs per request
//! and per transaction, on real sites with real databases.
//!
//! - 10,000 small blobs replicated through batch retrieves, on a SQLite and
//!   on a PostgreSQL tracking database: every one synced, verified and
//!   byte-identical;
//! - one batch holding a record deleted on the primary, a blob corrupted on
//!   the primary after it was checksummed, and a blob above the threshold:
//!   each ends as it would alone, the rest syncs;
//! - a batch token replayed for other ids is a 401, a batch over the id
//!   limit a clear 400; the primary's cache of authenticated sites forgets
//!   a disabled site at once through the API and within its 5 s otherwise.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use crate::support::{helm_blob_path, helm_object_storage_key, sha256_hex};
use geohost::auth::geo_jwt;
use geohost::blob_batch;
use geohost::db::{Arg, ident, value_rows};
use geohost::primary::sites::{NewSite, SiteUpdate};
use geohost::secondary::{Secondary, batch, status_counts};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(600);

/// A small blob of 1 to 4 KiB, different for each record.
fn small_blob(i: usize) -> Vec<u8> {
    let mut text = format!("---\napiVersion: v1\n# record {i}\n");
    let size = 1024 + (i * 37) % 3072;
    while text.len() < size {
        text.push_str(&format!(
            "# padding of record {i} .........................\n"
        ));
    }
    text.into_bytes()
}

/// A primary holding `n` small records, verified: rows written in a few
/// statements and blobs written as files (the setup, not what is tested:
/// writing 10,000 records through ingest would take most of the test).
/// Returns the primary and each record's (project, channel, content).
async fn primary_with_small_records(
    backend: Backend,
    n: usize,
) -> (TestSite, Vec<(i64, String, Vec<u8>)>) {
    let primary = sites::primary(backend).await;
    let [root, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, root, "bulk").await;
    let records: Vec<(i64, String, Vec<u8>)> = (0..n)
        .map(|i| (project, format!("bulk-{i}"), small_blob(i)))
        .collect();
    let it = primary.site.installed(HELM).unwrap();
    let now = geohost::db::Db::now();
    for chunk in records.chunks(500) {
        let mut args: Vec<Arg> = Vec::new();
        for (project, channel, content) in chunk {
            let path = primary.blob_file(&helm_blob_path(*project, channel));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            args.extend([
                Arg::from(now),
                Arg::from(now),
                Arg::from(*project),
                Arg::I32(Some(content.len() as i32)),
                Arg::I16(Some(1)),
                Arg::from(channel.clone()),
                Arg::from("index.yaml"),
                Arg::from(helm_object_storage_key(*project, channel)),
            ]);
        }
        primary
            .site
            .db
            .execute(
                &format!(
                    "INSERT INTO {} (created_at, updated_at, project_id, size, file_store, \
                     channel, file, object_storage_key) VALUES {}",
                    ident(&it.identity.table.name),
                    value_rows(1, chunk.len(), 8)
                ),
                &args,
            )
            .await
            .unwrap();
    }
    // Pending state rows: the primary's verifier checksums them.
    geohost::primary::verify::backfill_states(&primary.site.db, &it)
        .await
        .unwrap();
    sites::primary_verified(&primary, n).await;
    (primary, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_blobs_sync_through_batches_on_both_backends() {
    const N: usize = 10_000;
    sites::sites_in_memory();
    let test = Instant::now();
    for backend in sites::backends() {
        eprintln!("{backend:?}: begins at {:?}", test.elapsed());
        let started = Instant::now();
        let (primary, records) = primary_with_small_records(backend, N).await;
        eprintln!(
            "{backend:?}: {N} records on the primary in {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let mut secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                ..Default::default()
            },
        )
        .await;
        eprintln!("{backend:?}: secondary started in {:?}", started.elapsed());
        let it = secondary.site.installed(HELM).unwrap();
        let tracking = secondary.site.tracking().unwrap().clone();
        eventually(LIMIT, "every record synced", || async {
            let counts = status_counts(&tracking, &it).await.unwrap();
            counts.synced_count == N as i64
        })
        .await;
        eprintln!("{backend:?}: synced in {:?}", started.elapsed());
        eventually(LIMIT, "every record synced and verified", || async {
            let counts = status_counts(&tracking, &it).await.unwrap();
            counts.synced_count == N as i64 && counts.verified_count == N as i64
        })
        .await;
        eprintln!(
            "{backend:?}: synced and verified in {:?}",
            started.elapsed()
        );

        let compared = Instant::now();
        for (project, channel, content) in &records {
            let path = helm_blob_path(*project, channel);
            let copy = std::fs::read(secondary.blob_file(&path))
                .unwrap_or_else(|e| panic!("{backend:?}: {path}: {e}"));
            assert!(
                copy == *content,
                "{backend:?}: {path} differs from the primary's"
            );
        }
        // Through batches: each blob served once, many per request.
        let served = geohost::metrics::RETRIEVE_SERVED
            .with_label_values(&[HELM, "secondary"])
            .get();
        let batches = geohost::metrics::RETRIEVE_BATCHES
            .with_label_values(&[HELM, "secondary"])
            .get();
        assert_eq!(served, N as u64, "{backend:?}: each blob served once");
        assert!(
            batches > 0 && batches * 10 <= N as u64,
            "{backend:?}: {batches} batch retrieves for {N} blobs"
        );
        eprintln!(
            "{backend:?}: {batches} batch retrieves; compared in {:?}",
            compared.elapsed()
        );
        let stopping = Instant::now();
        // The counters are per process: start the next backend from zero.
        geohost::metrics::RETRIEVE_SERVED.reset();
        geohost::metrics::RETRIEVE_BATCHES.reset();
        secondary.stop().await;
        let mut primary = primary;
        primary.stop().await;
        eprintln!("{backend:?}: stopped in {:?}", stopping.elapsed());
    }
    eprintln!("ends at {:?}", test.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_of_a_batch_ends_as_it_would_alone() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [root, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, root, "p").await;
        let good = sites::put_helm(&primary, project, "good", "good index\n").await;
        let deleted = sites::put_helm(&primary, project, "deleted", "deleted index\n").await;
        let corrupted = sites::put_helm(&primary, project, "corrupted", "corrupted index\n").await;
        // Above the 256 KiB threshold.
        let large_body = "x".repeat(300 * 1024);
        let large = sites::put_helm(&primary, project, "large", &large_body).await;
        let it = primary.site.installed(HELM).unwrap();
        sites::primary_verified(&primary, 4).await;
        // A secondary without workers: its registry is filled, then one
        // batch is run by hand once the primary has changed.
        let secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "secondary".into(),
                ..Default::default()
            },
            "enabled = false\n",
        )
        .await;
        let s = Secondary::new(secondary.site.clone()).unwrap();
        s.refresh_node().await.unwrap();
        s.consistency_pass().await.unwrap();
        let tracking = secondary.site.tracking().unwrap().clone();
        assert_eq!(
            status_counts(&tracking, &it).await.unwrap().pending_count,
            4
        );

        geohost::primary::ingest::delete(&primary.site, HELM, deleted.id)
            .await
            .unwrap();
        std::fs::write(primary.blob_file(&corrupted.blob_path), "evil index\n").unwrap();

        let settings = batch::BatchSettings::of(&secondary.site.config.workers).unwrap();
        let claimed = batch::sync_one_batch(&s.downloader(), &it, settings)
            .await
            .unwrap();
        assert_eq!(claimed, 4, "{backend:?}: one batch of four");
        assert_eq!(
            geohost::metrics::RETRIEVE_BATCHES
                .with_label_values(&[HELM, "secondary"])
                .get(),
            1,
            "{backend:?}: one batch retrieve"
        );

        let registry = geohost::secondary::Registry::of(&it);
        let row = |id| {
            let (registry, tracking) = (registry.clone(), tracking.clone());
            async move { registry.get(&tracking, id).await.unwrap().unwrap() }
        };
        use geohost::states::{SyncState, VerificationState};
        for (w, body) in [(&good, "good index\n"), (&large, large_body.as_str())] {
            let r = row(w.id).await;
            assert_eq!(
                (r.state, r.verification_state),
                (SyncState::Synced, VerificationState::Pending),
                "{backend:?} {}",
                w.id
            );
            let copy = std::fs::read(secondary.blob_file(&w.blob_path)).unwrap();
            assert_eq!(
                sha256_hex(&copy),
                sha256_hex(body.as_bytes()),
                "{backend:?}"
            );
        }
        let r = row(deleted.id).await;
        assert_eq!(r.state, SyncState::Failed, "{backend:?}");
        assert!(
            r.last_sync_failure
                .as_deref()
                .is_some_and(|f| f.ends_with("not found on the primary")),
            "{backend:?}: {:?}",
            r.last_sync_failure
        );
        assert!(!secondary.blob_file(&deleted.blob_path).exists());
        let r = row(corrupted.id).await;
        assert_eq!(
            (r.state, r.last_sync_failure.as_deref()),
            (SyncState::Failed, Some("Downloaded file checksum mismatch")),
            "{backend:?}"
        );
        assert!(
            !secondary.blob_file(&corrupted.blob_path).exists(),
            "{backend:?}: a corrupted blob never reaches its path"
        );
        assert!(r.retry_at.is_some() && r.retry_count == 1, "{backend:?}");
        geohost::metrics::RETRIEVE_BATCHES.reset();
    }
}

/// `GET` of a batch retrieve with `authorization`.
async fn batch_get(primary: &TestSite, ids: &[i64], authorization: &str) -> reqwest::Response {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    reqwest::Client::new()
        .get(format!(
            "{}/api/v4/geo/retrieve/{HELM}?ids={}",
            primary.url,
            list.join(",")
        ))
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_token_fetches_its_ids_only_and_the_id_limit_holds() {
    let primary = sites::primary(Backend::Sqlite).await;
    let [root, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, root, "p").await;
    let mut ids = Vec::new();
    for channel in ["a", "b", "c"] {
        ids.push(
            sites::put_helm(&primary, project, channel, channel)
                .await
                .id,
        );
    }
    let (node, keys) = geohost::primary::sites::add_secondary(
        &primary.site,
        NewSite {
            name: "secondary".into(),
            url: "http://127.0.0.1:9".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sign = |ids: &[i64]| {
        geo_jwt::sign(
            &keys.access_key,
            &keys.secret_access_key,
            &blob_batch::batch_claim(HELM, ids),
        )
    };
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let token = sign(&[a, b]);
    let answer = batch_get(&primary, &[a, b], &token).await;
    assert_eq!(answer.status(), 200);
    let body = answer.bytes().await.unwrap();
    let mut parts = blob_batch::Decoder::new(
        futures::stream::iter([Ok::<_, std::io::Error>(body)]),
        blob_batch::DEFAULT_MAX_PART_BYTES,
    );
    let first = parts.next_part().await.unwrap().unwrap();
    assert_eq!((first.header.id, &first.bytes[..]), (a, &b"a"[..]));
    assert_eq!(first.header.status, blob_batch::PartStatus::Ok);
    // Replayed for any other set (more, fewer, reordered): 401.
    for other in [vec![a, b, c], vec![a], vec![b, a], vec![c]] {
        let answer = batch_get(&primary, &other, &token).await;
        assert_eq!(answer.status(), 401, "{other:?}");
    }
    // Over the id limit: a clear 400, even signed.
    let many: Vec<i64> = (1..=blob_batch::MAX_BATCH_IDS as i64 + 1).collect();
    let answer = batch_get(&primary, &many, &sign(&many)).await;
    assert_eq!(answer.status(), 400);
    let message: serde_json::Value = answer.json().await.unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("at most 1000 ids"),
        "{message}"
    );

    // A site disabled through the API is refused at once…
    geohost::primary::sites::update(
        &primary.site,
        node.id,
        SiteUpdate {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_get(&primary, &[a], &sign(&[a])).await.status(), 401);
    geohost::primary::sites::update(
        &primary.site,
        node.id,
        SiteUpdate {
            enabled: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_get(&primary, &[a], &sign(&[a])).await.status(), 200);
    // …and through another process (a direct write) within the cache's 5 s.
    primary
        .site
        .db
        .execute(
            "UPDATE geo_nodes SET enabled = $1 WHERE id = $2",
            &[false.into(), node.id.into()],
        )
        .await
        .unwrap();
    assert_eq!(
        batch_get(&primary, &[a], &sign(&[a])).await.status(),
        200,
        "still cached"
    );
    tokio::time::sleep(geohost::auth::cache::AUTH_CACHE_TTL + Duration::from_millis(500)).await;
    assert_eq!(batch_get(&primary, &[a], &sign(&[a])).await.status(), 401);
}
