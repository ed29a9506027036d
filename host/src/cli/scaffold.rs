//! `geohost plugin new NAME`: scaffold a replicable type crate.
//!
//! The crate (`Cargo.toml`, `src/lib.rs`, `vectors.json`, `README.md`,
//! `.gitignore`) compiles and passes its own tests and vectors as generated,
//! for a made-up project-owned model whose `TODO`s the author replaces with
//! GitLab's. Templates live in `cli/scaffold/` and are embedded in the binary.
//!
//! Two layouts:
//! - inside Geohost's `plugins/` workspace (the folder the crate goes into
//!   holds the workspace `Cargo.toml` and `sdk/`): dependencies come from the
//!   workspace, and the crate is added to its `members`;
//! - anywhere else: a workspace of its own, with a path dependency on the SDK
//!   (`--sdk PATH/TO/geohost/plugins/sdk`) and the SDK workspace's
//!   `Cargo.lock`, so it resolves the versions the SDK is tested with.

use anyhow::{Context, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const CARGO_WORKSPACE: &str = include_str!("scaffold/Cargo.workspace.toml.in");
const CARGO_STANDALONE: &str = include_str!("scaffold/Cargo.standalone.toml.in");
const LIB_RS: &str = include_str!("scaffold/lib.rs.in");
const README: &str = include_str!("scaffold/README.md.in");

/// The SDK crate's package name.
const SDK_PACKAGE: &str = "geohost-plugin-sdk";
/// Names a type crate may not take: the workspace's own folders and crates
/// that clash with Rust's.
const RESERVED: &[&str] = &[
    "sdk",
    "fixtures",
    "dist",
    "target",
    "geohost-plugin-sdk",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
];
/// Longest accepted NAME: `<name>_registry` and friends stay readable identifiers.
const MAX_NAME: usize = 48;

/// `geohost plugin new`'s options.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The type's name, kebab or snake case (`npm-metadata-cache`): the crate
    /// and folder take the kebab form, the replicable name the snake form.
    pub name: String,
    /// The folder to create the crate in (default: the current folder).
    /// Inside Geohost's repository, that is `plugins/`.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The SDK crate (`plugins/sdk` of a Geohost checkout), for a crate
    /// outside Geohost's `plugins/` workspace.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// Runs `geohost plugin new`.
pub fn run(args: NewArgs) -> Result<()> {
    let done = scaffold(&args.name, &args.dir, args.sdk.as_deref())?;
    println!("created {}", done.dir.display());
    for file in &done.files {
        println!("  {}", file.display());
    }
    match &done.layout {
        Layout::Workspace { manifest } => {
            println!(
                "added \"{}\" to the members of {}",
                done.names.crate_name,
                manifest.display()
            );
            print!("{}", next_steps(&done.names.crate_name, manifest));
        }
        Layout::Standalone { .. } => {
            println!("next: fill in the TODOs in src/lib.rs; build and test as its README.md says")
        }
    }
    Ok(())
}

/// What to do after scaffolding inside the plugins workspace whose manifest
/// is `manifest`: every command from the repository's root (the folder
/// holding `plugins/`), so the paths are the same in each.
fn next_steps(crate_name: &str, manifest: &Path) -> String {
    let plugins = manifest.parent().unwrap_or(Path::new("plugins"));
    let root = plugins
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(".."));
    format!(
        "next, from the repository's root ({root}):\n  \
         1. fill in the TODOs in plugins/{crate_name}/src/lib.rs and its test vectors in \
         plugins/{crate_name}/vectors.json\n  \
         2. cargo xtask plugins -p {crate_name}\n  \
         3. geohost plugin test plugins/target/components/{crate_name}.wasm\n\
         (docs/authoring-a-type.md)\n",
        root = root.display()
    )
}

/// The names a crate is generated with, all from NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Crate and folder name, kebab case (`npm-metadata-cache`).
    pub crate_name: String,
    /// The library's file stem, snake case (`npm_metadata_cache`).
    pub lib: String,
    /// Replicable name, snake case and singular.
    pub replicable: String,
    /// Model table, the plural of the replicable name.
    pub table: String,
    /// Rust type name (`NpmMetadataCache`).
    pub type_name: String,
    /// Title (`Npm Metadata Cache`) and its plural.
    pub title: String,
    pub title_plural: String,
}

