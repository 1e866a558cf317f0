//! The full set of mesh resources a proxy runs on, and their type URLs.

use crate::validate::{Errors, FieldPath, ValidationErrors};
use crate::{
    AuthorizationPolicy, DestinationPolicy, Endpoint, Gateway, Listener, PeerAuthentication, Route,
    Service, Telemetry,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Every resource a proxy needs: what a YAML file holds and what the control
/// plane pushes.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshResources {
    /// Listeners. Default: none.
    #[prost(message, repeated, tag = "1")]
    pub listeners: Vec<Listener>,
    /// Services. Default: none.
    #[prost(message, repeated, tag = "2")]
    pub services: Vec<Service>,
    /// Endpoints. Default: none.
    #[prost(message, repeated, tag = "3")]
    pub endpoints: Vec<Endpoint>,
    /// Routes. Default: none.
    #[prost(message, repeated, tag = "4")]
    pub routes: Vec<Route>,
    /// Destination policies. Default: none.
    #[prost(message, repeated, tag = "5")]
    pub policies: Vec<DestinationPolicy>,
    /// Authorization policies, enforced by the sidecars of their target
    /// service. Default: none (every caller allowed).
    #[prost(message, repeated, tag = "6")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// Tracing and access-log settings. Default: none.
    #[prost(message, repeated, tag = "7")]
    pub telemetry: Vec<Telemetry>,
    /// Mutual TLS modes of the inbound side of workloads (Istio
    /// `PeerAuthentication`), resolved by each sidecar for itself. Default:
    /// none (each inbound listener's own `tls_mode`, else `strict` with an
    /// identity).
    #[prost(message, repeated, tag = "8")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Ingress gateway configurations, delivered to the gateway proxies
    /// their `selector` matches (a sidecar ignores them). Default: none.
    #[prost(message, repeated, tag = "9")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Gateway>,
}

/// The type URL of each resource kind on the xDS wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TypeUrl {
    /// [`Listener`]
    Listener,
    /// [`Service`]
    Service,
    /// [`Endpoint`]
    Endpoint,
    /// [`Route`]
    Route,
    /// [`DestinationPolicy`]
    DestinationPolicy,
    /// [`AuthorizationPolicy`]
    AuthorizationPolicy,
    /// [`Telemetry`]
    Telemetry,
    /// [`PeerAuthentication`]
    PeerAuthentication,
    /// [`Gateway`]
    Gateway,
}

// === impl TypeUrl ===

impl TypeUrl {
    /// All kinds, in the order a proxy applies them.
    pub const ALL: [TypeUrl; 9] = [
        TypeUrl::Listener,
        TypeUrl::Service,
        TypeUrl::Endpoint,
        TypeUrl::Route,
        TypeUrl::DestinationPolicy,
        TypeUrl::AuthorizationPolicy,
        TypeUrl::Telemetry,
        TypeUrl::PeerAuthentication,
        TypeUrl::Gateway,
    ];

    /// The URL string.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Listener => "type.googleapis.com/sane.mesh.v1.Listener",
            TypeUrl::Service => "type.googleapis.com/sane.mesh.v1.Service",
            TypeUrl::Endpoint => "type.googleapis.com/sane.mesh.v1.Endpoint",
            TypeUrl::Route => "type.googleapis.com/sane.mesh.v1.Route",
            TypeUrl::DestinationPolicy => "type.googleapis.com/sane.mesh.v1.DestinationPolicy",
            TypeUrl::AuthorizationPolicy => "type.googleapis.com/sane.mesh.v1.AuthorizationPolicy",
            TypeUrl::Telemetry => "type.googleapis.com/sane.mesh.v1.Telemetry",
            TypeUrl::PeerAuthentication => "type.googleapis.com/sane.mesh.v1.PeerAuthentication",
            TypeUrl::Gateway => "type.googleapis.com/sane.mesh.v1.Gateway",
        }
    }

    /// Parses a URL string.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }
}

// === impl MeshResources ===

impl MeshResources {
    /// Validates every resource and the references between them. The error
    /// lists every bad field with its path, e.g. `routes[0].service`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    /// [`MeshResources::validate`] for a document that holds every service
    /// of the mesh (the control plane's registry): also the `service` of
    /// every authorization policy must be declared, so a policy naming a
    /// service that does not exist is rejected instead of applying to no
    /// one (or to whatever workload happens to carry that name).
    pub fn validate_registry(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        let services: HashSet<String> = self.services.iter().map(Service::key).collect();
        for (i, a) in self.authorization_policies.iter().enumerate() {
            let key = a.service_key();
            if !key.is_empty() && !services.contains(&key) {
                errs.push(
                    &FieldPath::root()
                        .item("authorization_policies", i)
                        .field("service"),
                    format!("{key:?} is not a declared service"),
                );
            }
        }
        errs.finish()
    }

