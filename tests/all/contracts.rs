//! The contract versions side by side: the Helm type as shipped before 0.2
//! (its 0.1 build, kept under `plugins/fixtures/v0.1/`), before 0.2.1 (its
//! 0.2.0 build, `plugins/fixtures/v0.2.0/`: a string per text value) and
//! as shipped now (0.2.1: batches packed) give the same decisions on the
//! same records, and all still load. A malformed packed answer is refused
//! as a whole.

use crate::support::{fixture_component, helm_component, runtime};
use geohost::plugin::{Contract, Limits, LoadedType, Row, SelectiveSync, SyncSettings, Value};
use geohost::topology::{NamespaceNode, ProjectLookup, ProjectNode, Topology};
use std::sync::Arc;

const HELM_0_1: &[u8] = include_bytes!("../../plugins/fixtures/v0.1/helm-metadata-cache.wasm");
const NPM_0_1: &[u8] = include_bytes!("../../plugins/fixtures/v0.1/npm-metadata-cache.wasm");
const HELM_0_2_0: &[u8] = include_bytes!("../../plugins/fixtures/v0.2.0/helm-metadata-cache.wasm");

const RECORDS: usize = 100_000;
const BATCH: usize = 1_000;

/// A small deterministic generator: every run sees the same records.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Namespaces 1..=30 in three levels, projects 1..=200 (one in three on a
/// second shard); records spread over them and over projects that do not
/// exist, with valid, invalid and overlong channels, on local disk, object
/// storage or `NULL`.
struct World {
    topology: Arc<dyn ProjectLookup>,
    /// (id, project_id, channel, file_store)
    records: Vec<(i64, i64, String, Value)>,
}

fn world() -> World {
    let mut rng = Lcg(0x5eed);
    let namespaces: Vec<NamespaceNode> = (1..=30)
        .map(|id| NamespaceNode {
            id,
            parent_id: match id {
                1..=3 => None,
                4..=12 => Some(1 + (id - 4) / 3),
                _ => Some(4 + (id - 13) % 9),
            },
        })
        .collect();
    let projects: Vec<ProjectNode> = (1..=200)
        .map(|id| ProjectNode {
            id,
            namespace_id: 1 + rng.below(30) as i64,
            repository_storage: if id % 3 == 0 { "gitaly-2" } else { "default" }.into(),
        })
        .collect();
    let channels = ["stable", "beta", "v1.2-rc_3", "A9", "nightly.build", "x"];
    let records = (1..=RECORDS as i64)
        .map(|id| {
            let project = 1 + rng.below(220) as i64; // 201..=220 do not exist
            let channel = match rng.below(50) {
                0 => "no good".to_string(),
                1 => "stable-".to_string(),
                2 => "a".repeat(256),
                3 => String::new(),
                n => format!("{}{}", channels[n as usize % channels.len()], id % 97),
            };
            let file_store = match rng.below(10) {
                0 => Value::Int(2),
                1 => Value::Null,
                _ => Value::Int(1),
            };
            (id, project, channel, file_store)
        })
        .collect();
    World {
        topology: Arc::new(Topology::new(namespaces, projects)),
        records,
    }
}

fn settings() -> Vec<SyncSettings> {
    let with = |selective_sync, sync_object_storage| SyncSettings {
        selective_sync,
        sync_object_storage,
    };
    vec![
        with(SelectiveSync::Everything, true),
        with(SelectiveSync::Everything, false),
        with(SelectiveSync::Namespaces(vec![2, 7, 25]), false),
        with(SelectiveSync::Namespaces(vec![]), true),
        with(SelectiveSync::Shards(vec!["gitaly-2".into()]), true),
    ]
}

