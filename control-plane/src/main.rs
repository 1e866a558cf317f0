//! `sane-control-plane`: parses flags, builds the control plane, prints the
//! bound addresses (`listening name=xds addr=…`, `listening name=api
//! addr=…`) on stdout, and serves until SIGTERM or Ctrl-C. Logs go to stderr.
//! Both ports are TLS unless `--insecure-plaintext-loopback` (loopback only).

use anyhow::Context;
use clap::Parser;
use sane_control_plane::xds::DebounceConfig;
use sane_control_plane::Config;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// The Sane Mesh control plane: registry, HTTP API and xDS server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// xDS (gRPC ADS) listen address; port 0 picks a free port.
    #[arg(long, env = "SANE_XDS_ADDR", default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// HTTP API listen address; port 0 picks a free port.
    #[arg(long, env = "SANE_API_ADDR", default_value = "127.0.0.1:15080")]
    api_addr: SocketAddr,
    /// Directory for the registry state and a generated API token.
    #[arg(long, env = "SANE_DATA_DIR", default_value = "sane-cp-data")]
    data_dir: PathBuf,
    /// Where the registry lives: `file` (the data directory; one control
    /// plane) or `etcd://host:port[,host:port...]` (any number of replicas
    /// sharing one etcd cluster; see docs/replicas.md).
    #[arg(long, env = "SANE_STORE", default_value = "file")]
    store: String,
    /// Key prefix of this mesh in etcd.
    #[arg(long, env = "SANE_STORE_PREFIX", default_value = sane_control_plane::store::etcd::DEFAULT_PREFIX)]
    store_prefix: String,
    /// CA certificate (PEM) to verify etcd with; connects over TLS.
    #[arg(long, env = "SANE_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; with
    /// --etcd-key-file and --etcd-ca-file.
    #[arg(long, env = "SANE_ETCD_CERT_FILE", requires_all = ["etcd_key_file", "etcd_ca_file"])]
    etcd_cert_file: Option<PathBuf>,
    /// The key of --etcd-cert-file (PEM).
    #[arg(long, env = "SANE_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// etcd user (etcd auth); the password is read from --etcd-password-file.
    #[arg(long, env = "SANE_ETCD_USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "SANE_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// This replica's name among the replicas sharing etcd (shown in
    /// `GET /api/v1/proxies`); default `<hostname>/<api address>`.
    #[arg(long, env = "SANE_REPLICA_ID")]
    replica_id: Option<String>,
    /// How long one etcd request may take before a write answers 503.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    etcd_timeout: Duration,
    /// Directory of YAML MeshResources files to follow.
    #[arg(long, env = "SANE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// API token for writes.
    #[arg(long, env = "SANE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// File holding the API token (default: <data-dir>/api-token, generated).
    #[arg(long, env = "SANE_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Push once registry changes were quiet for this long.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    debounce_quiet: Duration,
    /// Push at the latest this long after the first change of a batch.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    debounce_max: Duration,
    /// How long disconnected proxies stay listed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    proxy_retention: Duration,
    /// Largest accepted API request body, in bytes.
    #[arg(long, default_value_t = sane_control_plane::api::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
    /// The Prometheus that scrapes the proxies (`http://host:port`): the web
    /// view `/ui` draws its graph's edges from it.
    #[arg(long, env = "SANE_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Trust domain of the mesh CA (SPIFFE ids are spiffe://<this>/ns/…/sa/…).
    #[arg(long, env = "SANE_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates when a proxy asks for none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
    /// Longest workload certificate lifetime the CA grants.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    max_cert_ttl: Duration,
    /// Operator CA certificate chain (PEM: signing CA first, then up to the
    /// root); with --ca-key, used instead of a generated CA.
    #[arg(long, requires = "ca_key")]
    ca_cert_chain: Option<PathBuf>,
    /// Operator CA private key (PEM, PKCS#8).
    #[arg(long, requires = "ca_cert_chain")]
    ca_key: Option<PathBuf>,
    /// Root rotation: the previous root certificate (PEM), still trusted
    /// until --retiring-root-until.
    #[arg(long, requires = "retiring_root_until")]
    retiring_root: Option<PathBuf>,
    /// End of the previous root's grace period (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339, requires = "retiring_root")]
    retiring_root_until: Option<std::time::SystemTime>,
    /// Serve xDS, the CA and the API in plaintext instead of TLS. Only
    /// allowed when both addresses are loopback: bearer tokens must not
    /// cross a network in clear. For local experiments and tests.
    #[arg(long, env = "SANE_INSECURE_PLAINTEXT_LOOPBACK")]
    insecure_plaintext_loopback: bool,
    /// Extra name (DNS name or IP address) proxies dial the control plane
    /// by, added to its serving certificate (repeat, or comma-separate).
    /// Always included: localhost, 127.0.0.1, ::1 and the bound addresses
    /// unless they are 0.0.0.0/::.
    #[arg(long = "tls-san", env = "SANE_TLS_SANS", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Lifetime of the serving certificate (renewed at two thirds of it).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    serving_cert_ttl: Duration,
    /// The API's certificate chain (PEM) instead of the mesh CA's serving
    /// certificate; with --api-tls-key.
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The key of --api-tls-cert (PEM).
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Where to write the mesh root certificate(s) (PEM) that proxies and
    /// sanectl verify the control plane with (default:
    /// <data-dir>/root-cert.pem).
    #[arg(long, env = "SANE_ROOT_CERT_FILE")]
    root_cert_file: Option<PathBuf>,
    /// Reads of /api/v1 need the API token too (default: reads are open).
    #[arg(long, env = "SANE_API_READ_TOKEN_REQUIRED")]
    api_read_token_required: bool,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    #[cfg(feature = "kubernetes")]
    #[command(flatten)]
    kubernetes: sane_control_plane::k8s::KubeArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    #[cfg(feature = "kubernetes")]
    let kubernetes = args.kubernetes.into_config(&args.trust_domain);
    let etcd = match args.store.as_str() {
        "file" => None,
        url => {
            let mut etcd =
                sane_control_plane::store::etcd::EtcdConfig::parse(url, &args.store_prefix)
                    .map_err(anyhow::Error::msg)?;
            etcd.ca_file = args.etcd_ca_file;
            etcd.client_cert = args.etcd_cert_file.zip(args.etcd_key_file);
            if let (Some(user), Some(file)) = (args.etcd_user, args.etcd_password_file) {
                let password = std::fs::read_to_string(&file)
                    .with_context(|| format!("--etcd-password-file {}", file.display()))?;
                etcd.user = Some((user, password.trim_end().to_string()));
            }
            etcd.request_timeout = args.etcd_timeout;
            etcd.replica = args.replica_id.unwrap_or_default();
            Some(etcd)
        }
    };
    let config = Config {
        xds_addr: args.xds_addr,
        api_addr: args.api_addr,
        data_dir: Some(args.data_dir.clone()),
        config_dir: args.config_dir,
        etcd,
        api_token: args.api_token,
        api_token_file: args.api_token_file,
        debounce: DebounceConfig {
            quiet: args.debounce_quiet,
            max_delay: args.debounce_max,
        },
        proxy_retention: args.proxy_retention,
        trust_domain: args.trust_domain,
        cert_ttl: args.cert_ttl,
        max_cert_ttl: args.max_cert_ttl,
        ca_files: args.ca_cert_chain.zip(args.ca_key),
        retiring_root: args.retiring_root.zip(args.retiring_root_until),
        #[cfg(feature = "kubernetes")]
        kubernetes,
        body_limit: args.max_body_bytes,
        prometheus_url: args.prometheus_url,
        plaintext_loopback: args.insecure_plaintext_loopback,
        tls_sans: args.tls_sans,
        serving_cert_ttl: args.serving_cert_ttl,
        api_tls_files: args.api_tls_cert.zip(args.api_tls_key),
        root_cert_file: args.root_cert_file,
        api_read_token_required: args.api_read_token_required,
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = prometheus::Registry::new();
    let bound = sane_control_plane::build(config, &metrics)
        .await
        .context("starting the control plane")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening name=xds addr={}", bound.xds_addr())?;
        writeln!(out, "listening name=api addr={}", bound.api_addr())?;
        #[cfg(feature = "kubernetes")]
        if let Some(addr) = bound.webhook_addr() {
            writeln!(out, "listening name=webhook addr={addr}")?;
        }
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DEADLINE).await;
    };
    tokio::select! {
        r = bound.run(shutdown.clone()) => r.context("control plane failed")?,
        _ = deadline => tracing::warn!("shutdown took longer than {SHUTDOWN_DEADLINE:?}; exiting"),
    }
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
