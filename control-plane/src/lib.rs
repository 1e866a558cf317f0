//! The Sane Mesh control plane: a registry of services, endpoints, routes and
//! policies, served to proxies over xDS and to people over an HTTP API.
//!
//! Data path of a change: an API write or a config file ([`file_source`])
//! becomes a [`registry`] transaction, validated as a whole and persisted
//! ([`store`]) before it is published; the xDS publisher coalesces published
//! revisions ([`xds::debounce`]), encodes them once ([`xds::snapshot`]), and
//! every ADS stream computes its proxy's view ([`xds::view`]) and feeds it to
//! its state machine ([`xds::sotw`], [`xds::delta`]), which decides what to
//! send. Streams record what was sent, ACKed and NACKed in the [`status`]
//! table, which the [`api`] and [`metrics`] read. On Kubernetes (cargo
//! feature `kubernetes`), [`k8s`] is one more source of resources, one more
//! way to authenticate to the CA, and the sidecar-injection webhook.
//!
//! Both ports are TLS by default, with a serving certificate from the mesh
//! CA ([`transport`]); plaintext is possible on loopback only.
//!
//! Entry points: [`build`] binds both listeners and loads the state,
//! [`Bound::run`] serves until shutdown. `main.rs` (`sane-control-plane`) and
//! `bin/sanectl.rs` (the CLI, built on [`client`]) are thin wrappers.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod client;
pub mod ctl;
pub mod error;
pub mod file_source;
pub mod istio;
#[cfg(feature = "kubernetes")]
pub mod k8s;
pub mod metrics;
pub mod registry;
pub mod resource;
pub mod status;
pub mod store;
pub mod transport;
pub mod ui;
pub mod xds;

pub use error::Error;

use api::auth::ApiToken;
use api::ApiState;
use file_source::FileSource;
use metrics::Metrics;
use registry::Registry;
use status::ProxyStatusTable;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xds::{AdsService, DebounceConfig};

/// Everything the control plane needs to start.
#[derive(Clone)]
pub struct Config {
    /// xDS (gRPC) listen address. Default: `127.0.0.1:15010`.
    pub xds_addr: SocketAddr,
    /// HTTP API listen address. Default: `127.0.0.1:15080`.
    pub api_addr: SocketAddr,
    /// Where the registry state and a generated API token are kept.
    /// Default: none (in memory only).
    pub data_dir: Option<PathBuf>,
    /// Directory of YAML `MeshResources` files to follow. Default: none.
    pub config_dir: Option<PathBuf>,
    /// Keep the registry in etcd instead of `data_dir` (replicated control
    /// planes: `--store etcd://...`). Default: none (the file store).
    pub etcd: Option<store::etcd::EtcdConfig>,
    /// The API token itself. Default: none.
    pub api_token: Option<String>,
    /// A file holding the API token. Default: none (then `data_dir/api-token`,
    /// generated if missing).
    pub api_token_file: Option<PathBuf>,
    /// How registry changes are coalesced before a push.
    pub debounce: DebounceConfig,
    /// How long disconnected proxies stay in the status table. Default: 5 min.
    pub proxy_retention: Duration,
    /// Largest accepted API request body. Default: 1 MiB.
    pub body_limit: usize,
    /// How often `config_dir` is polled. Default: 1 s.
    pub config_poll_interval: Duration,
    /// Trust domain of the mesh CA. Default: `cluster.local`.
    pub trust_domain: String,
    /// Lifetime of workload certificates when a proxy asks for none.
    /// Default: 24 h.
    pub cert_ttl: Duration,
    /// Longest workload certificate lifetime granted. Default: 7 days.
    pub max_cert_ttl: Duration,
    /// An operator-provided CA: PEM chain (the signing CA first, up to the
    /// root) and PEM key. Default: none (generate one into the data dir).
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Root rotation: the previous root (PEM), still trusted until
    /// `retiring_until`. Default: none.
    pub retiring_root: Option<(PathBuf, std::time::SystemTime)>,
    /// Serve xDS, the CA and the API in plaintext; refused unless both
    /// addresses are loopback ([`transport::check_plaintext_bind`]).
    /// Default: false (TLS).
    pub plaintext_loopback: bool,
    /// Extra names (DNS names or IP addresses) of the serving certificate,
    /// beyond `localhost`, `127.0.0.1`, `::1` and the bound addresses.
    /// Default: none.
    pub tls_sans: Vec<String>,
    /// Lifetime of the serving certificate; renewed at two thirds of it.
    /// Default: 24 h.
    pub serving_cert_ttl: Duration,
    /// The API's certificate chain and key (PEM files) instead of the mesh
    /// CA's serving certificate. Default: none.
    pub api_tls_files: Option<(PathBuf, PathBuf)>,
    /// Where to write the mesh root(s) in PEM, for proxies' bootstrap
    /// `control_plane.root_cert_file`. Default: `<data_dir>/root-cert.pem`,
    /// or nowhere without a data dir.
    pub root_cert_file: Option<PathBuf>,
    /// Reads of `/api/v1` need the API token too. Default: false (reads
    /// are open).
    pub api_read_token_required: bool,
    /// Kubernetes: the registry source, TokenReview and the injection
    /// webhook ([`k8s`]). Default: none.
    #[cfg(feature = "kubernetes")]
    pub kubernetes: Option<k8s::KubernetesConfig>,
    /// The Prometheus that scrapes the proxies (`http://host:port`), read by
    /// the web view `/ui` for its graph's edges. Default: none.
    pub prometheus_url: Option<String>,
}

