//! The etcd v3 backend: the registry of replicated control planes, kept in an
//! etcd cluster (`--store etcd://h1:2379,h2:2379,h3:2379`).
//!
//! Layout under the prefix (`--store-prefix`, default [`DEFAULT_PREFIX`]):
//! - `<prefix>/meta` — `{"format": 1}` ([`FORMAT_VERSION`]). Every registry
//!   write puts it again, so its `mod_revision` is the revision of the last
//!   write: a write commits only if it is still the revision the write was
//!   validated against (optimistic concurrency over the whole registry).
//! - `<prefix>/r/<kind plural>/<key>` — one resource, a JSON
//!   [`StoredResource`]; its `mod_revision` is its resource version. An
//!   endpoint registered with a TTL is attached to an etcd lease of that TTL
//!   (rounded up to whole seconds), so it expires whichever replica dies.
//! - `<prefix>/status/<replica>` — one replica's proxy status rows, on a
//!   lease of that replica (gone about 10 s after it dies).
//!
//! etcd is reached through `etcd-client` (tonic). Its requests run on a
//! runtime of this module's own (one thread), so the registry's synchronous
//! write path ([`EtcdStore::block_on`]) can wait for etcd from any thread,
//! async or not, without starving or deadlocking the caller's runtime.

use super::{StoredResource, FORMAT_VERSION};
use crate::error::Error;
use crate::resource::Kind;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Key prefix when `--store-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/sane-mesh";

/// How long one etcd request may take before it fails (and an API write
/// answers 503): 5 s. A cluster that lost its quorum does not answer at all.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between two connection attempts at startup.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// How to reach etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix: everything of this mesh lives under it.
    pub prefix: String,
    /// PEM CA file to verify the members with; switches to TLS.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key files (etcd `--client-cert-auth`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// User name and password (etcd auth).
    pub user: Option<(String, String)>,
    /// Per-request timeout. Default: [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// This replica's name among the replicas (its status key). Default:
    /// `<hostname>/<API address>` (`--replica-id`).
    pub replica: String,
}

/// A connected etcd store.
pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
    runtime: tokio::runtime::Handle,
    /// This replica's name, set once its API address is bound.
    replica: std::sync::OnceLock<String>,
    /// Stops the runtime's thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Every resource under the prefix at one etcd revision.
#[derive(Debug)]
pub struct EtcdSnapshot {
    /// The etcd revision of the read.
    pub revision: i64,
    /// `mod_revision` of the meta key (0: no write yet).
    pub meta_revision: i64,
    /// Every resource with its `mod_revision` and lease.
    pub resources: Vec<EtcdResource>,
}

/// One resource as read from etcd.
#[derive(Debug)]
pub struct EtcdResource {
    /// The stored value.
    pub stored: StoredResource,
    /// Its resource version.
    pub mod_revision: i64,
    /// Its lease (0: none).
    pub lease: i64,
}

/// One change of a registry write, ready for etcd.
#[derive(Debug)]
pub enum EtcdOp {
    /// Put a resource, on a lease of `ttl` when given.
    Put {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
        /// The value.
        value: Box<StoredResource>,
        /// Lease length (endpoints with a TTL).
        ttl: Option<Duration>,
    },
    /// Remove a resource.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
    },
}

/// What a write transaction did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Committed at this etcd revision.
    At(i64),
    /// Another write came first: the meta key is now at this revision.
    Stale(i64),
}

/// A watched change under the resource prefix.
#[derive(Debug)]
pub enum Watched {
    /// A resource was put (or a value could not be read: `None`, logged).
    Put {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
        /// The value, if it parsed.
        value: Option<Box<StoredResource>>,
        /// Its `mod_revision`.
        mod_revision: i64,
        /// Its lease.
        lease: i64,
    },
    /// A resource was removed (deleted, or its lease ended).
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
        /// The revision of the removal.
        revision: i64,
    },
    /// The meta key was written.
    Meta {
        /// Its `mod_revision`.
        mod_revision: i64,
        /// Its format, when it is not this build's.
        unknown_format: Option<String>,
    },
}

/// The meta key's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: serde_json::Value,
}

// === impl EtcdConfig ===

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("request_timeout", &self.request_timeout)
            .field("replica", &self.replica)
            .finish()
    }
}

impl EtcdConfig {
    /// Parses `etcd://host:port,host:port`.
    pub fn parse(url: &str, prefix: &str) -> Result<EtcdConfig, String> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "--store {url:?}: expected `file` or `etcd://host:port[,host:port...]`"
            ));
        };
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("--store {url:?}: names no etcd member"));
        }
        for e in &endpoints {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) && !h.contains('/')
            });
            if !ok {
                return Err(format!("--store: etcd member {e:?} is not host:port"));
            }
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || !prefix.starts_with('/') {
            return Err(format!(
                "--store-prefix {prefix:?}: must start with `/` and name something, e.g. {DEFAULT_PREFIX}"
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: prefix.to_string(),
            ca_file: None,
            client_cert: None,
            user: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            replica: String::new(),
        })
    }

    /// The members, for messages: `etcd://a:2379,b:2379`.
    pub fn display(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            // A member cut off from the quorum refuses rather than
            // answering from its stale copy.
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }

    /// The rustls client config for `--etcd-ca-file` (and a client
    /// certificate), if TLS is asked for.
    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let bad = |p: &PathBuf, reason: String| Error::CertFiles {
            path: p.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e.to_string()))? {
            let cert = cert.map_err(|e| bad(ca, e.to_string()))?;
            roots.add(cert).map_err(|e| bad(ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad(ca, "holds no certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(sane_certs::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(ca, e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(cert, e.to_string()))?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad(cert, e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// One HTTP/2 connection to one member at a time: each (re)connect
    /// tries the members in turn from the one after the last used, so a
    /// dead member is skipped at once.
    fn channel(&self) -> Result<tonic::transport::Channel, Error> {
        let dialer = MemberDialer {
            members: Arc::new(self.endpoints.clone()),
            tls: self.tls()?,
            next: Arc::new(AtomicUsize::new(0)),
            connect_timeout: self.request_timeout,
        };
        let endpoint = tonic::transport::Endpoint::from_static("http://etcd.members")
            .timeout(self.request_timeout)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(dialer))
    }

    fn meta_key(&self) -> String {
        format!("{}/meta", self.prefix)
    }

    fn resources_prefix(&self) -> String {
        format!("{}/r/", self.prefix)
    }

    fn resource_key(&self, kind: Kind, key: &str) -> String {
        format!("{}/r/{}/{key}", self.prefix, kind.plural())
    }

    /// The prefix of every replica's status key.
    pub fn status_prefix(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    fn parse_resource_key<'a>(&self, full: &'a str) -> Option<(Kind, &'a str)> {
        let rest = full.strip_prefix(&self.resources_prefix())?;
        let (plural, key) = rest.split_once('/')?;
        Some((Kind::parse(plural)?, key))
    }
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects and checks the format of what is stored, retrying (with a
    /// warning naming the members and the cause) until etcd answers: a
    /// replica started before its etcd waits for it. A store of an unknown
    /// format is refused at once and left untouched.
    pub fn connect(config: EtcdConfig) -> Result<EtcdStore, Error> {
        let (runtime, stop) = spawn_runtime()?;
        let options = config.options();
        let mut backoff = Duration::from_millis(100);
        let client = loop {
            let channel = {
                // The lazy channel's background task lives on our runtime.
                let _entered = runtime.enter();
                config.channel()?
            };
            let opts = options.clone();
            let attempt = block_on_handle(&runtime, async move {
                let channel = etcd_client::Channel::Tonic(channel);
                let mut client = Client::from_channel(channel, Some(opts)).await?;
                client.status().await?;
                Ok::<_, etcd_client::Error>(client)
            });
            match attempt {
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => tracing::warn!(
                    store = %config.display(),
                    error = %describe(&e),
                    "cannot reach etcd; retrying in {backoff:?}"
                ),
                Err(e) => return Err(e),
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
        };
        let store = EtcdStore {
            client,
            replica: std::sync::OnceLock::new(),
            config,
            runtime,
            _stop: stop,
        };
        store.check_format()?;
        tracing::info!(store = %store.config.display(), prefix = %store.config.prefix, "connected to etcd");
        Ok(store)
    }

    /// This replica's name among the replicas: `--replica-id`, else
    /// `<hostname>/<api address>` once [`EtcdStore::name_replica`] ran.
    pub fn replica(&self) -> &str {
        self.replica
            .get()
            .map_or(self.config.replica.as_str(), String::as_str)
    }

    /// Names the replica after its bound API address, unless `--replica-id`
    /// named it.
    pub fn name_replica(&self, api_addr: std::net::SocketAddr) {
        let name = if self.config.replica.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}/{api_addr}", host.trim())
        } else {
            self.config.replica.clone()
        };
        let _ = self.replica.set(name);
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// A client (cheap clone) for async callers.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `fut` on the store's runtime and waits for it from this thread.
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        block_on_handle(&self.runtime, fut)
    }

    /// Whether a write could commit now: a linearizable read of the meta
    /// key (needs the quorum), within 2 s.
    pub async fn check_writable(&self) -> Result<(), Error> {
        let mut client = self.client.clone();
        let key = self.config.meta_key();
        match tokio::time::timeout(Duration::from_secs(2), client.get(key, None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.unavailable(&e)),
            Err(_) => Err(Error::StoreUnavailable {
                store: self.config.display(),
                reason: "etcd did not answer within 2s (is its quorum lost?)".into(),
            }),
        }
    }

    /// The error of a failed etcd request, naming the members.
    pub fn unavailable(&self, e: &etcd_client::Error) -> Error {
        Error::StoreUnavailable {
            store: self.config.display(),
            reason: describe(e),
        }
    }

    fn check_format(&self) -> Result<(), Error> {
        let mut client = self.client.clone();
        let key = self.config.meta_key();
        let got = self
            .block_on(async move { client.get(key, None).await })?
            .map_err(|e| self.unavailable(&e))?;
        if let Some(kv) = got.kvs().first() {
            if let Some(found) = unknown_format(kv.value()) {
                return Err(self.format_error(found));
            }
        }
        Ok(())
    }

    /// The refusal of a store written in another format.
    pub fn format_error(&self, found: String) -> Error {
        Error::StoreFormat {
            store: self.config.display(),
            key: self.config.meta_key(),
            found,
            supported: FORMAT_VERSION,
        }
    }

    /// Reads every resource.
    pub fn load(&self) -> Result<EtcdSnapshot, Error> {
        let mut client = self.client.clone();
        let prefix = self.config.resources_prefix();
        let meta = self.config.meta_key();
        let (resources, meta) = self
            .block_on(async move {
                // One transaction: resources and meta at one revision.
                let txn = Txn::new().and_then([
                    TxnOp::get(prefix, Some(GetOptions::new().with_prefix())),
                    TxnOp::get(meta, None),
                ]);
                client.txn(txn).await
            })?
            .map(|r| {
                let mut gets = r.op_responses().into_iter().filter_map(|o| match o {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                });
                let revision = r.header().map_or(0, |h| h.revision());
                ((gets.next(), revision), gets.next())
            })
            .map_err(|e| self.unavailable(&e))?;
        let ((resources, revision), meta) = (resources, meta);
        let meta_revision = meta
            .as_ref()
            .and_then(|m| m.kvs().first())
            .map_or(0, |kv| kv.mod_revision());
        if let Some(found) = meta
            .as_ref()
            .and_then(|m| m.kvs().first())
            .and_then(|kv| unknown_format(kv.value()))
        {
            return Err(self.format_error(found));
        }
        let mut out = Vec::new();
        for kv in resources.as_ref().map(|g| g.kvs()).unwrap_or_default() {
            let key = String::from_utf8_lossy(kv.key());
            match serde_json::from_slice::<StoredResource>(kv.value()) {
                Ok(stored) => out.push(EtcdResource {
                    stored,
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                }),
                Err(e) => {
                    return Err(Error::StoreValue {
                        store: self.config.display(),
                        key: key.into_owned(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(EtcdSnapshot {
            revision,
            meta_revision,
            resources: out,
        })
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds).
    pub fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        self.block_on(async move { client.lease_grant(secs, None).await })?
            .map(|r| r.id())
            .map_err(|e| self.unavailable(&e))
    }

    /// Renews a lease once; returns the TTL it now has (0: it had ended).
    pub fn keep_alive(&self, lease: i64) -> Result<i64, Error> {
        let mut client = self.client.clone();
        self.block_on(async move {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.map_or(0, |r| r.ttl()))
        })?
        .map_err(|e| self.unavailable(&e))
    }

    /// Revokes a lease (best effort: an unused lease also ends by itself).
    pub fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        let _ = self.block_on(async move { client.lease_revoke(lease).await });
    }

    /// Commits `ops` if the meta key is still at `meta_revision` (0: never
    /// written), putting the meta key again; leases are granted first.
    pub fn commit(&self, meta_revision: i64, ops: Vec<EtcdOp>) -> Result<Committed, Error> {
        let meta = self.config.meta_key();
        let guard = Compare::mod_revision(meta.clone(), CompareOp::Equal, meta_revision);
        let meta_value = serde_json::to_vec(&Meta {
            format: FORMAT_VERSION.into(),
        })
        .unwrap_or_default();
        let mut granted = Vec::new();
        let mut txn_ops = vec![TxnOp::put(meta.clone(), meta_value, None)];
        for op in ops {
            match op {
                EtcdOp::Put {
                    kind,
                    key,
                    value,
                    ttl,
                } => {
                    let options = match ttl {
                        Some(ttl) => match self.grant(ttl) {
                            Ok(id) => {
                                granted.push(id);
                                Some(PutOptions::new().with_lease(id))
                            }
                            Err(e) => {
                                self.revoke_all(&granted);
                                return Err(e);
                            }
                        },
                        None => None,
                    };
                    // Serializing plain data cannot fail.
                    let bytes = serde_json::to_vec(&value).unwrap_or_default();
                    txn_ops.push(TxnOp::put(
                        self.config.resource_key(kind, &key),
                        bytes,
                        options,
                    ));
                }
                EtcdOp::Delete { kind, key } => {
                    txn_ops.push(TxnOp::delete(self.config.resource_key(kind, &key), None));
                }
            }
        }
        let txn = Txn::new()
            .when([guard])
            .and_then(txn_ops)
            .or_else([TxnOp::get(meta, None)]);
        let mut client = self.client.clone();
        let result = self
            .block_on(async move { client.txn(txn).await })?
            .map_err(|e| self.unavailable(&e));
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.revoke_all(&granted);
                return Err(e);
            }
        };
        if response.succeeded() {
            return Ok(Committed::At(response.header().map_or(0, |h| h.revision())));
        }
        self.revoke_all(&granted);
        let now = response
            .op_responses()
            .into_iter()
            .find_map(|o| match o {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Committed::Stale(now))
    }

    fn revoke_all(&self, leases: &[i64]) {
        for id in leases {
            self.revoke(*id);
        }
    }

    /// What following the store needs, without keeping the store (and its
    /// runtime) alive.
    pub fn watcher(&self) -> EtcdWatcher {
        EtcdWatcher {
            client: self.client.clone(),
            config: self.config.clone(),
        }
    }

    /// Runs `fut` on the store's runtime in the background.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(fut);
    }
}

/// Follows the store (see [`EtcdStore::watcher`]).
pub struct EtcdWatcher {
    client: Client,
    config: EtcdConfig,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.config)
            .finish()
    }
}

impl std::fmt::Debug for EtcdWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWatcher")
            .field("config", &self.config)
            .finish()
    }
}

