//! The layer that adds [`Rewrite`](super::RewriteStage).

use super::RewriteStage;

/// Wraps a service in [`RewriteStage`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RewriteLayer;

impl<S> tower::Layer<S> for RewriteLayer {
    type Service = RewriteStage<S>;

    fn layer(&self, inner: S) -> RewriteStage<S> {
        RewriteStage { inner }
    }
}
