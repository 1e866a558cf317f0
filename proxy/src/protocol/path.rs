//! Request path normalization, before anything reads the path (routing,
//! authorization) and for what is forwarded: a policy on `/admin/*` must
//! see the path the backend will act on, not a spelling of it
//! (`/a/../admin/x`, `//admin/x`, `/%61dmin/x`) that the backend resolves
//! to the same place after the policy let it through.
//!
//! The steps, in Envoy's order (each mode includes the ones before it):
//! 1. percent-decoding: an escape of an unreserved character (RFC 3986:
//!    `A-Z a-z 0-9 - . _ ~`) is decoded, any other escape is upper-cased;
//!    an encoded `/` or `\` is kept, decoded or rejected as configured; a
//!    `%` not followed by two hex digits is rejected; a raw `\` is read as
//!    `/` (as browsers and many servers do);
//! 2. dot segments removed (RFC 3986 section 5.2.4), never above the root;
//! 3. repeated slashes merged (`merge_slashes` and above).
//!
//! The result is stable: normalizing it again changes nothing (a unit test
//! and the `path_normalize` fuzz target hold that). The query is never
//! touched.

use sane_xds_proto::{EscapedSlashes, PathNormalization, PathNormalizationMode};
use std::borrow::Cow;

/// Why a path is refused (`400`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// An encoded `/` or `\` while they are configured to be rejected.
    #[error("path {path:?} holds an encoded slash or backslash (%2F, %5C), which is rejected")]
    EscapedSlash {
        /// The path as received.
        path: String,
    },
    /// A `%` not followed by two hex digits.
    #[error("path {path:?} holds a malformed percent-escape")]
    BadEscape {
        /// The path as received.
        path: String,
    },
}

/// Normalizes `path` (the path only, without `?query`) under `cfg`.
/// Borrowed when nothing changes, which is the common case and costs one
/// scan.
pub fn normalize<'a>(path: &'a str, cfg: &PathNormalization) -> Result<Cow<'a, str>, PathError> {
    if cfg.mode == PathNormalizationMode::None || !path.starts_with('/') {
        // `*` (OPTIONS) and other non-origin forms are not paths to resolve.
        return Ok(Cow::Borrowed(path));
    }
    let merge = cfg.mode != PathNormalizationMode::Base;
    if is_normal(path, merge) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, cfg.escaped_slashes())?;
    let mut out = remove_dot_segments(&decoded);
    if merge {
        out = merge_slashes(&out);
    }
    Ok(Cow::Owned(out))
}

/// True when `path` would come out unchanged: no escape, no `\`, no dot
/// segment, and (when merging) no empty segment.
fn is_normal(path: &str, merge: bool) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        return false;
    }
    if merge && path.contains("//") {
        return false;
    }
    !path.split('/').skip(1).any(|seg| seg == "." || seg == "..")
}

