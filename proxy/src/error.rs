//! The proxy's errors, classified once.
//!
//! Every failure on the data path becomes a [`ProxyError`]. Each variant knows
//! which side caused it ([`ErrorSource`]), whether another attempt could
//! succeed, and which status and Envoy-style response flag it maps to. One
//! function, [`ProxyError::to_response`], turns it into the response the
//! client sees, so retry, circuit breaking, logs and metrics all agree.

use crate::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;

/// Header carrying the response flags of a proxy-generated response.
pub const RESPONSE_FLAGS_HEADER: &str = "x-sane-response-flags";

/// Which side of the proxy an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client that sent the request.
    Downstream,
    /// The endpoint the request was sent to.
    Upstream,
    /// The proxy itself (configuration, limits).
    Internal,
}

/// A failure on the data path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No service is known for the request's authority.
    #[error("no route for authority {authority:?}")]
    NoRoute {
        /// The authority the client asked for.
        authority: String,
    },
    /// The service is known but no route rule matched the request.
    #[error("no route rule of {route:?} matches {method} {path}")]
    NoRuleMatched {
        /// Route name.
        route: String,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The request is malformed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The request carries more header fields than the listener allows.
    #[error("request has {count} header fields; the limit is {limit}")]
    TooManyHeaders {
        /// Header fields in the request (each value counts).
        count: usize,
        /// The limit (`http.max_request_headers`).
        limit: usize,
    },
    /// The endpoint's response broke HTTP (malformed, or more header
    /// fields than `http.max_response_headers`).
    #[error("upstream {addr} sent an invalid response: {reason}")]
    UpstreamProtocol {
        /// Endpoint address.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
    /// The destination has no endpoint to send to.
    #[error("no healthy endpoint for {cluster}")]
    NoHealthyUpstream {
        /// Cluster (`service.namespace:port`).
        cluster: String,
    },
    /// Connecting to the endpoint failed.
    #[error("connect to {addr} failed: {source}")]
    ConnectFailed {
        /// Endpoint address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the endpoint took too long.
    #[error("connect to {addr} timed out after {timeout_ms}ms")]
    ConnectTimeout {
        /// Endpoint address.
        addr: SocketAddr,
        /// The connect timeout.
        timeout_ms: u64,
    },
    /// Mutual TLS with the endpoint failed (handshake, certificate, identity).
    #[error("mutual TLS with {addr} failed: {source}")]
    Tls {
        /// Endpoint address.
        addr: SocketAddr,
        /// What failed, naming the certificate or identity problem (boxed:
        /// it is large, and every `Result<_, ProxyError>` would pay for it).
        #[source]
        source: Box<crate::tls::TlsError>,
    },
    /// The HTTP handshake with the endpoint failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Endpoint address.
        addr: SocketAddr,
        /// The protocol error (hyper's for HTTP/1.1, h2's for HTTP/2).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The endpoint reset or closed the connection before responding.
    #[error("upstream {addr} reset before responding: {source}")]
    UpstreamReset {
        /// Endpoint address.
        addr: SocketAddr,
        /// The protocol error (hyper's for HTTP/1.1, h2's for HTTP/2).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request took longer than its timeout.
    #[error("request timed out after {timeout_ms}ms")]
    Timeout {
        /// The timeout that elapsed.
        timeout_ms: u64,
    },
    /// A limit was reached; the request was shed instead of queued.
    #[error("overloaded: {limit}")]
    Overloaded {
        /// Which limit.
        limit: String,
    },
    /// The proxy is draining and takes no new requests.
    #[error("proxy is draining")]
    Draining,
    /// The request body stopped, or arrived slower than the listener's
    /// minimum rate (`request_body_timeout`, `request_body_min_rate`).
    #[error("request body timeout: the body stopped or arrived too slowly")]
    RequestBodyTimeout,
    /// An authorization policy denied the caller (inbound).
    #[error("denied by {policy} for {principal} ({operation})")]
    Unauthorized {
        /// The deciding policy (`namespace/name`), or why no policy allowed it.
        policy: String,
        /// The caller's identity, or `unauthenticated`.
        principal: String,
        /// What was asked, e.g. `GET /admin on port 8080`.
        operation: String,
    },
    /// The inbound refused the workload port a connection asked for (not
    /// declared for the local workload, or one of the proxy's own).
    #[error("inbound delivery to port {port} refused: {reason}")]
    InboundPortRefused {
        /// The port asked for (transport header or original destination).
        port: u16,
        /// Why, see [`crate::workload_port::PortRefusal`].
        reason: crate::workload_port::PortRefusal,
    },
    /// The caller's deadline (`grpc-timeout` or `x-sane-deadline-ms`) passed.
    #[error("the caller's deadline of {budget_ms}ms passed")]
    DeadlineExceeded {
        /// The budget the caller gave.
        budget_ms: u64,
    },
    /// A fault policy answered the request instead of sending it.
    #[error("fault injected: {}", fault_text(.status, .grpc_status))]
    FaultAbort {
        /// HTTP status (ignored for gRPC, which answers 200).
        status: u16,
        /// gRPC status, for a trailers-only gRPC answer.
        grpc_status: Option<u32>,
    },
    /// The request failed and the retry policy would have retried it, but a
    /// limit (attempts, budget, `max_retries`) stopped it.
    #[error("{last} (not retried: {limit} after {attempts} attempt(s))")]
    RetryLimit {
        /// Attempts made.
        attempts: u32,
        /// Which limit: `attempts`, `budget` or `max_retries`.
        limit: &'static str,
        /// The failure of the last attempt.
        #[source]
        last: Box<ProxyError>,
    },
}

// === impl ProxyError ===

impl ProxyError {
    /// The error of a request sent to `addr` that failed with `source`
    /// before a response: a response hyper could not parse (malformed, or
    /// over the header count limit) is the upstream's protocol error
    /// (`502 UPE`), anything else a reset (`503 UC`).
    pub fn upstream_failed(addr: SocketAddr, source: hyper::Error) -> Self {
        if source.is_parse() || source.is_parse_too_large() {
            ProxyError::UpstreamProtocol {
                addr,
                reason: source.to_string(),
            }
        } else {
            ProxyError::UpstreamReset {
                addr,
                source: Box::new(source),
            }
        }
    }

    /// Which side caused the error.
    pub fn source_side(&self) -> ErrorSource {
        match self {
            ProxyError::BadRequest { .. }
            | ProxyError::TooManyHeaders { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::RequestBodyTimeout
            | ProxyError::InboundPortRefused { .. } => ErrorSource::Downstream,
            ProxyError::NoRoute { .. }
            | ProxyError::NoRuleMatched { .. }
            | ProxyError::NoHealthyUpstream { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::FaultAbort { .. }
            | ProxyError::Draining => ErrorSource::Internal,
            ProxyError::DeadlineExceeded { .. } => ErrorSource::Downstream,
            ProxyError::RetryLimit { last, .. } => last.source_side(),
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::Timeout { .. } => ErrorSource::Upstream,
        }
    }

    /// Whether sending the same request again (to another endpoint) could
    /// succeed without risk of doing the work twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Tls { .. }
                | ProxyError::Handshake { .. }
        )
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::NoRuleMatched { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unauthorized { .. } | ProxyError::InboundPortRefused { .. } => {
                StatusCode::FORBIDDEN
            }
            ProxyError::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Timeout { .. } | ProxyError::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::FaultAbort {
                grpc_status: Some(_),
                ..
            } => StatusCode::OK,
            ProxyError::FaultAbort { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::RetryLimit { last, .. } => last.status(),
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Envoy-style response flag: `NR` no route, `UH` no healthy
    /// upstream (none, or all ejected), `UF` upstream connection failure,
    /// `UC` upstream connection termination, `UT` upstream timeout or passed
    /// deadline, `UO` overflow (circuit breaker), `FI` fault abort, `URX`
    /// retry limit reached, `DPE` bad downstream request, `SI` shutting down
    /// (draining) or a request body that stopped or dribbled (`408`), `RBAC`
    /// denied by an authorization policy, `IPR` inbound port refused (not a
    /// declared workload port, or the proxy's own), `UPE` upstream protocol
    /// error (a response that breaks HTTP or its limits); `DPE` also marks a
    /// request over the header count limit (`431`). `DI` (fault delay) is added to responses by the fault
    /// policy, never to errors.
    pub fn response_flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::NoRuleMatched { .. } => "NR",
            ProxyError::BadRequest { .. } | ProxyError::TooManyHeaders { .. } => "DPE",
            ProxyError::UpstreamProtocol { .. } => "UPE",
            ProxyError::NoHealthyUpstream { .. } => "UH",
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. } => "UF",
            ProxyError::UpstreamReset { .. } => "UC",
            ProxyError::Timeout { .. } | ProxyError::DeadlineExceeded { .. } => "UT",
            ProxyError::Overloaded { .. } => "UO",
            ProxyError::Draining | ProxyError::RequestBodyTimeout => "SI",
            ProxyError::Unauthorized { .. } => "RBAC",
            ProxyError::InboundPortRefused { .. } => crate::workload_port::REFUSED_FLAG,
            ProxyError::FaultAbort { .. } => "FI",
            ProxyError::RetryLimit { .. } => "URX",
        }
    }

    /// The response the client gets: the status, the flag in
    /// [`RESPONSE_FLAGS_HEADER`], and the reason as a text body.
    ///
    /// A gRPC fault abort is a trailers-only gRPC response instead, so gRPC
    /// clients see the injected status. A [`ProxyError::RetryLimit`] carries
    /// the last attempt's flag too, e.g. `UF,URX`.
    pub fn to_response(&self) -> Response<Body> {
        if let ProxyError::FaultAbort {
            grpc_status: Some(code),
            ..
        } = self
        {
            let mut rsp = Response::new(crate::body::empty());
            let h = rsp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(*code));
            h.insert("grpc-message", HeaderValue::from_static("fault%20injected"));
            h.insert(RESPONSE_FLAGS_HEADER, HeaderValue::from_static("FI"));
            return rsp;
        }
        let mut rsp = Response::new(crate::body::full(format!("{self}\n")));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        if let ProxyError::RetryLimit { last, .. } = self {
            h.insert(
                RESPONSE_FLAGS_HEADER,
                HeaderValue::from_static(last.response_flag()),
            );
        }
        add_response_flag(h, self.response_flag());
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

fn fault_text(status: &u16, grpc_status: &Option<u32>) -> String {
    match grpc_status {
        Some(code) => format!("grpc-status {code}"),
        None => format!("status {status}"),
    }
}

/// Appends `flag` to the response flags in `headers` (comma-separated, as
/// Envoy logs them), so decisions of several layers all stay visible.
pub fn add_response_flag(headers: &mut HeaderMap, flag: &'static str) {
    let joined = match headers.get(RESPONSE_FLAGS_HEADER).map(|v| v.to_str()) {
        Some(Ok(prev)) if !prev.is_empty() && prev != "-" => {
            if prev.split(',').any(|f| f == flag) {
                return;
            }
            HeaderValue::from_str(&format!("{prev},{flag}")).ok()
        }
        _ => None,
    };
    headers.insert(
        RESPONSE_FLAGS_HEADER,
        joined.unwrap_or_else(|| HeaderValue::from_static(flag)),
    );
}

/// Errors that stop the proxy from starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    ReadConfig {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for the schema (names the field).
    #[error("parsing {path}: {source}")]
    ParseConfig {
        /// The file.
        path: String,
        /// The parse error, with the field and position, or the limit
        /// the file is past (size, nesting, aliases).
        #[source]
        source: sane_xds_proto::yaml::YamlError,
    },
    /// A config reload ended without a result (its thread panicked or the
    /// runtime is shutting down); the current config keeps serving.
    #[error("config reload aborted: {0}")]
    ReloadAborted(String),
    /// The config parsed but some values are invalid (names every field).
    #[error("invalid config {path}: {source}")]
    InvalidConfig {
        /// The file.
        path: String,
        /// Every invalid field with its path.
        #[source]
        source: sane_xds_proto::ValidationErrors,
    },
    /// The config is valid on its own but cannot be compiled (e.g. a regex).
    #[error("invalid config {path}: {field}: {reason}")]
    Compile {
        /// The file.
        path: String,
        /// The field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("binding {name} on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_maps_to_status_and_flag() {
        let e = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(e.is_retryable());
        assert_eq!(e.source_side(), ErrorSource::Upstream);
        let rsp = e.to_response();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "UF");

        let e = ProxyError::NoRoute {
            authority: "nope".into(),
        };
        assert_eq!(e.to_response().status(), StatusCode::NOT_FOUND);
        assert!(!e.is_retryable());
        assert_eq!(ProxyError::Timeout { timeout_ms: 5 }.response_flag(), "UT");
    }

    #[test]
    fn retry_limit_keeps_the_last_flag_and_status() {
        let e = ProxyError::RetryLimit {
            attempts: 3,
            limit: "attempts",
            last: Box::new(ProxyError::ConnectFailed {
                addr: "127.0.0.1:1".parse().unwrap(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }),
        };
        let rsp = e.to_response();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "UF,URX");
        let mut h = HeaderMap::new();
        add_response_flag(&mut h, "DI");
        add_response_flag(&mut h, "DI");
        add_response_flag(&mut h, "URX");
        assert_eq!(h[RESPONSE_FLAGS_HEADER], "DI,URX");
    }

    #[test]
    fn grpc_fault_abort_is_trailers_only() {
        let rsp = ProxyError::FaultAbort {
            status: 0,
            grpc_status: Some(14),
        }
        .to_response();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "FI");
        let rsp = ProxyError::FaultAbort {
            status: 418,
            grpc_status: None,
        }
        .to_response();
        assert_eq!(rsp.status().as_u16(), 418);
    }
}
