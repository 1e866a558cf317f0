//! Why a set of Istio or Gateway API objects was refused as a whole.

use super::object::ObjectRef;

/// A conversion error: nothing of the input is stored.
#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    /// A document is not YAML, or not an object of the expected shape.
    #[error("document {document}: {message}")]
    Yaml {
        /// 1-based document number in the file.
        document: usize,
        /// The parser's message.
        message: String,
    },
    /// A kind (or API version) that is not accepted.
    #[error(
        "document {document}: kind {kind:?} of apiVersion {api_version:?} (name {name:?}) is not \
         accepted (Istio networking/security, Gateway API HTTPRoute/GRPCRoute/Gateway, or Sane \
         documents)"
    )]
    UnknownKind {
        /// 1-based document number.
        document: usize,
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
        /// `metadata.name`.
        name: String,
    },
    /// An object with a wrong type, a missing required field or a field not
    /// in its published schema.
    #[error("{object}: {message}")]
    Malformed {
        /// The object.
        object: Box<ObjectRef>,
        /// The field path and what is wrong.
        message: String,
    },
    /// A route names a subset no DestinationRule of its host declares.
    #[error(
        "{object}: {path}: subset {subset:?} of host {host:?} is not declared by a DestinationRule"
    )]
    MissingSubset {
        /// The route's object.
        object: Box<ObjectRef>,
        /// Path of the `subset` field.
        path: String,
        /// The destination host.
        host: String,
        /// The subset name.
        subset: String,
    },
    /// A host that no service (declared, or from a ServiceEntry) answers to.
    #[error("{object}: {path}: host {host:?} is not a known service")]
    UnknownHost {
        /// The object.
        object: Box<ObjectRef>,
        /// Path of the host field.
        path: String,
        /// The host.
        host: String,
    },
    /// Two objects would direct the same service; a proxy would follow one
    /// and silently ignore the other.
    #[error("conflict for service {service:?}: {first} and {second} both direct it (remove one)")]
    Conflict {
        /// `name.namespace` of the service.
        service: String,
        /// The first claimant.
        first: String,
        /// The second.
        second: String,
    },
    /// `--strict`: fields would not be honoured.
    #[error("{} field(s) cannot be honoured:\n  {}", .0.len(), .0.join("\n  "))]
    Strict(Vec<String>),
}

// === impl IstioError ===

impl IstioError {
    /// The kind of error in one CamelCase word, as a Kubernetes condition's
    /// `reason` carries it: `Malformed`, `UnknownKind`, `MissingSubset`,
    /// `UnknownHost`, `Conflict`, `Unsupported`.
    pub fn reason(&self) -> &'static str {
        match self {
            IstioError::Yaml { .. } | IstioError::Malformed { .. } => "Malformed",
            IstioError::UnknownKind { .. } => "UnknownKind",
            IstioError::MissingSubset { .. } => "MissingSubset",
            IstioError::UnknownHost { .. } => "UnknownHost",
            IstioError::Conflict { .. } => "Conflict",
            IstioError::Strict(_) => "Unsupported",
        }
    }
}

/// Why a write of stored Istio objects failed: nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The objects could not be converted.
    #[error(transparent)]
    Convert(#[from] IstioError),
    /// The registry refused what they produce.
    #[error(transparent)]
    Registry(#[from] crate::Error),
    /// A removal names an object that is not stored.
    #[error("{0} is not stored")]
    NotStored(super::store::ObjectKey),
    /// A Sane document with listeners: those are per proxy, in its bootstrap.
    #[error("listeners: per-proxy settings are not stored by the control plane (put them in the proxy's bootstrap)")]
    Listeners,
    /// The objects file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The objects file is not what this version writes.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A blocking task failed.
    #[error("internal error: {0}")]
    Task(String),
}
