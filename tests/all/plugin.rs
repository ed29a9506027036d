//! The plugin runtime end to end: the shipped Helm type against GitLab's
//! layout and selective-sync rules, misbehaving components, loading errors,
//! the compile cache, and `geohost plugin test`.

use crate::support::{
    assert_helm_answers, fixture_component, fixture_component_path, helm_blob_path, helm_component,
    helm_object_storage_key, helm_paths, helm_writer_row, load_helm, runtime,
};
use geohost::plugin::fixture::{self, Fixture};
use geohost::plugin::{
    CompileOutcome, EPOCH_TICK, Limits, LoadError, PluginError, PluginRuntime, Row, SelectiveSync,
    SyncSettings, Value,
};
use geohost::topology::{NamespaceNode, ProjectLookup, ProjectNode, Topology};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (project id, channel) pairs whose paths are checked against GitLab's rule.
const PAIRS: &[(i64, &str)] = &[
    (1, "stable"),
    (2, "stable"),
    (42, "dev"),
    (1_000_000, "v1.2-rc_3"),
    (9_007_199_254_740_993, "A9"),
    (i64::MAX, "nightly.build"),
];

fn long_channel() -> String {
    "a".repeat(255)
}

// ---------------------------------------------------------------------------
// Blob paths

#[test]
fn helm_identity_has_the_columns_the_primary_relies_on() {
    let loaded = load_helm(&runtime(Limits::default()));
    let identity = loaded.identity();
    assert_eq!(identity.name, "packages_helm_metadata_cache");
    assert_eq!(identity.plural_name(), "packages_helm_metadata_caches");
    let names = |source| -> Vec<&str> {
        identity
            .table
            .columns_from(source)
            .map(|c| c.name.as_str())
            .collect()
    };
    use geohost::plugin::ColumnSource;
    assert_eq!(
        names(ColumnSource::Writer),
        ["last_downloaded_at", "project_id", "status", "channel"]
    );
    assert_eq!(names(ColumnSource::Derived), ["file", "object_storage_key"]);
    assert_eq!(identity.path_columns, ["object_storage_key", "file"]);
    assert_eq!(identity.scope_columns, ["project_id", "file_store"]);
}

#[test]
fn helm_derive_and_blob_paths_follow_gitlab_hashed_path() {
    let loaded = load_helm(&runtime(Limits::default()));
    let long = long_channel();
    let mut pairs = PAIRS.to_vec();
    pairs.push((7, &long));

    // The derived columns themselves.
    let rows: Vec<Row> = pairs
        .iter()
        .enumerate()
        .map(|(i, (p, c))| helm_writer_row(i as i64 + 1, *p, c))
        .collect();
    let derived = loaded.derive(&rows).unwrap();
    for ((project_id, channel), answer) in pairs.iter().zip(derived) {
        assert_eq!(
            answer.unwrap(),
            vec![
                Value::Text("index.yaml".into()),
                Value::Text(helm_object_storage_key(*project_id, channel)),
            ],
            "derived columns of ({project_id}, {channel:?})"
        );
    }

    // And the paths, through derive then blob_paths.
    for ((project_id, channel), path) in pairs.iter().zip(helm_paths(&loaded, &pairs)) {
        let expected = helm_blob_path(*project_id, channel);
        assert_eq!(
            path.as_deref(),
            Ok(expected.as_str()),
            "path of ({project_id}, {channel:?})"
        );
    }
    // Different inputs, different blobs.
    let distinct: BTreeSet<_> = pairs.iter().map(|(p, c)| helm_blob_path(*p, c)).collect();
    assert_eq!(distinct.len(), pairs.len());
}

