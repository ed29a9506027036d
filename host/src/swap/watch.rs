//! The watched plugins folder (`plugins.dir`): a component file that
//! appears or changes there is installed as soon as it has stopped
//! changing, through [`super::activate`] (every check, same reports).
//!
//! The folder is polled every `plugins.watch_interval_ms` (one `stat` per
//! file; the bytes are read only when a file's size or modification time
//! changed). Polling rather than inotify: it behaves the same on every
//! file system (network mounts and container volumes deliver no inotify
//! events for changes made elsewhere), and it gives the debounce for free.
//! A file is taken when two polls in a row saw the same size and time; a
//! writer that stalls longer than that yields a partial file, which fails
//! validation, is reported, and is taken again once it changes.
//!
//! Write a component elsewhere and rename it in for an atomic drop; files
//! whose name starts with `.` are ignored. A file keeps the type it first
//! provided: a different type's component written over it is refused.
//!
//! Deleting a file removes its type, when the running version is the one
//! the file provided, through [`super::remove`] (the admin API's removal,
//! with its guards; `force`, as deleting the file is the operator's word):
//! the type leaves the catalog without a restart, its data is kept, and
//! putting the file back installs it again. A file must be gone for two
//! polls in a row, so a writer that deletes before rewriting does not remove
//! its type. A type installed otherwise (API, CLI, shipped) is not touched.

use crate::site::Site;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the watcher knows of one file.
#[derive(Debug, Clone, Default)]
struct Seen {
    size: u64,
    modified: Option<SystemTime>,
    /// Polls in a row that saw this size and time.
    stable: u32,
    /// SHA-256 of the bytes last handled (installed or refused).
    handled: Option<String>,
    /// The type this file provides.
    name: Option<String>,
    /// Polls in a row that did not find the file.
    missing: u32,
}

/// Watches `site.config.plugins.dir` until shutdown.
pub async fn run(site: Arc<Site>) {
    let Some(dir) = site.config.plugins.dir.clone() else {
        return;
    };
    let interval = Duration::from_millis(site.config.plugins.watch_interval_ms.max(10));
    let mut seen = initial(&site, &dir).await;
    tracing::info!(dir = %dir.display(), ?interval, "watching the plugins folder");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = site.shutdown.cancelled() => return,
        }
        poll(&site, &dir, &mut seen).await;
    }
}

fn components(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm"))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// The components in `dir` and their bytes (a blocking read).
pub fn read_components(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    std::fs::read_dir(dir)?; // a missing or unreadable folder is an error here
    let mut out = Vec::new();
    for path in components(dir) {
        match std::fs::read(&path) {
            Ok(bytes) => out.push((path, bytes)),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "component in the plugins folder not read")
            }
        }
    }
    Ok(out)
}

/// The files [`super::startup`] read, unchanged since, count as handled,
/// with the type startup found in them. A file that arrived or changed
/// after startup read the folder (the site was still starting) is new: it
/// is installed once it has stopped changing, as any other.
async fn initial(site: &Site, dir: &Path) -> HashMap<PathBuf, Seen> {
    let at_startup = site.swaps.startup_folder();
    let dir = dir.to_path_buf();
    let files = blocking(move || {
        components(&dir)
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                let bytes = std::fs::read(&path).ok()?;
                Some((path, meta, hex::encode(Sha256::digest(&bytes))))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut seen = HashMap::new();
    for (path, meta, sha) in files {
        let (handled, name) = match at_startup.get(&path) {
            Some((startup_sha, name)) if *startup_sha == sha => (Some(sha), name.clone()),
            // Arrived, or rewritten, since startup read the folder; a
            // rewritten file keeps the type it provided.
            Some((_, name)) => (None, name.clone()),
            None => (None, None),
        };
        seen.insert(
            path,
            Seen {
                size: meta.len(),
                modified: meta.modified().ok(),
                stable: if handled.is_some() { 2 } else { 0 },
                handled,
                name,
                missing: 0,
            },
        );
    }
    seen
}

/// Runs a blocking file-system read off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn poll(site: &Arc<Site>, dir: &Path, seen: &mut HashMap<PathBuf, Seen>) {
    let dir = dir.to_path_buf();
    let Some(stats) = blocking(move || {
        components(&dir)
            .into_iter()
            .filter_map(|path| std::fs::metadata(&path).ok().map(|meta| (path, meta)))
            .collect::<Vec<_>>()
    })
    .await
    else {
        return; // the folder was not read: no file counts as deleted
    };
    let present: Vec<PathBuf> = stats.iter().map(|(path, _)| path.clone()).collect();
    removed(site, &present, seen).await;
    for (path, meta) in stats {
        let entry = seen.entry(path.clone()).or_default();
        entry.missing = 0;
        let modified = meta.modified().ok();
        if entry.size != meta.len() || entry.modified != modified {
            entry.size = meta.len();
            entry.modified = modified;
            entry.stable = 0;
            continue;
        }
        entry.stable = entry.stable.saturating_add(1);
        if entry.stable != 1 {
            continue; // not settled yet, or already handled
        }
        let file = path.clone();
        let Some(Ok(bytes)) = blocking(move || std::fs::read(file)).await else {
            continue;
        };
        let sha = hex::encode(Sha256::digest(&bytes));
        if entry.handled.as_deref() == Some(sha.as_str()) {
            continue;
        }
        entry.handled = Some(sha);
        let request = super::Request {
            expect_name: entry.name.clone(),
            source: path.display().to_string(),
        };
        match super::activate(site, bytes, request).await {
            Ok(report) => entry.name = Some(report.name),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "component in the plugins folder not installed")
            }
        }
    }
}

/// Removes the types of files gone for two polls whose running version is
/// what the file provided; forgets every file gone for two polls.
async fn removed(site: &Arc<Site>, present: &[PathBuf], seen: &mut HashMap<PathBuf, Seen>) {
    let mut gone = Vec::new();
    for (path, entry) in seen.iter_mut() {
        if present.contains(path) {
            continue;
        }
        entry.missing += 1;
        if entry.missing >= 2 {
            gone.push(path.clone());
        }
    }
    for path in gone {
        let Some(entry) = seen.remove(&path) else {
            continue;
        };
        let Some(name) = entry.name else { continue };
        // Only the hash: holding the `Arc` would keep a swap from draining.
        let running = site
            .catalog
            .get(&name)
            .map(|it| it.plugin.sha256().to_string());
        if running.is_none() || running != entry.handled {
            tracing::info!(file = %path.display(), r#type = %name, "component file deleted; its type runs another version, left as it is");
            continue;
        }
        match super::remove(site, &name, true).await {
            Ok(removal) => tracing::warn!(
                file = %path.display(),
                r#type = %name,
                version = %removal.version,
                "component file deleted: type removed (its data is kept)"
            ),
            Err(error) => tracing::warn!(
                file = %path.display(),
                r#type = %name,
                %error,
                "component file deleted, but its type could not be removed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_are_components() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.wasm", "a.wasm", ".a.wasm", "notes.txt", ".part-1"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let names: Vec<String> = components(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["a.wasm", "b.wasm"]);
        assert!(components(&dir.path().join("missing")).is_empty());
    }
}
