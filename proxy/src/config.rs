//! Configuration: loading the bootstrap file, compiling it into a
//! [`Snapshot`] the data path reads, and swapping snapshots atomically.
//!
//! A request loads one `Arc<Snapshot>` and uses it to the end, so a reload
//! never changes a request midway and in-flight requests finish on the
//! config they started with. A reload that fails to read, parse, validate or
//! compile leaves the current snapshot serving and records why.

use crate::cluster::{Cluster, EndpointState, LoadCounters};
use crate::error::StartError;
use crate::original_dst::OriginalDstTable;
use crate::policy::authz::AuthzPolicies;
use crate::policy::RulePolicies;
use crate::route::table::RouteTable;
use crate::route::{CompileError, Matcher, PortRoute, Rule, ServiceName};
use crate::trace::TelemetrySettings;
use crate::workload_port::InboundTarget;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::yaml::{self, YamlError, YamlLimits};
use sane_xds_proto::{
    Bootstrap, DestinationPolicy, Direction, Endpoint, Listener, MeshResources, Protocol, Service,
    ServicePort,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::snapshot::HeldConfig;
pub use crate::snapshot::{local_service_key, Catalog, ConfigStore, PolicySource, Snapshot};

/// The file's config with the control plane's `resources` (moved in, not
/// copied): every kind of them but listeners, which come from the file.
fn with_resources(file: &Bootstrap, dynamic: MeshResources) -> Bootstrap {
    // Destructured in full: a new field of either must be placed here.
    let Bootstrap {
        node,
        admin,
        drain_timeout,
        resources,
        control_plane,
        identity,
        health,
        gateway,
        http,
    } = file;
    let MeshResources {
        listeners: _,
        services,
        endpoints,
        routes,
        policies,
        authorization_policies,
        telemetry,
        peer_authentications,
        gateways,
    } = dynamic;
    Bootstrap {
        node: node.clone(),
        admin: admin.clone(),
        drain_timeout: *drain_timeout,
        resources: MeshResources {
            listeners: resources.listeners.clone(),
            services,
            endpoints,
            routes,
            policies,
            authorization_policies,
            telemetry,
            peer_authentications,
            gateways,
        },
        control_plane: control_plane.clone(),
        identity: identity.clone(),
        health: health.clone(),
        gateway: gateway.clone(),
        http: http.clone(),
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Compiles `bootstrap` (a file: see [`PolicySource::File`]), carrying
    /// load counters over from `previous`. `origin` names the config's
    /// source in errors.
    pub fn compile(
        bootstrap: Bootstrap,
        version: u64,
        previous: Option<&Snapshot>,
        origin: &str,
    ) -> Result<Self, StartError> {
        Self::compile_from(bootstrap, PolicySource::File, version, previous, origin)
    }

    /// [`Snapshot::compile`] of a config whose authorization policies come
    /// from `policies`. The snapshot keeps `bootstrap`, its services and
    /// endpoints encoded (an `Arc` given in that is also held elsewhere is
    /// copied first).
    pub fn compile_from(
        bootstrap: impl Into<Arc<Bootstrap>>,
        authz_source: PolicySource,
        version: u64,
        previous: Option<&Snapshot>,
        origin: &str,
    ) -> Result<Self, StartError> {
        let bootstrap: Arc<Bootstrap> = bootstrap.into();
        bootstrap
            .validate()
            .map_err(|source| StartError::InvalidConfig {
                path: origin.to_string(),
                source,
            })?;
        let compile_err = |e: CompileError| StartError::Compile {
            path: origin.to_string(),
            field: format!("resources.{}", e.field),
            reason: e.reason,
        };
        let mut counters = LoadCounters::new();
        let mut previous_clusters = HashMap::new();
        if let Some(prev) = previous {
            for c in &prev.clusters {
                c.collect_counters(&mut counters);
                previous_clusters.insert(c.name.clone(), c.clone());
            }
        }
        let res = &bootstrap.resources;
        let services: HashMap<String, &Service> =
            res.services.iter().map(|s| (s.key(), s)).collect();
        let mut endpoints: HashMap<String, Vec<&Endpoint>> = HashMap::new();
        for e in &res.endpoints {
            endpoints.entry(e.service_key()).or_default().push(e);
        }
        let policies: HashMap<String, &DestinationPolicy> = res
            .policies
            .iter()
            .map(|p| (qualify(&p.service, &p.namespace), p))
            .collect();
        let mut builder = ClusterBuilder {
            services: &services,
            endpoints: &endpoints,
            policies: &policies,
            counters: &counters,
            previous: &previous_clusters,
            built: HashMap::new(),
        };

        let mut routes = RouteTable::builder(&bootstrap.node.namespace);
        for svc in &res.services {
            let key = svc.key();
            let route = res
                .routes
                .iter()
                .enumerate()
                .find(|(_, r)| qualify(&r.service, &r.namespace) == key);
            for port in svc.ports.iter().filter(|p| p.protocol().is_http()) {
                let pr = match route {
                    None => PortRoute {
                        service: ServiceName::new(&key),
                        port: port.port as u16,
                        protocol: port.protocol(),
                        route_name: None,
                        rules: vec![Rule::new(
                            vec![],
                            vec![(builder.cluster(&key, port.port, &BTreeMap::new()), 1)],
                            None,
                        )],
                    },
                    Some((ri, r)) => {
                        let mut rules = Vec::new();
                        for (i, rule) in r.rules.iter().enumerate() {
                            let field = format!("routes[{ri}].rules[{i}]");
                            let mut matches = Vec::new();
                            for (j, m) in rule.matches.iter().enumerate() {
                                matches.push(
                                    Matcher::compile(m, &format!("{field}.matches[{j}]"))
                                        .map_err(compile_err)?,
                                );
                            }
                            let mut dests = Vec::new();
                            for (j, d) in rule.destinations.iter().enumerate() {
                                let dkey = qualify(&d.service, &r.namespace);
                                let dport = builder
                                    .destination_port(&dkey, d.port, port.port)
                                    .map_err(|reason| {
                                        compile_err(CompileError {
                                            field: format!("{field}.destinations[{j}].port"),
                                            reason,
                                        })
                                    })?;
                                dests.push((builder.cluster(&dkey, dport, &d.subset), d.weight));
                            }
                            if dests.is_empty() {
                                dests.push((builder.cluster(&key, port.port, &BTreeMap::new()), 1));
                            }
                            let timeout = (rule.timeout_ms > 0)
                                .then(|| Duration::from_millis(rule.timeout_ms));
                            // Resilience policies (retry, fault, mirror, headers).
                            let mirror = match &rule.mirror {
                                None => None,
                                Some(m) => {
                                    let mkey = qualify(&m.service, &r.namespace);
                                    let mport = builder
                                        .destination_port(&mkey, m.port, port.port)
                                        .map_err(|reason| {
                                            compile_err(CompileError {
                                                field: format!("{field}.mirror.port"),
                                                reason,
                                            })
                                        })?;
                                    Some(builder.cluster(&mkey, mport, &BTreeMap::new()))
                                }
                            };
                            let policies =
                                RulePolicies::compile(rule, &field, mirror).map_err(|e| {
                                    compile_err(CompileError {
                                        field: e.field,
                                        reason: e.reason,
                                    })
                                })?;
                            rules.push(Rule::new(matches, dests, timeout).with_policies(policies));
                        }
                        PortRoute {
                            service: ServiceName::new(&key),
                            port: port.port as u16,
                            protocol: port.protocol(),
                            route_name: Some(r.name.clone()),
                            rules,
                        }
                    }
                };
                routes.insert(svc, Arc::new(pr));
            }
        }
        let routes = routes.build();

        let mut tcp_targets = HashMap::new();
        let mut inbound = HashMap::new();
        let node = &bootstrap.node;
        let peer_tls = sane_xds_proto::resolve_peer_tls(
            &res.peer_authentications,
            &node.namespace,
            &node.labels,
        );
        for l in &res.listeners {
            match (l.direction(), l.protocol()) {
                (Direction::Outbound, Protocol::Tcp) => {
                    let key = qualify(&l.service, "");
                    tcp_targets.insert(
                        l.name.clone(),
                        builder.cluster(&key, l.service_port, &BTreeMap::new()),
                    );
                }
                (Direction::Inbound, _) => {
                    let target = InboundTarget::new(l, bootstrap.identity.is_some(), &peer_tls);
                    log_tls_overrides(&target, previous.and_then(|p| p.inbound.get(&l.name)));
                    inbound.insert(l.name.clone(), Arc::new(target));
                }
                _ => {}
            }
        }
        for (i, l) in res.listeners.iter().enumerate() {
            if let Some(c) = tcp_targets.get(&l.name) {
                if c.protocol != Protocol::Tcp {
                    return Err(compile_err(CompileError {
                        field: format!("listeners[{i}].service_port"),
                        reason: format!("{} of {} is not a tcp port", l.service_port, l.service),
                    }));
                }
            }
        }
        // Only transparently intercepted connections look addresses up: a
        // proxy without such a listener does not build a table (and a
        // cluster per endpoint address) it would never read.
        let transparent = if intercepts(res, previous) {
            OriginalDstTable::compile(res, &routes, |service, port, only| {
                builder.cluster_of(service, port, &BTreeMap::new(), only)
            })
        } else {
            OriginalDstTable::default()
        };
        let clusters = builder.built.into_values().collect();
        let authz = Arc::new(match authz_source {
            PolicySource::ControlPlane => AuthzPolicies::all(&res.authorization_policies),
            PolicySource::File => AuthzPolicies::for_workload(
                &res.authorization_policies,
                &local_service_key(&bootstrap.node),
            ),
        });
        let telemetry = TelemetrySettings::for_node(&bootstrap);
        let telemetry = match previous {
            Some(p) if *p.telemetry == telemetry => p.telemetry.clone(),
            _ => Arc::new(telemetry),
        };
        // Compiled: the two lists that grow with the mesh are kept encoded.
        let HeldConfig { bootstrap, catalog } =
            HeldConfig::new(Arc::try_unwrap(bootstrap).unwrap_or_else(|b| (*b).clone()));
        Ok(Self {
            telemetry,
            version,
            bootstrap,
            catalog,
            routes,
            tcp_targets,
            inbound,
            clusters,
            transparent,
            authz,
            peer_tls,
        })
    }

    /// The listener definitions of this snapshot.
    pub fn listeners(&self) -> &[Listener] {
        &self.bootstrap.resources.listeners
    }
}

/// Logs the bootstrap's pins that override a delivered PeerAuthentication,
/// once: when they first appear (not again on every later config).
fn log_tls_overrides(target: &InboundTarget, previous: Option<&Arc<InboundTarget>>) {
    let before = previous.map(|p| p.tls_overrides.as_slice()).unwrap_or(&[]);
    for o in &target.tls_overrides {
        if !before.contains(o) {
            tracing::warn!(override = %o, "a PeerAuthentication is overridden by the bootstrap");
        }
    }
}

/// True if a transparent outbound listener reads the original-destination
/// table: one in this config, or one bound earlier (the previous snapshot
/// built a table: a listener removed from the file keeps serving until the
/// restart).
fn intercepts(res: &MeshResources, previous: Option<&Snapshot>) -> bool {
    res.listeners
        .iter()
        .any(|l| l.transparent && l.direction() == Direction::Outbound)
        || previous.is_some_and(|p| p.transparent.is_compiled())
}

type ClusterKey = (String, u32, BTreeMap<String, String>, Option<IpAddr>);

/// Builds each cluster once per snapshot, however many routes point at it.
struct ClusterBuilder<'a> {
    services: &'a HashMap<String, &'a Service>,
    endpoints: &'a HashMap<String, Vec<&'a Endpoint>>,
    policies: &'a HashMap<String, &'a DestinationPolicy>,
    counters: &'a LoadCounters,
    /// Clusters of the previous snapshot by name, to carry breaker and
    /// retry budget state over.
    previous: &'a HashMap<String, Arc<Cluster>>,
    built: HashMap<ClusterKey, Arc<Cluster>>,
}

impl ClusterBuilder<'_> {
    /// The port of `service` a destination with `port` (0: unset) means for
    /// a request that arrived on `request_port`.
    fn destination_port(&self, service: &str, port: u32, request_port: u32) -> Result<u32, String> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| format!("service {service:?} is not declared"))?;
        if port != 0 {
            return svc
                .port(port)
                .map(|p| p.port)
                .ok_or_else(|| format!("{port} is not a port of {service}"));
        }
        if svc.port(request_port).is_some() {
            return Ok(request_port);
        }
        svc.ports
            .iter()
            .find(|p| p.protocol().is_http())
            .map(|p| p.port)
            .ok_or_else(|| format!("{service} has no HTTP port"))
    }

    fn cluster(
        &mut self,
        service: &str,
        port: u32,
        subset: &BTreeMap<String, String>,
    ) -> Arc<Cluster> {
        self.cluster_of(service, port, subset, None)
    }

    /// [`Self::cluster`], narrowed to the endpoint at `only` when given (a
    /// transparently intercepted connection addressed that instance).
    fn cluster_of(
        &mut self,
        service: &str,
        port: u32,
        subset: &BTreeMap<String, String>,
        only: Option<IpAddr>,
    ) -> Arc<Cluster> {
        let key = (service.to_string(), port, subset.clone(), only);
        if let Some(c) = self.built.get(&key) {
            return c.clone();
        }
        let sp = self
            .services
            .get(service)
            .and_then(|s| s.port(port))
            .cloned()
            .unwrap_or_else(|| ServicePort {
                port,
                ..Default::default()
            });
        let eps: Vec<Arc<EndpointState>> = match only {
            // One endpoint of the service's cluster: the same state (load,
            // latency, health), not a copy of it.
            Some(ip) => self
                .cluster_of(service, port, subset, None)
                .endpoints
                .iter()
                .filter(|e| e.connect_addr.ip() == ip)
                .cloned()
                .collect(),
            None => self
                .endpoints
                .get(service)
                .into_iter()
                .flatten()
                .filter(|e| subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                .filter_map(|e| EndpointState::new(e, &sp, self.counters))
                .map(Arc::new)
                .collect(),
        };
        let policy = self.policies.get(service);
        let ms = |v: u64, default: u64| Duration::from_millis(if v == 0 { default } else { v });
        let mut name = format!("{service}:{port}");
        if !subset.is_empty() {
            let labels: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
            name.push_str(&format!("[{}]", labels.join(",")));
        }
        if let Some(ip) = only {
            name.push_str(&format!("[{ip}]"));
        }
        // Kept as long as the cluster: without `format!`'s spare room.
        name.shrink_to_fit();
        let previous = self.previous.get(&name).cloned();
        let cluster = Arc::new(
            Cluster::new(
                name,
                &sp,
                eps,
                policy.map(|p| p.load_balancer()).unwrap_or_default(),
                ms(policy.map_or(0, |p| p.connect_timeout_ms), 1_000),
                ms(
                    policy.map_or(0, |p| p.idle_timeout_ms),
                    sane_xds_proto::DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
                ),
            )
            .with_policy(policy.copied(), previous.as_deref()),
        );
        self.built.insert(key, cluster.clone());
        cluster
    }
}

