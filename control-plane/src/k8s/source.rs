//! The Kubernetes registry source: what the cluster holds, as registry
//! resources, kept in the registry under the owner `kubernetes`.
//!
//! [`convert`] is a pure function of the [`ObjectStore`]:
//!
//! * a Service (except `ExternalName` ones and those of excluded namespaces)
//!   becomes a service with its TCP ports and its ClusterIPs as `addresses`
//!   (what transparent interception routes by); a port's protocol comes
//!   from its `appProtocol` or name ([`super::port_protocol`]); unnamed
//!   ports get the registry's default name (`http-80`);
//! * every address of a ready endpoint of its EndpointSlices becomes an
//!   endpoint: workload ports from the slice (so named `targetPort`s
//!   resolve per pod), and from the pod the endpoint points at — its labels,
//!   and if it runs the injected sidecar, its `proxy_port` and its identity
//!   `spiffe://<trust domain>/ns/<ns>/sa/<service account>`. Terminating
//!   (not ready) endpoints are left out; an address its pod no longer has
//!   (the pod moved) is left out; an endpoint whose pod has not been seen
//!   yet is left out until it is (it would otherwise be reached without its
//!   sidecar);
//! * `Route`, `DestinationPolicy` and `AuthorizationPolicy` objects become
//!   routes, destination and authorization policies
//!   ([`super::crd`]); a malformed one is a [`Problem`], not an error.
//!
//! [`KubeSource::sync`] then writes the difference to the registry as one
//! transaction. If the registry rejects it (a route to a service that does
//! not exist, a name a config file already owns), it falls back to writing
//! services and endpoints, then each route and policy on its own, so one bad
//! object only keeps itself out; what was rejected is reported, and logged
//! once.

use super::crd::{self, PolicyKind};
use super::store::ObjectStore;
use crate::error::Error;
use crate::registry::{Change, Op, Origin, Registry};
use crate::resource::{Kind, Resource};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sane_xds_proto::{Endpoint, Service, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's Kubernetes port names → registry port names.
type PortNames = BTreeMap<String, String>;

/// How cluster objects are converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSettings {
    /// Trust domain of the identities. Default: `cluster.local`.
    pub trust_domain: String,
    /// Namespaces whose objects are ignored. Default: `kube-system`,
    /// `kube-public`, `kube-node-lease`.
    pub excluded_namespaces: BTreeSet<String>,
}

/// The registry resources a store stands for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    /// Services, endpoints, routes and policies.
    pub resources: Vec<Resource>,
    /// Objects that could not be converted.
    pub problems: Vec<Problem>,
}

/// An object left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// What, e.g. `Route shop/split` or `route shop/split`.
    pub object: String,
    /// Why.
    pub message: String,
}

/// Keeps the registry in step with converted cluster objects.
#[derive(Debug)]
pub struct KubeSource {
    registry: Arc<Registry>,
    reported: BTreeSet<Problem>,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Registry writes that succeeded.
    pub writes: usize,
    /// Objects left out: by conversion, or rejected by the registry.
    pub problems: Vec<Problem>,
}

// === impl SourceSettings ===

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            trust_domain: "cluster.local".into(),
            excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// The registry resources `store` stands for.
pub fn convert(store: &ObjectStore, settings: &SourceSettings) -> Converted {
    let mut out = Converted::default();
    let excluded = |ns: &str| settings.excluded_namespaces.contains(ns);
    // Service key → Kubernetes port name → registry port name.
    let mut port_names: BTreeMap<(&str, &str), PortNames> = BTreeMap::new();
    for ((ns, name), svc) in store.services() {
        if excluded(ns) {
            continue;
        }
        match service(ns, name, svc) {
            Ok(Some((service, names))) => {
                port_names.insert((ns, name), names);
                out.resources.push(Resource::Service(service));
            }
            Ok(None) => {}
            Err(message) => out.problems.push(Problem {
                object: format!("Service {ns}/{name}"),
                message,
            }),
        }
    }
    let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
    for ((ns, _), slice) in store.endpoint_slices() {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some(names) = port_names.get(&(ns.as_str(), service.as_str())) else {
            continue; // not a mesh service (yet)
        };
        for e in slice_endpoints(store, settings, ns, service, names, slice) {
            endpoints.insert(crate::resource::endpoint_key(&e), e);
        }
    }
    out.resources
        .extend(endpoints.into_values().map(Resource::Endpoint));
    for kind in PolicyKind::ALL {
        for ((ns, name), object) in store.policies(kind) {
            if excluded(ns) {
                continue;
            }
            let converted = match kind {
                PolicyKind::Route => crd::route(object).map(Resource::Route),
                PolicyKind::DestinationPolicy => {
                    crd::destination_policy(object).map(Resource::Policy)
                }
                PolicyKind::AuthorizationPolicy => {
                    crd::authorization_policy(object).map(Resource::Authz)
                }
                PolicyKind::PeerAuthentication => {
                    crd::peer_authentication(object).map(Resource::PeerAuthn)
                }
            };
            match converted {
                Ok(r) => out.resources.push(r),
                Err(message) => out.problems.push(Problem {
                    object: format!("{} {ns}/{name}", kind.kind()),
                    message,
                }),
            }
        }
    }
    out
}

