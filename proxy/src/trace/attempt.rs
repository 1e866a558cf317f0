//! One span per outbound attempt.
//!
//! Sits below retry, so every attempt (the first try and each retry, and
//! mirror copies) gets its own child of the hop's outbound span, and the
//! upstream sees that attempt's span as its parent.
//!
//! An attempt's span ends with its response *body* (last frame, failure,
//! or drop), so its duration covers the whole transfer, not just the wait
//! for the response headers; an attempt that fails before any response
//! ends at once.

use crate::body::Body;
use crate::error::{ProxyError, RESPONSE_FLAGS_HEADER};
use crate::observe::body::{BodyEnd, ObservedBody};
use crate::trace::context::TraceContext;
use crate::trace::{HopKind, SpanOutcome, TraceHop};
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
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
            let rsp = match fut.await {
                Ok(rsp) => rsp,
                Err(e) => {
                    let span = AttemptSpan {
                        hop,
                        ctx,
                        n,
                        start,
                        method,
                        path,
                        authority,
                        version,
                        status: e.status().as_u16(),
                        flags: e.response_flag().to_string(),
                    };
                    span.record(None);
                    return Err(e);
                }
            };
            let span = AttemptSpan {
                hop,
                ctx,
                n,
                start,
                method,
                path,
                authority,
                version,
                status: rsp.status().as_u16(),
                flags: (rsp.headers().get(RESPONSE_FLAGS_HEADER))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string(),
            };
            Ok(rsp.map(|b| {
                ObservedBody::new(b, move |outcome| span.record(Some(outcome.end))).boxed_unsync()
            }))
        })
    }
}

/// One attempt's span, waiting for the end of its response.
struct AttemptSpan {
    hop: TraceHop,
    ctx: TraceContext,
    n: u32,
    start: SystemTime,
    method: String,
    path: String,
    authority: String,
    version: String,
    status: u16,
    flags: String,
}

impl AttemptSpan {
    /// Records the span, ending now; `end` is how the response body ended
    /// (`None`: the attempt failed without a response).
    fn record(self, end: Option<BodyEnd>) {
        let flags = match (end, self.flags.as_str()) {
            (Some(BodyEnd::Failed), "-") => "UR",
            (Some(BodyEnd::Dropped), "-") => "DC",
            (_, flags) => flags,
        };
        let outcome = SpanOutcome {
            method: &self.method,
            path: &self.path,
            authority: &self.authority,
            status: self.status,
            flags,
            protocol_version: &self.version,
            ..Default::default()
        };
        let extra = vec![KeyValue::new("sane.attempt", i64::from(self.n))];
        self.hop
            .record(HopKind::Attempt, &self.ctx, self.start, &outcome, extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::export::{SpanQueue, TraceMetrics};
    use crate::trace::{Active, TelemetrySettings};
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::SpanData;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    type BodyTx = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, BodyError>>;
    use crate::body::BodyError;

    /// A recording hop whose spans land in the returned receiver.
    fn hop() -> (TraceHop, mpsc::Receiver<SpanData>) {
        let metrics = TraceMetrics::register(&prometheus::Registry::new()).unwrap();
        let (queue, rx) = SpanQueue::capture(metrics);
        let active = Arc::new(Active {
            settings: Arc::new(TelemetrySettings::default()),
            spans: Some(queue),
            sample_ratio: 1.0,
            access_log: None,
        });
        (active.start_hop(&http::HeaderMap::new()), rx)
    }

    /// An upstream answering 200 with a body the test streams (one body
    /// sender per call, in order).
    fn upstream() -> (crate::stack::HttpSvc, Arc<Mutex<Vec<BodyTx>>>) {
        let senders = Arc::new(Mutex::new(Vec::new()));
        let s = senders.clone();
        let svc = tower::service_fn(move |_: Request<Body>| {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            s.lock().unwrap().push(tx);
            async move { Ok::<_, ProxyError>(Response::new(StreamBody::new(rx).boxed_unsync())) }
        });
        (crate::stack::HttpSvc::new(svc), senders)
    }

    fn request(hop: &TraceHop) -> Request<Body> {
        let mut req = Request::get("http://echo/")
            .body(crate::body::empty())
            .unwrap();
        req.extensions_mut().insert(hop.clone());
        req
    }

    fn attempt_number(span: &SpanData) -> Option<i64> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "sane.attempt")
            .and_then(|kv| match kv.value {
                Value::I64(n) => Some(n),
                _ => None,
            })
    }

    #[tokio::test]
    async fn an_attempt_span_ends_with_the_response_body_and_each_retry_has_its_own() {
        let (hop, mut spans) = hop();
        let (svc, senders) = upstream();
        let svc = AttemptLayer.layer(svc);

        // First attempt: headers in, body still streaming: no span yet.
        let rsp = svc.clone().oneshot(request(&hop)).await.unwrap();
        assert!(spans.try_recv().is_err(), "the body has not ended");
        let tx = senders.lock().unwrap()[0].clone();
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .unwrap();
        let mut body = rsp.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(spans.try_recv().is_err(), "the body has not ended");
        let before_end = std::time::SystemTime::now();
        drop(tx);
        senders.lock().unwrap().clear();
        assert!(body.frame().await.is_none());
        let first = spans.try_recv().expect("recorded when the body ended");
        assert!(first.end_time >= before_end, "the span covers the body");
        assert_eq!(attempt_number(&first), Some(1));
        assert_eq!(
            first.parent_span_id.to_string(),
            hop.context.span_id.to_string()
        );

        // A retry of the same request: a second, separate attempt span.
        let rsp = svc.clone().oneshot(request(&hop)).await.unwrap();
        senders.lock().unwrap().clear();
        let _ = rsp.into_body().collect().await.unwrap();
        let second = spans.try_recv().expect("the retry's span");
        assert_eq!(attempt_number(&second), Some(2));
        assert_ne!(first.span_context.span_id(), second.span_context.span_id());
        assert_eq!(second.parent_span_id, first.parent_span_id);
        assert!(spans.try_recv().is_err(), "one span per attempt");
    }
}
