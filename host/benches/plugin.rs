//! The plugin runtime's cost, measured on the shipped Helm metadata cache:
//! scope + path decisions per second through the plugin (batches of 1,000
//! records) with the shipped build (column batches, text packed: 0.2.1)
//! beside its 0.2.0 build (a string per text value,
//! `plugins/fixtures/v0.2.0/`) and its 0.1 build (rows of variants,
//! `plugins/fixtures/v0.1/`) and the same decision in native
//! Rust, the cost of one call, the time to instantiate a type, and the time
//! to compile it cold and to load it from the compile cache. Then the
//! Python type (`plugins/target/components/nuget-symbol.wasm`, when built):
//! its decisions/s and instantiation beside the Rust type's. Last, the CPU
//! of a scope re-evaluation of 1,000,000 records as the consistency pass
//! does it (feed JSON decoded, then `in-scope` in batches of 10,000), with
//! the 0.1 build (before) and the 0.2 build (after).
//!
//! `cargo bench -p geohost --bench plugin`. The figures are printed next to the
//! goals, never asserted: they depend on the machine. Throughputs are per
//! second of CPU time of the measuring thread (Linux; wall-clock elsewhere),
//! so that other work on a shared machine does not count against them; the
//! wall-clock rate is printed beside.
//!
//! To profile the plugin path alone, `GEOHOST_BENCH_PROFILE=SECONDS` runs only
//! the plugin decisions for that long, for example under `perf record`;
//! with `GEOHOST_PERFMAP=1` the engine also writes `/tmp/perf-PID.map`, so
//! that perf names the guest's functions. `GEOHOST_BENCH_HELM=FILE` measures
//! that build of the Helm type instead of the shipped one.

#[path = "common/mod.rs"]
mod common;

use geohost::plugin::{
    CompileOutcome, Limits, LoadedType, PluginRuntime, Row, SelectiveSync, SyncSettings, Value,
    builtin,
};
use geohost::topology::{NamespaceNode, ProjectLookup, ProjectNode, Topology};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RECORDS: usize = 1_000_000;
const PROJECTS: i64 = 1_000;
const BATCH: usize = 1_000;
/// The namespace tree: ROOTS top-level groups, each with FANOUT subgroups,
/// each with FANOUT subgroups again.
const ROOTS: i64 = 10;
const FANOUT: i64 = 10;
/// Passes over the records per measurement; the fastest counts.
const PASSES: usize = 3;
const SINGLE_ROW_CALLS: usize = 5_000;
const INSTANTIATIONS: usize = 5_000;
const LOADS: usize = 5;

const GOAL_DECISIONS_PER_SEC: f64 = 1_000_000.0;
const GOAL_INSTANTIATE: Duration = Duration::from_micros(50);
/// Decisions/s of the 0.2 build against native Rust's (issue 18: ≥ 1/3).
const GOAL_NATIVE_SHARE: f64 = 1.0 / 3.0;
/// The Helm type as built against the 0.1 contract.
const HELM_0_1: &[u8] = include_bytes!("../../plugins/fixtures/v0.1/helm-metadata-cache.wasm");
/// The Helm type as built against 0.2.0 (text one string per value; the
/// shipped build exports 0.2.1's `packed`).
const HELM_0_2_0: &[u8] = include_bytes!("../../plugins/fixtures/v0.2.0/helm-metadata-cache.wasm");
/// Records of the Python type's measure (it decides at a fraction of Rust's rate).
const PYTHON_RECORDS: usize = 50_000;
const PYTHON_INSTANTIATIONS: usize = 200;
/// The scope re-evaluation: records, and the consistency pass's batch.
const SCOPE_RECORDS: usize = 1_000_000;
const SCOPE_BATCH: usize = 10_000;

