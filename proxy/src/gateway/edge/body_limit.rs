//! Request body size limit: a declared `content-length` over the limit gets
//! 413 before anything is forwarded; a streamed body that grows past it is
//! cut off with an error, so the upstream request fails instead of carrying
//! an unbounded body into the mesh.

use crate::body::BodyError;
use crate::error::ProxyError;
use crate::gateway::error::EdgeError;
use crate::Body;
use futures::future::{BoxFuture, FutureExt};
use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Limits request bodies to `max` bytes.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max: u64,
}

/// The service [`BodyLimitLayer`] builds.
#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max: u64,
}

// === impl BodyLimitLayer ===

impl BodyLimitLayer {
    /// At most `max` bytes per request body.
    pub fn new(max: u64) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max: self.max,
        }
    }
}

// === impl BodyLimit ===

impl<S> Service<Request<Body>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = declared.filter(|l| *l > self.max) {
            let rsp = EdgeError::BodyTooLarge {
                length,
                limit: self.max,
            }
            .to_response();
            return futures::future::ready(Ok(rsp)).boxed();
        }
        let max = usize::try_from(self.max).unwrap_or(usize::MAX);
        let req = req.map(|b| Limited::new(b, max).map_err(BodyError).boxed_unsync());
        self.inner.call(req).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tower::ServiceExt;

    fn collecting() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|req: Request<Body>| async move {
            let status = match req.into_body().collect().await {
                Ok(_) => 200,
                Err(_) => 502,
            };
            let mut rsp = Response::new(crate::body::empty());
            *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, ProxyError>(rsp)
        })
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_413() {
        let svc = BodyLimitLayer::new(4).layer(collecting());
        let req = Request::builder()
            .header("content-length", "5")
            .body(crate::body::full("12345"))
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 413);
        let req = Request::builder()
            .header("content-length", "4")
            .body(crate::body::full("1234"))
            .unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_limit_errors() {
        let svc = BodyLimitLayer::new(4).layer(collecting());
        let chunks = futures::stream::iter(
            ["ab", "cd", "ef"].map(|s| Ok::<_, BodyError>(http_body::Frame::data(Bytes::from(s)))),
        );
        let body = http_body_util::StreamBody::new(chunks).boxed_unsync();
        let rsp = svc.oneshot(Request::new(body)).await.unwrap();
        assert_eq!(rsp.status(), 502, "the inner service saw the body fail");
    }
}
