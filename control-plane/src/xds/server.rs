//! The tonic plumbing around the state machines: one task per ADS stream
//! that feeds requests and view changes to a [`SotwStream`] or
//! [`DeltaStream`], sends what it returns, and records it in the status table.
//!
//! A stream is authenticated before anything is read from it: the caller's
//! bearer token must stand for a workload ([`WorkloadAuth`], the same check
//! as the CA's), the node's namespace must be the token's, so a proxy only
//! ever receives the view of its own namespace, and the node id must be one
//! of the token's workload ([`check_node_id`]), so a stream can never speak
//! for another workload's proxy. A client certificate presented over TLS
//! must be the token's workload. Requests are decoded up to
//! [`MAX_REQUEST_BYTES`], and what a client says is logged escaped.
//!
//! The token comes from the `authorization` header or, for clients that
//! cannot send one (gRPC's own xDS client), from `node.metadata.token` of
//! the first request ([`node_token`]); both go through the same check, the
//! same namespace and node-id rules, and the same revocation: a stream whose
//! token is revoked is ended with `UNAUTHENTICATED`.

use super::client_input::MAX_REQUEST_BYTES;
use super::debounce::{debounce, DebounceConfig};
use super::delta::DeltaStream;
use super::node_token::{node_token, NODE_TOKEN_FIELD};
use super::protocol::{Event, Step};
use super::scope::{self, Scopes, SidecarScope};
use super::snapshot::XdsSnapshot;
use super::sotw::SotwStream;
use super::view::{NodeSpec, ProxyView, ViewCache};
use super::wire::{GrpcMessage, ResponseBody, SotwResponse};
use crate::ca::tokens::TokenGrant;
use crate::ca::WorkloadAuth;
use crate::metrics::{Metrics, TypeLabels};
use crate::registry::Registry;
use crate::status::ProxyStatusTable;
use crate::transport::PeerInfo;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, BoxFuture, StdError};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Responses buffered per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 16;

/// First capacity of a stream's request buffer. Requests are ACKs of a
/// few hundred bytes (the first carries the node); tonic's default, 8 KiB,
/// was held by every stream for its life. A larger request grows it (up to
/// [`MAX_REQUEST_BYTES`]).
const REQUEST_BUFFER: usize = 1024;

/// How long a stream without an `authorization` header may take to send
/// its first request (which carries its token in the node).
const UNAUTHENTICATED_FIRST_REQUEST: Duration = Duration::from_secs(10);

/// The ADS service: cheap to clone, one per server.
#[derive(Clone, Debug)]
pub struct AdsService {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Arc<Registry>,
    snapshots: watch::Sender<Arc<XdsSnapshot>>,
    status: Arc<ProxyStatusTable>,
    metrics: Metrics,
    shutdown: CancellationToken,
    next_stream: AtomicU64,
    auth: WorkloadAuth,
    views: ViewCache,
    /// Held while a publisher reads the last snapshot and replaces it, so
    /// the registry's and the scopes' publishers never undo each other.
    publishing: std::sync::Mutex<()>,
}

/// The ADS gRPC service over [`AdsService`]: the generated
/// `AggregatedDiscoveryServiceServer` but for its responses, sent as a
/// [`ResponseBody`] — a state-of-the-world response's resources
/// ([`SotwResponse`]) are encoded once per view and sent by reference, and
/// no stream keeps a buffer of its own. Requests beyond
/// [`MAX_REQUEST_BYTES`] are refused.
#[derive(Clone, Debug)]
pub struct AdsServer {
    inner: AdsService,
    max_decoding: usize,
}

/// One of the two ADS protocols, as the stream driver sees it.
trait Machine: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: &'static str;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn type_url(req: &Self::Request) -> &str;
    fn on_request(&mut self, req: &Self::Request, view: &Arc<ProxyView>) -> Step<Self::Response>;
    fn on_view(&mut self, view: &Arc<ProxyView>) -> Step<Self::Response>;
}

