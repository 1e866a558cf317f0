//! Ingress and scoping kinds. The Gateway API's `Gateway` becomes the
//! configuration of `sane-proxy gateway` (its `gateway` section: listeners,
//! and a host per hostname of the HTTPRoutes attached to it, see
//! [`super::gateway_api`]). Istio's `Gateway` and `Sidecar` are read and
//! checked against their schema (a malformed one is refused), and every
//! field that configures something is reported, so nothing is silently
//! dropped.

use super::common::{present, Report, P};
use super::error::IstioError;
use super::object::{Object, ObjectRef};
use super::Output;
use sane_xds_proto::{Gateway, GatewayHost, GatewayListener, GatewayRoute};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An HTTPRoute's claim on a Gateway: the hosts it serves there.
#[derive(Clone, Debug)]
pub(crate) struct GatewayAttach {
    /// Path of the `parentRefs` entry.
    pub(crate) path: P,
    /// The Gateway's namespace.
    pub(crate) namespace: String,
    /// The Gateway's name.
    pub(crate) gateway: String,
    /// `sectionName`: one listener of it.
    pub(crate) section: Option<String>,
    /// The route's `hostnames`.
    pub(crate) hostnames: Vec<String>,
    /// Where the gateway sends them.
    pub(crate) route: GatewayRoute,
}

/// The `sane-proxy gateway` configuration one Gateway stands for.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertedGateway {
    /// The Gateway object.
    pub object: ObjectRef,
    /// Its `gateway` section. Listener addresses are `0.0.0.0:<port>`.
    pub gateway: Gateway,
    /// Each listener's `hostname`, if any (hosts of routes without
    /// hostnames).
    #[serde(skip)]
    pub(crate) listener_hosts: Vec<(String, Option<String>)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct KubeListener {
    name: String,
    hostname: Option<String>,
    port: u32,
    protocol: String,
    tls: Option<Value>,
    allowed_routes: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct SidecarSpec {
    workload_selector: Option<Value>,
    ingress: Option<Value>,
    egress: Option<Value>,
    outbound_traffic_policy: Option<Value>,
    inbound_connection_pool: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IstioGatewaySpec {
    selector: Option<Value>,
    servers: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct KubeGatewaySpec {
    gateway_class_name: Option<Value>,
    listeners: Vec<KubeListener>,
    addresses: Option<Value>,
    infrastructure: Option<Value>,
    backend_tls: Option<Value>,
    allowed_listeners: Option<Value>,
}

fn report_all(out: &mut Output, fields: &[(&str, &Option<Value>)], reason: &str) {
    let root = P::spec();
    for (name, v) in fields {
        if present(v) {
            out.report.unsupported(&root.f(name), reason);
        }
    }
}

/// Reads a Sidecar: what each proxy is sent is not scoped by egress hosts
/// yet.
pub(crate) fn sidecar(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: SidecarSpec = object.spec()?;
    report_all(
        out,
        &[
            ("workloadSelector", &s.workload_selector),
            ("ingress", &s.ingress),
            ("egress", &s.egress),
            ("outboundTrafficPolicy", &s.outbound_traffic_policy),
            ("inboundConnectionPool", &s.inbound_connection_pool),
        ],
        "Sidecar scoping is not converted yet: every proxy of a namespace is sent its whole view",
    );
    Ok(())
}

/// Reads an Istio Gateway: the gateway binary's configuration is not
/// produced from it yet.
pub(crate) fn istio_gateway(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: IstioGatewaySpec = object.spec()?;
    report_all(
        out,
        &[("selector", &s.selector), ("servers", &s.servers)],
        "ingress Gateways are not converted yet: write the `gateway` section of `sane-proxy \
         gateway`'s bootstrap",
    );
    Ok(())
}

/// Converts a Gateway API Gateway into the listeners of a `sane-proxy
/// gateway` configuration; hosts come from the routes attached to it
/// ([`attach`]).
pub(crate) fn kube_gateway(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: KubeGatewaySpec = object.spec()?;
    let root = P::spec();
    let _ = &s.gateway_class_name; // which controller runs it: `sane-proxy gateway` here
    report_all(
        out,
        &[
            ("addresses", &s.addresses),
            ("infrastructure", &s.infrastructure),
            ("backendTLS", &s.backend_tls),
            ("allowedListeners", &s.allowed_listeners),
        ],
        "the gateway's addresses and deployment are the operator's (its bootstrap file)",
    );
    let mut gateway = Gateway {
        name: object.name.clone(),
        ..Default::default()
    };
    let mut listener_hosts = Vec::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let lp = root.i("listeners", i);
        let tls = match l.protocol.as_str() {
            "HTTP" => false,
            "HTTPS" => {
                out.report.unsupported(
                    &lp.f("tls"),
                    "certificates are read from files: set `tls` (cert_file, key_file) on the \
                     gateway section's hosts; Secrets are not read",
                );
                true
            }
            other => {
                out.report.unsupported(
                    &lp.f("protocol"),
                    format!("{other:?}: the gateway serves HTTP and HTTPS; listener left out"),
                );
                continue;
            }
        };
        out.report.if_set(
            &lp,
            "allowedRoutes",
            &l.allowed_routes,
            "routes of every namespace may attach",
        );
        let _ = &l.tls;
        gateway.listeners.push(GatewayListener {
            name: l.name.clone(),
            address: format!("0.0.0.0:{}", l.port),
            tls,
            ..Default::default()
        });
        listener_hosts.push((l.name.clone(), l.hostname.clone()));
    }
    out.gateway = Some(ConvertedGateway {
        object: object.reference(),
        gateway,
        listener_hosts,
    });
    Ok(())
}

/// Adds the hosts `attach` claims to the gateway it names; `report` (the
/// route's) says why when it cannot.
pub(crate) fn attach(gateways: &mut [ConvertedGateway], a: &GatewayAttach, report: &mut Report) {
    let Some(g) = gateways
        .iter_mut()
        .find(|g| g.object.namespace == a.namespace && g.object.name == a.gateway)
    else {
        report.unsupported(
            &a.path,
            format!(
                "Gateway {}/{} is not among the objects: its hosts are not produced",
                a.namespace, a.gateway
            ),
        );
        return;
    };
    let mut hostnames = a.hostnames.clone();
    if hostnames.is_empty() {
        hostnames = g
            .listener_hosts
            .iter()
            .filter(|(name, _)| a.section.as_ref().is_none_or(|s| s == name))
            .filter_map(|(_, h)| h.clone())
            .collect();
    }
    if hostnames.is_empty() {
        report.unsupported(
            &a.path,
            "neither the route nor its listener names a hostname: the gateway serves named hosts",
        );
        return;
    }
    for h in hostnames {
        let h = h.to_ascii_lowercase();
        match g.gateway.hosts.iter_mut().find(|x| x.hostname == h) {
            Some(host) => host.routes.push(a.route.clone()),
            None => g.gateway.hosts.push(GatewayHost {
                hostname: h,
                routes: vec![a.route.clone()],
                ..Default::default()
            }),
        }
    }
}