/// The control plane with its listeners bound and its state loaded.
#[derive(Debug)]
pub struct Bound {
    xds_listener: TcpListener,
    api_listener: TcpListener,
    xds_addr: SocketAddr,
    api_addr: SocketAddr,
    registry: Arc<Registry>,
    status: Arc<ProxyStatusTable>,
    token: Arc<ApiToken>,
    ads: AdsService,
    ca: ca::CaService,
    api_state: ApiState,
    file_source: Option<FileSource>,
    #[cfg(feature = "kubernetes")]
    kubernetes: Option<k8s::Kubernetes>,
    config: Config,
    /// TLS of both ports; `None` when serving plaintext on loopback.
    tls: Option<ServingTls>,
    root_cert_file: Option<PathBuf>,
    /// Stops streams and background tasks; cancelled by `run`'s shutdown.
    stop: CancellationToken,
}

/// A port's connections: past their TLS handshake, or plain TCP.
enum Incoming {
    Tls(transport::TlsIncoming),
    Plain(TcpListener),
}

/// The TLS side of both ports.
#[derive(Debug)]
struct ServingTls {
    cert: Arc<transport::ServingCert>,
    xds: Arc<rustls::ServerConfig>,
    api: Arc<rustls::ServerConfig>,
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Config {
            xds_addr: SocketAddr::from(([127, 0, 0, 1], 15010)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 15080)),
            data_dir: None,
            config_dir: None,
            etcd: None,
            api_token: None,
            api_token_file: None,
            debounce: DebounceConfig::default(),
            proxy_retention: Duration::from_secs(300),
            body_limit: api::DEFAULT_BODY_LIMIT,
            config_poll_interval: Duration::from_secs(1),
            trust_domain: "cluster.local".to_string(),
            cert_ttl: Duration::from_secs(24 * 3600),
            max_cert_ttl: Duration::from_secs(7 * 24 * 3600),
            ca_files: None,
            retiring_root: None,
            plaintext_loopback: false,
            tls_sans: Vec::new(),
            serving_cert_ttl: transport::DEFAULT_SERVING_CERT_TTL,
            api_tls_files: None,
            root_cert_file: None,
            api_read_token_required: false,
            #[cfg(feature = "kubernetes")]
            kubernetes: None,
            prometheus_url: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("xds_addr", &self.xds_addr)
            .field("api_addr", &self.api_addr)
            .field("data_dir", &self.data_dir)
            .field("config_dir", &self.config_dir)
            .field("etcd", &self.etcd)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("api_token_file", &self.api_token_file)
            .field("debounce", &self.debounce)
            .field("proxy_retention", &self.proxy_retention)
            .field("body_limit", &self.body_limit)
            .field("config_poll_interval", &self.config_poll_interval)
            .field("trust_domain", &self.trust_domain)
            .field("cert_ttl", &self.cert_ttl)
            .field("max_cert_ttl", &self.max_cert_ttl)
            .field("ca_files", &self.ca_files)
            .field("retiring_root", &self.retiring_root)
            .field("plaintext_loopback", &self.plaintext_loopback)
            .field("tls_sans", &self.tls_sans)
            .field("serving_cert_ttl", &self.serving_cert_ttl)
            .field("api_tls_files", &self.api_tls_files)
            .field("root_cert_file", &self.root_cert_file)
            .field("api_read_token_required", &self.api_read_token_required)
            .field("prometheus_url", &self.prometheus_url);
        #[cfg(feature = "kubernetes")]
        d.field("kubernetes", &self.kubernetes);
        d.finish()
    }
}

