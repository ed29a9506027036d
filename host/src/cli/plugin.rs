//! `geohost plugin …`: run and inspect replicable type plugins.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a type over fixture data and print one JSON object per record:
    /// {"id", "path", "in_scope"} or {"id", "error"}.
    Test {
        /// A component file (.wasm), or the name of a type shipped with the host
        /// (for example `helm-metadata-cache` or `packages_helm_metadata_cache`).
        component: String,
        /// The fixture file (JSON: scope, namespaces, projects, records).
        #[arg(long)]
        fixtures: PathBuf,
    },
    /// List a running site's types, their recorded versions and refusals.
    List(super::plugin_admin::Remote),
    /// Validate a component and, if it passes, make it live on a running site.
    Install {
        file: PathBuf,
        /// The type it must be an upgrade of (refused if it is another type).
        #[arg(long = "type")]
        name: Option<String>,
        #[command(flatten)]
        remote: super::plugin_admin::Remote,
    },
    /// Go back to the version of a type that was active before.
    Rollback {
        name: String,
        #[command(flatten)]
        remote: super::plugin_admin::Remote,
    },
    /// Stop replicating a type (its data is kept).
    Remove {
        name: String,
        /// Remove it even though it has records or registries.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: super::plugin_admin::Remote,
    },
    /// What a new version would change over the live data: records entering
    /// or leaving scope, blob paths that change, with examples.
    Diff {
        file: PathBuf,
        #[command(flatten)]
        remote: super::plugin_admin::Remote,
    },
}

pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Test {
            component,
            fixtures,
        } => test(&component, &fixtures),
        PluginCommand::List(remote) => super::plugin_admin::list(&remote),
        PluginCommand::Install { file, name, remote } => {
            super::plugin_admin::install(&remote, &file, name.as_deref())
        }
        PluginCommand::Rollback { name, remote } => super::plugin_admin::rollback(&remote, &name),
        PluginCommand::Remove {
            name,
            force,
            remote,
        } => super::plugin_admin::remove(&remote, &name, force),
        PluginCommand::Diff { file, remote } => super::plugin_admin::diff(&remote, &file),
    }
}

fn test(component: &str, fixtures: &std::path::Path) -> Result<()> {
    use crate::plugin::{Limits, PluginRuntime, fixture};
    let runtime = PluginRuntime::new(Limits::default(), None)?;
    let loaded = load_named(&runtime, component)?;
    let text = std::fs::read_to_string(fixtures)
        .with_context(|| format!("reading fixtures {}", fixtures.display()))?;
    let fixture: fixture::Fixture = serde_json::from_str(&text)
        .with_context(|| format!("parsing fixtures {}", fixtures.display()))?;
    for answer in fixture::run(&loaded, &fixture)? {
        println!("{answer}");
    }
    Ok(())
}

/// Loads a component file, or a shipped type by file stem or replicable name.
pub fn load_named(
    runtime: &crate::plugin::PluginRuntime,
    name: &str,
) -> Result<crate::plugin::LoadedType> {
    use crate::plugin::builtin;
    let path = std::path::Path::new(name);
    if path.exists() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return runtime
            .load(&bytes)
            .with_context(|| format!("loading {}", path.display()));
    }
    if let Some(shipped) = builtin::by_stem(name) {
        return runtime
            .load(shipped.bytes)
            .with_context(|| format!("loading shipped {}", shipped.file));
    }
    for shipped in builtin::BUILTIN {
        let loaded = runtime
            .load(shipped.bytes)
            .with_context(|| format!("loading shipped {}", shipped.file))?;
        if loaded.name() == name {
            return Ok(loaded);
        }
    }
    let known: Vec<&str> = builtin::BUILTIN
        .iter()
        .map(|b| b.file.trim_end_matches(".wasm"))
        .collect();
    anyhow::bail!(
        "{name:?} is neither a file nor a shipped type (shipped: {})",
        known.join(", ")
    )
}