/// A Service as a registry service, with its port names; `None` for those
/// the mesh does not carry.
fn service(
    ns: &str,
    name: &str,
    svc: &KubeService,
) -> Result<Option<(Service, PortNames)>, String> {
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let mut ports = Vec::new();
    let mut names = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue;
        }
        let k8s_name = p.name.clone().unwrap_or_default();
        let protocol = super::port_protocol(Some(&k8s_name), p.app_protocol.as_deref());
        let mut port = ServicePort {
            name: k8s_name.clone(),
            port: u32::try_from(p.port).map_err(|_| format!("port {} is negative", p.port))?,
            protocol: protocol as i32,
            // A named target port differs per pod: the slices say.
            target_port: match &p.target_port {
                Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                _ => 0,
            },
        };
        port.name = port.name();
        names.insert(k8s_name, port.name.clone());
        ports.push(port);
    }
    if ports.is_empty() {
        return Ok(None); // UDP/SCTP only
    }
    // The ClusterIPs: transparent outbound listeners route connections to
    // them. Headless services have none.
    let addresses = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .collect();
    let service = Service {
        name: name.to_string(),
        namespace: ns.to_string(),
        ports,
        addresses,
        ..Default::default()
    };
    Ok(Some((service, names)))
}

/// The endpoints of one slice of `service`.
fn slice_endpoints(
    store: &ObjectStore,
    settings: &SourceSettings,
    ns: &str,
    service: &str,
    port_names: &PortNames,
    slice: &EndpointSlice,
) -> Vec<Endpoint> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let mut ports = BTreeMap::new();
    for p in slice.ports.iter().flatten() {
        let k8s_name = p.name.clone().unwrap_or_default();
        if let (Some(name), Some(port)) = (port_names.get(&k8s_name), p.port) {
            if let Ok(port) = u32::try_from(port) {
                ports.insert(name.clone(), port);
            }
        }
    }
    let mut out = Vec::new();
    for e in &slice.endpoints {
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue; // not ready, or terminating
        }
        let pod = match &e.target_ref {
            Some(r) if r.kind.as_deref() == Some("Pod") => {
                let pod_ns = r.namespace.as_deref().unwrap_or(ns);
                let Some(pod) = store.pod(pod_ns, r.name.as_deref().unwrap_or_default()) else {
                    continue; // not seen yet: wait for it
                };
                Some((pod_ns, pod))
            }
            _ => None,
        };
        for address in &e.addresses {
            if let Some((_, pod)) = pod {
                if !pod.ips.is_empty() && !pod.ips.contains(address) {
                    continue; // the pod moved; this slice is stale
                }
            }
            let mut endpoint = Endpoint {
                service: service.to_string(),
                namespace: ns.to_string(),
                address: address.clone(),
                port: ports.values().copied().min().unwrap_or(0),
                ports: if ports.len() > 1 {
                    ports.clone()
                } else {
                    BTreeMap::new()
                },
                ..Default::default()
            };
            if let Some((pod_ns, pod)) = pod {
                endpoint.labels = pod.labels.clone();
                if let Some(proxy_port) = pod.proxy_port {
                    endpoint.proxy_port = u32::from(proxy_port);
                    endpoint.identity = format!(
                        "spiffe://{}/ns/{pod_ns}/sa/{}",
                        settings.trust_domain, pod.service_account
                    );
                }
            }
            out.push(endpoint);
        }
    }
    out
}

