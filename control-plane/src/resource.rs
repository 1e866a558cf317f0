//! The resource kinds the registry stores, and how each is keyed.
//!
//! Keys are what the HTTP API puts in its paths and what xDS uses as resource
//! names, so they are defined once, here:
//!
//! | kind       | key                                   | example                        |
//! |------------|---------------------------------------|--------------------------------|
//! | `service`  | `namespace/name`                      | `default/echo`                 |
//! | `route`    | `namespace/name`                      | `default/echo-split`           |
//! | `policy`   | `namespace/name`                      | `default/echo`                 |
//! | `authorization_policy` | `namespace/name`          | `default/allow-web`            |
//! | `endpoint` | `namespace/service/address:port`      | `default/echo/10.0.0.7:15006`  |
//! | `telemetry`| `namespace/name`                      | `default/mesh`                 |
//! | `peer_authentication` | `namespace/name`           | `istio-system/mesh-mtls`       |
//! | `gateway`  | `namespace/name`                      | `istio-system/public`          |
//!
//! An endpoint's `port` in its key is its `proxy_port` when it has a sidecar,
//! otherwise its workload `port` (0 when that is unset too); IPv6 addresses are
//! bracketed (`[fd00::7]:8080`). An empty namespace is stored as `default`.

use sane_xds_proto::{
    namespace_or_default, AuthorizationPolicy, DestinationPolicy, Endpoint, Gateway, MeshResources,
    PeerAuthentication, Route, Service, Telemetry, TypeUrl,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// A kind of resource kept in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// [`Service`]
    Service,
    /// [`Endpoint`]
    Endpoint,
    /// [`Route`]
    Route,
    /// [`DestinationPolicy`]
    Policy,
    /// [`AuthorizationPolicy`]
    Authz,
    /// [`Telemetry`]
    Telemetry,
    /// [`PeerAuthentication`]
    PeerAuthn,
    /// [`Gateway`]
    Gateway,
}

/// One resource of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A service.
    Service(Service),
    /// An endpoint of a service.
    Endpoint(Endpoint),
    /// A route.
    Route(Route),
    /// A destination policy.
    Policy(DestinationPolicy),
    /// An authorization policy.
    Authz(AuthorizationPolicy),
    /// Tracing and access-log settings of a namespace.
    Telemetry(Telemetry),
    /// The mutual TLS mode of some workloads' inbound side.
    PeerAuthn(PeerAuthentication),
    /// An ingress gateway configuration, for the gateway proxies it selects.
    Gateway(Gateway),
}

// === impl Kind ===

impl Kind {
    /// All kinds, in dependency order: services first, so applying in this
    /// order never references a service that is not there yet.
    pub const ALL: [Kind; 8] = [
        Kind::Service,
        Kind::Endpoint,
        Kind::Route,
        Kind::Policy,
        Kind::Authz,
        Kind::Telemetry,
        Kind::PeerAuthn,
        Kind::Gateway,
    ];