/// Reads and parses a bootstrap file; unknown fields are named in the error.
/// The file's size, nesting and alias expansion are bounded by `limits`
/// before it is parsed (a larger file is not even read).
pub fn read_file(path: &Path, limits: &YamlLimits) -> Result<Bootstrap, StartError> {
    use std::io::Read;
    let display = || path.display().to_string();
    let read_err = |source| StartError::ReadConfig {
        path: display(),
        source,
    };
    let too_large = |size| StartError::ParseConfig {
        path: display(),
        source: YamlError::TooLarge {
            size,
            max: limits.max_bytes,
        },
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    if len > limits.max_bytes as u64 {
        return Err(too_large(len));
    }
    // The file may grow between the two calls (or not be a regular file).
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > limits.max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {}", e.utf8_error()),
        ))
    })?;
    let mut bootstrap: Bootstrap =
        yaml::from_str(&text, limits).map_err(|source| StartError::ParseConfig {
            path: display(),
            source,
        })?;
    shrink(&mut bootstrap.resources);
    Ok(bootstrap)
}

/// Gives back the spare capacity of a decoded config's lists, which the
/// config keeps as long as it serves: a list grows by doubling while it is
/// decoded (10 000 services leave room for 16 384), and every service's
/// `ports` starts with room for four.
fn shrink(res: &mut MeshResources) {
    // Destructured in full: a new list of resources must be placed here.
    let MeshResources {
        listeners,
        services,
        endpoints,
        routes,
        policies,
        authorization_policies,
        telemetry,
        peer_authentications,
        gateways,
    } = res;
    listeners.shrink_to_fit();
    services.shrink_to_fit();
    for s in services {
        s.ports.shrink_to_fit();
        s.hosts.shrink_to_fit();
        s.addresses.shrink_to_fit();
    }
    endpoints.shrink_to_fit();
    routes.shrink_to_fit();
    policies.shrink_to_fit();
    authorization_policies.shrink_to_fit();
    telemetry.shrink_to_fit();
    peer_authentications.shrink_to_fit();
    gateways.shrink_to_fit();
}

