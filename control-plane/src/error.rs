//! The control plane's one error type. Each variant carries what a reader of
//! the log (or an API client) needs to act: the file, the address, the key.

use crate::resource::Kind;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate authority or its token store could not be set up.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The Kubernetes client, source or webhook could not be set up.
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::error::KubeError),
    /// The stored Istio objects could not be loaded (the error type lives
    /// in `istio`, above this one, so it is carried boxed).
    #[error("loading the stored Istio objects: {0}")]
    IstioStore(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The durable state file could not be read.
    #[error("reading state file {path}: {source}")]
    StateRead {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The durable state file is not valid JSON of the expected shape.
    #[error("parsing state file {path}: {source}")]
    StateParse {
        /// The state file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// The durable state file holds resources that fail validation.
    #[error("state file {path} holds an invalid configuration: {source}")]
    StateInvalid {
        /// The state file.
        path: PathBuf,
        /// Every invalid field.
        source: Rejected,
    },
    /// The data directory is in use by another control plane.
    #[error(
        "data directory {} is locked by another control plane (pid {holder}, lock file {}); \
         stop it first, or give this one another --data-dir",
        dir.display(),
        path.display()
    )]
    StateLocked {
        /// The data directory.
        dir: PathBuf,
        /// Its lock file.
        path: PathBuf,
        /// The pid written in the lock file by its holder.
        holder: String,
    },
    /// A state file was written in a format this build does not know; it is
    /// neither loaded nor overwritten.
    #[error(
        "state file {path}: format version {found} is not supported (this build reads \
         version {supported}); refusing to load or overwrite it"
    )]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// The version found in it.
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A write-ahead log record is damaged somewhere other than at the very
    /// end of the log (where a crash can cut a record short), or the log
    /// skips a revision.
    #[error("state log {path}: damaged at byte {offset}: {reason}")]
    StateCorrupt {
        /// The log file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Writing the durable state failed; the write was not applied.
    #[error("writing state file {path}: {source}")]
    StateWrite {
        /// The file being written (the log, a snapshot or its temporary
        /// file, or the lock).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The registry's etcd cluster did not answer (unreachable, or lost its
    /// quorum); nothing was written.
    #[error("store {store} is unavailable: {reason}")]
    StoreUnavailable {
        /// The members (`etcd://a:2379,b:2379`).
        store: String,
        /// What failed.
        reason: String,
    },
    /// The etcd store holds data of a format this build does not know; it is
    /// neither loaded nor overwritten.
    #[error(
        "store {store}: key {key} says format version {found}, this build reads version \
         {supported}; refusing to load or overwrite it"
    )]
    StoreFormat {
        /// The members.
        store: String,
        /// The meta key.
        key: String,
        /// The version found.
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A value in the etcd store cannot be read.
    #[error("store {store}: key {key}: {reason}")]
    StoreValue {
        /// The members.
        store: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Other writers kept changing the registry while this write retried.
    #[error("the registry changed under this write {attempts} times in a row; try again")]
    StoreContention {
        /// How many times it was validated and refused by etcd.
        attempts: u32,
    },
    /// Replicas on etcd without an operator CA would each generate their
    /// own, and no proxy could trust certificates of the others.
    #[error(
        "--store {store} needs --ca-cert-chain and --ca-key: every replica must sign with the \
         same CA (give each replica the same files); see docs/replicas.md"
    )]
    ReplicaWithoutCa {
        /// The members.
        store: String,
    },
    /// The background runtime of the etcd client could not run.
    #[error("the etcd client runtime: {source}")]
    Runtime {
        /// The I/O error.
        source: std::io::Error,
    },
    /// A write named the version of a resource it expected (`If-Match`,
    /// `resource_version`), and the resource is at another.
    #[error(
        "{kind} {key:?} is at resource version {found}, not {expected} (changed by another \
         writer; read it again)"
    )]
    VersionConflict {
        /// Kind of the resource.
        kind: Kind,
        /// Its key.
        key: String,
        /// The version the write expected (0: absent).
        expected: u64,
        /// Its version now (0: absent).
        found: u64,
    },
    /// The write would leave an invalid configuration; nothing was stored.
    #[error("{0}")]
    Rejected(Rejected),
    /// The resource does not exist.
    #[error("{kind} {key:?} not found")]
    NotFound {
        /// Kind of the resource.
        kind: Kind,
        /// Its key.
        key: String,
    },
    /// The resource is owned by a configuration file and cannot be changed
    /// through another source.
    #[error("{kind} {key:?} is managed by {owner}; change it there")]
    Conflict {
        /// Kind of the resource.
        kind: Kind,
        /// Its key.
        key: String,
        /// Who owns it (`file:/path`).
        owner: String,
    },
    /// A heartbeat for an endpoint that was registered without a lease.
    #[error("endpoint {key:?} has no lease (register it with a ttl)")]
    NoLease {
        /// The endpoint key.
        key: String,
    },
    /// A listener could not be bound.
    #[error("binding the {name} listener on {addr}: {source}")]
    Bind {
        /// Which listener (`xds`, `api`).
        name: &'static str,
        /// The requested address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The xDS gRPC server failed.
    #[error("xds server on {addr}: {source}")]
    XdsServe {
        /// The bound address.
        addr: SocketAddr,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The HTTP API server failed.
    #[error("api server on {addr}: {source}")]
    ApiServe {
        /// The bound address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API token could not be read or created.
    #[error("api token file {path}: {source}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No API token is configured and there is no data directory to keep a
    /// generated one in.
    #[error("no api token configured: pass --api-token, --api-token-file or --data-dir")]
    NoToken,
    /// A configuration directory could not be listed.
    #[error("config dir {path}: {source}")]
    ConfigDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A configuration file could not be read or parsed.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, including line and column for YAML errors.
        message: String,
    },
    /// A metric could not be registered (usually: registered twice).
    #[error("registering metric {name}: {source}")]
    Metrics {
        /// The metric name.
        name: &'static str,
        /// The registry error.
        source: prometheus::Error,
    },
    /// An xDS node's metadata is not what the control plane understands.
    #[error("node {node:?}: metadata field {field:?}: {message}")]
    NodeMetadata {
        /// The node id.
        node: String,
        /// The metadata field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A `sanectl` computation ([`crate::ctl`]) could not be done: names the
    /// argument or field at fault (`--host`, `routes[0].rules[1]`, ...).
    #[error("{field}: {message}")]
    Ctl {
        /// The argument or field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An API request (from the client in [`crate::client`]) failed to reach
    /// the server.
    #[error("request {method} {url}: {message}")]
    Request {
        /// HTTP method.
        method: http::Method,
        /// Full URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The API server answered with an error status.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Api {
        /// HTTP method.
        method: http::Method,
        /// Full URL.
        url: String,
        /// Response status.
        status: http::StatusCode,
        /// The `error` field of the JSON body, or the raw body.
        message: String,
    },
    /// Plaintext was asked for on a port that does not bind loopback.
    #[error(
        "refusing to serve {name} in plaintext on {addr}: bearer tokens would cross the network \
         in clear; --insecure-plaintext-loopback only allows loopback addresses (127.0.0.1, ::1). \
         Drop the flag to serve TLS with the mesh CA's serving certificate"
    )]
    PlaintextNotLoopback {
        /// Which port (`xds`, `api`).
        name: &'static str,
        /// The requested address.
        addr: SocketAddr,
    },
    /// The control plane's serving certificate could not be issued.
    #[error("issuing the serving certificate for {names:?}: {source}")]
    ServingCert {
        /// The names asked for (`--tls-san` and the defaults).
        names: Vec<String>,
        /// Why the CA refused (boxed: large, and this path is cold).
        source: Box<sane_certs::Error>,
    },
    /// An operator certificate or key file could not be used.
    #[error("certificate file {path}: {reason}")]
    CertFiles {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The root certificate file for proxies could not be written.
    #[error("writing the root certificate file {path}: {source}")]
    RootFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TLS configuration could not be built.
    #[error("building the TLS configuration of the {name} port: {source}")]
    Tls {
        /// Which port (`xds`, `api`).
        name: &'static str,
        /// What failed (boxed: large, and this path is cold).
        source: Box<sane_certs::Error>,
    },
}

/// A write that would leave an invalid configuration, with every bad field.
///
/// Paths follow `MeshResources::validate`, with the list index replaced by
/// the resource key, e.g. `routes[default/split].rules[0].destinations[1].weight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The invalid fields.
    pub fields: Vec<RejectedField>,
}

/// One invalid field of a rejected write.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RejectedField {
    /// Kind of the resource holding the field, when the path names one.
    pub kind: Option<Kind>,
    /// Key of that resource.
    pub key: Option<String>,
    /// Full path, e.g. `routes[default/split].service`.
    pub path: String,
    /// What is wrong, including the bad value.
    pub message: String,
}

// === impl Rejected ===

impl Rejected {
    /// A rejection with a single message not tied to one stored field.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Rejected {
            fields: vec![RejectedField {
                kind: None,
                key: None,
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// True if any field is a reference to a service that does not exist.
    pub fn has_unknown_reference(&self) -> bool {
        self.fields
            .iter()
            .any(|f| f.message.contains("is not a declared service"))
    }
}

impl std::error::Error for Rejected {}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.path.is_empty() {
                f.write_str(&e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}
