//! Istio and Kubernetes Gateway API objects, converted into Sane resources.
//!
//! People bring the configuration they already have: `VirtualService`,
//! `DestinationRule`, `ServiceEntry`, `Sidecar`, `Gateway`
//! (`networking.istio.io` v1, v1beta1, v1alpha3), `PeerAuthentication`,
//! `AuthorizationPolicy` (`security.istio.io` v1, v1beta1), and the Gateway
//! API's `HTTPRoute`, `GRPCRoute`, `Gateway` (`gateway.networking.k8s.io`
//! v1, v1beta1). [`convert`] turns a set of them into the
//! [`MeshResources`] they stand for, plus, for every field Sane cannot
//! honour, an [`Unsupported`] naming its path (`spec.http[0].corsPolicy`)
//! and why. A field is never dropped silently: a dropped timeout or
//! authorization rule is an outage or a hole.
//!
//! Conversion is a pure function of the objects and a [`Context`] (the Sane
//! services, endpoints and routes they may refer to), so `sanectl convert`,
//! `sanectl apply` and tests run the same code. Each kind family has its own
//! module: [`virtual_service`], [`destination_rule`] (with
//! `ServiceEntry`), [`security`] (`AuthorizationPolicy`,
//! `PeerAuthentication`), [`gateway_api`] (`HTTPRoute`, `GRPCRoute`),
//! [`ingress`] (the two `Gateway` kinds: `sane-proxy gateway`
//! configurations) and [`sidecar`] (`Sidecar`: the scope of what proxies
//! are sent). [`object`] reads the envelope (apiVersion, kind, metadata) and
//! [`common`] holds what they share (durations, host names, the report).
//!
//! Errors stop the whole conversion, so nothing is stored: an unknown kind,
//! a malformed object (a wrong type or a field not in the published
//! schema), a reference to a missing subset, a host no service answers to,
//! two objects (or a Sane route and an Istio one) directing the same
//! service.

pub mod cli;
pub mod common;
pub mod destination_rule;
mod error;
pub mod gateway_api;
pub mod ingress;
pub mod object;
pub mod security;
pub mod server;
pub mod sidecar;
pub mod store;
pub mod virtual_service;
pub mod watched;

pub use common::{Note, Unsupported};
pub use error::{IstioError, StoreError};
pub use object::{Document, ObjectRef};
pub use security::TlsSettings;

use crate::resource::{Kind, Resource};
use crate::xds::scope::SidecarScope;
use sane_xds_proto::{Endpoint, MeshResources, Route, Service};
use serde::Serialize;
use std::collections::BTreeMap;

/// What conversion may refer to besides the objects themselves: services,
/// endpoints (labels: subsets, selectors) and routes already in the
/// registry, or declared as Sane documents next to the Istio ones.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Known services.
    pub services: Vec<Service>,
    /// Known endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Routes not produced by the objects being converted (a second route
    /// for a service they direct is a conflict).
    pub routes: Vec<Route>,
}

/// The result of converting a set of objects.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Conversion {
    /// The Sane resources the objects stand for.
    pub resources: MeshResources,
    /// Per object, what it produced and what of it could not be honoured.
    pub objects: Vec<Converted>,
    /// The `sane-proxy gateway` configurations Gateway API Gateways stand
    /// for, with the hosts of the HTTPRoutes attached to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<ingress::ConvertedGateway>,
    /// The scopes Sidecars give the proxies they select (applied by the
    /// control plane's xDS views).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<SidecarScope>,
}

/// One converted object.
#[derive(Clone, Debug, Serialize)]
pub struct Converted {
    /// `Kind namespace/name`.
    pub object: ObjectRef,
    /// Its `apiVersion` (which of the two `Gateway` kinds it is).
    pub api_version: String,
    /// The Sane resources it produced: `kind namespace/name`.
    pub produced: Vec<String>,
    /// Fields not honoured, with their path and why.
    pub unsupported: Vec<Unsupported>,
    /// How a field was translated where Sane differs on purpose.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

/// What one object adds while it is converted.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) resources: Vec<Resource>,
    pub(crate) report: common::Report,
    /// A Gateway API Gateway's gateway configuration.
    pub(crate) gateway: Option<ingress::ConvertedGateway>,
    /// An HTTPRoute's hosts on Gateways.
    pub(crate) gateway_routes: Vec<ingress::GatewayAttach>,
    /// A Sidecar's scope.
    pub(crate) scope: Option<SidecarScope>,
}

