//! The deny-by-default WASI subset a `0.2` type may import.
//!
//! Toolchains for languages other than Rust (componentize-py here) build on a
//! libc that imports WASI. A type needs none of it to decide, but its
//! runtime must start, print a traceback when it fails and read a clock or
//! seed a hash table without trapping. So the host offers these interfaces,
//! implemented by `wasmtime-wasi` over a context that grants nothing real:
//!
//! | interface | what the type gets |
//! |---|---|
//! | `wasi:io/{error,poll,streams}` | the stream plumbing of the two below |
//! | `wasi:cli/{stdout,stderr}` | an in-memory pipe of [`OUTPUT_CAPACITY`] bytes per call: logged at `debug`, its last line added to a trap's message |
//! | `wasi:cli/environment` | no variables, no arguments, no working directory |
//! | `wasi:cli/exit` | `exit` ends the call as a trap |
//! | `wasi:clocks/{wall-clock,monotonic-clock}` | a clock frozen at the Unix epoch (0): no real time |
//! | `wasi:random/{random,insecure,insecure-seed}` | the same 4 KiB of pseudo-random bytes, cycled, at every call |
//!
//! Everything else stays refused at load, with the import named
//! ([`super::LoadError::ForbiddenImport`]): `wasi:filesystem/*` (files),
//! `wasi:sockets/*` (network), `wasi:cli/stdin` and `wasi:cli/terminal-*`,
//! `wasi:http/*`, and any other package. Memory and time stay bounded per
//! call as for any type. `cargo xtask plugins` stubs a Python type's unused
//! libc imports of files, sockets and terminals with traps, so what it
//! imports is this subset.
//!
//! Why a frozen clock and a constant seed: a type's answers must be a
//! function of its input (every site must reach the same decision for the
//! same record, and a re-evaluation must not flap), so nothing in the subset
//! may vary between calls.

use std::time::Duration;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView};

/// The WASI interfaces (without version) a `0.2` type may import, from
/// `wit/wasi-subset.txt` (which `cargo xtask plugins` reads too); the host
/// implements their `0.2.x` versions.
pub static WASI_SUBSET: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("../../../wit/wasi-subset.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Bytes of stdout and of stderr kept per call; a type writing more gets a
/// stream error.
pub const OUTPUT_CAPACITY: usize = 64 << 10;

/// The seed of every call's generators.
const SEED: u64 = 0x6765_6f68_6f73_7400; // "geohost\0"

/// The bytes every call's generators cycle through: 4 KiB drawn once from a
/// generator seeded with [`SEED`].
fn random_bytes() -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    static BYTES: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut bytes = vec![0; 4096];
        rand::rngs::StdRng::seed_from_u64(SEED).fill_bytes(&mut bytes);
        bytes
    });
    BYTES.clone()
}

/// One call's WASI state: the context and the captured output.
pub struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl WasiState {
    pub fn new() -> WasiState {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let ctx = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(random_bytes()))
            .insecure_random(wasmtime_wasi::Deterministic::new(random_bytes()))
            .insecure_random_seed(u128::from(SEED))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }

    /// What the call wrote to stdout and stderr (lossy UTF-8).
    pub fn output(&self) -> (String, String) {
        (
            String::from_utf8_lossy(&self.stdout.contents()).into_owned(),
            String::from_utf8_lossy(&self.stderr.contents()).into_owned(),
        )
    }
}

impl Default for WasiState {
    fn default() -> Self {
        WasiState::new()
    }
}

/// Wall and monotonic time, both stopped at 0.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Adds the subset's interfaces, and only those, to `linker`.
pub fn add_to_linker<T: wasmtime_wasi::WasiView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::sync::io as sync_io;
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    let l = linker;
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)?;
    sync_io::poll::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)?;
    sync_io::streams::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)?;
    Ok(())
}
