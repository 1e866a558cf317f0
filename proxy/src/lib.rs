//! Sane Mesh data-plane proxy.
//!
//! The code follows the data: [`listener`] accepts, [`conn`] decides what a
//! connection carries ([`protocol`]), [`stack`] runs each HTTP request through
//! [`route`] and the [`policy`] layers to a [`cluster`], whose balancer picks
//! an endpoint that [`upstream`] reaches through its pools. [`config`] holds
//! the current snapshot (swapped atomically on reload), [`admin`] exposes
//! readiness, metrics and the config, [`drain`] shuts down gracefully.
//! Connections the [`iptables`] rules redirect to a transparent listener are
//! served by [`transparent`] according to where they were going. The inbound
//! delivers only to the ports [`workload_port`] allows: declared workload
//! ports, never the proxy's own. In
//! [`gateway`] mode the same proxy also serves public listeners and sends
//! outside requests into the mesh through the outbound stack.
//! [`log_limit`] keeps repeated warnings from flooding the log.
//!
//! Entry point: [`build`] binds every socket and returns a [`Proxy`] that
//! reports its addresses; [`Proxy::run`] serves until drained.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod drain;
pub mod error;
pub mod gateway;
pub mod health;
pub mod iptables;
pub mod listener;
pub mod log_limit;
pub mod metric;
pub mod observe;
pub mod original_dst;
pub mod policy;
pub mod protocol;
pub mod route;
pub mod snapshot;
pub mod stack;
pub mod svc;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod transparent;
pub mod upstream;
pub mod workers;
pub mod workload_port;
pub mod xds;

pub use crate::body::Body;
pub use crate::error::{ProxyError, StartError};

use crate::admin::Admin;
use crate::config::{ConfigStore, Snapshot};
use crate::drain::{Drain, DrainOutcome, Readiness};
use crate::listener::BoundListener;
use crate::stack::StackContext;
use crate::telemetry::Metrics;
use crate::upstream::{connect::TcpConnect, Upstream};
use prometheus::Registry;
use sane_xds_proto::{Bootstrap, Direction};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often the config file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A proxy whose sockets are bound, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    admin_addr: SocketAddr,
    admin_socket: TcpListener,
    health: Option<(SocketAddr, TcpListener, health::HealthServer)>,
    listeners: Vec<BoundListener>,
    handle: ProxyHandle,
    registry: Registry,
    readiness: Readiness,
    ctx: StackContext,
    drain_timeout: Duration,
    xds: Option<(
        sane_xds_proto::ControlPlane,
        sane_xds_proto::Node,
        xds::XdsMetrics,
    )>,
    issuer: Option<tls::rotation::IssuerConfig>,
}

/// Controls a running proxy: reload its config, start a drain.
#[derive(Clone, Debug)]
pub struct ProxyHandle {
    config: Arc<ConfigStore>,
    drain: Drain,
    metrics: Metrics,
}

