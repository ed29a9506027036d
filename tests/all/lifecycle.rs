//! A type's lifecycle across restarts and refusals: types installed,
//! upgraded and rolled back through the admin API come back after a restart
//! (and the CLI sees them), a refused version (from the admin API, or
//! dropped into the plugins folder while the site was down) leaves the
//! schema exactly as it was, and a record the plugin traps on fails its own
//! primary verification only.

use crate::sites::{self, HELM, NPM, TestSite, eventually};
use crate::support::{fixture_component, fixture_component_path, sha256_hex};
use geohost::db::{Backend as DbBackend, Db, ident};
use geohost::primary::sites::NewSite;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(180);

/// Sites that ship only Helm (npm is installed through the API).
const ONLY_HELM: &str = "[plugins]\nbuiltin = [\"helm-metadata-cache\"]\n";

fn npm_component() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/dist/npm-metadata-cache.wasm"),
    )
    .unwrap()
}

pub(crate) async fn token(site: &TestSite) -> String {
    geohost::api::auth::create_token(&site.site.db, "ops")
        .await
        .unwrap()
        .1
}

/// Sends an admin request; returns the status and the JSON answer.
pub(crate) async fn admin(
    site: &TestSite,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", site.url))
        .header("PRIVATE-TOKEN", token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Runs the `geohost` binary; returns whether it succeeded, its stdout and stderr.
pub(crate) fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_installed_upgraded_and_rolled_back_through_the_api_come_back_after_a_restart() {
    for backend in sites::backends() {
        let mut primary =
            sites::primary_with(backend, &format!("idle_poll_ms = 50\n{ONLY_HELM}")).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let mut secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
            &format!("idle_poll_ms = 50\nconsistency_interval_secs = 2\n{ONLY_HELM}"),
        )
        .await;
        sites::put_helm(&primary, project, "stable", "one").await;
        let helm_v2 = fixture_component("helm-v2");
        // Installed (npm), upgraded (Helm 1.1.0, then 2.0.0 with new paths)
        // and rolled back (to 1.1.0), all through the admin API; none of
        // these components is in any folder of the sites.
        for site in [&primary, &secondary] {
            let token = token(site).await;
            let post = reqwest::Method::POST;
            let put = reqwest::Method::PUT;
            let (status, r) = admin(
                site,
                &token,
                post.clone(),
                "/api/v4/geo/plugins",
                npm_component(),
            )
            .await;
            assert_eq!(status, 201, "{backend:?}: {r}");
            let helm_path = format!("/api/v4/geo/plugins/{HELM}");
            let (status, r) = admin(site, &token, put.clone(), &helm_path, helm_v2.clone()).await;
            assert_eq!((status, r["version"].as_str()), (200, Some("1.1.0")), "{r}");
            let path_v2 = fixture_component("helm-path-v2");
            let (status, r) = admin(site, &token, put, &helm_path, path_v2).await;
            assert_eq!((status, r["version"].as_str()), (200, Some("2.0.0")), "{r}");
            let rollback = format!("{helm_path}/rollback");
            let (status, r) = admin(site, &token, post, &rollback, vec![]).await;
            assert_eq!((status, r["version"].as_str()), (200, Some("1.1.0")), "{r}");
        }

        primary.restart().await;
        secondary.restart().await;
        for site in [&primary, &secondary] {
            let helm = site.site.installed(HELM).expect("Helm is installed");
            assert_eq!(helm.plugin.sha256(), sha256_hex(&helm_v2), "{backend:?}");
            let npm = site.site.installed(NPM).expect("npm came back");
            assert_eq!(npm.identity.version, "1.0.0");
            let token = token(site).await;
            let (_, listing) = admin(
                site,
                &token,
                reqwest::Method::GET,
                "/api/v4/geo/plugins",
                vec![],
            )
            .await;
            for (name, version) in [(HELM, "1.1.0"), (NPM, "1.0.0")] {
                let row = listing["types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == name)
                    .unwrap_or_else(|| panic!("{name} listed: {listing}"));
                assert_eq!(row["installed"], true, "{listing}");
                assert_eq!(row["version"], version, "{listing}");
            }
        }

        // The CLI sees the same types as the running sites.
        let body = primary.dir.join("left-pad.json");
        std::fs::write(&body, sites::npm_metadata("left-pad", 1)).unwrap();
        let primary_config = primary.write_config();
        let (ok, out, err) = cli(&[
            "record",
            "put",
            "-c",
            primary_config.to_str().unwrap(),
            NPM,
            "--set",
            &format!("project_id={project}"),
            "--set",
            "package_name=left-pad",
            "--file",
            body.to_str().unwrap(),
        ]);
        assert!(ok, "{backend:?}: {err}");
        assert!(out.contains("\"created\":true"), "{out}");
        let secondary_config = secondary.write_config();
        let (ok, out, err) = cli(&["status", "-c", secondary_config.to_str().unwrap()]);
        assert!(ok, "{err}");
        let npm_title = &primary.site.installed(NPM).unwrap().identity.title_plural;
        assert!(out.contains(npm_title.as_str()), "{out}");
        let tracking = secondary.site.tracking().unwrap().clone();
        eventually(CONVERGE, "the npm record synced", || async {
            sites::registry_states_in(&tracking, NPM)
                .await
                .is_ok_and(|rows| rows.len() == 1 && rows.values().all(|s| *s == (2, 2)))
        })
        .await;
        let (ok, out, err) = cli(&[
            "registry",
            "resync",
            "-c",
            secondary_config.to_str().unwrap(),
            NPM,
            "--all",
        ]);
        assert!(ok, "{err}\n{out}");
    }
}

/// The schema of a database, as text: every table's columns, indexes and
/// constraints (the catalog's own definitions).
pub(crate) async fn schema(db: &Db) -> String {
    let sql = match db.backend() {
        DbBackend::Postgres => {
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
               || ' ' || COALESCE(column_default, '') || ' ' \
               || COALESCE(character_maximum_length::text, '') AS line \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
             UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) \
               FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
             ORDER BY 1"
        }
        DbBackend::Sqlite => {
            "SELECT type || ' ' || name || ' ' || COALESCE(sql, '') AS line FROM sqlite_master \
             ORDER BY name"
        }
    };
    db.fetch_all(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.text("line").unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_changes_no_schema_from_the_api_or_the_folder_at_startup() {
    for backend in sites::backends() {
        let folder = tempfile::tempdir().unwrap();
        let mut primary = sites::primary_with(
            backend,
            &format!(
                "idle_poll_ms = 50\n[plugins]\ndir = {:?}\nwatch_interval_ms = 100\n",
                folder.path().display().to_string()
            ),
        )
        .await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        sites::put_helm(&primary, project, "stable", "one").await;
        // Helm 1.5.0 adds a column `note` and its paths escape the root.
        let bad = fixture_component("helm-column-escape");

        let before = schema(&primary.site.db).await;
        // Dropped into the plugins folder while the site is down: at
        // startup it is validated as an upgrade before anything changes,
        // refused and reported; the site starts on the version it ran.
        primary.stop().await;
        let file = folder.path().join("helm.wasm");
        std::fs::copy(fixture_component_path("helm-column-escape"), &file).unwrap();
        primary.restart().await;
        let failures = primary.site.swaps.failures();
        assert!(
            failures
                .iter()
                .any(|f| f.source == file.display().to_string()
                    && f.error.contains("invalid blob path")),
            "{backend:?}: {failures:?}"
        );
        assert_eq!(
            primary.site.installed(HELM).unwrap().identity.version,
            "1.0.0"
        );
        assert_eq!(schema(&primary.site.db).await, before, "{backend:?}");
        // The site works: writes go through the running version.
        sites::put_helm(&primary, project, "beta", "two").await;
        // The watcher took the file as handled: it is not retried.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(schema(&primary.site.db).await, before, "{backend:?}");

        // From the admin API: refused, and the model table keeps its columns.
        let token = token(&primary).await;
        let path = format!("/api/v4/geo/plugins/{HELM}");
        let (status, r) = admin(&primary, &token, reqwest::Method::PUT, &path, bad).await;
        assert_eq!(status, 422, "{backend:?}: {r}");
        assert!(
            r["message"].as_str().unwrap().contains("invalid blob path"),
            "{r}"
        );
        assert_eq!(schema(&primary.site.db).await, before, "{backend:?}");
    }
}

/// A type may name a model column as the host names a column of its
/// `<name>_states` table: reads of the record keep the two apart (the
/// record's value in its columns, the primary's checksum beside them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_column_named_as_a_state_column_is_not_mixed_with_it() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let request = geohost::swap::Request {
            expect_name: None,
            source: "test".into(),
        };
        geohost::swap::activate(
            &primary.site,
            fixture_component("helm-state-column"),
            request,
        )
        .await
        .unwrap();
        let mut columns = serde_json::Map::new();
        columns.insert("project_id".into(), project.into());
        columns.insert("channel".into(), "stable".into());
        columns.insert("verification_checksum".into(), "the writer's own".into());
        let body = "apiVersion: v1\nentries: {}\n";
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
        let written = geohost::primary::ingest::upsert(&primary.site, HELM, &columns, stream)
            .await
            .unwrap();
        let it = primary.site.installed(HELM).unwrap();
        let states = ident(&it.identity.states_table());
        let fk = ident(&it.identity.foreign_key());
        let sql = format!("SELECT verification_state FROM {states} WHERE {fk} = $1");
        eventually(CONVERGE, "the record verified", || async {
            let row = primary
                .site
                .db
                .fetch_one(&sql, &[written.id.into()])
                .await
                .unwrap();
            row.i16("verification_state").unwrap() == 2
        })
        .await;
        let record = geohost::primary::records::by_id(&primary.site.db, &it, written.id)
            .await
            .unwrap()
            .unwrap();
        let feed = record.to_feed(&it);
        assert_eq!(
            feed.columns["verification_checksum"], "the writer's own",
            "{backend:?}"
        );
        assert_eq!(
            feed.verification_checksum.as_deref(),
            Some(sha256_hex(body.as_bytes()).as_str()),
            "{backend:?}"
        );
        assert_eq!(
            record.verification_state,
            geohost::states::VerificationState::Succeeded,
            "{backend:?}"
        );
    }
}

