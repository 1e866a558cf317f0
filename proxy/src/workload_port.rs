//! Which local ports the inbound delivers to.
//!
//! A peer sidecar's transport header names the workload port, and a
//! connection redirected by iptables names the port it was addressed to:
//! both come from outside. Delivered as asked, any mesh peer could reach
//! every loopback port of the host — the proxy's own admin server
//! (`/config_dump`, `POST /drain`) included. So the inbound delivers only
//! to
//!
//! * a port the local config declares for this workload (the inbound
//!   listener's `workload_ports`, read from the bootstrap file, never from
//!   the control plane), and
//! * never to one of the proxy's own sockets ([`OwnSockets`]: admin,
//!   health, every listener, the gateway's listeners), even if declared.
//!
//! Anything else is refused ([`PortRefusal`]): an HTTP connection gets a
//! 403 with response flag `IPR` per request, an opaque TCP connection is
//! closed unanswered; both are counted in
//! `sane_inbound_port_refused_total{reason, protocol}`.

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, Registry};
use sane_xds_proto::{Listener, PeerTls, Protocol, TlsMode};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Where an inbound listener delivers traffic.
#[derive(Debug)]
pub struct InboundTarget {
    /// The workload's address (normally loopback).
    pub ip: IpAddr,
    /// Declared workload ports and their protocols.
    pub ports: HashMap<u16, Protocol>,
    /// Port for plain HTTP clients (first declared HTTP-ish port).
    pub default_http: Option<u16>,
    /// Port for plain opaque clients (first declared TCP port).
    pub default_tcp: Option<u16>,
    /// Protocol detection timeout.
    pub detect_timeout: Duration,
    /// The listener's mutual TLS mode (resolved: never `Default`).
    pub tls_mode: TlsMode,
    /// Per-port overrides of `tls_mode`.
    pub port_tls: HashMap<u16, TlsMode>,
    /// Where each mode came from, for `/config_dump` and the log: the
    /// bootstrap's pins that override a delivered `PeerAuthentication`.
    pub tls_overrides: Vec<String>,
}

/// The effective mutual TLS modes of an inbound listener, as the admin's
/// `/config_dump` shows them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EffectiveTls {
    /// The listener's mode.
    pub mode: TlsMode,
    /// Ports whose mode differs from the listener's.
    pub ports: std::collections::BTreeMap<u16, TlsMode>,
    /// The bootstrap's pins that override a `PeerAuthentication`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// The response flag of a refused inbound port.
pub const REFUSED_FLAG: &str = "IPR";

/// Why the inbound refused to deliver to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRefusal {
    /// Not one of the workload ports the local config declares.
    Undeclared,
    /// One of the proxy's own sockets (admin, health, a listener).
    ProxyPort,
}

/// The addresses of every socket the proxy itself listens on, filled in as
/// they are bound (the proxy's at build, the gateway's after), read per
/// inbound connection without a lock.
#[derive(Debug, Default)]
pub struct OwnSockets(ArcSwap<Vec<SocketAddr>>);

/// Counts refused inbound connections.
#[derive(Clone, Debug)]
pub struct PortMetrics {
    refused: IntCounterVec,
}

/// Checks that the inbound may deliver to workload `port` of `target`.
pub fn check(target: &InboundTarget, own: &OwnSockets, port: u16) -> Result<(), PortRefusal> {
    if own.covers(SocketAddr::new(target.ip, port)) {
        return Err(PortRefusal::ProxyPort);
    }
    if !target.ports.contains_key(&port) {
        return Err(PortRefusal::Undeclared);
    }
    Ok(())
}

// === impl InboundTarget ===

impl InboundTarget {
    /// Where listener `l` delivers. Its mutual TLS modes, by precedence: a
    /// mode the bootstrap sets explicitly (on the port, else on the
    /// listener) is a local pin and wins; where it says `default`, the
    /// `PeerAuthentication`s the proxy was given decide (`peer`: resolved
    /// for this node); with neither, `strict` when the proxy has an identity
    /// (`has_identity`), else `disable`.
    pub(crate) fn new(l: &Listener, has_identity: bool, peer: &PeerTls) -> Self {
        let mut tls_overrides = Vec::new();
        let by = || peer.from.join(", ");
        let pinned = l.tls_mode() != TlsMode::Default;
        let tls_mode = match (l.tls_mode(), peer.mode) {
            (TlsMode::Default, TlsMode::Default) if has_identity => TlsMode::Strict,
            (TlsMode::Default, TlsMode::Default) => TlsMode::Disable,
            (TlsMode::Default, m) => m,
            (pin, m) => {
                if m != TlsMode::Default && m != pin {
                    tls_overrides.push(format!(
                        "listener {}: tls_mode {} (bootstrap) overrides {} (PeerAuthentication {})",
                        l.name,
                        mode_name(pin),
                        mode_name(m),
                        by()
                    ));
                }
                pin
            }
        };
        let mut port_tls: HashMap<u16, TlsMode> = HashMap::new();
        for w in &l.workload_ports {
            if w.tls_mode() != TlsMode::Default {
                port_tls.insert(w.port as u16, w.tls_mode());
            }
        }
        for (port, m) in &peer.ports {
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            match port_tls.get(&port) {
                Some(pin) if pin != m => tls_overrides.push(format!(
                    "listener {}: workload_ports {port} tls_mode {} (bootstrap) overrides {} \
                     (PeerAuthentication {})",
                    l.name,
                    mode_name(*pin),
                    mode_name(*m),
                    by()
                )),
                Some(_) => {}
                None if pinned && *m != tls_mode => tls_overrides.push(format!(
                    "listener {}: tls_mode {} (bootstrap) overrides port {port} {} \
                     (PeerAuthentication {})",
                    l.name,
                    mode_name(tls_mode),
                    mode_name(*m),
                    by()
                )),
                None if pinned => {}
                None => {
                    port_tls.insert(port, *m);
                }
            }
        }
        let ip = l
            .workload_address
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let ports: HashMap<u16, Protocol> = l
            .workload_ports
            .iter()
            .map(|w| (w.port as u16, w.protocol()))
            .collect();
        let first = |http: bool| {
            l.workload_ports
                .iter()
                .find(|w| w.protocol().is_http() == http)
                .map(|w| w.port as u16)
        };
        Self {
            ip,
            ports,
            default_http: first(true),
            default_tcp: first(false),
            detect_timeout: Duration::from_millis(l.detect_timeout_ms()),
            tls_mode,
            port_tls,
            tls_overrides,
        }
    }

