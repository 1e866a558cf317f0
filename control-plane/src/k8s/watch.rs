//! The kube-rs watchers (`--kubernetes`): one per watched kind, feeding one
//! [`ObjectStore`]; once every kind is listed and changes settle, the store
//! is converted ([`convert_with_istio`]: cluster objects, then Istio and
//! Gateway API objects) and [`KubeSource::sync`]ed into the registry; then
//! the Istio objects' findings and the `sane.mesh` objects' versions are
//! published (the API shows the first, and [`super::crd_store`] waits on
//! the second), and what Sane made of each Istio object is written to its
//! `status` ([`object_status`]). A change of an object's status alone
//! (Sane's own write, seen by the watch) does not convert again.
//!
//! Everything this loop decides is in the store and the source, which the
//! tests drive with recorded events; this file only moves events. Watch
//! errors are retried with kube-runtime's default backoff; a CRD that is
//! not installed (a `sane.mesh` one, or an Istio or Gateway API kind in
//! none of the versions users write) — or, for the Istio kinds, one the
//! service account may not list — is skipped with one warning (its kind
//! counts as listed and empty) rather than blocking the first sync
//! forever; installing it takes a restart.

use super::crd::PolicyKind;
use super::crd_store::Versions;
use super::istio_source::convert_with_istio;
use super::object_status;
use super::source::{KubeSource, SourceSettings};
use super::store::{KubeObject, ObjectKind, ObjectStore, StoreEvent};
use crate::istio::object::ObjectKind as IstioKind;
use crate::istio::watched::WatchedObjects;
use crate::registry::Registry;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, TypeMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Sync once events have been quiet this long…
const QUIET: Duration = Duration::from_millis(100);
/// …or at the latest this long after the first of a batch.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The API access the control plane needs (`deploy/kubernetes` grants
/// exactly this; a test checks it): group, resource, verbs.
pub const REQUIRED_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    // Watched, and written by the API (crd_store).
    (
        "sane.mesh",
        "routes",
        &["list", "watch", "get", "create", "update", "delete"],
    ),
    (
        "sane.mesh",
        "destinationpolicies",
        &["list", "watch", "get", "create", "update", "delete"],
    ),
    (
        "sane.mesh",
        "authorizationpolicies",
        &["list", "watch", "get", "create", "update", "delete"],
    ),
    ("sane.mesh", "peerauthentications", &["list", "watch"]),
    // Istio and Gateway API inputs (istio_source).
    ("networking.istio.io", "virtualservices", &["list", "watch"]),
    (
        "networking.istio.io",
        "destinationrules",
        &["list", "watch"],
    ),
    ("networking.istio.io", "serviceentries", &["list", "watch"]),
    ("networking.istio.io", "sidecars", &["list", "watch"]),
    ("networking.istio.io", "gateways", &["list", "watch"]),
    (
        "security.istio.io",
        "peerauthentications",
        &["list", "watch"],
    ),
    (
        "security.istio.io",
        "authorizationpolicies",
        &["list", "watch"],
    ),
    ("gateway.networking.k8s.io", "gateways", &["list", "watch"]),
    (
        "gateway.networking.k8s.io",
        "httproutes",
        &["list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        "grpcroutes",
        &["list", "watch"],
    ),
    // What Sane made of them, written to their status (object_status).
    ("networking.istio.io", "virtualservices/status", &["patch"]),
    ("networking.istio.io", "destinationrules/status", &["patch"]),
    ("networking.istio.io", "serviceentries/status", &["patch"]),
    ("networking.istio.io", "sidecars/status", &["patch"]),
    ("networking.istio.io", "gateways/status", &["patch"]),
    (
        "security.istio.io",
        "peerauthentications/status",
        &["patch"],
    ),
    (
        "security.istio.io",
        "authorizationpolicies/status",
        &["patch"],
    ),
    ("gateway.networking.k8s.io", "gateways/status", &["patch"]),
    ("gateway.networking.k8s.io", "httproutes/status", &["patch"]),
    ("gateway.networking.k8s.io", "grpcroutes/status", &["patch"]),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["get", "update"],
    ),
];

