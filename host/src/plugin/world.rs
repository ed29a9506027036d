//! What a component may import and must export, checked before it is
//! compiled: the `geohost:replicable` contract at a version this host
//! implements, plus (from 0.2 on) the deny-by-default WASI subset of
//! [`super::wasi`], and nothing else.

use super::LoadError;
use super::wasi::WASI_SUBSET;

/// The WIT package every type is built against.
pub const WIT_PACKAGE: &str = "geohost:replicable";

/// A minor version of the contract this host implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contract {
    /// `0.1.x`: rows of variants (`wit/v0.1/replicable.wit`). No WASI.
    V0_1,
    /// `0.2.x`: column batches (`wit/replicable.wit`), the current one.
    V0_2,
}

impl Contract {
    /// Every version this host loads, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V0_1, Contract::V0_2];
    /// The version new types are built against.
    pub const CURRENT: Contract = Contract::V0_2;

    /// `(major, minor)`.
    pub fn version(self) -> (u64, u64) {
        match self {
            Contract::V0_1 => (0, 1),
            Contract::V0_2 => (0, 2),
        }
    }

    /// The contract a `geohost:replicable` version belongs to: the same
    /// major and, for 0.x, the same minor (semver). Prereleases never match.
    pub fn of(version: &str) -> Option<Contract> {
        if version.contains('-') {
            return None;
        }
        let mut parts = version.split(['.', '+']).map(|p| p.parse::<u64>().ok());
        let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
            return None;
        };
        Contract::ALL
            .into_iter()
            .find(|c| c.version() == (major, minor))
    }

    /// The accepted versions, for messages: `0.1.x or 0.2.x`.
    pub fn supported() -> String {
        Contract::ALL
            .iter()
            .map(|c| format!("{}.{}.x", c.version().0, c.version().1))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// Whether components of this contract may import the WASI subset.
    fn allows_wasi(self) -> bool {
        self >= Contract::V0_2
    }
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub struct World {
    pub contract: Contract,
    /// The exported `geohost:replicable` version, for example `0.2.0`.
    pub version: String,
    /// Whether it imports any of the WASI subset (the host then gives each
    /// call a [`super::wasi::WasiState`]).
    pub imports_wasi: bool,
}

/// Reads the component's top-level imports and exports (without compiling)
/// and checks them against the contract.
pub fn check(component: &[u8]) -> Result<World, LoadError> {
    use wasmparser::{Parser, Payload};
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| LoadError::NotWasm(e.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = export.map_err(|e| LoadError::NotWasm(e.to_string()))?;
                    exports.push(export.name.0.to_string());
                }
            }
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(|e| LoadError::NotWasm(e.to_string()))?;
                    imports.push(import.name.0.to_string());
                }
            }
            _ => {}
        }
    }
    let prefix = format!("{WIT_PACKAGE}/replicable");
    let export = exports
        .iter()
        .find(|e| e.split('@').next() == Some(prefix.as_str()));
    // The contract version decides which imports are allowed; without the
    // export, judge the imports against the current contract.
    let version = export.map(|e| version_of(e).to_string());
    let contract = version.as_deref().and_then(Contract::of);

    let allowed_wasi = contract.unwrap_or(Contract::CURRENT).allows_wasi();
    let forbidden: Vec<&String> = imports
        .iter()
        .filter(|i| !i.starts_with(&format!("{WIT_PACKAGE}/")))
        .filter(|i| !(allowed_wasi && is_wasi_subset(i)))
        .collect();
    if !forbidden.is_empty() {
        return Err(LoadError::ForbiddenImport(
            forbidden
                .iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let version = version.ok_or(LoadError::MissingExport)?;
    let Some(contract) = contract else {
        return Err(LoadError::WitVersion { found: version });
    };
    for import in imports.iter().filter(|i| i.starts_with(WIT_PACKAGE)) {
        let found = version_of(import);
        if Contract::of(found) != Some(contract) {
            return Err(LoadError::WitVersion {
                found: found.to_string(),
            });
        }
    }
    Ok(World {
        contract,
        version,
        imports_wasi: imports.iter().any(|i| is_wasi_subset(i)),
    })
}

fn version_of(name: &str) -> &str {
    name.split_once('@')
        .map(|(_, v)| v)
        .unwrap_or("(no version)")
}

/// Whether `import` (`wasi:io/streams@0.2.9`) is in the WASI subset, at a
/// 0.2.x version (what the host implements, see [`super::wasi`]).
fn is_wasi_subset(import: &str) -> bool {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    WASI_SUBSET.contains(&name) && version.starts_with("0.2.") && !version.contains('-')
}

/// The contents of the first custom section called `name`, at any depth of
/// a component or core module (wit-bindgen keeps a guest's own sections in
/// its core module; `cargo xtask plugins` appends them to the component).
pub fn custom_section(bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    use wasmparser::{Parser, Payload};
    for payload in Parser::new(0).parse_all(bytes) {
        if let Ok(Payload::CustomSection(section)) = payload
            && section.name() == name
        {
            return Some(section.data().to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule() {
        assert_eq!(Contract::of("0.1.0"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.1.7"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::of("0.2.3+build"), Some(Contract::V0_2));
        assert_eq!(Contract::of("0.3.0"), None);
        assert_eq!(Contract::of("9.0.0"), None);
        assert_eq!(Contract::of("0.2.0-rc1"), None);
        assert_eq!(Contract::of("garbage"), None);
        assert_eq!(Contract::supported(), "0.1.x or 0.2.x");
    }

    #[test]
    fn the_wasi_subset_by_name_and_version() {
        assert!(is_wasi_subset("wasi:io/streams@0.2.9"));
        assert!(is_wasi_subset("wasi:cli/stderr@0.2.0"));
        assert!(!is_wasi_subset("wasi:filesystem/preopens@0.2.9"));
        assert!(!is_wasi_subset("wasi:sockets/tcp@0.2.9"));
        assert!(!is_wasi_subset("wasi:cli/stdin@0.2.9"));
        assert!(!is_wasi_subset("wasi:io/streams@0.3.0"));
        assert!(!is_wasi_subset("wasi:io/streams@0.2.0-rc-2023-11-10"));
        assert!(!is_wasi_subset("wasi:io/streams"));
    }
}
