//! Issue 15: a site keeps its duties running and says when they fail, and
//! its settings have bounds.

use crate::sites::{self, Backend, HELM, TestSite};
use crate::support::helm_blob_path;
use geohost::primary::sites::NewSite;
use serde_json::{Value, json};
use std::time::Duration;

async fn token(site: &TestSite) -> String {
    geohost::api::auth::create_token(&site.site.db, "ops")
        .await
        .expect("a token")
        .1
}

/// A secondary named `secondary` of `primary`, with these `[workers]`
/// settings.
async fn secondary(backend: Backend, primary: &TestSite, workers: &str) -> TestSite {
    let new = NewSite {
        name: "secondary".into(),
        ..NewSite::default()
    };
    sites::secondary_with(backend, primary, new, workers).await
}

/// Registries synced on a secondary.
async fn synced(secondary: &TestSite) -> usize {
    sites::registry_states_in(secondary.site.tracking().unwrap(), HELM)
        .await
        .unwrap()
        .values()
        .filter(|(state, _)| *state == 2)
        .count()
}

async fn own_status(site: &TestSite, token: &str) -> Value {
    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/v4/geo_sites/status", site.url))
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.as_array()
        .and_then(|l| l.first())
        .cloned()
        .expect("the site's own status")
}

async fn metrics(site: &TestSite, token: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", site.url))
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample of `metric` whose labels contain `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|w| l.contains(w)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duty_made_to_panic_is_restarted_and_reported() {
    let mut primary = sites::primary(Backend::Sqlite).await;
    let workers = "idle_poll_ms = 50\nconsistency_interval_secs = 2\n";
    let mut secondary = secondary(Backend::Sqlite, &primary, workers).await;
    let token = token(&secondary).await;
    let [_, group, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, group, "p").await;
    sites::put_helm(
        &primary,
        project,
        "stable",
        &sites::index_yaml(project, "stable", 1),
    )
    .await;
    sites::eventually(
        Duration::from_secs(60),
        "the first record synced",
        || async { synced(&secondary).await == 1 },
    )
    .await;
    assert_eq!(own_status(&secondary, &token).await["healthy"], true);

    // The event cursor panics three times in a row (the test hook), in
    // the middle of its loop and then at each restart.
    secondary.site.duties.inject_panics("event-cursor", 3);
    let injected = std::time::Instant::now();
    sites::eventually(Duration::from_secs(60), "the site unhealthy", || async {
        let status = own_status(&secondary, &token).await;
        status["healthy"] == false
    })
    .await;
    let status = own_status(&secondary, &token).await;
    let health = status["health"].as_str().unwrap();
    assert!(
        health.contains("event-cursor") && health.contains("panicked"),
        "{health}"
    );
    let cursor = status["duties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "event-cursor")
        .unwrap();
    assert_eq!(cursor["state"], "failing", "{cursor}");
    assert!(cursor["restarts"].as_u64().unwrap() >= 2, "{cursor}");
    let text = metrics(&secondary, &token).await;
    let duty = ["duty=\"event-cursor\"", "site=\"secondary\""];
    assert_eq!(sample(&text, "geohost_duty_up", &duty), Some(0.0), "{text}");
    assert!(sample(&text, "geohost_duty_failures_total", &duty).unwrap() >= 3.0);
    assert!(sample(&text, "geohost_duty_restarts_total", &duty).unwrap() >= 2.0);

    // After the third panic it runs again, the site is healthy again and
    // events flow.
    let unhealthy_after = injected.elapsed();
    sites::eventually(
        Duration::from_secs(60),
        "the site healthy again",
        || async { own_status(&secondary, &token).await["healthy"] == true },
    )
    .await;
    eprintln!(
        "unhealthy {unhealthy_after:?} after the hook, healthy again {:?} after it",
        injected.elapsed()
    );
    sites::put_helm(
        &primary,
        project,
        "beta",
        &sites::index_yaml(project, "beta", 1),
    )
    .await;
    sites::eventually(Duration::from_secs(60), "the new record synced", || async {
        synced(&secondary).await == 2
    })
    .await;
    let text = metrics(&secondary, &token).await;
    assert_eq!(sample(&text, "geohost_duty_up", &duty), Some(1.0));
    secondary.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_settings_are_bounded_at_the_api_and_the_cli() {
    let mut primary = sites::primary(Backend::Sqlite).await;
    let token = token(&primary).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/api/v4/geo_sites", primary.url))
        .header("PRIVATE-TOKEN", &token)
        .json(&json!({"name": "eu", "url": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    for (body, bound) in [
        (
            json!({"minimum_reverification_interval": 2147483647}),
            "between 1 and 3650 days",
        ),
        (
            json!({"minimum_reverification_interval": 0}),
            "between 1 and 3650 days",
        ),
        (json!({"files_max_capacity": 0}), "between 1 and 10000"),
        (
            json!({"verification_max_capacity": 10001}),
            "between 1 and 10000",
        ),
        (json!({"url": "ftp://x"}), "http:// or https://"),
    ] {
        let answer = client
            .put(format!("{}/api/v4/geo_sites/{id}", primary.url))
            .header("PRIVATE-TOKEN", &token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422, "{body}");
        let message: Value = answer.json().await.unwrap();
        assert!(
            message["message"].as_str().unwrap().contains(bound),
            "{body}: {message}"
        );
    }
    let answer = client
        .post(format!("{}/api/v4/geo_sites", primary.url))
        .header("PRIVATE-TOKEN", &token)
        .json(&json!({"name": "us", "url": "http://127.0.0.1:8", "files_max_capacity": 20000}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);

    // The CLI checks the same bounds before it touches anything.
    let config = primary.write_config();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .expect("geohost runs")
    };
    let id = id.to_string();
    let refused = cli(&[
        "site",
        "update",
        &id,
        "--minimum-reverification-interval",
        "99999",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("1..=3650"), "{stderr}");
    let refused = cli(&[
        "site",
        "add",
        "--name",
        "x",
        "--url",
        "http://h",
        "--files-max-capacity",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1..=10000"));
    let changed = cli(&[
        "site",
        "update",
        &id,
        "--minimum-reverification-interval",
        "30",
    ]);
    assert!(changed.status.success(), "{changed:?}");
    let settings: Value = serde_json::from_slice(&changed.stdout).unwrap();
    assert_eq!(settings["minimum_reverification_interval"], 30);
    primary.stop().await;
}

/// Issue 15's measured bug: on PostgreSQL, event ids come from a sequence
/// and become visible at commit, so with concurrent writers the cursor
/// passed ids whose transactions committed a moment later, and those
/// changes waited for the consistency pass. Here every tenth event's
/// transaction is held open on purpose (a trigger sleeps after the event
/// row is inserted), ten writers run at once, each through its own opening
/// of the site (as `geohost admin` writes beside the server are: one
/// process groups its concurrent writes into one transaction, so it is
/// separate openings whose transactions overlap), the consistency pass never
/// runs after the start and the primary does not checksum (so no
/// `checksum_succeeded` event repairs a missed update): every create and
/// update must still arrive through the event feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_skipped_when_commits_come_out_of_id_order() {
    if !sites::backends().contains(&Backend::Postgres) {
        eprintln!("note: needs PostgreSQL (GEOHOST_TEST_POSTGRES_URL); skipped");
        return;
    }
    const WRITERS: i64 = 10;
    const RECORDS_PER_WRITER: i64 = 40;
    const VERSIONS: u32 = 3; // a create and two updates each: 1,200 events
    let mut primary = sites::primary_with(Backend::Postgres, "enabled = false\n").await;
    primary
        .site
        .db
        .execute_script(
            "CREATE FUNCTION hold_some_commits() RETURNS trigger AS $$ BEGIN \
               IF NEW.id % 10 = 0 THEN PERFORM pg_sleep(0.8); \
               ELSE PERFORM pg_sleep(random() * 0.02); END IF; \
               RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER hold_some_commits AFTER INSERT ON geo_event_log \
               FOR EACH ROW EXECUTE FUNCTION hold_some_commits()",
        )
        .await
        .unwrap();
    let [_, group, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, group, "p").await;
    let mut secondary = secondary(
        Backend::Postgres,
        &primary,
        "idle_poll_ms = 50\nconsistency_interval_secs = 86400\n",
    )
    .await;
    let tracking = secondary.site.tracking().unwrap().clone();
    // The cursor has its starting point before the first write.
    sites::eventually(Duration::from_secs(30), "the cursor to start", || async {
        geohost::secondary::cursor::position(&tracking)
            .await
            .unwrap()
            .is_some()
    })
    .await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut config = primary.site.config.clone();
            config.database.max_connections = Some(2);
            tokio::spawn(async move {
                let site =
                    geohost::runtime::open_for_command(config, geohost::runtime::Blobs::Open)
                        .await
                        .expect("another opening of the primary");
                for version in 1..=VERSIONS {
                    for r in 0..RECORDS_PER_WRITER {
                        let channel = format!("w{w}r{r}");
                        let mut columns = serde_json::Map::new();
                        columns.insert("project_id".into(), project.into());
                        columns.insert("channel".into(), channel.clone().into());
                        let body = sites::index_yaml(project, &channel, version);
                        let body = futures::stream::iter([Ok::<_, std::io::Error>(
                            bytes::Bytes::from(body),
                        )]);
                        geohost::primary::ingest::upsert(&site, HELM, &columns, body)
                            .await
                            .expect("write succeeds");
                    }
                }
            })
        })
        .collect();
    let mut most_gaps = 0;
    for writer in writers {
        while !writer.is_finished() {
            let gaps = geohost::secondary::cursor::gaps(&tracking).await.unwrap();
            most_gaps = most_gaps.max(gaps.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writer.await.unwrap();
    }
    let events = primary
        .site
        .db
        .fetch_one(
            "SELECT COUNT(*) AS n, MAX(id) AS last FROM geo_event_log",
            &[],
        )
        .await
        .unwrap();
    let (count, last) = (events.i64("n").unwrap(), events.i64("last").unwrap());
    assert!(count >= 1000, "{count} events");

    let records = primary
        .site
        .db
        .fetch_all(
            "SELECT id FROM packages_helm_metadata_caches ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let expected = (WRITERS * RECORDS_PER_WRITER) as usize;
    assert_eq!(records.len(), expected);
    let started = std::time::Instant::now();
    sites::eventually(
        Duration::from_secs(120),
        "every create and update on the secondary",
        || async {
            let states = sites::registry_states_in(&tracking, HELM).await.unwrap();
            if states.len() < expected || states.values().any(|(s, _)| *s != 2) {
                return false;
            }
            // The latest content of every record, byte for byte.
            let mut same = true;
            for w in 0..WRITERS {
                for r in 0..RECORDS_PER_WRITER {
                    let path = helm_blob_path(project, &format!("w{w}r{r}"));
                    let theirs = std::fs::read(primary.blob_file(&path)).ok();
                    let ours = std::fs::read(secondary.blob_file(&path)).ok();
                    same &= theirs.is_some() && theirs == ours;
                }
            }
            same
        },
    )
    .await;
    let converged = started.elapsed();
    let position = geohost::secondary::cursor::position(&tracking)
        .await
        .unwrap();
    assert_eq!(position, Some(last), "the cursor read the whole log");
    assert!(
        most_gaps > 0,
        "the test must make the cursor meet transactions committed out of id order"
    );
    eprintln!(
        "{count} events, up to {most_gaps} gaps tracked at once, converged {converged:?} after the last write"
    );
    secondary.stop().await;
    primary.stop().await;
}

/// A bulk reverify asked through GraphQL is kept: a restart in the middle
/// resumes it after the last batch done, and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_reverify_of_10000_registries_completes_after_a_restart() {
    const ROWS: i64 = 10_000;
    const FIRST: i64 = 1_000_000;
    for backend in sites::backends() {
        let mut primary = sites::primary(backend).await;
        let mut secondary = secondary(
            backend,
            &primary,
            "idle_poll_ms = 50\nbulk_update_pause_ms = 300\n",
        )
        .await;
        // Replication of the type off on the secondary: no consistency pass
        // prunes these registries of records the primary does not have, no
        // verifier touches them; the bulk job alone changes them.
        let it = secondary.site.installed(HELM).unwrap();
        secondary
            .site
            .db
            .execute(
                "INSERT INTO feature_flags (name, enabled) VALUES ($1, $2)",
                &[it.identity.feature_flag().into(), false.into()],
            )
            .await
            .unwrap();
        let registry = geohost::secondary::Registry::of(&it);
        let tracking = secondary.site.tracking().unwrap().clone();
        let ids: Vec<i64> = (FIRST..FIRST + ROWS).collect();
        registry.insert_missing(&tracking, &ids).await.unwrap();
        tracking
            .execute(
                &format!(
                    "UPDATE {} SET state = 2, verification_state = 2",
                    registry.table()
                ),
                &[],
            )
            .await
            .unwrap();
        drop(it);
        let pending = format!(
            "SELECT COUNT(*) AS n FROM {} WHERE verification_state = 0",
            registry.table()
        );
        let token = token(&secondary).await;
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/api/graphql", secondary.url))
            .header("PRIVATE-TOKEN", &token)
            .json(
                &json!({"query": "mutation { geoRegistriesBulkUpdate(input: \
                {registryClass: PACKAGES_HELM_METADATA_CACHE_REGISTRY, action: REVERIFY_ALL}) \
                { registryClass errors } }"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["data"]["geoRegistriesBulkUpdate"]["errors"],
            json!([]),
            "{answer}"
        );

        // Restart once a few batches are done.
        let count = |db: geohost::db::Db| {
            let pending = pending.clone();
            async move { db.fetch_one(&pending, &[]).await.unwrap().i64("n").unwrap() }
        };
        sites::eventually(Duration::from_secs(60), "two batches done", || {
            let db = tracking.clone();
            async move { count(db).await >= 2_000 }
        })
        .await;
        secondary.restart().await;
        let restarted = std::time::Instant::now();
        let tracking = secondary.site.tracking().unwrap().clone();
        let at_restart = count(tracking.clone()).await;
        assert!(
            at_restart < ROWS,
            "{backend:?}: the job ended before the restart"
        );
        sites::eventually(Duration::from_secs(120), "the job to complete", || {
            let db = tracking.clone();
            async move {
                let jobs = geohost::secondary::bulk::jobs(&db, 1).await.unwrap();
                jobs[0].state != geohost::secondary::bulk::JobState::Queued
            }
        })
        .await;
        assert_eq!(count(tracking.clone()).await, ROWS, "{backend:?}");
        let jobs = geohost::secondary::bulk::jobs(&tracking, 10).await.unwrap();
        let job = &jobs[0];
        assert_eq!(
            job.state,
            geohost::secondary::bulk::JobState::Done,
            "{backend:?}: {job:?}"
        );
        assert_eq!(job.rows, ROWS, "{backend:?}: each row changed once");
        eprintln!(
            "{backend:?}: {at_restart} of {ROWS} done at the restart; {} batches in all; done {:?} after the restart",
            job.batches,
            restarted.elapsed()
        );
        secondary.stop().await;
        primary.stop().await;
    }
}

/// A record whose event never reached the secondary has no registry row
/// until the next consistency pass; the secondary's status counts it as
/// not synced (it used to read "synced 2 / total 2 (100%)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_registry_shows_as_not_synced_in_the_status() {
    let mut primary = sites::primary(Backend::Sqlite).await;
    let [_, group, ..] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, group, "p").await;
    let mut secondary = secondary(
        Backend::Sqlite,
        &primary,
        "idle_poll_ms = 50\nconsistency_interval_secs = 3600\n",
    )
    .await;
    let token = token(&secondary).await;
    for channel in ["a", "b"] {
        sites::put_helm(&primary, project, channel, "v1").await;
    }
    sites::eventually(Duration::from_secs(60), "two records synced", || async {
        synced(&secondary).await == 2
    })
    .await;
    // Three writes whose events are never published (the type's feature
    // flag off on the primary): as if the cursor had missed them.
    let flag = "geo_packages_helm_metadata_cache_replication";
    primary
        .site
        .db
        .execute(
            "INSERT INTO feature_flags (name, enabled) VALUES ($1, $2)",
            &[flag.into(), false.into()],
        )
        .await
        .unwrap();
    for channel in ["c", "d", "e"] {
        sites::put_helm(&primary, project, channel, "v1").await;
    }
    let status = own_status(&secondary, &token).await;
    let field = |suffix: &str| status[format!("packages_helm_metadata_caches{suffix}")].clone();
    assert_eq!(field("_registry_count"), 2, "{status:#}");
    assert_eq!(field("_synced_count"), 2);
    assert_eq!(
        field("_count"),
        5,
        "the three records without a registry count"
    );
    assert_eq!(field("_synced_in_percentage"), "40.00%");

    // `geohost status` says the same.
    let config = secondary.write_config();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(["status", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("succeeded 2 / total 5 (40%)"), "{text}");
    secondary.stop().await;
    primary.stop().await;
}