#[test]
fn helm_blob_paths_through_a_fixture() {
    let loaded = load_helm(&runtime(Limits::default()));
    let records: Vec<_> = PAIRS
        .iter()
        .enumerate()
        .map(|(i, (project_id, channel))| json!({"id": i + 1, "project_id": project_id, "channel": channel}))
        .collect();
    let projects: Vec<_> = PAIRS
        .iter()
        .map(|(id, _)| json!({"id": id, "namespace_id": 1}))
        .collect();
    let fixture: Fixture = serde_json::from_value(json!({
        "scope": {},
        "namespaces": [{"id": 1, "parent_id": null}],
        "projects": projects,
        "records": records,
    }))
    .unwrap();
    let answers = fixture::run(&loaded, &fixture).unwrap();
    assert_eq!(answers.len(), PAIRS.len());
    for (i, ((project_id, channel), answer)) in PAIRS.iter().zip(&answers).enumerate() {
        assert_eq!(
            answer,
            &json!({"id": i + 1, "path": helm_blob_path(*project_id, channel), "in_scope": true}),
        );
    }
}

#[test]
fn helm_refuses_an_invalid_channel_with_a_clear_error() {
    let loaded = load_helm(&runtime(Limits::default()));
    let too_long = "a".repeat(256);
    let bad = [
        "bad channel",
        "../escape",
        "",
        "-lead",
        "trail_",
        "a..b",
        "über",
        too_long.as_str(),
    ];

    // Directly: derive refuses each row alone; the good row beside them passes.
    let mut rows: Vec<Row> = bad
        .iter()
        .enumerate()
        .map(|(i, c)| helm_writer_row(i as i64 + 1, 1, c))
        .collect();
    rows.push(helm_writer_row(99, 1, "stable"));
    let answers = loaded.derive(&rows).unwrap();
    for (channel, answer) in bad.iter().zip(&answers) {
        let error = answer.as_ref().expect_err(channel);
        assert!(error.contains("invalid Helm channel"), "{error}");
        assert!(
            error.contains(&format!("{channel:?}")),
            "error for {channel:?} does not name it: {error}"
        );
    }
    assert!(answers.last().unwrap().is_ok());

    // Through a fixture: `{"id", "error"}` for the bad record only.
    let fixture: Fixture = serde_json::from_value(json!({
        "scope": {},
        "projects": [{"id": 1, "namespace_id": 1}],
        "namespaces": [{"id": 1, "parent_id": null}],
        "records": [
            {"id": 1, "project_id": 1, "channel": "bad channel"},
            {"id": 2, "project_id": 1, "channel": "stable"},
        ],
    }))
    .unwrap();
    let answers = fixture::run(&loaded, &fixture).unwrap();
    let error = answers[0]["error"]
        .as_str()
        .expect("an error for the bad channel");
    assert!(error.contains("\"bad channel\""), "{error}");
    assert_eq!(answers[0]["id"], 1);
    assert!(answers[0].get("path").is_none());
    assert_eq!(
        answers[1],
        json!({"id": 2, "path": helm_blob_path(1, "stable"), "in_scope": true})
    );
}

// ---------------------------------------------------------------------------
// Scope

/// Namespaces `1 ─┬─ 2 ── 3` and `5` alone; projects 10 in 1, 20 in 2,
/// 30 in 3, 40 in 4, 50 in 5, on shards `default` and `gitaly-2`.
fn scope_topology() -> (Vec<NamespaceNode>, Vec<ProjectNode>) {
    //            └─ 4
    let namespaces = [
        (1, None),
        (2, Some(1)),
        (3, Some(2)),
        (4, Some(1)),
        (5, None),
    ]
    .map(|(id, parent_id)| NamespaceNode { id, parent_id })
    .to_vec();
    let projects = [
        (10, 1, "default"),
        (20, 2, "default"),
        (30, 3, "gitaly-2"),
        (40, 4, "default"),
        (50, 5, "gitaly-2"),
    ]
    .map(|(id, namespace_id, shard)| ProjectNode {
        id,
        namespace_id,
        repository_storage: shard.into(),
    })
    .to_vec();
    (namespaces, projects)
}

