//! `sanectl` over a running mesh: `explain request` against where the
//! proxy really sends requests (issue 24, must-show 2), and `get`, `diff`,
//! `describe`, `delete` for every kind, with errors that name the field.
//!
//! How agreement is checked: explain compiles the config the control plane
//! last sent the proxy with the proxy crate's own compiler and picks the
//! rule with the proxy's own `PortRoute::matching_rule`. For a rule with
//! one destination (the header match) explain names exactly one
//! destination, and the instance that answered must be one of its
//! endpoints. For an injected abort at 100 % explain names the status, and
//! the proxy must answer it with flag `FI`. For the weighted split the
//! proxy draws from an unseeded RNG per request, so no tool can say which
//! side one request takes: explain reports the destinations with their
//! weights, the instance that answered must belong to one of them, and the
//! observed shares are printed beside the weights (not asserted: a
//! proportion of ~100 draws is a statistic, not a contract).

use sane_e2e::harness::http::{get, http1_client_via, send};
use sane_e2e::harness::{
    bins, xds_bootstrap, xds_node_id, ApiClient, ControlPlane, EchoApp, Sanectl, Sidecar, OUTBOUND,
};
use sane_xds_proto::Listener;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// `echo` with instances v1 and v2 (no server sidecars: the client's
/// sidecar balances straight over the apps), and a route with a header
/// match, an injected abort and a weighted split.
fn mesh_yaml(v1: &EchoApp, v2: &EchoApp) -> String {
    format!(
        r#"services:
  - {{ name: echo, ports: [ {{ name: http, port: 80 }} ] }}
endpoints:
  - {{ service: echo, address: 127.0.0.1, port: {}, labels: {{ version: v1 }} }}
  - {{ service: echo, address: 127.0.0.1, port: {}, labels: {{ version: v2 }} }}
routes:
  - name: echo-split
    service: echo
    rules:
      - matches: [ {{ headers: [ {{ name: x-user, value: tester }} ] }} ]
        destinations: [ {{ service: echo, subset: {{ version: v2 }} }} ]
      - matches: [ {{ headers: [ {{ name: x-fault, kind: present }} ] }} ]
        fault: {{ abort: {{ http_status: 418 }} }}
        destinations: [ {{ service: echo, subset: {{ version: v1 }} }} ]
      - destinations:
          - {{ service: echo, subset: {{ version: v1 }}, weight: 70 }}
          - {{ service: echo, subset: {{ version: v2 }}, weight: 30 }}
"#,
        v1.addrs.http.port(),
        v2.addrs.http.port()
    )
}

/// One kind of sample request: headers sent.
const SHAPES: &[(&str, &[(&str, &str)])] = &[
    ("header match", &[("x-user", "tester")]),
    ("fault", &[("x-fault", "1")]),
    ("split", &[]),
    ("split, other user", &[("x-user", "someone")]),
];

struct Mesh {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    cli: Sanectl,
    v1: EchoApp,
    v2: EchoApp,
    client: Sidecar,
    manifest: std::path::PathBuf,
}

async fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let (v1, v2) = tokio::join!(
        EchoApp::start_with(&bins().echo, "echo-v1", "echo"),
        EchoApp::start_with(&bins().echo, "echo-v2", "echo"),
    );
    let manifest = dir.path().join("mesh.yaml");
    std::fs::write(&manifest, mesh_yaml(&v1, &v2)).unwrap();
    cli.ok(&["apply", "-f", &manifest.display().to_string()])
        .await;
    let proxies = dir.path().join("proxies");
    std::fs::create_dir_all(&proxies).unwrap();
    let outbound = vec![Listener {
        name: OUTBOUND.into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    }];
    let client = Sidecar::start(
        &bins().proxy,
        &proxies,
        "client",
        xds_bootstrap(&cp, "client", outbound),
    )
    .await;
    ApiClient::new(&cp)
        .wait_in_sync(DEADLINE, &[&xds_node_id("client")])
        .await;
    Mesh {
        _dir: dir,
        cp,
        cli,
        v1,
        v2,
        client,
        manifest,
    }
}

