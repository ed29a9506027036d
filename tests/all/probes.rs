//! The health probes load balancers and Kubernetes call, as GitLab serves
//! them: `/-/health`, `/-/liveness`, `/-/readiness`, reachable without a
//! token only from the `monitoring.ip_whitelist` networks.

use crate::sites::{self, Backend, TestSite, eventually};
use geohost::primary::sites::NewSite;
use serde_json::{Value, json};
use std::time::Duration;

async fn probe(site: &TestSite, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", site.url));
    if let Some(token) = token {
        request = request.header("PRIVATE-TOKEN", token);
    }
    let response = request.send().await.expect("the site answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

async fn readiness(site: &TestSite) -> (u16, Value) {
    let (status, _, body) = probe(site, "/-/readiness", None).await;
    (
        status,
        serde_json::from_str(&body).expect("readiness answers JSON"),
    )
}

fn all_ok(checks: &[&str]) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("status".into(), "ok".into());
    for check in checks {
        body.insert((*check).into(), json!([{"status": "ok"}]));
    }
    Value::Object(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_like_gitlabs_on_both_sites() {
    for backend in sites::backends() {
        let primary = sites::primary(backend).await;
        let secondary = sites::secondary(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                ..Default::default()
            },
        )
        .await;
        for (site, checks) in [
            (
                &primary,
                vec![
                    "master_check",
                    "db_check",
                    "blob_storage_check",
                    "types_check",
                ],
            ),
            (
                &secondary,
                vec![
                    "master_check",
                    "db_check",
                    "tracking_db_check",
                    "blob_storage_check",
                    "types_check",
                ],
            ),
        ] {
            let (status, content_type, body) = probe(site, "/-/health", None).await;
            assert_eq!((status, body.as_str()), (200, "GitLab OK"), "{backend:?}");
            assert!(content_type.starts_with("text/plain"), "{content_type}");
            let (status, content_type, body) = probe(site, "/-/liveness", None).await;
            assert_eq!(status, 200, "{backend:?}");
            assert!(content_type.starts_with("application/json"));
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                json!({"status": "ok"})
            );
            let (status, body) = readiness(site).await;
            assert_eq!((status, body), (200, all_ok(&checks)), "{backend:?}");
        }

        // Blob storage gone (the folder unmounted): not ready, and the
        // answer names the check; back, ready again.
        let blobs = secondary.dir.join("blobs");
        let aside = secondary.dir.join("blobs-unmounted");
        std::fs::rename(&blobs, &aside).unwrap();
        let (status, body) = readiness(&secondary).await;
        std::fs::rename(&aside, &blobs).unwrap();
        assert_eq!(status, 503, "{backend:?}: {body}");
        assert_eq!(body["status"], "failed");
        assert_eq!(body["blob_storage_check"][0]["status"], "failed", "{body}");
        assert!(
            body["blob_storage_check"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(body["db_check"], json!([{"status": "ok"}]), "{body}");
        assert_eq!(readiness(&secondary).await.0, 200, "{backend:?}");
    }
}

/// GitLab's `monitoring.ip_whitelist`: a client outside the allowed
/// networks gets a 404 from every probe (as for a route that does not
/// exist), unless it sends an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_hidden_from_addresses_outside_the_allow_list() {
    let primary = sites::primary_with(
        Backend::Sqlite,
        "idle_poll_ms = 50\n[monitoring]\nip_whitelist = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n",
    )
    .await;
    assert_eq!(
        primary.site.config.monitoring.ip_whitelist.networks().len(),
        2
    );
    let (_, token) = geohost::api::auth::create_token(&primary.site.db, "monitoring")
        .await
        .unwrap();
    for path in ["/-/health", "/-/liveness", "/-/readiness"] {
        let (status, _, body) = probe(&primary, path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"message": "no such route"}),
            "{path}"
        );
        let (status, _, _) = probe(&primary, path, Some("ghst-not-a-token")).await;
        assert_eq!(status, 404, "{path} with a wrong token");
        let (status, _, _) = probe(&primary, path, Some(&token)).await;
        assert_eq!(status, 200, "{path} with an admin token");
    }
}

/// `/-/readiness` answers 503 naming `tracking_db_check` while a
/// secondary's tracking database refuses connections, and 200 again once
/// it is back. PostgreSQL only: the database is closed to new connections
/// and its sessions are ended, as a failover or a restart does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_tracking_database_is_down() {
    if !sites::backends().contains(&Backend::Postgres) {
        return;
    }
    let primary = sites::primary(Backend::Postgres).await;
    let secondary = sites::secondary(
        Backend::Postgres,
        &primary,
        NewSite {
            name: "s".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(readiness(&secondary).await.0, 200);
    let url = secondary.site.config.tracking_database_url();
    let database = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap()
        .to_string();
    let admin =
        geohost::db::Db::connect_with(&std::env::var("GEOHOST_TEST_POSTGRES_URL").unwrap(), 1)
            .await
            .unwrap();
    let down = format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    );
    admin.execute_script(&down).await.unwrap();
    let (status, body) = readiness(&secondary).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["tracking_db_check"][0]["status"], "failed", "{body}");
    assert!(
        body["tracking_db_check"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    for check in ["master_check", "db_check", "blob_storage_check"] {
        assert_eq!(body[check], json!([{"status": "ok"}]), "{check}: {body}");
    }
    // Liveness is about the process, not its dependencies.
    assert_eq!(probe(&secondary, "/-/liveness", None).await.0, 200);

    admin
        .execute_script(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "ready again", || async {
        readiness(&secondary).await.0 == 200
    })
    .await;
    admin.close().await;
}