/// Compiles `bootstrap` and binds the admin server and every listener.
/// `config_path` is re-read on [`ProxyHandle::reload`] and when it changes.
pub async fn build(
    bootstrap: Bootstrap,
    config_path: Option<PathBuf>,
    registry: Registry,
) -> Result<Proxy, StartError> {
    let origin = config_path
        .as_ref()
        .map_or_else(|| "<inline>".to_string(), |p| p.display().to_string());
    let drain_timeout = Duration::from_millis(bootstrap.drain_timeout_ms());
    let admin_address = bootstrap.admin.address.clone();
    let health_config = bootstrap.health.clone();
    let xds_metrics = match bootstrap.control_plane {
        Some(_) => Some(xds::XdsMetrics::register(&registry)?),
        None => None,
    };
    let xds = bootstrap
        .control_plane
        .clone()
        .map(|mut cp| {
            // One workload token (and one root) serves both the CA and the
            // xDS stream.
            if let Some(id) = &bootstrap.identity {
                if cp.token_file.is_empty() {
                    cp.token_file = id.token_file.clone();
                }
                if cp.root_cert_file.is_empty() {
                    cp.root_cert_file = id.root_cert_file.clone();
                }
            }
            cp
        })
        .zip(xds_metrics)
        .map(|(cp, m)| (cp, bootstrap.node.clone(), m));
    let issuer = match &bootstrap.identity {
        None => None,
        Some(id) => Some(
            tls::rotation::IssuerConfig::from_bootstrap(
                id,
                &bootstrap.node.namespace,
                bootstrap.control_plane.as_ref(),
            )
            .map_err(|e| StartError::Compile {
                path: origin.clone(),
                field: "identity".into(),
                reason: e.to_string(),
            })?,
        ),
    };
    let identity = Arc::new(tls::Identity::new(
        issuer.is_some(),
        tls::TlsMetrics::register(&registry)?,
    ));
    let node = bootstrap.node.clone();
    let snapshot = Snapshot::compile(bootstrap, 1, None, &origin)?;
    let (admin_socket, admin_addr) = listener::bind_tcp("admin", &admin_address)?;
    let intercepted = transparent::InterceptMetrics::register(&registry)?;
    let listeners = snapshot
        .listeners()
        .iter()
        .map(|l| BoundListener::bind(l, &intercepted))
        .collect::<Result<Vec<_>, _>>()?;
    let metrics = Metrics::register(&registry)?;
    telemetry::register_proxy_info(&registry, &node)?;
    metrics.config_version.set(snapshot.version as i64);
    let config = Arc::new(ConfigStore::new(snapshot, config_path));
    let drain = Drain::default();
    let readiness = Readiness::new(drain.clone());
    let health = match health_config {
        None => None,
        Some(h) => {
            let (socket, addr) = listener::bind_tcp("health", &h.address)?;
            let server = health::HealthServer {
                readiness: readiness.clone(),
                drain: drain.clone(),
                probes: Arc::new(h.app_probes),
            };
            Some((addr, socket, server))
        }
    };
    // The inbound never delivers to these (see `workload_port`).
    let own_sockets = Arc::new(workload_port::OwnSockets::default());
    std::iter::once(admin_addr)
        .chain(health.as_ref().map(|(addr, _, _)| *addr))
        .chain(listeners.iter().map(|l| l.addr))
        .for_each(|addr| own_sockets.add(addr));
    let ctx = StackContext {
        own_sockets,
        drain: drain.clone(),
        config: config.clone(),
        upstream: Arc::new(
            Upstream::new(Arc::new(TcpConnect), identity.clone()).with_max_response_headers(
                config.load().bootstrap.http.max_response_headers() as usize,
            ),
        ),
        metrics: metrics.clone(),
        identity,
        tracer: Arc::new(trace::Tracer::new(&registry)?),
    };
    Ok(Proxy {
        admin_addr,
        admin_socket,
        health,
        listeners,
        handle: ProxyHandle {
            config,
            drain: drain.clone(),
            metrics,
        },
        registry,
        readiness,
        ctx,
        drain_timeout,
        xds,
        issuer,
    })
}

// === impl Proxy ===

