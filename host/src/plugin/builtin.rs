//! The type components shipped inside the binary (from `plugins/dist/`,
//! embedded by `build.rs`). The host knows them only as files: their names
//! and everything else come from loading them.

/// One shipped component.
#[derive(Debug)]
pub struct Builtin {
    /// File name under `plugins/dist/`, for example `helm-metadata-cache.wasm`.
    pub file: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The shipped component whose file stem is `stem`
/// (`helm-metadata-cache`), if any.
pub fn by_stem(stem: &str) -> Option<&'static Builtin> {
    BUILTIN
        .iter()
        .find(|b| b.file.strip_suffix(".wasm") == Some(stem))
}
