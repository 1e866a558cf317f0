//! The layer that adds [`Mirror`].

use super::Mirror;
use crate::telemetry::ResilienceMetrics;

/// Wraps a service in [`Mirror`].
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    metrics: ResilienceMetrics,
}

// === impl MirrorLayer ===

impl MirrorLayer {
    /// Records mirrored requests in `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror::new(inner, self.metrics.clone())
    }
}
