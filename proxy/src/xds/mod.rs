//! The xDS client: one ADS stream (state of the world) to the control plane.
//!
//! Connects with backoff (10 ms doubling to 15 s, reset after a response is
//! received or a stream stayed up [`STABLE_STREAM`]), subscribes to every
//! type (wildcard) with the version it holds of each — so a control plane
//! (another replica after a failover) that would send the same version
//! sends nothing, and the proxy resumes with what it has —, and for each response
//! either applies the resources atomically and ACKs, or keeps the last good
//! config and NACKs with a message naming the resource and field (see
//! [`state`]). Readiness is held until every type was accepted once. When the
//! control plane is unreachable the proxy keeps serving what it has: the data
//! path never waits on this task.
//!
//! The stream runs over TLS to an `https://` address, verified against
//! `control_plane.root_cert_file`, with the workload certificate as client
//! certificate once the proxy has one ([`crate::tls::control_plane`]). Until
//! the first config arrives, the last failure is what `/ready` shows.

pub mod state;

use self::state::{XdsState, SUBSCRIBED};
use crate::config::ConfigStore;
use crate::drain::BlockReady;
use crate::tls::control_plane::connect;
use crate::tls::Identity;
use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use sane_xds_proto::{ControlPlane, Node};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// A stream open this long counts as a success (resets the backoff) even
/// without a response: a proxy resuming with the versions it holds may get
/// none until the next change, while a refused stream ends at once.
pub const STABLE_STREAM: Duration = Duration::from_secs(2);

/// xDS client metrics.
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    connected: IntGauge,
    updates: IntCounterVec,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// Connecting failed (address, root file, TLS handshake, transport).
    #[error("control plane: {0}")]
    Connect(#[from] crate::tls::control_plane::ConnectError),
    /// The stream failed or was refused.
    #[error("xds stream to {address}: {status}")]
    Stream {
        /// The address.
        address: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The token file could not be read.
    #[error("reading token file {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

// === impl XdsMetrics ===

impl XdsMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connected = IntGauge::new(
            "sane_xds_connected",
            "1 while the xDS stream to the control plane is up.",
        )?;
        let updates = IntCounterVec::new(
            Opts::new(
                "sane_xds_updates_total",
                "xDS responses, by type and result (ack, nack).",
            ),
            &["type", "result"],
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(updates.clone()))?;
        Ok(Self { connected, updates })
    }
}

/// Runs the client until `stop` is cancelled. `block` is dropped once every
/// type has been accepted. `inbound` (the bound inbound listeners) is sent
/// in the node metadata: the control plane finds the endpoints that point
/// at this proxy by it, and sends the authorization policies that target
/// them.
/// `identity`'s certificate, once it has one, is
/// presented to the control plane.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cp: ControlPlane,
    node: Node,
    inbound: Vec<SocketAddr>,
    store: Arc<ConfigStore>,
    metrics: XdsMetrics,
    block: BlockReady,
    identity: Arc<Identity>,
    stop: CancellationToken,
) {
    let envoy = envoy_node(&node, &cp, &inbound);
    let mut state = XdsState::default();
    let mut block = Some(block);
    let mut backoff = BACKOFF_START;
    // Replicated control planes: `address` lists several, comma-separated.
    // A failed or closed stream moves on to the next one; the backoff grows
    // only once every address was tried without a response.
    let addresses = control_plane_addresses(&cp.address);
    let mut at = 0;
    let mut failed_in_row = 0;
    loop {
        let mut got_response = false;
        let mut established = None;
        let address = addresses[at % addresses.len()].clone();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&cp, &address, &envoy, &store, &metrics, &identity, &mut state, &mut block, &mut got_response, &mut established) => r,
        };
        metrics.connected.set(0);
        let stable =
            established.is_some_and(|at: tokio::time::Instant| at.elapsed() >= STABLE_STREAM);
        if got_response || stable {
            backoff = BACKOFF_START;
            failed_in_row = 0;
        } else {
            failed_in_row += 1;
        }
        at += 1;
        match result {
            Ok(()) => {
                tracing::warn!(%address, "xds stream closed by the control plane; reconnecting")
            }
            Err(e) => {
                if let Some(block) = &block {
                    block.note(e.to_string());
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "xds session failed; serving the last config")
            }
        }
        // Jitter (50-100 % of the backoff): proxies of a replica that went
        // away do not all land on the next one in the same instant.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if failed_in_row >= addresses.len() {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The comma-separated addresses of `control_plane.address` (at least one).