    /// The effective modes, for `/config_dump`.
    pub fn effective_tls(&self) -> EffectiveTls {
        EffectiveTls {
            mode: self.tls_mode,
            ports: self
                .port_tls
                .iter()
                .filter(|(_, m)| **m != self.tls_mode)
                .map(|(p, m)| (*p, *m))
                .collect(),
            overrides: self.tls_overrides.clone(),
        }
    }

    /// The mutual TLS mode of workload `port`.
    pub fn tls_mode(&self, port: u16) -> TlsMode {
        self.port_tls.get(&port).copied().unwrap_or(self.tls_mode)
    }

    /// True if any port accepts TLS (so the listener must look for it).
    pub fn any_tls(&self) -> bool {
        self.tls_mode != TlsMode::Disable || self.port_tls.values().any(|m| *m != TlsMode::Disable)
    }

    /// True if any port accepts plaintext.
    pub fn any_plaintext(&self) -> bool {
        self.tls_mode != TlsMode::Strict || self.port_tls.values().any(|m| *m != TlsMode::Strict)
    }

    /// The protocol the workload speaks on `port` (`http` if undeclared).
    pub fn protocol(&self, port: u16) -> Protocol {
        self.ports.get(&port).copied().unwrap_or(Protocol::Http)
    }
}

fn mode_name(m: TlsMode) -> &'static str {
    match m {
        TlsMode::Default => "default",
        TlsMode::Strict => "strict",
        TlsMode::Permissive => "permissive",
        TlsMode::Disable => "disable",
    }
}

// === impl PortRefusal ===

impl PortRefusal {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            PortRefusal::Undeclared => "undeclared",
            PortRefusal::ProxyPort => "proxy_port",
        }
    }
}

impl fmt::Display for PortRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortRefusal::Undeclared => "not a declared workload port",
            PortRefusal::ProxyPort => "one of the proxy's own ports",
        })
    }
}

// === impl OwnSockets ===

impl OwnSockets {
    /// Records a socket the proxy listens on.
    pub fn add(&self, addr: SocketAddr) {
        self.0.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(addr);
            Arc::new(next)
        });
    }

    /// True if connecting to `target` could reach one of the proxy's own
    /// sockets: the same port on the same address, on a wildcard bind, or
    /// on loopback (every loopback address is this host).
    pub fn covers(&self, target: SocketAddr) -> bool {
        let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
        self.0.load().iter().any(|own| {
            own.port() == target.port()
                && (own.ip() == target.ip()
                    || own.ip().is_unspecified()
                    || (local(own.ip()) && local(target.ip())))
        })
    }
}

// === impl PortMetrics ===

