//! The plugin runtime: loads replicable types (WebAssembly components) and
//! calls them under bounds.
//!
//! Loading ([`PluginRuntime::load`]) takes a component, or a core module
//! carrying wit-bindgen's component-type section (componentized here), and:
//!
//! 1. checks what it imports and exports before compiling ([`world::check`]):
//!    it must export `geohost:replicable/replicable` at a version this host
//!    supports (0.1.x rows, 0.2.x columns) and import nothing but
//!    `geohost:replicable` and, from 0.2 on, the deny-by-default WASI subset
//!    ([`wasi`]): no files, sockets, environment, real clock or randomness;
//! 2. compiles it once, through the on-disk [`CompileCache`];
//! 3. links it ([`InstancePre`](wasmtime::component::InstancePre)), calls
//!    `describe` and checks the identity ([`TypeIdentity::check`]).
//!
//! Calling ([`LoadedType`]) instantiates from the pre-linked component in a
//! fresh store for each batch (microseconds with the pooling allocator and
//! copy-on-write images), with a wall-clock deadline (epoch interruption) and
//! a memory cap (store limits). A trap, timeout or memory exhaustion fails
//! that batch with a [`PluginError`] and drops the instance; the next batch
//! gets a new one. The host speaks rows ([`Row`]); each contract version's
//! marshalling lives beside it ([`columns`] for 0.2, [`adapt_v0_1`] for 0.1).
//!
//! Architecture invariant: every path a type returns goes through
//! [`BlobPath::parse`] before the host uses it.

mod adapt_v0_1;
mod bindings;
pub mod builtin;
mod cache;
mod columns;
mod engine;
pub mod fixture;
mod guest;
pub(crate) mod identity;
pub(crate) mod paths;
mod slots;
pub(crate) mod value;
pub(crate) mod vectors;
pub(crate) mod wasi;
pub(crate) mod world;

pub use cache::{CompileCache, CompileOutcome};
pub use engine::{
    EPOCH_TICK, HOSTCALL_FUEL_BASE, HOSTCALL_FUEL_PER_ROW, Limits, MAX_PROJECT_IDS,
    MAX_PROJECT_IDS_PER_CALL,
};
pub use identity::{Column, ColumnSource, ColumnType, ModelTable, TypeIdentity};
pub use paths::{BlobPath, PathError};
pub use value::{Row, SelectiveSync, SyncSettings, Value};
pub use vectors::SECTION as VECTORS_SECTION;
pub use world::{Contract, WIT_PACKAGE, custom_section};

use crate::topology::ProjectLookup;
use guest::{Guest, GuestPre};
use sha2::{Digest, Sha256};
use slots::Slots;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component or module ({0})")]
    NotWasm(String),
    #[error("could not turn the core module into a component: {0}")]
    Componentize(String),
    #[error(
        "the component does not export `{WIT_PACKAGE}/replicable`; build it against wit/replicable.wit"
    )]
    MissingExport,
    #[error(
        "the component was built against {WIT_PACKAGE}@{found}; this host supports {WIT_PACKAGE}@{}",
        Contract::supported()
    )]
    WitVersion { found: String },
    #[error(
        "the component imports {0}, which Geohost does not provide: a type may import only \
         {WIT_PACKAGE} and the WASI subset of docs/decisions.md (no files, sockets, \
         environment, real clock or randomness)"
    )]
    ForbiddenImport(String),
    #[error("compiling the component failed: {0}")]
    Compile(String),
    #[error("linking the component failed: {0}")]
    Link(String),
    #[error("`describe` failed: {0}")]
    Describe(PluginError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

/// Why a call into a type failed as a whole (every row of the batch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{plugin}` ran past its {limit:?} deadline and was stopped")]
    Timeout { plugin: String, limit: Duration },
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin `{plugin}` answered {got} results for {expected} rows")]
    WrongAnswerCount {
        plugin: String,
        expected: usize,
        got: usize,
    },
    #[error("plugin `{plugin}` could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
    #[error("plugin `{plugin}` gave a malformed answer: {message}")]
    BadAnswer { plugin: String, message: String },
    /// The call went past one of the host's bounds on what a plugin may
    /// ask of it or hand back (named in the message), and was stopped.
    #[error("plugin `{plugin}` was stopped: {message}")]
    Limit { plugin: String, message: String },
}

impl PluginError {
    /// Whether the failure may come from one record of the batch (a trap,
    /// the deadline, a bound), so that the batch is worth splitting to find
    /// it.
    pub fn is_isolable(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. } | PluginError::Timeout { .. } | PluginError::Limit { .. }
        )
    }
}

