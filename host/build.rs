//! Embeds the shipped type components (`plugins/dist/*.wasm`) in the binary,
//! so a machine without a wasm toolchain still runs the host with its types.

use std::fmt::Write;

fn main() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
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
}
