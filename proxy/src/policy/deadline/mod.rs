//! Deadline propagation across hops, so work is cancelled everywhere once
//! the original caller has given up.
//!
//! A caller states its remaining budget in `grpc-timeout` (gRPC) or the
//! mesh header `x-sane-deadline-ms` (milliseconds left, for any HTTP).
//! [`Deadline`], above the retries, turns the smaller of that and the
//! route's timeout into one [`RequestDeadline`] and fails the request with
//! 504 `UT` when the caller's budget runs out, dropping the upstream
//! exchange. [`Propagate`], right above the endpoint, rewrites both headers
//! on every attempt with the time actually left (minus time spent in
//! retries and queues), so the next proxy and the application see a
//! shrinking budget rather than the original one.
//!
//! A client that disconnects cancels the same way: the server drops the
//! request's future, and with it everything below (timers, retries, the
//! upstream stream), since no layer spawns the exchange off the request's
//! task. Only mirrored copies run detached, by design.

mod error;
mod layer;
mod propagate;

pub use self::error::DeadlineExceeded;
pub use self::layer::{DeadlineLayer, PropagateLayer};
pub use self::propagate::Propagate;

use crate::body::Body;
use crate::error::ProxyError;
use crate::policy::timeout::RequestTimeout;
use crate::policy::PolicyFuture;
use futures::future::{self, Either, FutureExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The mesh header carrying the caller's remaining budget in milliseconds.
pub const DEADLINE_HEADER: &str = "x-sane-deadline-ms";
// Both as parsed names: looking one up by `&str` parses it every time.
const DEADLINE: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Budgets beyond this are treated as this (a day is "no deadline").
const MAX_BUDGET: Duration = Duration::from_secs(86_400);

/// When the request must be done: the caller's deadline or the route's
/// timeout, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDeadline {
    /// The instant.
    pub at: Instant,
    /// The budget it was computed from.
    pub budget: Duration,
}

/// Establishes the request's [`RequestDeadline`] and enforces the caller's.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

// === impl Deadline ===

impl<S> tower::Service<Request<Body>> for Deadline<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let caller = caller_budget(req.headers());
        let route = req.extensions().get::<RequestTimeout>().map(|t| t.0);
        let budget = match (caller, route) {
            (Some(c), Some(r)) => c.min(r),
            (c, r) => match c.or(r) {
                Some(b) => b,
                None => return Either::Left(self.inner.call(req)),
            },
        };
        let now = Instant::now();
        req.extensions_mut().insert(RequestDeadline {
            at: now + budget,
            budget,
        });
        let Some(caller) = caller else {
            // The route's timeout is enforced by the timeout layer.
            return Either::Left(self.inner.call(req));
        };
        if caller.is_zero() {
            return Either::Right(future::ready(Err(DeadlineExceeded(caller).into())).boxed());
        }
        let fut = self.inner.call(req);
        Either::Right(
            async move {
                match tokio::time::timeout_at(now + caller, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(DeadlineExceeded(caller).into()),
                }
            }
            .boxed(),
        )
    }
}

