//! The xDS client's state machine, free of I/O.
//!
//! For each type it keeps what was last received (by resource name), the
//! version and nonce to answer with, and whether the type was ever accepted.
//! A response is decoded and each resource validated on its own; a resource
//! that fails names itself in the NACK. Resources referring to a service the
//! proxy has not (yet) received are held back rather than rejected: the
//! control plane may send types in any order, and they become active when
//! the service arrives. The merged candidate is then compiled by the caller;
//! a compile error is a NACK too (naming the resource:
//! [`compile_nack_reason`]), and the last good config keeps serving.

use crate::error::StartError;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{
    AuthorizationPolicy, DestinationPolicy, Endpoint, Gateway, MeshResources, PeerAuthentication,
    Route, Service, Telemetry, TypeUrl,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The types the proxy subscribes to, in the order it asks for them. A
/// sidecar is sent no `Gateway` (none selects it) and ignores any.
pub const SUBSCRIBED: [TypeUrl; 8] = [
    TypeUrl::Service,
    TypeUrl::Endpoint,
    TypeUrl::Route,
    TypeUrl::DestinationPolicy,
    TypeUrl::AuthorizationPolicy,
    TypeUrl::Telemetry,
    TypeUrl::PeerAuthentication,
    TypeUrl::Gateway,
];

/// A decoded resource of any subscribed type.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A service.
    Service(Service),
    /// An endpoint.
    Endpoint(Endpoint),
    /// A route.
    Route(Route),
    /// A destination policy.
    Policy(DestinationPolicy),
    /// An authorization policy.
    Authz(AuthorizationPolicy),
    /// Tracing and access-log settings.
    Telemetry(Telemetry),
    /// A mutual TLS mode of some workloads' inbound side.
    PeerAuthn(PeerAuthentication),
    /// An ingress gateway configuration (read by `sane-proxy gateway`).
    Gateway(Gateway),
}

#[derive(Debug, Default)]
struct TypeState {
    /// Version of the last accepted response.
    version: String,
    /// Accepted resources by name.
    accepted: BTreeMap<String, Resource>,
    /// True once a response of this type was accepted.
    acked: bool,
}

/// Per-type state for one proxy's xDS session(s); survives reconnects.
#[derive(Debug, Default)]
pub struct XdsState {
    types: HashMap<TypeUrl, TypeState>,
}

/// What to do with a response.
#[derive(Debug)]
pub struct Decision {
    /// The request to send back (ACK or NACK).
    pub reply: DiscoveryRequest,
    /// Resources to apply, when accepted.
    pub apply: Option<MeshResources>,
}

// === impl XdsState ===

impl XdsState {
    /// The initial request for `type_url` on a new stream; `node` goes on
    /// the first one only.
    pub fn subscribe(&self, t: TypeUrl) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.as_str().to_string(),
            version_info: self
                .types
                .get(&t)
                .map(|s| s.version.clone())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// True once every subscribed type was accepted at least once.
    pub fn all_acked(&self) -> bool {
        SUBSCRIBED
            .iter()
            .all(|t| self.types.get(t).is_some_and(|s| s.acked))
    }

    /// The version accepted for `t`.
    pub fn version(&self, t: TypeUrl) -> &str {
        self.types.get(&t).map_or("", |s| s.version.as_str())
    }

    /// Decodes and validates `resp`. On success returns the merged resources
    /// to compile; the caller then calls [`XdsState::accept`] or
    /// [`XdsState::reject`] with the compile result.
    pub fn candidate(
        &self,
        resp: &DiscoveryResponse,
    ) -> Result<(TypeUrl, BTreeMap<String, Resource>, MeshResources), String> {
        let (t, received) = receive(resp)?;
        let mut all: Vec<&Resource> = Vec::new();
        for other in SUBSCRIBED {
            if other == t {
                all.extend(received.values());
            } else if let Some(s) = self.types.get(&other) {
                all.extend(s.accepted.values());
            }
        }
        Ok((t, received.clone(), assemble(all)))
    }