/// Loads the state, resolves the API token, loads the config dir once, and
/// binds both listeners; issues the serving certificate and writes the root
/// file. Metrics are registered in `metrics_registry`.
pub async fn build(
    config: Config,
    metrics_registry: &prometheus::Registry,
) -> Result<Bound, Error> {
    if config.plaintext_loopback {
        transport::check_plaintext_bind("xds", config.xds_addr)?;
        transport::check_plaintext_bind("api", config.api_addr)?;
    }
    #[cfg(feature = "kubernetes")]
    let ca_secret = config.kubernetes.as_ref().and_then(|k| k.ca_secret.clone());
    #[cfg(not(feature = "kubernetes"))]
    let ca_secret: Option<String> = None;
    if let (Some(etcd), None, None) = (&config.etcd, &config.ca_files, &ca_secret) {
        return Err(Error::ReplicaWithoutCa {
            store: etcd.display(),
        });
    }
    #[cfg(feature = "kubernetes")]
    if ca_secret.is_some() && config.ca_files.is_some() {
        return Err(k8s::KubeError::TwoCas.into());
    }
    let metrics = Metrics::register(metrics_registry)?;
    if let (Some(_), Some(dir)) = (&config.etcd, &config.data_dir) {
        // The file store creates it otherwise; the token cache and the
        // root file live there.
        std::fs::create_dir_all(dir).map_err(|source| Error::StateWrite {
            path: dir.clone(),
            source,
        })?;
    }
    let registry = match (&config.etcd, &config.data_dir) {
        // Connecting waits (and retries) until etcd answers: off the
        // async workers.
        (Some(etcd), _) => {
            let etcd = etcd.clone();
            tokio::task::spawn_blocking(move || {
                Registry::open_etcd(store::etcd::EtcdStore::connect(etcd)?)
            })
            .await
            .map_err(|e| Error::Runtime {
                source: std::io::Error::other(e.to_string()),
            })??
        }
        (None, Some(dir)) => Arc::new(Registry::open(store::Store::open(dir)?)?),
        (None, None) => Arc::new(Registry::in_memory()),
    };
    let token = Arc::new(ApiToken::resolve(
        config.api_token.as_deref(),
        config.api_token_file.as_deref(),
        config.data_dir.as_deref(),
    )?);
    if let Some(path) = token.path() {
        tracing::info!(path = %path.display(), "api token file");
    }
    let file_source = match &config.config_dir {
        Some(dir) => {
            let mut src = FileSource::new(dir, registry.clone());
            src.sync()?;
            Some(src)
        }
        None => None,
    };
    let bind = |name: &'static str, addr: SocketAddr| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { name, addr, source })?;
        let local = l
            .local_addr()
            .map_err(|source| Error::Bind { name, addr, source })?;
        Ok::<_, Error>((l, local))
    };
    let (xds_listener, xds_addr) = bind("xds", config.xds_addr).await?;
    let (api_listener, api_addr) = bind("api", config.api_addr).await?;
    if let Some(etcd) = registry.etcd() {
        etcd.name_replica(api_addr);
    }
    let status = Arc::new(ProxyStatusTable::new(
        config.proxy_retention,
        metrics.clone(),
    ));
    let stop = CancellationToken::new();
    #[cfg(feature = "kubernetes")]
    let kube_client = match &config.kubernetes {
        Some(k) => k8s::connect(k).await?,
        None => None,
    };
    // Every replica signs with the CA of the one Secret.
    #[cfg(feature = "kubernetes")]
    let ca_pem = match (&ca_secret, &kube_client) {
        (Some(secret), Some(client)) => Some(k8s::ca_secret::read(client.clone(), secret).await?),
        _ => None,
    };
    #[cfg(not(feature = "kubernetes"))]
    let ca_pem = None;
    let (authority, workload_tokens, retiring) = ca::load(&ca::CaSettings {
        trust_domain: config.trust_domain.clone(),
        cert_ttl: config.cert_ttl,
        max_cert_ttl: config.max_cert_ttl,
        ca_pem,
        ca_files: config.ca_files.clone(),
        data_dir: config.data_dir.clone(),
        retiring_root: config.retiring_root.clone(),
    })?;
    if let Some(etcd) = registry.etcd() {
        let (etcd, tokens) = (etcd.clone(), workload_tokens.clone());
        tokio::task::spawn_blocking(move || store::etcd_shared::share_tokens(&etcd, &tokens))
            .await
            .map_err(|e| Error::Runtime {
                source: std::io::Error::other(e.to_string()),
            })??;
    }
    let ca = ca::CaService::new(authority.clone(), workload_tokens.clone(), metrics_registry)
        .map_err(|source| Error::Metrics {
            name: "sane_ca_requests_total",
            source,
        })?
        .with_retiring(retiring);
    #[cfg(feature = "kubernetes")]
    let (ca, kubernetes) = match &config.kubernetes {
        Some(k) => {
            let bundle = ca.bundle(std::time::SystemTime::now()).to_pem();
            let kube =
                k8s::Kubernetes::bind(k.clone(), kube_client, authority.clone(), bundle).await?;
            match kube.token_reviewer() {
                Some(reviewer) => (ca.with_external(reviewer), Some(kube)),
                None => (ca, Some(kube)),
            }
        }
        None => (ca, None),
    };
    let root_pem = ca.bundle(std::time::SystemTime::now()).to_pem();
    let root_cert_file = config.root_cert_file.clone().or_else(|| {
        config
            .data_dir
            .as_ref()
            .map(|d| d.join(transport::ROOT_CERT_FILE))
    });
    if let Some(path) = &root_cert_file {
        transport::write_root_file(path, &root_pem)?;
        tracing::info!(path = %path.display(), "mesh root written (proxies' control_plane.root_cert_file)");
    }
    let tls = if config.plaintext_loopback {
        tracing::warn!(%xds_addr, %api_addr, "serving xDS, the CA and the API in PLAINTEXT (loopback only)");
        None
    } else {
        Some(serving_tls(
            &config,
            &authority,
            &ca,
            &[xds_addr, api_addr],
        )?)
    };
    let ads = AdsService::new(
        registry.clone(),
        status.clone(),
        metrics,
        stop.clone(),
        ca.auth().clone(),
    );
    let istio_watched = Arc::new(istio::watched::WatchedObjects::new());
    #[cfg(feature = "kubernetes")]
    let cluster = kubernetes.as_ref().and_then(|k| {
        k.cluster_store(
            registry.clone(),
            istio_watched.clone(),
            registry.etcd().is_some(),
        )
    });
    #[cfg(not(feature = "kubernetes"))]
    let cluster = None;
    let api_state = ApiState {
        registry: registry.clone(),
        status: status.clone(),
        token: token.clone(),
        metrics: metrics_registry.clone(),
        body_limit: config.body_limit,
        workload_tokens,
        trust_domain: config.trust_domain.clone(),
        prometheus: config
            .prometheus_url
            .as_deref()
            .map(ui::prometheus::PromClient::new),
        read_token_required: config.api_read_token_required,
        istio: Arc::new(match &config.data_dir {
            Some(dir) => {
                istio::store::IstioStore::open(dir).map_err(|e| Error::IstioStore(Box::new(e)))?
            }
            None => istio::store::IstioStore::in_memory(),
        }),
        istio_watched,
        cluster,
    };
    // The stored Sidecars scope the first streams too.
    ads.publish_scopes(api_state.istio.scopes().borrow().clone());
    tracing::info!(
        revision = registry.revision(),
        resources = registry.snapshot().len(),
        "registry loaded"
    );
    Ok(Bound {
        xds_listener,
        api_listener,
        xds_addr,
        api_addr,
        registry,
        status,
        token,
        ads,
        ca,
        api_state,
        file_source,
        #[cfg(feature = "kubernetes")]
        kubernetes,
        config,
        tls,
        root_cert_file,
        stop,
    })
}

