//! The secondaries a primary authenticated lately ([`AuthCache`]), kept on
//! the site context so that a request does not read `geo_nodes` and open
//! the sealed secret each time.

/// How long an authenticated secondary is remembered: a site disabled,
/// removed or given new keys by another process (the CLI) is refused
/// within this time; a change through this process's API clears the cache
/// at once.
pub const AUTH_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Most secondaries remembered at once.
const AUTH_CACHE_MAX: usize = 1024;

/// The secondaries authenticated lately, by access key: their settings and
/// opened secret, so that a request does not read `geo_nodes` and open the
/// sealed secret (AES-GCM) each time. Only a found, enabled site is kept:
/// unknown keys cost a lookup each and cannot fill the cache.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<Authenticated>)>,
    >,
}

/// A secondary as authenticated: its settings and secret.
#[derive(Debug)]
pub struct Authenticated {
    pub node: crate::feed::NodeSettings,
    pub secret: String,
}

impl AuthCache {
    pub(crate) fn get(&self, access_key: &str) -> Option<std::sync::Arc<Authenticated>> {
        let entries = self.entries.lock().expect("auth cache");
        entries
            .get(access_key)
            .filter(|(at, _)| at.elapsed() < AUTH_CACHE_TTL)
            .map(|(_, found)| found.clone())
    }

    pub(crate) fn put(&self, access_key: &str, found: std::sync::Arc<Authenticated>) {
        let mut entries = self.entries.lock().expect("auth cache");
        if entries.len() >= AUTH_CACHE_MAX {
            entries.retain(|_, (at, _)| at.elapsed() < AUTH_CACHE_TTL);
            if entries.len() >= AUTH_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(access_key.to_string(), (std::time::Instant::now(), found));
    }

    /// Forgets every site (after a change of `geo_nodes`).
    pub fn clear(&self) {
        self.entries.lock().expect("auth cache").clear();
    }
}
