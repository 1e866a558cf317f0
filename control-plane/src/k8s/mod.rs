//! Kubernetes: sidecar injection, the registry source, and service-account
//! authentication for the CA (cargo feature `kubernetes`, on by default).
//!
//! Along the life of a meshed pod:
//!
//! * [`inject`] turns a pod (or a workload's pod template) into a meshed one:
//!   a pure function, shared by `sanectl inject` ([`manifest`], for YAML
//!   files) and the admission [`webhook`] (for pods created in namespaces
//!   labelled `sane.mesh/inject=enabled`); [`probes`] rewrites the app's
//!   probes so they keep working under STRICT mTLS.
//! * [`source`] converts what the cluster holds (Services, EndpointSlices,
//!   Pods, and the `sane.mesh/v1` custom resources of [`crd`]) into registry
//!   resources — a pure function over an object [`store`] — and keeps the
//!   registry in step with it; [`istio_source`] converts the cluster's Istio
//!   and Gateway API objects the same way `sanectl apply` does; [`watch`] is
//!   the kube-rs loop that feeds the store (it runs only with
//!   `--kubernetes`).
//! * [`crd_store`] makes the cluster the API's store: writes of routes and
//!   policies become writes of `sane.mesh/v1` objects, which every replica
//!   sees through its watch; [`ca_secret`] reads the CA all replicas sign
//!   with from a Secret (`--ca-secret`).
//! * [`token_review`] authenticates a sidecar's projected service-account
//!   token to the CA through the TokenReview API, as an alternative to
//!   bootstrap tokens.
//!
//! The kube-rs and k8s-openapi dependencies stay inside this module; the rest
//! of the control plane sees registry resources and `TokenGrant`s.
//!
//! # The injected pod
//!
//! | What | Name | Why |
//! | --- | --- | --- |
//! | init container, runs first | `sane-init` | `sane-proxy iptables install …`: redirects the pod's TCP to the proxy (needs `NET_ADMIN`, `NET_RAW`) |
//! | native sidecar (init container with `restartPolicy: Always`), second | `sane-proxy` | starts (and passes its startup probe) before the app's init containers and containers, stops after them |
//! | volume (downward API) | `sane-bootstrap` | the pod's annotation `sane.mesh/bootstrap` as `/etc/sane/bootstrap.yaml`: the proxy's `--config` |
//! | volume (projected token) | `sane-token` | a service-account token for audience `sane-mesh`, as `/var/run/secrets/sane.mesh/token`: authenticates to the CA (TokenReview) and xDS |
//! | annotation | `sane.mesh/status` | marks the pod injected (injection is idempotent) |
//!
//! Opt out per pod with the annotation `sane.mesh/inject: "false"`.

pub mod ca_secret;
pub mod crd;
pub mod crd_store;
pub mod error;
pub mod inject;
pub mod istio_source;
pub mod manifest;
pub mod object_status;
pub mod probes;
pub mod source;
pub mod store;
pub mod token_review;
pub mod watch;
pub mod webhook;

pub use error::{InjectError, KubeError, ManifestError};

use crate::api::cluster::ClusterStore;
use crate::ca::ExternalAuthenticator;
use crate::istio::watched::WatchedObjects;
use crate::registry::Registry;
use crd_store::{CrdStore, Versions};
use inject::{InjectConfig, Injector};
use sane_certs::CertificateAuthority;
use sane_xds_proto::Protocol;
use source::SourceSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as watch_channel;
use tokio_util::sync::CancellationToken;
use webhook::WebhookServer;

