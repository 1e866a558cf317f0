//! Retries: a failed attempt is sent again when the rule's [`RetryPolicy`]
//! says the failure is worth retrying and it is safe to repeat, within three
//! limits: the policy's attempts, the destination's [`RetryBudget`] (so
//! retries cannot multiply load during an outage) and the circuit breaker's
//! `max_retries`. A retry stopped by a limit returns the last failure with
//! response flag `URX`.
//!
//! Each attempt goes down the stack again (circuit breaker, per-try
//! timeout, endpoint), sharing one [`TriedEndpoints`] so the endpoint stage
//! sends retries to endpoints not tried yet. The request body is streamed to
//! the first attempt while a bounded copy is kept ([`ReplayBody`]); a body
//! over the bound is not retried. Each attempt carries `x-sane-attempt`.
//!
//! Backoff sleeps inside the request's future, so a client that gives up
//! (or the overall timeout above) cancels pending retries too.

mod budget;
mod error;
mod layer;
mod policy;

pub use self::budget::RetryBudget;
pub use self::error::RetriesExhausted;
pub use self::layer::RetryLayer;
pub use self::policy::{RetryPolicy, Retryable};

use crate::body::{self, Body};
use crate::cluster::TriedEndpoints;
use crate::error::{add_response_flag, ProxyError};
use crate::policy::circuit_breaker::Breaker;
use crate::policy::replay::ReplayBody;
use crate::policy::PolicyFuture;
use crate::protocol::http as h;
use crate::telemetry::ResilienceMetrics;
use futures::future::Either;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// The attempt number (1 for the first), sent upstream with each attempt.
pub const ATTEMPT_HEADER: &str = "x-sane-attempt";

/// Applies the request's [`RetryPolicy`], if any.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    metrics: ResilienceMetrics,
}

/// What one request's retries need besides the inner service.
struct Limits {
    policy: Arc<RetryPolicy>,
    budget: Option<Arc<RetryBudget>>,
    breaker: Option<Arc<Breaker>>,
    metrics: ResilienceMetrics,
}

// === impl Retry ===

impl<S> Retry<S> {
    /// Wraps `inner`; retries and limits are counted in `metrics`.
    pub fn new(inner: S, metrics: ResilienceMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request<Body>> for Retry<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let budget = req.extensions().get::<Arc<RetryBudget>>().cloned();
        if let Some(b) = &budget {
            // Every request counts towards the budget, retried or not.
            b.deposit();
        }
        let policy = req
            .extensions()
            .get::<Arc<RetryPolicy>>()
            .filter(|p| p.attempts > 0 && !h::is_upgrade(&req))
            .filter(|p| content_length(&req).is_none_or(|n| n <= p.max_body_bytes as u64))
            .cloned();
        let Some(policy) = policy else {
            return Either::Left(self.inner.call(req));
        };
        let limits = Limits {
            policy,
            budget,
            breaker: req.extensions().get::<Arc<Breaker>>().cloned(),
            metrics: self.metrics.clone(),
        };
        // The clone is not ready yet; keep it and send with the ready one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(send_with_retries(inner, req, limits)))
    }
}

async fn send_with_retries<S>(
    mut inner: S,
    req: Request<Body>,
    limits: Limits,
) -> Result<Response<Body>, ProxyError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    let Limits {
        policy,
        budget,
        breaker,
        metrics,
    } = limits;
    let cluster = budget
        .as_ref()
        .map_or("unknown", |b| b.cluster())
        .to_string();
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(TriedEndpoints::default());
    let origin = ReplayBody::new(body, policy.max_body_bytes);
    let mut body = origin.try_replay().expect("a new body is replayable");
    let mut retry_slot = None;
    let mut attempt = 1;
    loop {
        let req = attempt_request(&parts, body.boxed_unsync(), attempt);
        let result = match inner.ready().await {
            Ok(svc) => svc.call(req).await,
            Err(e) => Err(e),
        };
        // A retry's slot is held until its response body ends.
        let result = result.map(|rsp| match retry_slot.take() {
            Some(slot) => rsp.map(|b| body::guarded(b, slot)),
            None => rsp,
        });
        let Some(kind) = policy.classify(&result) else {
            return result;
        };
        if kind == Retryable::MaybeProcessed && !policy.may_repeat(&parts.method) {
            return result;
        }
        let limited = |limit: &'static str, result: Result<Response<Body>, ProxyError>| {
            metrics.retry_limited(&cluster, limit);
            exhausted(result, attempt, limit)
        };
        if attempt > policy.attempts {
            return limited("attempts", result);
        }
        if origin.try_replay().is_none() {
            // Too large or failed: not a limit, the request just cannot be
            // sent again.
            return result;
        }
        if budget.as_ref().is_some_and(|b| !b.try_withdraw()) {
            return limited("budget", result);
        }
        let slot = match breaker.as_ref().map(|b| b.try_retry()).transpose() {
            Ok(slot) => slot,
            Err(_) => {
                metrics.overflow(&cluster, "max_retries");
                return limited("max_retries", result);
            }
        };
        let wait = policy.backoff(attempt, &mut rand::rng());
        tokio::time::sleep(wait).await;
        // The last attempt may have held the body until now.
        let Some(next) = origin.try_replay() else {
            return result;
        };
        drop(result);
        metrics.retry(&cluster);
        tracing::debug!(%cluster, attempt, ?wait, "retrying");
        body = next;
        retry_slot = slot;
        attempt += 1;
    }
}

fn attempt_request(parts: &Parts, body: Body, attempt: u32) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.headers_mut()
        .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
    req
}

fn exhausted(
    result: Result<Response<Body>, ProxyError>,
    attempts: u32,
    limit: &'static str,
) -> Result<Response<Body>, ProxyError> {
    match result {
        Ok(mut rsp) => {
            add_response_flag(rsp.headers_mut(), "URX");
            Ok(rsp)
        }
        Err(last) => Err(RetriesExhausted {
            attempts,
            limit,
            last,
        }
        .into()),
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