fn control_plane_addresses(address: &str) -> Vec<String> {
    let list: Vec<String> = address
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        vec![address.to_string()]
    } else {
        list
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cp: &ControlPlane,
    address: &str,
    node: &EnvoyNode,
    store: &Arc<ConfigStore>,
    metrics: &XdsMetrics,
    identity: &Identity,
    state: &mut XdsState,
    block: &mut Option<BlockReady>,
    got_response: &mut bool,
    established: &mut Option<tokio::time::Instant>,
) -> Result<(), XdsError> {
    let address = address.to_string();
    let token = if cp.token_file.is_empty() {
        None
    } else {
        let t = std::fs::read_to_string(&cp.token_file).map_err(|source| XdsError::Token {
            path: cp.token_file.clone(),
            source,
        })?;
        Some(t.trim().to_string())
    };
    let channel = connect(&address, &cp.root_cert_file, Some(identity), |e| {
        e.connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
    })
    .await?;
    let auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.and_then(|t| format!("Bearer {t}").parse().ok());
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(v) = &auth {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (i, t) in SUBSCRIBED.into_iter().enumerate() {
        let mut req = state.subscribe(t);
        if i == 0 {
            req.node = Some(node.clone());
        }
        let _ = tx.try_send(req);
    }
    let stream_err = |status| XdsError::Stream {
        address: address.clone(),
        status,
    };
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(stream_err)?
        .into_inner();
    metrics.connected.set(1);
    *established = Some(tokio::time::Instant::now());
    tracing::info!(%address, "xds stream established");
    while let Some(resp) = responses.message().await.map_err(stream_err)? {
        *got_response = true;
        let type_label = resp
            .type_url
            .rsplit('.')
            .next()
            .unwrap_or("unknown")
            .to_string();
        let origin = format!("xds {}", resp.type_url);
        let reply = match state.receive(&resp) {
            Err(reason) => Err(reason),
            // The same resources as the accepted ones (a new version only):
            // the applied config was compiled from exactly these, so no
            // candidate is merged or compiled.
            Ok(received) if received.is_unchanged() && state.acked(received.type_url) => {
                tracing::debug!(r#type = %type_label, xds_version = %resp.version_info, "xds update changes no resource");
                Ok(state.accept(&resp, received))
            }
            Ok(received) => match state.merge(&received) {
                Err(reason) => Err(reason),
                Ok(candidate) => match apply_off_thread(store, &candidate, &origin).await {
                    Ok(version) => {
                        tracing::info!(r#type = %type_label, xds_version = %resp.version_info, config_version = version, "applied xds update");
                        Ok(state.accept(&resp, received))
                    }
                    Err(e) => Err(state::compile_nack_reason(&e, &candidate)),
                },
            },
        };
        let reply = match reply {
            Ok(ack) => {
                metrics
                    .updates
                    .with_label_values(&[&type_label, "ack"])
                    .inc();
                ack
            }
            Err(reason) => {
                tracing::warn!(r#type = %type_label, %reason, "rejected xds update; keeping the last good config");
                metrics
                    .updates
                    .with_label_values(&[&type_label, "nack"])
                    .inc();
                state.reject(&resp, reason)
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
        if state.all_acked() && block.take().is_some() {
            tracing::info!("received the initial config of every type from the control plane");
        }
    }
    Ok(())
}

/// Compiles and applies `candidate` on tokio's blocking pool: this task
/// runs on the main runtime, which with `--workers 1` also serves every
/// connection, and compiling a large push must not stall them.
async fn apply_off_thread(
    store: &Arc<ConfigStore>,
    candidate: &sane_xds_proto::MeshResources,
    origin: &str,
) -> Result<u64, crate::StartError> {
    let (store, candidate, origin) = (store.clone(), candidate.clone(), origin.to_string());
    tokio::task::spawn_blocking(move || store.apply_dynamic(candidate, &origin))
        .await
        .unwrap_or_else(|e| Err(crate::StartError::ReloadAborted(e.to_string())))
}

/// The `Node` a proxy announces on its first request: `node.id` (default
/// `sidecar`), `node.workload` as cluster, and the metadata the control
/// plane scopes its view by (`namespace`, `services`, `inbound`, `labels`). Public so
/// tools speaking xDS as a proxy (the fleet benchmark) announce the same.
pub fn envoy_node(node: &Node, cp: &ControlPlane, inbound: &[SocketAddr]) -> EnvoyNode {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "namespace".to_string(),
        string(sane_xds_proto::namespace_or_default(&node.namespace)),
    );
    if !cp.services.is_empty() {
        fields.insert(
            "services".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: cp.services.iter().map(|s| string(s)).collect(),
                })),
            },
        );
    }
    if !node.labels.is_empty() {
        // The control plane picks the proxy's Sidecar scope by them.
        let labels = node
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        fields.insert(
            "labels".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
    }
    if !inbound.is_empty() {
        let addrs = inbound.iter().map(|a| string(&a.to_string())).collect();
        fields.insert(
            "inbound".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values: addrs })),
            },
        );
    }
    EnvoyNode {
        id: if node.id.is_empty() {
            "sidecar".into()
        } else {
            node.id.clone()
        },
        cluster: node.workload.clone(),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}