// === impl EtcdWatcher ===

impl EtcdWatcher {
    /// Follows the resources and the meta key from `from` (inclusive),
    /// calling `apply` with each batch of changes; `apply` returns false to
    /// stop. Returns when the stream ends or fails, or with
    /// [`WatchEnd::Compacted`] when `from` was compacted away (the caller
    /// reloads).
    pub async fn watch(
        &self,
        from: i64,
        mut apply: impl FnMut(Vec<Watched>) -> bool + Send,
    ) -> Result<(), WatchEnd> {
        let mut client = self.client.clone();
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        // `<prefix>/` covers `meta` and `r/`; status keys are skipped.
        let prefix = format!("{}/", self.config.prefix);
        let mut stream = client
            .watch(prefix, Some(options))
            .await
            .map_err(|e| WatchEnd::Failed(describe(&e)))?;
        let meta = self.config.meta_key();
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(WatchEnd::Failed("the watch stream ended".into())),
                Err(e) => return Err(WatchEnd::Failed(describe(&e))),
            };
            if msg.compact_revision() > 0 {
                return Err(WatchEnd::Compacted(msg.compact_revision()));
            }
            if msg.canceled() {
                return Err(WatchEnd::Failed(format!(
                    "etcd cancelled the watch: {}",
                    msg.cancel_reason()
                )));
            }
            let mut batch = Vec::new();
            for event in msg.events() {
                let Some(kv) = event.kv() else { continue };
                let full = String::from_utf8_lossy(kv.key());
                let deleted = event.event_type() == etcd_client::EventType::Delete;
                if full == meta {
                    if !deleted {
                        batch.push(Watched::Meta {
                            mod_revision: kv.mod_revision(),
                            unknown_format: unknown_format(kv.value()),
                        });
                    }
                    continue;
                }
                let Some((kind, key)) = self.config.parse_resource_key(&full) else {
                    continue;
                };
                if deleted {
                    batch.push(Watched::Delete {
                        kind,
                        key: key.to_string(),
                        revision: kv.mod_revision(),
                    });
                } else {
                    let value = match serde_json::from_slice::<StoredResource>(kv.value()) {
                        Ok(v) => Some(Box::new(v)),
                        Err(error) => {
                            tracing::error!(key = %full, %error, "ignoring an etcd value this build cannot read");
                            None
                        }
                    };
                    batch.push(Watched::Put {
                        kind,
                        key: key.to_string(),
                        value,
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    });
                }
            }
            if !batch.is_empty() && !apply(batch) {
                return Ok(());
            }
        }
    }
}

