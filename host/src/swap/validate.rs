//! The checks a new version passes before it goes live (besides compiling,
//! linking and a checked identity, which [`PluginRuntime::load`] does):
//! the same type, the same model table, and its own test vectors.
//!
//! [`PluginRuntime::load`]: crate::plugin::PluginRuntime::load

use crate::catalog::InstalledType;
use crate::plugin::{LoadedType, custom_section, fixture};

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
