//! GitLab's `Gitlab::HashedPath`: the storage layout of package files and caches.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0x0f) as usize] as char);
    }
    out
}

/// `Gitlab::HashedPath.new(*components, root_hash:).to_s`: with `h` the
/// SHA-256 hex of `root_hash` written as text (GitLab's `root_hash.to_s`;
/// for a project id, its decimal digits), the path
/// `h[0..2]/h[2..4]/h/<components joined by '/'>` — the disk path of
/// GitLab's hashed storage, then the components. Package caches use it as
/// their `object_storage_key`, for example npm's
/// `hashed_path(&project_id.to_string(), &["packages", "metadata_caches", "npm", &sha256_hex(name)])`.
///
/// ```
/// let path = geohost_plugin_sdk::hashed_path("1", &["packages", "x"]);
/// assert!(path.starts_with("6b/86/6b86b273"));
/// ```
pub fn hashed_path(root_hash: &str, components: &[&str]) -> String {
    let h = sha256_hex(root_hash.as_bytes());
    let mut path =
        String::with_capacity(6 + h.len() + components.iter().map(|c| c.len() + 1).sum::<usize>());
    path.push_str(&h[0..2]);
    path.push('/');
    path.push_str(&h[2..4]);
    path.push('/');
    path.push_str(&h);
    for component in components {
        path.push('/');
        path.push_str(component);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn layout_matches_gitlab() {
        // sha256("1") = 6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b
        assert_eq!(
            hashed_path("1", &["a", "b"]),
            "6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b/a/b"
        );
        // No components: GitLab's hashed storage disk path alone.
        assert_eq!(
            hashed_path("1", &[]),
            "6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"
        );
    }
}