type ResponseTx<R> = mpsc::Sender<Result<R, Status>>;

/// Who opened a stream: where it comes from, and its header token and what
/// that grants (`None` without an `authorization` header: the token is then
/// read from the first request's node, see [`node_token`]).
#[derive(Debug)]
struct Caller {
    peer: PeerInfo,
    header: Option<(String, TokenGrant)>,
}

// === impl AdsService ===

impl AdsService {
    /// A service publishing the registry's current state right away to the
    /// streams `auth` authenticates.
    pub fn new(
        registry: Arc<Registry>,
        status: Arc<ProxyStatusTable>,
        metrics: Metrics,
        shutdown: CancellationToken,
        auth: WorkloadAuth,
    ) -> AdsService {
        let state = registry.snapshot();
        let snapshot = XdsSnapshot::build(&state, state.written_at, None);
        AdsService {
            shared: Arc::new(Shared {
                registry,
                snapshots: watch::Sender::new(Arc::new(snapshot)),
                status,
                metrics,
                shutdown,
                next_stream: AtomicU64::new(1),
                auth,
                views: ViewCache::default(),
                publishing: std::sync::Mutex::new(()),
            }),
        }
    }

    /// The tonic server wrapping this service; it refuses requests larger
    /// than [`MAX_REQUEST_BYTES`].
    pub fn into_server(self) -> AdsServer {
        AdsServer::new(self)
    }

    /// Follows the registry, coalescing changes per `config`, and publishes
    /// each batch to every stream, until shutdown.
    pub async fn run_publisher(self, config: DebounceConfig) {
        let shared = self.shared.clone();
        let input = shared.registry.subscribe();
        debounce(
            config,
            input,
            shared.shutdown.clone(),
            move |state, first_change| {
                let _publishing = shared.publishing.lock().unwrap_or_else(|e| e.into_inner());
                let prev = shared.snapshots.borrow().clone();
                if prev.revision == state.revision {
                    shared.metrics.set_revision(state.revision);
                    return;
                }
                let snapshot = XdsSnapshot::build(&state, first_change, Some(&prev));
                tracing::debug!(revision = state.revision, "publishing to proxies");
                shared.snapshots.send_replace(Arc::new(snapshot));
                shared.status.note_published(state.revision, first_change);
            },
        )
        .await;
    }

