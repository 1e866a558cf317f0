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
//!
//! The attempt's context is written upstream whatever happens to spans;
//! the span's attributes are only gathered when the exporter takes spans
//! ([`TraceHop::begin_span`]: not while it backs off after a failure).

use crate::body::Body;
use crate::error::{ProxyError, RESPONSE_FLAGS_HEADER};
use crate::observe::body::{BodyEnd, ObservedBody};
use crate::trace::context::TraceContext;
use crate::trace::{method_text, version_text, HopKind, SpanOutcome, TraceHop};
use futures::future::{BoxFuture, Either};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use std::borrow::Cow;
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
    /// The stack below as it is when no span is gathered (most requests:
    /// no allocation for them), boxed with the span otherwise.
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(hop) = req.extensions().get::<TraceHop>().cloned() else {
            return Either::Left(self.inner.call(req));
        };
        let (ctx, n) = hop.next_attempt();
        ctx.inject(req.headers_mut());
        if !hop.begin_span() {
            return Either::Left(self.inner.call(req));
        }
        let start = SystemTime::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let authority = crate::protocol::http::authority_text(&req).unwrap_or_default();
        let version = req.version();
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
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
                        flags: Cow::Borrowed(e.response_flag()),
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
                flags: match rsp.headers().get(RESPONSE_FLAGS_HEADER) {
                    None => Cow::Borrowed("-"),
                    Some(v) => Cow::Owned(v.to_str().unwrap_or("-").to_string()),
                },
            };
            Ok(rsp.map(|b| {
                ObservedBody::new(b, move |outcome| span.record(Some(outcome.end))).boxed_unsync()
            }))
        }))
    }
}

/// One attempt's span, waiting for the end of its response.
struct AttemptSpan {
    hop: TraceHop,
    ctx: TraceContext,
    n: u32,
    start: SystemTime,
    method: Method,
    path: String,
    authority: String,
    version: Version,
    status: u16,
    flags: Cow<'static, str>,
}

impl AttemptSpan {
    /// Records the span, ending now; `end` is how the response body ended
    /// (`None`: the attempt failed without a response).
    fn record(self, end: Option<BodyEnd>) {
        let unflagged = self.flags == "-";
        let flags = match end {
            Some(BodyEnd::Failed) if unflagged => Cow::Borrowed("UR"),
            Some(BodyEnd::Dropped) if unflagged => Cow::Borrowed("DC"),
            _ => self.flags,
        };
        let outcome = SpanOutcome {
            method: method_text(&self.method),
            path: self.path.into(),
            authority: self.authority.into(),
            status: self.status,
            flags,
            protocol_version: version_text(self.version),
            attempt: Some(self.n),
            ..Default::default()
        };
        self.hop
            .record(HopKind::Attempt, &self.ctx, self.start, outcome);
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
    fn upstream() -> (crate::svc::HttpSvc, Arc<Mutex<Vec<BodyTx>>>) {
        let senders = Arc::new(Mutex::new(Vec::new()));
        let s = senders.clone();
        let svc = tower::service_fn(move |_: Request<Body>| {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            s.lock().unwrap().push(tx);
            async move { Ok::<_, ProxyError>(Response::new(StreamBody::new(rx).boxed_unsync())) }
        });
        (crate::svc::HttpSvc::new(svc), senders)
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

    #[tokio::test]
    async fn while_the_exporter_backs_off_attempts_propagate_but_record_nothing() {
        let (hop, mut spans) = hop();
        let queue = hop.active().spans.clone().expect("export configured");
        queue.health().set_backing_off(true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let svc = AttemptLayer.layer(tower::service_fn(move |req: Request<Body>| {
            s.lock()
                .unwrap()
                .push(req.headers().get("traceparent").cloned());
            async move { Ok::<_, ProxyError>(Response::new(crate::body::empty())) }
        }));

        let rsp = svc.clone().oneshot(request(&hop)).await.unwrap();
        let _ = rsp.into_body().collect().await.unwrap();
        let sent = seen.lock().unwrap()[0]
            .clone()
            .expect("traceparent upstream");
        let trace = hop.context.trace_id.to_string();
        assert!(sent.to_str().unwrap().contains(&trace), "{sent:?}");
        assert!(sent.to_str().unwrap().ends_with("-01"), "still sampled");
        assert!(spans.try_recv().is_err(), "no span while backing off");

        // Recovered: the next attempt's span is recorded (attempt 2).
        queue.health().set_backing_off(false);
        let rsp = svc.oneshot(request(&hop)).await.unwrap();
        let _ = rsp.into_body().collect().await.unwrap();
        let span = spans.try_recv().expect("recorded once recovered");
        assert_eq!(attempt_number(&span), Some(2));
    }
}
