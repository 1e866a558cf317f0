//! Clusters: the endpoints of one service port (optionally a label subset),
//! with their load-balancing, health and limit state.
//!
//! A cluster is rebuilt on every config change, but each endpoint's
//! [`EndpointStats`] (requests in flight, latency estimate, outlier health)
//! are carried over by endpoint key, and the circuit breaker and retry
//! budget by cluster name while their settings stay the same, so a reload
//! neither forgets in-flight work nor pardons a failing endpoint.
//!
//! A pick ([`Cluster::select`]) skips ejected endpoints and the endpoints a
//! retry already tried (unless no other healthy one is left), then lets the
//! [`Balancer`] choose. When every endpoint is ejected the pick fails with
//! `UH`. The outcome of each exchange feeds back through
//! [`Cluster::finish`] into the latency estimate and outlier detection.

pub mod balancer;
pub mod ewma;
pub mod outlier;

use self::balancer::{Balancer, Load};
use self::ewma::PeakEwma;
use self::outlier::{EndpointHealth, Outcome, OutlierDetector};
use crate::error::ProxyError;
use crate::policy::circuit_breaker::{Breaker, Permit};
use crate::policy::retry::RetryBudget;
use crate::telemetry::ResilienceMetrics;
use http::{Extensions, HeaderName, Request, StatusCode};
use sane_xds_proto::{
    DestinationPolicy, Endpoint, LoadBalancer, PeerProtocol, Protocol, ServicePort,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

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
    stats: Arc<EndpointStats>,
}

/// Load and health of one endpoint, carried across rebuilds.
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    rtt: PeakEwma,
    health: EndpointHealth,
}

/// Keeps an endpoint counted as busy (and its connection slot taken, if the
/// circuit breaker limits connections) until dropped.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
    _connection: Option<Permit>,
}

/// One exchange with an endpoint, from sending to response headers; give
/// it to [`Cluster::finish`]. Dropped unfinished (the caller gave up or a
/// timeout fired), it still records the time it took as latency.
#[derive(Debug)]
pub struct Attempt {
    endpoint: Arc<EndpointState>,
    started: Instant,
    finished: bool,
}

/// The endpoint chosen for one request.
#[derive(Debug)]
pub struct Selection {
    /// The endpoint.
    pub endpoint: Arc<EndpointState>,
    /// Keep alive until the response body ends.
    pub in_flight: InFlight,
    /// Hand back to [`Cluster::finish`] with the outcome.
    pub attempt: Attempt,
}

/// The addresses a request was already sent to (shared by its attempts), so
/// a retry goes to another endpoint while a healthy one remains.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(Arc<Mutex<Vec<SocketAddr>>>);

/// The destination the route stage chose, for the layers below it (a
/// request extension); the mirror layer sets one for its copies.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The cluster to balance over.
    pub cluster: Arc<Cluster>,
    /// The authority to send upstream.
    pub authority: String,
}

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
    /// HTTP/1.1 requests go to peer sidecars as HTTP/1.1 (the destination
    /// policy's `peer_protocol: preserve`).
    pub preserve_http1: bool,
    balancer: Balancer,
    /// The destination policy's hash header, outlier detection and circuit
    /// breaker, boxed: most clusters of a large mesh have no policy, and
    /// the fields are a third of a cluster.
    policy: Option<Box<ClusterPolicy>>,
    retry_budget: ClusterBudget,
}

/// What a destination policy adds to a cluster.
#[derive(Debug)]
struct ClusterPolicy {
    hash_header: Option<HeaderName>,
    outlier: Option<OutlierDetector>,
    /// Serializes ejection decisions so two failures cannot both pass the
    /// ejection cap.
    ejecting: Mutex<()>,
    breaker: Option<Arc<Breaker>>,
}

/// A cluster's retry budget, made by the first request through the
/// cluster: most clusters of a large mesh never carry one, and a budget is
/// a few hundred bytes.
#[derive(Debug)]
enum ClusterBudget {
    /// The default settings, without a destination policy: the cluster's
    /// own (each snapshot's cluster makes its own).
    Default(OnceLock<Arc<RetryBudget>>),
    /// A destination policy's settings: shared with the same cluster of
    /// the next snapshot while they do not change, made or not.
    Policy(Arc<LazyBudget>),
}

