//! Secrets at rest: AES-256-GCM under a key that lives outside the database.
//!
//! A site stores the secrets of its peers' Geo credentials; anyone holding
//! one can impersonate that site. GitLab keeps them encrypted with
//! `db_key_base` (`ee/app/models/geo_node.rb`, `attr_encrypted`), so a database dump alone is not
//! enough. Geohost does the same: the key is 32 random bytes in a separate
//! file (`0600`, 64 hex characters, created on first start by
//! [`SecretBox::load_or_create`]), and the database holds only the sealed
//! secret and its nonce. GCM authenticates as well as encrypts, so an altered
//! ciphertext or a wrong key is an error ([`AuthError::Decrypt`]), never a
//! wrong secret.
//!
//! ```
//! use geohost::auth::SecretBox;
//!
//! let secret_box = SecretBox::new([7; 32]);
//! let (ciphertext, iv) = secret_box.seal("the site's secret").unwrap();
//! assert_eq!(secret_box.open(&ciphertext, &iv).unwrap(), "the site's secret");
//! ```

use super::AuthError;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use std::io::Write;
use std::path::Path;

/// Length of an AES-GCM nonce, in bytes.
const NONCE_LEN: usize = 12;

/// Seals and opens secrets with one AES-256-GCM key.
///
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key hidden>)")
    }
}

impl SecretBox {
    /// A box using `key`.
    pub fn new(key: [u8; 32]) -> SecretBox {
        SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// A box using the key written as 64 hex characters (surrounding
    /// whitespace ignored).
    pub fn from_hex(hex_key: &str) -> Result<SecretBox, AuthError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key)
            .map_err(|_| AuthError::InvalidKey("an encryption key must be 64 hex characters"))?;
        Ok(SecretBox::new(key))
    }

    /// The box whose key is in the file `path`, creating the file with a new
    /// random key (mode `0600`, parent folders created) if it does not exist.
    ///
    /// Creation is atomic and never overwrites: the key is written to a
    /// temporary file that is then linked into place, so a concurrent start
    /// or a crash cannot leave a truncated key or two different keys.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, AuthError> {
        let key_file_error = |op, source| AuthError::KeyFile {
            op,
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(contents) => {
                warn_if_readable_by_others(path);
                return SecretBox::from_hex(&contents);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_file_error("read", e)),
        }

        match SecretBox::create_key_file(path) {
            Ok(secret_box) => {
                tracing::info!(path = %path.display(), "created a new secret encryption key");
                Ok(secret_box)
            }
            // Another process created it first: use theirs.
            Err(AuthError::KeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let contents =
                    std::fs::read_to_string(path).map_err(|e| key_file_error("read", e))?;
                SecretBox::from_hex(&contents)
            }
            Err(error) => Err(error),
        }
    }

    /// A new random key, as the 64 hex characters a key file holds.
    pub fn generate_hex() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        hex::encode(key)
    }

    /// Writes a new random key to the file `path` (mode `0600`, parent
    /// folders created) and returns its box. Never overwrites: an existing
    /// file is an [`AuthError::KeyFile`] whose source is `AlreadyExists`.
    /// The key is written to a temporary file that is then linked into
    /// place, so a concurrent start or a crash cannot leave a truncated key.
    pub fn create_key_file(path: &Path) -> Result<SecretBox, AuthError> {
        let key_file_error = |op, source| AuthError::KeyFile {
            op,
            path: path.to_path_buf(),
            source,
        };
        let hex_key = SecretBox::generate_hex();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| key_file_error("create folder of", e))?;
        }
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let staging = std::path::PathBuf::from(staging);
        let written = write_private(&staging, format!("{hex_key}\n").as_bytes())
            .and_then(|()| std::fs::hard_link(&staging, path));
        let _ = std::fs::remove_file(&staging);
        written.map_err(|e| key_file_error("create", e))?;
        SecretBox::from_hex(&hex_key)
    }

    /// Encrypts `plaintext` under a fresh random 12-byte nonce. Returns the
    /// ciphertext (with its 16-byte authentication tag appended) and the
    /// nonce (the "IV"), to be stored side by side (GitLab's
    /// `encrypted_secret_access_key` and `encrypted_secret_access_key_iv`).
    ///
    /// Fails only past AES-GCM's plaintext limit (64 GiB).
    pub fn seal(&self, plaintext: &str) -> Result<(Vec<u8>, Vec<u8>), AuthError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| AuthError::Encrypt)?;
        Ok((ciphertext, nonce.to_vec()))
    }

    /// Decrypts what [`SecretBox::seal`] returned. Fails on a wrong key, an
    /// altered ciphertext or nonce, or malformed input.
    pub fn open(&self, ciphertext: &[u8], iv: &[u8]) -> Result<String, AuthError> {
        if iv.len() != NONCE_LEN {
            return Err(AuthError::Decrypt);
        }
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(iv), ciphertext)
            .map_err(|_| AuthError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| AuthError::Decrypt)
    }
}

