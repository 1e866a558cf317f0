//! The Envoy resources of a small mesh, decoded and checked field by field
//! against what gRPC clients require (gRFC A27/A28).

use super::*;
use crate::registry::{Change, Op, Origin, Registry};
use crate::xds::snapshot::XdsSnapshot;
use crate::xds::view::{NodeSpec, ProxyView};
use envoy_types::pb::envoy::config::cluster::v3::{cluster::LbPolicy, Cluster};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use sane_xds_proto::{
    HeaderMatch, LoadBalancer, Protocol, RetryPolicy, RouteMatch, RouteRule, ServicePort,
    WeightedDestination,
};
use tokio::time::Instant;

fn mesh() -> Registry {
    let reg = Registry::in_memory();
    let port = |name: &str, port, protocol: Protocol| ServicePort {
        name: name.into(),
        port,
        protocol: protocol.into(),
        ..Default::default()
    };
    let echo = Service {
        name: "echo".into(),
        namespace: "shop".into(),
        ports: vec![
            port("http", 80, Protocol::Http),
            port("grpc", 9090, Protocol::Grpc),
        ],
        ..Default::default()
    };
    let ep = |addr: &str, version: &str, grpc: u32| Endpoint {
        service: "echo".into(),
        namespace: "shop".into(),
        address: addr.into(),
        ports: [("grpc".to_string(), grpc), ("http".to_string(), 8080)].into(),
        proxy_port: 15006,
        labels: [("version".to_string(), version.to_string())].into(),
        ..Default::default()
    };
    let subset = |v: &str, weight| WeightedDestination {
        service: "echo".into(),
        subset: [("version".to_string(), v.to_string())].into(),
        weight,
        ..Default::default()
    };
    let route = Route {
        name: "split".into(),
        namespace: "shop".into(),
        service: "echo".into(),
        rules: vec![
            RouteRule {
                matches: vec![RouteMatch {
                    headers: vec![HeaderMatch {
                        name: "X-Canary".into(),
                        value: "1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                destinations: vec![subset("v2", 1)],
                ..Default::default()
            },
            RouteRule {
                destinations: vec![subset("v1", 80), subset("v2", 20)],
                timeout_ms: 1500,
                retry: Some(RetryPolicy {
                    attempts: Some(3),
                    retry_on: vec!["unavailable".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
    };
    let policy = DestinationPolicy {
        name: "echo".into(),
        namespace: "shop".into(),
        service: "echo".into(),
        load_balancer: LoadBalancer::LeastRequest.into(),
        ..Default::default()
    };
    let ops = [
        Resource::Service(echo),
        Resource::Endpoint(ep("10.0.0.1", "v1", 7001)),
        Resource::Endpoint(ep("10.0.0.2", "v2", 7002)),
        Resource::Route(route),
        Resource::Policy(policy),
    ]
    .into_iter()
    .map(|resource| Op::Put {
        resource,
        ttl: None,
    })
    .collect();
    reg.apply(Change {
        origin: Origin::Api,
        ops,
    })
    .unwrap();
    reg
}

fn view(ns: &str) -> ProxyView {
    let snap = XdsSnapshot::build(&mesh().snapshot(), Instant::now(), None);
    ProxyView::compute(&snap, &NodeSpec::new("grpc-client", ns, &["echo.shop"]))
}

fn decode<M: Message + Default>(map: &ResourceMap, name: &str) -> M {
    let r = map
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", map.keys().collect::<Vec<_>>()));
    assert_eq!(r.name, name);
    M::decode(r.any.value.as_slice()).unwrap()
}

#[test]
fn a_listener_per_host_leads_through_rds_to_the_route_config() {
    let v = view("shop");
    let env = v.envoy();
    let names: Vec<&str> = env
        .get(EnvoyType::Listener)
        .keys()
        .map(String::as_str)
        .collect();
    for want in [
        "echo:9090",
        "echo.shop:9090",
        "echo.shop",
        "echo.shop.svc.cluster.local:9090",
        "echo:80",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let l: Listener = decode(env.get(EnvoyType::Listener), "echo.shop:9090");
    let api = l.api_listener.unwrap().api_listener.unwrap();
    assert_eq!(
        api.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("not RDS");
    };
    assert_eq!(rds.route_config_name, "echo.shop:9090");
    assert!(rds.config_source.unwrap().config_source_specifier.is_some());
    assert_eq!(
        hcm.http_filters.last().unwrap().name,
        "envoy.filters.http.router"
    );

    // From another namespace the bare name is not a listener.
    let other = view("web");
    assert!(!other
        .envoy()
        .get(EnvoyType::Listener)
        .contains_key("echo:9090"));
    assert!(other
        .envoy()
        .get(EnvoyType::Listener)
        .contains_key("echo.shop:9090"));
}

#[test]
fn routes_match_headers_split_by_weight_and_carry_timeouts_and_retries() {
    let v = view("shop");
    let rc: RouteConfiguration = decode(
        v.envoy().get(EnvoyType::RouteConfiguration),
        "echo.shop:9090",
    );
    let vh = &rc.virtual_hosts[0];
    assert!(vh.domains.iter().any(|d| d == "echo.shop:9090"));
    assert!(vh.domains.iter().any(|d| d == "echo"));
    assert_eq!(vh.routes.len(), 2);
    let canary = &vh.routes[0];
    let header = &canary.r#match.as_ref().unwrap().headers[0];
    assert_eq!(header.name, "x-canary");
    assert!(matches!(
        header.header_match_specifier,
        Some(HeaderMatchSpecifier::StringMatch(_))
    ));
    let Some(Action::Route(a)) = &canary.action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "echo.shop:9090/version=v2".into()
        ))
    );
    let Some(Action::Route(a)) = &vh.routes[1].action else {
        panic!()
    };
    let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!()
    };
    let split: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        split,
        [
            ("echo.shop:9090/version=v1", 80),
            ("echo.shop:9090/version=v2", 20)
        ]
    );
    let msd = a
        .max_stream_duration
        .as_ref()
        .unwrap()
        .max_stream_duration
        .unwrap();
    assert_eq!((msd.seconds, msd.nanos), (1, 500_000_000));
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "unavailable");
    assert_eq!(retry.num_retries.unwrap().value, 3);
}

#[test]
fn clusters_are_eds_over_ads_and_assignments_hold_the_workload_ports() {
    let v = view("shop");
    let env = v.envoy();
    let clusters: Vec<&str> = env
        .get(EnvoyType::Cluster)
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        clusters,
        [
            "echo.shop:80",
            "echo.shop:80/version=v1",
            "echo.shop:80/version=v2",
            "echo.shop:9090",
            "echo.shop:9090/version=v1",
            "echo.shop:9090/version=v2"
        ],
        "the route's subsets, on each HTTP port it routes"
    );
    let c: Cluster = decode(env.get(EnvoyType::Cluster), "echo.shop:9090/version=v1");
    assert!(c.eds_cluster_config.unwrap().eds_config.is_some());
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
    let policies = c.load_balancing_policy.unwrap().policies;
    assert_eq!(
        policies[1].typed_extension_config.as_ref().unwrap().name,
        "envoy.load_balancing_policies.round_robin",
        "least request falls back to round robin"
    );
    let cla: ClusterLoadAssignment = decode(
        env.get(EnvoyType::ClusterLoadAssignment),
        "echo.shop:9090/version=v1",
    );
    let eps = &cla.endpoints[0].lb_endpoints;
    assert_eq!(eps.len(), 1);
    let Some(HostIdentifier::Endpoint(e)) = &eps[0].host_identifier else {
        panic!()
    };
    let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
        &e.address.as_ref().unwrap().address
    else {
        panic!()
    };
    assert_eq!(sa.address, "10.0.0.1");
    assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(7001)));
    let all: ClusterLoadAssignment =
        decode(env.get(EnvoyType::ClusterLoadAssignment), "echo.shop:9090");
    assert_eq!(all.endpoints[0].lb_endpoints.len(), 2);
    assert_eq!(all.endpoints[0].load_balancing_weight.unwrap().value, 2);
}

#[test]
fn envoy_types_are_served_by_name_through_the_state_machine() {
    use crate::xds::sotw::SotwStream;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let v = view("shop");
    let mut s = SotwStream::new(1);
    let step = s.on_request(
        &DiscoveryRequest {
            type_url: EnvoyType::Listener.as_str().into(),
            resource_names: vec!["echo:9090".into()],
            ..Default::default()
        },
        &v,
    );
    let resources = step.pushes[0].1.resources();
    assert_eq!(resources.len(), 1);
    assert_eq!(
        resources[0].type_url,
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(
        Listener::decode(resources[0].value.as_slice())
            .unwrap()
            .name,
        "echo:9090"
    );
}

#[test]
fn envoy_types_are_served_over_delta_too() {
    use crate::xds::delta::DeltaStream;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let v = std::sync::Arc::new(view("shop"));
    let mut d = DeltaStream::new(1);
    let step = d.on_request(
        &DeltaDiscoveryRequest {
            type_url: EnvoyType::Cluster.as_str().into(),
            resource_names_subscribe: vec!["echo.shop:9090/version=v2".into()],
            ..Default::default()
        },
        &v,
    );
    let (sent, resp) = &step.pushes[0];
    assert_eq!(
        sent.type_url,
        crate::xds::XdsType::Envoy(EnvoyType::Cluster)
    );
    let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["echo.shop:9090/version=v2"]);
    // The same view again: nothing to send.
    assert!(d.on_view(&v).pushes.is_empty());
}