/// Records: (id, project_id, file_store). Record 6 is in object storage,
/// record 7 belongs to a project nobody knows.
const SCOPE_RECORDS: &[(i64, i64, i64)] = &[
    (1, 10, 1),
    (2, 20, 1),
    (3, 30, 1),
    (4, 40, 1),
    (5, 50, 1),
    (6, 30, 2),
    (7, 999, 1),
];

/// (selective sync, sync object storage, ids of the records in scope).
fn scope_cases() -> Vec<(SelectiveSync, bool, Vec<i64>)> {
    use SelectiveSync::{Everything, Namespaces, Shards};
    vec![
        (Everything, true, vec![1, 2, 3, 4, 5, 6]),
        (Everything, false, vec![1, 2, 3, 4, 5]),
        // A middle group admits its subtree, not its parent nor its siblings.
        (Namespaces(vec![2]), true, vec![2, 3, 6]),
        (Namespaces(vec![2]), false, vec![2, 3]),
        (Namespaces(vec![3]), true, vec![3, 6]),
        (Namespaces(vec![1]), true, vec![1, 2, 3, 4, 6]),
        (Namespaces(vec![4, 5]), true, vec![4, 5]),
        (Namespaces(vec![999]), true, vec![]),
        (Namespaces(vec![]), true, vec![]),
        (Shards(vec!["gitaly-2".into()]), true, vec![3, 5, 6]),
        (Shards(vec!["gitaly-2".into()]), false, vec![3, 5]),
        (
            Shards(vec!["default".into(), "gitaly-2".into()]),
            false,
            vec![1, 2, 3, 4, 5],
        ),
        (Shards(vec!["nowhere".into()]), true, vec![]),
    ]
}

