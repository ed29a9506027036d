//! Input robustness: the HTTP APIs (ingest, admin, status, the Geo
//! retrieve API and feed, GraphQL) fed malformed, oversized, mistyped and
//! non-UTF-8 bodies, bad query strings and path tricks in names. Every
//! answer is a 4xx with a JSON `{"message"}` (never a 5xx, never a dropped
//! connection), and nothing is written outside the site's data folder or
//! beside the blobs of real records.

use crate::faults::files_under;
use crate::sites::{self, Backend, HELM, TestSite};
use geohost::auth::geo_jwt;
use geohost::feed;
use geohost::primary::sites as geo_sites;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The largest blob the site under test takes (a tiny `storage.max_blob_bytes`).
const MAX_BLOB: usize = 64 * 1024;
/// A marker in every path trick: no file or folder of that name may appear.
const PROBE: &str = "geohost-escape-probe";

struct Case {
    what: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// None: the admin token; Some(h): this Authorization header.
    geo_auth: Option<String>,
}

fn case(
    what: &str,
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
) -> Case {
    Case {
        what: what.into(),
        method,
        path: path.into(),
        content_type,
        body: body.into(),
        geo_auth: None,
    }
}

const JSON: Option<&'static str> = Some("application/json");

fn cases(project: i64) -> Vec<Case> {
    let long = "a".repeat(8_000);
    let ingest = format!("/api/v4/replicables/{HELM}");
    let ok_query = format!("project_id={project}&channel=stable");
    let mut list = vec![
        // Ingest: names, query strings, bodies.
        case(
            "unknown type",
            Method::PUT,
            &format!("/api/v4/replicables/nope?{ok_query}"),
            None,
            "x",
        ),
        case(
            "dot-dot type name",
            Method::PUT,
            &format!("/api/v4/replicables/..%2F..%2F{PROBE}?{ok_query}"),
            None,
            "x",
        ),
        case(
            "encoded slash in name",
            Method::PUT,
            &format!("/api/v4/replicables/{HELM}%2F..%2F{PROBE}?{ok_query}"),
            None,
            "x",
        ),
        case(
            "NUL in name",
            Method::PUT,
            &format!("/api/v4/replicables/{HELM}%00{PROBE}?{ok_query}"),
            None,
            "x",
        ),
        case(
            "non-UTF-8 name",
            Method::PUT,
            &format!("/api/v4/replicables/%FF%FE{PROBE}?{ok_query}"),
            None,
            "x",
        ),
        case(
            "very long name",
            Method::PUT,
            &format!("/api/v4/replicables/{long}?{ok_query}"),
            None,
            "x",
        ),
        case(
            "unicode name",
            Method::PUT,
            &format!("/api/v4/replicables/%E2%80%AE{PROBE}%F0%9F%A6%80?{ok_query}"),
            None,
            "x",
        ),
        case(
            "unknown column",
            Method::PUT,
            &format!("{ingest}?{ok_query}&{PROBE}=1"),
            None,
            "x",
        ),
        case(
            "mistyped column",
            Method::PUT,
            &format!("{ingest}?project_id=abc&channel=stable"),
            None,
            "x",
        ),
        case(
            "integer overflow",
            Method::PUT,
            &format!("{ingest}?project_id=99999999999999999999999&channel=stable"),
            None,
            "x",
        ),
        case(
            "missing key column",
            Method::PUT,
            &format!("{ingest}?channel=stable"),
            None,
            "x",
        ),
        case("no query at all", Method::PUT, &ingest, None, "x"),
        case(
            "dot-dot channel",
            Method::PUT,
            &format!("{ingest}?project_id={project}&channel=..%2F..%2F{PROBE}"),
            None,
            "x",
        ),
        case(
            "NUL in channel",
            Method::PUT,
            &format!("{ingest}?project_id={project}&channel=a%00{PROBE}"),
            None,
            "x",
        ),
        case(
            "non-UTF-8 channel",
            Method::PUT,
            &format!("{ingest}?project_id={project}&channel=%FF{PROBE}"),
            None,
            "x",
        ),
        case(
            "very long channel",
            Method::PUT,
            &format!("{ingest}?project_id={project}&channel={long}"),
            None,
            "x",
        ),
        case(
            "oversized blob",
            Method::PUT,
            &format!("{ingest}?{ok_query}"),
            None,
            vec![b'x'; MAX_BLOB + 1],
        ),
        case(
            "non-numeric record id",
            Method::GET,
            &format!("{ingest}/abc"),
            None,
            "",
        ),
        case(
            "record id overflow",
            Method::GET,
            &format!("{ingest}/99999999999999999999999"),
            None,
            "",
        ),
        case(
            "negative limit",
            Method::GET,
            &format!("{ingest}?limit=-5&after_id=x"),
            None,
            "",
        ),
        case(
            "unknown list parameter",
            Method::GET,
            &format!("{ingest}?{PROBE}=1"),
            None,
            "",
        ),
        case(
            "delete, dot-dot id",
            Method::DELETE,
            &format!("{ingest}/..%2F{PROBE}"),
            None,
            "",
        ),
        case("wrong method", Method::PATCH, &ingest, None, ""),
        // Admin JSON routes.
        case(
            "namespace, malformed JSON",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            "{\"name\": ",
        ),
        case(
            "namespace, mistyped JSON",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            "{\"name\": 5}",
        ),
        case(
            "namespace, unknown field",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            format!("{{\"name\": \"n\", \"{PROBE}\": 1}}"),
        ),
        case(
            "namespace, not JSON",
            Method::POST,
            "/api/v4/namespaces",
            Some("text/plain"),
            "name=n",
        ),
        case(
            "namespace, no content type",
            Method::POST,
            "/api/v4/namespaces",
            None,
            "{\"name\": \"n\"}",
        ),
        case(
            "namespace, non-UTF-8 body",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
        ),
        case(
            "namespace, oversized body",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            format!("{{\"name\": \"{}\"}}", "n".repeat(2 << 20)),
        ),
        case(
            "namespace, empty name",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            "{\"name\": \"\"}",
        ),
        case(
            "namespace, unknown parent",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            "{\"name\": \"n\", \"parent_id\": 987654}",
        ),
        case(
            "namespace, dot-dot path",
            Method::POST,
            "/api/v4/namespaces",
            JSON,
            format!("{{\"name\": \"n\", \"path\": \"../{PROBE}\"}}"),
        ),
        case(
            "project, missing namespace",
            Method::POST,
            "/api/v4/projects",
            JSON,
            "{\"name\": \"p\"}",
        ),
        case(
            "project, mistyped namespace",
            Method::POST,
            "/api/v4/projects",
            JSON,
            "{\"name\": \"p\", \"namespace_id\": \"x\"}",
        ),
        case(
            "project, JSON array",
            Method::POST,
            "/api/v4/projects",
            JSON,
            "[1, 2, 3]",
        ),
        case(
            "delete namespace, bad id",
            Method::DELETE,
            "/api/v4/namespaces/%FF",
            None,
            "",
        ),
        case(
            "site, malformed JSON",
            Method::POST,
            "/api/v4/geo_sites",
            JSON,
            "{{{",
        ),
        case(
            "site, bad url",
            Method::POST,
            "/api/v4/geo_sites",
            JSON,
            "{\"name\": \"s2\", \"url\": \"not a url\"}",
        ),
        case(
            "site, bad selective sync",
            Method::POST,
            "/api/v4/geo_sites",
            JSON,
            "{\"name\": \"s3\", \"url\": \"http://127.0.0.1:9\", \"selective_sync_type\": \"everything\"}",
        ),
        case(
            "site update, unknown id",
            Method::PUT,
            "/api/v4/geo_sites/987654",
            JSON,
            "{\"enabled\": false}",
        ),
        case(
            "site, non-numeric id",
            Method::GET,
            "/api/v4/geo_sites/..%2F..",
            None,
            "",
        ),
        // The older route family, same handlers.
        case(
            "geo_nodes, a primary created by the API",
            Method::POST,
            "/api/v4/geo_nodes",
            JSON,
            "{\"name\": \"s4\", \"url\": \"http://127.0.0.1:9\", \"primary\": true}",
        ),
        case(
            "geo_nodes, capacity out of range",
            Method::PUT,
            "/api/v4/geo_nodes/1",
            JSON,
            "{\"repos_max_capacity\": -1}",
        ),
        case(
            "geo_nodes, mistyped capacity",
            Method::PUT,
            "/api/v4/geo_nodes/1",
            JSON,
            "{\"files_max_capacity\": \"many\"}",
        ),
        case(
            "geo_nodes, repair of an unknown site",
            Method::POST,
            "/api/v4/geo_nodes/987654/repair",
            None,
            "",
        ),
        case(
            "geo_nodes, delete of the primary",
            Method::DELETE,
            "/api/v4/geo_nodes/1",
            None,
            "",
        ),
        case(
            "geo_nodes, delete of an unknown site",
            Method::DELETE,
            "/api/v4/geo_nodes/987654",
            None,
            "",
        ),
        case(
            "geo_sites, page is not a number",
            Method::GET,
            "/api/v4/geo_sites?page=two",
            None,
            "",
        ),
        case(
            "geo_sites, page 0",
            Method::GET,
            "/api/v4/geo_sites/status?page=0",
            None,
            "",
        ),
        case(
            "failures on the primary",
            Method::GET,
            "/api/v4/geo_nodes/current/failures",
            None,
            "",
        ),
        // Status.
        case(
            "status, non-numeric id",
            Method::GET,
            "/api/v4/geo_sites/abc/status",
            None,
            "",
        ),
        case(
            "status, unknown id",
            Method::GET,
            "/api/v4/geo_sites/987654/status",
            None,
            "",
        ),
        // GraphQL: a request that is not a GraphQL request at all.
        case(
            "graphql, malformed JSON",
            Method::POST,
            "/api/graphql",
            JSON,
            "{\"query\": ",
        ),
        case(
            "graphql, mistyped query",
            Method::POST,
            "/api/graphql",
            JSON,
            "{\"query\": 5}",
        ),
        case(
            "graphql, non-UTF-8 body",
            Method::POST,
            "/api/graphql",
            JSON,
            b"{\"query\": \"\xff\"}".to_vec(),
        ),
        case(
            "graphql, oversized body",
            Method::POST,
            "/api/graphql",
            JSON,
            format!("{{\"query\": \"{{ {} }}\"}}", "a ".repeat(1 << 20)),
        ),
        case("graphql, GET", Method::GET, "/api/graphql", None, ""),
        // Unknown routes.
        case(
            "unknown route",
            Method::GET,
            &format!("/api/v4/{PROBE}/../../etc/passwd"),
            None,
            "",
        ),
        case(
            "encoded dot-dot route",
            Method::GET,
            "/api/v4/%2E%2E/%2E%2E/etc/passwd",
            None,
            "",
        ),
    ];
    // The Geo API refuses an anonymous or wrongly signed request before
    // reading anything else.
    for (what, path) in [
        (
            "retrieve, dot-dot name",
            format!("/api/v4/geo/retrieve/..%2F..%2F{PROBE}/1"),
        ),
        (
            "retrieve, non-numeric id",
            format!("/api/v4/geo/retrieve/{HELM}/..%2F{PROBE}"),
        ),
        (
            "retrieve, non-UTF-8 name",
            "/api/v4/geo/retrieve/%FF/1".to_string(),
        ),
        (
            "records, bad ids",
            format!("/api/v4/geo/replication/{HELM}/records?ids=1,x"),
        ),
        (
            "events, bad limit",
            "/api/v4/geo/events?limit=-1&wait_ms=abc".to_string(),
        ),
    ] {
        let mut c = case(what, Method::GET, &path, None, "");
        c.geo_auth = Some("GL-Geo garbage:garbage".into());
        list.push(c);
    }
    list
}