/// A destination policy's retry budget, made on first use.
#[derive(Debug)]
struct LazyBudget {
    settings: sane_xds_proto::RetryBudget,
    budget: OnceLock<Arc<RetryBudget>>,
}

/// Endpoint stats by endpoint key, carried across rebuilds.
pub type LoadCounters = HashMap<(SocketAddr, Option<u16>), Arc<EndpointStats>>;

// === impl Destination ===

impl Destination {
    /// Puts the destination and its cluster's circuit breaker and retry
    /// budget in `ext`, replacing any earlier destination's.
    pub fn insert_into(self, ext: &mut Extensions) {
        match self.cluster.breaker() {
            Some(b) => ext.insert(b.clone()),
            None => ext.remove::<Arc<Breaker>>(),
        };
        ext.insert(self.cluster.retry_budget().clone());
        ext.insert(self);
    }
}

// === impl LazyBudget ===

impl LazyBudget {
    fn new(settings: sane_xds_proto::RetryBudget) -> Self {
        Self {
            settings,
            budget: OnceLock::new(),
        }
    }
}

// === impl EndpointState ===

impl EndpointState {
    /// Builds the state for `ep` serving `port`, reusing its stats.
    pub fn new(ep: &Endpoint, port: &ServicePort, counters: &LoadCounters) -> Option<Self> {
        let ip = ep.ip()?;
        let workload_port = u16::try_from(ep.workload_port(port)).ok()?;
        let (connect_addr, via_sidecar) = if ep.proxy_port != 0 {
            let pp = u16::try_from(ep.proxy_port).ok()?;
            (SocketAddr::new(ip, pp), Some(workload_port))
        } else {
            (SocketAddr::new(ip, workload_port), None)
        };
        let stats = counters
            .get(&(connect_addr, via_sidecar))
            .cloned()
            .unwrap_or_default();
        Some(Self {
            connect_addr,
            via_sidecar,
            identity: ep.identity.as_str().into(),
            weight: ep.weight(),
            labels: ep.labels.clone(),
            stats,
        })
    }

    /// Requests (or connections) in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more request until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.stats.clone(),
            _connection: None,
        }
    }

    /// The peak-EWMA latency estimate.
    pub fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(self.stats.rtt.estimate_ns() as u64)
    }

    /// When the endpoint's running ejection ends, if it is ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.stats.health.ejected_until(Instant::now())
    }

    /// [`EndpointState::ejected_until`] as wall-clock time, for people.
    pub fn ejected_until_system(&self) -> Option<std::time::SystemTime> {
        let left = self
            .ejected_until()?
            .saturating_duration_since(Instant::now());
        Some(std::time::SystemTime::now() + left)
    }

    /// Ejections in a row so far.
    pub fn times_ejected(&self) -> u32 {
        self.stats.health.times_ejected()
    }

    fn load(&self) -> Load {
        Load {
            in_flight: self.in_flight(),
            weight: self.weight,
            rtt_ns: self.stats.rtt.estimate_ns(),
        }
    }

    fn key(&self) -> (SocketAddr, Option<u16>) {
        (self.connect_addr, self.via_sidecar)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Attempt ===

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.stats.rtt.observe(self.started.elapsed());
        }
    }
}

// === impl TriedEndpoints ===

impl TriedEndpoints {
    /// Records that an attempt went to `addr`.
    pub fn push(&self, addr: SocketAddr) {
        self.0.lock().expect("not poisoned").push(addr);
    }

    /// The addresses tried so far, oldest first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.0.lock().expect("not poisoned").clone()
    }
}

// === impl Cluster ===

