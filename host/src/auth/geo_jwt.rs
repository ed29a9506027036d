//! GitLab Geo's request signing: `Authorization: GL-Geo <access_key>:<JWT>`.
//!
//! A secondary proves who it is on every request to the primary by signing
//! a short-lived JWT with its secret; the access key in front tells the
//! primary which site's secret to check it with (GitLab's `ee/lib/gitlab/geo/base_request.rb`,
//! GitLab's `BaseRequest`, `SignedData` and `JwtRequestDecoder`):
//!
//! - HS256, header `typ: JWT`;
//! - claim `data`: the request's parameters as a JSON *string*, for a blob
//!   `{"replicable_name":…,"replicable_id":…}`;
//! - `jti` (a UUID), `iat` (now), `nbf` (`iat - 5`), `exp` (`now + 60`).
//!
//! The primary accepts a token only if it is HS256, signed with that site's
//! secret, within 60 s of clock skew on `exp`, `nbf` and `iat`, and its
//! `data` equals exactly what the route asks for, so a token captured for
//! one record cannot fetch another, and expires within a minute or two.
//!
//! ```
//! use geohost::auth::geo_jwt;
//! use serde_json::json;
//!
//! let data = json!({"replicable_name": "package_file", "replicable_id": 42});
//! let header = geo_jwt::sign("key", "secret", &data);
//! let (access_key, token) = geo_jwt::parse_header(&header).unwrap();
//! assert_eq!(access_key, "key");
//! geo_jwt::verify(&token, "secret", &data).unwrap();
//! ```

use super::AuthError;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The authorization scheme GitLab Geo uses.
pub const SCHEME: &str = "GL-Geo";
/// How long a token is valid after it is issued, in seconds.
pub const VALIDITY_SECS: u64 = 60;
/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// How far before `iat` the token is already valid (`nbf = iat - 5`).
const NOT_BEFORE_SLACK_SECS: u64 = 5;

#[derive(Serialize, Deserialize)]
struct Claims {
    data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// The `Authorization` header value for a request about `data`, signed with
/// `secret`: `GL-Geo <access_key>:<JWT>`.
///
/// # Panics
///
/// If `secret` is empty (HS256 needs a key; see [`try_sign`]).
pub fn sign(access_key: &str, secret: &str, data: &serde_json::Value) -> String {
    try_sign(access_key, secret, data).expect("a Geo secret is never empty")
}

/// [`sign`], returning an error instead of panicking on an empty secret.
pub fn try_sign(
    access_key: &str,
    secret: &str,
    data: &serde_json::Value,
) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        data: data.to_string(),
        jti: Some(uuid::Uuid::new_v4().to_string()),
        iat: now,
        nbf: now.saturating_sub(NOT_BEFORE_SLACK_SECS),
        exp: now + VALIDITY_SECS,
    };
    let key = EncodingKey::from_secret(secret.as_bytes())
        .map_err(|_| AuthError::InvalidKey("the signing secret is empty"))?;
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|_| AuthError::InvalidKey("the signing secret cannot sign HS256"))?;
    Ok(format!("{SCHEME} {access_key}:{token}"))
}

/// Splits an `Authorization` header value `GL-Geo <access_key>:<JWT>` into
/// the access key and the token, without checking the token.
pub fn parse_header(value: &str) -> Result<(String, String), AuthError> {
    let malformed = AuthError::MalformedGeoHeader;
    let (scheme, credentials) = value
        .split_once(' ')
        .ok_or(malformed("expected `GL-Geo <access_key>:<token>`"))?;
    if scheme != SCHEME {
        return Err(malformed("the scheme is not GL-Geo"));
    }
    let (access_key, token) = credentials
        .split_once(':')
        .ok_or(malformed("no `:` between access key and token"))?;
    if access_key.is_empty() {
        return Err(malformed("empty access key"));
    }
    if token.is_empty() {
        return Err(malformed("empty token"));
    }
    if access_key
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(malformed("whitespace in access key or token"));
    }
    Ok((access_key.to_string(), token.to_string()))
}