/// Pod annotation: `"false"` opts a pod out of injection.
pub const INJECT_ANNOTATION: &str = "sane.mesh/inject";
/// Namespace label selecting namespaces for the webhook (value `enabled`).
pub const NAMESPACE_LABEL: &str = "sane.mesh/inject";
/// Pod annotation set by injection: JSON naming what was added.
pub const STATUS_ANNOTATION: &str = "sane.mesh/status";
/// Pod annotation holding the sidecar's bootstrap YAML.
pub const BOOTSTRAP_ANNOTATION: &str = "sane.mesh/bootstrap";
/// Pod annotation holding the mesh root (PEM) the sidecar verifies the
/// control plane with.
pub const ROOT_CERT_ANNOTATION: &str = "sane.mesh/root-cert";
/// Name of the sidecar container.
pub const SIDECAR_NAME: &str = "sane-proxy";
/// Name of the traffic-redirection init container.
pub const INIT_NAME: &str = "sane-init";
/// Name of the sidecar's inbound container port (how the source finds a
/// pod's `proxy_port`).
pub const INBOUND_PORT_NAME: &str = "sane-inbound";
/// Name of the sidecar's health container port.
pub const HEALTH_PORT_NAME: &str = "sane-health";
/// Environment variable of the sidecar holding the app's original probes.
pub const PROBES_ENV: &str = "SANE_APP_PROBES";
/// Default audience of the service-account token sidecars present.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "sane-mesh";

/// The control plane's Kubernetes flags (flattened into
/// `sane-control-plane`'s).
#[derive(Clone, Debug, clap::Args)]
pub struct KubeArgs {
    /// Follow the cluster (kubeconfig or in-cluster): Services,
    /// EndpointSlices, Pods and sane.mesh/v1 objects into the registry, and
    /// accept service-account tokens (TokenReview) at the CA.
    #[arg(long, env = "SANE_KUBERNETES")]
    pub kubernetes: bool,
    /// Serve the sidecar-injection admission webhook (HTTPS) here.
    #[arg(long, env = "SANE_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// DNS names of the webhook's serving certificate (repeatable).
    #[arg(
        long = "webhook-dns-name",
        default_value = "sane-control-plane.sane-system.svc"
    )]
    pub webhook_dns_names: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle is set to the mesh CA
    /// (with --kubernetes and --webhook-addr).
    #[arg(long, default_value = "sane-sidecar-injector")]
    pub webhook_config: String,
    /// Image of the injected containers.
    #[arg(long, env = "SANE_PROXY_IMAGE")]
    pub proxy_image: Option<String>,
    /// imagePullPolicy of the injected containers.
    #[arg(long)]
    pub proxy_image_pull_policy: Option<String>,
    /// xDS/CA URL injected sidecars connect to (its host must be one of
    /// the serving certificate's names, --tls-san).
    #[arg(
        long,
        default_value = "https://sane-control-plane.sane-system.svc:15010"
    )]
    pub injected_control_plane: String,
    /// Audience of the service-account tokens sidecars present to the CA.
    #[arg(long, default_value = DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// The CA every replica signs with, from this Secret (`namespace/name`;
    /// keys tls.crt + tls.key (+ ca.crt), or Istio's ca-cert.pem +
    /// ca-key.pem), instead of --ca-cert-chain/--ca-key or a generated CA.
    #[arg(long, env = "SANE_CA_SECRET")]
    pub ca_secret: Option<String>,
}

/// What the control plane does with Kubernetes.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesConfig {
    /// Follow the cluster into the registry, and review tokens. Default: no.
    pub watch: bool,
    /// Webhook listen address. Default: none (no webhook).
    pub webhook_addr: Option<SocketAddr>,
    /// DNS names of the webhook's certificate.
    /// Default: `sane-control-plane.sane-system.svc`.
    pub webhook_dns_names: Vec<String>,
    /// MutatingWebhookConfiguration to write the caBundle into, when
    /// watching. Default: `sane-sidecar-injector`.
    pub webhook_config: String,
    /// What is injected.
    pub inject: InjectConfig,
    /// How cluster objects become registry resources.
    pub source: SourceSettings,
    /// The Secret (`namespace/name`) holding the CA. Default: none.
    pub ca_secret: Option<String>,
    /// The API server's URL, instead of the kubeconfig or in-cluster
    /// configuration (tests point it at a recorded API). Default: none.
    pub api_server: Option<String>,
}