/// The API versions of each Istio and Gateway API group users still
/// write, newest first: the first one the cluster serves is watched.
const ISTIO_VERSIONS: &[(&str, &[&str])] = &[
    ("networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("security.istio.io", &["v1", "v1beta1"]),
    ("gateway.networking.k8s.io", &["v1", "v1beta1"]),
];

/// Where the loop publishes besides the registry.
#[derive(Debug)]
pub struct Outputs {
    /// How cluster objects are converted.
    pub settings: SourceSettings,
    /// The Istio objects' conversions, for the API and the status.
    pub watched: Arc<WatchedObjects>,
    /// The `sane.mesh` objects' versions in the registry, after each sync.
    pub synced: watch::Sender<Arc<Versions>>,
}

/// Watches the cluster into `registry` until `shutdown`.
pub async fn run(
    client: kube::Client,
    registry: Arc<Registry>,
    outputs: Outputs,
    shutdown: CancellationToken,
) {
    let settings = outputs.settings;
    let (tx, mut rx) = mpsc::channel::<StoreEvent>(1024);
    let mut store = ObjectStore::new();
    let mut kinds = vec![
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Pod,
    ];
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follow(
        watcher(Api::<Service>::all(client.clone())),
        ObjectKind::Service,
        |s| KubeObject::Service(Box::new(s)),
        tx.clone(),
    ));
    tasks.spawn(follow(
        watcher(Api::<EndpointSlice>::all(client.clone())),
        ObjectKind::EndpointSlice,
        |s| KubeObject::EndpointSlice(Box::new(s)),
        tx.clone(),
    ));
    tasks.spawn(follow(
        watcher(Api::<Pod>::all(client.clone())),
        ObjectKind::Pod,
        |p| KubeObject::Pod(Box::new(p)),
        tx.clone(),
    ));
    for kind in PolicyKind::ALL {
        let object_kind = ObjectKind::Policy(kind);
        kinds.push(object_kind);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!(
                    crd = format!("{}.{}", kind.plural(), super::crd::GROUP),
                    "CRD not installed; these objects are ignored until a restart"
                );
                store.handle(StoreEvent::RelistStart(object_kind));
                store.handle(StoreEvent::RelistDone(object_kind));
                continue;
            }
            // Anything else the watcher retries and reports.
            _ => {}
        }
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tasks.spawn(follow(
            stream,
            object_kind,
            move |o| KubeObject::Policy(kind, Box::new(o)),
            tx.clone(),
        ));
    }
    for kind in IstioKind::ALL {
        let object_kind = ObjectKind::Istio(kind);
        kinds.push(object_kind);
        let Some(resource) = served(&client, kind).await else {
            store.handle(StoreEvent::RelistStart(object_kind));
            store.handle(StoreEvent::RelistDone(object_kind));
            continue;
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let types = TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        };
        tasks.spawn(follow(
            watcher::watcher(api, watcher::Config::default()).default_backoff(),
            object_kind,
            move |mut o: DynamicObject| {
                // List items may come without their type.
                o.types.get_or_insert_with(|| types.clone());
                let json = serde_json::to_value(o).unwrap_or_default();
                KubeObject::Istio(kind, Box::new(json))
            },
            tx.clone(),
        ));
    }
    drop(tx);

    let mut source = Some(KubeSource::new(registry.clone()));
    let mut logged_listed = false;
    // Whether an event since the last sync may change the conversion.
    let mut dirty = false;
    let mut sent = object_status::Sent::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        dirty |= store.handle(event);
        // Coalesce a burst (a relist is thousands of events).
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(QUIET) => break,
                _ = tokio::time::sleep_until(deadline) => break,
                e = rx.recv() => match e { Some(e) => dirty |= store.handle(e), None => break },
            }
        }
        if !dirty || !store.is_listed(&kinds) {
            continue;
        }
        dirty = false;
        if !logged_listed {
            tracing::info!(
                pods = store.pod_count(),
                "kubernetes objects listed; syncing the registry"
            );
            logged_listed = true;
        }
        let (converted, watched) = convert_with_istio(&store, &settings, &registry.snapshot());
        object_status::forget_gone(&mut sent, &watched);
        let now = k8s_openapi::chrono::Utc::now()
            .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        let status_writes = object_status::plan(&store, &settings, &watched, &sent, &now);
        let versions = store.policy_versions();
        let Some(mut s) = source.take() else { break };
        // The registry's store fsyncs: keep it off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let result = s.sync(converted);
            (s, result)
        })
        .await;
        match done {
            Ok((s, result)) => {
                source = Some(s);
                outputs.watched.replace(watched);
                outputs.synced.send_replace(Arc::new(versions));
                match result {
                    Ok(report) => {
                        if report.writes > 0 {
                            tracing::debug!(
                                writes = report.writes,
                                "registry synced from kubernetes"
                            );
                        }
                        // What the objects became is in effect: say so.
                        object_status::write(&client, status_writes, &mut sent).await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "writing kubernetes objects to the registry failed")
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "kubernetes sync panicked; no longer following the cluster");
                break;
            }
        }
    }
    tasks.abort_all();
}

/// The first version of `kind` the cluster serves; `None` (logged once)
/// when its CRD is not installed or the service account may not list it.
async fn served(client: &kube::Client, kind: IstioKind) -> Option<ApiResource> {
    let versions = ISTIO_VERSIONS
        .iter()
        .find(|(group, _)| *group == kind.group())
        .map_or(&[][..], |(_, v)| *v);
    let plural = kind.plural().split('.').next().unwrap_or_default();
    let crd = format!("{plural}.{}", kind.group());
    for version in versions {
        let gvk = GroupVersionKind::gvk(kind.group(), version, kind.name());
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::warn!(%crd, message = %e.message, "not allowed to list these objects; they are ignored until a restart");
                return None;
            }
            // Anything else the watcher retries and reports.
            _ => return Some(resource),
        }
    }
    tracing::info!(%crd, "CRD not installed (in none of {versions:?}); these objects are ignored until a restart");
    None
}

fn watcher<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// Forwards one watcher's events to the store's loop.
async fn follow<K, S>(
    stream: S,
    kind: ObjectKind,
    wrap: impl Fn(K) -> KubeObject + Send + 'static,
    tx: mpsc::Sender<StoreEvent>,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(Event::Init) => StoreEvent::RelistStart(kind),
            Ok(Event::InitApply(o) | Event::Apply(o)) => StoreEvent::Apply(wrap(o)),
            Ok(Event::Delete(o)) => StoreEvent::Delete(wrap(o)),
            Ok(Event::InitDone) => StoreEvent::RelistDone(kind),
            Err(error) => {
                tracing::warn!(?kind, %error, "kubernetes watch failed; retrying");
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