fn main() {
    let started = Instant::now();
    // `GEOHOST_BENCH_HELM=FILE`: measure that build of the type instead
    // of the shipped one (to compare builds without rebuilding the host).
    let helm_file = std::env::var_os("GEOHOST_BENCH_HELM")
        .map(|path| std::fs::read(&path).expect("reading GEOHOST_BENCH_HELM"));
    let helm: &[u8] = match &helm_file {
        Some(bytes) => bytes,
        None => {
            builtin::by_stem("helm-metadata-cache")
                .expect("helm-metadata-cache is shipped; run `cargo xtask plugins` first")
                .bytes
        }
    };
    let runtime = PluginRuntime::new(Limits::default(), None).expect("runtime");
    let loaded = runtime.load(helm).expect("loading the Helm component");

    let world = World::build();
    let settings = SyncSettings {
        selective_sync: SelectiveSync::Namespaces(world.selected.clone()),
        sync_object_storage: false,
    };
    let lookup: Arc<dyn ProjectLookup> = Arc::new(world.topology.clone());

    // The records as the primary stores them: writer columns in, derived
    // columns (file, object_storage_key) computed by the type's `derive`.
    let (batches, derive) = measure(|| derive_records(&loaded, &world));

    if let Some(seconds) = std::env::var("GEOHOST_BENCH_PROFILE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < until {
            black_box(decide_with_plugin(&loaded, &settings, &lookup, &batches));
        }
        return;
    }

    // The goal is a ratio: its two sides are measured in turns, so that a
    // change of load during the run slows both alike.
    let (plugin, native_row) = fastest_in_turns(
        || decide_with_plugin(&loaded, &settings, &lookup, &batches),
        || decide_native_from_row(&world, &batches, Join::Slices),
    );
    let old = runtime
        .load(HELM_0_1)
        .expect("loading the Helm 0.1 component");
    let plugin_0_1 = fastest(|| decide_with_plugin(&old, &settings, &lookup, &batches));
    assert_eq!(
        plugin.0.in_scope, plugin_0_1.0.in_scope,
        "0.1 and 0.2 disagree on scope"
    );
    assert_eq!(plugin.0.path_bytes, plugin_0_1.0.path_bytes);
    let unpacked = runtime
        .load(HELM_0_2_0)
        .expect("loading the Helm 0.2.0 component");
    let plugin_0_2_0 = fastest(|| decide_with_plugin(&unpacked, &settings, &lookup, &batches));
    assert_eq!(
        (plugin.0.in_scope, plugin.0.path_bytes),
        (plugin_0_2_0.0.in_scope, plugin_0_2_0.0.path_bytes),
        "0.2.0 and 0.2.1 disagree"
    );
    let native_format = fastest(|| decide_native_from_row(&world, &batches, Join::Format));
    let native_full = fastest(|| decide_native_from_scratch(&world));
    assert_eq!(
        plugin.0.in_scope, native_row.0.in_scope,
        "plugin and native disagree on scope"
    );
    assert_eq!(
        plugin.0.in_scope, native_full.0.in_scope,
        "plugin and native disagree on scope"
    );
    assert_eq!(
        plugin.0.path_bytes, native_full.0.path_bytes,
        "plugin and native disagree on paths"
    );
    let single_call = median_single_row_call(&loaded, &batches[0]);
    let instantiate = median_instantiate(&runtime, &loaded);
    let loads = compile_and_cached_load(helm);

    let python = python_figures(&world, &settings, &lookup);
    let scope_cpu = [HELM_0_1, helm].map(|bytes| scope_reevaluation_cpu(&runtime, bytes));

    let mut table = Table::default();
    let rate = |t: &Timing| RECORDS as f64 / t.busy().as_secs_f64();
    let native_rate = rate(&native_row.1);
    common::headline(
        "plugin",
        "plugin decisions/s (in_scope + blob_paths, per busy core)",
        "decisions/s",
        rate(&plugin.1),
        &[
            ("native Rust", native_rate),
            ("the same type built for 0.1", rate(&plugin_0_1.1)),
            ("the same type built for 0.2.0", rate(&plugin_0_2_0.1)),
        ],
        true,
    );
    common::headline(
        "plugin",
        "scope re-evaluation of 1,000,000 records, CPU (0.2 build; 0.1 beside)",
        "s",
        scope_cpu[1].as_secs_f64(),
        &[("the same type built for 0.1", scope_cpu[0].as_secs_f64())],
        false,
    );
    let (pass, timing) = plugin;
    table.throughput(
        &format!(
            "decisions/s, Helm plugin 0.2 (columns{}; in_scope + blob_paths)",
            if loaded.packed() { ", text packed" } else { "" }
        ),
        timing,
        RECORDS,
        Some(GOAL_DECISIONS_PER_SEC),
    );
    let share = rate(&timing) / native_rate;
    table.goal(
        "  share of native Rust's rate (key from the row)",
        format!("{share:.2}×"),
        format!("≥ {GOAL_NATIVE_SHARE:.2}×"),
        share >= GOAL_NATIVE_SHARE,
    );
    table.throughput(
        "decisions/s, Helm plugin 0.2.0 build (columns, a string per text value)",
        plugin_0_2_0.1,
        RECORDS,
        None,
    );
    table.throughput(
        "decisions/s, Helm plugin 0.1 (rows of variants)",
        plugin_0_1.1,
        RECORDS,
        None,
    );
    table.figure(
        "  share of in_scope (with its site.projects lookups)",
        format!(
            "{:.0}%",
            100.0 * pass.scope_time.as_secs_f64() / timing.wall.as_secs_f64()
        ),
    );
    table.figure(
        "  page faults per batch (both calls)",
        pass.page_faults.map_or("n/a".into(), |f| {
            format!("{:.1}", f as f64 / (RECORDS / BATCH) as f64)
        }),
    );
    table.figure(
        "  one call of one row (blob_paths, median)",
        micros(single_call),
    );
    table.throughput(
        "decisions/s, native Rust (ancestry walk, key from the row)",
        native_row.1,
        RECORDS,
        None,
    );
    table.throughput(
        "  the same with the path by `format!` (the type's code until issue 18)",
        native_format.1,
        RECORDS,
        None,
    );
    table.figure(
        "  Helm plugin 0.2's share of it",
        format!("{:.2}×", rate(&timing) / rate(&native_format.1)),
    );
    table.throughput(
        "decisions/s, native Rust (ancestry walk, sha256 ×2, hashed path)",
        native_full.1,
        RECORDS,
        None,
    );
    table.throughput(
        "derive/s, Helm plugin (sha256 ×2 in wasm)",
        derive,
        RECORDS,
        None,
    );
    table.goal(
        &format!(
            "instantiate (median of {})",
            common::thousands(INSTANTIATIONS)
        ),
        micros(instantiate),
        format!("≤ {}", micros(GOAL_INSTANTIATE)),
        instantiate <= GOAL_INSTANTIATE,
    );
    table.figure(
        &format!("compile, cold (median of {LOADS})"),
        millis(loads.compile),
    );
    table.figure(
        &format!("load from the compile cache (median of {LOADS})"),
        millis(loads.cached),
    );
    table.figure("link (instantiate_pre, median)", millis(loads.link));
    match &python {
        Some(p) => {
            table.throughput(
                &format!(
                    "decisions/s, Python type (NuGet symbol, {} records)",
                    common::thousands(PYTHON_RECORDS)
                ),
                p.decisions,
                PYTHON_RECORDS,
                None,
            );
            table.figure(
                &format!("  instantiate (median of {PYTHON_INSTANTIATIONS})"),
                micros(p.instantiate),
            );
            table.figure(
                "  compile, cold / load from the compile cache",
                format!("{} / {}", millis(p.compile), millis(p.cached)),
            );
            table.figure(
                "  component size",
                format!("{:.1} MiB", p.size as f64 / (1 << 20) as f64),
            );
        }
        None => table.figure(
            "Python type",
            "not built (cargo xtask plugins -p nuget-symbol)".into(),
        ),
    }
    table.figure(
        "scope re-evaluation of 1,000,000 records, process CPU: 0.1 build (before)",
        format!("{:.2} s", scope_cpu[0].as_secs_f64()),
    );
    table.figure(
        "scope re-evaluation of 1,000,000 records, process CPU: 0.2 build (after)",
        format!("{:.2} s", scope_cpu[1].as_secs_f64()),
    );

    println!("\nGeohost plugin runtime: Helm metadata cache");
    println!(
        "{} records over {} projects in {} namespaces (3 levels), batches of {}; \
         namespaces selective sync on {} groups ({} records in scope), object storage off\n",
        common::thousands(RECORDS),
        common::thousands(PROJECTS as usize),
        common::thousands(world.namespace_count),
        common::thousands(BATCH),
        world.selected.len(),
        common::thousands(pass.in_scope),
    );
    table.print();
    println!(
        "\nthroughput: fastest of {PASSES} passes, per CPU-second of the measuring thread{} \
         (the shipped build's and native Rust's passes in turns); component {} KiB; \
         bench took {:.1} s",
        if timing.cpu.is_some() {
            ""
        } else {
            " (not available here: wall clock)"
        },
        helm.len() / 1024,
        started.elapsed().as_secs_f64()
    );
}

