//! Hostile xDS clients against the real `sane-control-plane` binary: what a
//! client sends is bounded, and what the control plane logs of it is
//! escaped. The control plane's memory is read from `/proc` and printed.
//!
//! Run with `-- --nocapture` to see the figures.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use futures::future::join_all;
use sane_e2e::harness::{eventually, proc_stats, ApiClient, ControlPlane};
use std::time::Duration;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);
const SERVICE_TYPE: &str = "type.googleapis.com/sane.mesh.v1.Service";

fn node(id: String) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    Node {
        id,
        metadata: Some(Struct {
            fields: [("namespace".to_string(), string("default"))].into(),
        }),
        ..Default::default()
    }
}

/// An open ADS stream carrying `token`, its first request sent with `node`.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn open(cp: &ControlPlane, token: &str, node: Node) -> Result<Stream, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(cp.xds_url())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(node),
            type_url: SERVICE_TYPE.into(),
            ..Default::default()
        })
        .await
        .expect("the channel is open");
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut req = tonic::Request::new(requests);
        let bearer = format!("Bearer {token}").parse().expect("a header value");
        req.metadata_mut().insert("authorization", bearer);
        let rx = client.stream_aggregated_resources(req).await?.into_inner();
        Ok(Stream { tx, rx })
    }

    /// The next response, or the status the stream ended with.
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        let msg = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("an answer in time")?;
        msg.ok_or_else(|| tonic::Status::cancelled("stream ended without a status"))
    }
}

fn rss_mib(cp: &ControlPlane) -> f64 {
    let s = proc_stats::sample(cp.proc.pid(), Duration::ZERO).expect("reading /proc");
    s.rss_kb as f64 / 1024.0
}

#[tokio::test]
async fn oversized_node_ids_and_forged_nacks_are_refused_cut_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    // Raw gRPC clients speak plaintext: the hostile input is the subject
    // here, not the transport (tests/control_plane_tls.rs covers that).
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--insecure-plaintext-loopback"]).await;
    let token = std::fs::read_to_string(&cp.xds_token).unwrap();
    let token = token.trim();
    let api = ApiClient::new(&cp);
    let before = rss_mib(&cp);

    // The probe: 20 streams at once, each with a 3 MB node id. Each is
    // refused, and neither memory nor the status table keeps them.
    let huge = || "h".repeat(3 * 1024 * 1024);
    let opened = join_all((0..20).map(|_| Stream::open(&cp, token, node(huge())))).await;
    let mut codes = Vec::new();
    for stream in opened {
        let answer = match stream {
            Ok(mut s) => s.next().await.map(|_| ()),
            Err(status) => Err(status),
        };
        let status = answer.expect_err("a 3 MB node id is refused");
        assert!(status.message().len() < 1024, "the refusal echoes the id");
        codes.push(status.code());
    }
    // Just over the node id limit: refused by the node check itself.
    let mut s = Stream::open(&cp, token, node("a".repeat(254)))
        .await
        .unwrap();
    let refused = s.next().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("at most 253 bytes"), "{refused}");
    let after = rss_mib(&cp);
    let table = api
        .send(http::Method::GET, "/api/v1/proxies", "", None)
        .await
        .unwrap();
    println!(
        "20 streams with 3 MB node ids: refused with {codes:?}; control plane RSS {before:.1} MiB \
         before, {after:.1} MiB after; /api/v1/proxies is {} bytes",
        table.body.len()
    );
    assert!(
        table.body.len() < 4096,
        "nothing of them is listed: {}",
        table.text()
    );
    // The probe grew it by 410 MiB; bounded requests leave it near idle.
    assert!(
        after - before < 64.0,
        "RSS grew from {before:.1} to {after:.1} MiB"
    );

    // A NACK whose message holds a newline, a forged log line and terminal
    // escapes: logged on one line, escaped, and cut.
    let mut s = Stream::open(&cp, token, node("default.default~nacker".into()))
        .await
        .unwrap();
    let services = s.next().await.unwrap();
    let forged = "INFO sane_control_plane: all proxies in sync";
    let reason = format!(
        "bad\n2099-01-01T00:00:00Z {forged}\u{1b}[2J{}",
        "x".repeat(50_000)
    );
    s.tx.send(DiscoveryRequest {
        type_url: SERVICE_TYPE.into(),
        response_nonce: services.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: reason,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let line = eventually(DEADLINE, || async {
        let log = cp.proc.stderr();
        log.lines()
            .find(|l| l.contains("nack") && l.contains("bad\\n2099"))
            .map(str::to_string)
            .ok_or_else(|| "no nack line yet".to_string())
    })
    .await;
    println!("the NACK as logged: {line:.300}");
    // The logger colours its own fields; the client's escape is not raw.
    assert!(!line.contains("\u{1b}[2J"), "{line:.300}");
    assert!(line.contains("\\u{1b}[2J"), "{line:.300}");
    assert!(line.len() < 4096, "cut: {} bytes", line.len());
    let log = cp.proc.stderr();
    assert!(
        !log.lines().any(|l| l.starts_with("2099-01-01")),
        "a forged line made it into the log"
    );
}
