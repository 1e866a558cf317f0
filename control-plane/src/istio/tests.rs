//! Conversion of Istio and Gateway API objects, from YAML written as
//! Istio's own tasks write it (the e2e fixtures, shared with these tests).

use super::*;
use sane_xds_proto::{
    AuthzAction, Endpoint, LoadBalancer, MatchKind, PeerProtocol, Protocol, Service, ServicePort,
    TlsMode,
};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../e2e/fixtures/istio/", $name))
    };
}

fn service(name: &str) -> Service {
    Service {
        name: name.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn endpoint(service: &str, app: &str, version: &str, last: u8) -> Endpoint {
    Endpoint {
        service: service.into(),
        address: format!("10.0.0.{last}"),
        port: 9080,
        labels: [("app", app), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Bookinfo: productpage, reviews v1-v3, ratings, details.
fn bookinfo() -> Context {
    Context {
        services: ["productpage", "reviews", "ratings", "details"]
            .into_iter()
            .map(service)
            .collect(),
        endpoints: vec![
            endpoint("productpage", "productpage", "v1", 1),
            endpoint("reviews", "reviews", "v1", 2),
            endpoint("reviews", "reviews", "v2", 3),
            endpoint("reviews", "reviews", "v3", 4),
            endpoint("ratings", "ratings", "v1", 5),
            endpoint("details", "details", "v1", 6),
        ],
        routes: Vec::new(),
    }
}

fn convert_all(texts: &[&str], ctx: &Context) -> Result<Conversion, IstioError> {
    let mut docs = Vec::new();
    for t in texts {
        docs.extend(object::parse_documents(t)?);
    }
    convert(&docs, ctx)
}

fn route<'a>(c: &'a Conversion, service: &str) -> &'a sane_xds_proto::Route {
    c.resources
        .routes
        .iter()
        .find(|r| r.service == service)
        .unwrap_or_else(|| panic!("no route for {service}: {:#?}", c.resources.routes))
}

#[test]
fn request_routing_sends_jason_to_v2_and_everyone_else_to_v1() {
    let c = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-reviews-test-v2.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    let r = route(&c, "reviews");
    assert_eq!(r.name, "reviews.vs");
    assert_eq!(r.rules.len(), 2, "{r:#?}");
    let jason = &r.rules[0];
    assert_eq!(jason.matches[0].headers[0].name, "end-user");
    assert_eq!(jason.matches[0].headers[0].value, "jason");
    assert_eq!(jason.matches[0].headers[0].kind(), MatchKind::Exact);
    assert_eq!(jason.destinations[0].subset["version"], "v2");
    assert!(r.rules[1].matches.is_empty());
    assert_eq!(r.rules[1].destinations[0].subset["version"], "v1");
    // Istio's default retry policy is kept, and said so.
    assert_eq!(jason.retry.as_ref().unwrap().attempts_or_default(), 2);
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());
    assert!(c
        .objects
        .iter()
        .any(|o| o.notes.iter().any(|n| n.path == "spec.http[0].retries")));
    // The produced resources validate as a whole.
    let mut mesh = c.resources.clone();
    mesh.services = bookinfo().services;
    mesh.validate().unwrap();
}

#[test]
fn traffic_shifting_keeps_the_weights() {
    let c = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-reviews-80-20.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    let d = &route(&c, "reviews").rules[0].destinations;
    assert_eq!((d[0].weight, d[1].weight), (80, 20));
    assert_eq!(d[1].subset["version"], "v2");
}

#[test]
fn faults_and_timeouts_become_rule_policies() {
    let c = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-ratings-test-delay.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    let delay = route(&c, "ratings").rules[0]
        .fault
        .clone()
        .unwrap()
        .delay
        .unwrap();
    assert_eq!((delay.fixed_delay_ms, delay.percent), (1_000, Some(100.0)));
    let c = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-ratings-test-abort.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    let abort = route(&c, "ratings").rules[0]
        .fault
        .clone()
        .unwrap()
        .abort
        .unwrap();
    assert_eq!(abort.http_status, 500);
    let c = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-reviews-timeout.yaml"),
        ],
        &bookinfo(),
    )
    .unwrap();
    assert_eq!(route(&c, "reviews").rules[0].timeout_ms, 500);
}