/// The Python type's figures.
struct PythonFigures {
    decisions: Timing,
    instantiate: Duration,
    compile: Duration,
    cached: Duration,
    size: usize,
}

/// The Python type (NuGet symbol) on the same projects and settings: its
/// records derived by the type, then scope + path decisions; its
/// instantiation; its compile times. `None` when it is not built.
fn python_figures(
    world: &World,
    settings: &SyncSettings,
    lookup: &Arc<dyn ProjectLookup>,
) -> Option<PythonFigures> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/components/nuget-symbol.wasm");
    let bytes = std::fs::read(&path).ok()?;
    let cache = tempfile::tempdir().expect("temporary directory");
    let cold = PluginRuntime::new(Limits::default(), Some(cache.path().into())).expect("runtime");
    let loaded = cold.load(&bytes).expect("loading the Python type");
    let compile = loaded.timings().compile;
    let warm = PluginRuntime::new(Limits::default(), Some(cache.path().into())).expect("runtime");
    let cached = warm
        .load(&bytes)
        .expect("loading the Python type")
        .timings()
        .compile;
    // Writer columns in table order: package_id, file, file_path, signature,
    // file_sha256, status, project_id.
    let records = &world.records[..PYTHON_RECORDS];
    let batches: Vec<Batch> = records
        .chunks(BATCH)
        .map(|chunk| {
            let writer: Vec<Row> = chunk
                .iter()
                .map(|(id, project, _, _)| Row {
                    id: *id,
                    values: vec![
                        Value::Int(7),
                        Value::Text(format!("Lib{id}.pdb")),
                        Value::Text(format!("lib/net8.0/Lib{id}.pdb")),
                        Value::Text(format!("{id:032x}FFFFFFFF")),
                        Value::Null,
                        Value::Int(0),
                        Value::Int(*project),
                    ],
                })
                .collect();
            let derived = loaded.derive(&writer).expect("derive");
            let paths = chunk
                .iter()
                .zip(derived)
                .map(|((id, ..), answer)| {
                    let [key]: [Value; 1] = answer.expect("valid symbol").try_into().expect("one");
                    Row {
                        id: *id,
                        values: vec![key, Value::Text(format!("Lib{id}.pdb"))],
                    }
                })
                .collect();
            let scope = chunk
                .iter()
                .map(|(id, project, _, file_store)| Row {
                    id: *id,
                    values: vec![Value::Int(*project), Value::Int(*file_store)],
                })
                .collect();
            Batch { scope, paths }
        })
        .collect();
    let (_, decisions) = fastest(|| decide_with_plugin(&loaded, settings, lookup, &batches));
    let mut times: Vec<Duration> = (0..PYTHON_INSTANTIATIONS)
        .map(|_| cold.instantiate_once(&loaded).expect("instantiate"))
        .collect();
    Some(PythonFigures {
        decisions,
        instantiate: median(&mut times),
        compile,
        cached,
        size: bytes.len(),
    })
}

