//! HTTP handling every listener of a proxy shares (the `http` section of the
//! bootstrap): how request paths are normalized before routing and
//! authorization, and how many header fields a request or response may
//! carry.
//!
//! The defaults are the safe ones: a path is normalized as Istio's
//! `MERGE_SLASHES` does (percent-encoded unreserved characters decoded, dot
//! segments removed, repeated slashes merged), and a path with an encoded
//! slash or backslash (`%2F`, `%5C`) is rejected with `400`, so an
//! authorization rule on `/admin/*` cannot be walked around with
//! `/a/../admin`, `//admin` or `/%61dmin`.

use crate::validate::{Errors, FieldPath};
use serde::{Deserialize, Serialize};

/// Default most header fields in a request (Envoy's `max_headers_count`).
pub const DEFAULT_MAX_REQUEST_HEADERS: u32 = 100;
/// Default most header fields in a response: Envoy's `max_headers_count`
/// too, which bounds responses from upstreams as well as requests. A
/// response over the limit is lost to the caller (`502 UPE`), so an app that
/// sets more raises `max_response_headers`; the proxy parses up to 100
/// without allocating a header array per response.
pub const DEFAULT_MAX_RESPONSE_HEADERS: u32 = 100;
/// Largest header count limit accepted (requests and responses).
pub const MAX_HEADERS_LIMIT: u32 = 10_000;

/// How much of a request path is normalized (Istio's `pathNormalization`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathNormalizationMode {
    /// The path is forwarded as it came. Unsafe with path-based policies.
    None,
    /// RFC 3986: percent-encoded unreserved characters decoded
    /// (`%61` → `a`), other escapes upper-cased, `\` read as `/`, dot
    /// segments removed (`/a/../b` → `/b`).
    Base,
    /// `base`, then repeated slashes merged (`//a///b` → `/a/b`). The default.
    #[default]
    MergeSlashes,
    /// `merge_slashes`, with encoded slashes and backslashes (`%2F`, `%5C`)
    /// decoded to `/` first (so `escaped_slashes` must be `unescape` or unset).
    DecodeAndMergeSlashes,
}

/// What happens to a path holding an encoded slash or backslash (`%2F`,
/// `%5C`, any case), which a backend may or may not decode before it
/// routes (Envoy's `path_with_escaped_slashes_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Not set: `unescape` with `decode_and_merge_slashes`, `keep` with
    /// `none`, `reject` otherwise.
    #[default]
    Default,
    /// Left encoded (`%2F` upper-cased) and forwarded; policies see them
    /// encoded.
    Keep,
    /// The request is refused with `400` (flag `DPE`).
    Reject,
    /// Decoded to `/` and normalized with the rest of the path.
    Unescape,
}

/// Path normalization settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathNormalization {
    /// How much is normalized. Default: `merge_slashes`.
    pub mode: PathNormalizationMode,
    /// What an encoded `/` or `\` does. Default: `reject` (with
    /// `decode_and_merge_slashes`: `unescape`; with `none`: `keep`).
    pub escaped_slashes: EscapedSlashes,
}

/// The bootstrap's `http` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpOptions {
    /// How request paths are normalized before routing (outbound,
    /// gateway) and authorization (inbound); the normalized path is the one
    /// forwarded. Applies to the next request after a reload. Default:
    /// `{ mode: merge_slashes, escaped_slashes: reject }`.
    pub path_normalization: PathNormalization,
    /// Most header fields a request may carry (each value of a repeated
    /// header counts); more gets `431` (flag `DPE`). Read at start.
    /// Default: 0, meaning 100. At most 10000.
    pub max_request_headers: u32,
    /// Most header fields a response from an upstream may carry; more
    /// makes the request fail with `502` (flag `UPE`). Read at start.
    /// Default: 0, meaning 100. At most 10000.
    pub max_response_headers: u32,
}

// === impl PathNormalization ===

impl PathNormalization {
    /// The escaped-slash action, with the mode's default applied.
    pub fn escaped_slashes(&self) -> EscapedSlashes {
        match (self.escaped_slashes, self.mode) {
            (EscapedSlashes::Default, PathNormalizationMode::None) => EscapedSlashes::Keep,
            (EscapedSlashes::Default, PathNormalizationMode::DecodeAndMergeSlashes) => {
                EscapedSlashes::Unescape
            }
            (EscapedSlashes::Default, _) => EscapedSlashes::Reject,
            (explicit, _) => explicit,
        }
    }
}

// === impl HttpOptions ===

impl HttpOptions {
    /// Request header count limit, with the default applied.
    pub fn max_request_headers(&self) -> u32 {
        or(self.max_request_headers, DEFAULT_MAX_REQUEST_HEADERS)
    }

    /// Response header count limit, with the default applied.
    pub fn max_response_headers(&self) -> u32 {
        or(self.max_response_headers, DEFAULT_MAX_RESPONSE_HEADERS)
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        let p = &self.path_normalization;
        let pn = path.field("path_normalization");
        match (p.mode, p.escaped_slashes) {
            (
                PathNormalizationMode::DecodeAndMergeSlashes,
                EscapedSlashes::Keep | EscapedSlashes::Reject,
            ) => errs.push(
                &pn.field("escaped_slashes"),
                format!(
                    "{:?} contradicts mode decode_and_merge_slashes, which decodes them",
                    p.escaped_slashes
                ),
            ),
            (PathNormalizationMode::None, EscapedSlashes::Unescape) => errs.push(
                &pn.field("escaped_slashes"),
                "unescape needs a normalizing mode (base or above); with mode none the path is \
                 forwarded as it came",
            ),
            _ => {}
        }
        errs.at_most(
            &path.field("max_request_headers"),
            self.max_request_headers.into(),
            MAX_HEADERS_LIMIT.into(),
        );
        errs.at_most(
            &path.field("max_response_headers"),
            self.max_response_headers.into(),
            MAX_HEADERS_LIMIT.into(),
        );
    }
}

fn or(value: u32, default: u32) -> u32 {
    if value == 0 {
        default
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_safe_ones() {
        let h: HttpOptions = serde_yaml::from_str("{}").unwrap();
        assert_eq!(
            h.path_normalization.mode,
            PathNormalizationMode::MergeSlashes
        );
        assert_eq!(
            h.path_normalization.escaped_slashes(),
            EscapedSlashes::Reject
        );
        assert_eq!(h.max_request_headers(), 100);
        assert_eq!(h.max_response_headers(), 100);
        let d: HttpOptions =
            serde_yaml::from_str("path_normalization: { mode: decode_and_merge_slashes }").unwrap();
        assert_eq!(
            d.path_normalization.escaped_slashes(),
            EscapedSlashes::Unescape
        );
    }

    #[test]
    fn errors_name_the_field() {
        let yaml = "{ path_normalization: { mode: decode_and_merge_slashes, escaped_slashes: \
                    reject }, max_request_headers: 20000 }";
        let h: HttpOptions = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        h.validate_into(&FieldPath::new("http"), &mut errs);
        let text = errs.finish().unwrap_err().to_string();
        for want in [
            "http.path_normalization.escaped_slashes: Reject contradicts mode",
            "http.max_request_headers: 20000 is above the maximum of 10000",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        let err = serde_yaml::from_str::<HttpOptions>("{ path_normalisation: {} }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("path_normalisation"), "{err}");
        let err = serde_yaml::from_str::<HttpOptions>("path_normalization: { mode: all }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("all"), "{err}");
    }
}