/// Dials the etcd members in turn (see [`EtcdConfig::channel`]).
#[derive(Clone)]
struct MemberDialer {
    members: Arc<Vec<String>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    next: Arc<AtomicUsize>,
    connect_timeout: Duration,
}

/// A connection to a member, plain or TLS.
trait MemberIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> MemberIo for T {}

type DialFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    hyper_util::rt::TokioIo<Box<dyn MemberIo>>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl tower::Service<http::Uri> for MemberDialer {
    type Response = hyper_util::rt::TokioIo<Box<dyn MemberIo>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = DialFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.members.len();
            let first = this.next.fetch_add(1, Ordering::Relaxed);
            let mut failures = Vec::new();
            for k in 0..n {
                let member = &this.members[(first + k) % n];
                match this.dial(member).await {
                    Ok(io) => {
                        // Stay on this member until its connection fails.
                        this.next.store((first + k) % n, Ordering::Relaxed);
                        return Ok(hyper_util::rt::TokioIo::new(io));
                    }
                    Err(e) => failures.push(format!("{member}: {e}")),
                }
            }
            Err(format!("no etcd member answered ({})", failures.join("; ")).into())
        })
    }
}

impl MemberDialer {
    async fn dial(&self, member: &str) -> Result<Box<dyn MemberIo>, String> {
        let tcp =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(member))
                .await
                .map_err(|_| format!("no answer within {:?}", self.connect_timeout))?
                .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let host = member
            .rsplit_once(':')
            .map_or(member, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
        // With TLS 1.3 the member checks our client certificate after our
        // side of the handshake is done: its refusal arrives as an alert on
        // the first read, which must still name the member.
        Ok(Box::new(NamedIo {
            member: member.to_string(),
            io: stream,
        }))
    }
}

