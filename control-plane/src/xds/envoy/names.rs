//! Resource names of the Envoy types (see the table in [`super`]).

use sane_xds_proto::{Protocol, Service, ServicePort};
use std::collections::BTreeMap;

/// The name of the `RouteConfiguration` of one service port:
/// `name.namespace:port`.
pub fn route_config_name(service_key: &str, port: u32) -> String {
    format!("{service_key}:{port}")
}

/// The name of the cluster (and its `ClusterLoadAssignment`) of one service
/// port, narrowed to `subset` when it is not empty.
pub fn cluster_name(service_key: &str, port: u32, subset: &BTreeMap<String, String>) -> String {
    let mut name = format!("{service_key}:{port}");
    for (i, (k, v)) in subset.iter().enumerate() {
        name.push(if i == 0 { '/' } else { ',' });
        escape_into(&mut name, k);
        name.push('=');
        escape_into(&mut name, v);
    }
    name
}

/// The listener names of one HTTP port of `svc`, as a node of `namespace`
/// may write them in `xds:///NAME`.
pub(super) fn listener_names(svc: &Service, port: &ServicePort, namespace: &str) -> Vec<String> {
    let default_port = default_port(svc) == Some(port.port);
    hosts(svc, namespace)
        .into_iter()
        .flat_map(|h| {
            let bare = default_port.then(|| h.clone());
            std::iter::once(format!("{h}:{}", port.port)).chain(bare)
        })
        .collect()
}

/// The `domains` of the virtual host of one port of `svc`: every host name,
/// with and without the port.
pub(super) fn domains(svc: &Service, port: u32) -> Vec<String> {
    svc.host_names()
        .into_iter()
        .flat_map(|h| [format!("{h}:{port}"), h])
        .collect()
}

/// The port a name without `:port` means: the first gRPC port, else the
/// first HTTP port.
fn default_port(svc: &Service) -> Option<u32> {
    let grpc = svc.ports.iter().find(|p| p.protocol() == Protocol::Grpc);
    grpc.or_else(|| svc.ports.iter().find(|p| p.protocol().is_http()))
        .map(|p| p.port)
}

/// The host names of `svc` a node of `namespace` may use: the bare name only
/// in the service's own namespace.
fn hosts(svc: &Service, namespace: &str) -> Vec<String> {
    let own = svc.namespace() == namespace;
    svc.host_names()
        .into_iter()
        .filter(|h| own || *h != svc.name)
        .collect()
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | ',' | '=' | '/' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str) -> Service {
        let port = |port, protocol: Protocol| ServicePort {
            port,
            protocol: protocol.into(),
            ..Default::default()
        };
        Service {
            name: "echo".into(),
            namespace: ns.into(),
            ports: vec![port(80, Protocol::Http), port(9090, Protocol::Grpc)],
            hosts: vec!["echo.example.com".into()],
            ..Default::default()
        }
    }

    #[test]
    fn listener_names_cover_every_host_and_the_default_port() {
        let s = svc("shop");
        let grpc = &s.ports[1];
        assert_eq!(
            listener_names(&s, grpc, "shop"),
            [
                "echo:9090",
                "echo",
                "echo.shop:9090",
                "echo.shop",
                "echo.shop.svc:9090",
                "echo.shop.svc",
                "echo.shop.svc.cluster.local:9090",
                "echo.shop.svc.cluster.local",
                "echo.example.com:9090",
                "echo.example.com",
            ]
        );
        // HTTP is not the default port (gRPC is); the bare name is for the
        // service's own namespace only.
        let http = listener_names(&s, &s.ports[0], "other");
        assert_eq!(http[0], "echo.shop:80");
        assert!(!http.iter().any(|n| n == "echo:80" || n == "echo.shop"));
    }

    #[test]
    fn cluster_names_encode_sorted_subsets() {
        let subset = BTreeMap::from([
            ("version".to_string(), "v1".to_string()),
            ("a/b".to_string(), "x=y,z%".to_string()),
        ]);
        assert_eq!(
            cluster_name("echo.shop", 9090, &subset),
            "echo.shop:9090/a%2Fb=x%3Dy%2Cz%25,version=v1"
        );
        assert_eq!(
            cluster_name("echo.shop", 9090, &BTreeMap::new()),
            "echo.shop:9090"
        );
    }
}
