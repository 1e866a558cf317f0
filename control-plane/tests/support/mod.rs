//! Test harness: the control plane in-process on `127.0.0.1:0`, an ADS
//! client, and the one polling helper.

#![allow(dead_code)]

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use sane_control_plane::client::ApiClient;
use sane_control_plane::xds::{node_metadata, DebounceConfig};
use sane_control_plane::{build, Config};
use sane_xds_proto::TypeUrl;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

/// How long any single expectation may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // allow-sleep: poll step
    }
}

/// A running control plane.
pub struct ControlPlane {
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub token: String,
    pub client: ApiClient,
    pub data_dir: PathBuf,
    /// The mesh root the ports' certificate chains to (`None`: plaintext).
    pub root: Option<sane_certs::TrustBundle>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), sane_control_plane::Error>>,
}

impl ControlPlane {
    /// Starts a control plane keeping its state in `data_dir`, with a
    /// generated token and a short debounce, in plaintext on loopback
    /// (these tests are about the registry, views and the API; the
    /// transport has its own tests, which start it with TLS).
    pub async fn start(data_dir: &Path) -> ControlPlane {
        ControlPlane::start_with(data_dir, |_| {}).await
    }

    /// [`ControlPlane::start`] with a changed config.
    pub async fn start_with(data_dir: &Path, change: impl FnOnce(&mut Config)) -> ControlPlane {
        let mut config = Config {
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            api_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: Some(data_dir.to_path_buf()),
            debounce: DebounceConfig {
                quiet: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
            },
            plaintext_loopback: true,
            ..Config::default()
        };
        change(&mut config);
        let bound = build(config, &prometheus::Registry::new()).await.unwrap();
        let token = bound.token().secret().to_string();
        let (xds, api) = (bound.xds_addr(), bound.api_addr());
        let root = bound.is_tls().then(|| {
            let path = bound.root_cert_file().expect("a data dir, so a root file");
            sane_certs::TrustBundle::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
        });
        let client = match &root {
            Some(root) => {
                ApiClient::with_roots(&format!("https://{api}"), Some(token.clone()), root).unwrap()
            }
            None => ApiClient::new(&format!("http://{api}"), Some(token.clone())),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        ControlPlane {
            xds,
            api,
            client,
            root,
            token,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            task,
        }
    }

    /// A workload token for `namespace` (service account `test`), issued
    /// through the API: what an xDS stream for that namespace must carry.
    /// Its node ids are `test.<namespace>` and `test.<namespace>~<instance>`.
    pub async fn workload_token(&self, namespace: &str) -> String {
        self.token_for(namespace, "test").await
    }

    /// A workload token for `service_account` in `namespace`.
    pub async fn token_for(&self, namespace: &str, service_account: &str) -> String {
        let body =
            serde_json::json!({ "namespace": namespace, "service_account": service_account });
        let reply = self
            .client
            .json(http::Method::POST, "/api/v1/tokens", Some(&body))
            .await
            .unwrap();
        reply["token"].as_str().expect("a token").to_string()
    }

    /// Shuts down and waits for the server to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("shutdown finished in time")
            .unwrap()
            .unwrap();
    }
}

pub fn node(id: &str, namespace: &str, services: &[&str]) -> Node {
    Node {
        id: id.into(),
        metadata: Some(node_metadata(namespace, services)),
        ..Default::default()
    }
}

/// `stream` as a request carrying `token` as a bearer token.
pub fn bearer<T>(stream: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(stream);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a valid token"),
    );
    req
}

/// A state-of-the-world ADS stream.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl SotwClient {
    /// Opens a stream to `xds` carrying `token` (see
    /// [`ControlPlane::workload_token`]).
    pub async fn connect(xds: SocketAddr, token: &str, node: Node) -> SotwClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let resp = client
            .stream_aggregated_resources(bearer(ReceiverStream::new(rx), token))
            .await
            .unwrap();
        SotwClient {
            tx,
            rx: resp.into_inner(),
            node: Some(node),
        }
    }

    pub async fn send(&mut self, mut req: DiscoveryRequest) {
        // The node goes in the first request only.
        req.node = self.node.take();
        self.tx.send(req).await.unwrap();
    }

    pub async fn request(&mut self, t: TypeUrl) {
        self.send(DiscoveryRequest {
            type_url: t.as_str().into(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&mut self, resp: &DiscoveryResponse) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&mut self, resp: &DiscoveryResponse, reason: &str) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(Status {
                code: 3,
                message: reason.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    /// The next response, which must be for `t`.
    pub async fn recv_type(&mut self, t: TypeUrl) -> DiscoveryResponse {
        let resp = self.recv().await;
        assert_eq!(resp.type_url, t.as_str());
        resp
    }
}

/// A delta ADS stream.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl DeltaClient {
    /// Opens a stream to `xds` carrying `token` (see
    /// [`ControlPlane::workload_token`]).
    pub async fn connect(xds: SocketAddr, token: &str, node: Node) -> DeltaClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let resp = client
            .delta_aggregated_resources(bearer(ReceiverStream::new(rx), token))
            .await
            .unwrap();
        DeltaClient {
            tx,
            rx: resp.into_inner(),
            node: Some(node),
        }
    }

    pub async fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        req.node = self.node.take();
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}
