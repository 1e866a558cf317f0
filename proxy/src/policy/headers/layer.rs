//! The layer that adds [`HeaderRewrite`].

use super::HeaderRewrite;

/// Wraps a service in [`HeaderRewrite`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderRewriteLayer;

impl<S> tower::Layer<S> for HeaderRewriteLayer {
    type Service = HeaderRewrite<S>;

    fn layer(&self, inner: S) -> HeaderRewrite<S> {
        HeaderRewrite { inner }
    }
}
