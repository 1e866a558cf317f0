//! The mutating admission webhook: `POST /inject` with an AdmissionReview
//! (admission.k8s.io/v1) for a pod being created, answered with the
//! [`inject`](super::inject) result as a JSONPatch, over HTTPS.
//!
//! Which pods get here is the MutatingWebhookConfiguration's business
//! (deploy/kubernetes: pods created in namespaces labelled
//! `sane.mesh/inject=enabled`); the handler itself only skips what injection
//! skips. Answers:
//!
//! * a pod to mesh: `allowed: true` and a JSONPatch computed between the
//!   object as received and the [`overlay`](super::manifest::overlay) of the
//!   injection onto it, so fields this build does not know are never touched;
//! * a pod that cannot be meshed (its containers use the proxy's ports, …):
//!   `allowed: false` with the reason, which `kubectl` shows;
//! * anything else (not a pod, not a CREATE, opted out, already injected):
//!   `allowed: true`, no patch;
//! * a body that is not an AdmissionReview with a request: HTTP 400 with
//!   `{"error": …}` (there is no uid to answer to).
//!
//! The serving certificate comes from the mesh CA
//! ([`sane_certs::CertificateAuthority::sign_server_cert`]) for
//! `<service>.<namespace>.svc`, and is renewed at two thirds of its life
//! without dropping the listener; the API server trusts it through the
//! configuration's `caBundle`, which [`publish_ca_bundle`] writes.

use super::error::KubeError;
use super::inject::{workload_name, Decision, Injector, PodContext};
use super::manifest::{overlay, typed_template};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::ByteString;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use rand::Rng;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sane_certs::CertificateAuthority;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Path the webhook serves.
pub const PATH: &str = "/inject";
/// Largest accepted AdmissionReview (a pod is at most 1.5 MiB in etcd).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Lifetime of the serving certificate.
pub const CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(String);

/// The webhook with its listener bound and its certificate issued.
#[derive(Debug)]
pub struct WebhookServer {
    listener: TcpListener,
    addr: SocketAddr,
    cert: Arc<RotatingCert>,
    injector: Arc<Injector>,
}

/// The serving certificate, swapped on renewal; what rustls asks for each
/// handshake.
#[derive(Debug)]
pub struct RotatingCert {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

/// Answers one AdmissionReview body: the response review, or why the body
/// cannot be answered.
pub fn review(injector: &Injector, body: &[u8]) -> Result<Value, BadReview> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
    let parsed: AdmissionReview<DynamicObject> = serde_json::from_value(raw.clone())
        .map_err(|e| BadReview(format!("not an AdmissionReview: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = parsed
        .try_into()
        .map_err(|_| BadReview("the AdmissionReview has no request".into()))?;
    let response = AdmissionResponse::from(&request);
    let response = match mutate(injector, &request, &raw["request"]["object"]) {
        Ok(None) => response,
        Ok(Some(patch)) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::from(&request).deny(e)),
        Err(reason) => {
            tracing::info!(
                namespace = request.namespace.as_deref().unwrap_or(""),
                name = %request.name,
                %reason,
                "pod refused by the injector"
            );
            response.deny(reason)
        }
    };
    let mut out = serde_json::to_value(response.into_review())
        .map_err(|e| BadReview(format!("encoding the response: {e}")))?;
    // Answer in the version asked (v1 is the only one the config allows).
    out["apiVersion"] = raw["apiVersion"].clone();
    // kube-core writes the patch as an array of numbers; Kubernetes
    // documents (and every other webhook sends) a base64 string.
    if let Some(Value::Array(numbers)) = out["response"].get("patch") {
        let bytes: Vec<u8> = numbers
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        out["response"]["patch"] = Value::String(base64(&bytes));
    }
    Ok(out)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The patch for one request; `Ok(None)` when it is let through unchanged.
fn mutate(
    injector: &Injector,
    request: &AdmissionRequest<DynamicObject>,
    object: &Value,
) -> Result<Option<json_patch::Patch>, String> {
    if request.kind.kind != "Pod" || request.operation != Operation::Create {
        return Ok(None);
    }
    if !object.is_object() {
        return Err("the request carries no pod object".into());
    }
    let mut pod: serde_yaml::Value =
        serde_yaml::to_value(object).map_err(|e| format!("reading the pod: {e}"))?;
    let template = typed_template(&pod)
        .map_err(|(path, message)| format!("the pod is not valid: {path}: {message}"))?;
    let meta = template.metadata.unwrap_or_default();
    let spec = template.spec.unwrap_or_default();
    let namespace = request
        .namespace
        .clone()
        .or_else(|| meta.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let generate = meta.generate_name.clone().unwrap_or_default();
    let node_id = match meta.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        // The API server names the pod after admission; the proxy's node
        // id only has to be unique, so make one up the same way.
        None => format!("{generate}{}", random_suffix()),
    };
    let fallback = generate.trim_end_matches('-');
    let ctx = PodContext {
        namespace,
        workload: workload_name(
            &meta,
            if fallback.is_empty() {
                &node_id
            } else {
                fallback
            },
        ),
        node_id,
    };
    let injected = match injector
        .inject(&meta, &spec, &ctx)
        .map_err(|e| e.to_string())?
    {
        Decision::Injected(injected) => injected,
        Decision::Skipped(_) => return Ok(None),
    };
    overlay(&mut pod, &injected)?;
    let mutated = serde_json::to_value(&pod).map_err(|e| format!("encoding the pod: {e}"))?;
    Ok(Some(json_patch::diff(object, &mutated)))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The webhook's HTTP routes (no TLS; [`WebhookServer`] adds it).
pub fn router(injector: Arc<Injector>) -> Router {
    Router::new()
        .route(PATH, post(handle))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(injector)
}

async fn handle(State(injector): State<Arc<Injector>>, body: Bytes) -> Response {
    match review(&injector, &body) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "malformed admission review");
            (StatusCode::BAD_REQUEST, Json(json!({ "error": e.0 }))).into_response()
        }
    }
}

/// Writes `bundle_pem` as the `caBundle` of every webhook of the
/// MutatingWebhookConfiguration `name`, so the API server trusts the mesh
/// CA's serving certificate.
pub async fn publish_ca_bundle(
    client: kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<(), KubeError> {
    let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client);
    let mut config = api
        .get(name)
        .await
        .map_err(|e| KubeError::api(format!("reading MutatingWebhookConfiguration {name}"), e))?;
    let bundle = ByteString(bundle_pem.as_bytes().to_vec());
    let webhooks = config.webhooks.get_or_insert_with(Vec::new);
    if webhooks.is_empty() {
        return Err(KubeError::WebhookConfig {
            name: name.into(),
            message: "it declares no webhooks".into(),
        });
    }
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle))
    {
        return Ok(());
    }
    for w in webhooks.iter_mut() {
        w.client_config.ca_bundle = Some(bundle.clone());
    }
    api.replace(name, &Default::default(), &config)
        .await
        .map_err(|e| KubeError::api(format!("writing the caBundle of {name}"), e))?;
    tracing::info!(config = name, "webhook caBundle updated");
    Ok(())
}