    /// Records an accepted response and builds its ACK.
    pub fn accept(
        &mut self,
        t: TypeUrl,
        resp: &DiscoveryResponse,
        received: BTreeMap<String, Resource>,
    ) -> DiscoveryRequest {
        let s = self.types.entry(t).or_default();
        s.version = resp.version_info.clone();
        s.accepted = received;
        s.acked = true;
        DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        }
    }

    /// Builds the NACK for a rejected response: the last accepted version,
    /// the response's nonce, and the reason.
    pub fn reject(&self, resp: &DiscoveryResponse, reason: String) -> DiscoveryRequest {
        let version = TypeUrl::parse(&resp.type_url)
            .map(|t| self.version(t).to_string())
            .unwrap_or_default();
        DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: version,
            response_nonce: resp.nonce.clone(),
            error_detail: Some(Status {
                code: 3, // INVALID_ARGUMENT
                message: reason,
                details: vec![],
            }),
            ..Default::default()
        }
    }
}

/// Decodes and validates every resource of `resp`, by name: the first half
/// of [`XdsState::candidate`], without merging with the other types. Public
/// for tools that speak xDS like a proxy without a data plane (the
/// control-plane fleet benchmark, `bench/src/bin/fleet.rs`).
pub fn receive(resp: &DiscoveryResponse) -> Result<(TypeUrl, BTreeMap<String, Resource>), String> {
    let t = TypeUrl::parse(&resp.type_url)
        .filter(|t| SUBSCRIBED.contains(t))
        .ok_or_else(|| format!("unsupported type {:?}", resp.type_url))?;
    let mut received = BTreeMap::new();
    for (i, any) in resp.resources.iter().enumerate() {
        let r = decode(t, any).map_err(|e| format!("resources[{i}]: {e}"))?;
        let name = name_of(&r);
        validate(&r).map_err(|e| format!("{} {name}: {e}", kind(&r)))?;
        received.insert(name, r);
    }
    Ok((t, received))
}

/// Decodes one resource of type `t` and validates it; the error names the
/// resource (`service default/echo: ports[0].port: …`) once it could be
/// decoded.
pub fn decode_validated(t: TypeUrl, any: &Any) -> Result<Resource, String> {
    let r = decode(t, any)?;
    validate(&r).map_err(|e| format!("{} {}: {e}", kind(&r), name_of(&r)))?;
    Ok(r)
}

fn decode(t: TypeUrl, any: &Any) -> Result<Resource, String> {
    if any.type_url != t.as_str() {
        return Err(format!(
            "type {:?} in a {} response",
            any.type_url,
            t.as_str()
        ));
    }
    let v = any.value.as_slice();
    let err = |e: prost::DecodeError| format!("cannot decode: {e}");
    Ok(match t {
        TypeUrl::Service => Resource::Service(Service::decode(v).map_err(err)?),
        TypeUrl::Endpoint => Resource::Endpoint(Endpoint::decode(v).map_err(err)?),
        TypeUrl::Route => Resource::Route(Route::decode(v).map_err(err)?),
        TypeUrl::DestinationPolicy => Resource::Policy(DestinationPolicy::decode(v).map_err(err)?),
        TypeUrl::AuthorizationPolicy => {
            Resource::Authz(AuthorizationPolicy::decode(v).map_err(err)?)
        }
        TypeUrl::Telemetry => Resource::Telemetry(Telemetry::decode(v).map_err(err)?),
        TypeUrl::PeerAuthentication => {
            Resource::PeerAuthn(PeerAuthentication::decode(v).map_err(err)?)
        }
        TypeUrl::Gateway => Resource::Gateway(Gateway::decode(v).map_err(err)?),
        TypeUrl::Listener => return Err("listeners come from the bootstrap".into()),
    })
}

