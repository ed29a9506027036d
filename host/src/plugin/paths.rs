//! The host's check of every blob path a type returns.
//!
//! A type computes where its blobs live, but it never decides where the host
//! writes: a path is accepted only if it stays inside the type's storage root.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Longest accepted blob path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A blob path relative to a type's storage root, checked by [`BlobPath::parse`]:
/// relative, `/`-separated, no empty, `.` or `..` segment, no NUL, backslash or
/// other control character, at most [`MAX_PATH_BYTES`] bytes.
///
/// The paths a type answers packed share one copy of their text
/// ([`BlobPath::parse_shared`]): making or cloning one of them counts a
/// reference instead of allocating, and the text lives as long as any of
/// them (a batch's, at most a few MiB).
#[derive(Clone)]
pub struct BlobPath(Text);

#[derive(Clone)]
enum Text {
    Own(String),
    /// `text[start..end]`.
    Shared {
        text: Arc<str>,
        start: u32,
        end: u32,
    },
}

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
        Ok(BlobPath(Text::Own(path.to_string())))
    }

    /// [`BlobPath::parse`] without copying.
    pub fn parse_owned(path: String) -> Result<BlobPath, PathError> {
        check(&path)?;
        Ok(BlobPath(Text::Own(path)))
    }

    /// The paths `text[start..end]` for each range (which must lie on
    /// `text`'s character boundaries), each checked as by
    /// [`BlobPath::parse`], all sharing `text`. On the hot path of
    /// `blob_paths`: the rules' quick test runs once over the whole text,
    /// and each path is walked alone only if that finds anything to look
    /// at closer.
    pub fn parse_shared(text: Arc<str>, ranges: &[(u32, u32)]) -> Vec<Result<BlobPath, PathError>> {
        let plain = !flagged(text.as_bytes());
        ranges
            .iter()
            .map(|&(start, end)| {
                let path = &text[start as usize..end as usize];
                if plain {
                    if !plainly_valid_unflagged(path) {
                        explain(path)?;
                    }
                } else {
                    check(path)?;
                }
                Ok(BlobPath(Text::Shared {
                    text: text.clone(),
                    start,
                    end,
                }))
            })
            .collect()
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Text::Own(path) => path,
            Text::Shared { text, start, end } => &text[*start as usize..*end as usize],
        }
    }
}

impl PartialEq for BlobPath {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for BlobPath {}

impl Hash for BlobPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for BlobPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BlobPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobPath").field(&self.as_str()).finish()
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

/// Whether `path` is certainly valid; `false` only means "look closer"
/// (for example any byte past ASCII, or a segment starting with `.`).
fn plainly_valid(path: &str) -> bool {
    !flagged(path.as_bytes()) && plainly_valid_unflagged(path)
}

/// [`plainly_valid`] of a path whose bytes [`flagged`] found nothing in
/// (alone, or within a longer text). Every empty, `.` or `..` segment
/// starts the path or follows a `/`, so a path that does not start with
/// `/` or `.` or end with `/`, and holds no `//` or `/.`, has none.
fn plainly_valid_unflagged(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.starts_with(['/', '.'])
        && !path.ends_with('/')
}

/// Whether `bytes` hold anything to look at closer: a byte outside
/// printable ASCII (a control character, DEL, or any byte of a non-ASCII
/// character), a backslash, or a `/` followed by `/` or `.`. Branch-free
/// over each byte and the next (zipped slices vectorize; `windows` does
/// not). Within the paths of a longer text it finds everything it finds in
/// each path alone (each path's pairs are the text's).
fn flagged(bytes: &[u8]) -> bool {
    let Some(&last) = bytes.last() else {
        return false;
    };
    let odd = |b: u8| (b.wrapping_sub(0x20) > 0x5e) | (b == b'\\');
    bytes
        .iter()
        .zip(&bytes[1..])
        // `.` and `/` differ only in their lowest bit.
        .fold(odd(last), |acc, (&a, &b)| {
            acc | odd(a) | ((a == b'/') & ((b | 1) == b'/'))
        })
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
        f.write_str(self.as_str())
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

    /// Paths checked within a shared text get the answers they get alone,
    /// whatever their neighbours (a bad one makes the whole text "look
    /// closer", and a pair across two paths is never taken for one path's).
    #[test]
    fn shared_paths_are_checked_as_alone() {
        let parts = [
            "a/b", "a/", "/b", ".x", "b/.", "é/ü", "a//b", "x", "", "a\\b", "\u{85}",
        ];
        for first in parts {
            for second in parts {
                for third in ["ok/path", "z"] {
                    let paths = [first, second, third];
                    let text: String = paths.concat();
                    let mut ranges = Vec::new();
                    let mut start = 0u32;
                    for path in paths {
                        let end = start + path.len() as u32;
                        ranges.push((start, end));
                        start = end;
                    }
                    let shared = BlobPath::parse_shared(Arc::from(text.as_str()), &ranges);
                    for (path, got) in paths.iter().zip(shared) {
                        assert_eq!(got, BlobPath::parse(path), "{path:?} in {paths:?}");
                    }
                }
            }
        }
        let a = BlobPath::parse_shared(Arc::from("x/ya/b"), &[(0, 3), (3, 6)]);
        let b = BlobPath::parse("a/b").unwrap();
        assert_eq!(a[1].as_ref().unwrap(), &b);
        assert_eq!(format!("{:?}", a[1].as_ref().unwrap()), format!("{b:?}"));
        assert_eq!(a[0].as_ref().unwrap().to_string(), "x/y");
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