impl Cluster {
    /// Builds a cluster from a service port's endpoints, with the default
    /// retry budget and no breaker or outlier detection (see
    /// [`Cluster::with_policy`]).
    pub fn new(
        name: String,
        port: &ServicePort,
        endpoints: Vec<Arc<EndpointState>>,
        lb: LoadBalancer,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let balancer = match lb {
            LoadBalancer::Ewma => Balancer::PeakEwma,
            LoadBalancer::LeastRequest => Balancer::LeastRequest,
            LoadBalancer::RoundRobin => {
                let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
                Balancer::round_robin(&weights)
            }
            LoadBalancer::ConsistentHash => {
                let eps: Vec<_> = endpoints
                    .iter()
                    .map(|e| (e.connect_addr, e.weight))
                    .collect();
                Balancer::consistent_hash(&eps)
            }
        };
        Self {
            name,
            protocol: port.protocol(),
            endpoints,
            connect_timeout,
            idle_timeout,
            preserve_http1: false,
            balancer,
            policy: None,
            retry_budget: ClusterBudget::Default(OnceLock::new()),
        }
    }

    /// Applies a destination policy's hash header, outlier detection,
    /// circuit breaker and retry budget. The breaker and budget of
    /// `previous` (the same cluster in the last snapshot) are kept when
    /// their settings did not change, so their counts survive a reload.
    pub fn with_policy(
        mut self,
        policy: Option<&DestinationPolicy>,
        previous: Option<&Cluster>,
    ) -> Self {
        let Some(p) = policy else {
            return self;
        };
        self.preserve_http1 = p.peer_protocol() == PeerProtocol::Preserve;
        self.policy = Some(Box::new(ClusterPolicy {
            hash_header: HeaderName::from_bytes(p.hash_header.to_ascii_lowercase().as_bytes()).ok(),
            outlier: p.outlier_detection.as_ref().map(OutlierDetector::new),
            ejecting: Mutex::new(()),
            breaker: p.circuit_breaker.as_ref().map(|cb| {
                previous
                    .and_then(|c| c.breaker().cloned())
                    .filter(|b| b.settings() == cb)
                    .unwrap_or_else(|| Arc::new(Breaker::new(&self.name, cb)))
            }),
        }));
        let budget = p.retry_budget.clone().unwrap_or_default();
        let kept = previous.and_then(|c| match &c.retry_budget {
            ClusterBudget::Policy(b) if b.settings == budget => Some(b.clone()),
            // The budget the cluster made without a policy, kept as the
            // one of a policy with the same (default) settings.
            ClusterBudget::Default(cell) if budget == Default::default() => {
                Some(Arc::new(LazyBudget {
                    settings: budget.clone(),
                    budget: cell.clone(),
                }))
            }
            _ => None,
        });
        self.retry_budget =
            ClusterBudget::Policy(kept.unwrap_or_else(|| Arc::new(LazyBudget::new(budget))));
        self
    }

