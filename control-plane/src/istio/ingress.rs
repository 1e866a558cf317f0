//! Kinds accepted and checked against their schema, whose effect Sane does
//! not produce yet: Istio's `Gateway` and `Sidecar`, and the Gateway API's
//! `Gateway`. Each is read (a malformed one is refused) and every field
//! that configures something is reported, so nothing is silently dropped.

use super::common::{present, P};
use super::error::IstioError;
use super::object::Object;
use super::Output;
use serde::Deserialize;
use serde_json::Value;

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
    listeners: Option<Value>,
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

/// Reads a Gateway API Gateway (see [`istio_gateway`]).
pub(crate) fn kube_gateway(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: KubeGatewaySpec = object.spec()?;
    report_all(
        out,
        &[
            ("gatewayClassName", &s.gateway_class_name),
            ("listeners", &s.listeners),
            ("addresses", &s.addresses),
            ("infrastructure", &s.infrastructure),
            ("backendTLS", &s.backend_tls),
            ("allowedListeners", &s.allowed_listeners),
        ],
        "ingress Gateways are not converted yet: write the `gateway` section of `sane-proxy \
         gateway`'s bootstrap",
    );
    Ok(())
}
