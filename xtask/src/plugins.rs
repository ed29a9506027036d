//! `cargo xtask plugins`: build the wasm guests and turn them into components.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// Crates whose component ships with the host (embedded in the binary).
/// Everything else built under `plugins/` is a test fixture.
const SHIPPED: &[&str] = &["helm_metadata_cache", "npm_metadata_cache"];

pub fn build_all(root: &Path, check: bool) -> Result<()> {
    let plugins = root.join("plugins");
    let route = Route::detect()?;
    eprintln!("xtask: building plugins with {}", route.describe());
    route.build(&plugins)?;

    let out = plugins.join("target").join(TARGET).join("release");
    let fixtures = plugins.join("target").join("components");
    std::fs::create_dir_all(&fixtures)?;
    let dist = plugins.join("dist");
    std::fs::create_dir_all(&dist)?;

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let module = std::fs::read(&path)?;
        let component =
            componentize(&module).with_context(|| format!("componentizing {path:?}"))?;
        let file_name = format!("{}.wasm", stem.replace('_', "-"));
        if SHIPPED.contains(&stem.as_str()) {
            let shipped = dist.join(&file_name);
            if check {
                let current = std::fs::read(&shipped).unwrap_or_default();
                if current != component {
                    stale.push(shipped.clone());
                }
            } else {
                write_if_changed(&shipped, &component)?;
            }
        } else {
            write_if_changed(&fixtures.join(&file_name), &component)?;
        }
    }
    if !stale.is_empty() {
        bail!(
            "plugins/dist is not what the current source builds: {stale:?}\n\
             run `cargo xtask plugins` and commit plugins/dist"
        );
    }
    Ok(())
}

/// Runs the guests' unit tests natively (`cargo test --lib`: the cdylib
/// with WIT export names links only for wasm32), in `plugins/target/debug`,
/// which `geohost plugin new`'s test shares.
pub fn unit_tests(root: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    // The fixtures misbehave on purpose (some only compile for wasm32).
    cmd.args(["test", "--lib", "--workspace", "--exclude", "fixture-*"])
        .current_dir(root.join("plugins"))
        .env_remove("RUSTFLAGS");
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME" {
            cmd.env_remove(&key);
        }
    }
    crate::run(&mut cmd)
}

/// Turns a core module carrying wit-bindgen's component-type section into a component.
fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)?
        .validate(true)
        .encode()
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes)?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}

/// How this machine builds for wasm32.
enum Route {
    /// rustup has the target: a plain cargo build.
    Rustup,
    /// Debian's rustc-web builds std from source; rustup's rust-lld links.
    DebianBuildStd { lld: PathBuf },
}

impl Route {
    fn detect() -> Result<Route> {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == TARGET)
            })
            .unwrap_or(false);
        if installed {
            return Ok(Route::Rustup);
        }
        crate::ensure_debian_packages(&["rustc-web", "cargo-web", "rust-web-src"])?;
        let sysroot = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()?;
        let sysroot = String::from_utf8(sysroot.stdout)?.trim().to_string();
        let lld = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld");
        if !lld.exists() {
            bail!("rust-lld not found at {lld:?}: the host toolchain must ship it");
        }
        Ok(Route::DebianBuildStd { lld })
    }

    fn describe(&self) -> String {
        match self {
            Route::Rustup => format!("rustup's {TARGET} target"),
            Route::DebianBuildStd { .. } => "Debian's rustc-web and -Zbuild-std".into(),
        }
    }

    fn build(&self, plugins: &Path) -> Result<()> {
        let home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        // Remap absolute paths so the component does not depend on where the
        // repository or the cargo registry sit: CI checks dist byte for byte.
        let rustflags = format!(
            "--remap-path-prefix={}=/geohost/plugins --remap-path-prefix={home}=/cargo \
             --remap-path-prefix=/usr/lib/rustlib/src/rust=/rust",
            plugins.display()
        );
        let mut cmd = match self {
            Route::Rustup => {
                let mut c = Command::new("cargo");
                c.args(["build", "--release", "--target", TARGET]);
                c
            }
            Route::DebianBuildStd { lld } => {
                let mut c = Command::new("/usr/bin/cargo");
                c.args([
                    "build",
                    "--release",
                    "--target",
                    TARGET,
                    "-Zbuild-std=std,panic_abort",
                ])
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", "/usr/bin/rustc")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", lld);
                c
            }
        };
        cmd.current_dir(plugins)
            .env("RUSTFLAGS", rustflags)
            // The host build's environment must not leak into the guest build.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET");
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" {
                cmd.env_remove(&key);
            }
        }
        crate::run(&mut cmd)
    }
}
