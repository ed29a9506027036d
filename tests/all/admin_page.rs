//! The admin web page in a real browser: Debian's headless Chromium driven
//! through chromedriver (WebDriver, `fantoccini`) against a real primary and
//! secondary. The page loads with the token (and refuses a wrong one), shows
//! the counts the databases hold, a filter narrows the table, and a resync
//! click changes that registry on the secondary (checked in its database).
//! Screenshots go to `target/artifacts/`.
//!
//! `GEOHOST_TEST_CHROMEDRIVER` names chromedriver (`cargo xtask test` sets
//! it); with it set, a missing browser fails the test. Unset, the test uses
//! `/usr/bin/chromedriver` if present and otherwise skips with a note.

use crate::sites::{self, Backend, HELM, TestSite, eventually};
use fantoccini::{Client, ClientBuilder, Locator};
use geohost::db::Db;
use geohost::primary::sites::NewSite;
use geohost::secondary::Registry;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(90);
/// How long the page may take to show what the test waits for (it polls
/// every 5 s, and a secondary reports its status every second here).
const PAGE: Duration = Duration::from_secs(45);
/// Records on the primary: more than one page of the table (50).
const RECORDS: i64 = 55;
const WORKERS: &str =
    "idle_poll_ms = 50\nconsistency_interval_secs = 2\nstatus_interval_secs = 1\n";

/// Where chromedriver and chromium are, or `None` to skip.
fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from(
        std::env::var("GEOHOST_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    match std::env::var("GEOHOST_TEST_CHROMEDRIVER") {
        Ok(driver) => {
            let driver = PathBuf::from(driver);
            assert!(
                driver.is_file() && chromium.is_file(),
                "GEOHOST_TEST_CHROMEDRIVER is set but {} or {} is missing \
                 (apt-get install chromium chromium-driver; cargo xtask test does)",
                driver.display(),
                chromium.display()
            );
            Some((driver, chromium))
        }
        Err(_) => {
            let driver = PathBuf::from("/usr/bin/chromedriver");
            if driver.is_file() && chromium.is_file() {
                Some((driver, chromium))
            } else {
                eprintln!(
                    "note: no chromedriver/chromium (GEOHOST_TEST_CHROMEDRIVER unset): \
                     skipping the browser test"
                );
                None
            }
        }
    }
}