// === impl Conversion ===

impl Conversion {
    /// Every unsupported field of every object, as `Kind ns/name: path: reason`.
    pub fn unsupported(&self) -> Vec<String> {
        self.objects
            .iter()
            .flat_map(|o| {
                o.unsupported
                    .iter()
                    .map(move |u| format!("{}: {}: {}", o.object, u.path, u.reason))
            })
            .collect()
    }
}

/// Converts `documents` (Istio and Gateway API objects; Sane documents are
/// context) into Sane resources. See the module docs for what is an error.
pub fn convert(documents: &[Document], context: &Context) -> Result<Conversion, IstioError> {
    let mut ctx = context.clone();
    let mut objects = Vec::new();
    for doc in documents {
        match doc {
            Document::Sane(mesh) => {
                ctx.services.extend(mesh.services.iter().cloned());
                ctx.endpoints.extend(mesh.endpoints.iter().cloned());
                ctx.routes.extend(mesh.routes.iter().cloned());
            }
            Document::Object(o) => objects.push(o),
        }
    }
    // ServiceEntries first: they declare services the others route to.
    // DestinationRules next: routes refer to their subsets.
    objects.sort_by_key(|o| o.kind.order());
    let mut out = Conversion::default();
    let mut subsets = destination_rule::Subsets::default();
    // HTTPRoutes are converted before the Gateways they attach to.
    let mut attaches: Vec<(usize, ingress::GatewayAttach)> = Vec::new();
    let mut reports: Vec<common::Report> = Vec::new();
    for object in &objects {
        let mut output = Output::default();
        use object::ObjectKind as K;
        match object.kind {
            K::ServiceEntry => destination_rule::service_entry(object, &mut output)?,
            K::DestinationRule => {
                destination_rule::destination_rule(object, &ctx, &mut subsets, &mut output)?
            }
            K::VirtualService => {
                virtual_service::virtual_service(object, &ctx, &subsets, &mut output)?
            }
            K::HttpRoute => gateway_api::http_route(object, &ctx, &mut output)?,
            K::GrpcRoute => gateway_api::grpc_route(object, &ctx, &mut output)?,
            K::AuthorizationPolicy => security::authorization_policy(object, &ctx, &mut output)?,
            K::PeerAuthentication => security::peer_authentication(object, &mut output)?,
            K::Sidecar => sidecar::sidecar(object, &mut output)?,
            K::IstioGateway => ingress::istio_gateway(object, &mut output)?,
            K::KubeGateway => ingress::kube_gateway(object, &mut output)?,
        }
        // Later objects resolve hosts against the services earlier ones
        // declared (ServiceEntries come first).
        for r in &output.resources {
            if let Resource::Service(s) = r {
                ctx.services.push(s.clone());
            }
            if let Resource::Endpoint(e) = r {
                ctx.endpoints.push(e.clone());
            }
        }
        let produced = output
            .resources
            .iter()
            .map(|r| format!("{} {}", r.kind(), r.key()))
            .collect();
        for r in &output.resources {
            r.push_into(&mut out.resources);
        }
        let mut produced: Vec<String> = produced;
        if let Some(g) = output.gateway {
            produced.push(format!("gateway {}/{}", g.object.namespace, g.object.name));
            out.gateways.push(g);
        }
        if let Some(scope) = output.scope {
            produced.push(format!("scope {}/{}", scope.namespace, scope.name));
            out.scopes.push(scope);
        }
        let index = reports.len();
        attaches.extend(output.gateway_routes.into_iter().map(|a| (index, a)));
        reports.push(output.report);
        out.objects.push(Converted {
            object: object.reference(),
            api_version: object.api_version.clone(),
            produced,
            unsupported: Vec::new(),
            notes: Vec::new(),
        });
    }
    for (index, a) in &attaches {
        ingress::attach(&mut out.gateways, a, &mut reports[*index]);
    }
    // With their hosts attached, the gateways are resources the control
    // plane delivers to the gateway proxies they select.
    for g in &out.gateways {
        let produced = format!("gateway {}/{}", g.object.namespace, g.object.name);
        let Some(index) = out
            .objects
            .iter()
            .position(|o| o.object == g.object && o.produced.contains(&produced))
        else {
            continue;
        };
        if g.gateway.selector.is_empty() {
            // Reported by the converter: delivered to no one.
            out.objects[index].produced.retain(|p| p != &produced);
            continue;
        }
        let taken = out
            .resources
            .gateways
            .iter()
            .any(|x| x.namespace == g.gateway.namespace && x.name == g.gateway.name);
        if taken {
            reports[index].unsupported(
                &common::P::spec(),
                format!(
                    "an Istio and a Gateway API Gateway are both named {}: only the first is \
                     delivered",
                    produced.trim_start_matches("gateway ")
                ),
            );
            out.objects[index].produced.retain(|p| p != &produced);
            continue;
        }
        out.resources.gateways.push(g.gateway.clone());
    }
    for (converted, report) in out.objects.iter_mut().zip(reports) {
        let (unsupported, notes) = report.finish();
        converted.unsupported = unsupported;
        converted.notes = notes;
    }
    check_conflicts(&out, &ctx)?;
    Ok(out)
}

