//! Fixtures shared by the xDS unit tests.

use super::snapshot::XdsSnapshot;
use super::view::{NodeSpec, ProxyView};
use super::wire::SotwResponse;
use crate::registry::{Change, Op, Origin, Registry};
use crate::resource::{Kind, Resource};
use sane_xds_proto::{Endpoint, Route, RouteRule, Service, ServicePort, WeightedDestination};
use std::sync::Arc;
use tokio::time::Instant;

fn svc(ns: &str, name: &str) -> Resource {
    Resource::Service(Service {
        name: name.into(),
        namespace: ns.into(),
        ports: vec![ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn ep(ns: &str, service: &str, addr: &str) -> Resource {
    Resource::Endpoint(Endpoint {
        service: service.into(),
        namespace: ns.into(),
        address: addr.into(),
        port: 8080,
        ..Default::default()
    })
}

/// Services `shop/web` (routed to `inventory/backend`), `inventory/backend`,
/// `inventory/db`, `billing/pay`, one endpoint each, and route `shop/web`.
pub(crate) fn registry() -> Registry {
    let reg = Registry::in_memory();
    let route = Resource::Route(Route {
        name: "web".into(),
        namespace: "shop".into(),
        service: "web".into(),
        rules: vec![RouteRule {
            destinations: vec![WeightedDestination {
                service: "backend.inventory".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    let resources = vec![
        svc("shop", "web"),
        svc("inventory", "backend"),
        svc("inventory", "db"),
        svc("billing", "pay"),
        ep("shop", "web", "10.0.0.1"),
        ep("inventory", "backend", "10.0.0.2"),
        ep("inventory", "db", "10.0.0.3"),
        ep("billing", "pay", "10.0.0.4"),
        route,
    ];
    let ops = resources
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

/// The fixture, encoded.
pub(crate) fn snapshot() -> XdsSnapshot {
    XdsSnapshot::build(&registry().snapshot(), Instant::now(), None)
}

/// The view of a proxy in `ns` that also lists `pay.billing`.
pub(crate) fn view_of(ns: &str) -> Arc<ProxyView> {
    Arc::new(ProxyView::compute(
        &snapshot(),
        &NodeSpec::new("p", ns, &["pay.billing"]),
    ))
}

/// [`view_of`] after deleting one resource.
pub(crate) fn view_without(ns: &str, kind: Kind, key: &str) -> Arc<ProxyView> {
    let reg = registry();
    reg.apply(Change {
        origin: Origin::Api,
        ops: vec![Op::Delete {
            kind,
            key: key.into(),
        }],
    })
    .unwrap();
    let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
    Arc::new(ProxyView::compute(
        &snap,
        &NodeSpec::new("p", ns, &["pay.billing"]),
    ))
}

/// Keys of the resources in a response, decoded from their `Any`.
pub(crate) fn names_of(resp: &SotwResponse) -> Vec<String> {
    resp.resources()
        .iter()
        .map(|a| Resource::decode_any(a).unwrap().key())
        .collect()
}