/// Process CPU time of deciding the scope of 1,000,000 Helm records under
/// the type built from `component`, as the consistency pass does: feed
/// records (JSON columns) decoded, then `in-scope`, in batches of 10,000.
fn scope_reevaluation_cpu(runtime: &PluginRuntime, component: &[u8]) -> Duration {
    let (scope, feed) = common::scope_world(SCOPE_RECORDS);
    let it = Arc::new(geohost::catalog::InstalledType::new(
        runtime.load(component).expect("loading Helm"),
    ));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let before = process_cpu();
    let kept: usize = tokio.block_on(async {
        let mut kept = 0;
        for chunk in feed.chunks(SCOPE_BATCH) {
            let decisions = it.in_scope(&scope, chunk).await.expect("in_scope");
            kept += decisions.iter().filter(|d| matches!(d, Ok(true))).count();
        }
        kept
    });
    assert_eq!(
        kept, 500_000,
        "half the projects are in the selected namespaces"
    );
    process_cpu() - before
}

/// CPU time of the whole process (user + system), from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .get(stat.rfind(')').map_or(0, |i| i + 2)..)
        .unwrap_or("")
        .split(' ')
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The namespaces, projects, selected groups and records.
struct World {
    topology: Topology,
    /// Namespace → parent, for the native decision.
    parents: HashMap<i64, Option<i64>>,
    /// Project → namespace, for the native decision.
    project_namespace: HashMap<i64, i64>,
    selected: Vec<i64>,
    namespace_count: usize,
    /// Writer columns of every record: (id, project_id, channel, file_store).
    records: Vec<(i64, i64, String, i64)>,
}