    /// Follows the Sidecar scopes of both sources — applied through the API
    /// (`crate::istio::store::IstioStore::scopes`) and watched in the
    /// cluster (`crate::istio::watched::WatchedObjects::scopes`) — and
    /// publishes each new merged set ([`scope::merge`]) at once with the
    /// current resources, until shutdown or until both senders are gone.
    pub async fn run_scope_publisher(
        self,
        mut applied: watch::Receiver<Arc<Scopes>>,
        mut watched: watch::Receiver<Arc<Vec<SidecarScope>>>,
    ) {
        // Generations continue from what is published (the applied set,
        // before serving), so a new set is never mistaken for it.
        let mut current = (*self.shared.snapshots.borrow().scopes).clone();
        let (mut applied_open, mut watched_open) = (true, true);
        loop {
            let merged = scope::merge(
                &applied.borrow_and_update().scopes,
                &watched.borrow_and_update(),
            );
            let next = current.next(merged);
            if next.generation != current.generation {
                current = next;
                self.publish_scopes(Arc::new(current.clone()));
            }
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                r = applied.changed(), if applied_open => applied_open = r.is_ok(),
                r = watched.changed(), if watched_open => watched_open = r.is_ok(),
                else => return,
            }
        }
    }

    /// Publishes `scopes` to every stream with the current resources,
    /// unless they are the ones published (same generation). Called once
    /// before serving, so no stream starts unscoped.
    pub fn publish_scopes(&self, scopes: Arc<Scopes>) {
        let shared = &self.shared;
        let _publishing = shared.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let prev = shared.snapshots.borrow().clone();
        if prev.scopes.generation == scopes.generation {
            return;
        }
        tracing::info!(
            generation = scopes.generation,
            scopes = scopes.scopes.len(),
            "publishing sidecar scopes to proxies"
        );
        shared
            .snapshots
            .send_replace(Arc::new(prev.with_scopes(scopes)));
    }

    /// Runs the stream in its own task.
    fn spawn<M: Machine>(
        &self,
        machine: M,
        inbound: Streaming<M::Request>,
        caller: Caller,
    ) -> ReceiverStream<Result<M::Response, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(drive(self.shared.clone(), machine, inbound, tx, caller));
        ReceiverStream::new(rx)
    }

    /// Who calls: with an `authorization` header, the workload its token
    /// stands for (or the status refusing the stream); without one, the
    /// token is read from the first request's node ([`node_token`]).
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let peer = PeerInfo::of(request.extensions());
        let header = match WorkloadAuth::bearer(request.metadata()) {
            Some(token) => {
                let grant = self.shared.authenticate(Some(&token), &peer).await?;
                Some((token, grant))
            }
            None => None,
        };
        Ok(Caller { peer, header })
    }

    fn stream_id(&self) -> u64 {
        self.shared.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// `StreamAggregatedResources`.
    async fn sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ReceiverStream<Result<SotwResponse, Status>>>, Status> {
        let caller = self.caller(&request).await?;
        let machine = SotwStream::new(self.stream_id());
        Ok(Response::new(self.spawn(
            machine,
            request.into_inner(),
            caller,
        )))
    }

    /// `DeltaAggregatedResources`.
    async fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ReceiverStream<Result<DeltaDiscoveryResponse, Status>>>, Status> {
        let caller = self.caller(&request).await?;
        let machine = DeltaStream::new(self.stream_id());
        Ok(Response::new(self.spawn(
            machine,
            request.into_inner(),
            caller,
        )))
    }
}

// === impl AdsServer ===

impl AdsServer {
    fn new(inner: AdsService) -> AdsServer {
        AdsServer {
            inner,
            max_decoding: MAX_REQUEST_BYTES,
        }
    }
}

impl tonic::server::NamedService for AdsServer {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let max = Some(self.max_decoding);
        match req.uri().path() {
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources" => {
                Box::pin(async move {
                    let request = streaming_request::<DiscoveryRequest, B>(req, max);
                    Ok(grpc_response(inner.sotw(request).await))
                })
            }
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources" => {
                Box::pin(async move {
                    let request = streaming_request::<DeltaDiscoveryRequest, B>(req, max);
                    Ok(grpc_response(inner.delta(request).await))
                })
            }
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}

/// The request stream of a call, its messages decoded up to `max` bytes
/// (uncompressed: the server announces no compression).
fn streaming_request<T, B>(req: http::Request<B>, max: Option<usize>) -> Request<Streaming<T>>
where
    T: prost::Message + Default + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let settings = tonic::codec::BufferSettings::new(REQUEST_BUFFER, 32 * 1024);
    let decoder = tonic_prost::ProstDecoder::<T>::new(settings);
    let stream = Streaming::new_request(decoder, body, None, max);
    Request::from_http(http::Request::from_parts(parts, stream))
}

/// The HTTP response of a call: its responses as a [`ResponseBody`]
/// (each message's shared bytes sent as they are), or the status that
/// refused the stream.
fn grpc_response<R: GrpcMessage + Send + 'static>(
    response: Result<Response<ReceiverStream<Result<R, Status>>>, Status>,
) -> http::Response<tonic::body::Body> {
    let response = match response {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, responses, extensions) = response.into_parts();
    let mut http = http::Response::new(tonic::body::Body::new(ResponseBody::new(responses)));
    *http.headers_mut() = metadata.into_headers();
    *http.extensions_mut() = extensions;
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    http
}

// === impl Shared ===

