//! The fault layer's leaf error.

use crate::error::ProxyError;

/// The request was aborted by a fault policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault abort")]
pub struct Aborted {
    /// HTTP status to answer with.
    pub status: u16,
    /// gRPC status to answer with instead, as a trailers-only response.
    pub grpc_status: Option<u32>,
}

impl From<Aborted> for ProxyError {
    fn from(a: Aborted) -> Self {
        ProxyError::FaultAbort {
            status: a.status,
            grpc_status: a.grpc_status,
        }
    }
}