    /// The circuit breaker, if the destination has one.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.policy.as_ref()?.breaker.as_ref()
    }

    /// The retry budget (made by the first call).
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        let (cell, settings) = self.budget_parts();
        cell.get_or_init(|| Arc::new(RetryBudget::new(&self.name, settings)))
    }

    /// Retries the budget allows now, without making it (the admin API).
    pub fn retry_budget_remaining(&self) -> u64 {
        let (cell, settings) = self.budget_parts();
        match cell.get() {
            Some(b) => b.remaining(),
            None => RetryBudget::new(&self.name, settings).remaining(),
        }
    }

    /// Where the retry budget is (once made) and its settings.
    fn budget_parts(&self) -> (&OnceLock<Arc<RetryBudget>>, &sane_xds_proto::RetryBudget) {
        static DEFAULT: sane_xds_proto::RetryBudget = sane_xds_proto::RetryBudget {
            percent: None,
            min_retries_per_second: None,
            ttl_ms: 0,
        };
        match &self.retry_budget {
            ClusterBudget::Default(cell) => (cell, &DEFAULT),
            ClusterBudget::Policy(lazy) => (&lazy.budget, &lazy.settings),
        }
    }

    /// Picks an endpoint, skipping ejected ones and those in `exclude` when
    /// others remain; `None` if there is none or all are ejected.
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<Arc<EndpointState>> {
        self.pick_keyed(exclude, None)
    }

    /// [`Cluster::pick`] with a consistent-hash key.
    pub fn pick_keyed(
        &self,
        exclude: &[SocketAddr],
        key: Option<u64>,
    ) -> Option<Arc<EndpointState>> {
        // Read the clock only if some endpoint may be ejected.
        let now = std::cell::OnceCell::new();
        let eps = &self.endpoints;
        let healthy = |i: usize| {
            let h = &eps[i].stats.health;
            !h.may_be_ejected() || !h.is_ejected(*now.get_or_init(Instant::now))
        };
        let fresh = |i: usize| healthy(i) && !exclude.contains(&eps[i].connect_addr);
        let load = |i: usize| eps[i].load();
        let mut rng = rand::rng();
        // Tried endpoints only when no healthy untried one is left.
        let i = if exclude.is_empty() || (0..eps.len()).any(fresh) {
            self.balancer.pick(eps.len(), fresh, load, key, &mut rng)
        } else {
            self.balancer.pick(eps.len(), healthy, load, key, &mut rng)
        }?;
        Some(eps[i].clone())
    }

    /// The request's consistent-hash key: its `hash_header` value.
    pub fn hash_key<B>(&self, req: &Request<B>) -> Option<u64> {
        let name = self.policy.as_ref()?.hash_header.as_ref()?;
        let value = req.headers().get(name)?;
        Some(balancer::hash_key(value.as_bytes()))
    }

    /// Chooses the endpoint for `req`: avoids the endpoints its earlier
    /// attempts tried, records this one, and takes a connection slot when
    /// the hop carries one request per connection (HTTP/1.1, or an
    /// upgrade).
    pub fn select<B>(
        &self,
        req: &Request<B>,
        metrics: &ResilienceMetrics,
    ) -> Result<Selection, ProxyError> {
        let tried = req.extensions().get::<TriedEndpoints>();
        let exclude = tried.map(TriedEndpoints::addrs).unwrap_or_default();
        let endpoint = self
            .pick_keyed(&exclude, self.hash_key(req))
            .ok_or_else(|| ProxyError::NoHealthyUpstream {
                cluster: self.name.clone(),
            })?;
        // Mirrors the hop choice in `upstream`: HTTP/2 to sidecars and to
        // http2/grpc ports, a dedicated HTTP/1.1 connection otherwise.
        let one_per_connection = crate::protocol::http::is_upgrade(req)
            || (endpoint.via_sidecar.is_none() && self.protocol == Protocol::Http);
        let connection = match (self.breaker(), one_per_connection) {
            (Some(b), true) => Some(b.try_connection().map_err(|e| {
                metrics.overflow(&self.name, e.limit.name());
                ProxyError::from(e)
            })?),
            _ => None,
        };
        if let Some(t) = tried {
            t.push(endpoint.connect_addr);
        }
        let mut in_flight = endpoint.start();
        in_flight._connection = connection;
        let attempt = Attempt {
            endpoint: endpoint.clone(),
            started: Instant::now(),
            finished: false,
        };
        Ok(Selection {
            endpoint,
            in_flight,
            attempt,
        })
    }

    /// Records how an attempt ended: its latency, and for outlier detection
    /// the status or failure. Ejects the endpoint when it failed often
    /// enough and the ejection cap allows.
    pub fn finish(
        &self,
        mut attempt: Attempt,
        result: Result<StatusCode, &ProxyError>,
        metrics: &ResilienceMetrics,
    ) {
        attempt.finished = true;
        let now = Instant::now();
        let ep = &attempt.endpoint;
        ep.stats
            .rtt
            .observe(now.saturating_duration_since(attempt.started));
        let Some((detector, policy)) =
            (self.policy.as_deref()).and_then(|p| Some((p.outlier.as_ref()?, p)))
        else {
            return;
        };
        let outcome = match result {
            Ok(status) => Outcome::of_status(status.as_u16()),
            Err(e) => match Outcome::of_error(e) {
                Some(o) => o,
                None => return,
            },
        };
        if !detector.observe(&ep.stats.health, outcome, now) {
            return;
        }
        let _one_at_a_time = policy.ejecting.lock().expect("not poisoned");
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.stats.health.is_ejected(now))
            .count();
        if ep.stats.health.is_ejected(now) || !detector.may_eject(ejected, self.endpoints.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %ep.connect_addr, ejected, "outlier not ejected: at the ejection cap");
            return;
        }
        let e = detector.eject(&ep.stats.health, now);
        metrics.ejection(&self.name);
        tracing::warn!(
            cluster = %self.name, endpoint = %ep.connect_addr,
            ejected_for = ?e.duration, times = e.times, "outlier ejected"
        );
    }

    /// Collects this cluster's endpoint stats, to carry into the next build.
    pub fn collect_counters(&self, into: &mut LoadCounters) {
        for e in &self.endpoints {
            into.insert(e.key(), e.stats.clone());
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

    /// A cluster of no endpoints and no policy.
    fn bare_cluster() -> Cluster {
        Cluster::new(
            "echo.default:80".into(),
            &port(),
            Vec::new(),
            LoadBalancer::default(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn the_retry_budget_is_made_by_the_first_request() {
        let c = bare_cluster();
        let fresh = RetryBudget::new("echo.default:80", &Default::default()).remaining();
        assert_eq!(c.retry_budget_remaining(), fresh);
        assert!(
            c.budget_parts().0.get().is_none(),
            "reading what it allows does not make it"
        );
        let budget = c.retry_budget().clone();
        budget.deposit();
        assert!(Arc::ptr_eq(&budget, c.retry_budget()));
        assert_eq!(budget.cluster(), "echo.default:80");
    }

    #[test]
    fn a_budget_made_without_a_policy_is_kept_by_a_policy_with_its_settings() {
        let first = bare_cluster();
        let made = first.retry_budget().clone();
        // A policy without a budget has the default settings: the count
        // made so far carries over, as from a policy's own budget.
        let breaker_only = DestinationPolicy {
            circuit_breaker: Some(Default::default()),
            ..Default::default()
        };
        let second = bare_cluster().with_policy(Some(&breaker_only), Some(&first));
        assert!(Arc::ptr_eq(&made, second.retry_budget()));
        let third = bare_cluster().with_policy(Some(&breaker_only), Some(&second));
        assert!(Arc::ptr_eq(&made, third.retry_budget()));
        // Other settings make another budget; no policy, a fresh one.
        let other = DestinationPolicy {
            retry_budget: Some(sane_xds_proto::RetryBudget {
                percent: Some(50.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fourth = bare_cluster().with_policy(Some(&other), Some(&third));
        assert!(!Arc::ptr_eq(&made, fourth.retry_budget()));
        assert!(!Arc::ptr_eq(
            &made,
            bare_cluster()
                .with_policy(None, Some(&third))
                .retry_budget()
        ));
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

    fn cluster(n: usize, policy: Option<&DestinationPolicy>, counters: &LoadCounters) -> Cluster {
        let eps = (1..=n)
            .map(|i| {
                let ep = Endpoint {
                    service: "echo".into(),
                    address: format!("10.0.0.{i}"),
                    ..Default::default()
                };
                Arc::new(EndpointState::new(&ep, &port(), counters).unwrap())
            })
            .collect();
        Cluster::new(
            "echo.default:80".into(),
            &port(),
            eps,
            policy.map(|p| p.load_balancer()).unwrap_or_default(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .with_policy(policy, None)
    }

    fn outlier_policy(max_percent: u32) -> DestinationPolicy {
        DestinationPolicy {
            // Round robin so `fail` reaches every endpoint on paused time.
            load_balancer: LoadBalancer::RoundRobin as i32,
            outlier_detection: Some(sane_xds_proto::OutlierDetection {
                consecutive_5xx: Some(2),
                base_ejection_time_ms: 30_000,
                max_ejection_percent: Some(max_percent),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn metrics() -> ResilienceMetrics {
        ResilienceMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    fn fail(c: &Cluster, addr: SocketAddr, m: &ResilienceMetrics) {
        let sel = loop {
            let s = c.select(&Request::new(()), m).unwrap();
            if s.endpoint.connect_addr == addr {
                break s;
            }
        };
        c.finish(sel.attempt, Ok(StatusCode::INTERNAL_SERVER_ERROR), m);
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_until_their_time_passes() {
        let m = metrics();
        let c = cluster(3, Some(&outlier_policy(50)), &LoadCounters::new());
        let bad = c.endpoints[0].connect_addr;
        fail(&c, bad, &m);
        fail(&c, bad, &m);
        assert!(c.endpoints[0].ejected_until().is_some());
        for _ in 0..50 {
            assert_ne!(c.pick(&[]).unwrap().connect_addr, bad);
        }
        // A second ejection would pass 50% of 3 endpoints: refused.
        let other = c.endpoints[1].connect_addr;
        fail(&c, other, &m);
        fail(&c, other, &m);
        assert!(c.endpoints[1].ejected_until().is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(c.endpoints[0].ejected_until().is_none());
        assert!((0..100).any(|_| c.pick(&[]).unwrap().connect_addr == bad));
        // Carried into the next build: the health survives a reload.
        let mut carried = LoadCounters::new();
        c.collect_counters(&mut carried);
        let next = cluster(3, Some(&outlier_policy(50)), &carried);
        assert_eq!(next.endpoints[0].times_ejected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_endpoint_is_only_ejected_at_100_percent_and_then_uh() {
        let m = metrics();
        let c = cluster(1, Some(&outlier_policy(10)), &LoadCounters::new());
        let only = c.endpoints[0].connect_addr;
        for _ in 0..5 {
            fail(&c, only, &m);
        }
        assert!(c.pick(&[]).is_some(), "10% of one endpoint ejects none");
        let c = cluster(1, Some(&outlier_policy(100)), &LoadCounters::new());
        fail(&c, only, &m);
        fail(&c, only, &m);
        assert!(c.pick(&[]).is_none());
        let err = c.select(&Request::new(()), &m).unwrap_err();
        assert_eq!(err.response_flag(), "UH");
    }

    #[tokio::test(start_paused = true)]
    async fn select_spreads_attempts_and_counts_connections() {
        let m = metrics();
        let policy = DestinationPolicy {
            load_balancer: LoadBalancer::RoundRobin as i32,
            circuit_breaker: Some(sane_xds_proto::CircuitBreaker {
                max_connections: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = cluster(2, Some(&policy), &LoadCounters::new());
        let mut req = Request::new(());
        let tried = TriedEndpoints::default();
        req.extensions_mut().insert(tried.clone());
        let first = c.select(&req, &m).unwrap();
        // The plain-HTTP hop holds the only connection slot.
        let err = c.select(&req, &m).unwrap_err();
        assert_eq!(err.response_flag(), "UO");
        drop(first);
        let second = c.select(&req, &m).unwrap();
        assert_eq!(tried.addrs().len(), 2);
        assert_ne!(
            tried.addrs()[0],
            tried.addrs()[1],
            "a retry avoids the tried endpoint"
        );
        assert_eq!(second.endpoint.in_flight(), 1);
        drop(second);
        assert_eq!(c.endpoints[0].in_flight() + c.endpoints[1].in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finish_feeds_the_latency_estimate() {
        let m = metrics();
        let c = cluster(1, None, &LoadCounters::new());
        let sel = c.select(&Request::new(()), &m).unwrap();
        tokio::time::advance(Duration::from_millis(400)).await;
        c.finish(sel.attempt, Ok(StatusCode::OK), &m);
        assert_eq!(c.endpoints[0].rtt_estimate(), Duration::from_millis(400));
        // Abandoned attempts count their time too.
        let sel = c.select(&Request::new(()), &m).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(sel);
        assert_eq!(c.endpoints[0].rtt_estimate(), Duration::from_secs(1));
    }

    #[test]
    fn consistent_hash_keys_on_the_header() {
        let policy = DestinationPolicy {
            load_balancer: LoadBalancer::ConsistentHash as i32,
            hash_header: "X-User".into(),
            ..Default::default()
        };
        let c = cluster(5, Some(&policy), &LoadCounters::new());
        let req = |u: &str| Request::builder().header("x-user", u).body(()).unwrap();
        let m = metrics();
        let a = c.select(&req("alice"), &m).unwrap().endpoint.connect_addr;
        for _ in 0..20 {
            assert_eq!(
                c.select(&req("alice"), &m).unwrap().endpoint.connect_addr,
                a
            );
        }
        assert!(c.hash_key(&Request::new(())).is_none());
    }
}