impl Shared {
    /// The workload `token` stands for (checked against the client
    /// certificate `peer` proved, if any), or the status refusing the stream.
    async fn authenticate(
        &self,
        token: Option<&str>,
        peer: &PeerInfo,
    ) -> Result<TokenGrant, Status> {
        self.auth
            .authenticate_caller(token, peer.identity.as_ref())
            .await
            .inspect(|grant| {
                let client = peer.identity.as_ref().map(ToString::to_string);
                tracing::info!(
                    peer = %peer.remote_display(),
                    namespace = %grant.namespace,
                    service_account = %grant.service_account,
                    client_certificate = %client.as_deref().unwrap_or("none"),
                    "xds stream authenticated"
                );
            })
            .map_err(|e| {
                self.metrics.stream_rejected(e.reason());
                tracing::warn!(peer = %peer.remote_display(), error = %e, "xds stream refused");
                e.to_status("xds stream")
            })
    }

    /// The snapshot a new stream starts from: the registry's current state,
    /// not the last debounced publication, so a proxy connecting right after
    /// a write gets it at once. Not published to other streams: their pushes
    /// stay debounced.
    fn current_snapshot(
        &self,
        published: &mut watch::Receiver<Arc<XdsSnapshot>>,
    ) -> Arc<XdsSnapshot> {
        let published = published.borrow_and_update().clone();
        let state = self.registry.snapshot();
        if state.revision <= published.revision {
            return published;
        }
        Arc::new(XdsSnapshot::build(
            &state,
            state.written_at,
            Some(&published),
        ))
    }
}

// === impl Machine ===

impl Machine for SotwStream {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    const PROTOCOL: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }
    fn on_request(&mut self, req: &DiscoveryRequest, view: &Arc<ProxyView>) -> Step<SotwResponse> {
        SotwStream::on_request(self, req, view)
    }
    fn on_view(&mut self, view: &Arc<ProxyView>) -> Step<SotwResponse> {
        SotwStream::on_view(self, view)
    }
}

impl Machine for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "delta";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        view: &Arc<ProxyView>,
    ) -> Step<DeltaDiscoveryResponse> {
        DeltaStream::on_request(self, req, view)
    }
    fn on_view(&mut self, view: &Arc<ProxyView>) -> Step<DeltaDiscoveryResponse> {
        DeltaStream::on_view(self, view)
    }
}

