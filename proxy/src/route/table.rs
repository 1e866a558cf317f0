//! The route table: which service port a request's `host[:port]` names.
//!
//! A service answers to four generated names (`name`, `name.namespace`,
//! `name.namespace.svc`, `name.namespace.svc.cluster.local`) and to its
//! extra `hosts`. A key per name cost a large mesh four keys and four port
//! lists per service, most of its route memory; the table keeps one entry
//! per service instead, and a lookup derives the entry from the host
//! ([`RouteTable::derive`], slices of the host, no allocation): a bare name
//! is a service of the node's namespace, `….svc` and `….svc.cluster.local`
//! are the key before the suffix, and a key `name.namespace` is a service of
//! the node's namespace by its name, of another by its key.
//!
//! Names a lookup cannot derive, or that more than one service claims
//! (extra hosts, a bare name of another namespace or in two, a dotted name
//! that reads as another service's key), are kept by name, each with every
//! port added under it. So a host routes exactly as in a table keyed by
//! every name, filled in config order: the first port added under a name is
//! its default (the port of an authority without one), and a later
//! service's port replaces an earlier one's under a shared name.

use super::PortRoute;
// Host names come from the config (requests only look them up): foldhash,
// seeded per process, instead of SipHash.
use foldhash::fast::RandomState;
use sane_xds_proto::Service;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Host names to service ports.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Services of the node's namespace, by name.
    local: HashMap<Box<str>, ServiceEntry, RandomState>,
    /// Services of other namespaces, by key (`name.namespace`).
    other: HashMap<Box<str>, ServiceEntry, RandomState>,
    /// Names a lookup does not derive, with the ports they reach.
    hosts: HashMap<Box<str>, Ports, RandomState>,
    /// The node's namespace: the one a bare name is a service of.
    namespace: Box<str>,
}

/// Collects the service ports of a snapshot in config order;
/// [`RouteTableBuilder::build`] compiles the table.
#[derive(Debug)]
pub struct RouteTableBuilder<'a> {
    namespace: &'a str,
    added: Vec<(&'a Service, Arc<PortRoute>)>,
}

/// One service's ports, reached by its generated names.
#[derive(Debug)]
struct ServiceEntry {
    ports: Ports,
    /// The generated names (a bit per [`Form`]) looked up in `hosts`
    /// instead: another service claims them too.
    overridden: u8,
    /// More than one service has this entry's key: no name derives to it.
    shared: bool,
}

/// The service ports one name reaches, in the order first added: the first
/// is the default. A name has a handful of ports: a scan beats hashing.
#[derive(Debug)]
enum Ports {
    /// The common case, without a list.
    One(Arc<PortRoute>),
    Many(Box<[Arc<PortRoute>]>),
}

/// Which generated name of its service a host is (a bit of
/// [`ServiceEntry::overridden`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `name`, of a service in the node's namespace.
    Bare = 1,
    /// `name.namespace`.
    Key = 2,
    /// `name.namespace.svc`.
    Svc = 4,
    /// `name.namespace.svc.cluster.local`.
    Fqdn = 8,
}

// === impl RouteTable ===

