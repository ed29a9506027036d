//! A site's Geo credentials: an access key that names it and a secret that
//! signs its requests.
//!
//! Same shape as GitLab's (`ee/app/models/geo_node.rb`): 20 and 40 characters of the
//! URL-safe base64 alphabet, so they paste into configuration files and
//! headers unquoted. Both come from the thread-local CSPRNG of `rand`
//! (ChaCha, seeded and reseeded from the operating system); a 40-character
//! secret carries 240 bits.

use rand::RngCore;

/// The URL-safe base64 alphabet (RFC 4648 section 5).
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Length of an access key.
pub const ACCESS_KEY_LEN: usize = 20;
/// Length of a secret.
pub const SECRET_LEN: usize = 40;

/// A new access key: 20 URL-safe characters.
pub fn generate_access_key() -> String {
    random_urlsafe(ACCESS_KEY_LEN)
}

/// A new secret: 40 URL-safe characters.
pub fn generate_secret() -> String {
    random_urlsafe(SECRET_LEN)
}

/// `len` characters drawn uniformly from the URL-safe alphabet, from a
/// CSPRNG. Each random byte gives one character (its low 6 bits: 256 is a
/// multiple of 64, so there is no bias).
pub(crate) fn random_urlsafe(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| URL_SAFE[usize::from(b & 63)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn url_safe(s: &str) -> bool {
        s.bytes().all(|b| URL_SAFE.contains(&b))
    }

    #[test]
    fn lengths_and_alphabet() {
        let key = generate_access_key();
        let secret = generate_secret();
        assert_eq!(key.len(), 20);
        assert_eq!(secret.len(), 40);
        assert!(url_safe(&key) && url_safe(&secret), "{key} {secret}");
    }

    #[test]
    fn values_differ_and_cover_the_alphabet() {
        let secrets: HashSet<String> = (0..200).map(|_| generate_secret()).collect();
        assert_eq!(secrets.len(), 200);
        let used: HashSet<char> = secrets.iter().flat_map(|s| s.chars()).collect();
        // 8,000 draws from 64 symbols: every symbol shows up.
        assert_eq!(used.len(), 64);
    }
}
