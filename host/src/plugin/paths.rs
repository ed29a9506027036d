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
        Ok(BlobPath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
    fn refuses_escapes_and_junk() {
        let long = "a/".repeat(600);
        let cases: &[(&str, fn(&PathError) -> bool)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("../../etc/passwd", |e| matches!(e, PathError::DotSegment(_))),
            ("a/../b", |e| matches!(e, PathError::DotSegment(_))),
            ("a/./b", |e| matches!(e, PathError::DotSegment(_))),
            ("/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            ("a//b", |e| matches!(e, PathError::EmptySegment(_))),
            ("a/", |e| matches!(e, PathError::EmptySegment(_))),
            ("a\\..\\b", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            ("a\0b", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            ("a\nb", |e| matches!(e, PathError::ForbiddenCharacter(_))),
            (&long, |e| matches!(e, PathError::TooLong(_))),
        ];
        for (path, expected) in cases {
            let err = BlobPath::parse(path).unwrap_err();
            assert!(expected(&err), "{path:?}: {err}");
        }
    }
}
