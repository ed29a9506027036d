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
    /// Without --fixtures, the test vectors embedded in the component run.
    Test {
        /// A component file (.wasm), or the name of a type shipped with the host
        /// (for example `helm-metadata-cache` or `packages_helm_metadata_cache`).
        component: String,
        /// A fixture file (JSON: scope, namespaces, projects, records); by
        /// default the component's own vectors (its vectors.json, embedded).
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Keep compiled components in this folder, so the next run of the
        /// same component skips compiling it (seconds for a Python type).
        #[arg(long, env = "GEOHOST_PLUGIN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
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
            cache_dir,
        } => test(&component, fixtures.as_deref(), cache_dir),
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

fn test(
    component: &str,
    fixtures: Option<&std::path::Path>,
    cache_dir: Option<PathBuf>,
) -> Result<()> {
    use crate::plugin::vectors::{SECTION, Vectors};
    use crate::plugin::{Limits, PluginRuntime, fixture};
    let runtime = PluginRuntime::new(Limits::default(), cache_dir)?;
    let loaded = load_named(&runtime, component)?;
    let (source, vectors) =
        match fixtures {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading fixtures {}", path.display()))?;
                let fixture: fixture::Fixture = serde_json::from_str(&text)
                    .with_context(|| format!("parsing fixtures {}", path.display()))?;
                (path.display().to_string(), Vectors::Expectations(fixture))
            }
            None => {
                let vectors = loaded.vectors().map_err(anyhow::Error::msg)?.with_context(|| {
                format!(
                    "{component} carries no test vectors (custom section {SECTION}): build it \
                     with the SDK's test_vectors!() (`cargo xtask plugins` checks it), or pass \
                     --fixtures FILE"
                )
            })?;
                (format!("the vectors embedded in {component}"), vectors)
            }
        };
    let answers = fixture::run(&loaded, vectors.fixture())?;
    for answer in &answers {
        println!("{answer}");
    }
    let checked = vectors
        .verdict(&answers, &Default::default())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("checking the expectations of {source}"))?;
    if checked.expected == 0 {
        return Ok(());
    }
    if !checked.failures.is_empty() {
        anyhow::bail!(
            "{} of {} expectations in {source} not met:\n  {}",
            checked.failures.len(),
            checked.expected,
            checked.failures.join("\n  ")
        );
    }
    eprintln!(
        "{source}: all {} expectations met ({} {})",
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
