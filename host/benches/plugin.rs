//! The plugin runtime's cost, measured on the shipped Helm metadata cache:
//! scope + path decisions per second through the plugin (batches of 1,000
//! records) beside the same decision in native Rust, the time to instantiate a
//! type, and the time to compile it cold and to load it from the compile cache.
//!
//! `cargo bench -p geohost --bench plugin`. The figures are printed next to the
//! goals, never asserted: they depend on the machine.

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
/// Namespace tree: ROOTS groups, each with FANOUT subgroups, each with FANOUT
/// subgroups again.
const ROOTS: i64 = 10;
const FANOUT: i64 = 10;
const INSTANTIATIONS: usize = 5_000;
const LOADS: usize = 5;

const GOAL_DECISIONS_PER_SEC: f64 = 1_000_000.0;
const GOAL_INSTANTIATE: Duration = Duration::from_micros(50);

fn main() {
    let started = Instant::now();
    let helm = builtin::by_stem("helm-metadata-cache")
        .expect("helm-metadata-cache is shipped; run `cargo xtask plugins` first")
        .bytes;
    let runtime = PluginRuntime::new(Limits::default(), None).expect("runtime");
    let loaded = runtime.load(helm).expect("loading the Helm component");

    let world = World::build();
    let settings = SyncSettings {
        selective_sync: SelectiveSync::Namespaces(world.selected.clone()),
        sync_object_storage: false,
    };
    let lookup: Arc<dyn ProjectLookup> = Arc::new(world.topology.clone());

    // The records as the primary stores them: writer columns in, derived
    // columns (object_storage_key, file) computed by the type's `derive`.
    let derive_started = Instant::now();
    let records = derive_records(&loaded, &world);
    let derive_rate = RECORDS as f64 / derive_started.elapsed().as_secs_f64();

    if let Ok(mode) = std::env::var("GEOHOST_BENCH_LOOP") {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(6) {
            match mode.as_str() {
                "one" => {
                    for r in records[0].paths.iter() {
                        black_box(loaded.blob_paths(std::slice::from_ref(r)).unwrap());
                    }
                }
                "paths" => {
                    for b in &records {
                        black_box(loaded.blob_paths(&b.paths).unwrap());
                    }
                }
                _ => {
                    for b in &records {
                        black_box(
                            loaded
                                .in_scope(&settings, lookup.clone(), &b.scope)
                                .unwrap(),
                        );
                    }
                }
            }
        }
        return;
    }
    let mut table = Table::default();
    table.note(format!(
        "{} records over {} projects in {} namespaces ({} levels), batches of {}; \
         namespaces selective sync on {} groups, object storage off",
        thousands(RECORDS as u64),
        thousands(PROJECTS as u64),
        thousands(world.namespace_count as u64),
        3,
        thousands(BATCH as u64),
        world.selected.len(),
    ));

    // Through the plugin: in_scope + blob_paths per batch.
    let plugin = best_of(3, || {
        decide_with_plugin(&loaded, &settings, &lookup, &records)
    });
    let native_same = best_of(3, || decide_native_from_row(&world, &records));
    let native_full = best_of(3, || decide_native_from_scratch(&world));
    assert_eq!(
        plugin.in_scope, native_same.in_scope,
        "plugin and native disagree on scope"
    );
    assert_eq!(
        plugin.in_scope, native_full.in_scope,
        "plugin and native disagree on scope"
    );
    assert_eq!(
        plugin.path_bytes, native_full.path_bytes,
        "plugin and native disagree on paths"
    );

    table.row(
        "decisions/s, Helm plugin (in_scope + blob_paths)",
        rate(plugin.per_sec()),
        format!("≥ {}", rate(GOAL_DECISIONS_PER_SEC)),
        Some(plugin.per_sec() >= GOAL_DECISIONS_PER_SEC),
    );
    table.row(
        "  of which in_scope (incl. site.projects lookups)",
        format!(
            "{:.0}%",
            100.0 * plugin.scope_time.as_secs_f64() / plugin.total.as_secs_f64()
        ),
        String::new(),
        None,
    );
    table.row(
        "decisions/s, native Rust (ancestry walk + key from row)",
        rate(native_same.per_sec()),
        String::new(),
        None,
    );
    table.row(
        "decisions/s, native Rust (ancestry walk + sha256 ×2 + hashed path)",
        rate(native_full.per_sec()),
        String::new(),
        None,
    );
    table.row(
        "derive/s, Helm plugin (sha256 ×2 in wasm)",
        rate(derive_rate),
        String::new(),
        None,
    );

    let instantiate = median_instantiate(&runtime, &loaded);
    table.row(
        &format!(
            "instantiate (median of {})",
            thousands(INSTANTIATIONS as u64)
        ),
        micros(instantiate),
        format!("≤ {}", micros(GOAL_INSTANTIATE)),
        Some(instantiate <= GOAL_INSTANTIATE),
    );

    let loads = compile_and_cached_load(helm);
    table.row(
        &format!("compile, cold (median of {LOADS})"),
        millis(loads.compile),
        String::new(),
        None,
    );
    table.row(
        &format!("load from compile cache (median of {LOADS})"),
        millis(loads.cached),
        String::new(),
        None,
    );
    table.row(
        "link (instantiate_pre)",
        millis(loads.link),
        String::new(),
        None,
    );

    table.note(format!(
        "in scope: {} of {} records; component {} KiB; bench took {:.1} s",
        thousands(plugin.in_scope as u64),
        thousands(RECORDS as u64),
        helm.len() / 1024,
        started.elapsed().as_secs_f64()
    ));
    if std::env::var_os("GEOHOST_BENCH_EXPERIMENTS").is_some() {
        experiments(&loaded, &settings, &lookup, &records);
    }
    table.print();
}