#[test]
fn retries_map_attempts_and_conditions_and_report_the_rest() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - route: [ { destination: { host: ratings } } ]
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,retriable-4xx,503
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    let r = route(&c, "ratings").rules[0].retry.clone().unwrap();
    assert_eq!(
        r.attempts,
        Some(3),
        "attempts excludes the first try, as Istio's"
    );
    assert_eq!(r.per_try_timeout_ms, 2_000);
    assert_eq!(
        r.retry_on,
        ["gateway-error", "connect-failure", "refused-stream"]
    );
    assert_eq!(r.status_codes, [503]);
    let u = c.unsupported();
    assert_eq!(u.len(), 1, "{u:?}");
    assert!(
        u[0].contains("spec.http[0].retries.retryOn: not supported: condition \"retriable-4xx\""),
        "{u:?}"
    );
}

#[test]
fn circuit_breaking_and_outlier_detection_become_a_destination_policy() {
    let c = convert_all(
        &[fixture!("destination-rule-details-circuit-breaker.yaml")],
        &bookinfo(),
    )
    .unwrap();
    let p = &c.resources.policies[0];
    assert_eq!(p.service, "details");
    let cb = p.circuit_breaker.clone().unwrap();
    assert_eq!(cb.max_connections, Some(1));
    assert_eq!(
        cb.max_requests,
        Some(1),
        "one HTTP/1.1 connection is one request in flight"
    );
    assert_eq!(cb.max_pending_requests, 1);
    let od = p.outlier_detection.clone().unwrap();
    assert_eq!(od.consecutive_5xx, Some(1));
    assert_eq!(od.base_ejection_time_ms, 180_000);
    assert_eq!(od.max_ejection_percent, Some(100));
    let u = c.unsupported().join("\n");
    assert!(
        u.contains(
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: not supported"
        ),
        "{u}"
    );
    assert!(
        u.contains("spec.trafficPolicy.outlierDetection.interval: not supported"),
        "{u}"
    );
    p.validate().unwrap();
}

#[test]
fn load_balancer_and_tls_modes() {
    let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: { httpHeaderName: x-user }
    tls: { mode: ISTIO_MUTUAL }
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: ratings }
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    tls: { mode: DISABLE }
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    let reviews = c
        .resources
        .policies
        .iter()
        .find(|p| p.service == "reviews")
        .unwrap();
    assert_eq!(reviews.load_balancer(), LoadBalancer::ConsistentHash);
    assert_eq!(reviews.hash_header, "x-user");
    let ratings = c
        .resources
        .policies
        .iter()
        .find(|p| p.service == "ratings")
        .unwrap();
    assert_eq!(ratings.load_balancer(), LoadBalancer::RoundRobin);
    let u = c.unsupported().join("\n");
    assert!(u.contains("DestinationRule default/ratings: spec.trafficPolicy.tls.mode: not supported: \"DISABLE\""), "{u}");
    assert!(!u.contains("ISTIO_MUTUAL"), "{u}");
}

#[test]
fn h2_upgrade_policy_maps_to_the_peer_protocol() {
    let rule = |name: &str, http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{ name: {name} }}\nspec:\n  host: {name}\n  \
             trafficPolicy: {{ connectionPool: {{ http: {http} }} }}\n"
        )
    };
    let texts = [
        rule("reviews", "{ h2UpgradePolicy: UPGRADE }"),
        rule("ratings", "{ h2UpgradePolicy: DO_NOT_UPGRADE }"),
        // Istio's useClientProtocol wins over UPGRADE.
        rule(
            "details",
            "{ h2UpgradePolicy: UPGRADE, useClientProtocol: true }",
        ),
        rule("productpage", "{ h2UpgradePolicy: SOMETIMES }"),
    ];
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let c = convert_all(&texts, &bookinfo()).unwrap();
    let protocol = |service: &str| {
        c.resources
            .policies
            .iter()
            .find(|p| p.service == service)
            .unwrap_or_else(|| panic!("no policy for {service}"))
            .peer_protocol()
    };
    assert_eq!(protocol("reviews"), PeerProtocol::Http2);
    assert_eq!(protocol("ratings"), PeerProtocol::Preserve);
    assert_eq!(protocol("details"), PeerProtocol::Preserve);
    assert_eq!(protocol("productpage"), PeerProtocol::Http2);
    let u = c.unsupported().join("\n");
    assert!(
        u.contains("productpage: spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: not supported: \"SOMETIMES\""),
        "{u}"
    );
}