/// The verifier hashes the path a states row holds; it asks the type only
/// for rows without one (written before the column existed), as these
/// rows are here. A trap on one of them fails that record alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_record_fails_its_own_primary_verification_and_no_other() {
    const NAME: &str = "fixture_poisoned_paths";
    for backend in sites::backends() {
        let primary = sites::primary_with(backend, "enabled = false\n").await;
        let [_, a, ..] = sites::group_tree(&primary).await;
        let project = sites::project(&primary, a, "p").await;
        let request = geohost::swap::Request {
            expect_name: None,
            source: "test".into(),
        };
        geohost::swap::activate(&primary.site, fixture_component("poisoned-paths"), request)
            .await
            .unwrap();
        for i in 1..=4 {
            let mut columns = serde_json::Map::new();
            columns.insert("project_id".into(), project.into());
            columns.insert("file".into(), format!("f{i}").into());
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                format!("blob {i}"),
            ))]);
            let written = geohost::primary::ingest::upsert(&primary.site, NAME, &columns, body)
                .await
                .unwrap();
            assert_eq!(written.id, i);
        }
        let states = ident(&format!("{NAME}_states"));
        primary
            .site
            .db
            .execute(&format!("UPDATE {states} SET blob_path = NULL"), &[])
            .await
            .unwrap();
        let it = primary.site.installed(NAME).unwrap();
        while geohost::primary::verify::verify_round(&primary.site, &it, 10, 2, 1)
            .await
            .unwrap()
            > 0
        {}
        let sql = format!(
            "SELECT {} AS id, verification_state, verification_failure FROM {states} ORDER BY 1",
            ident(&format!("{NAME}_id")),
        );
        let rows = primary.site.db.fetch_all(&sql, &[]).await.unwrap();
        for row in rows {
            let id = row.i64("id").unwrap();
            let state = row.i16("verification_state").unwrap();
            let failure = row.opt_text("verification_failure").unwrap();
            if id == 2 {
                assert_eq!(state, 3, "{backend:?}");
                let failure = failure.unwrap();
                assert!(
                    failure.contains("the plugin failed on this record"),
                    "{failure}"
                );
            } else {
                assert_eq!((state, failure), (2, None), "{backend:?} record {id}");
            }
        }
    }
}