struct NoProjects;
impl ProjectLookup for NoProjects {
    fn project(&self, _id: i64) -> Option<geohost::topology::ProjectInfo> {
        None
    }
}

/// CPU time of the calling thread (user + system), from /proc (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn minflt() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

fn experiments(
    loaded: &LoadedType,
    settings: &SyncSettings,
    lookup: &Arc<dyn ProjectLookup>,
    batches: &[Batch],
) {
    let none: Arc<dyn ProjectLookup> = Arc::new(NoProjects);
    for round in 0..2 {
        let f0 = minflt();
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        for b in batches {
            black_box(loaded.in_scope(settings, lookup.clone(), &b.scope).unwrap());
        }
        let f1 = minflt();
        eprintln!(
            "[{round}] in_scope topology: {:?} per batch (cpu {:?}), {} faults/batch",
            t.elapsed() / batches.len() as u32,
            (cpu_time().unwrap() - c) / batches.len() as u32,
            (f1 - f0) / batches.len() as u64
        );
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        for b in batches {
            black_box(loaded.in_scope(settings, none.clone(), &b.scope).unwrap());
        }
        eprintln!(
            "[{round}] in_scope none: {:?} per batch (cpu {:?})",
            t.elapsed() / batches.len() as u32,
            (cpu_time().unwrap() - c) / batches.len() as u32
        );
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        let f1 = minflt();
        for b in batches {
            black_box(loaded.blob_paths(&b.paths).unwrap());
        }
        let f2 = minflt();
        eprintln!(
            "[{round}] blob_paths: {:?} per batch (cpu {:?}), {} faults/batch",
            t.elapsed() / batches.len() as u32,
            (cpu_time().unwrap() - c) / batches.len() as u32,
            (f2 - f1) / batches.len() as u64
        );
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        for b in batches.iter().take(100) {
            for r in b.paths.iter().take(100) {
                black_box(loaded.blob_paths(std::slice::from_ref(r)).unwrap());
            }
        }
        eprintln!(
            "[{round}] blob_paths 1 row: {:?} per call (cpu {:?})",
            t.elapsed() / 10_000,
            (cpu_time().unwrap() - c) / 10_000
        );
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        for b in batches {
            for r in &b.paths {
                if let [Value::Text(k), Value::Text(f)] = &r.values[..] {
                    black_box(geohost::plugin::BlobPath::parse(&format!("{k}/{f}")).unwrap());
                }
            }
        }
        eprintln!(
            "[{round}] host-side format+parse only: {:?} per batch (cpu {:?})",
            t.elapsed() / batches.len() as u32,
            (cpu_time().unwrap() - c) / batches.len() as u32
        );
        let (t, c) = (Instant::now(), cpu_time().unwrap());
        for b in batches {
            for r in &b.scope {
                if let [Value::Int(p), _] = r.values[..] {
                    black_box(lookup.project(p));
                }
            }
        }
        eprintln!(
            "[{round}] host-side Topology::project only: {:?} per batch (cpu {:?})",
            t.elapsed() / batches.len() as u32,
            (cpu_time().unwrap() - c) / batches.len() as u32
        );
    }
}

