//! The standard Envoy v3 resources, built from one node's view of the
//! registry: what proxyless gRPC clients (gRFC A27/A28 and later) and Envoy
//! read from the same ADS stream as Sane proxies.
//!
//! Everything here is a pure function of the view: [`EnvoyResources::build`]
//! turns the services, endpoints, routes and destination policies a node may
//! see into `Listener`, `RouteConfiguration`, `Cluster` and
//! `ClusterLoadAssignment` resources, encoded once per view and served by the
//! same state machines (and the same ACK/NACK bookkeeping) as the mesh types.
//!
//! # Names
//!
//! | resource | name | example |
//! |---|---|---|
//! | `Listener` (an HTTP API listener, RDS over ADS) | every host of the service, with `:port`; and without it for the default port (the first `grpc` port, else the first HTTP port) | `echo.default:9090`, `echo:9090`, `echo.default.svc.cluster.local:9090`, `echo.default` |
//! | `RouteConfiguration` | `name.namespace:port` | `echo.default:9090` |
//! | `Cluster` (EDS over ADS) | `name.namespace:port`, plus `/label=value,...` for a route's subset (labels sorted; `%`, `,`, `=`, `/` percent-escaped) | `echo.default:9090/version=v1` |
//! | `ClusterLoadAssignment` | the cluster's name | `echo.default:9090/version=v1` |
//!
//! The bare service name (`echo:9090`) names a listener only for nodes of
//! the service's own namespace, as it does for a sidecar.

pub mod bootstrap;
mod cluster;
mod endpoint;
mod listener;
mod names;
mod route;

use super::snapshot::{short_hash, EncodedResource, ResourceMap};
use crate::resource::{Kind, Resource};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{DestinationPolicy, Endpoint, Route, Service, TypeUrl};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use names::{cluster_name, route_config_name};

/// One of the four Envoy v3 resource types served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvoyType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    RouteConfiguration,
}

/// The Envoy resources of one view, by type and name.
#[derive(Clone, Debug, Default)]
pub struct EnvoyResources {
    clusters: ResourceMap,
    assignments: ResourceMap,
    listeners: ResourceMap,
    route_configs: ResourceMap,
}

/// The registry resources a view holds, typed and indexed by service.
#[derive(Debug)]
struct Inputs<'a> {
    /// The node's namespace (for bare service names).
    namespace: &'a str,
    /// Services by key (`name.namespace`).
    services: BTreeMap<String, &'a Service>,
    /// Endpoints by service key.
    endpoints: BTreeMap<String, Vec<&'a Endpoint>>,
    /// The route of each service: the first by registry key, as the proxy.
    routes: BTreeMap<String, &'a Route>,
    /// The policy of each service: the first by registry key.
    policies: BTreeMap<String, &'a DestinationPolicy>,
}

// === impl EnvoyType ===

impl EnvoyType {
    /// Every type, in the order they are pushed on a view change: clusters
    /// and their endpoints before the listeners and routes that use them.
    pub const ALL: [EnvoyType; 4] = [
        EnvoyType::Cluster,
        EnvoyType::ClusterLoadAssignment,
        EnvoyType::Listener,
        EnvoyType::RouteConfiguration,
    ];

    /// The type URL.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvoyType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            EnvoyType::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            EnvoyType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            EnvoyType::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
        }
    }

    /// The name shown in the status API and metrics: `envoy.` and the
    /// message name, so it never collides with a mesh type.
    pub fn short_name(self) -> &'static str {
        match self {
            EnvoyType::Cluster => "envoy.Cluster",
            EnvoyType::ClusterLoadAssignment => "envoy.ClusterLoadAssignment",
            EnvoyType::Listener => "envoy.Listener",
            EnvoyType::RouteConfiguration => "envoy.RouteConfiguration",
        }
    }

    /// Parses a type URL.
    pub fn parse(url: &str) -> Option<EnvoyType> {
        EnvoyType::ALL.into_iter().find(|t| t.as_str() == url)
    }
}

// === impl EnvoyResources ===

