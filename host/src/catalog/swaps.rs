//! What a site knows of its hot swaps while it runs: one swap at a time,
//! and the refused components to report (plugins API, site status).

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The plugins folder as startup found it: for each file, the SHA-256 of
/// its bytes and the type it provides (when it loaded).
pub type FolderTypes = BTreeMap<PathBuf, (String, Option<String>)>;

/// A site's hot-swap state: one swap at a time, and the last refusals.
#[derive(Default)]
pub struct SwapState {
    lock: tokio::sync::Mutex<()>,
    failures: Mutex<BTreeMap<String, Failure>>,
    startup_folder: Mutex<FolderTypes>,
}

/// A refused component, as reported until a later version of the same type
/// (or from the same file) goes live.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// The type it claimed to be, when that is known.
    pub name: Option<String>,
    pub version: Option<String>,
    pub sha256: String,
    pub source: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

impl SwapState {
    /// Waits for any other swap of this site to finish; the guard keeps
    /// the next one waiting.
    pub async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// The current refusals, by type name (or source when the component
    /// has none).
    pub fn failures(&self) -> Vec<Failure> {
        self.failures
            .lock()
            .expect("failures")
            .values()
            .cloned()
            .collect()
    }

    /// Reports `failure` under `key` (a type name, or the component's source).
    pub fn fail(&self, key: String, failure: Failure) {
        self.failures.lock().expect("failures").insert(key, failure);
    }

    /// Remembers what startup found in the plugins folder.
    pub fn set_startup_folder(&self, folder: FolderTypes) {
        *self.startup_folder.lock().expect("folder") = folder;
    }

    /// What startup found in the plugins folder (for the folder watcher).
    pub fn startup_folder(&self) -> FolderTypes {
        self.startup_folder.lock().expect("folder").clone()
    }

    /// Forgets the refusals under `keys` (a version of that type went live).
    pub fn clear(&self, keys: &[&str]) {
        let mut failures = self.failures.lock().expect("failures");
        for key in keys {
            failures.remove(*key);
        }
    }
}