impl RouteTable {
    /// A builder for the table of a node in `namespace` (empty: `default`).
    pub fn builder(namespace: &str) -> RouteTableBuilder<'_> {
        RouteTableBuilder {
            namespace: sane_xds_proto::namespace_or_default(namespace),
            added: Vec::new(),
        }
    }

    /// The service port addressed by `host[:port]` (the host lowercase, as
    /// the route stage passes it).
    pub fn resolve(&self, host: &str, port: Option<u16>) -> Option<&Arc<PortRoute>> {
        let ports = match self.derive(host) {
            Some((entry, form)) if (entry.overridden & form as u8) == 0 => &entry.ports,
            _ => self.hosts.get(host)?,
        };
        ports.get(port)
    }

    /// True if no service is routable.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.other.is_empty() && self.hosts.is_empty()
    }

    /// The service `host` is a generated name of, if it reads as one of a
    /// service in the table (not one whose key two services share). The
    /// first reading that finds a service wins: `….svc.cluster.local`,
    /// `….svc`, then the key; a name without a dot is bare.
    fn derive(&self, host: &str) -> Option<(&ServiceEntry, Form)> {
        let found = if !host.contains('.') {
            self.local.get(host).map(|e| (e, Form::Bare))
        } else {
            let before = |suffix: &str| host.strip_suffix(suffix).and_then(|k| self.by_key(k));
            (before(".svc.cluster.local").map(|e| (e, Form::Fqdn)))
                .or_else(|| before(".svc").map(|e| (e, Form::Svc)))
                .or_else(|| self.by_key(host).map(|e| (e, Form::Key)))
        };
        found.filter(|(e, _)| !e.shared)
    }

    /// The service whose key is `key` (`name.namespace`).
    fn by_key(&self, key: &str) -> Option<&ServiceEntry> {
        let local = (key.strip_suffix(&*self.namespace)).and_then(|n| n.strip_suffix('.'));
        match local {
            Some(name) if !name.is_empty() => self.local.get(name),
            _ => self.other.get(key),
        }
    }

    /// The entry of `svc`'s own ports.
    fn entry(&self, svc: &Service) -> Option<&ServiceEntry> {
        if svc.namespace() == &*self.namespace {
            self.local.get(svc.name.as_str())
        } else {
            self.other.get(svc.key().as_str())
        }
    }
}

// === impl RouteTableBuilder ===

impl<'a> RouteTableBuilder<'a> {
    /// Adds a port of `service` (its ports in a row, services in config
    /// order) under each of the service's names.
    pub fn insert(&mut self, service: &'a Service, route: Arc<PortRoute>) {
        self.added.push((service, route));
    }

    /// Compiles the table.
    pub fn build(self) -> RouteTable {
        let mut table = RouteTable {
            namespace: self.namespace.into(),
            ..RouteTable::default()
        };
        // An entry per service. A service's ports come in a row: a service
        // finding its key taken shares it with an earlier one.
        let runs = || {
            let mut last: Option<&Service> = None;
            self.added.iter().map(move |(svc, route)| {
                let first = !last.is_some_and(|l| std::ptr::eq(l, *svc));
                last = Some(svc);
                (*svc, route, first)
            })
        };
        let local = |svc: &Service| svc.namespace() == self.namespace;
        let services = runs().filter(|(_, _, first)| *first);
        let in_namespace = services.clone().filter(|(svc, _, _)| local(svc)).count();
        table.local.reserve(in_namespace);
        table.other.reserve(services.count() - in_namespace);
        for (svc, route, first) in runs() {
            let (map, key) = if local(svc) {
                (&mut table.local, svc.name.clone())
            } else {
                (&mut table.other, svc.key())
            };
            match map.get_mut(key.as_str()) {
                Some(entry) => {
                    entry.shared |= first;
                    entry.ports.add(route.clone());
                }
                None => {
                    let entry = ServiceEntry {
                        ports: Ports::One(route.clone()),
                        overridden: 0,
                        shared: false,
                    };
                    map.insert(key.into_boxed_str(), entry);
                }
            }
        }
        // The names that do not derive to their own service's entry.
        let mut kept: HashSet<String> = HashSet::new();
        for (svc, _, _) in runs().filter(|(_, _, first)| *first) {
            let own = table.entry(svc).map(std::ptr::from_ref);
            for name in svc.host_names() {
                let derived = table.derive(&name).map(|(e, _)| std::ptr::from_ref(e));
                if derived.is_none() || derived != own {
                    kept.insert(name);
                }
            }
        }
        if kept.is_empty() {
            return table;
        }
        // Those names with every port added under them, in order.
        for (svc, route) in &self.added {
            for name in svc.host_names().into_iter().filter(|n| kept.contains(n)) {
                match table.hosts.get_mut(name.as_str()) {
                    Some(ports) => ports.add(route.clone()),
                    None => {
                        table
                            .hosts
                            .insert(name.into_boxed_str(), Ports::One(route.clone()));
                    }
                }
            }
        }
        // A kept name a lookup derives is looked up in `hosts` instead.
        let mut overridden: HashMap<*const ServiceEntry, u8> = HashMap::new();
        for name in table.hosts.keys() {
            if let Some((entry, form)) = table.derive(name) {
                *overridden.entry(std::ptr::from_ref(entry)).or_default() |= form as u8;
            }
        }
        for entry in table.local.values_mut().chain(table.other.values_mut()) {
            if let Some(bits) = overridden.get(&std::ptr::from_ref(&*entry)) {
                entry.overridden |= bits;
            }
        }
        table
    }
}

