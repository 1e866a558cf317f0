//! The layer that adds [`Authorize`].

use super::{Authorize, AuthzMetrics, PolicySource};
use crate::tls::PeerIdentity;

/// Wraps a service in [`Authorize`] for one inbound connection.
#[derive(Clone)]
pub struct AuthzLayer {
    policies: PolicySource,
    peer: Option<PeerIdentity>,
    port: u16,
    metrics: AuthzMetrics,
}

// === impl AuthzLayer ===

impl AuthzLayer {
    /// Authorizes requests of the caller `peer` (`None`: plaintext) to
    /// workload `port` against the policies `policies` returns at each
    /// request (so a config change applies to open connections too).
    pub fn new(
        policies: PolicySource,
        peer: Option<PeerIdentity>,
        port: u16,
        metrics: AuthzMetrics,
    ) -> Self {
        Self {
            policies,
            peer,
            port,
            metrics,
        }
    }
}

impl std::fmt::Debug for AuthzLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzLayer")
            .field("peer", &self.peer)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policies: self.policies.clone(),
            peer: self.peer.clone(),
            port: self.port,
            metrics: self.metrics.clone(),
        }
    }
}
