//! Istio's `Sidecar` → a [`SidecarScope`]: the egress hosts that limit
//! what the proxies it selects are sent (the xDS view applies it, see
//! `crate::xds::scope`).
//!
//! `egress[].hosts` are read as Istio writes them, `namespace/dnsName`:
//! `./*` (every service of the Sidecar's namespace), `*/*` (everything),
//! `istio-system/*`, `prod/reviews.prod.svc.cluster.local`,
//! `*/*.example.com`, `~/*` (nothing). The hosts of every egress listener
//! are admitted on every port (Sane proxies have one outbound listener);
//! `workloadSelector.labels` selects proxies by their node labels or the
//! labels of the endpoints they serve.

use super::common::{present, P};
use super::error::IstioError;
use super::object::Object;
use super::Output;
use crate::xds::scope::{EgressHost, ScopeSource, SidecarScope};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct SidecarSpec {
    workload_selector: Option<WorkloadSelector>,
    ingress: Option<Value>,
    egress: Vec<EgressListener>,
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    inbound_connection_pool: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct WorkloadSelector {
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct EgressListener {
    port: Option<Value>,
    bind: Option<String>,
    capture_mode: Option<String>,
    hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct OutboundTrafficPolicy {
    mode: Option<String>,
    egress_proxy: Option<Value>,
}

/// Converts a Sidecar into the scope of the proxies it selects.
pub(crate) fn sidecar(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: SidecarSpec = object.spec()?;
    let root = P::spec();
    let report = &mut out.report;
    if present(&s.ingress) {
        report.unsupported(
            &root.f("ingress"),
            "inbound listeners come from each proxy's bootstrap (`listeners`, `workload_ports`)",
        );
    }
    if present(&s.inbound_connection_pool) {
        report.unsupported(
            &root.f("inboundConnectionPool"),
            "inbound limits are the bootstrap listener's (`max_connections`)",
        );
    }
    if let Some(policy) = &s.outbound_traffic_policy {
        let pp = root.f("outboundTrafficPolicy");
        match policy.mode.as_deref() {
            None | Some("REGISTRY_ONLY") => report.note(
                &pp.f("mode"),
                "what Sane proxies always do: a host not in the view gets 404 `NR`",
            ),
            Some(other) => report.unsupported(
                &pp.f("mode"),
                format!(
                    "{other:?}: Sane proxies send only to services in their view (REGISTRY_ONLY)"
                ),
            ),
        }
        if present(&policy.egress_proxy) {
            report.unsupported(&pp.f("egressProxy"), "Sane proxies have no egress proxy");
        }
    }
    let selector = match &s.workload_selector {
        Some(w) if !w.labels.is_empty() => Some(w.labels.clone()),
        Some(_) => {
            report.note(
                &root.f("workloadSelector"),
                "no labels: applies to the whole namespace",
            );
            None
        }
        None => None,
    };
    let mut egress = Vec::new();
    for (i, l) in s.egress.iter().enumerate() {
        let lp = root.i("egress", i);
        if present(&l.port) {
            report.unsupported(
                &lp.f("port"),
                "Sane proxies have one outbound listener: its hosts are admitted on every port",
            );
        }
        if l.bind.is_some() {
            report.unsupported(
                &lp.f("bind"),
                "the outbound listener's address is the bootstrap's",
            );
        }
        if l.capture_mode.is_some() {
            report.unsupported(
                &lp.f("captureMode"),
                "capture is set up by `sane-proxy iptables`, per proxy",
            );
        }
        for (j, h) in l.hosts.iter().enumerate() {
            egress.push(egress_host(object, &lp.i("hosts", j), h)?);
        }
    }
    if s.egress.is_empty() {
        // Istio falls back to the mesh's default Sidecar; here nothing
        // limits the view.
        report.note(
            &root.f("egress"),
            "none: the proxies' views are not limited",
        );
        return Ok(());
    }
    out.scope = Some(SidecarScope {
        namespace: object.namespace.clone(),
        // Marked by the caller that knows (`crate::xds::scope::merge`).
        source: ScopeSource::Api,
        name: object.name.clone(),
        selector,
        egress,
    });
    Ok(())
}

/// `namespace/dnsName`, `.` resolved to the Sidecar's namespace.
fn egress_host(object: &Object, path: &P, text: &str) -> Result<EgressHost, IstioError> {
    let malformed = |why: &str| IstioError::Malformed {
        object: Box::new(object.reference()),
        message: format!("{}: {text:?} {why}", path.as_str()),
    };
    let text = text.trim().to_ascii_lowercase();
    let Some((ns, host)) = text.split_once('/') else {
        return Err(malformed(
            "is not namespace/host (e.g. ./*, */*, istio-system/*, prod/reviews.prod.svc.cluster.local)",
        ));
    };
    let ns_ok = matches!(ns, "*" | "." | "~")
        || (!ns.is_empty()
            && ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    if !ns_ok {
        return Err(malformed("names no namespace (`*`, `.`, `~` or a name)"));
    }
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = host == "*"
        || (!bare.is_empty()
            && bare.len() <= 253
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !host_ok {
        return Err(malformed("names no host (`*`, `*.suffix` or a DNS name)"));
    }
    Ok(EgressHost {
        namespace: if ns == "." {
            object.namespace.clone()
        } else {
            ns.to_string()
        },
        host: host.to_string(),
    })
}