/// Checks `token` against `secret` and the request it must be for.
///
/// Accepts only HS256 with a matching signature, an `exp` not passed and an
/// `nbf` and `iat` not in the future (each with [`LEEWAY_SECS`] of skew), and
/// a `data` claim whose JSON equals `expected_data` exactly.
pub fn verify(
    token: &str,
    secret: &str,
    expected_data: &serde_json::Value,
) -> Result<(), AuthError> {
    let key = DecodingKey::from_secret(secret.as_bytes())
        .map_err(|_| AuthError::InvalidKey("the verifying secret is empty"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "nbf"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| map_jwt_error(e.kind()))?
        .claims;
    // `jsonwebtoken` does not check `iat`; GitLab does (`verify_iat`).
    if claims.iat > jsonwebtoken::get_current_timestamp() + LEEWAY_SECS {
        return Err(AuthError::NotYetValid);
    }
    let data: serde_json::Value = serde_json::from_str(&claims.data)
        .map_err(|_| AuthError::InvalidToken("the data claim is not JSON"))?;
    if &data != expected_data {
        return Err(AuthError::DataMismatch);
    }
    Ok(())
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::UnsupportedAlgorithm,
        ErrorKind::MissingRequiredClaim(_) => {
            AuthError::InvalidToken("a required claim is missing")
        }
        ErrorKind::InvalidClaimFormat(_) => AuthError::InvalidToken("a claim has the wrong type"),
        // Not three base64url parts, or a header or claims that are not the
        // expected JSON (an unknown `alg` such as `none` fails here too).
        _ => AuthError::InvalidToken("not a well-formed JWT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    const SECRET: &str = "qw3rty-secret-0123456789abcdefghijklmnop";

    fn data() -> serde_json::Value {
        json!({"replicable_name": "package_file", "replicable_id": 42})
    }

    fn token_of(header: &str) -> String {
        parse_header(header).unwrap().1
    }

    /// [`verify`] of a token with chosen claims, signed with `SECRET`,
    /// against `data()`.
    fn verify_crafted(claims: &serde_json::Value) -> Result<(), AuthError> {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap();
        verify(&token, SECRET, &data())
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn good_token_round_trips() {
        let header = sign("AbCdEfGhIjKlMnOpQrSt", SECRET, &data());
        assert!(header.starts_with("GL-Geo AbCdEfGhIjKlMnOpQrSt:"));
        let (key, token) = parse_header(&header).unwrap();
        assert_eq!(key, "AbCdEfGhIjKlMnOpQrSt");
        verify(&token, SECRET, &data()).unwrap();
        // Key order inside `data` does not matter; values do.
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"replicable_id":42,"replicable_name":"package_file"}"#)
                .unwrap();
        verify(&token, SECRET, &reordered).unwrap();
    }

    #[test]
    fn claims_have_gitlab_shape() {
        let token = token_of(&sign("k", SECRET, &data()));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["typ"], "JWT");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let data_claim = claims["data"].as_str().expect("data is a JSON string");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(data_claim).unwrap(),
            data()
        );
        let (iat, nbf, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["nbf"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert!((iat - now()).abs() <= 2);
        assert_eq!(nbf, iat - 5);
        assert_eq!(exp, iat + 60);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn wrong_secret_is_refused() {
        let token = token_of(&sign("k", SECRET, &data()));
        let err = verify(&token, "another-secret-entirely-0123456789abcdef", &data()).unwrap_err();
        assert!(matches!(err, AuthError::BadSignature), "{err:?}");
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let claims = |iat: i64, exp: i64| json!({"data": data().to_string(), "jti": "x", "iat": iat, "nbf": iat - 5, "exp": exp});
        // Expired beyond the 60 s leeway.
        let expired = verify_crafted(&claims(now() - 300, now() - 120));
        assert!(matches!(expired, Err(AuthError::Expired)));
        // Expired, but within the leeway: accepted.
        verify_crafted(&claims(now() - 90, now() - 30)).unwrap();
        // Issued (and valid from) the future beyond the leeway.
        let future = verify_crafted(&claims(now() + 300, now() + 360));
        assert!(matches!(future, Err(AuthError::NotYetValid)));
        // `iat` in the future while `nbf` is fine: still a clock error.
        let odd = verify_crafted(&json!({
            "data": data().to_string(), "iat": now() + 300, "nbf": now() - 5, "exp": now() + 360
        }));
        assert!(matches!(odd, Err(AuthError::NotYetValid)));
        // No `exp` at all.
        let forever =
            verify_crafted(&json!({"data": data().to_string(), "iat": now(), "nbf": now()}));
        assert!(matches!(forever, Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn data_for_another_record_is_refused() {
        let token = token_of(&sign("k", SECRET, &data()));
        for other in [
            json!({"replicable_name": "package_file", "replicable_id": 43}),
            json!({"replicable_name": "upload", "replicable_id": 42}),
            json!({"replicable_name": "package_file", "replicable_id": "42"}),
            json!({"replicable_name": "package_file", "replicable_id": 42, "extra": true}),
            json!({"replicable_name": "package_file"}),
        ] {
            let err = verify(&token, SECRET, &other).unwrap_err();
            assert!(matches!(err, AuthError::DataMismatch), "{other}: {err:?}");
        }
        // A `data` claim that is not a JSON string of the parameters.
        let raw = verify_crafted(
            &json!({"data": data(), "iat": now(), "nbf": now() - 5, "exp": now() + 60}),
        );
        assert!(matches!(raw, Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let token = token_of(&sign("k", SECRET, &data()));
        for header in [
            String::new(),
            token.clone(),                    // no scheme
            format!("k:{token}"),             // no scheme either
            format!("GL-Geo k{token}"),       // no colon
            format!("GL-Geo :{token}"),       // empty access key
            "GL-Geo k:".to_string(),          // empty token
            format!("Bearer k:{token}"),      // another scheme
            format!("gl-geo k:{token}"),      // scheme is case-sensitive, as in GitLab
            format!("GL-Geo  k:{token}"),     // stray space
            format!("GL-Geo k:{token} more"), // trailing garbage
        ] {
            let err = parse_header(&header).unwrap_err();
            assert!(
                matches!(err, AuthError::MalformedGeoHeader(_)),
                "{header:?}: {err:?}"
            );
        }
    }

    #[test]
    fn garbage_and_foreign_algorithms_are_refused() {
        for garbage in ["garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            let err = verify(garbage, SECRET, &data()).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidToken(_)),
                "{garbage}: {err:?}"
            );
        }
        let claims =
            json!({"data": data().to_string(), "iat": now(), "nbf": now() - 5, "exp": now() + 60});
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());

        // `alg: none`, unsigned.
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        let err = verify(&none, SECRET, &data()).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::InvalidToken(_) | AuthError::UnsupportedAlgorithm
            ),
            "{err:?}"
        );

        // HS512 with the right secret: still refused.
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key).unwrap();
        let err = verify(&hs512, SECRET, &data()).unwrap_err();
        assert!(matches!(err, AuthError::UnsupportedAlgorithm), "{err:?}");

        // An HS256 header over an HS384 signature.
        let hs384 = jsonwebtoken::encode(&Header::new(Algorithm::HS384), &claims, &key).unwrap();
        let signature = hs384.rsplit('.').next().unwrap();
        let forged = format!(
            "{}.{body}.{signature}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#)
        );
        assert!(matches!(
            verify(&forged, SECRET, &data()),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn errors_do_not_reveal_secrets() {
        let header = sign("k", SECRET, &data());
        let token = token_of(&header);
        let errors = [
            verify(&token, "wrong-secret-wrong-secret-wrong-secret-12", &data()).unwrap_err(),
            verify(&token, SECRET, &json!({})).unwrap_err(),
            verify("garbage", SECRET, &data()).unwrap_err(),
            parse_header(&header.replace(':', "")).unwrap_err(),
        ];
        for err in errors {
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains(SECRET) && !shown.contains(&token),
                "{shown}"
            );
        }
    }

    #[test]
    fn empty_secret_is_an_error() {
        assert!(matches!(
            try_sign("k", "", &data()),
            Err(AuthError::InvalidKey(_))
        ));
        assert!(matches!(
            verify("a.b.c", "", &data()),
            Err(AuthError::InvalidKey(_))
        ));
    }
}