#[test]
fn unsupported_fields_are_listed_by_path() {
    let c = convert_all(&[fixture!("unsupported.yaml")], &bookinfo()).unwrap();
    let u = c.unsupported().join("\n");
    for want in [
        "VirtualService default/ratings: spec.http[0].match[0].sourceLabels: not supported",
        "VirtualService default/ratings: spec.http[0].rewrite.uriRegexRewrite: not supported",
        "VirtualService default/ratings: spec.http[0].corsPolicy: not supported",
        "DestinationRule default/ratings: spec.trafficPolicy.portLevelSettings: not supported",
    ] {
        assert!(u.contains(want), "{want} not in\n{u}");
    }
    // The alternative with the query match is left out, the other kept: an
    // Istio prefix is a string prefix, so it becomes a regex.
    let m = &route(&c, "ratings").rules[0].matches;
    assert_eq!(m.len(), 1);
    let path = m[0].path.clone().unwrap();
    assert_eq!(
        (path.kind(), path.value.as_str()),
        (MatchKind::Regex, "/v1.*")
    );
}

#[test]
fn bad_input_is_refused_by_name() {
    let ctx = bookinfo();
    let err = convert_text(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: w}\n",
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("document 1: kind \"WorkloadGroup\""), "{err}");
    let err = convert_text(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: w}\n",
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("apiVersion \"networking.istio.io/v2\""),
        "{err}"
    );
    let malformed = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [ { destination: { host: reviews }, weight: heavy } ]\n";
    let err = convert_text(malformed, &ctx).unwrap_err().to_string();
    assert!(
        err.contains("VirtualService default/bad: spec.http[0].route[0].weight"),
        "{err}"
    );
    let typo = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: typo}\nspec:\n  hosts: [reviews]\n  htpp: []\n";
    let err = convert_text(typo, &ctx).unwrap_err().to_string();
    assert!(
        err.contains("VirtualService default/typo: spec.htpp: unknown field"),
        "{err}"
    );
    let err = convert_all(&[fixture!("virtual-service-reviews-test-v2.yaml")], &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset \"v2\" of host \"reviews\" is not declared"),
        "{err}"
    );
}

#[test]
fn a_sane_route_and_a_virtual_service_for_one_host_conflict() {
    let mut ctx = bookinfo();
    ctx.routes.push(sane_xds_proto::Route {
        name: "reviews-canary".into(),
        namespace: "default".into(),
        service: "reviews".into(),
        rules: vec![Default::default()],
    });
    let err = convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-reviews-80-20.yaml"),
        ],
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("conflict for service \"reviews.default\": Sane route default/reviews-canary and VirtualService default/reviews"),
        "{err}"
    );
    // Re-applying the same VirtualService (its own route exists) is fine.
    let mut ctx = bookinfo();
    ctx.routes.push(sane_xds_proto::Route {
        name: "reviews.vs".into(),
        service: "reviews".into(),
        ..Default::default()
    });
    convert_all(
        &[
            fixture!("destination-rule-all.yaml"),
            fixture!("virtual-service-reviews-80-20.yaml"),
        ],
        &ctx,
    )
    .unwrap();
}

#[test]
fn mixed_documents_declare_what_istio_objects_refer_to() {
    let text = r#"
services:
- name: shop
  ports: [ { name: http, port: 80 } ]
endpoints:
- { service: shop, address: 10.0.1.1, port: 8080, labels: { version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: shop }
spec:
  host: shop
  subsets: [ { name: v1, labels: { version: v1 } } ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: shop }
spec:
  hosts: [shop.default.svc.cluster.local]
  http: [ { route: [ { destination: { host: shop, subset: v1 } } ] } ]
"#;
    let c = convert_text(text, &Context::default()).unwrap();
    assert_eq!(
        route(&c, "shop").rules[0].destinations[0].subset["version"],
        "v1"
    );
}

#[test]
fn authorization_policies_follow_istio() {
    let c = convert_all(&[fixture!("authorization-allow-nothing.yaml")], &bookinfo()).unwrap();
    let names: Vec<_> = c
        .resources
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names.len(),
        4,
        "one per service of the namespace: {names:?}"
    );
    assert!(c
        .resources
        .authorization_policies
        .iter()
        .all(|p| p.rules.is_empty() && p.action() == AuthzAction::Allow));
    let c = convert_all(
        &[fixture!("authorization-reviews-viewer.yaml")],
        &bookinfo(),
    )
    .unwrap();
    let p = &c.resources.authorization_policies[0];
    assert_eq!(
        (p.name.as_str(), p.service.as_str()),
        ("reviews-viewer", "reviews")
    );
    assert_eq!(
        p.rules[0].from[0].principals,
        ["cluster.local/ns/default/sa/bookinfo-productpage"]
    );
    assert_eq!(p.rules[0].to[0].methods, ["GET"]);
    p.validate().unwrap();
}