impl EnvoyResources {
    /// Builds every Envoy resource of the services in a view (a node's
    /// slice of the registry: its services, endpoints, routes and
    /// policies, given by type through `view`), for a node of `namespace`.
    /// It takes the view's maps, not the view, so this module never imports
    /// the view that caches its result.
    pub fn build<'a>(view: impl Fn(TypeUrl) -> &'a ResourceMap, namespace: &str) -> EnvoyResources {
        let of = |kind: Kind| view(kind.type_url()).values();
        let mut inputs = Inputs {
            namespace,
            services: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            routes: BTreeMap::new(),
            policies: BTreeMap::new(),
        };
        for r in of(Kind::Service) {
            if let Resource::Service(s) = &r.resource {
                inputs.services.insert(s.key(), s);
            }
        }
        for r in of(Kind::Endpoint) {
            if let Resource::Endpoint(e) = &r.resource {
                inputs.endpoints.entry(e.service_key()).or_default().push(e);
            }
        }
        for r in of(Kind::Route) {
            if let Resource::Route(route) = &r.resource {
                let key = qualify(&route.service, &route.namespace);
                inputs.routes.entry(key).or_insert(route);
            }
        }
        for r in of(Kind::Policy) {
            if let Resource::Policy(p) = &r.resource {
                let key = qualify(&p.service, &p.namespace);
                inputs.policies.entry(key).or_insert(p);
            }
        }
        inputs.build()
    }

    /// The resources of type `t`, by name.
    pub fn get(&self, t: EnvoyType) -> &ResourceMap {
        match t {
            EnvoyType::Cluster => &self.clusters,
            EnvoyType::ClusterLoadAssignment => &self.assignments,
            EnvoyType::Listener => &self.listeners,
            EnvoyType::RouteConfiguration => &self.route_configs,
        }
    }
}

// === impl Inputs ===

impl Inputs<'_> {
    fn build(&self) -> EnvoyResources {
        let mut out = EnvoyResources::default();
        for (key, svc) in &self.services {
            for port in svc.ports.iter().filter(|p| p.protocol().is_http()) {
                let rc = route::route_configuration(self, svc, port);
                insert(&mut out.route_configs, rc.name.clone(), &rc, svc);
                for name in names::listener_names(svc, port, self.namespace) {
                    let l = listener::api_listener(&name, &rc.name);
                    // The first service claiming a name keeps it (services
                    // are visited by key, so the choice is stable).
                    if !out.listeners.contains_key(&name) {
                        insert(&mut out.listeners, name, &l, svc);
                    }
                }
            }
            for port in &svc.ports {
                self.add_cluster(&mut out, key, port.port, &BTreeMap::new());
            }
        }
        // Subset clusters: every subset a route of the view sends to.
        for (dest, port, subset) in route::subset_destinations(self) {
            self.add_cluster(&mut out, &dest, port, &subset);
        }
        out
    }

    fn add_cluster(
        &self,
        out: &mut EnvoyResources,
        service: &str,
        port: u32,
        subset: &BTreeMap<String, String>,
    ) {
        let Some(svc) = self.services.get(service) else {
            return;
        };
        let Some(sp) = svc.port(port) else {
            return;
        };
        let name = cluster_name(service, port, subset);
        if out.clusters.contains_key(&name) {
            return;
        }
        let policy = self.policies.get(service).copied();
        let c = cluster::cluster(&name, sp, policy);
        insert(&mut out.clusters, name.clone(), &c, svc);
        let endpoints = self.endpoints.get(service).map(Vec::as_slice);
        let cla = endpoint::load_assignment(&name, sp, endpoints.unwrap_or_default(), subset);
        insert(&mut out.assignments, name, &cla, svc);
    }
}

/// Encodes `msg` as the resource `name` built from `svc`.
fn insert<M: Message + Name>(map: &mut ResourceMap, name: String, msg: &M, svc: &Service) {
    let value = msg.encode_to_vec();
    let version = short_hash(Sha256::new_with_prefix(&value));
    let encoded = EncodedResource {
        name: name.clone(),
        version,
        any: Any {
            type_url: M::type_url(),
            value,
        },
        resource: Resource::Service(svc.clone()),
        service: svc.key(),
        destinations: Vec::new(),
    };
    map.insert(name, Arc::new(encoded));
}

#[cfg(test)]
mod tests;
