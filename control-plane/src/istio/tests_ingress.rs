//! Conversion of Sidecars and of both Gateways with what is bound to them,
//! from the e2e fixtures (Istio's docs and tasks).

use super::*;

#[test]
fn sidecars_become_scopes_of_their_egress_hosts() {
    let c = convert_all(
        &[
            fixture!("sidecar-default.yaml"),
            fixture!("sidecar-productpage.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    let scopes: Vec<String> = c
        .scopes
        .iter()
        .map(|s| {
            let hosts: Vec<String> = s
                .egress
                .iter()
                .map(|e| format!("{}/{}", e.namespace, e.host))
                .collect();
            format!(
                "{}/{} {:?} {}",
                s.namespace,
                s.name,
                s.selector,
                hosts.join(",")
            )
        })
        .collect();
    assert_eq!(
        scopes,
        [
            "default/default None default/*,istio-system/*",
            "default/productpage Some({\"app\": \"productpage\"}) \
             default/reviews.default.svc.cluster.local,backend/ratings.backend.svc.cluster.local",
        ]
    );
    assert_eq!(c.objects[1].produced, ["scope default/productpage"]);
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());

    let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\n\
                spec:\n  egress: [ { port: {number: 80}, hosts: [\"*/*\"] } ]\n  \
                outboundTrafficPolicy: {mode: ALLOW_ANY}\n";
    let u = convert_all(&[text], &bookinfo())
        .unwrap()
        .unsupported()
        .join("\n");
    assert!(
        u.contains("Sidecar default/s: spec.egress[0].port: not supported"),
        "{u}"
    );
    assert!(
        u.contains("spec.outboundTrafficPolicy.mode: not supported: \"ALLOW_ANY\""),
        "{u}"
    );
    let bad = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\n\
               spec:\n  egress: [ { hosts: [\"reviews\"] } ]\n";
    let err = convert_all(&[bad], &bookinfo()).unwrap_err().to_string();
    assert!(
        err.contains("spec.egress[0].hosts[0]: \"reviews\" is not namespace/host"),
        "{err}"
    );
}

#[test]
fn istio_gateways_serve_the_hosts_of_bound_virtual_services() {
    let mut ctx = bookinfo();
    ctx.services.push(service("httpbin"));
    let c = convert_all(&[fixture!("gateway-httpbin-istio.yaml")], &ctx).unwrap();
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());
    let g = &c.gateways[0];
    assert_eq!(g.object.to_string(), "Gateway default/mygateway");
    let listeners: Vec<(&str, &str, bool)> = g
        .gateway
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.as_str(), l.tls))
        .collect();
    assert_eq!(
        listeners,
        [
            ("https", "0.0.0.0:443", true),
            ("http", "0.0.0.0:80", false)
        ]
    );
    let host = &g.gateway.hosts[0];
    assert_eq!(host.hostname, "httpbin.example.com");
    assert!(host.https_redirect);
    let tls = host.tls.as_ref().unwrap();
    assert_eq!(
        tls.cert_file,
        "/etc/sane/credentials/default/httpbin-credential/tls.crt"
    );
    assert_eq!(
        tls.key_file,
        "/etc/sane/credentials/default/httpbin-credential/tls.key"
    );
    assert_eq!(host.routes[0].service, "httpbin-vs-gw.default");
    assert_eq!(host.routes[0].matches.len(), 2);
    // The route the gateway's requests take: the VirtualService's rules.
    let r = route(&c, "httpbin-vs-gw");
    assert_eq!(r.name, "httpbin.vs-gw");
    assert_eq!(r.rules[0].destinations[0].service, "httpbin");
    let mut moved = g.clone();
    moved.use_credentials_dir("/run/secrets");
    let tls = moved.gateway.hosts[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.cert_file,
        "/run/secrets/default/httpbin-credential/tls.crt"
    );
    moved.gateway.validate().unwrap();

    // Files instead of a Secret; a host no server accepts; PASSTHROUGH.
    let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: bookinfo-gateway }
spec:
  selector: { istio: ingressgateway }
  servers:
  - port: { number: 443, name: https, protocol: HTTPS }
    hosts: ["bookinfo.example.com"]
    tls: { mode: SIMPLE, serverCertificate: /etc/certs/servercert.pem, privateKey: /etc/certs/privatekey.pem }
  - port: { number: 8443, name: tls, protocol: HTTPS }
    hosts: ["*"]
    tls: { mode: PASSTHROUGH }
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: bookinfo }
spec:
  hosts: ["bookinfo.example.com", "other.example.com"]
  gateways: [bookinfo-gateway]
  http:
  - route: [ { destination: { host: productpage } } ]
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    let u = c.unsupported().join("\n");
    assert!(
        u.contains("spec.servers[1].tls.mode: not supported: \"PASSTHROUGH\""),
        "{u}"
    );
    assert!(
        u.contains("VirtualService default/bookinfo: spec.gateways[0]: not supported: host \"other.example.com\""),
        "{u}"
    );
    let g = &c.gateways[0];
    assert_eq!(g.gateway.listeners.len(), 1);
    assert_eq!(g.gateway.hosts.len(), 1);
    let tls = g.gateway.hosts[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, "/etc/certs/servercert.pem");
    assert!(g.gateway.hosts[0].routes[0].matches.is_empty());
}

#[test]
fn gateway_api_https_listeners_read_certificate_refs() {
    let mut ctx = bookinfo();
    ctx.services.push(service("httpbin"));
    let c = convert_all(&[fixture!("gateway-httpbin-kube.yaml")], &ctx).unwrap();
    let u = c.unsupported().join("\n");
    assert!(!u.contains(".tls"), "{u}");
    let g = &c.gateways[0];
    assert_eq!(g.object.to_string(), "Gateway istio-system/mygateway");
    assert!(g.gateway.listeners[0].tls);
    let host = &g.gateway.hosts[0];
    assert_eq!(host.hostname, "httpbin.example.com");
    assert_eq!(
        host.tls.as_ref().unwrap().cert_file,
        "/etc/sane/credentials/istio-system/httpbin-credential/tls.crt"
    );
    assert_eq!(
        g.credentials["httpbin.example.com"],
        "istio-system/httpbin-credential"
    );
    let passthrough = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
        spec:\n  listeners: [ { name: tls, port: 443, protocol: HTTPS, tls: { mode: Passthrough } } ]\n";
    let u = convert_all(&[passthrough], &ctx)
        .unwrap()
        .unsupported()
        .join("\n");
    assert!(
        u.contains("spec.listeners[0].tls.mode: not supported: \"Passthrough\""),
        "{u}"
    );
}

#[test]
fn both_gateways_produce_the_resources_the_control_plane_delivers() {
    let mut ctx = bookinfo();
    ctx.services.push(service("httpbin"));
    let c = convert_all(&[fixture!("gateway-httpbin-istio.yaml")], &ctx).unwrap();
    let g = &c.resources.gateways[0];
    assert_eq!(
        (g.namespace.as_str(), g.name.as_str()),
        ("default", "mygateway")
    );
    assert_eq!(g.selector["istio"], "ingressgateway");
    assert_eq!(g.hosts[0].hostname, "httpbin.example.com");
    g.validate_resource().unwrap();
    let istio = c
        .objects
        .iter()
        .find(|o| o.object.kind == "Gateway")
        .unwrap();
    assert_eq!(istio.produced, ["gateway default/mygateway"]);

    let c = convert_all(&[fixture!("gateway-httpbin-kube.yaml")], &ctx).unwrap();
    let g = &c.resources.gateways[0];
    assert_eq!(g.namespace, "istio-system");
    assert_eq!(
        g.selector,
        BTreeMap::from([(
            sane_xds_proto::GATEWAY_NAME_LABEL.to_string(),
            "mygateway".to_string()
        )])
    );
    g.validate_resource().unwrap();
    // Through `Resource`, as the server writes it to the registry.
    let kinds: Vec<String> = Resource::from_mesh(c.resources.clone())
        .into_iter()
        .filter(|(_, r)| r.kind() == Kind::Gateway)
        .map(|(_, r)| r.key())
        .collect();
    assert_eq!(kinds, ["istio-system/mygateway"]);

    // Without a selector an Istio Gateway would go to no one: reported,
    // not produced.
    let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
                spec:\n  servers: [ { port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"] } ]\n";
    let c = convert_all(&[text], &ctx).unwrap();
    assert!(c.resources.gateways.is_empty());
    assert!(
        c.objects[0].produced.is_empty(),
        "{:?}",
        c.objects[0].produced
    );
    let u = c.unsupported().join("\n");
    assert!(
        u.contains("spec.selector: not supported: no selector"),
        "{u}"
    );
}
