//! The primary over real HTTP: ingest, verification, events, the retrieve
//! API and its authentication, on SQLite and PostgreSQL.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use geohost::auth::geo_jwt;
use geohost::db::ident;
use geohost::feed;
use geohost::primary::{records, sites as geo_sites, verify};
use serde_json::{Value, json};
use std::time::Duration;

struct Fixture {
    primary: TestSite,
    token: String,
    access_key: String,
    secret: String,
    project: i64,
}

async fn fixture(backend: Backend, workers: &str) -> Fixture {
    let primary = sites::primary_with(backend, workers).await;
    let (_, token) = geohost::api::auth::create_token(&primary.site.db, "test")
        .await
        .unwrap();
    let (_, credentials) = geo_sites::add_secondary(
        &primary.site,
        geo_sites::NewSite {
            name: "s".into(),
            url: "http://127.0.0.1:9".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let [_, a, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "p").await;
    Fixture {
        primary,
        token,
        access_key: credentials.access_key,
        secret: credentials.secret_access_key,
        project,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn put(f: &Fixture, query: &str, body: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .put(format!(
            "{}/api/v4/replicables/{HELM}?{query}",
            f.primary.url
        ))
        .body(body.to_string());
    if let Some(token) = token {
        request = request.header("PRIVATE-TOKEN", token);
    }
    request.send().await.unwrap()
}

async fn state_of(f: &Fixture, id: i64) -> (i16, Option<Vec<u8>>, Option<String>) {
    let it = f.primary.site.installed(HELM).unwrap();
    let row = f
        .primary
        .site
        .db
        .fetch_one(
            &format!(
                "SELECT verification_state, verification_checksum, verification_failure FROM {} WHERE {} = $1",
                ident(&it.identity.states_table()),
                ident(&it.identity.foreign_key())
            ),
            &[id.into()],
        )
        .await
        .unwrap();
    (
        row.i16("verification_state").unwrap(),
        row.opt_bytes("verification_checksum").unwrap(),
        row.opt_text("verification_failure").unwrap(),
    )
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_verify_and_detect_a_blob_changed_on_disk() {
    for backend in sites::backends() {
        let f = fixture(backend, "idle_poll_ms = 50\n").await;
        let body = sites::index_yaml(f.project, "stable", 1);
        let response = put(
            &f,
            &format!("project_id={}&channel=stable", f.project),
            &body,
            Some(&f.token),
        )
        .await;
        assert_eq!(response.status(), 201, "{backend:?}");
        let written: Value = response.json().await.unwrap();
        let id = written["id"].as_i64().unwrap();
        assert_eq!(written["size"], body.len());
        assert_eq!(written["record"]["size"], body.len());
        let path = written["blob_path"].as_str().unwrap().to_string();
        assert!(path.ends_with("/index.yaml"), "{path}");

        // The worker checksums it; the checksum is sha256sum of the stored bytes.
        eventually(Duration::from_secs(20), "verification", || async {
            state_of(&f, id).await.0 == 2
        })
        .await;
        let file = f.primary.blob_file(&path);
        assert_eq!(
            hex::encode(state_of(&f, id).await.1.unwrap()),
            sha256sum(&file),
            "{backend:?}"
        );

        // An update resets verification and is checksummed again.
        let body2 = sites::index_yaml(f.project, "stable", 2);
        let response = put(
            &f,
            &format!("project_id={}&channel=stable", f.project),
            &body2,
            Some(&f.token),
        )
        .await;
        assert_eq!(response.status(), 200);
        eventually(
            Duration::from_secs(20),
            "re-verification after update",
            || async {
                let (state, checksum, _) = state_of(&f, id).await;
                state == 2 && checksum.map(hex::encode) == Some(sha256sum(&file))
            },
        )
        .await;

        // Changed behind Geohost's back: the next verification fails.
        std::fs::write(&file, "tampered").unwrap();
        let it = f.primary.site.installed(HELM).unwrap();
        f.primary
            .site
            .db
            .execute(
                &format!(
                    "UPDATE {} SET verified_at = $1",
                    ident(&it.identity.states_table())
                ),
                &[(chrono::Utc::now() - chrono::Duration::days(30)).into()],
            )
            .await
            .unwrap();
        verify::reverify_due(&f.primary.site.db, &it, 7)
            .await
            .unwrap();
        eventually(Duration::from_secs(20), "failed verification", || async {
            state_of(&f, id).await.0 == 3
        })
        .await;
        let (_, checksum, failure) = state_of(&f, id).await;
        assert!(failure.unwrap().contains("changed on disk"));
        assert!(checksum.is_some(), "the last good checksum is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_verifiers_never_claim_the_same_row() {
    for backend in sites::backends() {
        let f = fixture(backend, "enabled = false\n").await;
        for i in 0..200 {
            sites::put_helm(
                &f.primary,
                f.project,
                &format!("c{i}"),
                &format!("body {i}"),
            )
            .await;
        }
        let it = f.primary.site.installed(HELM).unwrap();
        let run = |site: std::sync::Arc<geohost::site::Site>,
                   it: std::sync::Arc<geohost::catalog::InstalledType>| async move {
            let mut total = 0;
            loop {
                // Rounds of up to 3 batches, 2 in flight: 4 batches at
                // once over the two verifiers.
                let n = verify::verify_round(&site, &it, 7, 4, 3).await.unwrap();
                if n == 0 {
                    return total;
                }
                total += n;
            }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(run(f.primary.site.clone(), it.clone())),
            tokio::spawn(run(f.primary.site.clone(), it.clone()))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a + b,
            200,
            "{backend:?}: each row claimed exactly once ({a} + {b})"
        );
        assert!(
            a > 0 && b > 0,
            "{backend:?}: both verifiers worked ({a}, {b})"
        );
        let counts = verify::state_counts(&f.primary.site.db, &it).await.unwrap();
        assert_eq!(
            counts,
            vec![(geohost::states::VerificationState::Succeeded, 200)]
        );
    }
}

/// Verification hashes the path a states row holds; a row without a usable
/// one (written before the column existed, or holding a path the rules
/// refuse) asks the type for its record's path, and verifies all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_without_a_usable_stored_path_verify_through_the_type() {
    for backend in sites::backends() {
        let f = fixture(backend, "enabled = false\n").await;
        let mut written = Vec::new();
        for i in 0..9 {
            let outcome = sites::put_helm(
                &f.primary,
                f.project,
                &format!("c{i}"),
                &format!("body {i}"),
            )
            .await;
            written.push(outcome);
        }
        let it = f.primary.site.installed(HELM).unwrap();
        let states = ident(&it.identity.states_table());
        let fk = ident(&it.identity.foreign_key());
        for (i, w) in written.iter().enumerate() {
            let stored = match i % 3 {
                0 => continue,
                1 => None,
                _ => Some(format!("../escape/{i}")),
            };
            f.primary
                .site
                .db
                .execute(
                    &format!("UPDATE {states} SET blob_path = $1 WHERE {fk} = $2"),
                    &[stored.into(), w.id.into()],
                )
                .await
                .unwrap();
        }
        while verify::verify_round(&f.primary.site, &it, 4, 2, 1)
            .await
            .unwrap()
            > 0
        {}
        for w in &written {
            let (state, checksum, failure) = state_of(&f, w.id).await;
            assert_eq!((state, failure), (2, None), "{backend:?}: record {}", w.id);
            assert_eq!(
                hex::encode(checksum.unwrap()),
                sha256sum(&f.primary.blob_file(&w.blob_path)),
                "{backend:?}: record {}",
                w.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_is_authenticated_like_gitlab() {
    for backend in sites::backends() {
        let f = fixture(backend, "idle_poll_ms = 50\n").await;
        let body = "apiVersion: v1\nentries: {}\n";
        let written = sites::put_helm(&f.primary, f.project, "stable", body).await;
        let id = written.id;
        let url = format!("{}/api/v4/geo/retrieve/{HELM}/{id}", f.primary.url);
        let get = |header: Option<String>| {
            let mut r = client().get(&url);
            if let Some(h) = header {
                r = r.header("Authorization", h);
            }
            r.send()
        };

        let good = geo_jwt::sign(&f.access_key, &f.secret, &feed::retrieve_claim(HELM, id));
        let response = get(Some(good)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), body.as_bytes());

        let expired = {
            let now = jsonwebtoken::get_current_timestamp();
            let claims = json!({"data": feed::retrieve_claim(HELM, id).to_string(), "jti": "x",
                                "iat": now - 600, "nbf": now - 605, "exp": now - 540});
            let jwt = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(f.secret.as_bytes()).unwrap(),
            )
            .unwrap();
            format!("GL-Geo {}:{jwt}", f.access_key)
        };
        let refused = [
            ("no header", None),
            (
                "wrong key",
                Some(geo_jwt::sign(
                    "nosuchkey0000000000",
                    &f.secret,
                    &feed::retrieve_claim(HELM, id),
                )),
            ),
            (
                "wrong secret",
                Some(geo_jwt::sign(
                    &f.access_key,
                    "wrong-secret-wrong-secret-wrong-secret!!",
                    &feed::retrieve_claim(HELM, id),
                )),
            ),
            ("expired", Some(expired)),
            (
                "another record",
                Some(geo_jwt::sign(
                    &f.access_key,
                    &f.secret,
                    &feed::retrieve_claim(HELM, id + 1),
                )),
            ),
            ("malformed", Some("GL-Geo garbage".into())),
            ("bearer", Some(format!("Bearer {}", f.token))),
        ];
        for (what, header) in refused {
            let response = get(header).await.unwrap();
            assert_eq!(response.status(), 401, "{backend:?} {what}");
            let text = response.text().await.unwrap();
            assert!(!text.contains("apiVersion"), "{what}: no byte of the blob");
        }

        // Unknown record: 404; missing file: 404 with geo_code FILE_NOT_FOUND.
        let other = format!("{}/api/v4/geo/retrieve/{HELM}/{}", f.primary.url, id + 1000);
        let signed = geo_jwt::sign(
            &f.access_key,
            &f.secret,
            &feed::retrieve_claim(HELM, id + 1000),
        );
        let response = client()
            .get(&other)
            .header("Authorization", signed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        std::fs::remove_file(f.primary.blob_file(&written.blob_path)).unwrap();
        let signed = geo_jwt::sign(&f.access_key, &f.secret, &feed::retrieve_claim(HELM, id));
        let response = client()
            .get(&url)
            .header("Authorization", signed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["geo_code"], "FILE_NOT_FOUND");
    }
}

/// The first `limit` events of the primary's feed, as a secondary reads them.
async fn events_page(f: &Fixture, limit: usize) -> feed::EventPage {
    let signed = geo_jwt::sign(&f.access_key, &f.secret, &feed::feed_claim("events"));
    client()
        .get(format!(
            "{}/api/v4/geo/events?after=0&limit={limit}",
            f.primary.url
        ))
        .header("Authorization", signed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_logged_in_order_with_gitlab_payloads() {
    for backend in sites::backends() {
        let f = fixture(backend, "idle_poll_ms = 50\n").await;
        let w = sites::put_helm(&f.primary, f.project, "stable", "one").await;
        sites::put_helm(&f.primary, f.project, "stable", "two").await;
        eventually(Duration::from_secs(20), "checksum", || async {
            state_of(&f, w.id).await.0 == 2
        })
        .await;
        let response = client()
            .delete(format!(
                "{}/api/v4/replicables/{HELM}/{}",
                f.primary.url, w.id
            ))
            .header("PRIVATE-TOKEN", &f.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);

        let page = events_page(&f, 100).await;
        let names: Vec<&str> = page.events.iter().map(|e| e.event_name.as_str()).collect();
        // The verifier is woken by the write, so the first checksum event
        // may come before or after the update's.
        assert_eq!(names[0], "created", "{backend:?}: {names:?}");
        assert_eq!(
            names.iter().filter(|n| **n == "updated").count(),
            1,
            "{backend:?}: {names:?}"
        );
        assert!(names.contains(&"checksum_succeeded"));
        assert_eq!(names.last(), Some(&"deleted"));
        let ids: Vec<i64> = page.events.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered");
        let deleted = page.events.last().unwrap();
        assert_eq!(deleted.payload["model_record_id"], w.id);
        assert_eq!(deleted.payload["blob_path"], w.blob_path);
        assert_eq!(
            deleted.payload["uploader_class"],
            "Packages::Helm::MetadataCacheUploader"
        );
        assert!(
            !f.primary.blob_file(&w.blob_path).exists(),
            "the blob is gone"
        );
        let it = f.primary.site.installed(HELM).unwrap();
        assert!(
            records::by_id(&f.primary.site.db, &it, w.id)
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// Concurrent writes share a group and its event statements: each written
/// record has its one event, a refused write none, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_writes_log_one_event_each() {
    for backend in sites::backends() {
        let f = fixture(backend, "idle_poll_ms = 50\n").await;
        let first = sites::put_helm(&f.primary, f.project, "c0", "v0").await;
        let channels: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        let writes = channels
            .iter()
            .map(|c| sites::put_helm(&f.primary, f.project, c, "v1"));
        let refused = async {
            let mut columns = serde_json::Map::new();
            columns.insert("project_id".into(), 9999.into());
            columns.insert("channel".into(), "m".into());
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("m"))]);
            geohost::primary::ingest::upsert(&f.primary.site, HELM, &columns, body).await
        };
        let (written, refused) = tokio::join!(futures::future::join_all(writes), refused);
        assert_eq!(
            refused.unwrap_err().to_string(),
            "project 9999 does not exist"
        );

        let page = events_page(&f, 500).await;
        let mut logged: Vec<(String, i64)> = page
            .events
            .iter()
            .filter(|e| e.event_name == "created" || e.event_name == "updated")
            .map(|e| {
                (
                    e.event_name.clone(),
                    e.payload["model_record_id"].as_i64().unwrap(),
                )
            })
            .collect();
        logged.sort();
        let mut expected: Vec<(String, i64)> = written
            .iter()
            .map(|w| {
                (
                    if w.created { "created" } else { "updated" }.to_string(),
                    w.id,
                )
            })
            .chain([("created".to_string(), first.id)])
            .collect();
        expected.sort();
        assert_eq!(logged, expected, "{backend:?}");
        assert_eq!(
            written.iter().filter(|w| !w.created).count(),
            1,
            "{backend:?}: c0 existed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_get_clear_errors_and_change_nothing() {
    let f = fixture(Backend::Sqlite, "idle_poll_ms = 50\n").await;
    let q = |s: &str| format!("project_id={}&{s}", f.project);
    let cases = [
        (
            q("channel=bad..channel"),
            Some(f.token.as_str()),
            422,
            "invalid Helm channel",
        ),
        (
            q("channel=ok&nonsense=1"),
            Some(f.token.as_str()),
            422,
            "no column `nonsense`",
        ),
        (
            q("channel=ok&object_storage_key=x"),
            Some(f.token.as_str()),
            422,
            "not by the writer",
        ),
        (
            "project_id=abc&channel=ok".to_string(),
            Some(f.token.as_str()),
            422,
            "must be an integer",
        ),
        (q("channel=ok"), None, 401, "401"),
        (q("channel=ok"), Some("ghst-wrong"), 401, "401"),
    ];
    for (query, token, status, message) in cases {
        let response = put(&f, &query, "x", token).await;
        assert_eq!(response.status(), status, "{query}");
        let text = response.text().await.unwrap();
        assert!(text.contains(message), "{query}: {text}");
    }
    let response = client()
        .put(format!(
            "{}/api/v4/replicables/no_such_type?a=1",
            f.primary.url
        ))
        .header("PRIVATE-TOKEN", &f.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let it = f.primary.site.installed(HELM).unwrap();
    assert!(
        records::page(&f.primary.site.db, &it, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing written"
    );
    assert!(
        f.primary
            .site
            .blobs
            .list_type(HELM)
            .await
            .unwrap()
            .is_empty(),
        "no blob left behind"
    );
}

/// GitLab's foreign key from a record to its project: a write for a project
/// that does not exist is refused with a 422 that names the project, and
/// leaves no row, state, event, blob or temporary object behind. The same
/// write for a project created afterwards succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_a_record_of_a_missing_project() {
    for backend in sites::backends() {
        let f = fixture(backend, "idle_poll_ms = 50\n").await;
        let db = &f.primary.site.db;
        let events = |db: &geohost::db::Db| {
            let db = db.clone();
            async move {
                db.fetch_one("SELECT COUNT(*) AS n FROM geo_events", &[])
                    .await
                    .unwrap()
                    .int("n")
                    .unwrap()
            }
        };
        let events_before = events(db).await;
        let missing = f.project + 1000;
        let response = put(
            &f,
            &format!("project_id={missing}&channel=stable"),
            "apiVersion: v1\n",
            Some(&f.token),
        )
        .await;
        assert_eq!(response.status(), 422, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            format!("project {missing} does not exist"),
            "{backend:?}"
        );
        let it = f.primary.site.installed(HELM).unwrap();
        assert!(
            records::page(db, &it, 0, 10).await.unwrap().is_empty(),
            "{backend:?}: no row"
        );
        let states = db
            .fetch_one(
                &format!(
                    "SELECT COUNT(*) AS n FROM {}",
                    ident(&it.identity.states_table())
                ),
                &[],
            )
            .await
            .unwrap()
            .int("n")
            .unwrap();
        assert_eq!(states, Some(0), "{backend:?}: no state row");
        assert_eq!(events(db).await, events_before, "{backend:?}: no event");
        let files = crate::faults::files_under(&f.primary.dir.join("blobs"));
        assert!(files.is_empty(), "{backend:?}: files left: {files:?}");

        // The same record for a project that exists is written.
        let response = put(
            &f,
            &format!("project_id={}&channel=stable", f.project),
            "apiVersion: v1\n",
            Some(&f.token),
        )
        .await;
        assert_eq!(response.status(), 201, "{backend:?}");
    }
}

/// On SQLite the verifier commits its results without waiting for the
/// disk (`Db::begin_unsynced`); the event feed syncs the write-ahead log
/// once before it hands out the `checksum_succeeded` events they wrote, so
/// no event id a secondary keeps can be lost to a power cut, and syncs
/// nothing when nothing unsynced was committed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_events_reach_the_disk_before_the_feed_serves_them() {
    // A write wakes the verifier; no idle polls in between.
    let f = fixture(Backend::Sqlite, "idle_poll_ms = 60000\n").await;
    let syncs = || geohost::metrics::SQLITE_WAL_SYNCS.get();
    let w = sites::put_helm(&f.primary, f.project, "stable", "one").await;
    eventually(Duration::from_secs(20), "checksum", || async {
        state_of(&f, w.id).await.0 == 2
    })
    .await;
    let before = syncs();
    let page = events_page(&f, 100).await;
    let names: Vec<&str> = page.events.iter().map(|e| e.event_name.as_str()).collect();
    assert_eq!(names, ["created", "checksum_succeeded"]);
    assert_eq!(syncs(), before + 1, "the log was synced before the answer");
    events_page(&f, 100).await;
    assert_eq!(syncs(), before + 1, "nothing unsynced since");
}
