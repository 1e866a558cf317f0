//! Every type URL the ADS server answers: the mesh's own resources
//! ([`TypeUrl`], read by Sane proxies) and the standard Envoy v3 ones
//! ([`EnvoyType`], read by proxyless gRPC clients and Envoy), so the two
//! state machines, the status table and the metrics treat both alike.

use super::envoy::{EnvoyResources, EnvoyType};
use super::snapshot::ResourceMap;
use super::view::ProxyView;
use super::wire::TypeWire;
use sane_xds_proto::TypeUrl;
use std::sync::Arc;

/// One served resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdsType {
    /// A Sane Mesh resource.
    Mesh(TypeUrl),
    /// A standard Envoy v3 resource.
    Envoy(EnvoyType),
}

// === impl XdsType ===

impl XdsType {
    /// Every type, in push order: the mesh's (in the order a proxy applies
    /// them), then Envoy's (clusters before what refers to them); mesh types
    /// added later go last (their order does not matter to a proxy, which
    /// compiles only the whole set).
    pub const ALL: [XdsType; 13] = [
        XdsType::Mesh(TypeUrl::Listener),
        XdsType::Mesh(TypeUrl::Service),
        XdsType::Mesh(TypeUrl::Endpoint),
        XdsType::Mesh(TypeUrl::Route),
        XdsType::Mesh(TypeUrl::DestinationPolicy),
        XdsType::Mesh(TypeUrl::AuthorizationPolicy),
        XdsType::Mesh(TypeUrl::Telemetry),
        XdsType::Envoy(EnvoyType::Cluster),
        XdsType::Envoy(EnvoyType::ClusterLoadAssignment),
        XdsType::Envoy(EnvoyType::Listener),
        XdsType::Envoy(EnvoyType::RouteConfiguration),
        XdsType::Mesh(TypeUrl::PeerAuthentication),
        XdsType::Mesh(TypeUrl::Gateway),
    ];

    /// Parses a request's type URL.
    pub fn parse(url: &str) -> Option<XdsType> {
        TypeUrl::parse(url)
            .map(XdsType::Mesh)
            .or_else(|| EnvoyType::parse(url).map(XdsType::Envoy))
    }

    /// The type URL.
    pub fn as_str(self) -> &'static str {
        match self {
            XdsType::Mesh(t) => t.as_str(),
            XdsType::Envoy(t) => t.as_str(),
        }
    }

    /// The name in the status API and metric labels: the message name for
    /// mesh types (`Route`), `envoy.` and the message name for Envoy types
    /// (`envoy.RouteConfiguration`).
    pub fn short_name(self) -> &'static str {
        match self {
            XdsType::Mesh(t) => crate::metrics::short_type_name(t),
            XdsType::Envoy(t) => t.short_name(),
        }
    }
}

impl From<TypeUrl> for XdsType {
    fn from(t: TypeUrl) -> XdsType {
        XdsType::Mesh(t)
    }
}

// === impl ProxyView ===

impl ProxyView {
    /// The resources of type `t` in the view. Envoy resources are built from
    /// the view the first time a stream asks for one, so Sane proxies never
    /// pay for them.
    pub fn of_type(&self, t: XdsType) -> &ResourceMap {
        match t {
            XdsType::Mesh(t) => self.resources(t),
            XdsType::Envoy(t) => self.envoy().get(t),
        }
    }

    /// The version of every resource of type `t` in the view: what a
    /// wildcard subscription holds (mesh types: computed once per view).
    pub fn wildcard_version(&self, t: XdsType) -> String {
        match t {
            XdsType::Mesh(t) => self.version(t),
            XdsType::Envoy(t) => super::snapshot::set_version(self.envoy().get(t).values()),
        }
    }

    /// What a wildcard subscription to type `t` is sent: built once per
    /// view, shared by every stream holding it.
    pub fn wire(&self, t: XdsType) -> Arc<TypeWire> {
        if let XdsType::Mesh(m) = t {
            if let Some(wire) = self.mesh_wire(m) {
                return wire;
            }
        }
        self.wire.get_or_build(t, || {
            let resources = self.of_type(t).values().cloned().collect();
            TypeWire::new(self.wildcard_version(t), resources)
        })
    }

    /// The view as Envoy resources.
    pub fn envoy(&self) -> &EnvoyResources {
        self.envoy
            .get_or_init(|| EnvoyResources::build(|t| self.resources(t), &self.namespace))
    }
}
