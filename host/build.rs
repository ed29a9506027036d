//! Embeds the shipped type components (`plugins/dist/*.wasm`) in the binary,
//! so a machine without a wasm toolchain still runs the host with its types.

use std::fmt::Write;

fn main() {
    // The manifest folder of this run, not of the build that compiled the
    // script (`env!`): a target folder copied from another checkout must
    // not embed that checkout's components.
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let dist = manifest.join("../plugins/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    // sqlx::migrate! embeds migrations/: a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dist)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm"));
    files.sort();
    let mut out = String::from("pub static BUILTIN: &[Builtin] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().expect("dist file");
        let file = path.file_name().unwrap().to_string_lossy();
        writeln!(
            out,
            "    Builtin {{ file: {file:?}, bytes: include_bytes!({:?}) }},",
            path.display()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let target = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("builtin.rs");
    std::fs::write(target, out).unwrap();
    revision(&manifest);
}

/// `GEOHOST_REVISION`: the commit the binary is built from (GitLab's
/// `revision` in a site's status), when built from a git checkout.
fn revision(manifest: &std::path::Path) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(rev) = git(&["rev-parse", "--short=11", "HEAD"]) {
        println!("cargo:rustc-env=GEOHOST_REVISION={rev}");
    }
    // Rebuild when HEAD moves (a commit, a checkout). Only existing files:
    // a missing one would rerun this script on every build.
    let refs = [
        Some("HEAD".to_string()),
        git(&["symbolic-ref", "-q", "HEAD"]),
        Some("packed-refs".to_string()),
    ];
    for path in refs.into_iter().flatten() {
        if let Some(file) = git(&["rev-parse", "--git-path", &path])
            && manifest.join(&file).exists()
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