/// Checks NAME and derives every name from it.
pub fn names(name: &str) -> Result<Names> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.split(['-', '_']).any(str::is_empty);
    if !valid {
        bail!(
            "{name:?} is not a type name: use lowercase letters and digits in words joined by \
             '-' or '_', starting with a letter (for example `npm-metadata-cache`)"
        );
    }
    if name.len() > MAX_NAME {
        bail!(
            "{name:?} is {} characters long; a type name has at most {MAX_NAME}",
            name.len()
        );
    }
    let words: Vec<&str> = name.split(['-', '_']).collect();
    let crate_name = words.join("-");
    if RESERVED.contains(&crate_name.as_str()) || RESERVED.contains(&name) {
        bail!("{name:?} is reserved; choose the name of the GitLab model the type replicates");
    }
    let snake = words.join("_");
    let capitalised: Vec<String> = words
        .iter()
        .map(|w| {
            let mut chars = w.chars();
            let first = chars.next().expect("words are not empty");
            first.to_ascii_uppercase().to_string() + chars.as_str()
        })
        .collect();
    let last = words.len() - 1;
    let mut plural_words = capitalised.clone();
    plural_words[last] = plural(&capitalised[last]);
    Ok(Names {
        lib: snake.clone(),
        table: plural(&snake),
        replicable: snake,
        type_name: capitalised.concat(),
        title: capitalised.join(" "),
        title_plural: plural_words.join(" "),
        crate_name,
    })
}