// === impl Ports ===

impl Ports {
    /// Adds `route` under its port, replacing the route a port already has.
    fn add(&mut self, route: Arc<PortRoute>) {
        match self {
            Ports::One(r) if r.port == route.port => *r = route,
            Ports::One(r) => *self = Ports::Many(Box::new([r.clone(), route])),
            Ports::Many(rs) => match rs.iter_mut().find(|r| r.port == route.port) {
                Some(r) => *r = route,
                None => {
                    let mut v = std::mem::take(rs).into_vec();
                    v.push(route);
                    *rs = v.into_boxed_slice();
                }
            },
        }
    }

    /// The route of `port`, or of the default port.
    fn get(&self, port: Option<u16>) -> Option<&Arc<PortRoute>> {
        match self {
            Ports::One(r) => port.is_none_or(|p| p == r.port).then_some(r),
            Ports::Many(rs) => {
                let port = port.unwrap_or(rs.first()?.port);
                rs.iter().find(|r| r.port == port)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::{Protocol, ServicePort};

    fn route(key: &str, port: u16) -> Arc<PortRoute> {
        Arc::new(PortRoute {
            service: key.into(),
            port,
            protocol: Protocol::Http,
            route_name: None,
            rules: vec![],
        })
    }

    fn service(name: &str, namespace: &str, ports: &[u16], hosts: &[&str]) -> Service {
        Service {
            name: name.into(),
            namespace: namespace.into(),
            ports: ports
                .iter()
                .map(|p| ServicePort {
                    port: u32::from(*p),
                    ..Default::default()
                })
                .collect(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The table as it was: every name of every service a key, filled in
    /// config order (the reference the derived table must equal).
    fn every_name(services: &[Service]) -> HashMap<String, Vec<Arc<PortRoute>>> {
        let mut t: HashMap<String, Vec<Arc<PortRoute>>> = HashMap::new();
        for svc in services {
            for p in &svc.ports {
                let r = route(&svc.key(), p.port as u16);
                for h in svc.host_names() {
                    let ports = t.entry(h).or_default();
                    match ports.iter_mut().find(|x| x.port == r.port) {
                        Some(x) => *x = r.clone(),
                        None => ports.push(r.clone()),
                    }
                }
            }
        }
        t
    }

    fn table(namespace: &str, services: &[Service]) -> RouteTable {
        let mut b = RouteTable::builder(namespace);
        for svc in services {
            for p in &svc.ports {
                b.insert(svc, route(&svc.key(), p.port as u16));
            }
        }
        b.build()
    }

    /// Every name of `services` and some that are none, with and without
    /// a port, resolves in the table as in [`every_name`]'s.
    fn routes_as_every_name(namespace: &str, services: &[Service]) -> RouteTable {
        let t = table(namespace, services);
        let reference = every_name(services);
        let mut hosts: Vec<String> = reference.keys().cloned().collect();
        hosts.extend(
            [
                "",
                ".",
                "x",
                "svc",
                ".svc",
                "a.",
                ".default",
                "a.b.svc.cluster",
                "a.b.c.d.e",
            ]
            .map(String::from),
        );
        for h in reference.keys() {
            hosts.push(format!("{h}.svc"));
            hosts.push(format!("{h}.x"));
            hosts.extend(h.split_once('.').map(|(_, rest)| rest.to_string()));
        }
        for h in &hosts {
            for port in [None, Some(80), Some(81), Some(82)] {
                let want = reference.get(h.as_str()).and_then(|ports| {
                    let port = port.unwrap_or(ports[0].port);
                    ports.iter().find(|r| r.port == port)
                });
                let got = t.resolve(h, port);
                assert_eq!(
                    got.map(|r| (r.service.key(), r.port)),
                    want.map(|r| (r.service.key(), r.port)),
                    "{h:?} port {port:?} (node namespace {namespace:?})"
                );
            }
        }
        t
    }

    #[test]
    fn every_generated_name_with_and_without_a_port() {
        let services = [
            service("echo", "", &[80, 81], &[]),
            service("web", "shop", &[80], &[]),
        ];
        let t = routes_as_every_name("default", &services);
        for host in [
            "echo",
            "echo.default",
            "echo.default.svc",
            "echo.default.svc.cluster.local",
        ] {
            assert_eq!(t.resolve(host, None).unwrap().port, 80, "{host}");
            assert_eq!(t.resolve(host, Some(81)).unwrap().port, 81, "{host}");
            assert!(t.resolve(host, Some(82)).is_none(), "{host}");
        }
        for host in [
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
        ] {
            assert_eq!(t.resolve(host, None).unwrap().service.key(), "web.shop");
        }
        assert!(t.resolve("echo.shop", None).is_none());
        assert!(t.resolve("web.default", None).is_none());
        assert!(t.resolve("echo.default.svc.cluster", None).is_none());
        // Generated names are derived, not stored: only `web` (a bare name
        // of another namespace) is kept by name.
        assert_eq!(t.hosts.len(), 1, "{:?}", t.hosts.keys());
    }

    #[test]
    fn a_bare_name_of_the_node_namespace() {
        let services = [
            service("echo", "shop", &[80], &[]),
            service("echo", "", &[81], &[]),
        ];
        // The node's namespace does not change what a name reaches: a bare
        // name shared by two namespaces reaches both ports, the first
        // declared's the default.
        for ns in ["default", "shop", "other"] {
            let t = routes_as_every_name(ns, &services);
            assert_eq!(t.resolve("echo", None).unwrap().service.key(), "echo.shop");
            assert_eq!(
                t.resolve("echo", Some(81)).unwrap().service.key(),
                "echo.default"
            );
        }
    }

    #[test]
    fn extra_hosts_and_names_two_services_claim() {
        let services = [
            service("api", "", &[80], &["API.example.com", "shared"]),
            service("shared", "", &[81], &[]),
            // Its generated `a.b.svc` is `a.b`'s (a in b) `….svc`.
            service("a", "b", &[80], &[]),
            service("a.b", "svc", &[82], &[]),
            // Its extra host is another service's key.
            service("c", "", &[80], &["a.b"]),
            // Two services with one key: `x.y.z`.
            service("x", "y.z", &[80], &[]),
            service("x.y", "z", &[81], &[]),
            // The same service twice.
            service("twice", "", &[80], &[]),
            service("twice", "", &[81], &[]),
        ];
        for ns in ["default", "b", "svc", "z", "y.z"] {
            routes_as_every_name(ns, &services);
        }
        let t = table("default", &services);
        assert_eq!(t.resolve("api.example.com", None).unwrap().port, 80);
        // `shared` is api's extra host first: its default port is api's.
        assert_eq!(
            t.resolve("shared", None).unwrap().service.key(),
            "api.default"
        );
        assert_eq!(
            t.resolve("shared", Some(81)).unwrap().service.key(),
            "shared.default"
        );
    }

    #[test]
    fn an_empty_table_routes_nothing() {
        let t = table("default", &[]);
        assert!(t.is_empty());
        assert!(t.resolve("echo", None).is_none());
    }
}
