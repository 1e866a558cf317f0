//! The timeout's leaf error.

use crate::error::ProxyError;
use std::time::Duration;

/// The request timeout elapsed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("request timed out after {0:?}")]
pub struct Elapsed(pub Duration);

impl From<Elapsed> for ProxyError {
    fn from(e: Elapsed) -> Self {
        ProxyError::Timeout {
            timeout_ms: e.0.as_millis() as u64,
        }
    }
}
