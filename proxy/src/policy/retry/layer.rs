//! The layer that adds [`Retry`].

use super::Retry;
use crate::telemetry::ResilienceMetrics;

/// Wraps a service in [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryLayer {
    metrics: ResilienceMetrics,
}

// === impl RetryLayer ===

impl RetryLayer {
    /// Records retries and limits in `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.metrics.clone())
    }
}