/// Runs one stream until the client goes away or the server shuts down.
async fn drive<M: Machine>(
    shared: Arc<Shared>,
    machine: M,
    mut inbound: Streaming<M::Request>,
    tx: ResponseTx<M::Response>,
    caller: Caller,
) {
    // A stream not yet authenticated (its token is to come in the node)
    // gets a deadline for its first request, so it cannot sit idle.
    let first_deadline = match caller.header {
        Some(_) => None,
        None => Some(Instant::now() + UNAUTHENTICATED_FIRST_REQUEST),
    };
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        m = inbound.message() => m,
        _ = sleep_until_some(first_deadline) => {
            shared.metrics.stream_rejected("missing");
            tracing::warn!(peer = %caller.peer.remote_display(), "xds stream refused: no token and no first request in time");
            let status = Status::unauthenticated(format!(
                "xds stream: no authorization header and no first request (with \
                 node.metadata.{NODE_TOKEN_FIELD}) within {UNAUTHENTICATED_FIRST_REQUEST:?}"
            ));
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let first = match first {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(status) => {
            // E.g. a request over `MAX_REQUEST_BYTES`: say so to the client.
            tracing::debug!(%status, "xds stream failed before its first request");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut spec = match NodeSpec::from_node(M::node(&first)) {
        Ok(spec) => spec,
        Err(error) => {
            shared.metrics.stream_rejected("node");
            tracing::warn!(%error, "rejecting xds stream");
            let _ = tx
                .send(Err(Status::invalid_argument(error.to_string())))
                .await;
            return;
        }
    };
    let (token, grant) = match caller.header {
        Some(header) => header,
        None => {
            let token = node_token(M::node(&first));
            match shared.authenticate(token.as_deref(), &caller.peer).await {
                Ok(grant) => (token.unwrap_or_default(), grant),
                Err(status) => {
                    let message = format!(
                        "{}, or in the node metadata field {NODE_TOKEN_FIELD:?} from clients \
                         that cannot send headers",
                        status.message()
                    );
                    let _ = tx.send(Err(Status::new(status.code(), message))).await;
                    return;
                }
            }
        }
    };
    let checks = [
        ("namespace", check_namespace(&spec, &grant)),
        ("node_id", check_node_id(&spec, &grant)),
    ];
    for (reason, check) in checks {
        if let Err(status) = check {
            shared.metrics.stream_rejected(reason);
            tracing::warn!(node = %spec.id, message = status.message(), "rejecting xds stream");
            let _ = tx.send(Err(status)).await;
            return;
        }
    }
    spec.service_account = grant.service_account;
    spec.peer_ip = caller.peer.remote.map(|p| p.ip());
    let span = tracing::info_span!("xds", node = %spec.id, protocol = M::PROTOCOL);
    let auth = shared.auth.clone();
    let ended = tx.clone();
    let stream = run_stream(shared, machine, spec, first, inbound, tx).instrument(span.clone());
    tokio::select! {
        _ = stream => {}
        _ = auth.until_revoked(&token) => {
            span.in_scope(|| tracing::warn!("xds stream ended: its token was revoked"));
            let status = Status::unauthenticated("xds stream: the token was revoked");
            let _ = ended.send(Err(status)).await;
        }
    }
}

async fn run_stream<M: Machine>(
    shared: Arc<Shared>,
    mut machine: M,
    spec: NodeSpec,
    first: M::Request,
    mut inbound: Streaming<M::Request>,
    tx: ResponseTx<M::Response>,
) {
    let mut snapshots = shared.snapshots.subscribe();
    let mut view = shared
        .views
        .view(&shared.current_snapshot(&mut snapshots), &spec);
    let conn = shared.status.connect(&spec, M::PROTOCOL, &view);
    tracing::info!(namespace = %spec.namespace, services = view.services.len(), serves = ?view.serves, "proxy connected");
    let mut next = Some(first);
    loop {
        let (step, cause) = match next.take() {
            Some(req) => {
                tracing::trace!(type_url = M::type_url(&req), "request");
                (machine.on_request(&req, &view), Instant::now())
            }
            None => tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let mut snapshot = snapshots.borrow_and_update().clone();
                    if snapshot.revision < view.revision
                        && snapshot.scopes.generation > view.scopes_generation
                    {
                        // New scopes published on a revision behind the
                        // one this stream started from: keep its revision.
                        snapshot = shared.current_snapshot(&mut snapshots);
                    }
                    if !snapshot.is_newer_than(view.revision, view.scopes_generation) {
                        // Already seen when the stream started ahead of the
                        // publisher (see `current_snapshot`).
                        continue;
                    }
                    view = shared.views.view(&snapshot, &spec);
                    (machine.on_view(&view), view.written_at)
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        next = Some(req);
                        continue;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "xds stream ended");
                        break;
                    }
                },
            },
        };
        for event in &step.events {
            log_event(event);
            conn.record_event(event);
        }
        for (sent, resp) in step.pushes {
            if tx.send(Ok(resp)).await.is_err() {
                tracing::debug!("client went away");
                return;
            }
            shared.metrics.pushed(
                TypeLabels {
                    type_name: sent.type_url.short_name(),
                },
                cause.elapsed(),
            );
            tracing::debug!(type_url = sent.type_url.as_str(), version = %sent.version, nonce = %sent.nonce, resources = sent.resources.len(), "sent");
            conn.record_sent(&sent);
        }
        for resp in step.untracked {
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
        for sent in &step.resumed {
            // The client holds this version already (it resumed here, e.g.
            // from another replica): recorded as sent and ACKed, not sent.
            shared.metrics.resumed(TypeLabels {
                type_name: sent.type_url.short_name(),
            });
            tracing::debug!(type_url = sent.type_url.as_str(), version = %sent.version, resources = sent.resources.len(), "resumed: the client holds the current version");
            conn.record_sent(sent);
            conn.record_event(&Event::Ack {
                type_url: sent.type_url,
                version: sent.version.clone(),
            });
        }
        // After the pushes, so a view is never marked synced before what it
        // changed was sent.
        conn.record_view(&view);
    }
    tracing::info!("proxy disconnected");
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Node ids are `<service_account>.<namespace>` (one proxy per workload
/// identity) or `<service_account>.<namespace>~<instance>` (several), where
/// service account and namespace are the token's: a stream can only speak
/// for a proxy of its own workload.
fn check_node_id(spec: &NodeSpec, grant: &TokenGrant) -> Result<(), Status> {
    let owner = format!("{}.{}", grant.service_account, grant.namespace);
    let instance = spec
        .id
        .strip_prefix(&owner)
        .map(|rest| rest.strip_prefix('~'));
    match instance {
        Some(None) if spec.id.len() == owner.len() => return Ok(()),
        Some(Some(i)) if !i.is_empty() => return Ok(()),
        _ => {}
    }
    Err(Status::permission_denied(format!(
        "node id {:?} is not one of the token's workload {}/{}: node ids are \
         <service_account>.<namespace>[~<instance>], here {owner:?} or \"{owner}~<instance>\"",
        spec.id, grant.namespace, grant.service_account
    )))
}

/// A token stands for one namespace; its proxy may only ask for that
/// namespace's view.
fn check_namespace(spec: &NodeSpec, grant: &TokenGrant) -> Result<(), Status> {
    if spec.namespace == grant.namespace {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "node {:?} asks for namespace {:?} (node.metadata.namespace), but its token stands for \
         {}/{}",
        spec.id, spec.namespace, grant.namespace, grant.service_account
    )))
}