/// A member connection whose I/O errors name the member
/// (`etcd member 10.0.0.1:2379 (TLS): received fatal alert: …`).
struct NamedIo<T> {
    member: String,
    io: T,
}

impl<T> NamedIo<T> {
    fn name(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("etcd member {} (TLS): {e}", self.member))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NamedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(self.name(e))),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NamedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(self.name(e))),
            other => other,
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(self.name(e))),
            other => other,
        }
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(self.name(e))),
            other => other,
        }
    }
}

/// Why a watch stopped.
#[derive(Debug)]
pub enum WatchEnd {
    /// The start revision was compacted; etcd keeps history from this one.
    Compacted(i64),
    /// The stream failed (etcd unreachable, ...).
    Failed(String),
}

/// `Some(found)` when a meta value is not of [`FORMAT_VERSION`].
fn unknown_format(value: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Meta>(value) {
        Ok(m) if m.format == FORMAT_VERSION => None,
        Ok(m) => Some(m.format.to_string()),
        Err(_) => Some(format!(
            "unreadable ({:?})",
            String::from_utf8_lossy(&value[..value.len().min(64)])
        )),
    }
}

/// An etcd error in one line, without tonic's nesting noise.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            // The transport's cause (which member, which TLS alert) is in
            // the status's sources, not its message.
            let mut msg = s.message().to_string();
            let mut source = std::error::Error::source(s);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = cause.source();
            }
            match s.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    format!("etcd did not answer in time (is its quorum lost?): {msg}")
                }
                tonic::Code::Unavailable => format!("etcd is unavailable: {msg}"),
                code => format!("etcd answered {code:?}: {msg}"),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// A one-thread runtime for etcd requests, stopped when the sender drops.
