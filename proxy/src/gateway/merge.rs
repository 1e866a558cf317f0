//! The configuration a gateway serves: its bootstrap `gateway` section
//! merged with the [`Gateway`] resources the control plane delivered to it
//! (those whose `selector` its `node.labels` match).
//!
//! The bootstrap's listeners, hosts and edge limits always stay. A
//! delivered listener is named `<namespace>/<gateway>/<listener>`; one on
//! an address another listener already has (same TLS) shares it, as Istio
//! merges the servers of one port. A delivered host whose name another host
//! (the bootstrap's, or an earlier delivered one's) already has is rejected
//! by name, and everything else keeps serving. Certificate files under
//! [`DEFAULT_CREDENTIALS_DIR`] (Secrets) are read from the gateway's own
//! credentials directory: keys never travel over xDS.

use sane_xds_proto::resources::qualify;
use sane_xds_proto::{Gateway, GatewayHost, HostTls, DEFAULT_CREDENTIALS_DIR};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// How delivered configurations are placed on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Where Secrets are read from instead of [`DEFAULT_CREDENTIALS_DIR`]
    /// (`--credentials-dir`). Default: none, that directory.
    pub credentials_dir: Option<PathBuf>,
    /// The IP delivered listeners bind instead of the unspecified address
    /// they name (`0.0.0.0:<port>`) (`--listener-ip`). Default: none, as
    /// delivered.
    pub listener_ip: Option<IpAddr>,
}

/// The merged configuration and what of the delivered ones was left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    /// What the gateway serves.
    pub gateway: Gateway,
    /// Where each host of `gateway` comes from, by index: `bootstrap`, or
    /// `gateway <namespace>/<name> hosts[<i>]` (compile errors name it).
    pub host_origins: Vec<String>,
    /// The delivered parts left out, each naming the resource, the field
    /// and why.
    pub rejected: Vec<String>,
}

/// Merges `bootstrap` (the section, if any) with `delivered` (in name
/// order, as received).
pub fn merge(
    bootstrap: Option<&Gateway>,
    delivered: &[Gateway],
    options: &DeliveryOptions,
) -> Merged {
    let mut gateway = bootstrap.cloned().unwrap_or_default();
    // Only the bootstrap's own fields describe this gateway.
    gateway.namespace.clear();
    gateway.selector.clear();
    let mut merged = Merged {
        host_origins: vec!["bootstrap".to_string(); gateway.hosts.len()],
        gateway,
        rejected: Vec::new(),
    };
    for d in delivered {
        let ns = sane_xds_proto::namespace_or_default(&d.namespace);
        let who = format!("gateway {ns}/{}", d.name);
        for (i, l) in d.listeners.iter().enumerate() {
            let mut l = l.clone();
            l.name = format!("{ns}/{}/{}", d.name, l.name);
            if let Some(ip) = options.listener_ip {
                if let Ok(addr) = l.address.parse::<SocketAddr>() {
                    if addr.ip().is_unspecified() {
                        l.address = SocketAddr::new(ip, addr.port()).to_string();
                    }
                }
            }
            match merged
                .gateway
                .listeners
                .iter()
                .find(|x| x.address == l.address)
            {
                Some(x) if x.tls == l.tls => {} // shared, as Istio merges servers
                Some(x) => merged.rejected.push(format!(
                    "{who}: listeners[{i}]: {} is listener {:?}'s, with{} TLS; not bound",
                    l.address,
                    x.name,
                    if x.tls { "" } else { "out" }
                )),
                None => merged.gateway.listeners.push(l),
            }
        }
        for (i, h) in d.hosts.iter().enumerate() {
            let name = h.hostname.to_ascii_lowercase();
            let taken = merged
                .gateway
                .hosts
                .iter()
                .position(|x| x.hostname.eq_ignore_ascii_case(&name));
            if let Some(j) = taken {
                merged.rejected.push(format!(
                    "{who}: hosts[{i}]: host {name:?} is already served (by the {}); not served \
                     from this gateway",
                    merged.host_origins[j]
                ));
                continue;
            }
            merged.gateway.hosts.push(placed(h, ns, options));
            merged.host_origins.push(format!("{who} hosts[{i}]"));
        }
    }
    merged
}

/// `h` as this gateway serves it: services qualified by the resource's
/// namespace, Secrets read from the credentials directory.
fn placed(h: &GatewayHost, namespace: &str, options: &DeliveryOptions) -> GatewayHost {
    let mut h = h.clone();
    for r in &mut h.routes {
        r.service = qualify(&r.service, namespace);
    }
    if let (Some(tls), Some(dir)) = (&mut h.tls, &options.credentials_dir) {
        relocate(tls, dir);
    }
    h
}

