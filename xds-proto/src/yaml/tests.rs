use super::*;
use crate::Bootstrap;
use std::time::Instant;

fn limits() -> YamlLimits {
    YamlLimits::default()
}

/// ~0.8 MB: one 400 KB scalar anchored, then 20 000 aliases of it in a list
/// (8 GB once deserialized).
pub(crate) fn scalar_alias_bomb() -> String {
    let mut text = format!(
        "node: {{ id: &a {} }}\ncontrol_plane:\n  address: http://127.0.0.1:1\n  services: [",
        "a".repeat(400_000)
    );
    for i in 0..20_000 {
        text.push_str(if i == 0 { "*a" } else { ",*a" });
    }
    text.push_str("]\n");
    text
}

/// The billion laughs: nine levels of ten aliases of the level below.
fn nested_alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text
}

#[test]
fn an_alias_bomb_is_rejected_before_it_is_expanded() {
    for (name, text) in [
        ("scalar", scalar_alias_bomb()),
        ("nested", nested_alias_bomb()),
    ] {
        let start = Instant::now();
        let err = from_str::<Bootstrap>(&text, &limits()).unwrap_err();
        println!(
            "{name} alias bomb ({} bytes): {:?}: {err}",
            text.len(),
            start.elapsed()
        );
        assert!(matches!(err, YamlError::AliasExpansion { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("aliases repeat more than the maximum of 16777216 bytes"),
            "{err}"
        );
    }
}

#[test]
fn deep_nesting_is_rejected_at_the_limit() {
    let flow = format!(
        "node: {{ id: {}x{} }}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let block = format!("resources:\n  listeners:\n{}x\n", "  - ".repeat(50_000));
    let mapping: String = (0..100)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    for (name, text) in [("flow", flow), ("block", block), ("mapping", mapping)] {
        let start = Instant::now();
        let err = from_str::<Bootstrap>(&text, &limits()).unwrap_err();
        println!(
            "{name} nesting ({} bytes): {:?}: {err}",
            text.len(),
            start.elapsed()
        );
        assert!(
            err.to_string()
                .contains("nesting is deeper than the maximum of 64 levels"),
            "{name}: {err}"
        );
    }
}

#[test]
fn an_alias_to_a_deep_node_counts_its_depth() {
    let inner = format!("{}x{}", "[".repeat(40), "]".repeat(40));
    let text = format!("a: &a {inner}\nb: {}*a{}\n", "[".repeat(30), "]".repeat(30));
    let err = check(&text, &limits()).unwrap_err().to_string();
    assert!(err.contains("line 2 column"), "{err}");
    assert!(err.contains("deeper than the maximum of 64"), "{err}");
}

#[test]
fn a_document_above_the_size_limit_is_rejected_unread() {
    let text = "#".repeat(1024);
    let err = check(&text, &YamlLimits::with_max_bytes(1000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1024 bytes is above the maximum of 1000 bytes"
    );
}

#[test]
fn ordinary_anchors_and_aliases_still_load() {
    let text = r#"
resources:
  services:
    - { name: a, ports: &ports [ { name: http, port: 80 } ] }
    - { name: b, ports: *ports }
  endpoints:
    - &ep { service: a, address: 10.0.0.1, port: 8080, labels: &labels { v: "1" } }
    - { service: b, address: 10.0.0.2, port: 8080, labels: *labels }
"#;
    let b: Bootstrap = from_str(text, &limits()).unwrap();
    assert_eq!(b.resources.services[1].ports[0].port, 80);
    assert_eq!(b.resources.endpoints[1].labels["v"], "1");
    // A redefined anchor: aliases after it see the new node.
    let v: serde_yaml::Value = from_str("a: &x 1\nb: &x [2]\nc: *x\n", &limits()).unwrap();
    assert_eq!(v["c"][0], 2);
}

#[test]
fn an_unknown_or_cyclic_alias_is_named() {
    let err = check("a: *nope\n", &limits()).unwrap_err().to_string();
    assert_eq!(
        err,
        "line 1 column 4: alias *nope does not refer to an anchor defined before it"
    );
    let err = check("a: &loop [1, *loop]\n", &limits())
        .unwrap_err()
        .to_string();
    assert!(err.contains("inside the node it refers to"), "{err}");
}

#[test]
fn syntax_errors_and_unknown_fields_come_from_serde_yaml() {
    let err = from_str::<Bootstrap>("node: [1, 2\n", &limits()).unwrap_err();
    assert!(matches!(err, YamlError::Parse(_)), "{err}");
    let err = from_str::<Bootstrap>("nodes: {}\n", &limits())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `nodes`"), "{err}");
}
