//! `ClusterLoadAssignment`: the endpoints of one cluster, grouped by
//! locality, each at its workload port.
//!
//! A proxyless client connects to the workload port itself (as a client
//! outside the mesh would), not to the instance's sidecar: a sidecar's
//! inbound only speaks mutual TLS with a mesh identity. Registered endpoints
//! are `HEALTHY` (an endpoint whose lease expired is no longer registered);
//! the endpoint `weight` is the load-balancing weight, and a locality's
//! weight is the sum of its endpoints'.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, HealthStatus, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as WireEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use sane_xds_proto::{Endpoint, ServicePort};
use std::collections::BTreeMap;

/// Endpoint label naming its region (the Kubernetes well-known label).
pub(super) const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Endpoint label naming its zone.
pub(super) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The assignment of cluster `name`: the `endpoints` carrying every label
/// of `subset`, at their workload port for `port`.
pub(super) fn load_assignment(
    name: &str,
    port: &ServicePort,
    endpoints: &[&Endpoint],
    subset: &BTreeMap<String, String>,
) -> ClusterLoadAssignment {
    let mut localities: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    for e in endpoints {
        if !subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)) {
            continue;
        }
        let label = |k: &str| e.labels.get(k).cloned().unwrap_or_default();
        let locality = (label(REGION_LABEL), label(ZONE_LABEL));
        localities.entry(locality).or_default().push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(WireEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: e.address.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(e.workload_port(port))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy.into(),
            load_balancing_weight: Some(UInt32Value { value: e.weight() }),
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: localities
            .into_iter()
            .map(|((region, zone), lb_endpoints)| {
                let weight = lb_endpoints
                    .iter()
                    .filter_map(|e| e.load_balancing_weight.as_ref())
                    .fold(0u32, |sum, w| sum.saturating_add(w.value));
                LocalityLbEndpoints {
                    locality: Some(Locality {
                        region,
                        zone,
                        ..Default::default()
                    }),
                    lb_endpoints,
                    load_balancing_weight: Some(UInt32Value { value: weight }),
                    priority: 0,
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}
