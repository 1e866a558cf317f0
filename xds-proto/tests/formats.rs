//! One definition, three formats: YAML, JSON and protobuf agree, and bad input
//! is rejected with the field path.

use prost::Message;
use sane_xds_proto::{Bootstrap, MeshResources, Protocol};

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
  policies:
    - { name: echo, service: echo, load_balancer: round_robin, connect_timeout: 250ms }
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