fn in_scope_ids(answers: impl IntoIterator<Item = (i64, bool)>) -> Vec<i64> {
    answers
        .into_iter()
        .filter(|(_, in_scope)| *in_scope)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn helm_scope_table_through_in_scope() {
    let loaded = load_helm(&runtime(Limits::default()));
    let (namespaces, projects) = scope_topology();
    let topology = Arc::new(Topology::new(namespaces, projects));
    // Rows carry scope_columns: project_id, file_store.
    let rows: Vec<Row> = SCOPE_RECORDS
        .iter()
        .map(|&(id, project_id, file_store)| Row {
            id,
            values: vec![Value::Int(project_id), Value::Int(file_store)],
        })
        .collect();
    for (selective_sync, sync_object_storage, expected) in scope_cases() {
        let settings = SyncSettings {
            selective_sync: selective_sync.clone(),
            sync_object_storage,
        };
        let answers = loaded.in_scope(&settings, topology.clone(), &rows).unwrap();
        let got = in_scope_ids(
            rows.iter()
                .zip(answers)
                .map(|(row, a)| (row.id, a.unwrap())),
        );
        assert_eq!(
            got, expected,
            "{selective_sync:?}, sync_object_storage: {sync_object_storage}"
        );
    }
}

#[test]
fn helm_scope_table_through_fixtures() {
    let loaded = load_helm(&runtime(Limits::default()));
    let (namespaces, projects) = scope_topology();
    let records: Vec<_> = SCOPE_RECORDS
        .iter()
        .map(|&(id, project_id, file_store)| {
            json!({"id": id, "project_id": project_id, "channel": "stable", "file_store": file_store})
        })
        .collect();
    for (selective_sync, sync_object_storage, expected) in scope_cases() {
        let scope = match &selective_sync {
            SelectiveSync::Everything => json!({"sync_object_storage": sync_object_storage}),
            SelectiveSync::Namespaces(ids) => json!({
                "selective_sync_type": "namespaces", "namespace_ids": ids,
                "sync_object_storage": sync_object_storage,
            }),
            SelectiveSync::Shards(shards) => json!({
                "selective_sync_type": "shards", "shards": shards,
                "sync_object_storage": sync_object_storage,
            }),
        };
        let fixture: Fixture = serde_json::from_value(json!({
            "scope": scope, "namespaces": namespaces, "projects": projects, "records": records,
        }))
        .unwrap();
        let answers = fixture::run(&loaded, &fixture).unwrap();
        let mut decisions = Vec::new();
        for (&(id, project_id, _), answer) in SCOPE_RECORDS.iter().zip(&answers) {
            assert_eq!(answer["id"], id);
            assert_eq!(
                answer["path"],
                helm_blob_path(project_id, "stable"),
                "{answer}"
            );
            decisions.push((
                id,
                answer["in_scope"].as_bool().expect("in_scope is a boolean"),
            ));
        }
        assert_eq!(in_scope_ids(decisions), expected, "{scope}");
    }
}

#[test]
fn fixture_refuses_an_unknown_selective_sync_type() {
    let loaded = load_helm(&runtime(Limits::default()));
    let fixture: Fixture = serde_json::from_value(json!({
        "scope": {"selective_sync_type": "galaxies"},
        "records": [{"project_id": 1, "channel": "stable"}],
    }))
    .unwrap();
    let error = fixture::run(&loaded, &fixture).unwrap_err().to_string();
    assert!(error.contains("galaxies"), "{error}");
}

// ---------------------------------------------------------------------------
// Misbehaving components. Each case runs on a runtime that has the good Helm
// type loaded too, and checks that Helm still answers afterwards.

/// One row for the fixtures' `blob-paths` (path_columns: file).
fn file_rows() -> Vec<Row> {
    vec![Row {
        id: 1,
        values: vec![Value::Text("a.bin".into())],
    }]
}

#[test]
fn loop_forever_is_stopped_at_the_call_timeout() {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let runtime = runtime(limits.clone());
    let helm = load_helm(&runtime);
    let looping = runtime.load(&fixture_component("loop-forever")).unwrap();

    let started = Instant::now();
    let error = looping.blob_paths(&file_rows()).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&error, PluginError::Timeout { limit, .. } if *limit == limits.call_timeout),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("fixture_loop_forever"),
        "{error}"
    );
    // The deadline counts epoch ticks, so the call ran at least the timeout
    // less one tick, and stops within a few ticks after it; 2 s is the bound
    // we promise even on a loaded machine.
    assert!(
        took >= limits.call_timeout - EPOCH_TICK,
        "stopped early, after {took:?}"
    );
    assert!(took < Duration::from_secs(2), "stopped only after {took:?}");

    // A second call gets a fresh instance and the same treatment.
    assert!(matches!(
        looping.blob_paths(&file_rows()),
        Err(PluginError::Timeout { .. })
    ));
    assert_helm_answers(&helm);
}

#[test]
fn alloc_unbounded_hits_the_memory_cap() {
    // The SDK's allocator grows the memory itself up to 8 MiB, then hands
    // over to the standard allocator: with 16 MiB the standard allocator
    // reaches the cap, with 4 MiB the arena's own growth does. Either way
    // the call traps with the cap's error, well before the 2 s timeout.
    for mib in [16, 4] {
        let limits = Limits {
            memory_bytes: mib << 20,
            ..Limits::default()
        };
        let runtime = runtime(limits);
        let helm = load_helm(&runtime);
        let hoarder = runtime.load(&fixture_component("alloc-unbounded")).unwrap();

        let started = Instant::now();
        let error = hoarder.blob_paths(&file_rows()).unwrap_err();
        let took = started.elapsed();
        let PluginError::Trap { message, .. } = &error else {
            panic!("{mib} MiB: {error:?}")
        };
        assert!(
            message.contains(&format!("{mib} MiB of memory")),
            "{mib} MiB: {message}"
        );
        assert!(took < Duration::from_secs(1), "{mib} MiB: took {took:?}");
        assert_helm_answers(&helm);
    }
}