/// Everything `loaded` decides about the world: derive, then blob paths
/// and scope (under each setting) of the records it derived.
fn decide(loaded: &LoadedType, world: &World) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in world.records.chunks(BATCH) {
        let writer: Vec<Row> = chunk
            .iter()
            .map(|(id, project, channel, _)| Row {
                id: *id,
                values: vec![
                    Value::Null,
                    Value::Int(*project),
                    Value::Int(0),
                    Value::Text(channel.clone()),
                ],
            })
            .collect();
        let derived = loaded.derive(&writer).unwrap();
        let mut paths = Vec::new();
        let mut scopes = Vec::new();
        for ((id, project, _, file_store), answer) in chunk.iter().zip(&derived) {
            out.push(format!("{id} derive {answer:?}"));
            let Ok([file, key]) = answer.clone().map(|v| <[Value; 2]>::try_from(v).unwrap()) else {
                continue;
            };
            paths.push(Row {
                id: *id,
                values: vec![key, file],
            });
            scopes.push(Row {
                id: *id,
                values: vec![Value::Int(*project), file_store.clone()],
            });
        }
        for (row, path) in paths.iter().zip(loaded.blob_paths(&paths).unwrap()) {
            out.push(format!(
                "{} path {:?}",
                row.id,
                path.map(|p| p.as_str().to_string())
            ));
        }
        for s in settings() {
            let decisions = loaded
                .in_scope(&s, world.topology.clone(), &scopes)
                .unwrap();
            for (row, decision) in scopes.iter().zip(decisions) {
                out.push(format!("{} scope {s:?} {decision:?}", row.id));
            }
        }
    }
    out
}

#[test]
fn helm_0_1_0_2_0_and_packed_decide_the_same_on_100_000_records() {
    let runtime = runtime(Limits::default());
    let v1 = runtime.load(HELM_0_1).unwrap();
    let v2_0 = runtime.load(HELM_0_2_0).unwrap();
    let v2 = runtime.load(helm_component()).unwrap();
    assert_eq!((v1.contract(), v1.wit_version()), (Contract::V0_1, "0.1.0"));
    assert_eq!(
        (v2_0.contract(), v2_0.wit_version(), v2_0.packed()),
        (Contract::V0_2, "0.2.0", false)
    );
    assert_eq!(
        (v2.contract(), v2.wit_version(), v2.packed()),
        (Contract::V0_2, "0.2.1", true)
    );
    assert_eq!(v1.identity(), v2.identity(), "same type, same table");
    assert_eq!(v2_0.identity(), v2.identity(), "same type, same table");

    let world = world();
    let new = decide(&v2, &world);
    for (old, version) in [(&v1, "0.1"), (&v2_0, "0.2.0")] {
        let old = decide(old, &world);
        assert_eq!(old.len(), new.len());
        for (a, b) in old.iter().zip(&new) {
            assert_eq!(a, b, "{version} and 0.2.1 (packed) disagree");
        }
    }
    // The world exercises every answer: refusals, both scope outcomes, paths.
    let count = |what: &str| new.iter().filter(|l| l.contains(what)).count();
    assert!(count("derive Err") > 1_000, "refused records");
    assert!(count("path Ok") > 90_000);
    assert!(count("Ok(true)") > 10_000 && count("Ok(false)") > 10_000);
    assert!(count("invalid Helm channel") > 1_000);
}

#[test]
fn the_shipped_0_1_builds_still_load_and_answer() {
    let runtime = runtime(Limits::default());
    for bytes in [HELM_0_1, NPM_0_1] {
        let loaded = runtime.load(bytes).unwrap();
        assert_eq!(loaded.contract(), Contract::V0_1);
        assert!(
            loaded.vectors().unwrap().is_none(),
            "0.1 builds carry no vectors"
        );
        let rows = [Row {
            id: 1,
            values: vec![Value::Text("aa/bb".into()), Value::Text("f".into())],
        }];
        assert_eq!(
            loaded.blob_paths(&rows).unwrap()[0]
                .as_ref()
                .unwrap()
                .as_str(),
            "aa/bb/f"
        );
    }
}

/// Rows of the fixture's path column (`file`), the first naming the lie.
fn files(first: &str) -> Vec<Row> {
    [first, "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, file)| Row {
            id: i as i64 + 1,
            values: vec![Value::Text(file.to_string())],
        })
        .collect()
}

#[test]
fn a_malformed_packed_answer_is_refused_whole() {
    let runtime = runtime(Limits::default());
    let liar = runtime.load(&fixture_component("packed-lies")).unwrap();
    assert!(liar.packed());
    let paths: Vec<String> = liar
        .blob_paths(&files("a"))
        .unwrap()
        .into_iter()
        .map(|p| p.unwrap().as_str().to_string())
        .collect();
    assert_eq!(paths, ["files/a", "files/b", "files/c"]);
    for (lie, why) in [
        ("split", "not ascending value boundaries"),
        ("past", "not ascending value boundaries"),
        ("descending", "not ascending value boundaries"),
        ("trailing", "1 bytes after its last value"),
        ("short", "answered 2 results for 3 rows"),
    ] {
        let error = liar.blob_paths(&files(lie)).unwrap_err().to_string();
        assert!(error.contains(why), "{lie}: {error}");
    }
}
