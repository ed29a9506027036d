//! The type author's kit from the outside: `geohost plugin test` over every
//! shipped type's test vectors, and `geohost plugin new` scaffolding a crate
//! that compiles.

use geohost::plugin::builtin;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GEOHOST: &str = env!("CARGO_BIN_EXE_geohost");

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

fn geohost(args: &[&str], cwd: &Path) -> Output {
    Command::new(GEOHOST)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running geohost")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plugin_test_meets_every_shipped_types_vectors() {
    let stems = builtin::stems();
    assert!(
        stems.contains(&"helm-metadata-cache") && stems.contains(&"npm-metadata-cache"),
        "{stems:?}"
    );
    for stem in stems {
        let vectors = plugins_dir().join(stem).join("vectors.json");
        assert!(
            vectors.exists(),
            "shipped type {stem} has no test vectors at {}",
            vectors.display()
        );
        let records = serde_json::from_str::<Value>(&std::fs::read_to_string(&vectors).unwrap())
            .unwrap()["records"]
            .as_array()
            .unwrap()
            .len();
        let output = geohost(
            &[
                "plugin",
                "test",
                stem,
                "--fixtures",
                vectors.to_str().unwrap(),
            ],
            &plugins_dir(),
        );
        let stderr = text(&output.stderr);
        assert!(output.status.success(), "{stem}: {stderr}");
        assert!(
            stderr.contains(&format!("all {records} expectations met")),
            "{stem}: {stderr}"
        );
        // Every vector answers; refusals are among them.
        let answers: Vec<Value> = text(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), records, "{stem}");
        assert!(answers.iter().any(|a| a.get("error").is_some()), "{stem}");
        assert!(answers.iter().any(|a| a["in_scope"] == true), "{stem}");
    }
}

#[test]
fn every_shipped_component_carries_its_vectors() {
    let runtime =
        geohost::plugin::PluginRuntime::new(geohost::plugin::Limits::default(), None).unwrap();
    for shipped in builtin::BUILTIN {
        let stem = shipped.file.trim_end_matches(".wasm");
        let file = std::fs::read(plugins_dir().join(stem).join("vectors.json")).unwrap();
        let carried =
            geohost::plugin::custom_section(shipped.bytes, geohost::plugin::VECTORS_SECTION)
                .unwrap_or_else(|| panic!("{stem} carries no test vectors"));
        assert_eq!(
            carried, file,
            "{stem} carries other vectors than its vectors.json"
        );
        // And `plugin test` without --fixtures runs them.
        let loaded = runtime.load(shipped.bytes).unwrap();
        let (_, checked) = loaded.vectors().unwrap().unwrap().check(&loaded).unwrap();
        assert!(
            checked.expected > 5 && checked.failures.is_empty(),
            "{stem}: {checked:?}"
        );
    }
    let output = geohost(&["plugin", "test", "npm-metadata-cache"], &plugins_dir());
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the vectors embedded in npm-metadata-cache: all"),
        "{stderr}"
    );
}