/// Moves files under [`DEFAULT_CREDENTIALS_DIR`] to `dir`.
fn relocate(tls: &mut HostTls, dir: &Path) {
    for file in [
        &mut tls.cert_file,
        &mut tls.key_file,
        &mut tls.client_ca_file,
    ] {
        if let Ok(rest) = Path::new(file.as_str()).strip_prefix(DEFAULT_CREDENTIALS_DIR) {
            *file = dir.join(rest).display().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Gateway {
        serde_yaml::from_str(
            r#"
name: edge
listeners: [ { name: https, address: "127.0.0.1:8443", tls: true } ]
hosts:
  - hostname: shop.example.com
    tls: { cert_file: /etc/gw/shop.pem, key_file: /etc/gw/shop.key }
    routes: [ { service: web, port: 80 } ]
limits: { trusted_hops: 1 }
"#,
        )
        .unwrap()
    }

    fn delivered() -> Gateway {
        serde_yaml::from_str(
            r#"
name: public
namespace: shop
selector: { istio: ingressgateway }
listeners:
  - { name: https, address: "0.0.0.0:9443", tls: true }
  - { name: http, address: "0.0.0.0:8443" }
hosts:
  - hostname: SHOP.example.com
    routes: [ { service: other, port: 80 } ]
  - hostname: api.example.com
    tls:
      cert_file: /etc/sane/credentials/shop/api-cert/tls.crt
      key_file: /etc/sane/credentials/shop/api-cert/tls.key
    routes: [ { service: api, port: 8080 }, { service: web.front, port: 80 } ]
"#,
        )
        .unwrap()
    }

    #[test]
    fn bootstrap_parts_stay_and_delivered_ones_join() {
        let options = DeliveryOptions {
            credentials_dir: Some("/run/creds".into()),
            listener_ip: Some("127.0.0.1".parse().unwrap()),
        };
        let m = merge(Some(&bootstrap()), &[delivered()], &options);
        let g = &m.gateway;
        assert_eq!(g.name, "edge");
        assert_eq!(g.limits, bootstrap().limits);
        let listeners: Vec<(&str, &str)> = g
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.address.as_str()))
            .collect();
        assert_eq!(
            listeners,
            [
                ("https", "127.0.0.1:8443"),
                ("shop/public/https", "127.0.0.1:9443")
            ]
        );
        let hosts: Vec<&str> = g.hosts.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(hosts, ["shop.example.com", "api.example.com"]);
        assert_eq!(
            m.host_origins,
            ["bootstrap", "gateway shop/public hosts[1]"]
        );
        // Services default to the resource's namespace; Secrets are read
        // from this gateway's credentials directory.
        let api = &g.hosts[1];
        assert_eq!(api.routes[0].service, "api.shop");
        assert_eq!(api.routes[1].service, "web.front");
        let tls = api.tls.as_ref().unwrap();
        assert_eq!(tls.cert_file, "/run/creds/shop/api-cert/tls.crt");
        assert_eq!(tls.key_file, "/run/creds/shop/api-cert/tls.key");
    }

    #[test]
    fn collisions_are_rejected_by_name() {
        let options = DeliveryOptions {
            listener_ip: Some("127.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        let m = merge(Some(&bootstrap()), &[delivered()], &options);
        assert_eq!(m.rejected.len(), 2, "{:?}", m.rejected);
        assert!(
            m.rejected[0].starts_with(
                "gateway shop/public: listeners[1]: 127.0.0.1:8443 is listener \"https\"'s"
            ),
            "{:?}",
            m.rejected
        );
        assert!(
            m.rejected[1].starts_with(
                "gateway shop/public: hosts[0]: host \"shop.example.com\" is already served (by \
                 the bootstrap)"
            ),
            "{:?}",
            m.rejected
        );
        // The bootstrap's host keeps its own route.
        assert_eq!(m.gateway.hosts[0].routes[0].service, "web");
    }

    #[test]
    fn without_a_bootstrap_section_the_delivered_ones_are_served() {
        let mut second = delivered();
        second.name = "second".into();
        let m = merge(None, &[delivered(), second], &DeliveryOptions::default());
        // The same address with the same TLS is one listener.
        assert_eq!(m.gateway.listeners.len(), 2);
        assert_eq!(m.gateway.listeners[0].address, "0.0.0.0:9443");
        assert_eq!(m.gateway.hosts.len(), 2);
        assert_eq!(
            m.rejected,
            [
                "gateway shop/second: hosts[0]: host \"shop.example.com\" is already served (by \
                 the gateway shop/public hosts[0]); not served from this gateway",
                "gateway shop/second: hosts[1]: host \"api.example.com\" is already served (by \
                 the gateway shop/public hosts[1]); not served from this gateway",
            ]
        );
        // Secrets stay where the control plane named them by default.
        let tls = m.gateway.hosts[1].tls.as_ref().unwrap();
        assert!(tls.cert_file.starts_with(DEFAULT_CREDENTIALS_DIR));
    }
}
