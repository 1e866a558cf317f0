//! The circuit breaker's leaf error.

use crate::error::ProxyError;
use std::fmt;

/// Which limit a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections`.
    Connections(u32),
    /// `max_pending_requests` (after `max_requests` was reached).
    PendingRequests(u32),
    /// `max_requests`.
    Requests(u32),
    /// `max_retries`.
    Retries(u32),
}

/// A limit of the destination's circuit breaker was reached; the request is
/// shed (503, `UO`) instead of queued.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{limit} of {cluster} reached")]
pub struct Overflow {
    /// The destination cluster.
    pub cluster: String,
    /// The limit.
    pub limit: Limit,
}

// === impl Limit ===

impl Limit {
    /// The config field name, also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Connections(_) => "max_connections",
            Limit::PendingRequests(_) => "max_pending_requests",
            Limit::Requests(_) => "max_requests",
            Limit::Retries(_) => "max_retries",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Limit::Connections(n)
        | Limit::PendingRequests(n)
        | Limit::Requests(n)
        | Limit::Retries(n)) = *self;
        write!(f, "{} ({n})", self.name())
    }
}

impl From<Overflow> for ProxyError {
    fn from(e: Overflow) -> Self {
        ProxyError::Overloaded {
            limit: e.to_string(),
        }
    }
}