// === impl KubeSource ===

impl KubeSource {
    /// A source writing to `registry`; what it wrote before a restart is
    /// recognized by its owner.
    pub fn new(registry: Arc<Registry>) -> KubeSource {
        KubeSource {
            registry,
            reported: BTreeSet::new(),
        }
    }

    /// Brings the registry to `converted`: puts what changed, deletes what
    /// the cluster no longer has. Performs blocking file I/O (the registry's
    /// store).
    pub fn sync(&mut self, converted: Converted) -> Result<SyncReport, Error> {
        let mut report = SyncReport {
            problems: converted.problems,
            ..Default::default()
        };
        let mut desired: BTreeMap<(Kind, String), Resource> = BTreeMap::new();
        for mut r in converted.resources {
            r.normalize();
            desired.insert((r.kind(), r.key()), r);
        }
        let snapshot = self.registry.snapshot();
        let mut deletes: Vec<(Kind, String)> = snapshot
            .iter()
            .filter(|(kind, key, e)| {
                e.origin == Origin::Kubernetes && !desired.contains_key(&(*kind, key.to_string()))
            })
            .map(|(kind, key, _)| (kind, key.to_string()))
            .collect();
        // Reverse dependency order: policies and routes before services.
        deletes.reverse();
        let puts: Vec<Resource> = desired
            .into_iter()
            .filter(|((kind, key), r)| {
                snapshot.get(*kind, key).is_none_or(|e| {
                    e.resource != *r || e.origin != Origin::Kubernetes || e.ttl.is_some()
                })
            })
            .map(|(_, r)| r)
            .collect();
        if deletes.is_empty() && puts.is_empty() {
            self.log_problems(&report.problems);
            return Ok(report);
        }
        let delete = |(kind, key): &(Kind, String)| Op::Delete {
            kind: *kind,
            key: key.clone(),
        };
        let put = |r: &Resource| Op::Put {
            resource: r.clone(),
            ttl: None,
        };
        let all: Vec<Op> = deletes
            .iter()
            .map(delete)
            .chain(puts.iter().map(put))
            .collect();
        if self.write(all, &mut report).is_ok() {
            self.log_problems(&report.problems);
            return Ok(report);
        }
        // Something is rejected: write the services and endpoints, then
        // each route and policy alone, so a bad one only keeps itself out.
        let is_policy = |k: Kind| matches!(k, Kind::Route | Kind::Policy);
        let core: Vec<Op> = deletes
            .iter()
            .filter(|(k, _)| is_policy(*k))
            .chain(deletes.iter().filter(|(k, _)| !is_policy(*k)))
            .map(delete)
            .chain(puts.iter().filter(|r| !is_policy(r.kind())).map(put))
            .collect();
        if !core.is_empty() && self.write(core.clone(), &mut report).is_err() {
            for op in core {
                if let Err(e) = self.write(vec![op.clone()], &mut report) {
                    report.problems.push(problem(&op, &e));
                }
            }
        }
        for r in puts.iter().filter(|r| is_policy(r.kind())) {
            let op = put(r);
            if let Err(e) = self.write(vec![op.clone()], &mut report) {
                report.problems.push(problem(&op, &e));
            }
        }
        self.log_problems(&report.problems);
        Ok(report)
    }

    fn write(&self, ops: Vec<Op>, report: &mut SyncReport) -> Result<(), Error> {
        self.registry.apply(Change {
            origin: Origin::Kubernetes,
            ops,
        })?;
        report.writes += 1;
        Ok(())
    }

    /// Logs problems not logged before (each once while it lasts).
    fn log_problems(&mut self, problems: &[Problem]) {
        let now: BTreeSet<Problem> = problems.iter().cloned().collect();
        for p in now.difference(&self.reported) {
            tracing::warn!(object = %p.object, problem = %p.message, "kubernetes object left out of the mesh");
        }
        self.reported = now;
    }
}

fn problem(op: &Op, e: &Error) -> Problem {
    let object = match op {
        Op::Put { resource, .. } => format!("{} {}", resource.kind(), resource.key()),
        Op::Delete { kind, key } | Op::Expect { kind, key, .. } => format!("{kind} {key}"),
    };
    Problem {
        object,
        message: e.to_string(),
    }
}