fn spawn_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("etcd-client")
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime { source })?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("etcd-runtime".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
            runtime.shutdown_background();
        })
        .map_err(|source| Error::Runtime { source })?;
    Ok((handle, stop))
}

fn block_on_handle<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| Error::Runtime {
        source: std::io::Error::other("the etcd client runtime stopped"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_parsed_and_bad_ones_named() {
        let c = EtcdConfig::parse("etcd://10.0.0.1:2379, h2:2379/", "/mesh/").unwrap();
        assert_eq!(c.endpoints, ["10.0.0.1:2379", "h2:2379"]);
        assert_eq!(c.prefix, "/mesh");
        assert_eq!(
            c.resource_key(Kind::Route, "default/r"),
            "/mesh/r/routes/default/r"
        );
        assert_eq!(
            c.parse_resource_key("/mesh/r/routes/default/r"),
            Some((Kind::Route, "default/r"))
        );
        let err = EtcdConfig::parse("http://h:2379", "/m").unwrap_err();
        assert!(err.contains("etcd://host:port"), "{err}");
        let err = EtcdConfig::parse("etcd://h1:2379,h2", "/m").unwrap_err();
        assert!(err.contains("\"h2\" is not host:port"), "{err}");
        let err = EtcdConfig::parse("etcd://h1:2379", "mesh").unwrap_err();
        assert!(err.contains("--store-prefix"), "{err}");
    }

    #[test]
    fn only_this_format_is_accepted() {
        assert_eq!(unknown_format(br#"{"format":1}"#), None);
        assert_eq!(unknown_format(br#"{"format":2}"#).as_deref(), Some("2"));
        assert!(unknown_format(b"garbage")
            .unwrap()
            .starts_with("unreadable"));
    }
}
