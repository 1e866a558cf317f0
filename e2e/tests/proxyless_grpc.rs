//! Proxyless gRPC: a Python grpcio client (gRPC's own xDS client, from
//! PyPI) with `GRPC_XDS_BOOTSTRAP` written by `sanectl bootstrap grpc` takes
//! its routes, clusters and endpoints from the control plane's standard
//! Envoy v3 resources and calls the `sane-echo` instances directly, with no
//! sidecar on its side.
//!
//! The client speaks TLS to the control plane (`tls` channel creds with the
//! control plane's root file, as `sanectl bootstrap grpc` writes by
//! default) and authenticates with the workload token in its node metadata.
//!
//! grpcio is installed into a virtualenv by `scripts/grpcio-test-deps.sh`
//! when missing; under `CI=true` a missing grpcio fails these tests.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use futures::StreamExt;
use sane_e2e::echo::proto::EchoRequest;
use sane_e2e::harness::https::grpc_channel;
use sane_e2e::harness::{
    bins, eventually, grpcio_python_or_skip, proxy_row, within, xds_bootstrap, ApiClient,
    CallCounts, ControlPlane, EchoApp, EchoClient, GrpcioClient, Sanectl, Sidecar, OUTBOUND,
};
use sane_xds_proto::Listener;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline of every wait in this file.
const DEADLINE: Duration = Duration::from_secs(60);
/// The gRPC port of service `echo`, as clients address it.
const PORT: u32 = 9090;
/// What the proxyless client dials.
const TARGET: &str = "xds:///echo.default:9090";
/// The client's instance name: its node id is
/// `echo-client.default~py-client` (`sanectl bootstrap grpc --instance`),
/// and the status rows are found by it.
const NODE: &str = "py-client";

/// A control plane, two echo instances (`v1`, `v2`) registered without
/// sidecars, and a proxyless client.
struct World {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    api: ApiClient,
    cli: Sanectl,
    v1: EchoApp,
    v2: EchoApp,
}

// === impl World ===

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let echo = &bins().echo;
        let (v1, v2) = tokio::join!(
            EchoApp::start_with(echo, "echo-1", "echo"),
            EchoApp::start_with(echo, "echo-2", "echo"),
        );
        let w = World {
            api: ApiClient::new(&cp),
            cli: Sanectl::new(&cp),
            dir,
            cp,
            v1,
            v2,
        };
        let mesh = format!(
            "services:\n  - {{ name: echo, ports: [ {{ name: grpc, port: {PORT}, protocol: grpc }} ] }}\n\
             endpoints:\n  - {}\n  - {}\n",
            endpoint_yaml(&w.v1, "v1"),
            endpoint_yaml(&w.v2, "v2")
        );
        w.apply("mesh.yaml", &mesh).await;
        w
    }

    /// Writes `yaml` and runs `sanectl apply -f` on it.
    async fn apply(&self, file: &str, yaml: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, yaml).expect("writing the manifest");
        self.cli
            .ok(&["apply", "-f", &path.display().to_string()])
            .await
            .stdout
    }

    /// `sanectl bootstrap grpc` for instance `node` of `echo-client`, with
    /// extra `args`; returns the file. The xDS root is sanectl's `--ca-file`
    /// (the control plane's root file).
    async fn bootstrap(&self, node: &str, args: &[&str]) -> PathBuf {
        let path = self.dir.path().join(format!("{node}.bootstrap.json"));
        let xds = self.cp.xds_url();
        let out = path.display().to_string();
        let mut all = vec![
            "bootstrap",
            "grpc",
            "--service",
            "echo-client",
            "--xds-server",
            &xds,
            "--instance",
            node,
            "-o",
            &out,
        ];
        all.extend_from_slice(args);
        self.cli.ok(&all).await;
        path
    }

    /// The client's row in `GET /api/v1/proxies`.
    async fn row(&self, node: &str) -> Result<Json, String> {
        let status = self.api.proxies().await?;
        proxy_row(&status, node)
            .cloned()
            .ok_or_else(|| format!("{node} is not in {status}"))
    }

    /// Waits until `node` has ACKed everything it was sent at the current
    /// registry revision (so the client runs on the latest config).
    async fn wait_in_sync(&self, node: &str) {
        self.api.wait_in_sync(DEADLINE, &[node]).await;
    }
}

