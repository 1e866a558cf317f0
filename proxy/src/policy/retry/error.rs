//! The retry layer's leaf error.

use crate::error::ProxyError;

/// The last attempt failed in a retryable way, but a limit stopped the
/// next one; the client gets that failure with flag `URX` added.
#[derive(Debug, thiserror::Error)]
#[error("{last} (not retried: {limit} after {attempts} attempt(s))")]
pub struct RetriesExhausted {
    /// Attempts made.
    pub attempts: u32,
    /// The limit: `attempts`, `budget` or `max_retries`.
    pub limit: &'static str,
    /// The last attempt's failure.
    #[source]
    pub last: ProxyError,
}

impl From<RetriesExhausted> for ProxyError {
    fn from(e: RetriesExhausted) -> Self {
        ProxyError::RetryLimit {
            attempts: e.attempts,
            limit: e.limit,
            last: Box::new(e.last),
        }
    }
}