/// English plural of the last word, as Rails' `pluralize` gives for the
/// common cases (`cache` → `caches`, `entry` → `entries`, `box` → `boxes`).
fn plural(word: &str) -> String {
    let consonant_y =
        word.ends_with('y') && !word[..word.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    if consonant_y {
        format!("{}ies", &word[..word.len() - 1])
    } else if word.ends_with(['s', 'x', 'z']) || word.ends_with("ch") || word.ends_with("sh") {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}

/// How the generated crate finds the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A member of Geohost's `plugins/` workspace, whose manifest this is.
    Workspace { manifest: PathBuf },
    /// A workspace of its own, depending on the SDK at this path.
    Standalone { sdk: PathBuf },
}

/// What `scaffold` made.
#[derive(Debug)]
pub struct Scaffolded {
    pub names: Names,
    pub dir: PathBuf,
    pub layout: Layout,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
}

/// Creates crate NAME in `parent`. Refuses a bad name, an existing folder
/// and, outside Geohost's `plugins/` workspace, a missing or wrong `sdk`;
/// nothing is written then.
pub fn scaffold(name: &str, parent: &Path, sdk: Option<&Path>) -> Result<Scaffolded> {
    let names = names(name)?;
    if !parent.is_dir() {
        bail!("{} is not a folder", parent.display());
    }
    let dir = parent.join(&names.crate_name);
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let layout = match (workspace_manifest(parent), sdk) {
        (Some(manifest), None) => Layout::Workspace { manifest },
        (_, Some(sdk)) => Layout::Standalone {
            sdk: check_sdk(sdk)?,
        },
        (None, None) if workspace_manifest(&parent.join("plugins")).is_some() => bail!(
            "{} is Geohost's repository: create the type in its plugins/ folder \
             (--dir plugins)",
            parent.display()
        ),
        (None, None) => bail!(
            "{} is not Geohost's plugins/ folder: give the SDK's path with \
             --sdk PATH/TO/geohost/plugins/sdk",
            parent.display()
        ),
    };

    let fill = |template: &str, sdk: &str| {
        template
            .replace("{{crate}}", &names.crate_name)
            .replace("{{lib}}", &names.lib)
            .replace("{{replicable}}", &names.replicable)
            .replace("{{table}}", &names.table)
            .replace("{{type_name}}", &names.type_name)
            .replace("{{title}}", &names.title)
            .replace("{{title_plural}}", &names.title_plural)
            .replace("{{key_segment}}", &names.table)
            .replace("{{file_name}}", FILE_NAME)
            .replace("{{uploader}}", &format!("{}Uploader", names.type_name))
            .replace("{{sdk}}", sdk)
    };
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match &layout {
        Layout::Workspace { .. } => {
            files.push(("Cargo.toml".into(), fill(CARGO_WORKSPACE, "")));
        }
        Layout::Standalone { sdk } => {
            let sdk_text = sdk.to_str().context("the SDK's path is not UTF-8")?;
            files.push((
                "Cargo.toml".into(),
                fill(CARGO_STANDALONE, &sdk_text.replace('\\', "/")),
            ));
            // The versions the SDK is built and tested with.
            if let Some(parent) = sdk.parent()
                && let Ok(lock) = std::fs::read_to_string(parent.join("Cargo.lock"))
            {
                files.push(("Cargo.lock".into(), lock));
            }
            files.push((".gitignore".into(), "/target\n/*.wasm\n".into()));
        }
    }
    files.push(("src/lib.rs".into(), fill(LIB_RS, "")));
    files.push(("README.md".into(), fill(README, "")));
    files.push(("vectors.json".into(), vectors(&names)));

    // Register with the workspace first: if that fails, nothing is written.
    let registered = match &layout {
        Layout::Workspace { manifest } => Some(with_member(manifest, &names.crate_name)?),
        Layout::Standalone { .. } => None,
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (path, text) in &files {
        let target = dir.join(path);
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    if let (Layout::Workspace { manifest }, Some(text)) = (&layout, registered) {
        std::fs::write(manifest, text)
            .with_context(|| format!("adding the crate to {}", manifest.display()))?;
    }
    Ok(Scaffolded {
        names,
        dir,
        layout,
        files: files.into_iter().map(|(p, _)| p).collect(),
    })
}

/// The blob file name the template uses.
const FILE_NAME: &str = "file.bin";

/// The manifest of Geohost's plugins workspace, if `parent` is that folder:
/// a `Cargo.toml` with a `[workspace]` and the SDK crate in `sdk/`.
fn workspace_manifest(parent: &Path) -> Option<PathBuf> {
    let manifest = parent.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).ok()?;
    let parsed: toml::Table = text.parse().ok()?;
    parsed.get("workspace")?;
    is_sdk(&parent.join("sdk")).then_some(manifest)
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| {
            t.get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                == Some(SDK_PACKAGE)
        })
}

/// The SDK's absolute path, checked to be the SDK crate.
fn check_sdk(sdk: &Path) -> Result<PathBuf> {
    let path = sdk
        .canonicalize()
        .with_context(|| format!("--sdk {}", sdk.display()))?;
    if !is_sdk(&path) {
        bail!(
            "--sdk {}: no {SDK_PACKAGE} crate there (it is plugins/sdk in a Geohost checkout)",
            sdk.display()
        );
    }
    Ok(path)
}

/// The workspace manifest with `member` added to `workspace.members`,
/// checked by parsing it back. The text is edited in place (one line
/// inserted), so the file's comments and layout are kept.
fn with_member(manifest: &Path, member: &str) -> Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let cannot = || {
        anyhow::anyhow!(
            "cannot add \"{member}\" to `members` in {}: add it by hand, or run \
             `geohost plugin new` elsewhere with --sdk",
            manifest.display()
        )
    };
    let start = text.find("members = [").ok_or_else(cannot)?;
    let close = start + text[start..].find(']').ok_or_else(cannot)?;
    let line_start = text[..close].rfind('\n').map_or(0, |i| i + 1);
    let edited = if text[line_start..close].trim().is_empty() {
        // A multi-line list: a new line before the closing bracket.
        format!(
            "{}    \"{member}\",\n{}",
            &text[..line_start],
            &text[line_start..]
        )
    } else {
        let before = text[start..close].trim_end();
        let comma = if before.ends_with('[') || before.ends_with(',') {
            ""
        } else {
            ", "
        };
        format!("{}{comma}\"{member}\"{}", &text[..close], &text[close..])
    };
    let members = edited
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("workspace")?.get("members")?.as_array().cloned())
        .ok_or_else(cannot)?;
    if !members.iter().any(|m| m.as_str() == Some(member)) {
        return Err(cannot());
    }
    Ok(edited)
}

