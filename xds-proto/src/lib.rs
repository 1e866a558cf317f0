//! Sane Mesh resource types, defined once.
//!
//! Every concept the mesh configures (a [`Service`], its [`Endpoint`]s, a
//! [`Route`], a [`DestinationPolicy`], an [`AuthorizationPolicy`], a
//! [`Listener`], a [`Telemetry`], a [`PeerAuthentication`]) is one Rust struct that
//! derives both `serde` (YAML files, the JSON API) and `prost` (the xDS wire,
//! packed in `Any` with the type URL from [`TypeUrl`]). Validation lives next to
//! the types and reports the field path and the bad value.
//!
//! Architecture invariant: this crate does no I/O and has no async runtime.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
// `unsafe` is allowed in `yaml::libyaml` only (libyaml's pointer API).
#![deny(unsafe_code)]

mod authz;
mod bootstrap;
mod ca;
mod encoded;
mod endpoint;
mod gateway;
mod health;
mod http_options;
mod limits;
mod listener;
mod peer_authn;
mod policy;
mod resilience;
pub mod resources;
mod route;
mod route_policy;
pub mod serde_util;
mod service;
mod telemetry;
mod validate;
pub mod yaml;

pub use authz::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
};
pub use bootstrap::{
    is_loopback_host, url_host, AdminConfig, Bootstrap, ControlPlane, IdentityConfig, Node,
};
pub use ca::{CertificateRequest, CertificateResponse, CA_CREATE_CERTIFICATE_PATH};
pub use encoded::EncodedList;
pub use endpoint::Endpoint;
pub use gateway::{
    EdgeLimits, Gateway, GatewayHost, GatewayListener, GatewayRoute, HostTls, RateLimit,
    DEFAULT_CREDENTIALS_DIR, GATEWAY_NAME_LABEL, MAX_REQUEST_HEADER_BYTES,
    MIN_REQUEST_HEADER_BYTES,
};
pub use health::{
    AppProbe, GrpcProbe, HealthConfig, HttpGetProbe, ProbeHeader, TcpSocketProbe, APP_HEALTH_PREFIX,
};
pub use http_options::{
    EscapedSlashes, HttpOptions, PathNormalization, PathNormalizationMode,
    DEFAULT_MAX_REQUEST_HEADERS, DEFAULT_MAX_RESPONSE_HEADERS, MAX_HEADERS_LIMIT,
};
pub use limits::{
    ConnectionLimits, DEFAULT_FIRST_BYTE_TIMEOUT_MS, DEFAULT_HEADER_READ_TIMEOUT_MS,
    DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_HEADER_BYTES, DEFAULT_OVERLOAD_THRESHOLD_PERCENT,
    DEFAULT_REQUEST_BODY_MIN_RATE, DEFAULT_REQUEST_BODY_TIMEOUT_MS,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS, DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS, MAX_REQUEST_HEADER_LIMIT,
    MIN_REQUEST_HEADER_LIMIT,
};
pub use listener::{Direction, Listener, TlsMode, WorkloadPort};
pub use peer_authn::{
    resolve as resolve_peer_tls, PeerAuthentication, PeerTls, MESH_ROOT_NAMESPACE,
};
pub use policy::{DestinationPolicy, LoadBalancer, PeerProtocol};
pub use resilience::{CircuitBreaker, OutlierDetection, RetryBudget};
pub use resources::{MeshResources, TypeUrl};
pub use route::{
    HeaderMatch, MatchKind, PathMatch, QueryParamMatch, Redirect, Rewrite, Route, RouteMatch,
    RouteRule, WeightedDestination,
};
pub use route_policy::{
    grpc_code, FaultAbort, FaultDelay, FaultPolicy, HeaderOps, MirrorPolicy, RetryPolicy,
    DEFAULT_BUFFERED_BODY_BYTES, GRPC_CODES, MAX_BUFFERED_BODY_BYTES, MAX_RETRY_ATTEMPTS,
    RETRY_CONDITIONS,
};
pub use service::{Protocol, Service, ServicePort};
pub use telemetry::{AccessLogConfig, OtlpProtocol, Telemetry, TracingConfig, MAX_SPAN_QUEUE};
pub use validate::{
    FieldError, FieldPath, ValidationErrors, MAX_NAME_BYTES, MAX_TOKEN_BYTES, MAX_VALUE_BYTES,
};

/// The namespace used when a resource leaves `namespace` empty.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Returns `ns`, or [`DEFAULT_NAMESPACE`] when it is empty.
pub fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        ns
    }
}
