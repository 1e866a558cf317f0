//! The simulated fleet's registry (`fleet` and the `xds_receive` criterion
//! bench): service `i` is `svc-<i>` with one HTTP port, endpoint `k` of it
//! listens at `10.<i / 250>.<i % 250>.<k>:8080` behind a sidecar on 15006,
//! and its route sends every request to it with a timeout.

use sane_xds_proto::{Endpoint, Route, RouteRule, Service, ServicePort, WeightedDestination};
use std::net::{Ipv4Addr, SocketAddr};

/// Service `i` in namespace `ns`.
pub fn service(i: usize, ns: &str) -> Service {
    Service {
        name: format!("svc-{i}"),
        namespace: ns.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Endpoint `k` of service `i` (see [`endpoint_addr`]).
pub fn endpoint(i: usize, ns: &str, k: usize) -> Endpoint {
    let at = endpoint_addr(i, k);
    Endpoint {
        service: format!("svc-{i}"),
        namespace: ns.into(),
        address: at.ip().to_string(),
        port: 8080,
        proxy_port: at.port().into(),
        ..Default::default()
    }
}

/// Where the sidecar of service `i`'s endpoint `k` listens.
pub fn endpoint_addr(i: usize, k: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, k as u8);
    (ip, 15006).into()
}

/// Service `i`'s route: every request to it, with a timeout.
pub fn route(i: usize, ns: &str, timeout_ms: u64) -> Route {
    Route {
        name: format!("svc-{i}"),
        namespace: ns.into(),
        service: format!("svc-{i}"),
        rules: vec![RouteRule {
            destinations: vec![WeightedDestination {
                service: format!("svc-{i}"),
                port: 80,
                weight: 100,
                ..Default::default()
            }],
            timeout_ms,
            ..Default::default()
        }],
    }
}