#[test]
fn plugin_test_fails_on_an_unmet_or_malformed_vector() {
    let dir = tempfile::tempdir().unwrap();
    let mut fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(plugins_dir().join("npm-metadata-cache/vectors.json")).unwrap(),
    )
    .unwrap();
    // Record 1 moved to another path, record 7 suddenly accepted.
    fixture["records"][0]["expect"]["path"] = json!("somewhere/else/metadata.json");
    fixture["records"][6]["package_name"] = json!("now-good");
    let unmet = dir.path().join("unmet.json");
    std::fs::write(&unmet, fixture.to_string()).unwrap();
    let output = geohost(
        &[
            "plugin",
            "test",
            "npm-metadata-cache",
            "--fixtures",
            unmet.to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("2 of 9 expectations"), "{stderr}");
    assert!(
        stderr.contains("record 1: path") && stderr.contains("somewhere/else"),
        "{stderr}"
    );
    assert!(stderr.contains("record 7: answered"), "{stderr}");
    // The answers are still printed, one per record.
    assert_eq!(text(&output.stdout).lines().count(), 9);

    fixture["records"][0]["expect"] = json!({"paht": "typo"});
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, fixture.to_string()).unwrap();
    let output = geohost(
        &[
            "plugin",
            "test",
            "npm-metadata-cache",
            "--fixtures",
            malformed.to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("record 1: `expect` is malformed") && stderr.contains("paht"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// `geohost plugin new`

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of Geohost's `plugins/` workspace with only the SDK (and the WIT
/// contract beside it, where the SDK reads it), as a newcomer's checkout.
pub(crate) fn sdk_only_workspace(root: &Path) -> PathBuf {
    copy_dir(&repo().join("wit"), &root.join("wit"));
    copy_dir(
        &plugins_dir().join("sdk/src"),
        &root.join("plugins/sdk/src"),
    );
    std::fs::copy(
        plugins_dir().join("sdk/Cargo.toml"),
        root.join("plugins/sdk/Cargo.toml"),
    )
    .unwrap();
    std::fs::copy(
        plugins_dir().join("Cargo.lock"),
        root.join("plugins/Cargo.lock"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(plugins_dir().join("Cargo.toml")).unwrap();
    let start = manifest.find("members = [").unwrap();
    let end = start + manifest[start..].find(']').unwrap() + 1;
    let manifest = format!(
        "{}members = [\n    \"sdk\",\n]{}",
        &manifest[..start],
        &manifest[end..]
    );
    std::fs::write(root.join("plugins/Cargo.toml"), manifest).unwrap();
    root.join("plugins")
}

/// `cargo test --lib` of a generated crate on this machine, offline, sharing the
/// plugins' target folder (its dependencies are built once).
fn cargo_test(dir: &Path, package: &str) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--offline", "--lib", "-p", package, "--target-dir"])
        .arg(plugins_dir().join("target"))
        .current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    let output = cmd.output().expect("running cargo");
    assert!(
        output.status.success(),
        "cargo test of {package} in {}:\n{}\n{}",
        dir.display(),
        text(&output.stdout),
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("3 passed") || text(&output.stderr).contains("3 passed"),
        "{stdout}"
    );
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = plugins_dir().join("sdk");
    for (name, why) in [
        ("Npm-Cache", "is not a type name"),
        ("npm cache", "is not a type name"),
        ("npm--cache", "is not a type name"),
        ("../escape", "is not a type name"),
        ("sdk", "reserved"),
    ] {
        let output = geohost(
            &["plugin", "new", name, "--sdk", sdk.to_str().unwrap()],
            dir.path(),
        );
        assert!(!output.status.success(), "{name} accepted");
        assert!(
            text(&output.stderr).contains(why),
            "{name}: {}",
            text(&output.stderr)
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );

    // Outside the plugins workspace the SDK must be named, and be the SDK.
    let output = geohost(&["plugin", "new", "npm-cache"], dir.path());
    assert!(
        text(&output.stderr).contains("--sdk"),
        "{}",
        text(&output.stderr)
    );
    let output = geohost(
        &[
            "plugin",
            "new",
            "npm-cache",
            "--sdk",
            dir.path().to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        text(&output.stderr).contains("no geohost-plugin-sdk crate there"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );

    // An existing folder is left alone.
    std::fs::create_dir(dir.path().join("npm-cache")).unwrap();
    std::fs::write(dir.path().join("npm-cache/keep"), "mine").unwrap();
    let output = geohost(
        &["plugin", "new", "npm_cache", "--sdk", sdk.to_str().unwrap()],
        dir.path(),
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("already exists"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("npm-cache"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn plugin_new_scaffolds_crates_that_build_and_pass_their_tests() {
    let tmp = tempfile::tempdir().unwrap();

    // Inside a Geohost checkout's plugins/ workspace.
    let plugins = sdk_only_workspace(&tmp.path().join("checkout"));
    // From the checkout's root, the author is sent to plugins/.
    let output = geohost(
        &["plugin", "new", "npm-metadata-cache"],
        plugins.parent().unwrap(),
    );
    assert!(
        text(&output.stderr).contains("--dir plugins"),
        "{}",
        text(&output.stderr)
    );
    let output = geohost(&["plugin", "new", "npm-metadata-cache"], &plugins);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let crate_dir = plugins.join("npm-metadata-cache");
    for file in ["Cargo.toml", "src/lib.rs", "README.md", "vectors.json"] {
        assert!(crate_dir.join(file).is_file(), "{file}");
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("name = \"npm-metadata-cache\""),
        "{manifest}"
    );
    assert!(
        manifest.contains("geohost-plugin-sdk.workspace = true"),
        "{manifest}"
    );
    let workspace = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    assert!(
        workspace.contains("    \"npm-metadata-cache\",\n]"),
        "{workspace}"
    );
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    for wanted in [
        "name: \"npm_metadata_cache\".into()",
        "title: \"Npm Metadata Cache\".into()",
        "title_plural: \"Npm Metadata Caches\".into()",
        "name: \"npm_metadata_caches\".into()",
        "struct NpmMetadataCache;",
        "export!(NpmMetadataCache with_types_in",
        "TODO",
    ] {
        assert!(lib.contains(wanted), "{wanted}");
    }
    assert!(!lib.contains("{{"), "an unfilled placeholder");
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(crate_dir.join("vectors.json")).unwrap())
            .unwrap();
    assert_eq!(vectors["records"].as_array().unwrap().len(), 4);
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    assert!(readme.contains("cargo xtask plugins") && readme.contains("wasm-tools component new"));
    cargo_test(&plugins, "npm-metadata-cache");

    // Anywhere else, with the SDK's path.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let sdk = plugins.join("sdk");
    let output = geohost(
        &[
            "plugin",
            "new",
            "conan_recipe_cache",
            "--sdk",
            sdk.to_str().unwrap(),
        ],
        &elsewhere,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let crate_dir = elsewhere.join("conan-recipe-cache");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "geohost-plugin-sdk = {{ path = \"{}\" }}",
            sdk.canonicalize().unwrap().display()
        )),
        "{manifest}"
    );
    assert!(manifest.contains("[workspace]"), "{manifest}");
    assert!(crate_dir.join("Cargo.lock").is_file());
    cargo_test(&crate_dir, "conan-recipe-cache");
}