/// The Kubernetes side of a built control plane.
pub struct Kubernetes {
    client: Option<kube::Client>,
    webhook: Option<WebhookServer>,
    reviewer: Option<Arc<token_review::TokenReviewer>>,
    config: KubernetesConfig,
    bundle_pem: String,
    /// What the watch has brought into the registry ([`crd_store`]).
    synced: watch_channel::Sender<Arc<Versions>>,
}

// === impl KubeArgs ===

impl KubeArgs {
    /// The configuration, or none when neither the watch nor the webhook is
    /// asked for.
    pub fn into_config(self, trust_domain: &str) -> Option<KubernetesConfig> {
        if !self.kubernetes && self.webhook_addr.is_none() && self.ca_secret.is_none() {
            return None;
        }
        let mut inject = InjectConfig {
            trust_domain: trust_domain.to_string(),
            control_plane_address: self.injected_control_plane,
            token_audience: self.token_audience,
            image_pull_policy: self.proxy_image_pull_policy,
            ..InjectConfig::default()
        };
        if let Some(image) = self.proxy_image {
            inject.proxy_image = image;
        }
        Some(KubernetesConfig {
            watch: self.kubernetes,
            webhook_addr: self.webhook_addr,
            webhook_dns_names: self.webhook_dns_names,
            webhook_config: self.webhook_config,
            inject,
            source: SourceSettings {
                trust_domain: trust_domain.to_string(),
                ..SourceSettings::default()
            },
            ca_secret: self.ca_secret,
            api_server: None,
        })
    }
}

/// The cluster's client, when the configuration needs one (watching, or
/// reading the CA Secret): `api_server` if set, else the kubeconfig or the
/// in-cluster service account.
pub async fn connect(config: &KubernetesConfig) -> Result<Option<kube::Client>, KubeError> {
    if !config.watch && config.ca_secret.is_none() {
        return Ok(None);
    }
    let client = match &config.api_server {
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| KubeError::ClientConfig(format!("API server {url:?}: {e}")))?;
            kube::Client::try_from(kube::Config::new(uri))
                .map_err(|e| KubeError::ClientConfig(e.to_string()))?
        }
        None => kube::Client::try_default()
            .await
            .map_err(|e| KubeError::ClientConfig(e.to_string()))?,
    };
    Ok(Some(client))
}