/// Test vectors for the generated model: in scope, object storage, another
/// group, a refused name. Paths are computed here as GitLab's `HashedPath`,
/// independently of the crate.
fn vectors(names: &Names) -> String {
    let sha = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let path = |project: i64, name: &str| {
        let h = sha(&project.to_string());
        format!(
            "{}/{}/{h}/packages/{}/{}/{FILE_NAME}",
            &h[0..2],
            &h[2..4],
            names.table,
            sha(name)
        )
    };
    let fixture = serde_json::json!({
        "scope": {"selective_sync_type": "namespaces", "namespace_ids": [1], "sync_object_storage": false},
        "namespaces": [{"id": 1, "parent_id": null}, {"id": 2, "parent_id": 1}, {"id": 3, "parent_id": null}],
        "projects": [{"id": 10, "namespace_id": 2}, {"id": 20, "namespace_id": 3}],
        "records": [
            {"id": 1, "project_id": 10, "name": "alpha",
             "expect": {"path": path(10, "alpha"), "in_scope": true}},
            {"id": 2, "project_id": 10, "name": "beta", "file_store": 2,
             "expect": {"path": path(10, "beta"), "in_scope": false}},
            {"id": 3, "project_id": 20, "name": "alpha",
             "expect": {"path": path(20, "alpha"), "in_scope": false}},
            {"id": 4, "project_id": 10, "name": "a/b", "expect": {"error": "invalid name"}},
        ],
    });
    serde_json::to_string_pretty(&fixture).expect("JSON") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_kebab_or_snake() {
        let n = names("npm-metadata-cache").unwrap();
        assert_eq!(n, names("npm_metadata_cache").unwrap());
        assert_eq!(n.crate_name, "npm-metadata-cache");
        assert_eq!(n.lib, "npm_metadata_cache");
        assert_eq!(n.replicable, "npm_metadata_cache");
        assert_eq!(n.table, "npm_metadata_caches");
        assert_eq!(n.type_name, "NpmMetadataCache");
        assert_eq!(n.title, "Npm Metadata Cache");
        assert_eq!(n.title_plural, "Npm Metadata Caches");
        assert_eq!(
            names("terraform-state-version").unwrap().table,
            "terraform_state_versions"
        );
        assert_eq!(
            names("dependency-proxy-blob").unwrap().table,
            "dependency_proxy_blobs"
        );
        assert_eq!(names("registry").unwrap().title_plural, "Registries");
        assert_eq!(names("box2").unwrap().table, "box2s");
        assert_eq!(names("inbox").unwrap().table, "inboxes");
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        for bad in [
            "",
            "Npm",
            "npm cache",
            "npm--cache",
            "-npm",
            "npm-",
            "1npm",
            "npm.cache",
            "npm/cache",
            "über",
        ] {
            let error = names(bad).unwrap_err().to_string();
            assert!(error.contains("is not a type name"), "{bad:?}: {error}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        assert!(names(&long).unwrap_err().to_string().contains("at most"));
        for reserved in ["sdk", "test", "proc_macro", "geohost_plugin_sdk"] {
            let error = names(reserved).unwrap_err().to_string();
            assert!(error.contains("reserved"), "{reserved}: {error}");
        }
    }

    #[test]
    fn members_are_added_to_any_list_layout() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        for (before, after) in [
            (
                "[workspace]\nmembers = [\n    \"sdk\",\n]\n",
                "[workspace]\nmembers = [\n    \"sdk\",\n    \"x\",\n]\n",
            ),
            (
                "[workspace]\nmembers = [\"sdk\"]\n",
                "[workspace]\nmembers = [\"sdk\", \"x\"]\n",
            ),
            (
                "[workspace]\nmembers = []\n",
                "[workspace]\nmembers = [\"x\"]\n",
            ),
        ] {
            std::fs::write(&manifest, before).unwrap();
            assert_eq!(with_member(&manifest, "x").unwrap(), after);
        }
        std::fs::write(&manifest, "[workspace]\nresolver = \"3\"\n").unwrap();
        let error = with_member(&manifest, "x").unwrap_err().to_string();
        assert!(error.contains("add it by hand"), "{error}");
    }
}