#[test]
fn authorization_conditions_sane_cannot_test_fail_closed() {
    let text = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: { name: allow-ip }
spec:
  selector: { matchLabels: { app: ratings } }
  rules:
  - from: [ { source: { ipBlocks: ["10.0.0.0/8"] } } ]
  - to: [ { operation: { ports: ["9080"], paths: ["/health*"] } } ]
    when:
    - key: request.headers[x-token]
      values: ["secret"]
    - key: source.namespace
      values: ["default"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-ip }
spec:
  selector: { matchLabels: { app: ratings } }
  action: DENY
  rules:
  - from: [ { source: { ipBlocks: ["10.0.0.0/8"], namespaces: ["legacy"] } } ]
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    let allow = c
        .resources
        .authorization_policies
        .iter()
        .find(|p| p.name == "allow-ip")
        .unwrap();
    assert_eq!(
        allow.rules.len(),
        1,
        "the ALLOW rule with ipBlocks is left out"
    );
    assert_eq!(allow.rules[0].to[0].ports, [9080]);
    assert_eq!(allow.rules[0].when[0].header, "x-token");
    assert_eq!(
        allow.rules[0].from[0].namespaces,
        ["default"],
        "source.namespace folded into from"
    );
    let deny = c
        .resources
        .authorization_policies
        .iter()
        .find(|p| p.name == "deny-ip")
        .unwrap();
    assert_eq!(
        deny.rules[0].from[0].namespaces,
        ["legacy"],
        "the DENY rule keeps its other conditions"
    );
    let u = c.unsupported().join("\n");
    assert!(u.contains("AuthorizationPolicy default/allow-ip: spec.rules[0].from[0].source.ipBlocks: not supported: Sane does not match caller IPs; the rule is left out"), "{u}");
    assert!(u.contains("AuthorizationPolicy default/deny-ip: spec.rules[0].from[0].source.ipBlocks: not supported: Sane does not match caller IPs; the condition is left out"), "{u}");
}