// === impl ConfigStore ===

// The write side: compiling and swapping in a new snapshot (the read side
// is in `crate::snapshot`).
impl ConfigStore {
    /// Sets the bounds the config file is read with on reload (default:
    /// [`YamlLimits::default`]).
    pub fn set_yaml_limits(&self, limits: YamlLimits) {
        *self.yaml_limits.lock().expect("not poisoned") = limits;
    }

    /// Applies a new bootstrap file, or keeps the current config and returns
    /// why not.
    pub fn apply(&self, bootstrap: Bootstrap, origin: &str) -> Result<u64, StartError> {
        let mut sources = self.sources.lock().expect("not poisoned");
        let Some(dynamic) = &sources.dynamic else {
            let next = self.swap(bootstrap, PolicySource::File, origin)?;
            // The snapshot's own config: one copy.
            sources.file = next.held();
            return Ok(next.version);
        };
        let candidate = with_resources(&bootstrap, dynamic.resources());
        let next = self.swap(candidate, PolicySource::ControlPlane, origin)?;
        // The same resources, now with the new file: keep one copy.
        sources.dynamic = Some(next.held());
        sources.file = HeldConfig::new(bootstrap);
        Ok(next.version)
    }

    /// Applies resources pushed by the control plane (listeners ignored), or
    /// keeps the current config and returns why not.
    pub fn apply_dynamic(
        &self,
        mut resources: MeshResources,
        origin: &str,
    ) -> Result<u64, StartError> {
        shrink(&mut resources);
        let mut sources = self.sources.lock().expect("not poisoned");
        let candidate = with_resources(&sources.file.bootstrap, resources);
        let next = self.swap(candidate, PolicySource::ControlPlane, origin)?;
        // The snapshot's own config: the resources are kept once.
        sources.dynamic = Some(next.held());
        Ok(next.version)
    }

