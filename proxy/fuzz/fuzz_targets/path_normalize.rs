//! Request path normalization (`protocol::path`).
//!
//! Input: one byte choosing the mode and the escaped-slash action, then a
//! request target; only targets `http` accepts (as hyper would) are used.
//!
//! Invariants: nothing panics; the result is a valid path; normalizing it
//! again changes nothing; it has no dot segment (any mode but `none`) and
//! no empty segment (the merging modes); an encoded slash never survives
//! `reject` or `unescape`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sane_proxy::protocol::path::normalize;
use sane_xds_proto::{EscapedSlashes, PathNormalization, PathNormalizationMode};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(rest) else {
        return;
    };
    let mode = match choice & 3 {
        0 => PathNormalizationMode::None,
        1 => PathNormalizationMode::Base,
        2 => PathNormalizationMode::MergeSlashes,
        _ => PathNormalizationMode::DecodeAndMergeSlashes,
    };
    let escaped_slashes = match (choice >> 2) & 3 {
        0 => EscapedSlashes::Default,
        1 => EscapedSlashes::Keep,
        2 => EscapedSlashes::Reject,
        _ => EscapedSlashes::Unescape,
    };
    let cfg = PathNormalization {
        mode,
        escaped_slashes,
    };
    let Ok(once) = normalize(pq.path(), &cfg) else {
        return;
    };
    assert!(
        http::uri::PathAndQuery::try_from(once.as_ref()).is_ok(),
        "{once:?} is not a valid path"
    );
    let twice = normalize(&once, &cfg).expect("a normalized path is accepted again");
    assert_eq!(once, twice, "not stable");
    if mode == PathNormalizationMode::None || !once.starts_with('/') {
        return;
    }
    assert!(
        !once.split('/').any(|s| s == "." || s == ".."),
        "{once:?} keeps a dot segment"
    );
    if mode != PathNormalizationMode::Base {
        assert!(!once.contains("//"), "{once:?} keeps an empty segment");
    }
    if matches!(
        cfg.escaped_slashes(),
        EscapedSlashes::Reject | EscapedSlashes::Unescape
    ) {
        let upper = once.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C"),
            "{once:?} keeps an encoded slash"
        );
    }
});
