//! Authentication primitives: who may ask a site for what.
//!
//! Two kinds of caller talk to a Geohost site, and each has its own scheme:
//!
//! - **Another site.** A secondary fetching a blob from the primary signs
//!   each request the way GitLab Geo does ([`geo_jwt`], as GitLab's
//!   `ee/lib/gitlab/geo/base_request.rb`):
//!   `Authorization: GL-Geo <access_key>:<JWT>`, the JWT an HS256 token over
//!   exactly the record asked for, valid for a minute, signed with the
//!   secondary's secret. The access key names the site; the secret
//!   ([`keys`]) never travels, and is kept encrypted at rest
//!   ([`secret_box::SecretBox`]) so a copy of the database alone does not
//!   let anyone impersonate a site.
//! - **An operator or a script** calling the admin API presents a token
//!   created by `geohost token create` ([`admin_token`]), in `PRIVATE-TOKEN`
//!   or `Authorization: Bearer`, like GitLab's personal access tokens. Only
//!   the token's SHA-256 is stored.
//!
//! Everything here is pure: no database, no HTTP server. The API layer looks
//! the access key or token digest up and calls these functions.
//!
//! Errors ([`AuthError`]) say what was wrong with a credential, never the
//! credential or the secret itself; the API answers all of them with 401.

pub mod admin_token;
pub mod geo_jwt;
pub(crate) mod keys;
pub(crate) mod secret_box;

pub use secret_box::SecretBox;

/// Why a credential was refused, or a key could not be used.
///
/// Messages never contain a token, a secret or key material.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The `Authorization` header is not `GL-Geo <access_key>:<JWT>`.
    #[error("malformed Geo authorization header: {0}")]
    MalformedGeoHeader(&'static str),
    /// The JWT cannot be decoded, or lacks a required claim.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The JWT is signed with another algorithm than HS256 (including
    /// `none`).
    #[error("token algorithm is not HS256")]
    UnsupportedAlgorithm,
    /// The JWT's signature does not match the secret.
    #[error("token signature does not match")]
    BadSignature,
    /// The JWT expired (beyond the allowed clock skew).
    #[error("token expired")]
    Expired,
    /// The JWT is not valid yet: `nbf` or `iat` lies in the future beyond
    /// the allowed clock skew (check the sites' clocks).
    #[error("token not valid yet: issued in the future (check clocks)")]
    NotYetValid,
    /// The JWT is valid but signs a request for another record.
    #[error("token data does not match the request")]
    DataMismatch,
    /// An admin token header is present but malformed.
    #[error("malformed admin token header: {0}")]
    MalformedTokenHeader(&'static str),
    /// `PRIVATE-TOKEN` and `Authorization: Bearer` carry different tokens.
    #[error("PRIVATE-TOKEN and Authorization headers carry different tokens")]
    ConflictingTokens,
    /// A key (signing secret or encryption key) is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A secret cannot be sealed (larger than AES-GCM allows).
    #[error("cannot encrypt secret")]
    Encrypt,
    /// A sealed secret cannot be opened: wrong key, or altered ciphertext or
    /// IV.
    #[error("cannot decrypt secret: wrong key or altered ciphertext")]
    Decrypt,
    /// The encryption key file cannot be read or created.
    #[error("cannot {op} key file {}: {source}", path.display())]
    KeyFile {
        /// What was attempted.
        op: &'static str,
        /// The key file.
        path: std::path::PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}
