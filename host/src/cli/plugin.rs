//! `geohost plugin …`: run and inspect replicable type plugins.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a new replicable type crate: SDK and WIT bindings, the four
    /// functions filled in for a project-owned model, unit tests, test
    /// vectors and a README (docs/authoring-a-type.md).
    New(super::scaffold::NewArgs),
    /// Run a type over fixture data and print one JSON object per record:
    /// {"id", "path", "in_scope"} or {"id", "error"}. Records that carry
    /// `expect` (test vectors) are checked; any unmet one fails the command.
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
        PluginCommand::New(args) => super::scaffold::run(args),
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
    let answers = fixture::run(&loaded, &fixture)?;
    for answer in &answers {
        println!("{answer}");
    }
    let checked = crate::plugin::vectors::check(&fixture.records, &answers)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("checking the expectations of {}", fixtures.display()))?;
    if checked.expected == 0 {
        return Ok(());
    }
    if !checked.failures.is_empty() {
        anyhow::bail!(
            "{} of {} expectations in {} not met:\n  {}",
            checked.failures.len(),
            checked.expected,
            fixtures.display(),
            checked.failures.join("\n  ")
        );
    }
    eprintln!(
        "{}: all {} expectations met ({} {})",
        fixtures.display(),
        checked.expected,
        loaded.name(),
        loaded.identity().version
    );
    Ok(())
}

/// Loads a component file, or a shipped type by file stem or replicable name.
pub fn load_named(
    runtime: &crate::plugin::PluginRuntime,
    name: &str,
) -> Result<crate::plugin::LoadedType> {
    use crate::plugin::builtin;
    let path = std::path::Path::new(name);
    // A file only: in `plugins/`, `npm-metadata-cache` is also the crate's folder.
    if path.is_file() {
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
    anyhow::bail!(
        "{name:?} is neither a file nor a shipped type (shipped: {})",
        builtin::stems().join(", ")
    )
}