/// A bound a plugin's call went past in the host's own code (an import).
#[derive(Debug, thiserror::Error)]
enum HostLimit {
    #[error(
        "`site.projects` was asked for {asked} ids in one lookup; a lookup may ask for at most {MAX_PROJECT_IDS}"
    )]
    LookupIds { asked: usize },
    #[error(
        "`site.projects` was asked for {asked} ids in one call; a call may ask for at most {MAX_PROJECT_IDS_PER_CALL}"
    )]
    CallIds { asked: usize },
    #[error("the call's deadline passed during a `site.projects` lookup")]
    Deadline,
}

/// Compiles, links and checks replicable types. One per process is enough;
/// it is cheap to share (`Clone` shares the engine).
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Arc<Engine>,
    linker: Arc<Linker<HostState>>,
    cache: CompileCache,
    limits: Limits,
    slots: Arc<Slots>,
}

/// How long the phases of a load took, for logs and benchmarks.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadTimings {
    pub compile: Duration,
    pub outcome: CompileOutcome,
    pub link: Duration,
}

impl PluginRuntime {
    /// A runtime with these limits, caching compiled components in `cache_dir`.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<PluginRuntime> {
        let engine = engine::build_engine(&limits)?;
        let mut linker = Linker::new(&engine);
        bindings::v0_1::ReplicableType::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;
        bindings::v0_2::ReplicableTypePacked::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;
        wasi::add_to_linker(&mut linker)?;
        Ok(PluginRuntime {
            slots: Arc::new(Slots::new(limits.max_instances as usize)),
            engine,
            linker: Arc::new(linker),
            cache: CompileCache::new(cache_dir),
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Loads a type from component (or wit-bindgen core module) bytes.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedType, LoadError> {
        let component = to_component(bytes)?;
        let world = world::check(&component)?;
        let sha256 = hex::encode(Sha256::digest(&component));

        let started = Instant::now();
        let (compiled, outcome) = self
            .cache
            .load(&self.engine, &component, &sha256)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let compile = started.elapsed();

        let started = Instant::now();
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .and_then(|pre| GuestPre::new(world.contract, pre))
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let link = started.elapsed();

        let mut loaded = LoadedType {
            identity: Arc::new(placeholder_identity()),
            sha256,
            wit_version: world.version,
            contract: world.contract,
            wasi: world.imports_wasi,
            vectors: custom_section(&component, vectors::SECTION).map(Arc::from),
            component_size: component.len(),
            timings: LoadTimings {
                compile,
                outcome,
                link,
            },
            pre,
            runtime: self.clone(),
        };
        let raw = loaded
            .call("describe", None, 0, |store, guest| guest.describe(store))
            .map_err(LoadError::Describe)?;
        loaded.identity = Arc::new(raw.check()?);
        Ok(loaded)
    }

    /// Time to create one instance of `loaded` in a fresh store (benchmarks).
    pub fn instantiate_once(&self, loaded: &LoadedType) -> anyhow::Result<Duration> {
        let _slot = self.slots.acquire();
        let started = Instant::now();
        let mut store = self.new_store(None, 0, loaded.wasi);
        loaded.pre.instantiate(&mut store)?;
        Ok(started.elapsed())
    }

    /// A fresh store for one call over `rows` rows: the memory cap, the
    /// deadline (guest code by epoch interruption, host lookups by
    /// [`HostState`]'s clock, both from now), the hostcall fuel (the bytes
    /// the plugin may hand the host in one transfer: its answer, whatever
    /// the contract version's shape, or the arguments of one import call)
    /// and, for a type importing the WASI subset, its context.
    fn new_store(
        &self,
        lookup: Option<Arc<dyn ProjectLookup>>,
        rows: usize,
        wasi: bool,
    ) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(engine::CORE_INSTANCES_PER_TYPE as usize)
            .tables(8)
            .memories(2)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            limits,
            lookup,
            wasi: wasi.then(wasi::WasiState::new),
            deadline: Instant::now() + self.limits.call_timeout,
            ids_asked: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.limits.deadline_ticks());
        store.epoch_deadline_trap();
        store.set_hostcall_fuel(self.limits.hostcall_fuel(rows));
        store
    }
}