/// `sanectl explain request … -o json` for one shape.
async fn explain(cli: &Sanectl, headers: &[(&str, &str)]) -> Value {
    let from = xds_node_id("client");
    let mut args = vec![
        "explain".to_string(),
        "request".into(),
        "--from".into(),
        from,
        "--host".into(),
        "echo".into(),
        "--path".into(),
        "/sample".into(),
        "-o".into(),
        "json".into(),
    ];
    for (k, v) in headers {
        args.push("--header".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = cli.ok(&args).await;
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_where_200_requests_really_go() {
    let m = mesh().await;
    let instance_by_port: BTreeMap<String, &str> = [
        (format!("127.0.0.1:{}", m.v1.addrs.http.port()), "echo-v1"),
        (format!("127.0.0.1:{}", m.v2.addrs.http.port()), "echo-v2"),
    ]
    .into_iter()
    .collect();

    let mut explained = Vec::new();
    for (name, headers) in SHAPES {
        let e = explain(&m.cli, headers).await;
        println!("{name}: rule {} {}", e["rule"], e["destinations"]);
        explained.push(e);
    }
    // What explain says, checked against the route as written (so a wrong
    // explain cannot pass by agreeing with a wrong proxy on these points).
    assert_eq!(explained[0]["rule"], 0);
    assert_eq!(explained[1]["rule"], 1);
    assert_eq!(explained[1]["fault"]["abort"]["http_status"], 418);
    assert_eq!(explained[2]["rule"], 2);
    assert_eq!(explained[3]["rule"], 2);
    let weights: Vec<u64> = explained[2]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [70, 30], "{}", explained[2]);

    let client = http1_client_via(m.client.listener(OUTBOUND));
    let mut agreed = 0;
    let mut disagreements = Vec::new();
    let mut split_seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..200 {
        let shape = i % SHAPES.len();
        let (name, headers) = SHAPES[shape];
        let e = &explained[shape];
        let mut req = get("http://echo/sample");
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        let reply = send(&client, req)
            .await
            .unwrap_or_else(|err| panic!("request {i} ({name}): {err}"));
        let flags = reply
            .headers
            .get("x-sane-response-flags")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let abort = &e["fault"]["abort"];
        let verdict = if abort.is_object() && abort["percent"].as_f64() == Some(100.0) {
            let want = abort["http_status"].as_u64().unwrap() as u16;
            (reply.status.as_u16() == want && flags.contains("FI"))
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "explain: abort {want}; proxy: {} flags {flags:?}",
                        reply.status
                    )
                })
        } else {
            let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            let served = body["name"].as_str().unwrap_or("?").to_string();
            let allowed: Vec<(&str, &str)> = e["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| {
                    let cluster = d["cluster"].as_str().unwrap();
                    d["endpoints"].as_array().unwrap().iter().map(move |ep| {
                        let addr = ep["address"].as_str().unwrap();
                        (cluster, addr)
                    })
                })
                .map(|(c, addr)| (c, instance_by_port.get(addr).copied().unwrap_or("?")))
                .collect();
            if shape >= 2 {
                *split_seen.entry(served.clone()).or_default() += 1;
            }
            allowed
                .iter()
                .any(|(_, inst)| *inst == served)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "explain allowed {allowed:?}; proxy: {} from {served}",
                        reply.status
                    )
                })
        };
        match verdict {
            Ok(()) => agreed += 1,
            Err(why) => disagreements.push(format!("request {i} ({name}): {why}")),
        }
    }
    println!(
        "split: explain weights v1 70 / v2 30; observed {split_seen:?} of {} requests",
        split_seen.values().sum::<u32>()
    );
    println!("agreement: {agreed}/200");
    assert_eq!(agreed, 200, "{disagreements:#?}");
    drop(m.cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanectl_gets_diffs_describes_and_deletes_every_kind() {
    let m = mesh().await;
    let dir = m.manifest.parent().unwrap().to_path_buf();
    let more = dir.join("more.yaml");
    std::fs::write(
        &more,
        r#"authorization_policies:
  - name: allow-default
    service: echo
    rules: [ { from: [ { namespaces: [default] } ] } ]
telemetry:
  - name: mesh
    access_log: {}
policies:
  - { name: echo, service: echo, load_balancer: round_robin }
"#,
    )
    .unwrap();
    let more_path = more.display().to_string();
    let diff = m.cli.ok(&["diff", "-f", &more_path]).await;
    assert!(
        diff.stdout
            .contains("+ authorization_policy default/allow-default"),
        "{diff}"
    );
    assert!(diff.stdout.contains("+ telemetry default/mesh"), "{diff}");
    m.cli.ok(&["apply", "-f", &more_path]).await;
    let diff = m.cli.ok(&["diff", "-f", &more_path]).await;
    assert!(
        diff.stdout
            .contains("= authorization_policy default/allow-default"),
        "{diff}"
    );

    // A changed weight: diff names the field, old and new values.
    let manifest = std::fs::read_to_string(&m.manifest).unwrap();
    let changed = dir.join("changed.yaml");
    std::fs::write(&changed, manifest.replace("weight: 70", "weight: 50")).unwrap();
    let diff = m
        .cli
        .ok(&["diff", "-f", &changed.display().to_string()])
        .await;
    assert!(diff.stdout.contains("~ route default/echo-split"), "{diff}");
    assert!(
        diff.stdout
            .contains("rules[2].destinations[0].weight: 70 -> 50"),
        "{diff}"
    );
    assert!(diff.stdout.contains("= service default/echo"), "{diff}");

    for (kind, name) in [
        ("services", "echo"),
        ("endpoints", "echo"),
        ("routes", "echo-split"),
        ("policies", "echo"),
        ("authorization_policies", "allow-default"),
        ("telemetry", "mesh"),
    ] {
        let table = m.cli.ok(&["get", kind, "-o", "table"]).await;
        assert!(table.stdout.starts_with("NAMESPACE"), "{table}");
        assert!(table.stdout.contains(name), "{table}");
        let json = m.cli.ok(&["get", kind, "-o", "json"]).await;
        let v: Value = serde_json::from_str(&json.stdout).unwrap();
        assert!(!v[kind].as_array().unwrap().is_empty(), "{json}");
    }
    m.cli
        .ok(&["get", "authz", "allow-default", "-o", "yaml"])
        .await;

    let describe = m.cli.ok(&["describe", "service", "echo"]).await;
    for want in [
        "Service:    default/echo",
        "Endpoints:  2",
        "Routes: default/echo-split",
        "Destination policies: default/echo",
        "Authorization policies: default/allow-default",
        &xds_node_id("client"),
    ] {
        assert!(
            describe.stdout.contains(want),
            "missing {want:?}: {describe}"
        );
    }
    let describe = m
        .cli
        .ok(&["describe", "service", "echo", "-o", "json"])
        .await;
    let d: Value = serde_json::from_str(&describe.stdout).unwrap();
    let proxy = &d["proxies"][0];
    assert_eq!(proxy["node"], xds_node_id("client"));
    assert!(
        proxy["types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["type_name"] == "Route" && t["acked"].is_string()),
        "{proxy}"
    );

    // Errors name the field.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "routes:\n  - name: r\n    service: echo\n    rules: [ { destinations: [ { service: echo, wieght: 2 } ] } ]\n",
    )
    .unwrap();
    let run = m
        .cli
        .run(&["apply", "-f", &bad.display().to_string()])
        .await;
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr.contains("routes[0].rules[0].destinations[0]") && run.stderr.contains("wieght"),
        "{run}"
    );
    let run = m.cli.run(&["get", "widgets"]).await;
    assert!(
        run.stderr.contains("kind: unknown kind \"widgets\""),
        "{run}"
    );
    let run = m
        .cli
        .run(&[
            "explain",
            "request",
            "--from",
            &xds_node_id("client"),
            "--host",
            "nowhere",
        ])
        .await;
    assert!(run.stderr.contains("--host: \"nowhere\""), "{run}");

    m.cli.ok(&["delete", "authz", "allow-default"]).await;
    m.cli.ok(&["delete", "telemetry", "mesh"]).await;
    let run = m.cli.run(&["get", "authz", "allow-default"]).await;
    assert_eq!(run.code(), Some(1), "{run}");
}
