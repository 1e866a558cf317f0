//! Clusters: the endpoints of one service port (optionally a label subset),
//! with their load-balancing state.
//!
//! A cluster is rebuilt on every config change, but the per-endpoint load
//! counters are carried over (by endpoint key) so least-request balancing does
//! not forget in-flight work across reloads.

pub mod balancer;

use self::balancer::Balancer;
use sane_xds_proto::{Endpoint, LoadBalancer, Protocol, ServicePort};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    /// Address the proxy connects to: the peer sidecar's inbound port, or the
    /// workload itself when it has no sidecar.
    pub connect_addr: SocketAddr,
    /// The workload port on the peer's host, announced in the transport
    /// header; `None` when connecting to the workload directly.
    pub via_sidecar: Option<u16>,
    /// Expected SPIFFE identity (empty: any mesh identity).
    pub identity: Arc<str>,
    /// Load-balancing weight (at least 1).
    pub weight: u32,
    /// Labels, for subsets.
    pub labels: BTreeMap<String, String>,
    in_flight: Arc<AtomicUsize>,
}

/// Keeps an endpoint counted as busy until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

/// The endpoints of one service port.
#[derive(Debug)]
pub struct Cluster {
    /// `service.namespace:port`, plus `[k=v,...]` for a subset.
    pub name: String,
    /// Protocol of the service port.
    pub protocol: Protocol,
    /// Endpoints, in config order.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout for pooled upstream connections.
    pub idle_timeout: Duration,
    balancer: Balancer,
}

/// Load counters by endpoint key, carried across rebuilds.
pub type LoadCounters = HashMap<(SocketAddr, Option<u16>), Arc<AtomicUsize>>;

// === impl EndpointState ===

impl EndpointState {
    /// Builds the state for `ep` serving `port`, reusing its load counter.
    pub fn new(ep: &Endpoint, port: &ServicePort, counters: &LoadCounters) -> Option<Self> {
        let ip = ep.ip()?;
        let workload_port = u16::try_from(ep.workload_port(port)).ok()?;
        let (connect_addr, via_sidecar) = if ep.proxy_port != 0 {
            let pp = u16::try_from(ep.proxy_port).ok()?;
            (SocketAddr::new(ip, pp), Some(workload_port))
        } else {
            (SocketAddr::new(ip, workload_port), None)
        };
        let in_flight = counters
            .get(&(connect_addr, via_sidecar))
            .cloned()
            .unwrap_or_default();
        Some(Self {
            connect_addr,
            via_sidecar,
            identity: ep.identity.as_str().into(),
            weight: ep.weight(),
            labels: ep.labels.clone(),
            in_flight,
        })
    }

    /// Requests (or connections) in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more request until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    fn key(&self) -> (SocketAddr, Option<u16>) {
        (self.connect_addr, self.via_sidecar)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Cluster ===

impl Cluster {
    /// Builds a cluster from a service port's endpoints.
    pub fn new(
        name: String,
        port: &ServicePort,
        endpoints: Vec<Arc<EndpointState>>,
        lb: LoadBalancer,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let balancer = match lb {
            LoadBalancer::LeastRequest | LoadBalancer::Ewma | LoadBalancer::ConsistentHash => {
                Balancer::LeastRequest
            }
            LoadBalancer::RoundRobin => {
                let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
                Balancer::round_robin(&weights)
            }
        };
        Self {
            name,
            protocol: port.protocol(),
            endpoints,
            connect_timeout,
            idle_timeout,
            balancer,
        }
    }

    /// Picks an endpoint, skipping those in `exclude` when others remain.
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<Arc<EndpointState>> {
        let candidates: Vec<&Arc<EndpointState>> = if exclude.is_empty() {
            self.endpoints.iter().collect()
        } else {
            let rest: Vec<_> = self
                .endpoints
                .iter()
                .filter(|e| !exclude.contains(&e.connect_addr))
                .collect();
            if rest.is_empty() {
                self.endpoints.iter().collect()
            } else {
                rest
            }
        };
        let loads: Vec<(usize, u32)> = candidates
            .iter()
            .map(|e| (e.in_flight(), e.weight))
            .collect();
        let i = self.balancer.pick(&loads, &mut rand::rng())?;
        Some(candidates[i].clone())
    }

    /// Collects this cluster's load counters, to carry into the next build.
    pub fn collect_counters(&self, into: &mut LoadCounters) {
        for e in &self.endpoints {
            into.insert(e.key(), e.in_flight.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> ServicePort {
        ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Http as i32,
            target_port: 8080,
        }
    }

    #[test]
    fn endpoint_addresses_follow_sidecar_and_port_overrides() {
        let mut ep = Endpoint {
            service: "echo".into(),
            address: "10.0.0.1".into(),
            ..Default::default()
        };
        let counters = LoadCounters::new();
        let s = EndpointState::new(&ep, &port(), &counters).unwrap();
        assert_eq!(s.connect_addr, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(s.via_sidecar, None);
        ep.proxy_port = 15006;
        ep.ports.insert("http".into(), 9999);
        let s = EndpointState::new(&ep, &port(), &counters).unwrap();
        assert_eq!(s.connect_addr, "10.0.0.1:15006".parse().unwrap());
        assert_eq!(s.via_sidecar, Some(9999));
    }

    #[test]
    fn pick_avoids_excluded_and_counts_load() {
        let counters = LoadCounters::new();
        let eps: Vec<_> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|a| {
                let ep = Endpoint {
                    service: "echo".into(),
                    address: a.to_string(),
                    ..Default::default()
                };
                Arc::new(EndpointState::new(&ep, &port(), &counters).unwrap())
            })
            .collect();
        let c = Cluster::new(
            "echo.default:80".into(),
            &port(),
            eps,
            LoadBalancer::LeastRequest,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let first = c.endpoints[0].connect_addr;
        for _ in 0..20 {
            assert_ne!(c.pick(&[first]).unwrap().connect_addr, first);
        }
        let guard = c.endpoints[0].start();
        assert_eq!(c.endpoints[0].in_flight(), 1);
        for _ in 0..20 {
            assert_eq!(
                c.pick(&[]).unwrap().connect_addr,
                c.endpoints[1].connect_addr
            );
        }
        drop(guard);
        assert_eq!(c.endpoints[0].in_flight(), 0);
        let mut carried = LoadCounters::new();
        c.collect_counters(&mut carried);
        assert_eq!(carried.len(), 2);
    }
}