/// Two routes (or two destination policies) for one service would leave the
/// proxy to pick one: report it instead.
fn check_conflicts(out: &Conversion, ctx: &Context) -> Result<(), IstioError> {
    let owner = |kind: Kind, key: &str| -> String {
        out.objects
            .iter()
            .find(|o| o.produced.iter().any(|p| p == &format!("{kind} {key}")))
            .map(|o| o.object.to_string())
            .unwrap_or_else(|| format!("{kind} {key}"))
    };
    let mut routes: BTreeMap<String, String> = BTreeMap::new();
    let produced: Vec<String> = out
        .resources
        .routes
        .iter()
        .map(|r| crate::resource::ns_key(&r.namespace, &r.name))
        .collect();
    let existing = ctx
        .routes
        .iter()
        .filter(|r| !produced.contains(&crate::resource::ns_key(&r.namespace, &r.name)))
        .map(|r| {
            (
                r,
                format!(
                    "Sane route {}",
                    crate::resource::ns_key(&r.namespace, &r.name)
                ),
            )
        });
    let new = out.resources.routes.iter().map(|r| {
        let key = crate::resource::ns_key(&r.namespace, &r.name);
        (r, owner(Kind::Route, &key))
    });
    for (route, who) in existing.chain(new) {
        let service = sane_xds_proto::resources::qualify(&route.service, &route.namespace);
        if let Some(first) = routes.insert(service.clone(), who.clone()) {
            return Err(IstioError::Conflict {
                service,
                first,
                second: who,
            });
        }
    }
    let mut policies: BTreeMap<String, String> = BTreeMap::new();
    for p in &out.resources.policies {
        let service = sane_xds_proto::resources::qualify(&p.service, &p.namespace);
        let who = owner(
            Kind::Policy,
            &crate::resource::ns_key(&p.namespace, &p.name),
        );
        if let Some(first) = policies.insert(service.clone(), who.clone()) {
            return Err(IstioError::Conflict {
                service,
                first,
                second: who,
            });
        }
    }
    Ok(())
}

/// Parses multi-document YAML and converts it (see [`convert`]).
pub fn convert_text(text: &str, context: &Context) -> Result<Conversion, IstioError> {
    let docs = object::parse_documents(text)?;
    convert(&docs, context)
}

#[cfg(test)]
mod tests;
