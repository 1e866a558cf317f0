//! The authorization layer's leaf error.

use crate::error::ProxyError;

/// An authorization policy denied the request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied by {policy} for {principal} ({operation})")]
pub struct Denied {
    /// The deciding policy, or [`super::NO_ALLOW_MATCHED`].
    pub policy: String,
    /// The caller's SPIFFE id, or `unauthenticated`.
    pub principal: String,
    /// What was asked, e.g. `GET /admin on port 8080`.
    pub operation: String,
}

impl From<Denied> for ProxyError {
    fn from(d: Denied) -> Self {
        ProxyError::Unauthorized {
            policy: d.policy,
            principal: d.principal,
            operation: d.operation,
        }
    }
}
