//! Destination policies: how the proxy treats traffic to one service.

use crate::resilience::{CircuitBreaker, OutlierDetection, RetryBudget};
use crate::serde_util::{duration_ms, enum_de, enum_ser};
use crate::validate::{Errors, FieldPath};
use serde::{Deserialize, Serialize};

/// Load-balancing algorithm across a service's endpoints.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prost::Enumeration,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(i32)]
pub enum LoadBalancer {
    /// Power of two random choices on peak-EWMA latency (as linkerd): of two
    /// random endpoints, the one with the lower latency estimate times its
    /// requests in flight (weighted) wins; the estimate jumps up at once on
    /// a slow response and decays over 10s. Steers away from slow endpoints
    /// before they fail. The default.
    Ewma = 0,
    /// Weighted round robin.
    RoundRobin = 1,
    /// Power of two random choices on requests in flight (weighted).
    LeastRequest = 2,
    /// A hash ring keyed by the value of `hash_header`, so requests with the
    /// same value stick to one endpoint while it is healthy; requests without
    /// the header are balanced as `least_request`.
    ConsistentHash = 3,
}

/// How HTTP/1.1 requests travel between sidecars.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prost::Enumeration,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(i32)]
pub enum PeerProtocol {
    /// As streams of shared HTTP/2 connections. The default.
    Http2 = 0,
    /// As HTTP/1.1 on pooled connections, one request in flight each.
    Preserve = 1,
}

/// Traffic policy for one destination service (like an Istio DestinationRule).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationPolicy {
    /// Policy name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The service the policy applies to (`name` or `name.namespace`). Required.
    #[prost(string, tag = "3")]
    pub service: String,
    /// Load-balancing algorithm: `ewma`, `least_request`, `round_robin` or
    /// `consistent_hash`. Default: `ewma`.
    #[prost(enumeration = "LoadBalancer", tag = "4")]
    #[serde(
        serialize_with = "enum_ser::<LoadBalancer, _>",
        deserialize_with = "enum_de::<LoadBalancer, _>"
    )]
    pub load_balancer: i32,
    /// Timeout for establishing an upstream connection. Default: 0, meaning 1s.
    #[prost(uint64, tag = "5")]
    #[serde(rename = "connect_timeout", with = "duration_ms")]
    pub connect_timeout_ms: u64,
    /// Idle pooled HTTP/1.1 connections to the endpoints are closed after
    /// this; keep it below the workloads' keep-alive timeout. Default: 0,
    /// meaning 4s (`DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS`).
    #[prost(uint64, tag = "6")]
    #[serde(rename = "idle_timeout", with = "duration_ms")]
    pub idle_timeout_ms: u64,
    /// Limits that shed load with `UO` instead of queuing. Default: none.
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Ejection of failing endpoints. Default: none, no ejection.
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Cap on retries to this destination. Default: none, meaning 20% of
    /// requests plus 10 per second over 10s.
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Header whose value keys `consistent_hash` (case-insensitive).
    /// Required with `consistent_hash`, not allowed otherwise. Default: empty.
    #[prost(string, tag = "10")]
    pub hash_header: String,
    /// How HTTP/1.1 requests to this service travel between sidecars:
    /// `http2` (streams multiplexed on shared connections) or `preserve`
    /// (HTTP/1.1 on pooled connections, one request in flight each; Istio's
    /// `h2UpgradePolicy: DO_NOT_UPGRADE`). Requests that arrive as HTTP/2,
    /// and ports declared `http2` or `grpc`, use HTTP/2 either way.
    /// Default: `http2`, the cheaper one under load (`bench/results/
    /// callgrind.md`, "HTTP/1.1 between the sidecars").
    #[prost(enumeration = "PeerProtocol", tag = "11")]
    #[serde(
        serialize_with = "enum_ser::<PeerProtocol, _>",
        deserialize_with = "enum_de::<PeerProtocol, _>"
    )]
    pub peer_protocol: i32,
}

// === impl DestinationPolicy ===

impl DestinationPolicy {
    /// Validates this resource on its own (references to other resources
    /// are checked by [`crate::MeshResources::validate`]). Paths are relative
    /// to the resource, e.g. `ports[1].port`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        errs.name(&path.field("service"), &self.service);
        errs.enum_value::<LoadBalancer>(&path.field("load_balancer"), self.load_balancer);
        errs.enum_value::<PeerProtocol>(&path.field("peer_protocol"), self.peer_protocol);
        if self.connect_timeout_ms > 60_000 {
            errs.push(
                &path.field("connect_timeout"),
                format!("{}ms is above the maximum of 60s", self.connect_timeout_ms),
            );
        }
        errs.duration_at_most(
            &path.field("idle_timeout"),
            self.idle_timeout_ms,
            86_400_000,
        );
        let hash = path.field("hash_header");
        match (self.load_balancer(), self.hash_header.is_empty()) {
            (LoadBalancer::ConsistentHash, true) => {
                errs.push(&hash, "is required with consistent_hash")
            }
            (LoadBalancer::ConsistentHash, false) => errs.header_name(&hash, &self.hash_header),
            (_, false) => errs.push(&hash, "only applies to consistent_hash"),
            (_, true) => {}
        }
        if let Some(c) = &self.circuit_breaker {
            c.validate_into(&path.field("circuit_breaker"), errs);
        }
        if let Some(o) = &self.outlier_detection {
            o.validate_into(&path.field("outlier_detection"), errs);
        }
        if let Some(b) = &self.retry_budget {
            b.validate_into(&path.field("retry_budget"), errs);
        }
    }
}