/// A chromedriver on a free loopback port, in its own process group, which
/// is killed (with the browsers it started) on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start(driver: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver {
            child,
            port,
            _profile: tempfile::TempDir::new().unwrap(),
        }
    }

    /// A headless Chromium session with a fresh profile, laptop-sized.
    async fn session(&self, chromium: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--window-size=1440,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(
            "--user-data-dir={}",
            self._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group holds chromedriver and the browsers it started: only
        // processes this test started.
        let group = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// `target/artifacts/` (under `CARGO_TARGET_DIR` when set).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `script` (a function body) in the page until it returns what
/// `done` accepts; returns that value.
async fn until(client: &Client, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < PAGE {
        last = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; last value {last}");
}

/// The model record ids of the rows the table shows.
const SHOWN_RECORDS: &str = "return [...document.querySelectorAll('#registry-rows tr[data-registry]')]\
     .map(tr => Number(tr.dataset.record));";

async fn sign_in(client: &Client, token: &str) {
    let input = client
        .wait()
        .at_most(PAGE)
        .for_element(Locator::Id("token"))
        .await
        .expect("the token form");
    input.clear().await.unwrap();
    // Typed and submitted from the keyboard (Enter).
    input.send_keys(&format!("{token}\u{E007}")).await.unwrap();
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// A primary with [`RECORDS`] records and a secondary replicating them all,
/// converged; then one registry failed on the secondary (retry due in 30
/// days, so only a resync brings it back).
async fn pair(backend: Backend) -> (TestSite, TestSite, i64, i64) {
    let primary = sites::primary(backend).await;
    let [_, a, _, _, _] = sites::group_tree(&primary).await;
    let project = sites::project(&primary, a, "charts").await;
    let mut ids = Vec::new();
    for i in 0..RECORDS as u32 {
        let channel = if i == 3 {
            "nightly".to_string()
        } else {
            format!("stable-{i}")
        };
        let w = sites::put_helm(
            &primary,
            project,
            &channel,
            &sites::index_yaml(project, &channel, i),
        )
        .await;
        ids.push(w.id);
    }
    let secondary = sites::secondary_with(
        backend,
        &primary,
        NewSite {
            name: "secondary".into(),
            ..Default::default()
        },
        WORKERS,
    )
    .await;
    let it = secondary.site.installed(HELM).unwrap();
    let tracking = secondary.site.tracking().unwrap().clone();
    eventually(CONVERGE, "every registry synced and verified", || async {
        let c = geohost::secondary::status_counts(&tracking, &it)
            .await
            .unwrap();
        c.registry_count == RECORDS && c.verified_count == RECORDS
    })
    .await;
    let failed = ids[6];
    let registry = Registry::of(&it);
    tracking
        .execute(
            &format!(
                "UPDATE {} SET state = 3, retry_count = 1, retry_at = $1, \
                 last_sync_failure = 'Downloaded file checksum mismatch' WHERE {} = $2",
                registry.table(),
                registry.fk()
            ),
            &[
                (Db::now() + chrono::Duration::days(30)).into(),
                failed.into(),
            ],
        )
        .await
        .unwrap();
    (primary, secondary, failed, ids[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_shows_sites_filters_registries_and_resyncs_in_chromium() {
    let Some((driver_path, chromium)) = browser_paths() else {
        return;
    };
    let (primary, secondary, failed, nightly) = pair(Backend::Sqlite).await;
    let (_, primary_token) = geohost::api::auth::create_token(&primary.site.db, "page")
        .await
        .unwrap();
    let (_, secondary_token) = geohost::api::auth::create_token(&secondary.site.db, "page")
        .await
        .unwrap();
    let it = secondary.site.installed(HELM).unwrap();
    let tracking = secondary.site.tracking().unwrap().clone();
    let counts = geohost::secondary::status_counts(&tracking, &it)
        .await
        .unwrap();
    assert_eq!(
        (
            counts.registry_count,
            counts.synced_count,
            counts.failed_count
        ),
        (RECORDS, RECORDS - 1, 1)
    );

    let driver = Driver::start(&driver_path).await;
    let client = driver.session(&chromium).await;

    // Sites, on the primary: a wrong token is refused with a clear message.
    client
        .goto(&format!("{}/admin/geo/sites", primary.url))
        .await
        .unwrap();
    sign_in(&client, "not-a-token").await;
    let refused = until(
        &client,
        "the wrong-token message",
        "return document.getElementById('login-error').textContent;",
        |v| v.as_str().is_some_and(|t| t.contains("refused")),
    )
    .await;
    assert!(refused.as_str().unwrap().contains("401"), "{refused}");
    screenshot(&client, "admin-geo-token-refused.png").await;
    sign_in(&client, &primary_token).await;
    // The secondary's card shows the counts of its tracking database.
    let shown = until(
        &client,
        "the secondary's counts on the Sites view",
        &format!(
            "const row = document.querySelector('[data-site=\"secondary\"] tr[data-type=\"{HELM}\"]');
             if (!row) return null;
             const v = k => row.querySelector(`[data-count=\"${{k}}\"]`);
             return {{ synced: Number(v('synced').dataset.value), verified: Number(v('verified').dataset.value),
                      failed: Number(v('failed').dataset.value), total: v('total').textContent,
                      text: v('synced').textContent }};"
        ),
        |v| v["failed"] == json!(1) && v["synced"] == json!(RECORDS - 1),
    )
    .await;
    assert_eq!(shown["total"], json!(counts.registry_count.to_string()));
    assert_eq!(shown["verified"], json!(counts.verified_count));
    assert_eq!(shown["text"], json!("54 of 55 (98.18%)"));
    // The primary's card shows its checksums.
    until(
        &client,
        "the primary's checksums",
        &format!(
            "const row = document.querySelector('.site tr[data-type=\"{HELM}\"] [data-count=\"verified\"]');
             return row ? Number(row.dataset.value) : null;"
        ),
        |v| v == &json!(RECORDS),
    )
    .await;
    let health = client
        .execute(
            "return [...document.querySelectorAll('[data-health]')].map(e => e.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(health, json!(["Healthy", "Healthy"]));
    screenshot(&client, "admin-geo-sites.png").await;

    // Replication details, on the secondary (its own token: another origin,
    // another tracking database).
    client
        .goto(&format!("{}/admin/geo/replication/{HELM}", secondary.url))
        .await
        .unwrap();
    sign_in(&client, &secondary_token).await;
    let all = until(
        &client,
        "the first page of registries",
        SHOWN_RECORDS,
        |v| v.as_array().is_some_and(|a| a.len() == 50),
    )
    .await;
    assert!(all.as_array().unwrap().contains(&json!(failed)));
    let caption = client
        .find(Locator::Id("registries-caption"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(caption.contains("1–50 of 55 registries"), "{caption}");
    screenshot(&client, "admin-geo-replication.png").await;
    // Every control has an accessible name; every bar its values.
    let unlabelled = client
        .execute(
            "return [...document.querySelectorAll('input, select, button')]
                 .filter(e => !e.closest('[hidden]'))
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !e.textContent.trim())
                 .map(e => e.outerHTML);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "controls without a name");

    // Reverify two selected rows: their verification runs again.
    let registry = Registry::of(&it);
    let picked: Vec<i64> = all.as_array().unwrap()[1..3]
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut verified_before = Vec::new();
    for record in &picked {
        let row = registry.get(&tracking, *record).await.unwrap().unwrap();
        verified_before.push(row.verified_at.expect("verified"));
        client
            .find(Locator::Css(&format!(
                "tr[data-record=\"{record}\"] input[type=checkbox]"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    let bulk = client.find(Locator::Id("reverify-selected")).await.unwrap();
    assert_eq!(bulk.text().await.unwrap(), "Reverify selected (2)");
    bulk.click().await.unwrap();
    eventually(
        CONVERGE,
        "the selected registries verified again",
        || async {
            let mut again = true;
            for (record, before) in picked.iter().zip(&verified_before) {
                let row = registry.get(&tracking, *record).await.unwrap().unwrap();
                again &= row.verification_state == geohost::states::VerificationState::Succeeded
                    && row.verified_at.is_some_and(|at| at > *before);
            }
            again
        },
    )
    .await;
    // Pages: the next one holds the last 5, Previous comes back.
    client
        .find(Locator::Id("page-next"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let second = until(&client, "the second page", SHOWN_RECORDS, |v| {
        v.as_array().is_some_and(|a| a.len() == 5)
    })
    .await;
    let mut seen: Vec<Value> = all.as_array().unwrap().clone();
    seen.extend(second.as_array().unwrap().iter().cloned());
    seen.sort_by_key(|v| v.as_i64());
    seen.dedup();
    assert_eq!(seen.len(), RECORDS as usize, "pages overlap: {seen:?}");
    let range = client
        .find(Locator::Id("page-range"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(range, "Showing 51–55 of 55");
    client
        .find(Locator::Id("page-prev"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&client, "the first page again", SHOWN_RECORDS, |v| {
        v == &all
    })
    .await;

    // A keyword narrows the table to the matching record (the primary
    // searches its records' text).
    let keyword = client.find(Locator::Id("filter-keyword")).await.unwrap();
    keyword.send_keys("nightly\u{E007}").await.unwrap();
    until(&client, "the keyword filter", SHOWN_RECORDS, |v| {
        v == &json!([nightly])
    })
    .await;
    assert_eq!(
        client
            .execute("return location.search;", vec![])
            .await
            .unwrap(),
        json!("?keyword=nightly")
    );
    keyword.clear().await.unwrap();
    keyword.send_keys("\u{E007}").await.unwrap();
    until(&client, "the keyword cleared", SHOWN_RECORDS, |v| {
        v.as_array().is_some_and(|a| a.len() == 50)
    })
    .await;

    // The replication-state filter narrows it to the failed registry.
    client
        .find(Locator::Css("#filter-replication option[value=\"FAILED\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&client, "the Failed filter", SHOWN_RECORDS, |v| {
        v == &json!([failed])
    })
    .await;
    let failure = client
        .find(Locator::Css(&format!(
            "tr[data-record=\"{failed}\"] td.failure"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        failure.contains("Downloaded file checksum mismatch"),
        "{failure}"
    );
    screenshot(&client, "admin-geo-replication-failed.png").await;

    // Resync: the row leaves `failed` on the secondary and syncs again.
    let before = registry.get(&tracking, failed).await.unwrap().unwrap();
    assert_eq!(before.state, geohost::states::SyncState::Failed);
    client
        .find(Locator::Css(&format!(
            "tr[data-record=\"{failed}\"] button[data-action=\"RESYNC\"]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(CONVERGE, "the resynced registry synced", || async {
        let row = registry.get(&tracking, failed).await.unwrap().unwrap();
        row.state == geohost::states::SyncState::Synced && row.last_sync_failure.is_none()
    })
    .await;
    until(
        &client,
        "the page's message and the filtered table emptied",
        "return [document.getElementById('message').textContent,
                 document.querySelectorAll('#registry-rows tr[data-registry]').length];",
        |v| {
            v[0].as_str()
                .is_some_and(|t| t.starts_with("Resync of registry"))
                && v[1] == json!(0)
        },
    )
    .await;

    client.close().await.unwrap();
    drop(driver);
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

/// What the page adds to the GraphQL API, on both backends: `count` on a
/// registries connection (every row matching the filters, whatever the
/// page) and `geoReplicableTypes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_counts_registries_and_lists_replicable_types() {
    for backend in sites::backends() {
        let (primary, secondary, failed, nightly) = pair(backend).await;
        let (_, token) = geohost::api::auth::create_token(&secondary.site.db, "page")
            .await
            .unwrap();
        let query = r#"query($state: ReplicationStateEnum, $vstate: VerificationStateEnum,
                             $keyword: String, $first: Int, $after: String) {
            geoNode { packagesHelmMetadataCacheRegistries(replicationState: $state,
                  verificationState: $vstate, keyword: $keyword, first: $first, after: $after) {
                count nodes { modelRecordId } pageInfo { hasNextPage endCursor } } } }"#;
        let list = |data: &Value| data["geoNode"]["packagesHelmMetadataCacheRegistries"].clone();
        // A page of 3 counts them all; the next page counts the same.
        let first = list(&graphql(&secondary, &token, query, json!({"first": 3})).await);
        assert_eq!(first["count"], json!(RECORDS), "{backend:?}");
        assert_eq!(first["nodes"].as_array().unwrap().len(), 3);
        let next = list(
            &graphql(
                &secondary,
                &token,
                query,
                json!({"first": 3, "after": first["pageInfo"]["endCursor"]}),
            )
            .await,
        );
        assert_eq!(next["count"], json!(RECORDS), "{backend:?}");
        // Filters narrow the count as they narrow the list.
        for (variables, count, ids) in [
            (json!({"state": "FAILED"}), 1, vec![failed]),
            (json!({"keyword": "nightly"}), 1, vec![nightly]),
            (
                json!({"state": "SYNCED", "keyword": "nightly"}),
                1,
                vec![nightly],
            ),
            (json!({"state": "FAILED", "keyword": "nightly"}), 0, vec![]),
            (json!({"state": "PENDING"}), 0, vec![]),
        ] {
            let got = list(&graphql(&secondary, &token, query, variables.clone()).await);
            assert_eq!(got["count"], json!(count), "{backend:?} {variables}");
            let shown: Vec<i64> = got["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["modelRecordId"].as_i64().unwrap())
                .collect();
            assert_eq!(shown, ids, "{backend:?} {variables}");
        }
        let synced = list(
            &graphql(
                &secondary,
                &token,
                query,
                json!({"state": "SYNCED", "vstate": "SUCCEEDED"}),
            )
            .await,
        );
        assert_eq!(synced["count"], json!(RECORDS - 1), "{backend:?}");

        // The installed types, with the names a client needs, on both sites;
        // on the primary, registries (and their count) are empty.
        let (_, primary_token) = geohost::api::auth::create_token(&primary.site.db, "page")
            .await
            .unwrap();
        let types_query = "{ geoReplicableTypes { name namePlural title titlePlural \
             graphqlFieldName graphqlRegistryType graphqlRegistryClass } }";
        let expected = json!([{
            "name": HELM,
            "namePlural": "packages_helm_metadata_caches",
            "title": "Helm Metadata Cache",
            "titlePlural": "Helm Metadata Caches",
            "graphqlFieldName": "packagesHelmMetadataCacheRegistries",
            "graphqlRegistryType": "PackagesHelmMetadataCacheRegistry",
            "graphqlRegistryClass": "PACKAGES_HELM_METADATA_CACHE_REGISTRY",
        }, {
            "name": "packages_npm_metadata_cache",
            "namePlural": "packages_npm_metadata_caches",
            "title": "npm Metadata Cache",
            "titlePlural": "npm Metadata Caches",
            "graphqlFieldName": "packagesNpmMetadataCacheRegistries",
            "graphqlRegistryType": "PackagesNpmMetadataCacheRegistry",
            "graphqlRegistryClass": "PACKAGES_NPM_METADATA_CACHE_REGISTRY",
        }]);
        for (site, token) in [(&secondary, &token), (&primary, &primary_token)] {
            let data = graphql(site, token, types_query, json!({})).await;
            assert_eq!(data["geoReplicableTypes"], expected, "{backend:?}");
        }
        let on_primary = list(&graphql(&primary, &primary_token, query, json!({})).await);
        assert_eq!(on_primary["count"], json!(0), "{backend:?}");

        // The page's shell needs no token and holds no data; its assets
        // come with a CSP; an unknown asset is a 404.
        for path in [
            "/admin/geo/sites",
            &format!("/admin/geo/replication/{HELM}"),
            "/admin/geo/assets/app.js",
            "/admin/geo/assets/app.css",
        ] {
            let response = reqwest::get(format!("{}{path}", secondary.url))
                .await
                .unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .unwrap();
            assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
            let body = response.text().await.unwrap();
            assert!(
                !body.contains("nightly") && !body.contains(&token),
                "{path}"
            );
        }
        let missing = reqwest::get(format!("{}/admin/geo/assets/secrets.toml", secondary.url))
            .await
            .unwrap();
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    }
}
