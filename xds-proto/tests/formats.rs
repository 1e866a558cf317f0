//! One definition, three formats: YAML, JSON and protobuf agree, and bad input
//! is rejected with the field path.

use prost::Message;
use sane_xds_proto::{Bootstrap, LoadBalancer, MeshResources, Protocol};

const SAMPLE: &str = r#"
node: { id: client-1, workload: client }
admin: { address: 127.0.0.1:0 }
drain_timeout: 5s
resources:
  listeners:
    - { name: outbound, address: "127.0.0.1:15001" }
    - { name: db, address: "127.0.0.1:16000", protocol: tcp, service: db, service_port: 5432 }
    - name: inbound
      direction: inbound
      address: "127.0.0.1:15006"
      workload_ports: [ { port: 8080, protocol: http }, { port: 9090, protocol: grpc } ]
  services:
    - name: echo
      ports: [ { name: http, port: 80, target_port: 8080 }, { name: grpc, port: 9090, protocol: grpc } ]
    - { name: db, ports: [ { port: 5432, protocol: tcp } ] }
  endpoints:
    - { service: echo, address: 127.0.0.1, port: 8080, proxy_port: 15006, labels: { version: v1 } }
  routes:
    - name: echo-split
      service: echo
      rules:
        - matches: [ { path: { kind: prefix, value: /api }, method: GET } ]
          destinations: [ { service: echo, weight: 90, subset: { version: v1 } }, { service: echo, weight: 10 } ]
          timeout: 1500ms
        - matches: [ { path: { kind: prefix, value: /orders } } ]
          timeout: 3s
          retry:
            attempts: 3
            per_try_timeout: 500ms
            retry_on: [connect-failure, refused-stream, reset, gateway-error, unavailable]
            status_codes: [409]
            base_interval: 10ms
            max_interval: 200ms
            retry_non_idempotent: true
            max_body_bytes: 131072
          fault:
            delay: { fixed_delay: 2s, percent: 5 }
            abort: { grpc_status: unavailable, percent: 0.5 }
          mirror: { service: echo, port: 80, percent: 10 }
          request_headers: { set: { x-env: prod }, add: { x-tag: a }, remove: [ x-debug ] }
          response_headers: { remove: [ server ] }
  policies:
    - { name: echo, service: echo, load_balancer: round_robin, connect_timeout: 250ms }
    - name: db
      service: db
      load_balancer: consistent_hash
      hash_header: x-user
      circuit_breaker: { max_connections: 100, max_pending_requests: 10, max_requests: 200, max_retries: 3 }
      outlier_detection: { consecutive_5xx: 3, consecutive_gateway_errors: 2, base_ejection_time: 10s, max_ejection_time: 2m, max_ejection_percent: 50 }
      retry_budget: { percent: 25, min_retries_per_second: 5, ttl: 5s }
"#;