fn endpoint_yaml(app: &EchoApp, version: &str) -> String {
    format!(
        "{{ service: echo, address: 127.0.0.1, port: {}, labels: {{ version: {version} }} }}",
        app.addrs.grpc.port()
    )
}

/// The endpoint's registry key.
fn endpoint_key(app: &EchoApp) -> String {
    format!("default/echo/127.0.0.1:{}", app.addrs.grpc.port())
}

/// Route `echo-split`: calls with metadata `x-canary: 1` to v2; the rest
/// split `v1`/`v2` by weight.
fn split_route(v1: u32, v2: u32) -> String {
    format!(
        "
routes:
  - name: echo-split
    service: echo
    rules:
      - matches: [ {{ headers: [ {{ name: x-canary, value: \"1\" }} ] }} ]
        destinations: [ {{ service: echo, subset: {{ version: v2 }} }} ]
      - destinations:
          - {{ service: echo, subset: {{ version: v1 }}, weight: {v1} }}
          - {{ service: echo, subset: {{ version: v2 }}, weight: {v2} }}
"
    )
}

/// Starts the proxyless client, or `None` when grpcio is unavailable
/// outside CI.
async fn client(test: &str, bootstrap: &Path) -> Option<GrpcioClient> {
    let python = tokio::task::spawn_blocking({
        let test = test.to_string();
        move || grpcio_python_or_skip(&test)
    })
    .await
    .expect("the deps script ran")?;
    Some(GrpcioClient::start(&python, bootstrap, TARGET).await)
}

/// Waits until `n` calls all succeed and satisfy `ok`.
async fn wait_calls(
    client: &GrpcioClient,
    n: usize,
    metadata: &[(&str, &str)],
    what: &str,
    ok: impl Fn(&CallCounts) -> bool,
) -> CallCounts {
    eventually(DEADLINE, || async {
        let c = client.calls(n, metadata).await;
        if c.failed() == 0 && ok(&c) {
            Ok(c)
        } else {
            Err(format!(
                "waiting for {what}: {c:?}\n--- client trace (tail) ---\n{}",
                client.stderr_tail(3000)
            ))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_client_follows_routes_and_endpoints_without_restarting() {
    let w = World::start().await;
    let bootstrap = w.bootstrap(NODE, &[]).await;
    let Some(client) = client("proxyless_follows_routes", &bootstrap).await else {
        return;
    };
    // What sanectl wrote: TLS to the control plane, verified with its root,
    // and a node id of the token's workload.
    let written: Json =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap).unwrap()).unwrap();
    let creds = &written["xds_servers"][0]["channel_creds"][0];
    assert_eq!(creds["type"], "tls", "{written}");
    assert_eq!(
        creds["config"]["ca_certificate_file"],
        w.cp.root_cert.display().to_string(),
        "{written}"
    );
    assert_eq!(written["node"]["id"], format!("echo-client.default~{NODE}"));

    // 1. It reaches both registered instances (round robin) over xDS.
    let first = wait_calls(&client, 20, &[], "both instances", |c| {
        c.from("echo-1") > 0 && c.from("echo-2") > 0
    })
    .await;
    println!("no route: {first:?}");
    let row = w.row(NODE).await.unwrap();
    assert!(
        row["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.contains("gRPC") && ua.contains("Python")),
        "{row}"
    );
    for t in [
        "envoy.Listener",
        "envoy.RouteConfiguration",
        "envoy.Cluster",
        "envoy.ClusterLoadAssignment",
    ] {
        assert!(row["types"][t]["version_acked"].is_string(), "{t}: {row}");
    }
    let status = w.cli.ok(&["status"]).await;
    assert!(status.stdout.contains(NODE), "{status}");

    // 2. An 80/20 split moves its traffic, on the same channel.
    w.apply("split.yaml", &split_route(80, 20)).await;
    w.wait_in_sync(NODE).await;
    let split = client.calls(1000, &[]).await;
    println!("80/20 split over 1000 calls: {split:?}");
    assert_eq!(split.failed(), 0, "{split:?}");
    let v1 = split.from("echo-1") as f64 / 1000.0;
    assert!(
        (0.75..=0.85).contains(&v1),
        "echo-1 got {:.1} % of the calls, want 80 ± 5 %: {split:?}",
        v1 * 100.0
    );

    // 4. A header match sends the calls carrying `x-canary: 1` to v2 only.
    let canary = client.calls(50, &[("x-canary", "1")]).await;
    assert_eq!(canary.from("echo-2"), 50, "{canary:?}");

    // 3. Endpoints added and removed through the API are followed.
    let v3 = EchoApp::start_with(&bins().echo, "echo-3", "echo").await;
    // An even split, so both subsets (and so the new v1 endpoint) get calls.
    w.apply("even.yaml", &split_route(1, 1)).await;
    let ep3 = format!("endpoints:\n  - {}\n", endpoint_yaml(&v3, "v1"));
    w.apply("echo-3.yaml", &ep3).await;
    wait_calls(&client, 30, &[], "calls to the new endpoint", |c| {
        c.from("echo-3") > 0
    })
    .await;
    w.cli
        .ok(&["delete", "endpoints", &endpoint_key(&w.v1)])
        .await;
    w.wait_in_sync(NODE).await;
    let after = wait_calls(&client, 100, &[], "no call to the removed endpoint", |c| {
        c.from("echo-1") == 0
    })
    .await;
    println!("after removing echo-1: {after:?}");
    assert!(after.from("echo-3") > 0, "{after:?}");
    // Stable: later batches do not reach it either.
    let later = client.calls(100, &[]).await;
    assert_eq!((later.from("echo-1"), later.failed()), (0, 0), "{later:?}");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_client_rejects_is_a_nack_and_the_last_good_one_serves() {
    let w = World::start().await;
    let bootstrap = w.bootstrap(NODE, &[]).await;
    let Some(client) = client("proxyless_nack", &bootstrap).await else {
        return;
    };
    w.apply("split.yaml", &split_route(1, 1)).await;
    wait_calls(
        &client,
        20,
        &[("x-canary", "1")],
        "canary calls to v2",
        |c| c.from("echo-2") == 20,
    )
    .await;
    w.wait_in_sync(NODE).await;
    let before = w.row(NODE).await.unwrap();
    let acked = before["types"]["envoy.RouteConfiguration"]["version_acked"].clone();

    // The registry accepts this regex (balanced parentheses); gRPC's RE2 does
    // not, so the client rejects the route configuration.
    let bad = split_route(1, 1).replace(
        "{ name: x-canary, value: \"1\" }",
        "{ name: x-canary, kind: regex, value: \"[a-\" }",
    );
    w.apply("bad.yaml", &bad).await;
    let nack = eventually(DEADLINE, || async {
        let row = w.row(NODE).await?;
        let rds = &row["types"]["envoy.RouteConfiguration"];
        let nack = &rds["last_nack"];
        if nack.is_null() || nack["version"] != rds["version_sent"] {
            return Err(format!("no NACK of the latest route config yet: {row}"));
        }
        assert_eq!(rds["version_acked"], acked, "{row}");
        assert_eq!(row["in_sync"], false, "{row}");
        Ok(nack["reason"].as_str().unwrap_or("").to_string())
    })
    .await;
    println!("the client's NACK: {nack}");
    assert!(
        nack.contains("regex") || nack.contains("RE2") || nack.contains("[a-"),
        "the NACK should carry the client's own text: {nack:?}"
    );
    let status = w.cli.ok(&["status"]).await;
    assert!(
        status.stdout.contains(&nack[..nack.len().min(40)]),
        "{status}"
    );

    // The previous route keeps serving: canary calls still go to v2.
    let canary = client.calls(20, &[("x-canary", "1")]).await;
    assert_eq!(canary.from("echo-2"), 20, "{canary:?}");
    let rest = client.calls(20, &[]).await;
    assert_eq!(rest.failed(), 0, "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_and_a_proxyless_client_follow_the_same_route_change() {
    let w = World::start().await;
    let bootstrap = w.bootstrap(NODE, &[]).await;
    let Some(client) = client("proxyless_and_sidecar", &bootstrap).await else {
        return;
    };
    let proxies = w.dir.path().join("proxies");
    std::fs::create_dir_all(&proxies).expect("creating the proxies dir");
    let listeners = vec![Listener {
        name: OUTBOUND.into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    }];
    let sidecar = Sidecar::start(
        &bins().proxy,
        &proxies,
        "sidecar",
        xds_bootstrap(&w.cp, "sidecar", listeners),
    )
    .await;
    let via_sidecar = EchoClient::via(sidecar.listener(OUTBOUND), "http://echo:9090").unwrap();

    for (subset, want) in [("v1", "echo-1"), ("v2", "echo-2")] {
        // All of the traffic to one subset.
        let one = format!(
            "
routes:
  - name: echo-split
    service: echo
    rules:
      - destinations: [ {{ service: echo, subset: {{ version: {subset} }} }} ]
"
        );
        w.apply("one.yaml", &one).await;
        wait_calls(&client, 20, &[], want, |c| c.from(want) == 20).await;
        eventually(DEADLINE, || {
            let mut c = via_sidecar.clone();
            async move {
                let r = c
                    .unary(EchoRequest::new("hi"))
                    .await
                    .map_err(|e| e.to_string())?;
                let from = r.into_inner().from;
                (from == want)
                    .then_some(())
                    .ok_or_else(|| format!("the sidecar's call reached {from}, want {want}"))
            }
        })
        .await;
        w.api.wait_in_sync(DEADLINE, &[NODE, "sidecar"]).await;
    }
}

/// An ADS client written with tonic (TLS, trusting the control plane's
/// root), to send what grpcio never would.
async fn ads(cp: &ControlPlane) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = grpc_channel(&cp.xds_url(), &cp.root_cert)
        .await
        .expect("connecting to the xDS port");
    AggregatedDiscoveryServiceClient::new(channel)
}

fn node(id: &str, token: Option<&str>) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let mut fields =
        std::collections::BTreeMap::from([("namespace".to_string(), string("default"))]);
    if let Some(t) = token {
        fields.insert("token".into(), string(t));
    }
    Node {
        id: id.into(),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

/// Opens a stream sending `reqs`; returns what the server answered (until
/// it ends the stream or `n` responses came).
async fn exchange(
    cp: &ControlPlane,
    reqs: Vec<DiscoveryRequest>,
    n: usize,
) -> (Vec<DiscoveryResponse>, Option<tonic::Status>) {
    // The requests, then an open stream: the server answers before it sees
    // the client's end.
    let requests = futures::stream::iter(reqs).chain(futures::stream::pending());
    let mut client = ads(cp).await;
    let resp = client.stream_aggregated_resources(requests).await;
    let mut stream = match resp {
        Ok(s) => s.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut got = Vec::new();
    while got.len() < n {
        match within(DEADLINE, stream.next()).await {
            Some(Ok(r)) => got.push(r),
            Some(Err(status)) => return (got, Some(status)),
            None => break,
        }
    }
    (got, None)
}

/// The default token's node id for a raw stream (instance `name`).
fn raw_id(name: &str) -> String {
    format!("default.default~{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_valid_token_are_refused_as_for_proxies() {
    let w = World::start().await;
    let good = w.bootstrap(NODE, &[]).await;
    let Some(client) = client("proxyless_tokens", &good).await else {
        return;
    };
    wait_calls(&client, 10, &[], "the good client's calls", |c| {
        c.ok() == 10
    })
    .await;

    // A bootstrap carrying a token nobody issued: the client gets nothing,
    // its calls fail, and the node never appears in the status table.
    let forged_file = w.dir.path().join("forged.token");
    std::fs::write(&forged_file, "forged-token").unwrap();
    let forged = w
        .bootstrap(
            "forged-client",
            &["--workload-token-file", &forged_file.display().to_string()],
        )
        .await;
    let python = grpcio_python_or_skip("proxyless_tokens").expect("found above");
    let intruder = GrpcioClient::start(&python, &forged, TARGET).await;
    let denied = intruder.calls(3, &[]).await;
    println!("forged token: {denied:?}");
    assert_eq!(denied.ok(), 0, "{denied:?}");
    assert!(w.row("forged-client").await.is_err());
    let trace = intruder.stderr_tail(200_000);
    assert!(
        trace.contains("UNAUTHENTICATED") || trace.contains("unknown token"),
        "the client should have been told why: {}",
        intruder.stderr_tail(3000)
    );
    drop(intruder);

    // Raw streams: no token at all, a token of another namespace, a node id
    // of another workload, no node.
    let lds = |node: Option<Node>| DiscoveryRequest {
        node,
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
        resource_names: vec!["echo.default:9090".into()],
        ..Default::default()
    };
    let (got, status) = exchange(&w.cp, vec![lds(Some(node(&raw_id("raw"), None)))], 1).await;
    let status = status.expect("refused");
    assert!(got.is_empty());
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("\"token\""), "{status:?}");
    let other_ns = w.cp.issue_token(w.dir.path(), "other", "x").await;
    let other = std::fs::read_to_string(other_ns).unwrap();
    let (_, status) = exchange(&w.cp, vec![lds(Some(node("x.other~raw", Some(&other))))], 1).await;
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let token = std::fs::read_to_string(&w.cp.xds_token).unwrap();
    let (_, status) = exchange(
        &w.cp,
        vec![lds(Some(node("echo-client.default~raw", Some(&token))))],
        1,
    )
    .await;
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node id"), "{status:?}");
    // Without a header token the node carries it: no node, no stream.
    let (_, status) = exchange(&w.cp, vec![lds(None)], 1).await;
    assert_eq!(
        status.expect("refused").code(),
        tonic::Code::InvalidArgument
    );

    // A revoked token ends the proxyless client's stream, as a proxy's.
    let token_file = w.dir.path().join("revokee.token");
    let token_path = token_file.display().to_string();
    w.cli
        .ok(&[
            "token",
            "create",
            "default",
            "revokee",
            "--out",
            &token_path,
        ])
        .await;
    let revokee = w
        .bootstrap(
            "revokee-1",
            &[
                "--service-account",
                "revokee",
                "--workload-token-file",
                &token_path,
            ],
        )
        .await;
    let doomed = GrpcioClient::start(&python, &revokee, TARGET).await;
    wait_calls(&doomed, 5, &[], "the revokee's calls", |c| c.ok() == 5).await;
    let row = w.row("revokee-1").await.unwrap();
    assert_eq!(row["node"], "revokee.default~revokee-1", "{row}");
    let listed = w.cli.ok(&["token", "list", "-o", "json"]).await;
    let listed: Json = serde_json::from_str(&listed.stdout).unwrap();
    let id = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["service_account"] == "revokee")
        .expect("the revokee token is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.cli.ok(&["token", "revoke", &id]).await;
    eventually(DEADLINE, || async {
        let row = w.row("revokee-1").await?;
        let log = w.cp.proc.stderr();
        if row["connected"] == false
            && log.contains("its token was revoked")
            && log.contains("xds stream refused")
        {
            Ok(())
        } else {
            Err(format!(
                "the revoked client's stream is still open or not yet refused again: {row}"
            ))
        }
    })
    .await;
    drop(doomed);

    // The good client never noticed.
    let after = client.calls(10, &[]).await;
    assert_eq!(after.ok(), 10, "{after:?}");
    let row = w.row(NODE).await.unwrap();
    assert_eq!(row["connected"], true, "{row}");
}

/// A message that is not a `DiscoveryRequest`: field 1 (`version_info`, a
/// string) as a varint, which a `DiscoveryRequest` decoder refuses.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    x: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_malformed_requests_are_answered_alone() {
    let w = World::start().await;
    let good = w.bootstrap(NODE, &[]).await;
    let Some(client) = client("proxyless_bad_input", &good).await else {
        return;
    };
    wait_calls(&client, 10, &[], "the good client's calls", |c| {
        c.ok() == 10
    })
    .await;
    let token = std::fs::read_to_string(&w.cp.xds_token).unwrap();
    let lds = |node: Option<Node>| DiscoveryRequest {
        node,
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
        resource_names: vec!["echo.default:9090".into()],
        ..Default::default()
    };

    // An unknown type gets an empty answer and a logged reason; the stream
    // goes on and answers the Envoy type after it.
    let unknown = DiscoveryRequest {
        node: Some(node(&raw_id("raw"), Some(&token))),
        type_url: "type.googleapis.com/made.up.Thing".into(),
        ..Default::default()
    };
    let (got, status) = exchange(&w.cp, vec![unknown, lds(None)], 2).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(got[0].type_url, "type.googleapis.com/made.up.Thing");
    assert!(got[0].resources.is_empty());
    assert_eq!(got[1].resources.len(), 1, "{:?}", got[1]);
    let log = w.cp.proc.stderr();
    let logged = log
        .lines()
        .find(|l| l.contains("made.up.Thing"))
        .unwrap_or_else(|| panic!("the unknown type is not logged:\n{log}"));
    assert!(logged.contains("does not serve"), "{logged}");

    // A malformed node (its namespace) ends that stream alone, naming the
    // field.
    let mut bad_node = node(&raw_id("bad"), Some(&token));
    bad_node.metadata.as_mut().unwrap().fields.insert(
        "namespace".into(),
        Value {
            kind: Some(Kind::StringValue("Not A Namespace\n".into())),
        },
    );
    let (_, status) = exchange(&w.cp, vec![lds(Some(bad_node))], 1).await;
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("namespace"), "{status:?}");

    // Bytes that are no DiscoveryRequest: that stream fails, nothing else.
    let channel = grpc_channel(&w.cp.xds_url(), &w.cp.root_cert)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let garbage = futures::stream::iter(vec![Garbage { x: 7 }]).chain(futures::stream::pending());
    let codec = tonic_prost::ProstCodec::<Garbage, DiscoveryResponse>::default();
    let answer = match grpc
        .streaming(tonic::Request::new(garbage), path, codec)
        .await
    {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            within(DEADLINE, stream.message()).await.map(|_| ())
        }
        Err(status) => Err(status),
    };
    let status = answer.expect_err("a malformed request is refused");
    println!("malformed request: {status:?}");
    assert_ne!(status.code(), tonic::Code::Ok);

    // The good client never noticed, and the control plane still serves.
    let after = client.calls(10, &[]).await;
    assert_eq!(after.ok(), 10, "{after:?}");
    let row = w.row(NODE).await.unwrap();
    assert_eq!(row["connected"], true, "{row}");
    let (got, status) = exchange(
        &w.cp,
        vec![lds(Some(node(&raw_id("after"), Some(&token))))],
        1,
    )
    .await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(got[0].resources.len(), 1, "{:?}", got[0]);
}
