//! The gateway's errors: requests it answers itself at the edge, a
//! configuration it cannot load, and why it could not start.

use crate::body;
use crate::error::{StartError, RESPONSE_FLAGS_HEADER};
use crate::Body;
use http::{header, HeaderValue, Response, StatusCode};
use std::time::Duration;

/// A request the gateway answers itself instead of sending into the mesh.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// No configured host matches the request's `Host`.
    #[error("no gateway host {host:?}")]
    UnknownHost {
        /// The host the client asked for.
        host: String,
    },
    /// The host is known but none of its routes matches.
    #[error("no route of host {host:?} matches {method} {path}")]
    NoRoute {
        /// The matched host entry.
        host: String,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The request names a host other than the one the TLS handshake (SNI,
    /// client certificate) was done for.
    #[error("host {host:?} is not served on a connection set up for {sni:?}")]
    Misdirected {
        /// The host the request names.
        host: String,
        /// The host the handshake chose (empty: none).
        sni: String,
    },
    /// Over the gateway's request rate.
    #[error("rate limit exceeded; retry after {retry_after:?}")]
    RateLimited {
        /// When a token will be available again.
        retry_after: Duration,
    },
    /// The declared body is larger than allowed.
    #[error("request body of {length} bytes is over the limit of {limit}")]
    BodyTooLarge {
        /// Declared `content-length`.
        length: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The request is malformed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
}

/// A gateway configuration that cannot be loaded; names the field and host.
#[derive(Debug, thiserror::Error)]
#[error("{field} (host {host:?}): {reason}")]
pub struct GatewayConfigError {
    /// Field path, e.g. `gateway.hosts[1].tls`.
    pub field: String,
    /// The host the field belongs to (empty if none).
    pub host: String,
    /// What is wrong.
    pub reason: String,
}

/// Why `sane-proxy gateway` could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    /// The bootstrap has no `gateway` section.
    #[error("{path}: gateway: required in gateway mode")]
    NotConfigured {
        /// The config file.
        path: String,
    },
    /// The proxy part (admin, identity, xDS, mesh config) failed.
    #[error(transparent)]
    Proxy(#[from] StartError),
    /// The gateway section cannot be loaded.
    #[error("{path}: {source}")]
    Config {
        /// The config file.
        path: String,
        /// The field at fault.
        #[source]
        source: GatewayConfigError,
    },
    /// Registering the gateway's metrics failed.
    #[error("registering gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

// === impl EdgeError ===

impl EdgeError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::UnknownHost { .. } | EdgeError::NoRoute { .. } => StatusCode::NOT_FOUND,
            EdgeError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            EdgeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The Envoy-style response flag.
    pub fn response_flag(&self) -> &'static str {
        match self {
            EdgeError::UnknownHost { .. }
            | EdgeError::NoRoute { .. }
            | EdgeError::Misdirected { .. } => "NR",
            EdgeError::RateLimited { .. } => "RL",
            EdgeError::BodyTooLarge { .. } | EdgeError::BadRequest { .. } => "DPE",
        }
    }

    /// The metric label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            EdgeError::UnknownHost { .. } => "unknown_host",
            EdgeError::NoRoute { .. } => "no_route",
            EdgeError::Misdirected { .. } => "misdirected",
            EdgeError::RateLimited { .. } => "rate_limited",
            EdgeError::BodyTooLarge { .. } => "body_too_large",
            EdgeError::BadRequest { .. } => "bad_request",
        }
    }

    /// The response the client gets: status, response flag, the reason as
    /// text, and `Retry-After` (whole seconds, at least 1) when rate limited.
    pub fn to_response(&self) -> Response<Body> {
        let mut rsp = Response::new(body::full(format!("{self}\n")));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(
            RESPONSE_FLAGS_HEADER,
            HeaderValue::from_static(self.response_flag()),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let EdgeError::RateLimited { retry_after } = self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_rounds_retry_after_up() {
        let rsp = EdgeError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .to_response();
        assert_eq!(rsp.status(), 429);
        assert_eq!(rsp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "RL");
        let rsp = EdgeError::RateLimited {
            retry_after: Duration::from_millis(10),
        }
        .to_response();
        assert_eq!(rsp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn unknown_host_is_404() {
        let e = EdgeError::UnknownHost { host: "x".into() };
        assert_eq!(e.to_response().status(), 404);
        assert_eq!(e.response_flag(), "NR");
    }
}
