//! `cargo xtask plugins`: build the wasm guests and turn them into components.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// Crates whose component ships with the host (embedded in the binary).
/// Everything else built under `plugins/` is a test fixture or a type
/// built for the tests (Python ones: not byte-reproducible, see
/// [`crate::python`]).
const SHIPPED: &[&str] = &["helm_metadata_cache", "npm_metadata_cache"];

/// The custom section a component carries its test vectors in.
pub const VECTORS_SECTION: &str = "geohost-test-vectors";

pub const USAGE: &str = "\
usage: cargo xtask plugins [--check] [-p NAME]...

Builds the replicable types under plugins/ into WebAssembly components:
Rust crates for wasm32-unknown-unknown (rustup's target when installed,
otherwise Debian's rustc-web with -Zbuild-std), Python types under
plugins/python/ with componentize-py (installed into plugins/target/).
Shipped types go to plugins/dist/ (embedded in the host), everything else to
plugins/target/components/NAME.wasm. Each type's vectors.json must be
embedded in its component (the SDK's test_vectors!()), and every shipped
type must have one.

options:
  -p, --package NAME   build only this type (crate or Python folder name,
                       for example `-p nuget-symbol-cache`); repeatable
  --check              fail if plugins/dist/ is not what the sources build
                       (CI), instead of rewriting it
  -h, --help           this help
";

/// What `cargo xtask plugins` was asked for.
#[derive(Debug, Default)]
pub struct Options {
    pub check: bool,
    /// Only these (crate or Python type names); all when empty.
    pub packages: Vec<String>,
}

impl Options {
    /// `None`: `--help` was asked for.
    pub fn parse(args: &[String]) -> Result<Option<Options>> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--check" => options.check = true,
                "-h" | "--help" => return Ok(None),
                "-p" | "--package" => options.packages.push(
                    args.next()
                        .with_context(|| format!("{arg} needs a type name\n\n{USAGE}"))?
                        .clone(),
                ),
                other => match other.strip_prefix("--package=") {
                    Some(name) => options.packages.push(name.to_string()),
                    None => bail!("unknown argument {other:?}\n\n{USAGE}"),
                },
            }
        }
        Ok(Some(options))
    }
}

pub fn build_all(root: &Path, check: bool) -> Result<()> {
    build(
        root,
        &Options {
            check,
            ..Options::default()
        },
    )
}

pub fn build(root: &Path, options: &Options) -> Result<()> {
    let plugins = root.join("plugins");
    let python = crate::python::types(&plugins)?;
    let crates = crates(&plugins)?;
    let wanted = |name: &str| {
        options.packages.is_empty() || options.packages.iter().any(|p| p.replace('_', "-") == name)
    };
    for name in &options.packages {
        let name = name.replace('_', "-");
        if !crates.values().any(|c| c.package == name) && !python.iter().any(|t| t.name == name) {
            let mut known: Vec<&str> = crates.values().map(|c| c.package.as_str()).collect();
            known.extend(python.iter().map(|t| t.name.as_str()));
            bail!(
                "no type {name:?} under plugins/ (known: {})",
                known.join(", ")
            );
        }
    }
    let rust: Vec<(&str, &Crate)> = crates
        .iter()
        .filter(|(_, c)| wanted(&c.package))
        .map(|(stem, c)| (stem.as_str(), c))
        .collect();
    let python: Vec<crate::python::PythonType> =
        python.into_iter().filter(|t| wanted(&t.name)).collect();

    let components = plugins.join("target").join("components");
    std::fs::create_dir_all(&components)?;
    if !rust.is_empty() {
        let route = Route::detect()?;
        eprintln!("xtask: building plugins with {}", route.describe());
        let packages: Vec<&str> = if options.packages.is_empty() {
            Vec::new()
        } else {
            rust.iter().map(|(_, c)| c.package.as_str()).collect()
        };
        route.build(&plugins, &packages)?;
        componentize_all(&plugins, &rust, options.check)?;
    }
    crate::python::build(root, &python, &components)?;
    for t in &python {
        let component = std::fs::read(components.join(format!("{}.wasm", t.name)))?;
        check_vectors(&t.name, &component, &t.dir.join("vectors.json"), true)?;
    }
    Ok(())
}

/// A crate of the plugins workspace.
#[derive(Debug)]
struct Crate {
    /// Package name (`helm-metadata-cache`).
    package: String,
    dir: PathBuf,
}

