//! The checks a new version passes before it goes live (besides compiling,
//! linking and a checked identity, which [`PluginRuntime::load`] does, and
//! its blob paths over the live records, [`super::effects::check_paths`]):
//! the same type, the same model table, tables the template can prepare,
//! and its own test vectors. None of them changes anything.
//!
//! [`PluginRuntime::load`]: crate::plugin::PluginRuntime::load

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::plugin::{LoadedType, TypeIdentity, custom_section, fixture};
use crate::site::Site;

/// The custom section in which a component may ship test vectors: JSON
/// `{"fixture": <a geohost plugin test fixture>, "expected": [<one answer
/// per record, as geohost plugin test prints them>]}`.
pub const TEST_VECTORS_SECTION: &str = "geohost-test-vectors";

/// Refuses a version that is not an upgrade of `installed`: the name is
/// checked by the caller; the model table must keep its name (its columns
/// are reconciled by the table template, which refuses incompatible
/// changes).
pub fn compatible(installed: &InstalledType, new: &LoadedType) -> Result<(), String> {
    let (old, new) = (&installed.identity, new.identity());
    if old.table.name != new.table.name {
        return Err(format!(
            "version {} renames the model table from `{}` to `{}`; a type's table cannot change",
            new.version, old.table.name, new.table.name
        ));
    }
    Ok(())
}

/// Refuses a version whose tables are not its own (another type's, or the
/// host's: [`super::owners`]), or that the template could not prepare: on
/// a primary, an existing model table that cannot follow the identity (a
/// dry run of [`crate::db::template::ensure_primary_tables`]).
pub async fn tables(site: &Site, identity: &TypeIdentity) -> Result<(), String> {
    super::owners::check(site, identity).await?;
    if site.role() == Role::Primary {
        crate::db::template::check_primary_tables(&site.db, identity)
            .await
            .map_err(|e| format!("its tables cannot be prepared: {e}"))?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    fixture: fixture::Fixture,
    expected: Vec<serde_json::Value>,
}

/// Runs the test vectors `component` ships, if any. `Ok(n)`: `n` vectors
/// passed (0 when it ships none).
pub fn test_vectors(component: &[u8], loaded: &LoadedType) -> Result<usize, String> {
    let Some(section) = custom_section(component, TEST_VECTORS_SECTION) else {
        return Ok(0);
    };
    let vectors: Vectors = serde_json::from_slice(&section)
        .map_err(|e| format!("its test vectors ({TEST_VECTORS_SECTION}) are not valid: {e}"))?;
    let answers = fixture::run(loaded, &vectors.fixture)
        .map_err(|e| format!("running its test vectors failed: {e:#}"))?;
    if answers.len() != vectors.expected.len() {
        return Err(format!(
            "its test vectors expect {} answers for {} records",
            vectors.expected.len(),
            answers.len()
        ));
    }
    let failed: Vec<String> = answers
        .iter()
        .zip(&vectors.expected)
        .filter(|(got, want)| got != want)
        .map(|(got, want)| format!("expected {want}, got {got}"))
        .collect();
    if let Some(first) = failed.first() {
        return Err(format!(
            "{} of its {} test vectors fail ({first})",
            failed.len(),
            answers.len()
        ));
    }
    Ok(answers.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{Limits, PluginRuntime, builtin};
    use sha2::{Digest, Sha256};

    /// `component` with a custom section appended (allowed anywhere in a
    /// component binary).
    fn with_section(component: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        let mut body = Vec::new();
        leb(name.len(), &mut body);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        let mut out = component.to_vec();
        out.push(0);
        leb(body.len(), &mut out);
        out.extend_from_slice(&body);
        out
    }

    fn vectors(path: &str) -> Vec<u8> {
        serde_json::json!({
            "fixture": {
                "scope": {},
                "namespaces": [{"id": 1, "parent_id": null}],
                "projects": [{"id": 10, "namespace_id": 1, "repository_storage": "default"}],
                "records": [{"id": 1, "project_id": 10, "channel": "stable", "file_store": 1}]
            },
            "expected": [{"id": 1, "path": path, "in_scope": true}]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn shipped_test_vectors_must_pass() {
        let helm = builtin::by_stem("helm-metadata-cache").unwrap().bytes;
        let runtime = PluginRuntime::new(Limits::default(), None).unwrap();
        let h = hex::encode(Sha256::digest(b"10"));
        let channel = hex::encode(Sha256::digest(b"stable"));
        let right = format!(
            "{}/{}/{h}/packages/helm/metadata_caches/{channel}/index.yaml",
            &h[0..2],
            &h[2..4]
        );

        let none = runtime.load(helm).unwrap();
        assert_eq!(test_vectors(helm, &none), Ok(0));

        let good = with_section(helm, TEST_VECTORS_SECTION, &vectors(&right));
        let loaded = runtime.load(&good).unwrap();
        assert_eq!(test_vectors(&good, &loaded), Ok(1));

        let bad = with_section(helm, TEST_VECTORS_SECTION, &vectors("elsewhere/index.yaml"));
        let loaded = runtime.load(&bad).unwrap();
        let error = test_vectors(&bad, &loaded).unwrap_err();
        assert!(error.contains("1 of its 1 test vectors fail"), "{error}");

        let garbage = with_section(helm, TEST_VECTORS_SECTION, b"{not json");
        let loaded = runtime.load(&garbage).unwrap();
        let error = test_vectors(&garbage, &loaded).unwrap_err();
        assert!(error.contains("not valid"), "{error}");
    }
}