// === impl Kubernetes ===

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("connected", &self.client.is_some())
            .field("webhook", &self.webhook)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Takes the cluster's client ([`connect`]; used when watching) and
    /// binds the webhook.
    pub async fn bind(
        config: KubernetesConfig,
        client: Option<kube::Client>,
        ca: Arc<CertificateAuthority>,
        bundle_pem: String,
    ) -> Result<Kubernetes, KubeError> {
        let client = client.filter(|_| config.watch);
        let reviewer = client.clone().map(|c| {
            Arc::new(token_review::TokenReviewer::new(
                c,
                config.inject.token_audience.clone(),
            ))
        });
        let webhook = match config.webhook_addr {
            Some(addr) => Some(
                WebhookServer::bind(
                    addr,
                    ca,
                    config.webhook_dns_names.clone(),
                    // Injected sidecars verify the control plane with the
                    // roots the CA hands out.
                    Arc::new(Injector::new(InjectConfig {
                        root_cert_pem: bundle_pem.clone(),
                        ..config.inject.clone()
                    })),
                )
                .await?,
            ),
            None => None,
        };
        Ok(Kubernetes {
            client,
            webhook,
            reviewer,
            config,
            bundle_pem,
            synced: watch_channel::Sender::new(Arc::new(Versions::new())),
        })
    }

    /// The API's store when watching: the cluster's `sane.mesh/v1` objects
    /// ([`crd_store`]). `shared_registry`: the registry is on etcd, so kinds
    /// without a custom resource are still written to it.
    pub fn cluster_store(
        &self,
        registry: Arc<Registry>,
        watched: Arc<WatchedObjects>,
        shared_registry: bool,
    ) -> Option<Arc<dyn ClusterStore>> {
        let client = self.client.clone()?;
        let store: Arc<dyn ClusterStore> = Arc::new(CrdStore::new(
            client,
            registry,
            self.synced.subscribe(),
            watched,
            shared_registry,
        ));
        Some(store)
    }

    /// The CA's TokenReview authenticator, when watching the cluster.
    pub fn token_reviewer(&self) -> Option<Arc<dyn ExternalAuthenticator>> {
        self.reviewer
            .clone()
            .map(|r| r as Arc<dyn ExternalAuthenticator>)
    }

    /// The bound webhook address.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().map(WebhookServer::addr)
    }

    /// Serves the webhook, publishes its caBundle and follows the cluster
    /// (Istio objects' conversions into `watched`), until `shutdown`.
    pub async fn run(
        self,
        registry: Arc<Registry>,
        watched: Arc<WatchedObjects>,
        shutdown: CancellationToken,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(webhook) = self.webhook {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                if let Err(error) = webhook.run(stop).await {
                    tracing::error!(%error, "admission webhook stopped");
                }
            });
            if let Some(client) = self.client.clone() {
                let (name, pem) = (self.config.webhook_config.clone(), self.bundle_pem.clone());
                tasks.spawn(publish_bundle(client, name, pem, shutdown.clone()));
            }
        }
        if let Some(client) = self.client {
            tasks.spawn(watch::run(
                client,
                registry,
                watch::Outputs {
                    settings: self.config.source.clone(),
                    watched,
                    synced: self.synced,
                },
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Writes the caBundle, retrying (the configuration may be applied after
/// the control plane starts) every 10 s until it succeeds or `shutdown`.
async fn publish_bundle(
    client: kube::Client,
    name: String,
    pem: String,
    shutdown: CancellationToken,
) {
    loop {
        match webhook::publish_ca_bundle(client.clone(), &name, &pem).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot publish the webhook caBundle yet; retrying in 10s")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// The protocol a port speaks, from its Kubernetes `appProtocol` or, failing
/// that, its name (Istio's convention: `grpc`, `grpc-web`, `http2-api`,
/// `tcp-db`, …). Anything else is `http`, which the proxy also detects.
pub fn port_protocol(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
    let hint = app_protocol
        .filter(|p| !p.is_empty())
        .or(name)
        .unwrap_or("")
        .to_ascii_lowercase();
    // `kubernetes.io/h2c` is the standard appProtocol for cleartext HTTP/2.
    let hint = hint.strip_prefix("kubernetes.io/").unwrap_or(&hint);
    let prefix = hint.split(['-', '_']).next().unwrap_or("");
    match prefix {
        "grpc" => Protocol::Grpc,
        "http2" | "h2c" => Protocol::Http2,
        "tcp" | "mongo" | "mysql" | "redis" | "postgres" | "postgresql" | "tls" | "https" => {
            Protocol::Tcp
        }
        _ => Protocol::Http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_from_names_and_app_protocols() {
        assert_eq!(port_protocol(Some("grpc-api"), None), Protocol::Grpc);
        assert_eq!(port_protocol(Some("http"), Some("grpc")), Protocol::Grpc);
        assert_eq!(
            port_protocol(None, Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
        assert_eq!(port_protocol(Some("tcp-db"), None), Protocol::Tcp);
        assert_eq!(port_protocol(Some("https"), None), Protocol::Tcp);
        assert_eq!(port_protocol(Some("web"), None), Protocol::Http);
        assert_eq!(port_protocol(None, None), Protocol::Http);
    }
}
