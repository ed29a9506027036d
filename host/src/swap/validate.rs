//! The checks a new version passes before it goes live (besides compiling,
//! linking and a checked identity, which [`PluginRuntime::load`] does, and
//! its blob paths over the live records, [`super::effects::check_paths`]):
//! the same type, the same model table, tables the template can prepare,
//! its own test vectors and those of the version it replaces. None of them
//! changes anything.
//!
//! [`PluginRuntime::load`]: crate::plugin::PluginRuntime::load

use crate::catalog::InstalledType;
use crate::config::Role;
use crate::plugin::{LoadedType, TypeIdentity, vectors};
use crate::site::Site;

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

/// Runs the test vectors `new` carries. `Ok(n)`: `n` vectors passed (0
/// when it carries none).
pub fn test_vectors(new: &LoadedType) -> Result<usize, String> {
    let Some(vectors) = new.vectors()? else {
        return Ok(0);
    };
    let (_, checked) = vectors.check(new)?;
    refuse_failures(&checked, "its", "")?;
    Ok(checked.expected)
}

/// Runs the test vectors of the running version on `new`, except the
/// records either version declares `changed` ([`vectors::check_predecessor`]).
/// `Ok(n)`: `n` vectors held.
pub fn predecessor_vectors(installed: &InstalledType, new: &LoadedType) -> Result<usize, String> {
    let Some(old) = installed
        .plugin
        .vectors()
        .map_err(|e| format!("the running version's {e}"))?
    else {
        return Ok(0);
    };
    let checked = vectors::check_predecessor(&old, new.vectors()?.as_ref(), new)?;
    refuse_failures(
        &checked,
        &format!("the running version {}'s", installed.identity.version),
        "; mark a record whose decision changes on purpose with \"changed\": \"why\" in the \
         new version's vectors.json",
    )?;
    Ok(checked.expected)
}

fn refuse_failures(checked: &vectors::Checked, whose: &str, hint: &str) -> Result<(), String> {
    match checked.failures.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {whose} {} test vectors fail ({first}){hint}",
            checked.failures.len(),
            checked.expected,
        )),
    }
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

    /// Helm as built against 0.1, which carries no vectors.
    const HELM_0_1: &[u8] =
        include_bytes!("../../../plugins/fixtures/v0.1/helm-metadata-cache.wasm");

    fn right_path(project: &str, channel: &str) -> String {
        let h = hex::encode(Sha256::digest(project.as_bytes()));
        let c = hex::encode(Sha256::digest(channel.as_bytes()));
        format!(
            "{}/{}/{h}/packages/helm/metadata_caches/{c}/index.yaml",
            &h[0..2],
            &h[2..4]
        )
    }

    #[test]
    fn a_components_own_vectors_must_pass() {
        let runtime = PluginRuntime::new(Limits::default(), None).unwrap();
        let none = runtime.load(HELM_0_1).unwrap();
        assert_eq!(test_vectors(&none), Ok(0));

        let shipped = runtime
            .load(builtin::by_stem("helm-metadata-cache").unwrap().bytes)
            .unwrap();
        assert_eq!(
            test_vectors(&shipped),
            Ok(8),
            "the shipped vectors.json, embedded"
        );

        let good = with_section(
            HELM_0_1,
            vectors::SECTION,
            &vectors(&right_path("10", "stable")),
        );
        assert_eq!(test_vectors(&runtime.load(&good).unwrap()), Ok(1));

        let bad = with_section(HELM_0_1, vectors::SECTION, &vectors("elsewhere/index.yaml"));
        let error = test_vectors(&runtime.load(&bad).unwrap()).unwrap_err();
        assert!(error.contains("1 of its 1 test vectors fail"), "{error}");

        let garbage = with_section(HELM_0_1, vectors::SECTION, b"{not json");
        let error = test_vectors(&runtime.load(&garbage).unwrap()).unwrap_err();
        assert!(error.contains("not valid"), "{error}");
    }

    /// Vectors in `vectors.json`'s layout: project 10 and 20 in scope.
    fn expectations(second_in_scope: bool, changed: bool) -> Vec<u8> {
        let mut second = serde_json::json!({"id": 2, "project_id": 20, "channel": "beta",
            "expect": {"in_scope": second_in_scope}});
        if changed {
            second["changed"] = "2.0 drops beta".into();
        }
        serde_json::json!({
            "scope": {},
            "namespaces": [{"id": 1, "parent_id": null}],
            "projects": [{"id": 10, "namespace_id": 1}, {"id": 20, "namespace_id": 1}],
            "records": [
                {"id": 1, "project_id": 10, "channel": "stable",
                 "expect": {"path": right_path("10", "stable"), "in_scope": true}},
                second
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_running_versions_vectors_must_hold_unless_declared_changed() {
        let runtime = PluginRuntime::new(Limits::default(), None).unwrap();
        let load = |section: Vec<u8>| {
            runtime
                .load(&with_section(HELM_0_1, vectors::SECTION, &section))
                .unwrap()
        };
        // The running version expects beta out of scope; Helm answers in scope.
        let running = InstalledType::new(load(expectations(false, false)));
        let undeclared = load(expectations(true, false));
        assert_eq!(test_vectors(&undeclared), Ok(2));
        let error = predecessor_vectors(&running, &undeclared).unwrap_err();
        assert!(
            error.contains("1 of the running version 1.0.0's 2 test vectors fail (record 2:"),
            "{error}"
        );
        assert!(error.contains("\"changed\""), "{error}");

        // Declared in the new version: record 2 is not held against it.
        let declared = load(expectations(true, true));
        assert_eq!(predecessor_vectors(&running, &declared), Ok(1));
        // A running version without vectors holds nothing.
        let bare = InstalledType::new(runtime.load(HELM_0_1).unwrap());
        assert_eq!(predecessor_vectors(&bare, &undeclared), Ok(0));
    }
}
