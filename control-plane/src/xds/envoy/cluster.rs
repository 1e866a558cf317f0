//! `Cluster`: one per service port (and per subset a route uses), EDS over
//! ADS, with the destination policy's load balancer, circuit breaker and
//! outlier detection.
//!
//! Load balancers: `ewma` and `round_robin` are `ROUND_ROBIN` (gRPC has no
//! latency-aware picker); `consistent_hash` is `RING_HASH` with `XX_HASH`
//! (the route carries the header hash policy); `least_request` is a
//! `load_balancing_policy` list, least request then round robin, so a client
//! without least request (gRPC C-core and Python, gRFC A48) falls back
//! instead of rejecting the cluster (gRFC A52).

use super::listener::ads;
use super::route::{duration_ms, is_h2};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        ring_hash_lb_config::HashFunction, ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
        LbConfig, LbPolicy, RingHashLbConfig,
    },
    load_balancing_policy::Policy,
    CircuitBreakers, Cluster, LoadBalancingPolicy, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http2ProtocolOptions, RoutingPriority, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use sane_xds_proto::{DestinationPolicy, LoadBalancer, ServicePort};

/// The connect timeout when the policy sets none (the sidecar's default).
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How often Envoy evaluates outlier detection (its own default).
const OUTLIER_INTERVAL_MS: u64 = 10_000;

/// The cluster `name` of service port `port`, under `policy`.
pub(super) fn cluster(
    name: &str,
    port: &ServicePort,
    policy: Option<&DestinationPolicy>,
) -> Cluster {
    let connect_ms = policy
        .map(|p| p.connect_timeout_ms)
        .filter(|ms| *ms > 0)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    let mut c = Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into())),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration_ms(connect_ms)),
        lb_policy: LbPolicy::RoundRobin.into(),
        circuit_breakers: Some(circuit_breakers(policy)),
        ..Default::default()
    };
    if is_h2(port) {
        let h2 = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(h2),
        );
    }
    let Some(policy) = policy else {
        return c;
    };
    match LoadBalancer::try_from(policy.load_balancer).unwrap_or_default() {
        LoadBalancer::Ewma | LoadBalancer::RoundRobin => {}
        LoadBalancer::ConsistentHash => {
            c.lb_policy = LbPolicy::RingHash.into();
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                hash_function: HashFunction::XxHash.into(),
                minimum_ring_size: Some(UInt64Value { value: 1024 }),
                maximum_ring_size: Some(UInt64Value {
                    value: 8 * 1024 * 1024,
                }),
            }));
        }
        LoadBalancer::LeastRequest => {
            let policy = |name: &str, config| Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: name.to_string(),
                    typed_config: Some(config),
                }),
            };
            c.load_balancing_policy = Some(LoadBalancingPolicy {
                policies: vec![
                    policy(
                        "envoy.load_balancing_policies.least_request",
                        pack_any(LeastRequest::default()),
                    ),
                    policy(
                        "envoy.load_balancing_policies.round_robin",
                        pack_any(RoundRobin::default()),
                    ),
                ],
            });
        }
    }
    if let Some(o) = &policy.outlier_detection {
        let u32v = |value| Some(UInt32Value { value });
        let gateway = o.consecutive_gateway_errors;
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: u32v(o.consecutive_5xx_or_default()),
            enforcing_consecutive_5xx: u32v(if o.consecutive_5xx_or_default() > 0 {
                100
            } else {
                0
            }),
            consecutive_gateway_failure: u32v(gateway),
            enforcing_consecutive_gateway_failure: u32v(if gateway > 0 { 100 } else { 0 }),
            interval: Some(duration_ms(OUTLIER_INTERVAL_MS)),
            base_ejection_time: Some(duration_ms(o.base_ejection_time_ms())),
            max_ejection_time: Some(duration_ms(o.max_ejection_time_ms())),
            max_ejection_percent: u32v(o.max_ejection_percent_or_default()),
            // The mesh ejects on consecutive errors only: success-rate and
            // failure-percentage ejection stay off (the only kinds gRPC
            // implements, gRFC A50, so gRPC clients do not eject).
            enforcing_success_rate: u32v(0),
            enforcing_failure_percentage: u32v(0),
            ..Default::default()
        });
    }
    c
}

/// The mesh's limits: none unless the policy sets them (Envoy and gRPC
/// default to 1024 requests otherwise).
fn circuit_breakers(policy: Option<&DestinationPolicy>) -> CircuitBreakers {
    let cb = policy.and_then(|p| p.circuit_breaker.as_ref());
    let limit = |v: Option<u32>| {
        Some(UInt32Value {
            value: v.unwrap_or(u32::MAX),
        })
    };
    let pending = cb
        .map(|c| c.max_pending_requests)
        .filter(|n| *n > 0)
        .map(|value| UInt32Value { value });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default.into(),
            max_connections: limit(cb.and_then(|c| c.max_connections)),
            max_pending_requests: pending,
            max_requests: limit(cb.and_then(|c| c.max_requests)),
            max_retries: limit(cb.and_then(|c| c.max_retries)),
            ..Default::default()
        }],
        ..Default::default()
    }
}