/// The smaller budget the caller stated, if any; malformed values are
/// ignored (as gRPC servers do).
pub fn caller_budget(h: &HeaderMap) -> Option<Duration> {
    let grpc = h
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let mesh = h
        .get(DEADLINE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let b = match (grpc, mesh) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(b.min(MAX_BUDGET))
}

/// Parses `grpc-timeout`: up to 8 digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as `grpc-timeout`, in the finest unit that fits 8 digits.
pub fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let text = if d.as_micros() <= MAX {
        format!("{}u", d.as_micros().max(1))
    } else if d.as_millis() <= MAX {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", (d.as_secs() as u128).min(MAX))
    };
    HeaderValue::from_str(&text).expect("digits and a unit")
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.contains_key(GRPC_TIMEOUT) || crate::protocol::http::is_grpc(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::timeout::PerTryTimeout;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;

    /// Deadline, then `gap` of paused time (a stand-in for retries and
    /// queues), then Propagate, then the mock.
    fn stack(gap: Duration) -> (BoxedSvc, mock::Handle<Request<Body>, Response<Body>>) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        // Boxed first: an async block over the mock's own future types trips
        // a higher-ranked lifetime limitation of rustc.
        let below = BoxedSvc::new(PropagateLayer.layer(svc.map_err(mock_error as fn(_) -> _)));
        let delayed = tower::service_fn(move |req: Request<Body>| {
            let below = below.clone();
            async move {
                tokio::time::sleep(gap).await;
                below.oneshot(req).await
            }
        });
        (BoxedSvc::new(DeadlineLayer.layer(delayed)), handle)
    }

    fn mock_error(_: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
        ProxyError::Draining
    }

    fn req(headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder();
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_hop_sees_the_time_actually_left() {
        let (svc, mut handle) = stack(Duration::from_millis(300));
        let grpc = req(&[("grpc-timeout", "2S"), ("content-type", "application/grpc")]);
        let call = tokio::spawn(svc.clone().oneshot(grpc));
        let (r, send) = handle.next_request().await.unwrap();
        assert_eq!(r.headers()[DEADLINE_HEADER], "1700");
        assert_eq!(r.headers()["grpc-timeout"], "1700000u");
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());

        // The route's timeout propagates too, and the smaller one wins.
        let mut http = req(&[(DEADLINE_HEADER, "5000")]);
        http.extensions_mut()
            .insert(RequestTimeout(Duration::from_secs(1)));
        let call = tokio::spawn(svc.oneshot(http));
        let (r, send) = handle.next_request().await.unwrap();
        assert_eq!(r.headers()[DEADLINE_HEADER], "700");
        assert!(r.headers().get("grpc-timeout").is_none());
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
    }

    /// Sets its flag when the exchange holding it is dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_cancels_the_exchange() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let hanging = tower::service_fn(move |_req: Request<Body>| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                future::pending::<Result<Response<Body>, ProxyError>>().await
            }
        });
        let svc = DeadlineLayer.layer(hanging);
        let call = tokio::spawn(svc.oneshot(req(&[(DEADLINE_HEADER, "250")])));
        tokio::time::advance(Duration::from_millis(251)).await;
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(
            err,
            ProxyError::DeadlineExceeded { budget_ms: 250 }
        ));
        assert_eq!(err.to_response().status(), 504);
        assert_eq!(err.response_flag(), "UT");
        // The upstream exchange was dropped with the request.
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_is_not_sent() {
        let (svc, mut handle) = stack(Duration::ZERO);
        let err = svc.clone().oneshot(req(&[("grpc-timeout", "0m")])).await;
        assert!(matches!(
            err,
            Err(ProxyError::DeadlineExceeded { budget_ms: 0 })
        ));
        // Time spent above the endpoint can use it all up, too.
        let (svc2, mut handle2) = stack(Duration::from_millis(100));
        let err = svc2.oneshot(req(&[(DEADLINE_HEADER, "100")])).await;
        assert!(err.is_err());
        for h in [&mut handle, &mut handle2] {
            let next = futures::FutureExt::now_or_never(h.next_request());
            assert!(!matches!(next, Some(Some(_))));
        }
        drop(svc);
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_caps_the_propagated_budget() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = PropagateLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let mut r = req(&[]);
        r.extensions_mut().insert(RequestDeadline {
            at: Instant::now() + Duration::from_secs(3),
            budget: Duration::from_secs(3),
        });
        r.extensions_mut()
            .insert(PerTryTimeout(Duration::from_millis(400)));
        let call = tokio::spawn(svc.oneshot(r));
        let (r, send) = handle.next_request().await.unwrap();
        assert_eq!(r.headers()[DEADLINE_HEADER], "400");
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_deadline_headers_are_untouched() {
        let (svc, mut handle) = stack(Duration::ZERO);
        let call = tokio::spawn(svc.oneshot(req(&[("grpc-timeout", "soon")])));
        let (r, send) = handle.next_request().await.unwrap();
        assert!(r.headers().get(DEADLINE_HEADER).is_none());
        assert_eq!(r.headers()["grpc-timeout"], "soon");
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
    }

    #[test]
    fn grpc_timeout_round_trips() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("999999999m"), None, "9 digits");
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(1500),
            Duration::from_secs(500),
            Duration::from_secs(86_400),
        ] {
            let text = encode_grpc_timeout(d);
            assert_eq!(
                parse_grpc_timeout(text.to_str().unwrap()),
                Some(d),
                "{text:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(DEADLINE_HEADER, "999999999999".parse().unwrap());
        assert_eq!(caller_budget(&h), Some(MAX_BUDGET));
    }
}