#[test]
fn trap_fails_the_batch_only() {
    let runtime = runtime(Limits::default());
    let helm = load_helm(&runtime);
    let trapping = runtime.load(&fixture_component("trap")).unwrap();

    let error = trapping.blob_paths(&file_rows()).unwrap_err();
    let PluginError::Trap { plugin, message } = &error else {
        panic!("expected a trap, got {error:?}")
    };
    assert_eq!(plugin, "fixture_trap");
    assert!(message.contains("unreachable"), "{message}");
    // Its other functions still answer: the instance was dropped, not the type.
    let settings = SyncSettings::everything();
    let lookup = Arc::new(Topology::default());
    let rows = [Row {
        id: 1,
        values: vec![Value::Int(1)],
    }];
    assert_eq!(
        trapping.in_scope(&settings, lookup, &rows).unwrap(),
        vec![Ok(true)]
    );
    assert_helm_answers(&helm);
}

#[test]
fn escape_path_loads_but_every_path_is_refused() {
    let runtime = runtime(Limits::default());
    let helm = load_helm(&runtime);
    let escaping = runtime.load(&fixture_component("escape-path")).unwrap();

    let rows: Vec<Row> = (1..=3)
        .map(|id| Row {
            id,
            values: vec![Value::Text("x".into())],
        })
        .collect();
    let answers = escaping.blob_paths(&rows).unwrap();
    assert_eq!(answers.len(), rows.len());
    for answer in answers {
        match answer {
            Ok(path) => panic!("an escaping path was accepted: {path}"),
            Err(error) => assert!(error.contains(".."), "{error}"),
        }
    }
    assert_helm_answers(&helm);
}

#[test]
fn wrong_wit_version_is_refused_at_load() {
    let runtime = runtime(Limits::default());
    let helm = load_helm(&runtime);
    let error = runtime
        .load(&fixture_component("wrong-wit-version"))
        .unwrap_err();
    assert!(
        matches!(&error, LoadError::WitVersion { found } if found == "9.0.0"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("9.0.0") && message.contains("0.1.x"),
        "{message}"
    );
    assert_helm_answers(&helm);
}

#[test]
fn every_misbehaviour_in_turn_on_one_runtime() {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let runtime = runtime(limits);
    let helm = load_helm(&runtime);
    for name in [
        "loop-forever",
        "alloc-unbounded",
        "trap",
        "escape-path",
        "wrong-wit-version",
    ] {
        match runtime.load(&fixture_component(name)) {
            Ok(loaded) => match loaded.blob_paths(&file_rows()) {
                Ok(answers) => assert!(answers.iter().all(Result::is_err), "{name}: {answers:?}"),
                Err(PluginError::Timeout { .. } | PluginError::Trap { .. }) => {}
                Err(other) => panic!("{name}: {other:?}"),
            },
            Err(error) => assert!(
                matches!(error, LoadError::WitVersion { .. }),
                "{name}: {error:?}"
            ),
        }
        assert_helm_answers(&helm);
        // A fresh load on the same runtime works as well.
        assert_helm_answers(&load_helm(&runtime));
    }
}

// ---------------------------------------------------------------------------
// Loading

#[test]
fn non_wasm_bytes_are_refused() {
    let runtime = runtime(Limits::default());
    for bytes in [
        &b""[..],
        b"#!/bin/sh\necho hi\n",
        b"\x7fELF\x02\x01\x01\0",
        b"{\"records\": []}",
    ] {
        let error = runtime.load(bytes).unwrap_err();
        assert!(
            matches!(error, LoadError::NotWasm(_)),
            "{bytes:?}: {error:?}"
        );
        assert!(error.to_string().contains("not a WebAssembly"), "{error}");
    }
}

#[test]
fn truncated_components_are_refused_without_panic() {
    let runtime = runtime(Limits::default());
    let helm = load_helm(&runtime);
    let bytes = helm_component();
    let len = bytes.len();
    for cut in [4, 8, 9, 12, 100, len / 3, len / 2, len - 100, len - 1] {
        let error = runtime
            .load(&bytes[..cut])
            .expect_err(&format!("{cut} of {len} bytes loaded"));
        let message = error.to_string();
        assert!(!message.is_empty());
        match cut {
            // Only the header: nothing exported.
            8 => assert!(
                matches!(error, LoadError::MissingExport),
                "{cut}: {error:?}"
            ),
            _ => assert!(
                matches!(error, LoadError::NotWasm(_) | LoadError::MissingExport),
                "{cut}: {error:?}"
            ),
        }
    }
    assert_helm_answers(&helm);
}

fn cached_artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn compile_cache_serves_the_second_load() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(Limits::default(), Some(dir.path().join("cache"))).unwrap();
    let first = load_helm(&runtime);
    assert_eq!(first.timings().outcome, CompileOutcome::Compiled);
    let second = load_helm(&runtime);
    assert_eq!(second.timings().outcome, CompileOutcome::Cached);
    assert_eq!(first.sha256(), second.sha256());
    assert_helm_answers(&second);
    assert_eq!(cached_artifacts(&dir.path().join("cache")).len(), 1);

    // Another runtime (another process, in effect) with the same settings reuses it.
    let other = PluginRuntime::new(Limits::default(), Some(dir.path().join("cache"))).unwrap();
    let third = load_helm(&other);
    assert_eq!(third.timings().outcome, CompileOutcome::Cached);
    assert_helm_answers(&third);
}

