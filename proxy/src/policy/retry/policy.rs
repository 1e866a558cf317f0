//! A rule's retry policy, compiled: which outcomes are retried, whether the
//! request is safe to send again, and how long to back off.

use crate::body::Body;
use crate::error::ProxyError;
use http::{Method, Response};
use rand::Rng;
use sane_xds_proto as proto;
use std::time::Duration;

/// The compiled retry policy of one route rule.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Retry methods that are not idempotent too.
    pub retry_non_idempotent: bool,
    /// Largest body kept for replay.
    pub max_body_bytes: usize,
    on: Conditions,
    status_codes: Vec<u16>,
    grpc_codes: Vec<u32>,
    base: Duration,
    max: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Conditions {
    connect_failure: bool,
    refused_stream: bool,
    reset: bool,
    server_error: bool,
    gateway_error: bool,
}

/// Why an attempt may be retried, which decides for which methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retryable {
    /// The upstream never saw the request (connect failure, refused
    /// stream): safe to send again whatever the method.
    NotSent,
    /// The upstream may have acted on it: only idempotent methods, unless
    /// the rule opts in.
    MaybeProcessed,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// Compiles a validated policy (unknown condition names are ignored;
    /// validation rejects them).
    pub fn compile(p: &proto::RetryPolicy) -> Self {
        let (names, status_codes) = p.conditions();
        let mut on = Conditions::default();
        let mut grpc_codes = Vec::new();
        for n in names {
            match n {
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                grpc => grpc_codes.extend(proto::grpc_code(grpc)),
            }
        }
        Self {
            attempts: p.attempts_or_default(),
            per_try_timeout: (p.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(p.per_try_timeout_ms)),
            retry_non_idempotent: p.retry_non_idempotent,
            max_body_bytes: p.max_body_bytes() as usize,
            on,
            status_codes: status_codes
                .iter()
                .filter_map(|s| u16::try_from(*s).ok())
                .collect(),
            grpc_codes,
            base: Duration::from_millis(p.base_interval_ms()),
            max: Duration::from_millis(p.max_interval_ms()),
        }
    }

    /// Whether an attempt's result matches a retry condition, and how safe
    /// a retry is.
    pub fn classify(&self, result: &Result<Response<Body>, ProxyError>) -> Option<Retryable> {
        let on = &self.on;
        match result {
            Ok(rsp) => {
                let s = rsp.status().as_u16();
                let grpc = rsp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                let hit = self.status_codes.contains(&s)
                    || (on.server_error && s >= 500)
                    || (on.gateway_error && (502..=504).contains(&s))
                    || grpc.is_some_and(|g| self.grpc_codes.contains(&g));
                hit.then_some(Retryable::MaybeProcessed)
            }
            Err(e) => match e {
                ProxyError::ConnectFailed { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Tls { .. }
                | ProxyError::Handshake { .. } => {
                    (on.connect_failure || on.server_error || on.gateway_error)
                        .then_some(Retryable::NotSent)
                }
                ProxyError::UpstreamReset { source, .. } if is_refused_stream(&**source) => {
                    (on.refused_stream || on.reset || on.server_error || on.gateway_error)
                        .then_some(Retryable::NotSent)
                }
                // A per-try timeout (the overall timeout sits above retries).
                ProxyError::UpstreamReset { .. } | ProxyError::Timeout { .. } => {
                    (on.reset || on.server_error || on.gateway_error)
                        .then_some(Retryable::MaybeProcessed)
                }
                _ => None,
            },
        }
    }

    /// Whether `method` may be retried when the upstream may have acted.
    pub fn may_repeat(&self, method: &Method) -> bool {
        self.retry_non_idempotent || is_idempotent(method)
    }

    /// The wait before retry number `retry` (1 for the first): drawn
    /// uniformly from zero to `base × 2^(retry-1)`, capped at the maximum
    /// ("full jitter", so retries of many clients do not line up).
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        ceiling.mul_f64(rng.random::<f64>())
    }
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// HTTP/2 `REFUSED_STREAM` guarantees the server did not process the
/// stream (RFC 9113 section 8.7).
fn is_refused_stream(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy(on: &[&str], codes: &[u32]) -> RetryPolicy {
        RetryPolicy::compile(&proto::RetryPolicy {
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            status_codes: codes.to_vec(),
            base_interval_ms: 10,
            max_interval_ms: 100,
            ..Default::default()
        })
    }

    fn status(s: u16) -> Result<Response<Body>, ProxyError> {
        let mut r = Response::new(crate::body::empty());
        *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
        Ok(r)
    }

    fn grpc(code: u32) -> Result<Response<Body>, ProxyError> {
        let mut r = Response::new(crate::body::empty());
        r.headers_mut().insert("grpc-status", code.into());
        Ok(r)
    }

    fn refused() -> Result<Response<Body>, ProxyError> {
        Err(ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })
    }

    #[test]
    fn conditions_select_statuses_grpc_codes_and_errors() {
        let p = policy(&["gateway-error"], &[409]);
        assert_eq!(p.classify(&status(503)), Some(Retryable::MaybeProcessed));
        assert_eq!(p.classify(&status(409)), Some(Retryable::MaybeProcessed));
        assert_eq!(p.classify(&status(500)), None);
        assert_eq!(p.classify(&status(200)), None);
        assert_eq!(p.classify(&refused()), Some(Retryable::NotSent));
        assert_eq!(
            p.classify(&Err(ProxyError::Timeout { timeout_ms: 5 })),
            Some(Retryable::MaybeProcessed)
        );
        assert_eq!(
            p.classify(&Err(ProxyError::Overloaded { limit: "x".into() })),
            None,
            "a local limit is never retried"
        );
        let p = policy(&["5xx"], &[]);
        assert!(p.classify(&status(500)).is_some());
        let g = policy(&["unavailable", "resource-exhausted"], &[]);
        assert!(g.classify(&grpc(14)).is_some());
        assert!(g.classify(&grpc(8)).is_some());
        assert!(g.classify(&grpc(13)).is_none());
        assert!(g.classify(&refused()).is_none());
    }

    #[test]
    fn the_default_is_istios() {
        let p = RetryPolicy::compile(&proto::RetryPolicy::default());
        assert_eq!(p.attempts, 2);
        assert!(p.classify(&status(503)).is_some());
        assert!(p.classify(&status(502)).is_none());
        assert!(p.classify(&grpc(1)).is_some(), "cancelled");
        assert_eq!(p.classify(&refused()), Some(Retryable::NotSent));
    }

    #[test]
    fn only_idempotent_methods_repeat_unless_opted_in() {
        let p = policy(&["5xx"], &[]);
        assert!(p.may_repeat(&Method::GET));
        assert!(p.may_repeat(&Method::PUT));
        assert!(!p.may_repeat(&Method::POST));
        assert!(!p.may_repeat(&Method::PATCH));
        let opt_in = RetryPolicy {
            retry_non_idempotent: true,
            ..p
        };
        assert!(opt_in.may_repeat(&Method::POST));
    }

    #[test]
    fn jittered_backoff_stays_within_its_bounds() {
        let p = policy(&[], &[]);
        let mut rng = StdRng::seed_from_u64(42);
        for retry in 1..=8 {
            let ceiling = Duration::from_millis((10u64 << (retry - 1)).min(100));
            let waits: Vec<_> = (0..500).map(|_| p.backoff(retry, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            // Spread over the whole range, not bunched at one end.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "retry {retry}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "retry {retry}");
        }
        assert!(p.backoff(u32::MAX, &mut rng) <= Duration::from_millis(100));
    }
}