    /// Checks that `resources` would compile with the current file, without
    /// applying them.
    pub fn check_dynamic(&self, resources: &MeshResources, origin: &str) -> Result<(), StartError> {
        let sources = self.sources.lock().expect("not poisoned");
        let candidate = with_resources(&sources.file.bootstrap, resources.clone());
        Snapshot::compile_from(candidate, PolicySource::ControlPlane, 0, None, origin).map(|_| ())
    }

    fn swap(
        &self,
        candidate: Bootstrap,
        policies: PolicySource,
        origin: &str,
    ) -> Result<Arc<Snapshot>, StartError> {
        let prev = self.load();
        let result =
            Snapshot::compile_from(candidate, policies, prev.version + 1, Some(&prev), origin);
        let mut last = self.last_error.lock().expect("not poisoned");
        match result {
            Ok(next) => {
                warn_on_listener_changes(&prev, &next);
                let next = Arc::new(next);
                self.current.store(next.clone());
                *last = None;
                Ok(next)
            }
            Err(e) => {
                *last = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Re-reads the config file and applies it. This blocks for as long as
    /// reading, parsing and compiling take: call it off the data path
    /// ([`crate::ProxyHandle::reload`] runs it on a blocking thread).
    pub fn reload(&self) -> Result<u64, StartError> {
        let Some(path) = &self.path else {
            return Ok(self.load().version);
        };
        let _one_at_a_time = self.reloading.lock().expect("not poisoned");
        let limits = *self.yaml_limits.lock().expect("not poisoned");
        let parsed = read_file(path, &limits);
        match parsed {
            Ok(b) => self.apply(b, &path.display().to_string()),
            Err(e) => {
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Names the listener settings of `next` that differ from `prev` and only
/// take effect at the next restart (sockets and their limits are set up
/// when the listener is bound).
fn listener_changes_needing_restart(prev: &Snapshot, next: &Snapshot) -> Vec<String> {
    let by_name = |s: &Snapshot| -> BTreeMap<String, Listener> {
        s.listeners()
            .iter()
            .map(|l| (l.name.clone(), l.clone()))
            .collect()
    };
    let (before, after) = (by_name(prev), by_name(next));
    let mut changed = Vec::new();
    for name in before.keys().chain(after.keys()) {
        let what = match (before.get(name), after.get(name)) {
            (Some(_), None) => "removed",
            (None, Some(_)) => "added",
            (Some(a), Some(b)) if a.address != b.address => "address",
            (Some(a), Some(b))
                if (a.direction, a.protocol, a.transparent)
                    != (b.direction, b.protocol, b.transparent) =>
            {
                "direction, protocol or transparent"
            }
            (Some(a), Some(b)) if a.limits != b.limits => "limits",
            _ => continue,
        };
        let entry = format!("listener {name:?}: {what}");
        if !changed.contains(&entry) {
            changed.push(entry);
        }
    }
    changed
}

fn warn_on_listener_changes(prev: &Snapshot, next: &Snapshot) {
    let changed = listener_changes_needing_restart(prev, next);
    if !changed.is_empty() {
        tracing::warn!(
            changed = %changed.join(", "),
            "listener changes take effect at the next restart; other changes apply now"
        );
    }
}

/// A cheap fingerprint of the config file, to notice edits.
pub fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
resources:
  listeners:
    - { name: out, address: "127.0.0.1:0" }
    - { name: tcp, address: "127.0.0.1:0", protocol: tcp, service: db, service_port: 5432 }
  services:
    - { name: echo, ports: [ { name: http, port: 80 }, { name: grpc, port: 9090, protocol: grpc } ] }
    - { name: db, ports: [ { port: 5432, protocol: tcp } ] }
  endpoints:
    - { service: echo, address: 10.0.0.1, port: 8080, labels: { v: "1" } }
    - { service: echo, address: 10.0.0.2, port: 8080, labels: { v: "2" } }
    - { service: db, address: 10.0.0.3 }
  routes:
    - name: split
      service: echo
      rules:
        - matches: [ { headers: [ { name: x-v, value: "2" } ] } ]
          destinations: [ { service: echo, subset: { v: "2" } } ]
        - destinations: [ { service: echo } ]
"#;

    fn compile(text: &str) -> Result<Snapshot, StartError> {
        Snapshot::compile(serde_yaml::from_str(text).unwrap(), 1, None, "test.yaml")
    }

    #[test]
    fn the_control_plane_chooses_the_policies_a_file_proxy_picks_by_workload() {
        let policy = |name: &str, service: &str| sane_xds_proto::AuthorizationPolicy {
            name: name.into(),
            service: service.into(),
            rules: vec![Default::default()],
            ..Default::default()
        };
        let mut file: Bootstrap = serde_yaml::from_str(CFG).unwrap();
        file.node.workload = "api".into();
        file.resources.authorization_policies = vec![policy("mine", "api"), policy("edge", "edge")];
        let store = ConfigStore::new(Snapshot::compile(file.clone(), 1, None, "f").unwrap(), None);
        // From the file: only the policy naming its workload.
        assert_eq!(store.load().authz.len(), 1);
        // From the control plane: every policy it sent (it sent this proxy
        // those targeting its endpoints, whatever `node.workload` says).
        let mut pushed = file.resources.clone();
        pushed.listeners.clear();
        pushed.authorization_policies = vec![policy("edge", "edge")];
        store.apply_dynamic(pushed, "xds").unwrap();
        assert_eq!(store.load().authz.len(), 1);
        // A file reload keeps the control plane's choice.
        store.apply(file, "f").unwrap();
        assert_eq!(store.load().authz.len(), 1);
        let mut none = store.load().config().resources;
        none.authorization_policies.clear();
        store.apply_dynamic(none, "xds").unwrap();
        assert!(store.load().authz.is_empty());
    }

    #[test]
    fn the_store_and_the_snapshot_share_one_copy_of_the_config() {
        let file = || serde_yaml::from_str::<Bootstrap>(CFG).unwrap();
        let store = ConfigStore::new(compile(CFG).unwrap(), None);
        let kept = |store: &ConfigStore| {
            let sources = store.sources.lock().unwrap();
            (sources.file.clone(), sources.dynamic.clone())
        };
        let same = |s: &Snapshot, held: &HeldConfig| {
            Arc::ptr_eq(&s.bootstrap, &held.bootstrap) && Arc::ptr_eq(&s.catalog, &held.catalog)
        };
        assert!(same(&store.load(), &kept(&store).0));
        store.apply(file(), "f").unwrap();
        assert!(same(&store.load(), &kept(&store).0));
        assert_eq!(store.load().config(), file(), "the whole config, decoded");
        // The control plane's resources are kept once: in the snapshot's
        // config, which a file reload merges again.
        let mut pushed = file().resources;
        pushed.listeners.clear();
        pushed.endpoints.truncate(1);
        store.apply_dynamic(pushed.clone(), "xds").unwrap();
        let dynamic = kept(&store).1.unwrap();
        assert!(same(&store.load(), &dynamic));
        store.apply(file(), "f").unwrap();
        let dynamic = kept(&store).1.unwrap();
        assert!(same(&store.load(), &dynamic));
        assert_eq!(store.load().config().resources.endpoints, pushed.endpoints);
        assert_eq!(store.load().config().resources.services, pushed.services);
        assert_eq!(store.load().listeners(), file().resources.listeners);
        // A failed reload keeps both halves.
        let mut bad = file();
        bad.resources.listeners[0].address = "nowhere".into();
        assert!(store.apply(bad, "f").is_err());
        assert!(same(&store.load(), &kept(&store).1.unwrap()));
        assert_eq!(store.load().config().resources.endpoints, pushed.endpoints);
    }

    #[test]
    fn a_snapshot_keeps_its_services_and_endpoints_encoded() {
        let s = compile(CFG).unwrap();
        assert!(s.bootstrap.resources.services.is_empty());
        assert!(s.bootstrap.resources.endpoints.is_empty());
        assert_eq!((s.catalog.services(), s.catalog.endpoints()), (2, 3));
        let file: Bootstrap = serde_yaml::from_str(CFG).unwrap();
        assert_eq!(s.config(), file);
        // Everything else stays decoded: listeners and routes are read
        // after compiling (listener changes, the gateway).
        assert_eq!(s.bootstrap.resources.listeners, file.resources.listeners);
        assert_eq!(s.bootstrap.resources.routes, file.resources.routes);
    }

    #[test]
    fn only_a_transparent_listener_gets_an_original_destination_table() {
        let plain = compile(CFG).unwrap();
        assert!(!plain.transparent.is_compiled());
        assert!(plain.transparent.is_empty());
        let intercepting = CFG.replace(
            r#"- { name: out, address: "127.0.0.1:0" }"#,
            r#"- { name: out, address: "127.0.0.1:0", transparent: true }"#,
        );
        let t = compile(&intercepting).unwrap();
        assert!(t.transparent.is_compiled());
        // An endpoint's own route shares its service's name and its
        // endpoint's state with the service's route and cluster.
        let by_addr = t
            .transparent
            .http_route("10.0.0.1:8080".parse().unwrap())
            .unwrap();
        let by_host = t.routes.resolve("echo", Some(80)).unwrap();
        assert!(by_addr.service.same(&by_host.service));
        let req = http::Request::get("/").body(()).unwrap();
        let one = by_addr.select(&req).unwrap().cluster;
        assert_eq!(one.name, "echo.default:80[10.0.0.1]");
        let all = t.clusters.iter().find(|c| c.name == "echo.default:80");
        let same = all
            .unwrap()
            .endpoints
            .iter()
            .find(|e| Arc::ptr_eq(e, &one.endpoints[0]));
        assert!(
            same.is_some(),
            "the endpoint's state is the service cluster's"
        );
        // A reload that drops the listener from the file keeps the table:
        // the bound listener serves until the restart.
        let file = serde_yaml::from_str::<Bootstrap>(CFG).unwrap();
        let next = Snapshot::compile(file, 2, Some(&t), "f").unwrap();
        assert!(next.transparent.is_compiled());
        assert!(next
            .transparent
            .http_route("10.0.0.1:8080".parse().unwrap())
            .is_some());
    }

    #[test]
    fn listener_changes_that_need_a_restart_are_named() {
        let prev = compile(CFG).unwrap();
        assert!(listener_changes_needing_restart(&prev, &compile(CFG).unwrap()).is_empty());
        let edited = CFG
            .replace(
                r#"- { name: out, address: "127.0.0.1:0" }"#,
                r#"- { name: out, address: "127.0.0.1:0", limits: { max_connections: 5 } }"#,
            )
            .replace(
                r#"name: tcp, address: "127.0.0.1:0""#,
                r#"name: tcp, address: "127.0.0.1:1""#,
            )
            .replace(
                "  services:\n",
                "    - { name: extra, address: \"127.0.0.1:0\" }\n  services:\n",
            );
        let next = compile(&edited).unwrap();
        assert_eq!(
            listener_changes_needing_restart(&prev, &next),
            [
                r#"listener "out": limits"#,
                r#"listener "tcp": address"#,
                r#"listener "extra": added"#,
            ]
        );
        // A route or endpoint change applies now: nothing to report.
        let routes_only = CFG.replace("10.0.0.3", "10.0.0.4");
        assert!(
            listener_changes_needing_restart(&prev, &compile(&routes_only).unwrap()).is_empty()
        );
    }

    #[test]
    fn compiles_routes_clusters_and_tcp_targets() {
        let s = compile(CFG).unwrap();
        let r = s
            .routes
            .resolve("echo.default.svc.cluster.local", None)
            .unwrap();
        assert_eq!(r.port, 80);
        let grpc = s.routes.resolve("echo", Some(9090)).unwrap();
        assert_eq!(grpc.protocol, Protocol::Grpc);
        let req = http::Request::get("/").header("x-v", "2").body(()).unwrap();
        let sel = r.select(&req).unwrap();
        assert_eq!(sel.cluster.endpoints.len(), 1);
        assert_eq!(sel.cluster.name, "echo.default:80[v=2]");
        assert_eq!(s.tcp_targets["tcp"].endpoints[0].connect_addr.port(), 5432);
        assert!(
            s.routes.resolve("db", None).is_none(),
            "tcp ports are not HTTP-routable"
        );
    }

    #[test]
    fn compile_errors_name_the_field() {
        let bad = CFG.replace("subset: { v: \"2\" } }", "port: 81 }");
        let err = compile(&bad).unwrap_err().to_string();
        assert!(
            err.contains("resources.routes[0].rules[0].destinations[0].port: 81 is not a port of echo.default"),
            "{err}"
        );
    }

    #[test]
    fn failed_apply_keeps_the_last_good_snapshot() {
        let store = ConfigStore::new(compile(CFG).unwrap(), None);
        let bad: Bootstrap =
            serde_yaml::from_str(&CFG.replace("port: 5432, protocol", "port: 0, protocol"))
                .unwrap();
        let err = store.apply(bad, "test.yaml").unwrap_err().to_string();
        assert!(err.contains("resources.services[1].ports[0].port"), "{err}");
        assert_eq!(store.load().version, 1);
        assert!(store.last_error().is_some());
        let good: Bootstrap = serde_yaml::from_str(CFG).unwrap();
        assert_eq!(store.apply(good, "test.yaml").unwrap(), 2);
        assert!(store.last_error().is_none());
    }

    const RESILIENT: &str = r#"
resources:
  services:
    - { name: echo, ports: [ { name: http, port: 80 } ] }
    - { name: shadow, ports: [ { name: http, port: 80 } ] }
  endpoints:
    - { service: echo, address: 10.0.0.1, port: 8080 }
    - { service: shadow, address: 10.0.0.9, port: 8080 }
  routes:
    - name: echo
      service: echo
      rules:
        - timeout: 2s
          retry: { attempts: 3, per_try_timeout: 500ms, retry_on: [5xx] }
          fault: { abort: { http_status: 503, percent: 1 } }
          mirror: { service: shadow, percent: 10 }
          request_headers: { set: { x-env: prod } }
  policies:
    - name: echo
      service: echo
      circuit_breaker: { max_requests: 10 }
      outlier_detection: { consecutive_5xx: 3 }
      retry_budget: { percent: 10 }
"#;

    #[test]
    fn rule_policies_and_destination_limits_are_compiled() {
        let s = compile(RESILIENT).unwrap();
        let r = s.routes.resolve("echo", None).unwrap();
        let sel = r
            .select(&http::Request::get("/").body(()).unwrap())
            .unwrap();
        let p = &sel.policies;
        assert_eq!(p.retry.as_ref().unwrap().attempts, 3);
        assert!(p.fault.is_some() && p.request_headers.is_some());
        assert_eq!(
            p.mirror.as_ref().unwrap().cluster().name,
            "shadow.default:80"
        );
        assert_eq!(
            sel.cluster.breaker().unwrap().settings().max_requests,
            Some(10)
        );
        assert_eq!(
            sel.cluster.retry_budget().settings().percent_or_default(),
            10.0
        );
        let mut ext = http::Extensions::new();
        p.insert_into(&mut ext);
        assert_eq!(
            ext.get::<crate::policy::timeout::PerTryTimeout>()
                .unwrap()
                .0,
            Duration::from_millis(500)
        );
        assert!(s.clusters.iter().any(|c| c.name == "shadow.default:80"));
    }

    #[test]
    fn breaker_and_budget_survive_a_reload_with_the_same_settings() {
        let first = compile(RESILIENT).unwrap();
        let next = Snapshot::compile(
            serde_yaml::from_str(RESILIENT).unwrap(),
            2,
            Some(&first),
            "test.yaml",
        )
        .unwrap();
        let find = |s: &Snapshot| {
            s.clusters
                .iter()
                .find(|c| c.name == "echo.default:80")
                .unwrap()
                .clone()
        };
        let (a, b) = (find(&first), find(&next));
        assert!(Arc::ptr_eq(a.breaker().unwrap(), b.breaker().unwrap()));
        assert!(Arc::ptr_eq(a.retry_budget(), b.retry_budget()));
        let changed = RESILIENT.replace("max_requests: 10", "max_requests: 20");
        let third = Snapshot::compile(
            serde_yaml::from_str(&changed).unwrap(),
            3,
            Some(&next),
            "test.yaml",
        )
        .unwrap();
        assert!(!Arc::ptr_eq(
            b.breaker().unwrap(),
            find(&third).breaker().unwrap()
        ));
    }

    #[test]
    fn a_mirror_to_a_missing_port_names_the_field() {
        let bad = RESILIENT.replace(
            "service: shadow, percent",
            "service: shadow, port: 81, percent",
        );
        let err = compile(&bad).unwrap_err().to_string();
        assert!(
            err.contains(
                "resources.routes[0].rules[0].mirror.port: 81 is not a port of shadow.default"
            ),
            "{err}"
        );
    }
}