/// The serving certificate and the rustls configs of both ports.
fn serving_tls(
    config: &Config,
    authority: &Arc<sane_certs::CertificateAuthority>,
    ca: &ca::CaService,
    bound: &[SocketAddr],
) -> Result<ServingTls, Error> {
    let names = transport::serving_names(&config.tls_sans, bound);
    let cert = Arc::new(transport::ServingCert::issue(
        authority.clone(),
        names,
        config.serving_cert_ttl,
    )?);
    // Client certificates are verified against every root proxies trust,
    // the retiring one included.
    let client_roots = ca.bundle(std::time::SystemTime::now());
    // Client certificates of the mesh's own trust domain only.
    let domains = [
        sane_certs::TrustDomain::new(&config.trust_domain).map_err(|source| Error::Tls {
            name: "trust domain",
            source: Box::new(source),
        })?,
    ];
    let xds =
        sane_certs::control_plane_server_config(cert.clone(), &client_roots, &domains, &[b"h2"])
            .map_err(|source| Error::Tls {
                name: "xds",
                source: Box::new(source),
            })?;
    let api_resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &config.api_tls_files {
        Some((chain, key)) => Arc::new(transport::FixedCert(transport::load_cert_files(
            chain, key,
        )?)),
        None => cert.clone(),
    };
    let api = sane_certs::control_plane_server_config(
        api_resolver,
        &client_roots,
        &domains,
        &[b"http/1.1"],
    )
    .map_err(|source| Error::Tls {
        name: "api",
        source: Box::new(source),
    })?;
    Ok(ServingTls {
        cert,
        xds: Arc::new(xds),
        api: Arc::new(api),
    })
}