/// A loaded, checked type, ready to be called from any thread. Calls are
/// synchronous and CPU-bound (bounded by the call timeout): async callers run
/// large batches on a blocking thread.
#[derive(Clone)]
pub struct LoadedType {
    identity: Arc<TypeIdentity>,
    sha256: String,
    wit_version: String,
    contract: Contract,
    /// Whether it imports the WASI subset (each call then gets a context).
    wasi: bool,
    /// Its test vectors section, as embedded ([`vectors::SECTION`]).
    vectors: Option<Arc<[u8]>>,
    component_size: usize,
    timings: LoadTimings,
    pre: GuestPre,
    runtime: PluginRuntime,
}

impl std::fmt::Debug for LoadedType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedType")
            .field("name", &self.identity.name)
            .field("version", &self.identity.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl LoadedType {
    pub fn identity(&self) -> &TypeIdentity {
        &self.identity
    }

    pub fn identity_arc(&self) -> Arc<TypeIdentity> {
        self.identity.clone()
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// SHA-256 (hex) of the component binary.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The `geohost:replicable` version the component was built against.
    pub fn wit_version(&self) -> &str {
        &self.wit_version
    }

    /// The contract version it was built against.
    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// Whether `blob-paths` and `in-scope` take packed batches (it exports
    /// 0.2.1's `packed`, as every type built with the Rust SDK does).
    pub fn packed(&self) -> bool {
        self.pre.packed()
    }

    /// Whether it imports the WASI subset.
    pub fn imports_wasi(&self) -> bool {
        self.wasi
    }

    /// The test vectors it carries, parsed (`Ok(None)`: it carries none).
    pub fn vectors(&self) -> Result<Option<vectors::Vectors>, String> {
        self.vectors
            .as_deref()
            .map(vectors::Vectors::parse)
            .transpose()
    }

    pub fn component_size(&self) -> usize {
        self.component_size
    }

    pub fn timings(&self) -> LoadTimings {
        self.timings
    }

    /// The derived columns of new records. Rows carry the writer columns in
    /// table order. Each answer is checked against the derived columns'
    /// count, types, nullability and lengths.
    pub fn derive(&self, rows: &[Row]) -> Result<Vec<Result<Vec<Value>, String>>, PluginError> {
        let writer: Vec<&Column> = self
            .identity
            .table
            .columns_from(ColumnSource::Writer)
            .collect();
        let answers = self.call("derive", None, rows.len(), |store, guest| {
            guest.derive(store, &writer, rows)
        })?;
        let answers = self.check_answers(rows.len(), answers)?;
        let derived: Vec<&Column> = self
            .identity
            .table
            .columns_from(ColumnSource::Derived)
            .collect();
        Ok(answers
            .into_iter()
            .map(|answer| {
                let values = answer?;
                if values.len() != derived.len() {
                    return Err(format!(
                        "plugin answered {} derived values, the table has {} derived columns",
                        values.len(),
                        derived.len()
                    ));
                }
                for (column, value) in derived.iter().zip(&values) {
                    check_value(column, value)?;
                }
                Ok(values)
            })
            .collect())
    }

    /// The blob path of each record; rows carry `identity.path_columns`.
    /// A path that breaks [`BlobPath::parse`] is an error for that record.
    pub fn blob_paths(&self, rows: &[Row]) -> Result<Vec<Result<BlobPath, String>>, PluginError> {
        let columns = self.columns(&self.identity.path_columns);
        let answers = self.call("blob-paths", None, rows.len(), |store, guest| {
            guest.blob_paths(store, &columns, rows)
        })?;
        let answers = self.check_answers(rows.len(), answers)?;
        Ok(answers
            .into_iter()
            .map(|answer| answer?.map_err(|e| format!("invalid blob path: {e}")))
            .collect())
    }

    /// Whether a site with `settings` replicates each record; rows carry
    /// `identity.scope_columns`. The type looks projects up through `lookup`.
    pub fn in_scope(
        &self,
        settings: &SyncSettings,
        lookup: Arc<dyn ProjectLookup>,
        rows: &[Row],
    ) -> Result<Vec<Result<bool, String>>, PluginError> {
        let columns = self.columns(&self.identity.scope_columns);
        let answers = self.call("in-scope", Some(lookup), rows.len(), |store, guest| {
            guest.in_scope(store, settings, &columns, rows)
        })?;
        self.check_answers(rows.len(), answers)
    }

    /// The identity's columns named `names` (checked to exist at load).
    fn columns(&self, names: &[String]) -> Vec<&Column> {
        names
            .iter()
            .filter_map(|name| self.identity.table.column(name))
            .collect()
    }

    /// One answer per row, or the error of a malformed answer.
    fn check_answers<T>(
        &self,
        expected: usize,
        answers: guest::Answers<T>,
    ) -> Result<Vec<Result<T, String>>, PluginError> {
        let plugin = || self.identity.name.clone();
        let answers = answers.map_err(|message| PluginError::BadAnswer {
            plugin: plugin(),
            message,
        })?;
        if answers.len() != expected {
            return Err(PluginError::WrongAnswerCount {
                plugin: plugin(),
                expected,
                got: answers.len(),
            });
        }
        Ok(answers)
    }

    /// Runs `f` on a fresh instance over `rows` rows, under the call's
    /// bounds ([`PluginRuntime::new_store`]).
    fn call<R>(
        &self,
        function: &'static str,
        lookup: Option<Arc<dyn ProjectLookup>>,
        rows: usize,
        f: impl FnOnce(&mut Store<HostState>, &Guest) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let runtime = &self.runtime;
        let _slot = runtime.slots.acquire();
        let plugin = self.identity.name.clone();
        let started = Instant::now();
        let mut store = runtime.new_store(lookup, rows, self.wasi);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Instantiate {
                plugin: plugin.clone(),
                message: format!("{e:#}"),
            })?;
        let result = f(&mut store, &instance);
        let output = store.data().wasi.as_ref().map(wasi::WasiState::output);
        if let Some((stdout, stderr)) = &output
            && !(stdout.is_empty() && stderr.is_empty())
        {
            tracing::debug!(plugin = %plugin, function, %stdout, %stderr, "plugin output");
        }
        // The last line the type wrote to stderr, if any (a Python
        // traceback's exception, a Rust panic message).
        let last_stderr = || {
            output
                .as_ref()
                .and_then(|(_, stderr)| stderr.lines().rev().find(|l| !l.trim().is_empty()))
                .map(|line| format!(" (stderr: {})", line.trim()))
                .unwrap_or_default()
        };
        let result = result.map_err(|error| {
            let timeout = || PluginError::Timeout {
                plugin: plugin.clone(),
                limit: runtime.limits.call_timeout,
            };
            let error = match (error.downcast_ref::<Trap>(), error.downcast_ref::<HostLimit>()) {
                (Some(Trap::Interrupt), _) | (_, Some(HostLimit::Deadline)) => timeout(),
                (_, Some(limit)) => PluginError::Limit {
                    plugin: plugin.clone(),
                    message: limit.to_string(),
                },
                (Some(_), None) => PluginError::Trap {
                    plugin: plugin.clone(),
                    message: format!("{}{}", trap_message(&error), last_stderr()),
                },
                // Not a wasm trap: a bound the host enforces stopped it (the
                // memory cap, or the hostcall fuel on what the plugin hands
                // the host), or its answer was malformed. Name the bounds.
                (None, None) => PluginError::Trap {
                    plugin: plugin.clone(),
                    message: format!(
                        "{}{}; this call's bounds: {} MiB of memory, {} bytes handed to the \
                         host at a time ({rows} rows)",
                        trap_message(&error),
                        last_stderr(),
                        runtime.limits.memory_bytes >> 20,
                        runtime.limits.hostcall_fuel(rows)
                    ),
                },
            };
            tracing::warn!(plugin = %plugin, function, %error, "plugin call failed; instance discarded");
            error
        });
        crate::metrics::plugin_call(&plugin, function, started.elapsed(), result.is_ok());
        result
    }
}

/// The trap's own description plus the first line of its context (for
/// example "memory.grow failed" or "wasm `unreachable` instruction executed").
fn trap_message(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    parts.dedup();
    parts.retain(|p| !p.starts_with("error while executing at wasm backtrace"));
    let message = parts.join(": ");
    message.lines().next().unwrap_or("trap").to_string()
}

/// Store data: the memory limiter, the project lookups of this call and
/// their bounds and, for a type importing the WASI subset, its context.
pub struct HostState {
    limits: StoreLimits,
    lookup: Option<Arc<dyn ProjectLookup>>,
    wasi: Option<wasi::WasiState>,
    /// When the call's time is up (host lookups check it; guest code is
    /// stopped by the epoch deadline set at the same moment).
    deadline: Instant,
    /// Project ids this call has asked for so far.
    ids_asked: usize,
}

impl HostState {
    /// Hands `each` the lookup and every id of `ids`, in order (no lookup:
    /// every id is unknown), within the bounds: at most [`MAX_PROJECT_IDS`]
    /// ids per lookup and [`MAX_PROJECT_IDS_PER_CALL`] per call, and within
    /// the call's deadline. Past a bound, the call traps with a
    /// [`HostLimit`]. Both contract versions' `site.projects` come here.
    fn lookup_projects(
        &mut self,
        ids: &[i64],
        mut each: impl FnMut(Option<&dyn ProjectLookup>, i64),
    ) -> wasmtime::Result<()> {
        if ids.len() > MAX_PROJECT_IDS {
            return Err(HostLimit::LookupIds { asked: ids.len() }.into());
        }
        self.ids_asked = self.ids_asked.saturating_add(ids.len());
        if self.ids_asked > MAX_PROJECT_IDS_PER_CALL {
            return Err(HostLimit::CallIds {
                asked: self.ids_asked,
            }
            .into());
        }
        let lookup = self.lookup.as_deref();
        for chunk in ids.chunks(1024) {
            if lookup.is_some() && Instant::now() >= self.deadline {
                return Err(HostLimit::Deadline.into());
            }
            for &id in chunk {
                each(lookup, id);
            }
        }
        Ok(())
    }
}

impl bindings::v0_1::geohost::replicable::types::Host for HostState {}

impl bindings::v0_1::geohost::replicable::site::Host for HostState {
    fn projects(
        &mut self,
        ids: Vec<i64>,
    ) -> wasmtime::Result<Vec<Option<bindings::v0_1::geohost::replicable::types::Project>>> {
        let mut found = Vec::with_capacity(ids.len());
        self.lookup_projects(&ids, |lookup, id| {
            found.push(lookup.and_then(|l| l.project(id)));
        })?;
        Ok(adapt_v0_1::projects(found))
    }
}

impl bindings::v0_2::geohost::replicable::types::Host for HostState {}

impl bindings::v0_2::geohost::replicable::site::Host for HostState {
    fn projects(
        &mut self,
        ids: Vec<i64>,
    ) -> wasmtime::Result<bindings::v0_2::geohost::replicable::types::ProjectColumns> {
        let mut columns = columns::ProjectColumns::with_capacity(ids.len());
        self.lookup_projects(&ids, |lookup, id| columns.push(lookup, id))?;
        Ok(columns.finish())
    }
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        // Only a type importing the subset calls it, and its stores have one.
        self.wasi.get_or_insert_with(wasi::WasiState::new).view()
    }
}