/// The namespaces, projects and the selected groups.
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
        // Projects mostly in leaf groups, a few directly in roots and middle groups.
        let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
        let projects: Vec<ProjectNode> = (1..=PROJECTS)
            .map(|id| {
                let namespace_id = if id % 10 == 0 {
                    namespaces[rng.below(namespaces.len())].id
                } else {
                    leaves[rng.below(leaves.len())]
                };
                let shard = if id % 3 == 0 { "gitaly-2" } else { "default" };
                ProjectNode {
                    id: 1_000 + id,
                    namespace_id,
                    repository_storage: shard.into(),
                }
            })
            .collect();
        // One whole root, two middle groups and two leaves.
        let middle = |root: i64, n: i64| root + 1 + n * (FANOUT + 1);
        let root_ids: Vec<i64> = namespaces
            .iter()
            .filter(|n| n.parent_id.is_none())
            .map(|n| n.id)
            .collect();
        let selected = vec![
            root_ids[0],
            middle(root_ids[3], 2),
            middle(root_ids[6], 5),
            leaves[leaves.len() - 1],
            leaves[leaves.len() / 2 + 3],
        ];
        let records = (0..RECORDS)
            .map(|i| {
                let project = 1_000 + 1 + (rng.below(PROJECTS as usize) as i64);
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

/// A small deterministic generator, so every run sees the same data.
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

/// One batch of records as the decision sees them.
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

/// What a pass over every record found, and how long it took.
#[derive(Clone, Copy)]
struct Pass {
    total: Duration,
    scope_time: Duration,
    in_scope: usize,
    path_bytes: usize,
}

impl Pass {
    fn per_sec(&self) -> f64 {
        RECORDS as f64 / self.total.as_secs_f64()
    }
}

fn best_of(runs: usize, mut pass: impl FnMut() -> Pass) -> Pass {
    (0..runs)
        .map(|_| pass())
        .min_by_key(|p| p.total)
        .expect("at least one run")
}

fn decide_with_plugin(
    loaded: &LoadedType,
    settings: &SyncSettings,
    lookup: &Arc<dyn ProjectLookup>,
    batches: &[Batch],
) -> Pass {
    let mut pass = Pass {
        total: Duration::ZERO,
        scope_time: Duration::ZERO,
        in_scope: 0,
        path_bytes: 0,
    };
    let started = Instant::now();
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
    pass.total = started.elapsed();
    pass
}

/// GitLab's namespace rule: the project's namespace or an ancestor is selected.
fn selected_by_ancestry(world: &World, selected: &HashSet<i64>, project: i64) -> bool {
    let Some(&namespace) = world.project_namespace.get(&project) else {
        return false;
    };
    let mut current = Some(namespace);
    let mut depth = 0;
    while let Some(ns) = current {
        if selected.contains(&ns) {
            return true;
        }
        depth += 1;
        if depth >= geohost::topology::MAX_DEPTH {
            return false;
        }
        current = world.parents.get(&ns).copied().flatten();
    }
    false
}

/// The decision in native Rust, on the same rows the plugin gets (the
/// object_storage_key stored at creation).
fn decide_native_from_row(world: &World, batches: &[Batch]) -> Pass {
    let selected: HashSet<i64> = world.selected.iter().copied().collect();
    let sync_object_storage = false;
    let mut pass = Pass {
        total: Duration::ZERO,
        scope_time: Duration::ZERO,
        in_scope: 0,
        path_bytes: 0,
    };
    let started = Instant::now();
    for batch in batches {
        for (scope, path) in batch.scope.iter().zip(&batch.paths) {
            let [Value::Int(project), Value::Int(file_store)] = scope.values[..] else {
                panic!("row")
            };
            let in_scope = (file_store != 2 || sync_object_storage)
                && selected_by_ancestry(world, &selected, project);
            let [Value::Text(key), Value::Text(file)] = &path.values[..] else {
                panic!("row")
            };
            let path = black_box(format!("{key}/{file}"));
            pass.in_scope += usize::from(in_scope);
            pass.path_bytes += path.len();
        }
    }
    pass.total = started.elapsed();
    pass
}

/// The decision in native Rust from the writer columns: sha256 of the project
/// id and of the channel, GitLab's hashed path, the ancestry walk.
fn decide_native_from_scratch(world: &World) -> Pass {
    let selected: HashSet<i64> = world.selected.iter().copied().collect();
    let sync_object_storage = false;
    let mut pass = Pass {
        total: Duration::ZERO,
        scope_time: Duration::ZERO,
        in_scope: 0,
        path_bytes: 0,
    };
    let started = Instant::now();
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
    pass.total = started.elapsed();
    pass
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
/// runtime (as a restarted process would).
fn compile_and_cached_load(component: &[u8]) -> Loads {
    let mut compile = Vec::new();
    let mut cached = Vec::new();
    let mut link = Vec::new();
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

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

/// The printed result.
#[derive(Default)]
struct Table {
    notes: Vec<String>,
    rows: Vec<(String, String, String, Option<bool>)>,
}

impl Table {
    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn row(&mut self, what: &str, figure: String, goal: String, met: Option<bool>) {
        self.rows.push((what.to_string(), figure, goal, met));
    }

    fn print(&self) {
        println!("\nGeohost plugin runtime, Helm metadata cache");
        for note in &self.notes[..1] {
            println!("{note}\n");
        }
        let width = self
            .rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0);
        println!("{:width$}  {:>12}  {:>12}", "measure", "figure", "goal");
        for (what, figure, goal, met) in &self.rows {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!("{what:width$}  {figure:>12}  {goal:>12}  {verdict}");
        }
        for note in &self.notes[1..] {
            println!("\n{note}");
        }
    }
}
