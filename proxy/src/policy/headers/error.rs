//! The header layer's leaf error: a rewrite that cannot be compiled. Header
//! rewrites cannot fail on the data path, so this only happens at config
//! compile time (validation normally catches it first).

/// A header name or value of a rewrite is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidHeaderOp {
    /// Field path, e.g. `routes[0].rules[1].request_headers.set.x-env`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}
