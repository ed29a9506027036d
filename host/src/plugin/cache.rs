//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds (seconds
//! for large ones); loading a compiled artifact takes well under one. An
//! artifact is keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version, target, settings), so a new engine
//! never loads an artifact it cannot run. Artifacts are written by this
//! module only, atomically (temporary file, then rename), and deserializing is
//! `unsafe` precisely because it must only see such bytes.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live, and how a component is compiled.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

/// Whether a load compiled the component or found it cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompileOutcome {
    Compiled,
    Cached,
}

impl CompileCache {
    /// A cache in `dir`, or no cache at all (`None`: compile every time).
    pub fn new(dir: Option<PathBuf>) -> CompileCache {
        CompileCache { dir }
    }

    /// The compiled form of `component` (a component binary whose SHA-256 is
    /// `sha256`), from the cache when possible.
    pub fn load(
        &self,
        engine: &Engine,
        component: &[u8],
        sha256: &str,
    ) -> anyhow::Result<(Component, CompileOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, component)?, CompileOutcome::Compiled));
        };
        let path = artifact_path(dir, engine, sha256);
        if path.exists() {
            // SAFETY: files under the cache directory are written only by
            // `store` below, from `Engine::precompile_component`, and the key
            // includes the engine's compatibility hash.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(compiled) => return Ok((compiled, CompileOutcome::Cached)),
                Err(error) => {
                    tracing::warn!(?path, %error, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = engine.precompile_component(component)?;
        store(&path, &artifact)?;
        // SAFETY: `artifact` was just produced by this engine.
        let compiled = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((compiled, CompileOutcome::Compiled))
    }
}

fn artifact_path(dir: &Path, engine: &Engine, sha256: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("artifact paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