#[test]
fn peer_authentication_workload_beats_namespace_beats_mesh() {
    let mesh = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    let c = convert_all(&[mesh, fixture!("peer-authentication.yaml")], &bookinfo()).unwrap();
    let labels = |app: &str| [("app".to_string(), app.to_string())].into();
    let ratings = security::tls_for(
        &c.resources.peer_authentications,
        "default",
        &labels("ratings"),
    );
    assert_eq!(ratings.mode, TlsMode::Strict);
    assert_eq!(ratings.ports[&9080], TlsMode::Disable);
    let reviews = security::tls_for(
        &c.resources.peer_authentications,
        "default",
        &labels("reviews"),
    );
    assert_eq!(
        (reviews.mode, reviews.ports.len()),
        (TlsMode::Permissive, 0)
    );
    let other = security::tls_for(&c.resources.peer_authentications, "shop", &labels("web"));
    assert_eq!(other.mode, TlsMode::Strict, "the mesh-wide one");
    let none = security::tls_for(&[], "shop", &labels("web"));
    assert_eq!(none.mode, TlsMode::Default, "Sane's own default (strict)");
    let mut listener = sane_xds_proto::Listener {
        workload_ports: vec![sane_xds_proto::WorkloadPort {
            port: 9080,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(ratings.apply(&mut listener).is_empty());
    assert_eq!(listener.tls_mode(), TlsMode::Strict);
    assert_eq!(listener.workload_ports[0].tls_mode(), TlsMode::Disable);
    // Delivered by the control plane now: produced, not reported.
    let produced = |key: &str| {
        c.objects
            .iter()
            .find(|o| o.object.to_string() == format!("PeerAuthentication {key}"))
            .map(|o| o.produced.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        produced("default/ratings"),
        ["peer_authentication default/ratings"]
    );
    assert!(
        !c.unsupported()
            .iter()
            .any(|u| u.contains("PeerAuthentication")),
        "{:?}",
        c.unsupported()
    );
    let ratings = c
        .resources
        .peer_authentications
        .iter()
        .find(|p| p.name == "ratings")
        .unwrap();
    ratings.validate().unwrap();
    assert_eq!(ratings.selector, labels("ratings"));
    assert_eq!(ratings.port_modes[&9080], i32::from(TlsMode::Disable));
}

#[test]
fn port_level_mtls_without_a_selector_is_reported_as_istio_does() {
    let ns = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {\"8080\": {mode: DISABLE}}}\n";
    let c = convert_all(&[ns], &bookinfo()).unwrap();
    let p = &c.resources.peer_authentications[0];
    assert_eq!((p.tls_mode(), p.port_modes.len()), (TlsMode::Strict, 0));
    let u = c.unsupported().join("\n");
    assert!(
        u.contains("PeerAuthentication shop/default: spec.portLevelMtls: not supported: port-level settings apply only with a workload selector"),
        "{u}"
    );
}

#[test]
fn gamma_http_route_directs_its_parent_service() {
    let mut ctx = bookinfo();
    ctx.services.push(service("reviews-v1"));
    ctx.services.push(service("reviews-v2"));
    let c = convert_all(&[fixture!("httproute-reviews-gamma.yaml")], &ctx).unwrap();
    let r = route(&c, "reviews");
    let rule = &r.rules[0];
    assert!(rule.matches.is_empty());
    let d = &rule.destinations;
    assert_eq!(
        (
            d[0].service.as_str(),
            d[0].weight,
            d[1].service.as_str(),
            d[1].weight
        ),
        ("reviews-v1", 90, "reviews-v2", 10)
    );
    assert_eq!(
        rule.request_headers.as_ref().unwrap().set["x-route"],
        "gamma"
    );
    assert!(
        rule.retry.is_none(),
        "the Gateway API retries nothing unless asked"
    );
}

#[test]
fn http_and_grpc_routes_match_as_the_gateway_api_says() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: ratings }
spec:
  parentRefs: [ { kind: Service, group: "", name: ratings } ]
  rules:
  - matches:
    - path: { type: PathPrefix, value: /api }
      headers: [ { name: X-Env, value: canary } ]
      method: GET
    - queryParams: [ { name: debug, value: "1" } ]
    filters:
    - type: URLRewrite
      urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: / } }
    backendRefs: [ { name: ratings, port: 80 } ]
  - backendRefs: [ { name: ratings, port: 80 } ]
    timeouts: { request: 2s }
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: details }
spec:
  parentRefs: [ { kind: Service, group: "", name: details } ]
  rules:
  - matches: [ { method: { service: shop.Details, method: Get } } ]
    backendRefs: [ { name: details, port: 80 } ]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: ingress }
spec:
  parentRefs: [ { name: public-gateway } ]
  rules: [ { backendRefs: [ { name: productpage, port: 80 } ] } ]
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    let r = route(&c, "ratings");
    assert_eq!(
        r.rules.len(),
        1,
        "the rule rewriting a prefix its matches do not share is left out: {r:#?}"
    );
    assert_eq!(r.rules[0].timeout_ms, 2_000);
    let g = route(&c, "details");
    assert_eq!(
        g.rules[0].matches[0].path.as_ref().unwrap().value,
        "/shop.Details/Get"
    );
    let u = c.unsupported().join("\n");
    for want in [
        "HTTPRoute default/ratings: spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: not supported",
        "HTTPRoute default/ingress: spec.parentRefs[0]: not supported: Gateway default/public-gateway is not among the objects",
    ] {
        assert!(u.contains(want), "{want} not in\n{u}");
    }
    assert_eq!(route(&c, "ingress-gw").name, "ingress.httproute-gw");
    assert!(c.gateways.is_empty());
}

#[test]
fn an_http_route_on_a_gateway_becomes_gateway_hosts_and_a_route() {
    let c = convert_all(&[fixture!("gateway-bookinfo.yaml")], &bookinfo()).unwrap();
    let u = c.unsupported().join("\n");
    assert!(
        u.contains(
            "Gateway default/bookinfo-gateway: spec.listeners[0].allowedRoutes: not supported"
        ),
        "{u}"
    );
    let g = &c.gateways[0];
    assert_eq!(g.object.to_string(), "Gateway default/bookinfo-gateway");
    assert_eq!(g.gateway.listeners[0].address, "0.0.0.0:80");
    assert!(!g.gateway.listeners[0].tls);
    let host = &g.gateway.hosts[0];
    assert_eq!(host.hostname, "bookinfo.example.com");
    assert_eq!(host.routes[0].service, "reviews-ingress-gw.default");
    assert_eq!(host.routes[0].port, 80);
    assert_eq!(
        host.routes[0].matches[0].path.as_ref().unwrap().value,
        "/reviews"
    );
    let r = route(&c, "reviews-ingress-gw");
    let weights: Vec<(&str, u32)> = r.rules[0]
        .destinations
        .iter()
        .map(|d| (d.service.as_str(), d.weight))
        .collect();
    assert_eq!(weights, [("reviews-v1", 90), ("reviews-v2", 10)]);
    assert_eq!(
        r.rules[0].request_headers.as_ref().unwrap().add["x-route"],
        "ingress"
    );
    assert!(c
        .resources
        .services
        .iter()
        .any(|s| s.name == "reviews-ingress-gw"));
    let gw = c
        .objects
        .iter()
        .find(|o| o.object.kind == "Gateway")
        .unwrap();
    assert_eq!(gw.produced, ["gateway default/bookinfo-gateway"]);
    g.gateway.validate().unwrap();
}