impl Proxy {
    /// Every bound socket, admin first, then health: `(name, address)`.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        std::iter::once(("admin".to_string(), self.admin_addr))
            .chain(
                self.health
                    .iter()
                    .map(|(a, _, _)| ("health".to_string(), *a)),
            )
            .chain(self.listeners.iter().map(|l| (l.name.clone(), l.addr)))
            .collect()
    }

    /// A handle to reload or drain the proxy while it runs.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// What the request stacks need (config, pools, identity, drain), for
    /// servers built on top of the proxy ([`gateway`]).
    pub fn context(&self) -> StackContext {
        self.ctx.clone()
    }

    /// Serves until a drain is started, then waits for open connections to
    /// finish (at most the drain timeout).
    pub async fn run(self) -> DrainOutcome {
        let drain = self.handle.drain.clone();
        let stop_admin = CancellationToken::new();
        let admin = Admin {
            config: self.handle.config.clone(),
            registry: self.registry.clone(),
            readiness: self.readiness.clone(),
            drain: drain.clone(),
            identity: self.ctx.identity.clone(),
        };
        let rejected = |name| {
            self.ctx
                .metrics
                .limits
                .for_listener(name)
                .connections_rejected
        };
        tokio::spawn(admin.serve(self.admin_socket, stop_admin.clone(), rejected("admin")));
        if let Some((_, socket, server)) = self.health {
            // Stops with the admin server: the kubelet sees "draining" until then.
            tokio::spawn(server.serve(socket, stop_admin.clone(), rejected("health")));
        }
        let inbound: Vec<SocketAddr> = {
            let config = self.handle.config.load();
            let defs = config.listeners();
            self.listeners
                .iter()
                .filter(|l| {
                    defs.iter()
                        .any(|d| d.name == l.name && d.direction() == Direction::Inbound)
                })
                .map(|l| l.addr)
                .collect()
        };
        let mut accept_loops = Vec::new();
        for l in self.listeners {
            accept_loops.push(tokio::spawn(l.serve(self.ctx.clone(), drain.clone())));
        }
        let background = CancellationToken::new();
        tokio::spawn(watch_file(self.handle.clone(), background.clone()));
        tokio::spawn(reap_idle(self.ctx.upstream.clone(), background.clone()));
        if let Some(issuer) = self.issuer {
            let block = self.readiness.block("certificate");
            tokio::spawn(tls::rotation::run(
                issuer,
                self.ctx.identity.clone(),
                block,
                background.clone(),
            ));
        }
        if let Some((cp, node, metrics)) = self.xds {
            let block = self.readiness.block("xds");
            tokio::spawn(xds::run(
                cp,
                node,
                inbound,
                self.handle.config.clone(),
                metrics,
                block,
                self.ctx.identity.clone(),
                background.clone(),
            ));
        }
        self.readiness.set_ready();
        tracing::info!("proxy ready");

        drain.signaled().await;
        tracing::info!(deadline = ?self.drain_timeout, "draining");
        for l in accept_loops {
            let _ = l.await;
        }
        let outcome = drain.wait(self.drain_timeout).await;
        match outcome {
            DrainOutcome::Clean => tracing::info!("drained"),
            DrainOutcome::DeadlineExceeded => tracing::warn!(
                open = drain.active(),
                "drain deadline passed; closing remaining connections"
            ),
        }
        background.cancel();
        stop_admin.cancel();
        outcome
    }
}

// === impl ProxyHandle ===

impl ProxyHandle {
    /// Re-reads the config file; on failure the current config keeps serving.
    ///
    /// Reading, parsing, validating and compiling run on tokio's blocking
    /// pool, never on the calling runtime: with `--workers 1` that runtime
    /// also serves every connection, and a large (or hostile) file must not
    /// stall them. The new snapshot is swapped in when it is ready.
    pub async fn reload(&self) -> Result<u64, StartError> {
        let config = self.config.clone();
        let result = tokio::task::spawn_blocking(move || config.reload())
            .await
            .unwrap_or_else(|e| Err(StartError::ReloadAborted(e.to_string())));
        match result {
            Ok(v) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_version.set(v as i64);
                tracing::info!(version = v, "config reloaded");
                Ok(v)
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "config reload rejected; still serving the previous config");
                Err(e)
            }
        }
    }

    /// Sets the bounds the config file is read with on reload.
    pub fn set_yaml_limits(&self, limits: sane_xds_proto::yaml::YamlLimits) {
        self.config.set_yaml_limits(limits);
    }

    /// Starts a graceful drain.
    pub fn drain(&self) {
        self.drain.start();
    }
}

async fn watch_file(handle: ProxyHandle, stop: CancellationToken) {
    let Some(path) = handle.config.path().map(|p| p.to_path_buf()) else {
        return;
    };
    let mut last = config::fingerprint(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = config::fingerprint(&path);
        if now != last && now.is_some() {
            last = now;
            let _ = handle.reload().await;
        }
    }
}

async fn reap_idle(upstream: Arc<Upstream>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => upstream.reap_idle(Duration::from_secs(60)),
        }
    }
}