    /// Singular lowercase name: `service`, `endpoint`, `route`, `policy`,
    /// `authorization_policy`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
            Kind::Route => "route",
            Kind::Policy => "policy",
            Kind::Authz => "authorization_policy",
            Kind::Telemetry => "telemetry",
            Kind::PeerAuthn => "peer_authentication",
            Kind::Gateway => "gateway",
        }
    }

    /// Plural name, as used in API paths and in [`MeshResources`] fields.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Endpoint => "endpoints",
            Kind::Route => "routes",
            Kind::Policy => "policies",
            Kind::Authz => "authorization_policies",
            Kind::Telemetry => "telemetry",
            Kind::PeerAuthn => "peer_authentications",
            Kind::Gateway => "gateways",
        }
    }

    /// Parses a singular or plural name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s || k.plural() == s)
    }

    /// The xDS type URL of this kind.
    pub fn type_url(self) -> TypeUrl {
        match self {
            Kind::Service => TypeUrl::Service,
            Kind::Endpoint => TypeUrl::Endpoint,
            Kind::Route => TypeUrl::Route,
            Kind::Policy => TypeUrl::DestinationPolicy,
            Kind::Authz => TypeUrl::AuthorizationPolicy,
            Kind::Telemetry => TypeUrl::Telemetry,
            Kind::PeerAuthn => TypeUrl::PeerAuthentication,
            Kind::Gateway => TypeUrl::Gateway,
        }
    }

    /// The kind served under an xDS type URL; listeners are not registry kinds.
    pub fn from_type_url(t: TypeUrl) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == t)
    }

    /// Number of path segments in a key of this kind.
    pub fn key_segments(self) -> usize {
        match self {
            Kind::Endpoint => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Resource ===

impl Resource {
    /// The kind of this resource.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Endpoint(_) => Kind::Endpoint,
            Resource::Route(_) => Kind::Route,
            Resource::Policy(_) => Kind::Policy,
            Resource::Authz(_) => Kind::Authz,
            Resource::Telemetry(_) => Kind::Telemetry,
            Resource::PeerAuthn(_) => Kind::PeerAuthn,
            Resource::Gateway(_) => Kind::Gateway,
        }
    }

    /// The registry key (see the module docs).
    pub fn key(&self) -> String {
        match self {
            Resource::Service(s) => ns_key(&s.namespace, &s.name),
            Resource::Route(r) => ns_key(&r.namespace, &r.name),
            Resource::Policy(p) => ns_key(&p.namespace, &p.name),
            Resource::Authz(a) => ns_key(&a.namespace, &a.name),
            Resource::Telemetry(t) => ns_key(&t.namespace, &t.name),
            Resource::PeerAuthn(p) => ns_key(&p.namespace, &p.name),
            Resource::Gateway(g) => ns_key(&g.namespace, &g.name),
            Resource::Endpoint(e) => endpoint_key(e),
        }
    }

    /// Stores an empty namespace as `default`, so keys, the API and xDS all
    /// show the same value.
    pub fn normalize(&mut self) {
        let ns = match self {
            Resource::Service(s) => &mut s.namespace,
            Resource::Endpoint(e) => &mut e.namespace,
            Resource::Route(r) => &mut r.namespace,
            Resource::Policy(p) => &mut p.namespace,
            Resource::Authz(a) => &mut a.namespace,
            Resource::Telemetry(t) => &mut t.namespace,
            Resource::PeerAuthn(p) => &mut p.namespace,
            Resource::Gateway(g) => &mut g.namespace,
        };
        if ns.is_empty() {
            *ns = namespace_or_default("").to_string();
        }
    }

    /// The resource as JSON (the same form the API accepts).
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Resource::Service(s) => serde_json::to_value(s),
            Resource::Endpoint(e) => serde_json::to_value(e),
            Resource::Route(r) => serde_json::to_value(r),
            Resource::Policy(p) => serde_json::to_value(p),
            Resource::Authz(a) => serde_json::to_value(a),
            Resource::Telemetry(t) => serde_json::to_value(t),
            Resource::PeerAuthn(p) => serde_json::to_value(p),
            Resource::Gateway(g) => serde_json::to_value(g),
        };
        // These types only hold strings, numbers, maps and lists.
        v.unwrap_or(serde_json::Value::Null)
    }

    /// Reads a resource of `kind` from JSON, rejecting unknown fields.
    pub fn from_json(kind: Kind, bytes: &[u8]) -> Result<Resource, serde_json::Error> {
        Ok(match kind {
            Kind::Service => Resource::Service(serde_json::from_slice(bytes)?),
            Kind::Endpoint => Resource::Endpoint(serde_json::from_slice(bytes)?),
            Kind::Route => Resource::Route(serde_json::from_slice(bytes)?),
            Kind::Policy => Resource::Policy(serde_json::from_slice(bytes)?),
            Kind::Authz => Resource::Authz(serde_json::from_slice(bytes)?),
            Kind::Telemetry => Resource::Telemetry(serde_json::from_slice(bytes)?),
            Kind::PeerAuthn => Resource::PeerAuthn(serde_json::from_slice(bytes)?),
            Kind::Gateway => Resource::Gateway(serde_json::from_slice(bytes)?),
        })
    }

    /// The protobuf encoding, as carried in `Any.value`.
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        match self {
            Resource::Service(s) => s.encode_to_vec(),
            Resource::Endpoint(e) => e.encode_to_vec(),
            Resource::Route(r) => r.encode_to_vec(),
            Resource::Policy(p) => p.encode_to_vec(),
            Resource::Authz(a) => a.encode_to_vec(),
            Resource::Telemetry(t) => t.encode_to_vec(),
            Resource::PeerAuthn(p) => p.encode_to_vec(),
            Resource::Gateway(g) => g.encode_to_vec(),
        }
    }

    /// Decodes a resource from an xDS `Any`; `None` for listeners and
    /// unknown type URLs.
    pub fn decode_any(any: &envoy_types::pb::google::protobuf::Any) -> Option<Resource> {
        use prost::Message;
        let kind = Kind::from_type_url(TypeUrl::parse(&any.type_url)?)?;
        let bytes = any.value.as_slice();
        Some(match kind {
            Kind::Service => Resource::Service(Service::decode(bytes).ok()?),
            Kind::Endpoint => Resource::Endpoint(Endpoint::decode(bytes).ok()?),
            Kind::Route => Resource::Route(Route::decode(bytes).ok()?),
            Kind::Policy => Resource::Policy(DestinationPolicy::decode(bytes).ok()?),
            Kind::Authz => Resource::Authz(AuthorizationPolicy::decode(bytes).ok()?),
            Kind::Telemetry => Resource::Telemetry(Telemetry::decode(bytes).ok()?),
            Kind::PeerAuthn => Resource::PeerAuthn(PeerAuthentication::decode(bytes).ok()?),
            Kind::Gateway => Resource::Gateway(Gateway::decode(bytes).ok()?),
        })
    }

    /// Adds the resource to the matching list of `mesh`.
    pub fn push_into(&self, mesh: &mut MeshResources) {
        match self {
            Resource::Service(s) => mesh.services.push(s.clone()),
            Resource::Endpoint(e) => mesh.endpoints.push(e.clone()),
            Resource::Route(r) => mesh.routes.push(r.clone()),
            Resource::Policy(p) => mesh.policies.push(p.clone()),
            Resource::Authz(a) => mesh.authorization_policies.push(a.clone()),
            Resource::Telemetry(t) => mesh.telemetry.push(t.clone()),
            Resource::PeerAuthn(p) => mesh.peer_authentications.push(p.clone()),
            Resource::Gateway(g) => mesh.gateways.push(g.clone()),
        }
    }

    /// Every resource of a [`MeshResources`] document except listeners, in
    /// dependency order, each with the path of its list item (`routes[2]`).
    pub fn from_mesh(mesh: MeshResources) -> Vec<(String, Resource)> {
        let mut out = Vec::new();
        let indexed = |kind: Kind, i: usize| format!("{}[{i}]", kind.plural());
        out.extend(
            mesh.services
                .into_iter()
                .enumerate()
                .map(|(i, s)| (indexed(Kind::Service, i), Resource::Service(s))),
        );
        out.extend(
            mesh.endpoints
                .into_iter()
                .enumerate()
                .map(|(i, e)| (indexed(Kind::Endpoint, i), Resource::Endpoint(e))),
        );
        out.extend(
            mesh.routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| (indexed(Kind::Route, i), Resource::Route(r))),
        );
        out.extend(
            mesh.policies
                .into_iter()
                .enumerate()
                .map(|(i, p)| (indexed(Kind::Policy, i), Resource::Policy(p))),
        );
        out.extend(
            mesh.authorization_policies
                .into_iter()
                .enumerate()
                .map(|(i, a)| (indexed(Kind::Authz, i), Resource::Authz(a))),
        );
        out.extend(
            mesh.telemetry
                .into_iter()
                .enumerate()
                .map(|(i, t)| (indexed(Kind::Telemetry, i), Resource::Telemetry(t))),
        );
        out.extend(
            mesh.peer_authentications
                .into_iter()
                .enumerate()
                .map(|(i, p)| (indexed(Kind::PeerAuthn, i), Resource::PeerAuthn(p))),
        );
        out.extend(
            mesh.gateways
                .into_iter()
                .enumerate()
                .map(|(i, g)| (indexed(Kind::Gateway, i), Resource::Gateway(g))),
        );
        out
    }

    /// The qualified key (`name.namespace`) of the service this resource
    /// belongs to: the service itself, or the one it backs or configures.
    pub fn service_ref(&self) -> String {
        match self {
            Resource::Service(s) => s.key(),
            Resource::Endpoint(e) => e.service_key(),
            Resource::Route(r) => sane_xds_proto::resources::qualify(&r.service, &r.namespace),
            Resource::Policy(p) => sane_xds_proto::resources::qualify(&p.service, &p.namespace),
            Resource::Authz(a) => a.service_key(),
            // Not about one service: it applies to its whole namespace.
            // Not about one service: a gateway configuration configures the
            // gateways it selects.
            Resource::Telemetry(_) | Resource::PeerAuthn(_) | Resource::Gateway(_) => String::new(),
        }
    }

    /// The namespace, with the default applied.
    pub fn namespace(&self) -> &str {
        namespace_or_default(match self {
            Resource::Service(s) => &s.namespace,
            Resource::Endpoint(e) => &e.namespace,
            Resource::Route(r) => &r.namespace,
            Resource::Policy(p) => &p.namespace,
            Resource::Authz(a) => &a.namespace,
            Resource::Telemetry(t) => &t.namespace,
            Resource::PeerAuthn(p) => &p.namespace,
            Resource::Gateway(g) => &g.namespace,
        })
    }
}