impl World {
    fn build() -> World {
        let mut namespaces = Vec::new();
        let mut middles = Vec::new();
        let mut leaves = Vec::new();
        let mut next = 1;
        for _ in 0..ROOTS {
            let root = next;
            next += 1;
            namespaces.push(NamespaceNode {
                id: root,
                parent_id: None,
            });
            for _ in 0..FANOUT {
                let group = next;
                next += 1;
                namespaces.push(NamespaceNode {
                    id: group,
                    parent_id: Some(root),
                });
                middles.push(group);
                for _ in 0..FANOUT {
                    namespaces.push(NamespaceNode {
                        id: next,
                        parent_id: Some(group),
                    });
                    leaves.push(next);
                    next += 1;
                }
            }
        }
        // Projects mostly in leaf groups, one in ten directly in a root or a
        // middle group; a third on a second shard.
        let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
        let projects: Vec<ProjectNode> = (1..=PROJECTS)
            .map(|n| {
                let namespace_id = if n % 10 == 0 {
                    namespaces[rng.below(namespaces.len())].id
                } else {
                    leaves[rng.below(leaves.len())]
                };
                let shard = if n % 3 == 0 { "gitaly-2" } else { "default" };
                ProjectNode {
                    id: 1_000 + n,
                    namespace_id,
                    repository_storage: shard.into(),
                }
            })
            .collect();
        // A whole root group, two middle groups (with their subtrees) and two leaves.
        let selected = vec![
            1,
            middles[32],
            middles[65],
            leaves[leaves.len() - 1],
            leaves[leaves.len() / 2 + 3],
        ];
        // Records spread at random over the projects, one in ten in object storage.
        let records = (0..RECORDS)
            .map(|i| {
                let project = 1_001 + rng.below(PROJECTS as usize) as i64;
                let channel = format!("channel-{}.{}", i % 977, i / 977);
                let file_store = if i % 10 == 0 { 2 } else { 1 };
                (i as i64 + 1, project, channel, file_store)
            })
            .collect();
        World {
            parents: namespaces.iter().map(|n| (n.id, n.parent_id)).collect(),
            project_namespace: projects.iter().map(|p| (p.id, p.namespace_id)).collect(),
            namespace_count: namespaces.len(),
            topology: Topology::new(namespaces, projects),
            selected,
            records,
        }
    }
}

/// A small deterministic generator: every run sees the same data.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// One batch of records as a decision sees them.
struct Batch {
    /// scope_columns: project_id, file_store.
    scope: Vec<Row>,
    /// path_columns: object_storage_key, file.
    paths: Vec<Row>,
}

fn derive_records(loaded: &LoadedType, world: &World) -> Vec<Batch> {
    world
        .records
        .chunks(BATCH)
        .map(|chunk| {
            // Writer columns in table order: last_downloaded_at, project_id, status, channel.
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
            let derived = loaded.derive(&writer).expect("derive");
            let paths = chunk
                .iter()
                .zip(derived)
                .map(|((id, ..), answer)| {
                    let [file, key]: [Value; 2] = answer
                        .expect("valid channel")
                        .try_into()
                        .expect("two derived columns");
                    Row {
                        id: *id,
                        values: vec![key, file],
                    }
                })
                .collect();
            let scope = chunk
                .iter()
                .map(|(id, project, _, file_store)| Row {
                    id: *id,
                    values: vec![Value::Int(*project), Value::Int(*file_store)],
                })
                .collect();
            Batch { scope, paths }
        })
        .collect()
}

/// What a pass over every record found.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    in_scope: usize,
    path_bytes: usize,
    /// Wall-clock time spent in `in_scope` (plugin only).
    scope_time: Duration,
    /// Minor page faults of the process during the pass (Linux).
    page_faults: Option<u64>,
}

/// How long something took: wall clock, and CPU time of this thread when known.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