/// Checks a value against its column: type, nullability, length.
pub fn check_value(column: &Column, value: &Value) -> Result<(), String> {
    check_type(column, value)?;
    check_length(column, value)
}

/// Checks a value's type and nullability against its column (what a type's
/// `derive` relies on); its length is checked when it is stored, after
/// `derive`, so a type's own rule for an overlong value speaks first.
pub fn check_type(column: &Column, value: &Value) -> Result<(), String> {
    if matches!(value, Value::Null) && !column.nullable {
        return Err(format!("column `{}` cannot be null", column.name));
    }
    if !column.column_type.accepts(value) {
        return Err(format!(
            "column `{}` is {:?}, got {} {}",
            column.name,
            column.column_type,
            value.kind(),
            match value {
                Value::Int(v) => v.to_string(),
                _ => String::new(),
            }
        ));
    }
    Ok(())
}

/// Checks a text value against its column's `max_length`.
pub fn check_length(column: &Column, value: &Value) -> Result<(), String> {
    if let (Some(max), Value::Text(text)) = (column.max_length, value) {
        let len = text.chars().count();
        if len > max as usize {
            return Err(format!(
                "column `{}` is at most {max} characters, got {len}",
                column.name
            ));
        }
    }
    Ok(())
}

/// A component as-is; a core module carrying a component-type section is
/// componentized (no WASI adapter: such a module imports nothing else).
fn to_component(bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(bytes.to_vec());
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(LoadError::NotWasm(format!("starts with {head:?}")));
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| LoadError::Componentize(format!("{e:#}")))
}

fn placeholder_identity() -> TypeIdentity {
    TypeIdentity {
        name: "(loading)".into(),
        title: String::new(),
        title_plural: String::new(),
        version: String::new(),
        mutable: false,
        uploader_class: String::new(),
        table: ModelTable {
            name: String::new(),
            columns: vec![],
            natural_key: vec![],
            unique_keys: vec![],
        },
        path_columns: vec![],
        scope_columns: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_wasm() {
        let err = to_component(b"#!/bin/sh\necho hi").unwrap_err();
        assert!(matches!(err, LoadError::NotWasm(_)), "{err}");
    }
}
