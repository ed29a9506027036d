//! A replicable type written in Python (`plugins/python/nuget-symbol`, built
//! with componentize-py by `cargo xtask plugins`): it passes its embedded
//! vectors, replicates between two sites on SQLite and PostgreSQL, and a
//! build of it that imports files and sockets is refused, naming them.
//!
//! The sites and the CLI share one compile cache under `target/tmp`: a
//! Python component is 18 MB of wasm, seconds of Cranelift in a debug host.

use crate::sites::{self, TestSite, eventually, registry_states_in};
use crate::support::fixture_component_path;
use geohost::primary::sites::NewSite;
use geohost::swap::{self, Request};
use std::path::PathBuf;
use std::time::Duration;

const NUGET: &str = "packages_nuget_symbol";
const CONVERGE: Duration = Duration::from_secs(240);

fn component() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/target/components/nuget-symbol.wasm"
    ))
}

/// The compile cache the Python tests share.
fn cache_dir() -> String {
    concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache").to_string()
}

/// `[workers]` settings, then a `[plugins]` section: the shared compile
/// cache, no shipped types.
fn settings() -> String {
    format!(
        "idle_poll_ms = 50\nconsistency_interval_secs = 2\n[plugins]\nbuiltin = []\ncache_dir = {:?}\n",
        cache_dir()
    )
}

async fn install(site: &TestSite, bytes: Vec<u8>) -> Result<swap::SwapReport, swap::SwapError> {
    swap::activate(
        &site.site,
        bytes,
        Request {
            expect_name: None,
            source: "test".into(),
        },
    )
    .await
}

/// A symbol's writer columns.
fn symbol(project: i64, file: &str, signature: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({
        "project_id": project, "package_id": 7, "file": file,
        "file_path": format!("lib/net8.0/{file}"), "signature": signature,
    })
    .as_object()
    .unwrap()
    .clone()
}

#[test]
fn plugin_test_runs_the_python_types_embedded_vectors() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_geohost"))
        .args(["plugin", "test", component().to_str().unwrap()])
        .env("GEOHOST_PLUGIN_CACHE_DIR", cache_dir())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("all 6 expectations met (packages_nuget_symbol 1.0.0)"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("invalid symbol signature 'not-a-guid'"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_type_replicates_between_two_sites() {
    let bytes = std::fs::read(component()).unwrap();
    for backend in sites::backends() {
        let primary = sites::primary_with(backend, &settings()).await;
        let [_, a, _, _, b] = sites::group_tree(&primary).await;
        let (in_a, in_b) = (
            sites::project(&primary, a, "in-a").await,
            sites::project(&primary, b, "in-b").await,
        );
        let secondary = sites::secondary_with(
            backend,
            &primary,
            NewSite {
                name: "s".into(),
                selective_sync_type: Some("namespaces".into()),
                namespace_ids: vec![a],
                ..Default::default()
            },
            &settings(),
        )
        .await;
        for site in [&primary, &secondary] {
            let report = install(site, bytes.clone()).await.unwrap();
            assert_eq!(report.name, NUGET, "{backend:?}");
            assert_eq!(report.test_vectors, 6, "its embedded vectors ran");
        }
        let it = primary.site.installed(NUGET).unwrap();
        assert!(it.plugin.imports_wasi(), "the subset, not nothing");

        let signature = |n: u32| format!("{n:032x}FFFFFFFF");
        let mut ids = Vec::new();
        for (n, project) in [in_a, in_a, in_b].into_iter().enumerate() {
            let file = format!("Lib{n}.pdb");
            let body = format!("symbols of {file}");
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
            let written = geohost::primary::ingest::upsert(
                &primary.site,
                NUGET,
                &symbol(project, &file, &signature(n as u32)),
                stream,
            )
            .await
            .unwrap();
            ids.push(written.id);
        }
        // The type refuses a bad record with its own message.
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("x"))]);
        let error = geohost::primary::ingest::upsert(
            &primary.site,
            NUGET,
            &symbol(in_a, "Lib.dll", &signature(9)),
            stream,
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("invalid symbol file 'Lib.dll'"),
            "{error}"
        );

        // In scope (namespace a): synced and verified; b's is not replicated.
        let tracking = secondary.site.tracking().unwrap().clone();
        eventually(CONVERGE, "the symbols of a synced and verified", || async {
            let states = registry_states_in(&tracking, NUGET)
                .await
                .unwrap_or_default();
            states.len() == 2
                && ids[..2].iter().all(|id| states.get(id) == Some(&(2, 2)))
                && !states.contains_key(&ids[2])
        })
        .await;
        let record = geohost::primary::records::by_id(&primary.site.db, &it, ids[0])
            .await
            .unwrap()
            .unwrap();
        let key = record.values["object_storage_key"]
            .as_text()
            .unwrap()
            .to_string();
        let copy = secondary.type_blob_file(NUGET, &format!("{key}/Lib0.pdb"));
        assert_eq!(
            std::fs::read_to_string(copy).unwrap(),
            "symbols of Lib0.pdb"
        );
    }
}

#[test]
fn a_build_importing_files_and_sockets_is_refused_naming_them() {
    let runtime = crate::support::runtime(geohost::plugin::Limits::default());
    let unstubbed = std::fs::read(fixture_component_path("nuget-symbol-unstubbed")).unwrap();
    let error = runtime.load(&unstubbed).unwrap_err().to_string();
    for import in [
        "wasi:filesystem/preopens@0.2",
        "wasi:sockets/tcp@0.2",
        "wasi:cli/stdin@0.2",
    ] {
        assert!(error.contains(import), "{import}: {error}");
    }
    assert!(
        !error.contains("wasi:cli/stderr"),
        "stderr is in the subset: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_of_a_build_importing_files_is_refused_and_reported() {
    let primary = sites::primary_with(sites::Backend::Sqlite, &settings()).await;
    let unstubbed = std::fs::read(fixture_component_path("nuget-symbol-unstubbed")).unwrap();
    let error = install(&primary, unstubbed).await.unwrap_err().to_string();
    assert!(error.contains("wasi:filesystem/preopens"), "{error}");
    assert!(primary.site.installed(NUGET).is_none());
    assert!(
        primary
            .site
            .swaps
            .failures()
            .iter()
            .any(|f| f.error.contains("wasi:sockets/tcp")),
        "reported"
    );
}
