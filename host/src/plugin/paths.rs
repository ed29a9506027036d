//! The host's check of every blob path a type returns.
//!
//! A type computes where its blobs live, but it never decides where the host
//! writes: a path is accepted only if it stays inside the type's storage root.

use std::fmt;

/// Longest accepted blob path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A blob path relative to a type's storage root, checked by [`BlobPath::parse`]:
/// relative, `/`-separated, no empty, `.` or `..` segment, no NUL, backslash or
/// other control character, at most [`MAX_PATH_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("blob path is empty")]
    Empty,
    #[error("blob path is {0} bytes, longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("blob path {0:?} is absolute; it must be relative to the type's storage root")]
    Absolute(String),
    #[error("blob path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("blob path {0:?} has a `.` or `..` segment")]
    DotSegment(String),
    #[error("blob path {0:?} contains a NUL, backslash or control character")]
    ForbiddenCharacter(String),
}

impl BlobPath {
    pub fn parse(path: &str) -> Result<BlobPath, PathError> {
        check(path)?;
        Ok(BlobPath(path.to_string()))
    }

    /// [`BlobPath::parse`] without copying: the host checks every path a
    /// type returns, so this is on the hot path of `blob_paths`.
    pub fn parse_owned(path: String) -> Result<BlobPath, PathError> {
        check(&path)?;
        Ok(BlobPath(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rules of [`BlobPath`]. Every path a type returns comes through here,
/// so a quick test on bytes accepts the usual path, and only a path it cannot
/// accept outright is walked `char` by `char` to name what is wrong.
fn check(path: &str) -> Result<(), PathError> {
    if plainly_valid(path) {
        Ok(())
    } else {
        explain(path)
    }
}

/// Whether `path` is certainly valid. Branch-free over the bytes, so it
/// vectorizes; `false` only means "look closer" (for example any 0xC2 byte,
/// which may start a C1 control character, or a segment starting with `.`).
/// Every empty, `.` or `..` segment starts the path or follows a `/`, so
/// a path that does not start with `/` or `.` or end with `/`, and holds no
/// `//` or `/.`, has none.
fn plainly_valid(path: &str) -> bool {
    let bytes = path.as_bytes();
    let Some(&last) = bytes.last() else {
        return false;
    };
    let suspicious = |b: u8| (b < 0x20) | (b == 0x7f) | (b == b'\\') | (b == 0xc2);
    // Each byte beside the next (zipped slices vectorize; `windows` does not).
    let flagged = bytes
        .iter()
        .zip(&bytes[1..])
        .fold(suspicious(last), |acc, (&a, &b)| {
            acc | suspicious(a) | ((a == b'/') & ((b == b'/') | (b == b'.')))
        });
    !flagged && path.len() <= MAX_PATH_BYTES && !path.starts_with(['/', '.']) && last != b'/'
}

/// The first rule `path` breaks, if any.
fn explain(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    let shown = || path.chars().take(200).collect::<String>();
    if path.starts_with('/') {
        return Err(PathError::Absolute(shown()));
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathError::ForbiddenCharacter(shown()));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment(shown())),
            "." | ".." => return Err(PathError::DotSegment(shown())),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hashed_paths() {
        let p = "6b/86/6b86b273/packages/helm/metadata_caches/abc/index.yaml";
        assert_eq!(BlobPath::parse(p).unwrap().as_str(), p);
    }

    #[test]
    fn accepts_non_ascii_and_dotted_names() {
        for p in [
            "é/ü/index.yaml",
            "a/\u{a0}/b",
            "a/\u{2028}",
            ".hidden/..x/x..",
            "a/.../b",
        ] {
            assert_eq!(BlobPath::parse(p).unwrap().as_str(), p);
            assert_eq!(BlobPath::parse_owned(p.to_string()).unwrap().as_str(), p);
        }
    }

    /// The quick test never accepts what the full rules refuse.
    #[test]
    fn plainly_valid_implies_valid() {
        let parts = [
            "a", ".", "..", "", "...", ".a", "é", "\u{85}", "\u{a0}", "\\", "\n",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    for path in [
                        format!("{a}/{b}/{c}"),
                        format!("/{a}/{b}"),
                        format!("{a}{b}/{c}/"),
                    ] {
                        if plainly_valid(&path) {
                            assert_eq!(explain(&path), Ok(()), "{path:?}");
                        }
                        assert_eq!(check(&path), explain(&path), "{path:?}");
                    }
                }
            }
        }
    }

    /// The quick test and the full rules agree on every character.
    #[test]
    fn forbidden_characters_match_char_is_control() {
        for c in (0..0x3000).filter_map(char::from_u32) {
            let path = format!("a{c}b");
            let refused = matches!(
                BlobPath::parse(&path),
                Err(PathError::ForbiddenCharacter(_))
            );
            assert_eq!(refused, c == '\\' || c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        let long = "a/".repeat(600);
        let cases: &[(&str, fn(&PathError) -> bool)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("../../etc/passwd", |e| {
                matches!(e, PathError::DotSegment(_))
            }),
            ("a/../b", |e| matches!(e, PathError::DotSegment(_))),
            ("a/./b", |e| matches!(e, PathError::DotSegment(_))),
            ("/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            ("a//b", |e| matches!(e, PathError::EmptySegment(_))),
            ("a/", |e| matches!(e, PathError::EmptySegment(_))),
            ("a\\..\\b", |e| {
                matches!(e, PathError::ForbiddenCharacter(_))
            }),
            ("a\0b", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            ("a\nb", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            (&long, |e| matches!(e, PathError::TooLong(_))),
            ("a\x7fb", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            ("a/\u{85}/b", |e| {
                matches!(e, PathError::ForbiddenCharacter(_))
            }),
            ("a/\u{9f}", |e| {
                matches!(e, PathError::ForbiddenCharacter(_))
            }),
            ("é/../b", |e| matches!(e, PathError::DotSegment(_))),
        ];
        for (path, expected) in cases {
            let err = BlobPath::parse(path).unwrap_err();
            assert!(expected(&err), "{path:?}: {err}");
        }
    }
}