/// `namespace/name`, with the default namespace applied.
pub fn ns_key(namespace: &str, name: &str) -> String {
    format!("{}/{name}", namespace_or_default(namespace))
}

/// `address:port` of an endpoint: the sidecar port when there is one, else
/// the workload port.
pub fn endpoint_instance(e: &Endpoint) -> String {
    let port = if e.proxy_port != 0 {
        e.proxy_port
    } else {
        e.port
    };
    match e.address.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => format!("{}:{port}", e.address),
    }
}

/// `namespace/service/address:port` of an endpoint.
pub fn endpoint_key(e: &Endpoint) -> String {
    format!(
        "{}/{}/{}",
        namespace_or_default(&e.namespace),
        e.service,
        endpoint_instance(e)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let e = Endpoint {
            service: "echo".into(),
            address: "fd00::7".into(),
            port: 8080,
            ..Default::default()
        };
        assert_eq!(endpoint_key(&e), "default/echo/[fd00::7]:8080");
        let e = Endpoint {
            proxy_port: 15006,
            address: "10.0.0.7".into(),
            namespace: "shop".into(),
            ..e
        };
        assert_eq!(endpoint_key(&e), "shop/echo/10.0.0.7:15006");
        let mut r = Resource::Service(Service {
            name: "echo".into(),
            ..Default::default()
        });
        assert_eq!(r.key(), "default/echo");
        r.normalize();
        assert_eq!(r.namespace(), "default");
        assert_eq!(Kind::parse("policies"), Some(Kind::Policy));
        assert_eq!(Kind::parse("route"), Some(Kind::Route));
    }
}
