//! The site context: a running site's configuration, databases, blob store,
//! installed types and shared signals, which every handler and worker uses.
//!
//! This module sits on a low floor: it imports no role, API or swap module
//! (a test below keeps it so). Opening, starting and serving a site is
//! [`crate::runtime`]'s job.

use crate::auth::secret_box::SecretBox;
use crate::catalog::{Catalog, InstalledType, SwapState};
use crate::config::{Config, Role};
use crate::db::Db;
use crate::plugin::PluginRuntime;
use crate::storage::{BlobStore, StoreKind};
use anyhow::Context;
use std::any::Any;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything a site's handlers and workers share.
pub struct Site {
    pub config: Config,
    /// The site's own database (records, events, sites, tokens).
    pub db: Db,
    /// A secondary's tracking database (registries, event cursor).
    pub tracking: Option<Db>,
    pub blobs: BlobStore,
    pub catalog: Arc<Catalog>,
    pub runtime: PluginRuntime,
    pub secrets: SecretBox,
    /// Wakes long-polling event readers (primary).
    pub events: EventSignal,
    /// Cancelled when the site stops.
    pub shutdown: CancellationToken,
    /// Hot swap: one at a time, and the refusals to report.
    pub swaps: SwapState,
    /// The running role's own state (a secondary's view of its primary),
    /// set by the runtime; see [`RoleState`].
    pub role_state: RoleState,
    /// How the background duties are doing (`health.rs`).
    pub duties: crate::health::DutyBoard,
    /// Secondaries authenticated lately (primary).
    pub auth_cache: crate::auth::cache::AuthCache,
    /// The primary's group commit of writes (`primary::group`), made on
    /// first use.
    pub write_group: Slot,
}

impl Site {
    pub fn role(&self) -> Role {
        self.config.site.role
    }

    pub fn name(&self) -> &str {
        &self.config.site.name
    }

    /// The tracking database; only secondaries have one.
    pub fn tracking(&self) -> anyhow::Result<&Db> {
        self.tracking
            .as_ref()
            .context("this site has no tracking database (it is not a secondary)")
    }

    /// GitLab's `file_store` for blobs this site writes: 1 local, 2 object storage.
    pub fn file_store(&self) -> i64 {
        match self.blobs.kind() {
            StoreKind::Local => 1,
            StoreKind::ObjectStorage => 2,
        }
    }

    /// The installed type called `name`.
    pub fn installed(&self, name: &str) -> Option<Arc<InstalledType>> {
        self.catalog.get(name)
    }

    /// How long a temporary object (or a write's journal) may stay
    /// untouched before it counts as a crash's leftover.
    pub fn temp_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.storage.temp_max_age_secs)
    }

    /// The database holding the rows a type's version decides on this
    /// site: the main database on a primary (`<name>_states`), the
    /// tracking database on a secondary (`<name>_registry`).
    pub fn decided_db(&self) -> anyhow::Result<&Db> {
        match self.role() {
            Role::Primary => Ok(&self.db),
            Role::Secondary => self.tracking(),
        }
    }
}

/// Wakes long-polling readers when events are committed in this process,
/// and the verifier when a record's blob is written: work is taken when it
/// appears, not at the next idle poll (which still finds what other
/// processes wrote).
#[derive(Debug, Clone)]
pub struct EventSignal {
    sender: watch::Sender<u64>,
    written: Arc<tokio::sync::Notify>,
}

impl Default for EventSignal {
    fn default() -> Self {
        EventSignal {
            sender: watch::channel(0).0,
            written: Default::default(),
        }
    }
}

impl EventSignal {
    /// Call after a transaction that wrote a record's blob commits.
    pub fn record_written(&self) {
        self.written.notify_one();
    }

    /// Waits for [`EventSignal::record_written`] (a write since the last
    /// wait counts).
    pub async fn written(&self) {
        self.written.notified().await
    }

    /// Call after a transaction that wrote events commits.
    pub fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// The state of the role a site runs (for a secondary, its `Secondary`:
/// the client of its primary and its latest scope), held without naming
/// the role's type, so that `Site` imports no role. Modules above the roles
/// (swap, API) ask for it by type. The state holds the site, so the runtime
/// clears it when the site stops.
#[derive(Default)]
pub struct RoleState(Mutex<Option<Arc<dyn Any + Send + Sync>>>);

impl RoleState {
    /// Sets the running role's state.
    pub fn set<T: Any + Send + Sync>(&self, state: Arc<T>) {
        *self.0.lock().expect("role state") = Some(state);
    }

    /// The running role's state, if it is a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let state = self.0.lock().expect("role state").clone()?;
        state.downcast::<T>().ok()
    }

    /// Drops the role's state (the site stopped).
    pub fn clear(&self) {
        self.0.lock().expect("role state").take();
    }
}

/// State a role keeps for as long as the site lives, made on its first
/// use by the role that owns it (which names its type, as for
/// [`RoleState`]), so that this context needs no role's types.
#[derive(Default)]
pub struct Slot(std::sync::OnceLock<Arc<dyn Any + Send + Sync>>);

impl Slot {
    /// The state, made with `T::default()` on first use.
    ///
    /// # Panics
    /// If the slot holds another type: one slot has one owner.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        self.0
            .get_or_init(|| Arc::new(T::default()))
            .clone()
            .downcast::<T>()
            .unwrap_or_else(|_| panic!("a site slot holds one type"))
    }
}

#[cfg(test)]
mod tests {
    /// The first path segment of every `crate::…` and `super::…` path in
    /// `code`, grouped imports (`crate::{a, b::c}`) included.
    fn crate_modules(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        for prefix in ["crate::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                    None => vec![rest],
                };
                for name in names {
                    let name: String = name
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.push(name);
                }
            }
        }
        out
    }

    /// `Site` is the context every module uses: if its file imported a role,
    /// the API or swap, the modules would import each other in a circle
    /// (ARCHITECTURE.md, "Layers").
    #[test]
    fn the_site_context_imports_no_role_api_or_swap() {
        let source = include_str!("site.rs");
        let code: String = source
            .split("#[cfg(test)]")
            .next()
            .expect("code")
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let modules = crate_modules(&code);
        assert!(modules.contains(&"catalog".to_string()), "{modules:?}");
        for upper in [
            "api",
            "primary",
            "secondary",
            "swap",
            "runtime",
            "status",
            "cli",
        ] {
            assert!(
                !modules.iter().any(|m| m == upper),
                "site.rs imports `{upper}`: keep the context below the roles"
            );
        }
        assert_eq!(
            crate_modules("use crate::{api, swap::x};\nsuper::primary::y"),
            ["api", "swap", "primary"]
        );
    }
}
