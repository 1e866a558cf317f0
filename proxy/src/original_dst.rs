//! The original-destination table of a snapshot: every service address
//! (VIP:port) and every endpoint's `address:workload port`, and what each
//! is in the mesh (see [`crate::transparent`], which serves intercepted
//! connections by it).
//!
//! Data only, compiled once per snapshot: below the snapshot that holds it
//! and the listener that reads it.

use crate::cluster::Cluster;
use crate::route::table::RouteTable;
use crate::route::{PortRoute, Rule, ServiceName};
use sane_xds_proto::{Endpoint, MeshResources, Service};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where an intercepted connection was going (a request extension on
/// transparently intercepted HTTP connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst(pub SocketAddr);

/// What an original destination is in the mesh.
#[derive(Clone, Debug)]
pub enum OriginalDstTarget {
    /// An HTTP service port (or one endpoint's): served through the outbound
    /// stack with this route.
    Http(Arc<PortRoute>),
    /// A TCP service port (or one endpoint's): spliced to this cluster.
    Tcp(Arc<Cluster>),
}

/// Service addresses and endpoint addresses, compiled once per snapshot
/// (empty, and never compiled, for a proxy without a transparent outbound
/// listener: nothing would read it).
#[derive(Debug, Default)]
pub struct OriginalDstTable {
    by_addr: HashMap<SocketAddr, OriginalDstTarget>,
    compiled: bool,
}

// === impl OriginalDstTable ===

impl OriginalDstTable {
    /// Compiles every service address (`addresses` × ports) and every
    /// endpoint's `address:workload port`. `routes` holds the services' HTTP
    /// routes by name; `cluster(service, port, only)` builds (or reuses) the
    /// cluster of a service port, narrowed to the endpoint at `only`.
    ///
    /// When two services claim the same endpoint address and port, the
    /// first declared wins.
    pub fn compile(
        res: &MeshResources,
        routes: &RouteTable,
        mut cluster: impl FnMut(&str, u32, Option<IpAddr>) -> Arc<Cluster>,
    ) -> Self {
        let mut by_addr = HashMap::new();
        let mut endpoints: HashMap<String, Vec<&Endpoint>> = HashMap::new();
        for e in &res.endpoints {
            endpoints.entry(e.service_key()).or_default().push(e);
        }
        for svc in &res.services {
            let key = svc.key();
            for ip in svc.ips() {
                for port in &svc.ports {
                    let target = if port.protocol().is_http() {
                        match routes.resolve(&key, Some(port.port as u16)) {
                            Some(route) => OriginalDstTarget::Http(route.clone()),
                            None => continue,
                        }
                    } else {
                        OriginalDstTarget::Tcp(cluster(&key, port.port, None))
                    };
                    by_addr
                        .entry((ip, port.port as u16).into())
                        .or_insert(target);
                }
            }
        }
        for svc in &res.services {
            for e in endpoints.get(&svc.key()).into_iter().flatten() {
                let Some(ip) = e.ip() else { continue };
                for port in &svc.ports {
                    let addr = SocketAddr::from((ip, e.workload_port(port) as u16));
                    if by_addr.contains_key(&addr) {
                        continue;
                    }
                    let one = cluster(&svc.key(), port.port, Some(ip));
                    let target = if port.protocol().is_http() {
                        // The service's name as its own route has it: one
                        // copy of the strings per service, not per endpoint.
                        let name = routes
                            .resolve(&svc.key(), Some(port.port as u16))
                            .map(|r| r.service.clone())
                            .unwrap_or_else(|| ServiceName::new(&svc.key()));
                        OriginalDstTarget::Http(Arc::new(endpoint_route(svc, name, port.port, one)))
                    } else {
                        OriginalDstTarget::Tcp(one)
                    };
                    by_addr.insert(addr, target);
                }
            }
        }
        Self {
            by_addr,
            compiled: true,
        }
    }

    /// True if the table was compiled (a transparent listener reads it),
    /// false for the [`Default`] one.
    pub fn is_compiled(&self) -> bool {
        self.compiled
    }

    /// What `addr` is in the mesh, if anything.
    pub fn get(&self, addr: SocketAddr) -> Option<&OriginalDstTarget> {
        self.by_addr.get(&addr)
    }

    /// The HTTP route for requests intercepted on their way to `addr`.
    pub fn http_route(&self, addr: SocketAddr) -> Option<&Arc<PortRoute>> {
        match self.by_addr.get(&addr)? {
            OriginalDstTarget::Http(route) => Some(route),
            OriginalDstTarget::Tcp(_) => None,
        }
    }

    /// Number of known addresses.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// True if no address is known (every connection passes through).
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

/// The route of one endpoint's HTTP port: everything to its own cluster.
fn endpoint_route(
    svc: &Service,
    service: ServiceName,
    port: u32,
    cluster: Arc<Cluster>,
) -> PortRoute {
    let protocol = svc.port(port).map(|p| p.protocol()).unwrap_or_default();
    PortRoute {
        service,
        port: port as u16,
        protocol,
        route_name: None,
        rules: vec![Rule::new(vec![], vec![(cluster, 1)], None)],
    }
}