/// The workspace's crates with a library, by library name (the stem of the
/// wasm file cargo writes: `helm_metadata_cache`).
fn crates(plugins: &Path) -> Result<BTreeMap<String, Crate>> {
    let output = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(plugins)
        .output()?;
    if !output.status.success() {
        bail!(
            "cargo metadata in {plugins:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut crates = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds = target["kind"].as_array().into_iter().flatten();
            if kinds.filter_map(|k| k.as_str()).any(|k| k == "cdylib") {
                crates.insert(
                    target["name"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('-', "_"),
                    Crate {
                        package: package["name"].as_str().unwrap_or_default().to_string(),
                        dir: manifest.parent().unwrap_or(plugins).to_path_buf(),
                    },
                );
            }
        }
    }
    Ok(crates)
}

/// Componentizes the built crates: shipped ones to `dist/` (or compared
/// with it under `check`), the others to `target/components/`.
fn componentize_all(plugins: &Path, crates: &[(&str, &Crate)], check: bool) -> Result<()> {
    let out = plugins.join("target").join(TARGET).join("release");
    let components = plugins.join("target").join("components");
    let dist = plugins.join("dist");
    std::fs::create_dir_all(&dist)?;
    let mut stale = Vec::new();
    for &(stem, krate) in crates {
        let path = out.join(format!("{stem}.wasm"));
        let module = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
        let component =
            componentize(&module).with_context(|| format!("componentizing {path:?}"))?;
        let shipped = SHIPPED.contains(&stem);
        check_vectors(stem, &component, &krate.dir.join("vectors.json"), shipped)?;
        let file_name = format!("{}.wasm", stem.replace('_', "-"));
        if shipped {
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
            write_if_changed(&components.join(&file_name), &component)?;
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

/// A type with a `vectors.json` must carry exactly it in its component; a
/// shipped type must have one.
fn check_vectors(name: &str, component: &[u8], vectors: &Path, required: bool) -> Result<()> {
    let carried = custom_section(component, VECTORS_SECTION);
    match std::fs::read(vectors) {
        Ok(expected) => match carried {
            Some(carried) if carried == expected => Ok(()),
            Some(_) => bail!(
                "{name}: the component carries test vectors other than {vectors:?}: rebuild it"
            ),
            None => bail!(
                "{name}: the component carries no test vectors although {vectors:?} exists: add \
                 `geohost_plugin_sdk::test_vectors!();` to its lib.rs"
            ),
        },
        Err(_) if required => bail!(
            "{name}: a shipped type needs test vectors: write {vectors:?} and embed it with \
             `geohost_plugin_sdk::test_vectors!();`"
        ),
        Err(_) => Ok(()),
    }
}

/// The first custom section called `name`, at any depth.
fn custom_section(bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .find_map(|payload| match payload {
            Ok(wasmparser::Payload::CustomSection(s)) if s.name() == name => {
                Some(s.data().to_vec())
            }
            _ => None,
        })
}

/// `component` with a custom section appended (allowed anywhere in a
/// component binary).
pub fn with_custom_section(component: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
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

    /// Builds `packages` (every crate when empty).
    fn build(&self, plugins: &Path, packages: &[&str]) -> Result<()> {
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
        for package in packages {
            cmd.args(["-p", package]);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = Options::parse(&args(&["--check", "-p", "a", "--package=b"]))
            .unwrap()
            .unwrap();
        assert!(o.check);
        assert_eq!(o.packages, ["a", "b"]);
        assert!(Options::parse(&args(&["--help"])).unwrap().is_none());
        assert!(Options::parse(&args(&["-p"])).is_err());
        let error = Options::parse(&args(&["--chek"])).unwrap_err().to_string();
        assert!(
            error.contains("--chek") && error.contains("usage"),
            "{error}"
        );
    }

    #[test]
    fn appended_sections_are_found() {
        let component = wit_component::ComponentEncoder::default()
            .module(&wat())
            .unwrap()
            .encode()
            .unwrap();
        assert_eq!(custom_section(&component, VECTORS_SECTION), None);
        let with = with_custom_section(&component, VECTORS_SECTION, b"{\"records\": []}");
        wasmparser::Validator::new().validate_all(&with).unwrap();
        assert_eq!(
            custom_section(&with, VECTORS_SECTION).as_deref(),
            Some(&b"{\"records\": []}"[..])
        );
    }

    #[test]
    fn components_must_carry_their_vectors_and_shipped_ones_must_have_some() {
        let dir = std::env::temp_dir().join(format!("xtask-vectors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vectors = dir.join("vectors.json");
        let bare = wit_component::ComponentEncoder::default()
            .module(&wat())
            .unwrap()
            .encode()
            .unwrap();
        // A shipped type without vectors.json fails; a fixture may have none.
        let error = check_vectors("t", &bare, &vectors, true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a shipped type needs test vectors"),
            "{error}"
        );
        check_vectors("t", &bare, &vectors, false).unwrap();
        // With a vectors.json, the component must carry exactly it.
        std::fs::write(&vectors, b"{\"records\": []}").unwrap();
        let error = check_vectors("t", &bare, &vectors, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("carries no test vectors"), "{error}");
        let other = with_custom_section(&bare, VECTORS_SECTION, b"{}");
        assert!(check_vectors("t", &other, &vectors, true).is_err());
        let right = with_custom_section(&bare, VECTORS_SECTION, b"{\"records\": []}");
        check_vectors("t", &right, &vectors, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The smallest core module: no imports, no exports.
    fn wat() -> Vec<u8> {
        b"\0asm\x01\0\0\0".to_vec()
    }
}
