//! The layers that add [`Timeout`].

use super::Timeout;

/// Wraps a service in the whole-request [`Timeout`] ([`super::RequestTimeout`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer;

/// Wraps a service in the per-attempt [`Timeout`] ([`super::PerTryTimeout`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerTryTimeoutLayer;

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner)
    }
}

impl<S> tower::Layer<S> for PerTryTimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::per_try(inner)
    }
}
