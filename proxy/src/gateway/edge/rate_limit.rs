//! Local rate limit: one token bucket for the whole gateway; a request
//! without a token gets 429 with `Retry-After`, before any other work.
//!
//! A hand-written bucket (a few lines) rather than `governor`: it runs on
//! tokio's clock, so its tests use paused time like every other policy.

use crate::error::ProxyError;
use crate::gateway::error::EdgeError;
use crate::Body;
use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use prometheus::IntCounter;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

/// Applies a [`TokenBucket`] (none: unlimited).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    bucket: Option<Arc<TokenBucket>>,
    limited: Option<IntCounter>,
}

/// The service [`RateLimitLayer`] builds.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Option<Arc<TokenBucket>>,
    limited: Option<IntCounter>,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(per_second.max(1)),
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.tokens) / self.rate))
        }
    }
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// Limits with `bucket`, or not at all.
    pub fn new(bucket: Option<Arc<TokenBucket>>) -> Self {
        Self {
            bucket,
            limited: None,
        }
    }

    /// Counts every limited request in `counter`.
    pub fn counting(mut self, counter: IntCounter) -> Self {
        self.limited = Some(counter);
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            limited: self.limited.clone(),
        }
    }
}

// === impl RateLimit ===

impl<S> Service<Request<Body>> for RateLimit<S>
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
        if let Some(bucket) = &self.bucket {
            if let Err(retry_after) = bucket.try_take() {
                if let Some(c) = &self.limited {
                    c.inc();
                }
                let rsp = EdgeError::RateLimited { retry_after }.to_response();
                return futures::future::ready(Ok(rsp)).boxed();
            }
        }
        self.inner.call(req).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn ok_svc() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_429_with_retry_after_then_recovers() {
        let bucket = Arc::new(TokenBucket::new(2, 3));
        let limited_total = IntCounter::new("limited", "limited").unwrap();
        let svc = RateLimitLayer::new(Some(bucket))
            .counting(limited_total.clone())
            .layer(ok_svc());
        let call = || {
            let svc = svc.clone();
            async move {
                svc.oneshot(Request::new(crate::body::empty()))
                    .await
                    .unwrap()
            }
        };
        for _ in 0..3 {
            assert_eq!(call().await.status(), 200);
        }
        let limited = call().await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "1");
        // Half a second at 2/s refills one token.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(call().await.status(), 200);
        assert_eq!(call().await.status(), 429);
        // Refill never exceeds the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(call().await.status(), 200);
        }
        assert_eq!(call().await.status(), 429);
        assert_eq!(limited_total.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_time_to_the_next_token() {
        let b = TokenBucket::new(4, 1);
        b.try_take().unwrap();
        let wait = b.try_take().unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        tokio::time::advance(Duration::from_millis(100)).await;
        let wait = b.try_take().unwrap_err();
        assert!(wait <= Duration::from_millis(150), "{wait:?}");
    }

    #[tokio::test]
    async fn no_bucket_means_no_limit() {
        let svc = RateLimitLayer::new(None).layer(ok_svc());
        for _ in 0..100 {
            let rsp = svc
                .clone()
                .oneshot(Request::new(crate::body::empty()))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
        }
    }
}