#[test]
fn corrupted_cache_artifacts_are_discarded_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(Limits::default(), Some(dir.path().to_path_buf())).unwrap();
    load_helm(&runtime);
    let [artifact] = cached_artifacts(dir.path())
        .try_into()
        .expect("one artifact");
    let good = std::fs::read(&artifact).unwrap();

    let mut flipped = good.clone();
    for i in (good.len() / 4..good.len()).step_by(good.len() / 8) {
        flipped[i] ^= 0xff;
    }
    let corruptions: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a compiled component".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped bytes", flipped),
    ];
    for (what, bytes) in corruptions {
        std::fs::write(&artifact, &bytes).unwrap();
        let loaded = load_helm(&runtime);
        assert_eq!(loaded.timings().outcome, CompileOutcome::Compiled, "{what}");
        assert_helm_answers(&loaded);
        // The artifact was rewritten, and serves the next load.
        assert_eq!(std::fs::read(&artifact).unwrap(), good, "{what}");
        assert_eq!(
            load_helm(&runtime).timings().outcome,
            CompileOutcome::Cached,
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------
// `geohost plugin test`

const GEOHOST: &str = env!("CARGO_BIN_EXE_geohost");

fn run_plugin_test(component: &str, fixture: &std::path::Path) -> std::process::Output {
    std::process::Command::new(GEOHOST)
        .args(["plugin", "test", component, "--fixtures"])
        .arg(fixture)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running geohost")
}

/// Each stdout line as a JSON object, checked to be `{id, path, in_scope}` or `{id, error}`.
fn answer_lines(output: &std::process::Output) -> Vec<serde_json::Value> {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
            let mut keys: Vec<&str> = value
                .as_object()
                .expect("an object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert!(
                keys == ["id", "in_scope", "path"] || keys == ["error", "id"],
                "{line}"
            );
            value
        })
        .collect()
}

