//! The wasmtime engine every type runs on, and the limits each call runs under.

use std::sync::{Arc, Weak};
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Bounds on every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of one call (a whole batch), enforced by epoch
    /// interruption: a guest still running after it traps with `Interrupt`.
    pub call_timeout: Duration,
    /// Largest linear memory of one instance, in bytes; growing past it traps.
    pub memory_bytes: usize,
    /// Instances alive at once per engine (pooling allocator slots).
    pub max_instances: u32,
    /// Largest wasm stack, in bytes.
    pub max_wasm_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            max_instances: 64,
            max_wasm_stack: 1 << 20,
        }
    }
}

/// How often the epoch advances; the granularity of `call_timeout`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Hostcall fuel of every call: the bytes a plugin may hand the host in one
/// transfer (its answer, or the arguments of one import call) whatever the
/// batch, enough for `describe`'s identity and a one-row answer with long
/// texts.
pub const HOSTCALL_FUEL_BASE: usize = 256 << 10;

/// Hostcall fuel added per row of the batch: a longest blob path (1,024
/// bytes) or a derived row with its texts, with room to spare. A
/// 10,000-row consistency batch gets about 20 MiB; a one-record ingest
/// call 258 KiB.
pub const HOSTCALL_FUEL_PER_ROW: usize = 2 << 10;

/// Most project ids one `site.projects` lookup may ask for: one per row of
/// the largest batch (GitLab's 10,000).
pub const MAX_PROJECT_IDS: usize = 10_000;

/// Most project ids one call may ask for over all its lookups.
pub const MAX_PROJECT_IDS_PER_CALL: usize = 4 * MAX_PROJECT_IDS;

impl Limits {
    /// The epoch deadline matching `call_timeout`, in ticks.
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    /// The hostcall fuel of a call over `rows` rows (wasmtime's default
    /// is 128 MiB whatever the call): [`HOSTCALL_FUEL_BASE`] plus
    /// [`HOSTCALL_FUEL_PER_ROW`] per row.
    pub fn hostcall_fuel(&self, rows: usize) -> usize {
        HOSTCALL_FUEL_BASE.saturating_add(rows.saturating_mul(HOSTCALL_FUEL_PER_ROW))
    }
}

/// Core instances one type may create: room for a Python type's.
pub const CORE_INSTANCES_PER_TYPE: u32 = 24;

/// Bytes of each linear memory kept resident when its instance is dropped.
/// Every call runs in a fresh instance: without this, the pages a batch
/// touched go back to the kernel (`madvise`) and fault in again on the next
/// call (about 200 faults per 1,000-row `blob_paths` of the Helm type). With it
/// they are reset in place, and with `PAGEMAP_SCAN` (Linux 6.7+) only the
/// pages actually dirtied are. Costs up to this much RSS per warm slot.
const KEEP_RESIDENT: usize = 4 << 20;

/// Bytes of each table kept resident when its instance is dropped: reset
/// in place instead of a `madvise` per table per call (a Rust type's
/// tables are a few KiB).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Builds the engine: component model, epoch interruption, pooling allocator
/// with copy-on-write memory images, and a ticker thread that advances the
/// epoch until the engine is dropped.
pub fn build_engine(limits: &Limits) -> anyhow::Result<Arc<Engine>> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust type is 3 core instances, 1 memory and 2 tables; a Python one
    // (componentize-py: CPython and its libraries, dynamically linked, plus
    // the WASI stubs) about 20 core instances, 2 memories and 3 tables.
    pool.total_component_instances(limits.max_instances)
        .total_core_instances(limits.max_instances * CORE_INSTANCES_PER_TYPE)
        .total_memories(limits.max_instances * 2)
        .total_tables(limits.max_instances * 4)
        .max_memories_per_component(2)
        .max_memory_size(limits.memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT.min(limits.memory_bytes))
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(limits.max_wasm_stack)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // For profiling: perf names the guests' compiled functions.
    if std::env::var_os("GEOHOST_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Arc::new(Engine::new(&config)?);
    spawn_epoch_ticker(Arc::downgrade(&engine));
    Ok(engine)
}

/// Holds only a weak reference, so the thread ends with the engine.
fn spawn_epoch_ticker(engine: Weak<Engine>) {
    std::thread::Builder::new()
        .name("geohost-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_counts_whole_ticks_and_at_least_one() {
        let ticks = |ms| {
            let limits = Limits {
                call_timeout: Duration::from_millis(ms),
                ..Limits::default()
            };
            limits.deadline_ticks()
        };
        assert_eq!(ticks(2_000), 200);
        assert_eq!(ticks(200), 20);
        assert_eq!(ticks(15), 1);
        assert_eq!(ticks(0), 1);
    }
}