/// Step 1: escapes decoded or upper-cased, `\` made `/`.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) else {
                    return Err(PathError::BadEscape { path: path.into() });
                };
                let c = (hi * 16 + lo) as u8;
                if is_unreserved(c) {
                    out.push(c as char);
                } else if c == b'/' || c == b'\\' {
                    match slashes {
                        EscapedSlashes::Reject | EscapedSlashes::Default => {
                            return Err(PathError::EscapedSlash { path: path.into() })
                        }
                        EscapedSlashes::Unescape => out.push('/'),
                        EscapedSlashes::Keep => push_escape(&mut out, c),
                    }
                } else {
                    push_escape(&mut out, c);
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            c => {
                // `http::Uri` only lets visible ASCII into a path.
                out.push(c as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(out: &mut String, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(c >> 4) as usize] as char);
    out.push(HEX[(c & 15) as usize] as char);
}

/// Step 2: RFC 3986 section 5.2.4 for an absolute path: `.` segments
/// dropped, `..` drops the segment before it (never the root); a path
/// ending in a dot segment keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "." => trailing = last,
            ".." => {
                segs.pop();
                trailing = last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

/// Step 3: runs of `/` become one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: PathNormalizationMode, escaped_slashes: EscapedSlashes) -> PathNormalization {
        PathNormalization {
            mode,
            escaped_slashes,
        }
    }

    fn default_norm(p: &str) -> Result<String, PathError> {
        normalize(p, &PathNormalization::default()).map(Cow::into_owned)
    }

    #[test]
    fn the_probes_all_become_the_admin_path() {
        for probe in [
            "/a/../admin/x",
            "//admin/x",
            "/%61dmin/x",
            "/%61%64%6D%69%6e/x",
            "/./admin/./x",
            "/admin//x",
            "/../../admin/x",
            "/%2e%2e/admin/x",
            "/a/%2E%2E/admin/x",
            "/\\admin\\x",
            "/.%2e/admin/x",
            "///a/b/../../admin/x",
        ] {
            assert_eq!(default_norm(probe).unwrap(), "/admin/x", "{probe}");
        }
    }

    #[test]
    fn encoded_slashes_are_rejected_by_default() {
        for probe in ["/admin%2fx", "/admin%2Fx", "/admin%5cx", "/a%5C..%5Cadmin"] {
            assert!(
                matches!(default_norm(probe), Err(PathError::EscapedSlash { .. })),
                "{probe}"
            );
        }
        let keep = cfg(PathNormalizationMode::MergeSlashes, EscapedSlashes::Keep);
        assert_eq!(normalize("/admin%2fx", &keep).unwrap(), "/admin%2Fx");
        let unescape = cfg(
            PathNormalizationMode::MergeSlashes,
            EscapedSlashes::Unescape,
        );
        assert_eq!(normalize("/admin%2fx", &unescape).unwrap(), "/admin/x");
        assert_eq!(normalize("/a%2F..%2Fadmin", &unescape).unwrap(), "/admin");
        let decode = cfg(
            PathNormalizationMode::DecodeAndMergeSlashes,
            EscapedSlashes::Default,
        );
        assert_eq!(normalize("/x%2F..%5Cadmin", &decode).unwrap(), "/admin");
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        for probe in ["/a%", "/a%2", "/a%zz", "/%g1"] {
            assert!(
                matches!(default_norm(probe), Err(PathError::BadEscape { .. })),
                "{probe}"
            );
        }
    }

    #[test]
    fn other_escapes_are_kept_upper_cased() {
        assert_eq!(default_norm("/a%20b%3f%25").unwrap(), "/a%20b%3F%25");
        // `%25` stays encoded: a second pass must not decode `%2541` to `A`.
        assert_eq!(default_norm("/%2541").unwrap(), "/%2541");
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        // RFC 3986 section 5.4 examples, as absolute paths.
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("/a/...", "/a/..."),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b/", "/a/b/"),
        ] {
            assert_eq!(default_norm(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn modes_do_what_they_say() {
        let none = cfg(PathNormalizationMode::None, EscapedSlashes::Default);
        assert_eq!(normalize("/a/..//%61%2f", &none).unwrap(), "/a/..//%61%2f");
        let base = cfg(PathNormalizationMode::Base, EscapedSlashes::Default);
        assert_eq!(normalize("/a/..//%61b", &base).unwrap(), "//ab");
        assert!(normalize("/a%2f", &base).is_err());
        let merge = PathNormalization::default();
        assert_eq!(normalize("/a/..//%61b", &merge).unwrap(), "/ab");
        // Dot segments first, then slashes merged (Envoy's order).
        assert_eq!(normalize("/a//../b", &merge).unwrap(), "/a/b");
    }

    #[test]
    fn normal_paths_are_borrowed_and_star_is_left_alone() {
        for p in ["/", "/api/v1/items", "/a.b/c-d_e~f", "*"] {
            assert!(matches!(
                normalize(p, &PathNormalization::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        let modes = [
            PathNormalizationMode::Base,
            PathNormalizationMode::MergeSlashes,
            PathNormalizationMode::DecodeAndMergeSlashes,
        ];
        let slashes = [EscapedSlashes::Keep, EscapedSlashes::Unescape];
        let inputs = [
            "/a/../admin/x",
            "//%2e%2E//a/./b/../%7e",
            "/%252e%252e/x",
            "/%2F/%2f../x",
            "/a\\..\\b",
            "/x/.././../y//",
            "/%41%2541%5c%2e",
        ];
        for mode in modes {
            for s in slashes {
                let c = cfg(mode, s);
                if c.mode == PathNormalizationMode::DecodeAndMergeSlashes
                    && s == EscapedSlashes::Keep
                {
                    continue;
                }
                for input in inputs {
                    let once = normalize(input, &c).unwrap().into_owned();
                    let twice = normalize(&once, &c).unwrap().into_owned();
                    assert_eq!(once, twice, "{input} under {c:?}");
                }
            }
        }
    }

    /// Every path of up to 6 characters over the characters that matter,
    /// in every mode: stable, valid, no dot or (merging) empty segment, no
    /// encoded slash where they are rejected or decoded. (The
    /// `path_normalize` fuzz target checks the same on any input.)
    #[test]
    fn short_paths_exhaustively_keep_the_invariants() {
        const ALPHABET: &[u8] = b"/.%2fFa\\";
        let modes = [
            PathNormalizationMode::Base,
            PathNormalizationMode::MergeSlashes,
            PathNormalizationMode::DecodeAndMergeSlashes,
        ];
        let slashes = [
            EscapedSlashes::Default,
            EscapedSlashes::Keep,
            EscapedSlashes::Reject,
            EscapedSlashes::Unescape,
        ];
        let mut path = Vec::with_capacity(7);
        let mut checked = 0u32;
        for len in 0..=5u32 {
            for mut n in 0..(ALPHABET.len() as u32).pow(len) {
                path.clear();
                path.push(b'/');
                for _ in 0..len {
                    path.push(ALPHABET[(n % ALPHABET.len() as u32) as usize]);
                    n /= ALPHABET.len() as u32;
                }
                let p = std::str::from_utf8(&path).unwrap();
                for mode in modes {
                    for s in slashes {
                        let c = cfg(mode, s);
                        let Ok(once) = normalize(p, &c) else { continue };
                        checked += 1;
                        let twice = normalize(&once, &c).expect("accepted again");
                        assert_eq!(once, twice, "{p:?} under {c:?}");
                        assert!(once.starts_with('/'), "{p:?} -> {once:?}");
                        assert!(
                            !once.split('/').any(|s| s == "." || s == ".."),
                            "{p:?} -> {once:?}"
                        );
                        if mode != PathNormalizationMode::Base {
                            assert!(!once.contains("//"), "{p:?} -> {once:?}");
                        }
                        if c.escaped_slashes() != EscapedSlashes::Keep {
                            let up = once.to_ascii_uppercase();
                            assert!(!up.contains("%2F") && !up.contains("%5C"), "{p:?}");
                        }
                        assert!(
                            http::uri::PathAndQuery::try_from(once.as_ref()).is_ok(),
                            "{p:?} -> {once:?}"
                        );
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
