//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds (seconds
//! for large ones); loading a compiled artifact takes well under one. An
//! artifact is keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version, target, settings), so a new engine
//! never loads an artifact it cannot run. Artifacts are written by this
//! module only, atomically (temporary file, then rename), and deserializing is
//! `unsafe` precisely because it must only see such bytes.
//!
//! Wasmtime checks an artifact's format and engine, not its machine code: a
//! file damaged on disk could load and then run garbage. So each file ends
//! with the SHA-256 of the artifact, checked before deserializing; a file that
//! fails the check is discarded and the component compiled again.

use sha2::{Digest, Sha256};
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
            match read_cached(engine, &path) {
                Ok(compiled) => return Ok((compiled, CompileOutcome::Cached)),
                Err(error) => {
                    tracing::warn!(?path, %error, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = engine.precompile_component(component)?;
        if let Err(error) = store(&path, &artifact) {
            // A cache that cannot be written slows loads down; it must not fail them.
            tracing::warn!(?path, %error, "could not cache the compiled artifact");
        }
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

/// The component in the cache file at `path`, if the file is intact.
fn read_cached(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    let file = std::fs::read(path)?;
    let artifact = verified(&file)?;
    // SAFETY: `artifact` is, byte for byte (its digest matches), what `store`
    // wrote from `Engine::precompile_component`, and the file name includes
    // the engine's compatibility hash.
    Ok(unsafe { Component::deserialize(engine, artifact)? })
}

/// Length of the SHA-256 trailer of a cache file.
const DIGEST_LEN: usize = 32;

/// The artifact in a cache file, if its trailing SHA-256 matches.
fn verified(file: &[u8]) -> anyhow::Result<&[u8]> {
    let Some(split) = file.len().checked_sub(DIGEST_LEN) else {
        anyhow::bail!(
            "the file is {} bytes, too short for an artifact",
            file.len()
        );
    };
    let (artifact, digest) = file.split_at(split);
    if Sha256::digest(artifact).as_slice() != digest {
        anyhow::bail!("the artifact does not match its SHA-256 (damaged on disk?)");
    }
    Ok(artifact)
}

/// Writes `artifact` and its SHA-256 to `path`, atomically.
fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("artifact paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let mut file = Vec::with_capacity(artifact.len() + DIGEST_LEN);
    file.extend_from_slice(artifact);
    file.extend_from_slice(&Sha256::digest(artifact));
    std::fs::write(&tmp, &file)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(artifact: &[u8]) -> Vec<u8> {
        let mut file = artifact.to_vec();
        file.extend_from_slice(&Sha256::digest(artifact));
        file
    }

    #[test]
    fn verified_returns_the_artifact_of_an_intact_file() {
        assert_eq!(verified(&framed(b"artifact")).unwrap(), b"artifact");
        assert_eq!(verified(&framed(b"")).unwrap(), b"");
    }

    #[test]
    fn verified_refuses_damaged_and_short_files() {
        let mut damaged = framed(b"artifact");
        damaged[3] ^= 1;
        let error = verified(&damaged).unwrap_err();
        assert!(error.to_string().contains("SHA-256"), "{error}");
        let mut wrong_digest = framed(b"artifact");
        *wrong_digest.last_mut().unwrap() ^= 1;
        assert!(verified(&wrong_digest).is_err());
        let short = verified(&[0; DIGEST_LEN - 1]).unwrap_err();
        assert!(short.to_string().contains("too short"), "{short}");
    }

    #[test]
    fn store_writes_atomically_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("a.cwasm");
        store(&path, b"artifact").unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(verified(&file).unwrap(), b"artifact");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.cwasm"]);
    }
}