#[test]
fn redirects_rewrites_and_query_matches_are_converted() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - match:
    - uri: { prefix: /v1/ratings }
      queryParams: { debug: { exact: "1" } }
    rewrite: { uri: /ratings, authority: ratings.internal }
    route: [ { destination: { host: ratings } } ]
  - match: [ { uri: { exact: /old } } ]
    redirect: { uri: /new, authority: reviews.example, redirectCode: 302 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: details }
spec:
  parentRefs: [ { kind: Service, group: "", name: details } ]
  rules:
  - matches: [ { path: { type: PathPrefix, value: /api } } ]
    filters:
    - type: URLRewrite
      urlRewrite: { hostname: details.internal, path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } }
    backendRefs: [ { name: details, port: 80 } ]
  - matches: [ { queryParams: [ { type: RegularExpression, name: v, value: "[0-9]+" } ] } ]
    filters:
    - type: RequestRedirect
      requestRedirect: { scheme: https, statusCode: 301 }
"#;
    let c = convert_all(&[text], &bookinfo()).unwrap();
    assert_eq!(c.unsupported(), Vec::<String>::new());
    let r = route(&c, "ratings");
    let q = &r.rules[0].matches[0].query_params[0];
    assert_eq!(
        (q.name.as_str(), q.kind(), q.value.as_str()),
        ("debug", MatchKind::Exact, "1")
    );
    let rw = r.rules[0].rewrite.clone().unwrap();
    assert_eq!(
        (
            rw.replace_prefix.as_str(),
            rw.with_prefix.as_str(),
            rw.authority.as_str()
        ),
        ("/v1/ratings", "/ratings", "ratings.internal")
    );
    let rd = r.rules[1].redirect.clone().unwrap();
    assert_eq!(
        (rd.path.as_str(), rd.host.as_str(), rd.status_code),
        ("/new", "reviews.example", 302)
    );
    let d = route(&c, "details");
    let rw = d.rules[0].rewrite.clone().unwrap();
    assert_eq!(
        (
            rw.replace_prefix.as_str(),
            rw.with_prefix.as_str(),
            rw.authority.as_str()
        ),
        ("/api", "/v2", "details.internal")
    );
    assert_eq!(
        d.rules[1].matches[0].query_params[0].kind(),
        MatchKind::Regex
    );
    let rd = d.rules[1].redirect.clone().unwrap();
    assert_eq!((rd.scheme.as_str(), rd.status_code), ("https", 301));
    for r in &c.resources.routes {
        r.validate().unwrap();
    }
}

#[test]
fn service_entries_declare_services_routes_can_use() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: external-api }
spec:
  hosts: [api.example.com]
  ports: [ { number: 80, name: http, protocol: HTTP }, { number: 443, name: https, protocol: HTTPS } ]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [ { address: 192.0.2.10, labels: { version: v1 } }, { address: api-2.example.com } ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: external-api }
spec:
  hosts: [api.example.com]
  http: [ { route: [ { destination: { host: api.example.com } } ], timeout: 3s } ]
"#;
    let c = convert_all(&[text], &Context::default()).unwrap();
    let s = &c.resources.services[0];
    assert_eq!(s.name, "external-api");
    assert_eq!(s.hosts, ["api.example.com"]);
    assert_eq!(s.ports[1].protocol(), Protocol::Tcp);
    assert_eq!(c.resources.endpoints.len(), 1);
    assert_eq!(route(&c, "external-api").rules[0].timeout_ms, 3_000);
    let u = c.unsupported().join("\n");
    assert!(
        u.contains("spec.endpoints[1].address: not supported"),
        "{u}"
    );
    c.resources.validate().unwrap();
}

#[path = "tests_ingress.rs"]
mod ingress;
