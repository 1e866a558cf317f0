//! The deadline layer's leaf error.

use crate::error::ProxyError;
use std::time::Duration;

/// The caller's deadline passed (or had passed on arrival).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the caller's deadline of {0:?} passed")]
pub struct DeadlineExceeded(pub Duration);

impl From<DeadlineExceeded> for ProxyError {
    fn from(e: DeadlineExceeded) -> Self {
        ProxyError::DeadlineExceeded {
            budget_ms: e.0.as_millis() as u64,
        }
    }
}