    pub(crate) fn validate_into(&self, root: &FieldPath, errs: &mut Errors) {
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let p = root.item("listeners", i);
            l.validate_into(&p, errs);
            if !names.insert(l.name.as_str()) {
                errs.push(&p.field("name"), format!("{:?} is declared twice", l.name));
            }
            if let Some(a) = l.socket_addr() {
                if a.port() != 0 && !addrs.insert(a) {
                    errs.push(&p.field("address"), format!("{a} is used twice"));
                }
            }
        }
        let mut services = HashSet::new();
        let mut vips = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let p = root.item("services", i);
            s.validate_into(&p, errs);
            if !services.insert(s.key()) {
                errs.push(&p.field("name"), format!("{:?} is declared twice", s.key()));
            }
            for (j, a) in s.addresses.iter().enumerate() {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                match vips.get(&ip) {
                    Some(owner) if *owner != s.key() => errs.push(
                        &p.item("addresses", j),
                        format!("{ip} is already the address of {owner:?}"),
                    ),
                    _ => {
                        vips.insert(ip, s.key());
                    }
                }
            }
        }
        let known = |name: &str, ns: &str| -> bool {
            let key = qualify(name, ns);
            services.contains(&key)
        };
        for (i, e) in self.endpoints.iter().enumerate() {
            let p = root.item("endpoints", i);
            e.validate_into(&p, errs);
            if !e.service.is_empty() && !known(&e.service, &e.namespace) {
                errs.push(
                    &p.field("service"),
                    format!("{:?} is not a declared service", e.service_key()),
                );
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let p = root.item("routes", i);
            r.validate_into(&p, errs);
            if !r.service.is_empty() && !known(&r.service, &r.namespace) {
                errs.push(
                    &p.field("service"),
                    format!("{:?} is not a declared service", r.service),
                );
            }
            for (j, rule) in r.rules.iter().enumerate() {
                for (k, d) in rule.destinations.iter().enumerate() {
                    if !d.service.is_empty() && !known(&d.service, &r.namespace) {
                        errs.push(
                            &p.item("rules", j).item("destinations", k).field("service"),
                            format!("{:?} is not a declared service", d.service),
                        );
                    }
                }
                if let Some(m) = &rule.mirror {
                    if !m.service.is_empty() && !known(&m.service, &r.namespace) {
                        errs.push(
                            &p.item("rules", j).field("mirror").field("service"),
                            format!("{:?} is not a declared service", m.service),
                        );
                    }
                }
            }
        }
        for (i, d) in self.policies.iter().enumerate() {
            let p = root.item("policies", i);
            d.validate_into(&p, errs);
            if !d.service.is_empty() && !known(&d.service, &d.namespace) {
                errs.push(
                    &p.field("service"),
                    format!("{:?} is not a declared service", d.service),
                );
            }
        }
        // The target of an authorization policy is a workload, which need
        // not be a declared service of this document (a sidecar's own file
        // rarely declares its own service), so it is not cross-checked here;
        // `validate_registry` does, for the registry that holds them all.
        let mut authz = HashSet::new();
        for (i, a) in self.authorization_policies.iter().enumerate() {
            let p = root.item("authorization_policies", i);
            a.validate_into(&p, errs);
            let key = (crate::namespace_or_default(&a.namespace), a.name.as_str());
            if !authz.insert(key) {
                errs.push(&p.field("name"), format!("{:?} is declared twice", a.name));
            }
        }
        let mut telemetry = HashSet::new();
        for (i, t) in self.telemetry.iter().enumerate() {
            let p = root.item("telemetry", i);
            t.validate_into(&p, errs);
            let key = qualify(&t.name, &t.namespace);
            if !telemetry.insert(key.clone()) {
                errs.push(&p.field("name"), format!("{key:?} is declared twice"));
            }
        }
        let mut peer = HashSet::new();
        for (i, a) in self.peer_authentications.iter().enumerate() {
            let p = root.item("peer_authentications", i);
            a.validate_into(&p, errs);
            if !peer.insert((a.namespace(), a.name.as_str())) {
                errs.push(&p.field("name"), format!("{:?} is declared twice", a.name));
            }
        }
        let mut gateways = HashSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let p = root.item("gateways", i);
            g.validate_resource_into(&p, errs);
            let key = format!("{}/{}", crate::namespace_or_default(&g.namespace), g.name);
            if !gateways.insert(key.clone()) {
                errs.push(&p.field("name"), format!("{key:?} is declared twice"));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if !l.service.is_empty() && !known(&l.service, "") {
                errs.push(
                    &root.item("listeners", i).field("service"),
                    format!("{:?} is not a declared service", l.service),
                );
            }
        }
    }
}

/// Qualifies a service reference: `name` becomes `name.<ns>`; `name.ns` stays.
pub fn qualify(name: &str, ns: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.{}", crate::namespace_or_default(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServicePort;

    #[test]
    fn the_registry_rejects_a_policy_for_an_unknown_service() {
        let mut mesh = MeshResources {
            services: vec![Service {
                name: "edge".into(),
                ports: vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            authorization_policies: vec![AuthorizationPolicy {
                name: "p".into(),
                service: "ghost".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // A sidecar's file need not declare its own service ...
        mesh.validate().unwrap();
        // ... the registry holds them all.
        let err = mesh.validate_registry().unwrap_err().to_string();
        assert!(
            err.contains(
                "authorization_policies[0].service: \"ghost.default\" is not a declared service"
            ),
            "{err}"
        );
        mesh.authorization_policies[0].service = "edge".into();
        mesh.validate_registry().unwrap();
    }
}
