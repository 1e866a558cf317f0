//! Criterion micro-benchmarks of what one proxy does with a
//! state-of-the-world xDS response (`sane_proxy::xds::state`), at the size
//! of the 5 000-proxy fleet's mesh (`bench/fleet.sh`: 500 services, 1 500
//! endpoints, 500 routes):
//!
//! - `xds_receive/decode_envelope/*`: the `DiscoveryResponse` itself from
//!   its bytes (what the gRPC client does before the state machine);
//! - `xds_receive/first/*`: a response of a type the proxy holds nothing
//!   of: every resource decoded and validated;
//! - `xds_receive/one_changed/*`: the next response, the same resources but
//!   one (a route's timeout, an endpoint added): only that one is decoded;
//! - `xds_receive/candidate_one_changed/endpoints`: the same plus the
//!   merge of every type into the resources a sidecar compiles (the
//!   compile itself is not measured here).
//!
//! Run: `cargo bench -p sane-bench --bench xds_receive`.

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sane_bench::fleet_registry;
use sane_proxy::xds::state::XdsState;
use sane_xds_proto::{Endpoint, Route, Service, TypeUrl};
use std::hint::black_box;

/// Services of the fleet's 5 000-proxy mesh.
const SERVICES: usize = 500;

fn service(i: usize) -> Service {
    fleet_registry::service(i, "fleet-0")
}

fn endpoint(i: usize, k: usize) -> Endpoint {
    fleet_registry::endpoint(i, "fleet-0", k)
}

fn route(i: usize, timeout_ms: u64) -> Route {
    fleet_registry::route(i, "fleet-0", timeout_ms)
}

fn response<M: Message>(t: TypeUrl, version: &str, items: &[M]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: t.as_str().into(),
        nonce: version.into(),
        resources: items
            .iter()
            .map(|m| Any {
                type_url: t.as_str().into(),
                value: m.encode_to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The routes and endpoints of the mesh, then the same with one change.
fn responses() -> [(&'static str, TypeUrl, DiscoveryResponse, DiscoveryResponse); 2] {
    let routes: Vec<Route> = (0..SERVICES).map(|i| route(i, 5_000)).collect();
    let mut changed = routes.clone();
    changed[7] = route(7, 5_001);
    let endpoints: Vec<Endpoint> = (0..SERVICES)
        .flat_map(|i| (1..=3).map(move |k| endpoint(i, k)))
        .collect();
    let mut added = endpoints.clone();
    added.push(endpoint(3, 4));
    [
        (
            "routes",
            TypeUrl::Route,
            response(TypeUrl::Route, "1", &routes),
            response(TypeUrl::Route, "2", &changed),
        ),
        (
            "endpoints",
            TypeUrl::Endpoint,
            response(TypeUrl::Endpoint, "1", &endpoints),
            response(TypeUrl::Endpoint, "2", &added),
        ),
    ]
}

/// A state holding the mesh's services and `first`.
fn holding(first: &DiscoveryResponse) -> XdsState {
    let mut st = XdsState::default();
    let services: Vec<Service> = (0..SERVICES).map(service).collect();
    for r in [response(TypeUrl::Service, "1", &services), first.clone()] {
        let got = st.receive(&r).expect("valid");
        st.accept(&r, got);
    }
    st
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("xds_receive");
    for (label, t, first, next) in responses() {
        let bytes = next.encode_to_vec();
        g.bench_function(format!("decode_envelope/{label}"), |b| {
            b.iter(|| DiscoveryResponse::decode(black_box(bytes.as_slice())).unwrap())
        });
        let empty = XdsState::default();
        g.bench_function(format!("first/{label}"), |b| {
            b.iter(|| empty.receive(black_box(&first)).unwrap())
        });
        let st = holding(&first);
        assert_eq!(st.len(t), first.resources.len());
        let got = st.receive(&next).unwrap();
        assert_eq!(got.changed().count(), 1, "{label}: one resource changed");
        g.bench_function(format!("one_changed/{label}"), |b| {
            b.iter(|| st.receive(black_box(&next)).unwrap())
        });
        if t == TypeUrl::Endpoint {
            g.bench_function(format!("candidate_one_changed/{label}"), |b| {
                b.iter(|| st.candidate(black_box(&next)).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