impl Timing {
    /// The time that counts: CPU time when known.
    fn busy(&self) -> Duration {
        self.cpu.filter(|c| !c.is_zero()).unwrap_or(self.wall)
    }
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Timing) {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let result = f();
    let cpu = cpu
        .zip(thread_cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    (
        result,
        Timing {
            wall: wall.elapsed(),
            cpu,
        },
    )
}

/// The fastest of [`PASSES`] passes.
fn fastest(mut pass: impl FnMut() -> Pass) -> (Pass, Timing) {
    (0..PASSES)
        .map(|_| measure(&mut pass))
        .min_by_key(|(_, t)| t.busy())
        .expect("at least one pass")
}

/// The fastest of [`PASSES`] passes of each of `a` and `b`, run in turns
/// (a, b, a, b, …).
fn fastest_in_turns(
    mut a: impl FnMut() -> Pass,
    mut b: impl FnMut() -> Pass,
) -> ((Pass, Timing), (Pass, Timing)) {
    let faster = |x: (Pass, Timing), y: (Pass, Timing)| if y.1.busy() < x.1.busy() { y } else { x };
    let (mut best_a, mut best_b) = (measure(&mut a), measure(&mut b));
    for _ in 1..PASSES {
        best_a = faster(best_a, measure(&mut a));
        best_b = faster(best_b, measure(&mut b));
    }
    (best_a, best_b)
}

fn decide_with_plugin(
    loaded: &LoadedType,
    settings: &SyncSettings,
    lookup: &Arc<dyn ProjectLookup>,
    batches: &[Batch],
) -> Pass {
    let faults = minor_page_faults();
    let mut pass = Pass::default();
    for batch in batches {
        let scope_started = Instant::now();
        let scopes = loaded
            .in_scope(settings, lookup.clone(), &batch.scope)
            .expect("in_scope");
        pass.scope_time += scope_started.elapsed();
        let paths = loaded.blob_paths(&batch.paths).expect("blob_paths");
        for (scope, path) in scopes.into_iter().zip(paths) {
            pass.in_scope += usize::from(scope.expect("scope decision"));
            pass.path_bytes += path.expect("valid path").as_str().len();
        }
    }
    pass.page_faults = faults
        .zip(minor_page_faults())
        .map(|(before, after)| after - before);
    pass
}

/// GitLab's namespace rule: the project's namespace or one of its ancestors is selected.
fn selected_by_ancestry(world: &World, selected: &HashSet<i64>, project: i64) -> bool {
    let Some(&namespace) = world.project_namespace.get(&project) else {
        return false;
    };
    let mut current = Some(namespace);
    for _ in 0..geohost::topology::MAX_DEPTH {
        let Some(ns) = current else { break };
        if selected.contains(&ns) {
            return true;
        }
        current = world.parents.get(&ns).copied().flatten();
    }
    false
}

/// How the native decision writes a path: as the shipped type does
/// (`[key, file].join("/")`, the goal's reference), or with `format!` (as
/// the type did before issue 18's last step, for the earlier figures).
#[derive(Clone, Copy)]
enum Join {
    Slices,
    Format,
}

/// The decision in native Rust on the rows the plugin gets (the
/// object_storage_key stored when the record was created).
fn decide_native_from_row(world: &World, batches: &[Batch], join: Join) -> Pass {
    let selected: HashSet<i64> = world.selected.iter().copied().collect();
    let sync_object_storage = false;
    let mut pass = Pass::default();
    for batch in batches {
        for (scope, path) in batch.scope.iter().zip(&batch.paths) {
            let [Value::Int(project), Value::Int(file_store)] = scope.values[..] else {
                panic!("scope row")
            };
            let in_scope = (file_store != 2 || sync_object_storage)
                && selected_by_ancestry(world, &selected, project);
            let [Value::Text(key), Value::Text(file)] = &path.values[..] else {
                panic!("path row")
            };
            let path = black_box(match join {
                Join::Slices => [key.as_str(), file].join("/"),
                Join::Format => format!("{key}/{file}"),
            });
            pass.in_scope += usize::from(in_scope);
            pass.path_bytes += path.len();
        }
    }
    pass
}

/// The decision in native Rust from the writer columns: SHA-256 of the
/// project id and of the channel, GitLab's hashed path, the ancestry walk.
fn decide_native_from_scratch(world: &World) -> Pass {
    let selected: HashSet<i64> = world.selected.iter().copied().collect();
    let sync_object_storage = false;
    let mut pass = Pass::default();
    for (_, project, channel, file_store) in &world.records {
        let in_scope = (*file_store != 2 || sync_object_storage)
            && selected_by_ancestry(world, &selected, *project);
        let h = hex::encode(Sha256::digest(project.to_string().as_bytes()));
        let channel_hash = hex::encode(Sha256::digest(channel.as_bytes()));
        let path = black_box(format!(
            "{}/{}/{h}/packages/helm/metadata_caches/{channel_hash}/index.yaml",
            &h[0..2],
            &h[2..4]
        ));
        pass.in_scope += usize::from(in_scope);
        pass.path_bytes += path.len();
    }
    pass
}

/// The fixed cost of a call: `blob_paths` of a single row.
fn median_single_row_call(loaded: &LoadedType, batch: &Batch) -> Duration {
    let mut times: Vec<Duration> = (0..SINGLE_ROW_CALLS)
        .map(|i| {
            let row = std::slice::from_ref(&batch.paths[i % batch.paths.len()]);
            let started = Instant::now();
            black_box(loaded.blob_paths(row).expect("blob_paths"));
            started.elapsed()
        })
        .collect();
    median(&mut times)
}

fn median_instantiate(runtime: &PluginRuntime, loaded: &LoadedType) -> Duration {
    for _ in 0..200 {
        runtime.instantiate_once(loaded).expect("instantiate");
    }
    let mut times: Vec<Duration> = (0..INSTANTIATIONS)
        .map(|_| runtime.instantiate_once(loaded).expect("instantiate"))
        .collect();
    median(&mut times)
}

struct Loads {
    compile: Duration,
    cached: Duration,
    link: Duration,
}

/// Cold compiles into a fresh cache directory, then loads from it with a new
/// runtime, as a restarted process would.
fn compile_and_cached_load(component: &[u8]) -> Loads {
    let (mut compile, mut cached, mut link) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..LOADS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cold = PluginRuntime::new(Limits::default(), Some(dir.path().into())).expect("runtime");
        let timings = cold.load(component).expect("load").timings();
        assert_eq!(timings.outcome, CompileOutcome::Compiled);
        compile.push(timings.compile);
        link.push(timings.link);
        let warm = PluginRuntime::new(Limits::default(), Some(dir.path().into())).expect("runtime");
        let timings = warm.load(component).expect("load").timings();
        assert_eq!(timings.outcome, CompileOutcome::Cached);
        cached.push(timings.compile);
        link.push(timings.link);
    }
    Loads {
        compile: median(&mut compile),
        cached: median(&mut cached),
        link: median(&mut link),
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// CPU time (user + system) of the calling thread, to the nanosecond
/// (`CLOCK_THREAD_CPUTIME_ID`; `/proc`'s clock ticks are 10 ms, a tenth of a
/// native pass). `None` where the clock is not available.
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (status == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Minor page faults of the process so far, from `/proc` (Linux only).
fn minor_page_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat.get(stat.rfind(')')? + 2..)?
        .split(' ')
        .nth(7)?
        .parse()
        .ok()
}

fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.0} k/s", per_sec / 1e3)
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The printed result: measure, figure, wall-clock rate, goal, verdict.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn throughput(&mut self, what: &str, timing: Timing, items: usize, goal: Option<f64>) {
        let busy = items as f64 / timing.busy().as_secs_f64();
        let wall = items as f64 / timing.wall.as_secs_f64();
        let (goal, verdict) = match goal {
            Some(goal) => (format!("≥ {}", rate(goal)), verdict(busy >= goal)),
            None => (String::new(), String::new()),
        };
        self.rows
            .push([what.into(), rate(busy), rate(wall), goal, verdict]);
    }

    fn goal(&mut self, what: &str, figure: String, goal: String, met: bool) {
        self.rows
            .push([what.into(), figure, String::new(), goal, verdict(met)]);
    }

    fn figure(&mut self, what: &str, figure: String) {
        self.rows.push([
            what.into(),
            figure,
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    fn print(&self) {
        let header = ["measure", "figure", "wall clock", "goal", ""].map(String::from);
        let widths: Vec<usize> = (0..5)
            .map(|i| {
                self.rows
                    .iter()
                    .chain([&header])
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in [&header].into_iter().chain(&self.rows) {
            let pad = |i: usize| " ".repeat(widths[i] - row[i].chars().count());
            println!(
                "{}{}  {}{}  {}{}  {}{}  {}",
                row[0],
                pad(0),
                pad(1),
                row[1],
                pad(2),
                row[2],
                pad(3),
                row[3],
                row[4]
            );
        }
    }
}

fn verdict(met: bool) -> String {
    if met { "met".into() } else { "MISSED".into() }
}