#[test]
fn cli_plugin_test_prints_one_answer_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("helm.json");
    std::fs::write(
        &fixture,
        json!({
            "scope": {"selective_sync_type": "namespaces", "namespace_ids": [2], "sync_object_storage": false},
            "namespaces": [{"id": 1, "parent_id": null}, {"id": 2, "parent_id": 1}, {"id": 3, "parent_id": 2}],
            "projects": [
                {"id": 10, "namespace_id": 1},
                {"id": 30, "namespace_id": 3, "repository_storage": "gitaly-2"},
            ],
            "records": [
                {"id": 1, "project_id": 10, "channel": "stable"},
                {"id": 2, "project_id": 30, "channel": "stable", "file_store": 1},
                {"id": 3, "project_id": 30, "channel": "dev", "file_store": 2},
                {"id": 4, "project_id": 30, "channel": "no good"},
                {"id": 5, "project_id": 30, "channel": "stable", "colour": "blue"},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let expected = [
        json!({"id": 1, "path": helm_blob_path(10, "stable"), "in_scope": false}),
        json!({"id": 2, "path": helm_blob_path(30, "stable"), "in_scope": true}),
        json!({"id": 3, "path": helm_blob_path(30, "dev"), "in_scope": false}),
    ];

    let shipped_file = dir.path().join("helm.wasm");
    std::fs::write(&shipped_file, helm_component()).unwrap();
    for component in [
        "helm-metadata-cache",
        "packages_helm_metadata_cache",
        shipped_file.to_str().unwrap(),
    ] {
        let output = run_plugin_test(component, &fixture);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{component}: {stderr}");
        let answers = answer_lines(&output);
        assert_eq!(answers.len(), 5, "{component}: {answers:?}");
        assert_eq!(answers[..3], expected, "{component}");
        assert_eq!(answers[3]["id"], 4);
        assert!(
            answers[3]["error"]
                .as_str()
                .unwrap()
                .contains("\"no good\""),
            "{}",
            answers[3]
        );
        assert_eq!(answers[4]["id"], 5);
        assert!(
            answers[4]["error"].as_str().unwrap().contains("colour"),
            "{}",
            answers[4]
        );
    }
}

#[test]
fn cli_plugin_test_with_a_component_file_reports_refused_paths() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("escape.json");
    std::fs::write(
        &fixture,
        json!({
            "scope": {},
            "namespaces": [{"id": 1, "parent_id": null}],
            "projects": [{"id": 10, "namespace_id": 1}],
            "records": [{"id": 7, "project_id": 10, "file": "a.bin"}, {"id": 8, "project_id": 10, "file": "b.bin"}],
        })
        .to_string(),
    )
    .unwrap();
    let component = fixture_component_path("escape-path");
    fixture_component("escape-path"); // panics with the xtask hint when missing
    let output = run_plugin_test(component.to_str().unwrap(), &fixture);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers = answer_lines(&output);
    assert_eq!(answers.len(), 2);
    for (answer, id) in answers.iter().zip([7, 8]) {
        assert_eq!(answer["id"], id);
        assert!(answer["error"].as_str().unwrap().contains(".."), "{answer}");
    }
}

#[test]
fn cli_plugin_test_rejects_a_bad_fixture_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not-json.json", Some("{\"scope\": {}, \"records\": [")),
        (
            "unknown-field.json",
            Some("{\"scope\": {}, \"records\": [], \"colour\": 1}"),
        ),
        ("no-records.json", Some("{\"scope\": {}}")),
        ("missing.json", None),
    ];
    for (name, contents) in cases {
        let fixture = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&fixture, contents).unwrap();
        }
        let output = run_plugin_test("helm-metadata-cache", &fixture);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} was accepted");
        assert!(output.stdout.is_empty(), "{name}: printed answers");
        assert!(
            stderr.contains(name),
            "{name}: the message does not name the file: {stderr}"
        );
        let reason = if contents.is_some() {
            "parsing fixtures"
        } else {
            "reading fixtures"
        };
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }

    // And an unknown component.
    let fixture = dir.path().join("not-json.json");
    let output = run_plugin_test("no-such-type", &fixture);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no-such-type") && stderr.contains("helm-metadata-cache"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_compile_cache_does_not_fail_loads() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache directory should be: nothing can be written there.
    let not_a_dir = dir.path().join("cache");
    std::fs::write(&not_a_dir, "not a directory").unwrap();
    let runtime = PluginRuntime::new(Limits::default(), Some(not_a_dir.join("artifacts"))).unwrap();
    for _ in 0..2 {
        let loaded = load_helm(&runtime);
        assert_eq!(loaded.timings().outcome, CompileOutcome::Compiled);
        assert_helm_answers(&loaded);
    }
}

