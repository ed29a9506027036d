//! Admin API tokens, created by `geohost token create`.
//!
//! Shaped like GitLab's personal access tokens: a recognisable prefix
//! (`ghst-`, so secret scanners and humans can spot a leaked one) and 32
//! random URL-safe characters (192 bits). The token is shown once; only its
//! SHA-256 ([`digest`]) is stored, so the database never holds a usable
//! token. A fast hash is enough: the token is random and long, so there is
//! nothing to brute-force from the digest.
//!
//! Clients send it as `PRIVATE-TOKEN: <token>` or
//! `Authorization: Bearer <token>` ([`from_headers`]).

use super::AuthError;
use super::keys::random_urlsafe;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

/// The prefix of every admin token.
pub const PREFIX: &str = "ghst-";
/// Random characters after the prefix.
const RANDOM_LEN: usize = 32;
/// The header GitLab's API reads personal access tokens from.
pub const PRIVATE_TOKEN_HEADER: &str = "private-token";

/// A new admin token: `ghst-` and 32 random URL-safe characters.
pub fn generate() -> String {
    format!("{PREFIX}{}", random_urlsafe(RANDOM_LEN))
}

/// What is stored for a token: its SHA-256, lowercase hex.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token a request presents, from `PRIVATE-TOKEN` or
/// `Authorization: Bearer` (scheme case-insensitive), or `None` if neither
/// header is present.
///
/// Refuses a present but malformed header (another `Authorization` scheme,
/// an empty token, repeated headers, non-ASCII bytes) and two headers
/// carrying different tokens, rather than guessing which one was meant.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let private = single_header(headers, PRIVATE_TOKEN_HEADER)?
        .map(|value| {
            let value = value.trim();
            if value.is_empty() || value.contains(char::is_whitespace) {
                Err(AuthError::MalformedTokenHeader(
                    "PRIVATE-TOKEN must hold exactly one token",
                ))
            } else {
                Ok(value)
            }
        })
        .transpose()?;
    let bearer = single_header(headers, AUTHORIZATION.as_str())?
        .map(parse_bearer)
        .transpose()?;
    match (private, bearer) {
        (None, None) => Ok(None),
        (Some(token), None) | (None, Some(token)) => Ok(Some(token.to_string())),
        (Some(a), Some(b)) if a == b => Ok(Some(a.to_string())),
        (Some(_), Some(_)) => Err(AuthError::ConflictingTokens),
    }
}

/// The one value of header `name`, if present.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::MalformedTokenHeader(
            "a token header appears more than once",
        ));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| AuthError::MalformedTokenHeader("a token header is not ASCII"))
}

/// The token of `Bearer <token>`.
fn parse_bearer(value: &str) -> Result<&str, AuthError> {
    let malformed = || AuthError::MalformedTokenHeader("Authorization must be `Bearer <token>`");
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(char::is_whitespace)
    {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn generated_tokens() {
        let token = generate();
        assert!(token.starts_with("ghst-"));
        assert_eq!(token.len(), 5 + 32);
        assert!(
            token[5..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(generate(), token);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let token = generate();
        assert_eq!(digest(&token).len(), 64);
        assert!(!digest(&token).contains(&token[5..]));
    }

    #[test]
    fn reads_either_header() {
        let t = "ghst-abcdefghijklmnopqrstuvwxyz012345";
        assert_eq!(from_headers(&headers(&[])).unwrap(), None);
        let bearer = format!("Bearer {t}");
        let lower = format!("bearer {t}");
        for (name, value) in [
            ("PRIVATE-TOKEN", t),
            ("Authorization", &bearer),
            ("authorization", &lower),
        ] {
            let read = from_headers(&headers(&[(name, value)])).unwrap();
            assert_eq!(read.as_deref(), Some(t), "{name}: {value}");
        }
        // Both, agreeing.
        assert_eq!(
            from_headers(&headers(&[
                ("PRIVATE-TOKEN", t),
                ("Authorization", &bearer)
            ]))
            .unwrap()
            .as_deref(),
            Some(t)
        );
        // Other headers are ignored.
        assert_eq!(from_headers(&headers(&[("X-Token", t)])).unwrap(), None);
    }

    #[test]
    fn refuses_malformed_and_conflicting() {
        let t = "ghst-abcdefghijklmnopqrstuvwxyz012345";
        for bad in [
            vec![("Authorization", t.to_string())],
            vec![("Authorization", "Bearer".to_string())],
            vec![("Authorization", "Bearer ".to_string())],
            vec![("Authorization", format!("Basic {t}"))],
            vec![("Authorization", format!("GL-Geo key:{t}"))],
            vec![("Authorization", format!("Bearer {t} extra"))],
            vec![("PRIVATE-TOKEN", String::new())],
            vec![("PRIVATE-TOKEN", format!("{t} {t}"))],
            vec![
                ("PRIVATE-TOKEN", t.to_string()),
                ("PRIVATE-TOKEN", t.to_string()),
            ],
        ] {
            let pairs: Vec<(&str, &str)> = bad.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let err = from_headers(&headers(&pairs)).unwrap_err();
            assert!(
                matches!(err, AuthError::MalformedTokenHeader(_)),
                "{bad:?}: {err:?}"
            );
            assert!(!err.to_string().contains(t));
        }
        let mut map = HeaderMap::new();
        map.insert(
            "private-token",
            HeaderValue::from_bytes(b"ghst-\xff").unwrap(),
        );
        assert!(matches!(
            from_headers(&map),
            Err(AuthError::MalformedTokenHeader(_))
        ));

        let other = format!("Bearer {}", generate());
        let err =
            from_headers(&headers(&[("PRIVATE-TOKEN", t), ("Authorization", &other)])).unwrap_err();
        assert!(matches!(err, AuthError::ConflictingTokens));
    }
}
