//! One span per outbound attempt.
//!
//! Sits below retry, so every attempt (the first try and each retry, and
//! mirror copies) gets its own child of the hop's outbound span, and the
//! upstream sees that attempt's span as its parent.

use crate::body::Body;
use crate::error::{ProxyError, RESPONSE_FLAGS_HEADER};
use crate::trace::{HopKind, SpanOutcome, TraceHop};
use futures::future::BoxFuture;
use http::{Request, Response};
use opentelemetry::KeyValue;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tower::{Layer, Service};

/// Adds [`Attempt`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptLayer;

/// Writes the attempt's trace context upstream and records its span.
#[derive(Clone, Debug)]
pub struct Attempt<S> {
    inner: S,
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Attempt { inner }
    }
}

impl<S> Service<Request<Body>> for Attempt<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(hop) = req.extensions().get::<TraceHop>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let (ctx, n) = hop.next_attempt();
        ctx.inject(req.headers_mut());
        if !hop.recording() {
            return Box::pin(self.inner.call(req));
        }
        let start = SystemTime::now();
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let authority = crate::protocol::http::authority_text(&req).unwrap_or_default();
        let version = format!("{:?}", req.version());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let (status, flags) = match &result {
                Ok(rsp) => (
                    rsp.status().as_u16(),
                    (rsp.headers().get(RESPONSE_FLAGS_HEADER))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string(),
                ),
                Err(e) => (e.status().as_u16(), e.response_flag().to_string()),
            };
            let outcome = SpanOutcome {
                method: &method,
                path: &path,
                authority: &authority,
                status,
                flags: &flags,
                protocol_version: &version,
                ..Default::default()
            };
            let extra = vec![KeyValue::new("sane.attempt", i64::from(n))];
            hop.record(HopKind::Attempt, &ctx, start, &outcome, extra);
            result
        })
    }
}
