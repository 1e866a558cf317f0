//! The layer that adds [`Fault`].

use super::Fault;
use crate::telemetry::ResilienceMetrics;

/// Wraps a service in [`Fault`].
#[derive(Clone, Debug)]
pub struct FaultLayer {
    metrics: ResilienceMetrics,
}

// === impl FaultLayer ===

impl FaultLayer {
    /// Records injected faults in `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault::new(inner, self.metrics.clone())
    }
}