/// Writes `contents` to a new file at `path`, readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Logs a warning if the key file can be read by group or others.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the secret encryption key file is accessible to other users; it should be 0600"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let secret_box = SecretBox::new([1; 32]);
        for secret in [
            "",
            "s3cr3t",
            "a-40-character-secret-0123456789abcdefgh",
            "ünïcødé",
        ] {
            let (ciphertext, iv) = secret_box.seal(secret).unwrap();
            assert_eq!(secret_box.open(&ciphertext, &iv).unwrap(), secret);
        }
    }

    #[test]
    fn never_stored_in_clear_and_nonce_is_fresh() {
        let secret_box = SecretBox::new([1; 32]);
        let secret = "a-40-character-secret-0123456789abcdefgh";
        let (c1, iv1) = secret_box.seal(secret).unwrap();
        let (c2, iv2) = secret_box.seal(secret).unwrap();
        assert_ne!(iv1, iv2);
        assert_ne!(c1, c2);
        assert!(!c1.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert_eq!(iv1.len(), 12);
        assert_eq!(c1.len(), secret.len() + 16);
    }

    #[test]
    fn tampering_fails() {
        let secret_box = SecretBox::new([1; 32]);
        let (ciphertext, iv) = secret_box.seal("s3cr3t").unwrap();
        for i in [0, ciphertext.len() - 1] {
            let mut tampered = ciphertext.clone();
            tampered[i] ^= 1;
            assert!(matches!(
                secret_box.open(&tampered, &iv),
                Err(AuthError::Decrypt)
            ));
        }
        let mut other_iv = iv.clone();
        other_iv[0] ^= 1;
        assert!(matches!(
            secret_box.open(&ciphertext, &other_iv),
            Err(AuthError::Decrypt)
        ));
        // Truncated, empty, short or long nonce.
        let long_iv = [iv.clone(), vec![0]].concat();
        for (c, i) in [
            (&ciphertext[..ciphertext.len() - 1], &iv[..]),
            (&[][..], &iv[..]),
            (&ciphertext[..], &iv[..8]),
            (&ciphertext[..], &long_iv[..]),
        ] {
            assert!(
                matches!(secret_box.open(c, i), Err(AuthError::Decrypt)),
                "{c:?} {i:?}"
            );
        }
    }

    #[test]
    fn wrong_key_fails() {
        let (ciphertext, iv) = SecretBox::new([1; 32]).seal("s3cr3t").unwrap();
        let err = SecretBox::new([2; 32]).open(&ciphertext, &iv).unwrap_err();
        assert!(matches!(err, AuthError::Decrypt));
        assert!(!format!("{err} {err:?}").contains("s3cr3t"));
    }

    #[test]
    fn from_hex_checks_length_and_digits() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let a = SecretBox::from_hex(hex_key).unwrap();
        let b = SecretBox::from_hex(&format!("  {hex_key}\n")).unwrap();
        let (c, iv) = a.seal("x").unwrap();
        assert_eq!(b.open(&c, &iv).unwrap(), "x");
        for bad in [
            "",
            "00",
            &hex_key[..62],
            &format!("{hex_key}00"),
            &hex_key.replace('0', "g"),
        ] {
            assert!(
                matches!(SecretBox::from_hex(bad), Err(AuthError::InvalidKey(_))),
                "{bad}"
            );
        }
        assert_eq!(format!("{a:?}"), "SecretBox(<key hidden>)");
    }

    #[test]
    fn load_or_create_persists_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("secret.key");
        let first = SecretBox::load_or_create(&path).unwrap();
        let contents = std::fs::read_to_string(&path).unwrap();
        assert_eq!(contents.trim().len(), 64);
        assert!(contents.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the key file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        let (ciphertext, iv) = first.seal("persisted").unwrap();
        let second = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(second.open(&ciphertext, &iv).unwrap(), "persisted");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);

        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            SecretBox::load_or_create(&path),
            Err(AuthError::InvalidKey(_))
        ));
    }

    #[test]
    fn a_generated_key_file_is_used_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc").join("secrets.key");
        let made = SecretBox::create_key_file(&path).unwrap();
        let contents = std::fs::read_to_string(&path).unwrap();
        let (ciphertext, iv) = made.seal("kept").unwrap();
        // A site started with that file uses the key in it.
        let loaded = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(loaded.open(&ciphertext, &iv).unwrap(), "kept");
        // A second generate refuses to replace it, and leaves nothing.
        match SecretBox::create_key_file(&path) {
            Err(AuthError::KeyFile { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
            }
            other => panic!("overwrote the key file: {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);
        assert_eq!(
            std::fs::read_dir(dir.path().join("etc")).unwrap().count(),
            1
        );
        let printed = SecretBox::generate_hex();
        assert_eq!(printed.len(), 64);
        assert_ne!(printed, contents.trim());
        SecretBox::from_hex(&printed).unwrap();
    }
}
