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

/// The shipped components a site installs: those whose file stems `names`
/// lists (`plugins.builtin`), in shipped order, or all of them when `names`
/// is `None`. An unknown name is an error naming the shipped ones.
pub fn selected(names: Option<&[String]>) -> Result<Vec<&'static Builtin>, String> {
    let Some(names) = names else {
        return Ok(BUILTIN.iter().collect());
    };
    if let Some(unknown) = names.iter().find(|n| by_stem(n).is_none()) {
        return Err(format!(
            "{unknown:?} is not a shipped type (shipped: {})",
            stems().join(", ")
        ));
    }
    Ok(BUILTIN
        .iter()
        .filter(|b| {
            names
                .iter()
                .any(|n| b.file.strip_suffix(".wasm") == Some(n))
        })
        .collect())
}

/// The file stems of the shipped components (`helm-metadata-cache`, …).
pub fn stems() -> Vec<&'static str> {
    BUILTIN
        .iter()
        .map(|b| b.file.trim_end_matches(".wasm"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_type_by_default() {
        assert_eq!(selected(None).unwrap().len(), BUILTIN.len());
        assert!(BUILTIN.len() >= 2, "helm and npm are shipped");
    }

    #[test]
    fn a_subset_by_stem_or_none() {
        let only = selected(Some(&["npm-metadata-cache".to_string()])).unwrap();
        assert_eq!(
            only.iter().map(|b| b.file).collect::<Vec<_>>(),
            ["npm-metadata-cache.wasm"]
        );
        assert!(selected(Some(&[])).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_shipped_list() {
        let error = selected(Some(&["packages_npm_metadata_cache".to_string()])).unwrap_err();
        assert!(error.contains("packages_npm_metadata_cache"), "{error}");
        assert!(
            error.contains("helm-metadata-cache, npm-metadata-cache"),
            "{error}"
        );
    }
}
