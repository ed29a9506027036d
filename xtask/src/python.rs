//! Replicable types written in Python: each folder `plugins/python/<name>/`
//! holds a module `<name with _>.py` defining `class Replicable` and its
//! `vectors.json`; `plugins/python/sdk/` holds the helpers they share
//! (`geohost.py`). Built with componentize-py, from a virtual environment
//! under `plugins/target/`, then:
//!
//! 1. the WASI imports outside the host's subset are stubbed with traps
//!    ([`crate::wasi_stub`]);
//! 2. `vectors.json` is appended as the `geohost-test-vectors` section;
//! 3. the component goes to `plugins/target/components/<name>.wasm`.
//!
//! componentize-py's output is not byte-reproducible (it snapshots an
//! initialised CPython heap), so Python types never go to `plugins/dist/`.
//! A build is skipped when nothing it reads changed (a stamp beside the
//! output). The unstubbed build is kept as
//! `fixture-<name>-unstubbed.wasm`: what a type imports without the stub
//! step, which the host must refuse.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The pinned toolchain (componentize-py), relative to `plugins/`.
const REQUIREMENTS: &str = "python/requirements.txt";

/// One Python type.
pub struct PythonType {
    /// Folder name and component stem (`nuget-symbol`).
    pub name: String,
    pub dir: PathBuf,
    /// The Python module (`nuget_symbol`).
    pub module: String,
}

/// The Python types under `plugins/python/`.
pub fn types(plugins: &Path) -> Result<Vec<PythonType>> {
    let python = plugins.join("python");
    let Ok(entries) = std::fs::read_dir(&python) else {
        return Ok(Vec::new());
    };
    let mut types = Vec::new();
    for entry in entries {
        let dir = entry?.path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !dir.is_dir() || name == "sdk" || name.starts_with('.') {
            continue;
        }
        let module = name.replace('-', "_");
        if !dir.join(format!("{module}.py")).is_file() {
            bail!("{dir:?} is a Python type without its module {module}.py");
        }
        types.push(PythonType { name, dir, module });
    }
    types.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(types)
}

/// Builds `types` into `components` (skipping those whose inputs did not change).
pub fn build(root: &Path, types: &[PythonType], components: &Path) -> Result<()> {
    if types.is_empty() {
        return Ok(());
    }
    let plugins = root.join("plugins");
    let componentize = toolchain(
        &plugins.join("target").join("python-toolchain"),
        &plugins.join(REQUIREMENTS),
    )?;
    let subset = crate::wasi_stub::subset(root)?;
    for t in types {
        let output = components.join(format!("{}.wasm", t.name));
        let stamp = components.join(format!(".{}.inputs", t.name));
        let inputs = inputs_hash(root, t)?;
        if output.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&inputs) {
            continue;
        }
        let started = Instant::now();
        let raw = components.join(format!("fixture-{}-unstubbed.wasm", t.name));
        crate::run(
            Command::new(&componentize)
                .arg("-d")
                .arg(root.join("wit").join("replicable.wit"))
                .args(["-w", "replicable-type", "componentize", "-p"])
                .arg(&t.dir)
                .arg("-p")
                .arg(plugins.join("python").join("sdk"))
                .arg(&t.module)
                .arg("-o")
                .arg(&raw),
        )?;
        let built = std::fs::read(&raw)?;
        let (stubbed, names) = crate::wasi_stub::stub(&built, &subset)
            .with_context(|| format!("stubbing the WASI imports of {}", t.name))?;
        let vectors = std::fs::read(t.dir.join("vectors.json"))
            .with_context(|| format!("{}: every type keeps a vectors.json", t.name))?;
        let component = crate::plugins::with_custom_section(
            &stubbed,
            crate::plugins::VECTORS_SECTION,
            &vectors,
        );
        std::fs::write(&output, &component)?;
        std::fs::write(&stamp, &inputs)?;
        eprintln!(
            "xtask: built {} (Python) in {:.1} s: {:.1} MiB, {} WASI interfaces stubbed",
            output.display(),
            started.elapsed().as_secs_f64(),
            component.len() as f64 / (1 << 20) as f64,
            names.len()
        );
    }
    Ok(())
}

/// The venv's `componentize-py`, installing the pinned requirements first
/// if needed.
fn toolchain(venv: &Path, requirements: &Path) -> Result<PathBuf> {
    crate::venv::with_requirements(venv, requirements)?;
    let bin = venv.join("bin").join("componentize-py");
    if !bin.exists() {
        bail!("{requirements:?} installed but {bin:?} is missing");
    }
    Ok(bin)
}

/// SHA-256 of everything a build reads: the toolchain's version, the WIT,
/// the subset, the SDK and the type's folder.
fn inputs_hash(root: &Path, t: &PythonType) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION"));
    let mut files = vec![
        root.join("wit/replicable.wit"),
        root.join("wit/wasi-subset.txt"),
        root.join("plugins").join(REQUIREMENTS),
    ];
    for dir in [root.join("plugins/python/sdk"), t.dir.clone()] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    for file in files {
        hash.update(file.to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file)?);
    }
    Ok(hex::encode(hash.finalize()))
}