impl PortMetrics {
    /// Registers `sane_inbound_port_refused_total`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            refused: crate::metric::register_counter_vec(
                registry,
                "sane_inbound_port_refused_total",
                "Inbound connections refused because they asked for a port that is not a \
                 declared workload port or is one of the proxy's own, by reason \
                 (undeclared, proxy_port) and protocol (http, tcp).",
                &["reason", "protocol"],
            )?,
        })
    }

    /// Counts one refused connection.
    pub fn refused(&self, reason: PortRefusal, http: bool) {
        let protocol = if http { "http" } else { "tcp" };
        self.refused
            .with_label_values(&[reason.label(), protocol])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::{Protocol, TlsMode};
    use std::collections::HashMap;
    use std::time::Duration;

    fn target(ip: [u8; 4]) -> InboundTarget {
        InboundTarget {
            ip: ip.into(),
            ports: HashMap::from([(8080, Protocol::Http), (15000, Protocol::Http)]),
            default_http: Some(8080),
            default_tcp: None,
            detect_timeout: Duration::from_secs(1),
            tls_mode: TlsMode::Permissive,
            port_tls: HashMap::new(),
            tls_overrides: Vec::new(),
        }
    }

    #[test]
    fn only_declared_ports_that_are_not_the_proxys_own() {
        let own = OwnSockets::default();
        own.add("127.0.0.1:15000".parse().unwrap());
        own.add("0.0.0.0:15006".parse().unwrap());
        let t = target([127, 0, 0, 1]);
        assert_eq!(check(&t, &own, 8080), Ok(()));
        assert_eq!(check(&t, &own, 8081), Err(PortRefusal::Undeclared));
        // Declared, but the admin port: refused all the same.
        assert_eq!(check(&t, &own, 15000), Err(PortRefusal::ProxyPort));
        // A wildcard-bound listener is reachable on every address.
        assert_eq!(check(&t, &own, 15006), Err(PortRefusal::ProxyPort));
    }

    #[test]
    fn own_sockets_cover_their_port_on_every_local_address() {
        let own = OwnSockets::default();
        own.add("127.0.0.1:15000".parse().unwrap());
        own.add("10.0.0.5:15020".parse().unwrap());
        let covers = |s: &str| own.covers(s.parse().unwrap());
        assert!(covers("127.0.0.1:15000"));
        assert!(covers("127.0.0.2:15000"), "all of 127/8 is this host");
        assert!(covers("0.0.0.0:15000"));
        assert!(!covers("10.0.0.9:15000"), "another host's port");
        assert!(covers("10.0.0.5:15020"));
        assert!(!covers("127.0.0.1:15020"), "bound to 10.0.0.5 only");
        assert!(!covers("127.0.0.1:8080"));
    }

    fn listener(mode: TlsMode, ports: &[(u32, TlsMode)]) -> Listener {
        Listener {
            name: "inbound".into(),
            direction: sane_xds_proto::Direction::Inbound.into(),
            address: "127.0.0.1:0".into(),
            tls_mode: mode.into(),
            workload_ports: ports
                .iter()
                .map(|(port, m)| sane_xds_proto::WorkloadPort {
                    port: *port,
                    tls_mode: (*m).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn peer(mode: TlsMode, ports: &[(u32, TlsMode)]) -> PeerTls {
        PeerTls {
            mode,
            ports: ports.iter().copied().collect(),
            from: vec!["shop/p".into()],
        }
    }

    #[test]
    fn a_peer_authentication_governs_what_the_bootstrap_leaves_default() {
        let l = listener(
            TlsMode::Default,
            &[(8080, TlsMode::Default), (9090, TlsMode::Default)],
        );
        // Neither: strict with an identity, else disable.
        let none = PeerTls::default();
        assert_eq!(
            InboundTarget::new(&l, true, &none).tls_mode(8080),
            TlsMode::Strict
        );
        assert_eq!(
            InboundTarget::new(&l, false, &none).tls_mode(8080),
            TlsMode::Disable
        );
        // The delivered mode, and its port-level one.
        let p = peer(TlsMode::Strict, &[(9090, TlsMode::Disable)]);
        let t = InboundTarget::new(&l, true, &p);
        assert_eq!(
            (t.tls_mode(8080), t.tls_mode(9090)),
            (TlsMode::Strict, TlsMode::Disable)
        );
        assert!(t.any_tls() && t.any_plaintext());
        assert!(t.tls_overrides.is_empty());
        let p = peer(TlsMode::Permissive, &[]);
        assert_eq!(
            InboundTarget::new(&l, true, &p).tls_mode(8080),
            TlsMode::Permissive
        );
    }

    #[test]
    fn an_explicit_bootstrap_mode_is_a_local_pin() {
        let l = listener(
            TlsMode::Strict,
            &[(8080, TlsMode::Default), (9090, TlsMode::Permissive)],
        );
        let p = peer(
            TlsMode::Disable,
            &[(8080, TlsMode::Disable), (9090, TlsMode::Disable)],
        );
        let t = InboundTarget::new(&l, true, &p);
        assert_eq!(t.tls_mode(8080), TlsMode::Strict);
        assert_eq!(t.tls_mode(9090), TlsMode::Permissive);
        assert_eq!(t.tls_overrides.len(), 3, "{:?}", t.tls_overrides);
        assert!(
            t.tls_overrides[0].contains(
                "tls_mode strict (bootstrap) overrides disable (PeerAuthentication shop/p)"
            ),
            "{:?}",
            t.tls_overrides
        );
        // A pinned port inside a listener the PeerAuthentication governs.
        let l = listener(TlsMode::Default, &[(9090, TlsMode::Strict)]);
        let t = InboundTarget::new(
            &l,
            true,
            &peer(TlsMode::Permissive, &[(9090, TlsMode::Disable)]),
        );
        assert_eq!(
            (t.tls_mode(8080), t.tls_mode(9090)),
            (TlsMode::Permissive, TlsMode::Strict)
        );
        assert_eq!(t.effective_tls().ports, [(9090, TlsMode::Strict)].into());
    }
}