fn validate(r: &Resource) -> Result<(), sane_xds_proto::ValidationErrors> {
    match r {
        Resource::Service(s) => s.validate(),
        Resource::Endpoint(e) => e.validate(),
        Resource::Route(x) => x.validate(),
        Resource::Policy(p) => p.validate(),
        Resource::Authz(a) => a.validate(),
        Resource::Telemetry(t) => t.validate(),
        Resource::PeerAuthn(p) => p.validate(),
        Resource::Gateway(g) => g.validate_resource(),
    }
}

fn kind(r: &Resource) -> &'static str {
    match r {
        Resource::Service(_) => "service",
        Resource::Endpoint(_) => "endpoint",
        Resource::Route(_) => "route",
        Resource::Policy(_) => "policy",
        Resource::Authz(_) => "authorization_policy",
        Resource::Telemetry(_) => "telemetry",
        Resource::PeerAuthn(_) => "peer_authentication",
        Resource::Gateway(_) => "gateway",
    }
}

/// The resource's name, as the control plane names it.
pub fn name_of(r: &Resource) -> String {
    let ns = |n: &str| sane_xds_proto::namespace_or_default(n).to_string();
    match r {
        Resource::Service(s) => format!("{}/{}", ns(&s.namespace), s.name),
        Resource::Route(x) => format!("{}/{}", ns(&x.namespace), x.name),
        Resource::Policy(p) => format!("{}/{}", ns(&p.namespace), p.name),
        Resource::Authz(a) => format!("{}/{}", ns(&a.namespace), a.name),
        Resource::Telemetry(t) => format!("{}/{}", ns(&t.namespace), t.name),
        Resource::PeerAuthn(p) => format!("{}/{}", ns(&p.namespace), p.name),
        Resource::Gateway(g) => format!("{}/{}", ns(&g.namespace), g.name),
        Resource::Endpoint(e) => {
            let port = if e.proxy_port != 0 {
                e.proxy_port
            } else {
                e.port
            };
            let addr = if e.address.contains(':') {
                format!("[{}]", e.address)
            } else {
                e.address.clone()
            };
            format!("{}/{}/{addr}:{port}", ns(&e.namespace), e.service)
        }
    }
}

/// The NACK message for a candidate that validated but failed to compile
/// (a regex, a destination port): the error names the field by its index in
/// the merged resources (`resources.routes[3]...`), which means nothing to
/// the control plane, so the message starts with the resource's name, as a
/// validation NACK does (`route default/web: ...`).
pub fn compile_nack_reason(e: &StartError, candidate: &MeshResources) -> String {
    let text = e.to_string();
    let StartError::Compile { field, .. } = e else {
        return text;
    };
    match resource_at(field, candidate) {
        Some(r) => format!("{} {}: {text}", kind(&r), name_of(&r)),
        None => text,
    }
}

/// The resource a compile error's field path (`resources.<kind>[<i>]...`)
/// points at. Listeners come from the bootstrap file, not from xDS.
fn resource_at(field: &str, candidate: &MeshResources) -> Option<Resource> {
    let (kind, rest) = field.strip_prefix("resources.")?.split_once('[')?;
    let i: usize = rest.split_once(']')?.0.parse().ok()?;
    match kind {
        "services" => candidate.services.get(i).cloned().map(Resource::Service),
        "endpoints" => candidate.endpoints.get(i).cloned().map(Resource::Endpoint),
        "routes" => candidate.routes.get(i).cloned().map(Resource::Route),
        "policies" => candidate.policies.get(i).cloned().map(Resource::Policy),
        "authorization_policies" => candidate
            .authorization_policies
            .get(i)
            .cloned()
            .map(Resource::Authz),
        "telemetry" => candidate.telemetry.get(i).cloned().map(Resource::Telemetry),
        "peer_authentications" => candidate
            .peer_authentications
            .get(i)
            .cloned()
            .map(Resource::PeerAuthn),
        "gateways" => candidate.gateways.get(i).cloned().map(Resource::Gateway),
        _ => None,
    }
}

