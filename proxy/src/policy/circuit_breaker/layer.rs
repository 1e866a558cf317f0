//! The layer that adds [`CircuitBreaker`].

use super::CircuitBreaker;
use crate::telemetry::ResilienceMetrics;

/// Wraps a service in [`CircuitBreaker`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    metrics: ResilienceMetrics,
}

// === impl CircuitBreakerLayer ===

impl CircuitBreakerLayer {
    /// Records overflows in `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.metrics.clone())
    }
}