/// Logs what a client told us. The state machines bounded and escaped
/// its strings ([`super::client_input::shown`]) when they made the event, so they can never end
/// the line or carry terminal escapes.
fn log_event(event: &Event) {
    match event {
        Event::Ack { type_url, version } => {
            tracing::debug!(type_url = type_url.as_str(), %version, "ack");
        }
        Event::Nack {
            type_url,
            version,
            reason,
        } => {
            tracing::warn!(type_url = type_url.as_str(), %version, %reason, "nack");
        }
        Event::Stale { type_url, nonce } => {
            tracing::debug!(type_url = type_url.as_str(), %nonce, "stale request ignored");
        }
        Event::UnknownType { type_url } => {
            tracing::warn!(
                %type_url,
                "request for a type this server does not serve: its first request gets an \
                 empty response, later ones are ignored"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_only_opens_the_view_of_its_own_namespace() {
        let grant = TokenGrant {
            namespace: "shop".into(),
            service_account: "web".into(),
        };
        assert!(check_namespace(&NodeSpec::new("web-1", "shop", &[]), &grant).is_ok());
        let err = check_namespace(&NodeSpec::new("web-1", "bank", &[]), &grant).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("\"bank\""), "{}", err.message());
        assert!(err.message().contains("shop/web"), "{}", err.message());
    }

    #[test]
    fn a_token_only_opens_node_ids_of_its_own_workload() {
        let grant = TokenGrant {
            namespace: "shop".into(),
            service_account: "web".into(),
        };
        for ok in ["web.shop", "web.shop~web-7c9f-x2", "web.shop~1"] {
            check_node_id(&NodeSpec::new(ok, "shop", &[]), &grant).unwrap();
        }
        for hijack in [
            "db.shop",
            "web.shop~",
            "web.shopx",
            "web",
            "web.shop.x~1",
            "x~web.shop",
        ] {
            let err = check_node_id(&NodeSpec::new(hijack, "shop", &[]), &grant).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{hijack}");
            assert!(
                err.message().contains("\"web.shop~<instance>\""),
                "{}",
                err.message()
            );
        }
    }
}
