//! Errors of the Kubernetes integration, one enum per consumer: injection
//! (shown to whoever creates the pod), manifests (shown by `sanectl inject`)
//! and the cluster-facing parts (logged by the control plane).

use std::net::SocketAddr;

/// Why a pod cannot be injected. The message is what `kubectl` shows when
/// the webhook refuses the pod, so it names the container and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A container of the pod uses a port the sidecar needs.
    #[error(
        "container {container:?} uses port {port}, which the sane-proxy sidecar reserves for its \
         {purpose}; move the container to another port or opt the pod out with the annotation \
         sane.mesh/inject: \"false\""
    )]
    PortConflict {
        /// The container.
        container: String,
        /// The port.
        port: i32,
        /// What the sidecar uses it for (`admin`, `outbound`, …).
        purpose: &'static str,
    },
    /// A container or volume of the pod already has a name injection adds.
    #[error("{what} name {name:?} is reserved for sidecar injection")]
    NameConflict {
        /// `container` or `volume`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A probe names a port the container does not declare.
    #[error(
        "container {container:?}: {probe} probe port {port:?} is not a named port of the container"
    )]
    UnknownProbePort {
        /// The container.
        container: String,
        /// `liveness`, `readiness` or `startup`.
        probe: &'static str,
        /// The port name.
        port: String,
    },
    /// The sidecar's bootstrap could not be rendered (a bad setting).
    #[error("rendering the sidecar bootstrap: {0}")]
    Bootstrap(String),
}

/// What `sanectl inject` cannot do with a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not YAML.
    #[error("document {document}: {source}")]
    Yaml {
        /// 1-based document number.
        document: usize,
        /// The parse error, with line and column.
        source: serde_yaml::Error,
    },
    /// A workload's pod template does not have the shape Kubernetes gives it.
    #[error("document {document} ({kind} {name:?}): {path}: {message}")]
    Shape {
        /// 1-based document number.
        document: usize,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Where, e.g. `spec.template.spec.containers[0].ports[0].containerPort`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The pod cannot be injected.
    #[error("document {document} ({kind} {name:?}): {source}")]
    Inject {
        /// 1-based document number.
        document: usize,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Why.
        source: InjectError,
    },
}

/// Failures talking to the cluster or serving it.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig or in-cluster configuration was found.
    #[error("kubernetes client configuration (kubeconfig or in-cluster): {0}")]
    ClientConfig(String),
    /// A request to the API server failed.
    #[error("kubernetes API: {what}: {source}")]
    Api {
        /// What was being done, e.g. `creating a TokenReview`.
        what: String,
        /// The client error.
        source: Box<kube::Error>,
    },
    /// The webhook's serving certificate could not be issued or used.
    #[error("webhook certificate for {names:?}: {source}")]
    WebhookCert {
        /// The DNS names asked for.
        names: Vec<String>,
        /// The CA error (boxed: it is large and this path is cold).
        source: Box<sane_certs::Error>,
    },
    /// The webhook listener could not be bound.
    #[error("binding the webhook listener on {addr}: {source}")]
    WebhookBind {
        /// The requested address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA Secret (`--ca-secret`) cannot be read or holds no CA.
    #[error("CA secret {secret}: {reason}")]
    CaSecret {
        /// `namespace/name`.
        secret: String,
        /// What is wrong (never the key material).
        reason: String,
    },
    /// `--ca-secret` together with `--ca-cert-chain`/`--ca-key`.
    #[error("--ca-secret and --ca-cert-chain/--ca-key both name a CA: give one")]
    TwoCas,
    /// The webhook's caBundle could not be written into its configuration.
    #[error("MutatingWebhookConfiguration {name:?}: {message}")]
    WebhookConfig {
        /// The configuration's name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

// === impl KubeError ===

impl KubeError {
    /// Wraps a client error with what was being done.
    pub fn api(what: impl Into<String>, source: kube::Error) -> KubeError {
        KubeError::Api {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
