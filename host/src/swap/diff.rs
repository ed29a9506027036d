//! `geohost plugin diff NEW.wasm`: what a new version of an installed type
//! would change over the live data, before it is installed. Nothing is
//! written.
//!
//! On a secondary the scope is its own (read from the primary); on the
//! primary the diff is given for each secondary, with that site's
//! selective-sync settings. Paths are compared for every record.

use super::effects;
use crate::catalog::InstalledType;
use crate::catalog::Scope;
use crate::config::Role;
use crate::site::Site;
use std::sync::Arc;

/// How many example ids or paths a diff shows.
pub const EXAMPLES: usize = 5;

/// The diff of one scope (a site's selective sync).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScopeDiff {
    pub site: String,
    pub enter: usize,
    pub leave: usize,
    pub enter_examples: Vec<i64>,
    pub leave_examples: Vec<i64>,
}

/// A path that would change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathChange {
    pub id: i64,
    pub from: String,
    pub to: String,
}

/// The whole diff.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diff {
    pub name: String,
    pub from_version: String,
    pub to_version: String,
    pub from_sha256: String,
    pub to_sha256: String,
    pub records: usize,
    pub scopes: Vec<ScopeDiff>,
    pub path_changes: usize,
    pub path_examples: Vec<PathChange>,
    pub invalid_paths: usize,
    pub invalid_examples: Vec<String>,
}

/// Computes the diff of component `bytes` against the installed version of
/// its type.
pub async fn diff(site: &Arc<Site>, bytes: Vec<u8>) -> Result<Diff, super::SwapError> {
    use super::SwapError;
    let runtime = site.runtime.clone();
    let loaded = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| SwapError::Internal(e.to_string()))?
        .map_err(|e| SwapError::Refused(e.to_string()))?;
    let current = site
        .catalog
        .get(loaded.name())
        .ok_or_else(|| SwapError::UnknownType(loaded.name().into()))?;
    super::validate::compatible(&current, &loaded).map_err(SwapError::Refused)?;
    let new = Arc::new(InstalledType::new(loaded));
    let records = effects::live_records(site, &current)
        .await
        .map_err(SwapError::Internal)?;
    let plan = effects::plan_paths(Some(&current), &new, &records)
        .await
        .map_err(SwapError::Internal)?;

    let mut scopes = Vec::new();
    for (label, scope) in scopes_of(site).await.map_err(SwapError::Internal)? {
        let (enter, leave) = effects::scope_changes(&current, &new, &scope, &records)
            .await
            .map_err(SwapError::Internal)?;
        scopes.push(ScopeDiff {
            site: label,
            enter: enter.len(),
            leave: leave.len(),
            enter_examples: enter.into_iter().take(EXAMPLES).collect(),
            leave_examples: leave.into_iter().take(EXAMPLES).collect(),
        });
    }
    Ok(Diff {
        name: current.name().into(),
        from_version: current.identity.version.clone(),
        to_version: new.identity.version.clone(),
        from_sha256: current.plugin.sha256().into(),
        to_sha256: new.plugin.sha256().into(),
        records: records.len(),
        scopes,
        path_changes: plan.moves.len(),
        path_examples: plan
            .moves
            .iter()
            .take(EXAMPLES)
            .map(|m| PathChange {
                id: m.id,
                from: m.from.as_str().into(),
                to: m.to.as_str().into(),
            })
            .collect(),
        invalid_paths: plan.invalid.len(),
        invalid_examples: plan
            .invalid
            .iter()
            .take(EXAMPLES)
            .map(|(id, e)| format!("record {id}: {e}"))
            .collect(),
    })
}

/// The scopes to compare: a secondary's own; on the primary, each
/// secondary's.
async fn scopes_of(site: &Arc<Site>) -> Result<Vec<(String, Scope)>, String> {
    match site.role() {
        Role::Secondary => {
            let (_, scope) = effects::secondary_scope(site).await?;
            Ok(vec![(site.name().to_string(), scope)])
        }
        Role::Primary => {
            let topology = Arc::new(
                crate::primary::topology::load(&site.db)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let mut out = Vec::new();
            for node in crate::primary::sites::list(&site.db)
                .await
                .map_err(|e| e.to_string())?
            {
                if node.primary {
                    continue;
                }
                let settings = node.scope().to_settings()?;
                out.push((
                    node.name.clone(),
                    Scope {
                        settings,
                        topology: topology.clone(),
                    },
                ));
            }
            Ok(out)
        }
    }
}