#[test]
fn yaml_json_and_protobuf_agree() {
    let b: Bootstrap = serde_yaml::from_str(SAMPLE).unwrap();
    b.validate().unwrap();
    assert_eq!(b.drain_timeout, 5000);
    let r = &b.resources;
    assert_eq!(r.services[1].ports[0].protocol(), Protocol::Tcp);
    assert_eq!(r.routes[0].rules[0].timeout_ms, 1500);
    assert_eq!(r.policies[0].connect_timeout_ms, 250);
    let rule = &r.routes[0].rules[1];
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts_or_default(), 3);
    assert_eq!(retry.per_try_timeout_ms, 500);
    assert_eq!(
        rule.fault
            .as_ref()
            .unwrap()
            .abort
            .as_ref()
            .unwrap()
            .percent_or_default(),
        0.5
    );
    assert_eq!(rule.mirror.as_ref().unwrap().percent_or_default(), 10.0);
    let db = &r.policies[1];
    assert_eq!(db.load_balancer(), LoadBalancer::ConsistentHash);
    assert_eq!(db.circuit_breaker.as_ref().unwrap().max_requests, Some(200));
    assert_eq!(
        db.outlier_detection.as_ref().unwrap().base_ejection_time_ms,
        10_000
    );
    assert_eq!(db.retry_budget.as_ref().unwrap().ttl_ms(), 5_000);

    let json = serde_json::to_string(r).unwrap();
    assert!(json.contains(r#""protocol":"grpc""#), "{json}");
    assert!(json.contains(r#""timeout":"1s 500ms""#), "{json}");
    let back: MeshResources = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, r);

    let wire = r.encode_to_vec();
    let decoded = MeshResources::decode(wire.as_slice()).unwrap();
    assert_eq!(&decoded, r);
}

#[test]
fn unknown_field_is_named() {
    let bad = SAMPLE.replace("drain_timeout: 5s", "drain_timeout: 5s\nfrobnicate: 1");
    let err = serde_yaml::from_str::<Bootstrap>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `frobnicate`"), "{err}");
}

#[test]
fn invalid_values_are_named_with_their_path() {
    let bad = SAMPLE
        .replace("weight: 10 }", "weight: 0 }")
        .replace("port: 5432, protocol: tcp", "port: 70000, protocol: tcp")
        .replace("address: 127.0.0.1:0", "address: 0.0.0.0:15000");
    let b: Bootstrap = serde_yaml::from_str(&bad).unwrap();
    let err = b.validate().unwrap_err().to_string();
    assert!(
        err.contains("resources.routes[0].rules[0].destinations[1].weight: 0 must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("resources.services[1].ports[0].port: 70000 is not a valid port"),
        "{err}"
    );
    assert!(
        err.contains("admin.address: 0.0.0.0:15000 is not a loopback address"),
        "{err}"
    );
}

#[test]
fn dangling_references_are_rejected() {
    let bad = SAMPLE.replace("service: echo, address", "service: nope, address");
    let b: Bootstrap = serde_yaml::from_str(&bad).unwrap();
    let err = b.validate().unwrap_err().to_string();
    assert!(
        err.contains("resources.endpoints[0].service: \"nope.default\" is not a declared service"),
        "{err}"
    );
}

#[test]
fn bad_enum_name_fails_to_parse() {
    let bad = SAMPLE.replace("protocol: grpc }", "protocol: smtp }");
    let err = serde_yaml::from_str::<Bootstrap>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `smtp`"), "{err}");
}

#[test]
fn invalid_policy_values_are_named_with_their_path() {
    let bad = SAMPLE
        .replace("attempts: 3", "attempts: 50")
        .replace("percent: 5 }", "percent: 120 }")
        .replace("per_try_timeout: 500ms", "per_try_timeout: 5h")
        .replace("max_ejection_percent: 50", "max_ejection_percent: 101")
        .replace(
            "service: echo, port: 80, percent",
            "service: nope, port: 80, percent",
        );
    let b: Bootstrap = serde_yaml::from_str(&bad).unwrap();
    let err = b.validate().unwrap_err().to_string();
    for want in [
        "resources.routes[0].rules[1].retry.attempts: 50 is above the maximum of 10",
        "resources.routes[0].rules[1].retry.per_try_timeout: 5h is above the maximum of 1h",
        "resources.routes[0].rules[1].fault.delay.percent: 120 is not a percentage (0-100)",
        "resources.routes[0].rules[1].mirror.service: \"nope\" is not a declared service",
        "resources.policies[1].outlier_detection.max_ejection_percent: 101 is not a percentage",
    ] {
        assert!(err.contains(want), "{want} not in {err}");
    }
    let negative = SAMPLE.replace("base_interval: 10ms", "base_interval: -10ms");
    let err = serde_yaml::from_str::<Bootstrap>(&negative)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid duration \"-10ms\""), "{err}");
}

#[test]
fn transparent_listeners_and_service_addresses() {
    let text = r#"
resources:
  listeners:
    - { name: outbound, address: "127.0.0.1:15001", transparent: true }
    - { name: inbound, direction: inbound, address: "0.0.0.0:15006", transparent: true }
  services:
    - { name: echo, addresses: [ 10.96.0.10, "fd00::10" ], ports: [ { port: 80 } ] }
"#;
    let b: Bootstrap = serde_yaml::from_str(text).unwrap();
    b.validate().unwrap();
    let r = &b.resources;
    assert!(r.listeners[0].transparent && r.listeners[1].transparent);
    assert_eq!(r.services[0].ips().count(), 2);
    let decoded = MeshResources::decode(r.encode_to_vec().as_slice()).unwrap();
    assert_eq!(&decoded, r);
    let json = serde_json::to_string(r).unwrap();
    assert!(
        json.contains(r#""addresses":["10.96.0.10","fd00::10"]"#),
        "{json}"
    );

    // Defaults: not transparent, no addresses.
    let plain: Bootstrap = serde_yaml::from_str(SAMPLE).unwrap();
    assert!(!plain.resources.listeners[0].transparent);
    assert!(plain.resources.services[0].addresses.is_empty());

    let mut res = r.clone();
    let mut db: sane_xds_proto::Service = serde_yaml::from_str(
        "{ name: db, addresses: [ 10.96.0.10, nope, 127.0.0.1 ], ports: [ { port: 5432 } ] }",
    )
    .unwrap();
    res.services.push(db.clone());
    db.name = "twice".into();
    db.addresses = vec!["10.96.0.11".into(), "10.96.0.11".into()];
    res.services.push(db);
    res.listeners.push(
        serde_yaml::from_str(
            "{ name: tcp, address: 127.0.0.1:0, protocol: tcp, service: db, service_port: 5432, \
             transparent: true }",
        )
        .unwrap(),
    );
    let err = res.validate().unwrap_err().to_string();
    for expected in [
        "services[1].addresses[0]: 10.96.0.10 is already the address of \"echo.default\"",
        "services[1].addresses[1]: \"nope\" is not an IP address",
        "services[1].addresses[2]: 127.0.0.1 cannot be a service address",
        "services[2].addresses[1]: 10.96.0.11 is declared twice",
        "listeners[2].transparent: applies to outbound http listeners and inbound listeners",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in: {err}");
    }
}

#[test]
fn federated_trust_domains_default_to_none_and_are_checked() {
    let b: Bootstrap = serde_yaml::from_str(SAMPLE).unwrap();
    assert!(b.identity.is_none());
    let with = |list: &str| {
        let yaml = format!(
            "{SAMPLE}identity: {{ ca_address: \"http://127.0.0.1:15010\", federated_trust_domains: {list} }}\n"
        );
        serde_yaml::from_str::<Bootstrap>(&yaml).unwrap()
    };
    let ok = with("[partner.example]");
    ok.validate().unwrap();
    assert_eq!(
        ok.identity.unwrap().federated_trust_domains,
        vec!["partner.example".to_string()]
    );
    let empty: Bootstrap = serde_yaml::from_str(&format!(
        "{SAMPLE}identity: {{ ca_address: \"http://127.0.0.1:15010\" }}\n"
    ))
    .unwrap();
    assert!(empty.identity.unwrap().federated_trust_domains.is_empty());

    let err = with("[Evil.Local, cluster.local, a.b, a.b, \"\"]")
        .validate()
        .unwrap_err()
        .to_string();
    for expected in [
        "identity.federated_trust_domains[0]: \"Evil.Local\" contains 'E'",
        "identity.federated_trust_domains[1]: \"cluster.local\" is the proxy's own trust domain",
        "identity.federated_trust_domains[3]: \"a.b\" is listed twice",
        "identity.federated_trust_domains[4]: \"\" is 0 bytes long",
    ] {
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
}

#[test]
fn a_workload_port_that_is_the_proxys_own_port_is_named() {
    let bad = SAMPLE
        .replace("address: 127.0.0.1:0", "address: 127.0.0.1:15000")
        .replace(
            "{ port: 9090, protocol: grpc }",
            "{ port: 15000 }, { port: 15001 }",
        );
    let b: Bootstrap = serde_yaml::from_str(&bad).unwrap();
    let err = b.validate().unwrap_err().to_string();
    assert!(
        err.contains(
            "resources.listeners[2].workload_ports[1].port: 15000 is the proxy's own admin port"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "resources.listeners[2].workload_ports[2].port: 15001 is the proxy's own listener \"outbound\" port"
        ),
        "{err}"
    );
    // The sample itself (admin on port 0, app ports apart) is fine.
    serde_yaml::from_str::<Bootstrap>(SAMPLE)
        .unwrap()
        .validate()
        .unwrap();
}