// === impl RotatingCert ===

impl RotatingCert {
    /// Issues the first certificate for `names`.
    pub fn issue(ca: Arc<CertificateAuthority>, names: Vec<String>) -> Result<Self, KubeError> {
        let (key, not_after) = Self::sign(&ca, &names)?;
        Ok(RotatingCert {
            ca,
            names,
            current: RwLock::new((key, not_after)),
        })
    }

    fn sign(
        ca: &CertificateAuthority,
        names: &[String],
    ) -> Result<(Arc<CertifiedKey>, SystemTime), KubeError> {
        let cert =
            ca.sign_server_cert(names, CERT_TTL)
                .map_err(|source| KubeError::WebhookCert {
                    names: names.to_vec(),
                    source: Box::new(source),
                })?;
        tracing::info!(names = ?names, serial = %cert.serial(), "webhook serving certificate issued");
        Ok((cert.certified_key(), cert.not_after()))
    }

    /// When the current certificate should be replaced: two thirds into its
    /// life.
    pub fn renew_at(&self) -> SystemTime {
        let (_, not_after) = *self.current.read().unwrap_or_else(|e| e.into_inner());
        not_after - CERT_TTL / 3
    }

    /// Replaces the certificate with a fresh one.
    pub fn renew(&self) -> Result<(), KubeError> {
        let next = Self::sign(&self.ca, &self.names)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// Renews at [`Self::renew_at`] until `shutdown`; a failure is retried a
    /// minute later (the old certificate is still valid for days).
    pub async fn run_renewal(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = self
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = self.renew() {
                tracing::error!(%error, "renewing the webhook certificate failed; retrying in 1m");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

// === impl WebhookServer ===

impl WebhookServer {
    /// Binds `addr` and issues the serving certificate for `names`.
    pub async fn bind(
        addr: SocketAddr,
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
        injector: Arc<Injector>,
    ) -> Result<WebhookServer, KubeError> {
        let cert = Arc::new(RotatingCert::issue(ca, names)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| KubeError::WebhookBind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| KubeError::WebhookBind { addr, source })?;
        Ok(WebhookServer {
            listener,
            addr,
            cert,
            injector,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves HTTPS until `shutdown`; renews the certificate meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KubeError> {
        let config =
            sane_certs::ca::server_config_with_resolver(self.cert.clone()).map_err(|source| {
                KubeError::WebhookCert {
                    names: self.cert.names.clone(),
                    source: Box::new(source),
                }
            })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let renewal = tokio::spawn(self.cert.clone().run_renewal(shutdown.clone()));
        let app = router(self.injector);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(%error, "webhook accept failed");
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(error) = r {
                        tracing::debug!(%peer, %error, "webhook connection error");
                    },
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
        while connections.join_next().await.is_some() {}
        renewal.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::inject::InjectConfig;

    fn injector() -> Injector {
        Injector::new(InjectConfig::default())
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            &b"not json"[..],
            br#"{"kind": "AdmissionReview"}"#,
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}"#,
        ] {
            let err = review(&injector(), body).unwrap_err();
            assert!(!err.0.is_empty());
        }
    }

    #[test]
    fn other_operations_and_kinds_pass_unchanged() {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "operation": "DELETE",
                "userInfo": {},
                "oldObject": { "metadata": { "name": "x" }, "spec": { "containers": [] } }
            }
        });
        let out = review(&injector(), body.to_string().as_bytes()).unwrap();
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn suffixes_look_like_the_api_servers() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