// === impl Bound ===

impl Bound {
    /// The bound xDS address.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// The bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The file the mesh root was written to, if any.
    pub fn root_cert_file(&self) -> Option<&std::path::Path> {
        self.root_cert_file.as_deref()
    }

    /// Whether the ports serve TLS (false: plaintext on loopback).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The proxy status table.
    pub fn status(&self) -> &Arc<ProxyStatusTable> {
        &self.status
    }

    /// The API token.
    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    /// The bound admission-webhook address, if it serves one.
    #[cfg(feature = "kubernetes")]
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.kubernetes
            .as_ref()
            .and_then(k8s::Kubernetes::webhook_addr)
    }

    /// Serves xDS and the API, publishes registry changes, sweeps leases and
    /// follows the config dir, until `shutdown`; then closes the streams and
    /// stops accepting.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let stop = self.stop.clone();
        let mut tasks = tokio::task::JoinSet::new();
        {
            let stop = stop.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            });
        }
        tasks.spawn(self.ads.clone().run_publisher(self.config.debounce));
        // Istio `Sidecar`s (applied, and watched in the cluster) limit
        // what proxies are sent.
        tasks.spawn(self.ads.clone().run_scope_publisher(
            self.api_state.istio.scopes(),
            self.api_state.istio_watched.scopes(),
        ));
        tasks.spawn(self.registry.clone().run_lease_sweeper(stop.clone()));
        if let Some(etcd) = self.registry.etcd() {
            // This replica's proxies, for `GET /api/v1/proxies` on the others.
            let (status, registry) = (self.status.clone(), self.registry.clone());
            let replica = etcd.replica().to_string();
            let name = replica.clone();
            let rows = move || {
                serde_json::json!({
                    "replica": name,
                    "proxies": status.list(registry.revision()),
                })
            };
            tasks.spawn(store::etcd_shared::publish_status(
                etcd.clone(),
                replica,
                rows,
                stop.clone(),
            ));
        }
        if let Some(src) = self.file_source {
            tasks.spawn(src.run(self.config.config_poll_interval, stop.clone()));
        }
        #[cfg(feature = "kubernetes")]
        if let Some(kube) = self.kubernetes {
            let watched = self.api_state.istio_watched.clone();
            tasks.spawn(kube.run(self.registry.clone(), watched, stop.clone()));
        }

        let xds_addr = self.xds_addr;
        let api_addr = self.api_addr;
        let (xds_incoming, api_incoming) = match &self.tls {
            Some(tls) => {
                tasks.spawn(tls.cert.clone().run_renewal(stop.clone()));
                let accept = |name, listener, config: &Arc<rustls::ServerConfig>, addr| {
                    transport::accept_tls(name, listener, config.clone(), stop.clone())
                        .map_err(|source| Error::Bind { name, addr, source })
                };
                (
                    Incoming::Tls(accept("xds", self.xds_listener, &tls.xds, xds_addr)?),
                    Incoming::Tls(accept("api", self.api_listener, &tls.api, api_addr)?),
                )
            }
            None => (
                Incoming::Plain(self.xds_listener),
                Incoming::Plain(self.api_listener),
            ),
        };
        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(self.ads.into_server())
            .add_service(self.ca);
        let xds = async {
            let signal = stop.clone().cancelled_owned();
            let r = match xds_incoming {
                Incoming::Tls(incoming) => {
                    grpc.serve_with_incoming_shutdown(incoming, signal).await
                }
                Incoming::Plain(listener) => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    grpc.serve_with_incoming_shutdown(incoming, signal).await
                }
            };
            let r = r.map_err(|source| Error::XdsServe {
                addr: xds_addr,
                source,
            });
            stop.cancel();
            r
        };
        let app = api::router(self.api_state);
        let api = async {
            let signal = stop.clone().cancelled_owned();
            let r = match api_incoming {
                Incoming::Tls(incoming) => {
                    axum::serve(incoming, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
                Incoming::Plain(listener) => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
            };
            let r = r.map_err(|source| Error::ApiServe {
                addr: api_addr,
                source,
            });
            stop.cancel();
            r
        };
        let (xds_result, api_result) = tokio::join!(xds, api);
        while tasks.join_next().await.is_some() {}
        tracing::info!("control plane stopped");
        xds_result.and(api_result)
    }
}