/// A scope row of the hostile fixtures: project 1, and the size it asks
/// for in its `file`.
fn hostile_row(size: u64) -> Vec<Row> {
    vec![Row {
        id: 1,
        values: vec![Value::Int(1), Value::Text(format!("{size}-0"))],
    }]
}

#[test]
fn project_lookups_are_capped_and_their_error_names_the_cap() {
    let runtime = runtime(Limits::default());
    let helm = load_helm(&runtime);
    let flood = runtime.load(&fixture_component("projects-flood")).unwrap();
    let lookup: Arc<dyn ProjectLookup> = Arc::new(Topology::default());
    let everything = SyncSettings::everything();
    // Past the lookup cap (the ids still fit the hostcall fuel).
    let error = flood
        .in_scope(&everything, lookup.clone(), &hostile_row(20_000))
        .unwrap_err();
    assert!(matches!(error, PluginError::Limit { .. }), "{error:?}");
    assert!(error.to_string().contains("at most 10000"), "{error}");
    // Millions of ids: refused before the host copies them.
    let error = flood
        .in_scope(&everything, lookup.clone(), &hostile_row(3_500_000))
        .unwrap_err();
    assert!(
        error.to_string().contains("bytes handed to the host"),
        "{error}"
    );
    // Within the cap: answered.
    let answers = flood
        .in_scope(&everything, lookup, &hostile_row(10_000))
        .unwrap();
    assert_eq!(answers, [Ok(true)]);
    assert_helm_answers(&helm);
}

#[test]
fn answers_past_the_hostcall_fuel_are_refused_before_they_are_copied() {
    let runtime = runtime(Limits::default());
    let lookup: Arc<dyn ProjectLookup> = Arc::new(Topology::default());
    for (fixture, size) in [("huge-string", 40_000_000), ("many-answers", 1_000_000)] {
        let hostile = runtime.load(&fixture_component(fixture)).unwrap();
        let error = hostile
            .in_scope(
                &SyncSettings::everything(),
                lookup.clone(),
                &hostile_row(size),
            )
            .unwrap_err();
        assert!(
            matches!(error, PluginError::Trap { .. }),
            "{fixture}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("fuel allocated for hostcalls has been exhausted")
                && message.contains("264192 bytes handed to the host"),
            "{fixture}: {message}"
        );
    }
    // Within the fuel: a plain error, or more answers than rows.
    let small = runtime.load(&fixture_component("huge-string")).unwrap();
    let answers = small
        .in_scope(
            &SyncSettings::everything(),
            lookup.clone(),
            &hostile_row(1_000),
        )
        .unwrap();
    assert_eq!(answers[0].as_ref().unwrap_err().len(), 1_000);
    let many = runtime.load(&fixture_component("many-answers")).unwrap();
    let error = many
        .in_scope(&SyncSettings::everything(), lookup, &hostile_row(10))
        .unwrap_err();
    assert!(
        matches!(error, PluginError::WrongAnswerCount { .. }),
        "{error:?}"
    );
}

/// A project lookup that takes `delay` per id.
struct Slow(Duration);

impl ProjectLookup for Slow {
    fn project(&self, _id: i64) -> Option<geohost::topology::ProjectInfo> {
        std::thread::sleep(self.0);
        None
    }
}

#[test]
fn host_lookups_count_against_the_call_deadline() {
    let runtime = runtime(Limits {
        call_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let helm = load_helm(&runtime);
    // 5,000 rows of as many projects: one lookup of 5,000 ids at 1 ms each
    // (a 0.2 type asks once per distinct project).
    let rows: Vec<Row> = (1..=5_000)
        .map(|id| Row {
            id,
            values: vec![Value::Int(id), Value::Int(1)],
        })
        .collect();
    let started = Instant::now();
    let error = helm
        .in_scope(
            &SyncSettings::everything(),
            Arc::new(Slow(Duration::from_millis(1))),
            &rows,
        )
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, PluginError::Timeout { .. }), "{error:?}");
    // Stopped at the deadline, inside the host's lookup, not 5 s later.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