/// Cases signed by a real secondary: past authentication, into the handlers.
fn signed_cases(access_key: &str, secret: &str) -> Vec<Case> {
    let mut list = Vec::new();
    let mut signed = |what: &str, path: String, claim: Value| {
        let mut c = case(what, Method::GET, &path, None, "");
        c.geo_auth = Some(geo_jwt::sign(access_key, secret, &claim));
        list.push(c);
    };
    signed(
        "records, ids not integers",
        format!("/api/v4/geo/replication/{HELM}/records?ids=1,..%2F{PROBE}"),
        feed::records_claim(HELM),
    );
    signed(
        "records, too many ids",
        format!(
            "/api/v4/geo/replication/{HELM}/records?ids={}",
            (1..=1001)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        feed::records_claim(HELM),
    );
    signed(
        "records, mistyped after_id",
        format!("/api/v4/geo/replication/{HELM}/records?after_id=abc"),
        feed::records_claim(HELM),
    );
    signed(
        "records, limit out of range",
        format!("/api/v4/geo/replication/{HELM}/records?limit=0"),
        feed::records_claim(HELM),
    );
    signed(
        "records, unknown parameter",
        format!("/api/v4/geo/replication/{HELM}/records?{PROBE}=1"),
        feed::records_claim(HELM),
    );
    signed(
        "events, mistyped wait",
        "/api/v4/geo/events?wait_ms=-1".into(),
        feed::feed_claim("events"),
    );
    signed(
        "events, limit too large",
        "/api/v4/geo/events?limit=100000".into(),
        feed::feed_claim("events"),
    );
    signed(
        "retrieve, unknown record",
        format!("/api/v4/geo/retrieve/{HELM}/987654"),
        feed::retrieve_claim(HELM, 987_654),
    );
    list
}

/// No file or folder named after the probe under `root`.
fn assert_no_probe(root: &Path) {
    for file in files_under(root) {
        assert!(
            !file.to_string_lossy().contains(PROBE),
            "{} was written",
            root.join(file).display()
        );
    }
}

async fn send(
    client: &reqwest::Client,
    site: &TestSite,
    token: &str,
    c: &Case,
) -> (u16, String, Value) {
    let mut request = client.request(c.method.clone(), format!("{}{}", site.url, c.path));
    request = match &c.geo_auth {
        Some(header) => request.header("Authorization", header),
        None => request.header("PRIVATE-TOKEN", token),
    };
    if let Some(ct) = c.content_type {
        request = request.header("Content-Type", ct);
    }
    if !c.body.is_empty() {
        request = request.body(c.body.clone());
    }
    let response = request.send().await.unwrap_or_else(|e| {
        panic!(
            "{}: no answer (the server dropped the request?): {e}",
            c.what
        )
    });
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, content_type, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_with_a_json_message_and_write_nothing() {
    for backend in sites::backends() {
        let primary = sites::primary_with(
            backend,
            &format!("idle_poll_ms = 50\n[storage]\nmax_blob_bytes = {MAX_BLOB}\n"),
        )
        .await;
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
        let good = sites::put_helm(
            &primary,
            project,
            "stable",
            &sites::index_yaml(project, "stable", 1),
        )
        .await;
        let outside = primary.dir.parent().unwrap().to_path_buf();
        let outside_before: BTreeSet<_> = std::fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains(PROBE))
            .collect();

        let client = reqwest::Client::new();
        let mut all = cases(project);
        all.extend(signed_cases(
            &credentials.access_key,
            &credentials.secret_access_key,
        ));
        let mut failures = Vec::new();
        for c in &all {
            let (status, content_type, json) = send(&client, &primary, &token, c).await;
            let message = json.get("message").and_then(Value::as_str).unwrap_or("");
            if !(400..500).contains(&status)
                || !content_type.starts_with("application/json")
                || message.is_empty()
            {
                failures.push(format!(
                    "{backend:?} {}: {} {} → {status} {content_type} {json}",
                    c.what,
                    c.method,
                    &c.path[..c.path.len().min(120)]
                ));
            }
        }
        // GraphQL answers a well-formed request whose query is wrong with
        // GraphQL's `errors` (HTTP 200, as GitLab and the GraphQL-over-HTTP
        // convention do), each with a message.
        for query in [
            "{ geoNode { ",
            "{ nosuchField }",
            "{ geoNode { packagesHelmMetadataCacheRegistries(first: \"x\") { nodes { id } } } }",
            "mutation { geoRegistriesUpdate(input: {registryId: \"gid://geo/Nope/1\", action: RESYNC}) { errors } }",
            "mutation { geoRegistriesUpdate(input: {registryId: \"7\", action: RESYNC}) { errors } }",
            "{ geoNode { packagesHelmMetadataCacheRegistries(ids: [\"gid://gitlab/Geo::PackagesNpmMetadataCacheRegistry/1\"]) { count } } }",
            "{ geoNode { packagesHelmMetadataCacheRegistries { count(limit: 0) } } }",
            "{ geoNode { packagesHelmMetadataCacheRegistries { count(limit: 1001) } } }",
        ] {
            let response = client
                .post(format!("{}/api/graphql", primary.url))
                .header("PRIVATE-TOKEN", &token)
                .json(&serde_json::json!({ "query": query }))
                .send()
                .await
                .unwrap_or_else(|e| panic!("graphql {query}: no answer: {e}"));
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            let messages: Vec<&str> = json["errors"]
                .as_array()
                .map(|e| e.iter().filter_map(|e| e["message"].as_str()).collect())
                .unwrap_or_default();
            let payload_errors = json["data"]["geoRegistriesUpdate"]["errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty());
            if status >= 500 || (messages.is_empty() && !payload_errors) {
                failures.push(format!("{backend:?} graphql {query:?} → {status} {json}"));
            }
        }
        assert!(
            failures.is_empty(),
            "answers that are not a 4xx JSON message:\n{}",
            failures.join("\n")
        );

        // Nothing written: the blob root holds the one good record's blob
        // and no temporary object; no probe anywhere.
        let blobs = files_under(&primary.dir.join("blobs"));
        let expected: BTreeSet<PathBuf> = [PathBuf::from(HELM).join(&good.blob_path)].into();
        assert_eq!(blobs, expected, "{backend:?}: only the good record's blob");
        assert_no_probe(&primary.dir);
        let outside_after: BTreeSet<_> = std::fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains(PROBE))
            .collect();
        assert_eq!(
            outside_before, outside_after,
            "{backend:?}: nothing beside the data folder"
        );
        // Still serving.
        let again = sites::put_helm(&primary, project, "stable", "apiVersion: v1\n").await;
        assert_eq!(again.id, good.id);
        let _ = Backend::Sqlite;
    }
}