/// Builds the resource set, holding back what refers to unknown services.
fn assemble(all: Vec<&Resource>) -> MeshResources {
    let services: HashSet<String> = all
        .iter()
        .filter_map(|r| match r {
            Resource::Service(s) => Some(s.key()),
            _ => None,
        })
        .collect();
    let known = |name: &str, ns: &str| services.contains(&qualify(name, ns));
    let mut out = MeshResources::default();
    for r in all {
        match r {
            Resource::Service(s) => out.services.push(s.clone()),
            Resource::Endpoint(e) if known(&e.service, &e.namespace) => {
                out.endpoints.push(e.clone())
            }
            Resource::Route(x)
                if known(&x.service, &x.namespace)
                    && x.rules.iter().all(|rule| {
                        rule.destinations
                            .iter()
                            .all(|d| known(&d.service, &x.namespace))
                    }) =>
            {
                out.routes.push(x.clone())
            }
            Resource::Policy(p) if known(&p.service, &p.namespace) => out.policies.push(p.clone()),
            // Its target is the workload enforcing it, which need not be a
            // service this proxy sees: never held back.
            Resource::Authz(a) => out.authorization_policies.push(a.clone()),
            Resource::Telemetry(t) => out.telemetry.push(t.clone()),
            Resource::PeerAuthn(p) => out.peer_authentications.push(p.clone()),
            // Its routes' services are checked when the gateway compiles
            // its table: never held back.
            Resource::Gateway(g) => out.gateways.push(g.clone()),
            other => tracing::debug!(
                resource = %name_of(other),
                "held back until the service it refers to arrives"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::ServicePort;

    fn any<M: Message>(t: TypeUrl, m: &M) -> Any {
        Any {
            type_url: t.as_str().into(),
            value: m.encode_to_vec(),
        }
    }

    fn resp(t: TypeUrl, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            type_url: t.as_str().into(),
            version_info: version.into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        }
    }

    fn echo() -> Service {
        Service {
            name: "echo".into(),
            ports: vec![ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            service: "echo".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_before_services_are_held_not_rejected() {
        let mut st = XdsState::default();
        let r = resp(
            TypeUrl::Endpoint,
            "e1",
            "n1",
            vec![any(TypeUrl::Endpoint, &endpoint())],
        );
        let (t, got, candidate) = st.candidate(&r).unwrap();
        assert!(candidate.endpoints.is_empty());
        let ack = st.accept(t, &r, got);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("e1", "n1")
        );
        assert!(ack.error_detail.is_none());

        let r = resp(
            TypeUrl::Service,
            "s1",
            "n2",
            vec![any(TypeUrl::Service, &echo())],
        );
        let (_, _, candidate) = st.candidate(&r).unwrap();
        assert_eq!(candidate.endpoints.len(), 1, "held endpoint becomes active");
        assert!(!st.all_acked());
    }

    #[test]
    fn invalid_resource_is_nacked_with_its_name_and_field() {
        let mut st = XdsState::default();
        let good = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![any(TypeUrl::Service, &echo())],
        );
        let (t, got, _) = st.candidate(&good).unwrap();
        st.accept(t, &good, got);
        let mut bad = echo();
        bad.ports[0].port = 0;
        let r = resp(
            TypeUrl::Service,
            "s2",
            "n2",
            vec![any(TypeUrl::Service, &bad)],
        );
        let reason = st.candidate(&r).unwrap_err();
        assert_eq!(
            reason,
            "service default/echo: ports[0].port: 0 is not a valid port (1-65535)"
        );
        let nack = st.reject(&r, reason);
        assert_eq!(
            nack.version_info, "s1",
            "NACK carries the last good version"
        );
        assert_eq!(nack.response_nonce, "n2");
        assert!(nack.error_detail.unwrap().message.contains("ports[0].port"));
    }

    #[test]
    fn peer_authentications_are_accepted_and_a_bad_one_nacked_by_field() {
        let st = XdsState::default();
        let mut p = PeerAuthentication {
            name: "ratings".into(),
            namespace: "shop".into(),
            selector: [("app".to_string(), "ratings".to_string())].into(),
            mode: sane_xds_proto::TlsMode::Strict.into(),
            ..Default::default()
        };
        p.port_modes
            .insert(9080, sane_xds_proto::TlsMode::Disable.into());
        let t = TypeUrl::PeerAuthentication;
        let (_, _, candidate) = st.candidate(&resp(t, "1", "n1", vec![any(t, &p)])).unwrap();
        assert_eq!(candidate.peer_authentications, [p.clone()]);
        p.port_modes.insert(0, 9);
        let reason = st
            .candidate(&resp(t, "2", "n2", vec![any(t, &p)]))
            .unwrap_err();
        assert!(
            reason.starts_with(
                "peer_authentication shop/ratings: port_modes.0: 0 is not a valid port"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("port_modes.0: 9 is not a known value"),
            "{reason}"
        );
    }

    #[test]
    fn gateways_are_delivered_whole_and_an_invalid_one_is_nacked_by_name() {
        let st = XdsState::default();
        let gw = Gateway {
            name: "public".into(),
            namespace: "istio-system".into(),
            selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        };
        let r = resp(
            TypeUrl::Gateway,
            "g1",
            "n1",
            vec![any(TypeUrl::Gateway, &gw)],
        );
        let (t, got, candidate) = st.candidate(&r).unwrap();
        assert_eq!(t, TypeUrl::Gateway);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["istio-system/public"]);
        // Never held back: its routes' services are the gateway's to resolve.
        assert_eq!(candidate.gateways, std::slice::from_ref(&gw));
        let mut bad = gw;
        bad.selector.clear();
        let r = resp(
            TypeUrl::Gateway,
            "g2",
            "n2",
            vec![any(TypeUrl::Gateway, &bad)],
        );
        let reason = st.candidate(&r).unwrap_err();
        assert!(
            reason.starts_with("gateway istio-system/public: selector: at least one label"),
            "{reason}"
        );
    }

    #[test]
    fn garbage_and_wrong_types_are_nacked() {
        let st = XdsState::default();
        let r = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![Any {
                type_url: TypeUrl::Service.as_str().into(),
                value: vec![0xff, 0xff, 0xff],
            }],
        );
        assert!(st
            .candidate(&r)
            .unwrap_err()
            .starts_with("resources[0]: cannot decode"));
        let r = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![any(TypeUrl::Endpoint, &endpoint())],
        );
        assert!(st
            .candidate(&r)
            .unwrap_err()
            .contains("in a type.googleapis.com/sane.mesh.v1.Service response"));
    }

    #[test]
    fn compile_errors_are_nacked_with_the_resource_name() {
        let route = Route {
            name: "canary".into(),
            namespace: "shop".into(),
            service: "echo".into(),
            ..Default::default()
        };
        let candidate = MeshResources {
            routes: vec![route],
            ..Default::default()
        };
        let compile = |field: &str| StartError::Compile {
            path: "xds Route".into(),
            field: field.into(),
            reason: "invalid regex \"[a-\"".into(),
        };
        let reason = compile_nack_reason(
            &compile("resources.routes[0].rules[0].matches[0].headers[0].value"),
            &candidate,
        );
        assert_eq!(
            reason,
            "route shop/canary: invalid config xds Route: \
             resources.routes[0].rules[0].matches[0].headers[0].value: invalid regex \"[a-\""
        );
        // A listener (from the file) or an index out of range: unchanged.
        for field in ["resources.listeners[0].service_port", "resources.routes[7]"] {
            let e = compile(field);
            assert_eq!(compile_nack_reason(&e, &candidate), e.to_string());
        }
    }

    #[test]
    fn ready_after_every_type_is_acked() {
        let mut st = XdsState::default();
        for (i, t) in SUBSCRIBED.into_iter().enumerate() {
            assert!(!st.all_acked());
            let r = resp(t, "v", &format!("n{i}"), vec![]);
            let (t, got, _) = st.candidate(&r).unwrap();
            st.accept(t, &r, got);
        }
        assert!(st.all_acked());
        assert_eq!(st.subscribe(TypeUrl::Route).version_info, "v");
    }
}
